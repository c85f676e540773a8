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
    PYTHONPATH=.:tests python bench/scale_bench.py storm N [N…] [out.json]

``storm``: N simulated agents connected to one node, which is killed (-9) and started
again; measured: the seconds from the restarted node's first answer until every agent
has completed its handshake again, and how many handshakes it told to try again later.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
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


@dataclass
class Fleet:
    base: Path
    nodes: list[RunningServer]
    tid: str
    tech: Any
    approvers: list[tuple[Any, Any]]
    tech_key: Any
    devices: list[str]
    readies: list[Path]
    sims: list[subprocess.Popen[bytes]]
    posting: dict[str, Any] = field(default_factory=dict)


@contextmanager
def fleet(n: int, count: int, *, listed: bool = False) -> Iterator[Fleet]:
    """``count`` nodes on one PostgreSQL and NATS, ``n`` simulated agents approved and connected,
    spread evenly (each simulator enrols its share through its own node). ``listed``: each
    simulator is given every node's gateway, its own node's first (agent_gateways)."""
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
        gateways = [f"wss://127.0.0.1:{node.agent_port}/agent/v1/ws" for node in nodes]
        for i, node in enumerate(nodes):  # each simulator enrols its share through its own node
            share = tokens[i::count]
            (base / f"tokens-{i}").write_text("\n".join(share))
            ready = base / f"ready-{i}"
            readies.append(ready)
            listing = [x for url in gateways[i:] + gateways[:i] for x in ("--gateway", url)] if listed else []
            sims.append(subprocess.Popen(
                [sys.executable, str(Path(__file__).parent / "sim_agents.py"), "--server", node.url,
                 "--cert-sha256", node.cert_sha256, "--root-sha256", trust.root_sha256(root.encode()),
                 "--tokens", str(base / f"tokens-{i}"), "--ready", str(ready), *listing]))
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
        yield Fleet(base, nodes, tid, tech, [(a1, k1), (a2, k2)], tk, devices, readies, sims)
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


def _submit(f: Fleet) -> str:
    """A grant (two approvers) and one job to every agent, stored through the first node."""
    tid, tech, tk, devices = f.tid, f.tech, f.tech_key, f.devices
    g = ok(tech.http.post(f"/tenants/{tid}/grants", json={
        "devices": devices, "capabilities": ["script"], "duration_s": 3600, "reason": "bench",
        "device_set": True}))
    env = trust.decode_envelope(g["envelope"].encode())
    for who, key in f.approvers:
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
    f.posting = {"envelope": envelope.decode(), "payloads": {"script": base64.b64encode(script).decode()},
                 "devices": devices}
    return job.id


def _post_and_wait(f: Fleet, job_id: str, after_post: Any = None) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    ok(f.tech.http.post(f"/tenants/{f.tid}/jobs", json=f.posting))
    if after_post is not None:
        after_post()
    while True:
        summary = ok(f.tech.http.get(f"/jobs/{job_id}/summary"))
        if summary["states"].get("done", 0) == len(f.devices):
            return time.perf_counter() - t0, summary
        if time.perf_counter() - t0 > 300:
            raise TimeoutError(f"only {summary['states']} after 300 s")
        time.sleep(0.1)


def fanout(f: Fleet) -> dict[str, Any]:
    """One job to every agent, stored through the first node: seconds until every receipt is stored."""
    job_id = _submit(f)
    nodes = f.nodes
    cpu0 = [cpu_s(node.proc.pid) for node in nodes if node.proc]
    all_s, summary = _post_and_wait(f, job_id)
    cpu = [cpu_s(node.proc.pid) - c for node, c in zip(nodes, cpu0, strict=True) if node.proc]
    n = len(f.devices)
    return {"nodes": len(nodes), "agents": n, "run_to_all_receipts_s": round(all_s, 2),
            "node_cpu_during_job_s": [round(c, 2) for c in cpu],
            "receipts_refused": n - summary["outcomes"].get("ran", 0)}


