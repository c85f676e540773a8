"""T12: an account of tenant A reaches nothing of tenant B, on every route.

The walk is driven by /openapi.json, so a new route is covered automatically
(and the test fails until it says which body that route needs).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from harness.operators import (
    Operator,
    TenantSetup,
    approved_grant,
    bootstrap_owner,
    ok,
    setup_tenant,
    signed_job,
)
from harness.server import RunningServer
from harness.wsagent import WireAgent

QUERY = {"start": 0, "limit": 10, "old": 0, "new": 1, "index": 0, "size": 1}


@pytest.fixture
def world(server: RunningServer) -> dict[str, Any]:
    msp = bootstrap_owner(server)
    b = setup_tenant(msp, "Bravo", prefix="b-")
    enrol = ok(b.tech.http.post(f"/tenants/{b.id}/enrollment-tokens", json={"ttl_s": 600}))
    device = WireAgent.enrol(server, enrol["token"], enrol["root_sha256"]).device_id
    gid = approved_grant(b, [device])
    env, payloads, job_id = signed_job(b, gid, [device])
    ok(b.tech.http.post(f"/tenants/{b.id}/jobs", json={"envelope": env, "payloads": payloads}))
    # An account of B revoked by the MSP leaves an alert in B.
    msp.create_account("b-spare", "viewer", [b.id])
    ok(msp.http.post("/accounts/b-spare/revoke", json={"reason": "left"}))
    [alert] = ok(msp.http.get(f"/tenants/{b.id}/alerts"))
    target = ok(msp.http.post(f"/tenants/{b.id}/notify-targets", json={
        "kind": "syslog", "name": "b-siem", "host": "127.0.0.1", "port": 9}))
    check = ok(msp.http.post(f"/tenants/{b.id}/checks", json={"kind": "port", "params": {"port": 22}}))
    ok(msp.http.put(f"/tenants/{b.id}/sanctioned-tools/anydesk"))
    rule = ok(msp.http.post(f"/tenants/{b.id}/suppressions", json={
        "kind": "memory-only", "path": "/opt/b/supervisor", "reason": "B's own", "days": 30}))
    ok(msp.http.put(f"/tenants/{b.id}/device-groups/pilot", json={"devices": [device]}))
    a = setup_tenant(msp, "Alpha", prefix="a-")
    a_owner = msp.create_account("a-owner", "owner", [a.id])
    a_viewer = msp.create_account("a-viewer", "viewer", [a.id])
    grant = ok(b.tech.http.get(f"/grants/{gid}"))
    return {"msp": msp, "a": a, "b": b, "device": device, "grant": grant, "job": job_id,
            "job_env": env, "payloads": payloads, "alert": alert["id"], "target": target["id"],
            "check": check["id"], "rule": rule["id"],
            "users": [a_owner, a.approver, a.tech, a_viewer]}


def _bodies(w: dict[str, Any]) -> dict[tuple[str, str], Any]:
    b: TenantSetup = w["b"]
    return {
        ("post", "/api/v1/tenants/{t}/roots"): {"envelope": b.root_envelope},
        ("put", "/api/v1/tenants/{t}/root-proposal"): {"envelope": b.root_envelope},
        ("post", "/api/v1/tenants/{t}/root-proposal/signatures"): {"envelope": b.root_envelope},
        ("post", "/api/v1/tenants/{t}/enrollment-tokens"): {"ttl_s": 600},
        ("post", "/api/v1/tenants/{t}/grants"): {
            "devices": [w["device"]], "capabilities": ["script"], "duration_s": 600,
            "reason": "cross-tenant"},
        ("post", "/api/v1/grants/{g}/signatures"): {"envelope": w["grant"]["envelope"]},
        ("post", "/api/v1/tenants/{t}/jobs"): {"envelope": w["job_env"],
                                               "payloads": w["payloads"]},
        ("post", "/api/v1/tenants/{t}/audit/checkpoint"): None,
        ("post", "/api/v1/tenants/{t}/audit/checkpoints/{size}/cosignatures"): {"envelope": w["job_env"]},
        ("post", "/api/v1/tenants/{t}/devices/{d}/approve"): None,
        ("post", "/api/v1/tenants/{t}/devices/{d}/reject"): None,
        ("post", "/api/v1/tenants/{t}/archive"): None,
        ("post", "/api/v1/tenants/{t}/unarchive"): None,
        ("post", "/api/v1/tenants/{t}/delete"): {"confirm": b.tenant["name"]},
        ("post", "/api/v1/jobs/{j}/cancellation"): {"envelope": w["grant"]["envelope"]},
        ("post", "/api/v1/tenants/{t}/devices/{d}/retire"): None,
        ("put", "/api/v1/tenants/{t}/devices/{d}/name"): {"name": "stolen"},
        ("put", "/api/v1/accounts/{username}/role"): {"role": "owner"},
        ("put", "/api/v1/tenants/{t}/settings"): {"mass_action_limit": 1000},
        ("post", "/api/v1/grants/{g}/revocation"): {"envelope": w["grant"]["envelope"]},
        ("post", "/api/v1/accounts/{username}/revoke"): {"reason": "cross-tenant"},
        ("post", "/api/v1/accounts/{username}/unlock"): None,
        ("post", "/api/v1/accounts/{username}/enable"): None,
        ("post", "/api/v1/accounts/{username}/reissue"): None,
        ("post", "/api/v1/alerts/{a}/ack"): None,
        ("post", "/api/v1/alerts/{a}/resolve"): None,
        ("post", "/api/v1/tenants/{t}/notify-targets"): {
            "kind": "syslog", "name": "x", "host": "127.0.0.1", "port": 9},
        ("delete", "/api/v1/notify-targets/{n}"): None,
        ("post", "/api/v1/notify-targets/{n}/test"): None,
        ("post", "/api/v1/tenants/{t}/checks"): {"kind": "port", "params": {"port": 22}},
        ("delete", "/api/v1/checks/{c}"): None,
        ("post", "/api/v1/tenants/{t}/devices/{d}/inventory-request"): {"full": True},
        ("put", "/api/v1/tenants/{t}/sanctioned-tools/{slug}"): None,
        ("delete", "/api/v1/tenants/{t}/sanctioned-tools/{slug}"): None,
        ("post", "/api/v1/tenants/{t}/suppressions"): {
            "kind": "memory-only", "path": "/opt/a/x", "reason": "cross-tenant", "days": 1},
        ("delete", "/api/v1/tenants/{t}/suppressions/{rule_id}"): None,
        ("post", "/api/v1/tenants/{t}/automation-key"): None,
        ("put", "/api/v1/tenants/{t}/patch-policies/{name}"): {
            "rings": [{"name": "pilot", "devices": [w["device"]]}]},
        ("delete", "/api/v1/tenants/{t}/patch-policies/{name}"): None,
        ("post", "/api/v1/tenants/{t}/patch-policies/{name}/resume"): None,
        ("put", "/api/v1/tenants/{t}/devices/{d}/backup-policy"): {"every_s": 3600},
        ("delete", "/api/v1/tenants/{t}/devices/{d}/backup-policy"): None,
        ("put", "/api/v1/tenants/{t}/device-groups/{name}"): {"devices": []},
        ("post", "/api/v1/tenants/{t}/device-groups/{name}/members"): {"remove": [w["device"]]},
        ("delete", "/api/v1/tenants/{t}/device-groups/{name}"): None,
        ("post", "/api/v1/tenants/{t}/directories"): {
            "name": "pilot", "url": "ldaps://127.0.0.1:9", "bind_dn": "cn=audit", "base": "dc=b",
            "password": "cross-tenant", "pin_sha256": "a" * 64},
        ("delete", "/api/v1/tenants/{t}/directories/{name}"): None,
        ("post", "/api/v1/tenants/{t}/directories/{name}/audit"): None,
        ("put", "/api/v1/tenants/{t}/statement"): {"deadline_s": 60, "contact": "cross-tenant"},
    }


def _b_state(w: dict[str, Any]) -> Any:
    msp: Operator = w["msp"]
    b: TenantSetup = w["b"]
    # B's syslog target points at a closed port: the server's own notifier keeps retrying it and raises
    # siem-undelivered for it, whatever A does; that delivery state is not B's configuration.
    alerts = [a for a in ok(msp.http.get(f"/tenants/{b.id}/alerts", params={"status": "all"}))
              if a["kind"] != "siem-undelivered"]
    targets = [{k: v for k, v in t.items() if k in ("id", "name", "kind", "config", "min_severity", "tenant")}
               for t in ok(msp.http.get(f"/tenants/{b.id}/notify-targets"))]
    return (ok(msp.http.get(f"/tenants/{b.id}/audit/checkpoint"))["size"],
            alerts,
            ok(msp.http.get(f"/tenants/{b.id}/settings")),
            targets,
            ok(msp.http.get(f"/tenants/{b.id}/checks")),
            ok(msp.http.get(f"/tenants/{b.id}/sanctioned-tools")),
            ok(msp.http.get(f"/tenants/{b.id}/suppressions")),
            ok(msp.http.get(f"/tenants/{b.id}/patch-policies")),
            ok(msp.http.get(f"/tenants/{b.id}/device-groups")),
            ok(msp.http.get(f"/tenants/{b.id}/directories")),
            ok(msp.http.get(f"/tenants/{b.id}/statement")),
            ok(msp.http.get(f"/tenants/{b.id}/backup-status")),
            [(x["username"], x["status"]) for x in ok(msp.http.get("/accounts"))],
            ok(msp.http.get(f"/tenants/{b.id}/devices")),
            ok(msp.http.get(f"/tenants/{b.id}/roots")),
            ok(msp.http.get(f"/grants/{w['grant']['id']}"))["status"])


def test_T12_every_tenant_route_refuses_another_tenants_ids(
        server: RunningServer, world: dict[str, Any]) -> None:
    b: TenantSetup = world["b"]
    ids = {"t": b.id, "g": world["grant"]["id"], "j": world["job"], "d": world["device"],
           "username": b.tech.username, "a": world["alert"], "n": world["target"], "slug": "anydesk",
           "c": world["check"], "name": "pilot", "rule_id": world["rule"], "size": "1"}
    secret_ids = set(ids.values())
    before = _b_state(world)
    spec = ok(server.client(api=False).get("/openapi.json"))
    bodies = _bodies(world)
    walked = 0
    for user in world["users"]:
        for path, item in spec["paths"].items():
            params = re.findall(r"{(\w+)}", path)
            if not params:
                continue
            for method in item:
                assert set(params) <= set(ids), f"unknown path parameter in {path}"
                key = (method, path)
                if method != "get":
                    assert key in bodies, f"T12 walk needs a body for {method.upper()} {path}"
                url = path.format(**ids).removeprefix("/api/v1")
                kwargs: dict[str, Any] = {"params": QUERY} if method == "get" else {}
                if bodies.get(key) is not None:
                    kwargs["json"] = bodies[key]
                r = user.http.request(method.upper(), url, **kwargs)
                walked += 1
                assert r.status_code == 404, (user.username, method, path, r.status_code, r.text)
                assert not any(i in r.text for i in secret_ids if i not in url)
    assert walked >= 4 * 20
    assert _b_state(world) == before


def test_T12_lists_and_tenant_references_hide_other_tenants(
        server: RunningServer, world: dict[str, Any]) -> None:
    a: TenantSetup = world["a"]
    b: TenantSetup = world["b"]
    for user in world["users"]:
        tenants = ok(user.http.get("/tenants"))
        assert [t["id"] for t in tenants] == [a.id]
        r = user.http.post("/keys", json={"public": "rampart-operator-pub:" + "A" * 43 + "=",
                                          "tenant": b.id, "name": "x"})
        assert r.status_code in (400, 404)
        r = user.http.post("/keys", json={"public": b.tech_key.public.to_text(),
                                          "tenant": "Bravo", "name": "x"})
        assert r.status_code == 404
        page = server.client(user.token, api=False).get("/")
        assert "Bravo" not in page.text and b.id not in page.text
    a_owner: Operator = world["users"][0]
    r = a_owner.http.post("/accounts", json={"username": "spy", "role": "viewer",
                                             "tenants": [b.id]})
    assert r.status_code == 404
    r = a_owner.http.post("/accounts", json={"username": "spy", "role": "owner", "tenants": None})
    assert r.status_code == 400
    r = a_owner.http.post("/tenants", json={"name": "Charlie"})
    assert r.status_code == 400
    visible = {x["username"] for x in ok(a_owner.http.get("/accounts"))}
    assert not visible & {"b-approver", "b-tech"}
