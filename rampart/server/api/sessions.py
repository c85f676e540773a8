"""Remote sessions: the technician's relay socket, the session list, and the recordings.

Reading a tenant's sessions and recordings needs only that the caller reaches
the tenant (customer viewers see their own tenant's, T12). Opening the relay
needs ``session.open`` and being the account that submitted the session's
signed job. What is served here carries no authority: the CLI checks the job
against its pinned root, the receipt against the device key the job names,
and the recording against the receipt (docs/remote-support.md).
"""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
from fastapi import APIRouter, Query, WebSocket
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.websockets import WebSocketDisconnect

from rampart.trust import JOB_TYPE, Job, Receipt, decode_envelope, decode_payload
from rampart.wire import WireError, encode_message
from rampart.wire.session import RelayNotice, decode_operator_message

from ..errors import NotFound, ServerError
from ..models import Device, JobRow, JobTarget, ReceiptRow, SessionRecording
from ..relay import RelayRefused, SessionRelay
from ..roles import allowed
from .deps import Caller, CallerDep, Ctx, JobPath, TenantPath, resolve_caller

router = APIRouter(tags=["sessions"])

#: WebSocket close codes of the relay.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_REFUSED = 4409


def _summary(s: Session, row: JobRow) -> dict[str, object]:
    job = decode_payload(decode_envelope(row.envelope, expect_type=JOB_TYPE).payload, Job)
    spec = job.session_spec
    device = s.scalars(select(JobTarget.device_id).where(JobTarget.job_id == row.id)).first() or ""
    rc = s.get(ReceiptRow, (row.id, device)) if device else None
    rec = s.execute(select(SessionRecording.sha256, SessionRecording.size)
                    .where(SessionRecording.job_id == row.id)).first()
    host = s.execute(select(Device.hostname).where(Device.id == device)).scalar() if device else None
    out: dict[str, object] = {
        "id": row.id, "tenant": row.tenant_id, "device": device, "hostname": host or "",
        "mode": spec.mode if spec else "", "watch": spec.watch if spec else "",
        "signer": row.signer, "grant": row.grant_id, "created_at": row.created_at,
        "state": "ended" if rc is not None else "open-or-pending",
        "recording": {"sha256": rec[0], "bytes": rec[1]} if rec else None,
        "outcome": rc.outcome if rc else None,
    }
    if rc is not None:
        receipt = decode_payload(decode_envelope(rc.envelope).payload, Receipt)
        summary = receipt.session
        out["ended_at"] = receipt.ended_at
        out["started_at"] = receipt.started_at
        out["end"] = "" if isinstance(summary, msgspec.UnsetType) else summary.end
        out["detail"] = receipt.detail
    return out


@router.get("/tenants/{t}/sessions")
def list_sessions(t: TenantPath, caller: CallerDep, ctx: Ctx,
                  limit: int = Query(50, ge=1, le=1000)) -> list[dict[str, object]]:
    with ctx.store.read() as s:
        caller.tenant(s, t)
        rows = s.scalars(select(JobRow).where(JobRow.tenant_id == t, JobRow.kind == "shell")
                         .order_by(JobRow.created_at.desc()).limit(limit))
        return [_summary(s, r) for r in rows]


def _load(s: Session, caller: Caller, job_id: str) -> JobRow:
    row = s.get(JobRow, job_id)
    if row is None or row.kind != "shell" or not caller.reaches(row.tenant_id):
        raise NotFound("session not found")
    caller.tenant(s, row.tenant_id)
    return row


@router.get("/sessions/{j}")
def get_session(j: JobPath, caller: CallerDep, ctx: Ctx) -> dict[str, object]:
    """A session with the evidence a client verifies itself: the signed job, the receipt, the device key."""
    with ctx.store.read() as s:
        row = _load(s, caller, j)
        out = _summary(s, row)
        device = str(out["device"])
        rc = s.get(ReceiptRow, (row.id, device)) if device else None
        key = s.execute(select(Device.public_key).where(Device.id == device)).scalar() if device else None
        out["job_envelope"] = row.envelope.decode()
        out["receipt_envelope"] = rc.envelope.decode() if rc else None
        out["device_key"] = key
        return out


