"""Maintenance windows and durations: parsing and "is it open now" (pure, no I/O).

A window is written ``DAYS HH:MM DURATION`` in UTC, for example
``sat 02:00 4h``, ``mon,wed,fri 22:00 3h``, ``daily 01:30 90m`` or
``always``. DAYS is ``daily``, ``weekdays``, ``weekends`` or a comma-separated
list of ``mon`` … ``sun``; a window may run past midnight (it belongs to the
day it starts on) and lasts at most 24 hours.

The scheduler starts at most one patch cycle per window *occurrence*, so
:func:`occurrence` returns the start of the occurrence that contains a time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_GROUPS = {"daily": tuple(range(7)), "weekdays": tuple(range(5)), "weekends": (5, 6)}
_TIME = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_DURATION = re.compile(r"^(\d{1,6})([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class WindowError(ValueError):
    """The text is not a window or a duration; the message is one line for the user."""


def parse_duration(text: str, *, what: str = "duration", lo: int = 0, hi: int = 366 * 86400) -> int:
    """``90s``, ``15m``, ``4h``, ``7d``, ``2w`` (or plain seconds) as seconds within [lo, hi]."""
    t = text.strip().lower()
    m = _DURATION.match(t)
    if m:
        seconds = int(m.group(1)) * _UNIT[m.group(2)]
    elif t.isdigit() and len(t) <= 9:
        seconds = int(t)
    else:
        raise WindowError(f"{what} must look like 30m, 4h or 7d")
    if not lo <= seconds <= hi:
        raise WindowError(f"{what} must be between {lo} s and {hi} s")
    return seconds


@dataclass(frozen=True, slots=True)
class Window:
    days: tuple[int, ...]
    start_min: int
    duration_min: int

    @classmethod
    def parse(cls, text: str) -> Window | None:
        """The window, or None for ``always``; :class:`WindowError` when malformed."""
        parts = text.strip().lower().split()
        if parts == ["always"]:
            return None
        if len(parts) != 3:
            raise WindowError("a window is 'DAYS HH:MM DURATION' (e.g. 'sat 02:00 4h') or 'always'")
        days_text, start_text, duration_text = parts
        if days_text in _GROUPS:
            days = _GROUPS[days_text]
        else:
            names = days_text.split(",")
            if any(n not in DAY_NAMES for n in names) or len(set(names)) != len(names):
                raise WindowError("window days are daily, weekdays, weekends or a list like mon,wed,fri")
            days = tuple(sorted(DAY_NAMES.index(n) for n in names))
        m = _TIME.match(start_text)
        if not m:
            raise WindowError("the window's start is HH:MM in UTC (e.g. 02:00)")
        duration = parse_duration(duration_text, what="the window's duration", lo=60, hi=86400)
        return cls(days=days, start_min=int(m.group(1)) * 60 + int(m.group(2)),
                   duration_min=duration // 60)

    @classmethod
    def from_doc(cls, doc: object) -> Window | None:
        """From the stored JSON form (None: always open)."""
        if not doc:
            return None
        if not isinstance(doc, dict):
            raise WindowError("stored window is not an object")
        days, start, duration = doc.get("days"), doc.get("start_min"), doc.get("duration_min")
        if not isinstance(days, list) or not all(isinstance(d, int) and 0 <= d <= 6 for d in days) \
                or not isinstance(start, int) or not 0 <= start < 1440 \
                or not isinstance(duration, int) or not 1 <= duration <= 1440:
            raise WindowError("stored window is malformed")
        return cls(days=tuple(days), start_min=start, duration_min=duration)

    def to_doc(self) -> dict[str, object]:
        return {"days": list(self.days), "start_min": self.start_min, "duration_min": self.duration_min}

    def text(self) -> str:
        named = {v: k for k, v in _GROUPS.items()}
        days = named.get(self.days) or ",".join(DAY_NAMES[d] for d in self.days)
        h, m = divmod(self.start_min, 60)
        dur = f"{self.duration_min // 60}h" if self.duration_min % 60 == 0 else f"{self.duration_min}m"
        return f"{days} {h:02d}:{m:02d} {dur}"


def occurrence(window: Window | None, now: float) -> float | None:
    """Start (epoch seconds) of the window occurrence open at ``now``, or None if it is closed.

    ``always`` is one occurrence per UTC day, so an always-open policy starts at
    most one cycle a day.
    """
    t = datetime.fromtimestamp(now, UTC)
    midnight = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if window is None:
        return midnight.timestamp()
    for back in (0, 1):  # today's occurrence, or yesterday's running past midnight
        day = midnight - timedelta(days=back)
        if day.weekday() not in window.days:
            continue
        start = day + timedelta(minutes=window.start_min)
        if start <= t < start + timedelta(minutes=window.duration_min):
            return start.timestamp()
    return None


def describe(window: Window | None) -> str:
    return "always" if window is None else window.text()
