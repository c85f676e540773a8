"""The SOC gets every record (issue 23), checked against a real rsyslogd on loopback.

Each test starts its own rsyslogd (tests/harness/rsyslog.py) with one
listener: imtcp (RFC 6587), imtcp with the gtls driver (RFC 5425), with and
without a required client certificate (``x509/certvalid``), imrelp, and
imrelp over TLS. What rsyslog received is read back as rsyslog parsed it:
its RFC 5424 parser's fields (``version`` is 1 only when that parser took the
message) and mmpstrucdata's structured data; CEF records go through pycef, an
independent parser, and JSON lines through ``json``.

Delivery is checked where it is decided: the notifier, on the server's real
store (SQLite, and PostgreSQL with ``RAMPART_TEST_DB=postgresql``), moves a
syslog target's cursor only over records the receiver took; a refusing or
absent receiver leaves it where it was, raises one alert, is retried with
back-off and loses nothing. Over RELP every record is acknowledged, and a
receiver restarted mid-stream loses nothing.

Attacks are played for real: a receiver impersonated with another CA's
certificate, a wrong pin or another name; a client key others can read;
target files outside the target's directory; a hostile RELP server; hostile
device text (threat T16) through every format.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pycef
import pytest
from harness.operators import PASSWORD, bootstrap_owner, ok, setup_tenant
from harness.rsyslog import Pki, Rsyslog, make_pki, rsyslog_missing
from harness.server import REPO, RunningServer, free_port
from sqlalchemy import select
from test_notify import HOSTILE, neutral, refusing_port, unescape_cef_value

import rampart
from rampart.server import notifier as notifier_mod
from rampart.server.audit import AuditLog
from rampart.server.config import ServerConfig
from rampart.server.db import Store, migrate
from rampart.server.errors import BadRequest
from rampart.server.keystore import LogKeyStore
from rampart.server.models import AlertRow, NotifyTarget, Setting, Tenant
from rampart.server.notifier import ALERT_KIND, Notifier, tls_files_dir, validate_config
from rampart.server.notify import (
    Event,
    KeyFileError,
    RelpForwarder,
    RetryPolicy,
    SyslogForwarder,
    TlsSettings,
    syslog_record,
)
from rampart.server.notify.formats import BOM, CEF_DVCHOST_MAX
from rampart.server.notify.relp import (
    MAX_RESPONSE_DATA,
    FrameReader,
    RelpProtocolError,
    encode_frame,
    parse_offers,
    parse_response,
)
from rampart.trust import new_id, new_tenant_id

# No skip: ./run-tests installs rsyslog; a machine without it fails these tests and says why.

FAST = RetryPolicy(base=0.05, factor=2.0, max_delay=0.2, max_attempts=1, jitter=0.0)
PROBE_S = 0.2
NOW = 1_700_000_000.25


# -- helpers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("siem-pki"))


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Callable[..., Rsyslog]]:
    """Start rsyslogds for the test (``rsyslog("relp")``); all are stopped at its end."""
    missing = rsyslog_missing()
    if missing is not None:
        pytest.fail(f"{missing}: ./run-tests installs it")
    started: list[Rsyslog] = []

    def start(listener: str, *, port: int | None = None, pki: Pki | None = None,
              auth: str | None = None) -> Rsyslog:
        r = Rsyslog(tmp_path / f"rsyslog-{len(started)}", listener,  # type: ignore[arg-type]
                    port=port or free_port(), pki=pki, auth=auth)
        started.append(r)
        r.start()
        return r

    try:
        yield start
    finally:
        for r in started:
            r.stop()


def event(n: int, text: str = "plain", kind: str = "device.enrolled") -> Event:
    return Event(source="audit", id=f"tn-siem:{n}", index=n, time=NOW + n, kind=kind, severity="info",
                 actor="device", subject=f"{kind} by device {text}", tenant_id="tn-siem",
                 tenant_name="Acme", details={"hostname": text, "n": n})


def lines(n: int, fmt: str = "syslog", start: int = 0) -> list[str]:
    return [syslog_record(event(i), fmt, hostname="rampart1.msp.example")  # type: ignore[arg-type]
            for i in range(start, start + n)]


def rfc5424_ids(received: list[dict[str, Any]]) -> list[str]:
    return [r["rfc5424-sd"]["rampart@32473"]["id"] for r in received]


def record_id(rec: dict[str, Any]) -> str:
    """The event id of a received record, whatever its format."""
    if "rfc5424-sd" in rec:
        return str(rec["rfc5424-sd"]["rampart@32473"]["id"])
    msg = rec["f"]["msg"].removeprefix(BOM)
    if msg.startswith("CEF:"):
        return str(pycef.parse(msg)["externalId"])
    return str(json.loads(msg)["id"])


def assert_rfc5424(rec: dict[str, Any]) -> None:
    """rsyslog's RFC 5424 parser took it (no legacy fallback), and MSG is UTF-8 after the BOM."""
    f = rec["f"]
    assert f["version"] == "1", f"legacy parse: {f['raw']!r}"
    assert f["app"] == "rampart" and f["procid"] == "-" and f["hostname"] == "rampart1.msp.example"
    assert f["timestamp"].endswith("Z") and f["facility"] == "13"
    assert f["msg"].startswith(BOM), "RFC 5424 section 6.4: a UTF-8 MSG starts with the BOM"


def once(received: list[dict[str, Any]], expected: list[str], *, only: str = "") -> None:
    """Each expected record exactly once and in order (of the records whose id starts with ``only``)."""
    ids = [i for i in map(record_id, received) if i.startswith(only)]
    assert ids == expected, f"not each record exactly once, in order: {Counter(ids).most_common(3)}"