@router.get("/sessions/{j}/recording")
def get_recording(j: JobPath, caller: CallerDep, ctx: Ctx) -> Response:
    """The recording's bytes exactly as stored (the client checks them against the signed receipt)."""
    with ctx.store.read() as s:
        _load(s, caller, j)
        rec = s.get(SessionRecording, j)
        if rec is None:
            raise NotFound("this session has no stored recording")
        return Response(content=rec.data, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{j}.cast"',
                                 "X-Content-Type-Options": "nosniff"})


# --- the technician's relay socket ---------------------------------------------------------------------


def _token(ws: WebSocket) -> str | None:
    header = ws.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def relay_socket(ws: WebSocket, job_id: str) -> None:
    """``/api/v1/sessions/{job}/relay``: ciphertext both ways between this technician and the device."""
    ctx = ws.app.state.ctx
    relay: SessionRelay | None = ctx.gateway.relay
    address = ws.client.host if ws.client is not None else None
    await ws.accept()
    try:
        caller = await asyncio.to_thread(resolve_caller, ctx, _token(ws), address)
    except ServerError:
        await ws.close(CLOSE_UNAUTHENTICATED)
        return
    if relay is None or not allowed(caller.role, "session.open"):
        await ws.close(CLOSE_FORBIDDEN)
        return
    try:
        def check_network() -> None:
            with ctx.store.read() as s:
                row = s.get(JobRow, job_id)
                if row is not None and caller.reaches(row.tenant_id):
                    caller.tenant(s, row.tenant_id)

        await asyncio.to_thread(check_network)
        ch = await relay.open_for_operator(job_id, caller.account_id, caller.tenants)
    except (RelayRefused, ServerError) as exc:
        with contextlib.suppress(Exception):
            await ws.send_text(encode_message(RelayNotice(job_id=job_id, status="refused",
                                                          detail=str(exc)[:300])))
            await ws.close(CLOSE_REFUSED)
        return
    if not ctx.gateway.is_connected_here(ch.device_id):
        relay.notice(ch, "device-offline", f"{ch.device_id} is not connected; the session starts when it is")

    async def downstream() -> None:
        while True:
            get = asyncio.create_task(ch.to_operator.get())
            closed = asyncio.create_task(ch.closed.wait())
            try:
                done, _ = await asyncio.wait({get, closed}, return_when=asyncio.FIRST_COMPLETED)
            finally:  # cancelled with the socket: the two waits go too (no task left pending)
                if not get.done():
                    get.cancel()
                closed.cancel()
            if get in done:
                await ws.send_text(get.result())
                continue
            while not ch.to_operator.empty():
                await ws.send_text(ch.to_operator.get_nowait())
            return

    async def upstream() -> None:
        limit = ctx.limits.max_ws_message_bytes
        while True:
            data = await ws.receive()
            if data["type"] == "websocket.disconnect":
                return
            text = data.get("text")
            if not isinstance(text, str):
                continue
            try:
                msg = decode_operator_message(text, max_bytes=limit)
            except WireError as exc:
                relay.notice(ch, "refused", f"bad message: {exc.detail}")
                continue
            if not await relay.from_operator(ch, text, msg):
                relay.notice(ch, "device-offline", f"{ch.device_id} is not connected")

    tasks = [asyncio.create_task(downstream()), asyncio.create_task(upstream())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception, WebSocketDisconnect):
            await ws.close(1000)
        await relay.operator_left(ch)


def install(app: object) -> None:
    """Add the relay socket to the application (WebSocket routes live beside the API router)."""
    app.add_api_websocket_route("/api/v1/sessions/{job_id}/relay", relay_socket)  # type: ignore[attr-defined]


__all__ = ["install", "router"]
