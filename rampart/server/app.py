"""FastAPI application factory: REST API under ``/api/v1``, agent endpoints, status page.

Boundary invariants:

* Every request body is size-limited before any handler sees it (413).
* Every refusal is ``{"detail": "<one line>"}``; validation errors name the
  field and the rule but never echo the submitted value (which may be a
  password or token); an unexpected fault is a bare 500 with no detail.
* The schema is migrated to head and overdue checkpoints are signed before
  the first request; checkpoints are then signed every 60 s when a log grew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from rampart import __version__

from . import clock, directory, retention, root_expiry, throttle, totp_store
from .access import sweep_dormant
from .alerts import raise_alert
from .api import (
    accounts,
    alerts,
    audit,
    backups,
    checks,
    devices,
    grants,
    groups,
    jobs,
    notify,
    patching,
    reports,
    sessions,
    telemetry,
    tenants,
)
from .api import auth as auth_api
from .api import directory as directory_api
from .api.console import router as console_router
from .api.contract import allowed_methods
from .api.contract import install as install_contract
from .api.schemas import HealthOut
from .api.status_page import router as status_router
from .audit import SERVER_LOG, AuditLog
from .automation import AutomationKeyStore
from .checks import CheckRunner
from .chores_lease import ChoresLease
from .config import ServerConfig, load_config
from .context import ServerContext
from .db import Store, migrate
from .delivery import DeliveryStore
from .doorbell import Doorbell, NatsOptions, redelivery_cadence
from .errors import Refusal, ServerError, TooManyRequests, Unauthenticated
from .gateway import Gateway
from .gateway_listener import server_ssl_context, start_gateway_listener
from .keystore import LogKeyStore
from .notifier import Notifier
from .relay import SessionRelay
from .scheduler import Scheduler
from .script_checks import ScriptCheckStore
from .setup import cert_sha256_of
from .telemetry import TelemetryStore

log = logging.getLogger("rampart.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    """Pure ASGI middleware: buffer at most ``limit`` bytes of a request body, else 413."""

    def __init__(self, app: ASGIApp, *, default: int, jobs: int) -> None:
        self.app = app
        self.default = default
        self.jobs = jobs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        limit = self.jobs if path.endswith("/jobs") and scope.get("method") == "POST" \
            else self.default
        chunks: list[bytes] = []
        total = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                await JSONResponse({"detail": f"request body exceeds {limit} bytes"},
                                   status_code=413)(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _one_line(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    loc = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body",))
    msg = str(first.get("msg", "invalid value")).replace("\n", " ")[:200]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc}: {msg}{more}" if loc else msg + more


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServerError)
    async def _server_error(request: Request, exc: ServerError) -> JSONResponse:
        if exc.refusal is not None:
            ctx: ServerContext = request.app.state.ctx
            await asyncio.to_thread(record_refusal, ctx, exc.refusal)
        doc: dict[str, object] = {"detail": exc.detail}
        headers: dict[str, str] = {}
        if exc.code is not None:
            doc["code"] = exc.code
        if isinstance(exc, TooManyRequests):
            headers["Retry-After"] = str(exc.retry_after)
        if isinstance(exc, Unauthenticated):  # RFC 9110 §15.5.2: a 401 names its scheme
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(doc, status_code=exc.status, headers=headers or None)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _one_line(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "error"
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # RFC 9110 §15.5.6: every method the resource serves
            headers["Allow"] = ", ".join(allowed_methods(request.app, request.url.path))
        return JSONResponse({"detail": detail}, status_code=exc.status_code,
                            headers=headers or None)

    @app.exception_handler(OperationalError)
    async def _store_busy(request: Request, exc: OperationalError) -> JSONResponse:
        # The store could not be reached or stayed locked past its busy timeout: the
        # transaction rolled back whole, so the client may simply retry.
        log.warning("store unavailable on %s %s: %s", request.method, request.url.path,
                    type(exc.orig).__name__ if exc.orig is not None else "OperationalError")
        return JSONResponse({"detail": "the server is busy; retry shortly"}, status_code=503,
                            headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s: %s", request.method, request.url.path,
                  type(exc).__name__)
        return JSONResponse({"detail": "internal error"}, status_code=500)


def record_refusal(ctx: ServerContext, refusal: Refusal) -> None:
    """Write a refused request's audit entry (and alert) in a transaction of its own."""
    now = clock.now()
    try:
        with ctx.store.transaction() as s:
            ctx.audit.record(s, refusal.logs or (SERVER_LOG,), refusal.kind, refusal.actor,
                             refusal.details, now)
            if refusal.alert is not None:
                scopes, kind, dedup, subject = refusal.alert
                raise_alert(s, scopes or (None,), kind=kind, severity="warning", dedup=dedup,
                            subject=subject, detail=subject, now=now)
    except Exception:  # the refusal itself stands; only its record failed
        log.exception("recording a refusal (%s) failed", refusal.kind)


