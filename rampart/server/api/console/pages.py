"""The console's pages: read everything the caller reaches, manage alerts and accounts, sign nothing.

Every route starts from the cookie session (:func:`.web.caller_of`; none: the sign-in
page, no data), then checks tenant reach with the API's own ``Caller.tenant`` (404 for
a tenant the caller does not reach, exactly as for one that does not exist: T12), and a
device, alert or job by its tenant (404 when it belongs to another). Actions (alert ack
and resolve; account create, revoke, unlock, re-issue) pass the same-origin and CSRF
checks and then call the API's own route functions, so the role checks, audit entries
and refusals are the API's, word for word. Nothing here holds or asks for a signing key:
grants and approvals are shown, never signed (issue 14: a served page must not be the
code that asks a key to sign).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Callable
from typing import Any, Final

import msgspec
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import ValidationError
from sqlalchemy import func, select

from rampart.textsafe import safe_line
from rampart.trust import (
    Receipt,
    SessionSummary,
    TrustError,
    decode_envelope,
    decode_payload,
    merkle,
    verify_checkpoint,
)
from rampart.webui import CSP, PLAYER_CSP, static_file

from ... import auth as auth_core
from ... import clock
from ...alerts import LIVE
from ...context import ServerContext
from ...errors import NotFound, ServerError
from ...models import (
    Account,
    AlertRow,
    AuditEntry,
    BackupPolicyRow,
    BackupResult,
    Device,
    DevicePatchState,
    GrantRow,
    JobRow,
    JobTarget,
    OperatorKeyRow,
    PendingUpdateRow,
    ReceiptRow,
    ScriptCheck,
    ScriptCheckStatus,
    SessionRecording,
    Tenant,
)
from ...report import duration as report_dur
from ...tenant_roots import current_root, trusted_from_store
from .. import accounts as accounts_api
from .. import alerts as alerts_api
from .. import reports as reports_api
from .. import sessions as sessions_api
from .. import telemetry as telemetry_api
from ..auth import step_up as step_up_api
from ..deps import Caller, client_address, get_ctx, resolve_caller
from ..grants import grant_out
from ..jobs import job_out
from ..schemas import ALERT_ID, DEVICE_ID, JOB_ID, TENANT_ID, USERNAME, AccountIn, AccountRevokeIn, StepUpIn
from ..status_page import COOKIE, _login
from . import queries
from .web import (
    HEADERS,
    PREFIX,
    caller_of,
    check_csrf,
    from_error,
    read_form,
    refused,
    render,
    same_origin,
    see_other,
    session_token,
    to_login,
)

router = APIRouter(prefix=PREFIX, include_in_schema=False)

#: Rows an inventory section shows before it says how many more there are.
MAX_SECTION_ROWS: Final = 300
MAX_AUDIT_PAGE: Final = 100
MAX_JOBS: Final = 50
MAX_DEVICE_SESSIONS: Final = 10

_TENANT = re.compile(TENANT_ID)
_DEVICE = re.compile(DEVICE_ID)
_ALERT = re.compile(ALERT_ID)
_USER = re.compile(USERNAME)
_JOB = re.compile(JOB_ID)


def _ctx(request: Request) -> ServerContext:
    return get_ctx(request)


def _page(request: Request, build: Callable[[Caller], Response]) -> Response:
    """Run ``build`` for the signed-in caller; the sign-in page without a session; API refusals as pages."""
    caller = caller_of(request)
    if caller is None:
        return to_login(request)
    try:
        return build(caller)
    except ServerError as exc:
        if exc.refusal is not None:  # audited (and alerted) by the app's handler
            raise
        return from_error(request, exc, caller)


def _tenant(s: Any, caller: Caller, t: str) -> Tenant:
    if not _TENANT.match(t):
        raise NotFound("tenant not found")
    return caller.tenant(s, t)


def _cutoff(ctx: ServerContext, now: float) -> float:
    return now - ctx.limits.overdue_after_s


# --- static files, sign-in and sign-out --------------------------------------------------------

@router.get("/static/{name}")
def static(name: str) -> Response:
    found = static_file(name)
    if found is None:
        return Response("not found", status_code=404, media_type="text/plain", headers=HEADERS)
    data, kind = found
    return Response(data, media_type=kind, headers={**HEADERS, "Cache-Control": "private, max-age=3600"})


@router.get("/login")
def login_page(request: Request) -> Response:
    if caller_of(request) is not None:
        return see_other(PREFIX + "/")
    return render(request, "login.html", message="")


@router.post("/login")
async def login_post(request: Request) -> Response:
    """Password and TOTP through :func:`rampart.server.api.auth.perform_login` (pacing, lockout)."""
    if not same_origin(request):
        return refused(request, 403, "Cross-site form refused.")
    form = await read_form(request)
    ctx = _ctx(request)
    new = await run_in_threadpool(_login, ctx, form.get("username", "")[:64],
                                  form.get("password", "")[:1024], form.get("totp", "")[:16],
                                  client_address(request))
    if isinstance(new, str):
        return render(request, "login.html", 401, message=new[:1].upper() + new[1:] + ".")
    resp = see_other(PREFIX + "/")
    resp.set_cookie(COOKIE, new.token, max_age=int(ctx.limits.session_absolute_s), path="/",
                    secure=True, httponly=True, samesite="strict")
    return resp


@router.post("/logout")
async def logout_post(request: Request) -> Response:
    if not same_origin(request):
        return refused(request, 403, "Cross-site form refused.")
    token = session_token(request)
    form = await read_form(request)
    if token and check_csrf(request, form, token):
        ctx = _ctx(request)

        def end() -> None:
            with ctx.store.transaction() as s:
                auth_core.end_session(s, token)
        await run_in_threadpool(end)
    resp = see_other(PREFIX + "/login")
    resp.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return resp


# --- tenants and the dashboard ---------------------------------------------------------------

@router.get("/")
def home(request: Request) -> Response:
    def build(caller: Caller) -> Response:
        ctx = _ctx(request)
        connected = ctx.gateway.connected_ids()
        now = clock.now()
        rows = []
        with ctx.store.read() as s:
            q = select(Tenant).order_by(Tenant.name)
            if caller.tenants is not None:
                q = q.where(Tenant.id.in_(sorted(caller.tenants)))
            tenants = list(s.scalars(q))
            counts = dict(s.execute(select(Device.tenant_id, func.count()).group_by(Device.tenant_id))
                          .tuples().all())
            alerts = dict(s.execute(select(AlertRow.tenant_id, func.count()).where(
                AlertRow.status == "open").group_by(AlertRow.tenant_id)).tuples().all())
            online: dict[str, int] = {}
            if connected:
                online = dict(s.execute(select(Device.tenant_id, func.count()).where(
                    Device.id.in_(sorted(connected))).group_by(Device.tenant_id)).tuples().all())
            for t in tenants:
                rows.append({"id": t.id, "name": t.name, "devices": counts.get(t.id, 0),
                             "online": online.get(t.id, 0), "open_alerts": alerts.get(t.id, 0)})
        if caller.role == "customer-viewer" and len(rows) == 1:
            return see_other(f"{PREFIX}/t/{rows[0]['id']}")
        return render(request, "tenants.html", caller=caller, tenants=rows, now=now)
    return _page(request, build)


@router.get("/t/{t}")
def tenant_dashboard(request: Request, t: str) -> Response:
    def build(caller: Caller) -> Response:
        ctx = _ctx(request)
        now = clock.now()
        with ctx.store.read() as s:
            tenant = _tenant(s, caller, t)
            d = queries.dashboard(s, t, connected=ctx.gateway.connected_ids(), cutoff=_cutoff(ctx, now),
                                  now=now)
            recent = list(s.scalars(select(AlertRow).where(AlertRow.tenant_id == t, AlertRow.status.in_(LIVE))
                                    .order_by(AlertRow.last_seen.desc()).limit(10)))
        return render(request, "dashboard.html", caller=caller, tenant=tenant, d=d, alerts=recent, now=now,
                      section="dashboard")
    return _page(request, build)


# --- devices ---------------------------------------------------------------------------------

@router.get("/t/{t}/devices")
def device_list(request: Request, t: str) -> Response:
    def build(caller: Caller) -> Response:
        ctx = _ctx(request)
        now = clock.now()
        query = queries.DeviceQuery.parse(dict(request.query_params))
        connected = ctx.gateway.connected_ids()
        with ctx.store.read() as s:
            tenant = _tenant(s, caller, t)
            page = queries.device_page(s, t, query, connected=connected, cutoff=_cutoff(ctx, now))
        # The live search asks for the results only; a history restore (back button) wants the page.
        partial = request.headers.get("hx-request") == "true" and \
            request.headers.get("hx-history-restore-request") != "true"
        template = "device_rows.html" if partial else "devices.html"
        return render(request, template, caller=caller, tenant=tenant, page=page, q=query,
                      connected=connected, now=now, cutoff=_cutoff(ctx, now), section="devices",
                      states=queries.STATES, sorts=queries.SORTS)
    return _page(request, build)


def _inventory_sections(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Each inventory section as a table (columns, rows, how many left out) or key/value pairs."""
    out: list[dict[str, Any]] = []
    for name, value in doc.items():
        if name in ("schema", "collected_at"):
            continue
        if isinstance(value, dict):
            pairs = [(k, json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v)
                     for k, v in value.items()]
            out.append({"name": name, "pairs": pairs})
        elif isinstance(value, list):
            columns: list[str] = []
            for row in value[:MAX_SECTION_ROWS]:
                for k in row if isinstance(row, dict) else ():
                    if k not in columns:
                        columns.append(k)
            rows = [[_cell(row.get(c)) if isinstance(row, dict) else _cell(row) for c in columns]
                    for row in value[:MAX_SECTION_ROWS]]
            out.append({"name": name, "columns": columns, "rows": rows, "count": len(value),
                        "more": max(0, len(value) - MAX_SECTION_ROWS)})
    return out


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, dict | list):
        return json.dumps(v, sort_keys=True)
    return str(v)


