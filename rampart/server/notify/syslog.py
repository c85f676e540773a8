"""Continuous forwarding of RFC 5424 records to a SIEM over TCP (RFC 6587) or TLS (RFC 5425).

:class:`SyslogForwarder` is synchronous and thread-safe. :meth:`~SyslogForwarder.send`
queues records, octet-counted (RFC 6587 section 3.4.1, the framing RFC 5425
mandates), then writes as many as the connection takes. Network errors never
raise: they show in :meth:`~SyslogForwarder.stats`.

Behaviour and its limits:

* The queue is bounded (``max_queue`` records). When it is full the oldest
  record is dropped and counted: a receiver that is down costs bounded
  memory, and the newest records, the most relevant to an incident, are kept.
  A record larger than ``max_frame`` bytes is refused and counted.
* A broken connection is closed and reopened on the next call. Failed
  connection attempts back off exponentially (``backoff``), so a receiver
  that is down is not hammered; until then records wait in the queue.
* A receiver never writes on a syslog connection (RFC 6587 section 3). So a
  readable socket means the receiver closed or reset it: that is checked
  before each write, and the forwarder reconnects instead of writing into a
  connection whose data would be lost.
* There is no application acknowledgement in RFC 5425/6587. A record is
  counted as sent once the kernel accepted it; one written just before the
  receiver dies can still be lost, and a batch interrupted by an error is
  written again in full after reconnecting, so a receiver may see a record
  twice. Stronger guarantees need RELP, which this does not speak.
* TLS: the context decides what is trusted and checks the certificate against
  ``server_hostname`` (default: ``host``). Without TLS, audit records would
  cross the network readable and alterable, so plain TCP is refused unless
  the host is a loopback IP address or ``allow_plaintext`` is set.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Final

from .formats import octet_frame, one_line
from .outbox import RetryPolicy

#: Reconnection backoff: 0.5 s after the first failed attempt, doubling, at most 30 s.
DEFAULT_BACKOFF: Final = RetryPolicy(base=0.5, factor=2.0, max_delay=30.0, max_attempts=1, jitter=0.1)
#: Bytes written in one ``sendall``.
BATCH_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class ForwarderStats:
    """Counters since the forwarder was built; ``last_error`` is one line, or None."""

    queued: int
    sent: int
    dropped: int
    rejected: int
    connects: int
    connected: bool
    last_error: str | None


def _loopback_literal(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SyslogForwarder:
    """Sends records to one receiver, reconnecting as needed, from a bounded queue."""

    def __init__(self, host: str, port: int, *, tls: ssl.SSLContext | None,
                 server_hostname: str | None = None, allow_plaintext: bool = False,
                 max_queue: int = 10_000, max_frame: int = 64 * 1024, timeout: float = 5.0,
                 backoff: RetryPolicy = DEFAULT_BACKOFF,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not host or len(host) > 253 or any(c.isspace() for c in host):
            raise ValueError("syslog host must be a host name or an IP address")
        if not (isinstance(port, int) and 1 <= port <= 65535):
            raise ValueError("syslog port must be 1 to 65535")
        if tls is None and not allow_plaintext and not _loopback_literal(host):
            raise ValueError("syslog over plain TCP only to a loopback address, unless allow_plaintext")
        if max_queue < 1 or max_frame < 64:
            raise ValueError("max_queue must be at least 1 and max_frame at least 64 bytes")
        if not 0 < timeout <= 300:
            raise ValueError("timeout must be in (0, 300] seconds")
        self._host = host
        self._port = port
        self._tls = tls
        self._server_hostname = server_hostname or host
        self._max_queue = max_queue
        self._max_frame = max_frame
        self._timeout = timeout
        self._backoff = backoff
        self._clock = clock
        self._lock = threading.RLock()
        self._queue: deque[bytes] = deque()
        self._sock: socket.socket | None = None
        self._failures = 0
        self._next_connect = 0.0
        self._sent = self._dropped = self._rejected = self._connects = 0
        self._last_error: str | None = None

    # -- public --------------------------------------------------------------------

    def send(self, lines: Iterable[str]) -> int:
        """Queue ``lines`` (records without framing) and write what can be; return how many were written."""
        with self._lock:
            for line in lines:
                self._enqueue(line)
            return self._flush()

    def flush(self) -> int:
        """Write queued records if the receiver can be reached; return how many were written.

        With nothing queued it still notices a connection the receiver closed
        (``stats().connected`` turns False), so calling it periodically keeps
        the status true.
        """
        with self._lock:
            return self._flush()

    def stats(self) -> ForwarderStats:
        with self._lock:
            return ForwarderStats(queued=len(self._queue), sent=self._sent, dropped=self._dropped,
                                  rejected=self._rejected, connects=self._connects,
                                  connected=self._sock is not None, last_error=self._last_error)

    def close(self) -> None:
        """Close the connection. Queued records stay queued for a later :meth:`flush`."""
        with self._lock:
            self._disconnect(None)

    def __enter__(self) -> SyslogForwarder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- internals (lock held) -------------------------------------------------------

    def _enqueue(self, line: str) -> None:
        frame = octet_frame(line)
        if len(frame) > self._max_frame:
            self._rejected += 1
            return
        while len(self._queue) >= self._max_queue:
            self._queue.popleft()
            self._dropped += 1
        self._queue.append(frame)

    def _flush(self) -> int:
        sent = 0
        retried = False
        if not self._queue and self._sock is not None and self._peer_closed(self._sock):
            self._disconnect("the receiver closed the connection")
        while self._queue:
            if self._sock is not None and self._peer_closed(self._sock):
                self._disconnect("the receiver closed the connection")
            if self._sock is None and not self._connect():
                break
            sock = self._sock
            if sock is None:
                break
            batch = self._batch()
            try:
                sock.sendall(b"".join(batch))
            except OSError as exc:
                self._disconnect(f"write failed: {type(exc).__name__}: {exc}")
                if retried:
                    break
                retried = True  # the receiver may just have restarted: reconnect once, now
                self._next_connect = 0.0
                continue
            for _ in batch:
                self._queue.popleft()
            sent += len(batch)
            self._sent += len(batch)
        return sent

    def _batch(self) -> list[bytes]:
        batch: list[bytes] = []
        size = 0
        for frame in self._queue:
            if batch and size + len(frame) > BATCH_BYTES:
                break
            batch.append(frame)
            size += len(frame)
        return batch

    def _connect(self) -> bool:
        if self._clock() < self._next_connect:
            return False
        raw: socket.socket | None = None
        try:
            raw = socket.create_connection((self._host, self._port), timeout=self._timeout)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock = (self._tls.wrap_socket(raw, server_hostname=self._server_hostname)
                    if self._tls is not None else raw)
            sock.settimeout(self._timeout)
        except OSError as exc:  # includes ssl.SSLError and timeouts
            if raw is not None:
                raw.close()
            self._failures += 1
            self._next_connect = self._clock() + self._backoff.delay(
                self._failures, key=f"{self._host}:{self._port}")
            self._last_error = one_line(f"connect failed: {type(exc).__name__}: {exc}", 200)
            return False
        self._failures = 0
        self._sock = sock
        self._connects += 1
        return True

    def _peer_closed(self, sock: socket.socket) -> bool:
        """True if the receiver closed or reset the connection (it never sends anything)."""
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        if not readable:
            return False
        try:
            sock.setblocking(False)
            data = sock.recv(4096)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return False  # a TLS record without data (a session ticket): still open
        except OSError:
            return True
        finally:
            try:
                sock.settimeout(self._timeout)
            except OSError:
                pass
        return data == b""

    def _disconnect(self, reason: str | None) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None
        if reason is not None:
            self._last_error = one_line(reason, 200)
