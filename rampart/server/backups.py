"""Backup policies, results and status: schedules, stale/failed/unverified alerts (S4, K1).

What is backed up and where it goes are the *device's* settings, made at
enrolment by whoever installs the agent (``rampart-agent enroll
--backup-repo/--backup-path``, docs/patching.md): the server never sends a
path, a repository or a credential. A server-side policy says only when the
payload-free ``backup-run`` action is triggered (``every_s``, optional window),
how old the newest good archive may get (``max_age_s``) and how old the newest
verification (``borg check`` and a restore test compared by digest) may get
(``verify_max_age_s``). Retention is the vault holder's offline prune
(docs/backup-vault.md): the repository is append-only, so neither a device
nor the server can delete anything; the policy records what the vault holder
applies and ``rampart backup status`` prints it.

Results come only from the device-signed receipts of ``backup-run`` jobs
(scheduled or sent by a technician); a receipt that does not verify against
the device's enrolled key is ignored.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from rampart import trust, windows

from .alerts import raise_alert, resolve
from .audit import AuditLog
from .automation import AutomationKeyStore, NoStandingGrant, trigger
from .errors import BadRequest, Conflict
from .models import BackupPolicyRow, BackupResult, Device, JobRow, JobTarget, ReceiptRow
from .patching import output_text, read_receipt, result_doc
from .telemetry import live_alert
from .tenant_roots import current_trusted

log = logging.getLogger("rampart.server.backups")

STATES = ("ok", "running", "failed", "stale", "unverified", "never")
ALERT_KINDS = {"failed": "backup-failed", "stale": "backup-stale", "unverified": "backup-unverified",
               "never": "backup-stale"}
DEFAULT_RETENTION = {"daily": 7, "weekly": 4, "monthly": 6}
MAX_PERIOD_S = 90 * 86400


def validate_policy(*, every_s: int, window: str, max_age_s: int | None, verify_max_age_s: int | None,
                    retention: dict[str, Any] | None, timeout_s: int
                    ) -> tuple[windows.Window | None, int, int, dict[str, int]]:
    """Normalised window, ages and retention, or BadRequest with the first problem."""
    if isinstance(every_s, bool) or not 60 <= every_s <= MAX_PERIOD_S:
        raise BadRequest(f"every_s must be 60 to {MAX_PERIOD_S}")
    try:
        win = windows.Window.parse(window)
    except windows.WindowError as exc:
        raise BadRequest(str(exc)) from None
    max_age = max_age_s if max_age_s is not None else 2 * every_s + 3600
    verify = verify_max_age_s if verify_max_age_s is not None else max(7 * 86400, max_age)
    for name, v in (("max_age_s", max_age), ("verify_max_age_s", verify)):
        if isinstance(v, bool) or not 60 <= v <= 2 * MAX_PERIOD_S:
            raise BadRequest(f"{name} must be 60 to {2 * MAX_PERIOD_S}")
    if max_age < every_s:
        raise BadRequest("max_age_s must be at least every_s, or every backup would be late")
    kept = dict(DEFAULT_RETENTION) if retention is None else retention
    if set(kept) - set(DEFAULT_RETENTION) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 1000 for v in kept.values()):
        raise BadRequest("retention takes daily, weekly and monthly counts from 0 to 1000")
    if not 60 <= timeout_s <= 24 * 3600:
        raise BadRequest("timeout_s must be 60 to 86400")
    return win, max_age, verify, {k: int(kept.get(k, 0)) for k in DEFAULT_RETENTION}


def prune_command(retention: dict[str, int], repository: str = "REPO") -> str:
    """What the vault holder runs offline (docs/backup-vault.md)."""
    return (f"borg prune --keep-daily {retention['daily']} --keep-weekly {retention['weekly']} "
            f"--keep-monthly {retention['monthly']} {repository}")


# --- results from signed receipts ------------------------------------------------------------------------


def collect_results(s: Session, now: float, limit: int = 500) -> int:
    """Record the receipts of ``backup-run`` jobs not yet recorded; returns how many."""
    rows = s.execute(
        select(ReceiptRow, JobRow.tenant_id, Device.public_key)
        .join(JobRow, JobRow.id == ReceiptRow.job_id)
        .join(Device, Device.id == ReceiptRow.device_id)
        .outerjoin(BackupResult, (BackupResult.job_id == ReceiptRow.job_id)
                   & (BackupResult.device_id == ReceiptRow.device_id))
        .where(JobRow.kind == "backup-run", BackupResult.job_id.is_(None))
        .limit(limit)).all()
    for receipt_row, tenant_id, public in rows:
        receipt = _verified_receipt(receipt_row.envelope, public)
        s.add(_result_of(receipt, receipt_row, tenant_id))
    return len(rows)


def _verified_receipt(data: bytes, public: str) -> trust.Receipt | None:
    try:
        key = trust.DevicePublicKey.from_text(public) if public.startswith("rampart-") \
            else trust.DevicePublicKey.from_b64(public)
        env = trust.decode_envelope(data, expect_type=trust.RECEIPT_TYPE)
        if not trust.verified_signers(env, {key.key_id: key}, threshold=1).met:
            return None
    except trust.TrustError:
        return None
    return read_receipt(data)


def _result_of(receipt: trust.Receipt | None, row: ReceiptRow, tenant_id: str) -> BackupResult:
    if receipt is None:
        return BackupResult(job_id=row.job_id, device_id=row.device_id, tenant_id=tenant_id,
                            finished_at=row.received_at, ok=False, archive="", archive_ok=False, nfiles=0,
                            original_size=0, check_ok=None, restore_ok=None,
                            error="the receipt does not verify against the device's key")
    doc = result_doc(receipt)
    archive = doc.get("archive") if isinstance(doc.get("archive"), dict) else {}
    check = doc.get("check") if isinstance(doc.get("check"), dict) else None
    restore = doc.get("restore_test") if isinstance(doc.get("restore_test"), dict) else None
    assert isinstance(archive, dict)

    def integer(v: object) -> int:
        return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 62 else 0

    passed = restore.get("passed") if restore is not None else None
    error = receipt.refusal or output_text(receipt.stderr).strip()[:1000]
    return BackupResult(
        job_id=row.job_id, device_id=row.device_id, tenant_id=tenant_id,
        finished_at=receipt.ended_at or row.received_at, ok=receipt.outcome == "ran",
        archive=str(archive.get("name", ""))[:256], archive_ok=archive.get("ok") is True,
        nfiles=integer(archive.get("nfiles")), original_size=integer(archive.get("original_size")),
        check_ok=None if check is None else check.get("ok") is True,
        restore_ok=passed if isinstance(passed, bool) else None,
        error=error if receipt.outcome != "ran" else "")


# --- status ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceBackup:
    device_id: str
    hostname: str
    policy: BackupPolicyRow | None
    last: BackupResult | None
    last_archive: BackupResult | None
    last_verified: BackupResult | None
    running: bool

    def state(self, now: float) -> tuple[str, str]:
        """(state, why) with the policy's ages; without a policy, 30 days for both."""
        max_age = self.policy.max_age_s if self.policy else 30 * 86400
        verify_age = self.policy.verify_max_age_s if self.policy else 30 * 86400
        if self.last is None:
            return ("running", "the first backup is running") if self.running else \
                ("never", "no backup has been reported")
        if not self.last.ok:
            return "failed", self.last.error or "the last backup failed"
        if self.last_archive is None or now - self.last_archive.finished_at > max_age:
            return "stale", f"no good archive in the last {_age(max_age)}"
        if self.last_verified is None or now - self.last_verified.finished_at > verify_age:
            return "unverified", f"no passing check and restore test in the last {_age(verify_age)}"
        return "ok", ""


