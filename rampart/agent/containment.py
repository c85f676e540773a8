"""Parent half of job containment: run one job in a contained child process.

:func:`run_contained` starts ``python -I`` on :mod:`rampart.agent.sandbox`,
hands it the spec on stdin, and supervises it: bounded capture of stdout and
stderr, a wall-clock timeout that kills the whole process group, and reaping.
Before the spec is sent the child is put in the job's kill scope
(:mod:`rampart.agent.jobscope`: a cgroup of its own, else its own dynamic uid),
and when the job's main process ends every process left in that scope is
killed and counted (``ContainedResult.killed``).

Invariants:

* The child inherits no descriptor but its three standard streams and the
  status pipe; it starts in its own session with an empty environment, and the
  job later gets exactly ``spec.env``.
* :class:`Containment` is built only from the child's status report, written
  before exec on a close-on-exec pipe the job cannot reach; it never echoes
  the request. No report, or a refusal, means the job did not run.
* Memory is bounded: each stream keeps at most ``max_output_bytes`` and the
  rest is read and discarded so the job never blocks on a full pipe.
* On return the child has been reaped and its process group killed, and with
  a ``cgroup`` or ``uid`` kill scope so has every process it started, however
  it left the group (setsid, double fork, daemon(3), SIGTERM ignored).
* ``run_as=DYNAMIC``: the job gets a uid of its own, leased for the run and
  released only once no process of it is left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import rampart
from rampart.agent import jobscope, landlock
from rampart.agent.jobscope import DynamicUser, KillScope
from rampart.agent.sandbox import FS_MIN_ABI, LEVELS, MAX_SPEC_BYTES, NET_MIN_ABI, compute_level

__all__ = [
    "DYNAMIC",
    "ContainedResult",
    "Containment",
    "ContainmentSpec",
    "ContainmentLimits",
    "detect_abi",
    "kernel_level",
    "refused_result",
    "run_contained",
]

#: TEST-ONLY override: when not None, act as if the kernel's Landlock ABI were at
#: most this value, in :func:`detect_abi` and in the child. It can only lower the
#: ABI (so weaken containment and force refusals), never raise it. Production
#: code must never set it.
_UNSAFE_FORCE_ABI: int | None = None

#: Seconds between SIGTERM and SIGKILL to the process group on timeout.
TERM_GRACE_S = 1.0
#: Seconds to keep draining output after the job exited (escaped holders of the pipes).
DRAIN_S = 1.0

#: ``ContainmentSpec.run_as`` value: lease a dynamic uid for this one run (jobscope).
DYNAMIC = "@dynamic"

_MAX_STATUS_BYTES = 64 * 1024
_CHUNK = 64 * 1024
# ``-I`` ignores PYTHONPATH and the user site, so the child is told explicitly where
# this very copy of rampart lives (argv[1]) instead of trusting the environment.
_BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "from rampart.agent.sandbox import main; sys.exit(main())"
)


@dataclass(frozen=True)
class ContainmentLimits:
    """Resource limits applied to the job (soft = hard; RLIMIT_CORE is always 0)."""

    cpu_seconds: int = 60
    address_space_bytes: int = 1 << 30
    open_files: int = 256
    processes: int = 64
    file_size_bytes: int = 256 << 20


@dataclass(frozen=True)
class ContainmentSpec:
    """What to run and how tightly; paths are absolute."""

    argv: tuple[str, ...]
    cwd: str
    env: Mapping[str, str]
    write_paths: tuple[str, ...]  # caller already intersected with device policy
    deny_read_paths: tuple[str, ...]  # agent state dir, key files
    connect_ports: tuple[int, ...]
    #: user to drop to: a name, DYNAMIC (lease a uid for this run), a DynamicUser the
    #: caller leased (and releases), or None = stay (only sensible when not root)
    run_as: str | DynamicUser | None
    timeout_s: float
    max_output_bytes: int = 64 * 1024  # per stream
    limits: ContainmentLimits = field(default_factory=ContainmentLimits)
    require: str = "full"  # "full" (fs+net+nnp+user) | "filesystem" | "none"


@dataclass(frozen=True)
class Containment:
    """Containment the child verified as applied, right before exec."""

    landlock_abi: int
    filesystem: bool
    network: bool
    no_new_privs: bool
    user: str
    uid: int
    limits: dict[str, int]
    timeout_s: float
    level: str  # "full" | "filesystem" | "none"
    ipc_scoped: bool = False  # abstract unix sockets and signals scoped (ABI >= 6)
    #: kill scope the child verified it is in: "cgroup" | "uid" | "process-group" (jobscope.REAPERS)
    reaper: str = "process-group"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy; the fields of the receipt's ContainmentReport."""
        return asdict(self)


