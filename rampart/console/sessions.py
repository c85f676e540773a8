"""Remote shells from the local console: review, sign and open a session here, bridge it to a browser.

The console process (on the operator's own machine) does everything ``rampart shell`` does:
it makes the session's key pair, signs the ``shell`` job with the operator's key file after
the grant verified against the pinned root (:func:`rampart.cli.session_cmds.open_session`),
holds the :class:`rampart.cli.session_link.SessionLink` (the device's signed accept checked,
every frame sealed end to end) and bridges it, in a thread, to one WebSocket of its own page.

Security invariants (docs/design/web-console.md, "Remote shells in the browser"):

* The review page shows what will be signed: the device id (and, labelled, the hostname the
  server reports), the grant decoded against the pinned root, and the fingerprint of the
  session key made for this offer; the POST signs exactly that offer (taken once, bound to
  its tenant) and needs the key passphrase and the CSRF token like every signing form.
* The WebSocket is refused before the handshake completes unless its ``Host`` is this
  console, its ``Origin`` is this console's origin (a page of another port of 127.0.0.1 is
  the same *site* and gets the cookie: the Origin check is what refuses it) and it carries
  the launch session's cookie; then its first message must be the session's random attach
  token, which is spent: one browser tab drives a session, never two.
* Device output reaches the browser only through ``TerminalFilter(drop_queries=True)``:
  xterm.js answers a terminal query by emitting input, so a query (``ESC [ c``, ``ESC [ 6n``,
  DCS, OSC 52 …) is dropped here and nothing is typed back into the device's own shell.
  ``session.js`` also registers handlers that swallow those sequences (a second layer).
* Browser input is bounded (:data:`MAX_INPUT_CHARS` a message) and only keystrokes,
  resize and close are accepted; anything else ends the bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from rampart import trust
from rampart.cli.client import expect_list
from rampart.cli.config import Config
from rampart.cli.errors import Refused, UsageProblem
from rampart.cli.session_cmds import open_session
from rampart.cli.session_link import SessionEnd, SessionLink, log_session
from rampart.cli.termfilter import TerminalFilter
from rampart.textsafe import safe_line
from rampart.webui import CSP
from rampart.wire.session import ClientKeys, Data, Exit, Notice, RelayNotice, Resize, client_keys

from . import actions
from .web import HEADERS, Guard

__all__ = ["Shells"]

log = logging.getLogger("rampart.console")

_ID: Final = re.compile(r"^[a-z]{2,4}-[A-Za-z0-9_-]{1,80}$")
#: The terminal the job signs; the page resizes it once xterm.js has measured its box.
COLS: Final = 120
ROWS: Final = 32
TERM: Final = "xterm-256color"
OFFER_TTL_S: Final = 600.0
MAX_OFFERS: Final = 32
MAX_LIVE: Final = 8
ATTACH_WAIT_S: Final = 15.0
MAX_INPUT_CHARS: Final = 64 * 1024
DATA_CHUNK: Final = 16 * 1024
#: This module's static files: session.js and the vendored xterm.js (unmodified, npm
#: @xterm/xterm 6.0.0; SHA-256 in docs/design/web-console.md).
STATIC: Final[dict[str, tuple[str, str]]] = {
    "session.js": ("session.js", "text/javascript; charset=utf-8"),
    "xterm.js": ("vendor/xterm.js", "text/javascript; charset=utf-8"),
    "xterm.css": ("vendor/xterm.css", "text/css; charset=utf-8"),
}
_HERE = Path(str(resources.files(__name__.rpartition(".")[0])))

Render = Callable[..., Response]


@dataclass
class Offer:
    """A session reviewed on a page and not yet signed: its key pair was made for it alone."""

    id: str
    tenant: str
    grant: str
    device: str
    keys: ClientKeys
    made: float = field(default_factory=time.monotonic)


@dataclass
class Live:
    """A session this console opened: the link, and the token its page attaches with (once)."""

    job_id: str
    tenant: str
    device: str
    hostname: str
    link: SessionLink
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    attached: bool = False
    end: dict[str, Any] | None = None


class _Table:
    """Offers and live sessions of this launch, behind one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.offers: dict[str, Offer] = {}
        self.live: dict[str, Live] = {}

    def offer(self, tenant: str, grant: str, device: str) -> Offer:
        with self.lock:
            now = time.monotonic()
            for k in [k for k, o in self.offers.items() if now - o.made > OFFER_TTL_S]:
                del self.offers[k]
            while len(self.offers) >= MAX_OFFERS:
                del self.offers[next(iter(self.offers))]
            o = Offer(secrets.token_urlsafe(16), tenant, grant, device, client_keys())
            self.offers[o.id] = o
            return o

    def take(self, offer_id: str, tenant: str) -> Offer:
        with self.lock:
            o = self.offers.pop(offer_id, None)
        if o is None or o.tenant != tenant or time.monotonic() - o.made > OFFER_TTL_S:
            raise Refused("this session was not reviewed here, was opened already or is too old: "
                          "review it again")
        return o

    def attach(self, job_id: str, token: str) -> Live | None:
        """The live session for ``token``, marked attached; None if wrong, unknown or attached already."""
        with self.lock:
            live = self.live.get(job_id)
            if live is None or live.attached or live.end is not None \
                    or not hmac.compare_digest(token.encode(), live.token.encode()):
                return None
            live.attached = True
            return live


