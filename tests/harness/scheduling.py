"""A tenant ready for the patch scheduler, written straight into the server's real store.

Used by the scheduler's store-level tests and by ``bench/schedule_bench.py``:
a published root naming an owner, two approvers and the tenant's automation
key, a log, approved devices with pending updates, and standing grants
signed by both approvers. No server process: the code under test is the
server's own scheduler on a real SQLite or PostgreSQL store.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from sqlalchemy.orm import Session

from rampart import trust
from rampart.server.audit import AuditLog
from rampart.server.automation import AutomationKeyStore
from rampart.server.db import Store
from rampart.server.models import Device, GrantRow, PendingUpdateRow, RootVersion, Tenant
from rampart.trust import (
    GRANT_TYPE,
    ROOT_TYPE,
    KeyEntry,
    OperatorKey,
    Roles,
    RoleSpec,
    TenantRoot,
    new_grant_id,
    new_tenant_id,
)


@dataclass
class AutomationTenant:
    tenant_id: str
    devices: list[str]
    approvers: tuple[OperatorKey, OperatorKey]
    automation_key: str

    def grant(self, s: Session, devices: list[str], now: float, action: str = "os-update") -> str:
        """Store a standing grant for the automation key, signed by both approvers; returns its id."""
        grant = trust.Grant(id=new_grant_id(), tenant=self.tenant_id, grantee=self.automation_key,
                            devices=devices, capabilities=["patch"], actions=[action],
                            not_before=int(now) - 60, not_after=int(now) + 7 * 86400, reason="standing",
                            requested_by="tech")
        env = trust.sign_envelope(GRANT_TYPE, trust.encode_payload(grant), list(self.approvers)).to_bytes()
        s.add(GrantRow(id=grant.id, tenant_id=self.tenant_id, grantee=self.automation_key,
                       requested_by="tech", envelope=env, created_at=now, not_after=grant.not_after))
        return grant.id


def automation_tenant(store: Store, audit: AuditLog, automation: AutomationKeyStore, devices: list[str], *,
                      updates_per_device: int = 1, now: float | None = None) -> AutomationTenant:
    """Create the tenant, its root and log, and ``devices`` (approved, each with pending updates;
    the first update of each is a security update pending for ten days)."""
    now = time.time() if now is None else now
    tid = new_tenant_id()
    auto = automation.ensure(tid)
    owner, a1, a2 = OperatorKey.generate(), OperatorKey.generate(), OperatorKey.generate()
    with store.transaction() as s:
        s.add(Tenant(id=tid, name="acme", created_at=now))
        s.flush()
        log_pub = trust.LogPublicKey.from_text(audit.create_log(s, tid))
        keys = {k.key_id: KeyEntry(public=k.public.to_b64(), name=k.key_id[:8]) for k in (owner, a1, a2)}
        keys[auto.key_id] = KeyEntry(public=auto.public.to_b64(), name="server-automation")
        root = TenantRoot(tenant=tid, name="acme", version=1, expires=int(now) + 86400, keys=keys,
                          roles=Roles(owner=RoleSpec(keyids=[owner.key_id]),
                                      approver=RoleSpec(keyids=sorted([a1.key_id, a2.key_id])),
                                      automation=RoleSpec(keyids=[auto.key_id])),
                          log_keys={log_pub.key_id: log_pub.to_b64()})
        env = trust.sign_envelope(ROOT_TYPE, trust.encode_payload(root), [owner]).to_bytes()
        s.add(RootVersion(tenant_id=tid, version=1, sha256=hashlib.sha256(env).hexdigest(), envelope=env,
                          published_at=now))
        for i, d in enumerate(devices):
            s.add(Device(id=d, tenant_id=tid, public_key="", hostname=f"host-{i:04d}", agent_version="test",
                         status="approved", enrolled_at=now, approved_at=now, approved_by="approver",
                         last_seen=now))
        s.flush()
        for d in devices:
            for j in range(updates_per_device):
                s.add(PendingUpdateRow(device_id=d, name=f"pkg-{j}", arch="amd64", candidate="2.0",
                                       security=j == 0, first_seen=now - 10 * 86400,
                                       security_since=now - 10 * 86400 if j == 0 else None))
    return AutomationTenant(tid, devices, (a1, a2), auto.key_id)
