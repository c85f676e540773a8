"""``/tenants/{t}/audit/*``: entries, checkpoints and Merkle proofs of a tenant's log.

Anyone who reaches the tenant may read its log; ``audit verify`` in the CLI
checks these answers against checkpoints it already holds (T7).
"""

from __future__ import annotations

import base64

from fastapi import APIRouter, Query
from sqlalchemy import select

from .. import clock
from ..errors import NotFound
from ..models import AuditEntry
from .deps import CallerDep, Ctx, TenantPath
from .schemas import AuditEntryOut, CheckpointOut, ProofOut

router = APIRouter(tags=["audit"])

MAX_SIZE = 1 << 48


@router.get("/tenants/{t}/audit/entries", response_model=list[AuditEntryOut])
def list_entries(t: TenantPath, caller: CallerDep, ctx: Ctx,
                 start: int = Query(0, ge=0, le=MAX_SIZE),
                 limit: int = Query(100, ge=1, le=1000)) -> list[AuditEntryOut]:
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        rows = s.scalars(select(AuditEntry).where(AuditEntry.log_id == t, AuditEntry.idx >= start)
                         .order_by(AuditEntry.idx).limit(limit))
        return [AuditEntryOut(index=r.idx, kind=r.kind, time=r.time,
                              data=base64.b64encode(r.data).decode()) for r in rows]


@router.get("/tenants/{t}/audit/checkpoint", response_model=CheckpointOut)
def get_checkpoint(t: TenantPath, caller: CallerDep, ctx: Ctx) -> CheckpointOut:
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        row = ctx.audit.latest_checkpoint(s, t)
    if row is None:
        raise NotFound("no checkpoint yet")
    return CheckpointOut(size=row.size, root=row.root, envelope=row.envelope.decode())


@router.post("/tenants/{t}/audit/checkpoint", response_model=CheckpointOut)
def sign_checkpoint(t: TenantPath, caller: CallerDep, ctx: Ctx) -> CheckpointOut:
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        caller.require_perm("checkpoint.sign")
    row = ctx.audit.sign_checkpoint(t, clock.now())
    return CheckpointOut(size=row.size, root=row.root, envelope=row.envelope.decode())


@router.get("/tenants/{t}/audit/consistency", response_model=ProofOut)
def consistency(t: TenantPath, caller: CallerDep, ctx: Ctx, old: int = Query(ge=0, le=MAX_SIZE),
                new: int = Query(ge=0, le=MAX_SIZE)) -> ProofOut:
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        proof = ctx.audit.consistency_proof(s, t, old, new)
    return ProofOut(proof=[p.hex() for p in proof])


@router.get("/tenants/{t}/audit/inclusion", response_model=ProofOut)
def inclusion(t: TenantPath, caller: CallerDep, ctx: Ctx, index: int = Query(ge=0, le=MAX_SIZE),
              size: int = Query(ge=0, le=MAX_SIZE)) -> ProofOut:
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        proof = ctx.audit.inclusion_proof(s, t, index, size)
    return ProofOut(proof=[p.hex() for p in proof])
