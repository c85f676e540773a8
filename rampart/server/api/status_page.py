"""``GET /``: a plain HTML status page (no JavaScript, no setup wizard).

Without a session it shows only a sign-in form (user, password, TOTP code:
the same :func:`rampart.server.auth.login` as the API, with its throttling and
lockout) and no tenant data at all, not even counts (issue 14). A session comes from that form as a cookie
(``HttpOnly; Secure; SameSite=Strict``) or from ``Authorization: Bearer``;
with one the page lists the tenants the caller reaches, their devices with
last-seen times, and recent jobs with their targets' states and receipt
outcomes, so it never shows one tenant's data to another (T12).

Security rules (docs/design/server.md, "The status page"):

- Every value is inert text (T16: a device reports any hostname it likes):
  control, bidi and invisible characters are shown as visible escapes
  (``\\u202e``, ``\\x1b``, ``\\n``) by :func:`rampart.textsafe.safe_line`, the
  rule the CLI follows, then the result is HTML-escaped (:func:`_text`).
  A strict Content-Security-Policy forbids scripts, frames and foreign forms.
- Form posts (``/login``, ``/logout``) are accepted only with the browser's
  proof that they come from this origin (:func:`_same_origin`): fail closed,
  no token, nothing that depends on the referrer the page sends.
- The page is read-only. The same cookie session also acts in the web console
  (``/console/``: alerts, accounts), where every post needs its CSRF token too;
  nothing served by the server signs (acting on devices needs the CLI and a
  signing key).
"""

from __future__ import annotations

import datetime
import html
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import func, select

from rampart import __version__
from rampart.textsafe import is_safe, safe_line, unsafe_char

from .. import auth, clock
from ..access import address_allowed, tenant_networks
from ..context import ServerContext
from ..errors import ServerError, Unauthenticated
from ..models import Device, JobRow, JobTarget, ReceiptRow, Tenant
from .auth import perform_login
from .deps import Caller, client_address, get_ctx, resolve_caller