def _device_doc(devices: list[dict[str, Any]], device_id: str) -> dict[str, Any] | None:
    return next((d for d in devices if d.get("id") == device_id), None)


def shell_form(cfg: Config, tenant_id: str, grant_id: str | None, device_id: str | None,
               table: _Table) -> dict[str, Any]:
    """Grants of this operator with ``shell`` usable now; the devices the chosen one covers; with a
    device chosen, an offer: a fresh session key, and what the POST will sign."""
    view = actions.tenant(cfg, tenant_id)
    usable = [g for g in view["grants"] if g.get("usable") and "shell" in g.get("capabilities", [])]
    chosen = next((g for g in usable if g["id"] == grant_id), None) if grant_id else None
    covered = []
    for d in (chosen["devices"] if chosen else [])[:actions.MAX_DEVICES_SHOWN]:
        doc = _device_doc(view["devices"], d) or {}
        covered.append({"id": d, "hostname": doc.get("hostname"), "connected": bool(doc.get("connected")),
                        "status": doc.get("status")})
    target = next((d for d in covered if d["id"] == device_id), None) if device_id else None
    offer = None
    if chosen is not None and target is not None:
        o = table.offer(tenant_id, chosen["id"], target["id"])
        offer = {"id": o.id, "fingerprint": trust.key_fingerprint(o.keys.public),
                 "public": o.keys.public_b64, "cols": COLS, "rows": ROWS, "term": TERM}
    view.update(usable=usable, chosen=chosen, covered=covered, target=target, offer=offer,
                grant=chosen)
    return view


def open_shell(cfg: Config, tenant_id: str, *, offer_id: str, key_passphrase_text: str,
               step_up_code: str | None, table: _Table) -> str:
    """Sign the reviewed offer's shell job here, send it, complete the key exchange; the job id."""
    with table.lock:
        if sum(1 for x in table.live.values() if x.end is None) >= MAX_LIVE:
            raise UsageProblem(f"at most {MAX_LIVE} sessions at once from this console")
    offer = table.take(offer_id, tenant_id)
    with actions.passphrase(key_passphrase_text), actions.connected(cfg, step_up_code) as (client, session):
        devices = [d for d in expect_list(client.get(f"/tenants/{tenant_id}/devices"), "devices")
                   if isinstance(d, dict)]
        doc = _device_doc(devices, offer.device) or {}
        link, job = open_session(cfg, client, session, tenant_id, offer.device, offer.grant, keys=offer.keys,
                                 cols=COLS, rows=ROWS, term=TERM, mode="shell")
    with table.lock:
        table.live[job.id] = Live(job.id, tenant_id, offer.device, str(doc.get("hostname") or ""), link)
    return job.id