# -- conforming syslog over imtcp, read back by rsyslog's own parsers -----------------------------


def test_imtcp_each_record_arrives_once_and_parses_as_rfc5424_in_every_format(
        rsyslog: Callable[..., Rsyslog]) -> None:
    r = rsyslog("tcp")
    sent = lines(5, "syslog") + lines(5, "cef", start=5) + lines(5, "jsonl", start=10)
    with SyslogForwarder("127.0.0.1", r.port, tls=None, probe_s=PROBE_S) as fwd:
        done = fwd.deliver(sent)
    assert done.taken == 15 and done.error is None
    got = r.wait_for(15)
    once(r.settle(), [f"tn-siem:{i}" for i in range(15)])
    for rec in got:
        assert_rfc5424(rec)
        assert rec["f"]["msgid"] == "device.enrolled" and rec["f"]["input"] == "imtcp"
    # RFC 5424 records: the structured data, as mmpstrucdata parsed it.
    sd = got[0]["rfc5424-sd"]
    assert sd["rampart@32473"]["index"] == "0" and sd["rampart@32473"]["tenantId"] == "tn-siem"
    assert sd["details@32473"] == {"hostname": "plain", "n": "0"}
    assert got[0]["f"]["msg"] == BOM + "device.enrolled by device plain"
    # CEF and JSON lines travel as the MSG of a proper RFC 5424 message, with no structured data.
    for rec in got[5:]:
        assert rec["f"]["sd"] == "-" and "rfc5424-sd" not in rec
    cef = pycef.parse(got[5]["f"]["msg"])
    assert (cef["DeviceVendor"], cef["DeviceProduct"], cef["DeviceVersion"]) == \
        ("Rampart", "Rampart", rampart.__version__)
    assert cef["DeviceEventClassID"] == "audit:device.enrolled" and cef["Name"] == "device.enrolled"
    assert cef["externalId"] == "tn-siem:5" and cef["dvchost"] == "rampart1.msp.example"
    doc = json.loads(got[10]["f"]["msg"].removeprefix(BOM))
    assert doc["id"] == "tn-siem:10" and doc["details"] == {"hostname": "plain", "n": 10}


def test_gtls_with_a_ca_file_each_record_arrives_once(rsyslog: Callable[..., Rsyslog], pki: Pki) -> None:
    r = rsyslog("tls", pki=pki, auth="anon")
    with SyslogForwarder("127.0.0.1", r.port, tls=TlsSettings(ca_file=pki.ca), probe_s=PROBE_S) as fwd:
        assert fwd.deliver(lines(10)).taken == 10
        assert fwd.deliver(lines(10, start=10)).taken == 10  # the same connection, proven alive again
        assert fwd.stats().connects == 1
    r.wait_for(20)
    once(r.settle(), [f"tn-siem:{i}" for i in range(20)])


def test_gtls_required_client_certificate_is_presented_and_each_record_arrives_once(
        rsyslog: Callable[..., Rsyslog], pki: Pki) -> None:
    r = rsyslog("tls", pki=pki, auth="x509/certvalid")
    tls = TlsSettings(ca_file=pki.ca, client_cert=pki.client_cert, client_key=pki.client_key)
    with SyslogForwarder("127.0.0.1", r.port, tls=tls, probe_s=PROBE_S) as fwd:
        done = fwd.deliver(lines(12))
    assert done.taken == 12, done.error
    r.wait_for(12)
    once(r.settle(), [f"tn-siem:{i}" for i in range(12)])
    assert "did not provide a certificate" not in r.messages()


def test_gtls_pin_alone_is_the_trust_anchor(rsyslog: Callable[..., Rsyslog], pki: Pki) -> None:
    r = rsyslog("tls", pki=pki, auth="anon")
    with SyslogForwarder("127.0.0.1", r.port, tls=TlsSettings(pin_sha256=pki.server_sha256),
                         probe_s=PROBE_S) as fwd:
        assert fwd.deliver(lines(3)).taken == 3
    r.wait_for(3)
    once(r.settle(), ["tn-siem:0", "tn-siem:1", "tn-siem:2"])


def test_tls_1_3_refusal_after_the_handshake_is_seen_before_any_record_is_counted(
        rsyslog: Callable[..., Rsyslog], pki: Pki) -> None:
    """The issue's defect: rsyslog requires a client certificate; none is configured."""
    r = rsyslog("tls", pki=pki, auth="x509/certvalid")
    with SyslogForwarder("127.0.0.1", r.port, tls=TlsSettings(ca_file=pki.ca), probe_s=PROBE_S) as fwd:
        done = fwd.deliver(lines(5))
        stats = fwd.stats()
    assert done.taken == 0 and done.refused and "refuses this client" in (done.error or "")
    assert stats.taken == 0 and not stats.connected
    time.sleep(0.3)
    assert r.records() == []
    assert "did not provide a certificate" in r.messages()


# -- the notifier on the real store: cursor, alert, back-off ----------------------------------


