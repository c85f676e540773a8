"""Agent WebSocket gateway (``/agent/v1/ws``, docs/design/protocol.md "Agent protocol").

Every message is a :mod:`rampart.wire` struct, built and decoded there.

Handshake (:mod:`rampart.wire.handshake`): the server sends a fresh 32-byte
nonce; the agent answers ``hello`` with its device id and an Ed25519
signature by its device key over :func:`rampart.wire.auth_message`.
A bad signature or unknown device closes with 4401; a malformed hello with
4400. A newer connection of the same device replaces the older (4409).

Invariants:

* Nothing but a ``challenge`` is sent before the device proved its key.
* Pending devices are sent no job (S3); the connection still receives roots.
* Roots and then the tenant's grant revocations and job cancellations are sent
  before any job on every connection, and both are pushed at once when one is stored,
  so an agent refuses a revoked grant from its next job on (G4).
* Jobs go out one at a time per connection, each with proofs from the
  checkpoint size the agent reported; before the next job the gateway waits
  (bounded) for the agent to adopt the previous job's checkpoint or answer it,
  so each consistency proof starts where the agent actually is.
* A job is sent at most once per connection; undone jobs are re-sent on every
  reconnect (the agent's durable job-id store makes that safe, T15).
* Receipts are acknowledged only after they are committed (:mod:`.delivery`).
* Every agent message is size-limited and strictly typed; bad ones get an
  ``error`` reply, never a crash.
* Telemetry (docs/design/telemetry.md): after the revocations, every
  connection is sent its tenant's ``detection`` configuration (with the
  imported catalog when the agent's differs) and the stored inventory head;
  inventory reports are rate-limited per device, committed in batches by
  one writer (:mod:`.telemetry`) and acknowledged only after the commit.
* Budgets are per device, not per connection (:mod:`.device_budget`, threat
  T16): every message is charged to its device's byte budget before it is
  parsed, reports and check results to their count budgets; parallel or
  repeated connections share them. A device refused too often is
  disconnected and refused at the handshake for a back-off period (4429),
  and the operator is told by an alert naming it (rate-limited).
  Nothing the gateway sends for telemetry makes an agent act.
* Script check results (``check-result``, docs/design/script-checks.md) are
  bound to the connection's device, validated and rate-limited, and answered
  ``check-ack`` only after they are committed (or refused for good); the
  gateway never sends anything that starts or reschedules a check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from rampart.wire import (
    AckMessage,
    CancellationsMessage,
    Challenge,
    CheckAckMessage,
    CheckResultMessage,
    DetectionMessage,
    ErrorMessage,
    Hello,
    InventoryAckMessage,
    InventoryFullMessage,
    InventoryMessage,
    InventoryRequestMessage,
    Message,
    ReceiptMessage,
    RevocationsMessage,
    RootsMessage,
    StateMessage,
    Welcome,
    WireError,
    check_hello,
    decode_agent_message,
    decode_hello,
    encode_message,
    new_challenge,
)
from rampart.wire.admission import CLOSE_TRY_AGAIN, try_again_reason
from rampart.wire.limits import MAX_DETAIL_CHARS
from rampart.wire.session import (
    SessionAcceptMessage,
    SessionEndMessage,
    SessionFrameMessage,
    SessionRecordingMessage,
)

from . import clock
from .admission import Admission
from .config import ServerLimits
from .delivery import Delivery, DeliveryAsk, DeliveryStore, DeviceIdentity, ReceiptRefused, chunks
from .device_budget import DeviceBudgets
from .doorbell import Doorbell
from .memory import TrimAfterBurst
from .relay import SessionRelay
from .script_checks import ResultRefused, ScriptCheckStore
from .telemetry import Incoming, NotYet, Outcome, Refused, TelemetryStore

log = logging.getLogger("rampart.server.gateway")

CLOSE_BAD_MESSAGE = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_REPLACED = 4409
CLOSE_THROTTLED = 4429
#: The WebSocket close code for a frame over the size limit (RFC 6455 section 7.4.1).
CLOSE_TOO_BIG = 1009
#: A message the agent does not take within this long ends its connection (a device that never reads
#: would otherwise hold the sender, and its buffers, forever).
SEND_TIMEOUT_S = 30.0
#: Alert kinds the gateway raises about a device's own behaviour (docs/alerts.md).
ALERT_THROTTLED = "device-throttled"
ALERT_BLOCKED = "device-blocked"
ALERT_REPLACED = "device-connections"

WRITE_BATCH_MAX = 512


class _Slot:
    """A handshake slot of :class:`Admission`, given back once however the handshake ends."""

    def __init__(self, admission: Admission) -> None:
        self._admission: Admission | None = admission

    def release(self) -> None:
        if self._admission is not None:
            self._admission.leave()
            self._admission = None

#: After a burst of at least this many agent writes (receipts, sent marks) and a quiet second, the
#: heap the burst freed goes back to the system (rampart.server.memory): a fan-out's buffers do not
#: stay resident.
TRIM_AFTER_WRITES = 1000
TRIM_QUIET_S = 1.0
#: A wake of at least this many devices (a job's fan-out) looks their next jobs up together, in
#: chunks of BULK_WAKE_CHUNK (the first agents get their job while later chunks are looked up).
BULK_WAKE_MIN = 2
BULK_WAKE_CHUNK = 250
#: A pending bulk lookup: device id -> its next delivery (None: nothing to send).
_LookedUp = asyncio.Future[dict[str, Delivery | None]]
#: How every session message of an agent starts (msgspec writes the tag first): charged to its
#: session budget (rampart.server.relay), and refused unless it decodes as one.
_SESSION_PREFIX = '{"type":"session-'


@dataclass(frozen=True, slots=True)
class _Write:
    """One agent write for the group-commit queue: a receipt (with its waiter), a sent mark, or
    (``seen``) the device's last-seen time."""

    job_id: str
    device_id: str
    receipt: bytes | None = None
    done: asyncio.Future[bool | ReceiptRefused] | None = None
    seen: bool = False


