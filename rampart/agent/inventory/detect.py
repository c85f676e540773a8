"""Content and protocol evidence for detection: executable fingerprints and local listener probes.

See docs/design/rat-detection.md. Both add facts to the inventory that a
renamed program cannot change; :mod:`rampart.catalog.fingerprint` decides what
the facts mean.

**Fingerprints** (:func:`fingerprint`): each process's executable is read
through ``/proc/PID/exe`` (so a deleted file, a memfd or a file in another
mount namespace is read as the kernel runs it), at most
:data:`MAX_FILE_BYTES` of it, hashed and scanned for marks. Results are
cached by the file's identity (device, inode, size, change time), so an
executable is read once while it is unchanged however many processes run
it; an inventory reads at most :data:`READ_BUDGET_BYTES` of new files, the
processes most likely to matter first (memory-only, outside the system
trees, owning a listener); the rest are read by the next inventories.

**Probes** (:func:`probe_listeners`): each TCP listener is probed once in
its life (cached by socket inode), and only on this host: a listener bound to
a loopback or wildcard address is reached through loopback, one bound to a
specific address only when that address is one of this host's own
(``/proc/net/fib_trie`` LOCAL entries, ``/proc/net/if_inet6``), so a socket
bound to a foreign address (``IP_FREEBIND``, transparent proxying) never
makes the agent connect elsewhere. A probe connects, reads what the listener
says first (:data:`BANNER_WAIT_S`), and only when it said nothing sends the
19-byte RDP Connection Request and reads the answer; it reads at most
:data:`MAX_READ` bytes, closes, and all probes of one inventory run
concurrently within :data:`PROBE_DEADLINE_S`.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
import selectors
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec

from rampart.catalog.fingerprint import MAX_MARKS, RDP_CONNECTION_REQUEST, classify_reply, scan
from rampart.wire.inventory import Process, Socket

__all__ = [
    "BANNER_WAIT_S", "MAX_FILE_BYTES", "MAX_PROBES", "MAX_READ", "PROBE_DEADLINE_S", "READ_BUDGET_BYTES",
    "SYSTEM_TREES", "DetectCache", "fingerprint", "is_relevant", "local_addresses", "probe_listeners",
    "probe_target",
]

#: Bytes of one executable read and scanned (a larger file is judged by its head; hashes then miss).
MAX_FILE_BYTES = 64 << 20
#: Bytes of not-yet-cached executables read per inventory.
READ_BUDGET_BYTES = 256 << 20
#: Listeners probed per inventory (new ones; probed ones are cached).
MAX_PROBES = 256
#: Concurrent probe connections.
MAX_CONCURRENT = 64
#: Wait for a listener's own first words (RFB, SSH, SMTP speak first).
BANNER_WAIT_S = 0.3
#: Wall time of all probes of one inventory.
PROBE_DEADLINE_S = 2.0
#: Bytes read from one listener.
MAX_READ = 64
#: Entries kept in each cache.
_MAX_CACHE = 8192

#: Trees where programs come from packages: a process running from elsewhere is kept first under a cap.
SYSTEM_TREES = ("/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/", "/lib32/", "/libx32/", "/snap/",
                "/nix/store/", "/gnu/store/")


@dataclass
class DetectCache:
    """What earlier inventories learned: keep one per agent."""

    #: (st_dev, st_ino, st_size, st_ctime_ns) -> (marks, SHA-256 of the file or "" when too large).
    content: dict[tuple[int, int, int, int], tuple[tuple[str, ...], str]] = field(default_factory=dict)
    #: socket inode -> protocol ("" = probed, nothing recognised).
    protocol: dict[int, str] = field(default_factory=dict)


_DEFAULT_CACHE = DetectCache()


def default_cache() -> DetectCache:
    """The process-wide cache used when the caller keeps none."""
    return _DEFAULT_CACHE


# --- fingerprints ----------------------------------------------------------------------------


def is_relevant(p: Process, listener_pids: frozenset[int] = frozenset()) -> bool:
    """True when ``p`` matters most to detection: kept first under a cap, fingerprinted first."""
    if p.exe_deleted or p.memory_only:
        return True
    if p.exe is not None and not p.exe.startswith(SYSTEM_TREES):
        return True
    return p.pid in listener_pids


def _read_exe(path: str, limit: int) -> tuple[bytes, str]:
    """(head of at most ``limit`` bytes, SHA-256 of the whole file when it fit in the head, else "")."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        return data[:limit], "-"
    return data, hashlib.sha256(data).hexdigest()


