"""In-child half of job containment: ``python -I -m rampart.agent.sandbox --status-fd N``.

The parent (:mod:`rampart.agent.containment`) writes one JSON spec to our stdin
and closes it. We then, in this order: setsid; set resource limits; set
no_new_privs; build the Landlock ruleset (as the agent, which sees the whole
tree); drop to the job user (a named one, or the dynamic uid the parent leased);
enforce Landlock; check the kill scope the parent put us in (our own cgroup, our
own uid: :mod:`rampart.agent.jobscope`); report what actually applied as
one JSON line on the status fd (close-on-exec, so the job can never write to
it); execve the job with exactly the spec's environment.

With ``--spec-fd M`` (a remote session, :mod:`rampart.agent.session.proc`) the spec
comes on pipe M instead, stdin stays what the parent gave (a pty's slave end or a
pipe), and a spec with ``"tty": true`` makes stdin our controlling terminal right
after setsid, so the shell gets job control and Ctrl-C as on a console.

Invariants:

* The job is exec'd only after every step succeeded and the applied level is
  at least ``require``; any failure before exec is reported on the status fd
  and we exit 126 without running it.
* The report describes what was applied and verified, never what was asked:
  the kill scope is ``cgroup`` only if ``/proc/self/cgroup`` shows the job's
  cgroup, ``uid`` only if we run as the leased dynamic uid.
* With Landlock, the job may write only beneath the declared write paths (plus
  the ``/dev/null`` sink), may read and execute everywhere except beneath the
  deny-read paths, may TCP-connect only to the declared ports and never bind.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import pwd
import resource
import signal
import stat
import sys
import termios
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

from rampart.agent import landlock
from rampart.agent.errors import LocalFault
from rampart.agent.jobscope import DYNAMIC_UID_MAX, DYNAMIC_UID_MIN

EXIT_REFUSED = 126
EXIT_NOT_FOUND = 127
MAX_SPEC_BYTES = 1 << 20
LEVELS = ("none", "filesystem", "full")
#: Kill scopes that reach every process of a job (jobscope.REAPERS minus "process-group").
KILL_ALL_REAPERS = ("uid", "cgroup")
#: Lowest ABI at which every write-class right (incl. TRUNCATE) is handled.
FS_MIN_ABI = 3
NET_MIN_ABI = 4
SCOPE_MIN_ABI = 6
#: The only path outside the write paths that may be opened for writing: a data sink.
WRITE_SINKS = ("/dev/null",)

_PR_SET_NO_NEW_PRIVS = 38
_PR_GET_NO_NEW_PRIVS = 39
_LIMIT_NAMES = {
    "cpu_seconds": resource.RLIMIT_CPU,
    "address_space_bytes": resource.RLIMIT_AS,
    "open_files": resource.RLIMIT_NOFILE,
    "processes": resource.RLIMIT_NPROC,
    "file_size_bytes": resource.RLIMIT_FSIZE,
}


class SandboxError(LocalFault):
    """A containment step failed or fell short; the job must not run."""


@dataclass(frozen=True)
class _Spec:
    argv: list[str]
    cwd: str
    env: dict[str, str]
    write_paths: list[str]
    deny_read_paths: list[str]
    connect_ports: list[int]
    run_as: str | None
    limits: dict[str, int]
    require: str
    force_abi: int | None
    dynamic_uid: int | None = None
    reaper: str = "process-group"
    cgroup: str | None = None
    tty: bool = False


def compute_level(*, filesystem: bool, network: bool, no_new_privs: bool, uid: int,
                  reaper: str = "process-group") -> str:
    """Containment level implied by what applied: never more than all its parts.

    ``full`` also needs a kill scope that reaches every process of the job
    (``reaper`` in :data:`KILL_ALL_REAPERS`): otherwise a ``setsid`` escapee outlives it.
    """
    if not (filesystem and no_new_privs):
        return "none"
    return "full" if network and uid != 0 and reaper in KILL_ALL_REAPERS else "filesystem"


def level_satisfies(level: str, require: str) -> bool:
    """True when ``level`` is at least ``require`` in none < filesystem < full."""
    return LEVELS.index(level) >= LEVELS.index(require)


def _norm(path: str) -> str:
    if not os.path.isabs(path):
        raise SandboxError(f"path must be absolute: {path!r}")
    norm = os.path.normpath(path)
    return "/" + norm.lstrip("/")  # POSIX normpath keeps a leading '//'


def _is_within(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root + "/")


def read_roots_excluding(denied: Iterable[str]) -> list[str]:
    """Paths whose union covers the whole tree except beneath each denied path.

    Landlock only allows, so a denied path is carved out by granting every
    sibling of it and of each of its ancestors, walking down from ``/``.
    Invariants: no returned path is a denied path, an ancestor of one, or
    beneath one; symlinks are never returned (their target is covered by its
    own rule, and following one could lead into a denied tree). With nothing
    denied the result is ``["/"]``.
    """
    excluded: set[str] = set()
    for path in denied:
        excluded.add(_norm(path))
        excluded.add(os.path.realpath(_norm(path)))
    if "/" in excluded:
        return []
    # Keep only the topmost denied paths: a nested one is already covered.
    excluded = {p for p in excluded if not any(q != p and _is_within(p, q) for q in excluded)}
    if not excluded:
        return ["/"]
    partial: set[str] = set()
    for path in excluded:
        parent = os.path.dirname(path)
        while parent not in partial:
            partial.add(parent)
            if parent == "/":
                break
            parent = os.path.dirname(parent)
    roots: list[str] = []
    for directory in sorted(partial):
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue  # nothing granted there: stays denied
        for entry in entries:
            child = os.path.join(directory, entry.name)
            if child in excluded or child in partial or entry.is_symlink():
                continue
            roots.append(child)
    return sorted(roots)


@contextmanager
def _step(name: str) -> Iterator[None]:
    """Turn any failure inside a containment step into a one-line SandboxError."""
    try:
        yield
    except SandboxError as exc:
        raise SandboxError(f"{name}: {exc}") from None
    except OSError as exc:
        where = f" {exc.filename!r}" if exc.filename else ""
        raise SandboxError(f"{name}:{where} {exc.strerror or exc}") from None
    except (KeyError, ValueError, TypeError) as exc:
        raise SandboxError(f"{name}: {exc}") from None


def _is_cstr(value: object) -> bool:
    return isinstance(value, str) and "\0" not in value


def _parse_spec(raw: bytes) -> _Spec:
    doc: Any = json.loads(raw)

    def strs(key: str) -> list[str]:
        value = doc[key]
        if not isinstance(value, list) or not all(_is_cstr(v) for v in value):
            raise ValueError(f"{key} must be a list of strings without NUL")
        return value

    argv = strs("argv")
    env = doc["env"]
    ports = doc["connect_ports"]
    limits = doc["limits"]
    if not argv or not argv[0]:
        raise ValueError("argv must not be empty")
    if not isinstance(env, dict) or not all(
        _is_cstr(k) and _is_cstr(v) and k and "=" not in k for k, v in env.items()
    ):
        raise ValueError("env must map names to strings without NUL")
    if not isinstance(ports, list) or not all(isinstance(p, int) and 0 < p <= 65535 for p in ports):
        raise ValueError("connect_ports must be TCP ports in 1..65535")
    if (
        not isinstance(limits, dict)
        or set(limits) != set(_LIMIT_NAMES)
        or not all(isinstance(v, int) and v >= 0 for v in limits.values())
    ):
        raise ValueError(f"limits must give {sorted(_LIMIT_NAMES)} as non-negative integers")
    if doc["require"] not in LEVELS:
        raise ValueError(f"require must be one of {LEVELS}")
    if not _is_cstr(doc["cwd"]) or not os.path.isabs(doc["cwd"]):
        raise ValueError("cwd must be an absolute path")
    run_as, force_abi = doc.get("run_as"), doc.get("unsafe_force_abi")
    if run_as is not None and (not _is_cstr(run_as) or not run_as):
        raise ValueError("run_as must be a user name or null")
    dynamic_uid, reaper, cgroup = doc.get("dynamic_uid"), doc.get("reaper"), doc.get("cgroup")
    if dynamic_uid is not None and (
        type(dynamic_uid) is not int or not DYNAMIC_UID_MIN <= dynamic_uid <= DYNAMIC_UID_MAX
        or run_as is not None
    ):
        raise ValueError("dynamic_uid must be a uid of the dynamic range, instead of run_as")
    if reaper not in ("process-group", *KILL_ALL_REAPERS):
        raise ValueError("reaper must be process-group, uid or cgroup")
    if cgroup is not None and (not _is_cstr(cgroup) or not cgroup.startswith("/")):
        raise ValueError("cgroup must be an absolute cgroup path or null")
    if force_abi is not None and not isinstance(force_abi, int):
        raise ValueError("unsafe_force_abi must be an integer or null")
    tty = doc.get("tty", False)
    if not isinstance(tty, bool):
        raise ValueError("tty must be true or false")
    return _Spec(
        tty=tty,
        argv=argv,
        cwd=doc["cwd"],
        env=env,
        write_paths=[_norm(p) for p in strs("write_paths")],
        deny_read_paths=[_norm(p) for p in strs("deny_read_paths")],
        connect_ports=ports,
        run_as=run_as,
        limits=limits,
        require=doc["require"],
        force_abi=force_abi,
        dynamic_uid=dynamic_uid,
        reaper=reaper,
        cgroup=cgroup,
    )


def _read_spec(spec_fd: int | None = None) -> _Spec:
    """Read the spec to EOF: from stdin (then pointed at /dev/null for the job), or from ``spec_fd``
    (then closed; stdin stays the job's)."""
    fd = 0 if spec_fd is None else spec_fd
    chunks: list[bytes] = []
    size = 0
    while chunk := os.read(fd, 65536):
        size += len(chunk)
        if size > MAX_SPEC_BYTES:
            raise SandboxError("spec too large")
        chunks.append(chunk)
    if spec_fd is None:
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    else:
        os.close(spec_fd)
    return _parse_spec(b"".join(chunks))


def _set_limits(limits: dict[str, int]) -> dict[str, int]:
    """Set hard = soft limits (CPU: hard one second later, for SIGXCPU first); core off."""
    for name, which in _LIMIT_NAMES.items():
        soft = limits[name]
        hard = soft + 1 if which == resource.RLIMIT_CPU else soft
        resource.setrlimit(which, (soft, hard))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    applied = {name: resource.getrlimit(which)[0] for name, which in _LIMIT_NAMES.items()}
    applied["core_bytes"] = resource.getrlimit(resource.RLIMIT_CORE)[0]
    return applied


def _set_no_new_privs() -> bool:
    """Set no_new_privs (setuid/file caps can no longer raise privileges); verify it."""
    libc = ctypes.CDLL(None, use_errno=True)
    zero = ctypes.c_ulong(0)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), zero, zero, zero) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return bool(libc.prctl(_PR_GET_NO_NEW_PRIVS, zero, zero, zero, zero) == 1)


