"""The server's automation keys: scheduled, payload-free jobs under standing grants.

Invariants (ARCHITECTURE "Trust chain", docs/trust-chain.md "Automation"):

* The only private key the server holds that agents accept for a job is a
  tenant's *automation* key (``DIR/keys/automation-<tenant>.key``, 0600,
  created with ``O_EXCL``). Agents trust it only once the tenant's owners put
  its public key in the root's ``automation`` role, and the trust core lets it
  sign nothing but payload-free actions (``os-update``, ``backup-run``,
  ``inventory-refresh``: no script, no file, no arguments) that an
  approver-signed standing grant names, for that grant's devices and window.
* :func:`trigger` builds a job only under such a grant, checks it with the
  same :func:`check_job` every API job goes through (what every agent checks
  again), and appends its exact envelope to the tenant's audit log before any
  agent can see it. A compromised server can at most trigger those actions on
  those devices until the grant ends; it can never choose what runs.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from rampart import trust
from rampart.trust import (
    PAYLOAD_FREE_ACTIONS,
    AutomationKey,
    TrustedRoot,
    decode_private_key,
    encode_plain_private_key,
)
from rampart.wire.limits import LISTED_DEVICES_UP_TO

from .audit import AuditLog
from .errors import ServerError
from .jobs import check_job, grant_devices, store_job
from .keystore import write_private_file
from .models import GrantRow

log = logging.getLogger("rampart.server.automation")

#: How long a scheduler job may wait for an offline device before it expires unrun.
JOB_LIFETIME_S = 6 * 3600


class AutomationKeyStore:
    """Creates and loads the per-tenant automation keys in ``DIR/keys`` (0700 directory)."""

    def __init__(self, keys_dir: Path) -> None:
        self._dir = keys_dir
        self._cache: dict[str, AutomationKey] = {}
        self._lock = threading.Lock()

    def _path(self, tenant_id: str) -> Path:
        if not tenant_id.replace("-", "").replace("_", "").isalnum():
            raise ValueError("tenant id is not a file-safe identifier")
        return self._dir / f"automation-{tenant_id}.key"

    def get(self, tenant_id: str) -> AutomationKey | None:
        """The tenant's automation key, or None when none was created."""
        with self._lock:
            key = self._cache.get(tenant_id)
            if key is not None:
                return key
            try:
                data = self._path(tenant_id).read_bytes()
            except FileNotFoundError:
                return None
            loaded = decode_private_key(data, expect_kind="automation")
            assert isinstance(loaded, AutomationKey)
            self._cache[tenant_id] = loaded
            return loaded

    def ensure(self, tenant_id: str) -> AutomationKey:
        """The tenant's automation key, created (0600, never overwritten) on first use."""
        key = self.get(tenant_id)
        if key is not None:
            return key
        with self._lock:
            new = AutomationKey.generate()
            try:
                write_private_file(self._path(tenant_id), encode_plain_private_key(new))
            except FileExistsError:  # another process made it first: use that one
                pass
            else:
                self._cache[tenant_id] = new
                log.info("created the automation key of tenant %s (%s)", tenant_id, new.key_id[:16])
        got = self.get(tenant_id)
        assert got is not None
        return got


@dataclass(frozen=True, slots=True)
class StandingGrant:
    id: str
    devices: frozenset[str]
    not_after: int


def standing_grants(s: Session, trusted: TrustedRoot, tenant_id: str, key_id: str, action: str,
                    now: int) -> list[StandingGrant]:
    """Approved, unrevoked grants for ``key_id`` naming ``action``, valid at ``now`` (newest last)."""
    out: list[StandingGrant] = []
    if key_id not in trusted.automation:
        return out
    rows = s.scalars(select(GrantRow).where(
        GrantRow.tenant_id == tenant_id, GrantRow.grantee == key_id, GrantRow.revoked_at.is_(None),
        GrantRow.not_after > now).order_by(GrantRow.created_at))
    for row in rows:
        try:
            grant = trust.verify_grant(trusted, row.envelope, now=now)
        except trust.TrustError:
            continue  # not (yet) approved, or no longer valid under the current root
        if action in grant.actions and now >= grant.not_before:
            out.append(StandingGrant(grant.id, frozenset(grant_devices(row, grant)), grant.not_after))
    return out