@router.get("/t/{t}/devices/{d}")
def device_page(request: Request, t: str, d: str) -> Response:
    def build(caller: Caller) -> Response:
        ctx = _ctx(request)
        now = clock.now()
        with ctx.store.read() as s:
            tenant = _tenant(s, caller, t)
            device = s.get(Device, d) if _DEVICE.match(d) else None
            if device is None or device.tenant_id != t:  # another tenant's device: as if it did not exist
                raise NotFound("device not found")
            alerts = list(s.scalars(select(AlertRow).where(AlertRow.tenant_id == t, AlertRow.device_id == d)
                                    .order_by(AlertRow.status.in_(LIVE).desc(), AlertRow.last_seen.desc())
                                    .limit(50)))
            jobs = []
            for row in s.scalars(select(JobRow).join(JobTarget, JobTarget.job_id == JobRow.id).where(
                    JobRow.tenant_id == t, JobTarget.device_id == d)
                    .order_by(JobRow.created_at.desc()).limit(20)):
                out = job_out(s, row)
                target = next((x for x in out.targets if x.device == d), None)
                expired = target is not None and target.state != "done" and row.expires_at <= now
                jobs.append({"job": out, "target": target, "who": _who(s, row), "expired": expired})
            checks = list(s.execute(select(ScriptCheckStatus, ScriptCheck.name).join(
                ScriptCheck, ScriptCheck.job_id == ScriptCheckStatus.job_id).where(
                ScriptCheckStatus.device_id == d).order_by(ScriptCheck.name)))
            patch = s.get(DevicePatchState, d)
            pending = list(s.scalars(select(PendingUpdateRow).where(PendingUpdateRow.device_id == d)
                                     .order_by(PendingUpdateRow.security.desc(), PendingUpdateRow.name)
                                     .limit(MAX_SECTION_ROWS)))
            backup_policy = s.get(BackupPolicyRow, d)
            backups = list(s.scalars(select(BackupResult).where(BackupResult.device_id == d)
                                     .order_by(BackupResult.finished_at.desc()).limit(10)))
            session_ids = list(s.scalars(select(JobRow.id).join(JobTarget, JobTarget.job_id == JobRow.id)
                .where(JobRow.tenant_id == t, JobRow.kind == "shell", JobTarget.device_id == d)
                .order_by(JobRow.created_at.desc()).limit(MAX_DEVICE_SESSIONS)))
        findings = telemetry_api.list_findings(t, caller, ctx, status="open", device=d, kind=None, limit=500)
        sessions = [sessions_api.get_session(j, caller, ctx) for j in session_ids]
        telemetry = ctx.gateway.telemetry
        got = telemetry.inventory(d, now) if telemetry is not None else None
        sections = _inventory_sections(msgspec.to_builtins(got.inventory)) if got is not None else []
        return render(request, "device.html", caller=caller, tenant=tenant, device=device, now=now,
                      connected=ctx.gateway.is_connected(d), alerts=alerts, jobs=jobs, checks=checks,
                      patch=patch, pending=pending, backup_policy=backup_policy, backups=backups,
                      findings=findings, inventory=got, sections=sections, sessions=sessions,
                      section="devices")
    return _page(request, build)


