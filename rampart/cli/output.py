"""Output helpers: rich tables for people, ``--json`` for scripts, time and duration formats.

Security invariant (threat T16: a device writes any string it likes): every
human-readable line the CLI prints goes through :mod:`rampart.textsafe` here, so
no control, bidi or invisible character from a device or the server reaches the
terminal; each is shown as a visible escape (``\\x1b``, ``\\u202e``). Table cells,
titles and messages are single lines (LF shows as ``\\n``, so a cell cannot forge a
row); :func:`say_lines` keeps the lines of job output, each made safe. Text is
handed to Rich as :class:`rich.text.Text`, so Rich interprets no markup or emoji
code in it either. ``--json`` (:func:`print_json`) is lossless and ASCII-only;
exports go through :func:`write_export`. Commands print only through these
functions (see docs/cli.md, "Output is safe to read").
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from rampart.textsafe import safe_line, safe_lines

from .errors import UsageProblem

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    console: Console  # stdout
    err_console: Console  # stderr


def __getattr__(name: str) -> Any:
    """``console`` and ``err_console``, made (and Rich imported) on first use: ``--json`` needs neither."""
    if name in ("console", "err_console"):
        from rich.console import Console

        made = Console(stderr=name == "err_console", highlight=False, soft_wrap=True)
        globals()[name] = made
        return made
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _console(name: str = "console") -> Console:
    made = globals().get(name)
    return made if made is not None else __getattr__(name)  # type: ignore[no-any-return]

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


def safe_text(text: object) -> Text:
    """One inert line for Rich: unsafe characters escaped, no markup or emoji interpreted."""
    from rich.text import Text

    return Text(safe_line(str(text)))


def print_json(doc: Any) -> None:
    """``--json``: the exact strings; ``ensure_ascii`` escapes every control and non-ASCII character."""
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, default=str, ensure_ascii=True) + "\n")
    sys.stdout.flush()


def write_export(text: str) -> None:
    """Machine-readable text (an export, an SBOM) to stdout: exact when redirected to a file or a
    pipe; on a terminal each line is made safe like any other output."""
    if text and sys.stdout.isatty():
        text = "".join(line + "\n" for line in safe_lines(text.removesuffix("\n")))
    sys.stdout.write(text)
    sys.stdout.flush()


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
          title: str | None = None) -> None:
    """A table of single-line cells (``None`` shows as ``-``): no cell can break its row."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title=safe_text(title) if title is not None else None, show_lines=False,
              header_style="bold")
    for c in columns:
        t.add_column(safe_text(c), overflow="fold")
    n = 0
    for r in rows:
        t.add_row(*[safe_text(x) if x is not None else Text("-") for x in r])
        n += 1
    if n == 0:
        say(f"(no {title.lower() if title else 'entries'})")
        return
    _console().print(t)


def say(text: str) -> None:
    """One line to stdout, made safe (a line break in ``text`` shows as ``\\n``)."""
    _console().print(safe_text(text))


def say_lines(text: str, *, indent: str = "") -> None:
    """Multi-line text from elsewhere (job or check output) to stdout: its lines kept, each made safe."""
    for line in safe_lines(text):
        _console().print(safe_text(indent + line))


def note(text: str) -> None:
    """A remark on stderr (warnings, progress) so stdout stays parseable; one safe line."""
    _console("err_console").print(safe_text(text))
