r"""Session recordings played in the server console, in a real Chromium (issue 14 parts 1 and 2).

One real server, one real agent (tests/harness/sessions.py) and the technician's real CLI:
a real `rampart shell` session prints a known line and hostile output (markup, an OSC
title and colour escapes), and a real `rampart cp` to a file named with markup makes the
agent write that name into a marker of its own recording. Both recordings are stored by
the server only because they equal what the device signed in its receipt. Debian's
Chromium (``/usr/bin/chromium``) is driven through Playwright with the console's real CSP.

Screenshots go to tmp_path and, with ``RAMPART_CONSOLE_SCREENSHOTS=dir``, there too
(docs/img/console-recording.png comes from such a run).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pexpect
import pytest
from harness.consolefleet import store_of
from harness.operators import Operator, ok
from harness.sessions import SessionWorld, open_shell, run, session_world
from playwright.sync_api import Browser, Page, Route, sync_playwright
from sqlalchemy import update

from rampart import trust
from rampart.server.api.console.pages import playable
from rampart.server.models import SessionRecording
from rampart.webui import CSP, PLAYER_CSP

pytestmark = [pytest.mark.client_side,
              pytest.mark.skipif(os.geteuid() != 0,
                                 reason="sessions run as a dynamic uid: the agent must be root")]

CHROMIUM = Path(os.environ.get("RAMPART_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]

#: Printed on the device inside the real session: markup that would run script if it became
#: DOM, an OSC 0 window title carrying markup, OSC 52 (clipboard write) and colour escapes.
HOSTILE_LINE = "<script>window.__pwned=1</script><img src=x onerror=window.__pwned=2>"
HOSTILE_PRINTF = (f"printf '%s\\n' '{HOSTILE_LINE}'; "
                  r"printf '\033]0;<img src=x onerror=window.__pwned=3>\007\033]52;c;cm0gLXJmIH4=\007"
                  r"\033[31mRED-TEXT\033[0m\n'")
#: The name of the file `rampart cp` uploads: the agent writes it into a marker ("file uploaded: …").
HOSTILE_NAME = "<img src=x onerror=window.__pwned=3>.txt"

#: Records every CSP violation and any sign that injected markup ran (added before any page script).
WATCH = """
window.__violations = [];
document.addEventListener('securitypolicyviolation', e => window.__violations.push(
    e.violatedDirective + ' ' + e.blockedURI));
"""


@dataclass
class World:
    w: SessionWorld
    shell_job: str
    cp_job: str
    customer: Operator  # customer viewer of acme
    other_customer: Operator  # customer viewer of bravo
    other_tech: Operator  # technician of bravo
    bravo: str


@pytest.fixture(scope="module")
def world(pg_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with session_world(pg_cluster, prefix="rampart-recordings-") as w:
        w.enrol("main")
        grant = w.grant(["shell"])
        child, shell_job = open_shell(w, grant)
        assert "RECORDED-42" in run(child, "echo RECORDED-$((40+2))")
        run(child, HOSTILE_PRINTF)
        child.sendline("exit")
        child.expect(pexpect.EOF, timeout=30)
        child.close()
        w.wait_recording(shell_job)
        local = tmp_path_factory.mktemp("cp") / "note.txt"
        local.write_text("hello\n")
        before = {s["id"] for s in w.sessions()}
        r = w.cli("cp", "acme", str(local), f"{w.main.device_id}:{w.scratch / HOSTILE_NAME}",
                  "--grant", grant)
        assert r.returncode == 0, r.stderr
        cp_job = next(s["id"] for s in w.sessions() if s["id"] not in before)
        w.wait_recording(cp_job)
        bravo = ok(w.owner.http.post("/tenants", json={"name": "bravo"}))["id"]
        yield World(w, shell_job, cp_job,
                    w.owner.create_account("acme-customer", "customer-viewer", [w.tenant]),
                    w.owner.create_account("bravo-customer", "customer-viewer", [bravo]),
                    w.owner.create_account("bravo-tech", "technician", [bravo]), bravo)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install it (apt-get install chromium; "
                    "./run-tests does) or set RAMPART_CHROMIUM. Playwright never downloads one here.")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _sign_in(b: Browser, world: World, who: Operator) -> Page:
    context = b.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
    context.add_init_script(WATCH)
    page = context.new_page()
    page.goto(world.w.server.url + "/console/login")
    page.fill("input[name=username]", who.username)
    page.fill("input[name=password]", who.password)
    page.fill("input[name=totp]", who.totp.code())
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert who.username in page.inner_text("header")
    return page


def _shot(page: Page, where: Path, name: str) -> None:
    path = where / f"console-{name}.png"
    page.screenshot(path=str(path), full_page=False)
    if target := os.environ.get("RAMPART_CONSOLE_SCREENSHOTS"):
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


def _play_to_end(page: Page) -> str:
    """Start the player and wait until it has drawn the whole recording; the terminal's text."""
    page.locator(".ap-player").first.wait_for(timeout=15_000)
    page.locator(".ap-player").first.click()  # play
    page.wait_for_function("() => !!document.querySelector('.ap-player') && "
                           "document.querySelector('.ap-term').innerText.includes('exit')", timeout=30_000)
    return str(page.locator(".ap-term").inner_text())


