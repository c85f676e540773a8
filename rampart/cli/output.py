"""Output helpers: rich tables for people, ``--json`` for scripts, time and duration formats."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import UsageProblem

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, *, what: str = "duration") -> int:
    """``90s``, ``30m``, ``2h``, ``365d``, ``1w`` or plain seconds → seconds (> 0)."""
    m = _DURATION.match(text or "")
    if not m:
        raise UsageProblem(f"invalid {what} {text!r}: use e.g. 90s, 30m, 2h, 7d")
    seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if seconds <= 0:
        raise UsageProblem(f"the {what} must be positive")
    return seconds


def fmt_duration(seconds: float) -> str:
    s = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size and s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


def fmt_time(ts: float | int | str | None) -> str:
    if ts is None or ts == "":
        return "-"
    if isinstance(ts, str):
        return ts
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(ts)))


def print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
          title: str | None = None) -> None:
    t = Table(title=title, show_lines=False, header_style="bold")
    for c in columns:
        t.add_column(c, overflow="fold")
    n = 0
    for r in rows:
        t.add_row(*[escape(str(x)) if x is not None else "-" for x in r])
        n += 1
    if n == 0:
        console.print(f"(no {title.lower() if title else 'entries'})")
        return
    console.print(t)


def say(text: str) -> None:
    """Plain text to stdout (no markup interpretation)."""
    console.print(escape(text))


def note(text: str) -> None:
    """A remark on stderr (warnings, progress) so stdout stays parseable."""
    err_console.print(escape(text))
