"""The server's private keys on disk: per-log checkpoint keys, never an operator key.

``DIR/keys`` is 0700 and each ``log-<log id>.key`` is a plain key file
created 0600 with ``O_EXCL`` (never overwritten). A log key can sign only
checkpoints: agents give it no authority over roots, grants or jobs (T1).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from rampart.trust import LogKey, decode_private_key, encode_plain_private_key

from .errors import SetupError


def write_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` 0600 (refusing to replace an existing file) and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class LogKeyStore:
    """Creates and loads the log keys in ``DIR/keys`` (cached once loaded)."""

    def __init__(self, keys_dir: Path) -> None:
        self._dir = keys_dir
        self._cache: dict[str, LogKey] = {}
        self._lock = threading.Lock()

    def _path(self, log_id: str) -> Path:
        return self._dir / f"log-{log_id}.key"

    def create(self, log_id: str) -> LogKey:
        """Make a new log key for ``log_id`` (fails if one exists)."""
        key = LogKey.generate()
        write_private_file(self._path(log_id), encode_plain_private_key(key))
        with self._lock:
            self._cache[log_id] = key
        return key

    def get(self, log_id: str) -> LogKey:
        with self._lock:
            key = self._cache.get(log_id)
            if key is None:
                try:
                    data = self._path(log_id).read_bytes()
                except FileNotFoundError:
                    raise SetupError(f"log key for {log_id} is missing from {self._dir}") from None
                loaded = decode_private_key(data, expect_kind="log")
                assert isinstance(loaded, LogKey)
                key = self._cache[log_id] = loaded
            return key

    def forget(self, log_id: str) -> None:
        """Delete a removed log's key file and its cached copy (missing is fine: idempotent)."""
        with self._lock:
            self._cache.pop(log_id, None)
            self._path(log_id).unlink(missing_ok=True)
