"""``/alerts``: list, acknowledge and resolve alerts (delivery comes with issue 5).

Tenant alerts are visible to whoever reaches the tenant; MSP-wide alerts (no
tenant) only to MSP-wide staff. Acknowledging and resolving need the
``alert.manage`` permission and are audit entries.

A listing shows the most severe alerts first (critical, warning, info), then
the most recently seen. No device may push another's alerts out of it (T16):
at most ``per_device`` alerts of one device are listed (those about the
device itself, :data:`DEVICE_LEVEL_KINDS`, first; default
:data:`DEFAULT_PER_DEVICE`; ``0`` lifts the cap, as does asking for one
``device``), chosen in SQL with ``ROW_NUMBER() OVER (PARTITION BY device_id
…)``; alerts that name no device are never capped. What a cap left out is
said in the ``Rampart-Alerts-Capped`` response header
(``dev-…=180,dev-…=3``, most hidden first, at most :data:`MAX_CAPPED_LISTED`
devices; the rest in ``Rampart-Alerts-Capped-More: devices=N,alerts=M``).
Device ids are server-generated, so the header carries no device-chosen
text. The body stays a plain list (docs/alerts.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from sqlalchemy import ColumnElement, Select, case, func, or_, select
from sqlalchemy.orm import Session

from .. import clock
from ..access import address_allowed, tenant_networks
from ..alerts import acknowledge, resolve
from ..audit import SERVER_LOG
from ..context import ServerContext
from ..errors import NotFound
from ..gateway import ALERT_BLOCKED, ALERT_REPLACED, ALERT_THROTTLED
from ..models import AlertRow, Tenant
from ..telemetry import IDENTITY, OVER_BUDGET
from .deps import AlertPath, Caller, CallerDep, Ctx, TenantPath
from .schemas import DEVICE_ID, AlertOut

router = APIRouter(tags=["alerts"])

StatusFilter = Literal["open", "acknowledged", "resolved", "live", "all"]
StatusQuery = Annotated[StatusFilter, Query(description="live: open or acknowledged")]
LimitQuery = Annotated[int, Query(ge=1, le=1000)]
KindQuery = Annotated[str | None, Query(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", description="only this kind")]
SeverityQuery = Annotated[Literal["info", "warning", "critical"] | None,
                          Query(description="at least this severity")]
DeviceQuery = Annotated[str | None, Query(pattern=DEVICE_ID, description="only this device's alerts")]
PerDeviceQuery = Annotated[int | None, Query(
    ge=0, le=1000, description="at most this many alerts of one device (default 20, or no cap with "
                               "device=; 0: no cap)")]
_RANK = {"info": 0, "warning": 1, "critical": 2}

#: Alerts of one device in a listing unless the caller asks otherwise.
DEFAULT_PER_DEVICE = 20
#: Devices named in the capped header; the others are summed in the "more" header.
MAX_CAPPED_LISTED = 50
CAPPED_HEADER = "Rampart-Alerts-Capped"
CAPPED_MORE_HEADER = "Rampart-Alerts-Capped-More"

#: Critical first, then warning, then info (an unknown severity sorts with warning).
_SEVERITY_ORDER = case({"critical": 0, "warning": 1, "info": 2}, value=AlertRow.severity, else_=1)
_ORDER = (_SEVERITY_ORDER, AlertRow.last_seen.desc(), AlertRow.id)
#: Alerts about a device itself (its budget, its connections, its identity): never hidden by its own cap,
#: so a flooding device's many finding alerts cannot push out the one alert that says it floods.
DEVICE_LEVEL_KINDS = (OVER_BUDGET, ALERT_BLOCKED, ALERT_THROTTLED, ALERT_REPLACED, IDENTITY)
_DEVICE_LEVEL_FIRST = case({k: 0 for k in DEVICE_LEVEL_KINDS}, value=AlertRow.kind, else_=1)


def alert_out(a: AlertRow) -> AlertOut:
    return AlertOut(id=a.id, tenant=a.tenant_id, device=a.device_id, kind=a.kind, severity=a.severity,
                    subject=a.subject, detail=a.detail,
                    status=a.status,  # type: ignore[arg-type]
                    count=a.count, first_seen=a.first_seen, last_seen=a.last_seen,
                    acked_by=a.acked_by, acked_at=a.acked_at, resolved_by=a.resolved_by,
                    resolved_at=a.resolved_at)


@dataclass(frozen=True, slots=True)
class AlertView:
    """One listing: the alerts shown, and per device how many its cap left out (most first)."""

    rows: list[AlertRow]
    capped: list[tuple[str, int]]

    def headers(self) -> dict[str, str]:
        if not self.capped:
            return {}
        shown, rest = self.capped[:MAX_CAPPED_LISTED], self.capped[MAX_CAPPED_LISTED:]
        out = {CAPPED_HEADER: ",".join(f"{dev}={n}" for dev, n in shown)}
        if rest:
            out[CAPPED_MORE_HEADER] = f"devices={len(rest)},alerts={sum(n for _, n in rest)}"
        return out


def _conditions(status: StatusFilter, kind: str | None, severity: str | None,
                device: str | None) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = []
    if status == "live":
        conds.append(AlertRow.status.in_(("open", "acknowledged")))
    elif status != "all":
        conds.append(AlertRow.status == status)
    if kind is not None:
        conds.append(AlertRow.kind == kind)
    if severity is not None:
        conds.append(AlertRow.severity.in_([s for s, r in _RANK.items() if r >= _RANK[severity]]))
    if device is not None:
        conds.append(AlertRow.device_id == device)
    return conds


def alert_view(s: Session, scope: ColumnElement[bool], *, status: StatusFilter = "live", limit: int = 200,
               kind: str | None = None, severity: str | None = None, device: str | None = None,
               per_device: int | None = None) -> AlertView:
    """The alerts in ``scope`` matching the filters, severity first, at most ``per_device`` per device."""
    conds = [scope, *_conditions(status, kind, severity, device)]
    cap = per_device if per_device is not None else (0 if device is not None else DEFAULT_PER_DEVICE)
    if cap == 0:
        return AlertView(list(s.scalars(select(AlertRow).where(*conds).order_by(*_ORDER).limit(limit))), [])
    nth = func.row_number().over(partition_by=AlertRow.device_id,
                                 order_by=(_DEVICE_LEVEL_FIRST, *_ORDER)).label("nth")
    ranked = select(AlertRow.id, AlertRow.device_id, nth).where(*conds).subquery()
    shown: Select[Any] = (select(AlertRow).join(ranked, ranked.c.id == AlertRow.id)
                          .where(or_(ranked.c.device_id.is_(None), ranked.c.nth <= cap))
                          .order_by(*_ORDER).limit(limit))
    hidden = func.count().label("hidden")
    capped = s.execute(select(ranked.c.device_id, hidden)
                       .where(ranked.c.device_id.is_not(None), ranked.c.nth > cap)
                       .group_by(ranked.c.device_id).order_by(hidden.desc(), ranked.c.device_id)).all()
    return AlertView(list(s.scalars(shown)), [(str(dev), int(n)) for dev, n in capped])


@router.get("/tenants/{t}/alerts", response_model=list[AlertOut])
def list_tenant_alerts(t: TenantPath, caller: CallerDep, ctx: Ctx, response: Response,
                       status: StatusQuery = "live", limit: LimitQuery = 200, kind: KindQuery = None,
                       severity: SeverityQuery = None, device: DeviceQuery = None,
                       per_device: PerDeviceQuery = None) -> list[AlertOut]:
    with ctx.store.read() as s:  # a snapshot: listing never waits for the write lock
        caller.tenant(s, t)
        view = alert_view(s, AlertRow.tenant_id == t, status=status, limit=limit, kind=kind,
                          severity=severity, device=device, per_device=per_device)
        response.headers.update(view.headers())
        return [alert_out(a) for a in view.rows]


@router.get("/alerts", response_model=list[AlertOut])
def list_alerts(caller: CallerDep, ctx: Ctx, response: Response, status: StatusQuery = "live",
                limit: LimitQuery = 200, kind: KindQuery = None, severity: SeverityQuery = None,
                device: DeviceQuery = None, per_device: PerDeviceQuery = None) -> list[AlertOut]:
    """Alerts of every tenant the caller reaches, plus MSP-wide ones for MSP-wide staff.

    Tenants whose approved networks exclude the caller's address are left out
    before anything is counted, so neither their alerts nor their capped
    devices show.
    """
    with ctx.store.read() as s:
        tenants = select(Tenant)
        if caller.tenants is not None:
            tenants = tenants.where(Tenant.id.in_(sorted(caller.tenants)))
        allowed = sorted(t.id for t in s.scalars(tenants)
                         if address_allowed(tenant_networks(t), caller.address))
        scope: ColumnElement[bool] = AlertRow.tenant_id.in_(allowed)
        if caller.tenants is None:
            scope = or_(AlertRow.tenant_id.is_(None), scope)
        view = alert_view(s, scope, status=status, limit=limit, kind=kind, severity=severity,
                          device=device, per_device=per_device)
        response.headers.update(view.headers())
        return [alert_out(a) for a in view.rows]


def load_alert(s: Session, caller: Caller, alert_id: str) -> AlertRow:
    row = s.get(AlertRow, alert_id)
    if row is None:
        raise NotFound("alert not found")
    caller.scoped(s, row.tenant_id, "alert")
    return row


def _transition(a: str, caller: Caller, ctx: ServerContext,
                change: Callable[[AlertRow, str, float], None], kind: str) -> AlertOut:
    now = clock.now()
    with ctx.store.transaction() as s:
        row = load_alert(s, caller, a)
        caller.require_perm("alert.manage")
        change(row, caller.username, now)
        ctx.audit.record(s, [row.tenant_id or SERVER_LOG], kind, caller.username,
                         {"alert": row.id, "kind": row.kind}, now)
        return alert_out(row)


@router.post("/alerts/{a}/ack", response_model=AlertOut)
def ack_alert(a: AlertPath, caller: CallerDep, ctx: Ctx) -> AlertOut:
    return _transition(a, caller, ctx, acknowledge, "alert.acknowledged")


@router.post("/alerts/{a}/resolve", response_model=AlertOut)
def resolve_alert(a: AlertPath, caller: CallerDep, ctx: Ctx) -> AlertOut:
    return _transition(a, caller, ctx, resolve, "alert.resolved")