def _who(s: Any, row: JobRow) -> str:
    """Who acted: the account that submitted the job and the signing key's name."""
    account = s.get(Account, row.account_id) if row.account_id is not None else None
    key = s.get(OperatorKeyRow, row.signer)
    name = account.username if account is not None else "automation"
    return f"{name} (key {key.name})" if key is not None else name


# --- alerts ----------------------------------------------------------------------------------

@router.get("/t/{t}/alerts")
def alert_list(request: Request, t: str) -> Response:
    def build(caller: Caller) -> Response:
        ctx = _ctx(request)
        status = request.query_params.get("status", "live")
        status = status if status in ("live", "resolved", "all") else "live"
        with ctx.store.read() as s:
            tenant = _tenant(s, caller, t)
            q = select(AlertRow).where(AlertRow.tenant_id == t)
            if status == "live":
                q = q.where(AlertRow.status.in_(LIVE))
            elif status == "resolved":
                q = q.where(AlertRow.status == "resolved")
            alerts = list(s.scalars(q.order_by(AlertRow.last_seen.desc()).limit(200)))
        return render(request, "alerts.html", caller=caller, tenant=tenant, alerts=alerts, status=status,
                      now=clock.now(), section="alerts")
    return _page(request, build)


@router.post("/alerts/{a}/{action}")
async def alert_action(request: Request, a: str, action: str) -> Response:
    """Acknowledge or resolve: the API's own transition (alert.manage, audited)."""
    caller, form, refusal = await _checked_post(request)
    if refusal is not None:
        return refusal
    assert caller is not None
    if not _ALERT.match(a) or action not in ("ack", "resolve"):
        return refused(request, 404, "Alert not found.", caller)
    ctx = _ctx(request)
    change = alerts_api.ack_alert if action == "ack" else alerts_api.resolve_alert
    try:
        await run_in_threadpool(change, a, caller, ctx)
    except ServerError as exc:
        if exc.refusal is not None:
            raise
        return from_error(request, exc, caller)
    back = form.get("next", "")
    return see_other(back if back.startswith(PREFIX + "/t/") and _safe_path(back) else PREFIX + "/")


