"""Two real server nodes on one real PostgreSQL, joined by a real nats-server (issue 18).

The nodes share the data directory (keys, certificate) and the database; each
agent is enrolled through, and connected to, one node. What one node commits
reaches agents held by the other through a NATS doorbell, and what a lost
doorbell would have left waiting goes out when NATS comes back: the database is
the truth, NATS only says "look again" (docs/design/scale-out.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from harness.agent import AgentProcess, stop_all, traversable_dir
from harness.nats import NatsServer
from harness.operators import TenantSetup, approved_grant, bootstrap_owner, ok, setup_tenant
from harness.server import REPO, PostgresCluster, RunningServer, free_port, init_server

from rampart import trust
from rampart.server.chores_lease import ASK_WAIT_S, LOCK_KEY, ChoresLease
from rampart.server.db import Store
from rampart.server.doorbell import MAX_IDS, NatsOptions, parse, wake_messages
from rampart.trust import REVOCATION_TYPE

#: No redelivery sweep within a test: an agent on the other node gets work only through a doorbell
#: or the look-again when NATS comes back.
NO_SWEEP_S = 3600


@dataclass
class Deployment:
    pg: PostgresCluster
    nats: NatsServer
    a: RunningServer
    b: RunningServer
    base: Path
    agents: list[AgentProcess] = field(default_factory=list)

    def wait_joined(self, node: RunningServer, since: int = 0, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = node.log_path.read_text(errors="replace")[since:]
            if "joined the deployment" in text or "NATS back" in text:
                return
            time.sleep(0.2)
        raise TimeoutError(f"{node.log_path} never joined NATS:\n{node.log_path.read_text()[-2000:]}")


def _node(base: Path, first: RunningServer, nats: NatsServer) -> RunningServer:
    """Another node of ``first``'s deployment: same data directory and database, its own ports."""
    return RunningServer(data_dir=first.data_dir, port=free_port(), cert_sha256=first.cert_sha256,
                         bootstrap_token=first.bootstrap_token, db_url=first.db_url,
                         log_path=base / "node-b.log", args=["--nats", nats.url], env=nats.env())


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    pg = PostgresCluster()
    pg.start()
    nats = NatsServer(tmp_path / "nats").start()
    a = b = None
    base = traversable_dir("rampart-nodes-")
    try:
        a = init_server(tmp_path / "a", pg.new_database())
        cfg = a.data_dir / "config.json"
        cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "redelivery_interval_s": NO_SWEEP_S}))
        a.args, a.env = ["--nats", nats.url], nats.env()
        a.start()
        b = _node(tmp_path, a, nats)
        b.start()
        d = Deployment(pg, nats, a, b, base)
        d.wait_joined(a)
        d.wait_joined(b)
        yield d
        stop_all(d.agents)
    finally:
        for node in (b, a):
            if node is not None:
                node.stop()
        nats.stop()
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


def _enrol(d: Deployment, t: TenantSetup, node: RunningServer, name: str, scratch: Path,
           *extra: str) -> AgentProcess:
    tok = ok(t.owner.http.post(f"/tenants/{t.id}/enrollment-tokens", json={"ttl_s": 600}))
    agent = AgentProcess(d.base / name)
    r = agent.enroll(node.url, tok["token"], tok["root_sha256"], node.cert_sha256,
                     "--write-root", str(scratch), *extra)
    assert r.returncode == 0, r.stderr
    ok(t.owner.http.post(f"/tenants/{t.id}/devices/{agent.device_id}/approve"))
    d.agents.append(agent.start())
    agent.wait_log(f"connected to wss://127.0.0.1:{node.agent_port}", timeout=60)
    return agent


def _post_job(t: TenantSetup, grant: str, devices: list[str], script: bytes, writes: Path) -> str:
    """Submit a script job (signed by the technician) that may write in ``writes``."""
    now = int(time.time())
    job = trust.Job(id=trust.new_job_id(), tenant=t.id, grant=grant, signer=t.tech_key.key_id,
                    devices=devices, action=trust.Action(kind="script", payloads=[trust.PayloadRef(
                        name="script", sha256=hashlib.sha256(script).hexdigest(), size=len(script))]),
                    declared=trust.Declared(writes=[str(writes)]),
                    nonce=trust.new_nonce(), issued_at=now, expires_at=now + 3600)
    env = trust.sign_envelope(job.PAYLOAD_TYPE, trust.encode_payload(job), [t.tech_key])
    ok(t.tech.http.post(f"/tenants/{t.id}/jobs", json={
        "envelope": env.to_bytes().decode(), "payloads": {"script": base64.b64encode(script).decode()}}))
    return job.id


