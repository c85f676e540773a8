"""Processes from /proc/[pid]: executable, command line, user, parent, start time.

For requirement H2 (remote access tools loaded only in memory) each process
says whether its executable is still on disk:

* ``exe_deleted``: the kernel marks the ``exe`` link " (deleted)": the file
  was unlinked or replaced after the process started, or it is a memfd.
* ``memory_only``: the executable never was a file on disk: a memfd
  (``memfd_create`` + ``execve`` of ``/proc/self/fd/N``), or a file on a
  tmpfs/ramfs mount such as /dev/shm.

Kernel threads are left out (they carry no executable and churn). A process
may exit at any moment of the walk; it is then skipped, never an error. The
key of a process is (pid, start ticks), since pids are reused.

Command lines often carry credentials. Before they leave the host, the value
of any option or ``NAME=value`` argument whose name says password, secret,
token, API key, access key, private key or credential is replaced with
``<redacted>``, as is the password of a URL (``scheme://user:<redacted>@host``).
This is a heuristic: it removes the common forms, not every secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping

from rampart.wire.inventory import DEFAULT_LIMITS, InventoryLimits, Process, canonical, process_key

from ._util import clip, passwd_names, try_read_text
from .system import boot_time

PF_KTHREAD = 0x00200000
_DELETED = " (deleted)"
MEMORY_FS = frozenset({"tmpfs", "ramfs"})
REDACTED = "<redacted>"
_SECRET_NAME = re.compile(
    r"password|passwd|passphrase|(?<![a-z])pass(?![a-z])|secret|token(?![a-z])|api[-_]?key|access[-_]?key"
    r"|private[-_]?key|credential", re.IGNORECASE)
_ENV_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=")
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*:)[^/\s]+@")


def redact_cmdline(args: list[str]) -> list[str]:
    """``args`` with likely secrets replaced by :data:`REDACTED` (see the module docstring)."""
    out: list[str] = []
    hide_next = False
    for arg in args:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        if arg.startswith("-") and len(arg) > 1:
            name, eq, _ = arg.partition("=")
            if _SECRET_NAME.search(name):
                if eq:
                    out.append(f"{name}={REDACTED}")
                else:
                    out.append(arg)
                    hide_next = True
                continue
        elif (m := _ENV_ASSIGNMENT.match(arg)) and _SECRET_NAME.search(m.group(1)):
            out.append(f"{m.group(1)}={REDACTED}")
            continue
        out.append(_URL_PASSWORD.sub(lambda u: f"{u.group(1)}{REDACTED}@", arg))
    return out


def memory_mounts(mounts_text: str) -> list[str]:
    """Mount points of memory-backed filesystems, longest first (for prefix matching)."""
    points = []
    for line in mounts_text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] in MEMORY_FS:
            points.append(parts[1].replace("\\040", " "))
    return sorted(set(points), key=len, reverse=True)


def _on_mount(path: str, mount: str) -> bool:
    return path == mount or path.startswith(mount.rstrip("/") + "/")


def parse_stat(text: str) -> tuple[str, int, int, int] | None:
    """(comm, ppid, flags, start ticks) from /proc/[pid]/stat, or None when malformed.

    The command name is between the first "(" and the *last* ")", since it
    may itself contain parentheses and spaces.
    """
    left, right = text.find("("), text.rfind(")")
    if left < 0 or right < left:
        return None
    rest = text[right + 2:].split()
    if len(rest) < 20 or not (rest[1].isdigit() and rest[6].isdigit() and rest[19].isdigit()):
        return None
    return text[left + 1:right], int(rest[1]), int(rest[6]), int(rest[19])


def parse_status_uids(text: str) -> tuple[int, int] | None:
    """(real uid, effective uid) from /proc/[pid]/status."""
    for line in text.splitlines():
        if line.startswith("Uid:"):
            parts = line.split()
            if len(parts) >= 3 and parts[1].isdigit() and parts[2].isdigit():
                return int(parts[1]), int(parts[2])
            return None
    return None


def split_cmdline(raw: bytes, max_bytes: int, max_args: int) -> tuple[list[str], bool]:
    """argv from /proc/[pid]/cmdline (NUL-separated), within ``max_bytes`` and ``max_args``."""
    truncated = len(raw) > max_bytes
    raw = raw[:max_bytes]
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    if not raw:
        return [], truncated
    args = raw.split(b"\0")
    if len(args) > max_args:
        args, truncated = args[:max_args], True
    return [a.decode("utf-8", "replace") for a in args], truncated


def classify_exe(link: str, mem_mounts: Iterable[str]) -> tuple[str, bool, bool]:
    """(path, exe_deleted, memory_only) for the target of /proc/[pid]/exe."""
    deleted = link.endswith(_DELETED)
    path = link[: -len(_DELETED)] if deleted else link
    memfd = path.startswith("/memfd:") or path.startswith("memfd:")
    memory = memfd or any(_on_mount(path, m) for m in mem_mounts)
    return path, deleted or memfd, memory


def read_process(pid: int, *, btime: int, clk_tck: int, users: Mapping[int, str], mem_mounts: Iterable[str],
                 limits: InventoryLimits = DEFAULT_LIMITS, proc: str = "/proc") -> Process | None:
    """One process, or None when it is a kernel thread, has exited, or cannot be read."""
    base = f"{proc}/{pid}"
    try:
        with open(f"{base}/stat", "rb") as f:
            stat = parse_stat(f.read(4096).decode("utf-8", "replace"))
        if stat is None:
            return None
        comm, ppid, flags, start_ticks = stat
        if flags & PF_KTHREAD:
            return None
        with open(f"{base}/status", "rb") as f:
            uids = parse_status_uids(f.read(8192).decode("utf-8", "replace"))
        if uids is None:
            return None
        with open(f"{base}/cmdline", "rb") as f:
            raw = f.read(limits.max_cmdline_bytes + 1)
    except (FileNotFoundError, ProcessLookupError):
        return None  # exited mid-walk
    except OSError:
        return None
    exe: str | None = None
    deleted = memory = False
    try:
        exe, deleted, memory = classify_exe(os.readlink(f"{base}/exe"), mem_mounts)
    except OSError:
        pass  # no permission, or a zombie
    cmdline, truncated = split_cmdline(raw, limits.max_cmdline_bytes, limits.max_cmdline_args)
    ruid, euid = uids
    return Process(
        pid=pid, ppid=ppid, start_ticks=start_ticks, start_time=btime + start_ticks // max(1, clk_tck),
        name=clip(comm), exe=exe[:4096] if exe is not None else None, exe_deleted=deleted, memory_only=memory,
        cmdline=[a[:4096] for a in redact_cmdline(cmdline)], cmdline_truncated=truncated, uid=ruid, euid=euid,
        user=users.get(euid),
    )


def collect_processes(limits: InventoryLimits = DEFAULT_LIMITS, proc: str = "/proc",
                      accounts_file: str = "/etc/passwd",
                      relevant: Callable[[Process], bool] | None = None) -> tuple[list[Process], bool]:
    """Every user-space process, canonical order; the flag says ``limits.max_processes`` cut the list.

    Up to ``limits.max_processes_read`` processes are read; when more than
    ``limits.max_processes`` were, the ``relevant`` ones are kept first (then
    the lowest pids), so a flood of processes cannot push a remote access tool
    out of the report (see :func:`rampart.agent.inventory.detect.is_relevant`).
    """
    btime = boot_time(try_read_text(f"{proc}/stat") or "")
    clk_tck = os.sysconf("SC_CLK_TCK")
    users = passwd_names(accounts_file)
    mem_mounts = memory_mounts(try_read_text(f"{proc}/self/mounts", 8 << 20) or "")
    pids = sorted(int(n) for n in os.listdir(proc) if n.isdigit())
    found: list[Process] = []
    truncated = False
    for pid in pids:
        p = read_process(pid, btime=btime, clk_tck=clk_tck, users=users, mem_mounts=mem_mounts, limits=limits,
                         proc=proc)
        if p is None:
            continue
        if len(found) >= max(limits.max_processes_read, limits.max_processes):
            truncated = True
            break
        found.append(p)
    if len(found) > limits.max_processes:
        truncated = True
        first = [p for p in found if relevant is not None and relevant(p)]
        rest = [p for p in found if relevant is None or not relevant(p)]
        found = (first + rest)[: limits.max_processes]
    return canonical(found, process_key), truncated
