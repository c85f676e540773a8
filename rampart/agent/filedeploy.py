"""Deploy one file whose SHA-256 a signed job names: digest first, then an atomic, symlink-proof write.

The rules (docs/design/patching-backup.md, "Security"; threat model T8, T9):

1. **Digest before anything.** The payload's SHA-256 is compared (constant
   time) with the digest from the signed job before a single directory is
   opened. A tampered payload (T8) changes nothing on disk.
2. **Only under allowed roots.** ``dest`` must be a normalised absolute path
   strictly below one of ``allowed_roots`` (compared by path component, so
   ``/srv/app2`` is not below ``/srv/app``). ``..``, ``.``, empty components and
   NUL bytes are refused.
3. **No symlink is ever followed below the root.** The root is opened once;
   every further component is opened relative to its parent with
   ``O_NOFOLLOW | O_DIRECTORY``, so a directory swapped for a symlink at any
   moment makes the open fail instead of leading elsewhere (no check-then-use
   race). An existing destination that is a symlink, a directory or anything
   but a regular file is refused.
4. **Atomic replacement.** The data goes to a fresh temporary file in the
   destination directory (``O_CREAT | O_EXCL | O_NOFOLLOW``), gets its mode,
   is fsynced, then renamed over the destination; the directory is fsynced.
   A reader sees the old file or the new one, never a mix.
5. **The previous file is kept** as ``.<name>.rampart-prev`` in the same
   directory (a hard link to the old inode, so mode and owner are exact);
   :func:`restore_previous` puts it back.

Errors: :class:`DeployError` and its subclasses, drawn::

    DeployError                 the write could not be done (I/O), nothing replaced
    ├── FileDigestMismatchError the payload is not the one the job signed (untrusted input)
    └── PathRefusedError        the destination is outside the allowed roots, or a symlink trick

In the agent's error tree (:mod:`rampart.agent.errors`) DeployError is a
local fault and its two subclasses are also job refusals.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from .errors import JobRefused, LocalFault

BACKUP_SUFFIX = ".rampart-prev"
_TMP_MARK = ".rampart-tmp-"
_HEX64 = re.compile(r"[0-9a-f]{64}")
#: Largest payload deployed in one call; bigger files belong in a package.
MAX_DEPLOY_BYTES = 256 << 20
_NAME_MAX = 255


class DeployError(LocalFault):
    """The file could not be deployed; the destination was not replaced."""


class FileDigestMismatchError(DeployError, JobRefused):
    """The payload's SHA-256 is not the one in the signed job."""

    reason = "digest-mismatch"


class PathRefusedError(DeployError, JobRefused):
    """The destination is not allowed: outside the roots, a traversal, or a symlink or special file."""

    reason = "path-refused"


@dataclass(frozen=True, slots=True)
class DeployResult:
    path: str
    sha256: str
    size: int
    mode: int
    #: A file was there before and was replaced.
    replaced: bool
    #: Where the previous file is kept (None when there was none).
    backup: str | None
    previous_sha256: str | None


def _components(path: str) -> list[str]:
    if not path.startswith("/") or "\0" in path:
        raise PathRefusedError(f"not an absolute path: {path[:200]!r}")
    parts = path.split("/")[1:]
    if path != "/" and (any(p in ("", ".", "..") for p in parts)):
        raise PathRefusedError(f"not a normalised path (empty, '.' or '..' component): {path[:200]!r}")
    if any(len(p.encode()) > _NAME_MAX for p in parts):
        raise PathRefusedError("a path component is too long")
    return [] if path == "/" else parts


def _root_for(dest: str, allowed_roots: Sequence[str]) -> tuple[str, list[str]]:
    """(root, components of dest below it) for the longest allowed root strictly above ``dest``."""
    dest_parts = _components(dest)
    best: tuple[str, list[str]] | None = None
    for root in allowed_roots:
        root_parts = _components(str(root))
        if len(dest_parts) > len(root_parts) and dest_parts[: len(root_parts)] == root_parts:
            if best is None or len(root_parts) > len(_components(best[0])):
                best = (str(root), dest_parts[len(root_parts):])
    if best is None:
        raise PathRefusedError(f"{dest[:200]} is not below an allowed root")
    return best


def _open_dir(parent: int, name: str, *, create: bool, dir_mode: int) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, dir_fd=parent)
    except FileNotFoundError:
        if not create:
            raise PathRefusedError(f"directory {name!r} does not exist") from None
        try:
            os.mkdir(name, dir_mode, dir_fd=parent)
        except FileExistsError:
            pass
        try:
            return os.open(name, flags, dir_fd=parent)
        except OSError as exc:
            raise PathRefusedError(f"cannot open the directory {name!r} just made: {exc.strerror}") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise PathRefusedError(f"{name!r} is a symlink or not a directory") from None
        raise DeployError(f"cannot open directory {name!r}: {exc.strerror}") from None


