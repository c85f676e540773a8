"""Agent inventory: what the host runs, has installed, listens on and who logs in.

Collected on an interval (:func:`next_delay`, 5 minutes jittered) and on
demand by :func:`collect_full`; the first report is the full
:class:`Inventory`, later ones a :class:`Delta` from :func:`diff`, which the
server turns back into the full snapshot with :func:`apply`
(``apply(a, diff(a, b)) == b``, checked by digest).

Telemetry needs no grant: it only flows from agent to server and never makes
the agent do anything. Collection only reads the host.
"""

from __future__ import annotations

from rampart.wire.inventory import (
    DEFAULT_LIMITS,
    SECTION_KEYS,
    AgentInfo,
    CpuTicks,
    Disk,
    DiskUsage,
    EolStatus,
    Hardware,
    Inventory,
    InventoryLimits,
    Metrics,
    OsInfo,
    Package,
    Patching,
    Process,
    Service,
    Socket,
    Update,
    User,
    decode,
    encode,
)
from rampart.wire.inventory_delta import (
    Change,
    Delta,
    DeltaError,
    SectionDelta,
    apply,
    decode_delta,
    diff,
    digest,
    encode_delta,
)

from .collect import DEFAULT_INTERVAL_S, collect_full, next_delay
from .eol import eol_status, load_table
from .packages import UpdatesCache

__all__ = [
    "DEFAULT_INTERVAL_S", "DEFAULT_LIMITS", "SECTION_KEYS", "AgentInfo", "Change", "CpuTicks", "Delta",
    "DeltaError", "Disk", "DiskUsage", "EolStatus", "Hardware", "Inventory", "InventoryLimits", "Metrics",
    "OsInfo", "Package", "Patching", "Process", "SectionDelta", "Service", "Socket", "Update", "UpdatesCache",
    "User", "apply", "collect_full", "decode", "decode_delta", "diff", "digest", "encode", "encode_delta",
    "eol_status", "load_table", "next_delay",
]
