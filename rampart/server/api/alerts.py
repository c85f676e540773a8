"""``/alerts``: list, acknowledge and resolve alerts (delivery comes with issue 5).

Tenant alerts are visible to whoever reaches the tenant; MSP-wide alerts (no
tenant) only to MSP-wide staff. Acknowledging and resolving need the
``alert.manage`` permission and are audit entries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from .. import clock
from ..access import address_allowed, tenant_networks
from ..alerts import acknowledge, resolve
from ..audit import SERVER_LOG
from ..context import ServerContext
from ..errors import NotFound
from ..models import AlertRow, Tenant
from .deps import AlertPath, Caller, CallerDep, Ctx, TenantPath
from .schemas import AlertOut

router = APIRouter(tags=["alerts"])

StatusFilter = Literal["open", "acknowledged", "resolved", "live", "all"]
StatusQuery = Annotated[StatusFilter, Query(description="live: open or acknowledged")]
LimitQuery = Annotated[int, Query(ge=1, le=1000)]
KindQuery = Annotated[str | None, Query(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", description="only this kind")]
SeverityQuery = Annotated[Literal["info", "warning", "critical"] | None,
                          Query(description="at least this severity")]
_RANK = {"info": 0, "warning": 1, "critical": 2}


def alert_out(a: AlertRow) -> AlertOut:
    return AlertOut(id=a.id, tenant=a.tenant_id, kind=a.kind, severity=a.severity,
                    subject=a.subject, detail=a.detail,
                    status=a.status,  # type: ignore[arg-type]
                    count=a.count, first_seen=a.first_seen, last_seen=a.last_seen,
                    acked_by=a.acked_by, acked_at=a.acked_at, resolved_by=a.resolved_by,
                    resolved_at=a.resolved_at)


def _filtered(q: Select[Any], status: StatusFilter, limit: int, kind: str | None = None,
              severity: str | None = None) -> Select[Any]:
    if status == "live":
        q = q.where(AlertRow.status.in_(("open", "acknowledged")))
    elif status != "all":
        q = q.where(AlertRow.status == status)
    if kind is not None:
        q = q.where(AlertRow.kind == kind)
    if severity is not None:
        q = q.where(AlertRow.severity.in_([s for s, r in _RANK.items() if r >= _RANK[severity]]))
    return q.order_by(AlertRow.last_seen.desc()).limit(limit)


@router.get("/tenants/{t}/alerts", response_model=list[AlertOut])
def list_tenant_alerts(t: TenantPath, caller: CallerDep, ctx: Ctx, status: StatusQuery = "live",
                       limit: LimitQuery = 200, kind: KindQuery = None,
                       severity: SeverityQuery = None) -> list[AlertOut]:
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        rows = s.scalars(_filtered(select(AlertRow).where(AlertRow.tenant_id == t), status, limit, kind,
                                   severity))
        return [alert_out(a) for a in rows]


@router.get("/alerts", response_model=list[AlertOut])
def list_alerts(caller: CallerDep, ctx: Ctx, status: StatusQuery = "live", limit: LimitQuery = 200,
                kind: KindQuery = None, severity: SeverityQuery = None) -> list[AlertOut]:
    """Alerts of every tenant the caller reaches, plus MSP-wide ones for MSP-wide staff."""
    with ctx.store.transaction() as s:
        q = select(AlertRow)
        if caller.tenants is not None:
            q = q.where(AlertRow.tenant_id.in_(sorted(caller.tenants)))
        out: list[AlertOut] = []
        for a in s.scalars(_filtered(q, status, limit, kind, severity)):
            tenant = s.get(Tenant, a.tenant_id) if a.tenant_id is not None else None
            if tenant is None or address_allowed(tenant_networks(tenant), caller.address):
                out.append(alert_out(a))
        return out


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
