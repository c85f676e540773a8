"""The CLI's HTTPS transport (rampart.cli.transport) against a real loopback TLS server.

It replaced httpx in the CLI for start-up time (issue 12); these pin down what the
CLI relied on httpx for: only the pinned certificate is trusted, JSON bodies and
query strings are encoded alike, a connection is reused only while the server
keeps it open, and every failure is one of three errors that
:class:`rampart.cli.client.Client` turns into one line.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from harness.tls import make_cert

from rampart import tlspin
from rampart.cli import transport
from rampart.cli.client import Client
from rampart.cli.errors import CliError, ServerProblem


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        Handler.seen.append({"method": self.command, "path": self.path, "body": body,
                             "headers": {k.lower(): v for k, v in self.headers.items()},
                             "port": self.client_address[1]})
        if self.path.startswith("/api/v1/sleep"):
            time.sleep(2)
        if self.path.startswith("/api/v1/close"):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"[]")
            self.close_connection = True
            return
        if self.path.startswith("/api/v1/text"):
            data = "grüße\n".encode("latin-1")
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=ISO-8859-1")
        elif self.path.startswith("/api/v1/limited"):
            data = json.dumps({"detail": "slow down"}).encode()
            self.send_response(429)
            self.send_header("Retry-After", "7")
            self.send_header("Content-Type", "application/json")
        elif self.path.startswith("/api/v1/empty"):
            self.send_response(204)
            self.end_headers()
            return
        else:
            data = json.dumps({"method": self.command, "path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Twice", "a")
            self.send_header("X-Twice", "b")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _answer


class TlsServer(ThreadingHTTPServer):
    """Each connection's TLS handshake runs in its handler thread; every socket is closed at the end."""

    daemon_threads = False
    block_on_close = True  # server_close() waits for the handler threads

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.context = context
        self.accepted: list[socket.socket] = []

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        tls = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self.accepted.append(tls)
        return tls, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that give up, or refuse the certificate


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, bytes]]:
    d = tmp_path_factory.mktemp("tls")
    cert, key, _ = make_cert(d)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    httpd = TlsServer(ctx)
    t = threading.Thread(target=httpd.serve_forever)
    t.start()
    der = ssl.PEM_cert_to_DER_cert(Path(cert).read_text())
    yield f"https://127.0.0.1:{httpd.server_address[1]}", der
    httpd.shutdown()
    httpd.server_close()
    t.join()
    for sock in httpd.accepted:
        sock.close()


def test_requests_bodies_and_answers(tls_server: tuple[str, bytes]) -> None:
    url, der = tls_server
    Handler.seen.clear()
    with Client(url, der, "tok") as c:
        assert c.get("/things", limit=5, open=True, gone=None, q="a b&c") == {
            "method": "GET", "path": "/api/v1/things?limit=5&open=true&q=a+b%26c"}
        assert c.post("/things", {"name": "ü", "n": 1.5})["method"] == "POST"
        assert c.put("/things/1", [1, 2])["method"] == "PUT"
        assert c.request("DELETE", "/things/1")["method"] == "DELETE"
        assert c.get_text("/text") == "grüße\n"
        assert c.request("GET", "/empty") is None
        doc, headers = c.get_with_headers("/h")
        assert headers["x-twice"] == "a, b" and headers["content-type"] == "application/json"
    post = Handler.seen[1]
    assert post["body"] == json.dumps({"name": "ü", "n": 1.5}, ensure_ascii=False,
                                      separators=(",", ":")).encode()
    assert post["headers"]["content-type"] == "application/json"
    assert post["headers"]["authorization"] == "Bearer tok"
    assert post["headers"]["user-agent"] == "rampart-cli/0.1"
    assert "content-length" not in Handler.seen[3]["headers"] or \
        Handler.seen[3]["headers"]["content-length"] == "0"
    # one connection for all of them (keep-alive), as httpx's pool did
    assert len({s["port"] for s in Handler.seen}) == 1


def test_a_closed_connection_is_not_reused(tls_server: tuple[str, bytes]) -> None:
    url, der = tls_server
    Handler.seen.clear()
    with Client(url, der) as c:
        c.get("/close")
        c.get("/a")
        c.get("/b")
    ports = [s["port"] for s in Handler.seen]
    assert ports[0] != ports[1] and ports[1] == ports[2]


def test_server_errors_are_one_line(tls_server: tuple[str, bytes]) -> None:
    url, der = tls_server
    with Client(url, der) as c, pytest.raises(ServerProblem) as e:
        c.get("/limited")
    assert e.value.message == "server refused: slow down (HTTP 429; retry in 7 s)"


def test_only_the_pinned_certificate_is_trusted(tls_server: tuple[str, bytes], tmp_path: Path) -> None:
    url, _ = tls_server
    other, _, _ = make_cert(tmp_path)
    with Client(url, ssl.PEM_cert_to_DER_cert(other.read_text())) as c, pytest.raises(CliError) as e:
        c.get("/x")
    assert "presented a certificate that does not match the pinned SHA-256" in e.value.message
    assert e.value.exit_code == 5


def test_connect_refused_and_timeout(tls_server: tuple[str, bytes]) -> None:
    url, der = tls_server
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Client(f"https://127.0.0.1:{port}", der) as c, pytest.raises(CliError) as e:
        c.get("/x")
    assert e.value.message.startswith(f"cannot connect to https://127.0.0.1:{port}: ")
    assert "refused" in e.value.message.lower()
    with Client(url, der, timeout=0.5) as c, pytest.raises(CliError) as e:
        c.get("/sleep")
    assert e.value.message == f"{url} did not answer in time"


def test_transport_errors_keep_their_cause(tls_server: tuple[str, bytes]) -> None:
    url, der = tls_server
    host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
    t = transport.Transport(host, port, tlspin.pinned_context(der), {}, 0.5)
    with pytest.raises(transport.TimedOut) as e:
        t.request("GET", "/api/v1/sleep")
    assert isinstance(e.value.__cause__, TimeoutError)
    assert t.request("GET", "/api/v1/x").json()["path"] == "/api/v1/x"  # reconnects after it
    t.close()
