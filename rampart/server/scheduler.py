"""The scheduler tick: pending-update ages, patch cycles, due backups, backup alerts.

One pass (:meth:`Scheduler.run_once`) runs every ``scheduler_interval_s``;
each step commits in its own transaction so one broken policy cannot stop the
others, and a pass repeated after a crash does no harm (cycles and runs are
rows; a job is stored in the same transaction that records it in a run).
Jobs made here are signed with the tenant's automation key and stored through
the API's own checks (rampart/server/automation.py).
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from .audit import AuditLog
from .automation import AutomationKeyStore
from .backups import BackupScheduler, collect_results
from .db import Store
from .gateway import Gateway
from .models import Device, PatchPolicy
from .patching import PatchScheduler, reboot_notices, refresh_pending

log = logging.getLogger("rampart.server.scheduler")


class Scheduler:
    def __init__(self, store: Store, audit: AuditLog, keys: AutomationKeyStore, gateway: Gateway) -> None:
        self._store = store
        self._audit = audit
        self._gateway = gateway
        self._patch = PatchScheduler(keys, audit)
        self._backup = BackupScheduler(keys, audit)

    def run_once(self, now: float) -> None:
        telemetry = self._gateway.telemetry
        if telemetry is not None:
            refresh_pending(self._store, telemetry, now)
        with self._store.transaction() as s:
            collect_results(s, now)
        with self._store.transaction() as s:
            ids = list(s.scalars(select(PatchPolicy.id).order_by(PatchPolicy.id)))
        woken: set[str] = set()
        for policy_id in ids:
            try:
                with self._store.transaction() as s:
                    policy = s.get(PatchPolicy, policy_id)
                    if policy is None:
                        continue
                    woken |= self._patch.step(s, policy, now)
            except Exception:
                log.exception("patch policy %s: scheduling step failed", policy_id)
        with self._store.transaction() as s:
            reboot_notices(s, now)
        with self._store.transaction() as s:
            woken |= self._backup.trigger_due(s, now)
        with self._store.transaction() as s:
            self._backup.alerts(s, now)
            tenants = set(s.scalars(select(Device.tenant_id).where(Device.id.in_(woken)))) if woken else set()
        for tenant_id in sorted(tenants):  # new jobs are covered by a checkpoint before agents are woken
            self._audit.sign_checkpoint(tenant_id, now)
        if woken:
            self._gateway.wake(woken)
