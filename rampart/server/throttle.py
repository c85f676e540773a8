"""Failed-login pacing per account name and per source address (T11).

Each key (``user:<name>`` or ``addr:<ip>``, stored as SHA-256) gets a few
free failures; every failure after that doubles the wait before the next
attempt is even looked at. A waiting key is answered ``429`` with
``Retry-After`` before any password work, for existing and unknown names
alike, so the answer never reveals whether an account exists. The state is in
the store, shared by every server process.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from sqlalchemy import delete
from sqlalchemy.orm import Session

from .models import LoginThrottle


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    free_failures: int
    base_delay_s: float
    max_delay_s: float
    #: A key with no failure for this long starts afresh.
    forget_after_s: float

    def delay(self, failures: int) -> float:
        over = failures - self.free_failures
        if over < 0:
            return 0.0
        return min(self.max_delay_s, self.base_delay_s * (2.0 ** min(over, 60)))


USER_POLICY = ThrottlePolicy(free_failures=5, base_delay_s=0.25, max_delay_s=300.0,
                             forget_after_s=3600.0)
ADDRESS_POLICY = ThrottlePolicy(free_failures=20, base_delay_s=0.25, max_delay_s=300.0,
                                forget_after_s=3600.0)


class Throttled(Exception):
    """Too many recent failures for this name or address; retry after ``retry_after`` s."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("too many failed attempts")
        self.retry_after = max(1, math.ceil(retry_after))


def user_key(username: str) -> str:
    return hashlib.sha256(b"user:" + username.encode("utf-8", "surrogatepass")).hexdigest()


def address_key(address: str) -> str:
    return hashlib.sha256(b"addr:" + address.encode("utf-8", "surrogatepass")).hexdigest()


def _keys(username: str, address: str | None) -> list[tuple[str, ThrottlePolicy]]:
    keys = [(user_key(username), USER_POLICY)]
    if address:
        keys.append((address_key(address), ADDRESS_POLICY))
    return keys


def check(s: Session, username: str, address: str | None, now: float) -> None:
    """Raise :class:`Throttled` if the name or the address must still wait."""
    wait = 0.0
    for key, policy in _keys(username, address):
        row = s.get(LoginThrottle, key)
        if row is None or now - row.last_failure_at >= policy.forget_after_s:
            continue
        wait = max(wait, row.next_allowed_at - now)
    if wait > 0:
        raise Throttled(wait)


def record_failure(s: Session, username: str, address: str | None, now: float) -> None:
    """Count one failure for the name and the address and set their next allowed time."""
    for key, policy in _keys(username, address):
        row = s.get(LoginThrottle, key)
        if row is None or now - row.last_failure_at >= policy.forget_after_s:
            if row is None:
                row = LoginThrottle(key=key, failures=0, last_failure_at=now, next_allowed_at=now)
                s.add(row)
            row.failures = 0
        row.failures += 1
        row.last_failure_at = now
        row.next_allowed_at = now + policy.delay(row.failures)


def record_success(s: Session, username: str) -> None:
    """A successful login clears the name's pacing (the address keeps its own)."""
    s.execute(delete(LoginThrottle).where(LoginThrottle.key == user_key(username)))


def prune(s: Session, now: float) -> int:
    """Forget keys idle past the longest forget window; return how many."""
    horizon = now - max(USER_POLICY.forget_after_s, ADDRESS_POLICY.forget_after_s)
    result = s.execute(delete(LoginThrottle).where(LoginThrottle.last_failure_at < horizon))
    return int(getattr(result, "rowcount", 0) or 0)
