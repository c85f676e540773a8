"""Delivery results and the retry schedule for failed deliveries. Pure: no I/O, no clock.

Every sender (webhook, e-mail) returns a :class:`DeliveryResult` and never
raises: a notification that cannot be delivered must not break the request
that raised the alert. ``retryable`` says whether trying again can help (a
timeout, a 5xx or 4xx SMTP reply) or not (a refused URL, a 4xx HTTP status, a
rejected recipient). :class:`RetryPolicy` says when to try again.

Invariant: ``DeliveryResult.detail`` is one line of at most 200 bytes with
no control character, and never carries a secret, a URL path or query, a
password or a message body; it is safe to log and to show.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Final

from .formats import one_line

DETAIL_LIMIT: Final = 200


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """The outcome of one delivery attempt. ``status``: the HTTP status or SMTP reply code, if any."""

    ok: bool
    detail: str
    retryable: bool = False
    status: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "detail", one_line(self.detail, DETAIL_LIMIT))
        if self.ok and self.retryable:
            raise ValueError("a successful delivery is not retryable")

    @classmethod
    def success(cls, detail: str, *, status: int | None = None) -> DeliveryResult:
        return cls(ok=True, detail=detail, status=status)

    @classmethod
    def failure(cls, detail: str, *, retryable: bool, status: int | None = None) -> DeliveryResult:
        return cls(ok=False, detail=detail, retryable=retryable, status=status)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff: attempt ``n`` (1-based) failed, wait ``base * factor**(n-1)``, capped.

    ``jitter`` spreads the waits of many deliveries that failed together
    (a receiver that was down) over ``±jitter`` of the delay; it is derived
    from a key (the delivery's id), so the schedule stays reproducible.
    ``max_attempts`` attempts in all, then the delivery is given up.
    """

    base: float = 30.0
    factor: float = 2.0
    max_delay: float = 3600.0
    max_attempts: int = 8
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.base <= self.max_delay:
            raise ValueError("retry base must be positive and at most max_delay")
        if self.factor < 1.0:
            raise ValueError("retry factor must be at least 1")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError("retry jitter must be in [0, 1)")

    def delay(self, attempt: int, *, key: str = "") -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if attempt < 1:
            raise ValueError("attempts are counted from 1")
        # factor ** (attempt - 1) overflows for large attempts: cap the exponent where the delay caps.
        if self.factor == 1.0 or self.base == self.max_delay:
            raw = self.base
        else:
            cap = math.ceil(math.log(self.max_delay / self.base, self.factor))
            raw = self.base * self.factor ** min(attempt - 1, cap)
        delay = min(raw, self.max_delay)
        if self.jitter:
            digest = hashlib.sha256(f"{key}\0{attempt}".encode()).digest()
            unit = int.from_bytes(digest[:8], "big") / 2**64  # [0, 1)
            delay *= 1.0 + self.jitter * (2.0 * unit - 1.0)
        return delay

    def next_attempt(self, attempts: int, result: DeliveryResult, now: float, *,
                     key: str = "") -> float | None:
        """When to try again after ``attempts`` attempts ending in ``result``; None: do not.

        None when the delivery succeeded, cannot succeed on retry, or used
        its ``max_attempts``.
        """
        if result.ok or not result.retryable or attempts >= self.max_attempts:
            return None
        return now + self.delay(attempts, key=key)
