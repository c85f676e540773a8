"""The CLI's HTTPS transport: the standard library's ``http.client`` on one kept-alive connection.

The CLI sends one request at a time to one server, so it needs no connection
pool, HTTP/2 or async client: this is what it used httpx for, without httpx's
start-up time (httpx and httpcore took about a third of a read command's
start-up; issue 12). The behaviour the CLI relies on is httpx's:

* TLS only through the caller's context (the pinned certificate), with the
  server's host name sent for SNI; no proxies from the environment, no
  redirects followed, no compression asked for;
* a connection idle for more than :data:`KEEPALIVE_S` seconds, or one the
  server has closed, is not reused (as httpcore's pool); nothing is retried;
* request bodies are JSON encoded as httpx does (UTF-8, compact, no NaN);
  query values ``True``/``False``/``None`` are sent as ``true``/``false``/empty;
* errors are :class:`ConnectFailed` (while connecting, TLS handshake included),
  :class:`TimedOut` or :class:`RequestFailed`, each carrying the underlying
  exception as ``__cause__``.
"""

from __future__ import annotations

import codecs
import http.client
import json as jsonlib
import select
import ssl
import time
from collections.abc import Mapping
from typing import Any, overload
from urllib.parse import urlencode

KEEPALIVE_S = 5.0


class TransportError(Exception):
    """A request did not get an answer."""


class ConnectFailed(TransportError):
    """Connecting (TCP or the TLS handshake) failed."""


class TimedOut(TransportError):
    """Connecting, sending or reading took longer than the timeout."""


class RequestFailed(TransportError):
    """The connection broke, or the answer was not HTTP."""


class Headers:
    """Response headers: case-insensitive :meth:`get`; repeated headers joined with ``", "``."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._items: dict[str, tuple[str, str]] = {}
        for name, value in pairs:
            key = name.lower()
            if key in self._items:
                first, before = self._items[key]
                self._items[key] = (first, f"{before}, {value}")
            else:
                self._items[key] = (name, value)

    @overload
    def get(self, name: str) -> str | None: ...

    @overload
    def get(self, name: str, default: str) -> str: ...

    def get(self, name: str, default: str | None = None) -> str | None:
        item = self._items.get(name.lower())
        return item[1] if item is not None else default

    def items(self) -> list[tuple[str, str]]:
        return list(self._items.values())


class Response:
    """What the CLI reads of an answer."""

    def __init__(self, status_code: int, reason_phrase: str, headers: Headers, content: bytes,
                 charset: str | None) -> None:
        self.status_code = status_code
        self.reason_phrase = reason_phrase
        self.headers = headers
        self.content = content
        self._charset = charset

    @property
    def text(self) -> str:
        if not self.content:
            return ""
        encoding = "utf-8"
        if self._charset:
            try:
                encoding = codecs.lookup(self._charset).name
            except LookupError:
                pass
        return self.content.decode(encoding, errors="replace")

    def json(self) -> Any:
        """The body as JSON; ``ValueError`` if it is not."""
        return jsonlib.loads(self.content)


def query_string(params: Mapping[str, Any]) -> str:
    def text(value: Any) -> str:
        if value is True:
            return "true"
        if value is False:
            return "false"
        if value is None:
            return ""
        return str(value)

    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            pairs.append((key, text(item)))
    return urlencode(pairs)


class Transport:
    """Requests to ``https://host:port`` over one connection at a time."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, headers: dict[str, str],
                 timeout: float) -> None:
        self._host = host
        self._port = port
        self._context = context
        self._headers = headers
        self._timeout = timeout
        self._conn: http.client.HTTPSConnection | None = None
        self._idle_since = 0.0

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _reusable(self, conn: http.client.HTTPSConnection) -> bool:
        if time.monotonic() - self._idle_since > KEEPALIVE_S or conn.sock is None:
            return False
        try:  # an idle connection that reads as ready has been closed (or is out of step)
            readable, _, _ = select.select([conn.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def _connection(self) -> http.client.HTTPSConnection:
        if self._conn is not None and self._reusable(self._conn):
            return self._conn
        self.close()
        conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout,
                                           context=self._context)
        try:
            conn.connect()
        except TimeoutError as exc:
            conn.close()
            raise TimedOut(str(exc) or "timed out") from exc
        except OSError as exc:  # refused, unreachable, name not found, TLS (ssl.SSLError)
            conn.close()
            raise ConnectFailed(str(exc)) from exc
        self._conn = conn
        return conn

    def request(self, method: str, path: str, *, json: Any = None,
                params: Mapping[str, Any] | None = None) -> Response:
        target = path + ("?" + query_string(params) if params else "")
        headers = dict(self._headers)
        body: bytes | None = None
        if json is not None:
            body = jsonlib.dumps(json, ensure_ascii=False, separators=(",", ":"),
                                 allow_nan=False).encode("utf-8")
            headers["Content-Type"] = "application/json"
        conn = self._connection()
        try:
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
            content = resp.read()
        except TimeoutError as exc:
            self.close()
            raise TimedOut(str(exc) or "timed out") from exc
        except http.client.RemoteDisconnected as exc:
            self.close()
            raise RequestFailed("Server disconnected without sending a response.") from exc
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise RequestFailed(str(exc) or type(exc).__name__) from exc
        if resp.will_close:
            self.close()
        else:
            self._idle_since = time.monotonic()
        return Response(resp.status, resp.reason, Headers(resp.getheaders()), content,
                        resp.msg.get_content_charset())
