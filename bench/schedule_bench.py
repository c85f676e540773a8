"""Benchmark: the server's scheduler at fleet scale (issue 6, scheduled work).

A real store (SQLite file, the server's own migrations) with one tenant whose
root names an owner, two approvers and the tenant's automation key, 1,000
devices, five pending updates each (one security), a patch policy with a
100-device pilot ring and a broad ring naming a 900-device group (expanded
by the scheduler at every step), and a standing grant for
``os-update`` on every device signed by both approvers. Measured, with the
server's own code:

* ``cycle_start``: one :meth:`PatchScheduler.step` that starts a cycle and
  signs, checks (the API's ``check_job``) and logs the pilot ring's job for
  100 devices;
* ``broad_ring``: the step that starts the 900-device broad ring once the
  pilot's receipts are in (receipts are marked directly: what is measured is
  the scheduler, not the agents);
* ``report``: ``patch report`` over the 1,000 devices;
* ``placement_check``: the check that runs after every group or policy
  change (no device in two rings), over the 1,000 devices.

    PYTHONPATH=. python bench/schedule_bench.py [out.json]   # default bench/results/schedule.json
"""

from __future__ import annotations

import hashlib
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
sys.path[:0] = [str(ROOT)]

from rampart import trust  # noqa: E402
from rampart.server.audit import AuditLog  # noqa: E402
from rampart.server.automation import AutomationKeyStore  # noqa: E402
from rampart.server.db import Store, migrate  # noqa: E402
from rampart.server.keystore import LogKeyStore  # noqa: E402
from rampart.server.models import (  # noqa: E402
    Device,
    DeviceGroup,
    DeviceGroupMember,
    GrantRow,
    JobTarget,
    PatchPolicy,
    PatchRun,
    PendingUpdateRow,
    RootVersion,
    Tenant,
)
from rampart.server.patching import PatchScheduler, check_placement, latest_cycle, report  # noqa: E402
from rampart.trust import KeyEntry, OperatorKey, Roles, RoleSpec, TenantRoot  # noqa: E402
from rampart.trust.ids import new_grant_id, new_id, new_tenant_id  # noqa: E402
from rampart.trust.payloads import GRANT_TYPE, ROOT_TYPE  # noqa: E402

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
    tid = new_tenant_id()
    auto = automation.ensure(tid)
    owner, a1, a2 = OperatorKey.generate(), OperatorKey.generate(), OperatorKey.generate()
    now = time.time()
    devices = [f"dev-{secrets.token_hex(12)}" for _ in range(N_DEVICES)]
    with store.transaction() as s:
        s.add(Tenant(id=tid, name="bench", created_at=now))
        s.flush()
        log_text = audit.create_log(s, tid)
        log_pub = trust.LogPublicKey.from_text(log_text)
        everyone = {k.key_id: KeyEntry(public=k.public.to_b64(), name=k.key_id[:8]) for k in (owner, a1, a2)}
        everyone[auto.key_id] = KeyEntry(public=auto.public.to_b64(), name="server-automation")
        root = TenantRoot(tenant=tid, name="bench", version=1, expires=int(now) + 86400, keys=everyone,
                          roles=Roles(owner=RoleSpec(keyids=[owner.key_id]),
                                      approver=RoleSpec(keyids=sorted([a1.key_id, a2.key_id])),
                                      automation=RoleSpec(keyids=[auto.key_id])),
                          log_keys={log_pub.key_id: log_pub.to_b64()})
        env = trust.sign_envelope(ROOT_TYPE, trust.encode_payload(root), [owner]).to_bytes()
        s.add(RootVersion(tenant_id=tid, version=1, sha256=hashlib.sha256(env).hexdigest(), envelope=env,
                          published_at=now))
        for i, d in enumerate(devices):
            s.add(Device(id=d, tenant_id=tid, public_key="", hostname=f"host-{i:04d}", agent_version="bench",
                         status="approved", enrolled_at=now, approved_at=now, approved_by="bench",
                         last_seen=now))
        s.flush()
        for d in devices:
            for j in range(5):
                s.add(PendingUpdateRow(device_id=d, name=f"pkg-{j}", arch="amd64", candidate="2.0",
                                       security=j == 0, first_seen=now - 10 * 86400,
                                       security_since=now - 10 * 86400 if j == 0 else None))
        grant = trust.Grant(id=new_grant_id(), tenant=tid, grantee=auto.key_id, devices=devices,
                            capabilities=["patch"], actions=["os-update"], not_before=int(now) - 60,
                            not_after=int(now) + 7 * 86400, reason="bench", requested_by="bench")
        genv = trust.sign_envelope(GRANT_TYPE, trust.encode_payload(grant), [a1, a2]).to_bytes()
        s.add(GrantRow(id=grant.id, tenant_id=tid, grantee=auto.key_id, requested_by="bench", envelope=genv,
                       created_at=now, not_after=grant.not_after))
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
