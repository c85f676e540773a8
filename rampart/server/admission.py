"""Admission of agents under load: a bounded number of handshakes at once, a bounded queue.

After a node restarts, its whole fleet reconnects within seconds. Each handshake past the
agent's hello costs a database lookup and the on-connect sends (roots, revocations, the
detection configuration, pending jobs); thousands at once would queue in the worker threads,
and every agent would wait behind all the others until their handshakes time out and the
storm repeats. Here at most ``slots`` handshakes run at once; up to ``queue`` more wait their
turn in arrival order for at most ``wait_s``; the others are closed at once with 1013 and a
delay to try again after (rampart.wire.admission), which the agents jitter.

Invariants: at most ``slots`` holders and ``queue`` waiters at any time (memory is bounded by
the connections, not by their handshakes); a waiter is admitted or turned away within
``wait_s``; every :meth:`Admission.enter` that returned True is matched by one ``leave``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

log = logging.getLogger("rampart.server.admission")

#: At most one log line per this many seconds while agents are turned away.
LOG_EVERY_S = 10.0


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    slots: int = 64
    queue: int = 4096
    wait_s: float = 10.0


class Admission:
    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self._sem = asyncio.Semaphore(limits.slots)
        self._waiting = 0
        #: Handshakes admitted and turned away since start (for benchmarks, tests and the log).
        self.admitted = 0
        self.turned_away = 0
        self._logged_at = 0.0
        self._logged_count = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    async def enter(self) -> bool:
        """Take a handshake slot (waiting in line when the queue has room); False: turned away."""
        if self._sem.locked() and self._waiting >= self.limits.queue:
            return self._turn_away()
        self._waiting += 1
        try:
            async with asyncio.timeout(self.limits.wait_s):
                await self._sem.acquire()
        except TimeoutError:
            return self._turn_away()
        finally:
            self._waiting -= 1
        self.admitted += 1
        return True

    def leave(self) -> None:
        """Give the slot back (the handshake is done, or failed)."""
        self._sem.release()

    def retry_after_s(self) -> float:
        """The delay a turned-away agent is asked to wait: longer the longer the line is."""
        return self.limits.wait_s * (1 + self._waiting / max(1, self.limits.queue))

    def _turn_away(self) -> bool:
        self.turned_away += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            log.warning("busy: %d agent handshake(s) told to try again later (%d waiting, %d at once)",
                        self.turned_away - self._logged_count, self._waiting, self.limits.slots)
            self._logged_at, self._logged_count = now, self.turned_away
        return False
