"""Nothing outlives its job: a kill-all scope and a per-job user (issue 13; docs/design/job-containment.md).

A job's process group is not a boundary: ``setsid``, a double fork or a
daemon(3) leave it. So every contained job gets two more things, chosen when
it starts:

* a **dynamic user** (:class:`DynamicUser`): a uid of its own from
  :data:`DYNAMIC_UID_MIN`..:data:`DYNAMIC_UID_MAX` (the range systemd uses for
  ``DynamicUser=``) that has no passwd or group entry and no process, held
  with an exclusive ``flock`` for the job's lifetime so two jobs (or two
  agents) never share it. gid = uid, no supplementary groups. A job can then
  neither signal nor ptrace another job, and ``RLIMIT_NPROC`` counts this
  job's processes only.
* a **kill scope** (:class:`KillScope`), the strongest available, in order:

  1. ``cgroup``: a cgroup v2 child of the agent's own cgroup, killed with
     ``cgroup.kill`` (Linux >= 5.14). A process cannot leave it: moving needs
     write access to ``cgroup.procs`` files owned by root.
  2. ``uid``: the job runs as a dynamic user, so every process of that uid is
     the job's: they are found in ``/proc`` and killed through pidfds (no pid
     reuse race) until none is left. A job cannot change its uid (no_new_privs,
     no capabilities).
  3. ``process-group``: only the job's process group is killed; an escapee
     survives. Reported as such, and the level can then not be ``full``.

Invariants: the scope is verified by the sandbox child (its own
``/proc/self/cgroup``, its own uid) before the job is exec'd, never taken
from the request; :meth:`KillScope.kill_all` counts every process it killed;
a dynamic uid is released only after no process of it is left.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import os
import pwd
import random
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from .errors import LocalFault

__all__ = [
    "DYNAMIC_UID_MAX",
    "DYNAMIC_UID_MIN",
    "REAPERS",
    "DynamicUser",
    "KillScope",
    "UidUnavailable",
    "allocate_dynamic_user",
    "cgroup_root",
    "processes_of_uid",
]

#: The dynamic uid range (systemd's DynamicUser= range; never a real account).
DYNAMIC_UID_MIN = 61184
DYNAMIC_UID_MAX = 65519
#: Kill mechanisms, weakest first. Only the last two kill every process of a job.
REAPERS = ("process-group", "uid", "cgroup")
#: Where the agent keeps one lock file per leased uid (on tmpfs: gone after a reboot).
UID_LOCK_DIR = "/run/rampart-agent/dynamic-uid"
#: Name of the agent's cgroup subtree holding one child cgroup per job.
CGROUP_JOBS = "rampart-jobs"
#: How many candidate uids to try before giving up.
_UID_TRIES = 64
#: Rounds of find-and-kill before a sweep gives up (each round kills all it sees).
_SWEEP_ROUNDS = 200

#: TEST-ONLY: act as if no cgroup v2 could be used (only ever weakens the scope,
#: to exercise the uid and process-group fallbacks). Production code must never set it.
_UNSAFE_DISABLE_CGROUP = False

# uids leased by this process (a second line of defence besides the flock: two
# threads of one agent share a process, and flock is per open file description).
_leased: set[int] = set()
_leased_lock = threading.Lock()


class UidUnavailable(LocalFault):
    """No free dynamic uid could be leased (range exhausted, or no lock directory)."""


# --- /proc -----------------------------------------------------------------------------------------


def _uids_of(pid: int) -> tuple[int, ...] | None:
    """(real, effective, saved, fs) uids of ``pid``, or None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    uids: tuple[int, ...] | None = None
    for line in text.splitlines():
        if line.startswith("State:") and "Z" in line.split()[1:2]:
            return None
        if line.startswith("Uid:"):
            uids = tuple(int(x) for x in line.split()[1:5])
    return uids


def processes_of_uid(uid: int) -> list[int]:
    """Live (non-zombie) processes any of whose uids is ``uid``."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            uids = _uids_of(int(name))
            if uids is not None and uid in uids:
                pids.append(int(name))
    return pids


def _kill_pid_of_uid(pid: int, uid: int) -> bool:
    """SIGKILL ``pid`` if it (still) runs as ``uid``; checked on a pidfd so a reused pid is never hit."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        uids = _uids_of(pid)  # the pidfd pins the process: this is the one we will signal
        if uids is None or uid not in uids:
            return False
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    except OSError:
        return False
    finally:
        os.close(pidfd)


def _pgrp_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()  # after "pid (comm) "
    if not fields or fields[0] == b"Z":
        return None
    return int(fields[2])