def fingerprint(processes: Sequence[Process], cache: DetectCache, *, proc: str = "/proc",
                budget: int = READ_BUDGET_BYTES, listener_pids: frozenset[int] = frozenset(),
                ) -> tuple[list[Process], int]:
    """``processes`` with ``content`` set where known; and how many were left unread (budget spent).

    Order is kept. A process whose executable cannot be read (exited, no
    permission, a kernel thread) keeps no marks. A detection-relevant process
    (:func:`is_relevant`) also gets ``sha256:<hex>`` of its executable, last:
    the exact fingerprint a person looks up, or names in a suppression rule.
    """
    order = sorted(range(len(processes)),
                   key=lambda i: (not is_relevant(processes[i], listener_pids), processes[i].pid))
    marks: dict[int, tuple[str, ...]] = {}
    unread = 0
    used = 0
    seen_ids: set[tuple[int, int, int, int]] = set()
    for i in order:
        p = processes[i]
        if p.exe is None:
            continue
        exe = f"{proc}/{p.pid}/exe"
        try:
            st = os.stat(exe)
        except OSError:
            continue
        ident = (st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns)
        seen_ids.add(ident)
        known = cache.content.get(ident)
        if known is None:
            size = min(st.st_size, MAX_FILE_BYTES)
            if used + size > budget:
                unread += 1
                continue
            try:
                data, digest = _read_exe(exe, MAX_FILE_BYTES)
            except OSError:
                continue
            used += len(data)
            whole = digest if digest != "-" else ""
            known = (scan(data, digest=whole or "0" * 64), whole)
            if len(cache.content) >= _MAX_CACHE:
                cache.content = {k: v for k, v in cache.content.items() if k in seen_ids}
            cache.content[ident] = known
        found, sha = known
        if sha and is_relevant(p, listener_pids):
            found = (*found[: MAX_MARKS - 1], f"sha256:{sha}")
        if found:
            marks[i] = found
    out = [msgspec.structs.replace(p, content=list(marks[i])) if i in marks else p
           for i, p in enumerate(processes)]
    return out, unread


# --- probes ----------------------------------------------------------------------------------


def local_addresses(proc: str = "/proc") -> frozenset[str]:
    """This host's own addresses (IPv4 LOCAL routes, IPv6 interface addresses), as text."""
    found: set[str] = set()
    try:
        with open(f"{proc}/net/fib_trie", encoding="ascii", errors="replace") as f:
            lines = f.read(4 << 20).splitlines()
    except OSError:
        lines = []
    for prev, line in zip(lines, lines[1:], strict=False):
        if line.strip() == "/32 host LOCAL":
            addr = prev.strip().lstrip("|-+` ").strip()
            try:
                found.add(str(ipaddress.IPv4Address(addr)))
            except ValueError:
                continue
    try:
        with open(f"{proc}/net/if_inet6", encoding="ascii", errors="replace") as f:
            for line in f.read(1 << 20).splitlines():
                parts = line.split()
                if parts and len(parts[0]) == 32:
                    try:
                        found.add(str(ipaddress.IPv6Address(bytes.fromhex(parts[0]))))
                    except ValueError:
                        continue
    except OSError:
        pass
    return frozenset(found)


def probe_target(s: Socket, own: frozenset[str]) -> tuple[int, str] | None:
    """(address family, address) to connect to for listener ``s``, or None when it must not be probed.

    Only this host: loopback, a wildcard (reached through loopback), or one of ``own`` addresses.
    """
    if s.state != "listen" or not s.proto.startswith("tcp") or s.local_port == 0:
        return None
    try:
        addr = ipaddress.ip_address(s.local_addr)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_unspecified:
        return (socket.AF_INET, "127.0.0.1") if addr.version == 4 else (socket.AF_INET6, "::1")
    if addr.is_link_local:
        return None  # needs a scope id; a link-local-only listener is not probed
    if addr.is_loopback or str(addr) in own:
        return (socket.AF_INET if addr.version == 4 else socket.AF_INET6), str(addr)
    return None


@dataclass
class _Probe:
    inode: int
    sock: socket.socket
    started: float
    connected: bool = False
    sent: bool = False
    banner: bytes = b""
    reply: bytes = b""
    done: bool = False
    closed: bool = False


