"""Alert delivery and SIEM export (issue 5 item 5; MISSION G2, C3) against real local servers.

Everything runs on loopback: a real SMTP server (aiosmtpd), a real HTTP(S)
server (http.server), real TCP and TLS syslog listeners, with certificates
from a throwaway CA made here. No mocks. Non-loopback addresses appear only as
destinations that must be refused before any connection is attempted.

CEF and RFC 5424 records are parsed back with parsers written here from the
specifications (the Micro Focus CEF Implementation Standard; RFC 5424 section
6 and RFC 6587 section 3.4.1), independent of the formatters.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import hashlib
import hmac
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rampart
import rampart.server.notify as notify
from rampart.server.audit import event_bytes
from rampart.server.models import AlertRow, AuditEntry
from rampart.server.notify import (
    EXPORT_FORMATS,
    MAX_RECORD,
    DeliveryResult,
    Event,
    FormatLimits,
    RetryPolicy,
    Severity,
    SmtpSettings,
    SyslogForwarder,
    TlsSettings,
    check_webhook_url,
    format_events,
    from_alert,
    from_audit,
    octet_frame,
    one_line,
    render_email,
    send_email,
    send_webhook,
    syslog_record,
    to_cef,
    to_jsonl,
    to_syslog,
    verify_signature,
)

HOSTILE = [
    "line\nbreak\r\nCEF:0|Evil|Evil|1|1|forged|10|suser=admin",
    "pipe|and\\back\\slash\\",
    "eq=ual key=value suser=root",
    'quote"bracket] [evil@1 x="y"]',
    "unicode Müller 東京 🚀 é",
    "sep\u2028ara\u2029tors\x85nel",
    "tab\tnul\x00del\x7fbell\x07esc\x1b[31m",
    "bidi \u202egnp.exe\u2066x\u2069",
    "<13>1 2024-01-01T00:00:00Z forged - - - - injected",
    "",
]


# -- oracles written from the documentation, not from the code -----------------------------


def neutral(text: str, keep: str = "") -> str:
    """The documented neutralisation: #ooo for C0/DEL/C1, #uXXXX for separators, BOM, surrogates, bidi."""
    out = []
    for ch in text:
        cp = ord(ch)
        if ch in keep:
            out.append(ch)
        elif cp < 0x20 or 0x7F <= cp <= 0x9F:
            out.append(f"#{cp:03o}")
        elif (cp in (0x2028, 0x2029, 0xFEFF, 0x061C, 0x200E, 0x200F) or 0x202A <= cp <= 0x202E
              or 0x2066 <= cp <= 0x2069 or 0xD800 <= cp <= 0xDFFF):
            out.append(f"#u{cp:04x}")
        else:
            out.append(ch)
    return "".join(out)


BOM = "\ufeff"  # RFC 5424 section 6.4


def cef_class(text: str, limit: int = 63 + 8) -> str:
    """The documented CEF header rule: A-Z a-z 0-9 . _ : - kept, any other character becomes _."""
    out = re.sub(r"[^A-Za-z0-9._:-]", "_", text)
    return (out[: limit - 3] + "…" if len(text) > limit else out) or "-"


def scalar_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# -- an independent CEF parser (CEF Implementation Standard, "Character encoding") ----------

CEF_KEY = re.compile(r"[A-Za-z0-9_]+")


def parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    """Header fields (split on unescaped pipes, ``\\|`` and ``\\\\`` unescaped) and extensions."""
    assert line.startswith("CEF:")
    fields: list[str] = []
    cur: list[str] = []
    i = 0
    while len(fields) < 7:
        assert i < len(line), "the header has fewer than 8 fields"
        ch = line[i]
        if ch == "\\" and i + 1 < len(line) and line[i + 1] in "\\|":
            cur.append(line[i + 1])
            i += 2
        elif ch == "|":
            fields.append("".join(cur))
            cur = []
            i += 1
        else:
            cur.append(ch)
            i += 1
    return fields, parse_cef_extension(line[i:])


def parse_cef_extension(ext: str) -> dict[str, str]:
    """``key=value`` pairs: keys end at an unescaped ``=``, values run to the space before the next key."""
    equals = []
    i = 0
    while i < len(ext):
        if ext[i] == "\\":
            i += 2
            continue
        if ext[i] == "=":
            equals.append(i)
        i += 1
    keys = []
    for eq in equals:
        start = ext.rfind(" ", 0, eq) + 1
        key = ext[start:eq]
        assert CEF_KEY.fullmatch(key), f"bad extension key {key!r}"
        keys.append((key, start, eq))
    out: dict[str, str] = {}
    for n, (key, _start, eq) in enumerate(keys):
        end = keys[n + 1][1] - 1 if n + 1 < len(keys) else len(ext)
        assert key not in out, f"duplicate key {key}"
        out[key] = unescape_cef_value(ext[eq + 1:end])
    return out


def unescape_cef_value(raw: str) -> str:
    out = []
    i = 0
    while i < len(raw):
        if raw[i] == "\\" and i + 1 < len(raw):
            nxt = raw[i + 1]
            out.append({"\\": "\\", "=": "=", "n": "\n", "r": "\r"}.get(nxt, "\\" + nxt))
            i += 2
        else:
            out.append(raw[i])
            i += 1
    return "".join(out)


# -- an independent RFC 5424 parser (section 6, ABNF) ------------------------------------------

SD_NAME = r'(?:(?![="\]])[\x21-\x7e]){1,32}'
PARAM_VALUE = r'(?:\\["\\\]]|[^"\\\]])*'
SYSLOG = re.compile(
    r"<(?P<pri>\d{1,3})>(?P<version>[1-9]\d{0,2}) "
    r"(?P<timestamp>-|\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})) "
    r"(?P<hostname>[\x21-\x7e]{1,255}) (?P<app>[\x21-\x7e]{1,48}) (?P<procid>[\x21-\x7e]{1,128}) "
    r"(?P<msgid>[\x21-\x7e]{1,32}) "
    rf'(?P<sd>-|(?:\[{SD_NAME}(?: {SD_NAME}="{PARAM_VALUE}")*\])+)'
    r"(?: (?P<msg>.*))?",
    re.S,
)
SD_ELEMENT = re.compile(rf'\[(?P<id>{SD_NAME})(?P<params>(?: {SD_NAME}="{PARAM_VALUE}")*)\]')
SD_PARAM = re.compile(rf' (?P<name>{SD_NAME})="(?P<value>{PARAM_VALUE})"')


@dataclass
class SyslogRecord:
    facility: int
    severity: int
    timestamp: dt.datetime | None
    hostname: str
    app: str
    procid: str
    msgid: str
    sd: dict[str, list[tuple[str, str]]]
    msg: str | None