def _targets(t: TenantSetup, job_id: str) -> dict[str, dict[str, Any]]:
    return {x["device"]: x for x in ok(t.owner.http.get(f"/jobs/{job_id}"))["targets"]}


def _wait_receipts(t: TenantSetup, job_id: str, devices: list[str], timeout: float = 45) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = _targets(t, job_id)
        if all(got[dev]["receipt"] for dev in devices):
            return got
        time.sleep(0.2)
    raise TimeoutError(f"receipts of {job_id} missing: {_targets(t, job_id)}")


def test_a_job_stored_on_one_node_runs_on_agents_of_both_and_a_nats_outage_loses_nothing(
        deployment: Deployment) -> None:
    d = deployment
    scratch = d.base / "scratch"
    scratch.mkdir()
    scratch.chmod(0o777)
    owner = bootstrap_owner(d.a)
    t = setup_tenant(owner, "acme")
    on_a = _enrol(d, t, d.a, "agent-a", scratch)
    on_b = _enrol(d, t, d.b, "agent-b", scratch)
    devices = [on_a.device_id, on_b.device_id]
    grant = approved_grant(t, devices)

    # Stored on node A: the agent held by node B runs it at once (a doorbell; no sweep runs).
    job = _post_job(t, grant, devices, f"mktemp {scratch}/ran.XXXXXX\n".encode(), scratch)
    got = _wait_receipts(t, job, devices, timeout=30)
    assert {dev: got[dev]["receipt"]["outcome"] for dev in devices} == {dev: "ran" for dev in devices}
    assert len(list(scratch.glob("ran.*"))) == 2  # one file per run (the agents run as different users)

    # Both nodes report both agents connected (each holds one; the other said so over NATS).
    for node in (d.a, d.b):
        with node.client(t.owner.token) as c:
            deadline = time.monotonic() + 30
            while True:
                shown = {x["id"]: x["connected"] for x in ok(c.get(f"/tenants/{t.id}/devices"))}
                if shown == {dev: True for dev in devices}:
                    break
                assert time.monotonic() < deadline, (node.log_path, shown)
                time.sleep(0.5)

    # An inventory asked for on node A reaches the agent held by node B.
    asked = ok(t.owner.http.post(f"/tenants/{t.id}/devices/{on_b.device_id}/inventory-request",
                                 json={"full": False}))
    assert asked["connected"] is True
    on_b.wait_log("the server asked for an inventory", timeout=20)

    # A revocation approved on node A reaches the agent on node B at once.
    other = ok(t.tech.http.post(f"/tenants/{t.id}/grants", json={
        "devices": [on_b.device_id], "capabilities": ["script"], "duration_s": 600, "reason": "second"}))
    signed = trust.add_signature(trust.decode_envelope(other["envelope"].encode()), t.approver_key)
    ok(t.approver.http.post(f"/grants/{other['id']}/signatures",
                            json={"envelope": signed.to_bytes().decode()}))
    rev = trust.Revocation(tenant=t.id, grant=other["id"], issued_at=int(time.time()), reason="done")
    ok(t.approver.http.post(f"/grants/{other['id']}/revocation", json={
        "envelope": trust.sign_envelope(REVOCATION_TYPE, trust.encode_payload(rev),
                                        [t.approver_key]).to_bytes().decode()}))
    on_b.wait_log("1 grant(s) revoked", timeout=20)

    # NATS stops: the doorbell for the next job is lost, and the agent on node B waits ...
    d.nats.stop()
    later = scratch / "later.txt"
    job2 = _post_job(t, grant, [on_b.device_id], f"echo once >> {later}\n".encode(), scratch)
    time.sleep(5)
    assert _targets(t, job2)[on_b.device_id]["receipt"] is None and not later.exists()
    # ... until NATS is back: every node looks again, and the job runs exactly once.
    seen = len(d.b.log_path.read_text(errors="replace"))
    d.nats.start()
    d.wait_joined(d.b, since=seen)
    _assert_ran_once(t, job2, on_b.device_id, later)


