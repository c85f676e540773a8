r"""The terminal-safe text path (threat T16), as a pure function and as the CLI's table and messages.

A hostile device writes any string: terminal sequences (CSI, OSC 52 clipboard
writes, OSC 8 links, the C1 CSI ``\x9b``), CR/LF forged lines, bidi overrides,
zero-width characters, lone surrogates. :mod:`rampart.textsafe` must show each
as a visible escape, never act on it, never hide it, and keep a single-line
field on one line. The end-to-end proof through the real CLI in a real pty is
tests/test_T16_hostile_text_cli.py.
"""

from __future__ import annotations

import io
import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from rampart.cli import output
from rampart.cli.errors import CliError, UsageProblem
from rampart.textsafe import is_safe, safe_line, safe_lines

# An independent statement of what must never reach a terminal (not the module's own predicate).
FORBIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"}
#: Letters that render as nothing (Hangul fillers, the grapheme joiner, Khmer inherent vowels).
INVISIBLE = set("\u034f\u115f\u1160\u17b4\u17b5\u3164\uffa0")
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def forbidden(ch: str) -> bool:
    return unicodedata.category(ch) in FORBIDDEN_CATEGORIES or ch in INVISIBLE


HOSTILE = [
    "\x1b[2J", "\x1b[?1049h", "\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\",
    "\x1b]52;c;cm0gLXJmIH4=\x07", "\x9b31m", "\x00", "\x7f", "\x08", "\x07", "\r", "\n",
    "\r\nFAKELOG all clear", "\u202e", "\u202a", "\u2066", "\u2069", "\u200b", "\u200d", "\u200e",
    "\ufeff", "\u2028", "\u2029", "\u2060", "\u061c", "\U000e0041", "\ud800", "\udfff", "\uffff",
    "\u3164", "\u115f", "\u034f",
]

hostile_text = st.lists(st.one_of(st.sampled_from(HOSTILE), st.text(max_size=8),
                                  st.characters(exclude_categories=())), max_size=24).map("".join)


def unescape(text: str) -> str:
    """Reverse the escapes (valid for output of text that held no backslash)."""
    named = {"n": "\n", "r": "\r", "t": "\t"}

    def one(m: re.Match[str]) -> str:
        body = m.group(1)
        return named[body] if body in named else chr(int(body[1:], 16))

    return re.sub(r"\\(n|r|t|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})", one, text)


# --- the pure function -------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "shown"), [
    ("\x1b[2Jwiped", "\\x1b[2Jwiped"),
    ("\x1b]52;c;aGk=\x07", "\\x1b]52;c;aGk=\\x07"),
    ("\x9b31m", "\\x9b31m"),
    ("ok\r\nFAKELOG all clear", "ok\\r\\nFAKELOG all clear"),
    ("abc\u202edef", "abc\\u202edef"),
    ("a\u200bb\ufeff", "a\\u200bb\\ufeff"),
    ("nul\x00del\x7f", "nul\\x00del\\x7f"),
    ("tag\U000e0041", "tag\\U000e0041"),
    ("lone\ud800", "lone\\ud800"),
    ("C:\\Windows\\System32", "C:\\Windows\\System32"),
    ("Debian GNU/Linux 12 (bookworm) ÄÖü 日本 🙂", "Debian GNU/Linux 12 (bookworm) ÄÖü 日本 🙂"),
])
def test_T16_each_hostile_character_is_shown_as_a_visible_escape(raw: str, shown: str) -> None:
    assert safe_line(raw) == shown
    assert is_safe(shown) and is_safe(raw) == (raw == shown)


@settings(max_examples=400, deadline=None)
@given(hostile_text)
def test_T16_safe_line_never_lets_a_forbidden_character_through(text: str) -> None:
    out = safe_line(text)
    assert not [ch for ch in out if forbidden(ch)]
    assert not any(ch in LINE_BREAKS for ch in out)  # one line, whatever came in
    assert is_safe(out)
    assert safe_line(out) == out  # idempotent: made safe twice shows the same


@settings(max_examples=400, deadline=None)
@given(hostile_text)
def test_T16_no_control_is_hidden_each_becomes_exactly_one_escape(text: str) -> None:
    out = safe_line(text)
    hidden = [ch for ch in text if forbidden(ch)]
    # Each forbidden character became one escape, which starts with a backslash; nothing vanished.
    assert out.count("\\") == text.count("\\") + len(hidden)
    if not hidden:
        assert out == text  # safe text is shown exactly as it came
    if "\\" not in text:
        assert unescape(out) == text  # reversible (so injective) on text without a backslash


@settings(max_examples=300, deadline=None)
@given(hostile_text)
def test_T16_safe_lines_keeps_the_lines_and_makes_each_safe(text: str) -> None:
    lines = safe_lines(text)
    assert len(lines) == text.count("\n") + 1
    for line in lines:
        assert not [ch for ch in line if forbidden(ch)]
        assert not any(ch in LINE_BREAKS for ch in line)
    if "\\" not in text:
        assert "\n".join(unescape(x) for x in lines) == text.replace("\r\n", "\n")


def test_T16_job_output_keeps_lines_but_a_lone_cr_cannot_overwrite_one() -> None:
    assert safe_lines("line 1\r\nline 2\n") == ["line 1", "line 2", ""]
    assert safe_lines("50%\r100%\rFAKELOG all clear") == ["50%\\r100%\\rFAKELOG all clear"]
    assert safe_lines("\x1b[?1049h\nok") == ["\\x1b[?1049h", "ok"]


# --- the CLI's tables, messages and errors -------------------------------------------------------


def render_table(rows: list[list[str]]) -> list[str]:
    wide = Console(file=io.StringIO(), width=2000, highlight=False, soft_wrap=True, color_system=None)
    saved = output.console
    output.console = wide
    try:
        output.table(["a", "b"], rows, title="T")
    finally:
        output.console = saved
    assert isinstance(wide.file, io.StringIO)
    return wide.file.getvalue().splitlines()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(hostile_text, min_size=2, max_size=2), min_size=1, max_size=5))
def test_T16_a_table_cell_cannot_forge_a_row(rows: list[list[str]]) -> None:
    lines = render_table(rows)
    # title, top border, header, header rule, one line per row, bottom border
    assert len(lines) == 4 + len(rows) + 1, lines
    for line in lines[4:-1]:
        assert line.startswith("│") and line.endswith("│")
    assert not [ch for line in lines for ch in line if forbidden(ch)]


def test_T16_rich_markup_and_emoji_codes_in_device_text_stay_literal() -> None:
    [row] = [x for x in render_table([["[bold red]boom[/]", ":warning: :smile:"]]) if "boom" in x]
    assert "[bold red]boom[/]" in row and ":warning: :smile:" in row


@pytest.mark.parametrize("error", [CliError, UsageProblem])
def test_T16_an_error_quoting_device_data_is_one_safe_line(error: type[CliError]) -> None:
    e = error("no device web\x1b[2J\nFAKELOG all clear \u202eok  here\n")
    assert str(e) == "no device web\\x1b[2J\\nFAKELOG all clear \\u202eok here"
