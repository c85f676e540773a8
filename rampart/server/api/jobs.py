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

import msgspec
from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from rampart.trust import Receipt, decode_envelope, decode_payload

from .. import clock
from ..access import check_mass_action
from ..errors import BadRequest, NotFound, TooLarge
from ..jobs import check_job, store_job
from ..models import JobRow, JobTarget, ReceiptRow, ScriptCheck
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
