r"""Remote shells from the local console (`rampart console`, issue 14 part 3) in a real Chromium.

A real server process, a real agent (harness.sessions: enrolled, approved, connected, running
each session as its own uid), and the technician's `rampart console` process started from the
CLI state `rampart login` and `rampart key new` leave (the passphrase is typed into the page).
Debian's Chromium is driven through Playwright; xterm.js renders the terminal in the page.

- the technician reviews the session (device, grant decoded against the pinned root, session
  key fingerprint), signs it, types a command into the terminal, sees its output, exits with a
  status and sees it; the device's recording is stored, verified and plays the output;
- T16: a device that prints terminal queries (DA, CPR) and an OSC 52 clipboard write gets
  nothing typed back into its shell, and the browser's clipboard is untouched;
- T13: a WebSocket from another origin (a page of another port of 127.0.0.1: same site, so
  the browser sends the console's cookie) is refused before the handshake completes, even
  with the right attach token; a socket without the cookie, or with a wrong token, too; a
  session-open post without the CSRF token signs nothing: no session on the server.

Screenshots go to the test's base directory and, with ``RAMPART_CONSOLE_SCREENSHOTS=dir``, to
that directory (docs/img/local-console-shell-*.png come from such a run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness.attacker_site import attacker_site
from harness.sessions import KEY_PASSPHRASE, SessionWorld, session_world
from playwright.sync_api import BrowserContext, Page, sync_playwright
from test_local_console_browser import CHROMIUM, CHROMIUM_ARGS, LocalConsole
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from rampart import trust

pytestmark = [pytest.mark.client_side,
              pytest.mark.skipif(os.geteuid() != 0, reason="the agent runs sessions as root")]

FINGERPRINT = re.compile(r"^\d{5}( \d{5}){5}$")


@dataclass
class World:
    w: SessionWorld
    device: str
    console: LocalConsole
    context: BrowserContext
    page: Page


def _shot(world: World, name: str) -> None:
    path = world.w.base / f"local-console-{name}.png"
    world.page.screenshot(path=str(path), full_page=True)
    out = os.environ.get("RAMPART_CONSOLE_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(out) / path.name)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install it (apt-get install chromium; "
                    "./run-tests does) or set RAMPART_CHROMIUM. Playwright never downloads one here.")
    with session_world(None, prefix="rampart-console-shell-") as w:
        agent = w.enrol("main")
        console = LocalConsole(w, "cli-tech")
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                try:
                    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
                    page = ctx.new_page()
                    page.goto(console.url)
                    page.wait_for_selector("table.tenants")
                    yield World(w, agent.device_id, console, ctx, page)
                finally:
                    browser.close()
        finally:
            console.stop()
            for path in (console.log, console.out):  # the typed passphrase was never written anywhere
                assert KEY_PASSPHRASE not in path.read_text(errors="replace"), path


def _review(world: World, grant: str) -> None:
    """Choose the grant and the device on the console's shell page."""
    page, c = world.page, world.console
    page.goto(f"{c.origin}/t/{world.w.tenant}/shell")
    page.click(f"a[href='/t/{world.w.tenant}/shell?grant={grant}']")
    page.click(f"a.pick-device[href*='device={world.device}']")
    page.wait_for_selector("#open-shell")


def _open(world: World, grant: str, *, shot: str | None = None) -> str:
    """Review, sign and open a session; its id once the terminal is attached."""
    page = world.page
    _review(world, grant)
    if shot:
        _shot(world, shot)
    page.fill("#passphrase", KEY_PASSPHRASE)
    page.click("#open-shell")
    page.wait_for_url(re.compile(r"/shells/job-"), timeout=60_000)
    page.wait_for_function("document.getElementById('shell-state').textContent.startsWith('open')",
                           timeout=30_000)
    job_id = page.inner_text("#shell-id").strip()
    page.click("#terminal")
    # A prompt the echoed command line cannot match, and no bracketed paste noise.
    _type(world, "bind 'set enable-bracketed-paste off' 2>/dev/null; PS1='RP-''READY> '")
    _screen_has(world, "RP-READY> ")
    return job_id


def _type(world: World, line: str) -> None:
    world.page.keyboard.type(line + "\n", delay=5)


def _screen(world: World) -> str:
    return world.page.inner_text(".xterm-rows")


def _screen_has(world: World, text: str, timeout: float = 30) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        screen = _screen(world)
        if text in screen:
            return screen
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared on the terminal:\n{_screen(world)}")


