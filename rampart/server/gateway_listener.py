"""The agent gateway's own listener: a plain ``websockets`` server beside the HTTP API.

Why a second listener: an ASGI WebSocket (uvicorn + Starlette) costs about
60 KiB of server memory per idle connection before TLS, against about 12 KiB
for the ``websockets`` library's own server (measured on the reference
machine, 1,000 connections, uvloop; 35 KiB with TLS). A fleet of agents holds
its connections open all day, so the gateway gets the lean server; the same
:class:`~rampart.server.gateway.Gateway` logic serves both this listener and
the ``/agent/v1/ws`` route on the API port (kept for single-port proxies).

Invariants: the listener presents the same certificate as the API (agents pin
one fingerprint), accepts only the path ``/agent/v1/ws``, limits message size,
and never compresses (no CRIME-style oracles, bounded memory).
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from starlette.websockets import WebSocketDisconnect, WebSocketState
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from .gateway import Gateway

AGENT_PATH = "/agent/v1/ws"


class NativeSocket:
    """The part of Starlette's WebSocket interface that :class:`Gateway` uses, over ``websockets``."""

    def __init__(self, conn: ServerConnection) -> None:
        self._conn = conn
        self.application_state = WebSocketState.CONNECTED

    async def accept(self) -> None:
        """The handshake already happened in the ``websockets`` server."""

    async def send_text(self, text: str) -> None:
        try:
            await self._conn.send(text)
        except ConnectionClosed as exc:
            self.application_state = WebSocketState.DISCONNECTED
            raise WebSocketDisconnect(exc.rcvd.code if exc.rcvd else 1006) from None

    async def receive(self) -> dict[str, Any]:
        try:
            data = await self._conn.recv()
        except ConnectionClosed as exc:
            self.application_state = WebSocketState.DISCONNECTED
            return {"type": "websocket.disconnect", "code": exc.rcvd.code if exc.rcvd else 1006}
        if isinstance(data, bytes):
            return {"type": "websocket.receive", "bytes": data}
        return {"type": "websocket.receive", "text": data}

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.application_state = WebSocketState.DISCONNECTED
        await self._conn.close(code, reason)


#: Pending connections the kernel may queue for the agent listener (and the API's, commands.py).
LISTEN_BACKLOG = 8192


async def start_gateway_listener(gateway: Gateway, host: str, port: int,
                                 ssl_context: ssl.SSLContext | None, max_message: int) -> Server:
    """Start serving agents on ``host:port``; the caller closes the returned server."""

    async def handler(conn: ServerConnection) -> None:
        if conn.request is None or conn.request.path != AGENT_PATH:
            await conn.close(4404)
            return
        tcp_keepalive(conn.transport.get_extra_info("socket"))
        await gateway.serve(NativeSocket(conn))  # type: ignore[arg-type]

    # No WebSocket keepalive task per connection (agents ping every 20 s); the
    # kernel's TCP keepalive finds dead peers instead, at no memory cost here.
    # A listen backlog for a fleet reconnecting at once (asyncio's default is 100: past it, SYNs are
    # dropped and agents retry seconds later); the kernel caps it at net.core.somaxconn.
    return await serve(handler, host, port, ssl=ssl_context, max_size=max_message,
                       compression=None, ping_interval=None, max_queue=8, server_header=None,
                       backlog=LISTEN_BACKLOG)


def tcp_keepalive(sock: socket.socket | None, *, idle_s: int = 60, interval_s: int = 15,
                  probes: int = 4) -> None:
    """Let the kernel detect a vanished agent (about 2 minutes) and close its connection."""
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", idle_s), ("TCP_KEEPINTVL", interval_s),
                        ("TCP_KEEPCNT", probes)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def server_ssl_context(cert_path: str, key_path: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_path, key_path)
    return ctx