def test_the_recording_plays_in_the_browser_with_the_sessions_metadata(
        world: World, browser: Browser, tmp_path: Path) -> None:
    w = world.w
    page = _sign_in(browser, world, w.tech)
    try:
        response = page.goto(f"{w.server.url}/console/t/{w.tenant}/sessions")
        assert response is not None and response.status == 200
        page.click(f"a[href='/console/t/{w.tenant}/sessions/{world.shell_job}']")
        page.wait_for_url(f"**/sessions/{world.shell_job}")
        shown = page.inner_text("dl.kv")
        stored = w.wait_recording(world.shell_job)["recording"]
        signed = w.receipt_envelope(world.shell_job).session
        assert isinstance(signed, trust.SessionSummary)
        assert "matches the signed receipt" in shown and stored["sha256"] in shown
        assert stored["sha256"] == signed.recording_sha256
        assert "tech (key" in shown and w.main.device_id in shown and "exit" in shown
        text = _play_to_end(page)
        assert "RECORDED-42" in text
        page.evaluate("window.scrollTo(0, 0)")
        _shot(page, tmp_path, "recording")
        assert page.evaluate("window.__violations") == []
        # The page's CSP: the console's, with exactly 'wasm-unsafe-eval' added for the player.
        headers = page.request.get(page.url).headers
        assert headers["content-security-policy"] == PLAYER_CSP
        assert PLAYER_CSP.replace(" 'wasm-unsafe-eval'", "") == CSP and "'unsafe-eval'" not in PLAYER_CSP
        # From the device page too.
        page.goto(f"{w.server.url}/console/t/{w.tenant}/devices/{w.main.device_id}")
        assert page.locator(f"a[href='/console/t/{w.tenant}/sessions/{world.shell_job}']").count() >= 1
    finally:
        page.context.close()


def test_the_player_needs_wasm_unsafe_eval_and_nothing_more(world: World, browser: Browser) -> None:
    """Why the player page's CSP differs: served under the console's plain CSP, the player cannot
    compile its terminal (WebAssembly) and draws nothing; the violation names wasm-eval only."""
    w = world.w
    page = _sign_in(browser, world, w.tech)
    url = f"{w.server.url}/console/t/{w.tenant}/sessions/{world.shell_job}"

    def strict(route: Route) -> None:
        got = route.fetch()
        route.fulfill(response=got, headers={**got.headers, "content-security-policy": CSP})
    try:
        page.route(url, strict)
        page.goto(url)
        page.locator(".ap-player").first.wait_for(timeout=15_000)
        page.locator("#player").click()  # play
        page.wait_for_timeout(3000)  # the same recording plays to its end in ~2 s with the right CSP
        assert "RECORDED-42" not in page.locator("#player").inner_text()
        assert set(page.evaluate("window.__violations")) == {"script-src wasm-eval"}
    finally:
        page.context.close()


