"""N3: operators log in and act on a tenant only from its approved networks.

The attack: a stolen password and TOTP seed used from the attacker's own
network. Loopback addresses stand in for networks: 127.0.0.2 is the MSP's
VPN, 127.0.0.1 anywhere else.
"""

from __future__ import annotations

import pytest
from harness.operators import audit_events, bootstrap_owner, ok, setup_tenant
from harness.server import RunningServer

pytestmark = pytest.mark.store

VPN = "127.0.0.2"


def test_N3_only_approved_networks_reach_the_tenant(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    t = setup_tenant(owner, "Acme")
    assert ok(owner.http.get(f"/tenants/{t.id}/settings"))["allowed_networks"] == []
    page = server.client(owner.token, api=False).get("/")
    assert "from any network" in page.text  # the console warns while anything goes
    # Bad input is refused clearly, and an owner cannot lock themselves out.
    for bad in (["10.0.0.1/8"], ["not a network"], ["::1/129"]):
        r = owner.http.put(f"/tenants/{t.id}/settings", json={"allowed_networks": bad})
        assert r.status_code == 400, r.text
    r = owner.http.put(f"/tenants/{t.id}/settings", json={"allowed_networks": [f"{VPN}/32"]})
    assert r.status_code == 400 and "your own address" in r.json()["detail"]
    with server.client(owner.token, source=VPN) as on_vpn:
        doc = ok(on_vpn.put(f"/tenants/{t.id}/settings", json={"allowed_networks": [f"{VPN}/32"]}))
    assert doc["allowed_networks"] == [f"{VPN}/32"]

    # Off the VPN: every tenant route refuses, for the technician and the MSP owner alike.
    for who in (t.tech, owner):
        r = who.http.get(f"/tenants/{t.id}/devices")
        assert r.status_code == 403 and r.json()["code"] == "network-refused", r.text
    # Login of a tenant-scoped account off the VPN: refused, but only after valid credentials.
    code = t.tech.totp.code()
    with server.client() as c:
        wrong = c.post("/auth/login", json={"username": "tech", "password": "wrong password!",
                                            "totp": code})
        assert wrong.status_code == 401
        right = c.post("/auth/login", json={"username": "tech", "password": t.tech.password,
                                            "totp": code})
        assert right.status_code == 403 and right.json()["code"] == "network-refused"
    with server.client(source=VPN) as c:  # the refused login did not use up the code's step
        session = ok(c.post("/auth/login", json={"username": "tech", "password": t.tech.password,
                                                 "totp": code}))
    with server.client(session["token"], source=VPN) as c:
        assert [d for d in ok(c.get(f"/tenants/{t.id}/devices"))] == []

    with server.client(owner.token, source=VPN) as on_vpn:
        events = ok(on_vpn.get(f"/tenants/{t.id}/audit/entries", params={"limit": 1000}))
        kinds = [e["kind"] for e in events]
        alerts = ok(on_vpn.get(f"/tenants/{t.id}/alerts"))
    assert kinds.count("access.network-refused") == 2 and kinds.count("login.network-refused") == 1
    assert {a["kind"] for a in alerts} == {"network-refused"}
    assert any("127.0.0.1" in a["subject"] for a in alerts)
    page = server.client(owner.token, api=False).get("/")
    assert "outside this tenant's approved networks" in page.text

    # Clearing the list allows any network again (and the warning returns).
    with server.client(owner.token, source=VPN) as on_vpn:
        ok(on_vpn.put(f"/tenants/{t.id}/settings", json={"allowed_networks": []}))
    ok(t.tech.http.get(f"/tenants/{t.id}/devices"))
    assert "tenant.settings" in [e["kind"] for e in audit_events(owner, t.id)]


def test_N3_forwarded_header_is_believed_only_from_a_trusted_proxy(server: RunningServer) -> None:
    proxy = "127.0.0.3"
    server.stop()
    server.args = ["--trusted-proxy", f"{proxy}/32"]
    server.start()
    owner = bootstrap_owner(server)
    t = setup_tenant(owner, "Acme")
    office = {"X-Forwarded-For": "198.51.100.7"}
    with server.client(owner.token, source=proxy) as via_proxy:
        ok(via_proxy.put(f"/tenants/{t.id}/settings", headers=office,
                         json={"allowed_networks": ["198.51.100.0/24"]}))
        ok(via_proxy.get(f"/tenants/{t.id}/devices", headers=office))
        r = via_proxy.get(f"/tenants/{t.id}/devices", headers={"X-Forwarded-For": "203.0.113.9"})
        assert r.status_code == 403 and r.json()["code"] == "network-refused"
    # Anyone else claiming to forward for the office is not believed.
    r = owner.http.get(f"/tenants/{t.id}/devices", headers=office)
    assert r.status_code == 403 and r.json()["code"] == "network-refused"
