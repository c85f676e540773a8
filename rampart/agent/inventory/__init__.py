"""Agent inventory: what the host runs, has installed, listens on and who logs in.

Collected on an interval (:func:`next_delay`, 5 minutes jittered) and on
demand by :func:`collect_full`; the first report is the full
:class:`~rampart.wire.inventory.Inventory`, later ones a
:class:`~rampart.wire.inventory_delta.Delta` from ``diff``, which the server
turns back into the full snapshot with ``apply`` (``apply(a, diff(a, b)) == b``,
checked by digest). Those types are the wire contract (:mod:`rampart.wire`);
this package only collects.

Telemetry needs no grant: it only flows from agent to server and never makes
the agent do anything. Collection only reads the host.
"""

from __future__ import annotations

from .collect import DEFAULT_INTERVAL_S, collect_full, next_delay
from .eol import eol_status, load_table
from .packages import UpdatesCache

__all__ = ["DEFAULT_INTERVAL_S", "UpdatesCache", "collect_full", "eol_status", "load_table", "next_delay"]
