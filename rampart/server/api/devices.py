"""Enrolment tokens, agent enrolment and device approval.

Invariants: an enrolment token is one-time, short-lived and stored hashed; a
device's id is bound to its key (``device_id_for``); a new device is
``pending`` and is sent no job until an owner or approver approves it (S3).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import Annotated, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, literal, or_, select, tuple_
from sqlalchemy.orm import Session

from rampart.trust import DevicePublicKey, TrustError, device_id_for

from .. import clock
from ..access import require_step_up
from ..auth import new_token, token_hash
from ..context import ServerContext
from ..errors import BadRequest, Conflict, Forbidden, NotFound
from ..groups import groups_of_devices
from ..models import Device, EnrolmentToken, RootVersion
from ..tenant_roots import current_root
from .deps import CallerDep, Ctx, DevicePath, TenantPath
from .schemas import (
    DeviceOut,
    EnrolIn,
    EnrolmentTokenIn,
    EnrolmentTokenOut,
    EnrolOut,
    OkOut,
)

router = APIRouter(tags=["devices"])
#: Served at the root (``/agent/v1/...``), beside the agent WebSocket, not under ``/api/v1``.
agent_router = APIRouter(tags=["agent"])


@router.post("/tenants/{t}/enrollment-tokens", response_model=EnrolmentTokenOut)
def create_enrolment_token(t: TenantPath, body: EnrolmentTokenIn, caller: CallerDep, ctx: Ctx,
                           request: Request) -> EnrolmentTokenOut:
    now = clock.now()
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        caller.require_perm("device.enrol")
        root = current_root(s, t)
        if root is None:
            raise Conflict("publish a root before enrolling devices")
        token = new_token()
        s.add(EnrolmentToken(token_hash=token_hash(token), tenant_id=t, created_by=caller.username,
                             created_at=now, expires_at=now + body.ttl_s))
        root_sha = root.sha256
    url = ctx.config.public_url or str(request.base_url).rstrip("/")
    return EnrolmentTokenOut(token=token, expires_at=now + body.ttl_s, root_sha256=root_sha,
                             cert_sha256=ctx.cert_sha256, server_url=url)


@agent_router.post("/agent/v1/enroll", response_model=EnrolOut)
def enrol(body: EnrolIn, ctx: Ctx, request: Request) -> EnrolOut:
    """Register a device key with a one-time token; the device starts ``pending``."""
    now = clock.now()
    try:
        public = DevicePublicKey.from_text(body.public_key)
    except TrustError as exc:
        raise BadRequest(exc.message) from None
    device_id = device_id_for(public)
    with ctx.store.transaction() as s:
        tok = s.get(EnrolmentToken, token_hash(body.token))
        if tok is None or tok.used_at is not None or tok.expires_at <= now:
            raise Forbidden("invalid enrolment token")
        if s.get(Device, device_id) is not None:
            raise Conflict("this device key is already enrolled")
        tok.used_at = now
        s.add(Device(id=device_id, tenant_id=tok.tenant_id, public_key=public.to_text(),
                     hostname=body.hostname, agent_version=body.agent_version, status="pending",
                     enrolled_at=now))
        ctx.audit.record(s, [tok.tenant_id], "device.enrolled", "device:" + device_id,
                         {"device": device_id, "hostname": body.hostname,
                          "agent_version": body.agent_version, "token_by": tok.created_by}, now)
        roots = [r.envelope.decode() for r in s.scalars(
            select(RootVersion).where(RootVersion.tenant_id == tok.tenant_id)
            .order_by(RootVersion.version))]
        return EnrolOut(device_id=device_id, tenant=tok.tenant_id, roots=roots,
                        gateway_url=gateway_url(ctx, request), gateway_urls=gateway_urls(ctx, request))


def gateway_urls(ctx: ServerContext, request: Request) -> list[str] | None:
    """Every gateway an agent may try in turn: the deployment's list (config ``agent_gateways``),
    else the one :func:`gateway_url` names."""
    if ctx.config.agent_gateways:
        return list(ctx.config.agent_gateways)
    one = gateway_url(ctx, request)
    return [one] if one else None


def gateway_url(ctx: ServerContext, request: Request) -> str | None:
    """Where agents connect: the deployment's first listed gateway, else the dedicated gateway port
    on the host they enrolled with."""
    if ctx.config.agent_gateways:
        return ctx.config.agent_gateways[0]
    if ctx.agent_port is None:
        return None
    base = urlsplit(ctx.config.public_url) if ctx.config.public_url else request.url
    host = base.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"wss://{host}:{ctx.agent_port}/agent/v1/ws"


#: Sort keys of the device list; each is paired with the device id, so a page cursor is exact.
_SORTS = {"enrolled": Device.enrolled_at, "hostname": Device.hostname, "id": Device.id,
          "last_seen": func.coalesce(Device.last_seen, 0.0)}
DeviceSort = Literal["enrolled", "hostname", "id", "last_seen"]
DeviceStatus = Literal["pending", "approved", "rejected", "retired"]


def _cursor(value: object, device_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([value, device_id]).encode()).decode().rstrip("=")


def _after(cursor: str) -> tuple[object, str]:
    """The (sort value, device id) a cursor holds; BadRequest if it is not one this server made."""
    bad = BadRequest("not a device list cursor (use the Rampart-Next header of the previous page)")
    try:
        value, device_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError, binascii.Error):
        raise bad from None
    if not isinstance(device_id, str) or not isinstance(value, str | int | float) or isinstance(value, bool):
        raise bad
    return value, device_id


@router.get("/tenants/{t}/devices", response_model=list[DeviceOut],
            responses={400: {"description": "The cursor is not one this server made"}})
def list_devices(t: TenantPath, caller: CallerDep, ctx: Ctx, response: Response,
                 limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
                 after: Annotated[str | None, Query(max_length=600)] = None,
                 sort: DeviceSort = "enrolled",
                 q: Annotated[str | None, Query(max_length=100)] = None,
                 status: DeviceStatus | None = None) -> list[DeviceOut]:
    """A tenant's devices in ``sort`` order (then by id). With ``limit``, one page: keyset pagination,
    the next page's cursor in the ``Rampart-Next`` header (absent on the last page); ``q`` matches a
    part of the hostname or id, ``status`` one enrolment status. All of it in SQL, on indexes."""
    key = _SORTS[sort]
    with ctx.store.read() as s:
        caller.tenant(s, t)
        stmt = select(Device, key).where(Device.tenant_id == t)
        if q:
            pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            stmt = stmt.where(or_(Device.hostname.ilike(pattern, escape="\\"),
                                  Device.id.ilike(pattern, escape="\\")))
        if status is not None:
            stmt = stmt.where(Device.status == status)
        if after is not None:
            value, last_id = _after(after)
            stmt = stmt.where(tuple_(key, Device.id) > tuple_(literal(value), literal(last_id)))
        stmt = stmt.order_by(key, Device.id)
        if limit is not None:
            stmt = stmt.limit(limit + 1)
        rows = list(s.execute(stmt).tuples())
        if limit is not None and len(rows) > limit:
            rows = rows[:limit]
            last, value = rows[-1]
            response.headers["Rampart-Next"] = _cursor(value, last.id)
        member_of = groups_of_devices(s, t, [d.id for d, _ in rows] if limit is not None else None)
        return [DeviceOut(id=d.id, hostname=d.hostname, status=d.status,  # type: ignore[arg-type]
                          connected=ctx.gateway.is_connected(d.id), last_seen=d.last_seen,
                          enrolled_at=d.enrolled_at, groups=member_of.get(d.id, [])) for d, _ in rows]


@router.post("/tenants/{t}/devices/{d}/approve", response_model=OkOut)
def approve_device(t: TenantPath, d: DevicePath, caller: CallerDep, ctx: Ctx) -> OkOut:
    now = clock.now()
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        device = s.get(Device, d)
        if device is None or device.tenant_id != t:
            raise NotFound("device not found")
        caller.require_perm("device.approve")
        if device.status == "approved":
            return OkOut()
        device.status, device.approved_at, device.approved_by = "approved", now, caller.username
        ctx.audit.record(s, [t], "device.approved", caller.username, {"device": d}, now)
    ctx.gateway.wake([d])
    return OkOut()


# --- lifecycle: reject, retire, rename (issue 16) ------------------------------------------------------


class DeviceNameIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: The operators' name for the device (shown instead of the hostname it reported; printable text).
    name: str = Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")


def _device_of(s: Session, t: str, d: str) -> Device:
    device = s.get(Device, d)
    if device is None or device.tenant_id != t:
        raise NotFound("device not found")
    return device


@router.post("/tenants/{t}/devices/{d}/reject", response_model=OkOut)
def reject_device(t: TenantPath, d: DevicePath, caller: CallerDep, ctx: Ctx) -> OkOut:
    """Refuse a pending enrolment: the device is told at its next connection and refused from then on."""
    now = clock.now()
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        device = _device_of(s, t, d)
        caller.require_perm("device.approve")
        if device.status == "rejected":
            return OkOut()
        if device.status != "pending":
            raise Conflict(f"only a pending device can be rejected; this one is {device.status} "
                           "(retire it instead)")
        device.status = "rejected"
        ctx.audit.record(s, [t], "device.rejected", caller.username, {"device": d}, now)
    return OkOut()


@router.post("/tenants/{t}/devices/{d}/retire", response_model=OkOut)
async def retire_device(t: TenantPath, d: DevicePath, caller: CallerDep, ctx: Ctx) -> OkOut:
    """Retire a device (fresh TOTP step-up): its connection closes, it is told and refused from then on,
    and no job may target it any more. Its records stay until retention removes them."""
    def retire() -> bool:
        now = clock.now()
        with ctx.store.transaction() as s:
            caller.tenant(s, t)
            device = _device_of(s, t, d)
            caller.require_perm("device.approve")
            if device.status == "retired":
                return False
            require_step_up(s, ctx.audit, tenant_id=t, actor=caller.username, step_up_at=caller.step_up_at,
                            why="retiring a device", details={"device": d}, now=now)
            device.status = "retired"
            device.retired_at = now
            ctx.audit.record(s, [t], "device.retired", caller.username, {"device": d}, now)
        return True

    if await asyncio.to_thread(retire):
        await ctx.gateway.disconnect(d)
    return OkOut()


@router.put("/tenants/{t}/devices/{d}/name", response_model=OkOut)
def rename_device(t: TenantPath, d: DevicePath, body: DeviceNameIn, caller: CallerDep, ctx: Ctx) -> OkOut:
    """Give a device the operators' own name (what lists show); audited with the name it had."""
    now = clock.now()
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        device = _device_of(s, t, d)
        caller.require_perm("device.rename")
        before = device.hostname
        device.hostname = body.name
        ctx.audit.record(s, [t], "device.renamed", caller.username,
                         {"device": d, "from": before, "to": body.name}, now)
    return OkOut()
