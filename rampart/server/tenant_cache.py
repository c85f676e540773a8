"""Per-tenant values read from the store, shared by every connection of the tenant for a moment.

Ten thousand agents of one tenant reconnecting after a restart would each read
the same roots, revocations, cancellations and detection settings; the cache
reads them once per ``ttl_s`` instead. A change made through this process
calls :meth:`TenantCache.forget` right after its commit, so the next
connection reads it at once; a change made by another process (a second node,
an offline admin command) is seen within ``ttl_s``.

Invariant: a value whose read began before a ``forget`` of its tenant is never
stored after that ``forget`` (a generation check), so once ``forget`` returns,
every later ``get`` returns what was committed before it. The caller that
started such a read still gets its value: it asked before the change, and the
change's own push reaches it (the gateway registers a connection before it
reads, and pushes to registered connections after ``forget``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class TenantCache(Generic[T]):
    """Values by tenant id, each kept ``ttl_s`` seconds unless forgotten first (thread-safe)."""

    def __init__(self, ttl_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.loads = 0
        self._clock = clock
        self._lock = threading.Lock()
        self._values: dict[str, tuple[float, T]] = {}
        self._generation: dict[str, int] = {}
        self._epoch = 0

    def get(self, tenant_id: str, load: Callable[[], T]) -> T:
        """The tenant's cached value, or ``load()`` (called without the lock held) stored for ttl_s."""
        now = self._clock()
        with self._lock:
            hit = self._values.get(tenant_id)
            if hit is not None and hit[0] > now:
                return hit[1]
            began = (self._epoch, self._generation.get(tenant_id, 0))
        value = load()
        with self._lock:
            self.loads += 1
            if (self._epoch, self._generation.get(tenant_id, 0)) == began:
                self._values[tenant_id] = (now + self.ttl_s, value)
        return value

    def forget(self, tenant_id: str | None = None) -> None:
        """Read the tenant's value (every tenant's, for None) afresh at its next ``get``."""
        with self._lock:
            if tenant_id is None:
                self._epoch += 1
                self._values.clear()
            else:
                self._generation[tenant_id] = self._generation.get(tenant_id, 0) + 1
                self._values.pop(tenant_id, None)
