"""A tenant's connect-time values are shared for a moment, and a change is never hidden by them
(rampart.server.tenant_cache)."""

from __future__ import annotations

import threading

from rampart.server.tenant_cache import TenantCache


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_value_is_read_once_per_ttl_and_per_tenant() -> None:
    clock = _Clock()
    cache: TenantCache[str] = TenantCache(2.0, clock=clock)
    reads: list[str] = []

    def load(t: str) -> str:
        reads.append(t)
        return f"{t}@{clock.now}"

    assert cache.get("a", lambda: load("a")) == "a@100.0"
    clock.now = 101.9
    assert cache.get("a", lambda: load("a")) == "a@100.0"  # shared within the TTL
    assert cache.get("b", lambda: load("b")) == "b@101.9"  # another tenant: its own read
    clock.now = 102.0
    assert cache.get("a", lambda: load("a")) == "a@102.0"  # expired: read again
    assert reads == ["a", "b", "a"] and cache.loads == 3


def test_forget_makes_the_next_read_fresh_for_that_tenant_or_all() -> None:
    clock = _Clock()
    cache: TenantCache[int] = TenantCache(60.0, clock=clock)
    version = {"a": 1, "b": 1}
    assert cache.get("a", lambda: version["a"]) == 1
    assert cache.get("b", lambda: version["b"]) == 1
    version.update(a=2, b=2)
    cache.forget("a")
    assert cache.get("a", lambda: version["a"]) == 2
    assert cache.get("b", lambda: version["b"]) == 1  # b was not forgotten: still shared
    version.update(a=3, b=3)
    cache.forget()
    assert (cache.get("a", lambda: version["a"]), cache.get("b", lambda: version["b"])) == (3, 3)


def test_a_read_that_began_before_a_change_is_never_kept_after_it() -> None:
    """The race a revocation could hide in: a connection reads the old revocations, the revocation
    commits and forgets the tenant, then the old read finishes. Its value goes to its own caller
    only; the next connection reads the revocation."""
    cache: TenantCache[str] = TenantCache(60.0)
    reading, committed = threading.Event(), threading.Event()
    got: list[str] = []

    def slow_old_read() -> str:
        reading.set()
        assert committed.wait(10)
        return "without the revocation"

    for forget_all in (False, True):
        reading.clear()
        committed.clear()
        got.clear()
        cache.forget()
        early = threading.Thread(target=lambda: got.append(cache.get("t", slow_old_read)))
        early.start()
        assert reading.wait(10)
        cache.forget(None if forget_all else "t")  # the change committed, then forgot the tenant
        committed.set()
        early.join(10)
        assert got == ["without the revocation"]
        assert cache.get("t", lambda: "with the revocation") == "with the revocation"
        assert cache.get("t", lambda: "never read") == "with the revocation"