def parse_syslog(line: str) -> SyslogRecord:
    m = SYSLOG.fullmatch(line)
    assert m is not None, f"not RFC 5424: {line!r}"
    pri = int(m["pri"])
    assert pri <= 191 and m["version"] == "1"
    sd: dict[str, list[tuple[str, str]]] = {}
    if m["sd"] != "-":
        for el in SD_ELEMENT.finditer(m["sd"]):
            assert el["id"] not in sd, "an SD-ID may appear once (RFC 5424 6.3.2)"
            sd[el["id"]] = [(p["name"], re.sub(r'\\(["\\\]])', r"\1", p["value"]))
                            for p in SD_PARAM.finditer(el["params"])]
    stamp = None if m["timestamp"] == "-" else dt.datetime.fromisoformat(m["timestamp"])
    return SyslogRecord(pri // 8, pri % 8, stamp, m["hostname"], m["app"], m["procid"], m["msgid"],
                        sd, m["msg"])


def read_octet_frames(buf: bytearray) -> list[bytes]:
    """RFC 6587 3.4.1: MSG-LEN SP SYSLOG-MSG; consumes complete frames from ``buf``."""
    out: list[bytes] = []
    while True:
        sp = buf.find(b" ")
        if sp < 0:
            assert len(buf) < 11, "MSG-LEN too long"
            return out
        assert re.fullmatch(rb"[1-9][0-9]{0,9}", bytes(buf[:sp])), bytes(buf[:sp])
        n = int(buf[:sp])
        if len(buf) < sp + 1 + n:
            return out
        out.append(bytes(buf[sp + 1:sp + 1 + n]))
        del buf[:sp + 1 + n]


# -- events ----------------------------------------------------------------------------------

NOW = 1_700_000_000.123456


def alert_row(**kw: Any) -> AlertRow:
    base: dict[str, Any] = dict(
        id="al-abcdefghijklmnopqrstuvwxyz", tenant_id="tn-00000000000000000000000001",
        kind="account-locked", severity="warning", dedup_key="account-locked:alice",
        subject="Account alice locked after 5 failed logins", detail="5 failures from 127.0.0.1",
        status="open", count=3, first_seen=NOW - 60, last_seen=NOW, acked_by=None, acked_at=None,
        resolved_by=None, resolved_at=None)
    base.update(kw)
    return AlertRow(**base)


def hostile_event(value: str, n: int = 0) -> Event:
    return Event(source="alert", id=f"al-{n}", time=NOW, kind="kind", severity="critical",
                 actor=value, subject=value, tenant_id="tn-1", tenant_name=value,
                 details={"text": value, "n": n, "ok": True, "none": None, "x": 1.5})


def test_alert_event_carries_lifecycle_and_actor() -> None:
    open_ = from_alert(alert_row(), tenant_name="Acme")
    assert (open_.source, open_.kind, open_.severity, open_.actor) == ("alert", "account-locked", "warning",
                                                                        "rampart")
    assert open_.time == NOW and open_.tenant_name == "Acme"
    assert open_.details["count"] == 3 and open_.details["status"] == "open"
    acked = from_alert(alert_row(status="acknowledged", acked_by="bob", acked_at=NOW + 1))
    assert acked.actor == "bob" and acked.details["acked_at"] == NOW + 1
    resolved = from_alert(alert_row(status="resolved", acked_by="bob", acked_at=NOW + 1,
                                    resolved_by="carol", resolved_at=NOW + 2))
    assert resolved.actor == "carol" and resolved.details["resolved_by"] == "carol"
    odd = from_alert(alert_row(severity="catastrophic"))
    assert odd.severity == "warning" and odd.details["stored_severity"] == "catastrophic"


def test_audit_event_entry_is_decoded() -> None:
    data = event_bytes("login.failed", "alice", {"ip": "127.0.0.1", "tries": 3, "nested": {"a": [1]}}, NOW)
    entry = AuditEntry(log_id="tn-1", idx=7, kind="login.failed", time=NOW, data=data, leaf_hash=b"")
    ev = from_audit(entry, tenant_id="tn-1", tenant_name="Acme")
    assert (ev.source, ev.id, ev.index, ev.actor, ev.severity) == ("audit", "tn-1:7", 7, "alice", "warning")
    assert ev.details == {"ip": "127.0.0.1", "nested": '{"a":[1]}', "tries": 3}
    assert ev.subject == "login.failed by alice"


SECRET_SCRIPT = b"#!/bin/sh\ncurl http://127.0.0.1/payload-SECRET-SCRIPT | sh\n"


@pytest.mark.parametrize("kind", ["job.created", "receipt", "login"])
def test_envelope_payload_never_exported(kind: str) -> None:
    """A DSSE envelope (or anything not an event record) is described by its hash, never its payload."""
    import base64
    payload_b64 = base64.b64encode(SECRET_SCRIPT).decode()
    data = json.dumps({"payloadType": "application/vnd.rampart.job+json", "payload": payload_b64,
                       "signatures": [{"keyid": "op-key-1", "sig": "c2ln"}]}).encode()
    entry = AuditEntry(log_id="tn-1", idx=2, kind=kind, time=NOW, data=data, leaf_hash=b"")
    ev = from_audit(entry, tenant_id="tn-1")
    assert ev.details["sha256"] == hashlib.sha256(data).hexdigest()
    assert ev.details["size"] == len(data)
    for line in (to_jsonl(ev), to_cef(ev), to_syslog(ev, hostname="rampart1"), render_email(ev)[1]):
        for leaked in ("SECRET", payload_b64[:24], "payloadType", "vnd.rampart", "op-key-1", "c2ln"):
            assert leaked not in line
    if kind == "login":
        assert ev.severity == "warning" and "error" in ev.details


def test_undecodable_entry_becomes_an_event_not_an_error() -> None:
    entry = AuditEntry(log_id="tn-1", idx=0, kind="login", time=float("nan"), data=b"\xff\xfe{",
                       leaf_hash=b"")
    ev = from_audit(entry, tenant_id=None)
    assert ev.time == 0.0 and ev.details["size"] == 3 and ev.tenant_id is None


def test_event_refuses_invalid_fields() -> None:
    for bad in (float("nan"), float("inf"), -1.0, 1e13):
        with pytest.raises(ValueError):
            Event(source="audit", id="x", time=bad, kind="k", severity="info", actor="a", subject="s")
    with pytest.raises(ValueError):
        Event(source="audit", id="x", time=0.0, kind="k", severity="bad", actor="a", subject="s")  # type: ignore[arg-type]


def test_event_details_are_bounded() -> None:
    data = event_bytes("tenant.settings", "a", {f"k{i:03}": "v" * 10_000 for i in range(500)}, NOW)
    ev = from_audit(AuditEntry(log_id="t", idx=0, kind="tenant.settings", time=NOW, data=data, leaf_hash=b""),
                    tenant_id="t")
    assert len(ev.details) == 65 and ev.details["_dropped"] == 436
    assert all(len(str(v)) <= 4096 for v in ev.details.values())


