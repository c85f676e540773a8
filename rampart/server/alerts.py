"""Alerts: stored, de-duplicated, with a lifecycle (open → acknowledged → resolved).

An alert with the same (tenant, dedup key) as one still open or acknowledged
is not stored twice: its count and last-seen time grow instead. A new alert
is queued for every matching notification target in the same transaction
(:func:`enqueue`; :mod:`.notifier` delivers). Who
acknowledged or resolved it, and when, is kept. Alerts of MSP-wide concern
(an MSP-wide account locked out, say) have no tenant and are visible to
MSP-wide staff only.

Invariant: ``subject`` and ``detail`` are built by the server from known
values (names, counts, addresses); they never carry a secret.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from rampart.trust import new_id

from .errors import Conflict
from .models import AlertRow, Delivery, IncidentNotice, NotifyTarget, ServiceStatement

Severity = Literal["info", "warning", "critical"]
LIVE = ("open", "acknowledged")
MAX_DETAIL = 2000


#: Order of alert severities; a notification target takes alerts at or above its ``min_severity``.
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


def _rank(severity: str) -> int:
    return SEVERITY_RANK.get(severity, 1)


def enqueue(s: Session, alert: AlertRow, now: float) -> int:
    """Queue a new alert for every matching target (same transaction); return how many."""
    targets = s.scalars(select(NotifyTarget).where(
        or_(NotifyTarget.tenant_id.is_(None), NotifyTarget.tenant_id == alert.tenant_id)
        if alert.tenant_id is not None else NotifyTarget.tenant_id.is_(None)))
    queued = 0
    for t in targets:
        if _rank(alert.severity) < _rank(t.min_severity):
            continue
        exists = s.scalars(select(Delivery.id).where(
            Delivery.target_id == t.id, Delivery.alert_id == alert.id,
            Delivery.alert_count == alert.count).limit(1)).first()
        if exists is None:
            s.add(Delivery(target_id=t.id, alert_id=alert.id, alert_count=alert.count,
                           state="pending", attempts=0, next_attempt_at=now, last_detail="",
                           created_at=now))
            queued += 1
    return queued


def raise_alert(s: Session, tenant_ids: Iterable[str | None], *, kind: str, severity: Severity,
                dedup: str, subject: str, detail: str, now: float,
                device_id: str | None = None) -> list[AlertRow]:
    """Open (or re-count) one alert per tenant; ``None`` means the MSP-wide scope.

    ``device_id`` names the one device the alert is about, if any: listings
    cap how many alerts one device shows (docs/alerts.md), so a device that
    floods its own alerts never pushes another device's out of view.
    """
    out: list[AlertRow] = []
    for tenant_id in dict.fromkeys(tenant_ids):
        key = f"{kind}:{dedup}"[:256]
        row = s.scalars(select(AlertRow).where(
            AlertRow.dedup_key == key, AlertRow.status.in_(LIVE),
            AlertRow.tenant_id.is_(None) if tenant_id is None else AlertRow.tenant_id == tenant_id,
        ).limit(1)).first()
        if row is not None:
            row.count += 1
            row.last_seen = now
            row.detail = detail[:MAX_DETAIL]
            if row.device_id is None:  # opened before alerts named their device (migration 0008)
                row.device_id = device_id
        else:
            row = AlertRow(id=new_id("al"), tenant_id=tenant_id, device_id=device_id, kind=kind,
                           severity=severity, dedup_key=key, subject=subject[:256],
                           detail=detail[:MAX_DETAIL], status="open", count=1, first_seen=now, last_seen=now)
            s.add(row)
            s.flush()
            enqueue(s, row, now)  # delivered by the notifier; queued with the alert itself
            if tenant_id is not None:
                record_notices(s, tenant_id, [row], now)
        out.append(row)
    s.flush()
    return out


@dataclass(frozen=True, slots=True)
class AlertSpec:
    """One alert for :func:`raise_many`: what :func:`raise_alert` takes, for one tenant and device."""

    kind: str
    severity: Severity
    dedup: str
    subject: str
    detail: str

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.dedup}"[:256]


def live_by_key(s: Session, tenant_id: str, keys: Iterable[str]) -> dict[str, AlertRow]:
    """The tenant's live alerts with these dedup keys, in a few queries (not one per key)."""
    wanted = sorted(set(keys))
    out: dict[str, AlertRow] = {}
    for i in range(0, len(wanted), 500):
        for row in s.scalars(select(AlertRow).where(
                AlertRow.tenant_id == tenant_id, AlertRow.dedup_key.in_(wanted[i:i + 500]),
                AlertRow.status.in_(LIVE))):
            out.setdefault(row.dedup_key, row)
    return out


