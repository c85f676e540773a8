"""Start the local console: a socket on 127.0.0.1 only, a fresh launch secret, uvicorn.

The socket is bound here, to the loopback address and nothing else, before the server starts
(port 0: the kernel picks a free one), so the printed address is the one listening. uvicorn
runs without an access log, server header or proxy-header handling: request lines and form
bodies are never written anywhere.
"""

from __future__ import annotations

import socket
import sys
from typing import Final

import uvicorn

from rampart.cli.config import Config

from .app import build_app
from .web import Guard

LOOPBACK: Final = "127.0.0.1"


def bind(port: int) -> socket.socket:
    """A listening TCP socket on 127.0.0.1:``port`` (0: any free port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((LOOPBACK, port))
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    return sock


def serve(cfg: Config, port: int, *, localhost: bool = False) -> None:
    """Serve the console until interrupted; print its one-time address first (at ``localhost``
    for passkeys: still bound to 127.0.0.1 only)."""
    sock = bind(port)
    guard = Guard(port=int(sock.getsockname()[1]), host="localhost" if localhost else LOOPBACK)
    app = build_app(cfg, guard)
    config = uvicorn.Config(app, log_level="warning", access_log=False, proxy_headers=False,
                            server_header=False, date_header=False, lifespan="off")
    sys.stdout.write("Rampart local console (this machine only; Ctrl-C to stop). Open once:\n"
                     f"{guard.url}\n")
    sys.stdout.flush()
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
