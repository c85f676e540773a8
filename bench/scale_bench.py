"""Scale-out benchmark (issue 18): one job to N simulated agents spread over several nodes.

A real PostgreSQL cluster and a real ``nats-server`` on loopback; ``nodes``
real ``rampart server run --nats`` processes sharing both (one data
directory); N simulated agents (``bench/sim_agents.py``: real pinned TLS, real
verification with the trust core, signed receipts), each simulator process
enrolling its share through one node, so every node holds N / nodes agents.
The job is stored through the first node: the others learn of it by a NATS
doorbell. Measured: the time from submitting it until every receipt is stored,
and each node's CPU during the job.

The same run measures the baseline first: the same N agents on one node of
the same kind (PostgreSQL, NATS joined), so the ratio compares like with like
on this machine's two shared cores.

    PYTHONPATH=.:tests python bench/scale_bench.py [n_agents] [nodes] [out.json]
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet_bench import cpu_s, wait_file  # noqa: E402
from harness.nats import NatsServer  # noqa: E402
from harness.operators import bootstrap_owner, make_root, ok, sign_root, step_up  # noqa: E402
from harness.server import PostgresCluster, RunningServer, free_port, init_server  # noqa: E402

from rampart import trust  # noqa: E402


def _nodes(base: Path, pg: PostgresCluster, nats: NatsServer, count: int) -> list[RunningServer]:
    first = init_server(base / "node-1", pg.new_database())
    first.args, first.env = ["--nats", nats.url], nats.env()
    first.start()
    nodes = [first]
    for i in range(2, count + 1):
        node = replace(first, port=free_port(), agent_port=free_port(), proc=None,
                       log_path=base / f"node-{i}.log", _clients=[])
        node.start()
        nodes.append(node)
    return nodes


def one_run(n: int, count: int) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="rampart-scale-bench-"))
    pg = PostgresCluster()
    pg.start()
    nats = NatsServer(base / "nats").start()
    nodes: list[RunningServer] = []
    sims: list[subprocess.Popen[bytes]] = []
    try:
        nodes = _nodes(base, pg, nats, count)
        first = nodes[0]
        owner = bootstrap_owner(first)
        tenant = ok(owner.http.post("/tenants", json={"name": "fleet"}))
        tid = tenant["id"]
        a1 = owner.create_account("approver1", "approver", [tid])
        a2 = owner.create_account("approver2", "approver", [tid])
        tech = owner.create_account("tech", "technician", [tid])
        okey, k1, k2, tk = owner.add_key(tid), a1.add_key(tid), a2.add_key(tid), tech.add_key(tid)
        root = sign_root(make_root(tenant, 1, owners=[okey], approvers=[k1, k2], technicians=[tk]), [okey])
        ok(owner.http.post(f"/tenants/{tid}/roots", json={"envelope": root}))
        tokens = [ok(owner.http.post(f"/tenants/{tid}/enrollment-tokens", json={"ttl_s": 3600}))["token"]
                  for _ in range(n)]
        readies = []
        for i, node in enumerate(nodes):  # each simulator enrols its share through its own node
            share = tokens[i::count]
            (base / f"tokens-{i}").write_text("\n".join(share))
            ready = base / f"ready-{i}"
            readies.append(ready)
            sims.append(subprocess.Popen(
                [sys.executable, str(Path(__file__).parent / "sim_agents.py"), "--server", node.url,
                 "--cert-sha256", node.cert_sha256, "--root-sha256", trust.root_sha256(root.encode()),
                 "--tokens", str(base / f"tokens-{i}"), "--ready", str(ready)]))
        devices: list[str] = []
        for ready, sim in zip(readies, sims, strict=True):
            devices += wait_file(Path(str(ready) + ".enrolled"), sim, 600)["devices"]
        for d in devices:
            ok(owner.http.post(f"/tenants/{tid}/devices/{d}/approve"))
        for ready in readies:
            Path(str(ready) + ".go").touch()
        for ready, sim in zip(readies, sims, strict=True):
            wait_file(Path(str(ready) + ".warm"), sim, 600)
        for ready in readies:
            Path(str(ready) + ".go2").touch()
        for ready, sim in zip(readies, sims, strict=True):
            wait_file(ready, sim, 600)
        g = ok(tech.http.post(f"/tenants/{tid}/grants", json={
            "devices": devices, "capabilities": ["script"], "duration_s": 3600, "reason": "bench",
            "device_set": True}))
        env = trust.decode_envelope(g["envelope"].encode())
        for who, key in ((a1, k1), (a2, k2)):
            step_up(who)
            env = trust.add_signature(env, key)
            ok(who.http.post(f"/grants/{g['id']}/signatures", json={"envelope": env.to_bytes().decode()}))
        script = b"#!/bin/sh\necho patched\n"
        now = int(time.time())
        job = trust.Job(id=trust.new_job_id(), tenant=tid, grant=g["id"], signer=tk.key_id,
                        device_set=trust.commit_devices(devices),
                        action=trust.Action(kind="script", payloads=[trust.PayloadRef(
                            name="script", sha256=hashlib.sha256(script).hexdigest(), size=len(script))]),
                        nonce=trust.new_nonce(), issued_at=now, expires_at=now + 600)
        envelope = trust.sign_envelope(trust.Job.PAYLOAD_TYPE, trust.encode_payload(job), [tk]).to_bytes()
        step_up(tech)
        cpu0 = [cpu_s(node.proc.pid) for node in nodes if node.proc]
        t0 = time.perf_counter()
        ok(tech.http.post(f"/tenants/{tid}/jobs", json={
            "envelope": envelope.decode(), "payloads": {"script": base64.b64encode(script).decode()},
            "devices": devices}))
        while True:
            summary = ok(tech.http.get(f"/jobs/{job.id}/summary"))
            if summary["states"].get("done", 0) == n:
                break
            if time.perf_counter() - t0 > 300:
                raise TimeoutError(f"only {summary['states']} after 300 s")
            time.sleep(0.1)
        all_s = time.perf_counter() - t0
        cpu = [cpu_s(node.proc.pid) - c for node, c in zip(nodes, cpu0, strict=True) if node.proc]
        return {"nodes": count, "agents": n, "run_to_all_receipts_s": round(all_s, 2),
                "node_cpu_during_job_s": [round(c, 2) for c in cpu],
                "receipts_refused": n - summary["outcomes"].get("ran", 0)}
    finally:
        for sim in sims:
            sim.terminate()
            try:
                sim.wait(timeout=30)
            except subprocess.TimeoutExpired:
                sim.kill()
        for node in reversed(nodes):
            node.stop()
        nats.stop()
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str]) -> int:
    n = int(argv[1]) if len(argv) > 1 else 1000
    count = int(argv[2]) if len(argv) > 2 else 2
    baseline = one_run(n, 1)
    spread = one_run(n, count)
    result = {
        "benchmark": "scale-out fan-out",
        "conditions": "2-core machine; PostgreSQL (fsync off, throwaway), nats-server and every node and "
                      "simulator process share the cores; job stored through node 1",
        "one_node": baseline, "spread": spread,
        "spread_over_one_node": round(spread["run_to_all_receipts_s"] / baseline["run_to_all_receipts_s"], 2),
        "target_receipts_s_at_10000": 5.0,
    }
    print(json.dumps(result))
    if len(argv) > 3:
        Path(argv[3]).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