_BACK = re.compile(r"/console/t/[a-z0-9-]+(/[a-z]+(/[a-z0-9-]+)?)?(\?[A-Za-z0-9=&_.%-]*)?")


def _safe_path(path: str) -> bool:
    """A console page to return to after an action (never another site: no open redirect)."""
    return _BACK.fullmatch(path) is not None


async def _checked_post(request: Request) -> tuple[Caller | None, dict[str, str], Response | None]:
    """The caller and form of a state change, or the refusal: same origin, a session, its CSRF token."""
    if not same_origin(request):
        return None, {}, refused(request, 403, "Cross-site form refused.")
    form = await read_form(request)
    token = session_token(request)
    caller = await run_in_threadpool(caller_of, request)
    if caller is None or token is None:
        return None, form, refused(request, 401, "Sign in first.")
    if not check_csrf(request, form, token):
        return None, form, refused(request, 403, "Missing or wrong CSRF token.", caller)
    return caller, form, None


# --- jobs, grants, audit ---------------------------------------------------------------------

@router.get("/t/{t}/jobs")
def job_list(request: Request, t: str) -> Response:
    def build(caller: Caller) -> Response:
        ctx = _ctx(request)
        now = clock.now()
        with ctx.store.read() as s:
            tenant = _tenant(s, caller, t)
            jobs = []
            hosts: dict[str, str] = {}
            for row in s.scalars(select(JobRow).where(JobRow.tenant_id == t)
                                 .order_by(JobRow.created_at.desc()).limit(MAX_JOBS)):
                out = job_out(s, row)
                jobs.append({"job": out, "who": _who(s, row), "expires_at": row.expires_at})
                hosts.update({x.device: "" for x in out.targets})
            if hosts:
                hosts = dict(s.execute(select(Device.id, Device.hostname).where(
                    Device.id.in_(sorted(hosts)), Device.tenant_id == t)).tuples().all())
        return render(request, "jobs.html", caller=caller, tenant=tenant, jobs=jobs, hosts=hosts, now=now,
                      section="jobs")
    return _page(request, build)


