"""Benchmark: the server's scheduler at fleet scale (issue 6, scheduled work).

A real store (SQLite file, the server's own migrations) with one tenant whose
root names an owner, two approvers and the tenant's automation key, 1,000
devices, five pending updates each (one security), a patch policy with a
100-device pilot ring and a broad ring naming a 900-device group (expanded
by the scheduler at every step), and a standing grant for
``os-update`` on every device signed by both approvers. Measured, with the
server's own code:

* ``cycle_start``: one :meth:`PatchScheduler.step` that starts a cycle and
  signs, checks (the server's ``check_job``) and logs the pilot ring's job for
  100 devices;
* ``broad_ring``: the step that starts the 900-device broad ring once the
  pilot's receipts are in (receipts are marked directly: what is measured is
  the scheduler, not the agents);
* ``report``: ``patch report`` over the 1,000 devices;
* ``placement_check``: the check that runs after every group or policy
  change (no device in two rings), over the 1,000 devices.

    PYTHONPATH=.:tests python bench/schedule_bench.py [out.json]   # default bench/results/schedule.json
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from harness.scheduling import automation_tenant  # noqa: E402

from rampart.server.audit import AuditLog  # noqa: E402
from rampart.server.automation import AutomationKeyStore  # noqa: E402
from rampart.server.db import Store, migrate  # noqa: E402
from rampart.server.keystore import LogKeyStore  # noqa: E402
from rampart.server.models import DeviceGroup, DeviceGroupMember, JobTarget, PatchPolicy, PatchRun  # noqa: E402
from rampart.server.patching import PatchScheduler, check_placement, latest_cycle, report  # noqa: E402
from rampart.trust import new_id  # noqa: E402

N_DEVICES = 1000
PILOT = 100


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timed(fn: Any) -> tuple[dict[str, float], Any]:
    c0, t0 = _cpu(), time.perf_counter()
    value = fn()
    return {"wall_s": round(time.perf_counter() - t0, 4), "cpu_s": round(_cpu() - c0, 4)}, value


def build(base: Path) -> tuple[Store, AuditLog, AutomationKeyStore, str, str]:
    keys_dir = base / "keys"
    keys_dir.mkdir(mode=0o700)
    store = Store(f"sqlite:///{base / 'rampart.db'}")
    migrate(store.engine)
    audit = AuditLog(store, LogKeyStore(keys_dir))
    automation = AutomationKeyStore(keys_dir)
    now = time.time()
    devices = [f"dev-{secrets.token_hex(12)}" for _ in range(N_DEVICES)]
    tenant = automation_tenant(store, audit, automation, devices, updates_per_device=5, now=now)
    tid = tenant.tenant_id
    with store.transaction() as s:
        tenant.grant(s, devices, now)
        group = DeviceGroup(id=new_id("dg"), tenant_id=tid, name="broad", description="", created_by="bench",
                            created_at=now, updated_at=now)
        s.add(group)
        s.flush()
        s.add_all(DeviceGroupMember(group_id=group.id, device_id=d) for d in devices[PILOT:])
        rings = [{"name": "pilot", "devices": devices[:PILOT], "delay_s": 0},
                 {"name": "broad", "devices": [], "groups": ["broad"], "delay_s": 0}]
        s.add(PatchPolicy(id=new_id("pp"), tenant_id=tid, name="fleet", rings=json.dumps(rings),
                          window="", defer_s=0, reboot="never", timeout_s=1800, enabled=True,
                          created_by="bench", created_at=now, updated_at=now))
    return store, audit, automation, tid, "fleet"


def main() -> None:
    out_path = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "bench" / "results" / "schedule.json")
    with tempfile.TemporaryDirectory(prefix="rampart-schedule-bench-") as tmp:
        store, audit, automation, tid, name = build(Path(tmp))
        sched = PatchScheduler(automation, audit)

        def step() -> set[str]:
            with store.transaction() as s:
                policy = s.query(PatchPolicy).filter_by(tenant_id=tid, name=name).one()
                return sched.step(s, policy, time.time())

        start, woken = _timed(step)
        assert len(woken) == PILOT, woken
        with store.transaction() as s:  # the pilot's receipts, as if the agents had answered
            cycle = s.query(PatchPolicy).filter_by(tenant_id=tid).one()
            c = latest_cycle(s, cycle.id)
            assert c is not None
            for run in s.query(PatchRun).filter_by(cycle_id=c.id):
                run.state, run.finished_at = "ok", time.time()
            s.query(JobTarget).update({"state": "done"})
        step()  # concludes the pilot ring
        broad, woken = _timed(step)
        assert len(woken) == N_DEVICES - PILOT, len(woken)

        def make_report() -> dict[str, Any]:
            with store.read() as s:
                return report(s, tid, 7 * 86400, time.time())

        rep, doc = _timed(make_report)
        assert doc["devices_missing"] == N_DEVICES

        def placement() -> None:
            with store.read() as s:
                check_placement(s, tid)

        placed, _ = _timed(placement)
        store.dispose()
    result = {"devices": N_DEVICES, "pilot": PILOT, "cycle_start_pilot_100": start,
              "broad_ring_900_by_group": broad, "report_1000": rep, "placement_check_1000": placed,
              "cpus": os.cpu_count()}
    text = json.dumps(result, indent=2)
    print(text)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text + "\n")


if __name__ == "__main__":
    main()