def housekeeping(ctx: ServerContext) -> None:
    """Disable dormant accounts (S2) and forget stale login pacing."""
    now = clock.now()
    with ctx.store.transaction() as s:
        disabled = sweep_dormant(s, ctx.audit, now)
        throttle.prune(s, now)
    for name in disabled:
        log.warning("disabled dormant account %s", name)


async def _every(interval_s: float, run: Callable[[float], object], what: str) -> None:
    """Run ``run(now)`` in a worker thread every ``interval_s``; a failure is logged, never fatal."""
    while True:
        try:
            await asyncio.to_thread(run, clock.now())
        except Exception:
            log.exception("%s failed; retrying next interval", what)
        await asyncio.sleep(interval_s)


def _chore(ctx: ServerContext, run: Callable[[float], object]) -> Callable[[float], object]:
    """``run`` on the node that holds the deployment's chores lease only (chores_lease.py)."""
    return lambda now: run(now) if ctx.chores.held() else None


async def _housekeeping_cadence(ctx: ServerContext) -> None:
    await _every(ctx.limits.housekeeping_interval_s, _chore(ctx, lambda _now: housekeeping(ctx)),
                 "housekeeping")


async def _checks_cadence(ctx: ServerContext) -> None:
    """Evaluate monitoring checks against the newest inventories (skips unchanged ones)."""
    telemetry = ctx.gateway.telemetry
    if telemetry is None:
        return
    runner = CheckRunner(ctx.store, telemetry)
    while True:
        try:
            await asyncio.to_thread(_chore(ctx, runner.run_once), clock.now())
        except Exception:
            log.exception("monitoring checks failed; retrying next interval")
        try:
            checks = ctx.gateway.script_checks
            if checks is not None:
                connected = ctx.gateway.connected_ids()
                await asyncio.to_thread(_chore(ctx, partial(checks.sweep_overdue, connected=connected)),
                                        clock.now())
        except Exception:
            log.exception("script check overdue sweep failed; retrying next interval")
        await asyncio.sleep(ctx.limits.checks_interval_s)


async def _notify_cadence(ctx: ServerContext) -> None:
    """Deliver queued alerts and forward events to SIEM targets, every couple of seconds."""
    notifier = Notifier(ctx.store, ctx.config)
    try:
        while True:
            try:
                await asyncio.to_thread(_chore(ctx, notifier.run_once), clock.now())
            except Exception:
                log.exception("alert delivery pass failed; retrying")
            await asyncio.sleep(ctx.limits.notify_interval_s)
    finally:
        await asyncio.to_thread(notifier.close)


async def _telemetry_cadence(ctx: ServerContext) -> None:
    """Overdue/offline agents and detection configuration changes (docs/design/telemetry.md).

    The first sweep waits for agents to reconnect after a server start, so a
    restart does not report the whole fleet offline.
    """
    lim = ctx.limits
    await asyncio.sleep(min(lim.overdue_after_s, 120.0))
    while True:
        try:
            store = ctx.gateway.telemetry
            if store is not None:
                connected = ctx.gateway.connected_ids()
                await asyncio.to_thread(_chore(ctx, partial(store.sweep_overdue, connected=connected)),
                                        clock.now())
            await ctx.gateway.recheck_detection()  # this node's connections: on every node
        except Exception:
            log.exception("telemetry sweep failed; retrying next interval")
        await asyncio.sleep(min(lim.telemetry_sweep_interval_s, lim.inventory_interval_s))


async def _scheduler_cadence(ctx: ServerContext) -> None:
    """Patch cycles and scheduled backups under standing grants (docs/patching.md)."""
    scheduler = Scheduler(ctx.store, ctx.audit, ctx.automation, ctx.gateway)
    await _every(ctx.limits.scheduler_interval_s, _chore(ctx, scheduler.run_once), "scheduler pass")


async def _retention_cadence(ctx: ServerContext) -> None:
    """Delete resolved findings and alerts past their retention, in bounded batches (retention.py)."""
    await _every(ctx.limits.retention_interval_s,
                 _chore(ctx, lambda now: retention.sweep(ctx.store, ctx.limits, now, audit=ctx.audit)),
                 "retention sweep")


async def _root_expiry_cadence(ctx: ServerContext) -> None:
    """Alert owners 90, 30 and 7 days before a tenant root expires (root_expiry.py)."""
    await _every(ctx.limits.root_expiry_interval_s,
                 _chore(ctx, lambda now: root_expiry.sweep(ctx.store, now)), "root expiry check")


async def _directory_cadence(ctx: ServerContext) -> None:
    """Scheduled directory audits that are due, checked every scheduler tick (directory.py)."""
    await _every(ctx.limits.scheduler_interval_s,
                 _chore(ctx, lambda now: directory.sweep(ctx.store, ctx.audit, now)), "directory audit")


