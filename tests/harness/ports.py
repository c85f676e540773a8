"""Free loopback ports for processes a test starts.

A port the kernel hands out for ``bind(0)`` comes from the ephemeral range, which
is also where every outgoing connection (to PostgreSQL, NATS, an agent's server…)
takes its local port: between "this port is free" and the server's own bind, a
client socket could take it ("address already in use"). These ports come from
below that range instead, where only an explicit bind lands.

Invariant: a returned port was bindable on 127.0.0.1 when checked and lies outside
the ephemeral range.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_FLOOR = 10_000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _bindable(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(n: int = 1, host: str = "127.0.0.1") -> int:
    """A port ``p`` with ``p .. p + n - 1`` all bindable on ``host``, below the ephemeral range."""
    high = max(_FLOOR + 1000, _ephemeral_low()) - n
    for _ in range(1000):
        base = random.randrange(_FLOOR, high)  # noqa: S311 - not a secret, just spread out
        if all(_bindable(p, host) for p in range(base, base + n)):
            return base
    raise RuntimeError("no free loopback port below the ephemeral range")


def free_port(host: str = "127.0.0.1") -> int:
    """One bindable port on ``host``, below the ephemeral range."""
    return free_ports(1, host)
