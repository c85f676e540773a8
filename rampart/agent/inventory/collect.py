"""One full inventory of this host: :func:`collect_full`.

Every section is collected in isolation: an exception in one collector is
recorded in ``Inventory.errors`` under the section's name (that section is
then empty or None) and never stops the others. Partial results (a cap
reached, a facility absent) are explained in ``Inventory.notes``. Every count
is capped by :class:`~rampart.wire.inventory.InventoryLimits`.

Collection only reads: files under /proc, /sys, /etc and /var/lib, and
read-only commands (``apt-cache policy``, ``rpm -qa``, ``dnf -C
check-update``, ``systemctl list-units``) on a fixed PATH with a timeout and
an output cap. It needs no grant: it never changes the host and its result
only flows to the server.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping
from typing import Protocol, TypeVar

from rampart.wire.inventory import (
    DEFAULT_LIMITS,
    AgentInfo,
    Disk,
    DiskUsage,
    Hardware,
    Inventory,
    InventoryLimits,
    Metrics,
    OsInfo,
    Package,
    Patching,
    Process,
    SectionName,
    Service,
    Socket,
    Update,
    User,
    canonical,
    package_key,
)

from .detect import DetectCache, default_cache, fingerprint, is_relevant, probe_listeners
from .eol import load_table
from .packages import DPKG_STATUS, UpdatesCache, collect_dpkg, collect_patching, collect_rpm, collect_updates
from .processes import collect_processes
from .services import collect_services
from .sockets import collect_sockets
from .system import collect_disks, collect_hardware, collect_metrics, collect_os
from .users import collect_users

DEFAULT_INTERVAL_S = 300.0
RPM_DBS = ("/var/lib/rpm", "/usr/lib/sysimage/rpm")

R = TypeVar("R")


def next_delay(interval_s: float = DEFAULT_INTERVAL_S, jitter: float = 0.2,
               rand: Callable[[], float] = random.random) -> float:
    """Seconds until the next scheduled inventory: ``interval_s`` ± ``jitter`` (a fraction), so a fleet
    restarted together does not report in lockstep."""
    if interval_s <= 0 or not 0 <= jitter < 1:
        raise ValueError("interval_s must be positive and jitter in [0, 1)")
    return interval_s * (1 - jitter + 2 * jitter * rand())


def _rpm_db_present() -> bool:
    for path in RPM_DBS:
        try:
            if os.listdir(path):
                return True
        except OSError:
            continue
    return False


class _Sections:
    """Runs collectors, turning each failure into an error string for its section."""

    def __init__(self) -> None:
        self.errors: dict[SectionName, str] = {}
        self.notes: dict[SectionName, str] = {}

    def run(self, name: SectionName, fn: Callable[[], R], default: R) -> R:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - isolation is the point: one section never aborts others
            self.errors[name] = f"{type(exc).__name__}: {exc}"[:4096]
            return default

    def note(self, name: SectionName, text: str) -> None:
        if text:
            self.notes[name] = text[:4096]


def _packages(limits: InventoryLimits, dpkg_status: str, s: _Sections) -> list[Package]:
    found: list[Package] = []
    truncated = False
    problems = []
    if os.path.exists(dpkg_status):
        pkgs, cut = collect_dpkg(dpkg_status, limits)
        found += pkgs
        truncated |= cut
    if _rpm_db_present():
        try:
            pkgs, cut = collect_rpm(limits)
            found += pkgs
            truncated |= cut
        except Exception as exc:  # noqa: BLE001 - keep the dpkg half when rpm fails
            problems.append(f"rpm: {exc}")
    if problems and not found:
        raise RuntimeError("; ".join(problems))
    if problems:
        s.errors["packages"] = "; ".join(problems)[:4096]
    packages = canonical(found, package_key)
    if truncated or len(packages) > limits.max_packages:
        s.note("packages", f"truncated to {limits.max_packages} packages")
    if not os.path.exists(dpkg_status) and not _rpm_db_present():
        s.note("packages", "no dpkg or rpm database found")
    return packages[: limits.max_packages]


class PackageSource(Protocol):
    """Where the packages the device's jobs manage live, when that is not the host's own root."""

    @property
    def dpkg_status(self) -> str: ...

    def patching(self) -> Patching: ...

    def updates(self) -> list[Update]: ...


def collect_full(now: int, agent_version: str, containment: str, *, limits: InventoryLimits = DEFAULT_LIMITS,
                 updates_cache: UpdatesCache | None = None,
                 eol_table: Mapping[tuple[str, str], tuple[str, str]] | None = None,
                 dpkg_status: str = DPKG_STATUS,
                 package_root: PackageSource | None = None,
                 detect_cache: DetectCache | None = None, probe: bool = True) -> Inventory:
    """A complete snapshot of this host at unix time ``now``; never raises for a failing section.

    ``updates_cache`` (keep one per agent) skips recomputing pending updates
    while the package state is unchanged; ``eol_table`` defaults to the
    built-in table merged with the host's distro-info data. ``package_root``
    replaces the host's packages, pending updates and reboot state with those
    of the root the device's package jobs manage (``--package-root``).
    ``detect_cache`` (keep one per agent) remembers fingerprinted executables
    and probed listeners; ``probe`` False skips fingerprints and probes
    (:mod:`rampart.agent.inventory.detect`).
    """
    if package_root is not None:
        dpkg_status = package_root.dpkg_status
    s = _Sections()
    empty: dict[tuple[str, str], tuple[str, str]] = {}
    table = eol_table if eol_table is not None else s.run("os", lambda: load_table(), empty)
    os_info: OsInfo | None = s.run("os", lambda: collect_os(now=now, eol_table=table), None)
    hardware: Hardware | None = s.run("hardware", collect_hardware, None)

    def disks() -> tuple[list[Disk], list[DiskUsage]]:
        d, usage, cut = collect_disks(limits)
        if cut:
            s.note("disks", f"truncated to {limits.max_disks} filesystems")
        return d, usage

    no_disks: tuple[list[Disk], list[DiskUsage]] = ([], [])
    disk_list, disk_usage = s.run("disks", disks, no_disks)

    cache = detect_cache if detect_cache is not None else default_cache()

    def sockets() -> list[Socket]:
        found, note = collect_sockets(limits)
        s.note("sockets", note)
        return found

    socket_list: list[Socket] = s.run("sockets", sockets, [])
    listener_pids = frozenset(x.pid for x in socket_list if x.state == "listen" and x.pid is not None)

    def processes() -> list[Process]:
        procs, cut = collect_processes(limits, relevant=lambda p: is_relevant(p, listener_pids))
        if cut:
            s.note("processes", f"truncated to {limits.max_processes} processes "
                                "(memory-only, non-system and listening ones kept first)")
        if probe:
            procs, unread = fingerprint(procs, cache, listener_pids=listener_pids)
            if unread:
                s.note("processes", ((s.notes.get("processes", "") + "; ") if "processes" in s.notes else "")
                       + f"{unread} executables not fingerprinted yet (read budget)")
        return procs

    process_list: list[Process] = s.run("processes", processes, [])

    def probed() -> list[Socket]:
        found, skipped = probe_listeners(socket_list, cache)
        if skipped:
            s.note("sockets", ((s.notes.get("sockets", "") + "; ") if "sockets" in s.notes else "")
                   + f"{skipped} listeners not probed yet")
        return found

    if probe:
        socket_list = s.run("sockets", probed, socket_list)
    packages: list[Package] = s.run("packages", lambda: _packages(limits, dpkg_status, s), [])
    read_patching = (lambda: collect_patching(limits)) if package_root is None else package_root.patching
    patching: Patching | None = s.run("patching", read_patching, None)

    def updates() -> list[Update]:
        if package_root is not None:
            return package_root.updates()
        if patching is None or patching.manager == "none":
            s.note("updates", "no supported update manager (apt, dnf, yum) found")
            return []
        if "packages" in s.errors and not packages:
            raise RuntimeError("installed packages unknown")
        return collect_updates(patching.manager, packages, limits, updates_cache)

    update_list: list[Update] = s.run("updates", updates, [])

    def services() -> list[Service]:
        found, note = collect_services(limits)
        s.note("services", note)
        return found

    service_list: list[Service] = s.run("services", services, [])

    def users() -> list[User]:
        found, cut = collect_users(limits)
        if cut:
            s.note("users", f"truncated to {limits.max_users} accounts")
        return found

    user_list: list[User] = s.run("users", users, [])
    metrics: Metrics = s.run("metrics", lambda: collect_metrics(disk_usage), Metrics(disks=disk_usage))
    return Inventory(
        collected_at=now,
        agent=AgentInfo(version=agent_version[:256], containment=containment[:256]),
        os=os_info, hardware=hardware, patching=patching, disks=disk_list, packages=packages,
        updates=update_list, processes=process_list, services=service_list, sockets=socket_list,
        users=user_list, metrics=metrics, errors=s.errors, notes=s.notes,
    )