@router.get("/t/{t}/sessions")
def session_list(request: Request, t: str) -> Response:
    """Remote sessions (issue 13): who opened which, on which device, when, how it ended, its recording."""
    def build(caller: Caller) -> Response:
        ctx = _ctx(request)
        with ctx.store.read() as s:
            tenant = _tenant(s, caller, t)
            keys = dict(s.execute(select(OperatorKeyRow.keyid, OperatorKeyRow.name)).tuples().all())
        sessions = sessions_api.list_sessions(t, caller, ctx, limit=MAX_JOBS)
        return render(request, "sessions.html", caller=caller, tenant=tenant, sessions=sessions, keys=keys,
                      now=clock.now(), section="sessions")
    return _page(request, build)


@router.get("/t/{t}/sessions/{j}/recording")
def session_recording(request: Request, t: str, j: str) -> Response:
    """A session's recording as a download (asciicast v2, exactly as stored; ``rampart`` verifies it)."""
    def build(caller: Caller) -> Response:
        ctx = _ctx(request)
        with ctx.store.read() as s:
            _tenant(s, caller, t)
            row = s.get(JobRow, j) if _JOB.match(j) else None
            if row is None or row.tenant_id != t:
                raise NotFound("session not found")
        got = sessions_api.get_recording(j, caller, ctx)
        got.headers.update({k: v for k, v in HEADERS.items() if k not in got.headers})
        return got
    return _page(request, build)


#: What the player is given of a recording's events: output, resize and markers (labels made one
#: inert line). Input keystrokes (``i``), the header's title and env, and anything else never reach it.
_PLAYED_CODES: Final = frozenset({"o", "r", "m"})
_RESIZE = re.compile(r"[1-9][0-9]{0,3}x[1-9][0-9]{0,3}")
MAX_MARKER_CHARS: Final = 300
MAX_MARKERS_SHOWN: Final = 200


def playable(data: bytes) -> tuple[bytes, dict[str, Any]]:
    """A stored recording rebuilt for the browser's player, and what the page says of it.

    The device wrote every byte (T16). The player gets a new header (version 2, width and
    height as bounded integers, nothing else) and the ``o``/``r``/``m`` events whose time is
    a finite number and whose data is a string; a marker's label becomes
    ``safe_line`` text. Malformed lines are dropped, never an error. Output stays as the
    device sent it: the player draws it in its own virtual terminal as text.
    Returns (cast bytes, {"cols", "rows", "duration", "markers": [(t, label)], "dropped"}).
    """
    lines = data.split(b"\n")
    cols, rows = 80, 24
    try:
        header = json.loads(lines[0]) if lines else {}
    except ValueError:
        header = {}
    if isinstance(header, dict):
        w, h = header.get("width"), header.get("height")
        if isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= 1000:
            cols = w
        if isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= 1000:
            rows = h
    out = [json.dumps({"version": 2, "width": cols, "height": rows}).encode()]
    markers: list[tuple[float, str]] = []
    duration = 0.0
    dropped = 0
    for raw in lines[1:]:
        if not raw.strip():
            continue
        try:
            ev = json.loads(raw)
        except ValueError:
            dropped += 1
            continue
        if not (isinstance(ev, list) and len(ev) == 3 and isinstance(ev[0], int | float)
                and not isinstance(ev[0], bool) and math.isfinite(ev[0]) and ev[0] >= 0
                and isinstance(ev[1], str) and isinstance(ev[2], str)) or ev[1] not in _PLAYED_CODES:
            dropped += 1
            continue
        t, code, value = float(ev[0]), ev[1], ev[2]
        if code == "r" and not _RESIZE.fullmatch(value):
            dropped += 1
            continue
        if code == "m":
            value = safe_line(value)[:MAX_MARKER_CHARS]
            if len(markers) < MAX_MARKERS_SHOWN:
                markers.append((t, value))
        duration = max(duration, t)
        out.append(json.dumps([t, code, value], ensure_ascii=True).encode())
    return b"\n".join(out) + b"\n", {"cols": cols, "rows": rows, "duration": duration, "markers": markers,
                                      "dropped": dropped}


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _session_of(s: Any, caller: Caller, t: str, j: str) -> JobRow:
    """The session job ``j`` of tenant ``t`` (404 for a bad id, another tenant's, or not a session: T12)."""
    _tenant(s, caller, t)
    row: JobRow | None = s.get(JobRow, j) if _JOB.match(j) else None
    if row is None or row.tenant_id != t or row.kind != "shell":
        raise NotFound("session not found")
    return row


