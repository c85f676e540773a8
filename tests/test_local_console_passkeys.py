r"""Passkeys as signing keys (issue 14 part 4) in a real Chromium with its CDP virtual authenticator.

A real server process, a real agent (harness.sessions), and the approver's `rampart console
--localhost --port P` started from the approver's own CLI state. Chromium's virtual
authenticator (CTAP2, internal transport, resident keys, user verification) stands in for a
security key or a platform authenticator: its assertions are real ES256 signatures.

- the approver registers a passkey in the local console (fingerprint shown), the owner adds it
  to the root with ``rampart root propose --add-passkey`` and ``rampart root sign`` (the
  fingerprint typed), the approver approves a grant with it in the local console, and the
  technician's job under that grant runs on the real agent, which verified the passkey's
  assertion offline against the root it pinned;
- T1: the passkey's assertion for one grant, carried to another grant through the local console
  or straight to the server's API, is refused (challenge); the other grant stays unapproved and
  no job runs under it;
- a technician registers a passkey (the server learns its key id only), the owner adds it as a
  technician key, the approver approves the technician's grant with the approver's passkey, and
  the technician signs a script job with the passkey in the local console: it runs on the real
  agent; the same assertion carried to another job is refused by the console, and by the agent
  (challenge) when the server sends it anyway, and nothing runs.

Screenshots go to the test's directory and, with ``RAMPART_CONSOLE_SCREENSHOTS=dir``, to that
directory (docs/img/local-console-passkey-*.png come from such a run).
"""

from __future__ import annotations

import base64
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

import httpx
import pytest
from harness.consolefleet import store_of
from harness.operators import ok
from harness.sessions import KEY_PASSPHRASE, REPO, SessionWorld, cli_config, session_world
from playwright.sync_api import CDPSession, Page, sync_playwright
from sqlalchemy import select

from rampart import trust
from rampart.server.models import JobRow
from rampart.trust import OperatorKey

pytestmark = pytest.mark.client_side

CHROMIUM = Path(os.environ.get("RAMPART_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]
MARK = "signed-with-a-passkey"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PasskeyConsole:
    """`rampart console --localhost --port P` for an operator's CLI configuration."""

    def __init__(self, w: SessionWorld, config: str, port: int) -> None:
        env = w.cli_env(config)
        env.pop("RAMPART_KEY_PASSPHRASE")
        self.log = w.base / f"console-{config}.log"
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rampart.cli.main", "console", "--localhost", "--port", str(port)],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, cwd=REPO)
        assert self.proc.stdout is not None
        lines = [self.proc.stdout.readline().decode(), self.proc.stdout.readline().decode()]
        self.url = lines[1].strip()
        self.origin = f"http://localhost:{port}"
        assert self.url.startswith(self.origin + "/#launch="), lines
        deadline = time.time() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", headers={"Host": f"localhost:{port}"}, timeout=2)
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
    console: PasskeyConsole
    page: Page
    cdp: CDPSession
    authenticator: str


def _shot(world: World, name: str) -> None:
    path = world.w.base / f"local-console-passkey-{name}.png"
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
    with session_world(None, prefix="rampart-passkey-console-") as w:
        op, key = w.approvers[0]
        cli_config(w, "cli-approver", op, key, w.root_env)  # type: ignore[attr-defined]
        cli_config(w, "cli-owner", w.owner, w.owner.keys[0], w.root_env)  # type: ignore[attr-defined]
        agent = w.enrol("main")
        console = PasskeyConsole(w, "cli-approver", _free_port())
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                try:
                    ctx = browser.new_context(viewport={"width": 1280, "height": 1000})
                    page = ctx.new_page()
                    cdp = ctx.new_cdp_session(page)
                    cdp.send("WebAuthn.enable")
                    auth = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
                        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
                        "hasUserVerification": True, "isUserVerified": True,
                        "automaticPresenceSimulation": True}})
                    page.goto(console.url)
                    page.wait_for_selector("table.tenants")  # after the launch exchange
                    yield World(w, agent.device_id, console, page, cdp, str(auth["authenticatorId"]))
                finally:
                    browser.close()
        finally:
            console.stop()


