r"""T16 on the status page, in a real Chromium: a hostile device's hostname is inert text.

A device reports any hostname it likes (enrolment takes up to 255 characters):
markup meant to run script, U+202E to reverse what follows, ESC and OSC
sequences, CR/LF. A technician signs in through the page's own form (user,
password, TOTP code; this is also the issue 22 regression: with
``Referrer-Policy: no-referrer`` Chromium posted ``Origin: null`` and was
refused) and reads the device table: the hostname cell shows the markup as
text and every control and bidi character as a visible escape (``\u202e``), no
script runs, no element is injected. A page on another origin that
auto-submits the sign-in form with valid credentials gets 403 and no session.

Uses Debian's Chromium (``/usr/bin/chromium``, installed by ./run-tests) through
Playwright; never downloads a browser. ``RAMPART_STATUS_SCREENSHOT=path`` keeps
a screenshot of the signed-in page.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from harness.operators import PASSWORD, Operator, TenantSetup, bootstrap_owner, ok, setup_tenant
from harness.server import RunningServer
from playwright.sync_api import Browser, Dialog, Page, Request, sync_playwright

from rampart.textsafe import safe_line
from rampart.trust import DeviceKey

# The page is the subject, not the store: run once, on SQLite (./run-tests repeats store tests on PostgreSQL).
pytestmark = pytest.mark.client_side

CHROMIUM = Path(os.environ.get("RAMPART_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]

#: Markup that would run script or fetch if it reached the DOM as markup.
XSS_HOSTNAME = ('"><script>window.__pwned="script"</script>'
                '<img src=x onerror="window.__pwned=\'img\'">'
                "<svg onload=\"alert('svg')\"></svg>")
#: Bidi override (shows "exe.txt" as "txt.exe"), a screen clear, an OSC 52 clipboard
#: write, a forged line, a zero-width space and a bidi isolate.
CONTROL_HOSTNAME = ("invoice\u202etxt.exe\x1b[2J\x1b]52;c;cm0gLXJmIH4=\x07"
                    "\r\nFAKE all clear\u200b\u2066x")


def _enrol(t: TenantSetup, hostname: str) -> str:
    """Enrol and approve one device reporting ``hostname`` (as a hostile agent would)."""
    tok = ok(t.owner.http.post(f"/tenants/{t.id}/enrollment-tokens", json={"ttl_s": 600}))
    with t.owner.server.client(api=False) as c:
        doc = ok(c.post("/agent/v1/enroll", json={
            "token": tok["token"], "public_key": DeviceKey.generate().public.to_text(),
            "hostname": hostname, "agent_version": "test"}))
    ok(t.owner.http.post(f"/tenants/{t.id}/devices/{doc['device_id']}/approve"))
    return str(doc["device_id"])


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.fail(f"Chromium not found at {CHROMIUM}: install it (apt-get install chromium; "
                    "./run-tests does) or set RAMPART_CHROMIUM. Playwright never downloads one here.")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class _AttackerPage(BaseHTTPRequestHandler):
    """Serves one page that auto-submits the sign-in form to the Rampart server."""

    form = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.form)))
        self.end_headers()
        self.wfile.write(self.form)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def attacker_sites(server: RunningServer) -> Iterator[list[str]]:
    """Two attacker origins: another site (127.0.0.2) and another port of the server's host."""
    hosts = ("127.0.0.2", "127.0.0.1")
    servers = [ThreadingHTTPServer((host, 0), _AttackerPage) for host in hosts]
    for httpd in servers:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield [f"http://{host}:{httpd.server_port}" for host, httpd in zip(hosts, servers, strict=True)]
    finally:
        for httpd in servers:
            httpd.shutdown()
            httpd.server_close()


def _sign_in(page: Page, server: RunningServer, who: Operator, code: str) -> None:
    page.goto(server.url + "/")
    page.fill("input[name=username]", who.username)
    page.fill("input[name=password]", PASSWORD)
    page.fill("input[name=totp]", code)
    with page.expect_navigation():
        page.click("button[type=submit]")


