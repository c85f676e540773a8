"""make bench-session: remote sessions through a real server relay to a real agent, on loopback.

Measures, in one run on this machine:

* keystroke round trip (one byte typed, its echo by the device's pty seen again) through the relay,
  p50 and p99, against a raw loopback TCP echo measured in the same run (goal: at most 2 ms added at p50);
* throughput of a 100 MB ``cat`` through one session (goal: at least 50 MB/s);
* the server's CPU per relayed megabyte and per idle open session;
* 100 concurrent sessions on one server: time to open them all, each answering an echo, then closed.

Prints one JSON document and writes it to the path given (bench/results/session.json).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from harness.sessions import SessionWorld, session_world

from rampart import trust
from rampart.cli.client import Client
from rampart.cli.session_link import SessionEnd, SessionLink
from rampart.wire.session import Data, Exit, client_keys

ROUND_TRIPS = int(os.environ.get("RAMPART_BENCH_ROUND_TRIPS", "400"))
CAT_BYTES = 100_000_000
CONCURRENT = int(os.environ.get("RAMPART_BENCH_SESSIONS", "100"))


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def _open(w: SessionWorld, grant: str, client: Client) -> SessionLink:
    keys = client_keys()
    now = int(time.time())
    job = trust.Job(id=trust.new_job_id(), tenant=w.tenant, grant=grant, signer=w.tech_key.key_id,
                    devices=[w.main.device_id], action=trust.Action(kind="shell"), timeout_s=3600,
                    nonce=trust.new_nonce(), issued_at=now, expires_at=now + 600,
                    session=trust.SessionSpec(client_key=keys.public_b64, cols=200, rows=50))
    env = trust.sign_envelope(job.PAYLOAD_TYPE, trust.encode_payload(job), [w.tech_key]).to_bytes()
    r = w.tech.http.post(f"/tenants/{w.tenant}/jobs", json={"envelope": env.decode(), "payloads": {}})
    assert r.status_code == 200, r.text
    link = SessionLink(client, job.id, w.main.device_id, keys)
    link.connect(timeout=120)
    return link


def _until(link: SessionLink, needle: bytes, timeout: float = 60) -> bytes:
    seen = bytearray()
    deadline = time.monotonic() + timeout
    while needle not in seen:
        frame = link.receive(timeout=max(0.01, deadline - time.monotonic()))
        if frame is None and time.monotonic() > deadline:
            raise TimeoutError(f"waiting for {needle!r}; saw {bytes(seen[-200:])!r}")
        if isinstance(frame, Data):
            seen += frame.data
        elif isinstance(frame, Exit):
            raise SessionEnd(frame.reason, frame.detail)
    return bytes(seen)


def _raw_echo(n: int) -> list[float]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(64):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    c = socket.create_connection(srv.getsockname())
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        c.sendall(b"a")
        c.recv(64)
        out.append((time.perf_counter() - t) * 1000)
    c.close()
    srv.close()
    return out


def _close(link: SessionLink) -> None:
    link.send(Data(data=b"\x04exit\r"))
    try:
        while True:
            frame = link.receive(timeout=30)
            if frame is None or isinstance(frame, Exit):
                break
    except SessionEnd:
        pass
    link.close()


def main(out_path: str) -> None:
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                               "conditions": "one server (SQLite), one root agent, loopback TLS, same run"}
    with session_world(None, prefix="rampart-bench-session-") as w:
        w.enrol("main")
        grant = w.grant(["shell"])
        assert w.server.proc is not None
        server_pid = w.server.proc.pid
        client = Client(w.server.url, w.server.cert_der, w.tech.token, timeout=120)

        # 1. keystroke round trip: `cat` on the device's pty echoes each byte typed (tty echo).
        link = _open(w, grant, client)
        link.send(Data(data=b"stty -icanon; exec cat\r"))
        time.sleep(1.0)
        while link.receive(timeout=0.3) is not None:
            pass
        rtts = []
        for i in range(ROUND_TRIPS):
            ch = bytes([0x61 + i % 26])
            t = time.perf_counter()
            link.send(Data(data=ch))
            _until(link, ch, timeout=10)
            rtts.append((time.perf_counter() - t) * 1000)
        _close(link)
        raw = _raw_echo(ROUND_TRIPS)
        results["keystroke_round_trip_ms"] = {
            "session_p50": round(statistics.median(rtts), 3), "session_p99": round(_pct(rtts, 99), 3),
            "raw_loopback_p50": round(statistics.median(raw), 3), "raw_loopback_p99": round(_pct(raw, 99), 3),
            "added_p50": round(statistics.median(rtts) - statistics.median(raw), 3), "goal_added_p50": 2.0,
            "samples": ROUND_TRIPS}

        # 2. throughput of a 100 MB cat, and the server's CPU for it.
        blob = w.scratch / "blob.bin"
        with open(blob, "wb") as f:
            f.truncate(CAT_BYTES)  # zeros; the pty passes them as they are
        blob.chmod(0o644)
        link = _open(w, grant, client)
        # The markers are written so that the echoed command line does not contain them.
        link.send(Data(data=b"stty raw -echo; echo ST''ART; cat " + str(blob).encode()
                       + b"; echo; echo DONE-''CAT\r"))
        _until(link, b"START")
        agent_pid = w.main.proc.pid if w.main.proc is not None else 0
        cpu0, t0, got, frames = _cpu_s(server_pid), time.perf_counter(), 0, 0
        agent_cpu0, client_cpu0 = _cpu_s(agent_pid), time.process_time()
        tail = b""
        while b"DONE-CAT" not in tail:
            frame = link.receive(timeout=60)
            if isinstance(frame, Data):
                got += len(frame.data)
                frames += 1
                tail = (tail + frame.data)[-64:]
            elif frame is None or isinstance(frame, Exit):
                break
        elapsed = time.perf_counter() - t0
        cpu = _cpu_s(server_pid) - cpu0
        agent_cpu, client_cpu = _cpu_s(agent_pid) - agent_cpu0, time.process_time() - client_cpu0
        _close(link)
        results["cat_100MB"] = {"bytes": got, "seconds": round(elapsed, 2),
                                "MB_per_s": round(got / elapsed / 1e6, 1), "goal_MB_per_s": 50,
                                "server_cpu_s": round(cpu, 2),
                                "server_cpu_ms_per_MB": round(cpu * 1000 / max(1, got / 1e6), 2),
                                "agent_cpu_s": round(agent_cpu, 2), "technician_cpu_s": round(client_cpu, 2),
                                "frames": frames, "mean_frame_bytes": got // max(1, frames)}
        blob.unlink()

        # 3. 100 concurrent sessions; idle server CPU with all of them open.
        t0 = time.perf_counter()
        links = []
        for i in range(CONCURRENT):
            try:
                links.append(_open(w, grant, client))
            except Exception as exc:  # noqa: BLE001 - report the failure with the server's log
                raise SystemExit(f"session {i} did not open: {exc}\n"
                                 f"{w.server.log_path.read_text()[-3000:]}") from None
        opened = time.perf_counter() - t0
        for i, link in enumerate(links):
            link.send(Data(data=f"echo ALIVE-{i}-$((1+1))\r".encode()))
        for i, link in enumerate(links):
            _until(link, f"ALIVE-{i}-2".encode())
        answered = time.perf_counter() - t0
        cpu0 = _cpu_s(server_pid)
        time.sleep(10)
        idle_cpu = _cpu_s(server_pid) - cpu0
        rss_kb = int(next(x for x in Path(f"/proc/{server_pid}/status").read_text().splitlines()
                          if x.startswith("VmRSS")).split()[1])
        for link in links:
            _close(link)
        results["concurrent_sessions"] = {
            "sessions": CONCURRENT, "open_all_s": round(opened, 1), "all_answered_s": round(answered, 1),
            "server_idle_cpu_pct_all_open": round(idle_cpu / 10 * 100, 2),
            "server_idle_cpu_pct_per_session": round(idle_cpu / 10 * 100 / CONCURRENT, 4),
            "server_rss_mb_all_open": round(rss_kb / 1024, 1)}
        client.close()
    text = json.dumps(results, indent=1)
    print(text)
    Path(out_path).write_text(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/results/session.json")
