"""The session relay: ciphertext between a technician's CLI and an agent, and the recordings after.

docs/design/remote-sessions.md. The server holds no session key: it routes
``session-*`` messages by job id and counts bytes. It cannot read, alter,
inject or replay a frame without the two ends noticing (the seal is checked
there, not here).

Invariants:

* A channel exists only for a stored ``shell`` job targeting the device that
  speaks for it, and only the account that submitted the job may attach as
  its technician side (one at a time).
* Frames from a device go only to its own job's channel; a device's session
  traffic is charged to its own session budget (T16), and a device that sends
  session messages for jobs that are not its live sessions is refused like
  any other bad message.
* Memory is bounded: each channel queues at most :data:`QUEUE_FRAMES`
  messages; a technician side that stops reading for :data:`STALL_S` loses
  the channel (the device is told, and ends the session). A channel lives
  from the device's accept or the technician's attach until its session is
  answered (the receipt) or its technician leaves; frames that arrive for a
  session nobody holds any more are dropped, never queued.
* No technician waits on a dead session: when the device connection that
  carried a session's accept closes, or the device's receipt for the session
  is stored, the channel is told (``device-lost`` / ``device-ended``) and
  closed, after the frames already queued.
* A recording is stored only when its SHA-256 and size equal the ones the
  device signed in the session's receipt; its digest goes into the tenant's
  audit log.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec
from sqlalchemy import select

from rampart.trust import JOB_TYPE, Job, Receipt, decode_envelope, decode_payload
from rampart.wire import encode_message
from rampart.wire.session import (
    RecordingAckMessage,
    RelayNotice,
    SessionAcceptMessage,
    SessionCloseMessage,
    SessionEndMessage,
    SessionFrameMessage,
    SessionRecordingMessage,
)

from . import clock
from .models import JobRow, JobTarget, ReceiptRow, SessionRecording

if TYPE_CHECKING:
    from .audit import AuditLog
    from .db import Store

log = logging.getLogger("rampart.server")

__all__ = ["Channel", "RelayRefused", "SessionRelay"]

#: Messages queued towards one technician side.
QUEUE_FRAMES = 256
#: Seconds a technician side may leave its queue full before the channel is dropped.
STALL_S = 15.0
#: Largest recording accepted (the agent keeps at most 64 MiB; base64 is not counted here).
MAX_RECORDING_BYTES = 64 << 20
#: A device's session traffic: sustained bytes per second, and burst.
SESSION_BYTES_PER_S = 256 << 20
SESSION_BYTES_BURST = 512 << 20


class RelayRefused(Exception):
    """A technician may not attach to this job's relay (the reason is safe to show)."""


@dataclass(eq=False)
class Channel:
    """One session's relay state."""

    job_id: str
    tenant_id: str
    device_id: str
    account_id: int | None
    to_operator: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(QUEUE_FRAMES))
    attached: bool = False
    ended: str = ""
    #: The device's refusal of the session job, once its receipt said so.
    refusal: str = ""
    bytes_up: int = 0
    bytes_down: int = 0
    frames: int = 0
    opened_at: float = field(default_factory=time.time)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    #: The device connection that carried the accept (its session dies with it), else None.
    via: object | None = None


@dataclass
class _Upload:
    device_id: str
    data: bytearray = field(default_factory=bytearray)


