"""The agent's live remote sessions: start them, route their frames, upload their recordings.

Invariants: frames reach only the session whose job id they carry, and a
session exists only for a job the agent authorised (frames for any other id
are dropped). A recording is kept (0600, in the state directory) until the
server acknowledges it, and offered again on every reconnection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from rampart import trust
from rampart.wire import Message
from rampart.wire.session import (
    RecordingAckMessage,
    SessionCloseMessage,
    SessionFrameMessage,
    SessionRecordingMessage,
)

from .runner import INCOMING_QUEUE, Session, run_watch

if TYPE_CHECKING:
    from ..core import Agent

log = logging.getLogger("rampart.agent")

__all__ = ["Sessions"]

Send = Callable[[Message], Awaitable[None]]
ReceiptSink = Callable[[str, bytes], Awaitable[None]]
#: Bytes of a recording per upload message (base64 makes it a third larger on the wire).
RECORDING_CHUNK = 1 << 20


class Sessions:
    """Live sessions of one agent, keyed by their job id."""

    def __init__(self, agent: Agent, send: Send, on_receipt: ReceiptSink) -> None:
        self.agent = agent
        self._send = send
        self._on_receipt = on_receipt
        self.live: dict[str, Session] = {}
        self._queues: dict[str, asyncio.Queue[SessionFrameMessage | SessionCloseMessage]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._uploading: set[str] = set()
        self.connected = False

    def start(self, auth: trust.Authorization) -> None:
        """Begin the session of an authorised shell job (called on the event loop)."""
        spec = auth.job.session_spec
        assert spec is not None
        if spec.mode == "watch":
            queue: asyncio.Queue[SessionFrameMessage | SessionCloseMessage] = asyncio.Queue(INCOMING_QUEUE)
            self._queues[auth.job.id] = queue
            coro = run_watch(self.agent, auth, self._send, queue, self.live.get(spec.watch))
        else:
            session = Session(self.agent, auth, self._send)
            self.live[auth.job.id] = session
            self._queues[auth.job.id] = session.incoming
            coro = session.run()
        task = asyncio.get_running_loop().create_task(self._run(auth.job.id, coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, job_id: str, coro: Awaitable[bytes]) -> None:
        try:
            receipt = await coro
        finally:
            self.live.pop(job_id, None)
            self._queues.pop(job_id, None)
        await self._on_receipt(job_id, receipt)
        await self.upload(job_id)

    async def deliver(self, msg: SessionFrameMessage | SessionCloseMessage) -> None:
        """Route one frame from the relay to its session (dropped when there is none)."""
        queue = self._queues.get(msg.job_id)
        if queue is None:
            log.info("dropped a session message for %s: no such live session here", msg.job_id)
            return
        await queue.put(msg)

    def relay_lost(self) -> None:
        """The connection to the server is gone: every live session ends (``relay-lost``)."""
        self.connected = False
        for job_id, queue in list(self._queues.items()):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(SessionCloseMessage(job_id=job_id, reason="relay-lost"))

    def attach(self) -> None:
        """A connection is up: offer every recording the server has not acknowledged."""
        self.connected = True
        folder = self.agent.state_dir / "sessions"
        if not folder.is_dir():
            return
        for f in sorted(folder.glob("job-*.cast")):
            job_id = f.name.removesuffix(".cast")
            if job_id not in self._queues and job_id not in self._uploading:
                task = asyncio.get_running_loop().create_task(self.upload(job_id))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def upload(self, job_id: str) -> None:
        """Send the recording of a finished session in chunks (it stays until acknowledged)."""
        path = self.agent.state_dir / "sessions" / f"{job_id}.cast"
        if not self.connected or job_id in self._uploading or not path.is_file():
            return
        self._uploading.add(job_id)
        try:
            size = path.stat().st_size
            offset = 0
            with open(path, "rb") as f:
                while True:
                    chunk = f.read(RECORDING_CHUNK)
                    last = offset + len(chunk) >= size
                    await self._send(SessionRecordingMessage(
                        job_id=job_id, offset=offset, data=base64.b64encode(chunk).decode(), last=last))
                    offset += len(chunk)
                    if last:
                        break
        except Exception as exc:  # noqa: BLE001 - kept and offered again on the next connection
            log.info("recording of %s not uploaded now: %s", job_id, type(exc).__name__)
        finally:
            self._uploading.discard(job_id)

    def on_recording_ack(self, msg: RecordingAckMessage) -> None:
        """The server stored the recording (or refused it for good): the local copy goes."""
        path = self.agent.state_dir / "sessions" / f"{msg.job_id}.cast"
        with contextlib.suppress(OSError):
            if msg.refused:  # kept for the device's own people, never offered again
                log.warning("the server refused the recording of %s: %s", msg.job_id, msg.refused)
                os.replace(path, path.with_suffix(".cast-refused"))
            else:
                os.unlink(path)