def _signed_recording(s: Any, j: str) -> tuple[str, int | None]:
    """The recording's SHA-256 and size as the device signed them in its receipt ("", None: none)."""
    device = s.scalars(select(JobTarget.device_id).where(JobTarget.job_id == j)).first()
    rc = s.get(ReceiptRow, (j, device)) if device else None
    if rc is None:
        return "", None
    receipt = decode_payload(decode_envelope(rc.envelope).payload, Receipt)
    if not isinstance(receipt.session, SessionSummary):
        return "", None
    return receipt.session.recording_sha256 or "", receipt.session.recording_bytes


def _matches(stored: bytes | None, signed_sha: str, signed_bytes: int | None) -> bool:
    """The stored bytes are the ones the device signed: same SHA-256 and size (recomputed now)."""
    return stored is not None and bool(signed_sha) and signed_bytes == len(stored) and \
        _equal(hashlib.sha256(stored).hexdigest(), signed_sha)


@router.get("/t/{t}/sessions/{j}")
def session_page(request: Request, t: str, j: str) -> Response:
    """One session: who, where, when, how it ended, the receipt's SHA-256 against the stored
    recording, and the recording played in the browser (only when the two are equal)."""
    def build(caller: Caller) -> Response:
        ctx = _ctx(request)
        with ctx.store.read() as s:
            row = _session_of(s, caller, t, j)
            tenant = s.get(Tenant, t)
            account = s.get(Account, row.account_id) if row.account_id is not None else None
            key = s.get(OperatorKeyRow, row.signer)
            rec = s.get(SessionRecording, j)
            stored = rec.data if rec is not None else None
            signed_sha, signed_bytes = _signed_recording(s, j)
        doc = sessions_api.get_session(j, caller, ctx)
        matches = _matches(stored, signed_sha, signed_bytes)
        info = playable(stored)[1] if stored is not None and matches else None
        return render(request, "recording.html", caller=caller, tenant=tenant, x=doc, now=clock.now(),
                      technician=account.username if account is not None else "",
                      key_name=key.name if key is not None else row.signer[:16],
                      actual=hashlib.sha256(stored).hexdigest() if stored is not None else "",
                      signed_sha=signed_sha, signed_bytes=signed_bytes,
                      stored_bytes=len(stored) if stored is not None else None, matches=matches, info=info,
                      section="sessions", csp=PLAYER_CSP if info is not None else CSP)
    return _page(request, build)


@router.get("/t/{t}/sessions/{j}/playback")
def session_playback(request: Request, t: str, j: str) -> Response:
    """The recording rebuilt for the player (:func:`playable`), only while it is what the receipt signed."""
    def build(caller: Caller) -> Response:
        ctx = _ctx(request)
        with ctx.store.read() as s:
            _session_of(s, caller, t, j)
            rec = s.get(SessionRecording, j)
            stored = rec.data if rec is not None else None
            signed_sha, signed_bytes = _signed_recording(s, j)
        if stored is None:
            raise NotFound("this session has no stored recording")
        if not _matches(stored, signed_sha, signed_bytes):
            raise NotFound("the stored recording does not match its signed receipt")
        cast, _ = playable(stored)
        return Response(cast, media_type="application/x-asciicast", headers={
            **HEADERS, "Content-Disposition": f'attachment; filename="{j}.play.cast"'})
    return _page(request, build)


@router.get("/t/{t}/grants")
def grant_list(request: Request, t: str) -> Response:
    def build(caller: Caller) -> Response:
        ctx = _ctx(request)
        now = clock.now()
        grants = []
        with ctx.store.read() as s:
            tenant = _tenant(s, caller, t)
            for row in s.scalars(select(GrantRow).where(GrantRow.tenant_id == t)
                                 .order_by(GrantRow.created_at.desc()).limit(ctx.limits.max_list)):
                entry: dict[str, Any] = {"g": None, "id": row.id, "error": "", "revoked_by": row.revoked_by}
                try:
                    entry["g"] = grant_out(s, row, now)
                except ServerError as exc:  # the root changed under a stored grant: shown as such
                    entry["error"] = exc.detail
                grants.append(entry)
        return render(request, "grants.html", caller=caller, tenant=tenant, grants=grants, now=now,
                      section="grants")
    return _page(request, build)


