"""Webhook delivery: one JSON POST, signed, to a destination checked before it is reached.

:func:`send_webhook` never raises; every failure is a :class:`~.outbox.DeliveryResult`.

Security rules (MISSION C3: alerts reach the SOC, and nobody else):

* ``https`` only. Plain ``http`` only to a loopback IP literal (127.0.0.0/8,
  ``::1``): a relay on the server itself. URLs with a user name or password
  are refused (they end up in proxy and server logs; the HMAC authenticates).
* The host is resolved once, and the delivery is refused if any address is
  link-local (169.254.0.0/16 holds cloud metadata services; fe80::/10),
  multicast, unspecified, in 0.0.0.0/8, reserved or broadcast, also when
  IPv4-mapped or NAT64-embedded. The connection then goes to the address
  that was checked, with the URL's host name as TLS SNI and certificate name
  and as the ``Host`` header, so a DNS answer cannot change between the check
  and the connection (DNS rebinding). Private networks are allowed: MSPs run
  their SIEM and ticketing systems there.
* Redirects are not followed (a 3xx is a failure): a redirect could send the
  event elsewhere. No proxy, ``.netrc`` or certificate setting is taken from
  the environment (``trust_env=False``); pass ``tls`` for a private CA.
* Only the status and at most 1 KiB of the raw (never decompressed) response
  body are read, within ``timeout`` for the whole exchange once connected.
* The secret is never logged, and no result mentions the URL's path or query,
  which often hold a token (Slack and Teams webhook URLs do): only
  ``scheme://host:port``.

Verifying a delivery (the receiver's side, also :func:`verify_signature`)::

    X-Rampart-Timestamp: 1700000000                  (Unix seconds when it was sent)
    X-Rampart-Delivery:  6f1c...                     (unique per delivery, the same on retries)
    X-Rampart-Signature: sha256=<hex>                HMAC-SHA256(secret, timestamp + "." + body)

Recompute the HMAC over the exact raw body bytes, compare it in constant
time, refuse timestamps more than five minutes from your clock, and ignore a
delivery id (or event id) already processed: that refuses forged, altered and
replayed deliveries. The timestamp is signed with the body, so it cannot be
moved forward to replay an old delivery.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import socket
import ssl
import time
import uuid
from typing import Final

import httpx

from rampart import __version__

from .outbox import DeliveryResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SIGNATURE_HEADER: Final = "X-Rampart-Signature"
TIMESTAMP_HEADER: Final = "X-Rampart-Timestamp"
DELIVERY_HEADER: Final = "X-Rampart-Delivery"
MIN_SECRET: Final = 16
MAX_PAYLOAD: Final = 1024 * 1024
MAX_URL: Final = 2048
MAX_RESPONSE_READ: Final = 1024
MAX_ADDRESSES: Final = 4
REPLAY_WINDOW: Final = 300.0

_LABEL: Final = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME: Final = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*\.?")
_DELIVERY_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_LOOPBACK_V4: Final = ipaddress.IPv4Network("127.0.0.0/8")
_THIS_NETWORK: Final = ipaddress.IPv4Network("0.0.0.0/8")
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_RETRY_STATUS: Final = frozenset({408, 425, 429})


def _is_loopback(ip: IPAddress) -> bool:
    return ip in _LOOPBACK_V4 if isinstance(ip, ipaddress.IPv4Address) else ip == ipaddress.IPv6Address("::1")


def _embedded_v4(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def _refused_address(ip: IPAddress) -> str | None:
    """Why the delivery may not go to ``ip``, or None."""
    ip = _embedded_v4(ip)
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_unspecified or (isinstance(ip, ipaddress.IPv4Address) and ip in _THIS_NETWORK):
        return "an unspecified address"
    if ip.is_reserved:
        return "a reserved address"
    return None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _parse(url: str) -> httpx.URL:
    if len(url) > MAX_URL:
        raise ValueError(f"the webhook URL is longer than {MAX_URL} characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise ValueError("the webhook URL is not a valid URL") from None
    if parsed.scheme not in ("https", "http"):
        raise ValueError("a webhook URL must use https")
    if parsed.userinfo:
        raise ValueError("a webhook URL must not hold a user name or password")
    host = parsed.raw_host.decode("ascii", "replace").lower()
    ip = _literal(host)
    if ip is None and not _HOST_NAME.fullmatch(host):
        raise ValueError("the webhook URL has no valid host")
    if ip is not None and (why := _refused_address(ip)):
        raise ValueError(f"a webhook may not be sent to {why}")
    if parsed.scheme == "http" and (ip is None or not _is_loopback(ip)):
        raise ValueError("a webhook URL must use https (plain http only to a loopback IP address)")
    return parsed


def check_webhook_url(url: str) -> None:
    """Raise ValueError (one line, without the URL) unless ``url`` may receive webhooks.

    The static part of the rules above, for checking a setting when it is
    saved; :func:`send_webhook` also checks the addresses the host resolves to.
    """
    _parse(url)


def _origin(url: httpx.URL) -> str:
    """``scheme://host:port`` only: never the path or query, which may hold a token."""
    host = url.raw_host.decode("ascii", "replace")
    host = f"[{host}]" if ":" in host else host
    return f"{url.scheme}://{host}:{url.port or (443 if url.scheme == 'https' else 80)}"