def _drop_user(run_as: str | None, dynamic_uid: int | None = None) -> tuple[str, int]:
    """Irreversibly become ``run_as`` or ``dynamic_uid`` (gid = uid), no supplementary groups.

    Verified by re-reading the ids, and by failing to regain root.
    """
    if dynamic_uid is not None:
        if os.geteuid() != 0:
            raise SandboxError("cannot switch to a dynamic user: the agent is not root")
        try:
            pwd.getpwuid(dynamic_uid)
        except KeyError:
            pass
        else:
            raise SandboxError(f"dynamic uid {dynamic_uid} belongs to an account")
        return _become(f"dynamic:{dynamic_uid}", dynamic_uid, dynamic_uid)
    if run_as is None:
        uid = os.getuid()
        try:
            return pwd.getpwuid(uid).pw_name, uid
        except KeyError:
            return str(uid), uid
    try:
        pw = pwd.getpwnam(run_as)
    except KeyError:
        raise SandboxError(f"unknown user {run_as!r}") from None
    if os.geteuid() != 0:
        if pw.pw_uid == os.getuid() == os.geteuid():
            return pw.pw_name, pw.pw_uid
        raise SandboxError(f"cannot switch to user {run_as!r}: the agent is not root")
    return _become(pw.pw_name, pw.pw_uid, pw.pw_gid)


