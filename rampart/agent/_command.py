"""Run one external program for the job engines (patching, backup): no shell, bounded in every way.

Rules (the same for every engine, see docs/design/patching-backup.md):

* ``argv[0]`` is resolved on a fixed :data:`SAFE_PATH`, never the agent's
  environment; the child gets exactly the environment the caller builds (no
  inheritance), stdin ``/dev/null``, only the descriptors in ``pass_fds``.
* The child runs in a new session: on time-out or output overflow the whole
  process group (apt's dpkg, maintainer scripts, borg's ssh) gets SIGTERM,
  then SIGKILL after a grace period.
* Output is bounded: stdout is kept whole up to ``max_stdout`` (overflow kills
  the child: a JSON answer cut short is useless), stderr (or the merged
  stream) keeps only its last ``max_tail`` bytes, and ``on_line`` sees every
  complete line (each cut to :data:`MAX_LINE`) so callers can pick out error
  lines from anywhere in a long run without storing it.

Nothing here raises on a failing program: :class:`Completed` says what
happened. A missing program is reported the same way (``returncode`` None,
``error`` set).
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Longest line handed to ``on_line``; the rest of a longer line is dropped.
MAX_LINE = 4096
#: Seconds between SIGTERM and SIGKILL of the process group.
KILL_GRACE_S = 5.0
#: After the program exits, how long a pipe still held open by a descendant is read before giving up.
_DRAIN_S = 2.0


@dataclass(frozen=True, slots=True)
class Completed:
    """What one program run did. ``returncode`` is None when it never ran or was killed by us."""

    argv: tuple[str, ...]
    returncode: int | None
    stdout: bytes
    #: Last bytes of stderr (or of the merged stream when stdout was merged), UTF-8 with replacement.
    tail: str
    tail_truncated: bool
    timed_out: bool = False
    stdout_overflow: bool = False
    #: Why the program did not run or was stopped (missing program, time-out, overflow); "" otherwise.
    error: str = ""
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.error


def which(name: str) -> str | None:
    """Absolute path of ``name`` on :data:`SAFE_PATH` (or ``name`` itself when absolute and executable)."""
    if os.path.isabs(name):
        return name if os.access(name, os.X_OK) else None
    return shutil.which(name, path=SAFE_PATH)


class _Lines:
    """Split a byte stream into lines for ``on_line``, each bounded by :data:`MAX_LINE`."""

    def __init__(self, on_line: Callable[[str], None] | None) -> None:
        self._on_line = on_line
        self._buf = bytearray()
        self._dropping = False

    def feed(self, chunk: bytes) -> None:
        if self._on_line is None:
            return
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            piece = chunk[start:] if nl < 0 else chunk[start:nl]
            if not self._dropping:
                room = MAX_LINE - len(self._buf)
                self._buf += piece[:room]
                if len(piece) > room:
                    self._dropping = True
            if nl < 0:
                return
            self._emit()
            start = nl + 1

    def _emit(self) -> None:
        assert self._on_line is not None
        self._on_line(self._buf.decode("utf-8", "replace").rstrip("\r"))
        self._buf.clear()
        self._dropping = False

    def close(self) -> None:
        if self._on_line is not None and self._buf:
            self._emit()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run(argv: Sequence[str], *, env: Mapping[str, str], timeout: float, max_stdout: int = 1 << 20,
        max_tail: int = 64 << 10, merge_stderr: bool = False, cwd: str = "/",
        pass_fds: Sequence[int] = (), on_line: Callable[[str], None] | None = None) -> Completed:
    """Run ``argv`` and wait for it, within ``timeout`` seconds and the output bounds (module docstring).

    With ``merge_stderr`` both streams go to one pipe, kept as ``tail`` (and
    ``stdout`` stays empty); otherwise stdout is kept whole up to
    ``max_stdout`` and stderr as ``tail``. ``on_line`` sees the tail stream's
    lines.
    """
    args = tuple(argv)
    t0 = time.monotonic()
    exe = which(args[0]) if args else None
    if exe is None:
        return Completed(args, None, b"", "", False, error=f"{args[0] if args else '?'}: program not found")
    try:
        proc = subprocess.Popen(
            [exe, *args[1:]], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE, env=dict(env), cwd=cwd,
            close_fds=True, pass_fds=tuple(pass_fds), start_new_session=True,
        )
    except OSError as exc:
        return Completed(args, None, b"", "", False, error=f"{args[0]}: {exc.strerror or exc}")
    assert proc.stdout is not None
    out = bytearray()
    tail = bytearray()
    tail_cut = False
    lines = _Lines(on_line)
    error = ""
    timed_out = overflow = False
    deadline = t0 + timeout
    exited_at = 0.0
    streams = {proc.stdout.fileno(): "tail" if merge_stderr else "out"}
    if proc.stderr is not None:
        streams[proc.stderr.fileno()] = "tail"
    with selectors.DefaultSelector() as sel:
        for fd in streams:
            sel.register(fd, selectors.EVENT_READ)
        while streams:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                error = f"{args[0]} timed out after {timeout:g}s"
                break
            ready = sel.select(min(left, 0.5))
            if not ready and proc.poll() is not None:
                # The program exited but a descendant (a daemon a maintainer script started) still holds
                # the pipe: stop reading once it has been quiet for a moment.
                exited_at = exited_at or time.monotonic()
                if time.monotonic() - exited_at > _DRAIN_S:
                    break
            for key, _ in ready:
                fd = int(key.fd)
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    sel.unregister(fd)
                    del streams[fd]
                    continue
                if streams[fd] == "out":
                    out += chunk
                    if len(out) > max_stdout:
                        overflow = True
                else:
                    lines.feed(chunk)
                    tail += chunk
                    if len(tail) > max_tail:
                        del tail[: len(tail) - max_tail]
                        tail_cut = True
            if overflow:
                error = f"{args[0]} wrote more than {max_stdout} bytes"
                break
    lines.close()
    if error:
        _kill_group(proc)
    try:
        code: int | None = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        timed_out = True
        error = error or f"{args[0]} timed out after {timeout:g}s"
    code = None if error else proc.returncode
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return Completed(args, code, bytes(out[:max_stdout]), tail.decode("utf-8", "replace"), tail_cut,
                     timed_out=timed_out, stdout_overflow=overflow, error=error,
                     duration_s=time.monotonic() - t0)