async def _checkpoint_cadence(ctx: ServerContext) -> None:
    while True:
        await asyncio.sleep(ctx.limits.checkpoint_interval_s)
        try:
            await asyncio.to_thread(_chore(ctx, ctx.audit.sign_due), clock.now())
        except Exception:
            log.exception("checkpoint cadence failed; retrying next interval")


def build_context(config: ServerConfig) -> ServerContext:
    clock.configure_from_env()
    store = Store(config.db_url)
    migrate(store.engine)
    totp_store.prepare(store, config.keys_dir)  # the key; clear secrets of older versions sealed
    audit_log = AuditLog(store, LogKeyStore(config.keys_dir))
    gateway = Gateway(DeliveryStore(store, audit_log, witness_wait_s=config.limits.witness_wait_s),
                      config.limits,
                      TelemetryStore(store, config.limits), ScriptCheckStore(store))
    gateway.relay = SessionRelay(store, audit_log, gateway.send_to_device)
    cert = cert_sha256_of(config.cert_path) if config.cert_path.exists() else None
    return ServerContext(config=config, store=store, audit=audit_log, cert_sha256=cert,
                         gateway=gateway, automation=AutomationKeyStore(config.keys_dir),
                         chores=ChoresLease(store))


def create_app(data_dir: Path | str, *, config: ServerConfig | None = None,
               agent_listen: tuple[str, int] | None = None, tls: bool = True,
               nats: NatsOptions | None = None) -> FastAPI:
    """Build the application for an initialised data directory (migrates the schema).

    With ``agent_listen``, the agent gateway also serves on its own lean
    listener there (:mod:`.gateway_listener`), started and stopped with the app.
    With ``nats``, this process is one node of a deployment (:mod:`.doorbell`).
    """
    ctx = build_context(config or load_config(Path(data_dir)))
    doorbell = Doorbell(nats, ctx.gateway, node=f"{socket.gethostname()}-{os.getpid()}") \
        if nats is not None else None
    ctx.gateway.doorbell = doorbell
    if agent_listen is not None:
        ctx.agent_port = agent_listen[1]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        ctx.gateway.bind_loop(asyncio.get_running_loop())
        await asyncio.to_thread(ctx.audit.sign_due, clock.now())
        cadence = asyncio.create_task(_checkpoint_cadence(ctx))
        chores = asyncio.create_task(_housekeeping_cadence(ctx))
        notifying = asyncio.create_task(_notify_cadence(ctx))
        checking = asyncio.create_task(_checks_cadence(ctx))
        watching = asyncio.create_task(_telemetry_cadence(ctx))
        scheduling = asyncio.create_task(_scheduler_cadence(ctx))
        retaining = asyncio.create_task(_retention_cadence(ctx))
        expiring = asyncio.create_task(_root_expiry_cadence(ctx))
        auditing = asyncio.create_task(_directory_cadence(ctx))
        tasks = [cadence, chores, notifying, checking, watching, scheduling, retaining, expiring,
                 auditing]
        if doorbell is not None:
            await doorbell.start()
            tasks.append(asyncio.create_task(redelivery_cadence(ctx.limits.redelivery_interval_s,
                                                                ctx.gateway.redeliver_sweep)))
        listener = None
        if agent_listen is not None:
            ssl_ctx = server_ssl_context(str(ctx.config.cert_path), str(ctx.config.key_path)) \
                if tls else None
            listener = await start_gateway_listener(ctx.gateway, agent_listen[0], agent_listen[1],
                                                    ssl_ctx, ctx.limits.max_ws_message_bytes)
        try:
            yield
        finally:
            if listener is not None:
                listener.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(listener.wait_closed(), 5)
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if doorbell is not None:
                await doorbell.stop()
            await asyncio.to_thread(ctx.chores.release)
            ctx.store.dispose()

    app = FastAPI(title="Rampart server", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.ctx = ctx
    _install_error_handlers(app)
    install_contract(app)

    api = APIRouter(prefix="/api/v1")

    @api.get("/health", response_model=HealthOut, tags=["meta"])
    def health() -> HealthOut:
        return HealthOut(status="ok", version=__version__)

    for module in (auth_api, accounts, tenants, devices, grants, jobs, audit, alerts, notify, telemetry,
                   checks, patching, backups, groups, sessions, directory_api, reports):
        api.include_router(module.router)
    app.include_router(api)
    app.include_router(devices.agent_router)
    app.include_router(status_router)
    app.include_router(console_router)

    sessions.install(app)

    @app.websocket("/agent/v1/ws")
    async def agent_socket(ws: WebSocket) -> None:
        await ctx.gateway.serve(ws)

    app.add_middleware(BodyLimit, default=ctx.limits.max_body_bytes,
                       jobs=ctx.limits.max_job_body_bytes)
    return app
