"""One remote session on the device, from the signed job to its signed receipt.

docs/design/remote-sessions.md. The job was authorised by
:func:`rampart.trust.authorize_job` and its nonce committed before this runs.

Invariants:

* The device's accept is signed by its device key over the job id, both
  ephemeral keys and its stream header; every frame after it is sealed and
  opened with :class:`rampart.wire.session.SessionSealer`/``SessionOpener``.
  The first frame that fails to open ends the session (``frame-auth-failed``)
  and nothing it carried reaches the shell.
* Nothing of the session runs before consent (when the device requires it)
  and before the start is in the local session log.
* The session ends at the shell's exit, the technician's close, idle
  timeout, the job's time limit (``max-duration``), the grant's end, a grant
  revocation (checked every second), a lost relay or a bad frame; then every
  process it started is killed (its kill scope), the recording is closed and
  its SHA-256 signed in the receipt, and the end is logged locally.
* A watcher only ever receives output; what it sends besides ``Close`` is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rampart import trust
from rampart.trust import SessionSummary
from rampart.wire import Message
from rampart.wire.session import (
    FILE_CHUNK_BYTES,
    Close,
    Data,
    Exit,
    FileChunk,
    FileDone,
    FileGet,
    FilePut,
    FileResult,
    Frame,
    FrameError,
    Notice,
    Resize,
    SessionAcceptMessage,
    SessionCloseMessage,
    SessionEndMessage,
    SessionFrameMessage,
    SessionOpener,
    SessionSealer,
    accept_transcript,
    b64,
    server_keys,
    server_session_keys,
    unb64,
)

from .. import containment, jobscope
from ..actions.contained import _required_level, _run_as
from ..actions.limits import JOB_PATH
from ..errors import JobRefused
from . import notice, proc
from .recording import Recorder

if TYPE_CHECKING:
    from ..core import Agent

log = logging.getLogger("rampart.agent")

__all__ = ["MAX_FILE_BYTES", "Session", "SessionEnded"]

Send = Callable[[Message], Awaitable[None]]

#: Seconds the device waits for the technician's stream header after its accept.
CLIENT_TIMEOUT_S = 60.0
#: How often the watchdog looks at the grant, the revocations and the clocks.
WATCH_INTERVAL_S = 0.5
#: Largest file ``rampart cp`` moves through a session.
MAX_FILE_BYTES = 1 << 30
#: Frames held for a session before the relay's backpressure applies.
INCOMING_QUEUE = 512
_READ_CHUNK = 128 * 1024
_SHELLS = ("/bin/bash", "/bin/sh")


class SessionEnded(JobRefused):
    """Ends a session with a reason for the receipt (``end``) and a detail for people."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass(eq=False)
