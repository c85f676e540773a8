"""T1: an attacker who holds the server relays remote sessions: it can neither read, steer nor replay them.

The attacker sits on the agent's link with the server's own TLS identity (tests/harness/ws_mitm.py):
it sees every session frame both ways and injects, alters, reorders, replays or drops them. Each
attack ends the session, both ends record why, and the keystrokes it carried never reach the shell
(or reach it once only). It also replays a finished session job, changes a stored recording, and
a customer viewer of another tenant looks for sessions.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest
from harness.operators import ok
from harness.sessions import SessionWorld, open_shell, run, session_world
from harness.ws_mitm import Mitm, session_frames

from rampart import trust
from rampart.agent import gateways
from rampart.agent.state import AgentState
from rampart.server.config import load_config
from rampart.server.db import Store
from rampart.server.models import SessionRecording

# The relay, the recordings and tenancy live in the store: run again on PostgreSQL.
pytestmark = [pytest.mark.store,
              pytest.mark.skipif(os.geteuid() != 0,
                                 reason="sessions run as a dynamic uid: the agent must be root")]


@pytest.fixture(scope="module")
def world(pg_cluster: Any) -> Iterator[tuple[SessionWorld, Mitm]]:
    with session_world(pg_cluster, prefix="rampart-t1-relay-") as w:
        agent = w.enrol("main")
        mitm = Mitm(w.server.data_dir, f"wss://127.0.0.1:{w.server.agent_port}/agent/v1/ws",
                    w.server.cert_der)
        agent.stop()
        st = AgentState(agent.state)
        with st.transaction() as db:
            gateways.save(st, db, [mitm.url])  # the agent now reaches the server through the attacker
        st.close()
        agent.start()
        w.wait_connected(agent.device_id)
        try:
            yield w, mitm
        finally:
            mitm.close()


def _frames_of(mitm: Mitm, direction: str, job_id: str) -> list[dict[str, Any]]:
    out = []
    for d, text in mitm.seen:
        doc = session_frames(d, text) if d == direction else None
        if doc is not None and doc["job_id"] == job_id:
            out.append(doc)
    return out


def _attack(w: SessionWorld, mitm: Mitm, tamper: Any, marker: str, *,
            then: str = "") -> tuple[pexpect.spawn, str]:
    """Open a shell, arm ``tamper`` for the technician's frames of it, type a command that would create
    ``marker`` in the scratch directory, and wait for the session to end."""
    child, job_id = open_shell(w, w.grant(["shell"]), "--write", str(w.scratch))
    state: dict[str, Any] = {"n": 0, "held": None}

    def hook(direction: str, text: str) -> list[str]:
        doc = session_frames(direction, text)
        if direction != "down" or doc is None or doc["job_id"] != job_id:
            return [text]
        return tamper(text, doc, state)

    mitm.tamper = hook
    try:
        child.send(f"echo {marker} >> {w.scratch}/{marker}\r")
        time.sleep(0.5)
        if then:
            child.send(then)
        child.expect(pexpect.EOF, timeout=60)
    finally:
        mitm.tamper = lambda direction, text: [text]
    child.close()
    return child, job_id


def _ended(w: SessionWorld, child: pexpect.spawn, job_id: str, reason: str) -> None:
    """Both ends recorded ``reason``: the CLI's exit and local log, the device's signed receipt and log."""
    assert child.exitstatus == 255
    assert reason.encode() in child.before
    r = w.receipt_envelope(job_id)
    assert isinstance(r.session, trust.SessionSummary) and r.session.end == reason
    local = [json.loads(x) for x in (w.base / "cli-tech" / "sessions.log").read_text().splitlines()]
    assert any(e.get("session") == job_id and e.get("event") == "end" and e.get("end") == reason
               for e in local)
    device = [e for e in w.session_log() if e["session"] == job_id and e["event"] == "end"]
    assert device and device[0]["end"] == reason


def _flip(doc: dict[str, Any]) -> str:
    raw = bytearray(base64.b64decode(doc["data"]))
    raw[len(raw) // 2] ^= 0x01
    return json.dumps({**doc, "data": base64.b64encode(bytes(raw)).decode()}, separators=(",", ":"))


def test_T1_relay_altering_a_keystroke_frame_ends_the_session_and_nothing_runs(
        world: tuple[SessionWorld, Mitm]) -> None:
    w, mitm = world

    def alter(text: str, doc: dict[str, Any], state: dict[str, Any]) -> list[str]:
        return [_flip(doc)]

    child, job_id = _attack(w, mitm, alter, "altered")
    _ended(w, child, job_id, "frame-auth-failed")
    assert not (w.scratch / "altered").exists()


def test_T1_relay_injecting_a_frame_ends_the_session_and_nothing_runs(world: tuple[SessionWorld,
                                                                                   Mitm]) -> None:
    w, mitm = world

    def inject(text: str, doc: dict[str, Any], state: dict[str, Any]) -> list[str]:
        # Its own frame first (random bytes: it holds no key), then the technician's.
        fake = {**doc, "data": base64.b64encode(os.urandom(len(base64.b64decode(doc["data"])))).decode()}
        return [json.dumps(fake, separators=(",", ":")), text]

    child, job_id = _attack(w, mitm, inject, "injected")
    _ended(w, child, job_id, "frame-auth-failed")
    assert not (w.scratch / "injected").exists()


def test_T1_relay_replaying_a_keystroke_frame_runs_it_once_and_ends_the_session(
        world: tuple[SessionWorld, Mitm]) -> None:
    w, mitm = world

    def replay(text: str, doc: dict[str, Any], state: dict[str, Any]) -> list[str]:
        return [text, text]

    child, job_id = _attack(w, mitm, replay, "replayed")
    _ended(w, child, job_id, "frame-auth-failed")
    lines = (w.scratch / "replayed").read_text().splitlines() if (w.scratch / "replayed").exists() else []
    assert len(lines) <= 1  # the frame opened once; its copy did not


def test_T1_relay_reordering_frames_ends_the_session(world: tuple[SessionWorld, Mitm]) -> None:
    w, mitm = world

    def reorder(text: str, doc: dict[str, Any], state: dict[str, Any]) -> list[str]:
        if state["held"] is None:
            state["held"] = text
            return []
        held, state["held"] = state["held"], None
        return [text, held]

    child, job_id = _attack(w, mitm, reorder, "reordered", then="true\r")
    _ended(w, child, job_id, "frame-auth-failed")
    assert not (w.scratch / "reordered").exists()


def test_T1_relay_dropping_a_frame_ends_the_session_at_the_next_one(world: tuple[SessionWorld, Mitm]) -> None:
    w, mitm = world

    def drop(text: str, doc: dict[str, Any], state: dict[str, Any]) -> list[str]:
        state["n"] += 1
        return [] if state["n"] == 1 else [text]

    child, job_id = _attack(w, mitm, drop, "dropped", then="true\r")
    _ended(w, child, job_id, "frame-auth-failed")
    assert not (w.scratch / "dropped").exists()


def test_T1_relay_altering_the_devices_output_is_caught_by_the_technicians_cli(
        world: tuple[SessionWorld, Mitm]) -> None:
    w, mitm = world
    child, job_id = open_shell(w, w.grant(["shell"]))

    def hook(direction: str, text: str) -> list[str]:
        doc = session_frames(direction, text)
        if direction == "up" and doc is not None and doc["job_id"] == job_id:
            return [_flip(doc)]
        return [text]

    mitm.tamper = hook
    try:
        child.send("echo FORGED-OUTPUT-CHECK\r")
        child.expect(pexpect.EOF, timeout=60)
    finally:
        mitm.tamper = lambda direction, text: [text]
    child.close()
    assert child.exitstatus == 255 and b"frame-auth-failed" in child.before
    assert b"FORGED-OUTPUT-CHECK\r\nFORGED" not in child.before
    local = [json.loads(x) for x in (w.base / "cli-tech" / "sessions.log").read_text().splitlines()]
    assert any(e.get("session") == job_id and e.get("end") == "frame-auth-failed" for e in local)
    # The device learns the technician left (the relay cannot keep the session open for itself).
    r = w.receipt_envelope(job_id) if _has_receipt(w, job_id) else None
    if r is None:
        w.receipt(job_id, timeout=60)
        r = w.receipt_envelope(job_id)
    assert isinstance(r.session, trust.SessionSummary) and r.session.end in ("relay-lost",
                                                                             "frame-auth-failed")


def _has_receipt(w: SessionWorld, job_id: str) -> bool:
    return bool(w.job(job_id)["targets"][0]["receipt"])


def test_T1_a_replayed_session_job_opens_nothing(world: tuple[SessionWorld, Mitm]) -> None:
    w, mitm = world
    child, job_id = open_shell(w, w.grant(["shell"]))
    child.sendline("exit 0")
    child.expect(pexpect.EOF, timeout=30)
    child.close()
    w.receipt(job_id)
    job_msgs = [t for d, t in mitm.seen if d == "down" and '"type":"job"' in t and job_id in t]
    assert job_msgs
    before = len(mitm.seen)
    starts = len([e for e in w.session_log() if e["session"] == job_id and e["event"] == "start"])
    mitm.inject_to_agent(job_msgs[0])  # the attacker sends the finished session's job again
    time.sleep(3)
    after = mitm.seen[before:]
    assert not any(d == "up" and '"session-accept"' in t for d, t in after)
    assert len([e for e in w.session_log() if e["session"] == job_id and e["event"] == "start"]) == starts
    # The agent answers with the receipt it already signed, never a second session.
    assert any(d == "up" and '"type":"receipt"' in t and job_id in t for d, t in after)


def test_T1_a_recording_changed_on_the_server_is_refused_by_play_and_export(
        world: tuple[SessionWorld, Mitm], tmp_path: Path) -> None:
    w, _ = world
    child, job_id = open_shell(w, w.grant(["shell"]))
    run(child, "echo the-real-output")
    child.sendline("exit")
    child.expect(pexpect.EOF, timeout=30)
    child.close()
    w.wait_recording(job_id)
    store = Store(load_config(w.server.data_dir).db_url)
    try:
        with store.transaction() as s:
            rec = s.get(SessionRecording, job_id)
            assert rec is not None
            original = rec.data
            rec.data = original.replace(b"the-real-output", b"nothing-happened")
    finally:
        store.dispose()
    played = w.cli("sessions", "play", job_id, "--speed", "100")
    assert played.returncode != 0 and b"changed on the server" in played.stderr
    assert b"nothing-happened" not in played.stdout
    out = tmp_path / "rec.cast"
    exported = w.cli("sessions", "export", job_id, "--out", str(out))
    assert exported.returncode != 0 and not out.exists()
    # Restored, it plays again: the refusal was about the bytes, not the session.
    store = Store(load_config(w.server.data_dir).db_url)
    try:
        with store.transaction() as s:
            rec = s.get(SessionRecording, job_id)
            assert rec is not None
            rec.data = original
    finally:
        store.dispose()
    assert w.cli("sessions", "play", job_id, "--speed", "100").returncode == 0


def test_T12_a_customer_viewer_sees_its_own_tenants_sessions_and_nothing_of_another(
        world: tuple[SessionWorld, Mitm]) -> None:
    w, _ = world
    mine = w.owner.create_account("acme-customer", "customer-viewer", [w.tenant])
    other_tenant = ok(w.owner.http.post("/tenants", json={"name": "globex"}))
    theirs = w.owner.create_account("globex-customer", "customer-viewer", [other_tenant["id"]])
    child, job_id = open_shell(w, w.grant(["shell"]))  # a session of acme's, whatever ran before
    child.sendline("exit")
    child.expect(pexpect.EOF, timeout=30)
    child.close()
    sessions = w.sessions()
    assert job_id in [s["id"] for s in sessions]
    seen = ok(mine.http.get(f"/tenants/{w.tenant}/sessions"))
    assert [s["id"] for s in seen] == [s["id"] for s in sessions]
    assert ok(mine.http.get(f"/sessions/{job_id}"))["id"] == job_id
    for path in (f"/tenants/{w.tenant}/sessions", f"/sessions/{job_id}", f"/sessions/{job_id}/recording"):
        r = theirs.http.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert job_id not in r.text
    assert ok(theirs.http.get(f"/tenants/{other_tenant['id']}/sessions")) == []
