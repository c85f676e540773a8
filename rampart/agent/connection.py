"""The agent's link to the server: one pinned-TLS WebSocket, reconnecting with jittered back-off.

The connection carries no authority: whatever arrives is verified by
:class:`rampart.agent.core.Agent` before anything happens. Receipts stay in
the durable outbox until the server acknowledges them and are resent on
every reconnect. Telemetry messages (``detection``, ``inventory-ack``,
``inventory-full``, ``inventory-request``) go to
:class:`rampart.agent.telemetry.Telemetry`; none of them makes the agent act.
Script check results (``check-result``) go out from
:class:`rampart.agent.script_checks.ScriptChecks` and are removed from their
outbox at the server's ``check-ack``; nothing the server sends starts a check.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import ssl
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from .core import Agent
from .enroll import AGENT_VERSION
from .script_checks import ScriptChecks
from .telemetry import Telemetry

log = logging.getLogger("rampart.agent")

MAX_MESSAGE = 4 * 1024 * 1024
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0


def backoff_delays(first: float = BACKOFF_FIRST_S, cap: float = BACKOFF_MAX_S) -> Any:
    """Exponential back-off with ±50 % jitter, so a fleet does not reconnect in lockstep."""
    delay = first
    while True:
        yield delay * random.uniform(0.5, 1.5)
        delay = min(cap, delay * 2)


def auth_message(nonce: str, device_id: str) -> bytes:
    return b"rampart-agent-auth-v1\n" + nonce.encode() + b"\n" + device_id.encode()


class Link:
    """One agent's session loop."""

    def __init__(self, agent: Agent, server_url: str, ssl_context: ssl.SSLContext, *,
                 gateway_url: str | None = None, telemetry: Telemetry | None = None,
                 checks: ScriptChecks | None = None) -> None:
        self.agent = agent
        self.telemetry = telemetry
        self.checks = checks if checks is not None else ScriptChecks(agent)
        self._detection_seen = False
        self.url = gateway_url or (
            server_url.replace("https://", "wss://", 1).rstrip("/") + "/agent/v1/ws")
        self.ssl = ssl_context
        self.jobs: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._background: set[asyncio.Task[None]] = set()
        self.ws: ClientConnection | None = None

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.to_thread(self.agent.recover_interrupted)
        worker = asyncio.create_task(self._work())
        reporter = asyncio.create_task(self.telemetry.run()) if self.telemetry is not None else None
        loop = asyncio.get_running_loop()

        def check_stored() -> None:  # called from the job worker thread
            loop.call_soon_threadsafe(self.checks.changed)

        self.agent.on_check_stored = check_stored
        scheduler = asyncio.create_task(self.checks.run())
        delays = backoff_delays()
        try:
            while not stop.is_set():
                try:
                    await self._session(stop)
                    delays = backoff_delays()
                except (TimeoutError, OSError, WebSocketException, ValueError) as exc:
                    log.info("connection to server lost: %s", type(exc).__name__)
                self.ws = None
                if stop.is_set():
                    break
                try:
                    await asyncio.wait_for(stop.wait(), timeout=next(delays))
                except TimeoutError:
                    pass
        finally:
            worker.cancel()
            scheduler.cancel()
            if reporter is not None:
                reporter.cancel()

    async def _session(self, stop: asyncio.Event) -> None:
        async with connect(self.url, ssl=self.ssl, max_size=MAX_MESSAGE, open_timeout=15,
                           ping_interval=20, ping_timeout=20, close_timeout=5) as ws:
            challenge = json.loads(await asyncio.wait_for(ws.recv(), 15))
            if challenge.get("type") != "challenge" or not isinstance(challenge.get("nonce"), str):
                raise ValueError("expected a challenge")
            sig = self.agent.key.sign(auth_message(challenge["nonce"], self.agent.device_id))
            await ws.send(json.dumps({
                "type": "hello", "device": self.agent.device_id,
                "sig": base64.b64encode(sig).decode(), "agent_version": AGENT_VERSION,
                "root_version": self.agent.root_version(),
                "checkpoint_size": self.agent.checkpoint_size(),
                "catalog_sha256": self.telemetry.catalog_sha256 if self.telemetry is not None else "",
            }))
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 15))
            if welcome.get("type") != "welcome":
                raise ValueError("server did not welcome this device")
            log.info("connected to %s as %s (%s)", self.url, self.agent.device_id,
                     welcome.get("status"))
            self.ws = ws
            self._detection_seen = False
            if self.telemetry is not None:
                self.telemetry.attach(ws.send)
            self.checks.attach(ws.send)
            for pending in await asyncio.to_thread(self.agent.state.unacked_receipts):
                await self._send_receipt(pending.job_id, pending.receipt)
            stopper = asyncio.create_task(stop.wait())
            try:
                while True:
                    recv = asyncio.create_task(ws.recv())
                    done, _ = await asyncio.wait({recv, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    if stopper in done:
                        recv.cancel()
                        return
                    await self._dispatch(json.loads(recv.result()))
            finally:
                stopper.cancel()
                self.checks.detach()
                if self.telemetry is not None:
                    self.telemetry.detach()

    async def _dispatch(self, msg: Any) -> None:
        if not isinstance(msg, dict):
            return
        kind = msg.get("type")
        if kind == "job":
            await self.jobs.put(msg)
        elif kind == "ack" and isinstance(msg.get("job_id"), str):
            await asyncio.to_thread(self.agent.state.mark_acked, msg["job_id"])
        elif kind == "roots" and isinstance(msg.get("envelopes"), list):
            envs = [e.encode() for e in msg["envelopes"] if isinstance(e, str)]
            try:
                await asyncio.to_thread(self.agent.apply_roots, envs)
            except Exception as exc:  # a refused root changes nothing; keep serving
                log.warning("refused root update: %s", exc)
            await self._send_state()
        elif kind == "revocations" and isinstance(msg.get("envelopes"), list):
            envs = [e.encode() for e in msg["envelopes"] if isinstance(e, str)]
            try:
                await asyncio.to_thread(self.agent.apply_revocations, envs)
            except Exception as exc:  # keep serving; a later push or reconnect brings them again
                log.warning("could not store revocations: %s", exc)
        elif kind == "check-ack":
            if msg.get("refused"):
                log.warning("the server refused script check result %s: %s", msg.get("seq"),
                            str(msg.get("refused"))[:300])
            await self.checks.on_ack(msg.get("seq"))
        elif kind == "error":
            log.warning("the server refused a message: %s", str(msg.get("detail", ""))[:300])
        elif self.telemetry is not None:
            await self._telemetry_message(kind, msg)

    async def _telemetry_message(self, kind: object, msg: dict[str, Any]) -> None:
        assert self.telemetry is not None
        if kind == "detection":
            first = not self._detection_seen
            self._detection_seen = True
            await self.telemetry.on_detection(msg, first_on_connection=first)
        elif kind == "inventory-ack":
            self.telemetry.on_ack(msg.get("result"))
        elif kind == "inventory-full":
            self.telemetry.on_full()
        elif kind == "inventory-request":
            log.info("the server asked for an inventory")
            self.telemetry.request()

    async def _send_state(self) -> None:
        if self.ws is not None:
            await self.ws.send(json.dumps({
                "type": "state", "root_version": self.agent.root_version(),
                "checkpoint_size": self.agent.checkpoint_size(),
            }))

    def _spawn(self, coro: Any) -> None:
        """Run ``coro`` in the background, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_state_quietly(self) -> None:
        try:
            await self._send_state()
        except (OSError, WebSocketException):
            pass  # the next hello reports it

    async def _send_receipt(self, job_id: str, receipt: bytes) -> None:
        if self.ws is None:
            return
        try:
            await self.ws.send(json.dumps({
                "type": "receipt", "job_id": job_id, "receipt": receipt.decode(),
                "checkpoint_size": self.agent.checkpoint_size(),
            }))
        except (OSError, WebSocketException):
            log.info("receipt for %s kept in the outbox until the server is back", job_id)

    async def _work(self) -> None:
        """Run jobs one at a time, in arrival order."""
        loop = asyncio.get_running_loop()

        def started() -> None:  # called from the worker thread once the checkpoint is committed
            loop.call_soon_threadsafe(lambda: self._spawn(self._send_state_quietly()))

        while True:
            msg = await self.jobs.get()
            try:
                receipt = await asyncio.to_thread(self.agent.handle_job, msg, started)
            except Exception:
                log.exception("job handling failed")
                continue
            if receipt is not None:
                await self._send_receipt(str(msg.get("job_id")), receipt)
