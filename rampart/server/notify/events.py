"""The neutral event every notifier and exporter formats: one alert or one audit entry.

An :class:`Event` is built by the server from its own rows, never from a
request: :func:`from_alert` from an alert row and :func:`from_audit` from an
audit log entry. Neither reads the database; both take any object with the
row's attributes (:class:`AlertLike`, :class:`AuditEntryLike`).

Security invariants (MISSION G2, C3; docs/design/protocol.md for the log):

* Job and receipt entries are DSSE envelopes whose payload can hold a script,
  file names or command output. Their event carries the entry's kind, size and
  SHA-256 only (the SOC can match it against the Merkle log), never a byte of
  the payload, its type or its signatures. The same applies to any entry whose
  data is not exactly the event shape ``{"kind","time","actor","details"}``:
  an entry is decoded only when it is known to be an event (fail closed).
* Every string and the details map are bounded here (:class:`EventLimits`),
  so one oversized entry cannot make an export or a notification unbounded.
  The formatters (``formats.py``) bound and escape again for their format.
* Nothing here raises on a strange row: an undecodable entry becomes an
  event that says so, with its hash.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import msgspec

Scalar = str | int | float | bool | None
Severity = Literal["info", "warning", "critical"]
Source = Literal["audit", "alert"]

SEVERITIES: Final[tuple[Severity, ...]] = ("info", "warning", "critical")
SOURCES: Final[tuple[Source, ...]] = ("audit", "alert")

#: Audit entries whose data is a DSSE envelope (rampart/server/audit.py): never decoded.
ENVELOPE_KINDS: Final = frozenset({"job.created", "receipt"})

#: Audit kinds a SOC should look at before the others; every other kind is ``info``.
AUDIT_SEVERITY: Final[Mapping[str, Severity]] = {
    "login.failed": "warning",
    "login.network-refused": "warning",
    "access.network-refused": "warning",
    "account.locked": "warning",
    "account.disabled": "warning",
    "account.revoked": "warning",
    "account.reissued": "warning",
    "grant.revoked": "warning",
}

#: The actor of an alert nobody has acted on yet: the server raised it.
SERVER_ACTOR: Final = "rampart"

#: Largest time accepted: 9999-12-31T23:59:59Z (RFC 3339 has four-digit years).
MAX_TIME: Final = 253402300799.0


@dataclass(frozen=True, slots=True)
class EventLimits:
    """Bounds applied when an event is built (characters, and entries of ``details``)."""

    text: int = 4096
    detail_keys: int = 64
    detail_key: int = 128

    def __post_init__(self) -> None:
        if min(self.text, self.detail_keys, self.detail_key) < 16:
            raise ValueError("event limits below 16 are refused")


DEFAULT_EVENT_LIMITS: Final = EventLimits()


class Event(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One exportable fact, the same for alerts and audit entries.

    ``id`` is the alert's id, or ``<log id>:<index>`` for an audit entry
    (``index`` is then the entry's index in its Merkle log). ``tenant_id`` is
    ``None`` for MSP-wide alerts and for the server log. ``time`` is seconds
    since the epoch (an alert's last occurrence, an entry's append time).
    """

    source: Source
    id: str
    time: float
    kind: str
    severity: Severity
    actor: str
    subject: str
    tenant_id: str | None = None
    tenant_name: str | None = None
    index: int | None = None
    details: dict[str, Scalar] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown event source {self.source!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown event severity {self.severity!r}")
        if not (isinstance(self.time, int | float) and math.isfinite(self.time)
                and 0.0 <= self.time <= MAX_TIME):
            raise ValueError("event time must be finite, from 1970 to 9999")
        if self.index is not None and self.index < 0:
            raise ValueError("event index must not be negative")


class AlertLike(Protocol):
    """What :func:`from_alert` reads: the columns of ``models.AlertRow``."""

    @property
    def id(self) -> str: ...
    @property
    def tenant_id(self) -> str | None: ...
    @property
    def kind(self) -> str: ...
    @property
    def severity(self) -> str: ...
    @property
    def dedup_key(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def detail(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def count(self) -> int: ...
    @property
    def first_seen(self) -> float: ...
    @property
    def last_seen(self) -> float: ...
    @property
    def acked_by(self) -> str | None: ...
    @property
    def acked_at(self) -> float | None: ...
    @property
    def resolved_by(self) -> str | None: ...
    @property
    def resolved_at(self) -> float | None: ...


class AuditEntryLike(Protocol):
    """What :func:`from_audit` reads: the columns of ``models.AuditEntry``."""

    @property
    def log_id(self) -> str: ...
    @property
    def idx(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def time(self) -> float: ...
    @property
    def data(self) -> bytes: ...


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _time(value: float) -> float:
    """A time the formatters can render; a corrupt one becomes 0 (1970) rather than an error."""
    try:
        t = float(value)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return t if math.isfinite(t) and 0.0 <= t <= MAX_TIME else 0.0


def _scalar(value: Any, limits: EventLimits) -> Scalar:
    """A details value: scalars kept, anything nested as compact JSON text, all bounded."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else _clip(str(value), 64)
    if isinstance(value, float):
        return value
    if isinstance(value, str):
        return _clip(value, limits.text)
    try:
        text = json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
    except (TypeError, ValueError, RecursionError):
        text = "<unrepresentable>"
    return _clip(text, limits.text)


def _details(raw: Mapping[Any, Any], limits: EventLimits) -> dict[str, Scalar]:
    out: dict[str, Scalar] = {}
    for n, (key, value) in enumerate(raw.items()):
        if n >= limits.detail_keys:
            out["_dropped"] = len(raw) - n
            break
        out[_clip(str(key), limits.detail_key)] = _scalar(value, limits)
    return out


def _severity(value: str) -> Severity:
    """An alert's stored severity; one this code does not know is shown as a warning, not hidden."""
    for known in SEVERITIES:
        if value == known:
            return known
    return "warning"


def from_alert(row: AlertLike, *, tenant_name: str | None = None,
               limits: EventLimits = DEFAULT_EVENT_LIMITS) -> Event:
    """The event of an alert in its current state (open, acknowledged or resolved).

    The actor is who acknowledged or resolved it, else the server. ``time`` is
    the last occurrence; the first, the count and the lifecycle are details.
    """
    if row.status == "resolved" and row.resolved_by:
        actor = row.resolved_by
    elif row.status == "acknowledged" and row.acked_by:
        actor = row.acked_by
    else:
        actor = SERVER_ACTOR
    raw: dict[str, Any] = {
        "status": row.status, "count": row.count, "dedup_key": row.dedup_key,
        "detail": row.detail, "first_seen": _time(row.first_seen),
    }
    if row.severity not in SEVERITIES:
        raw["stored_severity"] = row.severity
    if row.acked_by is not None:
        raw["acked_by"] = row.acked_by
    if row.acked_at is not None:
        raw["acked_at"] = _time(row.acked_at)
    if row.resolved_by is not None:
        raw["resolved_by"] = row.resolved_by
    if row.resolved_at is not None:
        raw["resolved_at"] = _time(row.resolved_at)
    return Event(
        source="alert", id=_clip(row.id, limits.text), time=_time(row.last_seen),
        kind=_clip(row.kind, limits.text), severity=_severity(row.severity),
        actor=_clip(actor, limits.text), subject=_clip(row.subject, limits.text),
        tenant_id=row.tenant_id, tenant_name=tenant_name, details=_details(raw, limits),
    )


def _event_doc(data: bytes) -> dict[str, Any] | None:
    """The decoded event entry, or None unless ``data`` is exactly the event shape."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or set(doc) != {"kind", "time", "actor", "details"}:
        return None
    if not isinstance(doc["actor"], str) or not isinstance(doc["details"], dict):
        return None
    return doc


def from_audit(entry: AuditEntryLike, *, tenant_id: str | None, tenant_name: str | None = None,
               limits: EventLimits = DEFAULT_EVENT_LIMITS) -> Event:
    """The event of one audit log entry.

    ``tenant_id`` is the tenant whose log holds the entry (``None`` for the
    server log). Event entries are decoded; envelopes and anything else that
    is not exactly an event entry are described by kind, size and SHA-256.
    """
    kind = _clip(entry.kind, limits.text)
    severity = AUDIT_SEVERITY.get(entry.kind, "info")
    doc = None if entry.kind in ENVELOPE_KINDS else _event_doc(entry.data)
    if doc is None:
        digest = hashlib.sha256(entry.data).hexdigest()
        opaque: dict[str, Scalar] = {"sha256": digest, "size": len(entry.data)}
        if entry.kind in ENVELOPE_KINDS:
            subject = f"{kind}: signed envelope sha256:{digest[:16]}"
        else:
            opaque["error"] = "entry is not an event record"
            subject = f"{kind}: undecodable entry sha256:{digest[:16]}"
            severity = "warning"
        actor, details = "-", opaque
    else:
        actor = _clip(doc["actor"], limits.text) or "-"
        details = _details(doc["details"], limits)
        if doc["kind"] != entry.kind:
            details["recorded_kind"] = _scalar(doc["kind"], limits)
        subject = f"{kind} by {actor}"
    return Event(
        source="audit", id=_clip(f"{entry.log_id}:{entry.idx}", limits.text), index=entry.idx,
        time=_time(entry.time), kind=kind, severity=severity, actor=actor,
        subject=_clip(subject, limits.text), tenant_id=tenant_id, tenant_name=tenant_name,
        details=details,
    )