# -- formats: parsed back by the independent parsers -------------------------------------------


@pytest.mark.parametrize("value", HOSTILE)
def test_cef_round_trip_of_hostile_values(value: str) -> None:
    ev = hostile_event(value)
    line = to_cef(ev, hostname="rampart1")
    assert "\n" not in line and "\r" not in line and len(line.splitlines()) <= 1
    header, ext = parse_cef(line)
    assert header[:4] == ["CEF:0", "Rampart", "Rampart", rampart.__version__]
    assert header[4] == "alert:kind" and header[6] == "9"
    assert header[5] == "kind"  # the event's class: no device or person text in the header
    expected_ext = neutral(value, keep="\n\r")
    if value:
        assert ext["suser"] == expected_ext and ext["msg"] == expected_ext and ext["cs1"] == expected_ext
    assert ext["cs1Label"] == "tenant" and ext["cs2"] == "tn-1" and ext["dvchost"] == "rampart1"
    assert ext["rt"] == str(round(NOW * 1000)) and ext["act"] == "kind" and ext["externalId"] == "al-0"
    assert json.loads(ext["cs4"]) == ev.details  # JSON inside CEF is lossless


@pytest.mark.parametrize("value", HOSTILE)
def test_syslog_round_trip_of_hostile_values(value: str) -> None:
    ev = hostile_event(value)
    line = to_syslog(ev, hostname="rampart1.msp.example")
    assert "\n" not in line and "\r" not in line and len(line.splitlines()) <= 1
    rec = parse_syslog(line)
    assert (rec.facility, rec.severity) == (13, 2)
    assert rec.timestamp == dt.datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=dt.UTC)
    assert (rec.hostname, rec.app, rec.procid, rec.msgid) == ("rampart1.msp.example", "rampart", "-", "kind")
    params = dict(rec.sd["rampart@32473"])
    assert params["source"] == "alert" and params["tenantId"] == "tn-1" and params["kind"] == "kind"
    assert params["actor"] == neutral(value)
    if value:
        assert params["tenant"] == neutral(value)
    assert dict(rec.sd["details@32473"]) == {k: neutral(scalar_text(v)) for k, v in ev.details.items()}
    assert rec.msg == (BOM + neutral(value) if value else None)
    if value:  # RFC 5424 section 6.4: a UTF-8 MSG starts with the BOM
        assert line.encode().endswith(b"] \xef\xbb\xbf" + neutral(value).encode())


@pytest.mark.parametrize("value", HOSTILE)
def test_jsonl_round_trip_is_lossless(value: str) -> None:
    ev = hostile_event(value)
    line = to_jsonl(ev)
    assert len(line.splitlines()) == 1 and "\u2028" not in line and "\x85" not in line
    doc = json.loads(line)
    assert doc["subject"] == value and doc["actor"] == value and doc["tenant"] == value
    assert doc["details"] == ev.details and doc["timestamp"] == "2023-11-14T22:13:20.123456Z"
    assert doc["time"] == NOW and doc["tenant_id"] == "tn-1" and doc["severity"] == "critical"


def test_syslog_facility_and_severity_mapping() -> None:
    cases: list[tuple[Severity, int]] = [("info", 6), ("warning", 4), ("critical", 2)]
    for sev, code in cases:
        ev = Event(source="audit", id="t:1", time=NOW, kind="login", severity=sev, actor="a", subject="s",
                   index=1)
        assert parse_syslog(to_syslog(ev, hostname="h", facility=16)).severity == code
        assert parse_syslog(to_syslog(ev, hostname="h")).facility == 13
        assert parse_cef(to_cef(ev))[0][6] == {"info": "3", "warning": "6", "critical": "9"}[sev]
        assert parse_cef(to_cef(ev))[1]["cn1"] == "1"


def test_syslog_refuses_operator_header_fields_that_would_break_the_record() -> None:
    ev = hostile_event("x")
    for bad in ("host name", "host\nname", "h" * 256, "hôte"):
        with pytest.raises(ValueError):
            to_syslog(ev, hostname=bad)
    with pytest.raises(ValueError):
        to_syslog(ev, hostname="h", app_name="a" * 49)
    with pytest.raises(ValueError):
        to_syslog(ev, hostname="h", facility=24)
    assert parse_syslog(to_syslog(ev, hostname="")).hostname == "-"


def test_oversized_fields_are_cut_with_a_marker_and_records_stay_bounded() -> None:
    big = "=|\\\"]\n\u2028" * 5000 + "🚀" * 5000
    ev = Event(source="alert", id=big, time=NOW, kind=big, severity="info", actor=big, subject=big,
               tenant_id=big, tenant_name=big, details={big[:100] + str(i): big for i in range(100)})
    for line in (to_cef(ev, hostname="h" * 255), to_syslog(ev, hostname="h" * 255), to_jsonl(ev)):
        assert len(line.encode()) <= MAX_RECORD and len(line.splitlines()) == 1
    rec = parse_syslog(to_syslog(ev, hostname="h"))
    assert rec.msg is not None and rec.msg.endswith("…") and len(rec.msg.removeprefix(BOM).encode()) <= 512
    assert ("dropped", str(100 - (len(rec.sd["details@32473"]) - 1))) in rec.sd["details@32473"]
    header, ext = parse_cef(to_cef(ev, hostname="h" * 255))
    assert header[5].endswith("…") and len(header[5].encode()) <= 63 and int(ext["cn2"]) > 0
    assert ext["dvchost"].endswith("…") and len(ext["dvchost"].encode()) <= 100  # CEF dictionary
    assert ext["msg"].endswith("…") and len(ext["externalId"]) <= 40
    for fmt in EXPORT_FORMATS:
        carried = syslog_record(ev, fmt, hostname="h" * 255)
        assert len(carried.encode()) <= MAX_RECORD and len(carried.splitlines()) == 1
    assert isinstance(json.loads(ext["cs4"]), dict)  # cut by whole entries: still JSON
    doc = json.loads(to_jsonl(ev))
    assert doc["details_dropped"] > 0 and doc["actor"].endswith("…")


def test_octet_frame_counts_utf8_bytes() -> None:
    assert octet_frame("é\n") == b"3 \xc3\xa9\n"
    buf = bytearray(octet_frame("a b") + octet_frame("🚀") + b"12 partial")
    assert read_octet_frames(buf) == [b"a b", "🚀".encode()] and bytes(buf) == b"12 partial"


