r"""Issue 19: the posture report (HTML and PDF) and the service statement (C1, M7), on a real server.

Everything runs for real: the server process (tests/harness), the ``rampart`` CLI as a subprocess
(``tenant statement``, ``report --format pdf|html``), a webhook receiver on loopback that takes the
incident notification, a critical alert raised by publishing a root that expires in days, a device
speaking the real agent protocol (:class:`harness.wsagent.WireAgent`) that reports a hostile hostname
and an unsanctioned tool. The PDF is rendered to images with ``pdftoppm`` and read back with
``pdftotext``; the HTML report is opened in Chromium (Playwright), which must run no script.

Threats: T12 (a customer viewer of one tenant is refused another tenant's report and statement) and
T16 (device-reported text is inert in the HTML and the PDF).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness.operators import (
    Operator,
    TenantSetup,
    bootstrap_owner,
    make_root,
    ok,
    setup_tenant,
    sign_root,
)
from harness.server import RunningServer, init_server
from harness.wsagent import WireAgent
from playwright.sync_api import Browser, sync_playwright
from test_console_browser import CHROMIUM, CHROMIUM_ARGS, sign_in
from test_notify import http_sink

from rampart import tlspin
from rampart.cli.config import Config, Session
from rampart.wire import Finding, Report, ToolSeen, digest, encode_report
from rampart.wire.inventory import AgentInfo, EolStatus, Inventory, OsInfo

pytestmark = pytest.mark.client_side

REPO = Path(__file__).resolve().parent.parent
DAY = 86400
#: What a hostile device reports: markup that would run if it reached a page as markup, a terminal
#: escape and a bidi override that would hide or reorder text.
HOSTILE_HOST = '<script>window.__pwned=1</script>\x1b[2J\u202eweb01'
HOSTILE_SUBJECT = '<img src=x onerror="window.__pwned=2">Debian 9 reached end of life'
PASSKEY = "rampart-passkey-id:"


@dataclass
class World:
    server: RunningServer
    acme: TenantSetup
    beta: TenantSetup
    customer: Operator
    base: Path
    agent: WireAgent


class Cli:
    """The real `rampart` command with one person's config directory."""

    def __init__(self, base: Path, server: RunningServer, op: Operator) -> None:
        cfg = Config(base / f"cli-{op.username}")
        cfg.ensure()
        cfg.save_session(Session(server=server.url, cert_sha256=tlspin.fingerprint(server.cert_der),
                                 username=op.username, token=op.token), server.cert_der)
        self.cwd = base / f"cwd-{op.username}"
        self.cwd.mkdir(exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")}
        self.env.update(PYTHONPATH=str(REPO), RAMPART_CONFIG_DIR=str(cfg.dir), TZ="UTC")

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "rampart.cli.main", *args], capture_output=True,
                              text=True, timeout=120, cwd=self.cwd, stdin=subprocess.DEVNULL, env=self.env)

    def ok(self, *args: str) -> str:
        r = self.run(*args)
        assert r.returncode == 0, f"{args}: rc={r.returncode}\n{r.stdout}\n{r.stderr}"
        return r.stdout


def _hostile_report() -> dict[str, Any]:
    now = int(time.time())
    inv = Inventory(collected_at=now, agent=AgentInfo(version="wire", containment="none"),
                    os=OsInfo(id="debian", name="Debian", version_id="9", kernel_release="6.1.0",
                              kernel_version="#1", arch="amd64", hostname=HOSTILE_HOST, boot_time=now - 100,
                              eol=EolStatus(status="unknown")))
    finding = Finding(kind="eol-os", severity="warning", key="eol-os::debian:9", subject=HOSTILE_SUBJECT)
    tool = ToolSeen(slug="anydesk", found_by=["process"], evidence={"exe": "/tmp/AnyDesk"})
    return {"type": "inventory", "report": encode_report(Report(full=inv, findings=[finding], tools=[tool])),
            "result": digest(inv), "base": None}


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("posture")
    server = init_server(base / "srv")
    server.start()
    agent: WireAgent | None = None
    try:
        owner = bootstrap_owner(server)
        acme = setup_tenant(owner, "acme")
        beta = setup_tenant(owner, "beta", prefix="b-")
        customer = owner.create_account("acme-customer", "customer-viewer", [acme.id])
        tok = ok(owner.http.post(f"/tenants/{acme.id}/enrollment-tokens", json={"ttl_s": 600}))
        agent = WireAgent.enrol(server, tok["token"], tok["root_sha256"], hostname=HOSTILE_HOST)
        ok(owner.http.post(f"/tenants/{acme.id}/devices/{agent.device_id}/approve"))
        assert agent.connect()["type"] == "welcome"
        agent.send(_hostile_report())
        assert agent.wait_for("inventory-ack")["result"]
        yield World(server, acme, beta, customer, base, agent)
    finally:
        if agent is not None:
            agent.close()
        server.stop()