def _requested(world: World, reason: str) -> str:
    doc = ok(world.w.tech.http.post(f"/tenants/{world.w.tenant}/grants", json={
        "devices": [world.device], "capabilities": ["script"], "duration_s": 3600, "reason": reason}))
    return str(doc["id"])


def _grant_envelope(world: World, gid: str) -> trust.Envelope:
    return trust.decode_envelope(str(ok(world.w.tech.http.get(f"/grants/{gid}"))["envelope"]).encode())


def _run(world: World, gid: str) -> subprocess.CompletedProcess[bytes]:
    script = world.w.base / "passkey-job.sh"
    script.write_text(f"#!/bin/sh\necho {MARK}\n")
    return world.w.cli("run", "acme", "--grant", gid, "--devices", world.device, "--script", str(script),
                       "--wait", "--json", timeout=180)


def test_a_grant_approved_with_a_passkey_lets_a_job_run_on_a_real_agent(world: World) -> None:
    w, page, origin = world.w, world.page, world.console.origin
    # 1. The approver registers a passkey in the local console.
    page.goto(f"{origin}/t/{w.tenant}/passkey")
    page.fill("#passkey-name", "alan-passkey")
    page.click("#passkey-create")
    page.wait_for_selector("#passkey-registered")
    keyid = page.inner_text("#passkey-keyid").strip()
    fingerprint = page.inner_text("#passkey-fingerprint").strip()
    creds = world.cdp.send("WebAuthn.getCredentials", {"authenticatorId": world.authenticator})["credentials"]
    assert len(creds) == 1  # the credential lives in the authenticator; the console kept its public key
    record = w.base / "cli-approver" / "passkeys" / f"{keyid}.json"
    assert record.exists() and "privateKey" not in record.read_text()
    _shot(world, "registered")
    # 2. The owner adds it to the root: propose, sign with the fingerprint read out, publish.
    bad = w.base / "not-a-passkey.json"
    doc = json.loads(record.read_text())
    altered = dict(doc, public=base64.b64encode(
        base64.b64decode(doc["public"]).replace(b'"v":1', b'"v":2')).decode())
    for text in ("{", '{"public": "AAAA"}', json.dumps(altered)):
        bad.write_text(text)  # T13: a broken or altered file proposes nothing
        r = w.cli("root", "propose", "acme", "--add-passkey", str(bad), "--passkey-role", "approver",
                  config="cli-owner")
        assert r.returncode != 0 and b"Traceback" not in r.stderr, r.stderr
        assert b"proposed root" not in r.stdout
    r = w.cli("root", "propose", "acme", "--add-passkey", str(record), "--passkey-role", "approver",
              config="cli-owner")
    assert r.returncode == 0, r.stderr
    assert fingerprint in r.stdout.decode()
    r = w.cli("root", "sign", "acme", "--yes", "--add-key", keyid, "--role", "approver", "--fingerprint",
              "12345 12345 12345 12345 12345 12345", "--expires", "365d", config="cli-owner")
    assert r.returncode != 0  # a fingerprint that is not the passkey's: nothing signed
    r = w.cli("root", "sign", "acme", "--yes", "--add-key", keyid, "--role", "approver", "--fingerprint",
              fingerprint, "--expires", "365d", config="cli-owner")
    assert r.returncode == 0, r.stderr
    r = w.cli("root", "publish", "acme", config="cli-owner")
    assert r.returncode == 0, r.stderr
    # 3. The technician asks; the approver reviews and approves with the passkey.
    gid = _requested(world, "passkey approval")
    page.goto(f"{origin}/grants/{gid}")
    env = _grant_envelope(world, gid)
    assert page.inner_text("#passkey-challenge").strip() == trust.assertion_challenge(env.signed_message())
    _shot(world, "approve")
    page.click("#approve-passkey")
    page.wait_for_selector("#approved")
    assert "1 of 1" in page.inner_text("#approved")
    signed = _grant_envelope(world, gid)
    assert [s.keyid for s in signed.signatures] == [keyid]
    sig = signed.signatures[0].sig
    assert b'"clientDataJSON"' in sig and b"webauthn.get" in base64.b64decode(
        json.loads(sig)["clientDataJSON"])
    # 4. The technician's job under it runs on the real agent (which checked the assertion offline).
    r = _run(world, gid)
    assert r.returncode == 0, r.stderr
    assert MARK in r.stdout.decode() or MARK in base64.b64decode(
        json.loads(r.stdout)["targets"][0]["receipt"]["stdout"]).decode(), r.stdout


