"""Per-device budgets for what an agent sends (threat T16: a hostile device floods its own telemetry).

A device's budget is kept by its identity, not by its connection: parallel
connections with one device key, or reconnecting, share one set of buckets
and cannot refill them. This module is pure bookkeeping (no I/O, "now" is
passed in); the gateway asks it before it decodes anything, so a refused
message costs only the bytes the transport already read.

Invariants:

* Every message a device sends is charged to its byte bucket before it is
  parsed; inventory reports and script check results are also charged to
  their own count buckets. A refused message is never decoded.
* Each refusal is counted in a sliding window. When a device is refused
  ``abuse_refusals`` times within ``abuse_window_s`` it is blocked: its
  connection is closed and its reconnections are refused for a back-off
  period that doubles with each block (up to ``abuse_block_max_s``) and is
  forgotten after a quiet ``abuse_forget_s``.
* The operator is told at most once per ``abuse_alert_interval_s`` per
  device and kind (:meth:`DeviceBudgets.should_alert`); the alert itself is
  written by the caller.
* Memory is bounded: at most ``max_devices`` devices are tracked; the one
  touched longest ago is forgotten first (its buckets start full again,
  which only ever favours an idle device).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["report", "check"]
Verdict = Literal["ok", "refused", "block"]


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    """The per-device rates; see ``ServerLimits`` for the configured values."""

    bytes_burst: int = 32 << 20
    bytes_per_s: float = 64 << 10
    report_burst: int = 20
    report_period_s: float = 15.0
    check_burst: int = 200
    check_per_s: float = 2.0
    abuse_refusals: int = 20
    abuse_window_s: float = 60.0
    abuse_block_s: float = 60.0
    abuse_block_max_s: float = 3600.0
    abuse_forget_s: float = 3600.0
    abuse_alert_interval_s: float = 600.0
    #: Connections replacing one another within ``abuse_window_s`` before the operator is told.
    replacements_alert: int = 5
    max_devices: int = 200_000

    def __post_init__(self) -> None:
        if min(self.bytes_burst, self.report_burst, self.check_burst, self.abuse_refusals,
               self.replacements_alert, self.max_devices) < 1:
            raise ValueError("budget bursts and counts must be at least 1")
        if min(self.bytes_per_s, self.report_period_s, self.check_per_s, self.abuse_window_s,
               self.abuse_block_s, self.abuse_block_max_s, self.abuse_forget_s) <= 0:
            raise ValueError("budget rates and periods must be positive")


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float

    def take(self, cost: float, burst: float, per_s: float, now: float) -> bool:
        self.tokens = min(burst, self.tokens + max(0.0, now - self.at) * per_s)
        self.at = now
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True


@dataclass(slots=True)
class _Device:
    bytes: _Bucket
    reports: _Bucket
    checks: _Bucket
    refusals: deque[float] = field(default_factory=deque)
    replacements: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0
    strikes: int = 0
    last_block: float = 0.0
    alerted: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Usage:
    """What one device has been refused, for an alert's text."""

    refusals: int
    strikes: int
    blocked_for_s: float


class DeviceBudgets:
    """Token buckets and abuse counters per device id (one event loop; not thread-safe)."""

    def __init__(self, limits: BudgetLimits) -> None:
        self._limits = limits
        self._devices: OrderedDict[str, _Device] = OrderedDict()

    @property
    def limits(self) -> BudgetLimits:
        return self._limits

    def _get(self, device_id: str, now: float) -> _Device:
        d = self._devices.get(device_id)
        if d is None:
            lim = self._limits
            d = _Device(bytes=_Bucket(float(lim.bytes_burst), now),
                        reports=_Bucket(float(lim.report_burst), now),
                        checks=_Bucket(float(lim.check_burst), now))
            self._devices[device_id] = d
            while len(self._devices) > lim.max_devices:
                self._devices.popitem(last=False)
        else:
            self._devices.move_to_end(device_id)
        return d

    def blocked_for(self, device_id: str, now: float) -> float:
        """Seconds the device's connections are still refused (0: not blocked)."""
        d = self._devices.get(device_id)
        return max(0.0, d.blocked_until - now) if d is not None else 0.0

    def charge_bytes(self, device_id: str, size: int, now: float) -> bool:
        """Charge one received message of ``size`` bytes; False when over the byte budget."""
        lim = self._limits
        return self._get(device_id, now).bytes.take(float(size), float(lim.bytes_burst), lim.bytes_per_s, now)

    def take(self, device_id: str, kind: Kind, now: float, *, period_s: float | None = None) -> bool:
        """Take one report or check-result token; ``period_s`` overrides the report refill period."""
        lim = self._limits
        d = self._get(device_id, now)
        if kind == "report":
            period = period_s if period_s is not None else lim.report_period_s
            return d.reports.take(1.0, float(lim.report_burst), 1.0 / max(period, 1e-3), now)
        return d.checks.take(1.0, float(lim.check_burst), lim.check_per_s, now)

    def refused(self, device_id: str, now: float) -> Verdict:
        """Count one refusal; "block" when the device just crossed the abuse threshold (now blocked)."""
        lim = self._limits
        d = self._get(device_id, now)
        if d.strikes and now - d.last_block > lim.abuse_forget_s:
            d.strikes = 0
        _trim(d.refusals, now - lim.abuse_window_s)
        d.refusals.append(now)
        if len(d.refusals) < lim.abuse_refusals:
            return "refused"
        d.refusals.clear()
        d.strikes += 1
        d.last_block = now
        d.blocked_until = now + min(lim.abuse_block_max_s, lim.abuse_block_s * 2 ** (d.strikes - 1))
        return "block"

    def replaced(self, device_id: str, now: float) -> int:
        """Count one connection replaced by a newer one of the same device; the count in the window."""
        d = self._get(device_id, now)
        _trim(d.replacements, now - self._limits.abuse_window_s)
        d.replacements.append(now)
        return len(d.replacements)

    def should_alert(self, device_id: str, kind: str, now: float) -> bool:
        """True at most once per ``abuse_alert_interval_s`` per device and kind."""
        d = self._get(device_id, now)
        last = d.alerted.get(kind)
        if last is not None and now - last < self._limits.abuse_alert_interval_s:
            return False
        d.alerted[kind] = now
        return True

    def usage(self, device_id: str, now: float) -> Usage:
        d = self._get(device_id, now)
        _trim(d.refusals, now - self._limits.abuse_window_s)
        return Usage(refusals=len(d.refusals), strikes=d.strikes,
                     blocked_for_s=max(0.0, d.blocked_until - now))


def _trim(times: deque[float], before: float) -> None:
    while times and times[0] < before:
        times.popleft()