@router.get("/t/{t}/audit")
def audit_log(request: Request, t: str) -> Response:
    """The tenant's audit log, newest first, with what the server can check of it.

    Shown: the latest checkpoint's signature under the tenant's current root (a log key
    it names), whether the Merkle root of the stored entries equals the checkpoint's,
    and each shown entry's leaf hash. The independent check is still ``rampart audit
    verify`` against checkpoints the operator already holds (a compromised server could
    show anything on this page).
    """
    def build(caller: Caller) -> Response:
        ctx = _ctx(request)
        now = clock.now()
        raw = request.query_params.get("before", "")
        with ctx.store.read() as s:
            tenant = _tenant(s, caller, t)
            size = ctx.audit.size(s, t)
            before = min(int(raw), size) if raw.isdigit() and len(raw) < 16 else size
            entries = list(s.scalars(select(AuditEntry).where(
                AuditEntry.log_id == t, AuditEntry.idx < before).order_by(AuditEntry.idx.desc())
                .limit(MAX_AUDIT_PAGE)))
            checkpoint = ctx.audit.latest_checkpoint(s, t)
            verdict = _verify_log(s, t, checkpoint, now)
        shown = []
        for e in entries:
            try:
                doc = json.loads(e.data)
            except ValueError:
                doc = {}
            if not isinstance(doc, dict):
                doc = {}
            details = doc.get("details", {})
            shown_details = json.dumps(details, sort_keys=True) if details else ""
            if "payloadType" in doc:  # a signed object logged whole (job, receipt, grant, root)
                shown_details = f"signed envelope {doc.get('payloadType')}, " \
                                f"{len(doc.get('signatures') or [])} signature(s)"
            shown.append({"idx": e.idx, "kind": e.kind, "time": e.time, "actor": doc.get("actor", ""),
                          "details": shown_details,
                          "leaf_ok": merkle.leaf_hash(e.data) == e.leaf_hash,
                          "covered": checkpoint is not None and e.idx < checkpoint.size})
        older = entries[-1].idx if entries and entries[-1].idx > 0 else None
        return render(request, "audit.html", caller=caller, tenant=tenant, entries=shown, size=size,
                      checkpoint=checkpoint, verdict=verdict, older=older, now=now, section="audit")
    return _page(request, build)


def _verify_log(s: Any, t: str, checkpoint: Any, now: float) -> dict[str, Any]:
    """Checkpoint signature under the current root, and the stored entries' Merkle root against it."""
    if checkpoint is None:
        return {"ok": False, "signature": "no checkpoint yet", "root": ""}
    root_row = current_root(s, t)
    signature = "no tenant root published yet"
    sig_ok = False
    if root_row is not None:
        try:
            verify_checkpoint(trusted_from_store(root_row.envelope), checkpoint.envelope, now=int(now),
                              witnessed=False)
            signature, sig_ok = "valid (log key named in the tenant's current root)", True
        except TrustError as exc:
            signature = f"INVALID: {exc}"
    leaves = list(s.scalars(select(AuditEntry.leaf_hash).where(
        AuditEntry.log_id == t, AuditEntry.idx < checkpoint.size).order_by(AuditEntry.idx)))
    root_ok = len(leaves) == checkpoint.size and \
        merkle.root_from_leaf_hashes(leaves).hex() == checkpoint.root
    return {"ok": sig_ok and root_ok, "signature": signature,
            "root": "matches the stored entries" if root_ok else "DOES NOT match the stored entries"}


# --- posture report and service statement (issue 19; the customer portal shows its own) --------------

@router.get("/t/{t}/posture")
def posture_page(request: Request, t: str) -> Response:
    def build(caller: Caller) -> Response:
        ctx = _ctx(request)
        if not _TENANT.match(t):
            raise NotFound("tenant not found")
        p = reports_api.build_posture(ctx, caller, t)
        with ctx.store.read() as s:
            tenant = _tenant(s, caller, t)
        return render(request, "posture.html", caller=caller, tenant=tenant, st=p.statement,
                      notices=p.notices, summary=p.summary(), dur=report_dur, section="posture")
    return _page(request, build)


@router.get("/t/{t}/report.html")
def posture_report_html(request: Request, t: str) -> Response:
    """The report itself, shown inline under its own CSP (no script; its style block by hash)."""
    def build(caller: Caller) -> Response:
        if not _TENANT.match(t):
            raise NotFound("tenant not found")
        return reports_api.report_response(reports_api.build_posture(_ctx(request), caller, t), "html",
                                           attachment=False)
    return _page(request, build)


