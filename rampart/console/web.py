"""The local console's HTTP guard: Host, launch token, session cookie, same-origin, CSRF, headers.

Security rules (docs/design/web-console.md, "Part 3: the local signing console"):

- The console listens on 127.0.0.1 only (:mod:`rampart.console.serve`) and answers a request
  only if its ``Host`` header is ``127.0.0.1:PORT`` or ``localhost:PORT`` for its own port:
  a page of another site that rebinds its DNS name to 127.0.0.1 sends its own name and is
  refused before anything runs (:meth:`Guard.host_ok`).
- Nothing is served to a browser that has not proved the per-launch secret. ``rampart
  console`` prints ``http://127.0.0.1:PORT/#launch=SECRET``; the fragment never reaches a
  server, a log or a ``Referer``. The static ``launch.js`` reads it, removes it from the
  address bar and posts it once to ``/launch``; the answer sets the session cookie
  (``HttpOnly; SameSite=Strict; Path=/``, a second random value) and the launch secret is
  spent: a second browser, tab of another user or replay gets nothing (:meth:`Guard.launch`).
- The session ends after :data:`IDLE_S` without a request and :data:`MAX_SESSION_S` after the
  launch; a new one needs a new ``rampart console``.
- Every POST passes the browser's same-origin check (``Sec-Fetch-Site: same-origin``, or
  without it ``Origin`` equal to this console's origin) and carries the CSRF token (HMAC of
  a fixed label under the session value), in the ``csrf`` field: both are checked before a
  handler reads anything else (:meth:`Guard.post_ok`).
- Every answer carries :data:`rampart.webui.CSP` (no inline script or style, no eval),
  ``X-Frame-Options: DENY``, ``nosniff`` and ``Cache-Control: no-store``.
- A form body is cut at :data:`MAX_FORM_BYTES` and :data:`MAX_FORM_FIELDS` before parsing. Its
  values (the key passphrase among them) are never logged: the server runs without an
  access log and no handler prints a form.

Cookies are not separated by port: another program on this machine that the browser visits at
``127.0.0.1:OTHER`` receives the cookie. That alone signs nothing: every signature needs the key
passphrase typed into the form that asks for it (docs/console.md).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qs

from starlette.requests import HTTPConnection, Request

from rampart.webui import CSP

MAX_FORM_BYTES: Final = 4 * 1024 * 1024  # a script of up to 2 MiB, form-encoded
MAX_FORM_FIELDS: Final = 2000  # one field a selected device
_CSRF_LABEL: Final = b"rampart-local-console-csrf-v1"
IDLE_S: Final = 30 * 60.0  # no request for 30 minutes: run `rampart console` again
MAX_SESSION_S: Final = 12 * 3600.0

HEADERS: Final[dict[str, str]] = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


@dataclass
class Guard:
    """The secrets of one launch of the console, and the checks every request passes."""

    port: int
    #: The host name of the printed address: ``127.0.0.1``, or ``localhost`` for passkeys
    #: (WebAuthn takes a domain as RP ID, never an IP address).
    host: str = "127.0.0.1"
    launch_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    session_value: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    launched: bool = False
    #: The session ends after this long without a request, and this long after the launch.
    idle_s: float = IDLE_S
    max_s: float = MAX_SESSION_S
    _launched_at: float = 0.0
    _last_seen: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def cookie_name(self) -> str:
        return f"rampart-console-{self.port}"

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    def request_origin(self, request: HTTPConnection) -> str:
        """The origin the browser uses (after :meth:`host_ok`): http://127.0.0.1:PORT or
        http://localhost:PORT."""
        return f"http://{request.headers.get('host', '')}"

    @property
    def url(self) -> str:
        """What ``rampart console`` prints: the launch secret is in the fragment only."""
        return f"{self.origin}/#launch={self.launch_token}"

    def host_ok(self, request: HTTPConnection) -> bool:
        """The request names this console as its host (DNS rebinding refused)."""
        host = request.headers.get("host", "")
        return host in (f"127.0.0.1:{self.port}", f"localhost:{self.port}")

    def same_origin(self, request: Request) -> bool:
        """The browser vouches that a POST comes from a page of this console (fail closed)."""
        site = request.headers.get("sec-fetch-site")
        if site is not None:
            return site == "same-origin"
        origin = request.headers.get("origin")
        host = request.headers.get("host", "")
        return origin is not None and origin == f"http://{host}"

    def signed_in(self, request: HTTPConnection) -> bool:
        """The launch session's cookie, within the idle and absolute limits (each use renews idle)."""
        sent = request.cookies.get(self.cookie_name, "")
        if not (self.launched and hmac.compare_digest(sent.encode(), self.session_value.encode())):
            return False
        now = time.monotonic()
        with self._lock:
            if now - self._last_seen > self.idle_s or now - self._launched_at > self.max_s:
                return False
            self._last_seen = now
        return True

    def csrf(self) -> str:
        return hmac.new(self.session_value.encode(), _CSRF_LABEL, hashlib.sha256).hexdigest()

    def post_ok(self, request: Request, form: dict[str, str]) -> bool:
        """A state-changing request: same origin, signed in, and the CSRF token of this session."""
        sent = form.get("csrf", "")
        return (self.same_origin(request) and self.signed_in(request)
                and hmac.compare_digest(sent.encode(), self.csrf().encode()))

    def launch(self, token: str) -> bool:
        """Spend the launch secret: True exactly once, for the right token."""
        with self._lock:
            if self.launched or not hmac.compare_digest(token.encode(), self.launch_token.encode()):
                return False
            self.launched = True
            self._launched_at = self._last_seen = time.monotonic()
            return True

    def cookie_header(self) -> str:
        return f"{self.cookie_name}={self.session_value}; HttpOnly; SameSite=Strict; Path=/"


async def read_form(request: Request) -> dict[str, str]:
    """The posted form's values (bounded); a field given several times keeps them joined by NUL.

    Only ``devices`` and ``capabilities`` are read as lists (:func:`many`).
    """
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_FORM_BYTES:
            return {}
    try:
        fields = parse_qs(bytes(raw).decode("utf-8", "replace"), max_num_fields=MAX_FORM_FIELDS,
                          keep_blank_values=True)
    except ValueError:  # too many fields
        return {}
    return {k: "\x00".join(v) for k, v in fields.items() if v}


def many(form: dict[str, str], name: str) -> list[str]:
    """The values of a repeated field (checkboxes), in order, blanks dropped."""
    return [v for v in form.get(name, "").split("\x00") if v]