def _ended(world: World) -> dict[str, str | None]:
    world.page.wait_for_selector("#shell-end:not([hidden])", timeout=30_000)
    return {"reason": world.page.get_attribute("#shell-end", "data-reason"),
            "status": world.page.get_attribute("#shell-end", "data-status"),
            "text": world.page.inner_text("#shell-end")}


def _local_log(world: World) -> list[dict[str, Any]]:
    path = world.w.base / "cli-tech" / "sessions.log"
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_a_shell_opened_in_the_console_runs_a_typed_command_shows_its_output_and_exit_status(
        world: World) -> None:
    w, page = world.w, world.page
    grant = w.grant(["shell"])
    _review(world, grant)
    # What will be signed: the device id, the server's hostname (labelled), the grant decoded
    # against the pinned root, the session key's fingerprint.
    assert page.inner_text("#shell-device").strip() == world.device
    assert "as the server reports it" in page.inner_text("dl.session-review")
    assert page.inner_text("#shell-hostname").strip()
    assert FINGERPRINT.match(page.inner_text("#shell-key-fingerprint").strip())
    assert "shell" in page.inner_text("#grant-capabilities")
    assert world.device in page.inner_text("#grant-devices")
    assert "2 of 2" in page.inner_text("#grant-approvals")
    job_id = _open(world, grant, shot="shell-review")
    assert job_id.startswith("job-")
    _type(world, "echo FROM-THE-BROWSER-$((40+2)); id -u")
    screen = _screen_has(world, "FROM-THE-BROWSER-42")
    _type(world, "printf '\\033[1;32mgreen\\033[0m %s\\n' colours; ls -d /tmp")
    _screen_has(world, "green colours")
    _shot(world, "shell-terminal")
    assert "FROM-THE-BROWSER-42" in screen
    # The signed job is a shell job carrying the key whose fingerprint the review showed.
    _type(world, "exit 3")
    end = _ended(world)
    assert end["reason"] == "exit" and end["status"] == "3", end
    assert "exit status 3" in page.inner_text("#shell-state")
    _shot(world, "shell-ended")
    # The device's recording is stored and verifies; it plays the typed command's output.
    doc = w.wait_recording(job_id)
    r = w.receipt_envelope(job_id)
    assert isinstance(r.session, trust.SessionSummary)
    assert doc["recording"]["sha256"] == r.session.recording_sha256
    shown = json.loads(w.cli("sessions", "show", job_id, "--json").stdout)
    assert shown["verified"] is True and shown["end"] == "exit"
    played = w.cli("sessions", "play", job_id, "--speed", "100")
    assert played.returncode == 0, played.stderr
    assert b"FROM-THE-BROWSER-42" in played.stdout
    events = [e for e in _local_log(world) if e.get("session") == job_id]
    assert [e["event"] for e in events] == ["open", "end"]
    assert events[1]["end"] == "exit" and events[1]["status"] == 3 and events[1]["via"] == "console"
    # The attach token was spent: the page again shows the end, and no terminal to attach.
    page.reload()
    assert "exit status 3" in page.inner_text("#shell-state")
    assert page.query_selector("#terminal") is None


def test_T16_terminal_queries_and_osc52_from_the_device_type_nothing_back_and_leave_the_clipboard(
        world: World) -> None:
    w, page = world.w, world.page
    world.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=world.console.origin)
    grant = w.grant(["shell"])
    job_id = _open(world, grant)
    page.evaluate("navigator.clipboard.writeText('operator-own-clipboard')")
    # A hostile device asks for device attributes (primary and secondary), the cursor position
    # and a window report, and writes the clipboard (OSC 52, both terminators); then it reads
    # what the terminal typed back, silently, for 3 s, up to the 'c' that ends a DA answer
    # or the 'R' of a cursor report.
    _type(world, "printf '\\033[c\\033[>c\\033[6n\\033[18t"
                 "\\033]52;c;cHduZWQ=\\007\\033]52;p;cHduZWQ=\\033\\\\'; "
                 "read -rs -t 3 -d R x; echo \"ANSWER-LEN-${#x}-\"'END'")
    screen = _screen_has(world, "-END", timeout=20)
    assert "ANSWER-LEN-0-END" in screen, screen
    assert page.evaluate("navigator.clipboard.readText()") == "operator-own-clipboard"
    _type(world, "exit")
    end = _ended(world)
    assert end["reason"] == "exit" and end["status"] == "0", end
    # Nothing beyond the two typed lines (and the prompt setup) went to the device as input.
    played = w.cli("sessions", "play", job_id, "--speed", "100")
    assert b"ANSWER-LEN-0-END" in played.stdout


def _ws_url(world: World, job_id: str) -> str:
    return f"ws://127.0.0.1:{world.console.port}/shells/{job_id}/ws"