def _report(op: Operator, tid: str) -> dict[str, Any]:
    doc: dict[str, Any] = ok(op.http.get(f"/tenants/{tid}/report", params={"format": "json"}))
    return doc


def _control(doc: dict[str, Any], cid: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in doc["controls"] if c["id"] == cid]
    assert len(found) == 1, cid
    return found[0]


def _pdf_text(pdf: Path) -> tuple[str, list[Path]]:
    """The PDF's pages rendered to PNG with pdftoppm (each a real, non-blank image) and its text."""
    out = pdf.parent / pdf.stem
    subprocess.run(["pdftoppm", "-r", "60", "-png", str(pdf), str(out)], check=True, timeout=60)
    pages = sorted(pdf.parent.glob(f"{pdf.stem}-*.png"))
    assert pages, "pdftoppm rendered no page"
    for p in pages:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True,
                          text=True, timeout=60).stdout
    return text, pages


def _pdf(cli: Cli, tenant: str, name: str) -> tuple[str, list[Path]]:
    out = cli.cwd / f"{name}.pdf"
    assert "wrote" in cli.ok("report", tenant, "--format", "pdf", "--out", str(out))
    assert out.read_bytes()[:5] == b"%PDF-" and out.stat().st_mode & 0o777 == 0o600
    return _pdf_text(out)


# --- 2.H and M2 follow the accounts: red without MFA, green with MFA and passkeys ------------------


def test_2H_mfa_status_follows_the_accounts_in_the_pdf(w: World) -> None:
    owner, t = w.acme.owner, w.acme
    cli = Cli(w.base, w.server, owner)
    # Everyone has TOTP, but no signer holds a passkey: MFA is there, not phishing-resistant.
    doc = _report(owner, t.id)
    assert _control(doc, "2.H")["status"] == "partial" and _control(doc, "M2")["status"] == "met"

    # An account created but never activated has no MFA: 2.H and M2 turn red, naming it.
    pending = ok(owner.http.post("/accounts", json={"username": "newbie", "role": "viewer",
                                                    "tenants": [t.id]}))
    doc = _report(owner, t.id)
    assert _control(doc, "2.H")["status"] == "not-met" and _control(doc, "M2")["status"] == "not-met"
    text, pages = _pdf(cli, "acme", "red")
    flat = " ".join(text.split())
    assert "Phishing-resistant MFA NOT MET" in flat and "without MFA: newbie" in flat
    assert "Security posture report" in flat and "acme" in flat

    # It activates (TOTP), and each signing staff account registers a passkey: green.
    from harness.operators import activate
    activate(w.server, "newbie", pending["activation_token"])
    for i, op in enumerate((owner, t.approver, t.tech)):
        ok(op.http.post("/keys", json={"public": PASSKEY + f"{i:x}" * 64, "tenant": t.id,
                                       "name": f"{op.username}-passkey"}))
    doc = _report(owner, t.id)
    assert _control(doc, "2.H")["status"] == "met" and _control(doc, "M2")["status"] == "met"
    text, _ = _pdf(cli, "acme", "green")
    flat = " ".join(text.split())
    assert "without MFA: none" in flat and "3 of 3 signing staff account(s) hold a passkey" in flat
    assert "Phishing-resistant MFA NOT MET" not in flat and "Phishing-resistant MFA met" in flat


# --- C1, M7: the statement, the notification of a critical alert and whether the deadline held --------


def _publish(t: TenantSetup, version: int, expires_in: int) -> None:
    root = make_root(t.tenant, version, owners=[t.owner_key], approvers=[t.approver_key],
                     technicians=[t.tech_key], expires_in=expires_in)
    ok(t.owner.http.post(f"/tenants/{t.id}/roots", json={"envelope": sign_root(root, [t.owner_key])}))