def _age(seconds: float) -> str:
    return f"{seconds / 86400:.1f} days" if seconds >= 86400 else f"{seconds / 3600:.1f} hours"


def device_backups(s: Session, tenant_id: str, now: float) -> list[DeviceBackup]:
    policies = {p.device_id: p for p in s.scalars(
        select(BackupPolicyRow).where(BackupPolicyRow.tenant_id == tenant_id))}
    results: dict[str, list[BackupResult]] = {}
    for r in s.scalars(select(BackupResult).where(BackupResult.tenant_id == tenant_id)
                       .order_by(BackupResult.finished_at)):
        results.setdefault(r.device_id, []).append(r)
    devices = {d.id: d.hostname for d in s.scalars(select(Device).where(Device.tenant_id == tenant_id))}
    running_ids = set(s.scalars(select(JobTarget.device_id).join(JobRow, JobRow.id == JobTarget.job_id).where(
        JobRow.tenant_id == tenant_id, JobRow.kind == "backup-run", JobTarget.state.in_(("pending", "sent")),
        JobRow.expires_at > now)))
    out = []
    for device_id in sorted(set(policies) | set(results), key=lambda d: devices.get(d, d)):
        rs = results.get(device_id, [])
        out.append(DeviceBackup(
            device_id=device_id, hostname=devices.get(device_id, ""), policy=policies.get(device_id),
            last=rs[-1] if rs else None,
            last_archive=next((r for r in reversed(rs) if r.archive_ok), None),
            last_verified=next((r for r in reversed(rs) if r.check_ok and r.restore_ok), None),
            running=device_id in running_ids))
    return out


