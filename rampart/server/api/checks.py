"""``/tenants/{t}/checks``: disk, memory, CPU, service and port checks (see :mod:`..checks`)."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Path
from sqlalchemy import select
from sqlalchemy.orm import Session

from rampart.trust.ids import new_id

from .. import clock
from ..alerts import LIVE
from ..checks import ALERT_KIND, validate
from ..errors import BadRequest, NotFound
from ..models import AlertRow, Device, MonitorCheck
from .deps import CallerDep, Ctx, TenantPath
from .schemas import CHECK_ID, CheckIn, CheckOut

router = APIRouter(tags=["monitoring"])

CheckPath = Annotated[str, Path(pattern=CHECK_ID, description="check id")]


def check_out(s: Session, c: MonitorCheck) -> CheckOut:
    prefix = f"{ALERT_KIND}:{c.id}:"
    failing = sorted(key.removeprefix(prefix) for key in s.scalars(select(AlertRow.dedup_key).where(
        AlertRow.tenant_id == c.tenant_id, AlertRow.kind == ALERT_KIND,
        AlertRow.status.in_(LIVE), AlertRow.dedup_key.startswith(prefix))))
    return CheckOut(id=c.id, tenant=c.tenant_id, device=c.device_id, kind=c.kind,
                    params=json.loads(c.params), created_by=c.created_by, created_at=c.created_at,
                    failing=failing)


@router.post("/tenants/{t}/checks", response_model=CheckOut)
def add_check(t: TenantPath, body: CheckIn, caller: CallerDep, ctx: Ctx) -> CheckOut:
    """Add a check on one device or every device of the tenant (evaluated from inventories)."""
    now = clock.now()
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        caller.require_perm("checks.manage")
        params = validate(body.kind, dict(body.params))
        if body.device is not None:
            dev = s.get(Device, body.device)
            if dev is None or dev.tenant_id != t:
                raise BadRequest("unknown device")
        row = MonitorCheck(id=new_id("ck"), tenant_id=t, device_id=body.device, kind=body.kind,
                           params=json.dumps(params), created_by=caller.username, created_at=now)
        s.add(row)
        s.flush()
        ctx.audit.record(s, [t], "check.added", caller.username,
                         {"check": row.id, "kind": body.kind, "device": body.device, **params}, now)
        return check_out(s, row)


@router.get("/tenants/{t}/checks", response_model=list[CheckOut])
def list_checks(t: TenantPath, caller: CallerDep, ctx: Ctx) -> list[CheckOut]:
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        rows = s.scalars(select(MonitorCheck).where(MonitorCheck.tenant_id == t)
                         .order_by(MonitorCheck.created_at))
        return [check_out(s, r) for r in rows]


@router.delete("/checks/{c}", response_model=CheckOut)
def remove_check(c: CheckPath, caller: CallerDep, ctx: Ctx) -> CheckOut:
    now = clock.now()
    with ctx.store.transaction() as s:
        row = s.get(MonitorCheck, c)
        if row is None:
            raise NotFound("check not found")
        caller.scoped(s, row.tenant_id, "check")
        caller.require_perm("checks.manage")
        out = check_out(s, row)
        s.delete(row)
        ctx.audit.record(s, [row.tenant_id], "check.removed", caller.username,
                         {"check": row.id, "kind": row.kind}, now)
        return out
