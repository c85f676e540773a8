"""Flood benchmark (T16): what hostile devices flooding at full speed cost an honest device.

One real server process (SQLite), one honest real ``rampart-agent`` process
running signed jobs, and flooders that hold real device keys and speak the
real protocol over TLS (:mod:`harness.flood`). Every figure is measured in
the same run as its baseline and reported as a ratio to it (this machine is
noisy):

* ``findings``: 3 flooders each send their whole report budget (20 reports)
  at once, every report carrying the most findings an agent may send (2,000,
  all new, all critical);
* ``churn``: 8 threads open connections with one device key as fast as they
  can for 10 s, each sending reports;
* ``frames``: 2 flooders send near-limit (4 MiB) frames until they are blocked.

For each: the honest device's job latency (post to receipt stored; median of
3) and API read latency (p95 of 20 ``GET /tenants/{t}/devices``) against the
baseline, what the flooders got stored, refusals and blocks, the server's
resident memory, and how long the server stays busy after the flood (the
time until an honest job is back within 1.5x its baseline).

    PYTHONPATH=.:tests python bench/flood_bench.py [out.json]
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness.fleet import Fleet, make_fleet  # noqa: E402
from harness.flood import Honest, answer, churn, flood_findings, flooder, full_report, inventory  # noqa: E402
from harness.operators import ok  # noqa: E402
from harness.server import RunningServer, start_server  # noqa: E402
from harness.wsagent import WireAgent  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from rampart.server.config import ServerLimits  # noqa: E402
from rampart.wire import InventoryMessage  # noqa: E402

LIMITS = ServerLimits()


def rss_mib(server: RunningServer) -> float:
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def p95(xs: list[float]) -> float:
    return sorted(xs)[max(0, int(round(0.95 * len(xs))) - 1)]


def honest_figures(h: Honest, jobs: int = 3, reads: int = 20) -> dict[str, float]:
    job = statistics.median(h.job() for _ in range(jobs))
    read = p95([h.read() for _ in range(reads)])
    return {"job_s": round(job, 3), "read_p95_ms": round(read * 1000, 1)}


def during(h: Honest, flood: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``flood`` in threads while the honest device works; then time the server's recovery."""
    out: dict[str, Any] = {}
    t0 = time.monotonic()
    th = threading.Thread(target=lambda: out.update(flood()))
    th.start()
    time.sleep(0.3)
    figures = honest_figures(h)
    th.join(timeout=600)
    out["flood_wall_s"] = round(time.monotonic() - t0, 2)
    out.update({f"during_{k}": v for k, v in figures.items()})
    return out


def findings_flood(f: Fleet, n_flooders: int = 3) -> dict[str, Any]:
    agents = [flooder(f, hostname=f"flood-{i}") for i in range(n_flooders)]

    def one(a: WireAgent, acks: list[str]) -> None:
        for i in range(LIMITS.inventory_burst):
            a.send(full_report(inventory(3 + i % 2), flood_findings(f"{a.device_id}:{i}")))
        for _ in range(LIMITS.inventory_burst):
            acks.append(answer(a, timeout=300)["type"])

    acks: list[str] = []
    ths = [threading.Thread(target=one, args=(a, acks)) for a in agents]
    for th in ths:
        th.start()
    for th in ths:
        th.join(timeout=600)
    t = f.tenant
    open_f = ok(t.owner.http.get(f"/tenants/{t.id}/findings", params={"status": "open"}))
    ids = {a.device_id for a in agents}
    live = ok(t.owner.http.get(f"/tenants/{t.id}/alerts", params={"per_device": 0, "limit": 1000}))
    for a in agents:
        a.close()
    return {"reports_sent": n_flooders * LIMITS.inventory_burst,
            "findings_sent": n_flooders * LIMITS.inventory_burst * 2000,
            "reports_acked": acks.count("inventory-ack"),
            "open_findings_stored": sum(x["device"] in ids for x in open_f),
            "live_alerts_of_flooders": sum(a.get("device") in ids for a in live)}


def churn_flood(f: Fleet, seconds: float = 10.0) -> dict[str, Any]:
    return churn(f, flooder(f, hostname="cloned"), threads=8, seconds=seconds)


def frames_flood(f: Fleet, n_flooders: int = 2) -> dict[str, Any]:
    near = "A" * (LIMITS.max_ws_message_bytes - 1024)
    sent = [0] * n_flooders
    blocked_after: list[float] = []

    def one(i: int) -> None:
        a = flooder(f, hostname=f"frames-{i}")
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < 60:  # the attacker never reads; it stops when closed
                a.send(InventoryMessage(report=near, result="0" * 64))
                sent[i] += 1
        except (ConnectionClosed, OSError):
            blocked_after.append(time.monotonic() - t0)
        with contextlib.suppress(Exception):
            a.close()

    # Daemon threads: a flooder whose send the server stopped reading must not keep the benchmark alive.
    ths = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n_flooders)]
    for th in ths:
        th.start()
    for th in ths:
        th.join(timeout=90)
    return {"frames_sent": sum(sent), "mib_sent": round(sum(sent) * len(near) / 2**20),
            "seconds_until_closed": [round(x, 2) for x in blocked_after],
            "flooders_still_sending_after_90s": sum(th.is_alive() for th in ths)}


def recovery_s(h: Honest, baseline: float, limit_s: float = 120.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        if h.job() <= 1.5 * baseline + 0.2:
            return round(time.monotonic() - t0, 2)
    return float("inf")


def main() -> None:
    out_path = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    base = Path(tempfile.mkdtemp(prefix="rampart-flood-bench-"))
    server = start_server(base, None)
    results: dict[str, Any] = {"conditions": "1 server process (SQLite), 1 honest rampart-agent process, "
                                             "flooders over real TLS on loopback, 2-core machine"}
    try:
        for f in make_fleet(server, 1):
            h = Honest(f)
            h.job()  # warm-up
            results["baseline"] = honest_figures(h, jobs=5)
            results["server_rss_mib_start"] = round(rss_mib(server), 1)
            floods = (("findings", findings_flood), ("churn", churn_flood), ("frames", frames_flood))
            for name, flood in floods:
                r = during(h, functools.partial(flood, f))
                r["job_ratio"] = round(r["during_job_s"] / results["baseline"]["job_s"], 2)
                r["read_p95_ratio"] = round(r["during_read_p95_ms"] / results["baseline"]["read_p95_ms"], 2)
                r["recovery_s"] = recovery_s(h, results["baseline"]["job_s"])
                r["server_rss_mib_after"] = round(rss_mib(server), 1)
                results[name] = r
                print(name, json.dumps(r), flush=True)
            alerts = ok(f.tenant.owner.http.get(f"/tenants/{f.tenant.id}/alerts",
                                                params={"per_device": 0, "limit": 1000}))
            results["operator_alerts"] = sorted({a["kind"] for a in alerts
                                                 if a["kind"].startswith(("device-", "findings-over"))})
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    text = json.dumps(results, indent=2, sort_keys=True)
    print(text)
    if out_path is not None:
        out_path.write_text(text + "\n")


if __name__ == "__main__":
    main()
