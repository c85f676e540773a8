"""The logs of the processes a test started, shown beside a failure.

The server and agent processes write to files, not to pytest's captured output; a CI failure
that says only "timed out" is then hard to read. Each process registers its log here, and the
hook in tests/conftest.py appends the end of every log written during a failing test to its
report.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = ["machine", "register", "squeeze", "stack_of", "stacks", "tails_since", "watch"]

#: Bytes read from the end of each log (before repeated lines are folded).
TAIL_BYTES = 6000
#: Lines shown from the end of each log: CI shows only a part of a failure's report.
TAIL_LINES = 30
_logs: dict[Path, None] = {}
#: Processes that dump their thread stacks on SIGUSR1 (rampart.diagnostics; conftest sets the
#: variable): (a subprocess.Popen or pexpect.spawn, its log file, or None when it writes to a pty).
_procs: list[tuple[Any, Path | None]] = []
#: Frames of an idle pool or helper thread: a thread whose every frame is in these is left out.
_IDLE_FILES = ("threading.py", "queue.py", "concurrent/futures/thread.py")


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
        out.append((str(path), squeeze(text)))
    # Agents first: their logs are the shorter and usually say what the device did.
    out.sort(key=lambda item: "server" in Path(item[0]).name)
    return out


def squeeze(text: str, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of ``text``, runs of identical lines (polling) folded into one."""
    folded: list[str] = []
    count = 0
    for line in text.splitlines()[1:]:  # the first line may be cut
        key = line.split(" - ", 1)[-1]  # uvicorn access lines differ only in the client port
        if folded and key == folded[-1].split(" - ", 1)[-1].split("  [x", 1)[0]:
            count += 1
            folded[-1] = f"{folded[-1].split('  [x', 1)[0]}  [x{count + 1}]"
            continue
        count = 0
        folded.append(line)
    return "\n".join(folded[-lines:])


def now() -> float:
    return time.time()


def watch(proc: Any, log: Path | None) -> None:
    """Remember a started process (``subprocess.Popen`` or ``pexpect.spawn``) whose standard error
    is ``log`` (None: a pexpect child, whose output is read from its pty)."""
    _procs[:] = [(p, lg) for p, lg in _procs if _alive(p)]
    _procs.append((proc, log))


def _alive(proc: Any) -> bool:
    if hasattr(proc, "isalive"):
        return bool(proc.isalive())
    return proc.poll() is None


def stacks() -> list[tuple[str, str]]:
    """Ask every watched process still running for its thread stacks; (label, busy threads) of each.

    Called when a test failed, before its fixtures stop anything: a process that hangs shows where."""
    live = sorted(((p, lg) for p, lg in _procs if _alive(p)), key=lambda item: item[1] is not None)
    sizes = {}
    for p, lg in live:
        try:
            sizes[id(p)] = lg.stat().st_size if lg is not None else 0
            os.kill(p.pid, signal.SIGUSR1)
        except OSError:
            continue
    if not sizes:
        return []
    time.sleep(1.0)
    out = []
    for p, lg in live:
        if id(p) not in sizes:
            continue
        if lg is None:
            text = ""
            with contextlib.suppress(Exception):  # pexpect TIMEOUT or EOF: all there is has been read
                while True:
                    text += p.read_nonblocking(1 << 16, timeout=0.5).decode("utf-8", "replace")
            label = f"stacks of pid {p.pid}: {' '.join(str(a) for a in p.args[1:6])}"
        else:
            text = _written_since(lg, sizes[id(p)])
            label = f"stacks of pid {p.pid} ({lg.name})"
        out.append((label, busy_threads(text)))
    return out


def stack_of(proc: subprocess.Popen[bytes], log: Path) -> str:
    """The busy threads of one running process that writes its standard error to ``log``: asked
    for before a harness gives up on it (a start that timed out), so the error says where it was."""
    try:
        size = log.stat().st_size
        os.kill(proc.pid, signal.SIGUSR1)
    except OSError:
        return "(no stacks: the process has ended)"
    time.sleep(1.0)
    return busy_threads(_written_since(log, size))


def _written_since(log: Path, offset: int) -> str:
    """What a process wrote to ``log`` after ``offset`` (its stack dump), up to 64 KiB."""
    with open(log, "rb") as f:
        f.seek(offset)
        return f.read(1 << 16).decode("utf-8", "replace")


def busy_threads(dump: str) -> str:
    """A faulthandler dump without the threads that only wait for work (pool workers, helpers)."""
    blocks: list[list[str]] = []
    for line in dump.replace("\r", "").splitlines():
        if line.startswith(("Thread 0x", "Current thread 0x")):
            blocks.append([line])
        elif blocks and line.startswith("  File "):
            blocks[-1].append(line)
    kept = [b for b in blocks if not all(any(f in x for f in _IDLE_FILES) for x in b[1:])]
    shown = [f"{len(blocks) - len(kept)} idle threads left out"] if len(kept) < len(blocks) else []
    for b in kept:
        shown.extend(b[:9])  # the innermost frames: where it waits
    return "\n".join(shown) if blocks else dump[-1500:]


def machine() -> str:
    """The load average and the busiest processes: was the machine starved when the test failed?"""
    try:
        ps = subprocess.run(["ps", "-eo", "pid,pcpu,rss,etimes,stat,args", "--sort=-pcpu"],
                            capture_output=True, text=True, timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        ps = []
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return "\n".join([f"load average {load}; {len(ps) - 1} processes", *(x[:160] for x in ps[:9])])