@dataclass
class World:
    """The server's store with one tenant, its audit log, and syslog targets; no server process."""

    store: Store
    audit: AuditLog
    config: ServerConfig
    tenant: str

    def append(self, n: int, texts: list[str] | None = None, *, tenant: str | None = None) -> None:
        with self.store.transaction() as s:
            for i in range(n):
                text = texts[i % len(texts)] if texts else f"host-{i}"
                self.audit.record(s, [tenant or self.tenant], "device.enrolled", "device",
                                  {"hostname": text, "process": f"C:\\Temp\\{text}.exe"}, NOW + i)

    def add_tenant(self, name: str) -> str:
        tenant = new_tenant_id()
        with self.store.transaction() as s:
            s.add(Tenant(id=tenant, name=name, created_at=NOW))
            s.flush()
            self.audit.create_log(s, tenant)
        return tenant

    def add_target(self, name: str = "siem", *, msp: bool = False, **doc: Any) -> str:
        scope = None if msp else self.tenant
        cfg = validate_config("syslog", {"host": "127.0.0.1", **doc},
                              tls_dir=tls_files_dir(self.config, scope))
        tid = new_id("nt")
        with self.store.transaction() as s:
            s.add(NotifyTarget(id=tid, tenant_id=scope, kind="syslog", name=name,
                               config=json.dumps(cfg), min_severity="critical", created_by="owner",
                               created_at=NOW))
        return tid

    def cursor(self, target: str, log: str | None = None) -> int:
        with self.store.transaction() as s:
            row = s.get(Setting, f"fwd:{target}:{log or self.tenant}"[:64])
            return int(row.value) if row is not None else 0

    def alerts(self) -> list[AlertRow]:
        with self.store.transaction() as s:
            rows = list(s.scalars(select(AlertRow).where(AlertRow.kind == ALERT_KIND)))
            s.expunge_all()
            return rows

    def notifier(self, backoff: RetryPolicy = FAST) -> Notifier:
        return Notifier(self.store, self.config, probe_s=PROBE_S, backoff=backoff)

    def target_count(self) -> int:
        with self.store.transaction() as s:
            return len(list(s.scalars(select(NotifyTarget.id))))


@pytest.fixture
def world(tmp_path: Path, db_url: str | None) -> Iterator[World]:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    url = db_url or f"sqlite:///{tmp_path / 'rampart.db'}"
    store = Store(url)
    migrate(store.engine)
    audit = AuditLog(store, LogKeyStore(keys))
    tenant = new_tenant_id()
    with store.transaction() as s:
        s.add(Tenant(id=tenant, name="Acme", created_at=NOW))
        s.flush()
        audit.create_log(s, tenant)
    config = ServerConfig(data_dir=tmp_path, db_url=url, public_url="https://rampart1.msp.example")
    tls_files_dir(config, tenant).mkdir(parents=True)
    try:
        yield World(store, audit, config, tenant)
    finally:
        store.dispose()


def tenant_files(world: World, pki: Pki) -> dict[str, str]:
    """The PKI's client files copied into the tenant's TLS directory (the only place targets may name)."""
    d = tls_files_dir(world.config, world.tenant)
    out = {}
    for key, src in (("ca_file", pki.ca), ("client_cert", pki.client_cert), ("client_key", pki.client_key)):
        dst = d / src.name
        dst.write_bytes(src.read_bytes())
        dst.chmod(0o600)
        out[key] = str(dst)
    return out


