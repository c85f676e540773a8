"""Job delivery and receipts over the real agent WebSocket (S3, T1, T5, T8, T15).

The test agent verifies every job with ``rampart.trust.authorize_job``, so a
passing delivery also proves the server's inclusion and consistency proofs.
"""

from __future__ import annotations

import base64
import time

import pytest
from harness.operators import (
    Operator,
    TenantSetup,
    approved_grant,
    bootstrap_owner,
    make_root,
    ok,
    setup_tenant,
    sign_root,
    signed_job,
)
from harness.server import RunningServer
from harness.wsagent import WireAgent
from websockets.exceptions import ConnectionClosed

from rampart.trust import DeviceKey, OperatorKey


def _agent(t: TenantSetup, *, approve: bool, hostname: str = "h") -> WireAgent:
    enrol = ok(t.tech.http.post(f"/tenants/{t.id}/enrollment-tokens", json={"ttl_s": 600}))
    agent = WireAgent.enrol(t.owner.server, enrol["token"], enrol["root_sha256"], hostname)
    if approve:
        ok(t.approver.http.post(f"/tenants/{t.id}/devices/{agent.device_id}/approve"))
    return agent


def _job(t: TenantSetup, devices: list[str], script: bytes = b"echo hi\n") -> str:
    gid = approved_grant(t, devices)
    env, payloads, job_id = signed_job(t, gid, devices, script)
    doc = ok(t.tech.http.post(f"/tenants/{t.id}/jobs", json={"envelope": env,
                                                             "payloads": payloads}))
    assert doc == {"id": job_id, "targets": devices}
    return job_id


def _receipt_entries(op: Operator, tid: str) -> int:
    entries = ok(op.http.get(f"/tenants/{tid}/audit/entries", params={"limit": 1000}))
    return sum(e["kind"] == "receipt" for e in entries)


def _states(t: TenantSetup, job_id: str) -> dict[str, str]:
    return {x["device"]: x["state"] for x in ok(t.tech.http.get(f"/jobs/{job_id}"))["targets"]}


@pytest.fixture
def tenant(server: RunningServer) -> TenantSetup:
    return setup_tenant(bootstrap_owner(server), "Acme")


def test_job_reaches_connected_agent_and_one_that_connects_later(tenant: TenantSetup) -> None:
    a = _agent(tenant, approve=True, hostname="a")
    b = _agent(tenant, approve=True, hostname="b")
    assert a.connect() == {"type": "welcome", "status": "approved"}
    job_id = _job(tenant, [a.device_id, b.device_id])
    msg = a.wait_for("job")
    assert msg["job_id"] == job_id
    auth = a.verify_job(msg)
    assert auth.job.id == job_id
    assert a.send_receipt(job_id, a.receipt(job_id)) == {"type": "ack", "job_id": job_id}
    assert _states(tenant, job_id) == {a.device_id: "done", b.device_id: "pending"}
    b.connect()
    b.verify_job(b.wait_for("job"))
    assert b.send_receipt(job_id, b.receipt(job_id, stdout=b"\xffok"))["type"] == "ack"
    job = ok(tenant.tech.http.get(f"/jobs/{job_id}"))
    assert {x["state"] for x in job["targets"]} == {"done"}
    assert sorted(x["receipt"]["stdout"] for x in job["targets"]) == ["hi\n", "\ufffdok"]
    assert {x["receipt"]["outcome"] for x in job["targets"]} == {"ran"}
    devices = {d["id"]: d for d in ok(tenant.owner.http.get(f"/tenants/{tenant.id}/devices"))}
    assert devices[a.device_id]["connected"] and devices[a.device_id]["last_seen"]
    a.close()
    b.close()


def test_S3_pending_device_is_sent_no_job_until_approved(tenant: TenantSetup) -> None:
    agent = _agent(tenant, approve=False)
    assert agent.connect() == {"type": "welcome", "status": "pending"}
    job_id = _job(tenant, [agent.device_id])
    with pytest.raises(TimeoutError):
        agent.wait_for("job", timeout=2)
    ok(tenant.approver.http.post(f"/tenants/{tenant.id}/devices/{agent.device_id}/approve"))
    assert agent.wait_for("job")["job_id"] == job_id
    agent.close()