@dataclass(frozen=True)
class ContainedResult:
    """Outcome of one contained run."""

    exit_code: int | None
    signal: int | None
    timed_out: bool
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    started_at: float
    ended_at: float
    containment: Containment | None
    refused: str | None  # set when it could not be contained as required; the job did not run
    #: processes of the job still alive when its main process ended (or was killed on
    #: time-out), all killed then; only those the kill scope could see
    killed: int = 0


def detect_abi() -> int:
    """Landlock ABI of the running kernel (0 = none), honouring the test-only override."""
    abi = landlock.abi_version()
    return abi if _UNSAFE_FORCE_ABI is None else max(0, min(abi, _UNSAFE_FORCE_ABI))


def kernel_level() -> str:
    """Best level this kernel can offer: "full" | "filesystem" | "none"."""
    abi = detect_abi()
    return "full" if abi >= NET_MIN_ABI else "filesystem" if abi >= FS_MIN_ABI else "none"


def _validate(spec: ContainmentSpec) -> None:
    if not spec.argv or not spec.argv[0]:
        raise ValueError("argv must not be empty")
    texts = [*spec.argv, *spec.env.keys(), *spec.env.values(), spec.cwd, *spec.write_paths]
    if not all(isinstance(t, str) and "\0" not in t for t in [*texts, *spec.deny_read_paths]):
        raise ValueError("argv, env and paths must be strings without NUL")
    if isinstance(spec.run_as, DynamicUser):
        if not spec.run_as.held:
            raise ValueError("run_as: the dynamic user was already released")
    elif spec.run_as is not None and not (isinstance(spec.run_as, str) and spec.run_as):
        raise ValueError("run_as must be a user name, DYNAMIC, a DynamicUser or None")
    if spec.require not in LEVELS:
        raise ValueError(f"require must be one of {LEVELS}")
    if not spec.timeout_s > 0:
        raise ValueError("timeout_s must be positive")
    if spec.max_output_bytes < 0:
        raise ValueError("max_output_bytes must not be negative")
    for path in (spec.cwd, *spec.write_paths, *spec.deny_read_paths):
        if not os.path.isabs(path):
            raise ValueError(f"path must be absolute: {path!r}")
    for port in spec.connect_ports:
        if not 0 < port <= 65535:
            raise ValueError(f"invalid TCP port {port}")


def _wire(spec: ContainmentSpec, user: DynamicUser | None, scope: KillScope | None, *,
          tty: bool = False) -> bytes:
    payload = json.dumps(
        {
            "tty": tty,
            "argv": list(spec.argv),
            "cwd": spec.cwd,
            "env": dict(spec.env),
            "write_paths": list(spec.write_paths),
            "deny_read_paths": list(spec.deny_read_paths),
            "connect_ports": list(spec.connect_ports),
            "run_as": spec.run_as if isinstance(spec.run_as, str) and user is None else None,
            "dynamic_uid": user.uid if user is not None else None,
            "reaper": scope.reaper if scope is not None else "process-group",
            "cgroup": scope.cgroup_path if scope is not None else None,
            "limits": asdict(spec.limits),
            "require": spec.require,
            "unsafe_force_abi": _UNSAFE_FORCE_ABI,
        }
    ).encode()
    if len(payload) > MAX_SPEC_BYTES:
        raise ValueError("spec too large")
    return payload


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(rampart.__file__)))