def run_until(notifier: Notifier, cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "the notifier did not get there"
        notifier.run_once(time.time())
        time.sleep(0.02)


def test_refusing_receiver_leaves_the_cursor_raises_one_alert_and_skips_nothing(
        world: World, rsyslog: Callable[..., Rsyslog], pki: Pki) -> None:
    """gtls requires a client certificate, the target has none: refused after the TLS 1.3 handshake."""
    world.append(21)
    files = tenant_files(world, pki)
    with refusing_port() as port:
        r = rsyslog("tls", port=port, pki=pki, auth="x509/certvalid")
        target = world.add_target(port=port, tls=True, ca_file=files["ca_file"], format="cef")
        n = world.notifier(RetryPolicy(base=1.0, factor=1.0, max_delay=1.0, max_attempts=1, jitter=0.0))
        try:
            n.run_once(time.time())
            n.run_once(time.time())  # at once again: backing off, no new connection
            assert world.cursor(target) == 0
            [alert] = world.alerts()
            assert alert.tenant_id == world.tenant and alert.status == "open" and alert.count == 1
            assert alert.severity == "critical" and "refuses this client" in alert.detail
            assert "none is skipped" in alert.detail
            time.sleep(0.3)
            assert r.records() == []
            assert r.messages().count("did not provide a certificate") == 1  # one attempt, then back-off
            # The receiver is reconfigured to take this client: everything arrives, from the first record.
            r.stop()
            r2 = rsyslog("tls", port=port, pki=pki, auth="anon")
            run_until(n, lambda: world.cursor(target) == 21)
        finally:
            n.close()
    r2.wait_for(21)
    once(r2.settle(), [f"{world.tenant}:{i}" for i in range(21)], only=world.tenant)
    assert len(world.alerts()) == 1  # deduplicated: one alert for the episode


def test_absent_receiver_raises_an_alert_and_everything_arrives_once_it_is_back(
        world: World, rsyslog: Callable[..., Rsyslog]) -> None:
    world.append(30)
    with refusing_port() as port:
        target = world.add_target(port=port, transport="relp", format="jsonl")
        n = world.notifier()
        try:
            n.run_once(time.time())
            assert world.cursor(target) == 0
            [alert] = world.alerts()
            assert "connect failed" in alert.detail and f"relp 127.0.0.1:{port}" in alert.detail
            with world.store.transaction() as s:
                [row] = s.scalars(select(NotifyTarget).where(NotifyTarget.id == target))
                forwarded, waiting, error = notifier_mod.forward_status(s, row)
            assert (forwarded, waiting) == (0, 30) and error is not None and "connect failed" in error
            r = rsyslog("relp", port=port)
            run_until(n, lambda: world.cursor(target) == 30)
            world.append(5)  # and what happens next follows
            run_until(n, lambda: world.cursor(target) == 35)
            with world.store.transaction() as s:
                [row] = s.scalars(select(NotifyTarget).where(NotifyTarget.id == target))
                assert notifier_mod.forward_status(s, row) == (35, 0, None)
            # The alert about the gap goes out on a later round than the records may (its own
            # stream, retried after the failed connect): keep the notifier running until it has.
            run_until(n, lambda: len(r.records()) >= 36)
        finally:
            n.close()
    got = r.wait_for(36)
    got = r.settle()
    once(got, [f"{world.tenant}:{i}" for i in range(35)], only=world.tenant)
    # The alert about the gap is itself delivered to the SOC, once the receiver is back.
    [alert] = world.alerts()
    assert [record_id(x) for x in got].count(alert.id) == 1


# -- RELP: acknowledged delivery ------------------------------------------------------------------


def test_imrelp_acknowledges_each_record_and_each_arrives_once(rsyslog: Callable[..., Rsyslog]) -> None:
    r = rsyslog("relp")
    with RelpForwarder("127.0.0.1", r.port, tls=None, window=16) as fwd:
        for start in range(0, 300, 100):  # more than the window: acknowledgements pace the sending
            done = fwd.deliver(lines(100, "syslog", start=start))
            assert done.taken == 100 and done.error is None
        stats = fwd.stats()
    assert stats.taken == 300 and stats.connects == 1
    got = r.wait_for(300)
    once(r.settle(), [f"tn-siem:{i}" for i in range(300)])
    assert all(rec["f"]["input"] == "imrelp" for rec in got)
    for rec in got[:3]:
        assert_rfc5424(rec)


def test_relp_rsyslog_restarted_mid_stream_loses_nothing(rsyslog: Callable[..., Rsyslog]) -> None:
    """A forwarder moves its cursor only over acknowledged records while rsyslog restarts twice."""
    total = 1500
    records = lines(total)
    cursor = 0
    errors: list[str] = []
    with refusing_port() as port:
        r = rsyslog("relp", port=port)
        fwd = RelpForwarder("127.0.0.1", port, tls=None, backoff=FAST, timeout=3.0)
        deadline = time.monotonic() + 60

        def forward() -> None:
            nonlocal cursor
            while cursor < total and time.monotonic() < deadline:
                done = fwd.deliver(records[cursor:cursor + 50])
                cursor += done.taken  # the notifier's rule: exactly the records acknowledged
                if done.error:
                    errors.append(done.error)
                    time.sleep(0.01)

        worker = threading.Thread(target=forward)
        worker.start()
        try:
            for mark in (300, 900):
                while cursor < mark and worker.is_alive():
                    time.sleep(0.001)
                r.restart()
        finally:
            worker.join(70)
            fwd.close()
        assert cursor == total, f"stopped at {cursor}: {errors[-3:]}"
        r.wait_for(total)
        got = r.settle()
    ids = rfc5424_ids(got)
    missing = {f"tn-siem:{i}" for i in range(total)} - set(ids)
    assert not missing, f"lost {len(missing)} records"
    dupes = len(ids) - len(set(ids))
    assert dupes <= 2 * 128, f"{dupes} duplicates: more than the unacknowledged window at two breaks"
    assert errors, "the restarts were not noticed"


def test_relp_over_tls_with_a_client_certificate(rsyslog: Callable[..., Rsyslog], pki: Pki) -> None:
    r = rsyslog("relp-tls", pki=pki, auth="certvalid")
    tls = TlsSettings(ca_file=pki.ca, client_cert=pki.client_cert, client_key=pki.client_key)
    with RelpForwarder("127.0.0.1", r.port, tls=tls) as fwd:
        assert fwd.deliver(lines(40, "cef")).taken == 40
    r.wait_for(40)
    once(r.settle(), [f"tn-siem:{i}" for i in range(40)])


def test_relp_over_tls_refused_without_a_client_certificate_counts_nothing(
        world: World, rsyslog: Callable[..., Rsyslog], pki: Pki) -> None:
    world.append(7)
    files = tenant_files(world, pki)
    r = rsyslog("relp-tls", pki=pki, auth="certvalid")
    target = world.add_target(port=r.port, transport="relp", tls=True, ca_file=files["ca_file"])
    n = world.notifier()
    try:
        n.run_once(time.time())
    finally:
        n.close()
    assert world.cursor(target) == 0
    [alert] = world.alerts()
    assert "refuses this client" in alert.detail
    assert r.records() == [] and "did not provide a certificate" in r.messages()


def test_relp_over_tls_from_the_notifier_with_a_pin_and_client_certificate(
        world: World, rsyslog: Callable[..., Rsyslog], pki: Pki) -> None:
    world.append(9)
    files = tenant_files(world, pki)
    r = rsyslog("relp-tls", pki=pki, auth="name")
    target = world.add_target(port=r.port, transport="relp", tls=True, pin_sha256=pki.server_sha256,
                              client_cert=files["client_cert"], client_key=files["client_key"])
    n = world.notifier()
    try:
        run_until(n, lambda: world.cursor(target) == 9)
    finally:
        n.close()
    r.wait_for(9)
    once(r.settle(), [f"{world.tenant}:{i}" for i in range(9)], only=world.tenant)
    assert world.alerts() == []


# -- T16: device text stays inert through rsyslog, mmpstrucdata and pycef ---------------------------

DEVICE_TEXT = [
    *HOSTILE,
    "evil\n<13>1 2024-01-01T00:00:00Z forged rampart - - - injected record",
    "C:\\Users\\x\\AppData\\evil=1 suser=root cs1=forged|x|",
    'host"] [rampart@32473 kind="forged"] x',
    "\ufeffbom inside",
]


def test_T16_device_text_stays_inert_in_every_format_through_a_real_rsyslog(
        world: World, rsyslog: Callable[..., Rsyslog]) -> None:
    world.append(len(DEVICE_TEXT), DEVICE_TEXT)
    r = rsyslog("relp")
    targets = {fmt: world.add_target(f"siem-{fmt}", port=r.port, transport="relp", format=fmt)
               for fmt in ("syslog", "cef", "jsonl")}
    n = world.notifier()
    try:
        run_until(n, lambda: all(world.cursor(t) == len(DEVICE_TEXT) for t in targets.values()))
    finally:
        n.close()
    got = r.wait_for(3 * len(DEVICE_TEXT))
    got = r.settle()
    assert len(got) == 3 * len(DEVICE_TEXT), "a value forged or split a record"
    by_format: dict[str, list[dict[str, Any]]] = {"syslog": [], "cef": [], "jsonl": []}
    for rec in got:
        assert rec["f"]["version"] == "1" and rec["f"]["hostname"] == "rampart1.msp.example"
        assert rec["f"]["app"] == "rampart" and rec["f"]["msgid"] == "device.enrolled"
        msg = rec["f"]["msg"]
        assert msg.startswith(BOM) and BOM not in msg[1:]
        body = msg.removeprefix(BOM)
        by_format["cef" if body.startswith("CEF:") else "jsonl" if body.startswith("{") else "syslog"
                  ].append(rec)
    assert {k: len(v) for k, v in by_format.items()} == {k: len(DEVICE_TEXT) for k in by_format}
    for text, rec in zip(DEVICE_TEXT, by_format["syslog"], strict=True):
        sd = rec["rfc5424-sd"]
        assert set(sd) == {"rampart@32473", "details@32473"}
        assert sd["rampart@32473"]["kind"] == "device.enrolled" and sd["rampart@32473"]["actor"] == "device"
        assert sd["details@32473"]["hostname"] == neutral(text)
    cef_keys = {"DeviceVendor", "DeviceProduct", "DeviceVersion", "DeviceEventClassID", "Name",
                "DeviceName", "Severity", "DeviceSeverity", "CEFVersion", "rt", "cat", "act", "suser",
                "tenant", "tenantId", "externalId", "logIndex", "dvchost", "msg", "details"}
    for text, rec in zip(DEVICE_TEXT, by_format["cef"], strict=True):
        cef = pycef.parse(rec["f"]["msg"])
        assert cef is not None and set(cef) == cef_keys, f"pycef invented keys: {set(cef) - cef_keys}"
        assert cef["Name"] == "device.enrolled" and cef["DeviceEventClassID"] == "audit:device.enrolled"
        assert json.loads(unescape_cef_value(cef["details"]))["hostname"] == text  # lossless, inert
        assert unescape_cef_value(cef["msg"]) == neutral("device.enrolled by device", keep="\n\r")
    for text, rec in zip(DEVICE_TEXT, by_format["jsonl"], strict=True):
        doc = json.loads(rec["f"]["msg"].removeprefix(BOM))
        assert doc["details"]["hostname"] == text and doc["kind"] == "device.enrolled"


def test_cef_dvchost_is_cut_to_the_dictionary_length_with_a_marker() -> None:
    long_host = "h" * 120 + ".msp.example"
    cef = pycef.parse(syslog_record(event(1), "cef", hostname=long_host))
    assert len(cef["dvchost"]) <= CEF_DVCHOST_MAX and cef["dvchost"].endswith("…")
    assert syslog_record(event(1), "syslog", hostname=long_host).split(" ")[2] == long_host  # 255 in RFC 5424


# -- attacks on the TLS settings -------------------------------------------------------------------


def test_mitm_receiver_with_a_certificate_from_another_ca_is_refused(
        rsyslog: Callable[..., Rsyslog], pki: Pki, tmp_path: Path) -> None:
    impostor = make_pki(tmp_path / "impostor", ca_name="Impostor CA")
    r = rsyslog("tls", pki=impostor, auth="anon")
    with SyslogForwarder("127.0.0.1", r.port, tls=TlsSettings(ca_file=pki.ca), probe_s=PROBE_S) as fwd:
        done = fwd.deliver(lines(3))
        stats = fwd.stats()
    assert done.taken == 0 and done.refused and "CERTIFICATE_VERIFY_FAILED" in (done.error or "")
    assert stats.taken == 0
    time.sleep(0.2)
    assert r.records() == []


def test_mitm_receiver_with_another_certificate_than_the_pinned_one_is_refused(
        rsyslog: Callable[..., Rsyslog], pki: Pki, tmp_path: Path) -> None:
    impostor = make_pki(tmp_path / "impostor")
    r = rsyslog("relp-tls", pki=impostor, auth="certvalid")
    tls = TlsSettings(pin_sha256=pki.server_sha256, client_cert=pki.client_cert, client_key=pki.client_key)
    with RelpForwarder("127.0.0.1", r.port, tls=tls) as fwd:
        done = fwd.deliver(lines(3))
    assert done.taken == 0 and done.refused and "pinned" in (done.error or "")
    time.sleep(0.2)
    assert r.records() == []


def test_mitm_receiver_with_a_valid_certificate_for_another_name_is_refused(
        rsyslog: Callable[..., Rsyslog], pki: Pki) -> None:
    r = rsyslog("tls", pki=pki, auth="anon")
    tls = TlsSettings(ca_file=pki.ca, server_name="siem.msp.example")  # the certificate names localhost
    with SyslogForwarder("127.0.0.1", r.port, tls=tls, probe_s=PROBE_S) as fwd:
        done = fwd.deliver(lines(2))
    assert done.taken == 0 and done.refused and "Hostname mismatch" in (done.error or ""), done.error
    time.sleep(0.2)
    assert r.records() == []


def test_client_key_readable_by_others_is_refused_when_added_and_when_used(
        world: World, rsyslog: Callable[..., Rsyslog], pki: Pki) -> None:
    files = tenant_files(world, pki)
    key = Path(files["client_key"])
    secret = key.read_text()
    key.chmod(0o640)
    with pytest.raises(BadRequest) as refused:
        world.add_target(port=6514, tls=True, ca_file=files["ca_file"], client_cert=files["client_cert"],
                         client_key=files["client_key"])
    assert "must be 0600, not 0640" in str(refused.value)
    assert "PRIVATE KEY" not in str(refused.value) and secret[40:80] not in str(refused.value)
    assert world.target_count() == 0
    # Added while 0600, loosened afterwards: the next connection refuses to use it.
    key.chmod(0o600)
    world.append(4)
    r = rsyslog("tls", pki=pki, auth="x509/certvalid")
    target = world.add_target(port=r.port, tls=True, ca_file=files["ca_file"],
                              client_cert=files["client_cert"], client_key=files["client_key"])
    key.chmod(0o644)
    n = world.notifier()
    try:
        n.run_once(time.time())
    finally:
        n.close()
    assert world.cursor(target) == 0
    [alert] = world.alerts()
    assert "must be 0600" in alert.detail and "PRIVATE KEY" not in alert.detail
    time.sleep(0.2)
    assert r.records() == []


def test_encrypted_or_mismatched_client_key_is_refused_with_a_clear_error(pki: Pki, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.client_key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"passphrase")))
    encrypted.chmod(0o600)
    with pytest.raises(KeyFileError, match="encrypted"):
        TlsSettings(client_cert=pki.client_cert, client_key=encrypted).context()
    with pytest.raises(KeyFileError, match="not a matching"):
        TlsSettings(client_cert=pki.ca, client_key=pki.client_key).context()
    with pytest.raises(ValueError, match="only with a CA file or a pin"):
        TlsSettings(verify_hostname=False)
    with pytest.raises(ValueError, match="64 hex"):
        TlsSettings(pin_sha256="abc")
    assert TlsSettings(pin_sha256="SHA256:" + ":".join(["AB"] * 32)).pin_sha256 == "ab" * 32


