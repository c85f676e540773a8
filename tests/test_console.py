"""The server console over HTTP (issue 14): sign-in, tenant isolation, CSRF, headers, timeouts, accounts.

One real server for the module (``rampart server run``), on SQLite and again on
PostgreSQL in ./run-tests' store pass (the console's queries are SQL of their own).
Requests carry what Chromium sends with a page's own form posts (``Origin`` and
``Sec-Fetch-Site: same-origin``) unless a test plays another site. Security tests
are named after the threat and assert both the refusal and that nothing changed.
The same flows in a real Chromium are in test_console_browser.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from harness.consolefleet import add_devices, store_of
from harness.operators import (
    PASSWORD,
    Operator,
    TenantSetup,
    audit_events,
    bootstrap_owner,
    make_root,
    ok,
    setup_tenant,
    sign_root,
)
from harness.server import PostgresCluster, RunningServer, init_server
from sqlalchemy import insert, select, update

from rampart.server.auth import token_hash
from rampart.server.db import Store
from rampart.server.models import Account, AlertRow, SessionRow


@dataclass
class World:
    server: RunningServer
    store: Store
    owner: Operator
    a: TenantSetup
    b: TenantSetup
    customer: Operator
    a_devices: list[str]
    b_devices: list[str]
    a_alert: str
    b_alert: str


def _alert(store: Store, tenant: str, device: str, subject: str) -> str:
    alert_id = "al-" + device[4:20]
    now = time.time()
    with store.transaction() as s:
        s.execute(insert(AlertRow).values(
            id=alert_id, tenant_id=tenant, device_id=device, kind="check-failed", severity="critical",
            dedup_key=alert_id, subject=subject, detail="disk full", status="open", count=1,
            first_seen=now, last_seen=now))
    return alert_id


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory, pg_cluster: PostgresCluster | None) -> Iterator[World]:
    """One server for the module, on SQLite (or PostgreSQL in ./run-tests' second pass)."""
    db_url = pg_cluster.new_database() if pg_cluster is not None else None
    server = init_server(tmp_path_factory.mktemp("console"), db_url)
    server.start()
    try:
        owner = bootstrap_owner(server)
        a = setup_tenant(owner, "alpha", prefix="a-")
        b = setup_tenant(owner, "bravo", prefix="b-")
        customer = owner.create_account("a-customer", "customer-viewer", [a.id])
        store = store_of(server.data_dir)
        a_devices = add_devices(store, a.id, 300, prefix="alpha-node")
        b_devices = add_devices(store, b.id, 20, prefix="bravo-secret")
        yield World(server, store, owner, a, b, customer, a_devices, b_devices,
                    _alert(store, a.id, a_devices[0], "alpha disk full"),
                    _alert(store, b.id, b_devices[0], "bravo-secret disk full"))
        store.dispose()
    finally:
        server.stop()


def browser(server: RunningServer) -> httpx.Client:
    c = server.client(api=False)
    c.headers.update({"Origin": server.url, "Sec-Fetch-Site": "same-origin"})
    return c


_SIGNED_IN: dict[tuple[int, str], httpx.Client] = {}


def signed_in(w: World, who: Operator) -> httpx.Client:
    """One console session per operator for the module (each sign-in spends a TOTP step)."""
    key = (id(w), who.username)
    if key not in _SIGNED_IN:
        _SIGNED_IN[key] = sign_in(w.server, who)
    return _SIGNED_IN[key]


def sign_in(server: RunningServer, who: Operator) -> httpx.Client:
    c = browser(server)
    r = c.post("/console/login", data={"username": who.username, "password": PASSWORD,
                                       "totp": who.totp.code()})
    assert r.status_code == 303 and r.headers["location"] == "/console/", r.text[:500]
    return c


def csrf_of(page: str) -> str:
    m = re.search(r'name="csrf-token" content="([0-9a-f]{64})"', page)
    assert m, "no CSRF token on the page"
    return m.group(1)


def alert_status(w: World, alert_id: str) -> str:
    with w.store.read() as s:
        return str(s.scalar(select(AlertRow.status).where(AlertRow.id == alert_id)))


def test_T12_no_tenant_data_without_a_session(w: World) -> None:
    c = browser(w.server)
    root = c.get("/")
    assert root.status_code == 200 and 'action="/login"' in root.text
    for secret in ("alpha", "bravo", w.a.id, "devices", "connected agents"):
        assert secret not in root.text, secret
    for path in ("/console/", f"/console/t/{w.a.id}", f"/console/t/{w.a.id}/devices",
                 f"/console/t/{w.a.id}/devices/{w.a_devices[0]}", f"/console/t/{w.a.id}/audit",
                 "/console/accounts"):
        r = c.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/console/login", path
        assert "alpha" not in r.text and w.a_devices[0] not in r.text
    login = c.get("/console/login")
    assert login.status_code == 200 and "alpha" not in login.text


def test_sign_in_cookie_is_strict_and_pages_carry_a_strict_csp(w: World) -> None:
    c = browser(w.server)
    r = c.post("/console/login", data={"username": w.b.tech.username, "password": PASSWORD,
                                       "totp": w.b.tech.totp.code()})
    assert r.status_code == 303
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "secure" in cookie and "samesite=strict" in cookie
    assert PASSWORD.lower() not in cookie
    for path in ("/console/", f"/console/t/{w.b.id}", f"/console/t/{w.b.id}/devices",
                 f"/console/t/{w.b.id}/devices/{w.b_devices[0]}", f"/console/t/{w.b.id}/alerts",
                 f"/console/t/{w.b.id}/jobs", f"/console/t/{w.b.id}/grants", f"/console/t/{w.b.id}/audit"):
        page = c.get(path)
        assert page.status_code == 200, (path, page.text[:300])
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe" not in csp and "frame-ancestors 'none'" in csp
        assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
        # No inline script or style: every <script> has a src, no style attribute or element, no on* handler.
        assert all('src="/console/static/' in tag for tag in re.findall(r"<script[^>]*>", page.text))
        assert "<style" not in page.text and " style=" not in page.text
        assert not re.search(r"\son[a-z]+=", page.text)
    assert "alpha" not in c.get("/console/").text


def test_a_wrong_code_signs_nobody_in(w: World) -> None:
    c = browser(w.server)
    r = c.post("/console/login",
               data={"username": w.customer.username, "password": PASSWORD, "totp": "000000"})
    assert r.status_code == 401 and "Invalid credentials" in r.text
    assert "rampart_session" not in r.headers.get("set-cookie", "")


def test_T13_cross_site_sign_in_is_refused(w: World) -> None:
    bare = w.server.client(api=False)
    for headers in ({"Origin": "https://127.0.0.2:9443", "Sec-Fetch-Site": "cross-site"}, {}):
        r = bare.post("/console/login", headers=headers, data={
            "username": w.a.approver.username, "password": PASSWORD, "totp": "123456"})
        assert r.status_code == 403 and "set-cookie" not in r.headers


def test_device_list_searches_filters_sorts_and_pages_in_the_store(w: World) -> None:
    c = signed_in(w, w.a.tech)
    base = f"/console/t/{w.a.id}/devices"
    first = c.get(base)
    assert "300 devices" in first.text and "page 1 of 6" in first.text
    assert first.text.count('class="text"><a href="/console/t/') == 50
    found = c.get(base, params={"q": "alpha-node-00123"})
    assert "1 device<" in found.text and w.a_devices[123] in found.text
    partial = c.get(base, params={"q": "alpha-node-0012"}, headers={"HX-Request": "true"})
    assert "<html" not in partial.text and "10 devices" in partial.text  # 00120..00129
    last = c.get(base, params={"sort": "hostname", "dir": "desc", "page": "6"})
    assert "alpha-node-00000" in last.text and "alpha-node-00299" not in last.text
    offline = c.get(base, params={"state": "offline"})
    assert "200 devices" in offline.text  # two in three were last seen two hours ago
    assert f'href="{base}?q=&state=&sort=hostname&dir=desc">Hostname ↑' in first.text  # header sorts
    odd = c.get(base, params={"q": "%_\\", "sort": "nope", "page": "-3", "per": "99999"})
    assert odd.status_code == 200 and "0 devices" in odd.text


def test_T16_hostile_search_and_hostname_are_inert_text(w: World) -> None:
    c = signed_in(w, w.a.tech)
    r = c.get(f"/console/t/{w.a.id}/devices", params={"q": '"><script>alert(1)</script>'})
    assert "<script>alert(1)" not in r.text and "&#34;&gt;&lt;script&gt;" in r.text


def test_T12_customer_viewer_sees_its_own_tenant_only(w: World) -> None:
    c = signed_in(w, w.customer)
    home = c.get("/console/")
    assert home.status_code == 303 and home.headers["location"] == f"/console/t/{w.a.id}"
    dash = c.get(f"/console/t/{w.a.id}")
    assert dash.status_code == 200 and "Customer portal" in dash.text and "alpha" in dash.text
    for path in (f"/console/t/{w.a.id}/jobs", f"/console/t/{w.a.id}/grants", f"/console/t/{w.a.id}/audit",
                 f"/console/t/{w.a.id}/alerts", f"/console/t/{w.a.id}/devices/{w.a_devices[0]}"):
        page = c.get(path)
        assert page.status_code == 200 and "bravo" not in page.text, path
    # Another tenant, and another tenant's device under either tenant: 404, nothing of it shown.
    for path in (f"/console/t/{w.b.id}", f"/console/t/{w.b.id}/devices", f"/console/t/{w.b.id}/audit",
                 f"/console/t/{w.b.id}/devices/{w.b_devices[0]}",
                 f"/console/t/{w.a.id}/devices/{w.b_devices[0]}",
                 f"/console/t/{w.b.id}/jobs", f"/console/t/{w.b.id}/grants", f"/console/t/{w.b.id}/alerts"):
        r = c.get(path)
        assert r.status_code == 404, path
        assert "bravo" not in r.text and w.b.id not in r.text and w.b_devices[0] not in r.text, path
    assert c.get("/console/accounts").status_code == 403
    # Acting: the portal is read-only (403 on its own alert), and another tenant's alert is not there (404).
    token = csrf_of(dash.text)
    assert "/ack" not in dash.text  # no action buttons for a customer
    r = c.post(f"/console/alerts/{w.a_alert}/ack", data={"csrf": token})
    assert r.status_code == 403 and alert_status(w, w.a_alert) == "open"
    r = c.post(f"/console/alerts/{w.b_alert}/ack", data={"csrf": token})
    assert r.status_code == 404 and "bravo" not in r.text and alert_status(w, w.b_alert) == "open"


def test_T12_technician_of_one_tenant_cannot_reach_the_other(w: World) -> None:
    c = signed_in(w, w.a.tech)
    assert "bravo" not in c.get("/console/").text
    r = c.get(f"/console/t/{w.b.id}/devices/{w.b_devices[0]}")
    assert r.status_code == 404 and "bravo" not in r.text
    token = csrf_of(c.get(f"/console/t/{w.a.id}").text)
    r = c.post(f"/console/alerts/{w.b_alert}/resolve", data={"csrf": token})
    assert r.status_code == 404 and alert_status(w, w.b_alert) == "open"
    assert c.get("/console/accounts").status_code == 403


def test_T13_state_change_without_csrf_token_or_from_another_site_is_refused(w: World) -> None:
    c = signed_in(w, w.a.tech)
    token = csrf_of(c.get(f"/console/t/{w.a.id}").text)
    alert = _alert(w.store, w.a.id, w.a_devices[5], "csrf target")
    before = len(audit_events(w.owner, w.a.id))
    attempts = [
        ({}, {}),  # no token
        ({"csrf": "0" * 64}, {}),  # a wrong token
        ({"csrf": token}, {"Sec-Fetch-Site": "cross-site", "Origin": "https://127.0.0.2:9443"}),
        ({"csrf": token}, {"Sec-Fetch-Site": "same-site", "Origin": "https://127.0.0.1:1"}),
    ]
    for data, headers in attempts:
        r = c.post(f"/console/alerts/{alert}/ack", data=data, headers=headers)
        assert r.status_code == 403, (data, headers)
        assert alert_status(w, alert) == "open"
    assert len(audit_events(w.owner, w.a.id)) == before
    # The page's own form (same origin, its token) works, and is audited under the technician's name.
    r = c.post(f"/console/alerts/{alert}/ack", data={"csrf": token, "next": f"/console/t/{w.a.id}/alerts"})
    assert r.status_code == 303 and r.headers["location"] == f"/console/t/{w.a.id}/alerts"
    assert alert_status(w, alert) == "acknowledged"
    acked = [e for e in audit_events(w.owner, w.a.id) if e["kind"] == "alert.acknowledged"]
    assert acked[-1]["actor"] == w.a.tech.username
    # An open redirect is not on offer: "next" outside the console goes home.
    r = c.post(f"/console/alerts/{alert}/resolve", data={"csrf": token, "next": "https://evil.example/"})
    assert r.status_code == 303 and r.headers["location"] == "/console/"
    # Sign-out is a post too: from another site it does nothing.
    r = c.post("/console/logout", data={"csrf": token}, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403 and c.get("/console/").status_code == 200


def test_session_idle_and_absolute_timeouts_end_console_access(w: World) -> None:
    for column in ("last_used_at", "expires_at"):
        c = sign_in(w.server, w.a.approver)
        assert c.get(f"/console/t/{w.a.id}").status_code == 200
        token = c.cookies["rampart_session"]
        with w.store.transaction() as s:  # as if the idle limit (or the absolute one) had passed
            s.execute(update(SessionRow).where(SessionRow.token_hash == token_hash(token))
                      .values({column: time.time() - 100_000}))
        r = c.get(f"/console/t/{w.a.id}")
        assert r.status_code == 303 and r.headers["location"] == "/console/login", column
        assert "alpha" not in r.text


def test_owner_creates_unlocks_reissues_and_revokes_accounts(w: World) -> None:
    c = signed_in(w, w.owner)
    page = c.get("/console/accounts")
    assert page.status_code == 200 and "a-customer" in page.text
    token = csrf_of(page.text)
    r = c.post("/console/accounts", data={"csrf": token, "username": "a-newtech", "role": "technician",
                                          "tenant": w.a.id})
    assert r.status_code == 200 and "one-time activation token" in r.text
    assert re.search(r'id="one-time-secret">[0-9a-f]{64}<', r.text)
    with w.store.transaction() as s:
        s.execute(update(Account).where(Account.username == "a-newtech")
                  .values(locked_until=time.time() + 900))
    assert "locked" in c.get("/console/accounts").text
    r = c.post("/console/accounts/a-newtech/unlock", data={"csrf": token})
    assert r.status_code == 200 and "unlocked" in r.text
    # Re-issue needs a fresh TOTP step-up: a wrong code is refused and nothing changes.
    with w.store.read() as s:
        before = s.scalar(select(Account.activation_token_hash).where(Account.username == "a-newtech"))
    r = c.post("/console/accounts/a-newtech/reissue", data={"csrf": token, "totp": "000000"})
    assert r.status_code == 403
    with w.store.read() as s:
        after = s.scalar(select(Account.activation_token_hash).where(Account.username == "a-newtech"))
    assert after == before
    r = c.post("/console/accounts/a-newtech/reissue", data={"csrf": token, "totp": w.owner.totp.code()})
    assert r.status_code == 200 and "re-issued" in r.text, r.text[-800:]
    r = c.post("/console/accounts/a-newtech/revoke", data={"csrf": token, "reason": "left the company"})
    assert r.status_code == 200 and "revoked" in r.text
    with w.store.read() as s:
        assert s.scalar(select(Account.disabled_reason).where(Account.username == "a-newtech")) == "revoked"
    kinds = [e["kind"] for e in audit_events(w.owner, w.a.id)]
    assert {"account.created", "account.unlocked", "account.reissued", "account.revoked"} <= set(kinds)


def test_static_files_are_a_fixed_list(w: World) -> None:
    c = browser(w.server)
    assert c.get("/console/static/htmx.min.js").status_code == 200
    for name in ("asciinema-player.min.js", "asciinema-player.css", "recording.js"):
        r = c.get(f"/console/static/{name}")
        assert r.status_code == 200 and r.headers["x-content-type-options"] == "nosniff", name
    for name in ("..%2Fweb.py", "__init__.py", "htmx.LICENSE.txt", "asciinema-player.LICENSE.txt",
                 "asciinema-player.js", "%2e%2e%2f%2e%2e%2fpyproject.toml"):
        assert c.get(f"/console/static/{name}").status_code == 404, name



#: What the console may use of the trust core: verification and hashing, never signing.
_TRUST_ALLOWED = frozenset({"TrustError", "merkle", "verify_checkpoint",
                            "Receipt", "SessionSummary", "decode_envelope", "decode_payload"})


def test_T1_nothing_the_server_serves_can_sign() -> None:
    """Issue 14's rule: code the server serves is never the code that asks a key to sign.

    The console's modules and the shared web assets import nothing from the trust core but
    verification (no ``sign_*``, no private key type, no key file), and no template or script
    calls WebAuthn or any other signing interface of the browser.
    """
    import ast

    repo = Path(__file__).resolve().parent.parent
    sources = [*(repo / "rampart/server/api/console").glob("*.py"), *(repo / "rampart/webui").glob("*.py")]
    assert len(sources) >= 4
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rampart.trust"):
                names = {a.name for a in node.names}
                assert names <= _TRUST_ALLOWED, (path.name, names - _TRUST_ALLOWED)
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("rampart.trust") for a in node.names), path.name
        text = path.read_text()
        for word in ("sign_envelope", "add_signature", "OperatorKey", "encrypt_private_key", "keyfile"):
            assert not re.search(rf"\b{word}\b", text), (path.name, word)  # OperatorKeyRow (public) is fine
    served = [*(repo / "rampart/server/api/console/templates").glob("*.html"),
              *(repo / "rampart/webui/templates").glob("*.html"), repo / "rampart/webui/static/console.js",
              *(repo / "rampart/webui/static" / n for n in ("recording.js", "asciinema-player.min.js"))]
    for path in served:
        text = path.read_text()
        for word in ("navigator.credentials", "PublicKeyCredential", "crypto.subtle"):
            assert word not in text, (path.name, word)


def test_T12_sessions_page_lists_only_the_tenant_and_recordings_stay_in_it(w: World) -> None:
    c = signed_in(w, w.customer)
    page = c.get(f"/console/t/{w.a.id}/sessions")
    assert page.status_code == 200 and "Remote sessions" in page.text and "bravo" not in page.text
    for path in (f"/console/t/{w.b.id}/sessions",
                 f"/console/t/{w.b.id}/sessions/job-aaaaaaaaaaaaaaaa/recording",
                 f"/console/t/{w.a.id}/sessions/job-aaaaaaaaaaaaaaaa/recording",
                 f"/console/t/{w.a.id}/sessions/..%2F..%2Fetc/recording",
                 f"/console/t/{w.b.id}/sessions/job-aaaaaaaaaaaaaaaa",
                 f"/console/t/{w.a.id}/sessions/job-aaaaaaaaaaaaaaaa",
                 f"/console/t/{w.a.id}/sessions/job-aaaaaaaaaaaaaaaa/playback"):
        r = c.get(path)
        assert r.status_code == 404 and "bravo" not in r.text, path


def test_T16_sessions_table_shows_a_hostile_hostname_and_end_reason_as_text() -> None:
    """The sessions template over what the sessions API returns, with device-chosen text in it."""
    from rampart.server.api.console.web import _env

    hostile = '<img src=x onerror="alert(1)">\u202eevil'
    row = {"id": "job-abc", "device": "dev-" + "0" * 24, "hostname": hostile, "signer": "k" * 64,
           "mode": "shell", "watch": "", "created_at": 1.0e9, "started_at": 1.0e9, "ended_at": 1.0e9 + 60,
           "state": "ended", "outcome": "ran", "end": "<b>closed</b>", "detail": "\x1b[2Jwiped",
           "recording": {"sha256": "ab" * 32, "bytes": 1234}}
    html = _env.get_template("sessions.html").render(
        product="p", version="v", static="/s", home="/", prefix="/console", caller=None, csrf="",
        customer=False, section="sessions", tenant={"id": "tn-x", "name": "acme"}, sessions=[row],
        keys={"k" * 64: "tess-laptop"}, now=1.0e9)
    assert "<img" not in html and "&lt;img src=x onerror=" in html and "\u202e" not in html
    assert '<span class="esc">\\u202e</span>' in html and "&lt;b&gt;closed&lt;/b&gt;" in html
    assert '<span class="esc">\\x1b</span>[2Jwiped' in html and "tess-laptop" in html and "1234 bytes" in html


def test_dashboard_shows_the_root_and_warns_before_it_expires(w: World) -> None:
    """Issue 11, finding 7: the console shows how long the newest root has left, and how to renew."""
    c = signed_in(w, w.owner)
    page = c.get(f"/console/t/{w.a.id}").text
    card = page[page.index("<h3>Trust root</h3>"):page.index("<h2>Latest open alerts</h2>")]
    assert "v1" in card and "rampart root renew" not in card and 'class="bad"' not in card

    root = make_root(w.b.tenant, 2, owners=[w.b.owner_key], approvers=[w.b.approver_key],
                     technicians=[w.b.tech_key], expires_in=20 * 86400)
    ok(w.b.owner.http.post(f"/tenants/{w.b.id}/roots", json={"envelope": sign_root(root, [w.b.owner_key])}))
    page = c.get(f"/console/t/{w.b.id}").text
    card = page[page.index("<h3>Trust root</h3>"):page.index("<h2>Latest open alerts</h2>")]
    assert "v2" in card
    assert re.search(r'<dd class="bad">(19|20)</dd>', card), card
    assert f"rampart root renew {w.b.id}" in card
