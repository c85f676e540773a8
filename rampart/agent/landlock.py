"""Minimal ctypes bindings to the Linux Landlock LSM.

Constants, struct layouts and syscall numbers follow the kernel UAPI header
``include/uapi/linux/landlock.h`` and the syscall tables (444/445/446 on both
x86_64 and the generic table used by aarch64).

Security invariants kept here:

* Nothing is ever requested from the kernel that the running ABI does not
  support: every handled or allowed right is masked by :func:`fs_rights`,
  :func:`net_rights` and :func:`scopes` for the detected ABI, so an old kernel
  gets the strongest ruleset it understands rather than an error.
* A kernel without Landlock (not built, disabled at boot, blocked by seccomp,
  unknown architecture) is reported as ABI 0 and never crashes the caller; any
  attempt to build a ruleset there raises :class:`LandlockUnavailable`.
* Every syscall failure raises :class:`LandlockError` carrying the errno; no
  failure is silently ignored, so a caller can never believe a rule or the
  final ``restrict_self`` applied when it did not.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
from types import TracebackType
from typing import Final

from .errors import LocalFault

__all__ = [
    "ACCESS_FS_EXECUTE",
    "ACCESS_FS_IOCTL_DEV",
    "ACCESS_FS_MAKE_BLOCK",
    "ACCESS_FS_MAKE_CHAR",
    "ACCESS_FS_MAKE_DIR",
    "ACCESS_FS_MAKE_FIFO",
    "ACCESS_FS_MAKE_REG",
    "ACCESS_FS_MAKE_SOCK",
    "ACCESS_FS_MAKE_SYM",
    "ACCESS_FS_READ_DIR",
    "ACCESS_FS_READ_FILE",
    "ACCESS_FS_REFER",
    "ACCESS_FS_REMOVE_DIR",
    "ACCESS_FS_REMOVE_FILE",
    "ACCESS_FS_TRUNCATE",
    "ACCESS_FS_WRITE_FILE",
    "ACCESS_NET_BIND_TCP",
    "ACCESS_NET_CONNECT_TCP",
    "FS_FILE_RIGHTS",
    "FS_READ_RIGHTS",
    "LandlockError",
    "LandlockUnavailable",
    "Ruleset",
    "SCOPE_ABSTRACT_UNIX_SOCKET",
    "SCOPE_SIGNAL",
    "abi_version",
    "fs_rights",
    "net_rights",
    "scopes",
]

# --- UAPI constants (include/uapi/linux/landlock.h) -------------------------

CREATE_RULESET_VERSION: Final = 1 << 0

RULE_PATH_BENEATH: Final = 1
RULE_NET_PORT: Final = 2

# Filesystem rights. ABI 1: bits 0-12; ABI 2: REFER; ABI 3: TRUNCATE; ABI 5: IOCTL_DEV.
ACCESS_FS_EXECUTE: Final = 1 << 0
ACCESS_FS_WRITE_FILE: Final = 1 << 1
ACCESS_FS_READ_FILE: Final = 1 << 2
ACCESS_FS_READ_DIR: Final = 1 << 3
ACCESS_FS_REMOVE_DIR: Final = 1 << 4
ACCESS_FS_REMOVE_FILE: Final = 1 << 5
ACCESS_FS_MAKE_CHAR: Final = 1 << 6
ACCESS_FS_MAKE_DIR: Final = 1 << 7
ACCESS_FS_MAKE_REG: Final = 1 << 8
ACCESS_FS_MAKE_SOCK: Final = 1 << 9
ACCESS_FS_MAKE_FIFO: Final = 1 << 10
ACCESS_FS_MAKE_BLOCK: Final = 1 << 11
ACCESS_FS_MAKE_SYM: Final = 1 << 12
ACCESS_FS_REFER: Final = 1 << 13
ACCESS_FS_TRUNCATE: Final = 1 << 14
ACCESS_FS_IOCTL_DEV: Final = 1 << 15

# Network rights (ABI 4).
ACCESS_NET_BIND_TCP: Final = 1 << 0
ACCESS_NET_CONNECT_TCP: Final = 1 << 1

# IPC scopes (ABI 6).
SCOPE_ABSTRACT_UNIX_SOCKET: Final = 1 << 0
SCOPE_SIGNAL: Final = 1 << 1

_FS_ABI1: Final = (1 << 13) - 1  # EXECUTE .. MAKE_SYM

#: Rights the kernel accepts on a rule whose target is not a directory.
FS_FILE_RIGHTS: Final = (
    ACCESS_FS_EXECUTE
    | ACCESS_FS_WRITE_FILE
    | ACCESS_FS_READ_FILE
    | ACCESS_FS_TRUNCATE
    | ACCESS_FS_IOCTL_DEV
)
#: Read-only rights: open for reading, list directories, execute.
FS_READ_RIGHTS: Final = ACCESS_FS_EXECUTE | ACCESS_FS_READ_FILE | ACCESS_FS_READ_DIR

# Syscall numbers: arch/x86/entry/syscalls/syscall_64.tbl and
# include/uapi/asm-generic/unistd.h (aarch64) agree on these.
_SYSCALLS: Final[dict[str, tuple[int, int, int]]] = {
    "x86_64": (444, 445, 446),
    "aarch64": (444, 445, 446),
    "arm64": (444, 445, 446),
}


class LandlockError(LocalFault, OSError):
    """A Landlock syscall failed; ``errno`` says why."""


class LandlockUnavailable(LandlockError):
    """The running kernel (or architecture) offers no Landlock at all."""


def fs_rights(abi: int) -> int:
    """All filesystem rights the given ABI understands (0 when ABI < 1)."""
    if abi < 1:
        return 0
    rights = _FS_ABI1
    if abi >= 2:
        rights |= ACCESS_FS_REFER
    if abi >= 3:
        rights |= ACCESS_FS_TRUNCATE
    if abi >= 5:
        rights |= ACCESS_FS_IOCTL_DEV
    return rights


def net_rights(abi: int) -> int:
    """All network rights the given ABI understands (0 when ABI < 4)."""
    return ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP if abi >= 4 else 0


def scopes(abi: int) -> int:
    """All IPC scopes the given ABI understands (0 when ABI < 6)."""
    return SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # __attribute__((packed)) in the UAPI header: 12 bytes
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


_libc: ctypes.CDLL | None = None


def _syscall_numbers() -> tuple[int, int, int] | None:
    return _SYSCALLS.get(platform.machine())


def _syscall(nr: int, *args: ctypes.c_long | ctypes.c_void_p | ctypes.c_size_t) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    ret = int(_libc.syscall(ctypes.c_long(nr), *args))
    if ret < 0:
        err = ctypes.get_errno()
        raise LandlockError(err, os.strerror(err))
    return ret


def abi_version() -> int:
    """Highest Landlock ABI the running kernel supports; 0 when Landlock is absent."""
    nrs = _syscall_numbers()
    if nrs is None:
        return 0
    try:
        return _syscall(
            nrs[0], ctypes.c_void_p(None), ctypes.c_size_t(0), ctypes.c_long(CREATE_RULESET_VERSION)
        )
    except OSError:  # ENOSYS, EOPNOTSUPP (disabled), EPERM (seccomp), ...
        return 0


class Ruleset:
    """A Landlock ruleset under construction; :meth:`restrict_self` enforces it.

    The ruleset handles every right of the requested kinds that ``abi``
    supports, so anything not explicitly allowed by a rule is denied once
    enforced. Allowed rights are masked to the handled set (and, for
    non-directories, to :data:`FS_FILE_RIGHTS`) so a rule never fails merely
    because it names a right the target or kernel cannot carry.
    """

    def __init__(self, abi: int, *, handled_fs: int, handled_net: int = 0, scoped: int = 0) -> None:
        nrs = _syscall_numbers()
        if abi < 1 or nrs is None:
            raise LandlockUnavailable(errno.EOPNOTSUPP, "Landlock is not available")
        self._nrs = nrs
        self.abi = abi
        self.handled_fs = handled_fs & fs_rights(abi)
        self.handled_net = handled_net & net_rights(abi)
        self.scoped = scoped & scopes(abi)
        attr = _RulesetAttr(self.handled_fs, self.handled_net, self.scoped)
        # Pass only the prefix this ABI knows (fs: 8 bytes, +net: 16, +scoped: 24).
        size = 24 if abi >= 6 else 16 if abi >= 4 else 8
        self._fd: int | None = _syscall(
            nrs[0], ctypes.c_void_p(ctypes.addressof(attr)), ctypes.c_size_t(size), ctypes.c_long(0)
        )

    @property
    def fd(self) -> int:
        """The ruleset file descriptor (close-on-exec, set by the kernel)."""
        if self._fd is None:
            raise LandlockError(errno.EBADF, "ruleset already closed")
        return self._fd

    def allow_path(self, path: str, access: int, *, follow_symlinks: bool = True) -> int:
        """Allow ``access`` beneath ``path``; returns the rights actually granted."""
        flags = os.O_PATH | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
        pfd = os.open(path, flags)
        try:
            return self.allow_fd(pfd, access)
        finally:
            os.close(pfd)

    def allow_fd(self, fd: int, access: int) -> int:
        """Allow ``access`` beneath the file or directory open as ``fd``.

        Returns the rights actually granted; adds nothing and returns 0 when no
        handled right remains after masking.
        """
        allowed = access & self.handled_fs
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            allowed &= FS_FILE_RIGHTS
        if allowed:
            self._add_rule(RULE_PATH_BENEATH, _PathBeneathAttr(allowed, fd))
        return allowed

    def allow_port(self, port: int, access: int) -> int:
        """Allow network ``access`` for TCP ``port``; returns the rights actually granted."""
        if not 0 <= port <= 65535:
            raise ValueError(f"invalid TCP port {port}")
        allowed = access & self.handled_net
        if allowed:
            self._add_rule(RULE_NET_PORT, _NetPortAttr(allowed, port))
        return allowed

    def _add_rule(self, rule_type: int, attr: ctypes.Structure) -> None:
        _syscall(
            self._nrs[1],
            ctypes.c_long(self.fd),
            ctypes.c_long(rule_type),
            ctypes.c_void_p(ctypes.addressof(attr)),
            ctypes.c_long(0),
        )

    def restrict_self(self) -> None:
        """Enforce the ruleset on the calling thread and every later child.

        Requires ``no_new_privs`` (or CAP_SYS_ADMIN). Irreversible.
        """
        _syscall(self._nrs[2], ctypes.c_long(self.fd), ctypes.c_long(0))

    def close(self) -> None:
        """Release the ruleset fd; an enforced domain stays in force."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Ruleset:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