@router.get("/t/{t}/report.pdf")
def posture_report_pdf(request: Request, t: str) -> Response:
    def build(caller: Caller) -> Response:
        if not _TENANT.match(t):
            raise NotFound("tenant not found")
        return reports_api.report_response(reports_api.build_posture(_ctx(request), caller, t), "pdf",
                                           attachment=True)
    return _page(request, build)


# --- accounts (owners) -----------------------------------------------------------------------

@router.get("/accounts")
def account_list(request: Request) -> Response:
    def build(caller: Caller) -> Response:
        ctx = _ctx(request)
        accounts = accounts_api.list_accounts(caller, ctx)  # account.manage, or 403
        with ctx.store.read() as s:
            q = select(Tenant).order_by(Tenant.name)
            if caller.tenants is not None:
                q = q.where(Tenant.id.in_(sorted(caller.tenants)))
            tenants = list(s.scalars(q))
        return render(request, "accounts.html", caller=caller, accounts=accounts, tenants=tenants,
                      roles=("technician", "approver", "viewer", "customer-viewer", "owner"),
                      secret=None, notice="", section="accounts")
    return _page(request, build)


@router.post("/accounts")
async def account_create(request: Request) -> Response:
    caller, form, refusal = await _checked_post(request)
    if refusal is not None:
        return refusal
    assert caller is not None
    ctx = _ctx(request)
    try:
        tenant = form.get("tenant", "")
        body = AccountIn(username=form.get("username", ""), role=form.get("role", ""),  # type: ignore[arg-type]
                         tenants=[tenant] if tenant else None)
    except ValidationError:
        return refused(request, 400, "Invalid account: check the name (lower case) and role.", caller)
    try:
        created = await run_in_threadpool(accounts_api.create_account, body, caller, ctx)
    except ServerError as exc:
        if exc.refusal is not None:
            raise
        return from_error(request, exc, caller)
    return _accounts_with_secret(request, caller, f"Account {created.username} created. Give its owner "
                                 "this one-time activation token (shown once):", created.activation_token)


def _accounts_with_secret(request: Request, caller: Caller, notice: str, secret: str | None) -> Response:
    ctx = _ctx(request)
    accounts = accounts_api.list_accounts(caller, ctx)
    with ctx.store.read() as s:
        q = select(Tenant).order_by(Tenant.name)
        if caller.tenants is not None:
            q = q.where(Tenant.id.in_(sorted(caller.tenants)))
        tenants = list(s.scalars(q))
    return render(request, "accounts.html", caller=caller, accounts=accounts, tenants=tenants,
                  roles=("technician", "approver", "viewer", "customer-viewer", "owner"),
                  secret=secret, notice=notice, section="accounts")


@router.post("/accounts/{username}/{action}")
async def account_action(request: Request, username: str, action: str) -> Response:
    """Revoke, unlock or re-issue activation (with a fresh TOTP step-up): the API's own functions."""
    caller, form, refusal = await _checked_post(request)
    if refusal is not None:
        return refusal
    assert caller is not None
    if not _USER.match(username) or action not in ("revoke", "unlock", "reissue"):
        return refused(request, 404, "Account not found.", caller)
    ctx = _ctx(request)

    def run() -> Response:
        if action == "revoke":
            accounts_api.revoke_account(username, AccountRevokeIn(reason=form.get("reason", "")[:256]),
                                        caller, ctx)
            return _accounts_with_secret(request, caller, f"Account {username} revoked: its sessions ended. "
                                         "Its keys still verify on agents until owners publish roots "
                                         "without them (rampart account revoke).", None)
        if action == "unlock":
            accounts_api.unlock_account(username, caller, ctx)
            return _accounts_with_secret(request, caller, f"Account {username} unlocked.", None)
        try:
            code = StepUpIn(code=form.get("totp", ""))
        except ValidationError:
            return refused(request, 400, "Re-issuing needs your current TOTP code (six digits).", caller)
        step_up_api(code, caller, ctx)
        fresh = resolve_caller(ctx, caller.token, caller.address)
        out = accounts_api.reissue(username, fresh, ctx)
        return _accounts_with_secret(request, caller, f"Activation of {username} re-issued; "
                                     f"{out.sessions_ended} session(s) ended. One-time token (shown once):",
                                     out.activation_token)
    try:
        return await run_in_threadpool(run)
    except ServerError as exc:
        if exc.refusal is not None:
            raise
        return from_error(request, exc, caller)

