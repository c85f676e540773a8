"""Benchmark: what content and protocol detection cost the agent per inventory (issue 15).

Sets up 100 loopback listeners (98 silent ones, one answering an RFB banner as
a VNC server does, one answering an X.224 Connection Confirm as an RDP server
does) and 1,000 processes (900 running one program, 100 running 100 distinct
copies of it, so 101 executables to read), then measures the agent's CPU
(user + system of this process, which does the work) for:

* ``fingerprint``: :func:`rampart.agent.inventory.detect.fingerprint` over the
  1,000 processes: cold (every executable read, hashed and scanned) and warm
  (the next inventory: everything cached by file identity).
* ``probe``: :func:`rampart.agent.inventory.detect.probe_listeners` over the
  100 listeners: cold (every listener probed; wall time is bounded by the
  banner wait, not CPU) and warm (probed listeners are cached by inode).

Goal: warm (the steady state of every inventory) at most 50 ms of CPU; cold
is paid once per new executable or listener. Only the benchmark's own
processes and listeners are measured (the host's others are left alone).

    PYTHONPATH=. python bench/detect_bench.py [out.json]   # default bench/results/detect.json
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rampart.agent.inventory.detect import DetectCache, fingerprint, probe_listeners
from rampart.agent.inventory.processes import collect_processes
from rampart.agent.inventory.sockets import collect_sockets

ROOT = Path(__file__).resolve().parent.parent
GOAL_MS = 50.0
LISTENERS = 100
PROCESSES = 1000
DISTINCT = 100
_RDP_CONFIRM = bytes.fromhex("0300000e09d00000000000000000")[:11]


def _cpu() -> float:
    return time.process_time()


def _serve(sock: socket.socket, banner: bytes, answer: bytes, stop: threading.Event) -> None:
    sock.settimeout(0.1)
    while not stop.is_set():
        try:
            conn, _ = sock.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        with conn:
            try:
                if banner:
                    conn.sendall(banner)
                if answer:
                    conn.settimeout(1.0)
                    if conn.recv(64):
                        conn.sendall(answer)
                time.sleep(0.05)
            except OSError:
                pass


def main(out: Path) -> dict[str, Any]:
    stop = threading.Event()
    listeners = [socket.create_server(("127.0.0.1", 0), backlog=64) for _ in range(LISTENERS)]
    threads = [threading.Thread(target=_serve, args=(listeners[0], b"RFB 003.008\n", b"", stop), daemon=True),
               threading.Thread(target=_serve, args=(listeners[1], b"", _RDP_CONFIRM, stop), daemon=True)]
    for t in threads:
        t.start()
    tmp = Path(tempfile.mkdtemp(prefix="detect-bench-"))
    programs = []
    for i in range(DISTINCT):
        copy = tmp / f"prog{i}"
        shutil.copy2("/usr/bin/sleep", copy)
        programs.append(str(copy))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(PROCESSES):
            exe = programs[i] if i < DISTINCT else "/usr/bin/sleep"
            procs.append(subprocess.Popen([exe, "300"]))
        time.sleep(0.5)
        pids = {p.pid for p in procs}
        mine = [p for p in collect_processes()[0] if p.pid in pids]
        ports = {s.getsockname()[1] for s in listeners}
        socks = [s for s in collect_sockets()[0] if s.state == "listen" and s.local_port in ports
                 and s.local_addr == "127.0.0.1"]
        assert len(mine) == PROCESSES, len(mine)
        assert len(socks) == LISTENERS, len(socks)
        cache = DetectCache()
        results: dict[str, Any] = {"processes": len(mine), "listeners": len(socks), "goal_cpu_ms": GOAL_MS}
        for phase in ("cold", "warm"):
            c0, w0 = _cpu(), time.perf_counter()
            marked, unread = fingerprint(mine, cache)
            results[f"fingerprint_{phase}_cpu_ms"] = round((_cpu() - c0) * 1000, 1)
            results[f"fingerprint_{phase}_wall_ms"] = round((time.perf_counter() - w0) * 1000, 1)
            assert unread == 0
        results["distinct_executables"] = len(cache.content)
        for phase in ("cold", "warm"):
            c0, w0 = _cpu(), time.perf_counter()
            probed, skipped = probe_listeners(socks, cache)
            results[f"probe_{phase}_cpu_ms"] = round((_cpu() - c0) * 1000, 1)
            results[f"probe_{phase}_wall_ms"] = round((time.perf_counter() - w0) * 1000, 1)
            assert skipped == 0
        found = sorted(s.protocol for s in probed if s.protocol)
        results["protocols_found"] = found
        assert found == ["rdp", "rfb 003.008"], found
        warm = results["fingerprint_warm_cpu_ms"] + results["probe_warm_cpu_ms"]
        results["warm_total_cpu_ms"] = round(warm, 1)
        results["warm_within_goal"] = warm <= GOAL_MS
        results["cpu_count"] = len(__import__("os").sched_getaffinity(0))
        results["python"] = sys.version.split()[0]
    finally:
        stop.set()
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
        for s in listeners:
            s.close()
        shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench" / "results" / "detect.json")