def test_T16_hostile_hostname_is_inert_text_in_chromium_and_sign_in_works(
        server: RunningServer, browser: Browser, attacker_sites: list[str], tmp_path: Path) -> None:
    owner = bootstrap_owner(server)
    t = setup_tenant(owner, "acme", prefix="a-")
    xss_device = _enrol(t, XSS_HOSTNAME)
    control_device = _enrol(t, CONTROL_HOSTNAME)
    code = t.tech.totp.code()

    context = browser.new_context(ignore_https_errors=True)  # the loopback server's own cert
    try:
        page = context.new_page()
        dialogs: list[str] = []
        posts: list[Request] = []

        def on_dialog(d: Dialog) -> None:
            dialogs.append(d.message)
            d.dismiss()

        def on_request(r: Request) -> None:
            if r.method == "POST":
                posts.append(r)

        page.on("dialog", on_dialog)
        page.on("request", on_request)

        # A page on another origin auto-submits the sign-in form with valid credentials.
        for site in attacker_sites:
            _AttackerPage.form = (
                f'<form method="post" action="{server.url}/login">'
                f'<input name="username" value="{t.tech.username}">'
                f'<input name="password" value="{PASSWORD}"><input name="totp" value="{code}">'
                "</form><script>document.forms[0].submit()</script>").encode()
            posts.clear()
            with page.expect_response(f"{server.url}/login") as answer:
                page.goto(site + "/")
            assert answer.value.status == 403, site
            sent = posts[0].all_headers()
            assert sent.get("origin") == site and sent.get("sec-fetch-site") != "same-origin"
            assert "Cross-site form refused" in page.content()
            assert not [c for c in context.cookies() if c["name"] == "rampart_session"]
        page.goto(server.url + "/")
        assert "Signed in" not in page.content() and page.locator("form[action='/login']").count()

        # The technician signs in through the real form with the same code: the refused posts
        # never reached the credential check, so it is still unused.
        posts.clear()
        _sign_in(page, server, t.tech, code)
        login = [r for r in posts if r.url == server.url + "/login"]
        assert len(login) == 1
        sent = login[0].all_headers()
        assert sent.get("sec-fetch-site") == "same-origin" and sent.get("origin") == server.url
        assert page.url == server.url + "/"
        body = page.inner_text("body")
        assert "Signed in as a-tech" in body and "acme" in body

        # The hostile hostnames are visible, inert text.
        cells = {}
        for row in page.locator("tr").all():
            tds = row.locator("td").all_text_contents()
            if tds and tds[0] in (xss_device, control_device):
                cells[tds[0]] = tds[1]
        assert cells[xss_device] == XSS_HOSTNAME  # markup shown as the characters it is
        assert cells[control_device] == safe_line(CONTROL_HOSTNAME)
        assert "\\u202e" in cells[control_device] and "\\x1b[2J" in cells[control_device]
        assert "\\r\\nFAKE all clear" in cells[control_device]
        html = page.content()
        for raw in ("\u202e", "\u2066", "\u200b", "\x1b", "\x07", "\r"):
            assert raw not in html, repr(raw)
        assert page.locator("script, img, svg").count() == 0
        assert page.evaluate("window.__pwned") is None and dialogs == []
        devices_table = page.locator("table").nth(1)  # after the summary
        assert devices_table.locator("tr").count() == 3  # header and two devices: no forged row
        page.set_viewport_size({"width": 1100, "height": 800})
        shot = tmp_path / "status_page.png"
        page.screenshot(path=str(shot), full_page=True)
        if target := os.environ.get("RAMPART_STATUS_SCREENSHOT"):
            shutil.copy(shot, target)

        # Sign out through the page's own form ends the session.
        with page.expect_navigation():
            page.click("form[action='/logout'] button")
        assert "Signed in" not in page.inner_text("body")
        assert not [c for c in context.cookies() if c["name"] == "rampart_session"]
    finally:
        context.close()