def _addresses(url: httpx.URL, port: int) -> list[IPAddress]:
    """The addresses to try, all checked; ValueError if any of them is refused."""
    host = url.raw_host.decode("ascii").lower()
    ip = _literal(host)
    if ip is not None:
        return [ip]
    try:
        infos = socket.getaddrinfo(host.rstrip("."), port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise LookupError("the host name did not resolve") from None
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        addr = _literal(str(sockaddr[0]).split("%", 1)[0])
        if addr is None:
            continue
        if why := _refused_address(addr):
            raise ValueError(f"the host name resolves to {why}")
        if addr not in found:
            found.append(addr)
    if not found:
        raise LookupError("the host name did not resolve")
    return found[:MAX_ADDRESSES]


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The ``X-Rampart-Signature`` value: ``sha256=`` and the HMAC of ``timestamp + "." + body``."""
    mac = hmac.new(secret, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(secret: bytes, body: bytes, *, timestamp: str, signature: str, now: float,
                     tolerance: float = REPLAY_WINDOW) -> bool:
    """True if ``signature`` is ours over ``body`` and ``timestamp``, and the timestamp is fresh.

    ``timestamp`` and ``signature`` are the raw header values; ``now`` is the
    receiver's clock. Replays inside the window are for the receiver to drop
    by delivery id.
    """
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        return False
    if abs(now - int(timestamp)) > tolerance:
        return False
    expected = sign(secret, body, int(timestamp))
    return hmac.compare_digest(expected.encode("ascii"), signature.encode("utf-8", "replace"))


def _scrub(message: str, url: httpx.URL) -> str:
    """``message`` without the URL, its path or query, or any of their parts (a token may be any)."""
    parts = {str(url), url.raw_path.decode("ascii", "replace"), url.query.decode("ascii", "replace")}
    parts.update(url.path.split("/"))
    parts.update(url.raw_path.decode("ascii", "replace").split("/"))
    for key, value in url.params.multi_items():
        parts.update((key, value))
    for part in sorted((p for p in parts if len(p) >= 4), key=len, reverse=True):
        message = message.replace(part, "…")
    return message


def _status_result(status: int, excerpt: bytes, origin: str, url: httpx.URL) -> DeliveryResult:
    if 200 <= status < 300:
        return DeliveryResult.success(f"delivered to {origin} (HTTP {status})", status=status)
    # The receiver's own words, scrubbed: error pages often echo the URL, token and all.
    text = _scrub(excerpt.decode("utf-8", "replace").strip(), url)[:120]
    suffix = f": {text}" if text else ""
    if 300 <= status < 400:
        return DeliveryResult.failure(f"{origin} answered with a redirect (HTTP {status}), not followed",
                                      retryable=False, status=status)
    retryable = status >= 500 or status in _RETRY_STATUS
    return DeliveryResult.failure(f"{origin} answered HTTP {status}{suffix}", retryable=retryable,
                                  status=status)


def send_webhook(url: str, payload: bytes, *, secret: bytes | None, timeout: float = 10.0,
                 tls: ssl.SSLContext | None = None, delivery_id: str | None = None,
                 now: float | None = None) -> DeliveryResult:
    """POST ``payload`` (JSON, e.g. ``to_jsonl(event).encode()``) to ``url``; never raises.

    With ``secret`` (at least 16 bytes) the request carries the signature
    headers described in the module docstring. ``tls`` replaces the system
    trust store (a private CA). ``delivery_id`` should stay the same across
    retries of one delivery; ``now`` is the signing time (default: the clock).
    """
    try:
        parsed = _parse(url)
    except ValueError as exc:
        return DeliveryResult.failure(f"refused: {exc}", retryable=False)
    origin = _origin(parsed)
    if secret is not None and len(secret) < MIN_SECRET:
        return DeliveryResult.failure(f"refused: the webhook secret is shorter than {MIN_SECRET} bytes",
                                      retryable=False)
    if len(payload) > MAX_PAYLOAD:
        return DeliveryResult.failure(f"refused: the payload is larger than {MAX_PAYLOAD} bytes",
                                      retryable=False)
    if delivery_id is None:
        delivery_id = uuid.uuid4().hex
    elif not _DELIVERY_ID.fullmatch(delivery_id):
        return DeliveryResult.failure("refused: invalid delivery id", retryable=False)
    if not (timeout > 0 and timeout <= 300):
        return DeliveryResult.failure("refused: the timeout must be in (0, 300] seconds", retryable=False)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        addresses = _addresses(parsed, port)
    except ValueError as exc:
        return DeliveryResult.failure(f"refused: {exc}", retryable=False)
    except LookupError as exc:
        return DeliveryResult.failure(f"{origin}: {exc}", retryable=True)

    stamp = int(time.time() if now is None else now)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"Rampart/{__version__}",
        "Host": parsed.netloc.decode("ascii"),
        DELIVERY_HEADER: delivery_id,
    }
    if secret is not None:
        headers[TIMESTAMP_HEADER] = str(stamp)
        headers[SIGNATURE_HEADER] = sign(secret, payload, stamp)
    extensions = {"sni_hostname": parsed.raw_host.decode("ascii")} if parsed.scheme == "https" else {}
    try:
        with httpx.Client(verify=tls if tls is not None else True, follow_redirects=False,
                          trust_env=False, timeout=httpx.Timeout(timeout)) as client:
            last = DeliveryResult.failure(f"could not connect to {origin}", retryable=True)
            for ip in addresses:
                target = parsed.copy_with(host=str(ip), fragment=None)
                try:
                    return _post(client, target, payload, headers, extensions, origin, timeout, parsed)
                except httpx.ConnectError as exc:
                    reason = _scrub(str(exc), parsed)
                    last = DeliveryResult.failure(f"could not connect to {origin}: {reason}", retryable=True)
            return last
    except httpx.TimeoutException:
        return DeliveryResult.failure(f"{origin} timed out", retryable=True)
    except httpx.HTTPError as exc:
        return DeliveryResult.failure(f"{origin}: {type(exc).__name__}: {_scrub(str(exc), parsed)}",
                                      retryable=True)
    except Exception as exc:  # a delivery never breaks its caller; the message may hold the URL
        return DeliveryResult.failure(f"{origin}: {type(exc).__name__}", retryable=True)


def _post(client: httpx.Client, target: httpx.URL, payload: bytes, headers: dict[str, str],
          extensions: dict[str, str], origin: str, timeout: float, url: httpx.URL) -> DeliveryResult:
    deadline = time.monotonic() + timeout
    with client.stream("POST", target, content=payload, headers=headers,
                       extensions=extensions) as response:
        excerpt = b""
        if not 200 <= response.status_code < 300:
            for chunk in response.iter_raw():
                excerpt += chunk
                if len(excerpt) >= MAX_RESPONSE_READ or time.monotonic() > deadline:
                    break
        return _status_result(response.status_code, excerpt[:MAX_RESPONSE_READ], origin, url)
