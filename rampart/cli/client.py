"""HTTPS client for the Rampart API with a pinned server certificate.

Security invariants:

* Only ``https://`` servers are spoken to, and only through
  :func:`rampart.tlspin.pinned_context`: the one certificate pinned at login is
  the only trust anchor. A different certificate fails the handshake.
* The session token travels only in the ``Authorization`` header; it never
  appears in an error message, a log line or argv.
* A ``403 step-up-required`` answer (G5 mass-action safeguard) is met by
  asking for a fresh TOTP code (RAMPART_TOTP or a prompt), proving it on this
  session at ``/auth/step-up`` and retrying the same request once.
* Every transport, TLS and HTTP error becomes one :class:`CliError` line here,
  at the boundary. Server error details are shown as the server's one-line
  ``detail`` (truncated), never as a traceback.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

from rampart import tlspin

from . import transport
from .config import Config, Session
from .errors import CliError, NetworkProblem, NotLoggedIn, ServerProblem, UsageProblem

API_PREFIX = "/api/v1"
USER_AGENT = "rampart-cli/0.1"
_MAX_DETAIL = 300


def split_server(url: str) -> tuple[str, int, str]:
    """Validate ``https://HOST[:PORT]`` and return (host, port, normalised URL)."""
    parts = urlsplit(url.strip())
    if parts.scheme != "https" or not parts.hostname:
        raise UsageProblem("the server URL must be https://HOST[:PORT]")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise UsageProblem("the server URL must be https://HOST[:PORT] with no path")
    try:
        port = parts.port or 443
    except ValueError:
        raise UsageProblem("the server URL has an invalid port") from None
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    return host, port, f"https://{shown}:{port}"


def fetch_server_certificate(url: str) -> bytes:
    """Fetch (unverified) the certificate the server presents; the caller compares it."""
    host, port, _ = split_server(url)
    try:
        return tlspin.fetch_certificate(host, port)
    except tlspin.PinError as exc:
        raise NetworkProblem(str(exc)) from exc
    except (OSError, ssl.SSLError) as exc:
        raise NetworkProblem(f"cannot reach {url}: {_oserror_text(exc)}") from exc


def _oserror_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


STEP_UP_CODE = "step-up-required"
STEP_UP_PATH = "/auth/step-up"


def _code(resp: transport.Response) -> str | None:
    try:
        doc = resp.json()
    except ValueError:
        return None
    code = doc.get("code") if isinstance(doc, dict) else None
    return code if isinstance(code, str) else None


def _detail(resp: transport.Response) -> str:
    try:
        doc = resp.json()
    except ValueError:
        doc = None
    detail: Any = doc.get("detail") if isinstance(doc, dict) else None
    if isinstance(detail, list):  # FastAPI validation errors
        parts = []
        for item in detail[:3]:
            if isinstance(item, dict):
                loc = ".".join(str(x) for x in item.get("loc", []) if x != "body")
                parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", "")))
        detail = "; ".join(parts) or "invalid request"
    if not isinstance(detail, str) or not detail:
        detail = resp.reason_phrase or f"HTTP {resp.status_code}"
    return str(detail)[:_MAX_DETAIL]  # made one safe line by CliError


