"""G2, C3: alerts leave Rampart by e-mail, webhook and syslog; a SIEM can pull every event.

End to end on a real server: a real SMTP server (aiosmtpd), a real HTTP
receiver and a real TCP syslog receiver on loopback. The records are parsed
back with the independent parsers of tests/test_notify.py (written from the
CEF specification and RFC 5424), and the webhook signature is verified as a
receiver would.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email import message_from_bytes
from email.policy import default as default_policy

import pytest
from aiosmtpd.controller import Controller
from harness.operators import bootstrap_owner, ok, setup_tenant
from harness.server import RunningServer, free_port
from test_notify import http_sink, parse_cef, parse_syslog, read_octet_frames

from rampart.server.notify import verify_signature

pytestmark = pytest.mark.store


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise TimeoutError(what)


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:  # noqa: N802
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),  # type: ignore[attr-defined]
                              envelope.content))  # type: ignore[attr-defined]
        return "250 OK"


@contextmanager
def smtp_server() -> Iterator[tuple[int, Mailbox]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, box
    finally:
        controller.stop()


@contextmanager
def syslog_receiver() -> Iterator[tuple[int, list[str]]]:
    records: list[str] = []
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    stop = threading.Event()

    def serve() -> None:
        lsock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except TimeoutError:
                continue
            buf = bytearray()
            conn.settimeout(0.2)
            with conn:
                while not stop.is_set():
                    try:
                        chunk = conn.recv(65536)
                    except TimeoutError:
                        continue
                    if not chunk:
                        break
                    buf += chunk
                    records.extend(f.decode() for f in read_octet_frames(buf))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield lsock.getsockname()[1], records
    finally:
        stop.set()
        thread.join(5)
        lsock.close()


def with_smtp(server: RunningServer, port: int) -> None:
    cfg_path = server.data_dir / "config.json"
    doc = json.loads(cfg_path.read_text())
    doc["smtp"] = {"host": "127.0.0.1", "port": port, "from": "rampart@msp.example",
                   "starttls": False}
    server.stop()
    cfg_path.write_text(json.dumps(doc))
    server.start()


def test_G2_an_alert_reaches_email_webhook_and_syslog(server: RunningServer) -> None:
    with smtp_server() as (smtp_port, mailbox), http_sink() as hook, \
            syslog_receiver() as (syslog_port, records):
        with_smtp(server, smtp_port)
        owner = bootstrap_owner(server)
        t = setup_tenant(owner, "Acme")
        email = ok(owner.http.post(f"/tenants/{t.id}/notify-targets", json={
            "kind": "email", "name": "on-call", "recipients": ["oncall@msp.example"]}))
        webhook = ok(owner.http.post(f"/tenants/{t.id}/notify-targets", json={
            "kind": "webhook", "name": "ticketing", "url": f"{hook.base}/rampart"}))
        secret = webhook.pop("secret")
        assert len(secret) == 64 and email["secret"] is None
        assert secret not in json.dumps(ok(owner.http.get(f"/tenants/{t.id}/notify-targets")))
        keyfile = server.data_dir / "keys" / f"notify-{webhook['id']}.secret"
        assert keyfile.stat().st_mode & 0o777 == 0o600
        ok(owner.http.post(f"/tenants/{t.id}/notify-targets", json={
            "kind": "syslog", "name": "siem", "host": "127.0.0.1", "port": syslog_port,
            "format": "syslog", "min_severity": "info"}))
        # A tech is revoked: an "account-disabled" alert (warning) opens.
        owner.create_account("leaver", "viewer", [t.id])
        ok(owner.http.post("/accounts/leaver/revoke", json={"reason": "left"}))

        wait_for(lambda: bool(mailbox.messages), "no alert e-mail")
        sender, rcpts, raw = mailbox.messages[0]
        msg = message_from_bytes(raw, policy=default_policy)
        assert (sender, rcpts) == ("rampart@msp.example", ["oncall@msp.example"])
        assert "leaver" in str(msg["Subject"]) and "Acme" in str(msg["Subject"])

        wait_for(lambda: bool(hook.received), "no webhook call")
        call = hook.received[0]
        headers = {k.lower(): v for k, v in call.headers.items()}
        assert verify_signature(secret.encode(), call.body,
                                timestamp=headers["x-rampart-timestamp"],
                                signature=headers["x-rampart-signature"], now=time.time())
        assert not verify_signature(b"x" * 32, call.body, timestamp=headers["x-rampart-timestamp"],
                                    signature=headers["x-rampart-signature"], now=time.time())
        doc = json.loads(call.body)
        assert doc["kind"] == "account-disabled" and doc["tenant"] == "Acme"

        # The forwarder streams the audit log and the alert, as RFC 5424.
        wait_for(lambda: any("account.revoked" in r for r in records)
                 and any("account-disabled" in r for r in records), "no forwarded event and alert")
        parsed = [parse_syslog(r) for r in records]
        kinds = {dict(p.sd.get("rampart@32473", [])).get("kind") for p in parsed}
        assert {"tenant.created", "root.published", "account.revoked", "account-disabled"} <= kinds

        targets = {x["name"]: x for x in ok(owner.http.get(f"/tenants/{t.id}/notify-targets"))}
        assert targets["on-call"]["delivered"] == 1 and targets["ticketing"]["delivered"] == 1


def test_G2_events_export_as_cef_and_a_test_message(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    t = setup_tenant(owner, "Acme")
    r = owner.http.get(f"/tenants/{t.id}/events", params={"format": "cef"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    lines = r.text.splitlines()
    entries = ok(owner.http.get(f"/tenants/{t.id}/audit/entries", params={"limit": 1000}))
    assert len(lines) == len(entries)
    header, ext = parse_cef(lines[0])
    assert header[:3] == ["CEF:0", "Rampart", "Rampart"] and header[4] == "audit:tenant.created"
    assert ext["cs2"] == t.id and ext["cs1"] == "Acme"
    jsonl = owner.http.get(f"/tenants/{t.id}/events", params={"format": "jsonl", "start": 1})
    assert [json.loads(x)["index"] for x in jsonl.text.splitlines()] == \
        [e["index"] for e in entries[1:]]
    # A test message to a receiver that is not there fails with a clear one-line reason.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    target = ok(owner.http.post(f"/tenants/{t.id}/notify-targets", json={
        "kind": "webhook", "name": "dead", "url": f"http://127.0.0.1:{dead}/x"}))
    res = ok(owner.http.post(f"/notify-targets/{target['id']}/test"))
    assert res["ok"] is False and "\n" not in res["detail"] and res["detail"]
    # Bad settings are refused before anything is stored.
    for bad in ({"kind": "webhook", "name": "x", "url": "http://example.org/hook"},
                {"kind": "email", "name": "x", "recipients": ["not an address"]},
                {"kind": "syslog", "name": "x", "host": "127.0.0.1"}):
        assert owner.http.post(f"/tenants/{t.id}/notify-targets", json=bad).status_code == 400
