"""A connection to one SIEM receiver that says how many records the receiver took.

:class:`Channel` is the common part of :class:`~.syslog.SyslogForwarder`
(RFC 6587 octet counting over TCP, RFC 5425 over TLS) and
:class:`~.relp.RelpForwarder` (RELP, acknowledged). It holds no queue: the
caller's store is the queue, and :meth:`Channel.deliver` reports how many
records, from the first, the receiver took (:class:`Delivered`). The caller
moves its cursor over exactly those, so nothing is skipped, and sends the
rest again later.

What "took" means depends on the transport (docs/alerts.md, "What delivered
means"); both transports share these rules:

* A connection is used only once it has proven alive. After the TCP connect
  and the TLS handshake, the receiver may still refuse the client: with TLS
  1.3 the client's handshake ends before the server has checked the client
  certificate, so a refusal (an alert, or a close) arrives after it, on the
  first read. Each transport waits for that verdict before it writes a
  record (syslog: a read with a short timeout, ``probe_s``; RELP: the
  ``open`` command's response).
* A refusing, absent or misbehaving receiver is a failure, never an
  exception: ``Delivered.error`` says why in one line without secrets, and
  connection attempts back off exponentially (``backoff``).
* Plain TCP only to a loopback IP address unless ``allow_plaintext``: audit
  records would otherwise cross the network readable and alterable.

Errors::

    ValueError          misuse: invalid settings, or a record larger than
                        ``max_record`` (the formatters bound every record)
    Delivered           every failure to deliver (taken < len(records))
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import ssl
import struct
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar, Final

from .formats import MAX_RECORD, one_line
from .outbox import RetryPolicy
from .tlsconfig import PinMismatch, TlsSettings

#: Reconnection back-off: 0.5 s after the first failed attempt, doubling, at most 60 s.
DEFAULT_BACKOFF: Final = RetryPolicy(base=0.5, factor=2.0, max_delay=60.0, max_attempts=1, jitter=0.1)
#: How long a new connection is watched for a refusal before the first record is written.
DEFAULT_PROBE_S: Final = 1.0
#: How long after the last byte was acknowledged a syslog connection is watched once more.
DEFAULT_SETTLE_S: Final = 0.05
ERROR_LIMIT: Final = 200
#: What a receiver that closes a fresh connection (or alerts right after the handshake) most likely means.
REFUSES: Final = "it refuses this client (a client certificate required or not trusted?)"

try:  # Linux: bytes in the socket's send queue, unsent or not yet acknowledged by the peer's TCP
    import fcntl
    import termios

    _SIOCOUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):  # pragma: no cover - not Linux
    _SIOCOUTQ = None


@dataclass(frozen=True, slots=True)
class Delivered:
    """How one :meth:`Channel.deliver` went: the first ``taken`` records were taken, the rest not.

    ``refused``: the receiver answered and said no (a TLS alert or a close
    after the handshake, a RELP error response), as opposed to not being
    reachable at all. ``error`` is one line without secrets, None when all
    records were taken.
    """

    taken: int
    error: str | None = None
    refused: bool = False


@dataclass(frozen=True, slots=True)
class ChannelStats:
    """Counters since the channel was built; ``failures`` counts consecutive failed attempts."""

    transport: str
    taken: int
    connects: int
    connected: bool
    failures: int
    last_error: str | None


class ChannelBroken(Exception):
    """Internal: the connection failed; ``taken`` records of the current call were taken before."""

    def __init__(self, reason: str, *, refused: bool = False, taken: int = 0) -> None:
        super().__init__(reason)
        self.reason = one_line(reason, ERROR_LIMIT)
        self.refused = refused
        self.taken = taken


def loopback_literal(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def describe(exc: BaseException) -> str:
    """One line about a network or TLS error, without secrets (OpenSSL's reason, not its file names)."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"{exc.reason}: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and getattr(exc, "reason", None):
        return f"{type(exc).__name__}: {exc.reason}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def unacked_bytes(sock: socket.socket) -> int | None:
    """Bytes written but not yet acknowledged by the receiver's TCP (Linux); None where unknown."""
    if _SIOCOUTQ is None:  # pragma: no cover - not Linux
        return None
    try:
        raw = fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return None
    return int(struct.unpack("i", raw)[0])


class Channel(ABC):
    """One receiver, one connection at a time, reconnecting with back-off. Thread-safe."""

    transport: ClassVar[str] = "?"

    def __init__(self, host: str, port: int, *, tls: TlsSettings | None, allow_plaintext: bool = False,
                 timeout: float = 5.0, probe_s: float = DEFAULT_PROBE_S,
                 settle_s: float = DEFAULT_SETTLE_S, backoff: RetryPolicy = DEFAULT_BACKOFF,
                 max_record: int = MAX_RECORD, clock: Callable[[], float] = time.monotonic) -> None:
        if not host or len(host) > 253 or any(c.isspace() or ord(c) < 33 for c in host):
            raise ValueError("syslog host must be a host name or an IP address")
        if not (isinstance(port, int) and 1 <= port <= 65535):
            raise ValueError("syslog port must be 1 to 65535")
        if tls is None and not allow_plaintext and not loopback_literal(host):
            raise ValueError("syslog over plain TCP only to a loopback address, unless allow_plaintext")
        if not 0 < timeout <= 300 or not 0 <= probe_s <= 30 or not 0 <= settle_s <= 5:
            raise ValueError("timeout must be in (0, 300] s, probe_s in [0, 30] s, settle_s in [0, 5] s")
        if max_record < 64:
            raise ValueError("max_record must be at least 64 bytes")
        self._host = host
        self._port = port
        self._tls = tls
        self._timeout = timeout
        self._probe_s = probe_s
        self._settle_s = settle_s
        self._backoff = backoff
        self._max_record = max_record
        self._clock = clock
        self._lock = threading.RLock()
        self._sock: socket.socket | None = None
        self._failures = 0
        self._next_connect = 0.0
        self._taken = self._connects = 0
        self._last_error: str | None = None
        self._last_refused = False

    # -- public --------------------------------------------------------------------------

    def deliver(self, records: Sequence[str]) -> Delivered:
        """Send ``records`` in order; return how many, from the first, the receiver took.

        With no records it only checks that an open connection is still
        alive (closing it if not). Never raises for the receiver's doing.
        """
        data = [r.encode("utf-8", "replace") for r in records]
        for item in data:
            if len(item) > self._max_record:
                raise ValueError(f"a record of {len(item)} bytes exceeds max_record ({self._max_record})")
        with self._lock:
            if self._sock is not None:
                try:
                    self._check_idle(self._sock)
                except ChannelBroken as exc:
                    self._disconnect(exc.reason)  # the receiver ended it: reconnect now, no back-off
            if not data:
                return Delivered(0)
            if self._sock is None:
                if self._clock() < self._next_connect:  # backing off: the last error stands
                    return Delivered(0, self._last_error or "backing off", self._last_refused)
                try:
                    self._sock = self._connect()
                except ChannelBroken as exc:
                    return self._failed(exc)
                self._connects += 1
            try:
                taken = self._send(self._sock, data)
            except ChannelBroken as exc:
                self._disconnect(None)
                self._taken += exc.taken
                return self._failed(exc)
            self._failures = 0
            self._taken += taken
            return Delivered(taken)

    def stats(self) -> ChannelStats:
        with self._lock:
            return ChannelStats(transport=self.transport, taken=self._taken, connects=self._connects,
                                connected=self._sock is not None, failures=self._failures,
                                last_error=self._last_error)

    def close(self) -> None:
        """End the session politely if one is open."""
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError, ChannelBroken):
                    self._goodbye(self._sock)
            self._disconnect(None)

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- for the transports -------------------------------------------------------------

    @abstractmethod
    def _connect(self) -> socket.socket:
        """A connection proven alive and ready for records (ChannelBroken otherwise)."""

    @abstractmethod
    def _send(self, sock: socket.socket, records: list[bytes]) -> int:
        """Send ``records``; return how many the receiver took (ChannelBroken with ``taken`` otherwise)."""

    @abstractmethod
    def _check_idle(self, sock: socket.socket) -> None:
        """Between calls: ChannelBroken if the receiver closed the connection (or said anything wrong)."""

    def _goodbye(self, sock: socket.socket) -> None:  # noqa: B027 - optional hook
        """Say goodbye on the protocol level before the socket is closed."""

    def _open_stream(self) -> socket.socket:
        """TCP, then TLS with the target's settings (pin checked); ChannelBroken on any failure."""
        raw: socket.socket | None = None
        try:
            ctx = self._tls.context() if self._tls is not None else None
        except ValueError as exc:  # a key file someone loosened, a CA file removed: ours to fix
            raise ChannelBroken(f"TLS settings unusable: {exc}") from None
        try:
            raw = socket.create_connection((self._host, self._port), timeout=self._timeout)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ctx is None or self._tls is None:
                return raw
            sock = ctx.wrap_socket(raw, server_hostname=self._tls.hostname_for(self._host))
            raw = sock
            self._tls.check_peer(sock)
            sock.settimeout(self._timeout)
            return sock
        except PinMismatch as exc:
            if raw is not None:
                raw.close()
            raise ChannelBroken(str(exc), refused=True) from None
        except ssl.SSLError as exc:
            if raw is not None:
                raw.close()
            raise ChannelBroken(f"TLS handshake failed: {describe(exc)}", refused=True) from None
        except OSError as exc:
            if raw is not None:
                raw.close()
            raise ChannelBroken(f"connect failed: {describe(exc)}") from None

    def _wait_until_acknowledged(self, sock: socket.socket) -> None:
        """Wait until the receiver's TCP acknowledged every byte written (Linux), within the timeout."""
        deadline = self._clock() + self._timeout
        pause = 0.001
        while True:
            left = unacked_bytes(sock)
            if left is None or left == 0:
                return
            if self._clock() >= deadline:
                raise ChannelBroken(f"the receiver did not acknowledge {left} bytes within "
                                    f"{self._timeout:g} s")
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _disconnect(self, reason: str | None) -> None:
        if self._sock is not None:
            sock, self._sock = self._sock, None
            if isinstance(sock, ssl.SSLSocket):
                with contextlib.suppress(OSError, ValueError):
                    sock.setblocking(False)
                    sock.unwrap()  # sends close_notify; the receiver's own is not waited for
            with contextlib.suppress(OSError):
                sock.close()
        if reason is not None:
            self._last_error = one_line(reason, ERROR_LIMIT)

    def _failed(self, exc: ChannelBroken) -> Delivered:
        self._failures += 1
        self._next_connect = self._clock() + self._backoff.delay(
            self._failures, key=f"{self._host}:{self._port}")
        self._last_error = exc.reason
        self._last_refused = exc.refused
        return Delivered(exc.taken, exc.reason, exc.refused)

    def _where(self) -> str:
        return f"{self._host}:{self._port}"


def readable(sock: socket.socket, wait: float) -> bool:
    """True if a read would not block (buffered TLS data counts) within ``wait`` seconds."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    try:
        ready, _, _ = select.select([sock], [], [], wait)
    except (OSError, ValueError):
        return True  # a closed socket: let the read report it
    return bool(ready)