class Watcher:
    """A read-only viewer of a live session, with its own sealed stream."""

    job_id: str
    name: str
    sealer: SessionSealer
    send: Send
    seq: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Session:
    """A remote session; :meth:`run` drives it to its end and returns the signed receipt."""

    def __init__(self, agent: Agent, auth: trust.Authorization, send: Send) -> None:
        spec = auth.job.session_spec
        assert spec is not None
        self.agent = agent
        self.auth = auth
        self.spec = spec
        self.job_id = auth.job.id
        self.send = send
        self.incoming: asyncio.Queue[SessionFrameMessage | SessionCloseMessage] = asyncio.Queue(
            INCOMING_QUEUE)
        self.signer_name = agent.trusted_root().root.key_name(auth.job.signer)
        self.watchers: list[Watcher] = []
        self.sealer: SessionSealer | None = None
        self.opener: SessionOpener | None = None
        self.process: proc.SessionProcess | None = None
        self.recorder: Recorder | None = None
        self.user: jobscope.DynamicUser | None = None
        self.scratch: Path | None = None
        self.started = time.time()
        self.last_activity = time.monotonic()
        self.seq = 0
        self.bytes_in = self.bytes_out = self.files_in = self.files_out = 0
        self.consent = "not-required"
        self.exit_code: int | None = None
        self.exit_signal: int | None = None
        self.killed = 0
        self.live = False
        #: Keystrokes are recorded when the session asks or the tenant's signed policy says so.
        self.record_input = spec.record_input or agent.trusted_root().root.policy.record_session_input is True

    # --- plumbing ---------------------------------------------------------------------------------

    async def _seal_and_send(self, frame: Frame, *, final: bool = False) -> None:
        assert self.sealer is not None
        sealed = self.sealer.seal(frame, final=final)
        self.seq += 1
        await self.send(SessionFrameMessage(job_id=self.job_id, seq=self.seq, data=b64(sealed)))

    async def _next_message(self, timeout: float | None) -> SessionFrameMessage:
        """The next frame message from the relay; a close from it, or silence, ends the session."""
        try:
            msg = await asyncio.wait_for(self.incoming.get(), timeout)
        except TimeoutError:
            raise SessionEnded("relay-lost", "the technician's side did not answer") from None
        if isinstance(msg, SessionCloseMessage):
            raise SessionEnded("relay-lost", "the relay closed the technician's side")
        return msg

    async def _next_frame(self, timeout: float | None = None) -> Frame:
        """The next frame the technician sealed; a close from the relay or a bad frame ends the session."""
        msg = await self._next_message(timeout)
        assert self.opener is not None
        frame = self.opener.open(unb64(msg.data))
        self.last_activity = time.monotonic()
        return frame

    # --- the session ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Accept (signed by the device key) and take the technician's stream header."""
        self.sealer, rx = await accept(self.agent, self.job_id, self.spec.client_key, self.send)
        log.info("session %s: accepted; waiting for the technician's stream", self.job_id)
        first = await self._next_message(CLIENT_TIMEOUT_S)
        self.opener = SessionOpener(rx, unb64(first.data), self.job_id)

    async def run(self) -> bytes:
        """Run the session to its end; return the signed receipt (already stored as the job's)."""
        end, detail = "error", ""
        try:
            await self.open()
            await self._ask_consent()
            await self._start()
            self.live = True
            if self.spec.mode == "shell":
                await self._shell()
            else:
                await self._files()
        except SessionEnded as exc:
            end, detail = exc.reason, exc.detail
        except FrameError as exc:
            end, detail = exc.reason, exc.detail
            log.warning("session %s: %s", self.job_id, exc.detail)
        except Exception as exc:  # noqa: BLE001 - the receipt must still say what happened
            log.exception("session %s failed inside the agent", self.job_id)
            end, detail = "error", f"{type(exc).__name__}: {exc}"
        finally:
            self.live = False
        return await self._finish(end, detail)

    async def _ask_consent(self) -> None:
        cfg = self.agent.config
        if not cfg.require_consent:
            return
        await asyncio.to_thread(notice.ensure_consent_dir)
        await asyncio.to_thread(
            notice.wall, f"Rampart: {self.signer_name} asks to open a remote {self.spec.mode} session on "
                         f"this device (session {self.job_id}). To allow it run: "
                         f"rampart-agent consent accept "
                         f"{self.job_id}  (or 'refuse'); it is refused in {cfg.consent_timeout_s} s.")
        await self._seal_and_send(Notice(text="waiting for a local user to accept the session"))
        deadline = time.monotonic() + cfg.consent_timeout_s
        try:
            while time.monotonic() < deadline:
                answer = await asyncio.to_thread(notice.consent_answer, self.job_id)
                if answer is not None:
                    word, user = answer
                    self.consent = word
                    await asyncio.to_thread(self._log, "consent", {"answer": word, "local_user": user})
                    if word == "refused":
                        raise SessionEnded("consent-refused", f"refused by local user {user}")
                    await self._seal_and_send(Notice(text=f"local user {user} accepted the session"))
                    return
                if not self.incoming.empty():
                    await self._next_frame(0)  # a close from the technician while waiting
                await asyncio.sleep(0.25)
            self.consent = "refused"
            raise SessionEnded("consent-refused", "no local user accepted in time")
        finally:
            await asyncio.to_thread(notice.clear_consent, self.job_id)

    def _log(self, event: str, extra: dict[str, object] | None = None) -> None:
        notice.log_event(self.agent.config.session_log, {
            "event": event, "session": self.job_id, "mode": self.spec.mode,
            "technician": self.signer_name, "technician_key": self.auth.job.signer,
            "grant": self.auth.grant.id, "device": self.agent.device_id, **(extra or {}),
        })

    async def _start(self) -> None:
        """Log and announce the start; lease the job's uid, make its scratch directory, open the recording."""
        try:
            await asyncio.to_thread(self._log, "start", {"record_input": self.record_input})
        except OSError as exc:
            raise SessionEnded("error", f"the local session log cannot be written: {exc.strerror}") from None
        await asyncio.to_thread(notice.wall, f"Rampart: {self.signer_name} opened a remote {self.spec.mode} "
                                             f"session on this device (session {self.job_id}).")
        rec_dir = self.agent.state_dir / "sessions"
        rec_dir.mkdir(mode=0o700, exist_ok=True)
        self.recorder = Recorder(rec_dir / f"{self.job_id}.cast", cols=self.spec.cols, rows=self.spec.rows,
                                 title=f"{self.job_id} on {self.agent.device_id} by {self.signer_name}",
                                 record_input=self.record_input)
        run_as = _run_as(self.agent, self.auth.effective.run_as)
        if run_as == containment.DYNAMIC:
            try:
                self.user = await asyncio.to_thread(proc.allocate_dynamic_user)
            except proc.UidUnavailable as exc:
                raise SessionEnded("error", f"no dynamic user for the session: {exc}") from None
        self.scratch = Path(tempfile.mkdtemp(prefix="rampart-session-"))
        if self.user is not None:
            os.chown(self.scratch, self.user.uid, self.user.gid)
        os.chmod(self.scratch, 0o700)
        self._run_as: str | jobscope.DynamicUser | None = self.user if self.user is not None else run_as

    def _spec(self, argv: tuple[str, ...]) -> containment.ContainmentSpec:
        assert self.scratch is not None
        eff = self.auth.effective
        home = str(self.scratch)
        user_name = self.user.name if self.user is not None else "root"
        run_as = self._run_as
        return containment.ContainmentSpec(
            argv=argv, cwd=home,
            env={"PATH": JOB_PATH, "LANG": "C.UTF-8", "TERM": self.spec.term or "xterm-256color",
                 "HOME": home, "USER": user_name, "SHELL": argv[0],
                 "RAMPART_SESSION": self.job_id, "RAMPART_DEVICE_ID": self.agent.device_id},
            write_paths=(home, *eff.writes), deny_read_paths=(str(self.agent.state_dir.resolve()),),
            connect_ports=eff.connect, run_as=run_as, timeout_s=float(eff.timeout_s),
            limits=containment.ContainmentLimits(cpu_seconds=eff.timeout_s, processes=256,
                                                 address_space_bytes=4 << 30, open_files=1024,
                                                 file_size_bytes=MAX_FILE_BYTES),
            require=_required_level(self.agent.config, run_as if isinstance(run_as, str) else None),
        )

    # --- shell ------------------------------------------------------------------------------------

    async def _shell(self) -> None:
        shell = next((s for s in _SHELLS if os.access(s, os.X_OK)), _SHELLS[-1])
        argv = (shell, "-l") if shell.endswith("bash") else (shell,)
        try:
            self.process = await asyncio.to_thread(proc.start, self._spec(argv), tty=True,
                                                   cols=self.spec.cols, rows=self.spec.rows)
        except proc.StartRefused as exc:
            raise SessionEnded("error", f"the shell could not be contained: {exc}") from None
        os.set_blocking(self.process.fd, False)
        tasks = [asyncio.create_task(self._pump_output()), asyncio.create_task(self._pump_input()),
                 asyncio.create_task(self._watchdog())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()  # raises the SessionEnded / FrameError that ended it
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _pump_output(self) -> None:
        assert self.process is not None and self.recorder is not None
        fd = self.process.fd
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        loop.add_reader(fd, readable.set)
        try:
            while True:
                await readable.wait()
                readable.clear()
                buf = bytearray()
                eof = False
                while len(buf) < _READ_CHUNK:
                    try:
                        chunk = os.read(fd, _READ_CHUNK)
                    except BlockingIOError:
                        break
                    except OSError:  # EIO: every holder of the pty's other end is gone
                        eof = True
                        break
                    if not chunk:
                        eof = True
                        break
                    buf += chunk
                if buf:
                    await self._output(bytes(buf))
                if eof:
                    raise SessionEnded("exit")
        finally:
            loop.remove_reader(fd)

    async def _output(self, data: bytes) -> None:
        assert self.recorder is not None
        self.last_activity = time.monotonic()
        self.bytes_out += len(data)
        self.recorder.output(data)
        await self._seal_and_send(Data(data=data))
        for w in list(self.watchers):
            try:
                sealed = w.sealer.seal(Data(data=data))
                w.seq += 1
                await w.send(SessionFrameMessage(job_id=w.job_id, seq=w.seq, data=b64(sealed)))
            except Exception:  # noqa: BLE001 - a watcher's trouble never ends the session
                self.remove_watcher(w)

    async def _write_pty(self, data: bytes) -> None:
        assert self.process is not None
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.process.fd, view):]
            except BlockingIOError:
                await asyncio.sleep(0.005)
            except OSError:
                raise SessionEnded("exit") from None

    async def _pump_input(self) -> None:
        assert self.recorder is not None and self.process is not None
        while True:
            frame = await self._next_frame()
            if isinstance(frame, Data):
                self.bytes_in += len(frame.data)
                self.recorder.input(frame.data)
                await self._write_pty(frame.data)
            elif isinstance(frame, Resize):
                proc.set_winsize(self.process.fd, frame.cols, frame.rows)
                self.recorder.resize(frame.cols, frame.rows)
            elif isinstance(frame, Close):
                raise SessionEnded("closed", "the technician closed the session")
            else:
                log.info("session %s: ignored a %s frame in a shell session", self.job_id,
                         type(frame).__name__)

    async def _watchdog(self) -> None:
        job, grant = self.auth.job, self.auth.grant
        idle = self.spec.idle_timeout_s
        limit = self.started + self.auth.effective.timeout_s
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = time.time()
            if self.process is not None and self.process.poll() is not None:
                await asyncio.sleep(0.2)  # let the last output drain
                raise SessionEnded("exit")
            if await asyncio.to_thread(self.agent.state.grant_revoked, grant.id):
                raise SessionEnded("grant-revoked", f"grant {grant.id} was revoked")
            if now >= grant.not_after:
                raise SessionEnded("grant-expired", f"grant {grant.id} ended")
            if now >= limit:
                raise SessionEnded("max-duration", f"the job's time limit of {job.timeout_s} s was reached")
            if time.monotonic() - self.last_activity > idle:
                raise SessionEnded("idle-timeout", f"no input or output for {idle} s")

    # --- files (rampart cp) -----------------------------------------------------------------------

    def _writable(self, path: str) -> bool:
        assert self.scratch is not None
        p = os.path.normpath(path)
        roots = (str(self.scratch), *self.auth.effective.writes)
        return p == path and any(p == r or p.startswith(r.rstrip("/") + "/") for r in roots)

    async def _files(self) -> None:
        watchdog = asyncio.create_task(self._watchdog())
        try:
            while True:
                frame_task = asyncio.create_task(self._next_frame())
                done, _ = await asyncio.wait({frame_task, watchdog}, return_when=asyncio.FIRST_COMPLETED)
                if watchdog in done:
                    frame_task.cancel()
                    watchdog.result()
                frame = frame_task.result()
                if isinstance(frame, Close):
                    raise SessionEnded("closed", "the technician closed the session")
                if isinstance(frame, FilePut):
                    await self._put(frame)
                elif isinstance(frame, FileGet):
                    await self._get(frame)
                else:
                    log.info("session %s: ignored a %s frame outside a transfer", self.job_id,
                             type(frame).__name__)
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError, SessionEnded, FrameError):
                await watchdog

    async def _contained(self, argv: tuple[str, ...]) -> proc.SessionProcess:
        try:
            return await asyncio.to_thread(proc.start, self._spec(argv), tty=False)
        except proc.StartRefused as exc:
            raise SessionEnded("error", f"a transfer could not be contained: {exc}") from None

    async def _wait_exit(self, p: proc.SessionProcess) -> int | None:
        code = await asyncio.to_thread(p.proc.wait)
        await asyncio.to_thread(p.end)
        return code

    async def _put(self, put: FilePut) -> None:
        """Receive one file into a temporary name beside ``put.path`` as the job's user, check its
        SHA-256 and size, then rename it into place (or remove it)."""
        assert self.recorder is not None
        refuse = ""
        if put.size > MAX_FILE_BYTES:
            refuse = f"the file is larger than the session limit of {MAX_FILE_BYTES} bytes"
        elif not self._writable(put.path):
            refuse = f"{put.path} is outside what this session may write"
        tmp = f"{put.path}.rampart-part-{os.urandom(6).hex()}"
        p = None if refuse else await self._contained(("/bin/sh", "-c", 'exec cat > "$1"', "sh", tmp))
        digest, size, ok_stream = hashlib.sha256(), 0, True
        while True:
            frame = await self._next_frame()
            if isinstance(frame, FileChunk) and frame.id == put.id:
                size += len(frame.data)
                digest.update(frame.data)
                if p is not None and ok_stream:
                    try:
                        await asyncio.to_thread(_write_all, p.fd, frame.data)
                    except OSError:
                        ok_stream = False
            elif isinstance(frame, FileDone) and frame.id == put.id:
                break
            elif isinstance(frame, Close):
                if p is not None:
                    await asyncio.to_thread(p.end)
                    await self._contained_quiet(("/bin/rm", "-f", tmp))
                raise SessionEnded("closed", "the technician closed the session during a transfer")
            else:
                raise SessionEnded("error", "a transfer was interrupted by another frame")
        if p is not None:
            with contextlib.suppress(OSError):
                os.close(p.fd)
            p.fd = -1
            code = await self._wait_exit(p)
            sha = digest.hexdigest()
            if not ok_stream or code != 0:
                refuse = f"cannot write {put.path} (permission denied, or no such directory)"
            elif size != put.size or sha != put.sha256:
                refuse = "the file arrived with another SHA-256 or size than announced; it was discarded"
            if refuse:
                await self._contained_quiet(("/bin/rm", "-f", tmp))
            else:
                mv = await self._contained(("/bin/sh", "-c", 'chmod "$3" "$1" && exec mv -f "$1" "$2"', "sh",
                                            tmp, put.path, format(put.mode, "o")))
                if await self._wait_exit(mv) != 0:
                    refuse = f"cannot move the file into {put.path}"
                    await self._contained_quiet(("/bin/rm", "-f", tmp))
        if refuse:
            await self._seal_and_send(FileResult(id=put.id, ok=False, detail=refuse[:300]))
            return
        self.files_in += 1
        self.bytes_in += size
        self.recorder.marker(f"file uploaded: {put.path} ({size} bytes, sha256 {put.sha256})")
        await asyncio.to_thread(self._log, "file-put", {"path": put.path, "size": size, "sha256": put.sha256})
        await self._seal_and_send(FileResult(id=put.id, ok=True, size=size, sha256=put.sha256))

    async def _contained_quiet(self, argv: tuple[str, ...]) -> None:
        with contextlib.suppress(SessionEnded):
            await self._wait_exit(await self._contained(argv))

    async def _get(self, get: FileGet) -> None:
        """Send one file, read as the job's user (so only what the session may read)."""
        assert self.recorder is not None
        p = await self._contained(("/bin/cat", "--", get.path))
        digest, size = hashlib.sha256(), 0
        await self._seal_and_send(FileResult(id=get.id, ok=True, detail="sending"))
        try:
            while True:
                chunk = await asyncio.to_thread(_read_some, p.out_fd, FILE_CHUNK_BYTES)
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_FILE_BYTES:
                    await asyncio.to_thread(p.end)
                    await self._seal_and_send(FileResult(id=get.id, ok=False,
                                                         detail="the file is larger than the session limit"))
                    return
                digest.update(chunk)
                self.last_activity = time.monotonic()
                await self._seal_and_send(FileChunk(id=get.id, data=chunk))
        finally:
            code = await self._wait_exit(p)
        if code != 0:
            await self._seal_and_send(FileResult(id=get.id, ok=False, detail=(
                f"cannot read {get.path} (no such file, or not readable by the session's user)")[:300]))
            return
        sha = digest.hexdigest()
        await self._seal_and_send(FileDone(id=get.id, sha256=sha, size=size))
        self.files_out += 1
        self.bytes_out += size
        self.recorder.marker(f"file downloaded: {get.path} ({size} bytes, sha256 {sha})")
        await asyncio.to_thread(self._log, "file-get", {"path": get.path, "size": size, "sha256": sha})

    # --- watchers ---------------------------------------------------------------------------------

    async def add_watcher(self, w: Watcher) -> None:
        self.watchers.append(w)
        await asyncio.to_thread(self._log, "watch-start", {"watcher": w.name, "watch_session": w.job_id})
        with contextlib.suppress(Exception):
            await self._seal_and_send(Notice(text=f"{w.name} is watching this session (read-only)"))

    def remove_watcher(self, w: Watcher) -> None:
        if w in self.watchers:
            self.watchers.remove(w)
            w.done.set()

    async def watcher_left(self, w: Watcher) -> None:
        self.remove_watcher(w)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._log, "watch-end", {"watcher": w.name, "watch_session": w.job_id})
            if self.live:
                await self._seal_and_send(Notice(text=f"{w.name} stopped watching"))

    # --- the end ----------------------------------------------------------------------------------

    async def _finish(self, end: str, detail: str) -> bytes:
        if self.process is not None:
            self.killed += await asyncio.to_thread(self.process.end)
            code = self.process.proc.returncode
            if code is not None:
                self.exit_code = code if code >= 0 else None
                self.exit_signal = -code if code < 0 else None
        if self.user is not None and self.user.held:
            self.killed += len(await asyncio.to_thread(self.user.release))
        if self.scratch is not None:
            await asyncio.to_thread(shutil.rmtree, self.scratch, True)
        for w in list(self.watchers):
            self.remove_watcher(w)
            with contextlib.suppress(Exception):
                sealed = w.sealer.seal(Exit(reason="watched-session-ended"), final=True)
                w.seq += 1
                await w.send(SessionFrameMessage(job_id=w.job_id, seq=w.seq, data=b64(sealed)))
        if self.recorder is not None:
            self.recorder.marker(f"session ended: {end}")
            sha, size = await asyncio.to_thread(self.recorder.close)
            truncated = self.recorder.truncated
        else:
            sha, size, truncated = hashlib.sha256(b"").hexdigest(), 0, False
        if self.sealer is not None and not self.sealer.final:
            with contextlib.suppress(Exception):
                await self._seal_and_send(Exit(reason=end, status=self.exit_code, signal=self.exit_signal,
                                               detail=detail[:300]), final=True)
        with contextlib.suppress(Exception):
            await self.send(SessionEndMessage(job_id=self.job_id, reason=end))
        if self.recorder is not None or self.consent != "not-required":
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self._log, "end", {
                    "end": end, "detail": detail[:300], "recording_sha256": sha, "recording_bytes": size,
                    "exit_code": self.exit_code, "killed": self.killed})
            await asyncio.to_thread(notice.wall, f"Rampart: the remote session {self.job_id} of "
                                                 f"{self.signer_name} ended ({end}).")
        summary = SessionSummary(
            end=end, recording_sha256=sha, recording_bytes=size, recording_truncated=truncated,
            input_recorded=self.record_input and self.recorder is not None,
            bytes_in=self.bytes_in, bytes_out=self.bytes_out, files_in=self.files_in,
            files_out=self.files_out, consent=self.consent)  # type: ignore[arg-type]
        outcome = "ran" if end in ("exit", "closed") else "refused" if end == "consent-refused" else "failed"
        if self.recorder is None and end not in ("consent-refused",):
            outcome = "failed"
        log.info("session %s ended: %s %s", self.job_id, end, detail)
        return await asyncio.to_thread(
            self.agent.finish_session, self.job_id, outcome=outcome, detail=detail, summary=summary,
            containment=self.process.containment if self.process is not None else None,
            exit_code=self.exit_code, signal=self.exit_signal, killed=self.killed, started_at=self.started)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_some(fd: int, n: int) -> bytes:
    return os.read(fd, n)


