"""A session's process: started contained, on a real pty (a shell) or on pipes (a file transfer).

The same sandbox as every job (:mod:`rampart.agent.sandbox`): its own kill scope
(cgroup, else its own dynamic uid), Landlock write paths, no_new_privs,
resource limits, the job user. Unlike :func:`rampart.agent.containment.run_contained`
the process is long-lived and interactive, so the spec travels on a pipe of its
own (``--spec-fd``) and the caller gets the pty's master end (or the pipes).

Invariants:

* Nothing of the job runs before the sandbox reported containment at least
  the required level; a refusal is returned with the process already gone.
* :meth:`SessionProcess.end` kills every process in the scope (however it left
  the session or group), reaps the child and says how many processes it
  killed. It is idempotent. The dynamic uid is the caller's to release.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass, field

from rampart.agent import containment, jobscope
from rampart.agent.containment import Containment, ContainmentSpec
from rampart.agent.errors import LocalFault
from rampart.agent.jobscope import DynamicUser, KillScope

__all__ = ["SessionProcess", "StartRefused", "set_winsize", "start"]

#: Seconds the sandbox has to report containment before the session is refused.
REPORT_TIMEOUT_S = 20.0


class StartRefused(LocalFault):
    """The session's process could not be contained as required: nothing of it runs."""


def set_winsize(fd: int, cols: int, rows: int) -> None:
    """Set a pty's window size (the kernel sends SIGWINCH to its foreground group)."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


@dataclass(eq=False)
class SessionProcess:
    """A running contained session process and what it needs to be ended."""

    proc: subprocess.Popen[bytes]
    scope: KillScope
    user: DynamicUser | None
    containment: Containment
    #: The pty master (tty sessions) or the child's stdin write end (pipe sessions).
    fd: int
    #: The child's stdout read end (pipe sessions), else -1.
    out_fd: int = -1
    killed: int = 0
    _ended: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def end(self) -> int:
        """Kill everything this process started and reap it; the number killed (the dynamic uid stays
        with its holder, who releases it when the session ends)."""
        if self._ended:
            return self.killed
        self._ended = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 1.0
        while self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        alive = self.proc.poll() is None
        count = self.scope.kill_all(exclude=self.proc.pid if not alive else None)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.killed = count
        self.scope.close()
        for fd in (self.fd, self.out_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        return self.killed


def _read_status(fd: int, timeout: float) -> bytes:
    """The sandbox's status lines: up to EOF (it closes on exec) or the first line and a pause."""
    data = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
        if len(data) > 65536:
            break
    return bytes(data)


def start(spec: ContainmentSpec, *, tty: bool, cols: int = 80, rows: int = 24) -> SessionProcess:
    """Start ``spec.argv`` contained, on a pty (``tty``) or pipes; raise :class:`StartRefused`.

    ``spec.run_as`` may be a :class:`DynamicUser` the caller leased (and releases when the
    session ends), a user name, or None. Blocking: call it from a thread.
    """
    containment._validate(spec)
    user = spec.run_as if isinstance(spec.run_as, DynamicUser) else None
    scope = KillScope.open(user.uid if user is not None else None)
    fds: list[int] = []
    try:
        if tty:
            master, slave = os.openpty()
            fds += [master, slave]
            set_winsize(slave, cols, rows)
            if user is not None:
                os.fchown(slave, user.uid, -1)
            child_in, child_out, child_err = slave, slave, slave
            keep, out_fd = master, -1
        else:
            in_r, in_w = os.pipe()
            out_r, out_w = os.pipe()
            fds += [in_r, in_w, out_r, out_w]
            child_in, child_out, child_err = in_r, out_w, subprocess.DEVNULL
            keep, out_fd = in_w, out_r
        status_r, status_w = os.pipe()
        spec_r, spec_w = os.pipe()
        fds += [status_r, status_w, spec_r, spec_w]
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", containment._BOOTSTRAP, containment._package_root(),
             "--status-fd", str(status_w), "--spec-fd", str(spec_r)],
            stdin=child_in, stdout=child_out, stderr=child_err, pass_fds=(status_w, spec_r),
            close_fds=True, start_new_session=True,
            env={}, cwd="/",
        )
    except OSError as exc:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        scope.close()
        raise StartRefused(f"cannot start the sandbox: {exc.strerror or exc}") from None
    # The child holds its ends now; the parent keeps the master (or the pipe ends it uses).
    for fd in fds:
        if fd not in (keep, out_fd, status_r, spec_w):
            os.close(fd)
    scope.adopt(proc.pid)
    session = SessionProcess(proc=proc, scope=scope, user=user, containment=_PENDING, fd=keep,
                             out_fd=out_fd)
    try:
        payload = containment._wire(spec, user, scope, tty=tty)
        with contextlib.suppress(BrokenPipeError):
            view = memoryview(payload)
            while view:
                view = view[os.write(spec_w, view):]
        os.close(spec_w)
        spec_w = -1
        raw = _read_status(status_r, REPORT_TIMEOUT_S)
    finally:
        os.close(status_r)
        if spec_w >= 0:
            os.close(spec_w)
    report, refusal = containment._parse_status(raw)
    lines = raw.splitlines()
    if refusal is None and len(lines) > 1:
        refusal = "the session's program could not be started"
    if report is not None and refusal is None:
        try:
            session.containment = containment._containment(report, spec)
        except (KeyError, TypeError, ValueError):
            refusal = "malformed containment report"
    elif refusal is None:
        refusal = "the sandbox exited before reporting containment"
    if refusal is not None:
        session.end()
        raise StartRefused(refusal)
    return session


_PENDING = Containment(landlock_abi=0, filesystem=False, network=False, no_new_privs=False, user="",
                       uid=-1, limits={}, timeout_s=0.0, level="none")

# Re-exported for the session runner: lease the job's own uid before its scratch directory is made.
allocate_dynamic_user = jobscope.allocate_dynamic_user
UidUnavailable = jobscope.UidUnavailable
