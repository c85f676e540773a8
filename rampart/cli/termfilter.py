"""What a remote shell may do to the technician's own terminal: everything a shell needs, nothing more.

A remote session's output must reach the terminal as it is (colours, cursor
motion, full-screen programs), but the device is attacker-controlled (T16):
some sequences make a terminal act beyond drawing. :class:`TerminalFilter`
passes ordinary output and CSI/ESC controls, and drops:

* OSC strings other than 0, 1 and 2 (the window title, kept only when its text
  is printable): OSC 52 writes the clipboard, OSC 8 plants links, others
  change colours, fonts or start notifications, and some terminals answer them;
* DCS, SOS, PM and APC strings (terminal queries, sixel and tmux passthrough);
* CSI ``20 t`` / ``21 t`` (report the icon or window title, typing the
  device's text back into the session as if the technician had);
* C1 controls (U+0080..U+009F) in the UTF-8 stream, which some terminals obey.

With ``drop_queries=True`` (the local console's terminal in the browser, xterm.js, which
answers a query by emitting it as typed input) it also drops every CSI sequence that makes
a terminal answer: device attributes (``c``, ``>c``, ``=c``), status and cursor reports
(``n``), mode reports (``$p``), terminal parameters (``x``), window reports (``t``), so a
device cannot make the operator's terminal type into the device's own shell.

Streaming: state carries across chunks, so a sequence split between two
frames is judged whole. Pure: bytes in, bytes out.
"""

from __future__ import annotations

__all__ = ["TerminalFilter"]

_ESC = 0x1B
_BEL = 0x07
_MAX_STRING = 4096
#: CSI finals of requests a terminal answers (DA, DSR/CPR, DECREQTPARM, window ops) or
#: that change how it answers (DECRQM is ``$p``).
_QUERY_FINALS = frozenset(b"cnxt")  # longest OSC title kept; longer strings are dropped whole


class TerminalFilter:
    """A streaming filter for remote terminal output (see the module docstring)."""

    def __init__(self, *, drop_queries: bool = False) -> None:
        self._drop_queries = drop_queries
        self._state = "text"
        self._buf = bytearray()
        self.dropped = 0

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        for b in data:
            self._step(b, out)
        return bytes(out)

    def _step(self, b: int, out: bytearray) -> None:
        st = self._state
        if st == "text":
            if b == _ESC:
                self._state, self._buf = "esc", bytearray([b])
            elif b == 0xC2:
                self._state, self._buf = "c2", bytearray([b])
            else:
                out.append(b)
        elif st == "c2":
            self._state = "text"
            if 0x80 <= b <= 0x9F:
                self.dropped += 1  # a C1 control in UTF-8
            else:
                out += self._buf
                self._step(b, out)
        elif st == "esc":
            if b == ord("]"):
                self._state, self._buf = "osc", bytearray()
            elif b in (ord("P"), ord("X"), ord("^"), ord("_")):
                self._state = "string"
                self.dropped += 1
            elif b == ord("["):
                self._state = "csi"
                self._buf.append(b)
            else:
                out += self._buf
                out.append(b)
                self._state = "text"
        elif st == "csi":
            self._buf.append(b)
            if 0x40 <= b <= 0x7E:
                params = bytes(self._buf[2:-1])
                self._state = "text"
                if b == ord("t") and params.split(b";")[0] in (b"20", b"21"):
                    self.dropped += 1
                elif self._drop_queries and (b in _QUERY_FINALS or (b == ord("p") and b"$" in params)):
                    self.dropped += 1
                else:
                    out += self._buf
            elif len(self._buf) > 64:
                self._state = "text"  # not a real CSI: shown as it was
                out += self._buf
        elif st in ("osc", "osc-esc"):
            if b == _BEL or (st == "osc-esc" and b == ord("\\")):
                self._end_osc(out, terminator=b"\x07" if b == _BEL else b"\x1b\\")
            elif st == "osc-esc":
                self._state = "osc"
                self._buf += bytes([_ESC, b])
            elif b == _ESC:
                self._state = "osc-esc"
            else:
                self._buf.append(b)
                if len(self._buf) > _MAX_STRING:
                    self._state, self._buf = "string", bytearray()
                    self.dropped += 1
        elif st in ("string", "string-esc"):
            if b == _BEL or (st == "string-esc" and b == ord("\\")):
                self._state = "text"
            else:
                self._state = "string-esc" if b == _ESC else "string"

    def _end_osc(self, out: bytearray, *, terminator: bytes) -> None:
        self._state = "text"
        body = bytes(self._buf)
        code, _, text = body.partition(b";")
        if code in (b"0", b"1", b"2") and all(0x20 <= c < 0x7F or c >= 0xA0 for c in text):
            out += b"\x1b]" + body + terminator
        else:
            self.dropped += 1