def test_T13_a_cross_origin_websocket_is_refused_and_opens_or_attaches_no_session(world: World) -> None:
    w, page, c = world.w, world.page, world.console
    grant = w.grant(["shell"])
    before = {s["id"] for s in w.sessions()}
    # A session-open post without the CSRF token (another page's form) signs nothing.
    _review(world, grant)
    offer = page.get_attribute("input[name=offer]", "value")
    cookie = next(x for x in world.context.cookies() if x["name"] == f"rampart-console-{c.port}")
    jar = {cookie["name"]: cookie["value"]}
    r = httpx.post(f"{c.origin}/t/{w.tenant}/shell", cookies=jar,
                   data={"offer": offer or "", "passphrase": KEY_PASSPHRASE},
                   headers={"Origin": "http://127.0.0.1:1", "Sec-Fetch-Site": "same-site"})
    assert r.status_code == 403
    assert {s["id"] for s in w.sessions()} == before
    # A session opened here whose terminal page has not attached (its script held back).
    page.route("**/static/shell/session.js", lambda route: route.abort())
    try:
        page.fill("#passphrase", KEY_PASSPHRASE)
        page.click("#open-shell")
        page.wait_for_url(re.compile(r"/shells/job-"), timeout=60_000)
        job_id = page.inner_text("#shell-id").strip()
        token = page.get_attribute("#terminal", "data-token")
        assert token
    finally:
        page.unroute("**/static/shell/session.js")
    opened = {s["id"] for s in w.sessions()} - before
    assert opened == {job_id}
    # The attacker: a page of another port of 127.0.0.1 (same site: the browser sends the
    # console's SameSite=Strict cookie), which even knows the id and the attach token.
    script = f"""<!doctype html><script>
      window.result = "pending";
      var ws = new WebSocket({json.dumps(_ws_url(world, job_id))});
      ws.onopen = function () {{ window.result = "open";
        ws.send(JSON.stringify({{token: {json.dumps(token)}}}));
        ws.send(JSON.stringify({{d: "touch /tmp/pwned-by-another-origin\\r"}})); }};
      ws.onmessage = function (e) {{ window.result = "message"; }};
      ws.onclose = function (e) {{ if (window.result === "pending") window.result = "closed:" + e.code; }};
    </script>"""
    with attacker_site(script.encode()) as evil:
        other = world.context.new_page()
        try:
            other.goto(evil)
            other.wait_for_function("window.result !== 'pending'", timeout=15_000)
            assert other.evaluate("window.result") == "closed:1006"  # handshake refused
        finally:
            other.close()
    # The same from a script: the cookie and the token, with a wrong or missing Origin: 403.
    for headers in ({"Origin": "http://127.0.0.1:1", "Cookie": f"{cookie['name']}={cookie['value']}"},
                    {"Origin": "http://attacker.example", "Cookie": f"{cookie['name']}={cookie['value']}"},
                    {"Cookie": f"{cookie['name']}={cookie['value']}"},
                    {"Origin": c.origin}):
        with pytest.raises(InvalidStatus) as refused:
            connect(_ws_url(world, job_id), additional_headers=headers, open_timeout=10,
                    origin=None, proxy=None)
        assert refused.value.response.status_code == 403, headers
    # Right origin and cookie, wrong token: told so, and the session stays unattached.
    with connect(_ws_url(world, job_id), additional_headers={
            "Origin": c.origin, "Cookie": f"{cookie['name']}={cookie['value']}"}, open_timeout=10,
            proxy=None) as ws:
        ws.send(json.dumps({"token": "not-the-token"}))
        assert "refused" in json.loads(ws.recv(timeout=10))["error"]
    # Nothing changed: no other session, and the console's own page still attaches and works.
    assert {s["id"] for s in w.sessions()} - before == {job_id}
    page.reload()
    page.wait_for_function("document.getElementById('shell-state').textContent.startsWith('open')",
                           timeout=30_000)
    # The token is spent: the same token again (a second tab, a replay) attaches nothing.
    with connect(_ws_url(world, job_id), additional_headers={
            "Origin": c.origin, "Cookie": f"{cookie['name']}={cookie['value']}"}, open_timeout=10,
            proxy=None) as ws:
        ws.send(json.dumps({"token": token}))
        assert "attached already" in json.loads(ws.recv(timeout=10))["error"]
    page.click("#terminal")
    _type(world, "ls /tmp/pwned-by-another-origin 2>&1 | head -1; echo STILL-$((1+1))-MINE")
    screen = _screen_has(world, "STILL-2-MINE")
    assert "No such file" in screen
    _type(world, "exit")
    assert _ended(world)["reason"] == "exit"