def test_T1_a_passkey_assertion_carried_to_another_grant_is_refused(world: World) -> None:
    """The server (or a page) takes the passkey's answer for grant A and offers it for grant B."""
    w, page, origin = world.w, world.page, world.console.origin
    approved = next(g for g in ok(w.tech.http.get(f"/tenants/{w.tenant}/grants"))
                    if g["status"] == "approved" and g["reason"] == "passkey approval")
    stolen = _grant_envelope(world, str(approved["id"])).signatures[0]
    gid = _requested(world, "the attacker's grant")
    # Through the local console: the form of grant B posts grant A's assertion.
    page.goto(f"{origin}/grants/{gid}")
    parts = json.loads(stolen.sig)
    page.evaluate("""([a, c, s]) => { const f = document.getElementById('passkey-approve');
        f.elements['authenticator_data'].value = a; f.elements['client_data'].value = c;
        f.elements['signature'].value = s; f.submit(); }""",
                  [parts["authenticatorData"], parts["clientDataJSON"], parts["signature"]])
    page.wait_for_selector("#refusal")
    assert "passkey-challenge" in page.inner_text("#refusal")
    # Straight to the server's API, as the approver: the approval does not count.
    b = _grant_envelope(world, gid)
    forged = trust.add_passkey_signature(b, stolen.keyid, stolen.sig).to_bytes()
    answer = w.approvers[0][0].http.post(f"/grants/{gid}/signatures", json={"envelope": forged.decode()})
    assert answer.status_code == 400, answer.text
    assert _grant_envelope(world, gid).signatures == ()
    assert ok(w.tech.http.get(f"/grants/{gid}"))["status"] == "requested"
    r = _run(world, gid)  # the technician's CLI refuses an unapproved grant: no job is sent
    assert r.returncode != 0 and b"not approved" in r.stderr + r.stdout
    assert KEY_PASSPHRASE not in world.console.log.read_text(errors="replace")


def _new_passkey_console(world: World, config: str) -> tuple[PasskeyConsole, Page, CDPSession]:
    console = PasskeyConsole(world.w, config, _free_port())
    ctx = world.page.context.browser.new_context(viewport={"width": 1280, "height": 1000})  # type: ignore[union-attr]
    page = ctx.new_page()
    cdp = ctx.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True, "hasUserVerification": True,
        "isUserVerified": True, "automaticPresenceSimulation": True}})
    page.goto(console.url)
    page.wait_for_selector("table.tenants")
    return console, page, cdp


def _stored_job(w: SessionWorld, job_id: str) -> bytes:
    """The job envelope as the server stored it (its database)."""
    store = store_of(w.server.data_dir)
    try:
        with store.transaction() as s:
            return bytes(s.scalar(select(JobRow.envelope).where(JobRow.id == job_id)))
    finally:
        store.dispose()


def _receipt(w: SessionWorld, job_id: str, timeout: float = 90) -> dict[str, object]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        targets = ok(w.tech.http.get(f"/jobs/{job_id}"))["targets"]
        if targets and targets[0]["receipt"]:
            return dict(targets[0]["receipt"])
        time.sleep(0.3)
    raise TimeoutError(f"no receipt for {job_id}")