def probe_listeners(sockets: Sequence[Socket], cache: DetectCache, *, own: frozenset[str] | None = None,
                    deadline_s: float = PROBE_DEADLINE_S, max_probes: int = MAX_PROBES,
                    banner_wait_s: float = BANNER_WAIT_S,
                    clock: Callable[[], float] = time.monotonic) -> tuple[list[Socket], int]:
    """``sockets`` with ``protocol`` set on recognised listeners; and how many listeners were not probed
    this time (over ``max_probes`` or past the deadline: they are probed by the next inventories)."""
    if own is None:
        own = local_addresses()
    live = {s.inode for s in sockets if s.state == "listen"}
    cache.protocol = {k: v for k, v in cache.protocol.items() if k in live}
    wanted: dict[int, tuple[int, int, str, int]] = {}
    for s in sockets:
        if s.inode and s.inode not in cache.protocol and s.inode not in wanted:
            target = probe_target(s, own)
            if target is not None:
                wanted[s.inode] = (s.inode, target[0], target[1], s.local_port)
    todo = list(wanted.values())
    skipped = max(0, len(todo) - max_probes)
    todo = todo[:max_probes]
    end = clock() + deadline_s
    pending = list(todo)
    while pending and clock() < end:
        batch, pending = pending[:MAX_CONCURRENT], pending[MAX_CONCURRENT:]
        _run_batch(batch, cache, end, banner_wait_s, clock)
    skipped += len(pending)
    out = [msgspec.structs.replace(s, protocol=cache.protocol[s.inode])
           if s.state == "listen" and cache.protocol.get(s.inode) else s for s in sockets]
    return out, skipped


def _run_batch(batch: Sequence[tuple[int, int, str, int]], cache: DetectCache, end: float,
               banner_wait_s: float, clock: Callable[[], float]) -> None:
    sel = selectors.DefaultSelector()
    probes: list[_Probe] = []
    try:
        for inode, family, addr, port in batch:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            err = sock.connect_ex((addr, port))
            if err not in (0, errno.EINPROGRESS):
                sock.close()
                cache.protocol[inode] = ""
                continue
            p = _Probe(inode, sock, clock())
            probes.append(p)
            sel.register(sock, selectors.EVENT_WRITE | selectors.EVENT_READ, p)
        while any(not p.done for p in probes):
            now = clock()
            if now >= end:
                break
            for p in probes:
                if p.done or not p.connected or p.sent or now - p.started < banner_wait_s:
                    continue
                if p.banner:
                    p.done = True  # it spoke first, and not RFB (or not all of it in time)
                    continue
                # Nothing said first: ask as an RDP client would, once.
                try:
                    p.sock.send(RDP_CONNECTION_REQUEST)
                except OSError:
                    p.done = True
                    continue
                p.sent = True
                p.started = now
            for p in probes:
                if not p.done and p.sent and now - p.started >= banner_wait_s:
                    p.done = True
            for p in probes:
                if p.done and not p.closed:
                    sel.unregister(p.sock)  # a finished socket (EOF: always readable) must not spin the loop
                    p.closed = True
            events = sel.select(timeout=min(0.05, max(0.0, end - now)))
            for key, mask in events:
                p = key.data
                if p.done:
                    continue
                if not p.connected and mask & selectors.EVENT_WRITE:
                    if p.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        p.done = True
                        continue
                    p.connected = True
                    p.started = clock()
                    sel.modify(p.sock, selectors.EVENT_READ, p)
                if mask & selectors.EVENT_READ:
                    try:
                        chunk = p.sock.recv(MAX_READ - len(p.banner) - len(p.reply))
                    except OSError:
                        p.done = True
                        continue
                    if not chunk:
                        p.done = True
                        continue
                    if p.sent:
                        p.reply += chunk
                    else:
                        p.banner += chunk
                    if len(p.banner) + len(p.reply) >= MAX_READ or (p.banner.endswith(b"\n")) or (
                            p.sent and len(p.reply) >= 7):
                        p.done = True
        for p in probes:
            if p.done or p.banner or p.reply:
                cache.protocol[p.inode] = classify_reply(p.banner, p.reply)
    finally:
        for p in probes:
            if not p.closed:
                sel.unregister(p.sock)
            p.sock.close()
        sel.close()