def _assert_ran_once(t: TenantSetup, job: str, device: str, record: Path) -> None:
    """The job's receipt is stored as ``ran``, it wrote "once" to ``record`` a single time, and no
    second delivery follows."""
    got = _wait_receipts(t, job, [device], timeout=30)
    assert got[device]["receipt"]["outcome"] == "ran"
    time.sleep(2)  # a second delivery, were there one, would have run by now
    assert record.read_text().splitlines() == ["once"]
    assert [x["state"] for x in _targets(t, job).values()] == ["done"]


def test_a_node_stopped_cleanly_its_agents_try_the_next_gateway_and_nothing_is_lost(
        deployment: Deployment) -> None:
    """No balancer: the agent knows both nodes' gateways (`enroll --gateway`, as a deployment's
    `agent_gateways` names them). Node A stops cleanly; the agent connects to node B by itself,
    and a job stored on B while A is gone runs there exactly once with its receipt stored."""
    d = deployment
    scratch = d.base / "scratch"
    scratch.mkdir()
    scratch.chmod(0o777)
    owner = bootstrap_owner(d.b)  # the operators' clients talk to node B, which stays
    t = setup_tenant(owner, "acme")
    gateways = [f"wss://127.0.0.1:{n.agent_port}/agent/v1/ws" for n in (d.a, d.b)]
    agent = _enrol(d, t, d.a, "agent", scratch, "--gateway", gateways[0], "--gateway", gateways[1])
    grant = approved_grant(t, [agent.device_id])
    d.a.stop()
    agent.wait_log(f"connected to {gateways[1]}", timeout=30)
    ran = scratch / "ran.txt"
    job = _post_job(t, grant, [agent.device_id], f"echo once >> {ran}\n".encode(), scratch)
    _assert_ran_once(t, job, agent.device_id, ran)


def test_T15_postgresql_restarted_mid_fanout_loses_nothing_and_runs_nothing_twice(
        deployment: Deployment) -> None:
    """Four real agents, two on each node; a job to all four is stored and PostgreSQL is
    restarted at once (every node's connections end mid fan-out, receipts arrive while it is
    down). Every target runs the job exactly once (the agents' own record), every receipt is
    stored, the nodes serve again, and one node holds the chores lease again."""
    from harness.fleet import record_scratch

    d = deployment
    scratch = record_scratch(d.base)
    owner = bootstrap_owner(d.a)
    t = setup_tenant(owner, "acme")
    agents = [_enrol(d, t, node, f"agent-{i}", scratch) for i, node in enumerate((d.a, d.a, d.b, d.b))]
    devices = [a.device_id for a in agents]
    grant = approved_grant(t, devices)
    job = _post_job(t, grant, devices, RECORD % str(scratch).encode(), scratch)
    d.pg.restart(down_s=2)
    got = _wait_receipts(t, job, devices, timeout=120)
    assert {dev: got[dev]["receipt"]["outcome"] for dev in devices} == {dev: "ran" for dev in devices}
    time.sleep(3)  # a second delivery, were there one, would have run by now
    runs = (scratch / "runs.log").read_text().splitlines()
    assert sorted(runs) == sorted(f"{dev} {job}" for dev in devices)  # each exactly once
    assert {x["state"] for x in _targets(t, job).values()} == {"done"}
    for node in (d.a, d.b):
        with node.client() as c:
            assert c.get("/health").json()["status"] == "ok"
    deadline = time.monotonic() + 30
    while _lease_holders(d) != 1:
        assert time.monotonic() < deadline, "no node took the chores lease again"
        time.sleep(0.5)


LEASE_LINE = "this node runs the deployment's periodic chores"


def _lease_holders(d: Deployment) -> int:
    import psycopg
    with psycopg.connect(d.a.db_url or "") as conn:
        return int(conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s "
                                "AND database = (SELECT oid FROM pg_database WHERE datname = "
                                "current_database())", (LOCK_KEY,)).fetchone()[0])  # type: ignore[index]


