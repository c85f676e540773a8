"""Admission under load: how a busy gateway says "try again later", read by both sides.

A node that has more agents in their handshake than it admits at once (a reconnect storm
after a restart: docs/scale-out.md) closes the connections it cannot take soon with the
WebSocket code 1013 ("Try Again Later", RFC 6455 section 7.4.2 registry) and a reason that
names a delay. The agent waits that long, jittered, instead of its growing back-off, so a
storm spreads out and no agent's wait grows without bound.

Invariant: :func:`parse_try_again` returns a delay in 1..MAX_TRY_AGAIN_S or None, whatever
the reason text holds (a reason comes from the server: it is not trusted to be well formed).
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["CLOSE_TRY_AGAIN", "MAX_TRY_AGAIN_S", "parse_try_again", "try_again_reason"]

#: The WebSocket close code of a node that is too busy to take the connection now.
CLOSE_TRY_AGAIN: Final = 1013
#: The longest delay a server may ask for; longer is read as this.
MAX_TRY_AGAIN_S: Final = 300

_REASON = re.compile(r"busy: try again in (\d{1,6}) s")


def try_again_reason(delay_s: float) -> str:
    """The close reason that asks for ``delay_s`` (rounded up, at least 1 s)."""
    return f"busy: try again in {max(1, min(MAX_TRY_AGAIN_S, -int(-delay_s // 1)))} s"


def parse_try_again(reason: str) -> int | None:
    """The delay a 1013 close reason asks for, bounded; None when it names none."""
    m = _REASON.fullmatch(reason)
    if m is None:
        return None
    return max(1, min(MAX_TRY_AGAIN_S, int(m.group(1))))
