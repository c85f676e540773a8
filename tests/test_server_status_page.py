"""The status page (the console address `rampart up` prints): sign in, see your tenants only."""

from __future__ import annotations

import httpx
from harness.operators import PASSWORD, bootstrap_owner, ok, setup_tenant
from harness.server import RunningServer


def page_client(server: RunningServer) -> httpx.Client:
    return server.client(api=False)


def test_status_page_signs_in_with_password_and_totp_and_shows_only_reachable_tenants(
        server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    a = setup_tenant(owner, "alpha", prefix="a-")
    b = setup_tenant(owner, "bravo", prefix="b-")
    ok(owner.http.post(f"/tenants/{a.id}/enrollment-tokens", json={"ttl_s": 600}))
    c = page_client(server)
    anon = c.get("/")
    assert anon.status_code == 200 and 'action="/login"' in anon.text
    assert "alpha" not in anon.text and "default-src 'none'" in anon.headers["content-security-policy"]
    # Tenant A's technician signs in through the form.
    r = c.post("/login", data={"username": a.tech.username, "password": PASSWORD,
                               "totp": a.tech.totp.code()})
    assert r.status_code == 303
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "secure" in cookie and "samesite=strict" in cookie
    assert PASSWORD not in r.headers["set-cookie"]
    page = c.get("/")
    assert "Signed in as a-tech" in page.text and "alpha" in page.text
    assert "bravo" not in page.text and b.id not in page.text
    # Sign out ends the session on the server, not just in the browser.
    token = c.cookies.get("rampart_session")
    assert c.post("/logout").status_code == 303
    assert "Signed in" not in c.get("/").text
    assert server.client(token).get("/me").status_code == 401


def test_status_page_login_refuses_wrong_code_and_cross_site_posts(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    c = page_client(server)
    r = c.post("/login", data={"username": owner.username, "password": PASSWORD, "totp": "000000"})
    assert r.status_code == 401 and "Invalid credentials" in r.text
    assert "rampart_session" not in r.headers.get("set-cookie", "")
    r = c.post("/login", data={"username": owner.username, "password": PASSWORD,
                               "totp": owner.totp.code()}, headers={"Origin": "https://127.0.0.2:9443"})
    assert r.status_code == 403 and "set-cookie" not in r.headers
