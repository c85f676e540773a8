"""T13: slow and flooding HTTP clients against the real server process (issue 16, "Server edges").

Headers trickled a byte at a time (slowloris) and bodies that never finish are cut at their
deadlines; more connections from one address than its cap are closed as they arrive, while another
address is still served; a WebSocket on the same port outlives the HTTP deadlines.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from harness.server import RunningServer, start_server
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

HEADER_S = 2.0
BODY_S = 2.0
PER_ADDRESS = 30


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    base = tmp_path_factory.mktemp("http-guard")
    srv = start_server(base, http_header_timeout_s=HEADER_S, http_body_timeout_s=BODY_S,
                       http_connections_per_address=PER_ADDRESS)
    try:
        yield srv
    finally:
        srv.stop()


def _tls(server: RunningServer, source: str = "127.0.0.1") -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10, source_address=(source, 0))
    return server.ssl_context().wrap_socket(raw, server_hostname="127.0.0.1")


def _closed_within(sock: ssl.SSLSocket, seconds: float) -> float | None:
    """Seconds until the server closed ``sock`` (None if it is still open after ``seconds``)."""
    began = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - began < seconds:
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - began
        except TimeoutError:
            continue
        except (ConnectionError, ssl.SSLError, OSError):
            return time.monotonic() - began
    return None


def _health(server: RunningServer, source: str = "127.0.0.1") -> int:
    transport = httpx.HTTPTransport(verify=server.ssl_context(), local_address=source)
    with httpx.Client(transport=transport, base_url=server.url, timeout=10) as c:
        return c.get("/api/v1/health").status_code


def test_T13_trickled_headers_are_cut_at_the_header_deadline(server: RunningServer) -> None:
    socks = []
    for _ in range(20):
        s = _tls(server)
        s.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        socks.append(s)
    stop = threading.Event()

    def trickle() -> None:  # one more header byte every 0.3 s, as slowloris does
        while not stop.is_set():
            for s in socks:
                try:
                    s.sendall(b"X")
                except OSError:
                    pass
            time.sleep(0.3)

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        times = [_closed_within(s, HEADER_S + 6) for s in socks]
    finally:
        stop.set()
        t.join()
        for s in socks:
            s.close()
    assert all(x is not None for x in times), times
    assert max(x for x in times if x is not None) < HEADER_S + 6
    assert _health(server) == 200  # honest clients are served meanwhile and after


def test_T13_a_body_that_never_finishes_is_cut_at_the_body_deadline(server: RunningServer) -> None:
    s = _tls(server)
    s.sendall(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: 1000\r\n\r\n{\"username\":")
    took = _closed_within(s, BODY_S + 6)
    s.close()
    assert took is not None and took >= BODY_S * 0.8
    assert _health(server) == 200


def test_T13_connections_over_the_per_address_cap_are_closed_and_other_addresses_still_served(
        server: RunningServer) -> None:
    held = [_tls(server) for _ in range(PER_ADDRESS)]
    try:
        extra = _tls(server)
        closed = _closed_within(extra, 3)
        extra.close()
        assert closed is not None  # closed as it arrived
        assert _health(server, source="127.0.0.2") == 200  # another address is not affected
    finally:
        for s in held:
            s.close()
    time.sleep(0.5)
    assert _health(server) == 200  # and the address is served again once it holds fewer


def test_a_websocket_on_the_api_port_outlives_the_http_deadlines(server: RunningServer) -> None:
    url = f"wss://127.0.0.1:{server.port}/agent/v1/ws"
    # More WebSocket connections one after the other than the cap: each leaves the count when it
    # is upgraded, so the address is not locked out by connections that already ended.
    for _ in range(PER_ADDRESS + 10):
        with connect(url, ssl=server.ssl_context(), proxy=None, compression=None) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "challenge"
    assert _health(server) == 200
    with connect(url, ssl=server.ssl_context(), proxy=None, compression=None) as ws:
        challenge = json.loads(ws.recv(timeout=10))
        assert challenge["type"] == "challenge"
        time.sleep(HEADER_S + BODY_S + 1)  # past both HTTP deadlines
        ws.send(json.dumps({"type": "hello", "device": "dev-" + "0" * 24, "sig": "x"}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    # The gateway's own answer to a bad hello (4401/4400), not a connection cut by the HTTP guard.
    assert closed.value.rcvd is not None and closed.value.rcvd.code in (4400, 4401)