def _wait(cond: Any, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out: {what}")


def test_C1_M7_statement_contact_notified_and_deadlines_in_the_report(w: World) -> None:
    owner, t = w.acme.owner, w.acme
    cli = Cli(w.base, w.server, owner)
    assert "no service statement" in cli.run("tenant", "statement", "acme").stderr
    assert _control(_report(owner, t.id), "C1")["status"] == "not-met"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    with http_sink() as hook:
        ok(owner.http.post(f"/tenants/{t.id}/notify-targets", json={
            "kind": "webhook", "name": "on-call", "url": f"{hook.base}/incident",
            "min_severity": "critical"}))
        ok(owner.http.post(f"/tenants/{t.id}/notify-targets", json={
            "kind": "webhook", "name": "dead-pager", "url": f"http://127.0.0.1:{dead}/x",
            "min_severity": "critical"}))
        # An MSP-wide or another tenant's target cannot be the customer's contact.
        other = ok(owner.http.post(f"/tenants/{w.beta.id}/notify-targets", json={
            "kind": "webhook", "name": "beta-hook", "url": f"{hook.base}/beta", "min_severity": "critical"}))
        assert owner.http.put(f"/tenants/{t.id}/statement", json={
            "deadline_s": 3600, "contact_target": other["id"]}).status_code == 400
        assert ok(owner.http.get(f"/tenants/{t.id}/statement"))["statement"] is None

        cli.ok("tenant", "statement", "acme", "--services", "24x7 monitoring and alerting",
               "--services", "Patch management (security updates within 14 days)",
               "--set-contact", "Acme IT on-call, it@acme.example", "--target", "on-call",
               "--deadline", "4h", "--incident-response", "Triage within 1 hour; containment by the MSP SOC.",
               "--recovery", "Restore from the offline Borg vault; RTO 24 hours.")
        shown = cli.ok("tenant", "statement", "acme")
        assert "Acme IT on-call, it@acme.example via webhook 'on-call', within 4h" in shown
        assert "Patch management (security updates within 14 days)" in shown
        # --from-file changes the fields it names and keeps the others.
        (cli.cwd / "st.json").write_text(json.dumps({"services": [
            "24x7 monitoring and alerting", "Patch management (security updates within 14 days)",
            "Offline backups, restore-tested weekly"]}))
        st = json.loads(cli.ok("tenant", "statement", "acme", "--from-file", "st.json",
                               "--json"))["statement"]
        assert st["services"][-1] == "Offline backups, restore-tested weekly" and st["deadline_s"] == 4 * 3600
        assert st["contact_target_name"] == "on-call"

        # A critical alert opens for real: the tenant's root now expires in 5 days.
        _publish(t, 2, 5 * DAY)
        call = _wait(lambda: [c for c in hook.received if c.path == "/incident"
                              and json.loads(c.body)["kind"] == "root-expiring"], "the contact was not told")
        assert json.loads(call[0].body)["severity"] == "critical"
        doc = _wait(lambda: (d := _report(owner, t.id))["notices"] and d["notices"][0]["notified_at"] and d,
                    "the notice was not recorded")
        [n] = doc["notices"]
        assert n["kind"] == "root-expiring" and n["verdict"] == "held" and n["deadline_s"] == 4 * 3600
        assert 0 <= n["notified_at"] - n["opened_at"] < 60
        assert _control(doc, "C1")["status"] == "met"

        # The contact is now a pager that does not answer, with a 1 minute deadline; the next critical
        # alert is never delivered, and once the minute has passed the report says the deadline was missed.
        cli.ok("tenant", "statement", "acme", "--target", "dead-pager", "--deadline", "60s")
        _publish(t, 3, 3 * DAY)
        doc = _report(owner, t.id)
        assert [x["verdict"] for x in doc["notices"]] == ["pending", "held"]
        w.server.stop()
        w.server.env["RAMPART_CLOCK_OFFSET_S"] = "120"
        w.server.start()
        try:
            for op in (owner, w.customer, t.approver, t.tech):
                op.totp.offset = 120
                op.__dict__.pop("_http", None)
            doc = _report(owner, t.id)
            assert [x["verdict"] for x in doc["notices"]] == ["missed", "held"]
            c1 = _control(doc, "C1")
            assert c1["status"] == "partial" and "1 within the deadline, 1 missed" in " ".join(c1["evidence"])
            text, _ = _pdf(Cli(w.base, w.server, owner), "acme", "deadlines")
            flat = " ".join(text.split())
            assert "Acme IT on-call, it@acme.example, via webhook" in flat
            assert "Restore from the offline Borg vault; RTO 24 hours." in flat
            assert "missed" in flat and "held" in flat
        finally:
            w.server.stop()
            w.server.env.pop("RAMPART_CLOCK_OFFSET_S", None)
            w.server.start()
            for op in (owner, w.customer, t.approver, t.tech):
                op.totp.offset = 0
                op.__dict__.pop("_http", None)


# --- T12: a customer viewer reads its own tenant's report and statement, never another's -----------------


def test_T12_customer_viewer_downloads_its_own_report_only(w: World) -> None:
    c, owner = w.customer, w.acme.owner
    own = c.http.get(f"/tenants/{w.acme.id}/report", params={"format": "pdf"})
    assert own.status_code == 200 and own.content[:5] == b"%PDF-"
    assert own.headers["content-type"] == "application/pdf"
    before = ok(owner.http.get(f"/tenants/{w.beta.id}/statement"))
    for fmt in ("html", "pdf", "json"):
        r = c.http.get(f"/tenants/{w.beta.id}/report", params={"format": fmt})
        assert r.status_code == 404 and b"%PDF" not in r.content and b"beta" not in r.content
    assert c.http.get(f"/tenants/{w.beta.id}/statement").status_code == 404
    r = c.http.put(f"/tenants/{w.beta.id}/statement", json={"deadline_s": 60, "contact": "attacker"})
    assert r.status_code == 404
    # Its own tenant's statement is read-only for it.
    r = c.http.put(f"/tenants/{w.acme.id}/statement", json={"contact": "attacker"})
    assert r.status_code == 403
    assert ok(owner.http.get(f"/tenants/{w.beta.id}/statement")) == before
    assert "attacker" not in json.dumps(ok(owner.http.get(f"/tenants/{w.acme.id}/statement")))
    # The CLI, logged in as the customer, gets the same answers.
    cli = Cli(w.base, w.server, c)
    assert "wrote" in cli.ok("report", "acme", "--format", "pdf", "--out", "own.pdf")
    run = cli.run("report", w.beta.id, "--format", "pdf", "--out", "other.pdf")
    assert run.returncode != 0 and not (cli.cwd / "other.pdf").exists()


# --- T16: hostile device text is inert in the HTML (in Chromium) and in the PDF ----------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install it (apt-get install chromium; "
                    "./run-tests does)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def test_T16_hostile_device_text_is_inert_in_the_html_and_pdf_reports(w: World, browser: Browser) -> None:
    owner = w.acme.owner
    doc = _report(owner, w.acme.id)
    tools = {(x["hostname"], x["tool"], x["sanctioned"]) for x in doc["tools"]}
    assert tools == {(HOSTILE_HOST, "anydesk", False)}
    assert _control(doc, "2.Q")["status"] == "not-met" and _control(doc, "M6")["status"] == "not-met"

    cli = Cli(w.base, w.server, owner)
    cli.ok("report", "acme", "--format", "html", "--out", "r.html")
    html = (cli.cwd / "r.html").read_text()
    assert "<script" not in html and "<img" not in html and "\x1b" not in html and "\u202e" not in html
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=" in html

    text, _ = _pdf(cli, "acme", "hostile")
    assert "\x1b" not in text and "\u202e" not in text
    assert "<script>window.__pwned=1</script>\\x1b[2J\\u202eweb01" in text
    # The finding's subject wraps in its table cell; its pieces read back as the text it is.
    assert '<img src=x' in text and 'onerror="window.__pwned=2">Debian' in text

    # Chromium, signed in as the customer, opens the portal's posture page and the report itself.
    s = sign_in(browser, w.server, w.customer)
    try:
        page = s.page
        page.goto(f"{w.server.url}/console/t/{w.acme.id}/posture")
        assert "Service statement" in page.inner_text("main")
        with page.expect_navigation():
            page.click("#report-html")
        page.wait_for_load_state("load")
        assert page.evaluate("window.__pwned") is None and not s.dialogs
        assert page.locator("script").count() == 0 and page.locator("img").count() == 0
        body = page.inner_text("body")
        assert "<script>window.__pwned=1</script>" in body and "Phishing-resistant MFA" in body
        assert page.locator("svg").count() >= 4  # the charts, drawn server-side
        shot = w.base / "posture-report.png"
        page.set_viewport_size({"width": 1100, "height": 1400})
        page.screenshot(path=str(shot), full_page=False)
        if target := os.environ.get("RAMPART_CONSOLE_SCREENSHOTS"):
            Path(target).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(target) / "posture-report.png")  # the image docs/compliance.md shows
        # Another tenant's report through the portal: the same 404 as a tenant that does not exist.
        r = page.goto(f"{w.server.url}/console/t/{w.beta.id}/report.pdf")
        assert r is not None and r.status == 404
        assert not any("Content Security Policy" in m for m in s.console)
    finally:
        s.close()
