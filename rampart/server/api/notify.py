"""``/notify-targets`` and event export: where alerts go, and what a SIEM can pull (G2, C3).

Tenant targets receive that tenant's alerts (and, for syslog, its audit
events); MSP-wide targets (created and seen by MSP-wide owners only) receive
every tenant's. Changing targets needs ``notify.manage``; every change is an
audit entry. A webhook's HMAC secret is returned once, at creation.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import PlainTextResponse
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from rampart.trust import new_id

from .. import clock
from ..audit import SERVER_LOG
from ..errors import BadRequest, NotFound
from ..models import Delivery, NotifyTarget
from ..notifier import (
    events_for_export,
    forget_secret,
    forward_status,
    new_webhook_secret,
    syslog_hostname,
    tls_files_dir,
    validate_config,
)
from ..notify import DeliveryResult, format_event
from .deps import Caller, CallerDep, Ctx, TenantPath
from .schemas import TARGET_ID, DeliveryResultOut, NotifyTargetCreatedOut, NotifyTargetIn, NotifyTargetOut

router = APIRouter(tags=["alerts"])

TargetPath = Annotated[str, Path(pattern=TARGET_ID, description="target id")]


def target_out(s: Session, t: NotifyTarget) -> NotifyTargetOut:
    counts = dict(s.execute(select(Delivery.state, func.count()).where(
        Delivery.target_id == t.id).group_by(Delivery.state)).tuples().all())
    last = s.scalars(select(Delivery.last_detail).where(Delivery.target_id == t.id)
                     .order_by(Delivery.id.desc()).limit(1)).first()
    forwarded = waiting = None
    if t.kind == "syslog":  # the forward cursor, and why it is not moving
        forwarded, waiting, error = forward_status(s, t)
        last = error or last
    return NotifyTargetOut(id=t.id, tenant=t.tenant_id, kind=t.kind, name=t.name,
                           min_severity=t.min_severity, config=json.loads(t.config),
                           created_by=t.created_by, created_at=t.created_at,
                           delivered=counts.get("delivered", 0), pending=counts.get("pending", 0),
                           failed=counts.get("failed", 0), last_detail=last or None,
                           forwarded=forwarded, waiting=waiting)


def _create(ctx: Ctx, caller: Caller, tenant_id: str | None, body: NotifyTargetIn,
            s: Session) -> NotifyTargetCreatedOut:
    caller.require_perm("notify.manage")
    if body.kind == "email" and ctx.config.smtp is None:
        # Refused at once: a target that can never deliver would only fail at the first alert.
        raise BadRequest("e-mail alerts need an SMTP relay and this server has none: add an "
                         "\"smtp\" section (host, from) to DATA/config.json and restart the server "
                         "(see docs/alerts.md, E-mail)")
    cfg = validate_config(body.kind, body.model_dump(exclude_none=True),
                          tls_dir=tls_files_dir(ctx.config, tenant_id))
    now = clock.now()
    row = NotifyTarget(id=new_id("nt"), tenant_id=tenant_id, kind=body.kind, name=body.name,
                       config=json.dumps(cfg), min_severity=body.min_severity,
                       created_by=caller.username, created_at=now)
    s.add(row)
    s.flush()
    secret = new_webhook_secret(ctx.config, row.id) if body.kind == "webhook" else None
    ctx.audit.record(s, [tenant_id or SERVER_LOG], "notify.target-added", caller.username,
                     {"target": row.id, "kind": body.kind, "name": body.name}, now)
    return NotifyTargetCreatedOut(**target_out(s, row).model_dump(), secret=secret)


@router.post("/tenants/{t}/notify-targets", response_model=NotifyTargetCreatedOut)
def add_tenant_target(t: TenantPath, body: NotifyTargetIn, caller: CallerDep,
                      ctx: Ctx) -> NotifyTargetCreatedOut:
    """Send this tenant's alerts to a webhook, e-mail recipients or a syslog receiver."""
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        return _create(ctx, caller, t, body, s)