def test_T12_target_cannot_name_tls_files_outside_its_tenants_directory(world: World, pki: Pki,
                                                                        tmp_path: Path) -> None:
    files = tenant_files(world, pki)
    server_key = tmp_path / "tls" / "key.pem"  # the server's own TLS key, 0600 and the server's
    server_key.parent.mkdir()
    server_key.write_bytes(pki.server_key.read_bytes())
    server_key.chmod(0o600)
    other = tls_files_dir(world.config, new_tenant_id())  # another tenant's client files
    other.mkdir(parents=True)
    (other / "client.key").write_bytes(pki.client_key.read_bytes())
    (other / "client.key").chmod(0o600)
    link = Path(files["client_key"]).parent / "link.key"
    link.symlink_to(server_key)
    escapes = [str(server_key), str(other / "client.key"), str(link),
               str(Path(files["client_key"]).parent / ".." / ".." / "tls" / "key.pem"), "relative.key"]
    for path in escapes:
        with pytest.raises(BadRequest) as refused:
            world.add_target(port=6514, tls=True, client_cert=files["client_cert"], client_key=path)
        assert "must be" in str(refused.value) and "PRIVATE" not in str(refused.value)
    with pytest.raises(BadRequest, match="must be a file under"):
        world.add_target(port=6514, tls=True, ca_file="/etc/shadow")
    with pytest.raises(BadRequest, match="need tls"):
        world.add_target(port=6514, ca_file=files["ca_file"])
    with pytest.raises(BadRequest, match="plain TCP"):
        world.add_target(host="siem.msp.example", port=514)
    assert world.target_count() == 0


