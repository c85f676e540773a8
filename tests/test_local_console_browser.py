r"""The local signing console (`rampart console`, issue 14 part 3) in a real Chromium.

A real server process, a real agent (harness.sessions: enrolled, approved, connected), and two
`rampart console` processes started from the operators' own CLI state (session, pinned
certificate, encrypted key file, pinned root): the technician's and the approver's. Neither
process has the key passphrase in its environment: it is typed into the page. Debian's
Chromium is driven through Playwright (no browser is downloaded).

- an approver approves a grant in the local console and the technician runs a script from
  the local console on the real agent, receipts shown;
- T13: a wrong Host header (DNS rebinding), a missing launch session, a missing or wrong
  CSRF token, a post from another page of the same host, a replayed launch secret: refused,
  and the grant stays unsigned;
- T1: the server (its database) swaps the grant between the approver's review and the
  approval, or names a key that is no technician: refused, nothing signed;
- an owner signs a root change (typing the added key's fingerprint; a wrong one signs
  nothing) and publishes it;
- T16: a device's hostname and a grant's reason written as markup and controls render as
  inert text in the local console.

Screenshots go to the test's tmp_path and, with ``RAMPART_CONSOLE_SCREENSHOTS=dir``, to
that directory (docs/img/local-console-*.png come from such a run).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness.attacker_site import attacker_site
from harness.consolefleet import add_devices, store_of
from harness.operators import audit_events, ok
from harness.sessions import KEY_PASSPHRASE, REPO, SessionWorld, cli_config, session_world
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
from sqlalchemy import select

from rampart import trust
from rampart.server.models import GrantRow

pytestmark = pytest.mark.client_side

CHROMIUM = Path(os.environ.get("RAMPART_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]
MARK = "hello-from-the-local-console"


class LocalConsole:
    """One `rampart console` process for an operator's CLI configuration."""

    def __init__(self, w: SessionWorld, config: str) -> None:
        env = w.cli_env(config)
        env.pop("RAMPART_KEY_PASSPHRASE")  # typed into the page, never in the environment
        self.log = w.base / f"console-{config}.log"
        self.out = w.base / f"console-{config}.out"
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "rampart.cli.main", "console"], env=env,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                         cwd=REPO)
        assert self.proc.stdout is not None
        lines = [self.proc.stdout.readline().decode(), self.proc.stdout.readline().decode()]
        self.out.write_text("".join(lines))
        self.url = lines[1].strip()
        assert self.url.startswith("http://127.0.0.1:") and "#launch=" in self.url, lines
        self.origin, self.launch_token = self.url.split("/#launch=")
        self.port = int(self.origin.rsplit(":", 1)[1])
        deadline = time.time() + 30
        while True:
            try:
                httpx.get(self.origin + "/", timeout=2)
                break
            except httpx.TransportError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@dataclass
class World:
    w: SessionWorld
    device: str
    tech: LocalConsole
    approver: LocalConsole
    tech_page: Page
    approver_page: Page
    approver_context: BrowserContext
    shots: list[Path]
    browser: Browser


def _shot(world: World, page: Page, name: str) -> None:
    path = world.w.base / f"local-console-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    world.shots.append(path)
    out = os.environ.get("RAMPART_CONSOLE_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(out) / path.name)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install it (apt-get install chromium; "
                    "./run-tests does) or set RAMPART_CHROMIUM. Playwright never downloads one here.")
    with session_world(None, prefix="rampart-local-console-") as w:
        op, key = w.approvers[0]
        cli_config(w, "cli-approver", op, key, w.root_env)  # type: ignore[attr-defined]
        agent = w.enrol("main")
        consoles: list[LocalConsole] = []
        try:
            tech = LocalConsole(w, "cli-tech")
            consoles.append(tech)
            approver = LocalConsole(w, "cli-approver")
            consoles.append(approver)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                try:
                    pages = []
                    contexts = []
                    for c in (tech, approver):
                        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
                        page = ctx.new_page()
                        page.goto(c.url)
                        page.wait_for_selector("table.tenants")  # after the launch exchange
                        pages.append(page)
                        contexts.append(ctx)
                    yield World(w, agent.device_id, tech, approver, pages[0], pages[1], contexts[1], [],
                                browser)
                finally:
                    browser.close()
        finally:
            for c in consoles:
                c.stop()
            for c in consoles:  # the passphrase typed into the pages was never written anywhere
                for path in (c.log, c.out):
                    assert KEY_PASSPHRASE not in path.read_text(errors="replace"), path


