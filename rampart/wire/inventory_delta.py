"""Changes between two inventories: :func:`diff` on the agent, :func:`apply` on the server.

Invariant: for any valid inventories ``a`` and ``b``,
``apply(a, diff(a, b)) == b`` exactly, and the result encodes to the same
bytes. A delta names the digest of the snapshot it was computed from
(``base``) and of the one it produces (``result``): :func:`apply` refuses a
delta whose base is not the snapshot it is given, and checks the result, so a
lost or reordered delta is detected and the server asks for a full report
instead of holding a wrong picture of the host.

Keyed sections carry only added, changed (whole entries, replacing) and
removed (keys) entries. The singletons (agent, os, hardware, patching) are
sent only when they changed. Metrics, errors, notes and the collection time
are sent every time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec
from msgspec import Meta

from .inventory import (
    DEFAULT_LIMITS,
    SECTION_KEYS,
    AgentInfo,
    Disk,
    ErrorMap,
    Hardware,
    Hex64,
    Inventory,
    InventoryLimits,
    Metrics,
    OsInfo,
    Package,
    Patching,
    Process,
    Service,
    Socket,
    Time,
    Update,
    User,
    disk_key,
    encode,
    package_key,
    process_key,
    service_key,
    socket_key,
    update_key,
    user_key,
)

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")

_MAX_ENTRIES = 2 * max(DEFAULT_LIMITS.max_packages, DEFAULT_LIMITS.max_updates)


class DeltaError(ValueError):
    """A delta does not apply: wrong base snapshot, inconsistent entries, or a result over the limits."""


class _Struct(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    pass


class SectionDelta(_Struct, Generic[T, K], frozen=True, kw_only=True):
    """Changes to one keyed section. ``changed`` entries replace the entry with the same key."""

    added: Annotated[list[T], Meta(max_length=_MAX_ENTRIES)] = []
    changed: Annotated[list[T], Meta(max_length=_MAX_ENTRIES)] = []
    removed: Annotated[list[K], Meta(max_length=_MAX_ENTRIES)] = []

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)


class Change(_Struct, Generic[V], frozen=True, kw_only=True):
    """A singleton's new value (None: the section is now absent)."""

    value: V | None = None


class Delta(_Struct, frozen=True, kw_only=True):
    schema: Literal[1] = 1
    #: SHA-256 of the canonical encoding of the snapshot this delta applies to.
    base: Hex64
    #: SHA-256 of the canonical encoding of the snapshot it produces.
    result: Hex64
    collected_at: Time
    agent: AgentInfo | None = None
    os: Change[OsInfo] | None = None
    hardware: Change[Hardware] | None = None
    patching: Change[Patching] | None = None
    disks: SectionDelta[Disk, tuple[str]] = msgspec.field(default_factory=SectionDelta)
    packages: SectionDelta[Package, tuple[str, str, str]] = msgspec.field(default_factory=SectionDelta)
    updates: SectionDelta[Update, tuple[str, str]] = msgspec.field(default_factory=SectionDelta)
    processes: SectionDelta[Process, tuple[int, int]] = msgspec.field(default_factory=SectionDelta)
    services: SectionDelta[Service, tuple[str]] = msgspec.field(default_factory=SectionDelta)
    sockets: SectionDelta[Socket, tuple[str, str, int, str, int, int]] = msgspec.field(
        default_factory=SectionDelta)
    users: SectionDelta[User, tuple[str]] = msgspec.field(default_factory=SectionDelta)
    metrics: Metrics
    errors: ErrorMap = {}
    notes: ErrorMap = {}

    def entries(self) -> int:
        """Entries changed across keyed sections (0: only metrics and time moved)."""
        return sum(len(d.added) + len(d.changed) + len(d.removed)
                   for d in (getattr(self, name) for name in SECTION_KEYS))


def digest(inv: Inventory) -> str:
    """SHA-256 (hex) of the canonical encoding of ``inv``."""
    return hashlib.sha256(encode(inv)).hexdigest()


def _diff_section(prev: Sequence[T], cur: Sequence[T], key: Callable[[T], Any]) -> SectionDelta[T, Any]:
    before = {key(x): x for x in prev}
    added: list[T] = []
    changed: list[T] = []
    seen = set()
    for item in cur:
        k = key(item)
        seen.add(k)
        old = before.get(k)
        if old is None:
            added.append(item)
        elif old != item:
            changed.append(item)
    removed = [k for k in before if k not in seen]
    return SectionDelta(added=added, changed=changed, removed=removed)


