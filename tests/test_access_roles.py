"""M3, G1: least privilege, route by route, for every role, against a real server.

The expectation table below is written independently of ``rampart/server/roles.py``
(it is the roles table of docs/access.md). Every route of /openapi.json must
appear in it, so a new route fails this test until someone decides who may
call it. A role outside a route's set must get 403 "needs the role"; a role
inside it must never get that answer (it may still get 400/404/409 for the
particular input).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import pytest
from harness.operators import (
    Operator,
    approved_grant,
    bootstrap_owner,
    enrol_devices,
    ok,
    setup_tenant,
    signed_job,
)
from harness.server import RunningServer

from rampart import trust
from rampart.catalog import builtin_catalog, encode_catalog
from rampart.trust import REVOCATION_TYPE, OperatorKey

pytestmark = pytest.mark.store

ALL = frozenset({"owner", "approver", "technician", "viewer", "customer-viewer"})
STAFF = frozenset({"owner", "approver", "technician"})
OWNER = frozenset({"owner"})
APPROVE = frozenset({"owner", "approver"})
TECH = frozenset({"technician"})
PUBLIC = None  # no session needed: not part of the role walk

EXPECTED: dict[tuple[str, str], frozenset[str] | None] = {
    ("get", "/api/v1/health"): PUBLIC,
    ("post", "/api/v1/auth/bootstrap"): PUBLIC,
    ("post", "/api/v1/auth/activate"): PUBLIC,
    ("post", "/api/v1/auth/totp/confirm"): PUBLIC,
    ("post", "/api/v1/auth/login"): PUBLIC,
    ("post", "/agent/v1/enroll"): PUBLIC,
    ("post", "/api/v1/auth/step-up"): ALL,
    ("post", "/api/v1/auth/logout"): ALL,
    ("get", "/api/v1/me"): ALL,
    ("get", "/api/v1/accounts"): OWNER,
    ("post", "/api/v1/accounts"): OWNER,
    ("post", "/api/v1/accounts/{username}/reissue"): OWNER,
    ("post", "/api/v1/accounts/{username}/revoke"): OWNER,
    ("post", "/api/v1/accounts/{username}/unlock"): OWNER,
    ("post", "/api/v1/accounts/{username}/enable"): OWNER,
    ("put", "/api/v1/accounts/{username}/role"): OWNER,
    ("get", "/api/v1/keys"): ALL,
    ("post", "/api/v1/keys"): STAFF,
    ("get", "/api/v1/tenants"): ALL,
    ("post", "/api/v1/tenants"): OWNER,
    ("get", "/api/v1/tenants/{t}"): ALL,
    ("get", "/api/v1/tenants/{t}/settings"): ALL,
    ("put", "/api/v1/tenants/{t}/settings"): OWNER,
    ("get", "/api/v1/tenants/{t}/members"): ALL,
    ("get", "/api/v1/tenants/{t}/roots"): ALL,
    ("post", "/api/v1/tenants/{t}/roots"): OWNER,
    ("get", "/api/v1/tenants/{t}/roots/current"): ALL,
    ("put", "/api/v1/tenants/{t}/root-proposal"): OWNER,
    ("get", "/api/v1/tenants/{t}/root-proposal"): ALL,
    ("post", "/api/v1/tenants/{t}/root-proposal/signatures"): OWNER,
    ("post", "/api/v1/tenants/{t}/enrollment-tokens"): STAFF,
    ("get", "/api/v1/tenants/{t}/devices"): ALL,
    ("post", "/api/v1/tenants/{t}/devices/{d}/approve"): APPROVE,
    ("post", "/api/v1/tenants/{t}/devices/{d}/reject"): APPROVE,
    ("post", "/api/v1/tenants/{t}/archive"): OWNER,
    ("post", "/api/v1/tenants/{t}/unarchive"): OWNER,
    ("post", "/api/v1/tenants/{t}/delete"): OWNER,
    ("post", "/api/v1/jobs/{j}/cancellation"): STAFF,
    ("get", "/api/v1/jobs/{j}/summary"): ALL,
    ("get", "/api/v1/jobs/{j}/targets"): ALL,
    ("get", "/api/v1/deleted-tenants"): ALL,
    ("post", "/api/v1/tenants/{t}/devices/{d}/retire"): APPROVE,
    ("put", "/api/v1/tenants/{t}/devices/{d}/name"): STAFF,
    ("post", "/api/v1/tenants/{t}/grants"): TECH,
    ("get", "/api/v1/tenants/{t}/grants"): ALL,
    ("get", "/api/v1/grants/{g}"): ALL,
    ("post", "/api/v1/grants/{g}/signatures"): APPROVE,
    ("post", "/api/v1/grants/{g}/revocation"): APPROVE,
    ("post", "/api/v1/tenants/{t}/jobs"): TECH,
    ("get", "/api/v1/tenants/{t}/jobs"): ALL,
    ("get", "/api/v1/jobs/{j}"): ALL,
    # remote sessions: reading needs only the tenant (the relay socket is a WebSocket route, tested
    # in tests/test_T1_session_relay.py)
    ("get", "/api/v1/tenants/{t}/sessions"): ALL,
    ("get", "/api/v1/sessions/{j}"): ALL,
    ("get", "/api/v1/sessions/{j}/recording"): ALL,
    ("get", "/api/v1/tenants/{t}/audit/entries"): ALL,
    ("get", "/api/v1/tenants/{t}/audit/checkpoint"): ALL,
    ("post", "/api/v1/tenants/{t}/audit/checkpoint"): STAFF,
    # an outside witness's co-signature: the signature is the authority, any role may carry it
    ("post", "/api/v1/tenants/{t}/audit/checkpoints/{size}/cosignatures"): ALL,
    ("get", "/api/v1/tenants/{t}/audit/consistency"): ALL,
    ("get", "/api/v1/tenants/{t}/audit/inclusion"): ALL,
    ("get", "/api/v1/tenants/{t}/alerts"): ALL,
    ("get", "/api/v1/alerts"): ALL,
    ("post", "/api/v1/alerts/{a}/ack"): STAFF,
    ("post", "/api/v1/alerts/{a}/resolve"): STAFF,
    ("post", "/api/v1/tenants/{t}/notify-targets"): OWNER,
    ("get", "/api/v1/tenants/{t}/notify-targets"): ALL,
    ("post", "/api/v1/notify-targets"): OWNER,
    ("get", "/api/v1/notify-targets"): ALL,  # MSP-wide staff; tenant-scoped accounts get 404
    ("delete", "/api/v1/notify-targets/{n}"): OWNER,
    ("post", "/api/v1/notify-targets/{n}/test"): OWNER,
    ("get", "/api/v1/tenants/{t}/events"): ALL,
    ("post", "/api/v1/tenants/{t}/checks"): STAFF,
    ("get", "/api/v1/tenants/{t}/checks"): ALL,
    ("delete", "/api/v1/checks/{c}"): STAFF,
    # script checks: read-only (added as signed jobs, stopped by revoking the grant)
    ("get", "/api/v1/tenants/{t}/script-checks"): ALL,
    ("get", "/api/v1/tenants/{t}/script-checks/{j}/results"): ALL,
    # telemetry (docs/monitoring.md)
    ("get", "/api/v1/tenants/{t}/devices/{d}/inventory"): ALL,
    ("post", "/api/v1/tenants/{t}/devices/{d}/inventory-request"): STAFF,
    ("get", "/api/v1/tenants/{t}/findings"): ALL,
    ("get", "/api/v1/tenants/{t}/tools"): ALL,
    ("get", "/api/v1/tenants/{t}/sanctioned-tools"): ALL,
    ("put", "/api/v1/tenants/{t}/sanctioned-tools/{slug}"): APPROVE,
    ("delete", "/api/v1/tenants/{t}/sanctioned-tools/{slug}"): APPROVE,
    ("get", "/api/v1/tenants/{t}/suppressions"): ALL,
    ("post", "/api/v1/tenants/{t}/suppressions"): APPROVE,
    ("delete", "/api/v1/tenants/{t}/suppressions/{rule_id}"): APPROVE,
    ("get", "/api/v1/catalog"): ALL,
    ("post", "/api/v1/catalog"): OWNER,
    # scheduled work (docs/patching.md)
    ("get", "/api/v1/tenants/{t}/automation-key"): ALL,
    ("post", "/api/v1/tenants/{t}/automation-key"): OWNER,
    ("get", "/api/v1/tenants/{t}/patch-policies"): ALL,
    ("get", "/api/v1/tenants/{t}/patch-policies/{name}"): ALL,
    ("put", "/api/v1/tenants/{t}/patch-policies/{name}"): STAFF,
    ("delete", "/api/v1/tenants/{t}/patch-policies/{name}"): STAFF,
    ("post", "/api/v1/tenants/{t}/patch-policies/{name}/resume"): APPROVE,
    ("get", "/api/v1/tenants/{t}/patch-report"): ALL,
    ("put", "/api/v1/tenants/{t}/devices/{d}/backup-policy"): STAFF,
    ("delete", "/api/v1/tenants/{t}/devices/{d}/backup-policy"): STAFF,
    ("get", "/api/v1/tenants/{t}/backup-status"): ALL,
    # device groups: staff change them; grants still name devices
    ("get", "/api/v1/tenants/{t}/device-groups"): ALL,
    ("get", "/api/v1/tenants/{t}/device-groups/{name}"): ALL,
    ("put", "/api/v1/tenants/{t}/device-groups/{name}"): STAFF,
    ("post", "/api/v1/tenants/{t}/device-groups/{name}/members"): STAFF,
    ("delete", "/api/v1/tenants/{t}/device-groups/{name}"): STAFF,
    ("post", "/api/v1/tenants/{t}/directories"): OWNER,
    ("get", "/api/v1/tenants/{t}/directories"): ALL,
    ("delete", "/api/v1/tenants/{t}/directories/{name}"): OWNER,
    ("post", "/api/v1/tenants/{t}/directories/{name}/audit"): STAFF,
    ("get", "/api/v1/tenants/{t}/directory-findings"): ALL,
    # the posture report and the service statement (docs/compliance.md): customers read their own
    ("get", "/api/v1/tenants/{t}/report"): ALL,
    ("get", "/api/v1/tenants/{t}/statement"): ALL,
    ("put", "/api/v1/tenants/{t}/statement"): OWNER,
}

QUERY = {"start": 0, "limit": 10, "old": 0, "new": 1, "index": 0, "size": 1}
_counter = iter(range(10**6))


def test_M3_every_route_enforces_the_roles_table(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    t = setup_tenant(owner, "Acme")
    [device] = enrol_devices(t, 1)
    grant = approved_grant(t, [device])
    env, payloads, job_id = signed_job(t, grant, [device])
    ok(t.tech.http.post(f"/tenants/{t.id}/jobs", json={"envelope": env, "payloads": payloads}))
    people: dict[str, Operator] = {
        "owner": owner, "approver": t.approver, "technician": t.tech,
        "viewer": owner.create_account("viewer", "viewer", [t.id]),
        "customer-viewer": owner.create_account("customer", "customer-viewer", [t.id]),
    }
    owner.create_account("spare", "viewer", [t.id])
    owner.create_account("spare2", "viewer", [t.id])
    ok(owner.http.post("/accounts/spare2/revoke", json={"reason": "alert for the walk"}))
    [alert] = ok(owner.http.get(f"/tenants/{t.id}/alerts"))
    target = ok(owner.http.post(f"/tenants/{t.id}/notify-targets", json={
        "kind": "syslog", "name": "walk", "host": "127.0.0.1", "port": 9}))
    check = ok(owner.http.post(f"/tenants/{t.id}/checks", json={
        "kind": "port", "params": {"port": 22}}))
    ids = {"t": t.id, "g": grant, "j": job_id, "d": device, "username": "spare", "a": alert["id"],
           "n": target["id"], "slug": "anydesk", "c": check["id"], "name": "walk",
           "rule_id": "sp-" + "a" * 26, "size": "1"}

    def fresh_job() -> dict[str, Any]:
        e, p, _ = signed_job(t, grant, [device])
        return {"envelope": e, "payloads": p}

    def revocation() -> dict[str, Any]:
        rev = trust.Revocation(tenant=t.id, grant=grant, issued_at=int(time.time()))
        data = trust.sign_envelope(REVOCATION_TYPE, trust.encode_payload(rev), [t.approver_key])
        return {"envelope": data.to_bytes().decode()}

    grant_env = ok(owner.http.get(f"/grants/{grant}"))["envelope"]
    bodies: dict[tuple[str, str], Callable[[], Any]] = {
        ("post", "/api/v1/auth/step-up"): lambda: {"code": "000000"},
        ("post", "/api/v1/accounts"): lambda: {"username": f"new{next(_counter)}",
                                               "role": "viewer", "tenants": [t.id]},
        ("post", "/api/v1/accounts/{username}/revoke"): lambda: {"reason": "walk"},
        ("post", "/api/v1/keys"): lambda: {"public": OperatorKey.generate().public.to_text(),
                                           "tenant": t.id, "name": "walk"},
        ("post", "/api/v1/tenants"): lambda: {"name": f"Walk {next(_counter)}"},
        ("put", "/api/v1/tenants/{t}/settings"): lambda: {"mass_action_limit": 10},
        ("post", "/api/v1/tenants/{t}/roots"): lambda: {"envelope": t.root_envelope},
        ("put", "/api/v1/tenants/{t}/root-proposal"): lambda: {"envelope": t.root_envelope},
        ("post", "/api/v1/tenants/{t}/root-proposal/signatures"):
            lambda: {"envelope": t.root_envelope},
        ("post", "/api/v1/tenants/{t}/enrollment-tokens"): lambda: {"ttl_s": 600},
        ("post", "/api/v1/tenants/{t}/grants"): lambda: {
            "devices": [device], "capabilities": ["script"], "duration_s": 600, "reason": "walk"},
        ("post", "/api/v1/grants/{g}/signatures"): lambda: {"envelope": grant_env},
        ("post", "/api/v1/tenants/{t}/audit/checkpoints/{size}/cosignatures"):
            lambda: {"envelope": grant_env},
        ("post", "/api/v1/grants/{g}/revocation"): revocation,
        ("post", "/api/v1/tenants/{t}/jobs"): fresh_job,
        ("post", "/api/v1/tenants/{t}/notify-targets"): lambda: {
            "kind": "syslog", "name": "walk", "host": "127.0.0.1", "port": 9},
        ("post", "/api/v1/tenants/{t}/checks"): lambda: {"kind": "port", "params": {"port": 22}},
        ("post", "/api/v1/notify-targets"): lambda: {
            "kind": "syslog", "name": "soc", "host": "127.0.0.1", "port": 9},
        ("post", "/api/v1/catalog"): lambda: {"catalog": encode_catalog(builtin_catalog()).decode(),
                                              "source": "walk"},
        ("put", "/api/v1/tenants/{t}/patch-policies/{name}"): lambda: {
            "rings": [{"name": "pilot", "devices": [device]}]},
        ("put", "/api/v1/tenants/{t}/devices/{d}/backup-policy"): lambda: {"every_s": 3600},
        ("put", "/api/v1/tenants/{t}/devices/{d}/name"): lambda: {"name": "walk-name"},
        ("put", "/api/v1/accounts/{username}/role"): lambda: {"role": "viewer"},
        ("post", "/api/v1/tenants/{t}/delete"): lambda: {"confirm": "not the name"},
        ("post", "/api/v1/jobs/{j}/cancellation"): lambda: {"envelope": grant_env},
        ("put", "/api/v1/tenants/{t}/device-groups/{name}"): lambda: {"devices": [device]},
        ("post", "/api/v1/tenants/{t}/device-groups/{name}/members"): lambda: {"add": [device]},
        # a closed loopback port: an owner's request is refused (400) after the role check, nothing stored
        ("post", "/api/v1/tenants/{t}/directories"): lambda: {
            "name": "walk", "url": "ldaps://127.0.0.1:9", "bind_dn": "cn=audit", "base": "dc=walk",
            "password": "walk", "pin_sha256": "a" * 64},
        ("post", "/api/v1/tenants/{t}/suppressions"): lambda: {
            "kind": "memory-only", "path": f"/opt/walk{next(_counter)}", "reason": "walk", "days": 1},
        ("put", "/api/v1/tenants/{t}/statement"): lambda: {"deadline_s": 3600, "contact": "walk"},
    }

    spec = ok(server.client(api=False).get("/openapi.json"))
    routes = {(m, p) for p, item in spec["paths"].items() for m in item}
    assert routes == set(EXPECTED), ("routes missing from or extra in the roles table",
                                     routes ^ set(EXPECTED))
    checked = 0
    # Read-only calls first, then state changes; logout last (it ends the session).
    order = sorted(EXPECTED, key=lambda k: (k[0] != "get", k[1].endswith("/logout"),
                                            k[0] == "delete", k[1]))
    for method, path in order:
        allowed = EXPECTED[(method, path)]
        if allowed is None:
            continue
        # A deletion by an allowed role would leave nothing for the others: allowed roles last.
        walk = sorted(people.items(), key=lambda rp: rp[0] in allowed) if method == "delete" \
            else list(people.items())
        for role, person in walk:
            url = path.format(**ids).removeprefix("/api/v1")
            kwargs: dict[str, Any] = {"params": QUERY} if method == "get" else {}
            make = bodies.get((method, path))
            if make is not None:
                kwargs["json"] = make()
            elif method != "get":
                kwargs["json"] = {}
            r = person.http.request(method.upper(), url, **kwargs)
            denied = r.status_code == 403 and "needs the role" in r.text
            assert r.status_code != 422, (role, method, path, r.text)
            if role in allowed:
                assert not denied, (role, method, path, r.text)
                assert r.status_code != 401, (role, method, path, r.text)
            else:
                assert denied, (role, method, path, r.status_code, r.text)
            checked += 1
    assert checked == 5 * sum(1 for v in EXPECTED.values() if v is not None)


def test_M3_customer_viewer_sees_all_msp_activity_in_one_tenant_only(
        server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    a = setup_tenant(owner, "Acme", prefix="a-")
    b = setup_tenant(owner, "Bravo", prefix="b-")
    assert owner.http.post("/accounts", json={"username": "cust", "role": "customer-viewer",
                                              "tenants": [a.id, b.id]}).status_code == 400
    assert owner.http.post("/accounts", json={"username": "cust", "role": "customer-viewer",
                                              "tenants": None}).status_code == 400
    cust = owner.create_account("cust", "customer-viewer", [a.id])
    [device] = enrol_devices(a, 1)
    grant = approved_grant(a, [device])
    env, payloads, job_id = signed_job(a, grant, [device], script=b"echo msp was here\n")
    ok(a.tech.http.post(f"/tenants/{a.id}/jobs", json={"envelope": env, "payloads": payloads}))
    # C2: the customer sees the MSP's presence and activity: grants, jobs, the audit log.
    [g] = ok(cust.http.get(f"/tenants/{a.id}/grants"))
    assert g["requested_by"] == "a-tech" and g["reason"] == "test maintenance"
    assert [j["id"] for j in ok(cust.http.get(f"/tenants/{a.id}/jobs"))] == [job_id]
    entries = ok(cust.http.get(f"/tenants/{a.id}/audit/entries", params={"limit": 1000}))
    job_entry = [e for e in entries if e["kind"] == "job.created"]
    assert base64.b64decode(job_entry[0]["data"]) == env.encode()
    # Nothing of another tenant, and no change anywhere.
    assert [t["id"] for t in ok(cust.http.get("/tenants"))] == [a.id]
    assert cust.http.get(f"/tenants/{b.id}/jobs").status_code == 404
    assert cust.http.post(f"/tenants/{a.id}/enrollment-tokens",
                          json={"ttl_s": 600}).status_code == 403
