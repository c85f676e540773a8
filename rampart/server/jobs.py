"""Job acceptance: the checks every stored job passes, and how it is stored.

:func:`check_job` refuses, as a courtesy, what every agent will refuse (signer
is a technician/automation key of the current root with a valid signature,
the grant is stored, approved and covers the job, payload digests match), so a
job that no agent would run is refused up front. :func:`store_job` appends the
exact envelope bytes to the tenant's audit log and records one target per
device. Both the jobs API (:mod:`.api.jobs`) and the scheduler
(:mod:`.automation`) go through them: one set of checks, not a copy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from rampart.trust import (
    JOB_TYPE,
    PAYLOAD_FREE_ACTIONS,
    Grant,
    Job,
    TrustError,
    decode_envelope,
    decode_payload,
    expand,
    verified_signers,
    verify_grant,
)

from .audit import AuditLog
from .errors import BadRequest, Conflict
from .models import Device, GrantRow, JobPayload, JobRow, JobTarget, Tenant
from .tenant_roots import current_trusted

__all__ = ["CheckedJob", "check_job", "grant_devices", "stored_devices", "store_job"]


def stored_devices(row: GrantRow, grant: Grant) -> list[str]:
    """The devices a grant names as the server holds them, unchecked (for display: a signer's own
    machine recomputes a committed set from this list before it shows or signs anything)."""
    if row.device_list is None:
        return list(grant.devices)
    return row.device_list.decode().split()


def grant_devices(row: GrantRow, grant: Grant) -> list[str]:
    """The devices a stored grant names: its signed list, or the stored list of its committed set.

    The stored list was checked against the signed set when the grant was drafted; it is checked
    again here (a changed row is refused, not used).
    """
    listed = row.device_list.decode().split() if row.device_list else []
    try:
        return expand(grant.devices, grant.device_set, listed)
    except TrustError as exc:
        raise Conflict(f"the stored device list of grant {grant.id} is not its signed set: {exc}") from None


@dataclass(frozen=True, slots=True)
class CheckedJob:
    """A job that passed :func:`check_job`, with the devices it targets (listed or committed)."""

    job: Job
    targets: list[str]


def check_job(s: Session, tenant_id: str, data: bytes, payloads: dict[str, bytes],
              now: int, *, listed: list[str] | None = None) -> CheckedJob:
    """Refuse a job that no agent of this tenant would run; return it decoded, with its targets.

    ``listed`` is the submitter's list of a committed job's devices: it must recompute to the
    signed set (it is what the server stores as targets and builds each device's proof from).
    """
    try:
        trusted = current_trusted(s, tenant_id)
        env = decode_envelope(data, expect_type=JOB_TYPE)
        job = decode_payload(env.payload, Job)
        if job.tenant != tenant_id:
            raise BadRequest("job names another tenant")
        signers = {**trusted.technicians, **trusted.automation}
        key = signers.get(job.signer)
        if key is None:
            raise BadRequest("job signer is not a technician or automation key of the current root")
        if not verified_signers(env, {job.signer: key}, threshold=1).met:
            raise BadRequest("job signature is missing or invalid")
        row = s.get(GrantRow, job.grant)
        if row is None or row.tenant_id != tenant_id:
            raise BadRequest("the job's grant is not stored on this server")
        if row.revoked_at is not None:
            raise BadRequest("the job's grant was revoked")
        grant = verify_grant(trusted, row.envelope, now=now)
    except TrustError as exc:
        raise BadRequest(str(exc)) from None
    if grant.grantee != job.signer:
        raise BadRequest("job signer is not the grant's grantee")
    try:
        targets = expand(job.devices, job.device_set, listed or [])
    except TrustError as exc:
        raise BadRequest(str(exc)) from None
    if listed and not job.device_set:
        raise BadRequest("a job that lists its devices takes no separate device list")
    if set(targets) - set(grant_devices(row, grant)):
        raise BadRequest("job targets devices outside its grant")
    missing = job.required_capabilities() - set(grant.capabilities)
    if missing:
        raise BadRequest(f"grant does not give {sorted(missing)}")
    if job.signer in trusted.automation and (
            job.action.kind not in PAYLOAD_FREE_ACTIONS or job.action.kind not in grant.actions):
        raise BadRequest(
            f"an automation key may not sign a {job.action.kind} action under this grant")
    if now >= job.expires_at:
        raise BadRequest("job has expired")
    if not grant.not_before - 300 <= job.issued_at < grant.not_after:
        raise BadRequest("job was issued outside the grant's window")
    rep = job.repeating
    if rep is not None:  # a script check: what authorize_repeat will require of every later run
        if job.signer not in trusted.technicians:
            raise BadRequest("only a technician key may sign a repeating job")
        if now >= min(rep.until, grant.not_after):
            raise BadRequest("the repeating job's period (or its grant) has already ended")
    wanted = {p.name: p for p in job.action.payloads}
    if set(payloads) != set(wanted):
        raise BadRequest("payloads must be exactly the ones the job names")
    for name, ref in wanted.items():
        blob = payloads[name]
        if len(blob) != ref.size or hashlib.sha256(blob).hexdigest() != ref.sha256:
            raise BadRequest(f"payload {name} does not match its signed SHA-256")
    known = s.scalar(select(func.count()).select_from(Device).where(
        Device.tenant_id == tenant_id, Device.id.in_(targets)))
    if known != len(targets):
        raise BadRequest("job targets an unknown device")
    if s.scalar(select(Tenant.archived_at).where(Tenant.id == tenant_id)) is not None:
        raise BadRequest("this tenant is archived: no job is accepted for it (unarchive it first)")
    gone = sorted(s.scalars(select(Device.id).where(
        Device.id.in_(targets), Device.status.in_(("rejected", "retired")))))
    if gone:
        raise BadRequest(f"job targets a rejected or retired device: {', '.join(gone[:5])}")
    return CheckedJob(job, targets)


def store_job(s: Session, audit: AuditLog, tenant_id: str, checked: CheckedJob, data: bytes,
              payloads: dict[str, bytes], now: float, *, account_id: int | None) -> None:
    """Append the exact envelope to the tenant's log and record one target per device.

    The caller has run :func:`check_job`; the caller signs a checkpoint after
    commit and wakes the devices. ``account_id`` is None for scheduler jobs.
    """
    job = checked.job
    if s.get(JobRow, job.id) is not None:
        raise Conflict("a job with this id exists")
    if s.scalars(select(JobRow.id).where(JobRow.tenant_id == tenant_id,
                                         JobRow.nonce == job.nonce)).first():
        raise Conflict("a job with this nonce exists")
    index = audit.append(s, tenant_id, "job.created", data, now)
    s.add(JobRow(id=job.id, tenant_id=tenant_id, grant_id=job.grant, signer=job.signer,
                 kind=job.action.kind, nonce=job.nonce, envelope=data, created_at=now,
                 expires_at=job.expires_at, log_index=index, account_id=account_id))
    s.flush()
    for name, blob in payloads.items():
        s.add(JobPayload(job_id=job.id, name=name, data=blob))
    # Core INSERT: one executemany, no ORM object per target (10,000 of them for a fleet-wide job).
    if checked.targets:
        s.execute(insert(JobTarget), [{"job_id": job.id, "device_id": device, "state": "pending"}
                                      for device in checked.targets])