def failover(f: Fleet) -> dict[str, Any]:
    """One job to every agent, stored through node 1; node 2 is killed (-9) right after. Its
    agents move to node 1 (their gateway list); every receipt must be stored, each agent must
    have run the job once (a second delivery is refused by the agent as a replay: counted)."""
    job_id = _submit(f)
    all_s, summary = _post_and_wait(f, job_id, after_post=lambda: f.nodes[1].stop(kill=True))
    for sim in f.sims:
        sim.terminate()
    finals = [wait_file(Path(str(ready) + ".final"), sim, 60)
              for ready, sim in zip(f.readies, f.sims, strict=True)]
    n = len(f.devices)
    return {"nodes": len(f.nodes), "agents": n, "killed": "node 2, right after the job was stored",
            "run_to_all_receipts_s": round(all_s, 2),
            "receipts_stored_ran": summary["outcomes"].get("ran", 0),
            "jobs_answered_by_agents": sum(x["jobs_answered"] for x in finals),
            "receipts_sent_again": sum(x["receipts_resent"] for x in finals),
            "agent_refusals": sorted({r for x in finals for r in x["refusals"]})}


def storm(f: Fleet) -> dict[str, Any]:
    """The one node is killed (-9) and started again: seconds until every agent is back."""
    [node] = f.nodes
    for ready in f.readies:
        Path(str(ready) + ".storm").touch()
    t_kill = time.time()
    node.stop(kill=True)
    node.start()
    t_up = time.time()
    back = [wait_file(Path(str(ready) + ".reconnected"), sim, 600)
            for ready, sim in zip(f.readies, f.sims, strict=True)]
    last = max(b["last_connected_at"] for b in back)
    log = node.log_path.read_text(errors="replace")
    return {"agents": len(f.devices), "all_back_after_restart_s": round(last - t_up, 2),
            "all_back_after_kill_s": round(last - t_kill, 2),
            "restart_s": round(t_up - t_kill, 2),
            "told_busy_1013": sum(b["told_busy"] for b in back),
            "node_logged_busy": "busy:" in log}


def main(argv: list[str]) -> int:
    if len(argv) > 1 and argv[1] == "storm":
        return storm_main(argv[1:])
    if len(argv) > 1 and argv[1] == "failover":
        return failover_main(argv[1:])
    n = int(argv[1]) if len(argv) > 1 else 1000
    count = int(argv[2]) if len(argv) > 2 else 2
    with fleet(n, 1) as f:
        baseline = fanout(f)
    with fleet(n, count) as f:
        spread = fanout(f)
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


def failover_main(argv: list[str]) -> int:
    """``failover N [out.json]``: the node-kill fault at N simulated agents on two nodes."""
    n = int(argv[1]) if len(argv) > 1 and argv[1].isdigit() else 1000
    out = next((x for x in argv[1:] if not x.isdigit()), None)
    with fleet(n, 2, listed=True) as f:
        run = failover(f)
    ok_ = (run["receipts_stored_ran"] == n and run["jobs_answered_by_agents"] == n
           and not run["agent_refusals"])
    result = {
        "benchmark": "node killed mid fan-out",
        "conditions": "2-core machine; two nodes on one PostgreSQL (fsync off) and NATS; simulated "
                      "agents (real TLS, real verification, signed receipts) with both gateways, "
                      "their own node's first; node 2 killed with -9 right after the job is stored",
        "run": run, "nothing_lost_nothing_twice": ok_,
    }
    print(json.dumps(result))
    if out:
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if ok_ else 1


def storm_main(argv: list[str]) -> int:
    """``storm N... [out.json]``: a reconnect storm at each fleet size, one node."""
    sizes = [int(x) for x in argv[1:] if x.isdigit()] or [1000]
    out = next((x for x in argv[1:] if not x.isdigit()), None)
    runs = []
    for n in sizes:
        with fleet(n, 1) as f:
            runs.append(storm(f))
        print(json.dumps(runs[-1]), flush=True)
    result = {
        "benchmark": "reconnect storm",
        "conditions": "2-core machine; one node on PostgreSQL (fsync off, throwaway) with NATS joined; "
                      "the simulated agents (real TLS, signed hellos, the agent's back-off and 1013 "
                      "handling) share the cores; node killed with -9 and started again",
        "runs": runs, "target_s_at_10000": 60.0,
    }
    print(json.dumps(result))
    if out:
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