class _Capture:
    """Bounded sink for one stream: keeps ``limit`` bytes, counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False

    def feed(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        if len(chunk) > room:
            self.truncated = True
        if room > 0:
            self.data += chunk[:room]


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _supervise(
    proc: subprocess.Popen[bytes],
    status_fd: int,
    payload: bytes,
    spec: ContainmentSpec,
    scope: KillScope,
) -> tuple[bool, _Capture, _Capture, _Capture]:
    """Feed the spec, capture output, enforce the timeout; returns with the child reaped."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    out, err = _Capture(spec.max_output_bytes), _Capture(spec.max_output_bytes)
    status = _Capture(_MAX_STATUS_BYTES)
    sinks = {proc.stdout.fileno(): out, proc.stderr.fileno(): err, status_fd: status}
    deadline = time.monotonic() + spec.timeout_s
    timed_out = exited = killed = False
    term_at: float | None = None
    drain_until = 0.0
    stdin_fd = proc.stdin.fileno()
    os.set_blocking(stdin_fd, False)
    pending = memoryview(payload)
    try:
        pidfd: int | None = os.pidfd_open(proc.pid)
    except OSError:
        pidfd = None  # pre-5.3 kernel: poll instead
    with selectors.DefaultSelector() as sel:
        for fd in sinks:
            sel.register(fd, selectors.EVENT_READ)
        sel.register(stdin_fd, selectors.EVENT_WRITE)
        if pidfd is not None:
            sel.register(pidfd, selectors.EVENT_READ)
        try:
            while True:
                now = time.monotonic()
                timeout: float | None
                if not exited:
                    if term_at is None and now >= deadline:
                        timed_out, term_at = True, now
                        _killpg(proc.pid, signal.SIGTERM)
                    if term_at is not None and not killed and now >= term_at + TERM_GRACE_S:
                        killed = True
                        _killpg(proc.pid, signal.SIGKILL)
                    if pidfd is None:
                        timeout = 0.05  # no pidfd: poll for the exit
                    elif killed:
                        timeout = None  # nothing left to do but wait for the exit
                    else:
                        wake = deadline if term_at is None else term_at + TERM_GRACE_S
                        timeout = max(0.0, wake - now)
                else:
                    if not sinks or now >= drain_until:
                        break
                    timeout = drain_until - now
                for key, _ in sel.select(timeout):
                    fd = int(key.fd)
                    if fd == stdin_fd:
                        try:
                            pending = pending[os.write(fd, pending[:_CHUNK]) :]
                        except BlockingIOError:
                            continue
                        except BrokenPipeError:
                            pending = pending[:0]  # child died before reading: see status
                        if not pending:
                            sel.unregister(fd)
                            proc.stdin.close()
                    elif fd == pidfd:
                        sel.unregister(fd)
                    else:
                        chunk = os.read(fd, _CHUNK)
                        if chunk:
                            sinks[fd].feed(chunk)
                        else:
                            sel.unregister(fd)
                            del sinks[fd]
                if not exited and _has_exited(proc.pid):
                    # Kill what the job left in its scope and its group while its pid is
                    # still unreaped (so the group id cannot have been reused), then reap.
                    exited = True
                    scope.kill_all(exclude=proc.pid)
                    _killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    drain_until = time.monotonic() + DRAIN_S
        finally:
            if proc.returncode is None:
                _killpg(proc.pid, signal.SIGKILL)
                scope.kill_all(exclude=proc.pid)
                proc.wait()
            if pidfd is not None:
                os.close(pidfd)
    return timed_out, out, err, status


def _has_exited(pid: int) -> bool:
    """True once ``pid`` is a zombie; does not reap it."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _parse_status(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """Return (report, refusal) from the child's status lines."""
    lines = raw.splitlines()
    if not lines:
        return None, None
    try:
        first: Any = json.loads(lines[0])
    except ValueError:
        return None, "malformed containment report"
    if not isinstance(first, dict):
        return None, "malformed containment report"
    if first.get("ok") is True and isinstance(first.get("containment"), dict):
        return first["containment"], None
    return None, str(first.get("error") or "containment failed")


