"""The status page (the console address `rampart up` prints): sign in, see your tenants only."""

from __future__ import annotations

import httpx
from harness.operators import PASSWORD, bootstrap_owner, ok, setup_tenant
from harness.server import RunningServer


def page_client(server: RunningServer) -> httpx.Client:
    """A client that sends what Chromium sends with the page's own form posts."""
    c = server.client(api=False)
    c.headers.update({"Origin": server.url, "Sec-Fetch-Site": "same-origin"})
    return c


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
    bare = server.client(api=False)
    r = bare.post("/login", data={"username": owner.username, "password": PASSWORD,
                                  "totp": owner.totp.code()}, headers={"Origin": "https://127.0.0.2:9443"})
    assert r.status_code == 403 and "set-cookie" not in r.headers


#: Form posts a browser may send that do not prove they come from the page itself.
NOT_SAME_ORIGIN = [
    {"Origin": "https://127.0.0.2:9443", "Sec-Fetch-Site": "cross-site"},
    # another port on the same host is the same site, never the same origin
    {"Origin": "https://127.0.0.1:1", "Sec-Fetch-Site": "same-site"},
    {"Origin": "null", "Sec-Fetch-Site": "cross-site"},  # a sandboxed or no-referrer attacker page
    {"Sec-Fetch-Site": "none"},  # no page made this post
    {"Origin": "null"},  # a browser without Fetch Metadata, on a no-referrer page
    {"Origin": "http://127.0.0.1:{port}"},  # this host and port on plain HTTP (an on-path attacker)
    {"Origin": "https://127.0.0.2:9443"},  # a foreign origin, no Fetch Metadata
    {},  # no proof at all: fail closed
]
#: What browsers send with the page's own posts.
SAME_ORIGIN = [
    # Chromium on a page that sent Referrer-Policy: no-referrer (the old defect): Fetch Metadata decides
    {"Origin": "null", "Sec-Fetch-Site": "same-origin"},
    # behind a reverse proxy that rewrites Host, Fetch Metadata still decides
    {"Origin": "https://rmm.example.com", "Sec-Fetch-Site": "same-origin"},
    # a browser without Fetch Metadata (Safari before 16.4) sends its real Origin
    {"Origin": "https://127.0.0.1:{port}"},
]


def test_T16_status_page_form_posts_need_the_browsers_same_origin_proof(
        server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    other = owner.create_account("second-owner", "owner", None)
    # One valid code for every refused post: refused before the credentials are read, so the
    # code is still unused afterwards (the first accepted post below signs in with it).
    code = owner.totp.code()
    for template in NOT_SAME_ORIGIN:
        headers = {k: v.format(port=server.port) for k, v in template.items()}
        bare = server.client(api=False)
        r = bare.post("/login", data={"username": owner.username, "password": PASSWORD,
                                      "totp": code}, headers=headers)
        assert r.status_code == 403 and "Cross-site form refused" in r.text, headers
        assert "set-cookie" not in r.headers
        # Logout is refused the same way (its cookie is SameSite=Strict as well).
        bare.cookies.set("rampart_session", owner.token)
        assert bare.post("/logout", headers=headers).status_code == 403, headers
        assert server.client(owner.token).get("/me").status_code == 200
    for template, (who, totp) in zip(SAME_ORIGIN, [(owner, code), (owner, owner.totp.code()),
                                                   (other, other.totp.code())], strict=True):
        headers = {k: v.format(port=server.port) for k, v in template.items()}
        r = server.client(api=False).post(
            "/login", data={"username": who.username, "password": PASSWORD, "totp": totp},
            headers=headers)
        assert r.status_code == 303 and "rampart_session=" in r.headers["set-cookie"], headers
        assert r.headers["referrer-policy"] == "same-origin"