def test_one_node_runs_the_chores_and_another_takes_over_when_it_dies(deployment: Deployment) -> None:
    """Alert delivery, the scheduler and the sweeps run on one node of the deployment (a second
    would notify twice); when that node is killed, another takes the lease within seconds."""
    d = deployment

    def holders() -> list[RunningServer]:
        return [n for n in (d.a, d.b) if LEASE_LINE in n.log_path.read_text(errors="replace")]

    deadline = time.monotonic() + 30
    while not holders() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # both nodes have asked by now (alert delivery asks every 2 s)
    [leader] = holders()
    assert _lease_holders(d) == 1
    [other] = [n for n in (d.a, d.b) if n is not leader]
    leader.stop(kill=True)
    deadline = time.monotonic() + 30
    while LEASE_LINE not in other.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, other.log_path.read_text()[-2000:]
        time.sleep(0.2)
    assert _lease_holders(d) == 1
    # A third asker gets no lease while a node holds it, and does not wait long on a question
    # already being asked (chores share the worker threads with requests): after ASK_WAIT_S it
    # gets the last answer.
    store = Store(d.a.db_url or "")
    try:
        lease = ChoresLease(store)
        assert lease.held() is False
        answers: list[bool] = []
        with lease._lock:  # another worker thread is asking right now
            asker = threading.Thread(target=lambda: answers.append(lease.held()), daemon=True)
            asker.start()
            asker.join(timeout=ASK_WAIT_S + 5)
        assert answers == [False]
        assert _lease_holders(d) == 1
    finally:
        store.engine.dispose()


