"""The attacker who holds the server, sitting on an agent's link: a WebSocket man in the middle.

It presents the server's own certificate and key (an attacker who owns the server
has them), so the agent's pinning accepts it, and forwards every message between
the agent and the real gateway. A test sets :attr:`Mitm.tamper`, which sees each
message (``"down"``: server to agent, ``"up"``: agent to server) and returns the
messages to forward instead: altered, dropped, duplicated, held back or injected.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from rampart import tlspin

Tamper = Callable[[str, str], list[str]]


def session_frames(direction: str, text: str) -> dict[str, Any] | None:
    """The decoded message when it is a session frame going ``direction``; else None."""
    if '"session-frame"' not in text:
        return None
    doc: dict[str, Any] = json.loads(text)
    return doc if doc.get("type") == "session-frame" else None


class Mitm:
    """Listens on 127.0.0.1 with the server's TLS identity; forwards to ``upstream`` (the real gateway)."""

    def __init__(self, data_dir: Path, upstream: str, cert_der: bytes) -> None:
        self.upstream = upstream
        self.cert_der = cert_der
        self.server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_ctx.load_cert_chain(str(data_dir / "tls" / "cert.pem"), str(data_dir / "tls" / "key.pem"))
        self.tamper: Tamper = lambda direction, text: [text]
        self.seen: list[tuple[str, str]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._to_agent: list[Any] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the MITM did not start")

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.port}/agent/v1/ws"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._loop.run_forever()

    async def _start(self) -> None:
        self._server = await serve(self._handle, "127.0.0.1", 0, ssl=self.server_ctx, max_size=8 << 20,
                                   compression=None)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()

    async def _handle(self, agent: ServerConnection) -> None:
        async with connect(self.upstream, ssl=tlspin.pinned_context(self.cert_der), max_size=8 << 20,
                           compression=None) as server:
            self._to_agent.append(agent)

            async def pump(src: Any, dst: Any, direction: str) -> None:
                try:
                    async for text in src:
                        self.seen.append((direction, text))
                        for out in self.tamper(direction, text):
                            await dst.send(out)
                except ConnectionClosed:
                    pass

            tasks = [asyncio.create_task(pump(agent, server, "up")),
                     asyncio.create_task(pump(server, agent, "down"))]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in tasks:
                t.cancel()
            self._to_agent.remove(agent)

    def inject_to_agent(self, text: str) -> None:
        """Send one message to the connected agent as if the server had."""
        async def send() -> None:
            for a in list(self._to_agent):
                await a.send(text)

        asyncio.run_coroutine_threadsafe(send(), self._loop).result(10)

    def close(self) -> None:
        """Stop listening, close every relayed connection and end the loop's tasks, then the loop."""
        async def stop() -> None:
            self._server.close()
            for a in list(self._to_agent):
                await a.close()
            await self._server.wait_closed()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(20)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