def test_T16_hostile_output_and_markers_render_as_text_and_run_nothing(
        world: World, browser: Browser, tmp_path: Path) -> None:
    w = world.w
    page = _sign_in(browser, world, world.customer)  # the customer portal plays its own tenant's sessions
    try:
        page.goto(f"{w.server.url}/console/t/{w.tenant}/sessions/{world.shell_job}")
        lines = [x.rstrip() for x in _play_to_end(page).split("\n")]
        # The output's own lines (the echoed command line wraps at 80 columns, so it is never one):
        # the markup as text, then the OSC title and clipboard sequences consumed and only the text.
        at = lines.index(HOSTILE_LINE)
        assert lines[at + 1] == "RED-TEXT", lines
        assert page.locator(".ap-player img, .ap-player script, #player img").count() == 0
        assert page.title().startswith("Session ")  # an OSC title never reaches the page's title
        _shot(page, tmp_path, "recording-hostile")
        assert page.evaluate("window.__pwned") is None
        assert page.evaluate("window.__violations") == []
        # The cp session: its marker carries the uploaded file's name, markup included.
        page.goto(f"{w.server.url}/console/t/{w.tenant}/sessions/{world.cp_job}")
        page.locator(".ap-player").first.wait_for(timeout=15_000)
        assert HOSTILE_NAME in page.inner_text("table.markers")
        page.wait_for_function("() => document.querySelectorAll('.ap-marker-container').length > 0",
                               timeout=15_000)
        tips = page.locator(".ap-marker-container .ap-tooltip").all_text_contents()
        assert any(HOSTILE_NAME in t for t in tips), tips
        assert page.locator("img").count() == 0
        scripts = page.evaluate("[...document.scripts].map(s => s.getAttribute('src') || 'INLINE')")
        assert sorted(scripts) == sorted(f"/console/static/{n}" for n in (
            "htmx.min.js", "console.js", "asciinema-player.min.js", "recording.js")), scripts
        assert page.evaluate("window.__pwned") is None and page.evaluate("window.__violations") == []
    finally:
        page.context.close()


def test_T12_another_tenants_recording_is_404_for_its_viewers_and_technicians(world: World) -> None:
    w = world.w
    paths = [f"/console/t/{w.tenant}/sessions/{world.shell_job}",
             f"/console/t/{w.tenant}/sessions/{world.shell_job}/playback",
             f"/console/t/{w.tenant}/sessions/{world.shell_job}/recording"]
    for who in (world.other_customer, world.other_tech):
        with w.server.client(api=False) as c:
            c.cookies.set("rampart_session", who.token)
            for path in paths:
                r = c.get(path)
                assert r.status_code == 404, path
                assert "RECORDED" not in r.text and w.main.device_id not in r.text, path
            # Its own tenant's id in the path does not help either.
            bravo = f"/console/t/{world.bravo}"
            for path in (f"{bravo}/sessions/{world.shell_job}",
                         f"{bravo}/sessions/{world.shell_job}/playback",
                         f"{bravo}/sessions/{world.shell_job}/recording"):
                r = c.get(path)
                assert r.status_code == 404 and w.main.device_id not in r.text, path
    with w.server.client(api=False) as c:
        c.cookies.set("rampart_session", world.customer.token)
        r = c.get(paths[1])
        assert r.status_code == 200 and b"RECORDED-42" in r.content
        assert r.headers["content-disposition"].startswith("attachment")


