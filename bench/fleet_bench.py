"""Fleet benchmark: 1,000 simulated agents against one real server process.

Each simulated agent (``bench/sim_agents.py``, a separate process) has a real
WebSocket connection over pinned TLS, its own device key, and verifies every
job with the real trust core before signing its receipt. Measured:

* time to connect all agents (TLS + challenge/hello/welcome);
* time from submitting a signed job to 1,000 devices (the API call
  ``rampart run`` makes) until all 1,000 receipts are stored on the server;
* server resident memory per connected agent (marginal: measured after the
  first 50 connections have warmed one-time caches; the figure including
  warm-up is reported too), and before and after the job;
* CPU seconds the server process and the simulator used during the job (they
  share the machine's two cores, so both are shown).

The job and its grant commit their device set (issue 17: constant-size
envelopes, a proof per device) unless ``--listed`` asks for the old format.

Targets on the reference 2-core machine: every receipt within 5 s, at most
40 KiB of server memory per agent, server memory after the job within 10 % of
before it.

    PYTHONPATH=.:tests python bench/fleet_bench.py [n_agents] [out.json] [--listed]
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness.operators import bootstrap_owner, make_root, ok, sign_root, step_up  # noqa: E402
from harness.server import start_server  # noqa: E402

from rampart import trust  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def delivery_phases(data_dir: Path, job_id: str) -> dict[str, float]:
    """Server-side fan-out timeline from the store: last job sent, last receipt stored."""
    import sqlite3

    db = sqlite3.connect(data_dir / "rampart.db")
    try:
        created = db.execute("SELECT created_at FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        last_sent, last_done = db.execute(
            "SELECT MAX(sent_at), MAX(done_at) FROM job_targets WHERE job_id = ?", (job_id,)).fetchone()
    finally:
        db.close()
    return {"server_last_job_sent_s": round(last_sent - created, 2),
            "server_last_receipt_stored_s": round(last_done - created, 2)}


def wait_file(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> dict:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"simulator exited with {proc.returncode}")
        if time.time() > deadline:
            raise TimeoutError(path)
        time.sleep(0.05)
    time.sleep(0.05)
    return dict(json.loads(path.read_text()))


def _profile(pid: int, env: str) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the server into the file named by ``env`` (unset: no profile).
    RAMPART_BENCH_PROFILE covers the job, RAMPART_BENCH_PROFILE_CONNECT the agents' connects."""
    if not os.environ.get(env):
        return None
    spy = subprocess.Popen(["py-spy", "record", "-p", str(pid), "-r", "200", "--gil",
                            "--nonblocking", "-f", "raw", "-o", os.environ[env]])
    time.sleep(1.0)
    return spy


def _stop_profile(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)


