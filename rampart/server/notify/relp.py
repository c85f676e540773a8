"""A RELP client: syslog records to rsyslog (imrelp) with an acknowledgement for each.

RELP, the Reliable Event Logging Protocol, is rsyslog's acknowledged
transport (librelp, doc/relp.md: "RELP - The Reliable Event Logging
Protocol", version 0.0.1, 2008). No RFC defines it; this module implements
the part a sender needs, from that text and librelp's behaviour:

* Frames: ``TXNR SP COMMAND SP DATALEN [SP DATA] LF`` (:func:`encode_frame`,
  :class:`FrameReader`). TXNR has 1 to 9 digits and starts at 1 on each
  connection; after 999,999,999 it wraps to 1. COMMAND is 1 to 32 letters.
  TXNR 0 is reserved for hints from the server (``serverclose``).
* A session starts with ``open`` carrying the offers
  ``relp_version=0``, ``relp_software=rampart,<version>`` and
  ``commands=syslog``; it is ready only once the server answered ``rsp``
  with ``200`` and offers that include ``relp_version`` and the ``syslog``
  command. Anything else and the session is not used.
* Each record is the data of one ``syslog`` command; the server answers each
  with ``rsp`` and the same TXNR, in the order the commands were sent:
  ``200 OK`` means the receiver took the record (rsyslog: it is in its main
  queue), anything else that it did not. Up to ``window`` commands are
  outstanding at a time (librelp's default is 128).
* ``close`` ends a session; ``serverclose`` (a hint, TXNR 0) says the server
  ended it.

What "taken" means here (see :class:`~.channel.Channel`): a record counts
only once its ``200`` response arrived. When a session breaks (a restart, a
network failure, a ``serverclose``, no answer within ``timeout``) the
records whose responses did not arrive are not counted and are sent again
on the next session: none is lost, and one the receiver took just before
the break may arrive twice (doc/relp.md says the same of librelp). A
response that is not ``200`` stops the call there.

Security rules (the receiver is not trusted to be well-behaved):

* Every frame from the server is parsed strictly and bounded:
  :data:`MAX_RESPONSE_DATA` bytes of data at most; a malformed frame, an
  unexpected command, a response to a TXNR not outstanding, or more than
  :data:`MAX_HINTS` hints ends the session (:class:`RelpProtocolError`), as
  the specification asks. Every wait has a timeout, and one call at most
  :data:`CALL_BUDGET` timeouts in all.
* The server's text is shown only through :func:`~.formats.one_line`.
* TLS (librelp's, as rsyslog's imrelp ``tls="on"``: TLS from the first
  byte, no STARTTLS) uses the target's :class:`~.tlsconfig.TlsSettings`.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from rampart import __version__

from .channel import (
    DEFAULT_BACKOFF,
    DEFAULT_PROBE_S,
    REFUSES,
    Channel,
    ChannelBroken,
    describe,
    readable,
)
from .formats import MAX_RECORD, one_line
from .outbox import RetryPolicy
from .tlsconfig import TlsSettings

RELP_VERSION: Final = 0
SOFTWARE: Final = f"rampart,{__version__}"
MAX_TXNR: Final = 999_999_999
#: Commands outstanding at a time (librelp's default window).
DEFAULT_WINDOW: Final = 128
#: Largest DATA accepted from the server (responses are short; librelp's offers fit in 4 KiB).
MAX_RESPONSE_DATA: Final = 16 * 1024
#: Largest DATA this client sends (librelp's default maximum is 128 KiB).
MAX_DATA: Final = 128 * 1024
#: Hints (TXNR 0) accepted while records are outstanding, and one call's time in ``timeout``s.
MAX_HINTS: Final = 64
CALL_BUDGET: Final = 3

_COMMAND: Final = re.compile(rb"[A-Za-z]{1,32}")
_CODE: Final = re.compile(rb"[0-9]{3}")
_HEADER: Final = re.compile(rb"([0-9]{1,9}) ([A-Za-z]{1,32}) ([0-9]{1,9})([ \n])")
_PARTIAL_HEADER: Final = re.compile(rb"[0-9]{0,9}(?: [A-Za-z]{0,32}(?: [0-9]{0,9})?)?")
HEADER_MAX: Final = 9 + 1 + 32 + 1 + 9 + 1


class RelpProtocolError(ValueError):
    """The server sent something RELP does not allow (the session must end)."""


@dataclass(frozen=True, slots=True)
class Frame:
    txnr: int
    command: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Response:
    """The data of a ``rsp`` frame: ``CODE [SP TEXT] [LF BODY]``."""

    code: int
    text: str
    body: bytes

    @property
    def ok(self) -> bool:
        return self.code == 200


def encode_frame(txnr: int, command: str, data: bytes = b"") -> bytes:
    """One RELP frame (ValueError for what RELP cannot carry)."""
    if not 0 <= txnr <= MAX_TXNR:
        raise ValueError("a RELP TXNR is 0 to 999999999")
    if not _COMMAND.fullmatch(command.encode("ascii", "replace")):
        raise ValueError("a RELP command is 1 to 32 ASCII letters")
    if len(data) > MAX_DATA:
        raise ValueError(f"RELP data is at most {MAX_DATA} bytes")
    head = f"{txnr} {command} {len(data)}".encode("ascii")
    return head + (b" " + data if data else b"") + b"\n"


class FrameReader:
    """Incremental, strict parser of the frames a RELP server sends."""

    def __init__(self, max_data: int = MAX_RESPONSE_DATA) -> None:
        self._buf = bytearray()
        self._max_data = max_data

    def feed(self, data: bytes) -> None:
        self._buf += data

    def frames(self) -> Iterator[Frame]:
        """Every complete frame buffered so far (RelpProtocolError at the first malformed one)."""
        while (frame := self._next()) is not None:
            yield frame

    @property
    def buffered(self) -> bool:
        return bool(self._buf)

    def _next(self) -> Frame | None:
        buf = self._buf
        m = _HEADER.match(buf)
        if m is None:
            if len(buf) < HEADER_MAX and _PARTIAL_HEADER.fullmatch(buf):
                return None  # the header is still arriving
            raise RelpProtocolError("malformed RELP frame header")
        txnr, command, datalen = int(m[1]), m[2].decode("ascii"), int(m[3])
        if datalen > self._max_data:
            raise RelpProtocolError(f"RELP frame of {datalen} bytes exceeds {self._max_data}")
        if m[4] == b"\n":  # TXNR SP COMMAND SP 0 LF: a frame without data
            if datalen != 0:
                raise RelpProtocolError("RELP frame without its data")
            del buf[:m.end()]
            return Frame(txnr, command, b"")
        if datalen == 0:
            raise RelpProtocolError("RELP frame of length 0 followed by data")
        end = m.end() + datalen
        if len(buf) <= end:
            return None
        if buf[end] != 0x0A:
            raise RelpProtocolError("RELP frame does not end with LF")
        data = bytes(buf[m.end():end])
        del buf[:end + 1]
        return Frame(txnr, command, data)


def parse_response(data: bytes) -> Response:
    """The data of a ``rsp`` frame (RelpProtocolError if it is not ``CODE [SP TEXT] [LF BODY]``)."""
    line, _, body = data.partition(b"\n")
    code, sep, text = line.partition(b" ")
    if not _CODE.fullmatch(code):
        raise RelpProtocolError("RELP response without a three-digit status")
    return Response(int(code), one_line(text.decode("utf-8", "replace"), 120) if sep else "", body)


def parse_offers(body: bytes) -> dict[str, list[str]]:
    """``name=value,value`` lines (the offers of ``open`` and of its response)."""
    offers: dict[str, list[str]] = {}
    for raw in body.split(b"\n"):
        if not raw:
            continue
        name, _, values = raw.decode("utf-8", "replace").partition("=")
        offers[name[:32]] = [v[:255] for v in values.split(",") if v][:16]
    return offers


OPEN_OFFERS: Final = (f"relp_version={RELP_VERSION}\nrelp_software={SOFTWARE}\n"
                      "commands=syslog").encode("ascii")


class RelpForwarder(Channel):
    """Records over RELP (plain, or TLS when ``tls`` is given) to one receiver, each acknowledged."""

    transport = "relp"

    def __init__(self, host: str, port: int, *, tls: TlsSettings | None, allow_plaintext: bool = False,
                 timeout: float = 5.0, probe_s: float = DEFAULT_PROBE_S,
                 backoff: RetryPolicy = DEFAULT_BACKOFF, max_record: int = MAX_RECORD,
                 window: int = DEFAULT_WINDOW, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(host, port, tls=tls, allow_plaintext=allow_plaintext, timeout=timeout,
                         probe_s=probe_s, backoff=backoff, max_record=max_record, clock=clock)
        if not 1 <= window <= 1024:
            raise ValueError("the RELP window is 1 to 1024 commands")
        self._window = window
        self._reader = FrameReader()
        self._txnr = 1

    # -- the session -------------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        sock = self._open_stream()
        self._reader = FrameReader()
        self._txnr = 1
        try:
            txnr = self._next_txnr()
            self._write(sock, encode_frame(txnr, "open", OPEN_OFFERS), opening=True)
            frame = self._read_frame(sock, self._timeout, opening=True)
            if frame.command != "rsp" or frame.txnr != txnr:
                raise ChannelBroken(f"the receiver answered open with {frame.command} {frame.txnr}: "
                                    "not a RELP server?", refused=True)
            rsp = parse_response(frame.data)
            if not rsp.ok:
                raise ChannelBroken(f"the receiver refused the RELP session: {rsp.code} {rsp.text}",
                                    refused=True)
            offers = parse_offers(rsp.body)
            if "relp_version" not in offers or "syslog" not in offers.get("commands", []):
                raise ChannelBroken("the receiver does not offer RELP's syslog command", refused=True)
        except RelpProtocolError as exc:
            sock.close()
            raise ChannelBroken(f"RELP protocol error: {exc}", refused=True) from None
        except ChannelBroken:
            sock.close()
            raise
        return sock

    def _check_idle(self, sock: socket.socket) -> None:
        if not self._reader.buffered and not readable(sock, 0.0):
            return
        frame = self._read_frame(sock, 0.2)
        if frame.txnr == 0 and frame.command == "serverclose":
            raise ChannelBroken("the receiver ended the RELP session (serverclose)")
        raise ChannelBroken(f"unexpected RELP frame while idle: {frame.command}")

    def _send(self, sock: socket.socket, records: list[bytes]) -> int:
        outstanding: deque[int] = deque()
        sent = acked = hints = 0
        # One call is bounded as a whole: a receiver answering slowly, or with endless hints,
        # cannot hold the caller (the notifier's only thread) for long.
        budget = self._clock() + CALL_BUDGET * self._timeout
        try:
            while acked < len(records):
                chunk = bytearray()
                while sent < len(records) and len(outstanding) < self._window:
                    txnr = self._next_txnr()
                    chunk += encode_frame(txnr, "syslog", records[sent])
                    outstanding.append(txnr)
                    sent += 1
                if chunk:
                    self._write(sock, bytes(chunk))
                left = budget - self._clock()
                if left <= 0:
                    raise ChannelBroken(f"the receiver acknowledged {acked} of {len(records)} records "
                                        f"within {CALL_BUDGET * self._timeout:g} s")
                frame = self._read_frame(sock, min(self._timeout, left), late=(
                    f"the receiver acknowledged {acked} of {len(records)} records within "
                    f"{CALL_BUDGET * self._timeout:g} s" if left < self._timeout else None))
                if frame.txnr == 0:
                    if frame.command == "serverclose":
                        raise ChannelBroken("the receiver ended the RELP session (serverclose)")
                    hints += 1
                    if hints > MAX_HINTS:
                        raise RelpProtocolError("too many hints")
                    continue  # another hint: hints need no answer and change nothing
                if frame.command != "rsp" or not outstanding or frame.txnr != outstanding[0]:
                    raise RelpProtocolError(f"{frame.command} for TXNR {frame.txnr} out of order")
                rsp = parse_response(frame.data)
                if not rsp.ok:
                    raise ChannelBroken(f"the receiver refused a record: {rsp.code} {rsp.text}",
                                        refused=True)
                outstanding.popleft()
                acked += 1
        except ChannelBroken as exc:
            raise ChannelBroken(exc.reason, refused=exc.refused, taken=acked) from None
        except RelpProtocolError as exc:
            raise ChannelBroken(f"RELP protocol error: {exc}", refused=True, taken=acked) from None
        return acked

    def _goodbye(self, sock: socket.socket) -> None:
        txnr = self._next_txnr()
        self._write(sock, encode_frame(txnr, "close"))
        for _ in range(4):  # its response, perhaps after a serverclose hint
            frame = self._read_frame(sock, 1.0)
            if frame.txnr == txnr:
                return

    # -- I/O -----------------------------------------------------------------------------------

    def _next_txnr(self) -> int:
        txnr = self._txnr
        self._txnr = 1 if txnr >= MAX_TXNR else txnr + 1
        return txnr

    def _write(self, sock: socket.socket, data: bytes, *, opening: bool = False) -> None:
        try:
            sock.sendall(data)
        except OSError as exc:
            if opening:
                raise ChannelBroken(f"the receiver closed the connection before answering open "
                                    f"({describe(exc)}): {REFUSES}", refused=True) from None
            raise ChannelBroken(f"write failed: {describe(exc)}",
                                refused=isinstance(exc, ssl.SSLError)) from None

    def _read_frame(self, sock: socket.socket, wait: float, *, opening: bool = False,
                    late: str | None = None) -> Frame:
        """The next frame from the server, within ``wait`` seconds (ChannelBroken, ``late`` or a
        default reason, otherwise)."""
        deadline = self._clock() + wait
        while True:
            try:
                for frame in self._reader.frames():
                    return frame
            except RelpProtocolError as exc:
                raise ChannelBroken(f"RELP protocol error: {exc}", refused=True) from None
            left = deadline - self._clock()
            if left <= 0:
                raise ChannelBroken(late or f"no RELP response within {wait:g} s")
            try:
                sock.settimeout(left)
                data = sock.recv(65536)
            except TimeoutError:
                raise ChannelBroken(late or f"no RELP response within {wait:g} s") from None
            except ssl.SSLError as exc:
                raise ChannelBroken(f"the receiver ended the TLS session ({describe(exc)})"
                                    + (f": {REFUSES}" if opening else ""), refused=True) from None
            except OSError as exc:
                raise ChannelBroken(f"read failed: {describe(exc)}", refused=opening) from None
            finally:
                try:
                    sock.settimeout(self._timeout)
                except OSError:
                    pass
            if not data:
                raise ChannelBroken("the receiver closed the connection"
                                    + (f" before answering open: {REFUSES}" if opening else ""),
                                    refused=opening)
            self._reader.feed(data)
