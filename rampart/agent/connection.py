"""The agent's link to the server: one pinned-TLS WebSocket, reconnecting with jittered back-off.

Every message is a :mod:`rampart.wire` struct: the agent decodes what the
server sends into the :data:`rampart.wire.ServerMessage` union, as strictly
as the server decodes the agent's, and refuses anything else with a stable
reason (logged; a refused ``job`` with a readable job id is answered with a
signed ``malformed`` refusal receipt), never a crash. :meth:`Link.receive`
and :meth:`Link.handle` take that path without a socket (the test seam).

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
import contextlib
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from rampart.wire import (
    AckMessage,
    CancellationsMessage,
    CheckAckMessage,
    DetectionMessage,
    ErrorMessage,
    InventoryAckMessage,
    InventoryFullMessage,
    InventoryRequestMessage,
    JobMessage,
    Message,
    ReceiptMessage,
    RevocationsMessage,
    RootsMessage,
    ServerMessage,
    StateMessage,
    WireError,
    decode_challenge,
    decode_server_message,
    decode_welcome,
    encode_message,
    sign_hello,
)
from rampart.wire.admission import CLOSE_TRY_AGAIN, parse_try_again
from rampart.wire.limits import MAX_DETAIL_CHARS, MAX_MESSAGE_BYTES
from rampart.wire.session import RecordingAckMessage, SessionCloseMessage, SessionFrameMessage

from . import gateways
from .core import Agent
from .enroll import AGENT_VERSION
from .script_checks import ScriptChecks
from .session.manager import Sessions
from .telemetry import Telemetry

log = logging.getLogger("rampart.agent")

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
#: How long to wait, jittered, after a 1013 that names no delay.
BUSY_DEFAULT_S = 10
HANDSHAKE_TIMEOUT_S = 15.0
#: How long a device the server called retired or rejected waits before it asks again.
RETIRED_RECHECK_S = 3600.0

SendText = Callable[[str], Awaitable[None]]
#: What the job worker is given: a job to verify, or a refused job message to answer with a refusal.
JobWork = JobMessage | WireError


def backoff_delays(first: float = BACKOFF_FIRST_S, cap: float = BACKOFF_MAX_S) -> Any:
    """Exponential back-off with ±50 % jitter, so a fleet does not reconnect in lockstep."""
    delay = first
    while True:
        yield delay * random.uniform(0.5, 1.5)
        delay = min(cap, delay * 2)


def busy_delay(exc: BaseException) -> int | None:
    """The delay a gateway too busy to take this connection asked for (close 1013), else None."""
    if isinstance(exc, ConnectionClosed) and exc.rcvd is not None and exc.rcvd.code == CLOSE_TRY_AGAIN:
        return parse_try_again(exc.rcvd.reason) or BUSY_DEFAULT_S
    return None


class Link:
    """One agent's session loop."""

    def __init__(self, agent: Agent, server_url: str, ssl_context: ssl.SSLContext, *,
                 gateway_urls: Sequence[str] = (), telemetry: Telemetry | None = None,
                 checks: ScriptChecks | None = None) -> None:
        self.agent = agent
        self.telemetry = telemetry
        self.checks = checks if checks is not None else ScriptChecks(agent)
        self._detection_seen = False
        #: The gateways tried in turn (agent/gateways.py); ``url`` is the one tried now or last.
        self.urls = list(gateway_urls) or [gateways.derived(server_url)]
        self.url = self.urls[0]
        self.ssl = ssl_context
        self.jobs: asyncio.Queue[JobWork] = asyncio.Queue()
        self._background: set[asyncio.Task[None]] = set()
        self.ws: ClientConnection | None = None
        #: Where messages to the server go while a session is up (the socket's send; a test's list).
        self.send_text: SendText | None = None
        #: Server messages refused since start, by reason (for tests and diagnostics).
        self.refused: dict[str, int] = {}
        #: "rejected", "retired" or "archived" when the server last said so at the handshake, else "".
        self.refused_as = ""
        #: Whether the current connection passed the handshake (then it closes itself on stop).
        self._live = False
        #: Live remote sessions (docs/design/remote-sessions.md).
        self.sessions = Sessions(agent, self._send, self._send_receipt)

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.to_thread(self.agent.recover_interrupted)
        worker = asyncio.create_task(self._work())
        reporter = asyncio.create_task(self.telemetry.run()) if self.telemetry is not None else None
        loop = asyncio.get_running_loop()

        def check_stored() -> None:  # called from the job worker thread
            loop.call_soon_threadsafe(self.checks.changed)

        self.agent.on_check_stored = check_stored

        def start_session(auth: Any) -> None:  # called from the job worker thread
            loop.call_soon_threadsafe(self.sessions.start, auth)

        self.agent.on_session = start_session
        scheduler = asyncio.create_task(self.checks.run())
        delays = backoff_delays()
        try:
            while not stop.is_set():
                busy: int | None = None
                try:
                    await self._session_until(stop)
                    delays = backoff_delays()
                except (TimeoutError, OSError, WebSocketException, ValueError) as exc:
                    busy = busy_delay(exc)
                    if busy is not None:
                        log.info("the server is busy: trying again in about %d s", busy)
                    else:
                        log.info("connection to server lost: %s", type(exc).__name__)
                self.ws = None
                self.send_text = None
                if stop.is_set():
                    break
                # The next attempt goes to the next gateway: a node that died or refused is
                # behind, and the others serve the same deployment (docs/scale-out.md).
                self.url = self.urls[(self.urls.index(self.url) + 1) % len(self.urls)]
                try:
                    # A retired or rejected device stops talking to the server, but not for good: the
                    # server's word is not signed, and a server that was compromised while it retired
                    # devices must not orphan the fleet. It asks again after RETIRED_RECHECK_S.
                    # A busy node's own delay replaces the growing back-off (rampart.wire.admission).
                    wait = (RETIRED_RECHECK_S if self.refused_as
                            else busy * random.uniform(0.5, 1.5) if busy is not None else next(delays))
                    await asyncio.wait_for(stop.wait(), timeout=wait)
                except TimeoutError:
                    pass
        finally:
            worker.cancel()
            scheduler.cancel()
            if reporter is not None:
                reporter.cancel()

    async def _session_until(self, stop: asyncio.Event) -> None:
        """One session, ended at once when ``stop`` is set, even while it is still connecting or in
        the handshake (a server that is down or slow must not delay the agent's exit)."""
        self._live = False
        session = asyncio.create_task(self._session(stop))
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({session, stopper}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # the agent itself is being cancelled
            session.cancel()
            raise
        finally:
            stopper.cancel()
        if not session.done() and not self._live:
            # Still connecting or in the handshake: nothing to close cleanly, so cancel it.
            session.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await session  # stopping: how the attempt ended no longer matters
            return
        await session  # connected: the session sees ``stop`` itself and closes cleanly

    async def _session(self, stop: asyncio.Event) -> None:
        async with connect(self.url, ssl=self.ssl, max_size=MAX_MESSAGE_BYTES, open_timeout=15,
                           ping_interval=20, ping_timeout=20, close_timeout=5) as ws:
            # A WireError is a ValueError: a bad handshake ends the session and the agent reconnects.
            challenge = decode_challenge(await asyncio.wait_for(ws.recv(), HANDSHAKE_TIMEOUT_S))
            await ws.send(encode_message(sign_hello(
                self.agent.key, challenge, self.agent.device_id, agent_version=AGENT_VERSION,
                root_version=self.agent.root_version(), checkpoint_size=self.agent.checkpoint_size(),
                catalog_sha256=self.telemetry.catalog_sha256 if self.telemetry is not None else "")))
            welcome = decode_welcome(await asyncio.wait_for(ws.recv(), HANDSHAKE_TIMEOUT_S))
            if welcome.status in ("rejected", "retired", "archived"):
                self.refused_as = welcome.status
                log.error("the server says this device is %s: no longer connecting (rechecked every %d s; "
                          "re-enrol or uninstall the agent)", welcome.status, int(RETIRED_RECHECK_S))
                return
            self.refused_as = ""
            self._live = True
            log.info("connected to %s as %s (%s)", self.url, self.agent.device_id, welcome.status)
            await self.start(ws, ws.send)
            stopper = asyncio.create_task(stop.wait())
            try:
                while True:
                    recv = asyncio.create_task(ws.recv())
                    done, _ = await asyncio.wait({recv, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    if stopper in done:
                        recv.cancel()
                        return
                    await self.receive(recv.result())
            finally:
                stopper.cancel()
                self.stop()

    # --- a session, without its socket (the seam tests drive) ------------------------------------

    async def start(self, ws: ClientConnection | None, send: SendText) -> None:
        """A session is up: outgoing messages go through ``send``; resend the receipts not acknowledged."""
        self.ws = ws
        self.send_text = send
        self._detection_seen = False
        if self.telemetry is not None:
            self.telemetry.attach(send)
        self.checks.attach(send)
        self.sessions.attach()
        for pending in await asyncio.to_thread(self.agent.state.unacked_receipts):
            await self._send_receipt(pending.job_id, pending.receipt)

    def stop(self) -> None:
        """The session ended: nothing more is sent until the next :meth:`start`."""
        self.checks.detach()
        self.sessions.relay_lost()
        if self.telemetry is not None:
            self.telemetry.detach()

    async def receive(self, data: str | bytes) -> None:
        """Decode one frame from the server and act on it; a refused one is logged and counted."""
        try:
            msg = decode_server_message(data)
        except WireError as exc:
            await self._refuse(exc)
            return
        await self.handle(msg)

    async def _refuse(self, exc: WireError) -> None:
        self.refused[exc.reason] = self.refused.get(exc.reason, 0) + 1
        log.warning("refused a server message (%s): %s: %s", exc.message_type or "unknown type",
                    exc.reason, exc.detail[:MAX_DETAIL_CHARS])
        if exc.message_type == "job" and exc.job_id is not None:
            await self.jobs.put(exc)  # answered with a signed refusal, in order with the other jobs
        elif exc.message_type == "detection" and self.telemetry is not None:
            first = not self._detection_seen
            self._detection_seen = True
            self.telemetry.on_bad_detection(exc.detail, first_on_connection=first)

    async def handle(self, msg: ServerMessage) -> None:
        """Act on one decoded server message (nothing here runs a job: the worker verifies it first)."""
        if isinstance(msg, JobMessage):
            await self.jobs.put(msg)
        elif isinstance(msg, AckMessage):
            await asyncio.to_thread(self.agent.state.mark_acked, msg.job_id)
        elif isinstance(msg, RootsMessage):
            try:
                await asyncio.to_thread(self.agent.apply_roots, [e.encode() for e in msg.envelopes])
            except Exception as exc:  # a refused root changes nothing; keep serving
                log.warning("refused root update: %s", exc)
            await self._send_state()
        elif isinstance(msg, RevocationsMessage):
            try:
                await asyncio.to_thread(self.agent.apply_revocations, [e.encode() for e in msg.envelopes])
            except Exception as exc:  # keep serving; a later push or reconnect brings them again
                log.warning("could not store revocations: %s", exc)
        elif isinstance(msg, CancellationsMessage):
            try:
                await asyncio.to_thread(self.agent.apply_cancellations, [e.encode() for e in msg.envelopes])
            except Exception as exc:  # keep serving; a later push or reconnect brings them again
                log.warning("could not store job cancellations: %s", exc)
        elif isinstance(msg, CheckAckMessage):
            if msg.refused:
                log.warning("the server refused script check result %s: %s", msg.seq, msg.refused)
            await self.checks.on_ack(msg.seq)
        elif isinstance(msg, (SessionFrameMessage, SessionCloseMessage)):
            await self.sessions.deliver(msg)
        elif isinstance(msg, RecordingAckMessage):
            self.sessions.on_recording_ack(msg)
        elif isinstance(msg, ErrorMessage):
            log.warning("the server refused a message: %s", msg.detail)
        elif self.telemetry is not None:
            await self._telemetry_message(msg)

    async def _telemetry_message(self, msg: ServerMessage) -> None:
        assert self.telemetry is not None
        if isinstance(msg, DetectionMessage):
            first = not self._detection_seen
            self._detection_seen = True
            doc = {f: getattr(msg, f) for f in msg.__struct_fields__}  # every field, defaults included
            await self.telemetry.on_detection(doc, first_on_connection=first)
        elif isinstance(msg, InventoryAckMessage):
            self.telemetry.on_ack(msg.result)
        elif isinstance(msg, InventoryFullMessage):
            self.telemetry.on_full()
        elif isinstance(msg, InventoryRequestMessage):
            log.info("the server asked for an inventory")
            self.telemetry.request()

    async def _send(self, msg: Message) -> None:
        if self.send_text is not None:
            await self.send_text(encode_message(msg))

    async def _send_state(self) -> None:
        await self._send(StateMessage(root_version=self.agent.root_version(),
                                      checkpoint_size=self.agent.checkpoint_size()))

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
        if self.send_text is None:
            return
        try:
            await self._send(ReceiptMessage(job_id=job_id, receipt=receipt.decode(),
                                            checkpoint_size=self.agent.checkpoint_size()))
        except (OSError, WebSocketException):
            log.info("receipt for %s kept in the outbox until the server is back", job_id)

    async def _work(self) -> None:
        """Run jobs one at a time, in arrival order."""
        while True:
            await self.work_one(await self.jobs.get())

    async def work_one(self, work: JobWork) -> bytes | None:
        """Verify and run one job (or sign the refusal of a malformed one); send and return its receipt."""
        loop = asyncio.get_running_loop()

        def started() -> None:  # called from the worker thread once the checkpoint is committed
            loop.call_soon_threadsafe(lambda: self._spawn(self._send_state_quietly()))

        try:
            if isinstance(work, WireError):
                assert work.job_id is not None
                job_id = work.job_id
                receipt = await asyncio.to_thread(self.agent.refuse_message, job_id, work.detail)
            else:
                job_id = work.job_id
                receipt = await asyncio.to_thread(self.agent.handle_job, work, started)
        except Exception:
            log.exception("job handling failed")
            return None
        if receipt is not None:
            await self._send_receipt(job_id, receipt)
        return receipt
