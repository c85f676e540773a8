"""Classic RMM checks (issue 5, item 4), evaluated on the server from reported inventories.

Kinds and parameters (validated by :func:`validate`):

==========  =======================================  ==================================
kind        parameters                               fails when
==========  =======================================  ==================================
disk        ``mountpoint`` ("/"), ``max_used_percent``  used / (used + available) above it
memory      ``min_available_percent``                available below it of the total
cpu         ``max_load_per_cpu``                     1-minute load per logical CPU above
service     ``unit`` (e.g. "ssh.service")            the unit is not active (or absent)
port        ``port``, ``proto`` ("tcp")              nothing listens on it
==========  =======================================  ==================================

Why on the server, from the inventory: a check never makes an agent do
anything (no probe, no command), so a server under an attacker's control
cannot turn checks into a port scanner or a command channel. The price is
freshness: a check sees the device as of its last report (at most one
inventory interval old, see docs/monitoring.md).

A failing check raises one alert per (check, device) (kind ``check-failed``),
resolved when the check passes again. A check that cannot be evaluated on a
device (a service check where the device lists no services, e.g. no systemd)
is *unknown* there, never failing: an ``info`` alert of kind ``check-unknown``
says why, and any ``check-failed`` alert of that pair is resolved.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from rampart.wire.inventory import Inventory

from .alerts import raise_alert, resolve
from .db import Store
from .errors import BadRequest
from .models import Device, MonitorCheck
from .telemetry import TelemetryStore, live_alert

log = logging.getLogger("rampart.server.checks")

KINDS = ("disk", "memory", "cpu", "service", "port")
ALERT_KIND = "check-failed"
UNKNOWN_KIND = "check-unknown"


@dataclass(frozen=True, slots=True)
class CheckResult:
    ok: bool
    detail: str
    #: The device does not report what the check needs: neither passing nor failing.
    unknown: bool = False


def _number(doc: dict[str, Any], key: str, lo: float, hi: float) -> float:
    v = doc.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
        raise BadRequest(f"{key} must be a number from {lo:g} to {hi:g}")
    return float(v)


def validate(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Normalised parameters of a check, or BadRequest with a one-line reason."""
    if kind == "disk":
        mount = params.get("mountpoint", "/")
        if not isinstance(mount, str) or not mount.startswith("/") or len(mount) > 512:
            raise BadRequest("mountpoint must be an absolute path")
        return {"mountpoint": mount, "max_used_percent": _number(params, "max_used_percent", 1, 100)}
    if kind == "memory":
        return {"min_available_percent": _number(params, "min_available_percent", 0, 100)}
    if kind == "cpu":
        return {"max_load_per_cpu": _number(params, "max_load_per_cpu", 0.01, 1000)}
    if kind == "service":
        unit = params.get("unit")
        if not isinstance(unit, str) or not 1 <= len(unit) <= 256 or any(c.isspace() for c in unit):
            raise BadRequest("unit must be a systemd unit name such as ssh.service")
        return {"unit": unit if "." in unit else unit + ".service"}
    if kind == "port":
        port = params.get("port")
        proto = params.get("proto", "tcp")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise BadRequest("port must be 1 to 65535")
        if proto not in ("tcp", "udp"):
            raise BadRequest("proto must be tcp or udp")
        return {"port": port, "proto": proto}
    raise BadRequest(f"kind must be one of {', '.join(KINDS)}")


def evaluate(kind: str, params: dict[str, Any], inv: Inventory) -> CheckResult:
    """Pure: the check's verdict on one inventory (missing data is a failure, said so)."""
    m = inv.metrics
    if kind == "disk":
        usage = [d for d in m.disks if d.mountpoint == params["mountpoint"]]
        if not usage:
            return CheckResult(False, f"no usage reported for {params['mountpoint']}")
        u = usage[0]
        size = u.used_bytes + u.avail_bytes
        pct = 100.0 * u.used_bytes / size if size else 100.0
        return CheckResult(pct <= params["max_used_percent"],
                           f"{params['mountpoint']} {pct:.1f}% used (limit {params['max_used_percent']:g}%)")
    if kind == "memory":
        total = inv.hardware.mem_total_bytes if inv.hardware else 0
        if not total:
            return CheckResult(False, "no memory total reported")
        pct = 100.0 * m.mem_available_bytes / total
        return CheckResult(pct >= params["min_available_percent"],
                           f"{pct:.1f}% memory available (minimum {params['min_available_percent']:g}%)")
    if kind == "cpu":
        cpus = inv.hardware.logical_cpus if inv.hardware and inv.hardware.logical_cpus else 1
        per = m.load1 / cpus
        return CheckResult(per <= params["max_load_per_cpu"],
                           f"load {m.load1:.2f} on {cpus} CPU(s) = {per:.2f} per CPU "
                           f"(limit {params['max_load_per_cpu']:g})")
    if kind == "service":
        units = [sv for sv in inv.services if sv.unit == params["unit"]]
        if "services" in inv.errors or "services" in inv.notes and not inv.services:
            return CheckResult(False, f"unknown: services are not reported on this device "
                                      f"({inv.errors.get('services') or inv.notes.get('services')})",
                               unknown=True)
        if not units:
            return CheckResult(False, f"{params['unit']} is not installed")
        sv = units[0]
        return CheckResult(sv.active == "active", f"{sv.unit} is {sv.active or 'unknown'}"
                                                   + (f" ({sv.sub})" if sv.sub else ""))
    if kind == "port":
        protos = ("tcp", "tcp6") if params["proto"] == "tcp" else ("udp", "udp6")
        hits = [s for s in inv.sockets if s.proto in protos and s.local_port == params["port"]
                and (s.state == "listen" or params["proto"] == "udp")]
        return CheckResult(bool(hits), f"{params['proto']} port {params['port']} "
                                       + ("is listening" if hits else "has no listener"))
    return CheckResult(False, f"unknown check kind {kind}")


