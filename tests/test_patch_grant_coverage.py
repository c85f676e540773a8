"""The patch scheduler and standing-grant coverage, on the server's real store (SQLite or PostgreSQL).

Approvers sign standing grants for explicit devices; a ring may name a device
group that later gains a device no grant covers. That device must not be
patched (the automation key has no authority there), and it must not hold
back the devices approvers did grant: they are patched, the new device waits
with a ``patch-grant-missing`` alert naming it, and the ring completes once it
is covered or leaves the group.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness.scheduling import AutomationTenant, automation_tenant
from sqlalchemy import select
from sqlalchemy.orm import Session

from rampart.server import groups
from rampart.server.audit import AuditLog
from rampart.server.automation import AutomationKeyStore
from rampart.server.db import Store, migrate
from rampart.server.errors import Conflict
from rampart.server.keystore import LogKeyStore
from rampart.server.models import AlertRow, DeviceGroup, JobRow, JobTarget, PatchCycle, PatchPolicy, PatchRun
from rampart.server.patching import GRANT_ALERT, PatchScheduler, check_placement, validate_policy
from rampart.trust import new_id


@dataclass
class Fleet:
    store: Store
    scheduler: PatchScheduler
    tenant: AutomationTenant

    @property
    def devices(self) -> list[str]:
        return self.tenant.devices


@pytest.fixture
def fleet(tmp_path: Path, db_url: str | None) -> Iterator[Fleet]:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir(mode=0o700)
    store = Store(db_url or f"sqlite:///{tmp_path / 'rampart.db'}")
    migrate(store.engine)
    audit = AuditLog(store, LogKeyStore(keys_dir))
    automation = AutomationKeyStore(keys_dir)
    tenant = automation_tenant(store, audit, automation, [f"dev-{i:024x}" for i in range(1, 4)])
    try:
        yield Fleet(store, PatchScheduler(automation, audit), tenant)
    finally:
        store.dispose()


def _policy(s: Session, f: Fleet, rings: list[dict[str, Any]], now: float) -> None:
    s.add(PatchPolicy(id=new_id("pp"), tenant_id=f.tenant.tenant_id, name="web", rings=json.dumps(rings),
                      window="", defer_s=0, reboot="never", timeout_s=1800, enabled=True,
                      created_by="tech", created_at=now, updated_at=now))


def _step(f: Fleet) -> set[str]:
    with f.store.transaction() as s:
        policy = s.scalars(select(PatchPolicy).where(PatchPolicy.tenant_id == f.tenant.tenant_id)).one()
        return f.scheduler.step(s, policy, time.time())


def _runs(f: Fleet) -> dict[str, PatchRun]:
    with f.store.read() as s:
        return {r.device_id: r for r in s.scalars(select(PatchRun))}


def _grant_alerts(f: Fleet, status: str) -> list[AlertRow]:
    with f.store.read() as s:
        q = select(AlertRow).where(AlertRow.kind == GRANT_ALERT, AlertRow.status == status)
        return list(s.scalars(q))


def test_T1_a_device_added_to_a_group_is_not_patched_without_a_grant_and_holds_no_one_back(
        fleet: Fleet) -> None:
    d0, d1, d2 = fleet.devices
    now = time.time()
    with fleet.store.transaction() as s:
        fleet.tenant.grant(s, [d0, d1], now)  # approvers granted the two web servers of the day
        group = DeviceGroup(id=new_id("dg"), tenant_id=fleet.tenant.tenant_id, name="web", description="",
                            created_by="tech", created_at=now, updated_at=now)
        s.add(group)
        s.flush()
        groups.set_members(s, group, [d0, d1, d2])  # a third server joined the group since
        rings = [{"name": "all", "devices": [], "groups": ["web"], "delay_s": 0}]
        _policy(s, fleet, rings, now)

    assert _step(fleet) == {d0, d1}
    runs = _runs(fleet)
    assert runs[d0].state == runs[d1].state == "pending" and runs[d0].job_id == runs[d1].job_id
    assert runs[d2].state == "waiting" and runs[d2].job_id is None
    assert "no approved standing grant for os-update covers " + d2 in runs[d2].detail
    with fleet.store.read() as s:  # one signed job, for exactly the granted devices
        [job] = s.scalars(select(JobRow)).all()
        assert sorted(s.scalars(select(JobTarget.device_id).where(JobTarget.job_id == job.id))) == [d0, d1]
    [alert] = _grant_alerts(fleet, "open")
    assert d2 in alert.detail and d0 not in alert.detail
    # Ticks go by: still no job for the uncovered device, and no second alert.
    assert _step(fleet) == set() and _runs(fleet)[d2].state == "waiting"
    assert len(_grant_alerts(fleet, "open")) == 1

    # The granted devices finish; the ring still waits for the third.
    with fleet.store.transaction() as s:
        for r in s.scalars(select(PatchRun).where(PatchRun.device_id.in_([d0, d1]))):
            r.state, r.finished_at = "ok", time.time()
    _step(fleet)
    with fleet.store.read() as s:
        assert s.scalars(select(PatchCycle)).one().state == "running"

    # The device leaves the group before any grant names it: the ring completes, the alert resolves.
    with fleet.store.transaction() as s:
        groups.set_members(s, s.scalars(select(DeviceGroup)).one(), [d0, d1])
    assert _step(fleet) == set()
    assert _runs(fleet)[d2].state == "left"
    with fleet.store.read() as s:
        assert s.scalars(select(PatchCycle)).one().state == "done"
    assert not _grant_alerts(fleet, "open") and len(_grant_alerts(fleet, "resolved")) == 1


def test_a_grant_approved_later_lets_the_waiting_device_be_patched(fleet: Fleet) -> None:
    d0, d1, _ = fleet.devices
    now = time.time()
    with fleet.store.transaction() as s:
        fleet.tenant.grant(s, [d0], now)
        rings = [{"name": "all", "devices": [d0, d1], "groups": [], "delay_s": 0}]
        _policy(s, fleet, rings, now)
    assert _step(fleet) == {d0}
    assert _runs(fleet)[d1].state == "waiting"
    with fleet.store.transaction() as s:
        fleet.tenant.grant(s, [d1], now)  # the approvers sign a grant for the new device
    assert _step(fleet) == {d1}
    assert _runs(fleet)[d1].state == "pending"
    assert not _grant_alerts(fleet, "open") and len(_grant_alerts(fleet, "resolved")) == 1


def test_concurrent_group_and_policy_changes_cannot_both_pass_the_placement_check(fleet: Fleet) -> None:
    """Write skew: a group change and a policy change, each fine alone, together put d0 in two policies.

    The first transaction holds its (unchecked-by-the-other) change open; the
    second must wait for it and then see it, on PostgreSQL as on SQLite.
    """
    d0, d1, _ = fleet.devices
    now = time.time()
    tid = fleet.tenant.tenant_id
    with fleet.store.transaction() as s:
        group = DeviceGroup(id=new_id("dg"), tenant_id=tid, name="east", description="", created_by="tech",
                            created_at=now, updated_at=now)
        s.add(group)
        s.flush()
        groups.set_members(s, group, [d1])
        _policy(s, fleet, [{"name": "all", "devices": [], "groups": ["east"], "delay_s": 0}], now)
    checked, release = threading.Event(), threading.Event()

    def grow_the_group() -> None:
        with fleet.store.transaction() as s:
            groups.set_members(s, s.scalars(select(DeviceGroup)).one(), [d0, d1])
            check_placement(s, tid)  # passes: no other policy holds d0 yet
            checked.set()
            release.wait(10)

    first = threading.Thread(target=grow_the_group)
    first.start()
    assert checked.wait(10)
    outcome: list[BaseException | None] = []

    def second_policy() -> None:
        try:
            with fleet.store.transaction() as s:
                validate_policy(s, tid, "db", [{"name": "pilot", "devices": [d0]}], window="always",
                                defer_s=0, reboot="never", timeout_s=1800)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the outcome is what the test looks at
            outcome.append(exc)

    second = threading.Thread(target=second_policy)
    second.start()
    second.join(1.0)
    assert second.is_alive(), "the second change must wait for the first one's transaction"
    release.set()
    first.join(10)
    second.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], Conflict), outcome
    assert "policy web" in outcome[0].detail and d0 in outcome[0].detail