def _containment(report: dict[str, Any], spec: ContainmentSpec) -> Containment:
    filesystem = report["filesystem"] is True
    network = report["network"] is True
    nnp = report["no_new_privs"] is True
    uid = int(report["uid"])
    limits = {str(k): int(v) for k, v in dict(report["limits"]).items()}
    reaper = report.get("reaper", "process-group")
    if reaper not in jobscope.REAPERS:
        raise ValueError("unknown kill scope")
    return Containment(
        landlock_abi=int(report["landlock_abi"]),
        filesystem=filesystem,
        network=network,
        no_new_privs=nnp,
        user=str(report["user"]),
        uid=uid,
        limits=limits,
        timeout_s=spec.timeout_s,
        level=compute_level(
            filesystem=filesystem, network=network, no_new_privs=nnp, uid=uid, reaper=reaper
        ),
        ipc_scoped=report.get("ipc_scoped") is True,
        reaper=reaper,
    )


def refused_result(started_at: float, why: str) -> ContainedResult:
    """A result for a job that did not start (nothing ran): ``refused`` says why."""
    return ContainedResult(
        exit_code=None,
        signal=None,
        timed_out=False,
        stdout=b"",
        stderr=b"",
        stdout_truncated=False,
        stderr_truncated=False,
        started_at=started_at,
        ended_at=time.time(),
        containment=None,
        refused=why,
    )


def run_contained(spec: ContainmentSpec) -> ContainedResult:
    """Run ``spec.argv`` contained; blocks until it exits or times out.

    Raises ValueError only for a malformed spec. Every containment failure is
    returned as a result with ``refused`` set, and then the job did not run.
    """
    _validate(spec)
    _wire(spec, None, None)  # size check before anything is allocated
    started_at = time.time()
    user: DynamicUser | None = spec.run_as if isinstance(spec.run_as, DynamicUser) else None
    own_user = spec.run_as == DYNAMIC
    if own_user:
        try:
            user = jobscope.allocate_dynamic_user()
        except jobscope.UidUnavailable as exc:
            return refused_result(started_at, f"no dynamic user for the job: {exc}")
    try:
        scope = KillScope.open(user.uid if user is not None else None)
        try:
            result = _run(spec, user, scope, started_at)
        finally:
            scope.close()
        if own_user and user is not None:
            extra = user.release() - scope.killed
            if extra:
                result = dataclasses.replace(result, killed=result.killed + len(extra))
        return result
    finally:
        if own_user and user is not None and user.held:
            user.release()


def _run(
    spec: ContainmentSpec, user: DynamicUser | None, scope: KillScope, started_at: float
) -> ContainedResult:
    status_r, status_w = os.pipe()  # both non-inheritable; pass_fds exposes only the write end
    try:
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-c",
                    _BOOTSTRAP,
                    _package_root(),
                    "--status-fd",
                    str(status_w),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(status_w,),
                close_fds=True,
                start_new_session=True,
                env={},
                cwd="/",
            )
        finally:
            os.close(status_w)
    except OSError as exc:
        os.close(status_r)
        return refused_result(started_at, f"cannot start the sandbox: {exc.strerror or exc}")
    # The sandbox reads its whole spec before doing anything else, so moving it now
    # puts everything the job will ever start in the scope.
    scope.adopt(proc.pid)
    payload = _wire(spec, user, scope)
    try:
        with proc:
            timed_out, out, err, status = _supervise(proc, status_r, payload, spec, scope)
    finally:
        os.close(status_r)
    ended_at = time.time()
    code = proc.returncode
    report, refusal = _parse_status(bytes(status.data))
    containment = None
    if report is not None:
        try:
            containment = _containment(report, spec)
        except (KeyError, TypeError, ValueError):
            refusal = "malformed containment report"
    elif refusal is None:
        refusal = (
            "timed out before containment was applied"
            if timed_out
            else f"sandbox exited (status {code}) before reporting containment"
        )
    if refusal is not None:
        containment = None
    return ContainedResult(
        exit_code=code if code >= 0 else None,
        signal=-code if code < 0 else None,
        timed_out=timed_out,
        stdout=bytes(out.data),
        stderr=bytes(err.data),
        stdout_truncated=out.truncated,
        stderr_truncated=err.truncated,
        started_at=started_at,
        ended_at=ended_at,
        containment=containment,
        refused=refusal,
        killed=len(scope.killed),
    )