# -- a hostile RELP server -------------------------------------------------------------------------


class FakeRelpServer:
    """A RELP peer on 127.0.0.1 playing the attacker: ``answer`` decides what to send back."""

    def __init__(self, answer: Callable[[socket.socket, bytes], bool], port: int = 0) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.port = int(self.sock.getsockname()[1])
        self.answer = answer
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            try:
                while data := conn.recv(65536):
                    if not self.answer(conn, data):
                        return
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


def rsp(txnr: int, body: bytes) -> bytes:
    return f"{txnr} rsp {len(body)} ".encode() + body + b"\n"


def open_ok() -> bytes:
    return rsp(1, b"200 OK\nrelp_version=0\nrelp_software=fake\ncommands=syslog")


def hostile(replies: list[bytes]) -> Callable[[socket.socket, bytes], bool]:
    """Answer open properly, then send ``replies`` once the first syslog command arrives."""
    state = {"opened": False}

    def answer(conn: socket.socket, data: bytes) -> bool:
        if not state["opened"] and data.startswith(b"1 open "):
            state["opened"] = True
            conn.sendall(open_ok())
            return True
        if b" syslog " in data:
            for reply in replies:
                conn.sendall(reply)
            return True
        return True

    return answer


@pytest.mark.parametrize(("name", "replies", "taken"), [
    ("oversized frame", [f"2 rsp {MAX_RESPONSE_DATA + 1} ".encode() + b"x" * 100], 0),
    ("garbage", [b"HTTP/1.1 200 OK\r\n\r\n"], 0),
    ("response to a TXNR never sent", [b"9 rsp 6 200 OK\n"], 0),
    ("responses out of order", [b"3 rsp 6 200 OK\n2 rsp 6 200 OK\n"], 0),
    ("error response", [b"2 rsp 6 200 OK\n3 rsp 13 500 no thanks\n"], 1),
    ("frame without its trailer", [b"2 rsp 6 200 OKX"], 0),
    ("serverclose mid-stream", [b"2 rsp 6 200 OK\n0 serverclose 0\n"], 1),
    ("silence", [], 0),
    ("endless hints", [b"2 rsp 6 200 OK\n" + b"0 hint 0\n" * 100], 1),
])
def test_hostile_relp_server_cannot_make_a_record_count_that_it_did_not_acknowledge(
        name: str, replies: list[bytes], taken: int) -> None:
    server = FakeRelpServer(hostile(replies))
    try:
        with RelpForwarder("127.0.0.1", server.port, tls=None, timeout=0.5, backoff=FAST) as fwd:
            done = fwd.deliver(lines(3))
            stats = fwd.stats()
    finally:
        server.close()
    assert done.taken == taken, (name, done)
    assert done.error is not None and "\n" not in done.error and len(done.error) <= 200
    assert stats.taken == taken and not stats.connected