@dataclass(frozen=True, slots=True)
class _Report:
    """One inventory report for the telemetry group-commit queue, with its waiter."""

    item: Incoming
    done: asyncio.Future[Outcome]


def _log_failed_lookup(fut: _LookedUp) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("looking up the next jobs of a fan-out chunk failed; its devices look up their own",
                  exc_info=fut.exception())


def _forget_task(conn: Connection, task: asyncio.Task[None]) -> None:
    """Drop a finished delivery task, so an idle connection holds no task at all."""
    if conn.deliverer is task:
        conn.deliverer = None


@dataclass(eq=False)
class Connection:
    """One authenticated agent connection and what the gateway knows of the agent's state."""

    ws: WebSocket
    device: DeviceIdentity
    root_version: int
    checkpoint_size: int
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: The delivery task while one runs; none for an idle agent (memory: one fewer task each).
    deliverer: asyncio.Task[None] | None = None
    #: Set when new work may have arrived while the delivery task was running.
    rescan: bool = False
    #: Set while the delivery task waits for the agent to answer; None otherwise.
    progress: asyncio.Event | None = None
    sent: set[str] = field(default_factory=set)
    answered: set[str] = field(default_factory=set)
    #: The imported catalog the agent holds, and the detection fingerprint it was last sent.
    catalog_sha256: str = ""
    detection: str = ""

    async def send(self, msg: Message) -> None:
        await self.send_text(encode_message(msg))

    async def send_text(self, text: str) -> None:
        """Send one message; an agent that stops reading for SEND_TIMEOUT_S loses its connection."""
        async with self.send_lock:
            try:  # asyncio.timeout, not wait_for: no task per message sent
                async with asyncio.timeout(SEND_TIMEOUT_S):
                    await self.ws.send_text(text)
            except TimeoutError:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.ws.close(CLOSE_THROTTLED), 5.0)
                raise


