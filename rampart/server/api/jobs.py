"""Jobs: accepted only as agents would accept them, logged, then fanned out.

Before storing, the server checks as a courtesy what every agent will check
(signer is a technician/automation key of the current root with a valid
signature, the grant is stored, approved and covers the job, payload digests
match), so a job that no agent would run is refused up front. Then, in one
transaction, the exact envelope bytes are appended to the tenant's audit log
and one target per device is recorded; after commit a checkpoint covering the
job is signed and connected agents are woken.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

import msgspec
from fastapi import APIRouter, Query
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from rampart.trust import (
    Job,
    Receipt,
    TrustError,
    decode_envelope,
    decode_payload,
    verified_signers,
    verify_grant,
)
from rampart.trust.payloads import JOB_TYPE, PAYLOAD_FREE_ACTIONS

from .. import clock
from ..access import check_mass_action
from ..audit import AuditLog
from ..errors import BadRequest, Conflict, NotFound, TooLarge
from ..models import Device, GrantRow, JobPayload, JobRow, JobTarget, ReceiptRow, ScriptCheck
from ..tenant_roots import current_trusted
from .deps import Caller, CallerDep, Ctx, JobPath, TenantPath
from .schemas import JobCreatedOut, JobIn, JobOut, ReceiptOut, TargetOut

router = APIRouter(tags=["jobs"])


def decode_payload_map(payloads: dict[str, str], limit: int) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    total = 0
    for name, text in payloads.items():
        try:
            data = base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise BadRequest("payloads must be standard base64") from None
        total += len(data)
        if total > limit:
            raise TooLarge(f"payloads exceed {limit} bytes")
        out[name] = data
    return out


def check_job(s: Session, tenant_id: str, data: bytes, payloads: dict[str, bytes],
              now: int) -> Job:
    """Refuse a job that no agent of this tenant would run; return it decoded."""
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
    if set(job.devices) - set(grant.devices):
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
        Device.tenant_id == tenant_id, Device.id.in_(job.devices)))
    if known != len(job.devices):
        raise BadRequest("job targets an unknown device")
    return job


def store_job(s: Session, audit: AuditLog, tenant_id: str, job: Job, data: bytes,
              payloads: dict[str, bytes], now: float, *, account_id: int | None) -> None:
    """Append the exact envelope to the tenant's log and record one target per device.

    The caller has run :func:`check_job`; the caller signs a checkpoint after
    commit and wakes the devices. ``account_id`` is None for scheduler jobs.
    """
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
    for device in job.devices:
        s.add(JobTarget(job_id=job.id, device_id=device, state="pending"))


@router.post("/tenants/{t}/jobs", response_model=JobCreatedOut)
def create_job(t: TenantPath, body: JobIn, caller: CallerDep, ctx: Ctx) -> JobCreatedOut:
    now = clock.now()
    data = body.envelope.encode()
    with ctx.store.transaction() as s:
        tenant = caller.tenant(s, t)
        caller.require_perm("job.create")
        payloads = decode_payload_map(body.payloads, ctx.limits.max_job_payload_bytes)
        job = check_job(s, t, data, payloads, int(now))
        check_mass_action(s, ctx.audit, account_id=caller.account_id, actor=caller.username,
                          step_up_at=caller.step_up_at, tenant=tenant, devices=job.devices,
                          now=now)
        store_job(s, ctx.audit, t, job, data, payloads, now, account_id=caller.account_id)
        rep = job.repeating
        if rep is not None:
            s.add(ScriptCheck(job_id=job.id, tenant_id=t, name=rep.name, every_s=rep.every_s,
                              until=rep.until, created_by=caller.username, created_at=now))
    ctx.audit.sign_checkpoint(t, now)
    ctx.gateway.wake(job.devices)
    return JobCreatedOut(id=job.id, targets=list(job.devices))


def output_text(b64: str) -> str:
    """A receipt carries output as base64 bytes; the API shows it as text (UTF-8, replacement)."""
    try:
        return base64.b64decode(b64, validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return ""


def receipt_out(envelope: bytes) -> ReceiptOut:
    r = decode_payload(decode_envelope(envelope).payload, Receipt)
    containment = msgspec.to_builtins(r.containment) if r.containment else None
    return ReceiptOut(outcome=r.outcome, refusal=r.refusal, detail=r.detail,
                      exit_code=r.exit_code, signal=r.signal, timed_out=r.timed_out,
                      stdout=output_text(r.stdout), stderr=output_text(r.stderr),
                      started_at=r.started_at,
                      ended_at=r.ended_at, containment=containment)


def job_out(s: Session, row: JobRow) -> JobOut:
    receipts = {r.device_id: r for r in s.scalars(
        select(ReceiptRow).where(ReceiptRow.job_id == row.id))}
    targets = []
    for tg in s.scalars(select(JobTarget).where(JobTarget.job_id == row.id)
                        .order_by(JobTarget.device_id)):
        rc = receipts.get(tg.device_id)
        targets.append(TargetOut(device=tg.device_id, state=tg.state,  # type: ignore[arg-type]
                                 receipt=receipt_out(rc.envelope) if rc else None))
    return JobOut(id=row.id, tenant=row.tenant_id, kind=row.kind, signer=row.signer,
                  grant=row.grant_id, created_at=row.created_at,
                  devices=[tg.device for tg in targets], targets=targets)


def load_job(s: Session, caller: Caller, job_id: str) -> JobRow:
    row = s.get(JobRow, job_id)
    if row is None or not caller.reaches(row.tenant_id):
        raise NotFound("job not found")
    return row


@router.get("/jobs/{j}", response_model=JobOut)
def get_job(j: JobPath, caller: CallerDep, ctx: Ctx) -> JobOut:
    with ctx.store.transaction() as s:
        return job_out(s, load_job(s, caller, j))


@router.get("/tenants/{t}/jobs", response_model=list[JobOut])
def list_jobs(t: TenantPath, caller: CallerDep, ctx: Ctx,
              limit: int = Query(50, ge=1, le=1000)) -> list[JobOut]:
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        rows = s.scalars(select(JobRow).where(JobRow.tenant_id == t)
                         .order_by(JobRow.created_at.desc()).limit(limit))
        return [job_out(s, r) for r in rows]