def test_export_formats_and_email_rendering() -> None:
    evs = [hostile_event(v, n) for n, v in enumerate(HOSTILE)]
    for fmt in EXPORT_FORMATS:
        lines = list(format_events(evs, fmt, hostname="rampart1"))
        assert len("\n".join(lines).splitlines()) == len(evs)
    with pytest.raises(ValueError):
        format_events(evs, "xml", hostname="h")  # type: ignore[arg-type]
    subject, body = render_email(hostile_event(HOSTILE[0]))
    assert "\n" not in subject and subject.startswith("[Rampart critical] ")
    assert all(not line.startswith("CEF:") and not line.startswith("Bcc") for line in body.splitlines())
    assert one_line("a\nb\u202ec", 200) == "a#012b#u202ec"




# -- fuzzing: never raise, one record, bounded, parses back ---------------------------------

ANY_CHAR = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
NASTY = st.sampled_from(list("\n\r|=\\\"] #\x00\x7f\x85\u2028\u2029\u202e\ufeffé🚀aZ ") + ["\ud800"])
TEXT = st.text(st.one_of(ANY_CHAR, NASTY), max_size=40)
LONG = st.builds(lambda s, n: s * n, st.text(st.one_of(ANY_CHAR, NASTY), min_size=1, max_size=8),
                 st.integers(1, 3000))
KEYS = st.text(st.one_of(ANY_CHAR, NASTY), max_size=5)  # within the 32-byte key limit, escapes included
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                    st.floats(allow_nan=False, allow_infinity=False), TEXT)


@st.composite
def events(draw: st.DrawFn, text: st.SearchStrategy[str] = TEXT) -> Event:
    return Event(
        source=draw(st.sampled_from(["audit", "alert"])), id=draw(text),
        time=draw(st.floats(0, 253402300799.0)), kind=draw(text),
        severity=draw(st.sampled_from(["info", "warning", "critical"])), actor=draw(text),
        subject=draw(text), tenant_id=draw(st.none() | text), tenant_name=draw(st.none() | text),
        index=draw(st.none() | st.integers(0, 2**62)),
        details=draw(st.dictionaries(KEYS, SCALARS, max_size=6)),
    )


def check_one_record(line: str) -> None:
    assert isinstance(line, str) and len(line.splitlines()) == 1
    assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]", line)
    assert len(line.encode("utf-8")) <= MAX_RECORD


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events())
def test_fuzz_formatters_round_trip(ev: Event) -> None:
    cef = to_cef(ev, hostname="rampart1")
    check_one_record(cef)
    header, ext = parse_cef(cef)
    assert len(header) == 7 and 0 <= int(header[6]) <= 10
    assert ext["suser"] == neutral(ev.actor, keep="\n\r") if ev.actor else "suser" not in ext
    assert header[5] == cef_class(ev.kind) and header[4] == cef_class(f"{ev.source}:{ev.kind}")
    assert ext["msg"] == neutral(ev.subject, keep="\n\r") if ev.subject else "msg" not in ext
    if ev.details:
        assert json.loads(ext["cs4"]) == ev.details
    syslog = to_syslog(ev, hostname="rampart1")
    check_one_record(syslog)
    rec = parse_syslog(syslog)
    assert dict(rec.sd["rampart@32473"])["actor"] == neutral(ev.actor)
    assert rec.msg == (BOM + neutral(ev.subject) if ev.subject else None)
    for fmt, body in (("cef", cef), ("jsonl", to_jsonl(ev))):
        carried = parse_syslog(syslog_record(ev, fmt, hostname="rampart1"))  # type: ignore[arg-type]
        assert carried.sd == {} and carried.msg == BOM + body and carried.hostname == "rampart1"
    assert [v for _, v in rec.sd.get("details@32473", [])] == [neutral(scalar_text(v))
                                                               for v in ev.details.values()]
    jl = to_jsonl(ev)
    assert len(jl.splitlines()) == 1 and len(jl.encode()) <= MAX_RECORD
    doc = json.loads(jl)
    assert doc["subject"] == ev.subject and doc["actor"] == ev.actor and doc["details"] == ev.details


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events(LONG))
def test_fuzz_formatters_with_huge_values_stay_bounded(ev: Event) -> None:
    host = "h" * 255
    for line in (to_cef(ev, hostname=host), to_syslog(ev, hostname=host),
                 syslog_record(ev, "cef", hostname=host), syslog_record(ev, "jsonl", hostname=host)):
        check_one_record(line)
    parse_cef(to_cef(ev))
    parse_syslog(to_syslog(ev, hostname="h"))
    jl = to_jsonl(ev)
    assert len(jl.splitlines()) == 1 and len(jl.encode()) <= MAX_RECORD
    json.loads(jl)


@settings(max_examples=200, deadline=None)
@given(st.text(st.one_of(ANY_CHAR, NASTY), max_size=300), st.integers(16, 400))
def test_fuzz_one_line(text: str, limit: int) -> None:
    out = one_line(text, limit)
    assert len(out.encode()) <= limit and len(out.splitlines()) <= 1
    assert out == neutral(text) or out.endswith("…")


def test_format_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        FormatLimits(field=3)


# -- retry schedule ----------------------------------------------------------------------------


def test_retry_policy_backs_off_and_gives_up() -> None:
    policy = RetryPolicy(base=10.0, factor=2.0, max_delay=100.0, max_attempts=5, jitter=0.0)
    assert [policy.delay(n) for n in range(1, 7)] == [10.0, 20.0, 40.0, 80.0, 100.0, 100.0]
    assert policy.delay(10**9) == 100.0
    assert RetryPolicy(base=5.0, factor=1.0, jitter=0.0).delay(10**12) == 5.0
    assert RetryPolicy(base=1.0, factor=1.0001, max_delay=2.0, jitter=0.0).delay(10**12) == 2.0
    failed = DeliveryResult.failure("x", retryable=True)
    assert policy.next_attempt(1, failed, 1000.0) == 1010.0
    assert policy.next_attempt(5, failed, 1000.0) is None
    assert policy.next_attempt(1, DeliveryResult.failure("x", retryable=False), 1000.0) is None
    assert policy.next_attempt(1, DeliveryResult.success("ok"), 1000.0) is None
    jittery = RetryPolicy(base=10.0, jitter=0.5)
    delays = {jittery.delay(1, key=f"d{i}") for i in range(50)}
    assert all(5.0 <= d <= 15.0 for d in delays) and len(delays) > 40
    assert jittery.delay(3, key="a") == jittery.delay(3, key="a")
    for bad in (dict(base=0.0), dict(factor=0.5), dict(max_attempts=0), dict(jitter=1.0)):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)


def test_delivery_result_detail_is_one_bounded_line() -> None:
    r = DeliveryResult.failure("boom\r\nX-Injected: 1" + "x" * 1000, retryable=True)
    assert "\n" not in r.detail and len(r.detail.encode()) <= 200


