"""Day-two device lifecycle (issue 16): reject a pending enrolment, retire a device, rename one.

Through the real CLI (an approver's configuration as `rampart login` leaves it) against a real
server and a real agent. Retiring closes the agent's connection; the agent is told at its next
handshake and stops connecting; no job may target the device; every change is audited. Security
tests: who may do it (roles), the step-up, and that a refused request changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from harness.agent import AgentProcess
from harness.operators import audit_events, ok, step_up
from harness.sessions import SessionWorld, cli_config, session_world

from rampart import trust

pytestmark = pytest.mark.store


@pytest.fixture(scope="module")
def world(pg_cluster: Any) -> Iterator[SessionWorld]:
    with session_world(pg_cluster, prefix="rampart-lifecycle-") as w:
        approver, key = w.approvers[0]
        cli_config(w, "cli-approver", approver, key, w.root_env)  # type: ignore[attr-defined]
        w.enrol("main")
        yield w


def _device(w: SessionWorld, device_id: str) -> dict[str, Any]:
    return next(d for d in ok(w.owner.http.get(f"/tenants/{w.tenant}/devices")) if d["id"] == device_id)


def _pending_device(w: SessionWorld, name: str) -> AgentProcess:
    """An enrolled device nobody approved yet, its agent running."""
    tok = ok(w.owner.http.post(f"/tenants/{w.tenant}/enrollment-tokens", json={"ttl_s": 600}))
    agent = AgentProcess(w.base / name)
    r = agent.enroll(w.server.url, tok["token"], tok["root_sha256"], w.server.cert_sha256)
    assert r.returncode == 0, r.stderr
    w.agents[name] = agent.start()
    return agent


def test_renaming_a_device_shows_the_teams_name_and_audits_both(world: SessionWorld) -> None:
    w = world
    before = _device(w, w.main.device_id)["hostname"]
    r = w.cli("device", "rename", "acme", w.main.device_id, "front-desk-pc", config="cli-approver")
    assert r.returncode == 0, r.stderr
    assert _device(w, w.main.device_id)["hostname"] == "front-desk-pc"
    event = [e for e in audit_events(w.owner, w.tenant) if e["kind"] == "device.renamed"][-1]
    assert event["details"] == {"device": w.main.device_id, "from": before, "to": "front-desk-pc"}
    # A name with control characters is refused (it would reach terminals and pages).
    r = w.cli("device", "rename", "acme", w.main.device_id, "evil\x1b[2Jname", config="cli-approver")
    assert r.returncode != 0
    assert _device(w, w.main.device_id)["hostname"] == "front-desk-pc"


def test_rejecting_a_pending_enrolment_tells_the_agent_and_refuses_it(world: SessionWorld) -> None:
    w = world
    agent = _pending_device(w, "stranger")
    deadline = time.time() + 30
    while not _device(w, agent.device_id)["connected"] and time.time() < deadline:
        time.sleep(0.2)
    r = w.cli("device", "reject", "acme", agent.device_id, config="cli-approver")
    assert r.returncode == 0, r.stderr
    assert _device(w, agent.device_id)["status"] == "rejected"
    agent.stop()
    agent.start()  # its next handshake: told, then refused
    agent.wait_log("this device is rejected", timeout=60)
    time.sleep(1)
    assert not _device(w, agent.device_id)["connected"]
    # An approved device cannot be "rejected": it is retired instead (and nothing changed).
    r = w.cli("device", "reject", "acme", w.main.device_id, config="cli-approver")
    assert r.returncode != 0 and b"retire it instead" in r.stderr
    assert _device(w, w.main.device_id)["status"] == "approved"


def test_T11_a_technician_cannot_reject_or_retire_and_retiring_needs_a_fresh_totp(
        world: SessionWorld) -> None:
    w = world
    for verb in ("reject", "retire"):
        r = w.tech.http.post(f"/tenants/{w.tenant}/devices/{w.main.device_id}/{verb}")
        assert r.status_code == 403 and "needs the role" in r.text
    approver, _ = w.approvers[1]
    approver.login()  # a fresh session: no step-up yet
    r = approver.http.post(f"/tenants/{w.tenant}/devices/{w.main.device_id}/retire")
    assert r.status_code == 403 and "step-up" in r.text
    assert _device(w, w.main.device_id)["status"] == "approved"
    assert _device(w, w.main.device_id)["connected"]


def test_retiring_a_device_disconnects_it_stops_its_agent_and_refuses_jobs_to_it(
        world: SessionWorld) -> None:
    w = world
    grant = w.grant(["inventory"])
    approver, _ = w.approvers[0]
    totp = approver.totp.code()
    r = w.cli("device", "retire", "acme", w.main.device_id, config="cli-approver",
              env_extra={"RAMPART_TOTP": totp})
    assert r.returncode == 0, r.stderr
    assert _device(w, w.main.device_id)["status"] == "retired"
    w.main.wait_log("this device is retired", timeout=60)
    assert not _device(w, w.main.device_id)["connected"]
    # No job may target it any more.
    now = int(time.time())
    job = trust.Job(id=trust.new_job_id(), tenant=w.tenant, grant=grant, signer=w.tech_key.key_id,
                    devices=[w.main.device_id], action=trust.Action(kind="inventory-refresh"),
                    nonce=trust.new_nonce(), issued_at=now, expires_at=now + 600)
    env = trust.sign_envelope(job.PAYLOAD_TYPE, trust.encode_payload(job), [w.tech_key]).to_bytes()
    r2 = w.tech.http.post(f"/tenants/{w.tenant}/jobs", json={"envelope": env.decode(), "payloads": {}})
    assert r2.status_code == 400 and "retired" in r2.text
    kinds = [e["kind"] for e in audit_events(w.owner, w.tenant)]
    assert "device.retired" in kinds and "stepup.passed" in kinds
    # Restarted, the agent is told again and does not reconnect.
    w.main.stop()
    w.main.start()
    time.sleep(3)
    assert not _device(w, w.main.device_id)["connected"]


def test_archiving_a_tenant_refuses_its_devices_and_jobs_until_it_is_unarchived(world: SessionWorld) -> None:
    w = world
    cli_config(w, "cli-owner", w.owner, w.owner_key, w.root_env)  # type: ignore[attr-defined]
    second = w.enrol("second")
    grant = w.grant(["inventory"], agent="second")
    # Not confirmed: nothing happens.
    r = w.cli("tenant", "archive", "acme", config="cli-owner")
    assert r.returncode != 0 and b"not confirmed" in r.stderr
    assert ok(w.owner.http.get(f"/tenants/{w.tenant}"))["status"] == "active"
    # Only owners may archive.
    for op in (w.tech, w.approvers[0][0]):
        r2 = op.http.post(f"/tenants/{w.tenant}/archive")
        assert r2.status_code == 403 and "needs the role" in r2.text
    r = w.cli("tenant", "archive", "acme", "--confirm", "acme", config="cli-owner",
              env_extra={"RAMPART_TOTP": w.owner.totp.code()})
    assert r.returncode == 0, r.stderr
    assert ok(w.owner.http.get(f"/tenants/{w.tenant}"))["status"] == "archived"
    second.wait_log("this device is archived", timeout=60)
    assert not _device(w, second.device_id)["connected"]
    now = int(time.time())
    job = trust.Job(id=trust.new_job_id(), tenant=w.tenant, grant=grant, signer=w.tech_key.key_id,
                    devices=[second.device_id], action=trust.Action(kind="inventory-refresh"),
                    nonce=trust.new_nonce(), issued_at=now, expires_at=now + 600)
    env = trust.sign_envelope(job.PAYLOAD_TYPE, trust.encode_payload(job), [w.tech_key]).to_bytes()
    r2 = w.tech.http.post(f"/tenants/{w.tenant}/jobs", json={"envelope": env.decode(), "payloads": {}})
    assert r2.status_code == 400 and "archived" in r2.text
    assert "tenant.archived" in [e["kind"] for e in audit_events(w.owner, w.tenant)]
    # Unarchived, the tenant is active again and its agent connects at its next attempt.
    r = w.cli("tenant", "unarchive", "acme", config="cli-owner",
              env_extra={"RAMPART_TOTP": w.owner.totp.code()})
    assert r.returncode == 0, r.stderr
    assert ok(w.owner.http.get(f"/tenants/{w.tenant}"))["status"] == "active"
    second.stop()
    second.start()
    w.wait_connected(second.device_id)
    assert w.tech.http.post(f"/tenants/{w.tenant}/jobs", json={"envelope": env.decode(),
                                                                "payloads": {}}).status_code == 200


def test_changing_an_accounts_role_applies_at_once_with_a_step_up_and_is_audited(
        world: SessionWorld) -> None:
    w = world
    cli_config(w, "cli-owner", w.owner, w.owner_key, w.root_env)  # type: ignore[attr-defined]
    tech2 = w.tech2  # type: ignore[attr-defined]
    body = {"devices": [w.main.device_id], "capabilities": ["script"], "duration_s": 600, "reason": "before"}
    assert tech2.http.post(f"/tenants/{w.tenant}/grants", json=body).status_code == 200
    # Only owners, never for themselves, and only after a fresh TOTP code.
    r = w.tech.http.put("/accounts/tech2/role", json={"role": "viewer"})
    assert r.status_code == 403 and "needs the role" in r.text
    w.owner.login()
    r = w.owner.http.put("/accounts/tech2/role", json={"role": "viewer"})
    assert r.status_code == 403 and "step-up" in r.text
    r = w.owner.http.put("/accounts/owner/role", json={"role": "viewer"})
    assert r.status_code in (400, 403)
    roles = {a["username"]: a["role"] for a in ok(w.owner.http.get("/accounts"))}
    assert roles["tech2"] == "technician" and roles["owner"] == "owner"
    r2 = w.cli("account", "role", "tech2", "viewer", config="cli-owner",
               env_extra={"RAMPART_TOTP": w.owner.totp.code()})
    assert r2.returncode == 0, r2.stderr
    # Its very next request has the new role.
    r = tech2.http.post(f"/tenants/{w.tenant}/grants", json=body)
    assert r.status_code == 403 and "needs the role" in r.text
    event = [e for e in audit_events(w.owner, w.tenant) if e["kind"] == "account.role-changed"][-1]
    assert event["details"] == {"username": "tech2", "from": "technician", "to": "viewer"}


def test_T12_an_account_that_reaches_every_tenant_cannot_become_a_customer_viewer(
        world: SessionWorld) -> None:
    """A customer viewer sees exactly one tenant (M5): a role change that would show a customer every
    tenant, or several, is refused and changes nothing; one tenant is fine."""
    w = world
    w.owner.create_account("wide-tech", "technician", None)  # MSP staff: every tenant
    step_up(w.owner)  # the refusal below is the tenant rule, not a missing step-up
    r = w.owner.http.put("/accounts/wide-tech/role", json={"role": "customer-viewer"})
    assert r.status_code == 400 and "exactly one tenant" in r.text
    accounts = {a["username"]: a for a in ok(w.owner.http.get("/accounts"))}
    assert accounts["wide-tech"]["role"] == "technician"
    assert not [e for e in audit_events(w.owner, w.tenant)
                if e["kind"] == "account.role-changed" and e["details"]["username"] == "wide-tech"]
    w.owner.create_account("one-tenant", "technician", [w.tenant])
    r = w.owner.http.put("/accounts/one-tenant/role", json={"role": "customer-viewer"})
    assert r.status_code == 200, r.text
    accounts = {a["username"]: a for a in ok(w.owner.http.get("/accounts"))}
    assert accounts["one-tenant"]["role"] == "customer-viewer"