async def accept(agent: Agent, job_id: str, client_key_b64: str,
                 send: Send) -> tuple[SessionSealer, bytes]:
    """Answer a session job: a one-time key and stream header, signed by the device key over the job id
    and both keys (:func:`rampart.wire.session.accept_transcript`). The device's sealer, and the key
    of the technician's stream."""
    client_key = trust.b64decode_strict(client_key_b64, what="client key")
    public, secret = server_keys()
    rx, tx = server_session_keys(public, secret, client_key)
    sealer = SessionSealer(tx, job_id)
    sig = agent.key.sign(accept_transcript(job_id, client_key, public, sealer.header))
    await send(SessionAcceptMessage(job_id=job_id, device_key=agent.key.public.to_b64(),
                                    agent_key=b64(public), header=b64(sealer.header), sig=b64(sig)))
    return sealer, rx


async def run_watch(agent: Agent, auth: trust.Authorization, send: Send,
                    incoming: asyncio.Queue[SessionFrameMessage | SessionCloseMessage],
                    target: Session | None) -> bytes:
    """A read-only viewer of ``target``: accept, take the watcher's header, relay output until either ends."""
    spec = auth.job.session_spec
    assert spec is not None
    job_id = auth.job.id
    name = agent.trusted_root().root.key_name(auth.job.signer)
    end, detail = "error", ""
    watcher: Watcher | None = None
    sealer: SessionSealer | None = None
    try:
        sealer, rx = await accept(agent, job_id, spec.client_key, send)
        first = await asyncio.wait_for(incoming.get(), CLIENT_TIMEOUT_S)
        if isinstance(first, SessionCloseMessage):
            raise SessionEnded("relay-lost")
        opener = SessionOpener(rx, unb64(first.data), job_id)
        if target is None or not target.live or target.auth.job.tenant != auth.job.tenant:
            raise SessionEnded("no-such-session", f"no live session {spec.watch} on this device")
        watcher = Watcher(job_id=job_id, name=name, sealer=sealer, send=send)
        await target.add_watcher(watcher)
        while True:
            get = asyncio.create_task(incoming.get())
            gone = asyncio.create_task(watcher.done.wait())
            done, _ = await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
            if gone in done:
                get.cancel()
                raise SessionEnded("watched-session-ended")
            gone.cancel()
            msg = get.result()
            if isinstance(msg, SessionCloseMessage):
                raise SessionEnded("relay-lost")
            frame = opener.open(unb64(msg.data))
            if isinstance(frame, Close):
                raise SessionEnded("closed", "the watcher left")
            log.info("session %s: dropped a %s frame from a read-only watcher", job_id, type(frame).__name__)
    except TimeoutError:
        end, detail = "relay-lost", "the watcher's side never answered"
    except SessionEnded as exc:
        end, detail = exc.reason, exc.detail
    except FrameError as exc:
        end, detail = exc.reason, exc.detail
    except Exception as exc:  # noqa: BLE001
        log.exception("watch %s failed inside the agent", job_id)
        end, detail = "error", f"{type(exc).__name__}: {exc}"
    if watcher is not None and target is not None:
        await target.watcher_left(watcher)
    if sealer is not None and not sealer.final:
        with contextlib.suppress(Exception):
            await send(SessionFrameMessage(job_id=job_id, seq=1 << 40, data=b64(
                sealer.seal(Exit(reason=end, detail=detail[:300]), final=True))))
    with contextlib.suppress(Exception):
        await send(SessionEndMessage(job_id=job_id, reason=end))
    summary = SessionSummary(end=end, recording_sha256=hashlib.sha256(b"").hexdigest(), recording_bytes=0)
    outcome = "ran" if end in ("watched-session-ended", "closed") else "failed"
    return await asyncio.to_thread(agent.finish_session, job_id, outcome=outcome, detail=detail,
                                   summary=summary, containment=None, exit_code=None, signal=None,
                                   killed=0, started_at=time.time())
