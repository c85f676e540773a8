"""The device's recording of a session: asciicast v2, output with timing (input per tenant policy).

Invariants: the file is created 0600 in the agent's state directory (never
readable by the session's user); it never grows past its limit (the events
after it are counted, not written, and the recording says it was cut);
:meth:`Recorder.close` returns the SHA-256 and size of exactly the bytes on
disk, which go into the device-signed receipt.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

__all__ = ["MAX_RECORDING_BYTES", "Recorder"]

#: Largest recording kept per session (events past it are dropped and the cut is recorded).
MAX_RECORDING_BYTES = 64 << 20


class Recorder:
    """Appends asciicast v2 events to one file."""

    def __init__(self, path: Path, *, cols: int, rows: int, title: str, record_input: bool,
                 limit: int = MAX_RECORDING_BYTES, clock: float | None = None) -> None:
        self.path = path
        self.record_input = record_input
        self.limit = limit
        self.truncated = False
        self._start = time.monotonic() if clock is None else clock
        self._digest = hashlib.sha256()
        self._size = 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._file = os.fdopen(fd, "wb")
        header = {"version": 2, "width": cols, "height": rows, "timestamp": int(time.time()),
                  "title": title, "env": {"TERM": "xterm-256color"}}
        self._write(json.dumps(header, ensure_ascii=True).encode() + b"\n", force=True)

    def _write(self, line: bytes, *, force: bool = False) -> None:
        if self.truncated:
            return
        if not force and self._size + len(line) > self.limit:
            self.truncated = True
            return
        self._file.write(line)
        self._digest.update(line)
        self._size += len(line)

    def _event(self, code: str, data: str) -> None:
        if self.truncated:
            return  # past the limit nothing more is formatted, let alone written
        t = round(time.monotonic() - self._start, 6)
        self._write(json.dumps([t, code, data], ensure_ascii=True).encode() + b"\n")

    def output(self, data: bytes) -> None:
        if not self.truncated:
            self._event("o", data.decode("utf-8", errors="replace"))

    def input(self, data: bytes) -> None:
        if self.record_input:
            self._event("i", data.decode("utf-8", errors="replace"))

    def resize(self, cols: int, rows: int) -> None:
        self._event("r", f"{cols}x{rows}")

    def marker(self, text: str) -> None:
        self._event("m", text)

    def close(self) -> tuple[str, int]:
        """Flush and close; (SHA-256 hex, size) of the file as written."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        return self._digest.hexdigest(), self._size