class CheckRunner:
    """Evaluates every check on every device it covers; raises and resolves alerts."""

    def __init__(self, store: Store, telemetry: TelemetryStore) -> None:
        self._store = store
        self._telemetry = telemetry
        #: (check id, device id) -> inventory digest last evaluated: skip unchanged pairs.
        self._seen: dict[tuple[str, str], str] = {}

    def run_once(self, now: float) -> int:
        with self._store.read() as s:
            checks = [(c.id, c.tenant_id, c.device_id, c.kind, json.loads(c.params))
                      for c in s.scalars(select(MonitorCheck))]
            devices: dict[str, list[tuple[str, str]]] = {}
            for d in s.scalars(select(Device).where(Device.status == "approved")):
                devices.setdefault(d.tenant_id, []).append((d.id, d.hostname))
        live = {c[0] for c in checks}
        self._seen = {k: v for k, v in self._seen.items() if k[0] in live}
        evaluated = 0
        inventories: dict[str, Any] = {}
        # Which (check, device) pairs have a new inventory: read the heads only, never an unchanged
        # snapshot (a device's large report is not inflated again every cycle).
        pairs = [(check_id, dev) for check_id, tenant_id, device_id, _, _ in checks
                 for dev, _ in devices.get(tenant_id, []) if device_id is None or dev == device_id]
        heads = self._telemetry.heads(sorted({dev for _, dev in pairs}))
        stale = {dev for check_id, dev in pairs
                 if dev in heads and self._seen.get((check_id, dev)) != heads[dev]}
        for check_id, tenant_id, device_id, kind, params in checks:
            for dev, host in devices.get(tenant_id, []):
                if device_id is not None and dev != device_id:
                    continue
                if dev not in stale:
                    continue
                if dev not in inventories:
                    inventories[dev] = self._telemetry.inventory(dev, now)
                stored = inventories[dev]
                if stored is None or self._seen.get((check_id, dev)) == stored.digest:
                    continue
                result = evaluate(kind, params, stored.inventory)
                self._record(check_id, tenant_id, dev, host, kind, result, now)
                self._seen[(check_id, dev)] = stored.digest
                evaluated += 1
        return evaluated

    def _record(self, check_id: str, tenant_id: str, device_id: str, host: str, kind: str,
                result: CheckResult, now: float) -> None:
        dedup = f"{check_id}:{device_id}"
        with self._store.transaction() as s:
            alert = live_alert(s, tenant_id, ALERT_KIND, dedup)
            unknown = live_alert(s, tenant_id, UNKNOWN_KIND, dedup)
            if result.unknown:
                if alert is not None:
                    resolve(alert, "rampart", now)
                if unknown is None:
                    raise_alert(s, [tenant_id], kind=UNKNOWN_KIND, severity="info", dedup=dedup,
                                subject=f"{kind} check cannot be evaluated on {host or device_id}: "
                                        f"{result.detail}",
                                detail=f"check {check_id} on {device_id}: {result.detail}", now=now,
                                device_id=device_id)
                else:
                    unknown.last_seen = now
                return
            if unknown is not None:
                resolve(unknown, "rampart", now)
            if result.ok:
                if alert is not None:
                    resolve(alert, "rampart", now)
                return
            if alert is None:
                raise_alert(s, [tenant_id], kind=ALERT_KIND, severity="warning", dedup=dedup,
                            subject=f"{kind} check failed on {host or device_id}: {result.detail}",
                            detail=f"check {check_id} on {device_id}: {result.detail}", now=now,
                            device_id=device_id)
            else:
                alert.detail = f"check {check_id} on {device_id}: {result.detail}"
                alert.last_seen = now