def _grant(w: SessionWorld, grant_id: str) -> dict[str, Any]:
    return dict(ok(w.tech.http.get(f"/grants/{grant_id}")))


def _stored(w: SessionWorld, grant_id: str) -> bytes:
    store = store_of(w.server.data_dir)
    try:
        with store.transaction() as s:
            return bytes(s.scalar(select(GrantRow.envelope).where(GrantRow.id == grant_id)))
    finally:
        store.dispose()


def _rewrite(w: SessionWorld, grant_id: str, **changes: Any) -> None:
    """The attacker (the server's database) rewrites a stored grant's payload."""
    env = trust.decode_envelope(_stored(w, grant_id))
    grant = trust.decode_payload(env.payload, trust.Grant)
    doc = {f: getattr(grant, f) for f in grant.__struct_fields__}
    doc.update(changes)
    swapped = trust.Envelope(trust.GRANT_TYPE, trust.encode_payload(trust.Grant(**doc)), ())
    store = store_of(w.server.data_dir)
    try:
        with store.transaction() as s:
            row = s.get(GrantRow, grant_id)
            assert row is not None
            row.envelope = swapped.to_bytes()
    finally:
        store.dispose()


def _requested(world: World, reason: str) -> str:
    """A grant requested by the technician (through the API, as the CLI would)."""
    doc = ok(world.w.tech.http.post(f"/tenants/{world.w.tenant}/grants", json={
        "devices": [world.device], "capabilities": ["script"], "duration_s": 3600, "reason": reason}))
    return str(doc["id"])


def _approvals(world: World) -> list[dict[str, Any]]:
    return [e for e in audit_events(world.w.owner, world.w.tenant) if e.get("kind") == "grant.approved"]


def test_approver_approves_in_the_local_console_and_a_technician_runs_a_script_on_a_real_agent(
        world: World) -> None:
    w, tech, appr = world.w, world.tech_page, world.approver_page
    tid = w.tenant
    # The technician requests a grant in their local console.
    tech.goto(f"{world.tech.origin}/t/{tid}/request")
    tech.check(f"input[name=devices][value='{world.device}']")
    tech.fill("input[name=reason]", "disk cleanup from the local console")
    tech.click("#request-grant")
    gid = tech.inner_text("#new-grant").strip()
    assert gid.startswith("gr-")
    # The approver reviews it in theirs: decoded against the pinned root, names from the root.
    appr.goto(f"{world.approver.origin}/t/{tid}")
    appr.click(f"a[href='/grants/{gid}']")
    assert world.device in appr.inner_text("#grant-devices")
    assert appr.inner_text("#grant-capabilities").strip() == "script"
    assert "disk cleanup from the local console" in appr.inner_text("#grant-reason")
    assert "0 of 1" in appr.inner_text("#grant-approvals")
    _shot(world, appr, "approve")
    appr.fill("#passphrase", KEY_PASSPHRASE)
    appr.click("#approve")
    assert "1 of 1" in appr.inner_text("#approved")
    assert _grant(w, gid)["status"] == "approved"
    # The technician signs a script job under it, for the device, and follows the receipts.
    tech.goto(f"{world.tech.origin}/t/{tid}/run?grant={gid}")
    assert tech.is_checked(f"input[name=devices][value='{world.device}']")
    tech.fill("#script", f"#!/bin/sh\necho {MARK}\nid -u\n")
    tech.fill("#passphrase", KEY_PASSPHRASE)
    tech.click("#run")
    tech.wait_for_selector("#all-receipts", timeout=60_000)
    job_id = tech.inner_text("#job-id").strip()
    text = tech.inner_text("#targets")
    assert MARK in text and "ran" in text and "exit 0" in text
    assert "containment" not in text or "level" in text
    _shot(world, tech, "receipts")
    receipt = w.receipt(job_id)
    assert receipt["outcome"] == "ran" and receipt["exit_code"] == 0 and MARK in receipt["stdout"]


