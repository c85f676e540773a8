"""What the operator's alert view shows when one device floods (threat T16), and how long alerts live.

A hostile device writes whatever findings it likes. The attack played here: a
device (its agent key, the real wire protocol) reports dozens of critical
findings beside an honest device with one warning. The default ``alerts list``
(the API and the real ``rampart`` CLI) must still show the honest device's
alert, say what the per-device cap left out, and show everything of one
device on request. Listings are ordered severity first, then newest.

Retention is checked in-process against the server's real store (SQLite, and
PostgreSQL with ``RAMPART_TEST_DB=postgresql``): old resolved findings and
alerts go, in bounded transactions; open findings, open or acknowledged
alerts and alerts with a notification still queued stay. A restart with the
server's clock shifted (``RAMPART_CLOCK_OFFSET_S``) shows the sweep runs on
its own.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness.operators import TenantSetup, bootstrap_owner, ok, setup_tenant
from harness.server import REPO, RunningServer
from harness.wsagent import WireAgent
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from test_telemetry import configured_server, wait_until

from rampart import tlspin
from rampart.cli.access_cmds import capped_lines
from rampart.cli.config import Config
from rampart.cli.config import Session as CliSession
from rampart.server import retention
from rampart.server.alerts import raise_alert, resolve
from rampart.server.api.alerts import DEFAULT_PER_DEVICE, MAX_CAPPED_LISTED, alert_view
from rampart.server.config import ServerLimits, load_config
from rampart.server.db import Store, migrate
from rampart.server.errors import SetupError
from rampart.server.models import (
    AlertRow,
    AuditEntry,
    AuditLogRow,
    Delivery,
    Device,
    FindingRow,
    NotifyTarget,
    Tenant,
)
from rampart.wire import Finding, Inventory, Report, digest, encode_report
from rampart.wire.inventory import AgentInfo

DAY = 86400
FLOOD = 60
_REPORTS = itertools.count()


# --- the flood, on a real server ------------------------------------------------------------------


@dataclass
class Fleet:
    server: RunningServer
    t: TenantSetup
    flooder: WireAgent
    honest: WireAgent
    cli_dir: Path

    def alerts(self, path: str | None = None, **params: Any) -> tuple[list[dict[str, Any]], dict[str, str]]:
        r = self.t.owner.http.get(path or f"/tenants/{self.t.id}/alerts", params=params)
        return ok(r), dict(r.headers)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")}
        env.update({"PYTHONPATH": str(REPO), "RAMPART_CONFIG_DIR": str(self.cli_dir), "COLUMNS": "250"})
        return subprocess.run([sys.executable, "-m", "rampart.cli.main", *args], env=env, capture_output=True,
                              text=True, timeout=120, cwd=REPO, stdin=subprocess.DEVNULL)


def _report(agent: WireAgent, findings: list[Finding]) -> None:
    inv = Inventory(collected_at=int(time.time()) + next(_REPORTS),  # each report a new digest
                    agent=AgentInfo(version="wire", containment="none"))
    agent.send({"type": "inventory", "report": encode_report(Report(full=inv, findings=findings)),
                "result": digest(inv), "base": None})
    assert agent.wait_for("inventory-ack")["result"] == digest(inv)


def _flood(i: int) -> Finding:
    return Finding(kind="memory-only", severity="critical", key=f"memory-only::flood-{i}",
                   subject=f"program {i} runs from memory")


HONEST = Finding(kind="eol-os", severity="warning", key="eol-os::debian:9",
                 subject="Debian 9 reached end of life")


@pytest.fixture
def fleet(tmp_path: Path, db_url: str | None) -> Iterator[Fleet]:
    server = configured_server(tmp_path / "srv", db_url, interval=300)
    agents: list[WireAgent] = []
    try:
        owner = bootstrap_owner(server)
        t = setup_tenant(owner, "acme")
        for name in ("flooder", "honest"):
            tok = ok(owner.http.post(f"/tenants/{t.id}/enrollment-tokens", json={"ttl_s": 600}))
            agent = WireAgent.enrol(server, tok["token"], tok["root_sha256"], hostname=name)
            ok(owner.http.post(f"/tenants/{t.id}/devices/{agent.device_id}/approve"))
            assert agent.connect()["type"] == "welcome"
            agent.wait_for("detection")
            agents.append(agent)
        cfg = Config(tmp_path / "cli-owner")
        cfg.ensure()
        cfg.save_session(CliSession(server=server.url, cert_sha256=tlspin.fingerprint(server.cert_der),
                                    username=owner.username, token=owner.token), server.cert_der)
        yield Fleet(server, t, agents[0], agents[1], tmp_path / "cli-owner")
    finally:
        for a in agents:
            a.close()
        server.stop()


def test_T16_a_flooding_device_cannot_push_an_honest_devices_alert_out_of_the_view(fleet: Fleet) -> None:
    f = fleet
    flooder, honest = f.flooder.device_id, f.honest.device_id
    _report(f.honest, [HONEST])
    _report(f.flooder, [_flood(i) for i in range(FLOOD)])  # newer and more severe than the honest alert

    # Without the cap, the flood fills a page of 25 and the honest warning is not on it: the attack.
    uncapped, headers = f.alerts(limit=25, per_device=0)
    assert {a["device"] for a in uncapped} == {flooder} and "rampart-alerts-capped" not in headers

    # The default view: at most 20 of the flooder's, the honest one too, and the header says what is left.
    shown, headers = f.alerts(limit=25)
    assert [a["device"] for a in shown].count(flooder) == DEFAULT_PER_DEVICE
    [mine] = [a for a in shown if a["device"] == honest]
    assert mine["kind"] == "eol-os" and mine["severity"] == "warning"
    assert headers["rampart-alerts-capped"] == f"{flooder}={FLOOD - DEFAULT_PER_DEVICE}"
    # Severity first (critical, warning, info), then the newest first.
    ranks = [{"critical": 0, "warning": 1, "info": 2}[a["severity"]] for a in shown]
    assert ranks == sorted(ranks)
    criticals = [a["last_seen"] for a in shown if a["severity"] == "critical"]
    assert criticals == sorted(criticals, reverse=True)
    # The MSP-wide listing caps the same way.
    everywhere, headers = f.alerts("/alerts")
    assert honest in {a["device"] for a in everywhere}
    assert headers["rampart-alerts-capped"] == f"{flooder}={FLOOD - DEFAULT_PER_DEVICE}"

    # One device's alerts, all of them, on request (or as many as asked for).
    every, headers = f.alerts(device=flooder)
    assert len(every) == FLOOD and {a["device"] for a in every} == {flooder}
    assert "rampart-alerts-capped" not in headers
    five, headers = f.alerts(device=flooder, per_device=5)
    assert len(five) == 5 and headers["rampart-alerts-capped"] == f"{flooder}={FLOOD - 5}"
    r = f.t.owner.http.get(f"/tenants/{f.t.id}/alerts", params={"device": "host-1; DROP"})
    assert r.status_code == 422

    # The real CLI: the honest alert in the table, one line on stderr for the capped device.
    r = f.cli("alerts", "list", "acme")
    assert r.returncode == 0, r.stderr
    assert "Debian 9 reached end of life" in r.stdout
    assert r.stderr.strip().splitlines() == [f"{flooder}: {FLOOD - DEFAULT_PER_DEVICE} more alerts not shown "
                                             f"(--device {flooder}, or --per-device 0)"]
    r = f.cli("alerts", "list", "--device", flooder, "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)) == FLOOD and r.stderr == ""
    r = f.cli("alerts", "list", "acme", "--per-device", "0", "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)) == FLOOD + 1
    r = f.cli("alerts", "list", "acme", "--per-device", "3", "--severity", "critical", "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)) == 3
    assert f"{flooder}: {FLOOD - 3} more alerts" in r.stderr
    r = f.cli("alerts", "list", "--device", "not-a-device")
    assert r.returncode != 0 and "--device must be a device id" in r.stderr


def test_T16_the_cli_prints_only_well_formed_cap_entries() -> None:
    dev = "dev-" + "a" * 24
    assert capped_lines({}) == []
    assert capped_lines({"rampart-alerts-capped": f"{dev}=1,dev-\x1b[2J=5,{dev}=x,junk",
                         "rampart-alerts-capped-more": "devices=3,alerts=90"}) == [
        f"{dev}: 1 more alert not shown (--device {dev}, or --per-device 0)",
        "3 more devices: 90 more alerts not shown (--per-device 0)"]


# --- the view and retention on the server's real store ----------------------------------------------


@dataclass
class Db:
    store: Store
    tenant: str
    devices: list[str]


@pytest.fixture
def db(tmp_path: Path, db_url: str | None) -> Iterator[Db]:
    store = Store(db_url or f"sqlite:///{tmp_path / 'rampart.db'}")
    migrate(store.engine)
    now = time.time()
    tenant, devices = "tn-" + "t" * 16, ["dev-" + f"{i:x}" * 24 for i in range(1, 4)]
    with store.transaction() as s:
        s.add(Tenant(id=tenant, name="acme", created_at=now))
        s.flush()
        for d in devices:
            s.add(Device(id=d, tenant_id=tenant, public_key="k", hostname=d[-4:], agent_version="t",
                         status="approved", enrolled_at=now))
    try:
        yield Db(store, tenant, devices)
    finally:
        store.dispose()


def _alert(s: Session, db: Db, n: int, *, severity: str = "critical", device: str | None = None,
           at: float, kind: str = "flood") -> AlertRow:
    [row] = raise_alert(s, [db.tenant], kind=kind, severity=severity,  # type: ignore[arg-type]
                        dedup=f"{device}:{n}", subject=f"alert {n}", detail="d", now=at, device_id=device)
    return row


def test_T16_default_view_of_250_critical_alerts_keeps_another_devices_warning(db: Db) -> None:
    now = time.time()
    flooder, honest = db.devices[0], db.devices[1]
    with db.store.transaction() as s:
        _alert(s, db, 0, severity="warning", device=honest, at=now - 3600)
        _alert(s, db, 0, severity="info", at=now - 7200, kind="server")  # no device: never capped
        for i in range(250):
            _alert(s, db, i, device=flooder, at=now + i)
    scope = AlertRow.tenant_id == db.tenant
    with db.store.read() as s:
        uncapped = alert_view(s, scope, per_device=0)  # the default page of 200, as before
        view = alert_view(s, scope)
        only = alert_view(s, scope, device=flooder, limit=1000)
    assert {a.device_id for a in uncapped.rows} == {flooder}
    assert [(a.severity, a.device_id) for a in view.rows[-2:]] == [("warning", honest), ("info", None)]
    assert len(view.rows) == DEFAULT_PER_DEVICE + 2 and view.capped == [(flooder, 250 - DEFAULT_PER_DEVICE)]
    assert [a.last_seen for a in view.rows[:DEFAULT_PER_DEVICE]] == [now + i for i in range(249, 229, -1)]
    assert len(only.rows) == 250 and only.capped == []


def test_capped_header_names_at_most_fifty_devices_and_sums_the_rest(db: Db) -> None:
    now = time.time()
    many = [f"dev-{i:024x}" for i in range(MAX_CAPPED_LISTED + 3)]
    with db.store.transaction() as s:
        for d in many:
            for i in range(3):
                _alert(s, db, i, device=d, at=now + i)
    with db.store.read() as s:
        view = alert_view(s, AlertRow.tenant_id == db.tenant, per_device=1, limit=1000)
    assert len(view.rows) == len(many) and len(view.capped) == len(many)
    headers = view.headers()
    assert len(headers["Rampart-Alerts-Capped"].split(",")) == MAX_CAPPED_LISTED
    assert headers["Rampart-Alerts-Capped-More"] == "devices=3,alerts=6"


def _finding(s: Session, db: Db, key: str, *, resolved_at: float | None, device: int = 0) -> None:
    s.add(FindingRow(device_id=db.devices[device], key=key, tenant_id=db.tenant, kind="eol-os",
                     severity="warning", tool="", subject=key, evidence="{}", first_seen=0.0,
                     last_seen=resolved_at or time.time(), resolved_at=resolved_at))


def _delivery(s: Session, target: str, alert: AlertRow, state: str) -> None:
    s.add(Delivery(target_id=target, alert_id=alert.id, alert_count=alert.count, state=state,
                   attempts=1, next_attempt_at=0.0, last_detail="", created_at=0.0))


def _count(db: Db, model: Any, *where: Any) -> int:
    with db.store.read() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def test_retention_deletes_old_resolved_rows_only(db: Db) -> None:
    now = time.time()
    limits = ServerLimits()
    old_finding, old_alert = now - 91 * DAY, now - 181 * DAY
    with db.store.transaction() as s:
        _finding(s, db, "gone-long-ago", resolved_at=old_finding)
        _finding(s, db, "gone-lately", resolved_at=now - 89 * DAY)
        _finding(s, db, "still-open", resolved_at=None)
        rows = {name: _alert(s, db, i, device=db.devices[0], at=old_alert - DAY)
                for i, name in enumerate(("resolved-old", "resolved-new", "open", "acknowledged",
                                          "queued", "delivered", "failed"))}
        for name in ("resolved-old", "queued", "delivered", "failed"):
            resolve(rows[name], "tech", old_alert)
        resolve(rows["resolved-new"], "tech", now - 179 * DAY)
        rows["acknowledged"].status = "acknowledged"
        # A webhook target added after the alerts were raised (so nothing else was queued for them).
        target = "nt-" + "n" * 16
        s.add(NotifyTarget(id=target, tenant_id=db.tenant, kind="webhook", name="hook", config="{}",
                           min_severity="info", created_by="owner", created_at=now))
        s.flush()
        _delivery(s, target, rows["queued"], "pending")
        _delivery(s, target, rows["delivered"], "delivered")
        _delivery(s, target, rows["failed"], "failed")
        ids = {name: a.id for name, a in rows.items()}
    audit_before = _count(db, AuditEntry)
    deliveries_before = _count(db, Delivery)

    result = retention.sweep(db.store, limits, now, pause_s=0)

    with db.store.read() as s:
        findings = set(s.scalars(select(FindingRow.key)))
        alerts = {a.id for a in s.scalars(select(AlertRow))}
    assert findings == {"gone-lately", "still-open"}
    kept = {name for name, i in ids.items() if i in alerts}
    assert kept == {"resolved-new", "open", "acknowledged", "queued"}
    # The delivered and failed deliveries went with their alerts; the queued one (and its alert) stays.
    assert _count(db, Delivery, Delivery.alert_id == ids["queued"], Delivery.state == "pending") == 1
    assert _count(db, Delivery) == deliveries_before - 2
    assert (result.findings, result.alerts, result.deliveries, result.complete) == (1, 3, 2, True)
    assert _count(db, AuditEntry) == audit_before
    # Once the notification is delivered, the alert may go too; a second pass deletes nothing else.
    with db.store.transaction() as s:
        for d in s.scalars(select(Delivery).where(Delivery.alert_id == ids["queued"])):
            d.state = "delivered"
    again = retention.sweep(db.store, limits, now, pause_s=0)
    assert (again.findings, again.alerts) == (0, 1)
    assert retention.sweep(db.store, limits, now, pause_s=0).alerts == 0


class CountingStore(Store):
    """The real store, noting after each committed transaction how many rows are left."""

    def __init__(self, inner: Store) -> None:  # shares the inner store's engines
        self.__dict__.update(inner.__dict__)
        self.left: list[tuple[int, int]] = []

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with super().transaction() as s:
            yield s
        with self.read() as s:
            self.left.append((int(s.scalar(select(func.count()).select_from(FindingRow)) or 0),
                              int(s.scalar(select(func.count()).select_from(AlertRow)) or 0)))


def test_T16_retention_runs_in_bounded_transactions(db: Db) -> None:
    now = time.time()
    limits = ServerLimits(finding_retention_days=1, alert_retention_days=1)
    with db.store.transaction() as s:
        for i in range(25):
            _finding(s, db, f"f{i}", resolved_at=now - 2 * DAY - i, device=i % 3)
            resolve(_alert(s, db, i, device=db.devices[i % 3], at=now - 3 * DAY), "tech", now - 2 * DAY - i)
    store = CountingStore(db.store)
    first = retention.sweep(store, limits, now, batch=10, max_batches=2, pause_s=0)
    # At most 10 rows per transaction, and a pass stops after its budget of transactions.
    assert store.left == [(15, 25), (5, 25), (5, 15), (5, 5)]
    assert (first.findings, first.alerts, first.transactions, first.complete) == (20, 20, 4, False)
    store.left.clear()
    rest = retention.sweep(store, limits, now, batch=10, max_batches=2, pause_s=0)
    assert store.left == [(0, 5), (0, 0)]
    assert (rest.findings, rest.alerts, rest.complete) == (5, 5, True)
    with pytest.raises(ValueError):
        retention.sweep(store, limits, now, batch=0)


def test_retention_periods_come_from_the_config_file_and_are_validated(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"

    def load(**extra: Any) -> ServerLimits:
        cfg.write_text(json.dumps({"db_url": f"sqlite:///{tmp_path / 'x.db'}", **extra}))
        return load_config(tmp_path).limits

    assert (load().finding_retention_days, load().alert_retention_days) == (90, 180)
    limits = load(finding_retention_days=30, alert_retention_days=365)
    assert (limits.finding_retention_days, limits.alert_retention_days) == (30, 365)
    for key, bad in (("finding_retention_days", 0), ("alert_retention_days", 3651),
                     ("alert_retention_days", True), ("finding_retention_days", 1.5),
                     ("finding_retention_days", "90")):
        with pytest.raises(SetupError, match=f"{key} must be a whole number of days in 1..3650"):
            load(**{key: bad})


def test_retention_sweep_runs_on_the_server_with_its_clock(fleet: Fleet) -> None:
    f = fleet
    _report(f.honest, [HONEST])
    _report(f.flooder, [_flood(i) for i in range(3)])
    _report(f.honest, [])  # the honest finding is gone: resolved, with its alert
    store = Store(load_config(f.server.data_dir).db_url)
    try:
        def counts() -> tuple[int, int, int]:
            with store.read() as s:
                return (int(s.scalar(select(func.count()).select_from(FindingRow)) or 0),
                        int(s.scalar(select(func.count()).select_from(AlertRow).where(
                            AlertRow.status == "resolved")) or 0),
                        int(s.scalar(select(func.count()).select_from(AlertRow).where(
                            AlertRow.status == "open", AlertRow.device_id == f.flooder.device_id)) or 0))

        assert counts() == (4, 1, 3)
        with store.read() as s:
            logs = int(s.scalar(select(func.count()).select_from(AuditLogRow)) or 0)
            audit = int(s.scalar(select(func.count()).select_from(AuditEntry)) or 0)
        f.flooder.close()
        f.honest.close()
        f.server.stop()
        f.server.env["RAMPART_CLOCK_OFFSET_S"] = str(100 * DAY)  # past the findings' 90 days only
        f.server.start()
        wait_until(lambda: counts()[0] == 3, "the resolved finding deleted", timeout=30)
        assert counts() == (3, 1, 3)
        f.server.stop()
        f.server.env["RAMPART_CLOCK_OFFSET_S"] = str(200 * DAY)  # and past the alerts' 180 days
        f.server.start()
        wait_until(lambda: counts()[1] == 0, "the resolved alert deleted", timeout=30)
        assert counts() == (3, 0, 3)  # the flooder's open findings and alerts stay
        with store.read() as s:
            assert int(s.scalar(select(func.count()).select_from(AuditLogRow)) or 0) == logs
            assert int(s.scalar(select(func.count()).select_from(AuditEntry)) or 0) >= audit
    finally:
        store.dispose()
