"""Agent telemetry: inventory on an interval and on demand, and detections (the report format: rampart.wire).

The agent collects an inventory (:func:`rampart.agent.inventory.collect_full`,
in a worker thread) every :func:`~rampart.agent.inventory.next_delay` seconds
(5 minutes ±20 % by default), when a connection's first ``detection`` message
arrives or the detection configuration changes, and when the server sends
``inventory-request``; collections are at least ``min(30 s, interval)`` apart.
Each snapshot is evaluated here (:func:`rampart.agent.findings.evaluate`,
threat T14: an unsanctioned tool is detected within one interval) and sent as
one :class:`Report`: the whole snapshot the first time, after the server asks
(``inventory-full``) or when no snapshot is acknowledged, else a delta against
the last snapshot the server *acknowledged* (``inventory-ack``), so a lost
report or ack only ever costs one full report (docs/design/telemetry.md).

Security invariants:

* Telemetry needs no grant: nothing the server sends here makes the agent act.
  ``detection`` (sanctioned tools, dormancy, an imported catalog) only changes
  what the agent reports, so it is not verified; the imported catalog is
  *merged into* the built-in one (facts are added, never removed), so a
  server can add noise or sanction tools, but cannot remove a built-in fact,
  and sanctioning never silences memory-only, portable or vulnerable-tool
  findings (:mod:`rampart.agent.findings`).
* Everything decoded here is bounded: base64 is strict, decompression stops
  at a limit before any JSON is parsed (:func:`inflate`), and the JSON is
  decoded into strict structs whose lists and strings are bounded.
* Findings seen in a collection are kept until a report covering them is
  acknowledged; those gone by the next report are sent as ``earlier``, so a
  tool that ran while the agent was offline is still reported (T15).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from rampart.catalog import Catalog, CatalogError, builtin_catalog, decode_catalog
from rampart.catalog.store import MAX_CATALOG_BYTES
from rampart.wire import InventoryMessage, encode_message
from rampart.wire.finding import MAX_DORMANT_DAYS, MAX_EVIDENCE, MAX_FINDINGS, Finding
from rampart.wire.inventory import Inventory, Patching, Update, canonical, update_key
from rampart.wire.inventory_delta import diff, digest
from rampart.wire.telemetry import (
    MAX_SANCTIONED,
    MAX_TOOLS,
    MAX_WIRE_BYTES,
    TOOL_WAYS,
    EarlierFinding,
    Report,
    ReportError,
    ToolSeen,
    ToolWay,
    encode_report,
    inflate,
    unb64,
)

from . import patching
from .findings import evaluate
from .inventory import UpdatesCache, collect_full, next_delay

if TYPE_CHECKING:
    from .core import Agent

# The report wire format (Report, encode_report, decode_report, inflate, ...) is rampart.wire.telemetry.
__all__ = ["DEFAULT_INTERVAL_S", "MAX_GAP_S", "DetectionConfig", "Telemetry", "parse_detection", "tools_seen"]

log = logging.getLogger("rampart.agent")

DEFAULT_INTERVAL_S: Final = 300.0
#: Collections are at least this far apart (or the interval, when shorter).
MAX_GAP_S: Final = 30.0
#: A full report is resent at most this often when the server keeps asking for one.
FULL_RESEND_MIN_S: Final = 5.0

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SLUG = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
META_DETECTION = "telemetry.detection"
META_CATALOG = "telemetry.catalog"


def tools_seen(present: list[Finding]) -> list[ToolSeen]:
    """Every catalogued tool in ``present``: the findings :func:`evaluate` gives with nothing sanctioned."""
    ways: dict[str, list[ToolWay]] = {}
    evidence: dict[str, dict[str, str]] = {}
    portable: set[str] = set()
    for f in present:
        if not f.tool:
            continue
        if f.kind == "rat-unsanctioned":
            named = f.evidence.get("found_by", "").split(",")
            found: list[ToolWay] = [w for w in TOOL_WAYS if w in named]
            ways[f.tool] = found or ["process"]
            evidence[f.tool] = {k: v for k, v in f.evidence.items() if k != "found_by"}
        elif f.kind == "rat-portable":
            portable.add(f.tool)
    for slug in portable - set(ways):  # defensive: a portable tool is also present
        ways[slug] = ["process"]
    return [ToolSeen(slug=slug, found_by=ways[slug], portable=slug in portable,
                     evidence=dict(list(evidence.get(slug, {}).items())[:MAX_EVIDENCE]))
            for slug in sorted(ways)][:MAX_TOOLS]


# --- detection configuration ---------------------------------------------------------------------


@dataclass(frozen=True)
class DetectionConfig:
    """What the server told this agent about detection; the built-in catalog always underlies it."""

    sanctioned: frozenset[str] = frozenset()
    dormant_days: int = 30
    #: SHA-256 of the imported catalog's stored bytes, "" when there is none.
    catalog_sha256: str = ""
    catalog: Catalog | None = None

    def describe(self) -> str:
        n = len(self.catalog) if self.catalog is not None else 0
        return (f"{len(self.sanctioned)} sanctioned tool(s), dormant after {self.dormant_days} days, "
                f"catalog {self.catalog_sha256[:12] or 'built-in only'} ({n} tools)")


def _catalog_from_blob(text: str, expected_sha256: str, builtin: Catalog) -> tuple[Catalog, bytes]:
    data = inflate(unb64(text, "catalog"), MAX_CATALOG_BYTES)
    if hashlib.sha256(data).hexdigest() != expected_sha256:
        raise ReportError("catalog does not match its digest")
    try:
        return builtin.merged(decode_catalog(data)), data
    except (CatalogError, ValueError) as exc:
        raise ReportError(f"catalog refused: {exc}") from None


def parse_detection(msg: dict[str, Any], current: DetectionConfig,
                    builtin: Catalog) -> tuple[DetectionConfig, bytes | None]:
    """The configuration a ``detection`` message describes and the catalog bytes to keep (None: unchanged).

    Raises :class:`ReportError` for a malformed message; ``current`` is then kept.
    """
    sanctioned = msg.get("sanctioned")
    if (not isinstance(sanctioned, list) or len(sanctioned) > MAX_SANCTIONED
            or not all(isinstance(s, str) and 0 < len(s) <= 64 for s in sanctioned)):
        raise ReportError(f"sanctioned must be a list of at most {MAX_SANCTIONED} tool names")
    days = msg.get("dormant_days")
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DORMANT_DAYS:
        raise ReportError(f"dormant_days must be an integer in 1..{MAX_DORMANT_DAYS}")
    sha = msg.get("catalog_sha256")
    if not isinstance(sha, str) or (sha and not _HEX64.match(sha)):
        raise ReportError("catalog_sha256 must be empty or 64 hex characters")
    blob = msg.get("catalog")
    keep: bytes | None = None
    if not sha:
        catalog, keep = None, b""
    elif isinstance(blob, str):
        catalog, keep = _catalog_from_blob(blob, sha, builtin)
    elif sha == current.catalog_sha256:
        catalog = current.catalog
    else:
        raise ReportError("the server named a catalog it did not send")
    return DetectionConfig(frozenset(sanctioned), days, sha, catalog), keep


# --- the agent loop ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Snapshot:
    inv: Inventory
    digest: str
    findings: list[Finding]
    tools: list[ToolSeen]
    at: int


@dataclass
class _Seen:
    finding: Finding
    first: int
    last: int


def message_text(snap: _Snapshot, acked: tuple[Inventory, str] | None,
                 earlier: list[EarlierFinding]) -> tuple[str, bool]:
    """The ``inventory`` message: a full report when nothing is ``acked``, else a delta against it."""
    if acked is None:
        report = Report(full=snap.inv, findings=snap.findings, earlier=earlier, tools=snap.tools)
        base = None
    else:
        report = Report(delta=diff(acked[0], snap.inv), findings=snap.findings, earlier=earlier,
                        tools=snap.tools)
        base = acked[1]
    text = encode_message(InventoryMessage(report=encode_report(report), result=snap.digest, base=base))
    return text, acked is None


class _RootPackages:
    """The packages of the device's ``--package-root`` (not ``/``), read with the patching engine."""

    def __init__(self, root: patching.PackageRoot) -> None:
        self._root = root

    @property
    def dpkg_status(self) -> str:
        return str(self._root.path / "var/lib/dpkg/status")

    def patching(self) -> Patching:
        return Patching(manager=self._root.manager, reboot_required=patching.reboot_required(self._root))

    def updates(self) -> list[Update]:
        found, error = patching.pending_updates_checked(self._root)
        if error:
            raise RuntimeError(error[:500])
        return canonical([Update(manager=u.manager, name=u.name, arch=u.arch, installed=u.installed,
                                 candidate=u.candidate, security=u.security) for u in found], update_key)


