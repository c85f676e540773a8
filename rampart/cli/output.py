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

Tables: on a terminal a Rich table; when stdout is not a terminal (a pipe, a file)
or with ``-o wide``, plain aligned rows that never wrap, one row a line, so
``rampart devices list T | grep dev-...`` finds the whole row (docs/cli.md,
"Output formats"). Times carry their time zone.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

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
    """A Unix time as local time with its zone (``2026-12-06 16:38:01 UTC``)."""
    if ts is None or ts == "":
        return "-"
    if isinstance(ts, str):
        return ts
    local = datetime.fromtimestamp(float(ts)).astimezone()
    return local.strftime("%Y-%m-%d %H:%M:%S ") + (local.strftime("%Z") or local.strftime("%z"))


#: ``-o/--output``: how tables are printed; set by :data:`OutputOpt`'s callback.
OUTPUTS = ("table", "wide", "json")
_output = {"mode": "table"}


def _set_output(value: str | None) -> str | None:
    if value is not None:
        if value not in OUTPUTS:
            raise typer.BadParameter(f"use one of {', '.join(OUTPUTS)}")
        _output["mode"] = value
    return value


OutputOpt = Annotated[str | None, typer.Option(
    "-o", "--output", callback=_set_output, metavar="table|wide|json",
    help="table (default; plain rows when stdout is not a terminal), wide (plain rows that never "
         "wrap, also on a terminal) or json (as --json).")]


def wants_json(json_out: bool, output: str | None = None) -> bool:
    """``--json`` or ``-o json``."""
    return json_out or output == "json" or _output["mode"] == "json"


def plain_rows() -> bool:
    """Tables as plain rows: ``-o wide``, or stdout (the default console's file) not a terminal."""
    if _output["mode"] == "wide":
        return True
    con = _console()
    return con.file is sys.stdout and not sys.stdout.isatty()


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
          title: str | None = None, plain_title: bool = False) -> None:
    """A table of single-line cells (``None`` shows as ``-``): no cell can break its row.

    Plain rows (see :func:`plain_rows`): a header line, then each row on one line, the
    columns padded to align and never folded; an empty table prints nothing on stdout.
    ``plain_title``: a command printing several tables puts each title on a line of its
    own before its header (``== Script checks ==``), so the plain tables stay apart.
    """
    if plain_rows():
        _plain_table(columns, rows, title=title, with_title=plain_title)
        return
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


def _plain_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
                 title: str | None, with_title: bool) -> None:
    cells = [[safe_line(str(c)) for c in columns]]
    cells += [[safe_line(str(x)) if x is not None else "-" for x in r] for r in rows]
    if len(cells) == 1:
        note(f"(no {title.lower() if title else 'entries'})")
        return
    widths = [max(len(r[i]) if i < len(r) else 0 for r in cells) for i in range(len(columns))]
    out = f"== {safe_line(title)} ==\n" if with_title and title else ""
    out += "".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() + "\n"
                  for r in cells)
    sys.stdout.write(out)
    sys.stdout.flush()


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