def test_T15_receipt_stored_once_even_if_sent_twice(tenant: TenantSetup) -> None:
    agent = _agent(tenant, approve=True)
    agent.connect()
    job_id = _job(tenant, [agent.device_id])
    agent.verify_job(agent.wait_for("job"))
    receipt = agent.receipt(job_id)
    before = _receipt_entries(tenant.owner, tenant.id)
    assert agent.send_receipt(job_id, receipt)["type"] == "ack"
    assert agent.send_receipt(job_id, receipt)["type"] == "ack"
    assert agent.send_receipt(job_id, agent.receipt(job_id, stdout=b"other"))["type"] == "ack"
    assert _receipt_entries(tenant.owner, tenant.id) == before + 1
    assert ok(tenant.tech.http.get(f"/jobs/{job_id}"))["targets"][0]["receipt"]["stdout"] == "hi\n"
    agent.close()


def test_T15_undone_jobs_are_resent_on_reconnect_in_order(tenant: TenantSetup) -> None:
    agent = _agent(tenant, approve=True)
    first = _job(tenant, [agent.device_id], b"echo 1\n")
    second = _job(tenant, [agent.device_id], b"echo 2\n")
    agent.connect()
    got = agent.wait_for("job")
    assert got["job_id"] == first
    agent.close()  # crashed before answering
    agent.connect()
    again = agent.wait_for("job")
    assert again["job_id"] == first
    agent.verify_job(again)
    agent.send_receipt(first, agent.receipt(first))
    nxt = agent.wait_for("job")
    assert nxt["job_id"] == second
    agent.verify_job(nxt)  # consistency from the checkpoint adopted with the first job
    agent.send_receipt(second, agent.receipt(second))
    agent.close()
    agent.connect()
    with pytest.raises(TimeoutError):
        agent.wait_for("job", timeout=1.5)
    agent.close()


def test_T15_jobs_queued_while_offline_all_verify(tenant: TenantSetup) -> None:
    agent = _agent(tenant, approve=True)
    ids = [_job(tenant, [agent.device_id], f"echo {i}\n".encode()) for i in range(3)]
    agent.connect()
    for job_id in ids:
        msg = agent.wait_for("job")
        assert msg["job_id"] == job_id
        agent.verify_job(msg)
    for job_id in ids:
        assert agent.send_receipt(job_id, agent.receipt(job_id))["type"] == "ack"
    agent.close()


def test_T15_server_killed_loses_nothing_and_duplicates_no_target(
        server: RunningServer, tenant: TenantSetup) -> None:
    agent = _agent(tenant, approve=True)
    job_id = _job(tenant, [agent.device_id])
    server.restart(kill=True)
    tenant.tech.login()
    agent.connect()
    agent.verify_job(agent.wait_for("job"))
    assert agent.send_receipt(job_id, agent.receipt(job_id))["type"] == "ack"
    agent.close()
    server.restart(kill=True)
    tenant.tech.login()
    job = ok(tenant.tech.http.get(f"/jobs/{job_id}"))
    assert [(x["device"], x["state"]) for x in job["targets"]] == [(agent.device_id, "done")]
    agent.connect()
    with pytest.raises(TimeoutError):
        agent.wait_for("job", timeout=1.5)
    agent.close()


def test_T15_agent_handshake_refuses_wrong_key(tenant: TenantSetup) -> None:
    agent = _agent(tenant, approve=True)
    with pytest.raises(ConnectionClosed) as closed:
        agent.connect(sign_with=DeviceKey.generate())
        agent.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