def test_a_job_signed_with_a_passkey_in_the_local_console_runs_on_a_real_agent(world: World) -> None:
    w = world.w
    carol = w.owner.create_account("carol", "technician", [w.tenant])
    cli_config(w, "cli-carol", carol, OperatorKey.generate(), w.root_env)  # her key file is in no root
    console, page, _ = _new_passkey_console(world, "cli-carol")
    try:
        origin = console.origin
        page.goto(f"{origin}/t/{w.tenant}/passkey")
        page.fill("#passkey-name", "carol-passkey")
        page.click("#passkey-create")
        page.wait_for_selector("#passkey-registered")
        keyid = page.inner_text("#passkey-keyid").strip()
        fingerprint = page.inner_text("#passkey-fingerprint").strip()
        assert [k["keyid"] for k in ok(carol.http.get("/keys"))] == [keyid]  # the server: its id only
        for bad in ("rampart-passkey-id:" + "A" * 64, "rampart-passkey-id:" + keyid[:63],
                    "rampart-passkey-id:"):
            r0 = carol.http.post("/keys", json={"public": bad, "tenant": w.tenant, "name": "x"})
            assert r0.status_code == 400, r0.text  # T13: only a key id (64 lowercase hex) is a claim
        assert len(ok(carol.http.get("/keys"))) == 1
        record = w.base / "cli-carol" / "passkeys" / f"{keyid}.json"
        for args in (("propose", "acme", "--add-passkey", str(record), "--passkey-role", "technician"),
                     ("sign", "acme", "--yes", "--add-key", keyid, "--role", "technician", "--fingerprint",
                      fingerprint, "--expires", "365d"),
                     ("publish", "acme")):
            r = w.cli("root", *args, config="cli-owner")
            assert r.returncode == 0, r.stderr
        grant = ok(carol.http.post(f"/tenants/{w.tenant}/grants", json={
            "devices": [world.device], "capabilities": ["script"], "duration_s": 3600,
            "reason": "carol's passkey job"}))
        gid = str(grant["id"])
        assert trust.decode_payload(trust.decode_envelope(grant["envelope"].encode()).payload,
                                    trust.Grant).grantee == keyid
        # The approver approves with the approver's passkey (in the approver's console).
        world.page.goto(f"{world.console.origin}/grants/{gid}")
        world.page.click("#approve-passkey")
        world.page.wait_for_selector("#approved")
        # Carol signs a script job with her passkey in her console.
        page.goto(f"{origin}/t/{w.tenant}/run?grant={gid}")
        page.fill("#script", f"#!/bin/sh\necho {MARK}-job\n")
        page.click("#run-passkey")
        page.wait_for_selector("#passkey-sign-job")
        job_id = page.inner_text("#job-id").strip()
        challenge = page.inner_text("#passkey-challenge").strip()
        shot = w.base / "local-console-passkey-sign-job.png"
        page.screenshot(path=str(shot), full_page=True)
        if os.environ.get("RAMPART_CONSOLE_SCREENSHOTS"):
            shutil.copy(shot, Path(os.environ["RAMPART_CONSOLE_SCREENSHOTS"]) / shot.name)
        page.click("#sign-job-passkey")
        page.wait_for_url(f"{origin}/jobs/{job_id}")
        assert ok(carol.http.get(f"/jobs/{job_id}"))["signer"] == keyid
        stored = trust.decode_envelope(_stored_job(w, job_id))
        assert trust.assertion_challenge(stored.signed_message()) == challenge
        assert [s.keyid for s in stored.signatures] == [keyid]
        receipt = _receipt(w, job_id)
        assert receipt["outcome"] == "ran", receipt
        assert f"{MARK}-job" in str(receipt["stdout"])
        # T1: job A's assertion carried to job B: the console refuses it, nothing is sent.
        page.goto(f"{origin}/t/{w.tenant}/run?grant={gid}")
        page.fill("#script", "#!/bin/sh\necho never\n")
        page.click("#run-passkey")
        page.wait_for_selector("#passkey-sign-job")
        job_b = page.inner_text("#job-id").strip()
        parts = json.loads(stored.signatures[0].sig)
        page.evaluate("""([a, c, s]) => { const f = document.getElementById('passkey-sign-job');
            f.elements['authenticator_data'].value = a; f.elements['client_data'].value = c;
            f.elements['signature'].value = s; f.submit(); }""",
                      [parts["authenticatorData"], parts["clientDataJSON"], parts["signature"]])
        page.wait_for_selector("#refusal")
        assert "passkey-challenge" in page.inner_text("#refusal")
        assert carol.http.get(f"/jobs/{job_b}").status_code == 404
    finally:
        page.context.close()
        console.stop()
