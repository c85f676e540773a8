"""Bounded reads and commands shared by the collectors.

Commands are looked up on a fixed PATH (never the agent's environment), run
with ``LC_ALL=C``, no stdin, a timeout and an output cap; a command that
overruns either is killed. Files are read up to a size cap.
"""

from __future__ import annotations

import os
import selectors
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence

from ..errors import LocalFault

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ENV = {"PATH": SAFE_PATH, "LC_ALL": "C", "LANG": "C", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "",
        "PAGER": "cat", "TERM": "dumb"}


class CommandError(LocalFault):
    """A command is missing, timed out, produced too much output or failed."""


#: Set when the agent stops: a collector's running command is killed at once (within POLL_S) and
#: no new one starts, so a stopping agent never waits for an inventory command (apt can take
#: minutes on a loaded machine) before its process ends.
_STOPPING = threading.Event()
POLL_S = 0.2


def stop_commands() -> None:
    """End every command :func:`run` is running or will run in this process (thread-safe)."""
    _STOPPING.set()


def read_bytes(path: str, limit: int) -> bytes:
    """At most ``limit`` bytes of ``path``; raises OSError as ``open`` does."""
    with open(path, "rb") as f:
        return f.read(limit)


def read_text(path: str, limit: int = 1 << 20) -> str:
    """``path`` decoded as UTF-8 (bad bytes replaced), at most ``limit`` bytes."""
    return read_bytes(path, limit).decode("utf-8", "replace")


def try_read_text(path: str, limit: int = 1 << 20) -> str | None:
    try:
        return read_text(path, limit)
    except OSError:
        return None


def which(name: str) -> str | None:
    """Absolute path of ``name`` on the fixed :data:`SAFE_PATH`, or None."""
    return shutil.which(name, path=SAFE_PATH)


def run(argv: Sequence[str], *, timeout: float, max_output: int, ok_codes: Sequence[int] = (0,)) -> str:
    """Stdout of ``argv`` (``argv[0]`` resolved on SAFE_PATH), decoded as UTF-8 with replacement.

    Raises :class:`CommandError` when the program is missing, exits with a
    code outside ``ok_codes``, runs past ``timeout`` seconds or writes more
    than ``max_output`` bytes (the child is then killed).
    """
    if _STOPPING.is_set():
        raise CommandError("the agent is stopping")
    exe = which(argv[0])
    if exe is None:
        raise CommandError(f"{argv[0]} not found")
    try:
        proc = subprocess.Popen(
            [exe, *argv[1:]], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=_ENV, close_fds=True, cwd="/",
        )
    except OSError as exc:
        raise CommandError(f"{argv[0]}: {exc}") from exc
    assert proc.stdout is not None
    out = bytearray()
    deadline = time.monotonic() + timeout
    problem: str | None = None
    with proc, selectors.DefaultSelector() as sel:
        fd = proc.stdout.fileno()
        sel.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                problem = f"{argv[0]} timed out after {timeout:g}s"
                break
            if _STOPPING.is_set():
                problem = f"{argv[0]} was ended: the agent is stopping"
                break
            if not sel.select(min(left, POLL_S)):
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            out += chunk
            if len(out) > max_output:
                problem = f"{argv[0]} wrote more than {max_output} bytes"
                break
        if problem is not None:
            proc.kill()
        try:
            code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            problem = problem or f"{argv[0]} timed out after {timeout:g}s"
            code = -1
    if problem is not None:
        raise CommandError(problem)
    if code not in ok_codes:
        raise CommandError(f"{argv[0]} exited with status {code}")
    return out.decode("utf-8", "replace")


def passwd_names(path: str = "/etc/passwd") -> dict[int, str]:
    """uid -> first user name with that uid in ``path`` (empty when unreadable); no NSS lookups."""
    names: dict[int, str] = {}
    text = try_read_text(path, 16 << 20) or ""
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            names.setdefault(int(parts[2]), parts[0][:256])
    return names


def clip(text: str, limit: int = 256) -> str:
    """``text`` cut to ``limit`` characters (the model's string bound)."""
    return text if len(text) <= limit else text[:limit]
