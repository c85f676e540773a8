"""G5: mass-action safeguards, through the real API of a real server.

A stolen technician session pushing scripts to many devices is the attack:
past the tenant's limit of distinct devices per rolling hour, the server
refuses the next job until the same session proves a fresh TOTP code; the
same step-up guards approving a grant beyond single-approver reach. Every
refusal, step-up and pass is in the tenant's audit log.
"""

from __future__ import annotations

import pyotp
import pytest
from harness.operators import (
    TenantSetup,
    approved_grant,
    audit_events,
    bootstrap_owner,
    enrol_devices,
    ok,
    post_job,
    setup_tenant,
)
from harness.server import RunningServer

from rampart.server.access import STEP_UP_WINDOW_S, step_up_fresh

pytestmark = pytest.mark.store


@pytest.fixture
def fleet(server: RunningServer) -> tuple[TenantSetup, list[str]]:
    owner = bootstrap_owner(server)
    t = setup_tenant(owner, "Acme")
    return t, enrol_devices(t, 11)


def test_G5_eleventh_device_in_an_hour_needs_step_up(fleet: tuple[TenantSetup, list[str]]) -> None:
    t, devs = fleet
    first_ten = approved_grant(t, devs[:10])
    last = approved_grant(t, devs[10:])
    for d in devs[:10]:
        ok(post_job(t, first_ten, [d]))
    # Devices already reached do not count twice.
    ok(post_job(t, first_ten, [devs[0]]))
    r = post_job(t, last, [devs[10]])
    assert r.status_code == 403, r.text
    body = r.json()
    assert body["code"] == "step-up-required"
    assert "11 distinct devices" in body["detail"] and "limit 10" in body["detail"]
    jobs = ok(t.owner.http.get(f"/tenants/{t.id}/jobs"))
    assert len(jobs) == 11  # the refused job was not stored

    # A reused TOTP code (the step the login used) does not step up.
    reused = pyotp.TOTP(t.tech.totp.secret).at(t.tech.totp.last_step * 30)
    bad = t.tech.http.post("/auth/step-up", json={"code": reused})
    assert bad.status_code == 403 and "reused" in bad.json()["detail"]
    assert post_job(t, last, [devs[10]]).status_code == 403

    stepped = ok(t.tech.http.post("/auth/step-up", json={"code": t.tech.totp.code()}))
    assert stepped["valid_until"] - stepped["step_up_at"] == STEP_UP_WINDOW_S
    ok(post_job(t, last, [devs[10]]))

    # Another session of the same account does not inherit the step-up.
    t.tech.login()
    r = post_job(t, last, [devs[10]])
    assert r.status_code == 403 and r.json()["code"] == "step-up-required"

    events = audit_events(t.owner, t.id)
    kinds = [(e["kind"], e["actor"]) for e in events]
    assert kinds.count(("stepup.required", "tech")) == 3
    assert ("stepup.verified", "tech") in kinds and ("stepup.passed", "tech") in kinds
    passed = [e for e in events if e["kind"] == "stepup.passed"][0]
    assert passed["details"] == {"devices_in_hour": 11, "limit": 10, "job_devices": 1,
                                 "for": "job"}


def test_G5_tenant_limit_is_a_setting_and_counts_every_device_of_a_job(
        fleet: tuple[TenantSetup, list[str]]) -> None:
    t, devs = fleet
    g = approved_grant(t, devs[:3])
    assert t.tech.http.put(f"/tenants/{t.id}/settings",
                           json={"mass_action_limit": 2}).status_code == 403
    doc = ok(t.owner.http.put(f"/tenants/{t.id}/settings", json={"mass_action_limit": 2}))
    assert doc["mass_action_limit"] == 2
    r = post_job(t, g, devs[:3])  # one job, three devices: already above 2
    assert r.status_code == 403 and r.json()["code"] == "step-up-required"
    ok(post_job(t, g, devs[:2]))
    assert "tenant.settings" in [e["kind"] for e in audit_events(t.owner, t.id)]


def test_G5_approving_a_grant_beyond_single_approver_reach_needs_step_up(
        fleet: tuple[TenantSetup, list[str]]) -> None:
    t, devs = fleet
    doc = ok(t.tech.http.post(f"/tenants/{t.id}/grants", json={
        "devices": devs, "capabilities": ["script"], "duration_s": 3600,
        "reason": "fleet-wide fix"}))
    assert doc["status"] == "requested"
    from rampart.trust import add_signature, decode_envelope

    signed = add_signature(decode_envelope(doc["envelope"].encode()), t.approver_key)
    body = {"envelope": signed.to_bytes().decode()}
    r = t.approver.http.post(f"/grants/{doc['id']}/signatures", json=body)
    assert r.status_code == 403 and r.json()["code"] == "step-up-required", r.text
    assert ok(t.approver.http.get(f"/grants/{doc['id']}"))["approvals"] == []
    ok(t.approver.http.post("/auth/step-up", json={"code": t.approver.totp.code()}))
    got = ok(t.approver.http.post(f"/grants/{doc['id']}/signatures", json=body))
    assert got["required"] == 2 and len(got["approvals"]) == 1 and got["status"] == "requested"
    passed = [e for e in audit_events(t.owner, t.id) if e["kind"] == "stepup.passed"]
    assert passed and passed[-1]["details"]["for"] == "approving a multi-approver grant"
    # A single-approver grant needs no step-up (a fresh session proves it).
    t.approver.login()
    approved_grant(t, devs[:1])


def test_G5_step_up_window_is_five_minutes() -> None:
    assert step_up_fresh(1000.0, 1000.0 + STEP_UP_WINDOW_S)
    assert not step_up_fresh(1000.0, 1000.0 + STEP_UP_WINDOW_S + 1)
    assert not step_up_fresh(None, 1000.0)
    assert not step_up_fresh(2000.0, 1000.0)  # a step-up "from the future" never counts