class Shells:
    """The pages and the WebSocket of remote shells, for :func:`rampart.console.app.build_app`."""

    def __init__(self, cfg: Config, guard: Guard, render: Render) -> None:
        self.cfg = cfg
        self.guard = guard
        self.render = render
        self.table = _Table()

    @staticmethod
    async def _work(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        def locked() -> Any:
            with actions.LOCK:
                return fn(*args, **kwargs)
        return await run_in_threadpool(locked)

    async def page(self, request: Request, form: dict[str, str]) -> Response:
        """GET /t/{t}/shell[?grant=…&device=…]: choose, then review what will be signed."""
        grant, device = request.query_params.get("grant"), request.query_params.get("device")
        for v in (grant, device):
            if v is not None and not _ID.match(v):
                return self.render("error.html", 404, status_code=404, message="no such grant or device")
        view = await self._work(shell_form, self.cfg, request.path_params["t"], grant, device, self.table)
        return self.render("shell.html", **view)

    async def open(self, request: Request, form: dict[str, str]) -> Response:
        """POST /t/{t}/shell: sign the reviewed offer and open the session; its terminal page next."""
        job_id = await self._work(partial(open_shell, self.cfg, request.path_params["t"],
                                          offer_id=form.get("offer", ""),
                                          key_passphrase_text=form.get("passphrase", ""),
                                          step_up_code=form.get("totp") or None, table=self.table))
        return RedirectResponse(f"/shells/{job_id}", status_code=303, headers=HEADERS)

    async def terminal(self, request: Request, form: dict[str, str]) -> Response:
        """GET /shells/{s}: the terminal page (the attach token is in the page, never in a URL)."""
        with self.table.lock:
            live = self.table.live.get(request.path_params["s"])
        if live is None:
            return self.render("error.html", 404, status_code=404, message="no such session in this console")
        nonce = secrets.token_urlsafe(18)
        resp = self.render("session.html", live=live, nonce=nonce, cols=COLS, rows=ROWS)
        # xterm.js sizes its cells with <style> elements it creates: allowed by this page's nonce
        # only (session.js sets it on them); no inline script, and style attributes stay refused.
        resp.headers["Content-Security-Policy"] = CSP.replace("style-src 'self';",
                                                              f"style-src 'self' 'nonce-{nonce}';")
        return resp

    async def static(self, request: Request) -> Response:
        if not self.guard.host_ok(request):
            return Response("refused\n", status_code=421, media_type="text/plain", headers=HEADERS)
        found = STATIC.get(str(request.path_params["name"]))
        if found is None:
            return Response("not found\n", status_code=404, media_type="text/plain", headers=HEADERS)
        path, kind = found
        return Response((_HERE / "static" / path).read_bytes(), media_type=kind,
                        headers={**HEADERS, "Cache-Control": "no-cache"})

    def _ws_allowed(self, ws: WebSocket) -> bool:
        origin = ws.headers.get("origin")
        return (self.guard.host_ok(ws) and origin is not None
                and hmac.compare_digest(origin.encode(), self.guard.request_origin(ws).encode())
                and self.guard.signed_in(ws) and bool(_ID.match(str(ws.path_params.get("s", "")))))

    async def socket(self, ws: WebSocket) -> None:
        """WS /shells/{s}/ws: same origin, the launch cookie, then the attach token; then the bridge."""
        if not self._ws_allowed(ws):
            await ws.close(code=1008)  # before accept: the handshake is answered 403
            return
        await ws.accept()
        try:
            first = await asyncio.wait_for(ws.receive_text(), ATTACH_WAIT_S)
            token = json.loads(first).get("token", "")
        except (TimeoutError, ValueError, AttributeError, KeyError, WebSocketDisconnect, RuntimeError):
            token = ""
        live = self.table.attach(str(ws.path_params["s"]), token if isinstance(token, str) else "")
        if live is None:
            with contextlib.suppress(Exception):  # the browser may be gone already
                await ws.send_json({"error": "refused: this session is not yours to attach, or is "
                                             "attached already"})
                await ws.close(code=1008)
            return
        await self._bridge(ws, live)

    async def _bridge(self, ws: WebSocket, live: Live) -> None:
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        link = live.link

        def put(item: tuple[str, Any]) -> None:
            loop.call_soon_threadsafe(out.put_nowait, item)

        def reader() -> None:
            filt = TerminalFilter(drop_queries=True)
            try:
                while True:
                    frame = link.receive(timeout=None)
                    if isinstance(frame, Data):
                        put(("data", filt.feed(frame.data)))
                    elif isinstance(frame, Exit):
                        put(("end", {"reason": frame.reason, "status": frame.status,
                                     "detail": safe_line(frame.detail)}))
                        return
                    elif isinstance(frame, Notice | RelayNotice):
                        text = frame.text if isinstance(frame, Notice) else f"{frame.status}: {frame.detail}"
                        put(("notice", safe_line(text)))
            except SessionEnd as exc:
                put(("end", {"reason": exc.reason, "status": exc.status, "detail": safe_line(exc.detail)}))
            except Exception as exc:  # the link broke in a way nothing expected: end, say why
                put(("end", {"reason": "closed", "status": None, "detail": type(exc).__name__}))

        thread = threading.Thread(target=reader, name=f"shell-{live.job_id}", daemon=True)
        thread.start()

        async def to_browser() -> dict[str, Any]:
            while True:
                kind, value = await out.get()
                if kind == "data":
                    if value:
                        await ws.send_bytes(value)
                elif kind == "notice":
                    await ws.send_json({"notice": value})
                else:
                    return dict(value)

        async def from_browser() -> None:
            while True:
                msg = json.loads(await ws.receive_text())
                if not isinstance(msg, dict):
                    return
                if isinstance(msg.get("d"), str) and len(msg["d"]) <= MAX_INPUT_CHARS:
                    data = msg["d"].encode("utf-8", "replace")
                    for i in range(0, len(data), DATA_CHUNK):
                        await asyncio.to_thread(link.send, Data(data=data[i:i + DATA_CHUNK]))
                elif isinstance(msg.get("r"), list) and len(msg["r"]) == 2 \
                        and all(isinstance(n, int) for n in msg["r"]):
                    cols, rows = (max(1, min(int(n), 1000)) for n in msg["r"])
                    await asyncio.to_thread(link.send, Resize(cols=cols, rows=rows))
                elif msg.get("close") is True:
                    await asyncio.to_thread(link.close, "closed")
                else:
                    return  # not something a terminal sends: end the bridge

        outgoing = asyncio.ensure_future(to_browser())
        incoming = asyncio.ensure_future(from_browser())
        end: dict[str, Any] = {"reason": "closed", "status": None, "detail": "the browser left"}
        try:
            done, _ = await asyncio.wait({outgoing, incoming}, return_when=asyncio.FIRST_COMPLETED)
            if outgoing in done and outgoing.exception() is None:
                end = outgoing.result()
            else:  # the browser left, or sent something else: close the session (the device ends it)
                await asyncio.to_thread(link.close, "closed")
                with contextlib.suppress(TimeoutError):
                    end = await asyncio.wait_for(outgoing, 15)
        except SessionEnd as exc:
            end = {"reason": exc.reason, "status": exc.status, "detail": safe_line(exc.detail)}
        finally:
            for task in (outgoing, incoming):
                task.cancel()
            live.end = end
            if end["reason"] == "exit":
                await asyncio.to_thread(link.close)
            else:
                await asyncio.to_thread(link.abandon)
            log_session(self.cfg.dir, {"event": "end", "session": live.job_id, "end": end["reason"],
                                       "status": end["status"], "detail": str(end["detail"])[:300],
                                       "via": "console"})
            with contextlib.suppress(Exception):  # the browser may be gone already
                await ws.send_json({"end": end})
                await ws.close()