def test_public_surface_is_locked() -> None:
    assert sorted(notify.__all__) == sorted([
        "EXPORT_FORMATS", "MAX_RECORD", "AlertLike", "AuditEntryLike", "Channel", "ChannelStats",
        "Delivered", "DeliveryResult", "Event", "EventLimits", "ExportFormat", "FormatLimits",
        "KeyFileError", "RelpForwarder", "RetryPolicy", "Scalar", "Severity", "SmtpSettings", "Source",
        "SyslogForwarder", "TlsSettings", "check_webhook_url", "format_event", "format_events",
        "from_alert", "from_audit", "octet_frame", "one_line", "render_email", "send_email",
        "send_webhook", "sign", "syslog_record", "to_cef", "to_jsonl", "to_syslog", "verify_signature",
    ])
    for name in notify.__all__:
        assert hasattr(notify, name), name


# -- a throwaway CA for the TLS tests ----------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path

    def server(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def client(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Rampart test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       key_cert_sign=True, crl_sign=True, encipher_only=False,
                                       decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = Pki(d / "ca.pem", d / "cert.pem", d / "key.pem")
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return paths


@contextmanager
def refusing_port() -> Iterator[int]:
    """A port of 127.0.0.1 held for the test, where nothing listens: connections are refused.

    The socket is bound (with SO_REUSEADDR) and never listens, so no other
    process can take the port meanwhile (a port merely found free can be taken
    by anyone's outgoing connection before it is used), yet a
    :class:`SyslogListener` of the test can listen on it, and again after a
    restart.
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def wait_for(cond: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll ``cond`` until it holds; the generous timeout only bounds a test that is broken."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


class FakeClock:
    """A monotonic clock that moves only when the test says so (for backoff schedules)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- webhook against a real HTTP server -------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


FLOOD_BYTES = 64 * 1024 * 1024


@dataclass
class HttpSink:
    base: str
    port: int
    received: list[Received] = field(default_factory=list)
    #: /slow answers only once this is set (when the sink stops): a client timeout is then certain.
    release: threading.Event = field(default_factory=threading.Event)
    #: Bytes of the /flood answer the handler managed to write before the client went away.
    flood_written: list[int] = field(default_factory=list)
    flood_done: threading.Event = field(default_factory=threading.Event)


@contextmanager
def http_sink(tls: ssl.SSLContext | None = None) -> Iterator[HttpSink]:
    received: list[Received] = []
    release = threading.Event()
    flood_written: list[int] = []
    flood_done = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            received.append(Received(self.path, {k: v for k, v in self.headers.items()}, body))
            path = self.path.split("?", 1)[0]
            try:
                if path.startswith("/redirect"):
                    self._reply(302, b"", [("Location", "/elsewhere")])
                elif path.startswith("/error"):
                    self._reply(500, b"boom\r\nFAKE LOG LINE " + self.path.encode())
                elif path.startswith("/bad"):
                    self._reply(400, b"bad payload")
                elif path.startswith("/slow"):
                    release.wait(120)
                    self._reply(200, b"late")
                elif path.startswith("/flood"):
                    self._flood()
                else:
                    self._reply(204, b"")
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _flood(self) -> None:
            written = 0
            try:
                self.send_response(500)
                self.send_header("Content-Length", str(FLOOD_BYTES))
                self.end_headers()
                chunk = b"x" * 65536
                while written < FLOOD_BYTES:
                    self.wfile.write(chunk)
                    written += len(chunk)
            finally:
                flood_written.append(written)
                flood_done.set()

        def _reply(self, status: int, body: bytes, headers: list[tuple[str, str]] = []) -> None:  # noqa: B006
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HttpSink(f"{'https' if tls else 'http'}://127.0.0.1:{port}", int(port), received, release,
                       flood_written, flood_done)
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join()


SECRET = b"whsec-0123456789abcdef0123456789"


def test_webhook_delivers_signed_json_the_receiver_can_verify() -> None:
    ev = from_alert(alert_row(), tenant_name="Acme")
    payload = to_jsonl(ev).encode()
    with http_sink() as sink:
        result = send_webhook(sink.base + "/hook", payload, secret=SECRET, timeout=5, delivery_id="d-1")
    assert result.ok and result.status == 204 and not result.retryable
    [req] = sink.received
    assert req.body == payload and json.loads(req.body)["subject"] == ev.subject
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["X-Rampart-Delivery"] == "d-1"
    ts = req.headers["X-Rampart-Timestamp"]
    # Independent check: HMAC-SHA256(secret, timestamp "." body), as documented.
    expected = "sha256=" + hmac.new(SECRET, ts.encode() + b"." + req.body, hashlib.sha256).hexdigest()
    assert req.headers["X-Rampart-Signature"] == expected
    now = time.time()
    assert verify_signature(SECRET, req.body, timestamp=ts, signature=expected, now=now)
    assert not verify_signature(SECRET, req.body + b" ", timestamp=ts, signature=expected, now=now)
    assert not verify_signature(b"another-secret-of-enough-bytes", req.body, timestamp=ts,
                                signature=expected, now=now)
    assert not verify_signature(SECRET, req.body, timestamp=ts, signature=expected, now=now + 3600)
    assert not verify_signature(SECRET, req.body, timestamp=str(int(ts) + 1), signature=expected, now=now)
    assert "secret" not in result.detail.lower() and "/hook" not in result.detail


def test_webhook_without_secret_is_unsigned_and_short_secrets_are_refused() -> None:
    with http_sink() as sink:
        assert send_webhook(sink.base + "/hook", b"{}", secret=None, timeout=5).ok
        short = send_webhook(sink.base + "/hook", b"{}", secret=b"short", timeout=5)
        huge = send_webhook(sink.base + "/hook", b"x" * (1024 * 1024 + 1), secret=SECRET, timeout=5)
    assert "X-Rampart-Signature" not in sink.received[0].headers
    assert not short.ok and not short.retryable and "16 bytes" in short.detail
    assert not huge.ok and not huge.retryable
    assert len(sink.received) == 1


@pytest.mark.parametrize("url, reason", [
    ("http://localhost:8080/hook", "https"),             # plain http only to a loopback IP literal
    ("http://192.0.2.10/hook", "https"),
    ("ftp://127.0.0.1/hook", "https"),
    ("https://169.254.169.254/latest/meta-data/", "link-local"),  # cloud metadata (SSRF)
    ("https://[fe80::1]/hook", "link-local"),
    ("https://[::ffff:169.254.169.254]/hook", "link-local"),
    ("https://[64:ff9b::a9fe:a9fe]/hook", "link-local"),
    ("https://0.0.0.0/hook", "unspecified"),
    ("https://224.0.0.1/hook", "multicast"),
    ("https://rampart:S3CR3T-pw-q7Zx@127.0.0.1/hook", "user name"),
    ("https://T0KEN-as-user-k9Wm@127.0.0.1/hook", "user name"),  # a token as the user name, no password
    ("https://exa mple/hook", "host"),
    ("not a url", "https"),
])
def test_webhook_refuses_destinations_before_connecting(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as refused:
        check_webhook_url(url)
    result = send_webhook(url, b"{}", secret=SECRET, timeout=1)
    assert not result.ok and not result.retryable and reason in result.detail
    # Values that cannot occur in a message by chance: the URL's credentials and path are never echoed.
    for secret in ("S3CR3T-pw-q7Zx", "T0KEN-as-user-k9Wm", "rampart:", "meta-data"):
        assert secret.lower() not in str(refused.value).lower()
        assert secret.lower() not in result.detail.lower()


def test_webhook_does_not_follow_redirects() -> None:
    with http_sink() as sink:
        result = send_webhook(sink.base + "/redirect", b"{}", secret=SECRET, timeout=5)
    assert not result.ok and not result.retryable and result.status == 302 and "redirect" in result.detail
    assert [r.path for r in sink.received] == ["/redirect"]


def test_webhook_errors_are_one_line_without_url_secrets() -> None:
    with http_sink() as sink:
        err = send_webhook(sink.base + "/error/T0KEN-IN-PATH?token=T0KEN-IN-QUERY", b"{}", secret=SECRET,
                           timeout=5)
        bad = send_webhook(sink.base + "/bad", b"{}", secret=SECRET, timeout=5)
    assert not err.ok and err.retryable and err.status == 500
    assert "\n" not in err.detail and "\r" not in err.detail and "T0KEN" not in err.detail
    assert err.detail.startswith(f"http://127.0.0.1:{sink.port} answered HTTP 500: boom#015#012FAKE")
    assert not bad.ok and not bad.retryable and bad.status == 400
    with refusing_port() as port:
        refused = send_webhook(f"http://127.0.0.1:{port}/x/T0KEN?k=T0KEN", b"{}", secret=SECRET, timeout=30)
    assert not refused.ok and refused.retryable and "T0KEN" not in refused.detail


def test_webhook_times_out_and_bounds_the_response_read() -> None:
    with http_sink() as sink:
        start = time.monotonic()
        slow = send_webhook(sink.base + "/slow", b"{}", secret=SECRET, timeout=0.5)
        # The receiver answers only when released (after this), so only the timeout can have ended it.
        assert not sink.release.is_set() and time.monotonic() - start < 60
        flood = send_webhook(sink.base + "/flood", b"{}", secret=SECRET, timeout=30)
        # The client read at most 1 KiB and hung up: the receiver could not write its 64 MiB.
        assert sink.flood_done.wait(60)
    assert not slow.ok and slow.retryable and "timed out" in slow.detail
    assert not flood.ok and flood.status == 500 and len(flood.detail.encode()) <= 200
    assert sink.flood_written and sink.flood_written[0] < FLOOD_BYTES


def test_webhook_over_https_with_a_private_ca_pins_the_checked_address(pki: Pki) -> None:
    with http_sink(tls=pki.server()) as sink:
        by_ip = send_webhook(f"https://127.0.0.1:{sink.port}/hook", b"{}", secret=SECRET, timeout=5,
                             tls=pki.client())
        by_name = send_webhook(f"https://localhost:{sink.port}/hook", b"{}", secret=SECRET, timeout=5,
                               tls=pki.client())
        untrusted = send_webhook(f"https://127.0.0.1:{sink.port}/hook", b"{}", secret=SECRET, timeout=5)
    assert by_ip.ok and by_name.ok, (by_ip, by_name)
    # The name was resolved and checked once; the certificate and Host still name "localhost".
    assert [r.headers["Host"] for r in sink.received] == [f"127.0.0.1:{sink.port}", f"localhost:{sink.port}"]
    assert not untrusted.ok and "CERTIFICATE_VERIFY_FAILED" in untrusted.detail


# -- e-mail against a real SMTP server --------------------------------------------------------


class LoopbackController(Controller):
    """aiosmtpd's controller, listening on a free port of 127.0.0.1 chosen by the kernel.

    The authenticator must answer with ``handled=False`` when it refuses: with
    ``handled=True`` aiosmtpd sends no reply at all and the client waits for
    one until its timeout.
    """

    def _create_server(self) -> Any:
        return self._create_on_free_port()

    async def _create_on_free_port(self) -> Any:
        server = await self.loop.create_server(self._factory_invoker, host="127.0.0.1", port=0,
                                               ssl=self.ssl_context)
        self.port = server.sockets[0].getsockname()[1]
        return server


class Inbox:
    def __init__(self, reply: str = "250 Message accepted for delivery") -> None:
        self.messages: list[Envelope] = []
        self.connections = 0
        self.reply = reply

    async def handle_EHLO(self, server: SMTPServer, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        self.connections += 1
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        self.messages.append(envelope)
        return self.reply


class Authenticator:
    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes, bool]] = []

    def __call__(self, server: SMTPServer, session: Session, envelope: Envelope, mechanism: str,
                 auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        self.seen.append((auth_data.login.decode(), auth_data.password, session.ssl is not None))
        ok = auth_data.login == b"rampart" and auth_data.password == b"s3cret-from-env"
        return AuthResult(success=ok, handled=False)  # not handled: the server answers 535


@contextmanager
def smtp_server(inbox: Inbox, **kw: Any) -> Iterator[int]:
    ctl = LoopbackController(inbox, hostname="127.0.0.1", ready_timeout=60, **kw)
    ctl.start()
    try:
        yield int(ctl.port)
    finally:
        ctl.stop()


def parsed(envelope: Envelope) -> EmailMessage:
    raw = envelope.original_content or envelope.content
    assert isinstance(raw, bytes)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def test_email_delivers_an_alert_to_a_local_smtp_server() -> None:
    inbox = Inbox()
    ev = from_alert(alert_row(subject="Account alice locked\nBcc: evil@evil.example"), tenant_name="Acme")
    subject, body = render_email(ev)
    with smtp_server(inbox) as port:
        settings_ = SmtpSettings(host="127.0.0.1", port=port, starttls=False, from_addr="rampart@msp.example",
                                 helo_name="rampart.msp.example")
        result = send_email(settings_, ["soc@msp.example", "oncall@msp.example"], subject, body)
    assert result.ok and result.status == 250, result
    [env] = inbox.messages
    assert env.mail_from == "rampart@msp.example"
    assert env.rcpt_tos == ["soc@msp.example", "oncall@msp.example"]
    # One unfolded line on the wire (folded "Subject:\r\n [Rampart..." parses back with a leading space).
    raw = env.original_content or env.content
    assert isinstance(raw, bytes) and b"\r\nSubject: " + subject.encode() + b"\r\n" in raw
    msg = parsed(env)
    assert msg["Subject"] == subject
    assert subject == "[Rampart warning] Acme: Account alice locked#012Bcc: evil@evil.example"
    assert msg["From"] == "rampart@msp.example" and msg["To"] == "soc@msp.example, oncall@msp.example"
    assert msg["Bcc"] is None and msg["Auto-Submitted"] == "auto-generated" and msg["Message-ID"]
    content = msg.get_content().replace("\r\n", "\n")
    assert content == body and "Tenant:   Acme (tn-00000000000000000000000001)" in content
    assert "count: 3" in content


def test_email_encoded_words_in_alert_text_cannot_add_headers() -> None:
    """RFC 2047: the email package decodes ``=?charset?q?...?=`` when a header is set; one holding
    CR LF must neither split the Subject (Python before 3.11.10 wrote it out raw) nor change on the way."""
    hostile = "Account =?utf-8?q?x=0D=0AReply-To:_attacker@evil.example=0D=0ABcc:_v@evil.example?= locked"
    ev = from_alert(alert_row(subject=hostile), tenant_name="=?utf-8?b?QWNtZQ0KWC1Jbmo6IDE=?=")
    subject, body = render_email(ev)
    assert "=?" not in subject and subject.startswith("[Rampart warning] =#077utf-8?b?QWNtZQ0K")
    inbox = Inbox()
    with smtp_server(inbox) as port:
        settings_ = SmtpSettings(host="127.0.0.1", port=port, starttls=False, from_addr="rampart@msp.example")
        result = send_email(settings_, ["soc@msp.example"], subject, body)
    assert result.ok, result
    [env] = inbox.messages
    msg = parsed(env)
    assert msg["Subject"] == subject  # literally what was rendered, nothing decoded
    assert msg["Reply-To"] is None and msg["Bcc"] is None and msg["X-Inj"] is None
    assert env.rcpt_tos == ["soc@msp.example"]


@pytest.mark.parametrize("to, subject", [
    (["soc@msp.example"], "Alert\r\nBcc: victim@evil.example"),
    (["soc@msp.example"], "Alert\nX-Injected: 1"),
    (["soc@msp.example"], "Alert\x00"),
    (["soc@msp.example"], "Alert =?utf-8?q?=0D=0ABcc:_victim@evil.example?="),  # decoded, CR LF would split
    (["=?utf-8?b?dg0KQmNjOiB2aWN0aW1AZXZpbC5leGFtcGxl?=@msp.example"], "Alert"),
    (["soc@msp.example\r\nRCPT TO:<victim@evil.example>"], "Alert"),
    (["soc@msp.example, victim@evil.example"], "Alert"),
    (["Attacker <victim@evil.example>"], "Alert"),
    (["soc@msp.example\n"], "Alert"),
    ([], "Alert"),
    (["a@msp.example"] * 51, "Alert"),
    (["soc@msp.example"], "A" * 256),
])
def test_email_header_injection_is_refused_before_connecting(to: list[str], subject: str) -> None:
    inbox = Inbox()
    with smtp_server(inbox) as port:
        settings_ = SmtpSettings(host="127.0.0.1", port=port, starttls=False, from_addr="rampart@msp.example")
        result = send_email(settings_, to, subject, "body")
    assert not result.ok and not result.retryable and result.detail.startswith("refused:")
    assert "evil" not in result.detail and "\n" not in result.detail
    assert inbox.messages == [] and inbox.connections == 0


def test_smtp_settings_refuse_plaintext_off_loopback_and_inline_mistakes() -> None:
    with pytest.raises(ValueError, match="loopback"):
        SmtpSettings(host="mail.msp.example", starttls=False, from_addr="rampart@msp.example")
    with pytest.raises(ValueError, match="From"):
        SmtpSettings(host="127.0.0.1", starttls=False, from_addr="rampart@msp.example\r\nBcc: x@y.example")
    with pytest.raises(ValueError, match="From"):
        SmtpSettings(host="127.0.0.1", starttls=False, from_addr="=?utf-8?b?cg0KQmNjOiB4?=@msp.example")
    with pytest.raises(ValueError, match="password_env"):
        SmtpSettings(host="mail.msp.example", from_addr="rampart@msp.example", username="rampart")
    with pytest.raises(ValueError, match="password_env"):
        SmtpSettings(host="mail.msp.example", from_addr="rampart@msp.example", username="rampart",
                     password_env="s3cret value")
    with pytest.raises(ValueError):
        SmtpSettings(host="mail.msp.example", from_addr="r@msp.example", starttls=True, implicit_tls=True)
    SmtpSettings(host="mail.msp.example", from_addr="rampart@msp.example", username="u",
                 password_env="SMTP_PW")


def test_email_starttls_and_login_with_the_password_from_the_environment(
        pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    inbox, auth = Inbox(), Authenticator()
    monkeypatch.setenv("RAMPART_TEST_SMTP_PASSWORD", "s3cret-from-env")
    with smtp_server(inbox, tls_context=pki.server(), require_starttls=True, authenticator=auth,
                     auth_required=True, auth_require_tls=True) as port:
        trusted = SmtpSettings(host="127.0.0.1", port=port, from_addr="rampart@msp.example",
                               username="rampart", password_env="RAMPART_TEST_SMTP_PASSWORD",
                               tls=pki.client(), timeout=60)
        ok = send_email(trusted, ["soc@msp.example"], "Alert", "body\n")
        untrusted = send_email(replace(trusted, tls=None), ["soc@msp.example"], "Alert", "body\n")
        monkeypatch.setenv("RAMPART_TEST_SMTP_PASSWORD", "wrong-password")
        wrong = send_email(trusted, ["soc@msp.example"], "Alert", "body\n")
        monkeypatch.delenv("RAMPART_TEST_SMTP_PASSWORD")
        unset = send_email(trusted, ["soc@msp.example"], "Alert", "body\n")
    assert ok.ok, ok
    assert auth.seen[0] == ("rampart", b"s3cret-from-env", True)  # only ever over TLS
    assert not untrusted.ok and not untrusted.retryable and "certificate" in untrusted.detail
    assert not wrong.ok and not wrong.retryable and wrong.status == 535
    assert "wrong-password" not in wrong.detail and "s3cret" not in wrong.detail
    assert not unset.ok and "RAMPART_TEST_SMTP_PASSWORD" in unset.detail
    assert len(inbox.messages) == 1
    assert len(auth.seen) == 2, "one AUTH attempt per delivery, not one per mechanism"


def test_email_never_downgrades_when_starttls_is_not_offered() -> None:
    inbox = Inbox()
    with smtp_server(inbox) as port:
        result = send_email(SmtpSettings(host="127.0.0.1", port=port, from_addr="rampart@msp.example"),
                            ["soc@msp.example"], "Alert", "body")
    assert not result.ok and not result.retryable and "STARTTLS" in result.detail
    assert inbox.messages == []


def test_email_temporary_failure_is_retryable_and_unreachable_server_too() -> None:
    inbox = Inbox(reply="451 4.3.0 try again later")
    with smtp_server(inbox) as port:
        st_ = SmtpSettings(host="127.0.0.1", port=port, starttls=False, from_addr="rampart@msp.example")
        later = send_email(st_, ["soc@msp.example"], "Alert", "body")
    assert not later.ok and later.retryable and later.status == 451
    with refusing_port() as port:
        down = send_email(SmtpSettings(host="127.0.0.1", port=port, starttls=False,
                                       from_addr="rampart@msp.example", timeout=30),
                          ["soc@msp.example"], "Alert", "body")
    assert not down.ok and down.retryable and "\n" not in down.detail


# -- syslog forwarding to real TCP/TLS listeners --------------------------------------------


class SyslogListener:
    """Accepts connections on 127.0.0.1 and collects octet-counted frames (RFC 6587 3.4.1)."""

    def __init__(self, port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.port = int(self.sock.getsockname()[1])
        self.tls = tls
        self.messages: list[str] = []
        self.connections = 0
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._conns.append(conn)
            t = threading.Thread(target=self._read, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _read(self, conn: socket.socket) -> None:
        buf = bytearray()
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
                with self._lock:
                    self._conns.append(conn)
            while data := conn.recv(65536):
                buf += data
                for frame in read_octet_frames(buf):
                    with self._lock:
                        self.messages.append(frame.decode("utf-8"))
        except OSError:
            return

    def stop(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        self.sock.close()
        with self._lock:
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
        for t in self._threads:
            t.join(timeout=5)


FAST_BACKOFF = RetryPolicy(base=0.05, factor=2.0, max_delay=0.2, max_attempts=1, jitter=0.0)
#: How long a new syslog connection is watched for a refusal (notify.channel; short on loopback).
PROBE_S = 0.05


def syslog_lines(n: int, start: int = 0) -> list[str]:
    return [to_syslog(hostile_event(HOSTILE[i % len(HOSTILE)], i), hostname="rampart1")
            for i in range(start, start + n)]


def test_forwarder_delivers_octet_counted_rfc5424_records() -> None:
    listener = SyslogListener()
    lines = syslog_lines(len(HOSTILE))
    try:
        with SyslogForwarder("127.0.0.1", listener.port, tls=None, probe_s=PROBE_S) as fwd:
            done = fwd.deliver(lines)
            wait_for(lambda: len(listener.messages) == len(lines))
            stats = fwd.stats()
    finally:
        listener.stop()
    assert (done.taken, done.error) == (len(lines), None)
    assert listener.messages == lines  # newlines in values never split a record
    for line, n in zip(listener.messages, range(len(lines)), strict=True):
        assert dict(parse_syslog(line).sd["rampart@32473"])["id"] == f"al-{n}"
    assert (stats.taken, stats.connects, stats.failures) == (len(lines), 1, 0)


def test_forwarder_reconnects_after_the_listener_restarts() -> None:
    with refusing_port() as port:  # held throughout, so the restarted listener gets the same port
        first = SyslogListener(port)
        fwd = SyslogForwarder("127.0.0.1", port, tls=None, probe_s=PROBE_S, backoff=FAST_BACKOFF)
        try:
            assert fwd.deliver(syslog_lines(2)).taken == 2
            wait_for(lambda: len(first.messages) == 2)
            first.stop()
            # With nothing to send, deliver notices the receiver closed the connection.
            wait_for(lambda: fwd.deliver([]).taken == 0 and not fwd.stats().connected)
            second = SyslogListener(port)
            try:
                assert fwd.deliver(syslog_lines(3, start=2)).taken == 3
                wait_for(lambda: len(second.messages) == 3)
            finally:
                second.stop()
        finally:
            fwd.close()
    ids = [dict(parse_syslog(m).sd["rampart@32473"])["id"] for m in second.messages]
    assert ids == ["al-2", "al-3", "al-4"]
    assert fwd.stats().connects == 2 and "closed" in (fwd.stats().last_error or "")


def test_forwarder_backs_off_while_the_receiver_is_down_and_holds_no_queue() -> None:
    clock = FakeClock()
    lines = syslog_lines(5)
    with refusing_port() as port:
        fwd = SyslogForwarder("127.0.0.1", port, tls=None, probe_s=PROBE_S, backoff=FAST_BACKOFF,
                              clock=clock)
        done = fwd.deliver(lines)
        assert (done.taken, done.refused) == (0, False) and "ConnectionRefused" in (done.error or "")
        assert fwd.stats().failures == 1
        listener = SyslogListener(port)
        try:
            # Backing off: no new attempt before the delay has passed, although the receiver is back.
            assert fwd.deliver(lines).taken == 0 and fwd.stats().connects == 0
            clock.now += FAST_BACKOFF.delay(1)
            assert fwd.deliver(lines).taken == 5  # the caller sends them again: nothing was kept
            wait_for(lambda: len(listener.messages) == 5)
        finally:
            listener.stop()
            fwd.close()
    assert listener.messages == lines


def test_forwarder_over_tls_verifies_the_receiver(pki: Pki) -> None:
    listener = SyslogListener(tls=pki.server())
    try:
        with SyslogForwarder("127.0.0.1", listener.port, tls=TlsSettings(ca_file=pki.ca),
                             probe_s=PROBE_S) as fwd:
            assert fwd.deliver(syslog_lines(3)).taken == 3
            wait_for(lambda: len(listener.messages) == 3)
        with SyslogForwarder("localhost", listener.port, tls=TlsSettings(), probe_s=PROBE_S) as untrusted:
            done = untrusted.deliver(syslog_lines(1))
            assert done.taken == 0 and done.refused
            assert "CERTIFICATE_VERIFY_FAILED" in (done.error or "")
    finally:
        listener.stop()
    assert listener.messages == syslog_lines(3)


def test_forwarder_refuses_plaintext_off_loopback_and_oversized_records() -> None:
    with pytest.raises(ValueError, match="plain TCP"):
        SyslogForwarder("siem.msp.example", 514, tls=None)
    SyslogForwarder("siem.msp.example", 514, tls=None, allow_plaintext=True).close()
    listener = SyslogListener()
    try:
        with SyslogForwarder("127.0.0.1", listener.port, tls=None, max_record=1024,
                             probe_s=PROBE_S) as fwd:
            with pytest.raises(ValueError, match="max_record"):  # never skipped in silence
                fwd.deliver(["x" * 2000, "small"])
            assert fwd.deliver(["small"]).taken == 1
            wait_for(lambda: listener.messages == ["small"])
    finally:
        listener.stop()