class Gateway:
    """Holds the live agent connections of this process and talks the protocol."""

    def __init__(self, delivery: DeliveryStore, limits: ServerLimits,
                 telemetry: TelemetryStore | None = None,
                 script_checks: ScriptCheckStore | None = None) -> None:
        self._db = delivery
        self.script_checks = script_checks
        self._limits = limits
        self._conns: dict[str, Connection] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writes: asyncio.Queue[_Write] | None = None
        self._writer: asyncio.Task[None] | None = None
        self.trimmer = TrimAfterBurst(min_units=TRIM_AFTER_WRITES, quiet_s=TRIM_QUIET_S)
        self.telemetry = telemetry
        self._reports: asyncio.Queue[_Report] | None = None
        self._report_writer: asyncio.Task[None] | None = None
        self._compact_due: set[str] = set()
        self._compactor: asyncio.Task[None] | None = None
        self.reports_stored = 0
        self.budgets = DeviceBudgets(limits.budget_limits())
        #: Handshakes at once and in line (admission.py): a reconnect storm is spread out.
        self.admission = Admission(limits.admission_limits())
        #: Messages refused by a device budget and devices blocked, since start (for benchmarks and tests).
        self.refused_count = 0
        self.blocked_count = 0
        #: Remote sessions (rampart.server.relay), set by the application.
        self.relay: SessionRelay | None = None
        #: The other nodes of a deployment (rampart.server.doorbell), when this one joined one.
        self.doorbell: Doorbell | None = None
        #: What the other nodes of a deployment said they hold: node -> (device ids, valid until).
        self._remote: dict[str, tuple[frozenset[str], float]] = {}

    async def send_to_device(self, device_id: str, text: str) -> bool:
        """Send one message to a connected agent; False when it is not connected (or the send failed)."""
        conn = self._conns.get(device_id)
        if conn is None:
            return False
        try:
            await conn.send_text(text)
        except Exception:  # noqa: BLE001 - the connection is ending; the session ends with it
            return False
        return True

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    async def disconnect(self, device_id: str) -> bool:
        """Close a device's live connection (it was retired); True when one was open."""
        conn = self._conns.pop(device_id, None)
        if conn is None:
            return False
        with contextlib.suppress(Exception):
            await conn.ws.close(CLOSE_UNAUTHENTICATED)
        return True

    def is_connected(self, device_id: str) -> bool:
        """Connected to this node or, in a deployment, to another (as it last said, :meth:`presence`)."""
        return device_id in self._conns or any(device_id in ids for ids in self._remote_now())

    def is_connected_here(self, device_id: str) -> bool:
        """Connected to this node: what a remote session's relay needs."""
        return device_id in self._conns

    def connected_count(self) -> int:
        return len(self._conns)

    def connected_ids(self) -> frozenset[str]:
        """The devices connected to this node and, in a deployment, to the others."""
        remote = self._remote_now()
        return frozenset(self._conns).union(*remote) if remote else frozenset(self._conns)

    def local_ids(self) -> list[str]:
        return list(self._conns)

    def presence(self, node: str, device_ids: frozenset[str], until: float) -> None:
        """Another node holds these connections (its latest full snapshot), valid until ``until``."""
        self._remote[node] = (device_ids, until)

    def _remote_now(self) -> list[frozenset[str]]:
        """The snapshots still valid (a node that stopped sending them, say it died, drops out);
        thread-safe: only the event loop writes ``_remote``, and this copies before reading."""
        if not self._remote:
            return []
        now = time.monotonic()
        return [ids for ids, until in list(self._remote.values()) if until >= now]

    # -- notifications from request threads ----------------------------------------

    def wake(self, device_ids: Iterable[str]) -> None:
        """New work may exist for these devices (thread-safe; call after the commit): here, and on
        every other node of the deployment."""
        ids = list(device_ids)
        self.wake_local(ids)
        if self.doorbell is not None:
            self.doorbell.ring_wake(ids)

    def wake_local(self, device_ids: list[str]) -> None:
        """Wake the devices connected to this node (thread-safe)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake_now, device_ids)

    def wake_tenant(self, tenant_id: str) -> None:
        """New work may be deliverable to every connected device of ``tenant_id`` (thread-safe):
        a checkpoint got the co-signatures its jobs waited for."""
        self.tenant_changed_local(tenant_id, "checkpoint")
        if self.doorbell is not None:
            self.doorbell.ring_tenant(tenant_id, "checkpoint")

    def tenant_changed_local(self, tenant_id: str, what: str) -> None:
        """Act here on a change of ``tenant_id`` that a node committed (thread-safe): forget the
        cached copy, then push it to the tenant's connections."""
        if what == "checkpoint":
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._wake_tenant_now, tenant_id)
        elif what == "roots":
            self._db.forget_tenant(tenant_id)
            if self._loop is not None:
                asyncio.run_coroutine_threadsafe(self._push_roots(tenant_id), self._loop)
        elif what == "revocations":
            self._publish(tenant_id, self._db.revocations, RevocationsMessage)
        elif what == "cancellations":
            self._publish(tenant_id, self._db.cancellations, CancellationsMessage)

    def _ring_tenant(self, tenant_id: str, what: str) -> None:
        self.tenant_changed_local(tenant_id, what)
        if self.doorbell is not None:
            self.doorbell.ring_tenant(tenant_id, what)

    def redeliver_all(self) -> None:
        """Look again for every connection of this node (thread-safe): after NATS comes back, and
        on the redelivery cadence, so a lost doorbell only delays a job."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(lambda: self._wake_now(list(self._conns)))

    async def redeliver_sweep(self) -> int:
        """:meth:`redeliver_all` from the event loop; returns how many connections were looked at."""
        ids = list(self._conns)
        self._wake_now(ids)
        return len(ids)

    def _wake_tenant_now(self, tenant_id: str) -> None:
        for conn in [c for c in self._conns.values() if c.device.tenant_id == tenant_id]:
            self._start_delivery(conn)

    def _wake_now(self, device_ids: list[str]) -> None:
        """Start delivery for each connected device; a fan-out to many idle connections looks up
        their next jobs together (DeliveryStore.next_deliveries), in chunks."""
        idle: list[Connection] = []
        for d in device_ids:
            conn = self._conns.get(d)
            if conn is None:
                continue
            if len(device_ids) < BULK_WAKE_MIN or (conn.deliverer is not None
                                                   and not conn.deliverer.done()):
                self._start_delivery(conn)
            else:
                idle.append(conn)
        for chunk in chunks(idle, BULK_WAKE_CHUNK):
            asks = [DeliveryAsk(c.device.device_id, frozenset(c.sent), c.checkpoint_size)
                    for c in chunk]
            looked_up = asyncio.ensure_future(asyncio.to_thread(self._db.next_deliveries, asks,
                                                                clock.now()))
            looked_up.add_done_callback(_log_failed_lookup)
            for conn in chunk:
                self._start_delivery(conn, looked_up)

    def _start_delivery(self, conn: Connection, looked_up: _LookedUp | None = None) -> None:
        """Run the delivery task for ``conn``, or tell the running one to look again.
        ``looked_up``: the pending bulk lookup that holds this device's first delivery."""
        if conn.deliverer is not None and not conn.deliverer.done():
            conn.rescan = True
            return
        conn.rescan = False
        task = asyncio.create_task(self._deliver(conn, looked_up))
        conn.deliverer = task
        task.add_done_callback(lambda t: _forget_task(conn, t))

    def roots_published(self, tenant_id: str) -> None:
        """Push a newly published root to the tenant's connected agents, on every node (thread-safe)."""
        self._ring_tenant(tenant_id, "roots")

    async def _push_roots(self, tenant_id: str) -> None:
        for conn in [c for c in self._conns.values() if c.device.tenant_id == tenant_id]:
            with contextlib.suppress(Exception):
                await self._send_roots(conn)

    def revocations_published(self, tenant_id: str) -> None:
        """Push the tenant's grant revocations to its connected agents, on every node (thread-safe)."""
        self._ring_tenant(tenant_id, "revocations")

    def cancellations_published(self, tenant_id: str) -> None:
        """Push the tenant's job cancellations to its connected agents, on every node (thread-safe)."""
        self._ring_tenant(tenant_id, "cancellations")

    def _publish(self, tenant_id: str, fetch: Callable[[str, float], list[str]],
                 message: type[RevocationsMessage] | type[CancellationsMessage]) -> None:
        self._db.forget_tenant(tenant_id)  # before the push: a connection after it reads the change
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._push_envelopes(tenant_id, fetch, message), self._loop)

    async def _push_envelopes(self, tenant_id: str, fetch: Callable[[str, float], list[str]],
                              message: type[RevocationsMessage] | type[CancellationsMessage]) -> None:
        """Send the tenant's current signed envelopes of one kind to each of its connected agents."""
        conns = [c for c in self._conns.values() if c.device.tenant_id == tenant_id]
        if not conns:
            return
        envelopes = await asyncio.to_thread(fetch, tenant_id, clock.now())
        text = encode_message(message(envelopes=envelopes))
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.send_text(text)

    async def _send_on_connect(self, conn: Connection) -> None:
        """On connect, before any job: newer roots, then the tenant's grant revocations and job
        cancellations (one read for the three)."""
        got = await asyncio.to_thread(self._db.on_connect, conn.device.tenant_id, conn.root_version,
                                      clock.now())
        if got.roots:
            await conn.send(RootsMessage(envelopes=got.roots))
        if got.revocations:
            await conn.send(RevocationsMessage(envelopes=got.revocations))
        if got.cancellations:
            await conn.send(CancellationsMessage(envelopes=got.cancellations))

    # -- one connection ------------------------------------------------------------

    # -- group commit ----------------------------------------------------------------

    def _write_queue(self) -> asyncio.Queue[_Write]:
        if self._writes is None or self._writer is None or self._writer.done():
            self._writes = asyncio.Queue()
            self._writer = asyncio.create_task(self._write_loop(self._writes))
        return self._writes

    async def _write_loop(self, queue: asyncio.Queue[_Write]) -> None:
        """Commit receipts and "sent" marks in batches: one transaction (one fsync) per batch.

        A receipt's future resolves only after its batch committed, so an ack
        is never sent for a receipt that is not durably stored.
        """
        while True:
            batch = [await queue.get()]
            while len(batch) < WRITE_BATCH_MAX and not queue.empty():
                batch.append(queue.get_nowait())
            receipts = [w for w in batch if w.receipt is not None]
            sent = [(w.job_id, w.device_id) for w in batch if w.receipt is None and not w.seen]
            seen = sorted({w.device_id for w in batch if w.seen})
            try:
                results = await asyncio.to_thread(
                    self._db.commit_batch,
                    [(w.device_id, w.job_id, w.receipt) for w in receipts if w.receipt is not None],
                    sent, clock.now(), seen)
            except Exception as exc:  # the store failed: every waiter learns it
                log.exception("committing a batch of %d agent writes failed", len(batch))
                for w in receipts:
                    if w.done is not None and not w.done.done():
                        w.done.set_exception(exc)
                continue
            for w, res in zip(receipts, results, strict=True):
                if w.done is not None and not w.done.done():
                    w.done.set_result(res)
            self.trimmer.note(len(batch))

    async def serve(self, ws: WebSocket) -> None:
        await ws.accept()
        got = await self._hello(ws)
        if got is None:
            return
        if not await self.admission.enter():  # a reconnect storm: this one comes back later
            await self._close(ws, CLOSE_TRY_AGAIN, try_again_reason(self.admission.retry_after_s()))
            return
        slot = _Slot(self.admission)
        try:
            await self._serve_admitted(ws, *got, slot)
        finally:
            slot.release()

    async def _serve_admitted(self, ws: WebSocket, challenge: Challenge, hello: Hello, slot: _Slot) -> None:
        """One connection past its hello, holding a handshake slot until its on-connect sends are done."""
        conn = await self._identify(ws, challenge, hello)
        if conn is None:
            return
        device_id = conn.device.device_id
        old = self._conns.get(device_id)
        self._conns[device_id] = conn
        if old is not None:
            with contextlib.suppress(Exception):
                await old.ws.close(CLOSE_REPLACED)
            if await self._on_replaced(conn):
                if self._conns.get(device_id) is conn:
                    del self._conns[device_id]
                await self._close(ws, CLOSE_THROTTLED)
                return
        try:
            await conn.send(Welcome(status="approved" if conn.device.approved else "pending"))
            await self._send_on_connect(conn)
            await self._send_detection(conn)
            slot.release()  # the handshake is done: the next agent in line may start its own
            self._start_delivery(conn)
            await self._receive(conn)
        except WebSocketDisconnect as exc:
            if exc.code == CLOSE_TOO_BIG:  # the transport refused a frame over the size limit
                await self._refuse(conn, "a message over the size limit")
        except Exception:  # a database or protocol fault ends this connection only
            log.exception("agent connection %s failed", device_id)
            await self._close(ws, 1011)
        finally:
            if conn.deliverer is not None:
                conn.deliverer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await conn.deliverer
            if self._conns.get(device_id) is conn:
                del self._conns[device_id]
            if self.relay is not None:
                self.relay.device_left(device_id, conn)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._db.touch, device_id, clock.now())

    async def _hello(self, ws: WebSocket) -> tuple[Challenge, Hello] | None:
        """The challenge sent and a well-formed hello read (no lookup yet: it costs no slot)."""
        challenge = new_challenge()
        await ws.send_text(encode_message(challenge))
        try:
            async with asyncio.timeout(self._limits.hello_timeout_s):
                text = await self._receive_text(ws)
            hello = decode_hello(text) if text is not None else None
        except (TimeoutError, WireError, WebSocketDisconnect):
            hello = None
        if hello is None:
            await self._close(ws, CLOSE_BAD_MESSAGE)
            return None
        if self.budgets.blocked_for(hello.device, time.monotonic()) > 0:
            # Refused before any lookup: a blocked device's reconnections cost no database work.
            await self._close(ws, CLOSE_THROTTLED)
            return None
        return challenge, hello

    async def _identify(self, ws: WebSocket, challenge: Challenge, hello: Hello) -> Connection | None:
        """The device behind a hello, verified against its stored key; None: refused and closed."""
        device = await asyncio.to_thread(self._db.identity, hello.device)
        if device is None or not check_hello(device.public, challenge, hello):
            await self._close(ws, CLOSE_UNAUTHENTICATED)
            return None
        if device.status in ("rejected", "retired", "archived"):
            # Told once, then refused: the agent stops reconnecting (rampart.agent.connection).
            with contextlib.suppress(Exception):
                await ws.send_text(encode_message(Welcome(status=device.status)))  # type: ignore[arg-type]
            await self._close(ws, CLOSE_UNAUTHENTICATED)
            return None
        self._seen(device.device_id)
        return Connection(ws, device, hello.root_version, hello.checkpoint_size,
                          catalog_sha256=hello.catalog_sha256)

    async def _receive_text(self, ws: WebSocket) -> str | None:
        msg = await ws.receive()
        if msg["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(msg.get("code", 1000))
        text = msg.get("text")
        if not isinstance(text, str) or len(text) > self._limits.max_ws_message_bytes:
            return None
        return text

    @staticmethod
    async def _close(ws: WebSocket, code: int, reason: str = "") -> None:
        if ws.application_state != WebSocketState.DISCONNECTED:
            with contextlib.suppress(Exception):
                await ws.close(code, reason) if reason else await ws.close(code)

    async def _send_roots(self, conn: Connection) -> None:
        roots = await asyncio.to_thread(self._db.roots_after, conn.device.tenant_id,
                                        conn.root_version)
        if roots:
            await conn.send(RootsMessage(envelopes=roots))

    async def _receive(self, conn: Connection) -> None:
        last_touch = time.monotonic()
        device_id = conn.device.device_id
        while True:
            text = await self._receive_text(conn.ws)
            if text is None:
                if await self._refuse(conn, "expected a JSON text frame within the size limit"):
                    return
                continue
            session_traffic = text.startswith(_SESSION_PREFIX) and self.relay is not None
            if session_traffic:
                assert self.relay is not None
                if not self.relay.charge(device_id, len(text)):
                    if await self._refuse(conn, "this device sends more session traffic than its budget"):
                        return
                    continue
            elif not self.budgets.charge_bytes(device_id, len(text), time.monotonic()):
                # Over the device's byte budget: refused before it is parsed.
                if await self._refuse(conn, "this device sends more than its byte budget; "
                                            "messages are refused until it slows down"):
                    return
                continue
            try:
                msg = decode_agent_message(text, max_bytes=self._limits.max_ws_message_bytes)
            except WireError as exc:
                if await self._refuse(conn, f"bad message: {exc.detail}"[:MAX_DETAIL_CHARS]):
                    return
                continue
            if isinstance(msg, StateMessage):
                conn.root_version = msg.root_version
                conn.checkpoint_size = msg.checkpoint_size
            elif isinstance(msg, InventoryMessage):
                if not await self._on_inventory(conn, msg):
                    return
            elif isinstance(msg, CheckResultMessage):
                if not await self._on_check_result(conn, msg):
                    return
            elif isinstance(msg, (SessionAcceptMessage, SessionFrameMessage, SessionEndMessage,
                                  SessionRecordingMessage)):
                if not session_traffic or not await self._on_session(conn, text, msg):
                    if await self._refuse(conn, "a session message for no live session of this device"):
                        return
                    continue
            else:
                await self._on_receipt(conn, msg)
            if conn.progress is not None:
                conn.progress.set()
            if time.monotonic() - last_touch > 30:
                last_touch = time.monotonic()
                self._seen(device_id)

    def _seen(self, device_id: str) -> None:
        """Record that the device is in contact now, in the next group commit (a connect or a
        message costs no transaction of its own: 10,000 agents connecting are a few commits)."""
        self._write_queue().put_nowait(_Write("", device_id, seen=True))

    async def _on_receipt(self, conn: Connection, msg: ReceiptMessage) -> None:
        done: asyncio.Future[bool | ReceiptRefused] = asyncio.get_running_loop().create_future()
        await self._write_queue().put(_Write(msg.job_id, conn.device.device_id,
                                             msg.receipt.encode(), done))
        result = await done
        if isinstance(result, ReceiptRefused):
            await conn.send(ErrorMessage(job_id=msg.job_id, detail=str(result)[:MAX_DETAIL_CHARS]))
            return
        if msg.checkpoint_size is not None:
            conn.checkpoint_size = msg.checkpoint_size
        conn.answered.add(msg.job_id)
        if self.relay is not None:
            self.relay.receipt_stored(msg.job_id, msg.receipt)
        await conn.send(AckMessage(job_id=msg.job_id))

    async def _on_session(self, conn: Connection, text: str, msg: SessionAcceptMessage | SessionFrameMessage
                          | SessionEndMessage | SessionRecordingMessage) -> bool:
        """Relay a session message or take a recording chunk; False when it belongs to no session here."""
        assert self.relay is not None
        if isinstance(msg, SessionRecordingMessage):
            ack = await self.relay.recording(conn.device.device_id, msg)
            if ack is not None:
                await conn.send(ack)
            return True
        return await self.relay.from_device(conn.device.device_id, text, msg, via=conn)

    async def _on_check_result(self, conn: Connection, msg: CheckResultMessage) -> bool:
        """Store one script check result (bound to this device), then acknowledge it.

        False when the device was blocked for abuse and its connection closed."""
        if self.script_checks is None:
            await conn.send(ErrorMessage(detail="this server does not accept script check results"))
            return True
        if not self.budgets.take(conn.device.device_id, "check", time.monotonic()):
            return not await self._refuse(conn, "script check results are too frequent")
        try:
            await asyncio.to_thread(self.script_checks.ingest, conn.device.device_id,
                                    conn.device.tenant_id, msg.seq, msg.result, clock.now())
        except ResultRefused as exc:
            log.info("script check result from %s refused: %s", conn.device.device_id, exc)
            # Refused for good: acknowledged so the agent drops it, and said why.
            await conn.send(CheckAckMessage(seq=msg.seq, refused=str(exc)[:MAX_DETAIL_CHARS]))
            return True
        except Exception:  # the store failed: not acknowledged, the agent sends it again later
            log.exception("storing a script check result from %s failed", conn.device.device_id)
            await conn.send(ErrorMessage(detail="the server could not store the result now"))
            return True
        await conn.send(CheckAckMessage(seq=msg.seq))
        return True

    # --- a device's budget (threat T16) -------------------------------------------------------------

    async def _refuse(self, conn: Connection, detail: str) -> bool:
        """Refuse one message: tell the device, count it, tell the operator (rate-limited).

        Returns True when the device crossed the abuse threshold: it is then
        blocked for a back-off period and this connection is closed (4429).
        """
        device = conn.device
        now_m = time.monotonic()
        verdict = self.budgets.refused(device.device_id, now_m)
        self.refused_count += 1
        with contextlib.suppress(Exception):
            await conn.send(ErrorMessage(detail=detail[:MAX_DETAIL_CHARS]))
        if verdict == "block":
            self.blocked_count += 1
            blocked = self.budgets.blocked_for(device.device_id, now_m)
            log.warning("device %s disconnected for %.0f s: %d refused messages in %.0f s", device.device_id,
                        blocked, self._limits.abuse_refusals, self._limits.abuse_window_s)
            if self.budgets.should_alert(device.device_id, ALERT_BLOCKED, now_m):
                await self._device_alert(
                    device, ALERT_BLOCKED, "critical", "disconnected: it sent more than its budget",
                    f"{self._limits.abuse_refusals} messages refused within "
                    f"{self._limits.abuse_window_s:.0f} s "
                    f"(last: {detail[:120]}); its connections are refused for {blocked:.0f} s, "
                    "longer each time it happens again")
            await self._close(conn.ws, CLOSE_THROTTLED)
            return True
        if self.budgets.should_alert(device.device_id, ALERT_THROTTLED, now_m):
            await self._device_alert(device, ALERT_THROTTLED, "warning",
                                     "throttled: it sends more than its budget",
                                     f"a message was refused: {detail[:200]}")
        return False

    async def _on_replaced(self, conn: Connection) -> bool:
        """A newer connection replaced an older one of the same device: logged, alerted when it repeats.

        Past ``replacements_alert`` in the window each replacement also counts
        as a refusal (a handshake costs the server a signature check and
        several reads), so churning connections ends in a block like any flood:
        True when this connection must be closed for it.
        """
        device = conn.device
        now_m = time.monotonic()
        n = self.budgets.replaced(device.device_id, now_m)
        log.warning("device %s: a new connection replaced the previous one (%d in %.0f s)",
                    device.device_id, n, self._limits.abuse_window_s)
        if n < self.budgets.limits.replacements_alert:
            return False
        if self.budgets.should_alert(device.device_id, ALERT_REPLACED, now_m):
            await self._device_alert(
                device, ALERT_REPLACED, "warning", "connections keep replacing each other",
                f"{n} connections with this device's key within {self._limits.abuse_window_s:.0f} s: "
                "the device key may be in use on more than one machine")
        return await self._refuse(conn, "this device opens connections too often")

    async def _device_alert(self, device: DeviceIdentity, kind: str, severity: Literal["warning", "critical"],
                            what: str, detail: str) -> None:
        if self.telemetry is None:
            return
        try:
            await asyncio.to_thread(self.telemetry.device_alert, device.device_id, device.tenant_id, kind,
                                    severity, what, detail, clock.now())
        except Exception:  # an alert that cannot be written must not end the connection
            log.exception("raising a %s alert for %s failed", kind, device.device_id)

    async def _deliver(self, conn: Connection, looked_up: _LookedUp | None = None) -> None:
        """Send undone jobs one by one; on a fault, close so the agent reconnects and retries."""
        try:
            await self._deliver_loop(conn, looked_up)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivery to %s failed", conn.device.device_id)
            await self._close(conn.ws, 1011)

    async def _deliver_loop(self, conn: Connection, looked_up: _LookedUp | None = None) -> None:
        """Send undone jobs one by one; end when there are none (a wake starts it again)."""
        while True:
            conn.rescan = False
            delivery = await self._first_delivery(conn, looked_up)
            looked_up = None
            if delivery is None:
                if conn.rescan:  # woken while we looked: look again
                    continue
                return
            if delivery.held_until:  # waits for outside witnesses: a co-signature or the deadline wakes it
                delay = max(0.1, delivery.held_until - clock.now())
                asyncio.get_running_loop().call_later(delay, self._retry_delivery, conn)
                return
            await conn.send_text(delivery.text)
            conn.sent.add(delivery.job_id)
            self._write_queue().put_nowait(_Write(delivery.job_id, conn.device.device_id))
            await self._await_progress(conn, delivery)
            if not delivery.more and not conn.rescan:
                return  # nothing else was pending and no new job woke us: no need to ask again

    async def _first_delivery(self, conn: Connection, looked_up: _LookedUp | None) -> Delivery | None:
        """This device's answer from the bulk lookup it was woken with, else its own lookup (also
        when the bulk one failed: one bad chunk must not end its connections)."""
        device_id = conn.device.device_id
        if looked_up is not None:
            # Other connections wait on it too: asyncio.wait never cancels it, even when this task
            # is cancelled. A failed lookup is logged once, by _log_failed_lookup.
            await asyncio.wait([looked_up])
            if not looked_up.cancelled() and looked_up.exception() is None:
                found = looked_up.result()
                if device_id in found:
                    return found[device_id]
        return await asyncio.to_thread(self._db.next_delivery, device_id, set(conn.sent),
                                       conn.checkpoint_size, clock.now())

    def _retry_delivery(self, conn: Connection) -> None:
        if self._conns.get(conn.device.device_id) is conn:
            self._start_delivery(conn)

    async def _await_progress(self, conn: Connection, delivery: Delivery) -> None:
        deadline = time.monotonic() + self._limits.delivery_progress_timeout_s
        conn.progress = progress = asyncio.Event()
        try:
            while (conn.checkpoint_size < delivery.checkpoint_size
                   and delivery.job_id not in conn.answered):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                progress.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await progress.wait()
        finally:
            conn.progress = None

    # -- telemetry (docs/design/telemetry.md) ------------------------------------------

    def _detection_text(self, sanctioned: list[str], days: int, catalog_sha: str, blob: str | None) -> str:
        return encode_message(DetectionMessage(sanctioned=sanctioned, dormant_days=days,
                                               catalog_sha256=catalog_sha, catalog=blob))

    async def _send_detection(self, conn: Connection) -> None:
        """The tenant's detection configuration and the stored inventory head, on every connection."""
        if self.telemetry is None:
            return
        sanctioned, days, info, head = await asyncio.to_thread(
            self.telemetry.on_connect, conn.device.tenant_id, conn.device.device_id)
        sha = info.sha256 if info is not None else ""
        blob = info.blob if info is not None and conn.catalog_sha256 != sha else None
        await conn.send_text(self._detection_text(sanctioned, days, sha, blob))
        conn.catalog_sha256 = sha
        conn.detection = TelemetryStore.fingerprint(sanctioned, days, sha)
        if head is not None:
            await conn.send(InventoryAckMessage(result=head))

    def detection_changed(self) -> None:
        """A tenant's sanctioned tools or the imported catalog changed: push it, on every node
        (thread-safe)."""
        self.detection_changed_local()
        if self.doorbell is not None:
            self.doorbell.ring_detection()

    def detection_changed_local(self) -> None:
        """Forget the cached detection settings and push what changed to this node's connections."""
        if self.telemetry is not None:
            self.telemetry.forget_detection()  # before the push: a connection after it reads the change
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self.recheck_detection(), self._loop)

    async def recheck_detection(self) -> int:
        """Send every connection whose detection configuration changed its new one; return how many."""
        if self.telemetry is None or not self._conns:
            return 0
        configs, info = await asyncio.to_thread(self.telemetry.detection_configs)
        sha = info.sha256 if info is not None else ""
        texts: dict[tuple[str, bool], str] = {}
        pushed = 0
        for conn in list(self._conns.values()):
            sanctioned, days = configs.get(conn.device.tenant_id, ([], 30))
            fp = TelemetryStore.fingerprint(sanctioned, days, sha)
            if conn.detection == fp:
                continue
            with_catalog = info is not None and conn.catalog_sha256 != sha
            key = (conn.device.tenant_id, with_catalog)
            if key not in texts:
                texts[key] = self._detection_text(sanctioned, days, sha,
                                                  info.blob if with_catalog and info is not None else None)
            with contextlib.suppress(Exception):
                await conn.send_text(texts[key])
                conn.catalog_sha256, conn.detection = sha, fp
                pushed += 1
        return pushed

    def request_inventory(self, device_id: str, *, full: bool = False) -> bool:
        """Ask a connected agent for an inventory now (thread-safe): through this node, or the node
        of the deployment that holds it; False if it is connected nowhere."""
        if self._request_here(device_id, full):
            return True
        if self.doorbell is None or not self.is_connected(device_id):
            return False
        self.doorbell.ring_inventory([device_id], full)
        return True

    def inventory_local(self, device_ids: list[str], full: bool) -> None:
        """Another node asked for these devices' inventories: those connected here are asked."""
        for device_id in device_ids:
            self._request_here(device_id, full)

    def _request_here(self, device_id: str, full: bool) -> bool:
        conn = self._conns.get(device_id)
        if conn is None or self._loop is None:
            return False
        msg = InventoryFullMessage() if full else InventoryRequestMessage()
        asyncio.run_coroutine_threadsafe(self._send_quietly(device_id, msg), self._loop)
        return True

    async def _send_quietly(self, device_id: str, msg: Message) -> None:
        conn = self._conns.get(device_id)
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.send(msg)

    async def _on_inventory(self, conn: Connection, msg: InventoryMessage) -> bool:
        """Queue one report for the group commit and answer after it; False when the device was blocked."""
        if self.telemetry is None:
            await conn.send(ErrorMessage(detail="this server does not accept telemetry"))
            return True
        if not self.budgets.take(conn.device.device_id, "report", time.monotonic()):
            return not await self._refuse(conn, "inventory reports are too frequent; "
                                                "the next scheduled one will be accepted")
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        item = Incoming(conn.device.device_id, conn.device.tenant_id, msg.report, msg.result, msg.base)
        await self._report_queue().put(_Report(item, done))
        try:
            outcome = await done
        except Exception:  # the store failed: the agent keeps its snapshot and reports again
            await conn.send(ErrorMessage(detail="the server could not store the inventory now"))
            return True
        if outcome == "stored":
            await conn.send(InventoryAckMessage(result=msg.result))
        elif outcome == "full":
            await conn.send(InventoryFullMessage())
        elif isinstance(outcome, NotYet):
            await conn.send(ErrorMessage(detail=f"inventory refused: {outcome}"[:MAX_DETAIL_CHARS]))
        else:
            return not await self._refuse(conn, f"inventory refused: {outcome}"[:MAX_DETAIL_CHARS])
        return True

    def _report_queue(self) -> asyncio.Queue[_Report]:
        if self._reports is None or self._report_writer is None or self._report_writer.done():
            self._reports = asyncio.Queue()
            self._report_writer = asyncio.create_task(self._report_loop(self._reports))
        return self._reports

    async def _report_loop(self, queue: asyncio.Queue[_Report]) -> None:
        """Commit inventory reports in batches; each waiter learns its outcome after the commit."""
        assert self.telemetry is not None
        while True:
            batch = [await queue.get()]
            while len(batch) < WRITE_BATCH_MAX and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                outcomes, due = await asyncio.to_thread(
                    self.telemetry.ingest_batch, [r.item for r in batch], clock.now())
            except Exception as exc:
                log.exception("committing a batch of %d inventory reports failed", len(batch))
                for r in batch:
                    if not r.done.done():
                        r.done.set_exception(exc)
                continue
            for r, outcome in zip(batch, outcomes, strict=True):
                if not r.done.done():
                    r.done.set_result(outcome)
                if outcome == "stored":
                    self.reports_stored += 1
                elif isinstance(outcome, Refused):
                    log.info("inventory from %s refused: %s", r.item.device_id, outcome)
            if due:
                self._compact_due |= due
                if self._compactor is None or self._compactor.done():
                    self._compactor = asyncio.create_task(self._compact_loop())

    async def _compact_loop(self) -> None:
        """Fold pending deltas into snapshots in the background, one device at a time."""
        assert self.telemetry is not None
        while self._compact_due:
            device_id = self._compact_due.pop()
            try:
                refetch = await asyncio.to_thread(self.telemetry.compact, device_id, clock.now())
            except Exception:
                log.exception("materialising the inventory of %s failed", device_id)
                continue
            if refetch:
                await self._send_quietly(device_id, InventoryFullMessage())