def _become(name: str, uid: int, gid: int) -> tuple[str, int]:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
        raise SandboxError(f"identity did not change to {name!r}")
    if uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise SandboxError("root privileges could be regained after the drop")
    return name, uid


def _verified_reaper(spec: _Spec, uid: int) -> str:
    """The kill scope we are really in (never more than the parent claimed)."""
    if spec.reaper == "cgroup" and spec.cgroup is not None:
        try:
            with open("/proc/self/cgroup", encoding="utf-8") as f:
                mine = [ln[3:] for ln in f.read().splitlines() if ln.startswith("0::")]
        except OSError:
            mine = []
        if mine == [spec.cgroup]:
            return "cgroup"
    if spec.reaper in KILL_ALL_REAPERS and spec.dynamic_uid is not None and uid == spec.dynamic_uid:
        return "uid"
    return "process-group"


def _build_ruleset(spec: _Spec, abi: int) -> landlock.Ruleset | None:
    """Build, without enforcing, the job's Landlock ruleset (None when ABI < 1).

    Built with the agent's credentials so every sibling of the deny-read paths
    is seen; granting a path never grants more than DAC allows the job later.
    """
    if abi < 1:
        return None
    denied = [os.path.realpath(p) for p in spec.deny_read_paths] + spec.deny_read_paths
    all_fs = landlock.fs_rights(abi)
    ruleset = landlock.Ruleset(
        abi, handled_fs=all_fs, handled_net=landlock.net_rights(abi), scoped=landlock.scopes(abi)
    )
    try:
        for root in read_roots_excluding(spec.deny_read_paths):
            try:
                ruleset.allow_path(root, landlock.FS_READ_RIGHTS, follow_symlinks=False)
            except FileNotFoundError:
                continue  # vanished since listing: nothing to grant
        for path in spec.write_paths:
            # Check the very inode the rule is added on, so a swapped symlink cannot
            # redirect the grant onto a denied tree.
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC | os.O_DIRECTORY)
            try:
                real = os.readlink(f"/proc/self/fd/{fd}")
                for deny in denied:
                    if _is_within(real, deny) or _is_within(deny, real):
                        raise SandboxError(f"write path {path!r} overlaps deny-read path {deny!r}")
                ruleset.allow_fd(fd, all_fs)
            finally:
                os.close(fd)
        for sink in WRITE_SINKS:
            try:
                fd = os.open(sink, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                if stat.S_ISCHR(os.fstat(fd).st_mode):
                    ruleset.allow_fd(fd, landlock.ACCESS_FS_WRITE_FILE | landlock.FS_READ_RIGHTS)
            finally:
                os.close(fd)
        for port in spec.connect_ports:
            ruleset.allow_port(port, landlock.ACCESS_NET_CONNECT_TCP)
    except BaseException:
        ruleset.close()
        raise
    return ruleset


def _contain(spec: _Spec) -> dict[str, Any]:
    """Apply every containment step in order; returns the report of what applied."""
    abi = landlock.abi_version()
    if spec.force_abi is not None:  # test-only: may lower, never raise, the ABI
        abi = max(0, min(abi, spec.force_abi))
    with _step("setsid"):
        if os.getsid(0) != os.getpid():
            os.setsid()
    if spec.tty:
        with _step("controlling terminal"):
            if not os.isatty(0):
                raise SandboxError("a tty session needs a terminal on stdin")
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    with _step("resource limits"):
        limits = _set_limits(spec.limits)
    with _step("no_new_privs"):
        nnp = _set_no_new_privs()
    with _step("landlock"):
        ruleset = _build_ruleset(spec, abi)
    try:
        with _step("drop user"):
            user, uid = _drop_user(spec.run_as, spec.dynamic_uid)
        with _step("cwd"):
            os.chdir(spec.cwd)
        if ruleset is not None:
            with _step("landlock"):
                ruleset.restrict_self()
    finally:
        if ruleset is not None:
            ruleset.close()
    enforced = ruleset is not None
    filesystem = enforced and abi >= FS_MIN_ABI
    network = enforced and abi >= NET_MIN_ABI
    scoped = enforced and abi >= SCOPE_MIN_ABI
    reaper = _verified_reaper(spec, uid)
    level = compute_level(
        filesystem=filesystem, network=network, no_new_privs=nnp, uid=uid, reaper=reaper
    )
    if not level_satisfies(level, spec.require):
        raise SandboxError(
            f"containment level {level!r} is below the required {spec.require!r} "
            f"(landlock ABI {abi}, filesystem={filesystem}, network={network}, "
            f"no_new_privs={nnp}, uid={uid}, kill scope={reaper})"
        )
    return {
        "landlock_abi": abi,
        "filesystem": filesystem,
        "network": network,
        "ipc_scoped": scoped,
        "no_new_privs": nnp,
        "user": user,
        "uid": uid,
        "limits": limits,
        "level": level,
        "reaper": reaper,
    }


def _report(fd: int, message: dict[str, Any]) -> None:
    data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
    while data:
        data = data[os.write(fd, data) :]


def _exec(spec: _Spec, status_fd: int) -> NoReturn:
    """Replace this process with the job; on failure report it and exit 126/127."""
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores these; the job must not
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvpe(spec.argv[0], spec.argv, spec.env)  # noqa: S606 - argv is the signed job
    except OSError as exc:
        message = f"rampart-sandbox: cannot execute {spec.argv[0]!r}: {exc.strerror or exc}"
        try:
            _report(status_fd, {"ok": False, "stage": "exec", "error": message})
            os.write(2, message.encode() + b"\n")
        finally:
            os._exit(EXIT_NOT_FOUND if exc.errno == errno.ENOENT else EXIT_REFUSED)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns an exit status only when the job was not exec'd."""
    args = list(sys.argv[1:] if argv is None else argv)
    spec_fd: int | None = None
    if len(args) == 4 and args[2] == "--spec-fd" and args[3].isdigit():
        spec_fd = int(args.pop())
        args.pop()
    if len(args) != 2 or args[0] != "--status-fd" or not args[1].isdigit():
        os.write(2, b"usage: python -I -m rampart.agent.sandbox --status-fd N [--spec-fd M]\n")
        return 2
    status_fd = int(args[1])
    try:
        for fd in (status_fd, spec_fd):
            if fd is not None and not stat.S_ISFIFO(os.fstat(fd).st_mode):
                raise OSError(errno.EBADF, "status or spec fd is not a pipe")
        os.set_inheritable(status_fd, False)
        if spec_fd is not None:
            os.set_inheritable(spec_fd, False)
    except OSError as exc:
        os.write(2, f"rampart-sandbox: bad status fd: {exc.strerror}\n".encode())
        return EXIT_REFUSED
    try:
        with _step("spec"):
            spec = _read_spec(spec_fd)
        report = _contain(spec)
    except Exception as exc:  # noqa: BLE001 - every failure before exec refuses the job
        error = str(exc) if isinstance(exc, SandboxError) else f"{type(exc).__name__}: {exc}"
        try:
            _report(status_fd, {"ok": False, "stage": "contain", "error": error})
        except OSError:
            pass
        return EXIT_REFUSED
    try:
        _report(status_fd, {"ok": True, "containment": report})
    except OSError:
        return EXIT_REFUSED  # nobody can learn what applied: do not run the job
    _exec(spec, status_fd)


if __name__ == "__main__":
    sys.exit(main())
