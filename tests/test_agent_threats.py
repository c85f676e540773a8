"""The agent against a hostile server: every threat T1–T10 played for real.

A real ``rampart-agent`` process talks to :class:`MiniServer`, a stand-in
server that speaks the real protocol and sends whatever the test (the
attacker) wants, as a compromised server would (T1). Each test asserts the
agent's precise refusal reason *and* that nothing ran (the side effect the
job would have had is absent) or that trusted state did not move.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.agent import AgentProcess, stop_all
from harness.mini_server import MiniServer
from harness.tenant import Tenant, env_bytes

from rampart import trust
from rampart.trust import LogKey, OperatorKey, Receipt, merkle


class Env:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.tenant = Tenant()
        self.server = MiniServer(base / "server", self.tenant).start()
        self.scratch = base / "scratch"
        self.scratch.mkdir()
        self.scratch.chmod(0o777)
        self.a = self.new_agent("agent-a")
        self.b = self.new_agent("agent-b")

    def new_agent(self, name: str, *extra: str) -> AgentProcess:
        a = AgentProcess(self.base / name)
        r = a.enroll(self.server.url, self.server.new_token(), self.tenant.root_sha256,
                     self.server.cert_sha256, "--write-root", str(self.scratch), *extra)
        assert r.returncode == 0, r.stderr
        a.start()
        self.server.wait_connected(a.device_id)
        return a

    def run(self, agent: AgentProcess, script: bytes, *, grant: bytes | None = None,
            devices: list[str] | None = None, payloads: dict[str, bytes] | None = None,
            **job_kw: object) -> Receipt:
        devices = devices or [agent.device_id]
        grant = grant or self.tenant.grant(devices)
        job = self.tenant.job(grant, devices, script, **job_kw)  # type: ignore[arg-type]
        jid = self.server.publish(job, grant, payloads if payloads is not None else {"script": script},
                                  [agent.device_id])
        return self.server.wait_receipt(jid, agent.device_id)

    def marker(self, name: str) -> Path:
        return self.scratch / name


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    base = Path(tempfile.mkdtemp(prefix="rampart-agent-test-"))
    base.chmod(0o755)
    e = Env(base)
    try:
        yield e
    finally:
        stop_all((e.a, e.b))
        e.server.stop()
        shutil.rmtree(base, ignore_errors=True)


def out(r: Receipt) -> str:
    return base64.b64decode(r.stdout).decode(errors="replace")


def err(r: Receipt) -> str:
    return base64.b64decode(r.stderr).decode(errors="replace")


def touch_script(path: Path) -> bytes:
    return f"echo ran >> {path}\necho done\n".encode()


# --- the honest path ---------------------------------------------------------------------


def test_valid_job_runs_contained_with_signed_receipt(env: Env) -> None:
    m = env.marker("valid")
    r = env.run(env.a, touch_script(m) + b"id -u\ngrep NoNewPrivs /proc/self/status\n",
                writes=(str(env.scratch),))
    assert r.outcome == "ran", (r.refusal, r.detail)
    assert r.exit_code == 0
    assert m.read_text() == "ran\n"
    assert "done" in out(r)
    assert "NoNewPrivs:\t1" in out(r)
    assert r.containment is not None and r.containment.level == "full"
    assert r.containment.landlock_abi >= 1 and r.containment.filesystem
    assert out(r).splitlines()[1] == str(r.containment.uid) != "0"
    assert r.stdout_sha256 == __import__("hashlib").sha256(base64.b64decode(r.stdout)).hexdigest()


# --- T1: compromised server ------------------------------------------------------------


def test_T1_job_signed_by_key_outside_root_is_refused(env: Env) -> None:
    m = env.marker("t1-outsider")
    attacker = OperatorKey.generate()
    r = env.run(env.a, touch_script(m), signer=attacker, writes=(str(env.scratch),))
    assert (r.outcome, r.refusal) == ("refused", "unknown-key")
    assert not m.exists()


def test_T1_job_signed_with_server_log_key_is_refused(env: Env) -> None:
    m = env.marker("t1-logkey")
    r = env.run(env.a, touch_script(m), signer=env.tenant.log_key, writes=(str(env.scratch),))
    assert (r.outcome, r.refusal) == ("refused", "unknown-key")
    assert not m.exists()


def test_T1_job_impersonating_a_technician_key_id_is_refused(env: Env) -> None:
    m = env.marker("t1-impersonate")
    t = env.tenant
    grant = t.grant([env.a.device_id])
    real = trust.decode_payload(trust.decode_envelope(t.job(grant, [env.a.device_id])).payload, trust.Job)
    forged = env_bytes(real, OperatorKey.generate())  # names the technician, signed by another key
    script = touch_script(m)
    import hashlib

    from rampart.trust import Action, PayloadRef

    forged_job = trust.Job(**{**{f: getattr(real, f) for f in real.__struct_fields__},
                              "action": Action(kind="script", payloads=[PayloadRef(
                                  name="script", sha256=hashlib.sha256(script).hexdigest(),
                                  size=len(script))])})
    forged = env_bytes(forged_job, OperatorKey.generate())
    jid = env.server.publish(forged, grant, {"script": script}, [env.a.device_id])
    r = env.server.wait_receipt(jid, env.a.device_id)
    assert (r.outcome, r.refusal) == ("refused", "bad-signature")
    assert not m.exists()


def test_T1_grant_signed_by_non_approver_is_refused(env: Env) -> None:
    m = env.marker("t1-grant")
    grant = env.tenant.grant([env.a.device_id], approvers=[OperatorKey.generate()])
    r = env.run(env.a, touch_script(m), grant=grant, writes=(str(env.scratch),))
    assert (r.outcome, r.refusal) == ("refused", "threshold-not-met")
    assert not m.exists()


def test_T1_grant_signed_by_the_technician_itself_is_refused(env: Env) -> None:
    m = env.marker("t1-selfgrant")
    t = env.tenant
    grant = t.grant([env.a.device_id], approvers=[t.technicians[0]])
    r = env.run(env.a, touch_script(m), grant=grant, writes=(str(env.scratch),))
    assert (r.outcome, r.refusal) == ("refused", "threshold-not-met")
    assert not m.exists()


def test_T1_forged_root_from_server_is_refused(env: Env) -> None:
    before = env.a.status()["root_version"]
    attacker = OperatorKey.generate()
    forged = env.tenant.make_root(before + 1, attacker, owners=[attacker])
    env.server.send(env.a.device_id, {"type": "roots", "envelopes": [forged.decode()]})
    env.a.wait_log("refused root update")
    assert env.a.status()["root_version"] == before


# --- T3: a technician's stolen key -----------------------------------------------------


def test_T3_job_on_device_outside_grant_is_refused(env: Env) -> None:
    m = env.marker("t3-device")
    grant = env.tenant.grant([env.a.device_id])  # covers A only
    r = env.run(env.b, touch_script(m), grant=grant, devices=[env.b.device_id],
                writes=(str(env.scratch),))
    assert (r.outcome, r.refusal) == ("refused", "capability-not-granted")
    assert not m.exists()


def test_T3_capability_not_in_grant_is_refused(env: Env) -> None:
    m = env.marker("t3-cap")
    r = env.run(env.a, touch_script(m), connect=(443,), writes=(str(env.scratch),))
    assert (r.outcome, r.refusal) == ("refused", "capability-not-granted")
    r = env.run(env.a, touch_script(m), run_as="root", writes=(str(env.scratch),))
    assert (r.outcome, r.refusal) == ("refused", "capability-not-granted")
    assert not m.exists()


def test_T3_expired_grant_is_refused(env: Env) -> None:
    m = env.marker("t3-expired")
    grant = env.tenant.grant([env.a.device_id], not_before=int(time.time()) - 7200, seconds=3600)
    r = env.run(env.a, touch_script(m), grant=grant, writes=(str(env.scratch),))
    assert (r.outcome, r.refusal) == ("refused", "expired")
    assert not m.exists()


def test_T3_other_technician_cannot_use_someone_elses_grant(env: Env) -> None:
    m = env.marker("t3-other")
    grant = env.tenant.grant([env.a.device_id])  # for technicians[0]
    r = env.run(env.a, touch_script(m), grant=grant, signer=env.tenant.technicians[1],
                writes=(str(env.scratch),))
    assert (r.outcome, r.refusal) == ("refused", "capability-not-granted")
    assert not m.exists()


def test_T3_write_path_outside_device_policy_is_refused(env: Env) -> None:
    m = env.marker("t3-path")
    r = env.run(env.a, touch_script(m), writes=("/etc",))
    assert (r.outcome, r.refusal) == ("refused", "capability-not-granted")
    r = env.run(env.a, touch_script(m), writes=(str(env.scratch) + "2",))  # prefix confusion
    assert (r.outcome, r.refusal) == ("refused", "capability-not-granted")
    assert not m.exists()


# --- T4: one approver's stolen key ------------------------------------------------------


def fake_devices(n: int) -> list[str]:
    return [f"dev-{os.urandom(12).hex()}" for _ in range(n)]


def test_T4_one_approver_cannot_grant_beyond_policy_reach(env: Env) -> None:
    m = env.marker("t4-reach")
    devices = [env.a.device_id, *fake_devices(10)]  # 11 > 10
    grant = env.tenant.grant(devices, approvers=env.tenant.approvers[:1])
    r = env.run(env.a, touch_script(m), grant=grant, writes=(str(env.scratch),))
    assert (r.outcome, r.refusal) == ("refused", "threshold-not-met")
    assert not m.exists()
    # The same reach with two distinct approvers is accepted.
    grant2 = env.tenant.grant(devices, approvers=env.tenant.approvers[:2])
    r = env.run(env.a, touch_script(m), grant=grant2, writes=(str(env.scratch),))
    assert r.outcome == "ran" and m.read_text() == "ran\n"


def test_T4_one_approver_signing_twice_counts_once(env: Env) -> None:
    m = env.marker("t4-twice")
    devices = [env.a.device_id, *fake_devices(10)]
    ap = env.tenant.approvers[0]
    grant = env.tenant.grant(devices, approvers=[ap])
    e = trust.decode_envelope(grant)
    doubled = trust.Envelope(e.payload_type, e.payload, e.signatures * 2).to_bytes()
    r = env.run(env.a, touch_script(m), grant=doubled, writes=(str(env.scratch),))
    assert (r.outcome, r.refusal) == ("refused", "threshold-not-met")
    assert not m.exists()


def test_T4_one_approver_cannot_grant_root(env: Env) -> None:
    m = env.marker("t4-root")
    grant = env.tenant.grant([env.a.device_id], caps=("script", "root"),
                             approvers=env.tenant.approvers[:1])
    r = env.run(env.a, touch_script(m), grant=grant, writes=(str(env.scratch),))
    assert (r.outcome, r.refusal) == ("refused", "threshold-not-met")
    assert not m.exists()


# --- T5: replay ---------------------------------------------------------------------------


def test_T5_replayed_job_never_runs_twice(env: Env) -> None:
    m = env.marker("t5-replay")
    t, s = env.tenant, env.server
    grant = t.grant([env.a.device_id])
    script = touch_script(m)
    job = t.job(grant, [env.a.device_id], script, writes=(str(env.scratch),))
    jid = s.publish(job, grant, {"script": script}, [env.a.device_id])
    first = s.wait_receipt(jid, env.a.device_id)
    assert first.outcome == "ran"
    index = t.tree.size - 1
    for _ in range(3):
        s.send(env.a.device_id, s.job_message(env.a.device_id, job, grant, {"script": script}, index))
    deadline = time.time() + 10
    while len(s.receipts[(jid, env.a.device_id)]) < 4 and time.time() < deadline:
        time.sleep(0.05)
    again = s.receipts[(jid, env.a.device_id)]
    assert len(again) == 4 and all(r == first for r in again)  # the original receipt, resent
    assert m.read_text() == "ran\n"


def test_T5_job_for_device_a_is_refused_on_device_b(env: Env) -> None:
    m = env.marker("t5-device")
    t, s = env.tenant, env.server
    grant = t.grant([env.a.device_id, env.b.device_id])
    script = touch_script(m)
    job = t.job(grant, [env.a.device_id], script, writes=(str(env.scratch),))
    jid = s.publish(job, grant, {"script": script}, [env.b.device_id])
    r = s.wait_receipt(jid, env.b.device_id)
    assert (r.outcome, r.refusal) == ("refused", "wrong-device")
    assert not m.exists()


def test_T5_expired_job_is_refused(env: Env) -> None:
    m = env.marker("t5-expired")
    r = env.run(env.a, touch_script(m), issued_at=int(time.time()) - 120, expires_in=60,
                writes=(str(env.scratch),))
    assert (r.outcome, r.refusal) == ("refused", "expired")
    assert not m.exists()


# --- T7: audit log rewritten ------------------------------------------------------------


def test_T7_checkpoint_inconsistent_with_one_seen_before_is_refused(env: Env) -> None:
    m = env.marker("t7")
    t, s = env.tenant, env.server
    assert env.run(env.a, b"true\n").outcome == "ran"  # the agent has seen a checkpoint
    seen = s.agent_view[env.a.device_id]["checkpoint_size"]
    assert seen > 0
    # The attacker rewrites entry 0 of the log and re-signs a checkpoint with the log key.
    leaves = [t.tree.leaf(i) for i in range(t.tree.size)]
    leaves[0] = merkle.leaf_hash(b"rewritten history")
    forked = merkle.MerkleTree.from_leaf_hashes(leaves)
    grant = t.grant([env.a.device_id])
    script = touch_script(m)
    job = t.job(grant, [env.a.device_id], script, writes=(str(env.scratch),))
    index = forked.append(merkle.leaf_hash(job))
    cp = t.checkpoint(size=forked.size, root=forked.root())
    msg = {"type": "job", "job_id": trust.decode_payload(trust.decode_envelope(job).payload, trust.Job).id,
           "job": job.decode(), "grant": grant.decode(),
           "payloads": {"script": base64.b64encode(script).decode()},
           "log": {"checkpoint": cp.decode(), "index": index,
                   "inclusion": [h.hex() for h in forked.inclusion_proof(index)],
                   "consistency": [h.hex() for h in forked.consistency_proof(seen)]}}
    s.send(env.a.device_id, msg)
    r = s.wait_receipt(msg["job_id"], env.a.device_id)
    assert (r.outcome, r.refusal) == ("refused", "inconsistent-log")
    assert not m.exists()


def test_T7_shrunk_log_is_refused_as_rollback(env: Env) -> None:
    m = env.marker("t7-shrink")
    t, s = env.tenant, env.server
    assert env.run(env.a, b"true\n").outcome == "ran"
    grant = t.grant([env.a.device_id])
    script = touch_script(m)
    job = t.job(grant, [env.a.device_id], script, writes=(str(env.scratch),))
    small = merkle.MerkleTree.from_leaf_hashes([merkle.leaf_hash(job)])
    cp = t.checkpoint(size=1, root=small.root())
    jid = trust.decode_payload(trust.decode_envelope(job).payload, trust.Job).id
    s.send(env.a.device_id, {"type": "job", "job_id": jid, "job": job.decode(), "grant": grant.decode(),
                              "payloads": {"script": base64.b64encode(script).decode()},
                              "log": {"checkpoint": cp.decode(), "index": 0, "inclusion": [],
                                      "consistency": []}})
    r = s.wait_receipt(jid, env.a.device_id)
    assert (r.outcome, r.refusal) == ("refused", "rollback")
    assert not m.exists()


def test_T7_job_not_in_log_is_refused(env: Env) -> None:
    m = env.marker("t7-unlogged")
    t, s = env.tenant, env.server
    grant = t.grant([env.a.device_id])
    script = touch_script(m)
    job = t.job(grant, [env.a.device_id], script, writes=(str(env.scratch),))
    t.append(b"some other entry")  # the job itself is never appended
    msg = s.job_message(env.a.device_id, job, grant, {"script": script}, t.tree.size - 1)
    s.send(env.a.device_id, msg)
    r = s.wait_receipt(msg["job_id"], env.a.device_id)
    assert (r.outcome, r.refusal) == ("refused", "inconsistent-log")
    assert not m.exists()


def test_T7_checkpoint_signed_by_unknown_log_key_is_refused(env: Env) -> None:
    m = env.marker("t7-logkey")
    t, s = env.tenant, env.server
    grant = t.grant([env.a.device_id])
    script = touch_script(m)
    job = t.job(grant, [env.a.device_id], script, writes=(str(env.scratch),))
    index = t.append(job)
    cp = t.checkpoint(key=LogKey.generate())
    msg = s.job_message(env.a.device_id, job, grant, {"script": script}, index, checkpoint=cp)
    s.send(env.a.device_id, msg)
    r = s.wait_receipt(msg["job_id"], env.a.device_id)
    assert (r.outcome, r.refusal) == ("refused", "unknown-key")
    assert not m.exists()


# --- T8: payload swapped ---------------------------------------------------------------


def test_T8_swapped_payload_is_refused(env: Env) -> None:
    m = env.marker("t8")
    r = env.run(env.a, b"echo approved\n", payloads={"script": touch_script(m)})
    assert (r.outcome, r.refusal) == ("refused", "digest-mismatch")
    assert not m.exists()


# --- T9: hostile job --------------------------------------------------------------------


def test_T9_job_cannot_write_outside_paths_or_into_agent_state(env: Env) -> None:
    outside = env.base / "outside.txt"
    state = env.a.state
    script = (
        f"echo x > {outside} || echo BLOCKED-outside\n"
        f"echo x > {state}/injected || echo BLOCKED-state\n"
        f"cat {state}/device.key > /dev/null || echo BLOCKED-key\n"
        f"ls {state} > /dev/null || echo BLOCKED-list\n"
        f"echo ok > {env.scratch}/t9 && echo WROTE-declared\n"
    ).encode()
    r = env.run(env.a, script, writes=(str(env.scratch),))
    assert r.outcome == "ran"
    for word in ("BLOCKED-outside", "BLOCKED-state", "BLOCKED-key", "BLOCKED-list", "WROTE-declared"):
        assert word in out(r), (word, out(r), err(r))
    assert not outside.exists() and not (state / "injected").exists()


def test_T9_root_job_is_still_confined_by_landlock(env: Env, tmp_path: Path) -> None:
    """Even granted root (two approvers, a device that allows root), the job cannot touch the agent."""
    agent = env.new_agent("agent-root", "--allow-root")
    try:
        t = env.tenant
        grant = t.grant([agent.device_id], caps=("script", "root"), approvers=t.approvers[:2])
        outside = env.base / "root-outside.txt"
        script = (
            "id -u\n"
            f"echo x > {outside} || echo BLOCKED-outside\n"
            f"cat {agent.state}/device.key > /dev/null || echo BLOCKED-key\n"
            f"rm -f {agent.state}/state.db || echo BLOCKED-delete\n"
        ).encode()
        r = env.run(agent, script, grant=grant, run_as="root", writes=(str(env.scratch),))
        assert r.outcome == "ran", (r.refusal, r.detail)
        assert out(r).splitlines()[0] == "0"
        for word in ("BLOCKED-outside", "BLOCKED-key", "BLOCKED-delete"):
            assert word in out(r), (word, out(r), err(r))
        assert not outside.exists() and (agent.state / "state.db").exists()
    finally:
        agent.stop()


def test_T9_declared_write_into_agent_state_is_refused_before_running(env: Env, tmp_path: Path) -> None:
    agent_dir = env.base / "agent-wide"
    agent_dir.mkdir()
    agent = AgentProcess(agent_dir / "state")
    r = agent.enroll(env.server.url, env.server.new_token(), env.tenant.root_sha256,
                     env.server.cert_sha256, "--write-root", str(env.base))
    assert r.returncode == 0, r.stderr
    agent.start()
    try:
        env.server.wait_connected(agent.device_id)
        rec = env.run(agent, b"true\n", writes=(str(agent.state),))
        assert (rec.outcome, rec.refusal) == ("refused", "capability-not-granted")
        assert "protected" in rec.detail
    finally:
        agent.stop()


def test_T9_job_is_killed_at_its_time_limit(env: Env) -> None:
    r = env.run(env.a, b"sleep 30\n", timeout_s=1)
    assert r.outcome == "ran" and r.timed_out
    assert r.ended_at - r.started_at < 15


# --- T10: another local process -------------------------------------------------------


def test_T10_local_user_cannot_read_device_key_or_alter_state(env: Env) -> None:
    state = env.a.state
    probe = (
        "import sqlite3, sys\n"  # noqa: S608 - a probe script, not SQL
        "results = []\n"
        f"for p in ['{state}/device.key', '{state}/state.db']:\n"
        "    try:\n"
        "        open(p, 'rb').read(1); results.append('READ ' + p)\n"
        "    except PermissionError:\n"
        "        results.append('denied')\n"
        "try:\n"
        f"    sqlite3.connect('file:{state}/state.db?mode=rw', uri=True).execute('DELETE FROM jobs')\n"
        "    results.append('WROTE')\n"
        "except sqlite3.Error:\n"
        "    results.append('denied')\n"
        "print(' '.join(results))\n"
    )
    r = subprocess.run(["python3", "-c", probe], user="nobody", capture_output=True, text=True,
                       timeout=30)
    assert r.stdout.strip() == "denied denied denied", r.stdout + r.stderr
    assert oct(os.stat(state).st_mode & 0o777) == "0o700"
    assert oct(os.stat(state / "device.key").st_mode & 0o777) == "0o600"


# --- robustness ---------------------------------------------------------------------------


def test_T13_malformed_job_messages_are_refused_and_agent_survives(env: Env) -> None:
    s = env.server
    jid = trust.new_job_id()
    bad = [
        {"type": "job", "job_id": jid, "job": "{not json", "grant": "{}", "payloads": {}, "log": {}},
        {"type": "job", "job_id": jid, "job": 5, "grant": None},
        {"type": "job", "job_id": "../../etc", "job": "{}"},
        {"type": "roots", "envelopes": ["garbage"]},
        {"type": "nonsense"},
    ]
    for msg in bad:
        s.send(env.a.device_id, msg)
    r = s.wait_receipt(jid, env.a.device_id)
    assert (r.outcome, r.refusal) == ("refused", "malformed")
    assert env.run(env.a, b"echo alive\n").outcome == "ran"  # still serving


def test_automation_key_may_not_sign_a_script(env: Env) -> None:
    m = env.marker("auto")
    t = env.tenant
    auto = t.automation[0]
    grant = t.grant([env.a.device_id], caps=("script", "inventory"), grantee=auto,
                    actions=("inventory-refresh",), approvers=t.approvers[:1])
    r = env.run(env.a, touch_script(m), grant=grant, signer=auto, writes=(str(env.scratch),))
    assert (r.outcome, r.refusal) == ("refused", "capability-not-granted")
    assert not m.exists()


# --- kill -9 ------------------------------------------------------------------------------


def test_T15_agent_killed_mid_job_never_reruns_it(env: Env) -> None:
    t, s = env.tenant, env.server
    agent = env.new_agent("agent-kill")
    try:
        m = env.marker("kill-count")
        script = f"echo run >> {m}\nsleep 30\n".encode()
        grant = t.grant([agent.device_id])
        job = t.job(grant, [agent.device_id], script, writes=(str(env.scratch),))
        jid = s.publish(job, grant, {"script": script}, [agent.device_id])
        deadline = time.time() + 20
        while not m.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert m.exists()
        agent.kill9()
        subprocess.run(["pkill", "-KILL", "-f", f"{m}"], check=False)
        agent.start()
        r = s.wait_receipt(jid, agent.device_id)
        assert r.outcome == "failed" and "not run again" in r.detail
        s.send(agent.device_id, s.job_message(agent.device_id, job, grant, {"script": script},
                                              t.tree.size - 1))
        time.sleep(1.0)
        assert m.read_text() == "run\n"
    finally:
        agent.stop()


def test_T15_receipt_survives_agent_kill_before_ack(env: Env) -> None:
    s = env.server
    agent = env.new_agent("agent-outbox")
    try:
        s.ack = False
        m = env.marker("outbox")
        r1 = env.run(agent, touch_script(m), writes=(str(env.scratch),))
        assert r1.outcome == "ran"
        agent.kill9()
        s.ack = True
        agent.start()
        deadline = time.time() + 30
        while len(s.receipts[(r1.job, agent.device_id)]) < 2 and time.time() < deadline:
            time.sleep(0.05)
        assert s.receipts[(r1.job, agent.device_id)][1] == r1
        assert m.read_text() == "ran\n"
    finally:
        s.ack = True
        agent.stop()


def test_agent_reports_its_new_checkpoint_before_the_job_finishes(env: Env) -> None:
    """The server computes the next job's consistency proof from what the agent holds:
    the agent says which checkpoint it adopted as soon as it commits it, not after a long job."""
    t, s = env.tenant, env.server
    grant = t.grant([env.a.device_id])
    script = b"sleep 3\necho done\n"
    job = t.job(grant, [env.a.device_id], script)
    jid = s.publish(job, grant, {"script": script}, [env.a.device_id])
    size = t.tree.size
    s.wait_view(env.a.device_id, "checkpoint_size", size, timeout=10)
    states = [m for d, m in s.messages if d == env.a.device_id and m.get("type") == "state"
              and m.get("checkpoint_size") == size]
    receipts = [m for d, m in s.messages if d == env.a.device_id and m.get("job_id") == jid
                and m.get("type") == "receipt"]
    assert states and not receipts  # reported while the job still runs
    assert s.wait_receipt(jid, env.a.device_id).outcome == "ran"


def test_T6_agent_follows_a_valid_rotation_and_never_rolls_back(env: Env) -> None:
    agent = env.new_agent("agent-rotate")
    try:
        t, s = env.tenant, env.server
        v2 = t.make_root(2)  # signed by the owners of v1 and v2 (the same owners)
        s.send(agent.device_id, {"type": "roots", "envelopes": [v2.decode()]})
        s.wait_view(agent.device_id, "root_version", 2)
        assert agent.status()["root_version"] == 2
        s.send(agent.device_id, {"type": "roots", "envelopes": [t.roots[0].decode()]})  # v1 again
        attacker = OperatorKey.generate()
        forged = t.make_root(3, attacker, owners=[attacker])
        s.send(agent.device_id, {"type": "roots", "envelopes": [forged.decode()]})
        agent.wait_log("refused root update")
        assert agent.status()["root_version"] == 2
    finally:
        agent.stop()
