"""The logs of the processes a test started, shown beside a failure.

The server and agent processes write to files, not to pytest's captured output; a CI failure
that says only "timed out" is then hard to read. Each process registers its log here, and the
hook in tests/conftest.py appends the end of every log written during a failing test to its
report.
"""

from __future__ import annotations

import time
from pathlib import Path

__all__ = ["register", "tails_since"]

#: Bytes shown from the end of each log.
TAIL_BYTES = 4000
_logs: dict[Path, None] = {}


def register(path: Path) -> None:
    """Remember ``path`` as the log of a process this test session started."""
    _logs[path] = None


def tails_since(started: float) -> list[tuple[str, str]]:
    """(path, last bytes) of every registered log modified at or after ``started`` (a time.time())."""
    out = []
    for path in list(_logs):
        try:
            st = path.stat()
            if st.st_mtime + 1 < started:
                continue
            with open(path, "rb") as f:
                f.seek(max(0, st.st_size - TAIL_BYTES))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        out.append((str(path), text))
    return out


def now() -> float:
    return time.time()