def test_T16_the_player_gets_output_resize_and_inert_markers_only() -> None:
    """What a hostile device could put in a recording beyond output: a title and env in the header,
    keystrokes, markers with controls, events of unknown kinds, malformed lines."""
    cast = "\n".join([
        json.dumps({"version": 2, "width": 100, "height": 30, "title": "<img src=x onerror=alert(1)>",
                    "env": {"TERM": "<b>"}, "theme": {"fg": "red;}</style><script>"}}),
        json.dumps([0.5, "o", "<script>alert(1)</script>\x1b[2J"]),
        json.dumps([0.6, "i", "secret-password\r"]),
        json.dumps([0.7, "m", "<img src=x onerror=alert(2)>\u202e\x1b[31m"]),
        json.dumps([0.8, "r", "120x40"]),
        json.dumps([0.9, "r", "<b>x</b>"]),
        json.dumps([1.0, "x", "unknown"]),
        json.dumps([-1, "o", "negative time"]),
        "not json", json.dumps({"not": "an event"}), json.dumps([2.0, "o", 5]),
    ]).encode()
    out, info = playable(cast)
    lines = [json.loads(x) for x in out.decode().splitlines()]
    assert lines[0] == {"version": 2, "width": 100, "height": 30}
    assert lines[1:] == [[0.5, "o", "<script>alert(1)</script>\x1b[2J"],
                         [0.7, "m", "<img src=x onerror=alert(2)>\\u202e\\x1b[31m"],
                         [0.8, "r", "120x40"]]
    assert b"secret-password" not in out and info["dropped"] == 7 and info["duration"] == 0.8
    assert info["markers"] == [(0.7, "<img src=x onerror=alert(2)>\\u202e\\x1b[31m")]
    # A header that is not one, or sizes out of range: the defaults.
    first = playable(b'[1, "o", "x"]\n')[0].splitlines()[0]
    assert json.loads(first) == {"version": 2, "width": 80, "height": 24}
    assert playable(json.dumps({"width": 10**9, "height": True}).encode())[1]["cols"] == 80


def test_T1_a_recording_changed_in_the_store_is_not_played(world: World) -> None:
    """Whoever writes the store (T1) cannot have the console play bytes the device did not sign:
    the page recomputes SHA-256 and size against the receipt and plays nothing on a mismatch."""
    w = world.w
    store = store_of(w.server.data_dir)
    try:
        with store.read() as s:
            original = s.get(SessionRecording, world.cp_job).data
        # The bytes and the stored digest changed together: only the device-signed receipt tells.
        forged = original.replace(b"file uploaded", b"file REMOVED!")
        assert forged != original and len(forged) == len(original)
        with store.transaction() as s:
            s.execute(update(SessionRecording).where(SessionRecording.job_id == world.cp_job).values(
                data=forged, sha256=hashlib.sha256(forged).hexdigest()))
        with w.server.client(api=False) as c:
            c.cookies.set("rampart_session", world.customer.token)
            page = c.get(f"/console/t/{w.tenant}/sessions/{world.cp_job}")
            assert page.status_code == 200 and "DOES NOT match the signed receipt" in page.text
            assert 'id="player"' not in page.text and "asciinema-player.min.js" not in page.text
            assert page.headers["content-security-policy"] == CSP  # no wasm-unsafe-eval without a player
            r = c.get(f"/console/t/{w.tenant}/sessions/{world.cp_job}/playback")
            assert r.status_code == 404 and b"REMOVED" not in r.content
        with store.transaction() as s:
            s.execute(update(SessionRecording).where(SessionRecording.job_id == world.cp_job)
                      .values(data=original, sha256=hashlib.sha256(original).hexdigest()))
        with w.server.client(api=False) as c:
            c.cookies.set("rampart_session", world.customer.token)
            page = c.get(f"/console/t/{w.tenant}/sessions/{world.cp_job}")
            assert "matches the signed receipt" in page.text
    finally:
        store.dispose()