def test_T13_hostile_agent_messages_get_errors_not_crashes(tenant: TenantSetup) -> None:
    agent = _agent(tenant, approve=True)
    agent.connect()
    assert agent.ws is not None
    for bad in ("not json", "[]", '{"type":"receipt"}', '{"type":"state","root_version":-1,'
                '"checkpoint_size":0}', '{"type":"nope"}'):
        agent.ws.send(bad)
        assert agent.wait_for("error")["type"] == "error"
    job_id = _job(tenant, [agent.device_id])
    agent.verify_job(agent.wait_for("job"))
    forged = agent.receipt(job_id, key=DeviceKey.generate())
    assert agent.send_receipt(job_id, forged)["type"] == "error"
    assert _states(tenant, job_id)[agent.device_id] == "sent"
    with pytest.raises(ConnectionClosed):
        agent.ws.send("x" * (5 << 20))
        agent.recv()


def test_T1_T8_server_refuses_jobs_no_agent_would_run(tenant: TenantSetup) -> None:
    agent = _agent(tenant, approve=True)
    gid = approved_grant(tenant, [agent.device_id])
    env, payloads, _ = signed_job(tenant, gid, [agent.device_id])
    swapped = {"script": base64.b64encode(b"rm -rf /\n").decode()}
    r = tenant.tech.http.post(f"/tenants/{tenant.id}/jobs",
                              json={"envelope": env, "payloads": swapped})
    assert r.status_code == 400 and "SHA-256" in r.json()["detail"]
    impostor = TenantSetup(**{**tenant.__dict__, "tech_key": OperatorKey.generate()})
    env2, p2, _ = signed_job(impostor, gid, [agent.device_id])
    r = tenant.tech.http.post(f"/tenants/{tenant.id}/jobs", json={"envelope": env2, "payloads": p2})
    assert r.status_code == 400 and "technician" in r.json()["detail"]
    ok(tenant.tech.http.post(f"/tenants/{tenant.id}/jobs", json={"envelope": env,
                                                                 "payloads": payloads}))
    replay = tenant.tech.http.post(f"/tenants/{tenant.id}/jobs",
                                   json={"envelope": env, "payloads": payloads})
    assert replay.status_code == 409
    assert len(ok(tenant.tech.http.get(f"/tenants/{tenant.id}/jobs"))) == 1


def test_new_root_is_pushed_to_connected_agents(tenant: TenantSetup) -> None:
    agent = _agent(tenant, approve=False)
    agent.connect()
    v2 = make_root(tenant.tenant, 2, owners=[tenant.owner_key], approvers=[tenant.approver_key],
                   technicians=[tenant.tech_key])
    ok(tenant.owner.http.post(f"/tenants/{tenant.id}/roots",
                              json={"envelope": sign_root(v2, [tenant.owner_key])}))
    agent.wait_for("roots")
    assert agent.root.version == 2
    agent.close()
    time.sleep(0.1)


def test_T16_a_device_cannot_answer_for_another_devices_job(tenant: TenantSetup) -> None:
    """A hostile device sends receipts for a job that is not its own: its own signed receipt for
    another device's job, and that device's genuine receipt relayed over its own connection. Both
    are refused; the target stays undone, no receipt enters the log; the real answer still lands."""
    victim, hostile = _agent(tenant, approve=True, hostname="victim"), _agent(
        tenant, approve=True, hostname="hostile")
    victim.connect()
    hostile.connect()
    job_id = _job(tenant, [victim.device_id])
    victim.verify_job(victim.wait_for("job"))
    before = _receipt_entries(tenant.owner, tenant.id)

    own_claim = hostile.receipt(job_id)  # signed by the hostile device, names itself
    assert hostile.send_receipt(job_id, own_claim)["type"] == "error"
    relayed = victim.receipt(job_id)  # the victim's genuine receipt, sent by the hostile device
    assert hostile.send_receipt(job_id, relayed)["type"] == "error"
    assert _states(tenant, job_id) == {victim.device_id: "sent"}
    assert _receipt_entries(tenant.owner, tenant.id) == before

    assert victim.send_receipt(job_id, relayed)["type"] == "ack"
    assert _states(tenant, job_id) == {victim.device_id: "done"}
    assert _receipt_entries(tenant.owner, tenant.id) == before + 1
    victim.close()
    hostile.close()
