"""Jobs: accepted only as agents would accept them, logged, then fanned out.

Before storing, the server checks as a courtesy what every agent will check
(signer is a technician/automation key of the current root with a valid
signature, the grant is stored, approved and covers the job, payload digests
match), so a job that no agent would run is refused up front. Then, in one
transaction, the exact envelope bytes are appended to the tenant's audit log
and one target per device is recorded; after commit a checkpoint covering the
job is signed and connected agents are woken. The checks and the storing live
in :mod:`rampart.server.jobs`, shared with the scheduler.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Annotated

import msgspec
from fastapi import APIRouter, Query, Response
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from rampart.trust import Job, Receipt, TrustError, decode_envelope, decode_payload, verify_cancellation

from .. import clock
from ..access import check_mass_action
from ..errors import BadRequest, Conflict, NotFound, TooLarge
from ..jobs import check_job, store_job
from ..models import JobCancellation, JobRow, JobTarget, ReceiptRow, ScriptCheck
from ..tenant_roots import current_trusted
from .deps import Caller, CallerDep, Ctx, JobPath, TenantPath
from .schemas import DEVICE_ID, EnvelopeIn, JobCreatedOut, JobIn, JobOut, JobSummaryOut, ReceiptOut, TargetOut

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


@router.post("/tenants/{t}/jobs", response_model=JobCreatedOut)
def create_job(t: TenantPath, body: JobIn, caller: CallerDep, ctx: Ctx) -> JobCreatedOut:
    now = clock.now()
    data = body.envelope.encode()
    with ctx.store.transaction() as s:
        tenant = caller.tenant(s, t)
        caller.require_perm("job.create")
        payloads = decode_payload_map(body.payloads, ctx.limits.max_job_payload_bytes)
        checked = check_job(s, t, data, payloads, int(now), listed=body.devices or None)
        job = checked.job
        check_mass_action(s, ctx.audit, account_id=caller.account_id, actor=caller.username,
                          step_up_at=caller.step_up_at, tenant=tenant, devices=checked.targets,
                          now=now)
        store_job(s, ctx.audit, t, checked, data, payloads, now, account_id=caller.account_id)
        rep = job.repeating
        if rep is not None:
            s.add(ScriptCheck(job_id=job.id, tenant_id=t, name=rep.name, every_s=rep.every_s,
                              until=rep.until, created_by=caller.username, created_at=now))
    ctx.audit.sign_checkpoint(t, now)
    ctx.gateway.wake(checked.targets)
    return JobCreatedOut(id=job.id, targets=checked.targets)


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
    with ctx.store.read() as s:
        return job_out(s, load_job(s, caller, j))


@router.post("/jobs/{j}/cancellation", response_model=JobOut)
def cancel_job(j: JobPath, body: EnvelopeIn, caller: CallerDep, ctx: Ctx) -> JobOut:
    """Store a signed cancellation of a job that has not run everywhere, and push it to agents.

    The server checks it as agents do (the job's own technician, or an approver or owner, of the
    current root); its devices that have not run the job are marked ``cancelled`` and are not sent
    it again. A device that already holds the job may still run it: its receipt says what happened.
    """
    now = clock.now()
    data = body.envelope.encode()
    with ctx.store.transaction() as s:
        row = load_job(s, caller, j)
        caller.tenant(s, row.tenant_id)
        caller.require_perm("job.cancel")
        if s.get(JobCancellation, row.id) is not None:
            raise Conflict("the job is already cancelled")
        job = decode_payload(decode_envelope(row.envelope).payload, Job)
        try:
            c = verify_cancellation(current_trusted(s, row.tenant_id), data, job)
        except TrustError as exc:
            raise BadRequest(f"cancellation refused: {exc}") from None
        open_targets = list(s.scalars(select(JobTarget).where(
            JobTarget.job_id == row.id, JobTarget.state.in_(("pending", "sent")))))
        if not open_targets:
            raise Conflict("the job has already run on every device: nothing to cancel")
        for tg in open_targets:
            tg.state = "cancelled"
        s.add(JobCancellation(job_id=row.id, tenant_id=row.tenant_id, envelope=data,
                              created_by=caller.username, created_at=now, expires_at=row.expires_at))
        ctx.audit.record(s, [row.tenant_id], "job.cancelled", caller.username, {
            "job": row.id, "signers": sorted(sig.keyid for sig in decode_envelope(data).signatures),
            "reason": c.reason, "devices": sorted(tg.device_id for tg in open_targets),
            "sha256": hashlib.sha256(data).hexdigest()}, now)
        out = job_out(s, row)
        tenant_id = row.tenant_id
    ctx.audit.sign_checkpoint(tenant_id, now)
    ctx.gateway.cancellations_published(tenant_id)
    return out


@router.get("/jobs/{j}/summary", response_model=JobSummaryOut)
def job_summary(j: JobPath, caller: CallerDep, ctx: Ctx) -> JobSummaryOut:
    """How far a job is: its targets counted by state and its receipts by outcome, in one query."""
    with ctx.store.read() as s:
        row = load_job(s, caller, j)
        states: dict[str, int] = {}
        outcomes: dict[str, int] = {}
        for state, outcome, n in s.execute(
                select(JobTarget.state, ReceiptRow.outcome, func.count())
                .outerjoin(ReceiptRow, and_(ReceiptRow.job_id == JobTarget.job_id,
                                            ReceiptRow.device_id == JobTarget.device_id))
                .where(JobTarget.job_id == row.id).group_by(JobTarget.state, ReceiptRow.outcome)):
            states[state] = states.get(state, 0) + n
            if outcome is not None:
                outcomes[outcome] = outcomes.get(outcome, 0) + n
        return JobSummaryOut(id=row.id, tenant=row.tenant_id, kind=row.kind, created_at=row.created_at,
                             targets=sum(states.values()), states=states, outcomes=outcomes)


@router.get("/jobs/{j}/targets", response_model=list[TargetOut])
def job_targets(j: JobPath, caller: CallerDep, ctx: Ctx, response: Response,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                after: Annotated[str | None, Query(pattern=DEVICE_ID)] = None) -> list[TargetOut]:
    """One page of a job's targets with their receipts, by device id; the next page starts after the
    id in the ``Rampart-Next`` header (absent on the last page)."""
    with ctx.store.read() as s:
        row = load_job(s, caller, j)
        q = select(JobTarget).where(JobTarget.job_id == row.id)
        if after is not None:
            q = q.where(JobTarget.device_id > after)
        targets = list(s.scalars(q.order_by(JobTarget.device_id).limit(limit + 1)))
        if len(targets) > limit:
            targets = targets[:limit]
            response.headers["Rampart-Next"] = targets[-1].device_id
        receipts = {r.device_id: r for r in s.scalars(select(ReceiptRow).where(
            ReceiptRow.job_id == row.id, ReceiptRow.device_id.in_([t.device_id for t in targets])))}
        return [TargetOut(device=tg.device_id, state=tg.state,  # type: ignore[arg-type]
                          receipt=receipt_out(receipts[tg.device_id].envelope)
                          if tg.device_id in receipts else None) for tg in targets]


@router.get("/tenants/{t}/jobs", response_model=list[JobOut])
def list_jobs(t: TenantPath, caller: CallerDep, ctx: Ctx,
              limit: int = Query(50, ge=1, le=1000)) -> list[JobOut]:
    with ctx.store.read() as s:
        caller.tenant(s, t)
        rows = s.scalars(select(JobRow).where(JobRow.tenant_id == t)
                         .order_by(JobRow.created_at.desc()).limit(limit))
        return [job_out(s, r) for r in rows]
