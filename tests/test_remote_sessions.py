"""Remote support sessions end to end: a real server, a real agent, the technician's real CLI in a pty.

`rampart shell` through the relay (commands, resize, Ctrl-C, exit status, several sessions at once),
`rampart cp` both ways, the device's recording checked by `rampart sessions play`, a watcher,
revocation and consent. The attacks on the relay are in tests/test_T1_session_relay.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest
from harness.operators import audit_events, step_up
from harness.sessions import PROMPT, SessionWorld, open_shell, run, session_world, spawn

from rampart import trust

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="sessions run as a dynamic uid: the agent must be root")

@pytest.fixture(scope="module")
def world(pg_cluster: Any) -> Iterator[SessionWorld]:
    with session_world(pg_cluster) as w:
        w.enrol("main", "--allow-root")
        yield w


def test_interactive_shell_runs_commands_resizes_interrupts_and_returns_the_exit_status(
        world: SessionWorld) -> None:
    grant = world.grant(["shell"])
    child, job_id = open_shell(world, grant)
    # A real shell on the device, as the session's own unprivileged uid, in its scratch directory.
    uid = int(run(child, "id -u").strip().splitlines()[-1])
    assert 61184 <= uid <= 65519
    assert run(child, "echo $((6*7))-$RAMPART_SESSION").strip().endswith(f"42-{job_id}")
    assert run(child, "tty").strip().startswith("/dev/pts/")
    # Window resize reaches the device's pty.
    child.setwinsize(40, 132)
    time.sleep(0.5)
    assert run(child, "stty size").strip().splitlines()[-1] == "40 132"
    # Ctrl-C interrupts the running program, not the session.
    child.sendline("sleep 30 && echo NOT-''INTERRUPTED")
    time.sleep(1.0)
    began = time.monotonic()
    child.sendcontrol("c")
    child.expect_exact(PROMPT, timeout=10)
    assert time.monotonic() - began < 10
    assert b"NOT-INTERRUPTED" not in child.before and b"^C" in child.before
    # The exit status of the shell is the CLI's.
    child.sendline("exit 7")
    child.expect(pexpect.EOF, timeout=30)
    child.close()
    assert child.exitstatus == 7
    r = world.receipt_envelope(job_id)
    assert r.outcome == "ran" and r.exit_code == 7
    assert isinstance(r.session, trust.SessionSummary) and r.session.end == "exit"
    assert r.containment is not None and r.containment.uid == uid
    assert r.session.bytes_in > 0 and r.session.bytes_out > 0
    # The local session log tells the device's people who came and went.
    events = [e for e in world.session_log() if e["session"] == job_id]
    assert [e["event"] for e in events] == ["start", "end"]
    assert events[0]["technician_key"] == world.tech_key.key_id and events[1]["end"] == "exit"


def test_two_sessions_at_once_each_confined_to_its_own_uid_scratch_and_declared_paths(
        world: SessionWorld) -> None:
    grant = world.grant(["shell"])
    a, job_a = open_shell(world, grant, "--write", str(world.scratch))
    b, job_b = open_shell(world, grant)
    uid_a = run(a, "id -u").strip().splitlines()[-1]
    uid_b = run(b, "id -u").strip().splitlines()[-1]
    assert uid_a != uid_b  # each session is its own dynamic user
    # The declared path is writable; elsewhere (system trees, /tmp, the agent's state) is not.
    assert "ok-a" in run(a, f"echo ok-a > {world.scratch}/from-a && cat {world.scratch}/from-a")
    assert "Permission denied" in run(b, f"echo x > {world.scratch}/from-b")
    assert not (world.scratch / "from-b").exists()
    for child in (a, b):
        assert "Permission denied" in run(child, "echo x > /etc/rampart-session-pwned")
        assert "Permission denied" in run(child, "echo x > /tmp/rampart-session-pwned")
        out = run(child, f"cat {world.main.state}/* 2>&1 | head -3; ls {world.main.state} 2>&1 | head -3")
        assert "Permission denied" in out
    assert not Path("/etc/rampart-session-pwned").exists() and not Path("/tmp/rampart-session-pwned").exists()
    # A background process the shell leaves behind (setsid, nohup) does not outlive the session.
    run(a, "(setsid sh -c 'sleep 300' </dev/null >/dev/null 2>&1 &); (nohup sleep 301 >/dev/null 2>&1 &)")
    for child in (a, b):
        child.sendline("exit")
        child.expect(pexpect.EOF, timeout=30)
        child.close()
    ra, rb = world.receipt_envelope(job_a), world.receipt_envelope(job_b)
    assert ra.containment is not None and ra.containment.killed >= 2
    assert rb.containment is not None and ra.containment.reaper in ("cgroup", "uid")
    left = _processes_of_uid(int(uid_a))
    assert not left, [Path(f"/proc/{p}/cmdline").read_bytes() for p in left]


def _processes_of_uid(uid: int) -> list[int]:
    """Live processes of ``uid`` (a killed orphan may stay a zombie until this host's init reaps it)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid != uid:
                    continue
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                out.append(int(entry))
    return out


def test_cp_uploads_and_downloads_with_sha256_checked_and_only_where_the_session_may_write(
        world: SessionWorld, tmp_path: Path) -> None:
    grant = world.grant(["shell"])
    payload = os.urandom(700_000)  # several file chunks
    local = tmp_path / "tool.bin"
    local.write_bytes(payload)
    dest = world.scratch / "uploaded.bin"
    r = world.cli("cp", "acme", str(local), f"{world.main.device_id}:{dest}", "--grant", grant, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["sha256"] == hashlib.sha256(payload).hexdigest() and doc["bytes"] == len(payload)
    assert dest.read_bytes() == payload
    assert dest.stat().st_uid != 0  # written as the session's own user, not as the agent
    # And back again.
    back = tmp_path / "back.bin"
    r = world.cli("cp", "acme", f"{world.main.device_id}:{dest}", str(back), "--grant", grant)
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == payload
    # Outside the device's write roots: the device refuses the session job itself, nothing written.
    r = world.cli("cp", "acme", str(local), f"{world.main.device_id}:/etc/rampart-cp-pwned", "--grant", grant)
    assert r.returncode != 0 and b"device refused" in r.stderr
    assert b"outside the device's allowed write" in r.stderr
    assert not Path("/etc/rampart-cp-pwned").exists()
    # Inside a declared path, but not the one the session job declared: refused by the device's session.
    r = world.cli("cp", "acme", str(local), f"{world.main.device_id}:{world.scratch}/../outside.bin",
                  "--grant", grant)
    assert r.returncode != 0
    assert not (world.scratch.parent / "outside.bin").exists()
    # A file the session's user cannot read is not sent.
    secret = world.scratch / "root-only"
    secret.write_bytes(b"secret")
    secret.chmod(0o600)
    r = world.cli("cp", "acme", f"{world.main.device_id}:{secret}", str(tmp_path / "x"), "--grant", grant)
    assert r.returncode != 0 and b"cannot read" in r.stderr
    assert not (tmp_path / "x").exists()


def test_the_device_recording_is_listed_verified_and_played_with_its_output(world: SessionWorld) -> None:
    grant = world.grant(["shell"])
    child, job_id = open_shell(world, grant)
    run(child, "echo RECORDED-$((40+2))")
    child.sendline("exit")
    child.expect(pexpect.EOF, timeout=30)
    child.close()
    doc = world.wait_recording(job_id)
    r = world.receipt_envelope(job_id)
    assert isinstance(r.session, trust.SessionSummary)
    assert doc["recording"]["sha256"] == r.session.recording_sha256
    listed = json.loads(world.cli("sessions", "list", "acme", "--json").stdout)
    assert job_id in [s["id"] for s in listed]
    shown = json.loads(world.cli("sessions", "show", job_id, "--json").stdout)
    assert shown["verified"] is True and shown["end"] == "exit"
    assert shown["recording_sha256"] == r.session.recording_sha256
    played = world.cli("sessions", "play", job_id, "--speed", "100")
    assert played.returncode == 0, played.stderr
    assert b"RECORDED-42" in played.stdout and b"verified" in played.stderr
    # The audit log holds the digest.
    events = audit_events(world.owner, world.tenant)
    digests = [e["details"].get("sha256") for e in events if e.get("kind") == "session.recording"]
    assert r.session.recording_sha256 in digests


def test_a_second_technician_watches_read_only_and_the_technician_is_told(world: SessionWorld) -> None:
    grant = world.grant(["shell"])
    child, job_id = open_shell(world, grant)
    watch_grant = _grant_for(world, "tech2")
    watcher = spawn(world, "sessions", "watch", "acme", job_id, "--grant", watch_grant, config="cli-tech2")
    watcher.expect("watching")
    child.expect("is watching this session", timeout=30)
    run(child, "echo SEEN-BY-$((1+1))")
    watcher.expect("SEEN-BY-2", timeout=30)
    watcher.send("echo typed-by-watcher\r")  # a watcher is read-only: nothing it types reaches the shell
    time.sleep(1)
    assert "typed-by-watcher" not in run(child, "history | tail -3")
    child.sendline("exit")
    child.expect(pexpect.EOF, timeout=30)
    watcher.expect(pexpect.EOF, timeout=30)
    log = [e for e in world.session_log() if e["session"] == job_id]
    assert "watch-start" in [e["event"] for e in log]


def _grant_for(world: SessionWorld, who: str) -> str:
    """A shell grant for the second technician's key (two approvers)."""
    from harness.operators import ok, step_up

    op = world.tech2  # type: ignore[attr-defined]
    doc = ok(op.http.post(f"/tenants/{world.tenant}/grants", json={
        "devices": [world.main.device_id], "capabilities": ["shell"], "duration_s": 3600,
        "reason": f"{who} watches"}))
    got: dict[str, Any] = {}
    for approver, key in world.approvers:
        current = ok(approver.http.get(f"/grants/{doc['id']}"))["envelope"]
        signed = trust.add_signature(trust.decode_envelope(current.encode()), key)
        step_up(approver)
        got = ok(approver.http.post(f"/grants/{doc['id']}/signatures",
                                    json={"envelope": signed.to_bytes().decode()}))
    assert got["status"] == "approved"
    return str(doc["id"])


def test_revoking_the_grant_ends_a_live_session_within_seconds(world: SessionWorld) -> None:
    grant = world.grant(["shell"], duration_s=1800)
    child, job_id = open_shell(world, grant)
    run(child, "echo before")
    step_up(world.approvers[0][0])  # the approver's fresh TOTP code (may wait for the next code)
    began = time.monotonic()
    world.revoke(grant, stepped_up=True)
    child.expect(pexpect.EOF, timeout=30)
    elapsed = time.monotonic() - began
    child.close()
    assert child.exitstatus == 255
    assert b"grant-revoked" in child.before
    assert elapsed < 15, world.main.log_text()[-2500:]
    r = world.receipt_envelope(job_id)
    assert isinstance(r.session, trust.SessionSummary) and r.session.end == "grant-revoked"
    # And the revoked grant opens nothing any more: the device refuses the job.
    again = spawn(world, "shell", "acme", world.main.device_id, "--grant", grant)
    again.expect(pexpect.EOF, timeout=60)
    again.close()
    assert again.exitstatus != 0


def test_a_clear_error_for_an_offline_device_or_a_grant_without_shell(world: SessionWorld) -> None:
    script_only = world.grant(["script"])
    r = world.cli("shell", "acme", world.main.device_id, "--grant", script_only)
    assert r.returncode != 0 and b"does not give shell" in r.stderr
    world.main.stop()
    try:
        deadline = time.time() + 30
        r = world.cli("shell", "acme", world.main.device_id, "--grant", world.grant(["shell"]))
        while b"offline" not in r.stderr and time.time() < deadline:
            time.sleep(0.5)
            r = world.cli("shell", "acme", world.main.device_id, "--grant", world.grant(["shell"]))
        assert r.returncode != 0 and b"offline" in r.stderr
    finally:
        world.main.start()
        world.wait_connected(world.main.device_id)


def _consent_agent(world: SessionWorld) -> str:
    if "consent" not in world.agents:
        world.enrol("consent", "--require-consent", "--consent-timeout", "20")
    return world.agents["consent"].device_id


def _waiting_for_consent(world: SessionWorld) -> tuple[pexpect.spawn, str]:
    """A shell opened on the consent device, now waiting for a local user's answer."""
    device = _consent_agent(world)
    child = spawn(world, "shell", "acme", device, "--grant", world.grant(["shell"], agent="consent"))
    child.expect(r"session (job-[0-9a-z]+) open")
    job_id = child.match.group(1).decode()
    child.expect("waiting for a local user to accept", timeout=30)
    return child, job_id


def _answer(job_id: str, answer: str) -> subprocess.CompletedProcess[str]:
    """A local user at the device answers (here root, a local account)."""
    return subprocess.run([sys.executable, "-m", "rampart.agent", "consent", answer, job_id],
                          capture_output=True, text=True, timeout=30)


def test_a_device_that_requires_consent_opens_nothing_until_a_local_user_accepts(world: SessionWorld) -> None:
    child, job_id = _waiting_for_consent(world)
    assert not [e for e in world.session_log("consent") if e["session"] == job_id and e["event"] == "start"]
    r = _answer(job_id, "accept")
    assert r.returncode == 0, r.stderr
    child.expect("accepted the session", timeout=30)
    child.sendline("echo CONSENTED-$((3*3))")
    child.expect("CONSENTED-9", timeout=30)
    child.sendline("exit")
    child.expect(pexpect.EOF, timeout=30)
    receipt = world.receipt_envelope(job_id)
    assert isinstance(receipt.session, trust.SessionSummary) and receipt.session.consent == "accepted"
    events = [e["event"] for e in world.session_log("consent") if e["session"] == job_id]
    assert events[:2] == ["consent", "start"]


def test_consent_refused_by_the_local_user_ends_the_session_before_any_shell_runs(
        world: SessionWorld) -> None:
    child, job_id = _waiting_for_consent(world)
    assert _answer(job_id, "refuse").returncode == 0
    child.expect(pexpect.EOF, timeout=30)
    child.close()
    assert child.exitstatus == 255 and b"consent-refused" in child.before
    receipt = world.receipt_envelope(job_id)
    assert receipt.outcome == "refused" and receipt.containment is None  # no process was started
    assert isinstance(receipt.session, trust.SessionSummary) and receipt.session.consent == "refused"
    events = [e["event"] for e in world.session_log("consent") if e["session"] == job_id]
    assert "start" not in events and events[0] == "consent"


def test_a_session_ends_at_its_signed_time_limit_and_everything_in_it_is_killed(world: SessionWorld) -> None:
    grant = world.grant(["shell"])
    child, job_id = open_shell(world, grant, "--max-duration", "6s")
    uid = int(run(child, "id -u").strip().splitlines()[-1])
    child.sendline("sleep 120")
    child.expect(pexpect.EOF, timeout=30)
    child.close()
    assert child.exitstatus == 255 and b"max-duration" in child.before
    r = world.receipt_envelope(job_id)
    assert isinstance(r.session, trust.SessionSummary) and r.session.end == "max-duration"
    assert not _processes_of_uid(uid)


def test_a_root_session_with_keystrokes_recorded_and_its_verified_export(
        world: SessionWorld, tmp_path: Path) -> None:
    grant = world.grant(["shell", "root"])  # root too: two approvers, a device enrolled --allow-root
    child, job_id = open_shell(world, grant, "--as-root", "--record-input")
    assert run(child, "id -u").strip().splitlines()[-1] == "0"
    run(child, "echo typed-$((2+3))")
    child.sendline("exit")
    child.expect(pexpect.EOF, timeout=30)
    child.close()
    r = world.receipt_envelope(job_id)
    assert isinstance(r.session, trust.SessionSummary) and r.session.input_recorded
    assert r.containment is not None and r.containment.uid == 0
    world.wait_recording(job_id)
    out = tmp_path / "session.cast"
    done = world.cli("sessions", "export", job_id, "--out", str(out))
    assert done.returncode == 0, done.stderr
    data = out.read_bytes()
    assert hashlib.sha256(data).hexdigest() == r.session.recording_sha256
    events = [json.loads(x) for x in data.decode().splitlines()[1:]]
    typed = "".join(e[2] for e in events if e[1] == "i")
    assert "echo typed-$((2+3))" in typed  # keystrokes, as typed
    assert any("typed-5" in e[2] for e in events if e[1] == "o")
    evidence = json.loads(Path(f"{out}.evidence.json").read_text())
    assert evidence["recording_sha256"] == r.session.recording_sha256
    # Without root in the grant, --as-root is refused before anything is signed.
    refused = world.cli("shell", "acme", world.main.device_id, "--grant", world.grant(["shell"]), "--as-root")
    assert refused.returncode != 0 and b"does not give root" in refused.stderr


def test_an_idle_session_ends_at_its_idle_timeout(world: SessionWorld) -> None:
    child, job_id = open_shell(world, world.grant(["shell"]), "--idle-timeout", "10s")
    began = time.monotonic()
    child.expect(pexpect.EOF, timeout=40)
    child.close()
    assert 9 <= time.monotonic() - began < 30
    assert child.exitstatus == 255 and b"idle-timeout" in child.before
    r = world.receipt_envelope(job_id)
    assert isinstance(r.session, trust.SessionSummary) and r.session.end == "idle-timeout"