def test_T13_wrong_host_no_launch_session_no_csrf_or_another_page_is_refused_and_signs_nothing(
        world: World) -> None:
    w, appr, c = world.w, world.approver_page, world.approver
    gid = _requested(world, "T13 probe")
    appr.goto(f"{c.origin}/grants/{gid}")
    csrf = appr.get_attribute("input[name=csrf]", "value")
    reviewed = appr.get_attribute("input[name=reviewed]", "value")
    assert csrf and reviewed
    cookie = next(x for x in world.approver_context.cookies() if x["name"] == f"rampart-console-{c.port}")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    jar = {cookie["name"]: cookie["value"]}
    body = {"csrf": csrf, "reviewed": reviewed, "passphrase": KEY_PASSPHRASE}
    url = f"{c.origin}/grants/{gid}/approve"
    same = {"Sec-Fetch-Site": "same-origin", "Origin": c.origin}
    before = len(_approvals(world))
    attempts = {
        # DNS rebinding: a page of attacker.example whose name now resolves to 127.0.0.1.
        "wrong host": (421, dict(data=body, cookies=jar,
                                 headers={**same, "Host": f"attacker.example:{c.port}"})),
        "no session cookie": (403, dict(data=body, headers=same)),
        "no csrf token": (403, dict(data={k: v for k, v in body.items() if k != "csrf"}, cookies=jar,
                                    headers=same)),
        "wrong csrf token": (403, dict(data={**body, "csrf": "0" * 64}, cookies=jar, headers=same)),
        "another site": (403, dict(data=body, cookies=jar,
                                   headers={"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:1"})),
        "no origin at all": (403, dict(data=body, cookies=jar)),
    }
    for what, (status, kw) in attempts.items():
        r = httpx.post(url, timeout=30, **kw)
        assert r.status_code == status, (what, r.status_code, r.text[:200])
    # Reading needs the launch session too, and the wrong host is refused for every path.
    assert httpx.get(f"{c.origin}/grants/{gid}", timeout=30).status_code == 403
    assert httpx.get(f"{c.origin}/", cookies=jar, headers={"Host": "attacker.example"},
                     timeout=30).status_code == 421
    # The launch secret was spent by the first browser: a replay gets no session.
    r = httpx.post(f"{c.origin}/launch", data={"launch": c.launch_token}, headers=same, timeout=30)
    assert r.status_code == 403 and "set-cookie" not in r.headers
    # In the browser: a page of another program on 127.0.0.1 (same site, another origin), or of
    # another site, posts the form, even with the real CSRF token and passphrase: refused.
    page = (f'<form method="post" action="{url}"><input name="csrf" value="{csrf}">'
            f'<input name="reviewed" value="{reviewed}"><input name="passphrase" value="{KEY_PASSPHRASE}">'
            '</form><script>document.forms[0].submit()</script>').encode()
    for host in ("127.0.0.1", "127.0.0.2"):  # another port of the same site; another site
        with attacker_site(page, host) as site, appr.expect_response(url) as answer:
            appr.goto(site)
        assert answer.value.status == 403, host
    # Nothing changed: no signature stored, the grant still waits, no approval audited.
    assert trust.decode_envelope(_stored(w, gid)).signatures == ()
    assert _grant(w, gid)["status"] == "requested"
    assert len(_approvals(world)) == before


