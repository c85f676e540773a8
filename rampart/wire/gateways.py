"""The agent gateways a device may connect to: one rule for the server that names them and the
agent that stores them.

A deployment of several nodes (docs/scale-out.md) gives its agents either one address (a TCP
load balancer) or the list of its nodes' gateways, which an agent tries in turn. The list is
where to connect, never whom to trust: every node serves the one pinned certificate, and the
agent verifies everything it is sent as before (a node or list that lies is T1, a denial of
service at worst).

Invariant: a list :func:`check_gateway_urls` returns holds 1..MAX_GATEWAYS distinct ``wss://``
URLs of at most MAX_GATEWAY_URL_CHARS printable ASCII characters each, with a host and no
user information.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit

__all__ = ["MAX_GATEWAYS", "MAX_GATEWAY_URL_CHARS", "check_gateway_url", "check_gateway_urls"]

#: Gateways one device knows at most.
MAX_GATEWAYS: Final = 16
#: Characters of one gateway URL.
MAX_GATEWAY_URL_CHARS: Final = 512


def check_gateway_url(value: object) -> str:
    """``value`` if it is a usable agent gateway URL, else ValueError saying why."""
    if not isinstance(value, str) or not value:
        raise ValueError("a gateway must be a wss:// URL")
    if len(value) > MAX_GATEWAY_URL_CHARS:
        raise ValueError(f"a gateway URL has at most {MAX_GATEWAY_URL_CHARS} characters")
    if not value.isascii() or not value.isprintable() or " " in value:
        raise ValueError("a gateway URL is printable ASCII without spaces")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ValueError("a gateway must be a wss:// URL") from None
    if parts.scheme != "wss" or not parts.hostname:
        raise ValueError("a gateway must be a wss:// URL with a host (TLS, the pinned certificate)")
    if parts.username is not None or parts.password is not None:
        raise ValueError("a gateway URL holds no user or password")
    return value


def check_gateway_urls(value: object) -> list[str]:
    """``value`` if it is a usable list of agent gateway URLs, else ValueError saying why."""
    if not isinstance(value, list) or not value:
        raise ValueError("gateways must be a non-empty list of wss:// URLs")
    if len(value) > MAX_GATEWAYS:
        raise ValueError(f"at most {MAX_GATEWAYS} gateways")
    urls = [check_gateway_url(v) for v in value]
    if len(set(urls)) != len(urls):
        raise ValueError("a gateway is listed twice")
    return urls