def _run_cmd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os
    return subprocess.run([sys.executable, "-m", "rampart.server", "run", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO, env={**os.environ, **(env or {})})


def test_T1_nats_credentials_in_the_url_are_refused_and_never_echoed(tmp_path: Path) -> None:
    srv = init_server(tmp_path, None)
    r = _run_cmd("--data", str(srv.data_dir), "--nats", "nats://rampart:hunter2-secret@127.0.0.1:4222")
    assert r.returncode == 2 and "--nats must not hold credentials" in r.stderr
    assert "hunter2" not in r.stdout + r.stderr
    # SQLite serves one process: a node cannot join a deployment on it.
    r = _run_cmd("--data", str(srv.data_dir), "--nats", "nats://127.0.0.1:4222")
    assert r.returncode == 2 and "share one PostgreSQL" in r.stderr
    r = _run_cmd("--data", str(srv.data_dir), "--nats", "http://127.0.0.1:4222")
    assert r.returncode == 2 and "nats://" in r.stderr
    r = _run_cmd("--data", str(srv.data_dir), "--nats", "nats://127.0.0.1:4222",
                 env={"RAMPART_NATS_USER": "rampart"})
    assert r.returncode == 2 and "RAMPART_NATS_PASSWORD" in r.stderr
    options = NatsOptions.resolve("nats://127.0.0.1:4222",
                                  env={"RAMPART_NATS_USER": "u", "RAMPART_NATS_PASSWORD": "s3cret-pw"})
    assert options.password == "s3cret-pw" and "s3cret-pw" not in repr(options)


def test_T1_forged_or_oversized_doorbells_are_dropped_unread() -> None:
    """A doorbell is only "look again"; one that is not well formed is not even that."""
    good = wake_messages([f"dv-{i:026d}" for i in range(MAX_IDS + 1)])
    assert [len(json.loads(body)["devices"]) for _, body in good] == [MAX_IDS, 1]
    assert parse(*good[0]) == ("wake", None, json.loads(good[0][1])["devices"])
    [(subject, longest)] = wake_messages(["d" * 64] * MAX_IDS)  # a full chunk of the longest ids
    assert parse(subject, longest) is not None
    assert parse("rampart.tenant.tn-abc", b'{"what": "roots"}') == ("tenant", "tn-abc", "roots")
    assert parse("rampart.detection", b"{}") == ("detection", None, None)
    assert parse("rampart.inventory", b'{"devices": ["dv-1"], "full": true}') == (
        "inventory", None, (["dv-1"], True))
    for subject, body in [
        ("rampart.inventory", b'{"devices": ["dv-1"], "full": "yes"}'),
        ("rampart.inventory", b'{"devices": ["dv 1"]}'),
        ("rampart.wake", json.dumps({"devices": ["dv-1"] * (MAX_IDS + 1)}).encode()),  # too many
        ("rampart.wake", b'{"devices": ["../etc/passwd"]}'),  # not an id
        ("rampart.wake", b'{"devices": "dv-1"}'),
        ("rampart.wake", b"\xff\xfe"),  # not JSON
        ("rampart.wake", b"[]"),
        ("rampart.tenant.tn-abc", b'{"what": "drop tables"}'),  # no such change
        ("rampart.tenant.tn a", b'{"what": "roots"}'),
        ("rampart.other.tn-abc", b'{"what": "roots"}'),
        ("rampart.wake", b'{"devices": []}' + b" " * (128 * 1024)),  # over the size limit
        ("rampart.presence.n1", b'{"epoch": 1, "part": 1, "parts": 1, "devices": []}'),  # no part 1 of 1
        ("rampart.presence.n1", b'{"epoch": 1, "part": 0, "parts": 101, "devices": []}'),  # too many parts
        ("rampart.presence.n1", b'{"epoch": "1", "part": 0, "parts": 1, "devices": []}'),
        ("rampart.presence.n.1", b'{"epoch": 1, "part": 0, "parts": 1, "devices": []}'),
    ]:
        assert parse(subject, body) is None, subject


class _Heard:
    """What the gateway was asked to do by the doorbells a node heard."""

    def __init__(self) -> None:
        self.woken: list[list[str]] = []
        self.changed: list[tuple[str, str]] = []
        self.detection = 0
        self.present: dict[str, frozenset[str]] = {}

    def wake_local(self, device_ids: list[str]) -> None:
        self.woken.append(sorted(device_ids))

    def tenant_changed_local(self, tenant_id: str, what: str) -> None:
        self.changed.append((tenant_id, what))

    def detection_changed_local(self) -> None:
        self.detection += 1

    def inventory_local(self, device_ids: list[str], full: bool) -> None:
        raise AssertionError("not asked for here")

    def redeliver_all(self) -> None:
        raise AssertionError("not asked for here")

    def local_ids(self) -> list[str]:
        return []

    def presence(self, node: str, device_ids: frozenset[str], until: float) -> None:
        self.present[node] = device_ids


def test_presence_counts_only_a_complete_snapshot_and_never_an_older_one() -> None:
    """What another node says it holds replaces what it said before only when every part of one
    snapshot arrived; a late part of an older snapshot changes nothing."""
    import asyncio
    from types import SimpleNamespace

    from rampart.server.doorbell import Doorbell

    heard = _Heard()
    bell = Doorbell(NatsOptions.resolve("nats://127.0.0.1:4222", env={}), heard, node="test")

    def part(epoch: int, i: int, n: int, ids: list[str]) -> SimpleNamespace:
        return SimpleNamespace(subject="rampart.presence.n1", data=json.dumps(
            {"epoch": epoch, "part": i, "parts": n, "devices": ids}).encode())

    async def say() -> None:
        await bell._on_message(part(1, 0, 2, ["dv-a"]))
        assert heard.present == {}  # half a snapshot is none
        await bell._on_message(part(1, 1, 2, ["dv-b"]))
        assert heard.present == {"n1": frozenset({"dv-a", "dv-b"})}
        await bell._on_message(part(2, 0, 1, ["dv-c"]))
        assert heard.present == {"n1": frozenset({"dv-c"})}  # dv-a and dv-b moved elsewhere
        await bell._on_message(part(1, 0, 1, ["dv-a"]))  # late, from the older snapshot
        assert heard.present == {"n1": frozenset({"dv-c"})}

    asyncio.run(say())


def test_T1_a_doorbell_flood_costs_one_action_per_window() -> None:
    """Whoever holds NATS credentials may ring as often as they like: a node acts once per
    window for all the ids and once per tenant and change (each action reads the database)."""
    import asyncio
    from types import SimpleNamespace

    from rampart.server.doorbell import Doorbell

    heard = _Heard()
    bell = Doorbell(NatsOptions.resolve("nats://127.0.0.1:4222", env={}), heard, node="test")

    async def flood() -> None:
        for i in range(2000):
            await bell._on_message(SimpleNamespace(subject="rampart.tenant.tn-a", data=b'{"what": "roots"}'))
            await bell._on_message(SimpleNamespace(subject="rampart.detection", data=b"{}"))
            subject, body = wake_messages([f"dv-{i % 3}"])[0]
            await bell._on_message(SimpleNamespace(subject=subject, data=body))
        await bell._on_message(SimpleNamespace(subject="rampart.tenant.tn-b",
                                               data=b'{"what": "cancellations"}'))
        await bell._on_message(SimpleNamespace(subject="rampart.wake", data=b"not json"))
        await asyncio.sleep(0.3)

    asyncio.run(flood())
    assert heard.woken == [["dv-0", "dv-1", "dv-2"]]
    assert sorted(heard.changed) == [("tn-a", "roots"), ("tn-b", "cancellations")]
    assert heard.detection == 1
    assert (bell.heard, bell.dropped) == (6001, 1)


RECORD = b'echo "$RAMPART_DEVICE_ID $RAMPART_JOB_ID" >> %s/runs.log\n'


def test_T15_a_node_killed_mid_fanout_its_agents_move_to_the_other_and_nothing_runs_twice(
        tmp_path: Path) -> None:
    """Two nodes on 127.0.0.2 and 127.0.0.3 behind a TCP balancer on 127.0.0.1 (the agents' one
    address); ten real agents spread over both. Two jobs stored on node A, which is killed (-9) at
    once: its agents reconnect through the balancer to node B, and every target runs each job
    exactly once, with every receipt stored (checked in the database and in the agents' own
    record of what ran)."""
    from harness.fleet import Fleet, job_writing, record_scratch
    from harness.operators import step_up
    from harness.tcp_balancer import TcpBalancer

    pg = PostgresCluster()
    pg.start()
    nats = NatsServer(tmp_path / "nats").start()
    port, agent_port = free_port(), free_port()
    base = traversable_dir("rampart-failover-")
    scratch = record_scratch(base)
    started: list[Any] = []
    agents: list[AgentProcess] = []
    try:
        a = init_server(tmp_path / "a", pg.new_database())
        a.host, a.port, a.agent_port = "127.0.0.2", port, agent_port
        a.args, a.env, a.log_path = ["--nats", nats.url], nats.env(), tmp_path / "node-a.log"
        a.start()
        started.append(a)
        b = RunningServer(data_dir=a.data_dir, port=port, agent_port=agent_port, host="127.0.0.3",
                          cert_sha256=a.cert_sha256, bootstrap_token=a.bootstrap_token, db_url=a.db_url,
                          log_path=tmp_path / "node-b.log", args=["--nats", nats.url], env=nats.env())
        b.start()
        started.append(b)
        for p in (port, agent_port):
            started.append(TcpBalancer(("127.0.0.1", p), [("127.0.0.2", p), ("127.0.0.3", p)]).start())
        front = RunningServer(data_dir=a.data_dir, port=port, cert_sha256=a.cert_sha256, bootstrap_token="",
                              db_url=a.db_url, log_path=tmp_path / "front.log", cert_der=a.cert_der)

        owner = bootstrap_owner(b)
        t = setup_tenant(owner, "fleet")
        tokens = [ok(owner.http.post(f"/tenants/{t.id}/enrollment-tokens", json={"ttl_s": 600}))["token"]
                  for _ in range(10)]
        root_sha = ok(owner.http.get(f"/tenants/{t.id}/roots/current"))["sha256"]
        from harness.agent import enroll_fleet
        agents = enroll_fleet(base, front.url, front.cert_sha256, root_sha, tokens, scratch)
        for agent in agents:
            ok(owner.http.post(f"/tenants/{t.id}/devices/{agent.device_id}/approve"))
        for agent in agents:  # every agent's one address is the balancer's
            agent.wait_log(f"connected to wss://127.0.0.1:{agent_port}", timeout=60)
        fleet = Fleet(b, t, agents, scratch)
        devices = fleet.devices
        grants = [approved_grant(t, devices[:5]), approved_grant(t, devices[5:])]
        step_up(t.tech)  # a fan-out beyond the tenant's limit needs it (G5); the session is shared
        jobs = []
        with a.client(t.tech.token) as on_a:  # stored on node A, which fans them out ...
            for grant, half in zip(grants, (devices[:5], devices[5:]), strict=True):
                env, payloads, job_id = job_writing(t, grant, half, RECORD % str(scratch).encode(), scratch)
                ok(on_a.post(f"/tenants/{t.id}/jobs", json={"envelope": env, "payloads": payloads}))
                jobs.append(job_id)
        a.stop(kill=True)  # ... and dies at once
        done = fleet.wait_done(jobs, timeout=120)
        expected = {(d, jobs[0]) for d in devices[:5]} | {(d, jobs[1]) for d in devices[5:]}
        runs = fleet.runs()
        assert set(runs) == expected and all(n == 1 for n in runs.values()), runs
        receipts = [x["receipt"] for j in done.values() for x in j["targets"]]
        assert len(receipts) == 10 and all(r and r["outcome"] == "ran" for r in receipts)
        # The agents that were on node A are connected to node B now (B answers for all ten).
        moved = [agent for agent in agents if agent.log_text().count("connected to") >= 2]
        assert moved, "no agent was on node A"
        time.sleep(2)
        assert fleet.runs() == runs  # nothing ran again after the receipts were stored
    finally:
        stop_all(agents)
        for thing in reversed(started):
            thing.stop()
        nats.stop()
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)