class Client:
    """A thin, pinned API client. Use :meth:`for_config` for the logged-in operator."""

    def __init__(self, server: str, cert_der: bytes, token: str | None = None, *,
                 timeout: float = 30.0) -> None:
        host, port, self.server = split_server(server)
        self.cert_der = cert_der
        self.cert_sha256 = tlspin.fingerprint(cert_der)
        self._token = token
        headers = {"User-Agent": USER_AGENT}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = transport.Transport(host, port, tlspin.pinned_context(cert_der), headers,
                                         timeout)

    @classmethod
    def for_config(cls, cfg: Config) -> tuple[Client, Session]:
        session = cfg.require_session()
        cert = cfg.load_cert()
        if cert is None:
            raise NotLoggedIn("no pinned server certificate: run `rampart login` again")
        if tlspin.fingerprint(cert) != session.cert_sha256:
            raise CliError("the pinned certificate does not match the session: run `rampart login`")
        return cls(session.server, cert, session.token), session

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def with_token(self, token: str) -> Client:
        return Client(self.server, self.cert_der, token)

    # --- requests ----------------------------------------------------------------------

    def step_up(self, why: str) -> None:
        """Prove a fresh TOTP code on this session (the server asked for a step-up)."""
        from . import output, prompts

        output.note(f"{why}")
        code = prompts.totp_code()
        self.request("POST", STEP_UP_PATH, json={"code": code}, _retried=True)
        output.note("step-up verified for 5 minutes")

    def request(self, method: str, path: str, *, json: Any = None,
                params: dict[str, Any] | None = None, _retried: bool = False,
                text: bool | str = False, headers_out: dict[str, str] | None = None) -> Any:
        """Send one request; the answer's JSON (or text). ``headers_out`` receives its headers."""
        url = API_PREFIX + path
        try:
            resp = self._http.request(method, url, json=json, params=params)
        except transport.ConnectFailed as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE" in str(exc):
                raise NetworkProblem(
                    f"{self.server} presented a certificate that does not match the pinned "
                    f"SHA-256 {self.cert_sha256[:16]}…: refusing to talk to it"
                ) from exc
            raise NetworkProblem(f"cannot connect to {self.server}: {_short(exc)}") from exc
        except transport.TimedOut as exc:
            raise NetworkProblem(f"{self.server} did not answer in time") from exc
        except transport.TransportError as exc:
            raise NetworkProblem(f"request to {self.server} failed: {_short(exc)}") from exc
        if (resp.status_code == 403 and _code(resp) == STEP_UP_CODE and self._token
                and path != STEP_UP_PATH and not _retried):
            self.step_up(_detail(resp))
            return self.request(method, path, json=json, params=params, _retried=True, text=text,
                                headers_out=headers_out)
        if resp.status_code == 429:
            wait = resp.headers.get("retry-after", "")
            raise ServerProblem(f"server refused: {_detail(resp)} (HTTP 429"
                                + (f"; retry in {wait} s)" if wait.isdigit() else ")"), 429)
        if resp.status_code >= 400:
            detail = _detail(resp)
            if resp.status_code == 401:
                if self._token:
                    raise NotLoggedIn(
                        f"{detail} (HTTP 401): log in again with `rampart login --server "
                        f"{self.server} --user NAME`"
                    )
                raise ServerProblem(f"{detail} (HTTP 401)", 401)
            raise ServerProblem(f"server refused: {detail} (HTTP {resp.status_code})",
                                resp.status_code)
        if headers_out is not None:
            headers_out.update((k.lower(), v) for k, v in resp.headers.items())
        if text == "bytes":
            return resp.content
        if text:
            return resp.text
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError as exc:
            raise ServerProblem(f"server sent a non-JSON answer to {method} {path}") from exc

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None}
                            or None)

    def get_with_headers(self, path: str, **params: Any) -> tuple[Any, dict[str, str]]:
        """A JSON answer and its response headers (names in lower case)."""
        headers: dict[str, str] = {}
        doc = self.request("GET", path, params={k: v for k, v in params.items() if v is not None}
                           or None, headers_out=headers)
        return doc, headers

    def get_text(self, path: str, **params: Any) -> str:
        """A plain-text answer (e.g. an event export), errors handled as for JSON."""
        return str(self.request("GET", path, params={k: v for k, v in params.items()
                                                      if v is not None} or None, text=True))

    def get_bytes(self, path: str) -> bytes:
        """A binary answer exactly as sent (e.g. a session recording), errors handled as for JSON."""
        data = self.request("GET", path, text="bytes")
        return bytes(data) if isinstance(data, (bytes, bytearray)) else b""

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body if body is not None else {})

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, json=body)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def expect_dict(doc: Any, what: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise ServerProblem(f"unexpected answer from the server for {what}")
    return doc


def expect_list(doc: Any, what: str) -> list[Any]:
    if not isinstance(doc, list):
        raise ServerProblem(f"unexpected answer from the server for {what}")
    return doc


def field(doc: dict[str, Any], name: str, typ: type, what: str) -> Any:
    val = doc.get(name)
    if not isinstance(val, typ):
        raise ServerProblem(f"the server's {what} lacks a valid {name!r}")
    return val