class SessionRelay:
    """Routes session messages between technician sockets and agent connections."""

    def __init__(self, store: Store, audit: AuditLog,
                 send_to_device: Callable[[str, str], Awaitable[bool]]) -> None:
        self._store = store
        self._audit = audit
        #: ``async (device_id, text) -> bool``: the gateway's send to a connected agent.
        self._send_to_device = send_to_device
        self.channels: dict[str, Channel] = {}
        self._uploads: dict[str, _Upload] = {}
        self._budget: dict[str, tuple[float, float]] = {}

    # --- lookups -----------------------------------------------------------------------------------

    def _session_job(self, job_id: str) -> tuple[JobRow, Job, str] | None:
        """The stored shell job and its one target device, or None."""
        with self._store.read() as s:
            row = s.get(JobRow, job_id)
            if row is None or row.kind != "shell":
                return None
            target = s.scalars(select(JobTarget.device_id).where(JobTarget.job_id == job_id)).first()
        if target is None:
            return None
        job = decode_payload(decode_envelope(row.envelope, expect_type=JOB_TYPE).payload, Job)
        return row, job, target

    def _receipt_of(self, job_id: str, device_id: str) -> Receipt | None:
        with self._store.read() as s:
            rc = s.get(ReceiptRow, (job_id, device_id))
        if rc is None:
            return None
        return decode_payload(decode_envelope(rc.envelope).payload, Receipt)

    def charge(self, device_id: str, size: int) -> bool:
        """Charge ``size`` bytes of session traffic to the device's session budget."""
        now = time.monotonic()
        tokens, at = self._budget.get(device_id, (float(SESSION_BYTES_BURST), now))
        tokens = min(float(SESSION_BYTES_BURST), tokens + (now - at) * SESSION_BYTES_PER_S)
        if tokens < size:
            self._budget[device_id] = (tokens, now)
            return False
        self._budget[device_id] = (tokens - size, now)
        return True

    # --- the technician side -----------------------------------------------------------------------

    async def open_for_operator(self, job_id: str, account_id: int,
                                tenants: frozenset[str] | None) -> Channel:
        """The channel a technician may attach to, or :class:`RelayRefused`."""
        found = await asyncio.to_thread(self._session_job, job_id)
        if found is None or (tenants is not None and found[0].tenant_id not in tenants):
            raise RelayRefused("no such session")
        row, _, device_id = found
        if row.account_id != account_id:
            raise RelayRefused("only the account that submitted the session job may open it")
        ch = self.channels.get(job_id)
        if ch is None:
            ch = self.channels[job_id] = Channel(job_id, row.tenant_id, device_id, row.account_id)
        if ch.attached:
            raise RelayRefused("this session is already open elsewhere")
        # Attached before the receipt is read: a receipt stored from here on finds this channel
        # (receipt_stored), and one stored before is in the read below. Either way no answer is lost.
        ch.attached = True
        try:
            answered = await asyncio.to_thread(self._receipt_of, job_id, device_id)
        except BaseException:
            ch.attached = False
            raise
        if answered is None and not ch.ended:
            return ch
        ch.attached = False
        self.channels.pop(job_id, None)
        if answered is not None and answered.outcome == "refused" and isinstance(answered.session,
                                                                                  msgspec.UnsetType):
            raise RelayRefused(f"the device refused the session job: {answered.refusal}: {answered.detail}")
        if ch.refusal:
            raise RelayRefused(f"the device refused the session job: {ch.refusal}")
        raise RelayRefused(f"this session has ended ({ch.ended or 'answered'})")

    async def from_operator(self, ch: Channel, text: str,
                            msg: SessionFrameMessage | SessionCloseMessage) -> bool:
        """Forward one technician message to the device; False when the device is not connected."""
        if msg.job_id != ch.job_id:
            return True  # another session's id on this socket: dropped
        ch.bytes_up += len(text)
        ch.frames += 1
        return await self._send_to_device(ch.device_id, text)

    async def operator_left(self, ch: Channel) -> None:
        """The technician's socket closed: tell the device, and forget the channel once it ended."""
        ch.attached = False
        if not ch.ended:
            with contextlib.suppress(Exception):
                await self._send_to_device(ch.device_id, encode_message(
                    SessionCloseMessage(job_id=ch.job_id, reason="relay-lost")))
        self.channels.pop(ch.job_id, None)
        await asyncio.to_thread(self._audit_relayed, ch)

    def _audit_relayed(self, ch: Channel) -> None:
        now = clock.now()
        with self._store.transaction() as s:
            self._audit.record(s, [ch.tenant_id], "session.relayed", "server", {
                "job": ch.job_id, "device": ch.device_id, "end": ch.ended or "relay-lost",
                "bytes_up": ch.bytes_up, "bytes_down": ch.bytes_down,
                "seconds": round(time.time() - ch.opened_at, 1)}, now)

    def notice(self, ch: Channel, status: str, detail: str = "") -> None:
        with contextlib.suppress(asyncio.QueueFull):
            ch.to_operator.put_nowait(encode_message(RelayNotice(job_id=ch.job_id, status=status,
                                                                 detail=detail[:300])))

    # --- the device side ---------------------------------------------------------------------------

    async def from_device(self, device_id: str, text: str,
                          msg: SessionAcceptMessage | SessionFrameMessage | SessionEndMessage,
                          via: object | None = None) -> bool:
        """Route one device message to its session's technician; False: not a live session of this device.

        ``via`` is the device connection it came over: a session accepted over it ends when it closes
        (:meth:`device_left`)."""
        ch = self.channels.get(msg.job_id)
        if ch is None:
            found = await asyncio.to_thread(self._session_job, msg.job_id)
            if found is None or found[2] != device_id:
                return False
            if not isinstance(msg, SessionAcceptMessage):
                return True  # a late frame of a session whose technician left: dropped
            row, _, _ = found
            ch = self.channels.setdefault(msg.job_id, Channel(msg.job_id, row.tenant_id, device_id,
                                                              row.account_id))
        if ch.device_id != device_id:
            return False
        if isinstance(msg, SessionAcceptMessage):
            ch.via = via
        ch.bytes_down += len(text)
        if isinstance(msg, SessionEndMessage):
            ch.ended = msg.reason
        if ch.closed.is_set():
            return True  # the channel is closing: nobody reads what would be queued
        try:
            await asyncio.wait_for(ch.to_operator.put(text), STALL_S)
        except TimeoutError:
            log.info("session %s: the technician side stopped reading; closing it", ch.job_id)
            ch.ended = ch.ended or "relay-stalled"
            ch.closed.set()
            return True
        if isinstance(msg, SessionEndMessage):
            ch.closed.set()
        return True

    def device_left(self, device_id: str, via: object) -> None:
        """The device connection ``via`` closed: every session it carried is over for its technician.

        The agent ends those sessions itself (``relay-lost``); their last frames cannot arrive, so
        the technician is told and the channel closed rather than left waiting."""
        for ch in list(self.channels.values()):
            if ch.device_id != device_id or ch.via is not via or ch.via is None:
                continue
            if ch.ended or ch.closed.is_set():
                continue
            self.notice(ch, "device-lost", f"{device_id} disconnected; the session ended with its connection")
            self._end(ch, "device-lost")

    def _end(self, ch: Channel, reason: str) -> None:
        """End ``ch``: its technician side is closed after what is queued; nobody waiting, it goes."""
        ch.ended = ch.ended or reason
        ch.closed.set()
        if not ch.attached:
            self.channels.pop(ch.job_id, None)

    def receipt_stored(self, job_id: str, envelope: str) -> None:
        """A device answered a session job: its session is over. A refusal is told to the waiting
        technician; any other answer closes the channel after the frames already queued (they came
        over the same ordered connection, before the receipt)."""
        ch = self.channels.get(job_id)
        if ch is None:
            return
        if ch.ended:
            self._end(ch, ch.ended)
            return
        try:
            r = decode_payload(decode_envelope(envelope.encode()).payload, Receipt)
        except Exception:  # noqa: BLE001 - the receipt was verified when stored; nothing to tell
            return
        if r.outcome == "refused" and isinstance(r.session, msgspec.UnsetType):
            ch.refusal = f"{r.refusal}: {r.detail}"
            self.notice(ch, "device-refused", ch.refusal)
            ch.ended = "refused"
            ch.closed.set()
            return
        end = r.session.end if not isinstance(r.session, msgspec.UnsetType) else r.outcome
        self.notice(ch, "device-ended", f"the device answered the session job: {end} {r.detail}".strip())
        self._end(ch, end)

    # --- recordings --------------------------------------------------------------------------------

    async def recording(self, device_id: str, msg: SessionRecordingMessage) -> RecordingAckMessage | None:
        """Take one chunk; on the last one store the recording if it matches the signed receipt.

        None while chunks are still expected; an ack (stored, or refused for good) at the end.
        """
        up = self._uploads.get(msg.job_id)
        if msg.offset == 0:
            up = self._uploads[msg.job_id] = _Upload(device_id)
        if up is None or up.device_id != device_id or msg.offset != len(up.data):
            self._uploads.pop(msg.job_id, None)
            return RecordingAckMessage(job_id=msg.job_id, refused="recording chunks out of order")
        try:
            up.data += base64.b64decode(msg.data, validate=True)
        except (binascii.Error, ValueError):
            self._uploads.pop(msg.job_id, None)
            return RecordingAckMessage(job_id=msg.job_id, refused="a recording chunk is not base64")
        if len(up.data) > MAX_RECORDING_BYTES:
            self._uploads.pop(msg.job_id, None)
            return RecordingAckMessage(job_id=msg.job_id, refused="the recording is over the size limit")
        if not msg.last:
            return None
        self._uploads.pop(msg.job_id, None)
        for _ in range(50):  # the receipt is committed by the gateway's writer, maybe just after
            refused = await asyncio.to_thread(self._store_recording, device_id, msg.job_id, bytes(up.data))
            if refused != "no receipt":
                break
            await asyncio.sleep(0.1)
        return RecordingAckMessage(job_id=msg.job_id, refused=refused or "")

    def _store_recording(self, device_id: str, job_id: str, data: bytes) -> str | None:
        """Store ``data`` as ``job_id``'s recording; None when stored, else why not."""
        sha = hashlib.sha256(data).hexdigest()
        now = clock.now()
        with self._store.transaction() as s:
            row = s.get(JobRow, job_id)
            rc = s.get(ReceiptRow, (job_id, device_id))
            if row is None or row.kind != "shell":
                return "no such session"
            if rc is None:
                return "no receipt"
            try:
                receipt = decode_payload(decode_envelope(rc.envelope).payload, Receipt)
            except Exception:  # noqa: BLE001 - a stored receipt was verified when stored
                return "the session's receipt does not decode"
            summary = receipt.session
            if isinstance(summary, msgspec.UnsetType):
                return "the session's receipt names no recording"
            if summary.recording_sha256 != sha or summary.recording_bytes != len(data):
                return "the recording does not match the digest the device signed"
            if s.get(SessionRecording, job_id) is not None:
                return None  # already stored: acknowledged again
            s.add(SessionRecording(job_id=job_id, tenant_id=row.tenant_id, device_id=device_id, sha256=sha,
                                   size=len(data), data=data, stored_at=now))
            self._audit.record(s, [row.tenant_id], "session.recording", "server", {
                "job": job_id, "device": device_id, "sha256": sha, "bytes": len(data)}, now)
        return None
