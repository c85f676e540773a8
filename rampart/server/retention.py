"""Retention: resolved findings and resolved alerts are deleted once older than their period.

A device can make the server store findings and alerts (threat T16, a device
flooding its own telemetry); without a retention rule they only ever grow.
The server's periodic sweep (:func:`sweep`, every
``ServerLimits.retention_interval_s``) deletes:

* findings resolved more than ``finding_retention_days`` ago (default 90);
* alerts resolved more than ``alert_retention_days`` ago (default 180), with
  their finished deliveries (``deliveries`` rows delivered or failed: the
  notification outbox references alerts);
* every record of a device retired more than ``retired_device_retention_days``
  ago (default 90; :func:`.purge.purge_device`, one device per transaction,
  each removal written to the tenant's audit log);
* the audit log of a deleted tenant once its ``audit_until`` has passed
  (``deleted_tenant_audit_days`` after the deletion, default 365), with the
  log's checkpoint key and the tenant's tombstone.

Invariants:

* **Never anything live.** An open finding (``resolved_at`` unset), an open
  or acknowledged alert, and an alert with a notification still queued
  (a ``pending`` delivery) are never deleted. The condition is part of each
  DELETE statement itself, not only of the query that picked the rows, so a
  row that changed in between (a finding re-opened by its device) is left
  alone. A resolved alert never becomes live again (:mod:`.alerts`).
* **Bounded transactions.** One transaction deletes at most ``batch`` rows
  of one table (``ServerLimits.retention_batch``, 1,000), then commits and
  pauses, so the write lock is never held for long and agents' reports,
  receipts and operators' writes interleave with the sweep. One pass does at
  most ``max_batches`` transactions per table; what is left waits for the
  next pass.
* **A live audit log is untouched.** Audit entries form an append-only Merkle
  log (docs/trust-chain.md, "The audit log"); retention deletes a log only
  as a whole, and only the log of a tenant deleted longer ago than its
  audit period.

See docs/alerts.md, "Retention".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, Result, and_, delete, exists, select, tuple_
from sqlalchemy.orm import Session

from .audit import SERVER_LOG, AuditLog
from .config import ServerLimits
from .db import Store
from .models import AlertRow, DeletedTenant, Delivery, Device, FindingRow
from .purge import purge_audit_log, purge_device

log = logging.getLogger("rampart.server.retention")

DAY_S = 86400
#: Transactions per table in one pass (with the default batch: 100,000 rows).
MAX_BATCHES = 100
#: Pause between two transactions, so writers queued on the lock get their turn.
PAUSE_S = 0.05


@dataclass(frozen=True, slots=True)
class RetentionResult:
    """What one pass deleted, in how many transactions, and whether anything due is left."""

    findings: int
    alerts: int
    deliveries: int
    transactions: int
    complete: bool
    devices: int = 0
    audit_logs: int = 0


def finding_due(cutoff: float) -> ColumnElement[bool]:
    """A finding retention may delete: resolved before ``cutoff`` (never an open one)."""
    return and_(FindingRow.resolved_at.is_not(None), FindingRow.resolved_at < cutoff)


def alert_due(cutoff: float) -> ColumnElement[bool]:
    """An alert retention may delete: resolved before ``cutoff``, with no notification queued."""
    queued = exists().where(Delivery.alert_id == AlertRow.id, Delivery.state == "pending")
    return and_(AlertRow.status == "resolved", AlertRow.resolved_at.is_not(None),
                AlertRow.resolved_at < cutoff, ~queued)


def _delete_findings(s: Session, cutoff: float, size: int, counts: dict[str, int]) -> int:
    keys = [(d, k) for d, k in s.execute(
        select(FindingRow.device_id, FindingRow.key).where(finding_due(cutoff))
        .order_by(FindingRow.resolved_at).limit(size))]
    if keys:
        counts["findings"] += _rows(s.execute(delete(FindingRow).where(
            tuple_(FindingRow.device_id, FindingRow.key).in_(keys), finding_due(cutoff))))
    return len(keys)


def _delete_alerts(s: Session, cutoff: float, size: int, counts: dict[str, int]) -> int:
    ids = list(s.scalars(select(AlertRow.id).where(alert_due(cutoff))
                         .order_by(AlertRow.resolved_at).limit(size)))
    if ids:
        # Only finished deliveries go. A pending one keeps its alert (alert_due), and should one
        # appear meanwhile, the foreign key refuses the whole batch rather than orphan it.
        counts["deliveries"] += _rows(s.execute(delete(Delivery).where(
            Delivery.alert_id.in_(ids), Delivery.state != "pending")))
        counts["alerts"] += _rows(s.execute(delete(AlertRow).where(AlertRow.id.in_(ids), alert_due(cutoff))))
    return len(ids)


def _rows(result: Result[Any]) -> int:
    """Rows a DELETE removed (``Session.execute`` returns the cursor's result for DML)."""
    return cast(CursorResult[Any], result).rowcount


def _in_batches(store: Store, step: Callable[[Session], int], size: int, max_batches: int,
                pause_s: float) -> tuple[int, bool]:
    """Run ``step`` in one transaction each until it picks fewer than ``size`` rows (or the pass's
    budget of transactions is spent); return (transactions, whether nothing due is left)."""
    for n in range(1, max_batches + 1):
        with store.transaction() as s:
            picked = step(s)
        if picked < size:
            return n, True
        time.sleep(pause_s)
    return max_batches, False


def sweep(store: Store, limits: ServerLimits, now: float, *, batch: int | None = None,
          max_batches: int = MAX_BATCHES, pause_s: float = PAUSE_S,
          audit: AuditLog | None = None) -> RetentionResult:
    """One retention pass at ``now`` (taken once by the caller), in bounded transactions."""
    size = batch if batch is not None else limits.retention_batch
    if size < 1 or max_batches < 1:
        raise ValueError("a retention pass needs batches of at least one row")
    finding_cutoff = now - limits.finding_retention_days * DAY_S
    alert_cutoff = now - limits.alert_retention_days * DAY_S
    counts = {"findings": 0, "alerts": 0, "deliveries": 0, "devices": 0, "audit_logs": 0}
    t1, done1 = _in_batches(store, lambda s: _delete_findings(s, finding_cutoff, size, counts),
                            size, max_batches, pause_s)
    t2, done2 = _in_batches(store, lambda s: _delete_alerts(s, alert_cutoff, size, counts),
                            size, max_batches, pause_s)
    device_cutoff = now - limits.retired_device_retention_days * DAY_S
    t3, done3, t4, done4 = 0, True, 0, True
    forget: list[str] = []
    # Looked up in a read snapshot first: an idle pass takes no write lock for these two.
    with store.read() as s:
        retired_due = s.execute(select(Device.id).where(retired_due_at(device_cutoff)).limit(1)).first()
        logs_due = s.execute(select(DeletedTenant.id).where(DeletedTenant.audit_until < now).limit(1)).first()
    if retired_due is not None:
        t3, done3 = _in_batches(store, lambda s: _purge_retired(s, device_cutoff, now, audit, counts),
                                1, max_batches, pause_s)
    if logs_due is not None:
        t4, done4 = _in_batches(store, lambda s: _purge_deleted_tenant_log(s, now, audit, counts, forget),
                                1, max_batches, pause_s)
    for log_id in forget:  # the logs are gone (committed): their checkpoint keys go too
        if audit is not None:
            audit.forget_key(log_id)
    result = RetentionResult(findings=counts["findings"], alerts=counts["alerts"],
                             deliveries=counts["deliveries"], transactions=t1 + t2 + t3 + t4,
                             complete=done1 and done2 and done3 and done4,
                             devices=counts["devices"], audit_logs=counts["audit_logs"])
    if result.devices or result.audit_logs:
        log.info("retention: removed the records of %d retired devices and %d deleted tenants' audit logs",
                 result.devices, result.audit_logs)
    if result.findings or result.alerts:
        log.info("retention: deleted %d resolved findings and %d resolved alerts (%d deliveries) in %d "
                 "transactions%s", result.findings, result.alerts, result.deliveries, result.transactions,
                 "" if result.complete else "; more are due, next pass")
    return result


def retired_due_at(cutoff: float) -> ColumnElement[bool]:
    """A device whose records retention removes: retired before ``cutoff``."""
    return and_(Device.status == "retired", Device.retired_at.is_not(None), Device.retired_at < cutoff)


def _purge_retired(s: Session, cutoff: float, now: float, audit: AuditLog | None,
                   counts: dict[str, int]) -> int:
    """Remove every record of one device retired before ``cutoff``; 1 if one was due, else 0."""
    row = s.execute(select(Device.id, Device.tenant_id).where(retired_due_at(cutoff))
                    .order_by(Device.retired_at).limit(1)).first()
    if row is None:
        return 0
    device_id, tenant_id = row
    removed = purge_device(s, device_id)
    if audit is not None:
        audit.record(s, [tenant_id], "device.records-removed", "rampart",
                     {"device": device_id, "rows": sum(removed.values())}, now)
    counts["devices"] += 1
    return 1


def _purge_deleted_tenant_log(s: Session, now: float, audit: AuditLog | None, counts: dict[str, int],
                              forget: list[str]) -> int:
    """Delete one deleted tenant's audit log whose period has passed, and its tombstone; 1 if one was due."""
    gone = s.scalars(select(DeletedTenant).where(DeletedTenant.audit_until < now)
                     .order_by(DeletedTenant.audit_until).limit(1)).first()
    if gone is None:
        return 0
    entries = purge_audit_log(s, gone.id)
    forget.append(gone.id)
    if audit is not None:
        audit.record(s, [SERVER_LOG], "tenant.audit-log-removed", "rampart",
                     {"tenant": gone.id, "name": gone.name, "entries": entries}, now)
    s.delete(gone)
    counts["audit_logs"] += 1
    return 1
