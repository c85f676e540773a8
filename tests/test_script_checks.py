"""Script checks: signed, repeating script jobs the agents run themselves (issue 5).

Unit tests cover the result format, the server's store (hostile results,
history, alerts, overdue) and the agent's outbox. The end-to-end tests share
one real server and one real agent that runs its checks every 2 s (the device
floor is lowered to 1 s at enrolment):

* a check that fails while a file exists opens an alert, which resolves when
  the file is removed; the CLI shows the results;
* T1, the attacker holding the server: re-sending the job, or changing its
  stored script, neither speeds the check up nor runs anything else under
  it, and revoking the grant stops the runs on the agent;
* T13, a hostile agent: results for a job it is not targeted by, malformed or
  oversized ones are refused and change nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from harness.agent import AgentProcess, traversable_dir
from harness.operators import Operator, TenantSetup, approved_grant, bootstrap_owner, ok, setup_tenant
from harness.server import PostgresCluster, RunningServer
from harness.wsagent import WireAgent
from sqlalchemy import select, update
from test_telemetry import Cli, configured_server, store_of, wait_until

from rampart import trust
from rampart.agent.script_checks import result_of
from rampart.agent.state import CHECK_OUTBOX_MAX, AgentState
from rampart.server.db import Store, migrate
from rampart.server.models import (
    AlertRow,
    Device,
    GrantRow,
    JobPayload,
    JobRow,
    JobTarget,
    ScriptCheck,
    ScriptCheckResult,
    Tenant,
)
from rampart.server.script_checks import (
    ALERT_FAILED,
    ALERT_OVERDUE,
    HISTORY_MAX,
    ResultRefused,
    ScriptCheckStore,
)
from rampart.trust import JOB_TYPE, REVOCATION_TYPE
from rampart.wire import AgentMessage, CheckResultMessage
from rampart.wire.check_result import MAX_TAIL, CheckResult, decode_result, encode_result

# --- unit: the result format ---------------------------------------------------------------


def _result(job: str = "job-" + "a" * 16, **kw: Any) -> CheckResult:
    doc: dict[str, Any] = {"job": job, "run_at": time.time(), "duration_s": 0.1, "exit_code": 0, "ok": True,
                           "interval_s": 60}
    doc.update(kw)
    return CheckResult(**doc)


def test_result_of_a_run_keeps_the_output_tail_and_the_verdict() -> None:
    from rampart.agent import actions, containment

    out = b"x" * 10_000 + b"END"
    r = containment.ContainedResult(exit_code=3, signal=None, timed_out=False, stdout=out, stderr=b"bad\n",
                                    stdout_truncated=False, stderr_truncated=False, started_at=100.0,
                                    ended_at=101.5, containment=None, refused=None)
    res = result_of("job-" + "b" * 16, actions.Done("ran", result=r), 60, started=99.0)
    assert not res.ok and res.exit_code == 3 and res.duration_s == 1.5 and res.run_at == 100.0
    assert len(res.stdout) == MAX_TAIL and res.stdout.endswith("END") and res.stderr == "bad\n"
    refused = result_of("job-" + "b" * 16, actions.Done("refused", "containment-unavailable", "no landlock"),
                        60, started=99.0)
    assert not refused.ok and refused.exit_code is None and "containment-unavailable" in refused.detail
    assert decode_result(encode_result(res)) == res


@pytest.mark.parametrize("change", [
    {"stdout": "x" * (MAX_TAIL + 1)}, {"detail": "d" * 1001}, {"interval_s": 0}, {"job": "job-NOPE"},
    {"exit_code": "0"}, {"ok": 1}, {"run_at": -1.0}, {"extra": 1},
])
def test_T13_malformed_or_oversized_results_do_not_decode(change: dict[str, Any]) -> None:
    doc = json.loads(encode_result(_result()))
    doc.update(change)
    msg = json.dumps({"type": "check-result", "seq": 1, "result": doc})
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msg, type=AgentMessage)
    good = msgspec.json.decode(json.dumps({"type": "check-result", "seq": 1,
                                           "result": json.loads(encode_result(_result()))}),
                               type=AgentMessage)
    assert isinstance(good, CheckResultMessage)


def test_agent_outbox_keeps_results_until_acked_and_is_bounded(tmp_path: Path) -> None:
    st = AgentState(tmp_path / "state")
    with st.transaction() as db:
        for i in range(CHECK_OUTBOX_MAX + 5):
            st._queue_result(db, "job-" + "c" * 16, str(i).encode())
    box = st.check_outbox(limit=CHECK_OUTBOX_MAX + 100)
    assert len(box) == CHECK_OUTBOX_MAX and box[-1][1] == str(CHECK_OUTBOX_MAX + 4).encode()
    st.ack_check_result(box[0][0])
    assert st.check_outbox(limit=1)[0][0] == box[1][0]
    st.close()


def test_agent_sends_a_backlog_in_windows_and_drops_what_the_server_acknowledged(tmp_path: Path) -> None:
    import asyncio
    from types import SimpleNamespace

    from rampart.agent.script_checks import SEND_WINDOW, ScriptChecks

    st = AgentState(tmp_path / "state")
    with st.transaction() as db:
        for i in range(SEND_WINDOW + 50):
            st._queue_result(db, "job-" + "c" * 16, encode_result(_result(run_at=float(i + 1))))
    sent: list[dict[str, Any]] = []

    async def send(text: str) -> None:
        sent.append(json.loads(text))

    async def scenario() -> None:
        checks = ScriptChecks(SimpleNamespace(state=st))  # type: ignore[arg-type]
        checks.attach(send)
        await checks.flush()
        assert len(sent) == SEND_WINDOW  # the rest waits for acknowledgements
        await checks.flush()
        assert len(sent) == SEND_WINDOW  # nothing is sent twice on one connection meanwhile
        for doc in sent[:60]:
            await checks.on_ack(doc["seq"])
        await checks.flush()
        assert len(sent) == SEND_WINDOW + 50
        assert [d["type"] for d in sent] == ["check-result"] * len(sent)
        assert decode_result(json.dumps(sent[0]["result"])).run_at == 1.0

    asyncio.run(scenario())
    assert len(st.check_outbox(limit=1000)) == SEND_WINDOW + 50 - 60
    st.close()


# --- unit: the server's store ---------------------------------------------------------------------


@dataclass
class Db:
    store: Store
    checks: ScriptCheckStore
    tenant: str
    device: str
    other_device: str
    job: str


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Db]:
    store = Store(f"sqlite:///{tmp_path}/server.db")
    migrate(store.engine)
    now = time.time()
    t, g, j = "tn-" + "t" * 16, "gr-" + "g" * 16, "job-" + "j" * 16
    d, d2 = "dev-" + "1" * 24, "dev-" + "2" * 24
    with store.transaction() as s:
        s.add(Tenant(id=t, name="acme", created_at=now))
        s.flush()
        for dev in (d, d2):
            s.add(Device(id=dev, tenant_id=t, public_key="k", hostname=f"host-{dev[-1]}", agent_version="t",
                         status="approved", enrolled_at=now))
        s.add(GrantRow(id=g, tenant_id=t, grantee="0" * 64, requested_by="tech", envelope=b"{}",
                       created_at=now, not_after=int(now) + 3600))
        s.flush()
        s.add(JobRow(id=j, tenant_id=t, grant_id=g, signer="0" * 64, kind="script", nonce="n", envelope=b"{}",
                     created_at=now, expires_at=int(now) + 600, log_index=0))
        s.flush()
        s.add(JobTarget(job_id=j, device_id=d, state="done", done_at=now))
        s.add(ScriptCheck(job_id=j, tenant_id=t, name="flag", every_s=2, until=int(now) + 3600,
                          created_by="tech", created_at=now))
    yield Db(store, ScriptCheckStore(store), t, d, d2, j)
    store.dispose()


def _alerts(db: Db, kind: str) -> list[AlertRow]:
    with db.store.read() as s:
        return list(s.scalars(select(AlertRow).where(AlertRow.kind == kind)))


def test_T13_results_are_refused_unless_for_a_check_targeting_this_device(db: Db) -> None:
    now = time.time()
    with pytest.raises(ResultRefused, match="not a target"):
        db.checks.ingest(db.other_device, db.tenant, 1, _result(db.job), now)
    with pytest.raises(ResultRefused, match="no such script check"):
        db.checks.ingest(db.device, db.tenant, 1, _result("job-" + "z" * 16), now)
    with pytest.raises(ResultRefused, match="no such script check"):
        db.checks.ingest(db.device, "tn-" + "o" * 16, 1, _result(db.job), now)  # another tenant's device
    with pytest.raises(ResultRefused, match="outside the check's life"):
        db.checks.ingest(db.device, db.tenant, 1, _result(db.job, run_at=now + 3600), now)
    with db.store.transaction() as s:
        s.execute(update(Device).where(Device.id == db.device).values(status="pending"))
    with pytest.raises(ResultRefused, match="not approved"):
        db.checks.ingest(db.device, db.tenant, 1, _result(db.job), now)
    with db.store.read() as s:
        assert s.scalars(select(ScriptCheckResult)).first() is None


def test_results_are_stored_once_bounded_and_cleaned(db: Db) -> None:
    now = time.time()
    assert not db.checks.ingest(db.device, db.tenant, 1, _result(db.job, stdout="a\x00b"), now).duplicate
    assert db.checks.ingest(db.device, db.tenant, 1, _result(db.job), now).duplicate  # a resend
    for seq in range(2, HISTORY_MAX + 20):
        db.checks.ingest(db.device, db.tenant, seq, _result(db.job, run_at=now + seq * 0.001), now)
    with db.store.read() as s:
        rows = list(s.scalars(select(ScriptCheckResult).order_by(ScriptCheckResult.seq)))
    assert len(rows) == HISTORY_MAX and rows[-1].seq == HISTORY_MAX + 19
    assert all("\x00" not in r.stdout for r in rows)


def test_a_failing_run_opens_one_alert_that_the_next_passing_run_resolves(db: Db) -> None:
    now = time.time()
    for seq in (1, 2):
        db.checks.ingest(db.device, db.tenant, seq, _result(db.job, ok=False, exit_code=3,
                                                            run_at=now + seq), now)
    [alert] = _alerts(db, ALERT_FAILED)
    assert alert.status == "open" and alert.count == 1 and "flag failed on host-1" in alert.subject
    assert alert.device_id == db.device  # the alert names its device (listings cap per device)
    db.checks.ingest(db.device, db.tenant, 3, _result(db.job, run_at=now + 3), now)
    [alert] = _alerts(db, ALERT_FAILED)
    assert alert.status == "resolved" and alert.resolved_by == f"device:{db.device}"
    # an older result arriving late changes no verdict
    db.checks.ingest(db.device, db.tenant, 4, _result(db.job, ok=False, exit_code=1, run_at=now + 0.5), now)
    assert [a.status for a in _alerts(db, ALERT_FAILED)] == ["resolved"]


def test_overdue_only_while_connected_resolved_by_a_result_or_the_checks_end(db: Db) -> None:
    now = time.time()
    db.checks.ingest(db.device, db.tenant, 1, _result(db.job, interval_s=2), now)
    assert db.checks.sweep_overdue(now + 5, {db.device}) == 0  # within 3 intervals (+ slack)
    assert db.checks.sweep_overdue(now + 60, set()) == 0  # not connected: agent-offline's business
    assert db.checks.sweep_overdue(now + 60, {db.device}) == 1
    assert db.checks.sweep_overdue(now + 70, {db.device}) == 0  # one alert, not one per sweep
    db.checks.ingest(db.device, db.tenant, 2, _result(db.job, interval_s=2, run_at=now + 60), now + 61)
    assert [(a.status, a.device_id) for a in _alerts(db, ALERT_OVERDUE)] == [("resolved", db.device)]
    # a device floor above every_s (interval_s reported by the agent) is not "overdue"
    db.checks.ingest(db.device, db.tenant, 3, _result(db.job, interval_s=60, run_at=now + 62), now + 62)
    assert db.checks.sweep_overdue(now + 62 + 100, {db.device}) == 0
    assert db.checks.sweep_overdue(now + 62 + 200, {db.device}) == 1
    with db.store.transaction() as s:
        s.execute(update(GrantRow).values(revoked_at=now))
    db.checks.sweep_overdue(now + 62 + 201, {db.device})
    assert [a.status for a in _alerts(db, ALERT_OVERDUE)] == ["resolved", "resolved"]


# --- end to end: a real server and a real agent ----------------------------------------------------


@dataclass
class Live:
    server: RunningServer
    t: TenantSetup
    agent: AgentProcess
    base: Path
    cli: Cli

    @property
    def device(self) -> str:
        return self.agent.device_id


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, pg_cluster: PostgresCluster | None) -> Iterator[Live]:
    base = traversable_dir("rampart-script-checks-")
    db_url = pg_cluster.new_database() if pg_cluster is not None else None
    server = configured_server(tmp_path_factory.mktemp("script-checks"), db_url, interval=300.0)
    agent: AgentProcess | None = None
    try:
        owner = bootstrap_owner(server)
        t = setup_tenant(owner, "acme")
        tok = ok(t.owner.http.post(f"/tenants/{t.id}/enrollment-tokens", json={"ttl_s": 600}))
        agent = AgentProcess(base / "agent")
        r = agent.enroll(server.url, tok["token"], tok["root_sha256"], server.cert_sha256,
                         "--min-check-interval", "1")
        assert r.returncode == 0, r.stderr
        ok(t.owner.http.post(f"/tenants/{t.id}/devices/{agent.device_id}/approve"))
        agent.start()
        yield Live(server, t, agent, base, Cli(server, owner, base / "cli"))
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def repeating_job(t: TenantSetup, grant: str, devices: list[str], script: bytes, *, every_s: int = 2,
                  lasts_s: int = 3600, name: str = "") -> tuple[str, dict[str, str], str]:
    now = int(time.time())
    job = trust.Job(id=trust.new_job_id(), tenant=t.id, grant=grant, signer=t.tech_key.key_id,
                    devices=devices, action=trust.Action(kind="script", payloads=[trust.PayloadRef(
                        name="script", sha256=hashlib.sha256(script).hexdigest(), size=len(script))]),
                    timeout_s=30, nonce=trust.new_nonce(), issued_at=now, expires_at=now + 600,
                    repeat=trust.Repeat(every_s=every_s, until=now + lasts_s, name=name))
    env = trust.sign_envelope(JOB_TYPE, trust.encode_payload(job), [t.tech_key]).to_bytes().decode()
    return env, {"script": base64.b64encode(script).decode()}, job.id


def results(op: Operator, t: TenantSetup, job: str, limit: int = 1000) -> list[dict[str, Any]]:
    return list(ok(op.http.get(f"/tenants/{t.id}/script-checks/{job}/results", params={"limit": limit})))


def alerts(op: Operator, t: TenantSetup, kind: str, status: str = "all") -> list[dict[str, Any]]:
    return [a for a in ok(op.http.get(f"/tenants/{t.id}/alerts", params={"status": status}))
            if a["kind"] == kind]


@pytest.mark.store
def test_script_check_on_a_real_agent_alerts_while_it_fails_and_resolves(live: Live) -> None:
    t = live.t
    flag = live.base / "flag"
    script = (f"#!/bin/sh\necho checking {flag}\nif [ -e {flag} ]; then echo 'flag present' >&2; exit 3; fi\n"
              "echo fine\n").encode()
    grant = approved_grant(t, [live.device])
    env, payloads, job = repeating_job(t, grant, [live.device], script, name="no flag")
    ok(t.tech.http.post(f"/tenants/{t.id}/jobs", json={"envelope": env, "payloads": payloads}))
    wait_until(lambda: len(results(t.owner, t, job)) >= 2, "two passing runs", timeout=60)
    assert all(r["ok"] and r["exit_code"] == 0 and "fine" in r["stdout"] for r in results(t.owner, t, job))
    flag.write_text("x")
    wait_until(lambda: alerts(t.owner, t, "script-check-failed", "open"), "the failure alert", timeout=60)
    [alert] = alerts(t.owner, t, "script-check-failed", "open")
    assert "no flag failed on" in alert["subject"] and "exit code 3" in alert["subject"]
    failed = [r for r in results(t.owner, t, job) if not r["ok"]]
    assert failed[0]["exit_code"] == 3 and "flag present" in failed[0]["stderr"]
    flag.unlink()
    wait_until(lambda: not alerts(t.owner, t, "script-check-failed", "open"), "the alert to resolve",
               timeout=60)
    [resolved] = alerts(t.owner, t, "script-check-failed", "resolved")
    assert resolved["id"] == alert["id"] and resolved["count"] >= 1
    # the CLI shows it next to the classic checks, and its history
    listed = [c for c in live.cli.json("checks", "list", "acme") if c["kind"] == "script"]
    [mine] = [c for c in listed if c["id"] == job]
    assert mine["name"] == "no flag" and mine["status"] == "active" and mine["every_s"] == 2
    [dev] = mine["devices"]
    assert dev["device"] == live.device and dev["state"] == "passing" and dev["failures"] >= 1
    table = live.cli.ok("checks", "list", "acme")
    assert "Script checks" in table and job in table and "no flag" in table
    history = live.cli.ok("checks", "results", "acme", job, "--limit", "100")
    assert "FAILED" in history and "ok" in history
    assert live.cli.json("checks", "results", "acme", job, "--device", live.device, "--limit", "1")[0]["ok"]


@pytest.mark.store
def test_T1_the_server_cannot_speed_up_or_change_a_check_and_revocation_stops_it(live: Live) -> None:
    t = live.t
    grant = approved_grant(t, [live.device])
    script = b"#!/bin/sh\necho original check\n"
    env, payloads, job = repeating_job(t, grant, [live.device], script, every_s=2)
    ok(t.tech.http.post(f"/tenants/{t.id}/jobs", json={"envelope": env, "payloads": payloads}))
    wait_until(lambda: len(results(t.owner, t, job)) >= 2, "the check to run", timeout=60)
    # The attacker holding the server swaps the stored script and re-sends the job (reconnect).
    evil = b"#!/bin/sh\necho pwned; touch /tmp/rampart-pwned\n"
    store = store_of(live.server)
    try:
        with store.transaction() as s:
            s.execute(update(JobPayload).where(JobPayload.job_id == job).values(data=evil))
            s.execute(update(JobTarget).where(JobTarget.job_id == job).values(state="pending"))
    finally:
        store.dispose()
    live.agent.stop()
    live.agent.start()
    start = time.time()
    time.sleep(10)
    window = [r for r in results(t.owner, t, job) if r["run_at"] >= start]
    assert window, "the check kept running"
    assert all(r["stdout"] == "original check\n" for r in results(t.owner, t, job))
    assert not Path("/tmp/rampart-pwned").exists()
    assert len(window) <= 10 / 2 + 1  # still every 2 s, never faster
    runs = sorted(r["run_at"] for r in window)
    # Each gap stays near the interval; a run delayed by a loaded machine may end closer to the next
    # one's start, so the bound is half the interval (a server-forced speed-up would be far below it).
    assert all(b - a >= 1.0 for a, b in zip(runs, runs[1:], strict=False)), runs
    job_doc = ok(t.owner.http.get(f"/jobs/{job}"))
    assert job_doc["targets"][0]["receipt"]["stdout"] == "original check\n"  # the first run's receipt, resent
    [stored] = [c for c in live.agent.status()["script_checks"] if c["job"] == job]
    assert stored["interval_s"] == 2 and stored["runs"] >= 2
    # An approver revokes the grant: the agent drops the schedule at its next run.
    rev = trust.Revocation(tenant=t.id, grant=grant, issued_at=int(time.time()), reason="stop the check")
    data = trust.sign_envelope(REVOCATION_TYPE, trust.encode_payload(rev), [t.approver_key])
    ok(t.approver.http.post(f"/grants/{grant}/revocation", json={"envelope": data.to_bytes().decode()}))
    live.agent.wait_log(f"script check {job} stopped: revoked", timeout=30)
    count = len(results(t.owner, t, job))
    time.sleep(5)
    assert len(results(t.owner, t, job)) == count
    assert job not in [c["job"] for c in live.agent.status()["script_checks"]]
    [listed] = [c for c in ok(t.owner.http.get(f"/tenants/{t.id}/script-checks")) if c["job"] == job]
    assert listed["status"] == "revoked"


@pytest.mark.store
def test_T13_a_hostile_agent_cannot_report_for_a_check_it_is_not_targeted_by(live: Live) -> None:
    t = live.t
    tok = ok(t.owner.http.post(f"/tenants/{t.id}/enrollment-tokens", json={"ttl_s": 600}))
    rogue = WireAgent.enrol(live.server, tok["token"], tok["root_sha256"])
    ok(t.owner.http.post(f"/tenants/{t.id}/devices/{rogue.device_id}/approve"))
    grant = approved_grant(t, [live.device])
    env, payloads, job = repeating_job(t, grant, [live.device], b"echo hi\n", every_s=60)
    ok(t.tech.http.post(f"/tenants/{t.id}/jobs", json={"envelope": env, "payloads": payloads}))
    try:
        rogue.connect()
        good = json.loads(encode_result(_result(job, ok=False, exit_code=1)))
        rogue.send({"type": "check-result", "seq": 1, "result": good})
        ack = rogue.wait_for("check-ack")
        assert ack["seq"] == 1 and "not a target" in ack["refused"]
        for bad in ({**good, "stdout": "x" * (MAX_TAIL + 1)}, {**good, "job": "../etc"}, "junk"):
            rogue.send({"type": "check-result", "seq": 2, "result": bad})
            assert "bad message" in rogue.wait_for("error")["detail"]
        rogue.send({"type": "check-result", "seq": 3, "result": good})  # still connected
        assert "not a target" in rogue.wait_for("check-ack")["refused"]
    finally:
        rogue.close()
    assert not alerts(t.owner, t, "script-check-failed", "all") or all(
        rogue.device_id not in a["detail"] for a in alerts(t.owner, t, "script-check-failed", "all"))
    store = store_of(live.server)
    try:
        with store.read() as s:
            assert not list(s.scalars(select(ScriptCheckResult).where(
                ScriptCheckResult.device_id == rogue.device_id)))
    finally:
        store.dispose()
    # The job endpoint refuses what no agent would run: a repeat signed for the past.
    env, payloads, _ = repeating_job(t, grant, [live.device], b"echo hi\n", lasts_s=1)
    time.sleep(1.1)
    r = t.tech.http.post(f"/tenants/{t.id}/jobs", json={"envelope": env, "payloads": payloads})
    assert r.status_code == 400 and "already ended" in r.text