def test_T1_server_swaps_the_grant_after_review_and_the_local_console_signs_nothing(
        world: World) -> None:
    w, appr, c = world.w, world.approver_page, world.approver
    gid = _requested(world, "T1 probe: one hour of script")
    appr.goto(f"{c.origin}/grants/{gid}")
    assert "T1 probe: one hour of script" in appr.inner_text("#grant-reason")
    # The server (its database) widens the grant after the approver read it: a longer window.
    g = trust.decode_payload(trust.decode_envelope(_stored(w, gid)).payload, trust.Grant)
    _rewrite(w, gid, not_after=g.not_after + 4 * 3600, reason="T1 probe: one hour of script")
    appr.fill("#passphrase", KEY_PASSPHRASE)
    with appr.expect_response(f"{c.origin}/grants/{gid}/approve") as answer:
        appr.click("#approve")
    assert answer.value.status == 409
    assert "differs from the one you reviewed" in appr.inner_text("#refusal")
    _shot(world, appr, "refused")
    assert trust.decode_envelope(_stored(w, gid)).signatures == ()
    assert _grant(w, gid)["status"] == "requested"
    # Reviewing again shows what the server now asks for, decoded here (the longer window).
    appr.goto(f"{c.origin}/grants/{gid}")
    assert time.strftime("%H:%M", time.gmtime(g.not_after + 4 * 3600)) in appr.inner_text("#grant-window")


def test_T1_server_names_a_key_that_is_no_technician_and_nothing_can_be_approved(world: World) -> None:
    w, appr, c = world.w, world.approver_page, world.approver
    gid = _requested(world, "T1 probe: grantee swap")
    second_approver = w.approvers[1][1].key_id  # an approver key, not a technician's
    _rewrite(w, gid, grantee=second_approver)
    before = len(_approvals(world))
    appr.goto(f"{c.origin}/grants/{gid}")
    assert "not a technician or automation key" in appr.inner_text("#cannot-approve")
    assert appr.query_selector("#approve") is None
    # Even a hand-made post (right session, token and the reviewed digest) signs nothing.
    csrf = appr.evaluate("() => document.querySelector('meta[name=csrf-token]').content")
    sha = trust.decode_envelope(_stored(w, gid)).payload

    r = appr.request.post(f"{c.origin}/grants/{gid}/approve", form={
        "csrf": csrf, "reviewed": hashlib.sha256(sha).hexdigest(), "passphrase": KEY_PASSPHRASE},
        headers={"Sec-Fetch-Site": "same-origin", "Origin": c.origin})
    assert r.status == 409
    assert trust.decode_envelope(_stored(w, gid)).signatures == ()
    assert len(_approvals(world)) == before


XSS_HOSTNAME = '"><script>window.__pwned="script"</script><img src=x onerror="window.__pwned=1">\u202e'
XSS_REASON = '</dd><script>window.__pwned="reason"</script>\x1b[2J<b>bold</b>'


def test_T16_hostile_hostname_and_reason_render_as_text_in_the_local_console(world: World) -> None:
    w, appr, c = world.w, world.approver_page, world.approver
    store = store_of(w.server.data_dir)
    try:
        add_devices(store, w.tenant, 1, prefix=XSS_HOSTNAME)
    finally:
        store.dispose()
    gid = _requested(world, XSS_REASON)
    blocked: list[str] = []
    appr.on("console", lambda m: blocked.append(m.text))
    for path in (f"/t/{w.tenant}", f"/t/{w.tenant}/request", f"/grants/{gid}"):
        appr.goto(c.origin + path)
        assert appr.evaluate("() => window.__pwned") is None, path
        assert appr.query_selector("main script, main img, main b") is None, path
    assert "<script>window.__pwned" in appr.inner_text("#grant-reason")  # shown, as characters
    appr.goto(f"{c.origin}/t/{w.tenant}")
    text = appr.inner_text("table.devices")
    assert '"><script>window.__pwned="script"</script>' in text and "\\u202e" in text
    assert "\u202e" not in appr.content() and "\x1b" not in appr.content()
    assert not [m for m in blocked if "Content Security Policy" in m]  # nothing even tried to run


