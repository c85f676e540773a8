"""The HTTP listener's own defences (issue 16, "Server edges"): slow clients and connection floods.

uvicorn's h11 protocol, with what it lacks for a server on the Internet:

* **A header deadline.** From the first byte of a request, its headers must be
  complete within ``header_timeout_s``; a client that trickles them (slowloris)
  is disconnected. uvicorn's keep-alive timeout covers only an idle connection.
* **A body deadline.** Once the headers are in, the body must be complete
  within ``body_timeout_s``.
* **A cap per source address.** At most ``per_address`` connections from one
  address at once; more are closed as they arrive. Addresses of trusted proxies
  are exempt (they carry many clients; the proxy caps them itself).

Invariants: a connection that becomes a WebSocket leaves both deadlines and the
per-address count behind (its protocol takes over the transport and its end);
the count is decremented exactly once per counted connection. Nothing here
reads a request's content.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["GuardedH11Protocol", "guarded_protocol"]


class GuardedH11Protocol(H11Protocol):
    """H11Protocol with header and body deadlines and a per-address connection cap."""

    header_timeout_s: ClassVar[float] = 10.0
    body_timeout_s: ClassVar[float] = 60.0
    per_address: ClassVar[int] = 256
    exempt: ClassVar[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]] = ()
    #: Open connections per source address (shared by every connection of this listener).
    open_by_address: ClassVar[Counter[str]] = Counter()
    #: Connections closed by a deadline or the cap, since start (for tests and diagnostics).
    refused: ClassVar[Counter[str]] = Counter()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._stage = ""
        self._counted: str | None = None
        address = self.client[0] if self.client else None
        if address is None or self._exempt(address):
            return
        if self.open_by_address[address] >= self.per_address:
            type(self).refused["per-address"] += 1
            transport.abort()
            return
        self.open_by_address[address] += 1
        self._counted = address

    def _exempt(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.exempt)

    def connection_lost(self, exc: Exception | None) -> None:
        self._arm("")
        self._release()
        super().connection_lost(exc)

    def _release(self) -> None:
        """Take this connection out of its address's count (once)."""
        if self._counted is not None:
            self.open_by_address[self._counted] -= 1
            if self.open_by_address[self._counted] <= 0:
                del self.open_by_address[self._counted]
            self._counted = None

    def _arm(self, stage: str) -> None:
        """Start the deadline of ``stage`` ("headers" or "body"); "" cancels any."""
        if stage == self._stage:
            return
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._stage = stage
        if stage:
            timeout = self.header_timeout_s if stage == "headers" else self.body_timeout_s
            self._deadline = self.loop.call_later(timeout, self._expire, stage)

    def _expire(self, stage: str) -> None:
        self._deadline = None
        if self.transport.get_protocol() is not self or self.transport.is_closing():
            return
        type(self).refused[stage] += 1
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._stage == "" and self.conn.their_state == h11.IDLE:
            self._arm("headers")  # the first bytes of a request: its headers are now on the clock
        super().data_received(data)
        if self.transport.get_protocol() is not self:
            # Upgraded to a WebSocket: its own protocol keeps time and receives connection_lost
            # from now on, so the connection leaves this listener's count here (the gateway and the
            # relay bound their own sockets).
            self._arm("")
            self._release()
            return
        state = self.conn.their_state
        if state == h11.SEND_BODY:
            self._arm("body")
        elif state != h11.IDLE:
            self._arm("")  # the whole request is in (or the connection is ending)


def guarded_protocol(*, header_timeout_s: float, body_timeout_s: float, per_address: int,
                     exempt: list[str] | None = None) -> type[GuardedH11Protocol]:
    """A protocol class for one listener, with these limits (uvicorn's ``http=`` takes a class)."""
    nets = tuple(ipaddress.ip_network(n, strict=False) for n in exempt or [])
    attrs: dict[str, Any] = {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s,
                             "per_address": per_address, "exempt": nets,
                             "open_by_address": Counter(), "refused": Counter()}
    return type("ListenerH11Protocol", (GuardedH11Protocol,), attrs)
