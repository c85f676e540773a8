"""Benchmark: what one inventory costs the agent's host.

Each measurement runs in a fresh Python process, so peak RSS is that of an
agent that did only this work:

* ``full``: one first full inventory (cold: pending updates computed, no
  cache). CPU is user + system time of the agent process *and* its children
  (``apt-cache``, ``rpm``, ``systemctl``) during the collection. Then the
  process holds the snapshot, as an idle agent does, and its resident memory
  is read. Targets: at most 2 s of CPU, idle RSS at most 60 MB.
* ``delta``: a steady-state cycle: a second collection with the package state
  unchanged (pending updates reused from the cache), ``diff`` against the
  first, and the encoded sizes of the delta and of the full snapshot.

    PYTHONPATH=. python bench/inventory_bench.py [out.json]   # default bench/results/inventory.json
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CPU_TARGET_S = 2.0
RSS_TARGET_MB = 60.0


def _cpu() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def child_full() -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    import gc

    from rampart.agent.inventory import UpdatesCache, collect_full
    from rampart.wire.inventory import encode

    rss_before = _status_mb("VmRSS")
    own0, kids0 = _cpu()
    t0 = time.perf_counter()
    inv = collect_full(int(time.time()), "0.1.0", "full", updates_cache=UpdatesCache())
    wall = time.perf_counter() - t0
    own1, kids1 = _cpu()
    gc.collect()
    size = len(encode(inv))
    return {
        "cpu_s": round((own1 - own0) + (kids1 - kids0), 3),
        "cpu_agent_s": round(own1 - own0, 3),
        "cpu_children_s": round(kids1 - kids0, 3),
        "wall_s": round(wall, 3),
        "rss_after_import_mb": rss_before,
        "idle_rss_mb": _status_mb("VmRSS"),
        "peak_rss_mb": _status_mb("VmHWM"),
        "children_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "full_bytes": size,
        "errors": inv.errors,
        "counts": {name: len(getattr(inv, name)) for name in
                   ("packages", "updates", "processes", "services", "sockets", "users", "disks")},
    }


def child_delta() -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from rampart.agent.inventory import UpdatesCache, collect_full
    from rampart.wire.inventory import encode
    from rampart.wire.inventory_delta import apply, diff, encode_delta

    cache = UpdatesCache()
    first = collect_full(int(time.time()), "0.1.0", "full", updates_cache=cache)
    time.sleep(1.0)
    own0, kids0 = _cpu()
    second = collect_full(int(time.time()), "0.1.0", "full", updates_cache=cache)
    delta = diff(first, second)
    data = encode_delta(delta)
    own1, kids1 = _cpu()
    t0 = time.perf_counter()
    assert apply(first, delta) == second
    apply_ms = (time.perf_counter() - t0) * 1000
    return {
        "cpu_s": round((own1 - own0) + (kids1 - kids0), 3),
        "cpu_children_s": round(kids1 - kids0, 3),
        "delta_bytes": len(data),
        "full_bytes": len(encode(second)),
        "changed_entries": delta.entries(),
        "server_apply_ms": round(apply_ms, 2),
        "peak_rss_mb": _status_mb("VmHWM"),
    }


def _run_child(kind: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", kind], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=600)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "--child":
        print(json.dumps(child_full() if argv[2] == "full" else child_delta()))
        return 0
    path = Path(argv[1]) if len(argv) > 1 else ROOT / "bench" / "results" / "inventory.json"
    full = _run_child("full")
    delta = _run_child("delta")
    result = {
        "benchmark": "agent_inventory",
        "full": full,
        "delta": delta,
        "targets": {"full_cpu_s": CPU_TARGET_S, "idle_rss_mb": RSS_TARGET_MB},
        "meets_target": full["cpu_s"] <= CPU_TARGET_S and full["idle_rss_mb"] <= RSS_TARGET_MB,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
