"""``GET /``: a plain HTML status page (no JavaScript, no forms, no setup wizard).

Without a session it shows only aggregate counts. With ``Authorization:
Bearer <session>`` it lists the tenants the caller reaches, their devices
with last-seen times, and recent jobs with their targets' states and receipt
outcomes, so it never shows one tenant's data to another (T12). Every value
is HTML-escaped.
"""

from __future__ import annotations

import datetime
import html
import time

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import func, select

from rampart import __version__

from .api.deps import Caller, current_caller, get_ctx
from .context import ServerContext
from .errors import Unauthenticated
from .models import Device, JobRow, JobTarget, ReceiptRow, Tenant

router = APIRouter()

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Rampart server</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:1em}}
td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:left}}</style></head>
<body><h1>Rampart server {version}</h1>{body}</body></html>
"""


def _t(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body or ''}</table>"


def _summary(ctx: ServerContext) -> str:
    with ctx.store.transaction() as s:
        tenants = s.scalar(select(func.count()).select_from(Tenant)) or 0
        devices = s.scalar(select(func.count()).select_from(Device)) or 0
    return _table(["tenants", "devices", "connected agents", "TLS certificate SHA-256"],
                  [[str(tenants), str(devices), str(ctx.gateway.connected_count()),
                    ctx.cert_sha256 or "(TLS terminated elsewhere)"]])


def _details(ctx: ServerContext, caller: Caller) -> str:
    parts = [f"<p>Signed in as {html.escape(caller.username)} ({html.escape(caller.role)})</p>"]
    now = time.time()
    with ctx.store.transaction() as s:
        for t in s.scalars(select(Tenant).order_by(Tenant.name)):
            if not caller.reaches(t.id):
                continue
            parts.append(f"<h2>{html.escape(t.name)} <small>{html.escape(t.id)}</small></h2>")
            devices = s.scalars(select(Device).where(Device.tenant_id == t.id)
                                .order_by(Device.hostname))
            parts.append(_table(["device", "hostname", "status", "connected", "last seen"], [
                [d.id, d.hostname, d.status, "yes" if ctx.gateway.is_connected(d.id) else "no",
                 _t(d.last_seen)] for d in devices]))
            rows = []
            for j in s.scalars(select(JobRow).where(JobRow.tenant_id == t.id)
                               .order_by(JobRow.created_at.desc()).limit(20)):
                outcomes = dict(s.execute(select(ReceiptRow.device_id, ReceiptRow.outcome)
                                          .where(ReceiptRow.job_id == j.id)).tuples().all())
                for tg in s.scalars(select(JobTarget).where(JobTarget.job_id == j.id)):
                    expired = " (expired)" if tg.state != "done" and j.expires_at <= now else ""
                    rows.append([j.id, j.kind, _t(j.created_at), tg.device_id,
                                 tg.state + expired, outcomes.get(tg.device_id, "")])
            parts.append(_table(["job", "kind", "created", "device", "state", "receipt"], rows))
    return "".join(parts)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def status_page(request: Request) -> HTMLResponse:
    ctx = get_ctx(request)
    body = _summary(ctx)
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        creds = HTTPAuthorizationCredentials(scheme="Bearer", credentials=header[7:].strip())
        try:
            body += _details(ctx, current_caller(ctx, creds))
        except Unauthenticated:
            body += "<p>Session invalid or expired.</p>"
    return HTMLResponse(PAGE.format(version=html.escape(__version__), body=body),
                        headers={"Cache-Control": "no-store"})
