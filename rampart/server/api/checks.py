"""``/tenants/{t}/checks``: disk, memory, CPU, service and port checks (see :mod:`..checks`).

``/tenants/{t}/script-checks``: signed, repeating script jobs the agents run
themselves, with their latest result per device and their history
(:mod:`..script_checks`). Read-only: a script check is added by submitting a
signed repeating job (``POST /tenants/{t}/jobs``) and stopped by revoking its
grant; nothing here can start, speed up or change one.
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from rampart.trust import new_id

from .. import clock
from ..alerts import LIVE
from ..checks import ALERT_KIND, UNKNOWN_KIND, validate
from ..errors import BadRequest, NotFound
from ..models import (
    AlertRow,
    Device,
    GrantRow,
    JobRow,
    JobTarget,
    MonitorCheck,
    ScriptCheck,
    ScriptCheckResult,
    ScriptCheckStatus,
)
from ..script_checks import ALERT_OVERDUE
from .deps import CallerDep, Ctx, JobPath, TenantPath
from .schemas import CHECK_ID, CheckIn, CheckOut

router = APIRouter(tags=["monitoring"])

CheckPath = Annotated[str, Path(pattern=CHECK_ID, description="check id")]


def check_out(s: Session, c: MonitorCheck) -> CheckOut:
    prefix = f"{ALERT_KIND}:{c.id}:"
    failing = sorted(key.removeprefix(prefix) for key in s.scalars(select(AlertRow.dedup_key).where(
        AlertRow.tenant_id == c.tenant_id, AlertRow.kind == ALERT_KIND,
        AlertRow.status.in_(LIVE), AlertRow.dedup_key.startswith(prefix))))
    prefix = f"{UNKNOWN_KIND}:{c.id}:"
    unknown = sorted(key.removeprefix(prefix) for key in s.scalars(select(AlertRow.dedup_key).where(
        AlertRow.tenant_id == c.tenant_id, AlertRow.kind == UNKNOWN_KIND,
        AlertRow.status.in_(LIVE), AlertRow.dedup_key.startswith(prefix))))
    return CheckOut(id=c.id, tenant=c.tenant_id, device=c.device_id, kind=c.kind,
                    params=json.loads(c.params), created_by=c.created_by, created_at=c.created_at,
                    failing=failing, unknown=unknown)


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
    with ctx.store.read() as s:
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


# --- script checks -----------------------------------------------------------------------------------


class ScriptCheckDeviceOut(BaseModel):
    device: str
    #: "pending" until the first run's receipt; then the latest result's verdict.
    state: str
    last_run_at: float | None = None
    ok: bool | None = None
    exit_code: int | None = None
    detail: str = ""
    interval_s: int | None = None
    runs: int = 0
    failures: int = 0
    overdue: bool = False


class ScriptCheckOut(BaseModel):
    job: str
    tenant: str
    name: str
    every_s: int
    until: int
    grant: str
    signer: str
    created_by: str
    created_at: float
    #: "active", "ended" (until passed), "grant-ended" or "revoked".
    status: str
    devices: list[ScriptCheckDeviceOut]


class ScriptCheckResultOut(BaseModel):
    device: str
    run_at: float
    duration_s: float
    exit_code: int | None
    timed_out: bool
    ok: bool
    stdout: str
    stderr: str
    detail: str
    received_at: float


def _script_check_out(s: Session, c: ScriptCheck, now: float) -> ScriptCheckOut:
    job = s.get(JobRow, c.job_id)
    grant = s.get(GrantRow, job.grant_id) if job is not None else None
    if grant is not None and grant.revoked_at is not None:
        status = "revoked"
    elif grant is None or now >= grant.not_after:
        status = "grant-ended"
    elif now >= c.until:
        status = "ended"
    else:
        status = "active"
    latest = {st.device_id: st for st in s.scalars(
        select(ScriptCheckStatus).where(ScriptCheckStatus.job_id == c.job_id))}
    prefix = f"{ALERT_OVERDUE}:{c.job_id}:"
    overdue = {key.removeprefix(prefix) for key in s.scalars(select(AlertRow.dedup_key).where(
        AlertRow.tenant_id == c.tenant_id, AlertRow.kind == ALERT_OVERDUE,
        AlertRow.status.in_(LIVE), AlertRow.dedup_key.startswith(prefix)))}
    devices = []
    for target in s.scalars(select(JobTarget).where(JobTarget.job_id == c.job_id)
                            .order_by(JobTarget.device_id)):
        st = latest.get(target.device_id)
        if st is None:
            devices.append(ScriptCheckDeviceOut(device=target.device_id, state=target.state,
                                                overdue=target.device_id in overdue))
            continue
        devices.append(ScriptCheckDeviceOut(
            device=st.device_id, state="passing" if st.ok else "failing", last_run_at=st.last_run_at,
            ok=st.ok, exit_code=st.exit_code, detail=st.detail, interval_s=st.interval_s, runs=st.runs,
            failures=st.failures, overdue=st.device_id in overdue))
    return ScriptCheckOut(job=c.job_id, tenant=c.tenant_id, name=c.name, every_s=c.every_s, until=c.until,
                          grant=job.grant_id if job is not None else "",
                          signer=job.signer if job is not None else "", created_by=c.created_by,
                          created_at=c.created_at, status=status, devices=devices)


@router.get("/tenants/{t}/script-checks", response_model=list[ScriptCheckOut])
def list_script_checks(t: TenantPath, caller: CallerDep, ctx: Ctx) -> list[ScriptCheckOut]:
    """Script checks of the tenant with each target device's latest result."""
    now = clock.now()
    with ctx.store.read() as s:
        caller.tenant(s, t)
        rows = s.scalars(select(ScriptCheck).where(ScriptCheck.tenant_id == t)
                         .order_by(ScriptCheck.created_at))
        return [_script_check_out(s, r, now) for r in rows]


@router.get("/tenants/{t}/script-checks/{j}/results", response_model=list[ScriptCheckResultOut])
def script_check_results(t: TenantPath, j: JobPath, caller: CallerDep, ctx: Ctx,
                         device: Annotated[str | None, Query(pattern=r"^dev-[0-9a-f]{24}$")] = None,
                         limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[ScriptCheckResultOut]:
    """The newest results of one script check (all its devices, or one), newest first."""
    with ctx.store.read() as s:
        caller.tenant(s, t)
        check = s.get(ScriptCheck, j)
        if check is None or check.tenant_id != t:
            raise NotFound("script check not found")
        q = select(ScriptCheckResult).where(ScriptCheckResult.job_id == j)
        if device is not None:
            q = q.where(ScriptCheckResult.device_id == device)
        rows = s.scalars(q.order_by(ScriptCheckResult.run_at.desc(), ScriptCheckResult.id.desc())
                         .limit(limit))
        return [ScriptCheckResultOut(device=r.device_id, run_at=r.run_at, duration_s=r.duration_s,
                                     exit_code=r.exit_code, timed_out=r.timed_out, ok=r.ok,
                                     stdout=r.stdout, stderr=r.stderr, detail=r.detail,
                                     received_at=r.received_at) for r in rows]
