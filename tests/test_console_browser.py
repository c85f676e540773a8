r"""The server console in a real Chromium (issue 14): find, open, ack; the customer portal; T12, T13, T16.

One server for the module (``rampart server run``) with two tenants: ``acme`` holds 1,000
devices written to the store plus one real device (:class:`harness.wsagent.WireAgent`,
the real agent protocol) that reports a hostile hostname, OS name and package names and
answers a signed job with hostile output; ``bravo`` is another customer's. Debian's
Chromium (``/usr/bin/chromium``, installed by ./run-tests) is driven through Playwright;
no browser is ever downloaded.

Screenshots of the main pages are written to the test's tmp_path and, when
``RAMPART_CONSOLE_SCREENSHOTS=dir`` is set, copied there (docs/img/console-*.png come
from such a run).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from harness.consolefleet import add_devices, store_of
from harness.operators import (
    PASSWORD,
    Operator,
    TenantSetup,
    approved_grant,
    bootstrap_owner,
    ok,
    post_job,
    setup_tenant,
)
from harness.server import RunningServer, init_server
from harness.wsagent import WireAgent
from playwright.sync_api import Browser, BrowserContext, Dialog, Page, expect, sync_playwright
from sqlalchemy import insert, select

from rampart.server.db import Store
from rampart.server.models import AlertRow
from rampart.textsafe import safe_line
from rampart.wire import Report, digest, encode_report
from rampart.wire.inventory import AgentInfo, EolStatus, Inventory, OsInfo, Package

pytestmark = pytest.mark.client_side

CHROMIUM = Path(os.environ.get("RAMPART_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]

#: What a hostile agent reports (MeshCentral GHSA-c7hr-448w-65px: an agent-reported OS name
#: became stored XSS): markup that would run script if it reached the DOM as markup, and
#: controls and bidi overrides that would hide or forge text.
XSS_HOSTNAME = ('"><script>window.__pwned="script"</script>'
                '<img src=x onerror="window.__pwned=\'img\'">')
XSS_OS_NAME = "Debian<svg onload=\"window.__pwned='svg'\"></svg>\u202eGNU/Linux"
XSS_PACKAGES = ('<img src=x onerror="window.__pwned=\'pkg\'">libfoo',
                "openssl\x1b[2J\r\nFAKE all clear",
                "</td></tr><tr><td>forged-row")
XSS_STDOUT = b'<script>window.__pwned="stdout"</script>\x1b]52;c;cm0gLXJmIH4=\x07done\n'


@dataclass
class World:
    server: RunningServer
    store: Store
    acme: TenantSetup
    bravo: TenantSetup
    customer: Operator
    devices: list[str]
    bravo_devices: list[str]
    hostile: str
    job: str
    alert: str
    bravo_alert: str


def _alert(store: Store, tenant: str, device: str, subject: str) -> str:
    alert_id = "al-" + device[4:20]
    now = time.time()
    with store.transaction() as s:
        s.execute(insert(AlertRow).values(
            id=alert_id, tenant_id=tenant, device_id=device, kind="check-failed", severity="critical",
            dedup_key=alert_id, subject=subject, detail="disk / is 97% full", status="open", count=3,
            first_seen=now - 600, last_seen=now))
    return alert_id


def _hostile_report() -> dict[str, Any]:
    now = int(time.time())
    inv = Inventory(
        collected_at=now, agent=AgentInfo(version="wire", containment="none"),
        os=OsInfo(id="debian", name=XSS_OS_NAME, version_id="12", kernel_release="6.1.0", kernel_version="#1",
                  arch="amd64", hostname=XSS_HOSTNAME, boot_time=now - 100, eol=EolStatus(status="unknown")),
        packages=sorted((Package(manager="dpkg", name=n, arch="amd64", version="1.0") for n in XSS_PACKAGES),
                        key=lambda p: p.name))
    return {"type": "inventory", "report": encode_report(Report(full=inv)), "result": digest(inv),
            "base": None}


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    server = init_server(tmp_path_factory.mktemp("console-browser"))
    server.start()
    agent: WireAgent | None = None
    store: Store | None = None
    try:
        owner = bootstrap_owner(server)
        acme = setup_tenant(owner, "acme", prefix="c-")
        bravo = setup_tenant(owner, "bravo", prefix="d-")
        customer = owner.create_account("acme-customer", "customer-viewer", [acme.id])
        store = store_of(server.data_dir)
        devices = add_devices(store, acme.id, 1000, prefix="acme-ws")
        bravo_devices = add_devices(store, bravo.id, 10, prefix="bravo-secret")
        tok = ok(acme.owner.http.post(f"/tenants/{acme.id}/enrollment-tokens", json={"ttl_s": 600}))
        agent = WireAgent.enrol(server, tok["token"], tok["root_sha256"], hostname=XSS_HOSTNAME)
        ok(acme.owner.http.post(f"/tenants/{acme.id}/devices/{agent.device_id}/approve"))
        assert agent.connect()["type"] == "welcome"
        agent.send(_hostile_report())
        assert agent.wait_for("inventory-ack")["result"]
        grant = approved_grant(acme, [agent.device_id])
        ok(post_job(acme, grant, [agent.device_id]))
        msg = agent.wait_for("job", timeout=60)
        agent.verify_job(msg)
        job = str(msg["job_id"])
        assert agent.send_receipt(job, agent.receipt(job, stdout=XSS_STDOUT))["type"] == "ack"
        yield World(server, store, acme, bravo, customer, devices, bravo_devices, agent.device_id, job,
                    _alert(store, acme.id, devices[42], "acme-ws-00042: disk almost full"),
                    _alert(store, bravo.id, bravo_devices[0], "bravo-secret-00000: disk almost full"))
    finally:
        if agent is not None:
            agent.close()
        if store is not None:
            store.dispose()
        server.stop()


@pytest.fixture(scope="module")
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


class Watched:
    """A browser context and page that record dialogs and CSP violations."""

    def __init__(self, browser: Browser) -> None:
        self.context: BrowserContext = browser.new_context(ignore_https_errors=True,
                                                           viewport={"width": 1280, "height": 860})
        self.page: Page = self.context.new_page()
        self.dialogs: list[str] = []
        self.console: list[str] = []

        def on_dialog(d: Dialog) -> None:
            self.dialogs.append(d.message)
            d.dismiss()
        self.page.on("dialog", on_dialog)
        self.page.on("console", lambda m: self.console.append(m.text))

    def close(self) -> None:
        self.context.close()


def sign_in(b: Browser, server: RunningServer, who: Operator, shots: Path | None = None) -> Watched:
    s = Watched(b)
    page = s.page
    page.goto(server.url + "/console/")
    assert page.url == server.url + "/console/login"  # nothing without a session
    if shots is not None:
        _shot(page, shots, "login")
    page.fill("input[name=username]", who.username)
    page.fill("input[name=password]", PASSWORD)
    page.fill("input[name=totp]", who.totp.code())
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert who.username in page.inner_text("header")
    return s


def _shot(page: Page, where: Path, name: str) -> None:
    path = where / f"console-{name}.png"
    page.screenshot(path=str(path), full_page=False)
    if target := os.environ.get("RAMPART_CONSOLE_SCREENSHOTS"):
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


def _alert_status(w: World, alert_id: str) -> str:
    with w.store.read() as s:
        return str(s.scalar(select(AlertRow.status).where(AlertRow.id == alert_id)))


def test_technician_finds_a_device_among_many_opens_it_and_acks_an_alert(
        w: World, browser: Browser, tmp_path: Path) -> None:
    s = sign_in(browser, w.server, w.acme.tech, tmp_path)
    page = s.page
    try:
        assert page.url == w.server.url + "/console/"
        page.click(f"a[href='/console/t/{w.acme.id}']")
        page.wait_for_url(f"**/console/t/{w.acme.id}")
        assert "1001" in page.inner_text(".cards")
        _shot(page, tmp_path, "dashboard")
        page.click("nav >> text=Devices")
        page.wait_for_url("**/devices")
        assert page.inner_text("#device-count") == "1001 devices"
        _shot(page, tmp_path, "devices")
        # Live search (htmx, no reload): one device of the thousand.
        page.fill("input[name=q]", "acme-ws-00777")
        expect(page.locator("#device-count")).to_have_text("1 device")
        assert "q=acme-ws-00777" in page.url  # the search is in the address bar, so it can be shared
        page.click("table.devices td a")
        page.wait_for_url(f"**/devices/{w.devices[777]}")
        assert page.inner_text("h1") == "acme-ws-00777"
        page.go_back()  # back to the filtered list, as a whole page
        expect(page.locator("#device-count")).to_have_text("1 device")
        assert page.locator("header.top").count() == 1
        assert page.input_value("input[name=q]") == "acme-ws-00777"
        # The alert of another device, from the tenant's alert list: Ack.
        page.goto(f"{w.server.url}/console/t/{w.acme.id}/alerts")
        _shot(page, tmp_path, "alerts")
        with page.expect_navigation():
            page.click(f"#alert-{w.alert} button.ack")
        assert "acknowledged" in page.inner_text(f"#alert-{w.alert}")
        assert f"ack {w.acme.tech.username}" in page.inner_text(f"#alert-{w.alert}")
        assert _alert_status(w, w.alert) == "acknowledged"
        assert s.dialogs == [] and not [m for m in s.console if "Content Security Policy" in m]
    finally:
        s.close()


def test_T16_hostile_hostname_os_and_package_names_render_as_text(
        w: World, browser: Browser, tmp_path: Path) -> None:
    s = sign_in(browser, w.server, w.acme.tech)
    page = s.page
    try:
        page.goto(f"{w.server.url}/console/t/{w.acme.id}/devices?q=script")
        link = page.locator("table.devices td a")
        assert link.count() == 1 and link.inner_text() == XSS_HOSTNAME
        page.goto(f"{w.server.url}/console/t/{w.acme.id}/devices/{w.hostile}")
        assert page.inner_text("h1") == XSS_HOSTNAME  # the markup shown as the characters it is
        assert page.title() == f"{XSS_HOSTNAME} · Rampart console"  # the tab title too
        os_section = page.inner_text("#inv-os + dl")
        assert safe_line(XSS_OS_NAME) in os_section and "\\u202e" in os_section
        cells = page.locator("table.inv-packages td").all_text_contents()
        for name in XSS_PACKAGES:
            assert safe_line(name) in cells, name
        assert page.locator("table.inv-packages tr").count() == 1 + len(XSS_PACKAGES)  # no forged row
        out = page.inner_text("table.jobs")
        assert '<script>window.__pwned="stdout"</script>' in out and "\\x1b]52" in out
        assert page.locator("main script, main img, main svg").count() == 0
        scripts = page.locator("script").evaluate_all("els => els.map(e => e.getAttribute('src'))")
        assert scripts == ["/console/static/htmx.min.js", "/console/static/console.js"]
        html = page.content()
        for raw in ("\u202e", "\x1b", "\x07", "\r"):
            assert raw not in html, repr(raw)
        page.wait_for_timeout(200)  # an onerror would have fired by now
        assert page.evaluate("window.__pwned") is None and s.dialogs == []
        _shot(page, tmp_path, "device-hostile")
    finally:
        s.close()


def test_T12_customer_viewer_sees_only_its_own_tenant(w: World, browser: Browser, tmp_path: Path) -> None:
    s = sign_in(browser, w.server, w.customer)
    page = s.page
    try:
        assert page.url == f"{w.server.url}/console/t/{w.acme.id}"  # straight to its one tenant
        assert "Customer portal" in page.inner_text("main")
        _shot(page, tmp_path, "customer-dashboard")
        page.goto(f"{w.server.url}/console/t/{w.acme.id}/jobs")
        jobs = page.inner_text("table.jobs")
        assert w.job in jobs and w.acme.tech.username in jobs  # who acted, and when
        _shot(page, tmp_path, "customer-jobs")
        page.goto(f"{w.server.url}/console/t/{w.acme.id}/audit")
        assert "Verified by this server" in page.inner_text("#audit-verdict")
        _shot(page, tmp_path, "customer-audit")
        page.goto(f"{w.server.url}/console/t/{w.acme.id}/alerts")
        assert page.locator("button.ack, button.resolve").count() == 0  # read only
        # Direct URLs into the other tenant: 404 and nothing of it.
        for path in (f"/console/t/{w.bravo.id}", f"/console/t/{w.bravo.id}/audit",
                     f"/console/t/{w.bravo.id}/devices/{w.bravo_devices[0]}",
                     f"/console/t/{w.acme.id}/devices/{w.bravo_devices[0]}"):
            answer = page.goto(w.server.url + path)
            assert answer is not None and answer.status == 404, path
            body = page.inner_text("body")
            assert "bravo" not in body and w.bravo_devices[0] not in body, path
        assert page.goto(w.server.url + "/console/accounts").status == 403  # type: ignore[union-attr]
    finally:
        s.close()


class _AttackerPage(BaseHTTPRequestHandler):
    """Serves one page that auto-submits a form to the Rampart console."""

    form = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.form)))
        self.end_headers()
        self.wfile.write(self.form)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_T13_cross_site_form_post_is_refused_and_changes_nothing(
        w: World, browser: Browser) -> None:
    hosts = ("127.0.0.2", "127.0.0.1")  # another site, and another port of the server's own host
    sites = [ThreadingHTTPServer((host, 0), _AttackerPage) for host in hosts]
    for httpd in sites:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
    s = sign_in(browser, w.server, w.bravo.tech)  # signed in, with a live session cookie
    page = s.page
    try:
        page.goto(f"{w.server.url}/console/t/{w.bravo.id}/alerts")
        token = page.get_attribute("meta[name=csrf-token]", "content")
        assert token
        for host, httpd in zip(hosts, sites, strict=True):
            # Even with the real token (leaked, say), a post another page makes is refused.
            _AttackerPage.form = (
                f'<form method="post" action="{w.server.url}/console/alerts/{w.bravo_alert}/resolve">'
                f'<input name="csrf" value="{token}"></form><script>document.forms[0].submit()</script>'
            ).encode()
            with page.expect_response(f"{w.server.url}/console/alerts/{w.bravo_alert}/resolve") as answer:
                page.goto(f"http://{host}:{httpd.server_port}/")
            assert answer.value.status == 403, host
            assert "Cross-site form refused" in page.content()
            assert _alert_status(w, w.bravo_alert) == "open"
        page.goto(f"{w.server.url}/console/t/{w.bravo.id}/alerts")
        assert "open" in page.inner_text(f"#alert-{w.bravo_alert}")
    finally:
        s.close()
        for httpd in sites:
            httpd.shutdown()
            httpd.server_close()