router = APIRouter()

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Rampart server</title>
<style>body{{font-family:sans-serif;margin:2em}}.warn{{color:#a00;font-weight:bold}}table{{border-collapse:collapse;margin-bottom:1em}}
td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:left;vertical-align:top;white-space:nowrap}}
td.text{{font-family:monospace,monospace;white-space:normal;overflow-wrap:anywhere;min-width:16em;max-width:40em}}
.esc{{color:#a00;background:#fee;white-space:nowrap}}.none{{color:#666}}</style></head>
<body><h1>Rampart server {version}</h1>{body}</body></html>
"""


def _text(value: str) -> str:
    """Any value for the page: one inert line (:func:`rampart.textsafe.safe_line`), HTML-escaped.

    Each escape stands out (``<span class="esc">\\u202e</span>``), so a reader
    tells a hidden character from the same letters typed; the text read from the
    page is exactly ``safe_line(value)``.
    """
    if is_safe(value):
        return html.escape(value)
    return "".join(f'<span class="esc">{html.escape(safe_line(ch))}</span>' if unsafe_char(ch)
                   else html.escape(ch) for ch in value)


def _t(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(headers: list[str], rows: list[list[str]], free_text: frozenset[int] = frozenset()) -> str:
    """A table of values (:func:`_text`); columns in ``free_text`` hold device-reported text."""
    head = "".join(f"<th>{_text(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="text">{_text(c)}</td>' if i in free_text
                                    else f"<td>{_text(c)}</td>" for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    if not rows:
        body = f'<tr><td class="none" colspan="{len(headers)}">none</td></tr>'
    return f"<table><tr>{head}</tr>{body}</table>"


def _summary(ctx: ServerContext) -> str:
    with ctx.store.transaction() as s:
        tenants = s.scalar(select(func.count()).select_from(Tenant)) or 0
        devices = s.scalar(select(func.count()).select_from(Device)) or 0
    return _table(["tenants", "devices", "connected agents", "TLS certificate SHA-256"],
                  [[str(tenants), str(devices), str(ctx.gateway.connected_count()),
                    ctx.cert_sha256 or "(TLS terminated elsewhere)"]])


def _details(ctx: ServerContext, caller: Caller) -> str:
    parts = [f"<p>Signed in as {_text(caller.username)} ({_text(caller.role)})</p>"]
    now = clock.now()
    with ctx.store.transaction() as s:
        for t in s.scalars(select(Tenant).order_by(Tenant.name)):
            if not caller.reaches(t.id):
                continue
            parts.append(f"<h2>{_text(t.name)} <small>{_text(t.id)}</small></h2>")
            if not tenant_networks(t):
                parts.append(f'<p class="warn">Warning: operators may act on {_text(t.name)} '
                             "from any network. Set approved networks with <code>rampart tenant "
                             "networks</code> (N3).</p>")
            elif not address_allowed(tenant_networks(t), caller.address):
                parts.append("<p>Your address is outside this tenant's approved networks.</p>")
                continue
            devices = s.scalars(select(Device).where(Device.tenant_id == t.id)
                                .order_by(Device.hostname))
            parts.append(_table(["device", "hostname", "status", "connected", "last seen"], [
                [d.id, d.hostname, d.status, "yes" if ctx.gateway.is_connected(d.id) else "no",
                 _t(d.last_seen)] for d in devices], free_text=frozenset({1})))
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


COOKIE = "rampart_session"
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: with it Chromium sends ``Origin: null`` on the page's own form posts
    # (issue 22). same-origin sends nothing to any other site (the page links nowhere).
    "Referrer-Policy": "same-origin",
}
LOGIN_FORM = """<h2>Sign in</h2>
<form method="post" action="/login"><p>
<label>User <input name="username" autocomplete="username" required></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<label>TOTP code <input name="totp" inputmode="numeric" autocomplete="one-time-code" required></label>
<button type="submit">Sign in</button></p></form>"""
CONSOLE_LINK = '<p><a href="/console/">Open the console</a> (devices, alerts, jobs, audit log)</p>'
LOGOUT_FORM = '<form method="post" action="/logout"><button type="submit">Sign out</button></form>'
MAX_FORM_BYTES = 4096


def _page(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(PAGE.format(version=_text(__version__), body=body),
                        status_code=status, headers=HEADERS)


def _same_origin(request: Request) -> bool:
    """Whether the browser vouches that this form post comes from this origin (CSRF, login CSRF).

    ``Sec-Fetch-Site`` decides when present: the browser computes it over the whole
    redirect chain, no page can set it, and it does not depend on the Referrer-Policy
    or on the Host a reverse proxy forwards; only ``same-origin`` passes (``same-site``
    is another port or subdomain, ``none`` a post no page made). Without it (Safari
    before 16.4), ``Origin`` must be this server's own ``https://`` origin. A post with
    neither is refused: every browser that can sign in sends one of them, so a
    missing pair is a client this form is not for (the CLI uses ``/api/v1/auth/login``).
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    origin = request.headers.get("origin")
    host = request.headers.get("host")
    return origin is not None and host is not None and origin.lower() == f"https://{host.lower()}"


def _session_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.cookies.get(COOKIE) or None


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def status_page(request: Request) -> HTMLResponse:
    ctx = get_ctx(request)
    token = _session_token(request)
    if token is None:
        return _page(LOGIN_FORM)
    try:
        caller = resolve_caller(ctx, token, client_address(request))
        return _page(_summary(ctx) + CONSOLE_LINK + _details(ctx, caller) + LOGOUT_FORM)
    except Unauthenticated:
        return _page("<p>Session invalid or expired.</p>" + LOGIN_FORM)


@router.post("/login", response_class=HTMLResponse, include_in_schema=False)
async def login_form(request: Request) -> Response:
    """Sign in from the page; on success a session cookie and a redirect to ``/``."""
    ctx = get_ctx(request)
    if not _same_origin(request):
        return _page("<p>Cross-site form refused.</p>", status=403)
    raw = await request.body()
    fields = parse_qs(raw[:MAX_FORM_BYTES].decode("utf-8", "replace"), max_num_fields=8)
    username, password, totp = (fields.get(k, [""])[0] for k in ("username", "password", "totp"))
    new = await run_in_threadpool(_login, ctx, username[:64], password[:1024], totp[:16],
                                  client_address(request))
    if isinstance(new, str):
        return _page(f"<p>{_text(new[:1].upper() + new[1:])}.</p>" + LOGIN_FORM, status=401)
    resp = RedirectResponse("/", status_code=303, headers=HEADERS)
    resp.set_cookie(COOKIE, new.token, max_age=int(ctx.limits.session_absolute_s), path="/",
                    secure=True, httponly=True, samesite="strict")
    return resp


def _login(ctx: ServerContext, username: str, password: str, totp: str,
           address: str | None) -> auth.NewSession | str:
    """A new session, or the one-line reason to show (never more than the API says)."""
    try:
        return perform_login(ctx, username=username, password=password, totp=totp,
                             address=address)
    except ServerError as exc:
        return exc.detail


@router.post("/logout", include_in_schema=False)
def logout_form(request: Request) -> Response:
    """End the cookie session (SameSite=Strict: another site cannot trigger this)."""
    ctx = get_ctx(request)
    if not _same_origin(request):
        return _page("<p>Cross-site form refused.</p>", status=403)
    token = request.cookies.get(COOKIE)
    if token:
        with ctx.store.transaction() as s:
            auth.end_session(s, token)
    resp = RedirectResponse("/", status_code=303, headers=HEADERS)
    resp.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return resp
