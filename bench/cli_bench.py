"""CLI start-up benchmark (issue 12): how long a `rampart` command takes, start to exit.

Runs each command as a fresh process many times, round-robin (so a burst of load
on this shared machine hits every command alike), after a few warm-up runs, and
reports the median, p90, min and max wall time of each. In the same run:

* ``python -c pass``: the interpreter's own start-up with this environment's
  site-packages, the floor no Python CLI can beat; every figure is also given
  as a ratio to it;
* ``python -c "import typer"``: the floor of a Typer CLI;
* ``rampart --help``;
* ``rampart devices list T --json``: a read command against a real local
  server (``harness.server.start_server``, SQLite), logged in through the CLI
  itself like an operator, tenant T with 5 approved devices;
* the same read command without cached bytecode (``PYTHONDONTWRITEBYTECODE=1``,
  as this repository's test environment runs it), for comparison.

The commands run with bytecode cached (``PYTHONPYCACHEPREFIX`` in a temporary
directory, filled by the warm-up runs), as after ``pip install``, which compiles it.

Target: median <= 0.25 s for ``rampart --help`` and ``devices list T --json``.

Each figure is wall time (what a user waits); ``cpu_median_s`` is the median
CPU time of the command's own process (user + system), which load from other
processes on the machine changes least. For ``devices list`` the server's work
is in the wall time, not in the CPU time.

With ``--baseline REF`` the same two commands also run as the CLI was at git
revision REF (``git archive REF rampart`` in a temporary directory, run with
``python -m rampart.cli.main``), in the same round-robin, so the gain is
measured under the same load: ``make bench-cli`` uses the revision before the
start-up work (issue 12).

    PYTHONPATH=.:tests python bench/cli_bench.py [out.json] [--runs N] [--baseline REF]
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from harness.operators import PASSWORD, bootstrap_owner, enrol_devices, setup_tenant  # noqa: E402
from harness.server import start_server  # noqa: E402

TARGET_S = 0.25
# The same read command as run from a source checkout that never writes bytecode (this
# repository's test environment sets PYTHONDONTWRITEBYTECODE=1): rampart's own modules are
# compiled on every run. Shown for comparison; the target is for an installed CLI.
NO_CACHE = "rampart devices list T --json (bytecode not cached)"
WARMUP = 3


def rampart_cmd() -> tuple[list[str], str]:
    """The installed entry point if there is one (what users run), else ``python -m``."""
    script = Path(sys.executable).parent / "rampart"
    if script.exists():
        return [str(script)], str(script.relative_to(REPO) if script.is_relative_to(REPO) else script)
    return [sys.executable, "-m", "rampart.cli.main"], "python -m rampart.cli.main"


def summary(times: list[float], floor: float | None) -> dict[str, Any]:
    xs = sorted(times)
    med = statistics.median(xs)
    out: dict[str, Any] = {
        "median_s": round(med, 4), "p90_s": round(xs[max(0, int(round(0.9 * len(xs))) - 1)], 4),
        "min_s": round(xs[0], 4), "max_s": round(xs[-1], 4), "runs": len(xs)}
    if floor:
        out["median_x_floor"] = round(med / floor, 2)
    return out


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def setup() -> tuple[Path, Any, list[str], str, dict[str, str]]:
    """A running server, tenant T with 5 devices, and the environment of an operator logged in
    to it through the CLI: (temp dir, server, CLI command, its name, env)."""
    base = Path(tempfile.mkdtemp(prefix="rampart-cli-bench-"))
    server = start_server(base)
    try:
        owner = bootstrap_owner(server)
        t = setup_tenant(owner, "T")
        enrol_devices(t, 5)
        cli, cli_shown = rampart_cmd()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("RAMPART_")
               and k not in ("PYTHONPATH", "COLUMNS", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
        if cli[0] == sys.executable:
            env["PYTHONPATH"] = str(REPO)
        # Bytecode cached as after `pip install` (which compiles it), kept out of the checkout.
        env["PYTHONPYCACHEPREFIX"] = str(base / "pycache")
        env["RAMPART_CONFIG_DIR"] = str(base / "operator")
        env["COLUMNS"] = "80"
        login = subprocess.run(
            [*cli, "login", "--server", server.url, "--user", owner.username],
            env={**env, "RAMPART_PASSWORD": PASSWORD, "RAMPART_TOTP": owner.totp.code(),
                 "RAMPART_SERVER_FINGERPRINT": server.cert_sha256},
            capture_output=True, text=True, timeout=120)
        assert login.returncode == 0, login.stdout + login.stderr
    except BaseException:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
        raise
    return base, server, cli, cli_shown, env


def main(argv: list[str]) -> int:
    runs = 40
    baseline: str | None = None
    args = list(argv)
    if "--runs" in args:
        i = args.index("--runs")
        runs = int(args[i + 1])
        del args[i:i + 2]
    if "--baseline" in args:
        i = args.index("--baseline")
        baseline = args[i + 1]
        del args[i:i + 2]
    out_path = Path(args[0]) if args else None

    base, server, cli, cli_shown, env = setup()
    try:
        commands: dict[str, list[str]] = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "python -c 'import typer'": [sys.executable, "-c", "import typer"],
            "rampart --help": [*cli, "--help"],
            "rampart devices list T --json": [*cli, "devices", "list", "T", "--json"],
            NO_CACHE: [*cli, "devices", "list", "T", "--json"],
        }
        envs = {name: env for name in commands}
        envs[NO_CACHE] = {k: v for k, v in env.items() if k != "PYTHONPYCACHEPREFIX"}
        envs[NO_CACHE]["PYTHONDONTWRITEBYTECODE"] = "1"
        if baseline is not None:
            old = base / "baseline"
            old.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", baseline, "rampart"],
                                     check=True, capture_output=True, timeout=120).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True, timeout=120)
            for name, argv_ in (("rampart --help", ["--help"]),
                                ("rampart devices list T --json", ["devices", "list", "T", "--json"])):
                key = f"{name} (at {baseline})"
                commands[key] = [sys.executable, "-m", "rampart.cli.main", *argv_]
                envs[key] = {**env, "PYTHONPATH": str(old)}
            where = subprocess.run([sys.executable, "-c", "import rampart; print(rampart.__file__)"],
                                   env=envs[key], cwd=base, capture_output=True, text=True, timeout=60)
            assert where.stdout.startswith(str(old)), where.stdout + where.stderr
        for name, cmd in commands.items():  # correct output first
            r = subprocess.run(cmd, env=envs[name], capture_output=True, text=True, timeout=60,
                               cwd=base)
            assert r.returncode == 0, f"{name}: {r.stdout}{r.stderr}"
            if "devices" in name:
                docs = json.loads(r.stdout)
                assert len(docs) == 5, docs
            if "--help" in name:
                assert "devices" in r.stdout, r.stdout

        times: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        load_before = loadavg()
        for i in range(WARMUP + runs):
            for name, cmd in commands.items():
                u0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                rc = subprocess.run(cmd, env=envs[name], cwd=base, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, timeout=60).returncode
                elapsed = time.perf_counter() - t0
                u1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                assert rc == 0, name
                if i >= WARMUP:
                    times[name].append(elapsed)
                    cpu[name].append(u1.ru_utime - u0.ru_utime + u1.ru_stime - u0.ru_stime)
        load_after = loadavg()
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)

    floor = statistics.median(times["python -c pass"])
    results = {name: summary(ts, None if name == "python -c pass" else floor)
               for name, ts in times.items()}
    for name, ts in cpu.items():  # the command's own CPU time: what load on the machine changes least
        results[name]["cpu_median_s"] = round(statistics.median(ts), 4)
    for name in ("rampart --help", "rampart devices list T --json"):
        results[name]["meets_target"] = results[name]["median_s"] <= TARGET_S
        before = results.get(f"{name} (at {baseline})")
        if before is not None:
            ratio = before["median_s"] / results[name]["median_s"]
            results[name]["baseline_median_over_this"] = round(ratio, 2)
    doc = {
        "bench": "cli",
        "target_median_s": TARGET_S,
        "conditions": {
            "cli": cli_shown, "python": platform.python_version(), "cpus": os.cpu_count(),
            "loadavg_before": load_before, "loadavg_after": load_after,
            "runs_each": runs, "warmup_each": WARMUP, "order": "round-robin",
            "baseline": baseline and f"git archive {baseline} rampart, python -m rampart.cli.main",
            "bytecode": "cached (PYTHONPYCACHEPREFIX, warmed up) unless the name says otherwise",
            "server": "harness.server.start_server (SQLite, 127.0.0.1, TLS pinned)",
            "tenant": "T with 5 approved devices",
            "editable_install": "__editable__" in " ".join(
                p.name for p in Path(sys.prefix).glob("lib/python*/site-packages/__editable__*.pth")),
        },
        "results": results,
    }
    text = json.dumps(doc, indent=2)
    print(text)
    for name, r in results.items():
        extra = f"  {r['median_x_floor']}x floor" if "median_x_floor" in r else ""
        print(f"{name:54s} median {r['median_s'] * 1000:6.1f} ms  max {r['max_s'] * 1000:6.1f} ms"
              f"  cpu {r['cpu_median_s'] * 1000:6.1f} ms{extra}", file=sys.stderr)
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