def _proposal_signatures(w: SessionWorld) -> int:
    doc = ok(w.owner.http.get(f"/tenants/{w.tenant}/root-proposal"))
    return len(trust.decode_envelope(doc["envelope"].encode()).signatures)


def test_owner_signs_a_root_change_in_the_local_console_only_with_the_right_fingerprint(
        world: World) -> None:
    w = world.w
    cli_config(w, "cli-owner", w.owner, w.owner.keys[0], w.root_env)  # type: ignore[attr-defined]
    new_key = w.approvers[0][0].add_key(w.tenant)  # Alan's second key, to become an approver key
    r = w.cli("root", "propose", "acme", "--add-key", new_key.key_id, "--role", "approver",
              config="cli-owner")
    assert r.returncode == 0, r.stderr
    console = LocalConsole(w, "cli-owner")
    ctx = world.browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = ctx.new_page()
        page.goto(console.url)
        page.wait_for_selector("table.tenants")  # the launch exchange done, the session cookie set
        page.goto(f"{console.origin}/t/{w.tenant}/root")
        assert new_key.key_id[:16] in page.inner_text("#root-diff")
        # A fingerprint that is not the key's (the server swapped the key, or a typo): nothing signed.
        page.fill("#fp-1", "12345 12345 12345 12345 12345 12345")
        page.fill("#passphrase", KEY_PASSPHRASE)
        with page.expect_response(f"{console.origin}/t/{w.tenant}/root/sign") as answer:
            page.click("#sign-root")
        assert answer.value.status == 409
        assert "fingerprint you typed is not that of key" in page.inner_text("#refusal")
        assert _proposal_signatures(w) == 0
        # The fingerprint its holder reads out: signed, then published after the local check.
        page.goto(f"{console.origin}/t/{w.tenant}/root")
        page.fill("#fp-1", trust.key_fingerprint_b64(new_key.public.to_b64()))
        page.fill("#passphrase", KEY_PASSPHRASE)
        _shot(world, page, "root")
        page.click("#sign-root")
        assert "owners of v2: 1 of 1" in page.inner_text("#root-signed")
        assert _proposal_signatures(w) == 1
        page.click("#publish-root")
        assert "v2 published" in page.inner_text("h1")
        versions = [d["version"] for d in ok(w.owner.http.get(f"/tenants/{w.tenant}/roots"))]
        assert 2 in versions
    finally:
        ctx.close()
        console.stop()
        for path in (console.log, console.out):
            assert KEY_PASSPHRASE not in path.read_text(errors="replace")


def test_a_multi_approver_grant_asks_for_a_step_up_code_in_the_page(world: World) -> None:
    """A grant with `root` needs two approvers, so the server asks the approver for a fresh TOTP
    code (G5): without one nothing is signed; with one typed into the page, the approval counts."""
    w, appr, c = world.w, world.approver_page, world.approver
    doc = ok(w.tech.http.post(f"/tenants/{w.tenant}/grants", json={
        "devices": [world.device], "capabilities": ["script", "root"], "duration_s": 3600,
        "reason": "needs two approvers"}))
    gid = str(doc["id"])
    appr.goto(f"{c.origin}/grants/{gid}")
    assert "0 of 2" in appr.inner_text("#grant-approvals")
    appr.fill("#passphrase", KEY_PASSPHRASE)
    with appr.expect_response(f"{c.origin}/grants/{gid}/approve") as answer:
        appr.click("#approve")
    assert answer.value.status == 400
    assert "TOTP code" in appr.inner_text("#refusal")
    assert trust.decode_envelope(_stored(w, gid)).signatures == ()
    appr.goto(f"{c.origin}/grants/{gid}")
    appr.fill("#passphrase", KEY_PASSPHRASE)
    appr.fill("input[name=totp]", w.approvers[0][0].totp.code())
    appr.click("#approve")
    assert "1 of 2" in appr.inner_text("#approved")
    assert len(trust.decode_envelope(_stored(w, gid)).signatures) == 1