class NoStandingGrant(Exception):
    """No approved standing grant covers these devices for this action; the message says which."""

    @classmethod
    def for_devices(cls, action: str, uncovered: list[str]) -> NoStandingGrant:
        shown = sorted(uncovered)
        return cls(f"no approved standing grant for {action} covers {', '.join(shown[:5])}"
                   + (f" and {len(shown) - 5} more" if len(shown) > 5 else ""))


def trigger(s: Session, audit: AuditLog, key: AutomationKey, trusted: TrustedRoot, tenant_id: str,
            action: str, devices: list[str], *, now: float, timeout_s: int,
            skip_uncovered: bool = False) -> dict[str, list[str]]:
    """Sign and store one job per standing grant covering ``devices``; return job id -> devices.

    Devices no grant covers raise :class:`NoStandingGrant` before anything is
    stored (all or nothing), or with ``skip_uncovered`` are left out of every
    job (the caller finds them missing from the result). The caller commits,
    then signs a checkpoint and wakes the devices.
    """
    if action not in PAYLOAD_FREE_ACTIONS:
        raise ValueError(f"{action} is not a payload-free action")
    t = int(now)
    grants = standing_grants(s, trusted, tenant_id, key.key_id, action, t)
    plan: dict[str, list[str]] = {}
    missing = []
    for device in devices:
        # the grant that lasts longest, so a job never outlives its grant needlessly
        best = max((g for g in grants if device in g.devices), key=lambda g: g.not_after, default=None)
        if best is None:
            missing.append(device)
        else:
            plan.setdefault(best.id, []).append(device)
    if missing and not skip_uncovered:
        raise NoStandingGrant.for_devices(action, missing)
    jobs: dict[str, list[str]] = {}
    for grant_id, members in plan.items():
        not_after = next(g.not_after for g in grants if g.id == grant_id)
        targets: dict[str, Any] = ({"devices": sorted(members)} if len(members) <= LISTED_DEVICES_UP_TO
                                   else {"device_set": trust.commit_devices(members)})
        job = trust.Job(id=trust.new_job_id(), tenant=tenant_id, grant=grant_id, signer=key.key_id,
                        **targets, action=trust.Action(kind=action),  # type: ignore[arg-type]
                        timeout_s=timeout_s, nonce=trust.new_nonce(), issued_at=t,
                        expires_at=min(t + JOB_LIFETIME_S, not_after))
        data = trust.sign_envelope(job.PAYLOAD_TYPE, trust.encode_payload(job), [key]).to_bytes()
        try:
            checked = check_job(s, tenant_id, data, {}, t, listed=sorted(members) if "device_set" in targets
                                else None)
        except ServerError as exc:
            raise NoStandingGrant(f"the scheduler's job would be refused: {exc.detail}") from None
        store_job(s, audit, tenant_id, checked, data, {}, now, account_id=None)
        audit.record(s, [tenant_id], "automation.triggered", "scheduler",
                     {"job": job.id, "action": action, "grant": grant_id, "devices": len(members)}, now)
        jobs[job.id] = sorted(members)
    return jobs


def public_doc(key: AutomationKey, trusted: TrustedRoot | None) -> dict[str, object]:
    """What owners need to put the key in a root: its id, public key and whether it is there."""
    return {"keyid": key.key_id, "public": key.public.to_text(),
            "in_root": bool(trusted and key.key_id in trusted.automation),
            "root_version": trusted.version if trusted else None}


def _json(doc: object) -> str:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)
