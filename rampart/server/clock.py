"""The server's clock: wall time, optionally shifted for drills and tests.

``RAMPART_CLOCK_OFFSET_S`` (seconds, may be negative) shifts every time the
server reads, so dormancy, expiry and lockout can be exercised on a real
process without sleeping. It can only be set by whoever starts the server,
who already controls it; :func:`configure_from_env` logs a warning whenever
it is set so it is never left on unnoticed.
"""

from __future__ import annotations

import logging
import math
import os
import time

log = logging.getLogger("rampart.server.clock")

OFFSET_ENV = "RAMPART_CLOCK_OFFSET_S"
_MAX_OFFSET_S = 10 * 365 * 86400

_offset = 0.0


def now() -> float:
    """Seconds since the epoch as the server sees them."""
    return time.time() + _offset


def offset() -> float:
    return _offset


def configure_from_env() -> None:
    """Read ``RAMPART_CLOCK_OFFSET_S``; an invalid value is an error, never ignored."""
    global _offset
    raw = os.environ.get(OFFSET_ENV)
    if raw is None or raw == "":
        _offset = 0.0
        return
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{OFFSET_ENV} must be a number of seconds") from None
    if not math.isfinite(value) or abs(value) > _MAX_OFFSET_S:
        raise ValueError(f"{OFFSET_ENV} must be finite and within ten years")
    _offset = value
    log.warning("server clock shifted by %+.0f s (%s is set): use only for drills and tests",
                value, OFFSET_ENV)
