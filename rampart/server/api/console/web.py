"""The console's HTTP plumbing: session cookie, CSRF, same-origin, headers, rendering.

Security rules (docs/design/web-console.md, "Security"):

- The session is the API's own (:func:`rampart.server.auth.resolve_session`: idle and
  absolute timeouts, disabled accounts have none), carried in the cookie the status page
  sets: ``HttpOnly; Secure; SameSite=Strict``, never in a URL.
- Every state change is a POST that passes both :func:`same_origin` (the browser's
  ``Sec-Fetch-Site``/``Origin``, fail closed) and :func:`check_csrf`: a token bound to
  the session (HMAC of a fixed label under the session token, so it needs no storage and
  dies with the session), sent as the ``csrf`` form field or the ``X-CSRF-Token`` header.
  Either failing is a 403 before any handler reads the store.
- Every page carries :data:`rampart.webui.CSP` (``script-src 'self'``, no inline script
  or style), ``X-Frame-Options: DENY``, ``nosniff`` and ``Cache-Control: no-store``.
- Role checks are server side: handlers call the API's own functions (which call
  ``Caller.tenant`` and ``Caller.require_perm``), never trust what a page hides.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from rampart import __version__
from rampart.webui import CSP, environment

from ...errors import ServerError, Unauthenticated
from ..deps import Caller, client_address, get_ctx, resolve_caller
from ..status_page import COOKIE, _same_origin

PREFIX: Final = "/console"
STATIC_PREFIX: Final = PREFIX + "/static"
MAX_FORM_BYTES: Final = 4096
MAX_FORM_FIELDS: Final = 16

HEADERS: Final[dict[str, str]] = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

_env = environment(Path(__file__).parent / "templates")


def same_origin(request: Request) -> bool:
    """The browser vouches this post comes from this origin (see the status page's rule)."""
    return _same_origin(request)


def csrf_token(session_token: str) -> str:
    """The CSRF token of a session: HMAC-SHA256 of a fixed label under the session token."""
    return hmac.new(session_token.encode(), b"rampart-console-csrf-v1", hashlib.sha256).hexdigest()


def check_csrf(request: Request, form: dict[str, str], session_token: str) -> bool:
    sent = form.get("csrf") or request.headers.get("x-csrf-token") or ""
    return hmac.compare_digest(sent.encode(), csrf_token(session_token).encode())


def session_token(request: Request) -> str | None:
    return request.cookies.get(COOKIE) or None


def caller_of(request: Request) -> Caller | None:
    """The signed-in caller (idle and absolute timeouts applied), or None."""
    token = session_token(request)
    if token is None:
        return None
    try:
        return resolve_caller(get_ctx(request), token, client_address(request))
    except Unauthenticated:
        return None


async def read_form(request: Request) -> dict[str, str]:
    """The posted form's first value of each field (bounded size and count)."""
    raw = await request.body()
    fields = parse_qs(raw[:MAX_FORM_BYTES].decode("utf-8", "replace"), max_num_fields=MAX_FORM_FIELDS)
    return {k: v[0] for k, v in fields.items() if v}


def render(request: Request, template: str, code: int = 200, *, caller: Caller | None = None,
           csp: str = CSP, **values: Any) -> HTMLResponse:
    """A page from ``template`` with the common values (caller, CSRF token, links).

    ``csp`` is :data:`rampart.webui.CSP` for every page but the recording player's
    (:data:`rampart.webui.PLAYER_CSP`).
    """
    token = session_token(request) if caller is not None else None
    values.setdefault("section", "")
    body = _env.get_template(template).render(
        product="Rampart console", version=__version__, static=STATIC_PREFIX, home=PREFIX + "/",
        prefix=PREFIX, caller=caller, csrf=csrf_token(token) if token else "",
        customer=caller is not None and caller.role == "customer-viewer", **values)
    return HTMLResponse(body, status_code=code, headers={**HEADERS, "Content-Security-Policy": csp})


def refused(request: Request, status: int, message: str, caller: Caller | None = None) -> HTMLResponse:
    return render(request, "error.html", status, caller=caller, status_code=status, message=message)


def from_error(request: Request, exc: ServerError, caller: Caller | None) -> HTMLResponse:
    """A refusal from the API's own checks, as a page with the same status and one line."""
    return refused(request, exc.status, exc.detail, caller)


def to_login(request: Request) -> Response:
    return RedirectResponse(PREFIX + "/login", status_code=303, headers=HEADERS)


def see_other(path: str) -> Response:
    return RedirectResponse(path, status_code=303, headers=HEADERS)
