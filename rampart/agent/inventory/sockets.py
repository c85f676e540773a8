"""Listening and established sockets from /proc/net/{tcp,tcp6,udp,udp6}, mapped to processes.

"listen" is a TCP socket in LISTEN or a bound, unconnected UDP socket;
"established" is a connected TCP or UDP socket. Other TCP states (SYN_SENT,
TIME_WAIT, ...) are left out. Each socket is mapped to the lowest pid that
holds it open, by matching socket inodes against /proc/[pid]/fd links; the
walk ends once every socket has an owner, or after ``limits.max_fds_scanned``
descriptors (each costs a readlink, ~5 us of CPU).

Only the agent's own network namespace is visible (containers with their own
namespace are not), which is the host's when the agent runs on the host.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from typing import Literal

from rampart.wire.inventory import DEFAULT_LIMITS, InventoryLimits, Socket, canonical, socket_key

Proto = Literal["tcp", "tcp6", "udp", "udp6"]
State = Literal["listen", "established"]
Row = tuple[State, str, int, str, int, int, int]

_TCP_ESTABLISHED = "01"
_TCP_LISTEN = "0A"
_UDP_UNCONNECTED = "07"
PROTOCOLS: tuple[Proto, ...] = ("tcp", "tcp6", "udp", "udp6")


def decode_address(text: str) -> tuple[str, int] | None:
    """("addr", port) from the kernel's hex form: 32-bit words in host (little-endian) order."""
    addr_hex, sep, port_hex = text.partition(":")
    if not sep or len(addr_hex) not in (8, 32) or not port_hex:
        return None
    try:
        raw = bytes.fromhex(addr_hex)
        port = int(port_hex, 16)
    except ValueError:
        return None
    if not 0 <= port <= 65535:
        return None
    packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    if len(packed) == 4:
        return str(ipaddress.IPv4Address(packed)), port
    ip6 = ipaddress.IPv6Address(packed)
    mapped = ip6.ipv4_mapped  # same text on every Python version: ::ffff:127.0.0.1
    return (f"::ffff:{mapped}" if mapped is not None else str(ip6)), port


def parse_proc_net(text: str, proto: str) -> list[Row]:
    """(state, local addr, local port, remote addr, remote port, uid, inode) of wanted sockets."""
    udp = proto.startswith("udp")
    out: list[Row] = []
    state: State
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10:
            continue
        local, remote, st = decode_address(parts[1]), decode_address(parts[2]), parts[3].upper()
        if local is None or remote is None or not parts[7].isdigit() or not parts[9].isdigit():
            continue
        if st == _TCP_ESTABLISHED:
            state = "established"
        elif (st == _TCP_LISTEN and not udp) or (udp and st == _UDP_UNCONNECTED and remote[1] == 0):
            state = "listen"
        else:
            continue
        out.append((state, local[0], local[1], remote[0], remote[1], int(parts[7]), int(parts[9])))
    return out


def _is_loopback(address: str) -> bool:
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def socket_owners(inodes: Iterable[int], *, proc: str = "/proc",
                  max_fds: int = DEFAULT_LIMITS.max_fds_scanned) -> tuple[dict[int, int], bool]:
    """inode -> lowest pid holding it; the flag says the walk stopped at ``max_fds``."""
    wanted = {f"socket:[{i}]" for i in inodes}
    owners: dict[int, int] = {}
    if not wanted:
        return owners, False
    scanned = 0
    for pid in sorted(int(n) for n in os.listdir(proc) if n.isdigit()):
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # exited, or not ours to read
        for fd in fds:
            scanned += 1
            if scanned > max_fds:
                return owners, True
            try:
                link = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if link in wanted:
                inode = int(link[8:-1])
                owners.setdefault(inode, pid)
        if len(owners) == len(wanted):
            break  # pids go up, so every owner found so far is already the lowest
    return owners, False


def collect_sockets(limits: InventoryLimits = DEFAULT_LIMITS, proc: str = "/proc",
                    ) -> tuple[list[Socket], str]:
    """Sockets in canonical order and a note ("" when complete)."""
    rows: list[tuple[Proto, Row]] = []
    for proto in PROTOCOLS:
        try:
            with open(f"{proc}/net/{proto}", "rb") as f:
                text = f.read(limits.max_file_bytes).decode("ascii", "replace")
        except OSError:
            continue
        rows.extend((proto, r) for r in parse_proc_net(text, proto))
    notes = []
    if len(rows) > limits.max_sockets:
        notes.append(f"truncated to {limits.max_sockets} of {len(rows)} sockets (listeners kept first)")
        # Listeners first, then connections to other hosts, then loopback ones: a flood of local
        # connections cannot push a listener (or a connection out) past the cap.
        rows.sort(key=lambda pr: (pr[1][0] != "listen", _is_loopback(pr[1][3]), pr[0], pr[1]))
        rows = rows[: limits.max_sockets]
    inodes = {r[6] for _, r in rows if r[6]}
    owners, partial = socket_owners(inodes, proc=proc, max_fds=limits.max_fds_scanned)
    if partial:
        notes.append(f"owners looked up in the first {limits.max_fds_scanned} file descriptors only")
    sockets = [
        Socket(proto=proto, state=state, local_addr=la, local_port=lp, remote_addr=ra, remote_port=rp,
               inode=inode, uid=uid, pid=owners.get(inode))
        for proto, (state, la, lp, ra, rp, uid, inode) in rows
    ]
    return canonical(sockets, socket_key)[: limits.max_sockets], "; ".join(notes)
