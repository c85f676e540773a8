"""RFC 5424 records to a SIEM over TCP (RFC 6587 octet counting) or TLS (RFC 5425).

:class:`SyslogForwarder` is a :class:`~.channel.Channel`: ``deliver(records)``
writes the records octet-counted (RFC 6587 section 3.4.1, the framing RFC
5425 mandates) and reports them taken only when the connection has proven
alive around them:

1. After connecting (and the TLS handshake, pin included) it waits
   ``probe_s`` for the receiver to speak. A syslog receiver never writes on
   the connection (RFC 6587 section 3), so anything it says is a verdict: an
   end of stream or a TLS alert means it refused this client (an rsyslog that
   requires a client certificate closes right after a TLS 1.3 handshake, which
   the client sees only on its next read); data is a protocol violation.
   Either way no record is written on that connection.
2. Before writing on a connection kept from an earlier call, the same check,
   without waiting.
3. After writing, it waits until the receiver's TCP has acknowledged every
   byte (Linux ``SIOCOUTQ``), then checks once more, ``settle_s`` at most,
   that the receiver has not closed or refused the connection meanwhile.

Only then are the records counted; on any failure none of the call's
records is, and they are sent again later on a new connection.

What this cannot promise (there is no application acknowledgement in RFC
6587/5425): that the receiving *program* stored a record. The receiver's
kernel had it; a receiver that crashes before reading its socket, or drops
records it cannot parse or queue, loses them silently. A record sent again
after a failure may arrive twice. RELP (:mod:`.relp`) closes that gap.
"""

from __future__ import annotations

import socket
import ssl

from .channel import REFUSES, Channel, ChannelBroken, describe, readable
from .formats import octet_frame

#: Bytes written in one ``sendall``.
BATCH_BYTES = 64 * 1024


class SyslogForwarder(Channel):
    """RFC 5424 records over TCP or TLS to one receiver; see the module docstring for what "taken" means."""

    transport = "tcp"

    def _connect(self) -> socket.socket:
        sock = self._open_stream()
        try:
            self._verdict(sock, self._probe_s, "right after it was opened", fresh=True)
        except ChannelBroken:
            sock.close()
            raise
        return sock

    def _check_idle(self, sock: socket.socket) -> None:
        self._verdict(sock, 0.0, "while idle")

    def _send(self, sock: socket.socket, records: list[bytes]) -> int:
        batch = bytearray()
        try:
            for record in records:
                batch += octet_frame(record)
                if len(batch) >= BATCH_BYTES:
                    sock.sendall(batch)
                    batch.clear()
            if batch:
                sock.sendall(batch)
        except OSError as exc:  # ssl.SSLError included
            raise ChannelBroken(f"write failed: {describe(exc)}", refused=isinstance(exc, ssl.SSLError)
                                ) from None
        self._wait_until_acknowledged(sock)
        self._verdict(sock, self._settle_s, "after the records were written")
        return len(records)

    def _verdict(self, sock: socket.socket, wait: float, when: str, *, fresh: bool = False) -> None:
        """ChannelBroken if the receiver closed, reset, refused or wrote within ``wait`` seconds.

        On a ``fresh`` connection a close is the receiver refusing this client.
        """
        if not readable(sock, wait):
            return
        try:
            sock.settimeout(max(wait, 0.001))
            data = sock.recv(1)
        except (TimeoutError, ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return  # a TLS record without application data (a session ticket): still open
        except ssl.SSLError as exc:
            raise ChannelBroken(f"the receiver ended the TLS session {when} ({describe(exc)})"
                                + (f"; {REFUSES}" if fresh else ""), refused=True) from None
        except OSError as exc:
            raise ChannelBroken(f"the receiver reset the connection {when}: {describe(exc)}") from None
        finally:
            try:
                sock.settimeout(self._timeout)
            except OSError:
                pass
        if data == b"":
            raise ChannelBroken(f"the receiver closed the connection {when}"
                                + (f"; {REFUSES}" if fresh else ""), refused=fresh)
        raise ChannelBroken(f"the receiver sent data on a syslog connection {when} (not syslog?)",
                            refused=True)
