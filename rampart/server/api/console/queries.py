"""The console's read queries: SQL-side filters, sorting, LIMIT/OFFSET and aggregates.

Every query is scoped to one tenant the caller reaches (the route checks that first)
and bounded: a device page is at most :data:`MAX_PAGE` rows, searched and sorted by the
store with the indexes of migration 0010 (``devices (tenant_id, hostname)``,
``(tenant_id, status)``, ``(tenant_id, last_seen)``, ``alerts (tenant_id, status,
severity)``), so the page costs the same at 10,000 devices as at 10. The dashboard
runs a handful of GROUP BY aggregates, never loads the rows.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from sqlalchemy import ColumnElement, and_, func, not_, or_, select
from sqlalchemy.orm import Session

from ...alerts import LIVE, SEVERITY_RANK
from ...models import (
    AlertRow,
    BackupPolicyRow,
    BackupResult,
    Device,
    DeviceInventory,
    DevicePatchState,
    FindingRow,
    PendingUpdateRow,
    SanctionedTool,
)
from ...tenant_roots import current_root, trusted_from_store

MAX_PAGE: Final = 100
DEFAULT_PAGE: Final = 50
MAX_QUERY: Final = 100

Sort = Literal["hostname", "last_seen", "status", "agent_version", "id"]
SORTS: Final[tuple[str, ...]] = ("hostname", "last_seen", "status", "agent_version", "id")
#: What the state filter offers: enrolment status, or contact (online needs the gateway's set).
STATES: Final[tuple[str, ...]] = ("", "online", "offline", "pending", "approved")


@dataclass(frozen=True, slots=True)
class DeviceQuery:
    """A validated device-list request (anything out of range falls back to the default)."""

    q: str = ""
    state: str = ""
    sort: str = "hostname"
    desc: bool = False
    page: int = 1
    per: int = DEFAULT_PAGE

    @classmethod
    def parse(cls, params: dict[str, str]) -> DeviceQuery:
        def num(key: str, default: int, top: int) -> int:
            raw = params.get(key, "")
            return min(max(int(raw), 1), top) if raw.isdigit() and len(raw) < 8 else default
        sort = params.get("sort", "hostname")
        state = params.get("state", "")
        return cls(q=params.get("q", "")[:MAX_QUERY].strip(),
                   state=state if state in STATES else "",
                   sort=sort if sort in SORTS else "hostname",
                   desc=params.get("dir") == "desc", page=num("page", 1, 1_000_000),
                   per=num("per", DEFAULT_PAGE, MAX_PAGE))


@dataclass(frozen=True, slots=True)
class DevicePage:
    rows: list[Device]
    total: int
    query: DeviceQuery

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.query.per))


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _state_filter(state: str, connected: frozenset[str], cutoff: float) -> ColumnElement[bool] | None:
    if state in ("pending", "approved"):
        return Device.status == state
    if state == "online":
        return Device.id.in_(sorted(connected))
    if state == "offline":
        quiet = or_(Device.last_seen.is_(None), Device.last_seen < cutoff)
        return and_(Device.status == "approved", quiet,
                    not_(Device.id.in_(sorted(connected))) if connected else Device.id.is_not(None))
    return None


def device_page(s: Session, tenant_id: str, query: DeviceQuery, *, connected: frozenset[str],
                cutoff: float) -> DevicePage:
    """One page of the tenant's devices: filtered, counted and sorted by the store."""
    where: list[ColumnElement[bool]] = [Device.tenant_id == tenant_id]
    if query.q:
        pattern = _like(query.q)
        where.append(or_(Device.hostname.like(pattern, escape="\\"),
                         Device.id.like(pattern, escape="\\")))
    state = _state_filter(query.state, connected, cutoff)
    if state is not None:
        where.append(state)
    total = s.scalar(select(func.count()).select_from(Device).where(*where)) or 0
    column = {"hostname": Device.hostname, "last_seen": Device.last_seen, "status": Device.status,
              "agent_version": Device.agent_version, "id": Device.id}[query.sort]
    order: list[Any] = [column.desc(), Device.id.desc()] if query.desc else [column.asc(), Device.id.asc()]
    rows = list(s.scalars(select(Device).where(*where).order_by(*order)
                          .limit(query.per).offset((query.page - 1) * query.per)))
    return DevicePage(rows, total, query)


@dataclass(slots=True)
class Dashboard:
    """A tenant at a glance; every number is one aggregate query."""

    devices: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    online: int = 0
    offline: int = 0
    overdue_alerts: int = 0
    offline_alerts: int = 0
    alerts_by_severity: dict[str, int] = field(default_factory=dict)
    findings_by_severity: dict[str, int] = field(default_factory=dict)
    tools: Counter[str] = field(default_factory=Counter)
    unsanctioned_devices: int = 0
    patch_reported: int = 0
    patch_missing_security: int = 0
    reboot_required: int = 0
    backup_policies: int = 0
    backup_failed: int = 0
    backup_stale: int = 0
    #: The newest published root as the server stores it (a view; agents decide on their own copy).
    root_version: int | None = None
    root_expires: float | None = None


