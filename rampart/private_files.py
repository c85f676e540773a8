"""Writing secret-bearing files: atomic, durable, never readable by others for an instant.

Shared by the agent (device key, state files) and the operator CLI (session,
encrypted keys, trusted roots). The server's log keys use create-only writes
instead (:mod:`rampart.server.keystore`): a key is never replaced.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_private_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably, with ``mode`` from the start.

    A random temporary file in the same directory gets the final mode before
    any byte is written, is fsync'd and renamed over ``path``; the directory is
    fsync'd so the rename survives a crash. On failure the temporary file is
    removed and ``path`` is untouched.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # some filesystems refuse a directory fsync
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