def raise_many(s: Session, tenant_id: str, device_id: str | None, specs: Sequence[AlertSpec],
               now: float) -> dict[str, AlertRow]:
    """:func:`raise_alert` for many alerts of one tenant and device, set-based (a flood's cost is bounded
    by statements per report, not per alert); returns the rows by dedup key."""
    live = live_by_key(s, tenant_id, (sp.key for sp in specs))
    new: list[AlertRow] = []
    for sp in specs:
        row = live.get(sp.key)
        if row is not None:
            row.count += 1
            row.last_seen = now
            row.detail = sp.detail[:MAX_DETAIL]
            continue
        row = AlertRow(id=new_id("al"), tenant_id=tenant_id, device_id=device_id, kind=sp.kind,
                       severity=sp.severity, dedup_key=sp.key, subject=sp.subject[:256],
                       detail=sp.detail[:MAX_DETAIL], status="open", count=1, first_seen=now, last_seen=now)
        new.append(row)
        live[sp.key] = row
    s.add_all(new)
    s.flush()
    enqueue_new(s, tenant_id, new, now)
    record_notices(s, tenant_id, new, now)
    return live


def record_notices(s: Session, tenant_id: str, alerts: Sequence[AlertRow], now: float) -> int:
    """For each critical alert just opened in a tenant whose service statement names a contact target,
    an :class:`IncidentNotice` with the deadline in force now (C1, M7); return how many.

    Same transaction as the alert and its deliveries: the contact target's delivery is queued by
    :func:`enqueue` (a critical alert reaches every target), and the notifier sets ``notified_at``
    when that delivery succeeds (:func:`notice_delivered`)."""
    critical = [a for a in alerts if a.severity == "critical"]
    if not critical:
        return 0
    st = s.get(ServiceStatement, tenant_id)
    if st is None or st.contact_target is None:
        return 0
    for a in critical:
        s.add(IncidentNotice(alert_id=a.id, tenant_id=tenant_id, target_id=st.contact_target, kind=a.kind,
                             subject=a.subject[:256], opened_at=now, deadline_s=st.deadline_s,
                             notified_at=None))
    s.flush()
    return len(critical)


def notice_delivered(s: Session, target_id: str, alert_id: str, when: float) -> None:
    """The notifier delivered ``alert_id`` to ``target_id``: the alert's incident notice, if that is its
    contact target and it was not notified before, is notified now."""
    row = s.get(IncidentNotice, alert_id)
    if row is not None and row.target_id == target_id and row.notified_at is None:
        row.notified_at = when


def enqueue_new(s: Session, tenant_id: str, alerts: Sequence[AlertRow], now: float) -> int:
    """Queue alerts just opened in one tenant (count 1, never queued before): the targets are read once.

    Same rule as :func:`enqueue`: every target of the
    tenant or MSP-wide whose minimum severity the alert reaches."""
    if not alerts:
        return 0
    targets = list(s.scalars(select(NotifyTarget).where(
        or_(NotifyTarget.tenant_id.is_(None), NotifyTarget.tenant_id == tenant_id))))
    rows = [Delivery(target_id=t.id, alert_id=a.id, alert_count=a.count, state="pending", attempts=0,
                     next_attempt_at=now, last_detail="", created_at=now)
            for a in alerts for t in targets
            if SEVERITY_RANK.get(a.severity, 1) >= SEVERITY_RANK.get(t.min_severity, 1)]
    s.add_all(rows)
    return len(rows)


def acknowledge(row: AlertRow, who: str, now: float) -> None:
    if row.status != "open":
        raise Conflict(f"the alert is {row.status}")
    row.status = "acknowledged"
    row.acked_by = who
    row.acked_at = now


def resolve(row: AlertRow, who: str, now: float) -> None:
    if row.status == "resolved":
        raise Conflict("the alert is already resolved")
    row.status = "resolved"
    row.resolved_by = who
    row.resolved_at = now
