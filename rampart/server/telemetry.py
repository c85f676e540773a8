"""The database side of telemetry: inventory ingest, materialisation, findings, alerts, overdue agents.

See docs/design/telemetry.md. Invariants:

* A report is decoded and checked *before* its transaction (bounded
  decompression, strict types, digests: :func:`rampart.wire.telemetry.decode_report`);
  a refused report changes nothing. Reports are committed in batches (one
  transaction per batch); the gateway acknowledges a report only after its
  batch committed.
* A delta is stored only when its ``base`` is the device's stored head, and
  then becomes the head; a full report replaces the snapshot and drops the
  pending deltas. Materialising applies the deltas in order and checks each
  digest (:func:`rampart.wire.inventory_delta.apply`); a delta that does not apply
  is dropped with every later one, the head falls back to the last good
  snapshot, and the agent must send a full report.
* Findings and alerts follow the reports: one finding row per (device, key),
  one live alert per (device, finding key); a finding the agent no longer
  reports is resolved with its alert, unless the report carries an
  ``inventory-truncated`` finding (a report cut at its limits resolves
  nothing). A finding a tenant's suppression rule matches is stored marked
  ``suppressed`` and keeps no live alert (:mod:`rampart.server.suppression`).
  Only approved devices' reports are ingested (S3).
* A device's findings cost its own budget (threat T16): at most
  ``max_findings_per_device`` open findings are kept, the most severe first;
  beyond that one ``findings-over-budget`` alert names the device instead of
  thousands. An ingest transaction writes at most ``findings_per_transaction``
  findings (a batch is split), so a flood never holds the write lock long.
* What a device says of itself is attacker text: a hostname or OS name
  holding control, bidi or invisible format characters raises a
  ``suspicious-identity`` finding (key ``server:identity``) on that device. Keys
  under ``server:`` are the server's own: an agent cannot report, hide or
  resolve them.
* The imported tool catalog lives in the store (``settings``), so every
  server process sends agents the same one.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import threading
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Table, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rampart.catalog import Catalog, CatalogError, builtin_catalog, decode_catalog, encode_catalog
from rampart.catalog.store import MAX_CATALOG_BYTES
from rampart.textsafe import is_safe, safe_line
from rampart.wire.finding import Finding
from rampart.wire.inventory import Inventory, decode, encode
from rampart.wire.inventory_delta import DeltaError, apply, digest
from rampart.wire.telemetry import Report, ReportError, ToolSeen, decode_report_blob, inflate, report_blob

from . import suppression
from .alerts import LIVE, SEVERITY_RANK, AlertSpec, enqueue, live_by_key, raise_alert, raise_many, resolve
from .alerts import MAX_DETAIL as MAX_ALERT_DETAIL
from .config import ServerLimits
from .db import Store
from .models import (
    AlertRow,
    Device,
    DeviceInventory,
    FindingRow,
    InventoryDelta,
    SanctionedTool,
    Setting,
    Tenant,
)
from .tenant_cache import TenantCache

log = logging.getLogger("rampart.server.telemetry")

#: Core tables for the set-based ingest statements (no ORM identity-map work per row).
FT: Table = FindingRow.__table__  # type: ignore[assignment]
DIT: Table = DeviceInventory.__table__  # type: ignore[assignment]
IDT: Table = InventoryDelta.__table__  # type: ignore[assignment]
DT: Table = Device.__table__  # type: ignore[assignment]
#: A device's stored inventory head, built once (a Core statement: no ORM work per connection).
_HEAD_OF_DEVICE = select(DIT.c.head).where(DIT.c.device_id == bindparam("device"))
#: What the overdue sweep reads of each approved device (sweep_overdue): columns, not objects.
_APPROVED_CONTACTS = (
    select(DT.c.id, DT.c.tenant_id, DT.c.hostname, DT.c.last_seen,
           func.coalesce(DT.c.approved_at, DT.c.enrolled_at), DIT.c.updated_at)
    .select_from(DT.outerjoin(DIT, DIT.c.device_id == DT.c.id)).where(DT.c.status == "approved"))
#: Seconds a tenant's detection settings (sanctioned tools, dormant days, the catalog) are shared
#: by its new connections before they are read again.
CONNECT_DETECTION_TTL_S = 2.0

CATALOG_KEY = "catalog.v1"
CATALOG_META_KEY = "catalog.meta"
OFFLINE = "agent-offline"
OVERDUE = "agent-overdue"
OVER_BUDGET = "findings-over-budget"
#: The agent's finding that its inventory was cut at the limits: while reported, nothing resolves by absence.
TRUNCATED = "inventory-truncated"
IDENTITY = "suspicious-identity"
#: Finding keys the server itself writes; agents' findings under this prefix are ignored.
SERVER_KEY_PREFIX = "server:"
IDENTITY_KEY = SERVER_KEY_PREFIX + "identity"
_AT: Table = AlertRow.__table__  # type: ignore[assignment]
#: The live offline/overdue alerts; sweep_overdue compares their keys with what it wants.
_LIVE_CONTACT = (_AT.c.kind.in_((OFFLINE, OVERDUE)), _AT.c.status.in_(LIVE))
_LIVE_CONTACT_ALERTS = select(_AT.c.dedup_key).where(*_LIVE_CONTACT)
#: Most severe first, for the per-device findings budget.
_SEVERITY_RANK = {"critical": 0, "high": 1, "warning": 2}
#: Stored snapshots are compressed; this bounds what reading one back may cost.
MAX_SNAPSHOT_BYTES = 64 << 20


class Refused(Exception):
    """A report was refused; the text is sent back to the agent as an ``error``."""


class NotYet(Refused):
    """Refused for now through no fault of the device (it is pending approval): not counted against it."""


Outcome = Literal["stored", "full"] | Refused


@dataclass(frozen=True, slots=True)
class Incoming:
    """One ``inventory`` message from an authenticated device connection."""

    device_id: str
    tenant_id: str
    report: str
    result: str
    base: str | None


@dataclass(frozen=True, slots=True)
class _Decoded:
    item: Incoming
    report: Report
    #: As stored: zlib of the canonical snapshot (full), or the agent's compressed report (delta).
    blob: bytes
    tools: str


@dataclass(frozen=True, slots=True)
class CatalogInfo:
    """The imported catalog (None when there is none) and what the server sends agents."""

    sha256: str
    data: bytes
    catalog: Catalog
    #: base64 of zlib of ``data``: the ``catalog`` field of a ``detection`` message.
    blob: str
    meta: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class StoredInventory:
    inventory: Inventory
    digest: str
    updated_at: float
    snapshot_at: float
    #: Deltas applied on reading; ``refetch`` is set when one did not apply and a full report is needed.
    applied: int
    refetch: bool


def _pack(data: bytes) -> bytes:
    return zlib.compress(data, 6)


def finding_dedup(device_id: str, key: str) -> str:
    """The alert dedup key of one finding on one device (keys may be longer than alert keys)."""
    return f"{device_id}:{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()[:32]}"


def _alert_severity(severity: str) -> Literal["warning", "critical"]:
    return "warning" if severity == "warning" else "critical"


def _detail(device_id: str, hostname: str, f: Finding, extra: str = "") -> str:
    ev = "; ".join(f"{k}={v}" for k, v in f.evidence.items())
    return (f"device {device_id} ({hostname}); {f.kind} ({f.severity}); key {f.key}"
            + (f"; {extra}" if extra else "") + (f"; {ev}" if ev else ""))


def live_alert(s: Session, tenant_id: str, kind: str, dedup: str) -> AlertRow | None:
    key = f"{kind}:{dedup}"[:256]
    return s.scalars(select(AlertRow).where(
        AlertRow.tenant_id == tenant_id, AlertRow.dedup_key == key,
        AlertRow.status.in_(LIVE)).limit(1)).first()


class TelemetryStore:
    """Synchronous database operations for telemetry; the gateway and the API run them in threads."""

    def __init__(self, store: Store, limits: ServerLimits) -> None:
        self._store = store
        self._limits = limits
        self._builtin = builtin_catalog()
        self._catalog: CatalogInfo | None = None
        self._lock = threading.Lock()
        self.connect_detection: TenantCache[tuple[tuple[str, ...], int, CatalogInfo | None]] = \
            TenantCache(CONNECT_DETECTION_TTL_S)

    @property
    def limits(self) -> ServerLimits:
        return self._limits

    # --- the imported catalog --------------------------------------------------------------------

    def catalog_info(self, s: Session | None = None) -> CatalogInfo | None:
        """The imported catalog, cached per digest; None when none was imported."""
        if s is None:
            with self._store.read() as rs:
                return self.catalog_info(rs)
        meta_text = s.scalar(select(Setting.value).where(Setting.key == CATALOG_META_KEY))
        if not meta_text:
            return None
        meta = json.loads(meta_text)
        sha = str(meta.get("sha256", ""))
        with self._lock:
            cached = self._catalog
        if cached is not None and cached.sha256 == sha:
            return cached
        text = s.scalar(select(Setting.value).where(Setting.key == CATALOG_KEY)) or ""
        data = text.encode()
        if hashlib.sha256(data).hexdigest() != sha:
            log.error("the stored catalog does not match its digest; using the built-in catalog only")
            return None
        try:
            catalog = decode_catalog(data)
        except CatalogError as exc:
            log.error("the stored catalog is refused (%s); using the built-in catalog only", exc)
            return None
        info = CatalogInfo(sha, data, catalog, base64.b64encode(_pack(data)).decode("ascii"), meta)
        with self._lock:
            self._catalog = info
        return info

    def merged_catalog(self, s: Session | None = None) -> Catalog:
        info = self.catalog_info(s)
        return self._builtin if info is None else self._builtin.merged(info.catalog)

    @property
    def builtin(self) -> Catalog:
        return self._builtin

    def store_catalog(self, s: Session, catalog: Catalog, meta: dict[str, Any]) -> str:
        """Keep ``catalog`` as the imported one (inside the caller's transaction); return its digest."""
        data = encode_catalog(catalog)
        if len(data) > MAX_CATALOG_BYTES:
            raise CatalogError(f"the catalog is larger than {MAX_CATALOG_BYTES} bytes")
        self._builtin.merged(catalog)  # must merge cleanly (raises ValueError otherwise)
        sha = hashlib.sha256(data).hexdigest()
        doc = {**meta, "sha256": sha, "tools": len(catalog)}
        for key, value in ((CATALOG_KEY, data.decode()), (CATALOG_META_KEY, json.dumps(doc, sort_keys=True))):
            row = s.get(Setting, key)
            if row is None:
                s.add(Setting(key=key, value=value))
            else:
                row.value = value
        s.flush()
        return sha

    # --- detection configuration -----------------------------------------------------------------

    @staticmethod
    def fingerprint(sanctioned: Sequence[str], dormant_days: int, catalog_sha256: str) -> str:
        doc = json.dumps([sorted(sanctioned), dormant_days, catalog_sha256], separators=(",", ":"))
        return hashlib.sha256(doc.encode()).hexdigest()

    def detection_configs(self) -> tuple[dict[str, tuple[list[str], int]], CatalogInfo | None]:
        """Every tenant's (sanctioned slugs, dormant days), and the imported catalog."""
        with self._store.read() as s:
            out: dict[str, tuple[list[str], int]] = {
                t: ([], days) for t, days in s.execute(select(Tenant.id, Tenant.dormant_days))}
            for tenant_id, slug in s.execute(select(SanctionedTool.tenant_id, SanctionedTool.slug)
                                             .order_by(SanctionedTool.slug)):
                if tenant_id in out:
                    out[tenant_id][0].append(slug)
            return out, self.catalog_info(s)

    def on_connect(self, tenant_id: str,
                   device_id: str) -> tuple[list[str], int, CatalogInfo | None, str | None]:
        """What a new connection is sent: sanctioned slugs, dormant days, the catalog, the stored head.

        The tenant's part is shared by its connections for CONNECT_DETECTION_TTL_S (a change
        through this process forgets it: :meth:`forget_detection`); the head is the device's own."""
        sanctioned, days, info = self.connect_detection.get(
            tenant_id, lambda: self._tenant_detection(tenant_id))
        with self._store.read() as s:
            head = s.execute(_HEAD_OF_DEVICE, {"device": device_id}).scalar()
        return list(sanctioned), days, info, head

    def _tenant_detection(self, tenant_id: str) -> tuple[tuple[str, ...], int, CatalogInfo | None]:
        with self._store.read() as s:
            sanctioned = tuple(s.scalars(select(SanctionedTool.slug).where(
                SanctionedTool.tenant_id == tenant_id).order_by(SanctionedTool.slug)))
            days = s.scalar(select(Tenant.dormant_days).where(Tenant.id == tenant_id)) or 30
            return sanctioned, int(days), self.catalog_info(s)

    def forget_detection(self) -> None:
        """Sanctioned tools, dormant days or the catalog changed (committed): read them afresh."""
        self.connect_detection.forget()

    # --- ingest ----------------------------------------------------------------------------------

    def _decode(self, item: Incoming) -> _Decoded:
        try:
            blob = report_blob(item.report)
            report = decode_report_blob(blob, max_bytes=self._limits.max_inventory_bytes)
        except ReportError as exc:
            raise Refused(str(exc)) from None
        if report.full is not None:
            if item.base is not None:
                raise Refused("a full report has no base")
            data = encode(report.full)
            if hashlib.sha256(data).hexdigest() != item.result:
                raise Refused("the snapshot does not match its digest")
            blob = _pack(data)  # the snapshot alone, canonical
        else:
            assert report.delta is not None
            if report.delta.base != item.base or report.delta.result != item.result:
                raise Refused("the delta's base or result does not match the message")
            # A delta is kept as the agent's compressed report (it was just decoded and checked).
        tools = json.dumps([dataclasses.asdict(_tool_doc(t)) for t in report.tools], sort_keys=True,
                           separators=(",", ":")) if report.tools else "[]"
        return _Decoded(item, report, blob, tools)

    def ingest_batch(self, items: Sequence[Incoming], now: float) -> tuple[list[Outcome], set[str]]:
        """Decode and commit a batch of reports in one transaction.

        Returns one outcome per item ("stored", "full": send a full report,
        or the Refused reason) and the devices whose pending deltas reached
        the compaction threshold.
        """
        outcomes: list[Outcome | None] = [None] * len(items)
        decoded: list[tuple[int, _Decoded]] = []
        for i, item in enumerate(items):
            try:
                decoded.append((i, self._decode(item)))
            except Refused as exc:
                outcomes[i] = exc
        due: set[str] = set()
        for chunk in self._chunks(decoded):
            try:
                with self._store.transaction() as s:
                    for i, result in self._commit(s, [d for _, d in chunk], now, due):
                        outcomes[chunk[i][0]] = result
            except IntegrityError:  # a race with another server process: one report at a time
                for i, d in chunk:
                    try:
                        with self._store.transaction() as s:
                            outcomes[i] = self._commit(s, [d], now, due)[0][1]
                    except IntegrityError:
                        outcomes[i] = "full"
        return [o if o is not None else Refused("not processed") for o in outcomes], due

    def _chunks(self, decoded: list[tuple[int, _Decoded]]) -> Iterable[list[tuple[int, _Decoded]]]:
        """Split a batch so one transaction writes at most ``findings_per_transaction`` findings."""
        cap = self._limits.max_findings_per_device
        limit = max(self._limits.findings_per_transaction, 1)
        chunk: list[tuple[int, _Decoded]] = []
        cost = 0
        for item in decoded:
            r = item[1].report
            c = min(len(r.findings) + len(r.earlier), cap)
            if chunk and cost + c > limit:
                yield chunk
                chunk, cost = [], 0
            chunk.append(item)
            cost += c
        if chunk:
            yield chunk

    def _commit(self, s: Session, batch: Sequence[_Decoded], now: float,
                due: set[str]) -> list[tuple[int, Outcome]]:
        """One batch in the caller's transaction, with set-based statements (a few per batch, not per
        report): the common case (a delta, findings unchanged) costs one row insert per report."""
        ids = sorted({d.item.device_id for d in batch})
        devices = {r.id: _Dev(r.id, r.tenant_id, r.status, r.hostname) for r in s.execute(
            select(Device.id, Device.tenant_id, Device.status, Device.hostname).where(Device.id.in_(ids)))}
        heads: dict[str, tuple[str, str]] = {
            r.device_id: (r.head, r.tools) for r in s.execute(
                select(DeviceInventory.device_id, DeviceInventory.head, DeviceInventory.tools)
                .where(DeviceInventory.device_id.in_(ids)).with_for_update())}
        pending: dict[str, tuple[int, int]] = {
            r[0]: (int(r[1]), int(r[2] or 0)) for r in s.execute(
                select(InventoryDelta.device_id, func.count(), func.max(InventoryDelta.seq))
                .where(InventoryDelta.device_id.in_(ids)).group_by(InventoryDelta.device_id))}
        open_now: dict[str, dict[str, tuple[str, ...]]] = {}
        for r in s.execute(select(FT.c.device_id, FT.c.key, FT.c.kind, FT.c.severity, FT.c.tool, FT.c.subject,
                                  FT.c.evidence).where(FT.c.device_id.in_(ids), FT.c.resolved_at.is_(None))):
            open_now.setdefault(r[0], {})[r[1]] = tuple(r[2:])
        out: list[tuple[int, Outcome]] = []
        rules: dict[str, list[suppression.Rule]] = {}  # per tenant, read once per batch
        batch_sql = _BatchSql()
        stored: list[str] = []
        for i, d in enumerate(batch):
            dev_id = d.item.device_id
            device = devices.get(dev_id)
            if device is None or device.tenant_id != d.item.tenant_id:
                out.append((i, Refused("unknown device")))
                continue
            if device.status != "approved":
                out.append((i, NotYet("this device is pending approval: telemetry is accepted once an "
                                      "approver approves it")))
                continue
            current = heads.get(dev_id)
            if d.report.full is not None:
                batch_sql.run(s)  # what this batch queued for the device goes first
                s.execute(delete(IDT).where(IDT.c.device_id == dev_id))
                values = {"digest": d.item.result, "snapshot": d.blob, "snapshot_at": now,
                          "head": d.item.result, "updated_at": now, "tools": d.tools}
                if current is None:
                    s.execute(insert(DIT).values(device_id=dev_id, **values))
                else:
                    s.execute(update(DIT).where(DIT.c.device_id == dev_id).values(**values))
                heads[dev_id] = (d.item.result, d.tools)
                pending[dev_id] = (0, pending.get(dev_id, (0, 0))[1])
            else:
                if current is None or current[0] != d.item.base:
                    out.append((i, "full"))
                    continue
                count, seq = pending.get(dev_id, (0, 0))
                batch_sql.deltas.append({"device_id": dev_id, "seq": seq + 1, "base": d.item.base,
                                         "result": d.item.result, "data": d.blob, "received_at": now})
                batch_sql.heads[dev_id] = {"b_dev": dev_id, "b_head": d.item.result, "b_at": now}
                if d.tools != current[1]:
                    batch_sql.tools[dev_id] = {"b_dev": dev_id, "b_tools": d.tools}
                pending[dev_id] = (count + 1, seq + 1)
                heads[dev_id] = (d.item.result, d.tools)
                if count + 1 >= self._limits.inventory_compact_after:
                    due.add(dev_id)
            self._findings(s, device, d.report, open_now.setdefault(dev_id, {}), now, rules)
            self._identity(s, device, d.report, open_now[dev_id], now)
            stored.append(dev_id)
            out.append((i, "stored"))
        batch_sql.run(s)
        if stored:
            reporting = sorted(set(stored))
            s.flush()
            s.execute(update(FT).where(FT.c.device_id.in_(reporting), FT.c.resolved_at.is_(None))
                      .values(last_seen=now))
            s.execute(update(DT).where(DT.c.id.in_(reporting)).values(last_seen=now))
            self._resolve_agent_alerts(s, [devices[x] for x in reporting], now)
        return out

    # --- findings and alerts ---------------------------------------------------------------------

    def _findings(self, s: Session, device: _Dev, report: Report, open_now: dict[str, tuple[str, ...]],
                  now: float, rules_cache: dict[str, list[suppression.Rule]] | None = None) -> None:
        """Open, update and resolve ``device``'s findings and their alerts as ``report`` says.

        Keeps the device within its findings budget: the most severe
        ``max_findings_per_device`` are kept, earlier (gone) findings only in
        the room left, and one ``findings-over-budget`` alert says what was dropped.
        """
        cap = self._limits.max_findings_per_device
        agent_findings = sorted((f for f in report.findings if not f.key.startswith(SERVER_KEY_PREFIX)),
                                key=lambda f: (_SEVERITY_RANK.get(f.severity, 9), f.key))
        cache = rules_cache if rules_cache is not None else {}
        if device.tenant_id not in cache:
            cache[device.tenant_id] = suppression.load(s, device.tenant_id)
        rules = cache[device.tenant_id]
        reported: dict[str, Finding] = {}
        silenced: dict[str, str] = {}  # finding key -> rule id
        for f in agent_findings[:cap]:
            f, rule_id = suppression.apply(rules, device.id, f, now)
            reported[f.key] = f
            if rule_id:
                silenced[f.key] = rule_id
        earlier = [e for e in report.earlier if not e.finding.key.startswith(SERVER_KEY_PREFIX)]
        room = max(0, cap - len(reported))
        dropped = len(agent_findings) - len(reported) + max(0, len(earlier) - room)
        self._over_budget(s, device, dropped, len(agent_findings), cap, now)
        who = f"device:{device.id}"
        opened: list[Finding] = []
        changed: list[dict[str, Any]] = []
        moved: list[tuple[Finding, str]] = []
        for key, f in reported.items():
            fields = _fields(f)
            known = open_now.get(key)
            if known is None:
                opened.append(f)
                open_now[key] = fields
            elif known != fields:
                changed.append({"b_key": key, **{f"b_{n}": v for n, v in zip(_FIELDS, fields, strict=True)}})
                unsilenced = key not in silenced and '"suppressed":' in known[4]
                if (known[1:4:2] != fields[1:4:2] or unsilenced) and key not in silenced:
                    moved.append((f, known[3]))  # severity or subject changed, or no longer suppressed
                open_now[key] = fields
        # A report cut at the inventory limits proves nothing about what it leaves out: findings it
        # does not repeat stay open until a complete report (issue 15: a flood must not resolve them).
        truncated = any(f.kind == TRUNCATED for f in reported.values())
        gone = [] if truncated else [
            (k, open_now.pop(k)[0]) for k in [k for k in open_now if k not in reported
                                              and not k.startswith(SERVER_KEY_PREFIX)]]
        past = [e for e in earlier[:room] if e.finding.key not in reported and e.finding.key not in open_now]
        # Set-based from here: a few statements per report, whatever the number of findings.
        self._write_rows(s, device, [(f, None) for f in opened] + [(e.finding, now) for e in past], now)
        if changed:
            s.execute(update(FT).where(FT.c.device_id == device.id, FT.c.key == bindparam("b_key"))
                      .values({name: bindparam(f"b_{name}") for name in _FIELDS}), changed)
        for i in range(0, len(gone), 500):
            s.execute(update(FT).where(FT.c.device_id == device.id,
                                       FT.c.key.in_([k for k, _ in gone[i:i + 500]])).values(resolved_at=now))
        for alert in live_by_key(s, device.tenant_id, (
                f"{kind}:{finding_dedup(device.id, k)}"[:256] for k, kind in gone)).values():
            resolve(alert, who, now)
        specs = [AlertSpec(f.kind, _alert_severity(f.severity), finding_dedup(device.id, f.key),
                           f"{device.hostname}: {f.subject}", _detail(device.id, device.hostname, f))
                 for f in opened if f.key not in silenced]
        specs += self._follow(s, device, moved, now)
        if silenced:  # a suppressed finding keeps no live alert
            for alert in live_by_key(s, device.tenant_id, (
                    f"{reported[k].kind}:{finding_dedup(device.id, k)}"[:256] for k in silenced)).values():
                key = next(k for k in silenced
                           if f"{reported[k].kind}:{finding_dedup(device.id, k)}"[:256] == alert.dedup_key)
                resolve(alert, f"suppression:{silenced[key]}", now)
        specs += [AlertSpec(e.finding.kind, _alert_severity(e.finding.severity),
                            finding_dedup(device.id, e.finding.key),
                            f"{device.hostname}: {e.finding.subject} (no longer seen)",
                            _detail(device.id, device.hostname, e.finding,
                                    f"seen by the agent from {_ts(e.first_seen)} to {_ts(e.last_seen)} "
                                    "(agent clock), gone by its next report")) for e in past]
        if specs:
            rows = raise_many(s, device.tenant_id, device.id, specs, now)
            for e in past:
                alert = rows[f"{e.finding.kind}:{finding_dedup(device.id, e.finding.key)}"[:256]]
                if alert.status != "resolved":
                    resolve(alert, who, now)

    @staticmethod
    def _follow(s: Session, device: _Dev, moved: list[tuple[Finding, str]], now: float) -> list[AlertSpec]:
        """Alerts follow their findings: a finding whose facts changed (installed -> running, a new
        subject, a higher severity) updates its live alert with the change recorded in its detail, and
        notifies again (a new count; an acknowledged alert is open again); with no live alert, a new one
        is raised."""
        if not moved:
            return []
        live = live_by_key(s, device.tenant_id,
                           (f"{f.kind}:{finding_dedup(device.id, f.key)}"[:256] for f, _ in moved))
        specs: list[AlertSpec] = []
        for f, before in moved:
            subject = f"{device.hostname}: {f.subject}"
            severity = _alert_severity(f.severity)
            row = live.get(f"{f.kind}:{finding_dedup(device.id, f.key)}"[:256])
            escalated = row is not None and SEVERITY_RANK[severity] > SEVERITY_RANK.get(row.severity, 1)
            change = (f"{'escalated' if escalated else 'changed'} at {_ts(now)}; "
                      f"was: {safe_line(before)[:200]}")
            detail = _detail(device.id, device.hostname, f, change)[:MAX_ALERT_DETAIL]
            if row is None:
                specs.append(AlertSpec(f.kind, severity, finding_dedup(device.id, f.key), subject, detail))
                continue
            row.subject, row.detail, row.last_seen = subject[:256], detail, now
            row.severity = severity if escalated else row.severity
            row.count += 1
            row.status, row.acked_by, row.acked_at = "open", None, None
            enqueue(s, row, now)  # the new count is delivered again
        return specs

    @staticmethod
    def _write_rows(s: Session, device: _Dev, rows: list[tuple[Finding, float | None]], now: float) -> None:
        """Insert (or reopen) finding rows, first seen now; ``resolved_at`` set for findings already gone."""
        if not rows:
            return
        keys = [f.key for f, _ in rows]
        existing: set[str] = set()
        for i in range(0, len(keys), 500):
            existing.update(s.scalars(select(FT.c.key).where(FT.c.device_id == device.id,
                                                             FT.c.key.in_(keys[i:i + 500]))))
        values = [{**dict(zip(_FIELDS, _fields(f), strict=True)), "first_seen": now, "last_seen": now,
                   "resolved_at": resolved} for f, resolved in rows]
        fresh = [{"device_id": device.id, "key": f.key, "tenant_id": device.tenant_id, **v}
                 for (f, _), v in zip(rows, values, strict=True) if f.key not in existing]
        again = [{"b_key": f.key, **{f"b_{n}": x for n, x in v.items()}}
                 for (f, _), v in zip(rows, values, strict=True) if f.key in existing]
        if fresh:
            s.execute(insert(FT), fresh)
        if again:
            s.execute(update(FT).where(FT.c.device_id == device.id, FT.c.key == bindparam("b_key"))
                      .values({name: bindparam(f"b_{name}") for name in (*_FIELDS, "first_seen", "last_seen",
                                                                          "resolved_at")}), again)

    @staticmethod
    def _over_budget(s: Session, device: _Dev, dropped: int, reported: int, cap: int, now: float) -> None:
        """Raise (or re-count) the device's one over-budget alert, or resolve it once it is within budget."""
        alert = live_alert(s, device.tenant_id, OVER_BUDGET, device.id)
        if dropped <= 0:
            if alert is not None:
                resolve(alert, f"device:{device.id}", now)
            return
        raise_alert(s, [device.tenant_id], kind=OVER_BUDGET, severity="warning", dedup=device.id,
                    subject=f"{device.hostname}: reports more findings than its budget",
                    detail=(f"device {device.id} ({device.hostname}) reported {reported} findings "
                            f"and earlier findings past its budget of {cap}; the {cap} most severe are kept, "
                            f"{dropped} were not stored. A device reporting this many is likely compromised "
                            "or broken."),
                    now=now, device_id=device.id)

    def _identity(self, s: Session, device: _Dev, report: Report, open_now: dict[str, tuple[str, ...]],
                  now: float) -> None:
        """Open, keep or resolve the ``suspicious-identity`` finding from the names the device reports.

        The enrolled hostname is checked on every report; the OS section when
        the report carries it (a full report, or a delta that changes it);
        otherwise the verdict on the OS fields stands as last stored.
        """
        bad: dict[str, str] = {}
        if not is_safe(device.hostname):
            bad["enrolled-hostname"] = safe_line(device.hostname)
        os_info = report.full.os if report.full is not None else (
            report.delta.os.value if report.delta is not None and report.delta.os is not None else None)
        known = open_now.get(IDENTITY_KEY)
        os_known = report.full is not None or (report.delta is not None and report.delta.os is not None)
        if os_known:
            if os_info is not None:
                for name in ("hostname", "name", "id", "version_id", "codename", "kernel_release",
                             "kernel_version", "arch", "machine_id"):
                    value = getattr(os_info, name)
                    if not is_safe(value):
                        bad[f"os.{name}"] = safe_line(value)
        elif known is not None:  # the OS section did not change: keep what was found in it
            for k, v in json.loads(known[4]).items():
                if k.startswith("os."):
                    bad[k] = v
        if not bad:
            if known is not None:
                open_now.pop(IDENTITY_KEY)
                s.execute(update(FT).where(FT.c.device_id == device.id, FT.c.key == IDENTITY_KEY)
                          .values(resolved_at=now))
                alert = live_alert(s, device.tenant_id, IDENTITY, finding_dedup(device.id, IDENTITY_KEY))
                if alert is not None:
                    resolve(alert, f"device:{device.id}", now)
            return
        fields_ = ", ".join(sorted(bad))
        subject = f"names hold control, bidi or invisible characters: {fields_}"[:300]
        evidence = json.dumps(bad, sort_keys=True, separators=(",", ":"))
        row_fields = (IDENTITY, "high", "", subject, evidence)
        if known == row_fields:
            return
        row = s.get(FindingRow, {"device_id": device.id, "key": IDENTITY_KEY})
        if row is None:
            row = FindingRow(device_id=device.id, key=IDENTITY_KEY, tenant_id=device.tenant_id,
                             first_seen=now)
            s.add(row)
        elif known is None:
            row.first_seen = now
        row.kind, row.severity, row.tool, row.subject, row.evidence = row_fields
        row.last_seen, row.resolved_at = now, None
        open_now[IDENTITY_KEY] = row_fields
        raise_alert(s, [device.tenant_id], kind=IDENTITY, severity="critical",
                    dedup=finding_dedup(device.id, IDENTITY_KEY),
                    subject=f"{safe_line(device.hostname)[:80]}: {subject}",
                    detail=(f"device {device.id}: {subject}. What a device reports of itself is its "
                            "own text; these characters can disguise it in terminals and pages. "
                            "Shown escaped: "
                            + "; ".join(f"{k}={v}" for k, v in sorted(bad.items()))),
                    now=now, device_id=device.id)

    def device_alert(self, device_id: str, tenant_id: str, kind: str,
                     severity: Literal["warning", "critical"], what: str, detail: str, now: float) -> None:
        """Raise (or re-count) one alert about a device's own behaviour (its budget, its connections)."""
        with self._store.transaction() as s:
            host = s.scalar(select(Device.hostname).where(Device.id == device_id)) or device_id
            raise_alert(s, [tenant_id], kind=kind, severity=severity, dedup=device_id,
                        subject=f"{safe_line(host)[:80]}: {what}",
                        detail=f"device {device_id} ({safe_line(host)[:200]}): {detail}", now=now,
                        device_id=device_id)

    @staticmethod
    def _resolve_agent_alerts(s: Session, devices: Iterable[_Dev], now: float) -> None:
        by_key = {f"{kind}:{d.id}": d for d in devices for kind in (OFFLINE, OVERDUE)}
        for alert in s.scalars(select(AlertRow).where(AlertRow.dedup_key.in_(sorted(by_key)),
                                                      AlertRow.status.in_(LIVE))):
            device = by_key[alert.dedup_key]
            if alert.tenant_id == device.tenant_id:
                resolve(alert, f"device:{device.id}", now)

    # --- reading and materialising ---------------------------------------------------------------

    def heads(self, device_ids: Sequence[str]) -> dict[str, str]:
        """The stored head digest of each device that has an inventory (cheap: no snapshot is read)."""
        out: dict[str, str] = {}
        with self._store.read() as s:
            for i in range(0, len(device_ids), 500):
                out.update({r[0]: r[1] for r in s.execute(
                    select(DIT.c.device_id, DIT.c.head).where(DIT.c.device_id.in_(device_ids[i:i + 500])))})
        return out

    def inventory(self, device_id: str, now: float) -> StoredInventory | None:
        """The device's current inventory: the snapshot with every pending delta applied (and kept)."""
        with self._store.read() as s:
            row = s.get(DeviceInventory, device_id)
            if row is None:
                return None
            base_digest, snapshot, updated_at, snapshot_at = row.digest, row.snapshot, row.updated_at, \
                row.snapshot_at
            deltas = [(d.seq, d.data) for d in s.scalars(
                select(InventoryDelta).where(InventoryDelta.device_id == device_id)
                .order_by(InventoryDelta.seq))]
        inv = decode(inflate(snapshot, MAX_SNAPSHOT_BYTES))
        last_seq: int | None = None
        bad_seq: int | None = None
        applied = 0
        for seq, data in deltas:
            try:
                delta = decode_report_blob(data, max_bytes=self._limits.max_inventory_bytes).delta
                if delta is None:
                    raise DeltaError("stored delta row holds no delta")
                inv = apply(inv, delta)
            except (DeltaError, ReportError, ValueError) as exc:
                log.warning("device %s: delta %d does not apply (%s); asking for a full report",
                            device_id, seq, exc)
                bad_seq = seq
                break
            last_seq = seq
            applied += 1
        cur = digest(inv)
        if last_seq is not None or bad_seq is not None:
            self._compact(device_id, base_digest, last_seq, bad_seq, inv, cur, now)
        return StoredInventory(inv, cur, updated_at, now if last_seq is not None else snapshot_at, applied,
                               bad_seq is not None)

    def compact(self, device_id: str, now: float) -> bool:
        """Fold pending deltas into the snapshot; True when the agent must send a full report."""
        got = self.inventory(device_id, now)
        return got is not None and got.refetch

    def _compact(self, device_id: str, base_digest: str, last_seq: int | None, bad_seq: int | None,
                 inv: Inventory, cur: str, now: float) -> None:
        with self._store.transaction() as s:
            row = s.scalars(select(DeviceInventory).where(DeviceInventory.device_id == device_id)
                            .with_for_update()).first()
            if row is None or row.digest != base_digest:
                return  # a full report replaced the snapshot meanwhile
            if last_seq is not None:
                s.execute(delete(InventoryDelta).where(InventoryDelta.device_id == device_id,
                                                       InventoryDelta.seq <= last_seq))
                row.snapshot, row.digest, row.snapshot_at = _pack(encode(inv)), cur, now
            if bad_seq is not None:
                s.execute(delete(InventoryDelta).where(InventoryDelta.device_id == device_id,
                                                       InventoryDelta.seq >= bad_seq))
                row.head = cur

    # --- overdue and offline agents --------------------------------------------------------------

    def sweep_overdue(self, now: float, connected: frozenset[str]) -> tuple[int, int]:
        """Raise ``agent-offline`` / ``agent-overdue`` alerts (once each); return how many were raised.

        The fleet is scanned in a read snapshot, column by column (no ORM object per device, no
        write lock while 10,000 rows are read); a write transaction opens only when an alert is to
        be raised or resolved, and re-reads the live alerts inside it."""
        cutoff = now - self._limits.overdue_after_s
        minutes = round(self._limits.overdue_after_s / 60)
        want: dict[str, tuple[str, str, str, str, str]] = {}  # key -> (device, tenant, kind, subject, detail)
        with self._store.read() as s:
            for dev, tenant, hostname, last_seen, since, inv_at in s.execute(_APPROVED_CONTACTS):
                contact = max(last_seen or 0.0, inv_at or 0.0, since)
                if contact < cutoff and dev not in connected:
                    want[f"{OFFLINE}:{dev}"] = (
                        dev, tenant, OFFLINE, f"{hostname}: agent offline",
                        f"device {dev} ({hostname}) has not been in contact for more than "
                        f"{minutes} minutes (last contact {_ts(contact)})")
                elif (inv_at or since) < cutoff:
                    want[f"{OVERDUE}:{dev}"] = (
                        dev, tenant, OVERDUE, f"{hostname}: inventory overdue",
                        f"device {dev} ({hostname}) is in contact but sent no inventory for "
                        f"more than {minutes} minutes (last inventory {_ts(inv_at)})")
            live_keys = set(s.execute(_LIVE_CONTACT_ALERTS).scalars())
        if live_keys == want.keys():
            return 0, 0
        raised = [0, 0]
        with self._store.transaction() as s:
            live = {a.dedup_key: a for a in s.scalars(select(AlertRow).where(*_LIVE_CONTACT))}
            for key, (dev, tenant, kind, subject, detail) in want.items():
                if key in live:
                    continue
                raise_alert(s, [tenant], kind=kind, severity="warning", dedup=dev,
                            subject=subject, detail=detail, now=now, device_id=dev)
                raised[kind == OVERDUE] += 1
            for key, alert in live.items():
                if key not in want:  # back in contact, or the device was removed from approval
                    resolve(alert, "server", now)
        return raised[0], raised[1]


def _ts(t: float | None) -> str:
    if not t:
        return "never"
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


_FIELDS = ("kind", "severity", "tool", "subject", "evidence")


def _fields(f: Finding) -> tuple[str, ...]:
    """A finding's stored columns, in :data:`_FIELDS` order."""
    evidence = json.dumps(f.evidence, sort_keys=True, separators=(",", ":"))
    return (f.kind, f.severity, f.tool, f.subject, evidence)


@dataclass(frozen=True, slots=True)
class _Dev:
    id: str
    tenant_id: str
    status: str
    hostname: str


class _BatchSql:
    """Statements a batch queues: delta rows, new heads, new tool lists; run as three executemany."""

    def __init__(self) -> None:
        self.deltas: list[dict[str, Any]] = []
        self.heads: dict[str, dict[str, Any]] = {}
        self.tools: dict[str, dict[str, Any]] = {}

    def run(self, s: Session) -> None:
        if self.deltas:
            s.execute(insert(IDT), self.deltas)
        if self.heads:
            s.execute(update(DIT).where(DIT.c.device_id == bindparam("b_dev"))
                      .values(head=bindparam("b_head"), updated_at=bindparam("b_at")),
                      list(self.heads.values()))
        if self.tools:
            s.execute(update(DIT).where(DIT.c.device_id == bindparam("b_dev"))
                      .values(tools=bindparam("b_tools")), list(self.tools.values()))
        self.deltas, self.heads, self.tools = [], {}, {}


@dataclass(frozen=True, slots=True)
class _ToolDoc:
    slug: str
    found_by: list[str]
    portable: bool
    evidence: dict[str, str]


def _tool_doc(t: ToolSeen) -> _ToolDoc:
    return _ToolDoc(t.slug, list(t.found_by), t.portable, dict(t.evidence))
