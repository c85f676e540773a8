"""Another site on this machine, for CSRF tests in a real browser: one page, served on loopback.

The page is whatever HTML a test sets (typically a form that submits itself to the console under
test); it runs on its own port, so to a browser it is another origin of the same site
(127.0.0.1) or, on 127.0.0.2, another site.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@contextmanager
def attacker_site(page: bytes, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve ``page`` at ``http://HOST:PORT/`` while the block runs; yields that address."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer((host, 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://{host}:{httpd.server_port}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