def processes_in_group(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    return [int(n) for n in os.listdir("/proc") if n.isdigit() and _pgrp_of(int(n)) == pgid]


def sweep_uid(uid: int, *, exclude: int | None = None) -> set[int]:
    """Kill every process of ``uid`` until none is left; returns the pids killed.

    Terminates: SIGKILLed processes cannot fork, and RLIMIT_NPROC bounds how
    many the uid can have. Raises RuntimeError when processes remain anyway.
    """
    if uid == 0 or uid == os.getuid() or uid == os.geteuid():
        raise ValueError("refusing to sweep root's or the agent's own uid")
    killed: set[int] = set()
    for _ in range(_SWEEP_ROUNDS):
        pids = [p for p in processes_of_uid(uid) if p != exclude]
        if not pids:
            return killed
        for pid in pids:
            if _kill_pid_of_uid(pid, uid):
                killed.add(pid)
        time.sleep(0.005)
    raise RuntimeError(f"processes of uid {uid} survive {_SWEEP_ROUNDS} kill rounds")


# --- dynamic users ---------------------------------------------------------------------------------


@dataclass
class DynamicUser:
    """A leased uid (gid = uid). Use as a context manager or call :meth:`release`."""

    uid: int
    _fd: int | None = field(default=None, repr=False)
    _path: str = field(default="", repr=False)

    @property
    def gid(self) -> int:
        return self.uid

    @property
    def name(self) -> str:
        """How receipts name it: not an account name (':' is not allowed in one)."""
        return f"dynamic:{self.uid}"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> set[int]:
        """Kill whatever of this uid is left, then give the uid back; returns the pids killed.

        If processes of it survive the sweep (RuntimeError), the uid stays leased
        for the agent's lifetime: it is never handed to another job.
        """
        if self._fd is None:
            return set()
        killed = sweep_uid(self.uid)
        # Unlink while holding the lock; a waiter that opened the old inode re-checks it.
        with contextlib.suppress(OSError):
            os.unlink(self._path)
        os.close(self._fd)
        self._fd = None
        with _leased_lock:
            _leased.discard(self.uid)
        return killed

    def __enter__(self) -> DynamicUser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _has_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        pass
    try:
        grp.getgrgid(uid)
        return True
    except KeyError:
        return False


def _try_lock(uid: int, lock_dir: str) -> tuple[int, str] | None:
    path = os.path.join(lock_dir, str(uid))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    try:
        same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
    except FileNotFoundError:
        same = False  # released and unlinked between our open and our lock
    if not same:
        os.close(fd)
        return None
    return fd, path


def allocate_dynamic_user(*, lock_dir: str = UID_LOCK_DIR) -> DynamicUser:
    """Lease a free uid: no passwd/group entry, no process, not leased by any agent on this host.

    Only root can use one (setuid needs it). Raises UidUnavailable.
    """
    if os.geteuid() != 0:
        raise UidUnavailable("only a root agent can run jobs as dynamic users")
    try:
        os.makedirs(lock_dir, mode=0o700, exist_ok=True)
        st = os.stat(lock_dir, follow_symlinks=False)
    except OSError as exc:
        raise UidUnavailable(f"uid lock directory {lock_dir}: {exc.strerror or exc}") from None
    if st.st_uid != 0 or st.st_mode & 0o022 or not os.path.isdir(lock_dir) or os.path.islink(lock_dir):
        raise UidUnavailable(f"uid lock directory {lock_dir} is not a root-only directory")
    rng = random.SystemRandom()
    for _ in range(_UID_TRIES):
        uid = rng.randint(DYNAMIC_UID_MIN, DYNAMIC_UID_MAX)
        with _leased_lock:
            if uid in _leased:
                continue
            _leased.add(uid)
        got = None
        try:
            if not _has_account(uid):
                got = _try_lock(uid, lock_dir)
                if got is not None and processes_of_uid(uid):
                    os.close(got[0])  # some process already runs as it: not free
                    got = None
        finally:
            if got is None:
                with _leased_lock:
                    _leased.discard(uid)
        if got is not None:
            return DynamicUser(uid, got[0], got[1])
    raise UidUnavailable(f"no free uid in {DYNAMIC_UID_MIN}..{DYNAMIC_UID_MAX} after {_UID_TRIES} tries")


@contextlib.contextmanager
def dynamic_user(*, lock_dir: str = UID_LOCK_DIR) -> Iterator[DynamicUser]:
    user = allocate_dynamic_user(lock_dir=lock_dir)
    with user:
        yield user


# --- cgroup v2 -------------------------------------------------------------------------------------


def _cgroup2_mount() -> tuple[str, str] | None:
    """(mount point, root within the hierarchy) of a cgroup2 mount, or None."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        left, sep, right = line.partition(" - ")
        if sep and right.split(" ", 1)[0] == "cgroup2":
            fields = left.split()
            return fields[4].replace("\\040", " "), fields[3].replace("\\040", " ")
    return None


def cgroup_root() -> str | None:
    """Directory under which the agent may create job cgroups (its own cgroup's ``rampart-jobs``).

    None when there is no cgroup v2 hierarchy, ``cgroup.kill`` is missing
    (Linux < 5.14) or the agent cannot create cgroups there (not delegated,
    read-only, not root).
    """
    mount = None if _UNSAFE_DISABLE_CGROUP else _cgroup2_mount()
    if mount is None:
        return None
    point, root = mount
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            own = next((ln[3:] for ln in f.read().splitlines() if ln.startswith("0::")), None)
    except OSError:
        return None
    if own is None or own.endswith(" (deleted)"):
        return None
    if root != "/":
        if not (own == root or own.startswith(root.rstrip("/") + "/")):
            return None
        own = own[len(root.rstrip("/")):] or "/"
    base = os.path.join(point, own.lstrip("/"), CGROUP_JOBS)
    try:
        os.makedirs(base, exist_ok=True)
    except OSError:
        return None
    if not os.path.exists(os.path.join(base, "cgroup.kill")):
        return None
    return base


def _cgroup_relpath(directory: str) -> str | None:
    """The path ``/proc/<pid>/cgroup`` shows for a process in ``directory``."""
    mount = _cgroup2_mount()
    if mount is None:
        return None
    point, root = mount
    rel = os.path.relpath(directory, point)
    if rel.startswith(".."):
        return None
    return os.path.normpath(os.path.join(root, rel))


def cgroup_of(pid: int | str = "self") -> str | None:
    """The cgroup v2 path of ``pid`` as /proc shows it."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
            return next((ln[3:] for ln in f.read().splitlines() if ln.startswith("0::")), None)
    except OSError:
        return None


@dataclass
class KillScope:
    """Where one job's processes are found and killed. Build with :meth:`open`."""

    reaper: str  # one of REAPERS
    cgroup_dir: str | None = None
    cgroup_path: str | None = None  # as /proc/<pid>/cgroup shows it
    uid: int | None = None  # a dynamic uid whose every process is the job's
    pgid: int | None = None  # the job's process group (the sandbox's pid: it calls setsid)
    killed: set[int] = field(default_factory=set)

    @classmethod
    def open(cls, uid: int | None) -> KillScope:
        """The strongest scope available now. ``uid``: the job's dynamic uid, if it has one."""
        base = cgroup_root()
        if base is not None:
            directory = os.path.join(base, f"job-{uuid.uuid4().hex}")
            try:
                os.mkdir(directory, 0o755)
            except OSError:
                pass
            else:
                path = _cgroup_relpath(directory)
                if path is not None:
                    return cls("cgroup", directory, path, uid)
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
        return cls("uid" if uid is not None else "process-group", uid=uid)

    def adopt(self, pid: int) -> None:
        """Move ``pid`` (the sandbox, before it runs anything of the job) into the cgroup.

        On failure the scope degrades to the next mechanism; the sandbox's own
        check of its cgroup decides what is reported.
        """
        self.pgid = pid
        if self.cgroup_dir is None:
            return
        try:
            with open(os.path.join(self.cgroup_dir, "cgroup.procs"), "w", encoding="ascii") as f:
                f.write(str(pid))
            if cgroup_of(pid) == self.cgroup_path:
                return
        except OSError:
            pass
        self._drop_cgroup()

    def _drop_cgroup(self) -> None:
        if self.cgroup_dir is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self.cgroup_dir)
        self.cgroup_dir = self.cgroup_path = None
        self.reaper = "uid" if self.uid is not None else "process-group"

    def members(self) -> set[int]:
        """Live processes of the job this scope can see (process-group: its group only)."""
        found: set[int] = set(processes_in_group(self.pgid)) if self.pgid is not None else set()
        if self.cgroup_dir is not None:
            try:
                with open(os.path.join(self.cgroup_dir, "cgroup.procs"), encoding="ascii") as f:
                    found |= {int(x) for x in f.read().split()}
            except OSError:
                pass
        if self.uid is not None:
            found |= set(processes_of_uid(self.uid))
        return found

    def kill_all(self, *, exclude: int | None = None) -> int:
        """Kill every process of the job (but ``exclude``, the unreaped main pid); returns how many.

        Call when the job's main process has ended (is a zombie, or reaped).
        The count is of distinct processes found alive and killed.
        """
        before = {p for p in self.members() if p != exclude and _uids_of(p) is not None}
        if self.pgid is not None:
            with contextlib.suppress(OSError):
                os.killpg(self.pgid, signal.SIGKILL)
        if self.cgroup_dir is not None:
            try:
                with open(os.path.join(self.cgroup_dir, "cgroup.kill"), "w", encoding="ascii") as f:
                    f.write("1")
                self._wait_empty()
            except OSError:
                pass
        if self.uid is not None:
            before |= sweep_uid(self.uid, exclude=exclude)
        self.killed |= before
        return len(before)

    def _wait_empty(self, timeout: float = 5.0) -> None:
        assert self.cgroup_dir is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(os.path.join(self.cgroup_dir, "cgroup.events"), encoding="ascii") as f:
                    if "populated 0" in f.read():
                        return
            except OSError:
                return
            time.sleep(0.005)

    def close(self) -> None:
        """Remove the job's cgroup (it must be empty: call after :meth:`kill_all` and the reap)."""
        if self.cgroup_dir is not None:
            for _ in range(100):
                try:
                    os.rmdir(self.cgroup_dir)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        break
                    time.sleep(0.01)  # a reaped zombie may take a moment to leave
