"""Give the heap that a burst freed back to the operating system.

A fan-out to thousands of agents allocates and frees hundreds of megabytes of
short-lived buffers (messages, receipts, rows) in the event loop and in the
worker threads. CPython returns freed blocks to the C allocator, but glibc's
``malloc`` keeps freed pages in its arenas (one per thread that allocated),
so the process stays at its peak size long after the burst. ``malloc_trim(0)``
walks every arena and gives whole free pages back (``madvise``), which brings
the resident size back near what the live objects need.

:class:`TrimAfterBurst` calls it once a burst of work is over: after at least
``min_units`` units of work (receipts, sent jobs) and ``quiet_s`` seconds with
no further unit. Nothing else changes; on a C library without ``malloc_trim``
(musl, macOS) it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from functools import cache

log = logging.getLogger("rampart.server.memory")


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def release_free_memory() -> bool:
    """Return the C heap's free pages to the OS; False where the C library cannot."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True


class TrimAfterBurst:
    """Trim once after each burst of at least ``min_units`` units, when ``quiet_s`` passed
    without a unit. Call :meth:`note` from the event loop; the trim runs in a worker thread."""

    def __init__(self, *, min_units: int, quiet_s: float,
                 trim: Callable[[], bool] = release_free_memory) -> None:
        self.min_units = min_units
        self.quiet_s = quiet_s
        self.trims = 0
        self._trim = trim
        self._units = 0
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    def note(self, units: int) -> None:
        """Count ``units`` of work done now; (re)start the quiet timer once past the minimum."""
        self._units += units
        if self._units < self.min_units:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.quiet_s, self._start)

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        self._timer = None
        self._units = 0
        try:
            if await asyncio.to_thread(self._trim):
                self.trims += 1
        except Exception:  # giving memory back is an optimisation: never a fault
            log.exception("returning free memory to the system failed")