def _package_source(agent: Agent | None) -> _RootPackages | None:
    """The device's own package root when it is not the host's ``/`` (inventory follows the jobs)."""
    pol = agent.config.actions if agent is not None else None
    if pol is None or pol.error or pol.package_root == "/" or pol.package_manager == "none":
        return None
    from .actions import _detect_manager

    path = Path(pol.package_root)
    manager = _detect_manager(path) if pol.package_manager == "auto" else pol.package_manager
    if manager not in ("apt", "dnf"):
        return None
    try:
        return _RootPackages(patching.PackageRoot.scratch(path, manager))  # type: ignore[arg-type]
    except (patching.PackageSpecError, ValueError) as exc:
        log.warning("inventory: the package root %s cannot be read (%s); reporting the host's packages",
                    path, exc)
        return None


SendText = Callable[[str], Awaitable[None]]
Collector = Callable[[int], Inventory]


class Telemetry:
    """One agent's inventory reporting; the :class:`~rampart.agent.connection.Link` feeds it messages."""

    def __init__(self, agent: Agent | None, *, interval_s: float = DEFAULT_INTERVAL_S,
                 collect: Collector | None = None, clock: Callable[[], float] = time.time,
                 max_wire_bytes: int = MAX_WIRE_BYTES) -> None:
        if not math.isfinite(interval_s) or interval_s <= 0:
            raise ValueError("the inventory interval must be a positive number of seconds")
        self.interval_s = interval_s
        self.min_gap_s = min(MAX_GAP_S, interval_s)
        self._agent = agent
        self._clock = clock
        self._max_wire = max_wire_bytes
        self._builtin = builtin_catalog()
        if collect is None:
            from . import containment
            from .enroll import AGENT_VERSION

            cache = UpdatesCache()
            level = containment.kernel_level()

            source = _package_source(agent)

            def collect(now: int) -> Inventory:
                return collect_full(now, AGENT_VERSION, level, updates_cache=cache, package_root=source)
        self._collect = collect
        self.config = self._load_config()
        self._acked: tuple[Inventory, str] | None = None
        self._latest: _Snapshot | None = None
        self._full_next = True
        self._resend = False
        self._last_full_sent = -math.inf
        self._seen: dict[str, _Seen] = {}
        self._wake = asyncio.Event()
        self._last_collect = -math.inf
        self._send: SendText | None = None
        self.reports_sent = 0

    # --- state --------------------------------------------------------------------------------

    @property
    def catalog_sha256(self) -> str:
        return self.config.catalog_sha256

    @property
    def acked_digest(self) -> str | None:
        return self._acked[1] if self._acked is not None else None

    def _load_config(self) -> DetectionConfig:
        if self._agent is None:
            return DetectionConfig()
        state = self._agent.state
        try:
            doc = json.loads(state.get(META_DETECTION) or b"{}")
            sanctioned = frozenset(str(s) for s in doc.get("sanctioned", []))
            days = int(doc.get("dormant_days", 30))
            sha = str(doc.get("catalog_sha256", ""))
            catalog = None
            if sha:
                data = state.get(META_CATALOG) or b""
                if hashlib.sha256(data).hexdigest() != sha:
                    raise ValueError("stored catalog does not match its digest")
                catalog = self._builtin.merged(decode_catalog(data))
            if not 1 <= days <= MAX_DORMANT_DAYS:
                raise ValueError("bad dormant_days")
            return DetectionConfig(sanctioned, days, sha, catalog)
        except (ValueError, TypeError, AttributeError, CatalogError) as exc:
            log.warning("ignored the stored detection configuration (%s); using the built-in catalog", exc)
            return DetectionConfig()

    def _store_config(self, config: DetectionConfig, catalog: bytes | None) -> None:
        if self._agent is None:
            return
        state = self._agent.state
        doc = {"sanctioned": sorted(config.sanctioned), "dormant_days": config.dormant_days,
               "catalog_sha256": config.catalog_sha256}
        items: dict[str, bytes | str] = {META_DETECTION: json.dumps(doc)}
        if catalog is not None:
            items[META_CATALOG] = catalog
        with state.transaction() as db:
            state.set_many(db, items)

    # --- messages from the link ------------------------------------------------------------------

    def attach(self, send: SendText) -> None:
        """A connection is up: reports go through ``send``."""
        self._send = send

    def detach(self) -> None:
        self._send = None

    def request(self) -> None:
        """Collect and report as soon as the minimum gap allows (an operator or the server asked)."""
        self._wake.set()

    def on_bad_detection(self, detail: str, *, first_on_connection: bool) -> None:
        """A ``detection`` message did not decode: the configuration is kept (as when parsing refuses it)."""
        log.warning("refused a detection configuration: %s", detail)
        if first_on_connection:
            self.request()

    async def on_detection(self, msg: dict[str, Any], *, first_on_connection: bool) -> None:
        try:
            config, blob = await asyncio.to_thread(parse_detection, msg, self.config, self._builtin)
        except ReportError as exc:
            log.warning("refused a detection configuration: %s", exc)
            if first_on_connection:
                self.request()
            return
        changed = (config.sanctioned, config.dormant_days, config.catalog_sha256) != (
            self.config.sanctioned, self.config.dormant_days, self.config.catalog_sha256)
        if changed:
            await asyncio.to_thread(self._store_config, config, blob)
            log.info("detection configuration: %s", config.describe())
        self.config = config
        if changed or first_on_connection:
            self.request()

    def on_ack(self, result: object) -> None:
        if not isinstance(result, str) or not _HEX64.match(result):
            return
        latest = self._latest
        if latest is not None and latest.digest == result:
            self._acked = (latest.inv, latest.digest)
            self._full_next = False
            for key in [k for k, s in self._seen.items() if s.last <= latest.at]:
                del self._seen[key]
        elif self._acked is None or self._acked[1] != result:
            # The server holds a snapshot this agent does not know: a delta could not apply.
            self._acked = None
            self._full_next = True

    def on_full(self) -> None:
        """The server cannot apply a delta: send the latest snapshot whole."""
        self._acked = None
        self._full_next = True
        self._resend = True
        self._wake.set()

    # --- collection ------------------------------------------------------------------------------

    def _evaluate(self, inv: Inventory, now: int) -> tuple[list[Finding], list[ToolSeen]]:
        cfg = self.config
        catalog = cfg.catalog or self._builtin
        pids = frozenset({os.getpid()})
        found = evaluate(inv, catalog, sanctioned=cfg.sanctioned, now=now, dormant_days=cfg.dormant_days,
                         agent_pids=pids)
        present = found if not cfg.sanctioned else evaluate(
            inv, catalog, sanctioned=frozenset(), now=now, dormant_days=cfg.dormant_days, agent_pids=pids)
        return found, tools_seen(present)

    def _snapshot(self, now: int) -> _Snapshot:
        inv = self._collect(now)
        found, tools = self._evaluate(inv, now)
        return _Snapshot(inv, digest(inv), found, tools, now)

    def _remember(self, snap: _Snapshot) -> None:
        for f in snap.findings:
            seen = self._seen.get(f.key)
            if seen is not None:
                seen.finding, seen.last = f, snap.at
            elif len(self._seen) < MAX_FINDINGS:
                self._seen[f.key] = _Seen(f, snap.at, snap.at)

    def build_message(self, snap: _Snapshot) -> tuple[str, bool]:
        """The ``inventory`` message for ``snap`` and whether it is a full report.

        The state it depends on is read here, on the event loop; the costly part
        (:func:`message_text`) may then run in a worker thread.
        """
        return message_text(*self._message_parts(snap))

    def _message_parts(self, snap: _Snapshot) -> tuple[_Snapshot, tuple[Inventory, str] | None,
                                                          list[EarlierFinding]]:
        current = {f.key for f in snap.findings}
        earlier = [EarlierFinding(finding=s.finding, first_seen=s.first, last_seen=s.last)
                   for k, s in self._seen.items() if k not in current]
        return snap, None if self._full_next else self._acked, earlier

    async def collect_now(self) -> _Snapshot:
        """Collect and evaluate one snapshot (in a worker thread) and remember its findings."""
        self._last_collect = time.monotonic()
        snap = await asyncio.to_thread(self._snapshot, int(self._clock()))
        self._latest = snap
        self._remember(snap)
        return snap

    async def report(self, snap: _Snapshot) -> bool:
        """Send ``snap`` if connected; True if it was handed to the connection."""
        send = self._send
        if send is None:
            return False
        text, full = await asyncio.to_thread(message_text, *self._message_parts(snap))
        if len(text) > self._max_wire:
            log.error("inventory report of %d bytes exceeds the gateway's %d-byte limit: not sent",
                      len(text), self._max_wire)
            return False
        try:
            await send(text)
        except Exception as exc:  # noqa: BLE001 - a lost connection: the next one brings a new report
            log.info("inventory report not sent: %s", type(exc).__name__)
            return False
        if full:
            self._full_next = False
            self._last_full_sent = time.monotonic()
        self.reports_sent += 1
        return True

    async def run(self) -> None:
        """Collect on the interval and on request, forever (cancel to stop)."""
        deadline = time.monotonic() + next_delay(self.interval_s)
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                pass
            self._wake.clear()
            latest = self._latest
            if (self._resend and latest is not None
                    and time.monotonic() - self._last_full_sent >= FULL_RESEND_MIN_S):
                self._resend = False
                await self.report(latest)  # the schedule is unchanged
                continue
            self._resend = False
            gap = self.min_gap_s - (time.monotonic() - self._last_collect)
            if gap > 0:
                await asyncio.sleep(gap)  # requests meanwhile are served by this collection
                self._wake.clear()
            try:
                snap = await self.collect_now()
                await self.report(snap)
            except Exception:  # never let one bad collection stop telemetry
                log.exception("inventory collection failed")
            deadline = time.monotonic() + next_delay(self.interval_s)