def test_relp_server_refusing_the_session_or_not_offering_syslog_is_refused() -> None:
    for reply in (rsp(1, b"500 unknown client, go away"), rsp(1, b"200 OK\nrelp_version=0\ncommands="),
                  rsp(1, b"200 OK\ncommands=syslog"), b"1 syslog 1 x\n"):
        server = FakeRelpServer(lambda conn, data, reply=reply: bool(conn.sendall(reply)) or True)
        try:
            with RelpForwarder("127.0.0.1", server.port, tls=None, timeout=0.5) as fwd:
                done = fwd.deliver(lines(1))
        finally:
            server.close()
        assert done.taken == 0 and done.refused, done


def test_relp_frames_round_trip_and_malformed_frames_are_refused() -> None:
    frame = encode_frame(7, "syslog", "é record".encode())
    assert frame == b"7 syslog 9 \xc3\xa9 record\n"
    assert encode_frame(3, "close") == b"3 close 0\n"
    reader = FrameReader()
    stream = (encode_frame(1, "rsp", b"200 OK\nrelp_version=0\ncommands=syslog")
              + b"2 rsp 6 200 OK\n0 serverclose 0\n")
    got = []
    for i in range(len(stream)):  # one byte at a time
        reader.feed(stream[i:i + 1])
        got += list(reader.frames())
    assert [(f.txnr, f.command) for f in got] == [(1, "rsp"), (2, "rsp"), (0, "serverclose")]
    rsp = parse_response(got[0].data)
    assert rsp.ok and rsp.text == "OK" and parse_offers(rsp.body) == {"relp_version": ["0"],
                                                                      "commands": ["syslog"]}
    assert not parse_response(b"500 too large").ok
    for bad in (b"1234567890 rsp 0\n", b"1 rs9 0\n", b"1 rsp 0 x\n", b"1 rsp 3 abcd", b"x\n",
                b"1 rsp 99999999999\n"):
        r = FrameReader()
        r.feed(bad)
        with pytest.raises(RelpProtocolError):
            list(r.frames())
    with pytest.raises(RelpProtocolError):
        parse_response(b"OK")
    for bad_args in ((0, "syslog", b"x" * (128 * 1024 + 1)), (10**9, "syslog", b""), (1, "sys log", b"")):
        with pytest.raises(ValueError):
            encode_frame(*bad_args)  # type: ignore[arg-type]


def test_records_larger_than_the_limit_are_a_misuse_not_a_silent_skip() -> None:
    with SyslogForwarder("127.0.0.1", 9, tls=None, max_record=100) as fwd:
        with pytest.raises(ValueError, match="max_record"):
            fwd.deliver(["x" * 200])
        assert fwd.stats().connects == 0


# -- end to end: the real server, the real CLI, rsyslog over RELP and TLS -----------------------------


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rampart.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=120, cwd=REPO)


