"""Alerts before a tenant's root expires (issue 11, finding 7).

Agents refuse every job once the newest root of their tenant has expired
(the root must be current), so an expiry nobody saw coming stops a whole
customer. The server cannot renew a root (it holds no owner key); it warns
the people who can, through the alert channels they already watch:

* ``root-expiring`` at 90 and 30 days before expiry (warning) and at 7 days
  (critical); ``root-expired`` once it has passed (critical);
* one alert per (tenant, root version, stage), so each stage is told once
  and a renewed root starts afresh;
* when a newer root is published, the live expiry alerts of older versions
  are resolved by ``rampart`` (the renewal answered them).

Invariant: the expiry read here comes from a root that passed
:func:`rampart.server.tenant_roots.check_publishable` when it was stored;
nothing a device reports takes part.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import alerts
from .alerts import AlertSpec, Severity
from .db import Store
from .models import AlertRow, RootVersion
from .tenant_roots import trusted_from_store

DAY = 86400
#: Days before expiry at which an alert opens, nearest first, with its severity.
STAGES: tuple[tuple[int, Severity], ...] = ((7, "critical"), (30, "warning"), (90, "warning"))
KINDS = ("root-expiring", "root-expired")


def stage_of(expires: float, now: float) -> tuple[str, str, Severity] | None:
    """(kind, stage name, severity) of a root expiring at ``expires``; None beyond 90 days."""
    if expires <= now:
        return "root-expired", "expired", "critical"
    left = expires - now
    for days, severity in STAGES:
        if left <= days * DAY:
            return "root-expiring", f"{days}d", severity
    return None


def expiry_alert(tenant_id: str, name: str, version: int, expires: float,
                 now: float) -> AlertSpec | None:
    """The alert one tenant's newest root calls for now, if any (built from known values only)."""
    stage = stage_of(expires, now)
    if stage is None:
        return None
    kind, label, severity = stage
    when = dt.datetime.fromtimestamp(expires, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if kind == "root-expired":
        subject = f"root v{version} of {name} has expired: agents refuse every job"
    else:
        days = max(0, int((expires - now) // DAY))
        subject = f"root v{version} of {name} expires in {days} days"
    detail = (f"{subject} ({when}). An owner renews it on their own machine with "
              f"`rampart root renew {tenant_id}`; the server cannot.")
    return AlertSpec(kind, severity, f"{tenant_id}:v{version}:{label}", subject, detail)


def check_tenant(s: Session, tenant_id: str, now: float) -> AlertRow | None:
    """Raise the alert the tenant's newest root calls for; resolve those of older versions."""
    row = s.scalars(select(RootVersion).where(RootVersion.tenant_id == tenant_id)
                    .order_by(RootVersion.version.desc()).limit(1)).first()
    if row is None:
        return None
    root = trusted_from_store(row.envelope).root
    spec = expiry_alert(tenant_id, root.name, root.version, root.expires, now)
    for old in s.scalars(select(AlertRow).where(
            AlertRow.tenant_id == tenant_id, AlertRow.kind.in_(KINDS),
            AlertRow.status.in_(alerts.LIVE))):
        if spec is None or old.dedup_key != spec.key:  # renewed, or a nearer stage took over
            alerts.resolve(old, "rampart", now)
    if spec is None:
        return None
    seen = s.scalars(select(AlertRow).where(AlertRow.tenant_id == tenant_id,
                                            AlertRow.dedup_key == spec.key).limit(1)).first()
    if seen is not None:  # told once per stage, even if someone resolved it meanwhile
        if seen.status in alerts.LIVE:
            seen.last_seen = now
        return seen
    return alerts.raise_many(s, tenant_id, None, [spec], now)[spec.key]


def sweep(store: Store, now: float) -> int:
    """Check every tenant with a root; returns how many alerts are live for expiring roots."""
    with store.transaction() as s:
        tenants = list(s.scalars(select(RootVersion.tenant_id).distinct()))
    live = 0
    for tid in tenants:  # a transaction each: one tenant's trouble never holds the others
        with store.transaction() as s:
            live += check_tenant(s, tid, now) is not None
    return live
