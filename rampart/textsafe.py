r"""Terminal-safe text: what a device (or anyone else) wrote, shown as inert, visible text.

A managed device controls every string it reports (threat T16): hostname, OS
name, users, packages, process names, job output. Printed as they came, such
strings drive the reader's terminal (``ESC[2J`` clears it, OSC 52 writes the
clipboard, OSC 8 makes links), forge lines with CR or LF, or reorder what
follows with U+202E. Every human-readable output passes its text through here.

Invariant of :func:`safe_line`: the result holds no *unsafe* character, namely

* a C0 or C1 control, or DEL (category Cc: ESC, CSI ``\x9b``, NUL, CR, LF, TAB …);
* a format character (Cf: bidi embeddings, overrides and isolates U+202A–U+202E
  and U+2066–U+2069, marks U+200E/U+200F, zero-width U+200B–U+200D, U+FEFF,
  U+2060–U+2064, tag characters …);
* a line or paragraph separator (Zl, Zp: U+2028, U+2029), a lone surrogate (Cs),
  a code point this Python's Unicode tables do not know (Cn: a newer format
  character looks like this; fail closed), or one of the few invisible letters
  (Hangul fillers, U+034F, U+17B4/U+17B5).

Each unsafe character becomes a visible escape: ``\n``, ``\r``, ``\t``, ``\x1b``,
``\u202e``, ``\U000e0041``. So it is shown, never acted on, never hidden, and a
single-line field never spans lines. Text without unsafe characters is returned
unchanged, and the mapping is idempotent. A literal backslash is left as it is
(Windows paths stay readable), so the mapping is not reversible: ``\x1b`` on screen
may also be four typed characters. Exact strings are what ``--json`` is for.

:func:`safe_lines` is for multi-line text (job and check output): it keeps the
line breaks (LF, or CRLF) and makes each line safe by the same rule.

Pure: no I/O, standard library only, so the CLI and the server's web pages can
both import it without importing each other. The rule for operators is stated
in docs/cli.md ("Output is safe to read").
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

__all__ = ["UNSAFE_CATEGORIES", "is_safe", "safe_line", "safe_lines", "unsafe_char"]

#: Unicode general categories that are never printed as they are.
UNSAFE_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"})

#: Invisible characters outside those categories (they render as nothing, or as blank space).
_INVISIBLE: Final = frozenset({0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x3164, 0xFFA0})

_NAMED: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

#: Printable ASCII is always safe: only other characters need a look (fast path for the common case).
_CANDIDATE: Final = re.compile(r"[^\x20-\x7e]")


def unsafe_char(ch: str) -> bool:
    """True for one character that must not reach a terminal or a page as it is."""
    code = ord(ch)
    if code < 0x20 or 0x7F <= code < 0xA0:
        return True
    if code < 0xA0:
        return False
    return code in _INVISIBLE or unicodedata.category(ch) in UNSAFE_CATEGORIES


def _escape(ch: str) -> str:
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _replace(m: re.Match[str]) -> str:
    ch = m.group()
    return _escape(ch) if unsafe_char(ch) else ch


def safe_line(text: str) -> str:
    """``text`` as one inert line: every unsafe character replaced by its visible escape."""
    return _CANDIDATE.sub(_replace, text)


def safe_lines(text: str) -> list[str]:
    """Multi-line ``text`` split at LF (a CR right before it belongs to the break), each line safe.

    A lone CR, and every other control, stays visible as an escape within its line.
    """
    parts = text.split("\n")
    return [safe_line(part.removesuffix("\r")) for part in parts[:-1]] + [safe_line(parts[-1])]


def is_safe(text: str) -> bool:
    """True when ``text`` holds no unsafe character (:func:`safe_line` would return it unchanged)."""
    return not any(unsafe_char(ch) for ch in _CANDIDATE.findall(text))