def status_doc(b: DeviceBackup, now: float) -> dict[str, Any]:
    state, why = b.state(now)
    retention = json.loads(b.policy.retention) if b.policy else None
    return {
        "device": b.device_id, "hostname": b.hostname, "state": state, "why": why,
        "running": b.running,
        "policy": None if b.policy is None else {
            "every_s": b.policy.every_s, "window": windows.describe(
                windows.Window.from_doc(json.loads(b.policy.window)) if b.policy.window else None),
            "max_age_s": b.policy.max_age_s, "verify_max_age_s": b.policy.verify_max_age_s,
            "retention": retention, "prune": prune_command(retention) if retention else None,
            "enabled": b.policy.enabled, "last_triggered_at": b.policy.last_triggered_at,
            "trigger_error": b.policy.trigger_error},
        "last": None if b.last is None else _result_doc(b.last),
        "last_archive_at": b.last_archive.finished_at if b.last_archive else None,
        "last_archive": b.last_archive.archive if b.last_archive else None,
        "last_verified_at": b.last_verified.finished_at if b.last_verified else None,
    }


def _result_doc(r: BackupResult) -> dict[str, Any]:
    return {"job": r.job_id, "finished_at": r.finished_at, "ok": r.ok, "archive": r.archive,
            "archive_ok": r.archive_ok, "nfiles": r.nfiles, "original_size": r.original_size,
            "check_ok": r.check_ok, "restore_ok": r.restore_ok, "error": r.error}


# --- the scheduler's part -----------------------------------------------------------------------------------


class BackupScheduler:
    """Triggers due backups under standing grants and keeps the backup alerts true."""

    def __init__(self, keys: AutomationKeyStore, audit: AuditLog) -> None:
        self._keys = keys
        self._audit = audit

    def trigger_due(self, s: Session, now: float) -> set[str]:
        woken: set[str] = set()
        due: dict[str, list[BackupPolicyRow]] = {}
        for p in s.scalars(select(BackupPolicyRow).where(BackupPolicyRow.enabled.is_(True))):
            win = windows.Window.from_doc(json.loads(p.window)) if p.window else None
            if windows.occurrence(win, now) is None:
                continue
            if p.last_triggered_at is not None and now - p.last_triggered_at < p.every_s:
                continue
            latest = s.scalars(select(BackupResult.finished_at).where(
                BackupResult.device_id == p.device_id, BackupResult.ok.is_(True))
                .order_by(BackupResult.finished_at.desc()).limit(1)).first()
            if latest is not None and now - latest < p.every_s:
                continue  # a backup (perhaps a technician's) ran recently enough
            due.setdefault(p.tenant_id, []).append(p)
        for tenant_id, policies in due.items():
            key = self._keys.get(tenant_id)
            for p in policies:  # one job per device: each has its own timeout and result
                try:
                    if key is None:
                        raise NoStandingGrant("the tenant has no automation key (rampart automation enable)")
                    trusted = current_trusted(s, tenant_id)
                    jobs = trigger(s, self._audit, key, trusted, tenant_id, "backup-run", [p.device_id],
                                   now=now, timeout_s=p.timeout_s)
                except (NoStandingGrant, Conflict) as exc:
                    p.trigger_error = str(exc) if isinstance(exc, NoStandingGrant) else exc.detail
                    continue
                p.last_job_id = next(iter(jobs))
                p.last_triggered_at = now
                p.trigger_error = ""
                woken.add(p.device_id)
        return woken

    def alerts(self, s: Session, now: float) -> None:
        """One alert per device and state (failed, stale, unverified) while it holds."""
        tenants = set(s.scalars(select(BackupPolicyRow.tenant_id).distinct()))
        for tenant_id in tenants:
            for b in device_backups(s, tenant_id, now):
                if b.policy is None or not b.policy.enabled:
                    continue
                state, why = b.state(now)
                dedup = f"device:{b.device_id}"
                for st, kind in ALERT_KINDS.items():
                    alert = live_alert(s, tenant_id, kind, dedup)
                    wanted = state == st or (kind == "backup-stale" and state in ("stale", "never")
                                             and b.policy.created_at + b.policy.max_age_s < now)
                    if st == "never":
                        continue  # folded into backup-stale above
                    if wanted and alert is None:
                        raise_alert(s, [tenant_id], kind=kind,
                                    severity="critical" if st in ("failed", "stale") else "warning",
                                    dedup=dedup,
                                    subject=f"backup of {b.hostname or b.device_id} is {state}"[:256],
                                    detail=f"device {b.device_id}: {why}", now=now, device_id=b.device_id)
                    elif not wanted and alert is not None:
                        resolve(alert, "scheduler", now)