def dashboard(s: Session, tenant_id: str, *, connected: frozenset[str], cutoff: float,
              now: float) -> Dashboard:
    d = Dashboard()
    for status, n in s.execute(select(Device.status, func.count()).where(Device.tenant_id == tenant_id)
                               .group_by(Device.status)):
        d.by_status[status] = n
    d.devices = sum(d.by_status.values())
    if connected:
        d.online = s.scalar(select(func.count()).select_from(Device).where(
            Device.tenant_id == tenant_id, Device.id.in_(sorted(connected)))) or 0
    offline = _state_filter("offline", connected, cutoff)
    assert offline is not None
    d.offline = s.scalar(select(func.count()).select_from(Device).where(
        Device.tenant_id == tenant_id, offline)) or 0
    live = and_(AlertRow.tenant_id == tenant_id, AlertRow.status.in_(LIVE))
    for severity, n in s.execute(select(AlertRow.severity, func.count()).where(live)
                                 .group_by(AlertRow.severity)):
        d.alerts_by_severity[severity] = n
    d.alerts_by_severity = dict(sorted(d.alerts_by_severity.items(),
                                       key=lambda kv: -SEVERITY_RANK.get(kv[0], 1)))
    for kind, n in s.execute(select(AlertRow.kind, func.count()).where(
            live, AlertRow.kind.in_(("agent-offline", "agent-overdue"))).group_by(AlertRow.kind)):
        if kind == "agent-offline":
            d.offline_alerts = n
        else:
            d.overdue_alerts = n
    for severity, n in s.execute(select(FindingRow.severity, func.count()).where(
            FindingRow.tenant_id == tenant_id, FindingRow.resolved_at.is_(None))
            .group_by(FindingRow.severity)):
        d.findings_by_severity[severity] = n
    allowed = set(s.scalars(select(SanctionedTool.slug).where(SanctionedTool.tenant_id == tenant_id)))
    for tools_text, in s.execute(select(DeviceInventory.tools).join(
            Device, Device.id == DeviceInventory.device_id).where(
            Device.tenant_id == tenant_id, DeviceInventory.tools != "[]", DeviceInventory.tools != "")):
        try:
            tools = json.loads(tools_text)
        except ValueError:
            continue
        slugs = {t["slug"] for t in tools if isinstance(t, dict) and isinstance(t.get("slug"), str)} \
            if isinstance(tools, list) else set()
        d.tools.update(slugs)
        if slugs - allowed:
            d.unsanctioned_devices += 1
    tenant_devices = select(Device.id).where(Device.tenant_id == tenant_id).scalar_subquery()
    d.patch_reported = s.scalar(select(func.count()).select_from(DevicePatchState).where(
        DevicePatchState.device_id.in_(tenant_devices))) or 0
    d.reboot_required = s.scalar(select(func.count()).select_from(DevicePatchState).where(
        DevicePatchState.device_id.in_(tenant_devices), DevicePatchState.reboot_required.is_(True))) or 0
    d.patch_missing_security = s.scalar(select(func.count(func.distinct(PendingUpdateRow.device_id))).where(
        PendingUpdateRow.device_id.in_(tenant_devices), PendingUpdateRow.security.is_(True))) or 0
    d.backup_policies = s.scalar(select(func.count()).select_from(BackupPolicyRow).where(
        BackupPolicyRow.tenant_id == tenant_id)) or 0
    if d.backup_policies:
        last_ok = dict(s.execute(select(BackupResult.device_id, func.max(BackupResult.finished_at)).where(
            BackupResult.tenant_id == tenant_id, BackupResult.ok.is_(True)).group_by(BackupResult.device_id))
            .tuples().all())
        last_any = dict(s.execute(select(BackupResult.device_id, func.max(BackupResult.finished_at)).where(
            BackupResult.tenant_id == tenant_id).group_by(BackupResult.device_id)).tuples().all())
        for device_id, max_age in s.execute(select(BackupPolicyRow.device_id, BackupPolicyRow.max_age_s)
                                            .where(BackupPolicyRow.tenant_id == tenant_id)):
            ok_at = last_ok.get(device_id)
            if device_id in last_any and (ok_at is None or last_any[device_id] > ok_at):
                d.backup_failed += 1
            elif ok_at is None or ok_at < now - max_age:
                d.backup_stale += 1
    root = current_root(s, tenant_id)
    if root is not None:
        trusted = trusted_from_store(root.envelope).root
        d.root_version, d.root_expires = trusted.version, float(trusted.expires)
    return d
