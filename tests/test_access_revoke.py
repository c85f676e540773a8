"""Departing people and ended grants (S2, G4), with a real agent.

The attack: a technician leaves (or is caught) but keeps a copy of their key,
and an attacker who holds the server replays jobs signed by it, or jobs under
a grant an approver ended early. Once owners publish the root without the
key, and once the signed revocation reached the agent, the agent refuses.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import pytest
from harness.operators import audit_events, make_root, ok, sign_root
from harness.server import RunningServer
from harness.world import World, agent_world, envelope, insert_job, server_owned

from rampart import trust
from rampart.trust import REVOCATION_TYPE

pytestmark = pytest.mark.store


@pytest.fixture
def world(server: RunningServer) -> Iterator[World]:
    with agent_world(server) as w:
        yield w


def wait_for(pred: object, what: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise TimeoutError(what)


def revocation(w: World, signer: trust.OperatorKey, grant: str, reason: str = "done") -> str:
    rev = trust.Revocation(tenant=w.t.id, grant=grant, issued_at=int(time.time()), reason=reason)
    return trust.sign_envelope(REVOCATION_TYPE, trust.encode_payload(rev), [signer]).to_bytes().decode()


def test_S2_revoked_technician_next_job_refused_by_the_agent(world: World) -> None:
    w, t = world, world.t
    old_session = t.tech.token
    doc = ok(t.owner.http.post("/accounts/tech/revoke", json={"reason": "left the company"}))
    assert doc["sessions_ended"] >= 1 and doc["tenants"] == [t.id]
    assert [k["keyid"] for k in doc["keys"]] == [t.tech_key.key_id]
    # Login is disabled at once and every session is gone.
    with w.server.client(old_session) as c:
        assert c.get("/me").status_code == 401
    with w.server.client() as c:
        r = c.post("/auth/login", json={"username": "tech", "password": t.tech.password,
                                        "totp": t.tech.totp.code()})
        assert r.status_code == 401
    # Owners sign and publish the next root without the technician's key.
    tenant = ok(t.owner.http.get(f"/tenants/{t.id}"))
    v2 = make_root(tenant, 2, owners=[t.owner_key], approvers=[t.approver_key], technicians=[])
    ok(t.owner.http.post(f"/tenants/{t.id}/roots", json={"envelope": sign_root(v2, [t.owner_key])}))
    wait_for(lambda: w.agent.status()["root_version"] == 2, "agent did not adopt root v2")
    # The attacker holds the server and the departed technician's key: a job under the old grant.
    script, marker = w.marker_script("revoked-tech")
    job = w.job(t.tech_key, w.grant, script)
    with server_owned(w) as (store, audit, _):
        with store.transaction() as s:
            insert_job(s, audit, t.id, envelope(job, t.tech_key), job, script)
        audit.sign_checkpoint(t.id, time.time())
    receipt = w.receipt(job.id)
    assert (receipt["outcome"], receipt["refusal"]) == ("refused", "unknown-key")
    assert not marker.exists()
    kinds = [e["kind"] for e in audit_events(t.owner, t.id)]
    assert "account.revoked" in kinds and "account.disabled" in kinds


def test_G4_revoked_grant_refused_by_server_and_by_an_agent_that_was_offline(world: World) -> None:
    w, t = world, world.t
    w.agent.stop()  # offline while the grant is revoked: it learns on reconnect, before any job
    # Only an approver or owner of the root can revoke; the technician's own signature is refused.
    r = t.tech.http.post(f"/grants/{w.grant}/revocation",
                         json={"envelope": revocation(w, t.tech_key, w.grant)})
    assert r.status_code == 403  # technicians hold no grant.revoke permission
    r = t.approver.http.post(f"/grants/{w.grant}/revocation",
                             json={"envelope": revocation(w, t.tech_key, w.grant)})
    assert r.status_code == 400 and "revocation refused" in r.json()["detail"]
    done = ok(t.approver.http.post(f"/grants/{w.grant}/revocation",
                                   json={"envelope": revocation(w, t.approver_key, w.grant,
                                                                "incident closed")}))
    assert done["status"] == "revoked"
    # The honest server refuses new jobs under it.
    script, marker = w.marker_script("revoked-grant")
    job = w.job(t.tech_key, w.grant, script)
    r = t.tech.http.post(f"/tenants/{t.id}/jobs", json={
        "envelope": envelope(job, t.tech_key).decode(),
        "payloads": {"script": base64.b64encode(script).decode()}})
    assert r.status_code == 400 and "revoked" in r.json()["detail"]
    # A server that is not honest stores one anyway; the agent refuses it.
    with server_owned(w) as (store, audit, _):
        with store.transaction() as s:
            insert_job(s, audit, t.id, envelope(job, t.tech_key), job, script)
        audit.sign_checkpoint(t.id, time.time())
    w.agent.start()
    receipt = w.receipt(job.id)
    assert (receipt["outcome"], receipt["refusal"]) == ("refused", "revoked")
    assert not marker.exists()
    revoked = [e for e in audit_events(t.owner, t.id) if e["kind"] == "grant.revoked"]
    assert [(e["actor"], e["details"]["reason"]) for e in revoked] == [("approver",
                                                                        "incident closed")]


def test_G4_revocation_is_pushed_to_a_connected_agent_at_once(world: World) -> None:
    w, t = world, world.t
    other = ok(t.tech.http.post(f"/tenants/{t.id}/grants", json={
        "devices": [w.device], "capabilities": ["script"], "duration_s": 600,
        "reason": "second task"}))
    signed = trust.add_signature(trust.decode_envelope(other["envelope"].encode()), t.approver_key)
    ok(t.approver.http.post(f"/grants/{other['id']}/signatures",
                            json={"envelope": signed.to_bytes().decode()}))
    ok(t.approver.http.post(f"/grants/{other['id']}/revocation",
                            json={"envelope": revocation(w, t.approver_key, other["id"])}))
    w.agent.wait_log("1 grant(s) revoked", timeout=20)
    # The grant that was not revoked still works.
    script, marker = w.marker_script("still-granted")
    job = w.job(t.tech_key, w.grant, script)
    ok(t.tech.http.post(f"/tenants/{t.id}/jobs", json={
        "envelope": envelope(job, t.tech_key).decode(),
        "payloads": {"script": base64.b64encode(script).decode()}}))
    assert w.receipt(job.id)["outcome"] == "ran" and marker.exists()