def test_siem_target_from_the_cli_over_relp_tls_with_one_hostname_for_export_and_live_channel(
        server: RunningServer, tmp_path: Path, rsyslog: Callable[..., Rsyslog], pki: Pki) -> None:
    config = server.data_dir / "config.json"
    doc = json.loads(config.read_text())
    doc["public_url"] = "https://rampart.msp.example"
    server.stop()
    config.write_text(json.dumps(doc))
    server.start()
    owner = bootstrap_owner(server)
    t = setup_tenant(owner, "Acme")
    files = tls_files_dir(ServerConfig(data_dir=server.data_dir, db_url=""), t.id)
    files.mkdir(parents=True)
    for src in (pki.ca, pki.client_cert, pki.client_key):
        (files / src.name).write_bytes(src.read_bytes())
        (files / src.name).chmod(0o600)
    r = rsyslog("relp-tls", pki=pki, auth="certvalid")

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")}
    env.update(PYTHONPATH=str(REPO), RAMPART_CONFIG_DIR=str(tmp_path / "cli"), COLUMNS="200",
               RAMPART_PASSWORD=PASSWORD, RAMPART_TOTP=owner.totp.code())
    login = cli(env, "login", "--server", server.url, "--user", "owner", "--fingerprint", server.cert_sha256)
    assert login.returncode == 0, login.stderr
    add = ["alerts", "notify", "add", "Acme", "--syslog", f"127.0.0.1:{r.port}", "--relp", "--tls",
           "--format", "cef", "--min-severity", "info", "--ca-file", str(files / "ca.pem"),
           "--client-cert", str(files / "client.pem")]
    # A key file others can read is refused with one clear line; nothing is stored.
    loose = files / "loose.key"
    loose.write_bytes(pki.client_key.read_bytes())
    loose.chmod(0o644)
    refused = cli(env, *add, "--client-key", str(loose))
    assert refused.returncode != 0 and "must be 0600, not 0644" in refused.stderr
    assert "PRIVATE KEY" not in refused.stderr + refused.stdout and "Traceback" not in refused.stderr
    # The server's own TLS key and another tenant's directory are out of reach (T12).
    for path in (server.data_dir / "tls" / "key.pem", server.data_dir / "siem-tls" / "msp" / "client.key"):
        r400 = owner.http.post(f"/tenants/{t.id}/notify-targets", json={
            "kind": "syslog", "name": "x", "host": "127.0.0.1", "port": r.port, "tls": True,
            "client_cert": str(files / "client.pem"), "client_key": str(path)})
        assert r400.status_code == 400 and "must be a file under" in r400.text
    assert ok(owner.http.get(f"/tenants/{t.id}/notify-targets")) == []

    added = cli(env, *add, "--client-key", str(files / "client.key"), "--json")
    assert added.returncode == 0, added.stderr
    target = json.loads(added.stdout)
    assert target["config"]["transport"] == "relp" and target["config"]["tls"] is True
    assert target["config"]["client_key"] == str(files / "client.key")
    assert "PRIVATE KEY" not in added.stdout

    def caught_up() -> bool:
        [row] = ok(owner.http.get(f"/tenants/{t.id}/notify-targets"))
        return bool(row["forwarded"]) and row["waiting"] == 0

    deadline = time.monotonic() + 60
    while not caught_up():
        assert time.monotonic() < deadline, r.messages()[-2000:]
        time.sleep(0.2)
    entries = ok(owner.http.get(f"/tenants/{t.id}/audit/entries", params={"limit": 1000}))
    got = r.wait_for(len(entries))
    audit = [x for x in got if record_id(x).startswith(t.id)]
    assert [record_id(x) for x in audit] == [f"{t.id}:{e['index']}" for e in entries]
    exported_syslog = owner.http.get(f"/tenants/{t.id}/events", params={"format": "syslog"}).text
    exported_cef = owner.http.get(f"/tenants/{t.id}/events", params={"format": "cef"}).text
    hostnames = {x["f"]["hostname"] for x in audit}
    hostnames |= {pycef.parse(x["f"]["msg"])["dvchost"] for x in audit}
    hostnames |= {line.split(" ")[2] for line in exported_syslog.splitlines()}
    hostnames |= {pycef.parse(line)["dvchost"] for line in exported_cef.splitlines()}
    assert hostnames == {"rampart.msp.example"}
    for x in audit:
        assert_rfc5424_header(x)


def assert_rfc5424_header(rec: dict[str, Any]) -> None:
    f = rec["f"]
    assert f["version"] == "1" and f["app"] == "rampart" and f["msg"].startswith(BOM + "CEF:0|Rampart|")


def test_slow_drip_relp_server_cannot_hold_the_notifier() -> None:
    """Each acknowledgement comes just inside the timeout: the call as a whole still ends in time."""
    over = threading.Event()

    def answer(conn: socket.socket, data: bytes) -> bool:
        if data.startswith(b"1 open "):
            conn.sendall(open_ok())
            return True
        for txnr in range(2, 22):
            if over.wait(0.3):
                return False
            conn.sendall(rsp(txnr, b"200 OK"))
        return True

    server = FakeRelpServer(answer)
    try:
        with RelpForwarder("127.0.0.1", server.port, tls=None, timeout=0.5) as fwd:
            started = time.monotonic()
            done = fwd.deliver(lines(20))
            elapsed = time.monotonic() - started
    finally:
        over.set()
        server.close()
    assert 0 < done.taken < 20 and "acknowledged" in (done.error or ""), done
    assert elapsed < 2.5


def test_msp_wide_target_moves_each_logs_cursor_over_exactly_what_was_taken(
        world: World, rsyslog: Callable[..., Rsyslog], monkeypatch: pytest.MonkeyPatch) -> None:
    """One call carries several tenants' logs; a receiver that takes 5 of 7 moves 3 + 2 cursors."""
    a, b = world.tenant, world.add_tenant("Beta")  # sorted: the MSP-wide target sends the lower id first
    first, second = sorted([a, b])
    world.append(3, tenant=first)
    world.append(4, tenant=second)
    taken = 0

    def five_then_full(conn: socket.socket, data: bytes) -> bool:
        nonlocal taken
        if data.startswith(b"1 open "):
            conn.sendall(open_ok())
            return True
        for txnr in range(2, 2 + data.count(b" syslog ")):
            conn.sendall(rsp(txnr, b"200 OK" if taken < 5 else b"500 queue full"))
            taken += 1
        return True

    with refusing_port() as port:
        fake = FakeRelpServer(five_then_full, port=port)
        target = world.add_target(msp=True, port=port, transport="relp")
        n = world.notifier()
        try:
            n.run_once(time.time())
            fake.close()
            assert (world.cursor(target, first), world.cursor(target, second)) == (3, 2)
            [alert] = world.alerts()
            assert alert.tenant_id is None and "500 queue full" in alert.detail
            # The rest, and what comes next, in passes smaller than one log.
            monkeypatch.setattr(notifier_mod, "FORWARD_BATCH", 2)
            world.append(3, tenant=first)
            r = rsyslog("relp", port=port)
            run_until(n, lambda: (world.cursor(target, first), world.cursor(target, second)) == (6, 4))
        finally:
            n.close()
    got = r.settle()
    once(got, [f"{first}:{i}" for i in range(3, 6)], only=first)
    once(got, [f"{second}:{i}" for i in range(2, 4)], only=second)