def _change(prev: V | None, cur: V | None) -> Change[V] | None:
    return None if prev == cur else Change(value=cur)


def diff(prev: Inventory, cur: Inventory) -> Delta:
    """What changed from ``prev`` to ``cur`` (both as collected by this agent)."""
    return Delta(
        base=digest(prev), result=digest(cur), collected_at=cur.collected_at,
        agent=None if prev.agent == cur.agent else cur.agent,
        os=_change(prev.os, cur.os), hardware=_change(prev.hardware, cur.hardware),
        patching=_change(prev.patching, cur.patching),
        disks=_diff_section(prev.disks, cur.disks, disk_key),
        packages=_diff_section(prev.packages, cur.packages, package_key),
        updates=_diff_section(prev.updates, cur.updates, update_key),
        processes=_diff_section(prev.processes, cur.processes, process_key),
        services=_diff_section(prev.services, cur.services, service_key),
        sockets=_diff_section(prev.sockets, cur.sockets, socket_key),
        users=_diff_section(prev.users, cur.users, user_key),
        metrics=cur.metrics, errors=cur.errors, notes=cur.notes,
    )


def _apply_section(name: str, prev: Sequence[T], delta: SectionDelta[T, Any], key: Callable[[T], Any],
                   limit: int) -> list[T]:
    """``prev`` with ``delta`` applied, in key order; strict: every removed or changed key must exist and
    every added key must be new."""
    items = {key(x): x for x in prev}
    for k in delta.removed:
        if items.pop(tuple(k), None) is None:
            raise DeltaError(f"{name}: removes unknown entry {k!r}")
    for item in delta.changed:
        k = key(item)
        if k not in items:
            raise DeltaError(f"{name}: changes unknown entry {k!r}")
        items[k] = item
    for item in delta.added:
        k = key(item)
        if k in items:
            raise DeltaError(f"{name}: adds existing entry {k!r}")
        items[k] = item
    if len(items) > limit:
        raise DeltaError(f"{name}: {len(items)} entries, more than the limit {limit}")
    return [items[k] for k in sorted(items)]


def apply(prev: Inventory, delta: Delta, *, limits: InventoryLimits = DEFAULT_LIMITS) -> Inventory:
    """The snapshot ``delta`` describes, given the snapshot it was computed from.

    Raises :class:`DeltaError` when ``prev`` is not the delta's base, when an
    entry is inconsistent with ``prev``, when a section would exceed its limit,
    or when the result's digest is not the one the delta promised. ``prev`` is
    never modified.
    """
    if digest(prev) != delta.base:
        raise DeltaError("delta was computed from a different snapshot")
    lim = limits
    try:
        out = Inventory(
            collected_at=delta.collected_at,
            agent=delta.agent if delta.agent is not None else prev.agent,
            os=delta.os.value if delta.os is not None else prev.os,
            hardware=delta.hardware.value if delta.hardware is not None else prev.hardware,
            patching=delta.patching.value if delta.patching is not None else prev.patching,
            disks=_apply_section("disks", prev.disks, delta.disks, disk_key, lim.max_disks),
            packages=_apply_section("packages", prev.packages, delta.packages, package_key, lim.max_packages),
            updates=_apply_section("updates", prev.updates, delta.updates, update_key, lim.max_updates),
            processes=_apply_section("processes", prev.processes, delta.processes, process_key,
                                     lim.max_processes),
            services=_apply_section("services", prev.services, delta.services, service_key, lim.max_services),
            sockets=_apply_section("sockets", prev.sockets, delta.sockets, socket_key, lim.max_sockets),
            users=_apply_section("users", prev.users, delta.users, user_key, lim.max_users),
            metrics=delta.metrics, errors=delta.errors, notes=delta.notes,
        )
    except DeltaError:
        raise
    except ValueError as exc:
        raise DeltaError(str(exc)) from exc
    if digest(out) != delta.result:
        raise DeltaError("applying the delta did not produce the snapshot it describes")
    return out


def encode_delta(delta: Delta) -> bytes:
    return msgspec.json.encode(delta)


def decode_delta(data: bytes) -> Delta:
    """Decode and validate a delta; raises ``msgspec.DecodeError``/``ValidationError`` on bad input."""
    return msgspec.json.decode(data, type=Delta)
