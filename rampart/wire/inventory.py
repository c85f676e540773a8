"""Inventory data model: what an agent reports about its host.

An :class:`Inventory` is one snapshot. Each list section (disks, packages,
updates, processes, services, sockets, users) is *keyed*: every entry has a
stable key (see :data:`SECTION_KEYS`) and the list is kept sorted by that key
with no duplicates. The structs check this invariant when built or decoded,
so a :class:`~rampart.wire.inventory_delta.Delta` can be applied to it and
reproduce the agent's snapshot exactly.

Volatile values (uptime, load, free memory, CPU counters, disk usage) live in
:class:`Metrics`, which is sent whole in every report; the keyed sections hold
only values that change rarely, so a delta stays small.

Telemetry flows from agent to server only and never makes the agent do
anything, so it needs no grant. The server must still treat it as untrusted
input from a device: every string and list carries a size limit
(:class:`InventoryLimits`) that decoding enforces, and unknown fields are
refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

SCHEMA = 1


@dataclass(frozen=True, slots=True)
class InventoryLimits:
    """Every count, size and duration the collectors and decoders bound."""

    max_processes: int = 5000
    max_packages: int = 20_000
    max_updates: int = 20_000
    max_sockets: int = 10_000
    max_services: int = 4000
    max_users: int = 4000
    max_disks: int = 256
    #: Processes read before the cap is applied: past ``max_processes``, the detection-relevant ones
    #: (memory-only, running from outside the system trees, owning a listener) are kept first.
    max_processes_read: int = 20_000
    max_cmdline_bytes: int = 4096
    max_cmdline_args: int = 256
    #: File descriptors looked at when mapping sockets to processes, in total (~5 us of CPU each).
    max_fds_scanned: int = 100_000
    #: Largest file any collector reads (a big dpkg status file is ~20 MB).
    max_file_bytes: int = 64 << 20
    max_command_output: int = 32 << 20
    command_timeout_s: float = 120.0
    #: wtmp is read from its end, at most this much.
    max_wtmp_bytes: int = 8 << 20


DEFAULT_LIMITS = InventoryLimits()
_L = DEFAULT_LIMITS

Name = Annotated[str, Meta(max_length=256)]
Text = Annotated[str, Meta(max_length=4096)]
Date = Annotated[str, Meta(pattern=r"^\d{4}-\d{2}-\d{2}$")]
Port = Annotated[int, Meta(ge=0, le=65535)]
Count = Annotated[int, Meta(ge=0, le=1 << 62)]
Time = Annotated[int, Meta(ge=0, le=1 << 40)]
Uid = Annotated[int, Meta(ge=0, le=(1 << 32) - 1)]
Pid = Annotated[int, Meta(ge=1, le=(1 << 31) - 1)]
Level = Annotated[float, Meta(ge=0, le=1e9)]
Hex64 = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
SectionName = Literal[
    "agent", "os", "hardware", "patching", "disks", "packages", "updates", "processes", "services",
    "sockets", "users", "metrics",
]
ErrorMap = Annotated[dict[SectionName, Text], Meta(max_length=16)]


class _Struct(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    pass


# --- singletons ----------------------------------------------------------------------


class AgentInfo(_Struct, frozen=True, kw_only=True):
    version: Name
    #: Containment level the agent's kernel offers jobs: "full" | "filesystem" | "none".
    containment: Name


class EolStatus(_Struct, frozen=True, kw_only=True):
    """Support status of the OS release; see :mod:`rampart.agent.inventory.eol` for what "eol" means."""

    status: Literal["current", "eol", "unknown"]
    product: Name = ""
    release: Name = ""
    #: Last day of free public security support, when known.
    eol_date: Date | None = None
    #: Where the date came from: "built-in" or "distro-info" (the OS's own data package).
    source: Name = ""


class OsInfo(_Struct, frozen=True, kw_only=True):
    id: Name
    name: Name
    version_id: Name = ""
    codename: Name = ""
    id_like: Annotated[list[Name], Meta(max_length=16)] = []
    kernel_release: Name
    kernel_version: Name
    arch: Name
    hostname: Name
    machine_id: Name = ""
    boot_time: Time
    eol: EolStatus


class Hardware(_Struct, frozen=True, kw_only=True):
    cpu_model: Name = ""
    logical_cpus: Count = 0
    physical_cores: Count = 0
    sockets: Count = 0
    mem_total_bytes: Count = 0
    swap_total_bytes: Count = 0
    vendor: Name = ""
    product: Name = ""
    serial: Name = ""
    bios_version: Name = ""


class Patching(_Struct, frozen=True, kw_only=True):
    manager: Literal["apt", "dnf", "none"]
    reboot_required: bool = False
    reboot_packages: Annotated[list[Name], Meta(max_length=1024)] = []


# --- keyed sections ------------------------------------------------------------------


class Disk(_Struct, frozen=True, kw_only=True):
    mountpoint: Text
    device: Text
    fstype: Name
    total_bytes: Count
    inodes_total: Count = 0
    read_only: bool = False


class Package(_Struct, frozen=True, kw_only=True):
    manager: Literal["dpkg", "rpm"]
    name: Name
    arch: Name
    version: Name
    #: Source package (dpkg ``Source:``, rpm source RPM), when it differs from ``name``.
    source: Name = ""
    #: dpkg status word when the package is not fully "installed" (e.g. "half-configured").
    status: Name = "installed"


class Update(_Struct, frozen=True, kw_only=True):
    manager: Literal["apt", "dnf"]
    name: Name
    arch: Name
    installed: Name
    candidate: Name
    #: A security archive offers a version newer than the installed one (not necessarily the candidate).
    security: bool = False
    #: Archive, suite or repository that offers the candidate.
    origin: Name = ""
    #: The newest version newer than ``installed`` that a security archive offers ("" if none): the
    #: security fix, which may be older than the candidate (2.0 from updates, 1.1 from security).
    security_candidate: Name = ""


class Process(_Struct, frozen=True, kw_only=True):
    pid: Pid
    ppid: Annotated[int, Meta(ge=0, le=(1 << 31) - 1)]
    #: Start time in clock ticks after boot (exact, part of the key: pids are reused).
    start_ticks: Count
    start_time: Time
    name: Name
    #: Executable path, without the kernel's " (deleted)" suffix; None when unreadable.
    exe: Text | None = None
    #: The kernel reports the executable as no longer on disk (unlinked, replaced, or a memfd).
    exe_deleted: bool = False
    #: The executable never was a file on disk: a memfd, or a file on tmpfs/ramfs.
    memory_only: bool = False
    cmdline: Annotated[list[Text], Meta(max_length=_L.max_cmdline_args)] = []
    cmdline_truncated: bool = False
    uid: Uid
    euid: Uid
    user: Name | None = None
    #: What the executable's content says it is (build-id, hash, text, linked libraries), as marks
    #: ``"<slug or label>:<how>"`` (:func:`rampart.catalog.fingerprint.scan`); empty when not read.
    content: Annotated[list[Name], Meta(max_length=8)] = []


class Socket(_Struct, frozen=True, kw_only=True):
    proto: Literal["tcp", "tcp6", "udp", "udp6"]
    state: Literal["listen", "established"]
    local_addr: Name
    local_port: Port
    remote_addr: Name
    remote_port: Port
    inode: Count
    uid: Uid
    #: Lowest pid holding the socket open, when found.
    pid: Pid | None = None
    #: Protocol a local probe of this listener recognised ("rfb 003.008", "rdp"); "" when none or not probed.
    protocol: Name = ""


class Service(_Struct, frozen=True, kw_only=True):
    unit: Name
    load: Name = ""
    active: Name = ""
    sub: Name = ""
    #: Unit file state: "enabled", "disabled", "static", "masked", ...
    enabled: Name = ""
    description: Text = ""
    main_pid: Pid | None = None
    fragment_path: Text = ""


class User(_Struct, frozen=True, kw_only=True):
    name: Name
    uid: Uid
    gid: Uid
    home: Text = ""
    shell: Text = ""
    login_shell: bool = False
    #: From /etc/shadow: a usable hash, locked ("!" or "*"), empty (no password), or unreadable.
    password_state: Literal["set", "locked", "empty", "unknown"] = "unknown"  # noqa: S105 - a state, no secret
    last_login: Time | None = None
    last_login_from: Name = ""
    last_login_tty: Name = ""


# --- metrics -------------------------------------------------------------------------


class CpuTicks(_Struct, frozen=True, kw_only=True):
    """Cumulative CPU time since boot, all CPUs, in clock ticks (``Metrics.clk_tck`` per second)."""

    user: Count = 0
    nice: Count = 0
    system: Count = 0
    idle: Count = 0
    iowait: Count = 0
    irq: Count = 0
    softirq: Count = 0
    steal: Count = 0


class DiskUsage(_Struct, frozen=True, kw_only=True):
    mountpoint: Text
    used_bytes: Count
    #: Space available to unprivileged users.
    avail_bytes: Count
    inodes_free: Count = 0


class Metrics(_Struct, frozen=True, kw_only=True):
    """Volatile values: sent whole in every report, full or delta."""

    uptime_s: Annotated[float, Meta(ge=0, le=1e12)] = 0.0
    load1: Level = 0.0
    load5: Level = 0.0
    load15: Level = 0.0
    procs_running: Count = 0
    procs_total: Count = 0
    mem_available_bytes: Count = 0
    mem_free_bytes: Count = 0
    swap_free_bytes: Count = 0
    clk_tck: Annotated[int, Meta(ge=1, le=100_000)] = 100
    cpu: CpuTicks = msgspec.field(default_factory=CpuTicks)
    disks: Annotated[list[DiskUsage], Meta(max_length=_L.max_disks)] = []


# --- keys ----------------------------------------------------------------------------


def disk_key(d: Disk) -> tuple[str]:
    return (d.mountpoint,)


def package_key(p: Package) -> tuple[str, str, str]:
    return (p.manager, p.name, p.arch)


def update_key(u: Update) -> tuple[str, str]:
    return (u.name, u.arch)


def process_key(p: Process) -> tuple[int, int]:
    return (p.pid, p.start_ticks)


def socket_key(s: Socket) -> tuple[str, str, int, str, int, int]:
    return (s.proto, s.local_addr, s.local_port, s.remote_addr, s.remote_port, s.inode)


def service_key(s: Service) -> tuple[str]:
    return (s.unit,)


def user_key(u: User) -> tuple[str]:
    return (u.name,)


#: Keyed sections and the function giving each entry's stable key.
SECTION_KEYS: dict[str, Callable[[Any], tuple[Any, ...]]] = {
    "disks": disk_key,
    "packages": package_key,
    "updates": update_key,
    "processes": process_key,
    "services": service_key,
    "sockets": socket_key,
    "users": user_key,
}

T = TypeVar("T")


def canonical(items: Sequence[T], key: Callable[[T], tuple[Any, ...]]) -> list[T]:
    """``items`` sorted by key, keeping the first entry of each key: the form every section has."""
    seen: dict[tuple[Any, ...], T] = {}
    for item in items:
        seen.setdefault(key(item), item)
    return [seen[k] for k in sorted(seen)]


def _check_canonical(name: str, items: Sequence[Any]) -> None:
    key = SECTION_KEYS[name]
    prev: tuple[Any, ...] | None = None
    for item in items:
        k = key(item)
        if prev is not None and not prev < k:
            raise ValueError(f"{name} not sorted by key or has a duplicate key: {k!r}")
        prev = k


# --- the snapshot --------------------------------------------------------------------


class Inventory(_Struct, frozen=True, kw_only=True):
    """One snapshot of a host. Keyed sections are sorted by key, without duplicates."""

    schema: Literal[1] = 1
    collected_at: Time
    agent: AgentInfo
    os: OsInfo | None = None
    hardware: Hardware | None = None
    patching: Patching | None = None
    disks: Annotated[list[Disk], Meta(max_length=_L.max_disks)] = []
    packages: Annotated[list[Package], Meta(max_length=_L.max_packages)] = []
    updates: Annotated[list[Update], Meta(max_length=_L.max_updates)] = []
    processes: Annotated[list[Process], Meta(max_length=_L.max_processes)] = []
    services: Annotated[list[Service], Meta(max_length=_L.max_services)] = []
    sockets: Annotated[list[Socket], Meta(max_length=_L.max_sockets)] = []
    users: Annotated[list[User], Meta(max_length=_L.max_users)] = []
    metrics: Metrics = msgspec.field(default_factory=Metrics)
    #: Sections whose collector failed (the section is then empty or None), with the reason.
    errors: ErrorMap = {}
    #: Sections that are partial or unavailable on this host, and why (e.g. truncated at a cap).
    notes: ErrorMap = {}

    def __post_init__(self) -> None:
        for name in SECTION_KEYS:
            _check_canonical(name, getattr(self, name))


def section_limit(name: str, limits: InventoryLimits = DEFAULT_LIMITS) -> int:
    """Most entries section ``name`` may hold."""
    return int(getattr(limits, f"max_{name}"))


def encode(inv: Inventory) -> bytes:
    """Canonical JSON bytes of a snapshot (deterministic: the digest of a delta's base is over these)."""
    return msgspec.json.encode(inv)


def decode(data: bytes) -> Inventory:
    """Decode and validate a snapshot; raises ``msgspec.DecodeError``/``ValidationError`` on bad input."""
    return msgspec.json.decode(data, type=Inventory)