def _open_parent(root: str, below: list[str], *, make_parents: bool, dir_mode: int) -> int:
    """A descriptor of the destination's directory, reached without following any symlink below ``root``."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise PathRefusedError(f"allowed root {root} cannot be opened: {exc.strerror}") from None
    try:
        for name in below[:-1]:
            nxt = _open_dir(fd, name, create=make_parents, dir_mode=dir_mode)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _sha256_of(dir_fd: int, name: str) -> str | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        h = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
        return h.hexdigest()
    finally:
        os.close(fd)


def _check_mode(mode: int, allow_special_bits: bool) -> None:
    if not isinstance(mode, int) or mode < 0 or mode > 0o7777:
        raise PathRefusedError(f"invalid file mode {mode!r}")
    if mode & 0o7000 and not allow_special_bits:
        raise PathRefusedError(f"mode {mode:o} has setuid, setgid or sticky bits")


def deploy_file(data: bytes, expected_sha256: str, dest: str | os.PathLike[str], mode: int, *,
                allowed_roots: Sequence[str | os.PathLike[str]], make_parents: bool = False,
                dir_mode: int = 0o755, owner: tuple[int, int] | None = None, keep_backup: bool = True,
                allow_special_bits: bool = False) -> DeployResult:
    """Write ``data`` to ``dest`` with ``mode``, after checking its SHA-256 (module docstring rules).

    ``owner`` is a (uid, gid) to give the new file (needs privilege).
    ``make_parents`` creates missing directories below the allowed root with
    ``dir_mode``. Raises :class:`FileDigestMismatchError` before touching the
    filesystem, :class:`PathRefusedError` for a destination that is not
    allowed, :class:`DeployError` when the write fails; in every case the
    destination keeps its previous content.
    """
    if not isinstance(expected_sha256, str) or not _HEX64.fullmatch(expected_sha256):
        raise FileDigestMismatchError("expected digest is not 64 lower-case hex characters")
    if len(data) > MAX_DEPLOY_BYTES:
        raise DeployError(f"payload larger than {MAX_DEPLOY_BYTES} bytes")
    actual = hashlib.sha256(data).hexdigest()
    if not hmac.compare_digest(actual, expected_sha256):
        raise FileDigestMismatchError(f"payload SHA-256 {actual} is not the signed {expected_sha256}")
    _check_mode(mode, allow_special_bits)
    dest_str = os.fspath(dest)
    root, below = _root_for(dest_str, [os.fspath(r) for r in allowed_roots])
    name = below[-1]
    if name.startswith(".") and (name.endswith(BACKUP_SUFFIX) or _TMP_MARK in name):
        raise PathRefusedError("the name is reserved for Rampart's own backup and temporary files")
    dfd = _open_parent(root, below, make_parents=make_parents, dir_mode=dir_mode)
    tmp = f".{name[:200]}{_TMP_MARK}{secrets.token_hex(8)}"
    backup_name = f".{name[:200]}{BACKUP_SUFFIX}"
    try:
        try:
            st: os.stat_result | None = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise PathRefusedError(f"{dest_str[:200]} is {kind}")
        previous = _sha256_of(dfd, name) if st is not None else None
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dfd)
        except OSError as exc:
            raise DeployError(f"cannot create a temporary file beside {dest_str[:200]}: {exc.strerror}") \
                from None
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if owner is not None:
                os.fchown(fd, owner[0], owner[1])
            os.fchmod(fd, mode)
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            os.unlink(tmp, dir_fd=dfd)
            raise DeployError(f"writing {dest_str[:200]} failed: {exc.strerror}") from None
        os.close(fd)
        backup: str | None = None
        try:
            if st is not None and keep_backup:
                # Keep the old inode under the backup name: link to a fresh name, then rename over the
                # previous backup (atomic), so a crash never leaves a half backup.
                link_tmp = f"{tmp}.prev"
                os.link(name, link_tmp, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
                os.rename(link_tmp, backup_name, src_dir_fd=dfd, dst_dir_fd=dfd)
                backup = str(PurePosixPath(dest_str).parent / backup_name)
            # The final check and the swap: the name must still not be a symlink or a directory.
            try:
                now = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if not stat.S_ISREG(now.st_mode):
                    raise PathRefusedError(f"{dest_str[:200]} changed into something else during deployment")
            except FileNotFoundError:
                pass
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            os.fsync(dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
    except OSError as exc:
        raise DeployError(f"deploying {dest_str[:200]} failed: {exc.strerror or exc}") from None
    finally:
        os.close(dfd)
    return DeployResult(path=dest_str, sha256=actual, size=len(data), mode=mode, replaced=st is not None,
                        backup=backup, previous_sha256=previous)


def restore_previous(dest: str | os.PathLike[str], *,
                     allowed_roots: Sequence[str | os.PathLike[str]]) -> str:
    """Put back the file :func:`deploy_file` kept; returns its SHA-256. Same path rules as deploying."""
    dest_str = os.fspath(dest)
    root, below = _root_for(dest_str, [os.fspath(r) for r in allowed_roots])
    name = below[-1]
    backup_name = f".{name[:200]}{BACKUP_SUFFIX}"
    dfd = _open_parent(root, below, make_parents=False, dir_mode=0o755)
    try:
        st = os.stat(backup_name, dir_fd=dfd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            raise PathRefusedError("the kept previous file is not a regular file")
        try:
            cur = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if not stat.S_ISREG(cur.st_mode):
                raise PathRefusedError(f"{dest_str[:200]} is not a regular file")
        except FileNotFoundError:
            pass
        digest = _sha256_of(dfd, backup_name) or ""
        os.rename(backup_name, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        os.fsync(dfd)
        return digest
    except FileNotFoundError:
        raise DeployError(f"no previous version of {dest_str[:200]} is kept") from None
    except OSError as exc:
        raise DeployError(f"restoring {dest_str[:200]} failed: {exc.strerror or exc}") from None
    finally:
        os.close(dfd)


__all__ = ["BACKUP_SUFFIX", "MAX_DEPLOY_BYTES", "DeployError", "DeployResult", "FileDigestMismatchError",
           "PathRefusedError", "deploy_file", "restore_previous"]
