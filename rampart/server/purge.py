"""Deleting everything a tenant or a retired device holds, children before parents, found from the schema.

Invariants:

* **Complete by construction.** The rows to delete are found through the
  schema's foreign keys, plus the ``device_id`` columns that carry no
  constraint (alerts, session recordings): a table added later is covered
  without a change here, and a test walks every table to prove nothing of
  the tenant or device is left.
* **The audit log is never touched.** Audit logs are keyed by log id (the
  tenant id) without a foreign key; a deleted tenant's log stays until its
  retention period ends (:func:`purge_audit_log`, called by retention).
* **All or nothing.** Each function runs inside the caller's transaction.
* **Accounts survive.** An account loses its link to the tenant, never its
  row; keys it registered for the tenant go with the tenant.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from sqlalchemy import Column, ColumnElement, CursorResult, Table, delete, select, tuple_
from sqlalchemy.orm import Session

from .models import AuditEntry, AuditLogRow, Base, CheckpointRow, Device, Tenant

#: Tables that are never reached through a tenant or a device.
_NEVER: frozenset[str] = frozenset({"audit_logs", "audit_entries", "checkpoints", "accounts", "sessions",
                                    "settings", "login_throttle", "deleted_tenants"})
#: Bound on how deep foreign keys chain (the schema has 4 levels); a cycle fails loudly.
_MAX_DEPTH = 8


def _children(table: Table) -> list[tuple[Table, list[Column[Any]], list[Column[Any]]]]:
    """(child table, its columns, the parent's columns they reference) for each FK onto ``table``."""
    out = []
    for child in Base.metadata.sorted_tables:
        for fk in child.foreign_key_constraints:
            if fk.referred_table is table and child.name not in _NEVER:
                out.append((child, list(fk.columns), [e.column for e in fk.elements]))
    return out


def _delete(s: Session, table: Table, where: ColumnElement[bool], counts: dict[str, int],
            depth: int = 0) -> None:
    """Delete the rows of ``table`` matching ``where`` and, first, every row that references them."""
    if depth > _MAX_DEPTH:
        raise RuntimeError(f"foreign keys onto {table.name} chain deeper than {_MAX_DEPTH}")
    for child, cols, parent_cols in _children(table):
        picked = select(*parent_cols).where(where)
        ref = cols[0].in_(picked) if len(cols) == 1 else tuple_(*cols).in_(picked)
        _delete(s, child, ref, counts, depth + 1)
    n = cast(CursorResult[Any], s.execute(delete(table).where(where))).rowcount
    if n:
        counts[table.name] = counts.get(table.name, 0) + n


def _unconstrained_device_columns() -> Iterable[Column[Any]]:
    for table in Base.metadata.sorted_tables:
        col = table.columns.get("device_id")
        if col is not None and not col.foreign_keys and table.name not in _NEVER:
            yield col


def purge_device(s: Session, device_id: str) -> dict[str, int]:
    """Delete a device and every record of it; returns rows deleted per table."""
    counts: dict[str, int] = {}
    for col in _unconstrained_device_columns():
        _delete(s, col.table, col == device_id, counts)
    devices = cast(Table, Device.__table__)
    _delete(s, devices, devices.c.id == device_id, counts)
    return counts


def purge_tenant(s: Session, tenant_id: str) -> dict[str, int]:
    """Delete a tenant and everything it holds except its audit log; returns rows deleted per table."""
    counts: dict[str, int] = {}
    device_ids = select(Device.id).where(Device.tenant_id == tenant_id)
    for col in _unconstrained_device_columns():
        _delete(s, col.table, col.in_(device_ids), counts)
    tenants = cast(Table, Tenant.__table__)
    _delete(s, tenants, tenants.c.id == tenant_id, counts)
    return counts


def purge_audit_log(s: Session, log_id: str) -> int:
    """Delete one audit log (its entries and checkpoints); only retention of a deleted tenant calls it."""
    n = cast(CursorResult[Any], s.execute(delete(AuditEntry).where(AuditEntry.log_id == log_id))).rowcount
    s.execute(delete(CheckpointRow).where(CheckpointRow.log_id == log_id))
    s.execute(delete(AuditLogRow).where(AuditLogRow.id == log_id))
    return n
