"""A TCP load balancer on loopback, as HAProxy in TCP mode would be in front of server nodes.

Each accepted connection goes to the next backend (round robin) that accepts a
connection; a dead backend is skipped. Bytes pass through untouched (TLS ends
at the nodes, whose pinned certificate is the same: they share one data
directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class TcpBalancer:
    def __init__(self, listen: tuple[str, int], backends: list[tuple[str, int]]) -> None:
        self.listen = listen
        self.backends = backends
        self._next = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TcpBalancer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the balancer did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        # asyncio.run cancels the relays left and closes the loop and its own sockets at the end.
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._handle, *self.listen)
        self._ready.set()
        await self._stopping.wait()
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        start = self._next
        self._next += 1
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        for i in range(len(self.backends)):
            host, port = self.backends[(start + i) % len(self.backends)]
            try:
                upstream = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
                break
            except (TimeoutError, OSError):
                continue
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()