@router.get("/tenants/{t}/notify-targets", response_model=list[NotifyTargetOut])
def list_tenant_targets(t: TenantPath, caller: CallerDep, ctx: Ctx) -> list[NotifyTargetOut]:
    with ctx.store.read() as s:
        caller.tenant(s, t)
        rows = s.scalars(select(NotifyTarget).where(NotifyTarget.tenant_id == t)
                         .order_by(NotifyTarget.created_at))
        return [target_out(s, r) for r in rows]


def _msp_only(caller: Caller) -> None:
    if caller.tenants is not None:
        raise NotFound("not found")


@router.post("/notify-targets", response_model=NotifyTargetCreatedOut)
def add_msp_target(body: NotifyTargetIn, caller: CallerDep, ctx: Ctx) -> NotifyTargetCreatedOut:
    """An MSP-wide target: every tenant's alerts (a SOC). MSP-wide owners only."""
    caller.require_perm("notify.manage")
    _msp_only(caller)
    with ctx.store.transaction() as s:
        return _create(ctx, caller, None, body, s)


@router.get("/notify-targets", response_model=list[NotifyTargetOut])
def list_msp_targets(caller: CallerDep, ctx: Ctx) -> list[NotifyTargetOut]:
    _msp_only(caller)
    with ctx.store.read() as s:
        rows = s.scalars(select(NotifyTarget).where(NotifyTarget.tenant_id.is_(None))
                         .order_by(NotifyTarget.created_at))
        return [target_out(s, r) for r in rows]


def load_target(s: Session, caller: Caller, target_id: str) -> NotifyTarget:
    row = s.get(NotifyTarget, target_id)
    if row is None:
        raise NotFound("target not found")
    caller.scoped(s, row.tenant_id, "target")
    return row


@router.delete("/notify-targets/{n}", response_model=NotifyTargetOut)
def remove_target(n: TargetPath, caller: CallerDep, ctx: Ctx) -> NotifyTargetOut:
    now = clock.now()
    with ctx.store.transaction() as s:
        row = load_target(s, caller, n)
        caller.require_perm("notify.manage")
        out = target_out(s, row)
        s.execute(delete(Delivery).where(Delivery.target_id == row.id))
        s.delete(row)
        ctx.audit.record(s, [row.tenant_id or SERVER_LOG], "notify.target-removed",
                         caller.username, {"target": row.id, "kind": row.kind}, now)
    if row.kind == "webhook":
        forget_secret(ctx.config, n)
    return out


@router.post("/notify-targets/{n}/test", response_model=DeliveryResultOut)
def test_target(n: TargetPath, caller: CallerDep, ctx: Ctx) -> DeliveryResultOut:
    """Send one test message now and report the result (nothing is stored)."""
    from ..notifier import Notifier
    from ..notify import Event

    with ctx.store.transaction() as s:
        row = load_target(s, caller, n)
        caller.require_perm("notify.manage")
        kind, cfg, tenant = row.kind, json.loads(row.config), row.tenant_id
    event = Event(source="alert", id="test", time=clock.now(), kind="test", severity="info",
                  actor=caller.username, subject="Rampart test notification", tenant_id=tenant,
                  details={"target": n})
    notifier = Notifier(ctx.store, ctx.config)
    try:
        result: DeliveryResult = notifier.send(0, n, kind, cfg, event)
    finally:
        notifier.close()
    return DeliveryResultOut(ok=result.ok, detail=result.detail)


@router.get("/tenants/{t}/events", response_class=PlainTextResponse,
            responses={200: {"content": {"text/plain": {}},
                             "description": "One record per line"}})
def export_events(t: TenantPath, caller: CallerDep, ctx: Ctx,
                  format: Literal["jsonl", "cef", "syslog"] = Query("jsonl"),  # noqa: A002
                  start: int = Query(0, ge=0, le=1 << 48),
                  limit: int = Query(1000, ge=1, le=10000)) -> PlainTextResponse:
    """The tenant's audit events as JSON lines, CEF or RFC 5424 lines (for a SIEM or SOC).

    HOSTNAME (and CEF ``dvchost``) follow the live channel's rule (``notifier.syslog_hostname``).
    """
    with ctx.store.read() as s:
        tenant = caller.tenant(s, t)
        lines = [format_event(e, format, hostname=syslog_hostname(ctx.config))
                 for e in events_for_export(s, tenant, start, limit)]
    return PlainTextResponse("".join(line + "\n" for line in lines))

