"""Benchmark: what patch management costs a device (issue 6, item 5).

* ``pending_scratch``: :func:`rampart.agent.patching.pending_updates` on a
  scratch root holding 20 installed packages, each with an update (half of
  them from a ``-security`` suite). Wall time and CPU (the agent process and
  its children: apt-cache, dpkg), best and median of several runs.
* ``pending_host``: the same call on this machine's own package root, which
  it only reads (the machine's dpkg database is compared before and after).
* ``patch_job_20``: one :func:`~rampart.agent.patching.apply_updates` that
  upgrades the 20 packages with the real apt-get and dpkg, in the scratch root.

Packages are built with dpkg-deb and served from a local file: archive, as in
tests/test_patching.py; nothing touches the network.

    PYTHONPATH=.:tests python bench/patch_bench.py [out.json]   # default bench/results/patch.json
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from harness.aptrepo import AptRepo, build_deb, dpkg_status_bytes, scratch_root  # noqa: E402

from rampart.agent import patching  # noqa: E402

N_PACKAGES = 20


def _cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _measure(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    cpu0, t0 = _cpu(), time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, _cpu() - cpu0, value


def _series(fn: Callable[[], Any], runs: int) -> tuple[dict[str, Any], Any]:
    walls, cpus, value = [], [], None
    for _ in range(runs):
        wall, cpu, value = _measure(fn)
        walls.append(wall)
        cpus.append(cpu)
    return {"runs": runs, "wall_s_min": round(min(walls), 4),
            "wall_s_median": round(statistics.median(walls), 4), "cpu_s_min": round(min(cpus), 4),
            "cpu_s_median": round(statistics.median(cpus), 4)}, value


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench" / "results" / "patch.json"
    if os.geteuid() != 0:
        sys.exit("patch_bench: run as root (dpkg --root needs it to own the scratch root's files)")
    host_status = dpkg_status_bytes()
    with tempfile.TemporaryDirectory(prefix="rampart-patch-bench-") as tmp:
        base = Path(tmp)
        repo = AptRepo(base / "archive")
        names = [f"rampart-bench-{i:02d}" for i in range(N_PACKAGES)]
        repo.add("stable", [build_deb(repo.path, n, "1.0") for n in names])
        repo.add("stable-updates", [build_deb(repo.path, n, "1.1") for n in names[N_PACKAGES // 2:]])
        repo.add("stable-security", [build_deb(repo.path, n, "1.1") for n in names[: N_PACKAGES // 2]])
        repo.write()
        root = scratch_root(base / "root", repo, ["stable", "stable-updates", "stable-security"])
        for n in names:
            assert patching.install(root, n, "1.0").ok, n

        pending, updates = _series(lambda: patching.pending_updates_checked(root), 5)
        assert updates[1] == "" and len(updates[0]) == N_PACKAGES, updates
        pending.update(updates=len(updates[0]), security=sum(u.security for u in updates[0]),
                       installed=N_PACKAGES)

        host_root = patching.PackageRoot.system()
        host, host_updates = _series(lambda: patching.pending_updates_checked(host_root), 3)
        host.update(manager=host_root.manager, updates=len(host_updates[0]),
                    security=sum(u.security for u in host_updates[0]), error=host_updates[1],
                    installed=host_status.count(b"\nStatus: install ok installed") +
                    host_status.startswith(b"Status: install ok installed"))

        wall, cpu, result = _measure(lambda: patching.apply_updates(root))
        upgraded = [c for c in result.changes if c.action == "upgraded"]
        assert result.ok and len(upgraded) == N_PACKAGES, result.error
        job = {"packages": N_PACKAGES, "upgraded": len(upgraded), "ok": result.ok, "wall_s": round(wall, 4),
               "cpu_s": round(cpu, 4), "wall_s_per_package": round(wall / N_PACKAGES, 4)}
    assert dpkg_status_bytes() == host_status, "the machine's dpkg database changed"
    report = {
        "bench": "patch", "time": int(time.time()), "host_dpkg_status_unchanged": True,
        "pending_scratch": pending, "pending_host": host, "patch_job_20": job,
    }
    text = json.dumps(report, indent=2, sort_keys=True)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