def run(n: int = 1000, *, listed: bool = False) -> dict:
    base = Path(tempfile.mkdtemp(prefix="rampart-fleet-bench-"))
    server = start_server(base)
    assert server.proc is not None
    sim = None
    try:
        owner = bootstrap_owner(server)
        tenant = ok(owner.http.post("/tenants", json={"name": "fleet"}))
        tid = tenant["id"]
        a1 = owner.create_account("approver1", "approver", [tid])
        a2 = owner.create_account("approver2", "approver", [tid])
        tech = owner.create_account("tech", "technician", [tid])
        okey, k1, k2, tk = owner.add_key(tid), a1.add_key(tid), a2.add_key(tid), tech.add_key(tid)
        root = sign_root(make_root(tenant, 1, owners=[okey], approvers=[k1, k2], technicians=[tk]),
                         [okey])
        ok(owner.http.post(f"/tenants/{tid}/roots", json={"envelope": root}))
        tokens = [ok(owner.http.post(f"/tenants/{tid}/enrollment-tokens", json={"ttl_s": 3600}))["token"]
                  for _ in range(n)]
        (base / "tokens").write_text("\n".join(tokens))
        rss_before = rss_kib(server.proc.pid)
        ready = base / "ready"
        sim = subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "sim_agents.py"), "--server", server.url,
             "--cert-sha256", server.cert_sha256, "--root-sha256", trust.root_sha256(root.encode()),
             "--tokens", str(base / "tokens"), "--ready", str(ready)])
        enrolled = wait_file(Path(str(ready) + ".enrolled"), sim, 600)
        devices = enrolled["devices"]
        for d in devices:
            ok(owner.http.post(f"/tenants/{tid}/devices/{d}/approve"))
        Path(str(ready) + ".go").touch()
        warm = wait_file(Path(str(ready) + ".warm"), sim, 600)["warm"]
        time.sleep(2.0)
        rss_warm = rss_kib(server.proc.pid)
        connect_spy = _profile(server.proc.pid, "RAMPART_BENCH_PROFILE_CONNECT")
        connect_cpu0 = cpu_s(server.proc.pid), cpu_s(sim.pid)
        Path(str(ready) + ".go2").touch()
        connected = wait_file(ready, sim, 600)
        connect_cpu = cpu_s(server.proc.pid) - connect_cpu0[0], cpu_s(sim.pid) - connect_cpu0[1]
        _stop_profile(connect_spy)
        time.sleep(2.0)  # let allocations settle
        rss_connected = rss_kib(server.proc.pid)
        # A grant for all devices needs two approvers (policy: more than 10 devices).
        g = ok(tech.http.post(f"/tenants/{tid}/grants", json={
            "devices": devices, "capabilities": ["script"], "duration_s": 3600, "reason": "bench",
            "device_set": not listed}))
        env = trust.decode_envelope(g["envelope"].encode())
        for who, key in ((a1, k1), (a2, k2)):
            step_up(who)  # approving beyond single-approver reach needs a fresh TOTP (G5)
            env = trust.add_signature(env, key)
            ok(who.http.post(f"/grants/{g['id']}/signatures", json={"envelope": env.to_bytes().decode()}))
        script = b"#!/bin/sh\necho patched\n"
        now = int(time.time())
        targets: dict[str, object] = ({"devices": devices} if listed
                                      else {"device_set": trust.commit_devices(devices)})
        job = trust.Job(id=trust.new_job_id(), tenant=tid, grant=g["id"], signer=tk.key_id,
                        **targets,  # type: ignore[arg-type]
                        action=trust.Action(kind="script", payloads=[trust.PayloadRef(
                            name="script", sha256=hashlib.sha256(script).hexdigest(), size=len(script))]),
                        nonce=trust.new_nonce(), issued_at=now, expires_at=now + 600)
        envelope = trust.sign_envelope(trust.Job.PAYLOAD_TYPE, trust.encode_payload(job), [tk]).to_bytes()
        body: dict[str, object] = {"envelope": envelope.decode(),
                                   "payloads": {"script": base64.b64encode(script).decode()}}
        if not listed:
            body["devices"] = devices
        step_up(tech)  # a job to more than 10 devices in an hour needs a fresh TOTP (G5)
        spy = _profile(server.proc.pid, "RAMPART_BENCH_PROFILE")
        cpu_server0, cpu_sim0 = cpu_s(server.proc.pid), cpu_s(sim.pid)
        t0 = time.perf_counter()
        ok(tech.http.post(f"/tenants/{tid}/jobs", json=body))
        submit_s = time.perf_counter() - t0
        while True:
            summary = ok(tech.http.get(f"/jobs/{job.id}/summary"))
            done = summary["states"].get("done", 0)
            if done == n:
                break
            if time.perf_counter() - t0 > 300:
                raise TimeoutError(f"only {done} of {n} receipts after 300 s")
            time.sleep(0.1)
        all_receipts_s = time.perf_counter() - t0
        cpu_server, cpu_sim = cpu_s(server.proc.pid) - cpu_server0, cpu_s(sim.pid) - cpu_sim0
        _stop_profile(spy)
        refused = n - summary["outcomes"].get("ran", 0)
        phases = delivery_phases(server.data_dir, job.id)
        time.sleep(2.0)  # let allocations settle, as before the job
        rss_after = rss_kib(server.proc.pid)
        result = {
            "benchmark": "fleet",
            "agents": n,
            "format": "listed" if listed else "committed device set",
            "job_envelope_bytes": len(envelope),
            "grant_envelope_bytes": len(env.to_bytes()),
            "enrol_all_s": round(enrolled["enrol_s"], 2),
            "connect_all_s": round(connected["connect_s"], 2),
            # CPU of the connections after the warm-up ones (the two share the machine's cores).
            "server_cpu_ms_per_connect": round(1000 * connect_cpu[0] / max(1, n - warm), 2),
            "simulator_cpu_ms_per_connect": round(1000 * connect_cpu[1] / max(1, n - warm), 2),
            "job_submit_s": round(submit_s, 3),
            "run_to_all_receipts_s": round(all_receipts_s, 2),
            "receipts_refused": refused,
            "server_cpu_during_job_s": round(cpu_server, 2),
            "simulator_cpu_during_job_s": round(cpu_sim, 2),
            "server_rss_idle_mib": round(rss_before / 1024, 1),
            "server_rss_connected_mib": round(rss_connected / 1024, 1),
            "server_rss_after_job_mib": round(rss_after / 1024, 1),
            "server_rss_after_over_before_job": round(rss_after / rss_connected, 3),
            "server_kib_per_agent": round((rss_connected - rss_warm) / (n - warm), 1),
            "server_kib_per_agent_incl_warmup": round((rss_connected - rss_before) / n, 1),
            **phases,
            "target_receipts_s": 5.0,
            "target_kib_per_agent": 40,
            "target_rss_after_over_before_job": 1.10,
        }
        result["meets_targets"] = (result["run_to_all_receipts_s"] <= 5.0
                                   and result["server_kib_per_agent"] <= 40
                                   and result["server_rss_after_over_before_job"] <= 1.10 and not refused)
        return result
    finally:
        if sim is not None:
            sim.terminate()
            try:
                sim.wait(timeout=30)
            except subprocess.TimeoutExpired:
                sim.kill()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str]) -> int:
    listed = "--listed" in argv
    argv = [a for a in argv if a != "--listed"]
    n = int(argv[1]) if len(argv) > 1 else 1000
    result = run(n, listed=listed)
    print(json.dumps(result))
    if len(argv) > 2:
        Path(argv[2]).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
