"""The local console's pages: a Starlette application over :mod:`rampart.console.actions`.

Every route passes :class:`rampart.console.web.Guard` first (Host, launch session, and for a
POST same-origin plus CSRF), then runs its action in a worker thread under
:data:`rampart.console.actions.LOCK`. Identifiers from a URL must look like Rampart ids before
they reach an API path. Every value a page shows goes through ``webui.text`` (autoescape on,
no template marks server data safe): tenant names, hostnames, reasons and script output are the
server's or a device's words.

Refusals: a CLI error becomes a page with one line and a status (400 usage, 401 not logged
in, 409 refused by local verification, 502 the server failed or could not be reached).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, Final, TypeVar

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route, WebSocketRoute

from rampart import __version__, webui
from rampart.cli.config import Config
from rampart.cli.errors import CliError, NetworkProblem, NotLoggedIn, Refused, ServerProblem, UsageProblem

from . import actions, passkeys, sessions
from .web import HEADERS, Guard, many, read_form

T = TypeVar("T")
Handler = Callable[[Request, dict[str, str]], Awaitable[Response]]

log = logging.getLogger("rampart.console")

_ID: Final = re.compile(r"^[a-z]{2,4}-[A-Za-z0-9_-]{1,80}$")
#: Static files of this console besides the shared ones (webui.STATIC), by name.
STATIC: Final[dict[str, str]] = {"launch.js": "text/javascript; charset=utf-8",
                                  "passkey.js": "text/javascript; charset=utf-8"}

_HERE = Path(str(resources.files(__name__.rpartition(".")[0])))
_env = webui.environment(_HERE / "templates")


def _status_of(exc: CliError) -> int:
    if isinstance(exc, UsageProblem):
        return 400
    if isinstance(exc, NotLoggedIn):
        return 401
    if isinstance(exc, Refused):
        return 409
    if isinstance(exc, ServerProblem | NetworkProblem):
        return 502
    return 500


def build_app(cfg: Config, guard: Guard) -> Starlette:
    """The console for the operator whose CLI state is ``cfg``, guarded by ``guard``."""
    signed: dict[str, dict[str, Any]] = {}  # jobs signed in this launch, by id
    challenges = passkeys.Challenges()  # passkey registrations asked for by this launch
    pending = passkeys.PendingJobs()  # jobs built here, waiting for a passkey's signature

    def render(template: str, code: int = 200, *, signed_in: bool = True, **values: Any) -> HTMLResponse:
        """A page; the CSRF token only on pages of the launch session (never on the launch page)."""
        values.setdefault("session", None)
        body = _env.get_template(template).render(
            product="Rampart local console", version=__version__, static="/static", home="/",
            csrf=guard.csrf() if signed_in else "", port=guard.port, **values)
        return HTMLResponse(body, status_code=code, headers=HEADERS)

    def refused(code: int, message: str) -> HTMLResponse:
        return render("error.html", code, status_code=code, message=message)

    def plain(code: int, message: str) -> Response:
        return Response(message + "\n", status_code=code, media_type="text/plain", headers=HEADERS)

    async def work(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        def locked() -> T:
            with actions.LOCK:
                return fn(*args, **kwargs)
        return await run_in_threadpool(locked)

    def route(path: str, handler: Handler, *, post: bool = False) -> Route:
        async def endpoint(request: Request) -> Response:
            if not guard.host_ok(request):
                return plain(421, "refused: this console answers to 127.0.0.1 and localhost only")
            form: dict[str, str] = {}
            if post:
                form = await read_form(request)
                if not guard.post_ok(request, form):
                    return plain(403, "refused: not from this console's own page (session or CSRF token)")
            elif not guard.signed_in(request):
                return plain(403, "refused: open the address `rampart console` printed")
            for name, value in request.path_params.items():
                if not _ID.match(str(value)):
                    return refused(404, f"no such {name}")
            try:
                return await handler(request, form)
            except CliError as exc:
                return refused(_status_of(exc), exc.message)
            except Exception:  # an answer of a shape nothing expected: one line, no page of it
                log.exception("local console: %s failed", request.url.path)
                return refused(500, "unexpected failure (see the console's terminal); nothing was signed")
        return Route(path, endpoint, methods=["POST"] if post else ["GET"])

    # --- launch and static files (no session yet) -------------------------------------

    async def index(request: Request) -> Response:
        if not guard.host_ok(request):
            return plain(421, "refused: this console answers to 127.0.0.1 and localhost only")
        if not guard.signed_in(request):
            return render("launch.html", 200, signed_in=False, launched=guard.launched)
        try:
            return render("home.html", **await work(actions.home, cfg))
        except CliError as exc:
            return refused(_status_of(exc), exc.message)

    async def launch(request: Request) -> Response:
        if not guard.host_ok(request):
            return plain(421, "refused: this console answers to 127.0.0.1 and localhost only")
        form = await read_form(request)
        if not guard.same_origin(request) or not guard.launch(form.get("launch", "")):
            return plain(403, "refused: this launch address was used already or is wrong; "
                              "run `rampart console` again")
        return Response(status_code=204, headers={**HEADERS, "Set-Cookie": guard.cookie_header()})

    async def static(request: Request) -> Response:
        if not guard.host_ok(request):
            return plain(421, "refused: this console answers to 127.0.0.1 and localhost only")
        name = str(request.path_params["name"])
        found = webui.static_file(name)
        if found is None and name in STATIC:
            found = (_HERE / "static" / name).read_bytes(), STATIC[name]
        if found is None:
            return plain(404, "not found")
        data, kind = found
        return Response(data, media_type=kind, headers={**HEADERS, "Cache-Control": "no-cache"})

    # --- pages ------------------------------------------------------------------------

    async def tenant_page(request: Request, form: dict[str, str]) -> Response:
        return render("tenant.html", **await work(actions.tenant, cfg, request.path_params["t"]))

    async def request_page(request: Request, form: dict[str, str]) -> Response:
        return render("request.html", **await work(actions.tenant, cfg, request.path_params["t"]))

    async def request_post(request: Request, form: dict[str, str]) -> Response:
        tid = request.path_params["t"]
        done = await work(partial(actions.request, cfg, tid, devices=many(form, "devices"),
                                  capabilities=many(form, "capabilities"),
                                  duration=form.get("duration", ""), reason=form.get("reason", ""),
                                  passkeys=passkeys.passkey_ids(cfg, tid)))
        return render("requested.html", tenant_id=tid, **done)

    async def grant_page(request: Request, form: dict[str, str]) -> Response:
        return render("grant.html", **await work(passkeys.review, cfg, request.path_params["g"],
                                                 guard.request_origin(request)))

    async def approve_passkey_post(request: Request, form: dict[str, str]) -> Response:
        done = await work(partial(passkeys.approve, cfg, request.path_params["g"],
                                  reviewed_sha256=form.get("reviewed", ""), keyid=form.get("keyid", ""),
                                  authenticator_data=form.get("authenticator_data", ""),
                                  client_data=form.get("client_data", ""),
                                  signature=form.get("signature", ""),
                                  step_up_code=form.get("totp") or None))
        return render("approved.html", **done)

    async def passkey_page(request: Request, form: dict[str, str]) -> Response:
        return render("passkey.html", **await work(passkeys.register_form, cfg, request.path_params["t"],
                                                   guard.request_origin(request), challenges))

    async def passkey_post(request: Request, form: dict[str, str]) -> Response:
        done = await work(partial(passkeys.register, cfg, request.path_params["t"],
                                  origin=guard.request_origin(request), challenges=challenges,
                                  name=form.get("name", ""), credential_id=form.get("credential_id", ""),
                                  spki=form.get("spki", ""), alg=form.get("alg", ""),
                                  client_data=form.get("client_data", "")))
        return render("passkey_registered.html", **done)

    async def approve_post(request: Request, form: dict[str, str]) -> Response:
        done = await work(partial(actions.approve, cfg, request.path_params["g"],
                                  reviewed_sha256=form.get("reviewed", ""),
                                  key_passphrase_text=form.get("passphrase", ""),
                                  step_up_code=form.get("totp") or None))
        return render("approved.html", **done)

    async def run_page(request: Request, form: dict[str, str]) -> Response:
        grant = request.query_params.get("grant")
        if grant is not None and not _ID.match(grant):
            return refused(404, "no such grant")
        return render("run.html", **await work(passkeys.run_form, cfg, request.path_params["t"], grant,
                                                guard.request_origin(request)))

    async def run_post(request: Request, form: dict[str, str]) -> Response:
        grant = form.get("grant", "")
        if not _ID.match(grant):
            return refused(400, "choose a grant")
        job_id = await work(partial(actions.run_script, cfg, request.path_params["t"], grant_id=grant,
                                    devices=many(form, "devices"), script=form.get("script", ""),
                                    timeout_s=form.get("timeout", "300"),
                                    key_passphrase_text=form.get("passphrase", ""),
                                    step_up_code=form.get("totp") or None, signed=signed))
        return RedirectResponse(f"/jobs/{job_id}", status_code=303, headers=HEADERS)

    async def run_passkey_post(request: Request, form: dict[str, str]) -> Response:
        grant = form.get("grant", "")
        if not _ID.match(grant):
            return refused(400, "choose a grant")
        done = await work(partial(passkeys.prepare_script, cfg, request.path_params["t"], grant_id=grant,
                                  devices=many(form, "devices"), script=form.get("script", ""),
                                  timeout_s=form.get("timeout", "300"),
                                  origin=guard.request_origin(request), pending=pending))
        return render("sign_job.html", **done)

    async def sign_job_post(request: Request, form: dict[str, str]) -> Response:
        job_id = await work(partial(passkeys.sign_script, cfg, request.path_params["t"],
                                    request.path_params["j"],
                                    authenticator_data=form.get("authenticator_data", ""),
                                    client_data=form.get("client_data", ""),
                                    signature=form.get("signature", ""),
                                    step_up_code=form.get("totp") or None, pending=pending, signed=signed))
        return RedirectResponse(f"/jobs/{job_id}", status_code=303, headers=HEADERS)

    async def job_page(request: Request, form: dict[str, str]) -> Response:
        jid = request.path_params["j"]
        doc = await work(actions.job, cfg, jid)
        fragment = request.headers.get("hx-request") == "true"
        return render("targets.html" if fragment else "job.html", signed=signed.get(jid), **doc)

    async def root_page(request: Request, form: dict[str, str]) -> Response:
        return render("rootchange.html", **await work(actions.root_review, cfg, request.path_params["t"]))

    async def root_post(request: Request, form: dict[str, str]) -> Response:
        fingerprints = {k[3:]: v for k, v in form.items() if k.startswith("fp-")}
        holders = {k[5:]: v for k, v in form.items() if k.startswith("name-")}
        done = await work(partial(actions.root_sign, cfg, request.path_params["t"],
                                  reviewed_sha256=form.get("reviewed", ""), fingerprints=fingerprints,
                                  holders=holders, key_passphrase_text=form.get("passphrase", "")))
        return render("rootsigned.html", **done)

    async def publish_post(request: Request, form: dict[str, str]) -> Response:
        done = await work(actions.root_publish, cfg, request.path_params["t"])
        return render("rootsigned.html", **done)

    shells = sessions.Shells(cfg, guard, render)  # remote shells in the browser (sessions.py)
    return Starlette(routes=[
        Route("/", index, methods=["GET"]),
        Route("/static/shell/{name}", shells.static, methods=["GET"]),
        route("/t/{t}/shell", shells.page),
        route("/t/{t}/shell", shells.open, post=True),
        route("/shells/{s}", shells.terminal),
        WebSocketRoute("/shells/{s}/ws", shells.socket),
        Route("/launch", launch, methods=["POST"]),
        Route("/static/{name}", static, methods=["GET"]),
        route("/t/{t}", tenant_page),
        route("/t/{t}/request", request_page),
        route("/t/{t}/grants", request_post, post=True),
        route("/t/{t}/run", run_page),
        route("/t/{t}/run", run_post, post=True),
        route("/grants/{g}", grant_page),
        route("/grants/{g}/approve", approve_post, post=True),
        route("/grants/{g}/approve-passkey", approve_passkey_post, post=True),
        route("/t/{t}/passkey", passkey_page),
        route("/t/{t}/run-passkey", run_passkey_post, post=True),
        route("/t/{t}/run-passkey/{j}", sign_job_post, post=True),
        route("/t/{t}/passkey", passkey_post, post=True),
        route("/jobs/{j}", job_page),
        route("/t/{t}/root", root_page),
        route("/t/{t}/root/sign", root_post, post=True),
        route("/t/{t}/root/publish", publish_post, post=True),
    ])
