"""``/tenants/{t}/audit/*``: entries, checkpoints and Merkle proofs of a tenant's log.

Anyone who reaches the tenant may read its log; ``audit verify`` in the CLI
checks these answers against checkpoints it already holds (T7). The log of a
deleted tenant stays readable, by accounts that reach every tenant, until
retention removes it (``deleted_tenant_audit_days``). An outside witness
(``rampart witness run``) posts its co-signatures here; only a signature by a
witness key of the tenant's current root is kept (docs/design/witness.md).
"""

from __future__ import annotations

import base64

from fastapi import APIRouter, Path, Query
from sqlalchemy import select

from .. import clock
from ..audit import AuditLog
from ..errors import BadRequest, Conflict, NotFound
from ..models import AuditEntry
from ..tenant_roots import current_trusted
from .deps import CallerDep, Ctx, TenantPath
from .schemas import AuditEntryOut, CheckpointOut, CosignIn, CosignOut, ProofOut

router = APIRouter(tags=["audit"])

MAX_SIZE = 1 << 48


@router.get("/tenants/{t}/audit/entries", response_model=list[AuditEntryOut])
def list_entries(t: TenantPath, caller: CallerDep, ctx: Ctx,
                 start: int = Query(0, ge=0, le=MAX_SIZE),
                 limit: int = Query(100, ge=1, le=1000)) -> list[AuditEntryOut]:
    with ctx.store.read() as s:
        caller.audit_log(s, t)
        rows = s.scalars(select(AuditEntry).where(AuditEntry.log_id == t, AuditEntry.idx >= start)
                         .order_by(AuditEntry.idx).limit(limit))
        return [AuditEntryOut(index=r.idx, kind=r.kind, time=r.time,
                              data=base64.b64encode(r.data).decode()) for r in rows]


@router.get("/tenants/{t}/audit/checkpoint", response_model=CheckpointOut)
def get_checkpoint(t: TenantPath, caller: CallerDep, ctx: Ctx) -> CheckpointOut:
    with ctx.store.read() as s:
        caller.audit_log(s, t)
        row = ctx.audit.latest_checkpoint(s, t)
    if row is None:
        raise NotFound("no checkpoint yet")
    return CheckpointOut(size=row.size, root=row.root, envelope=row.envelope.decode())


@router.post("/tenants/{t}/audit/checkpoint", response_model=CheckpointOut)
def sign_checkpoint(t: TenantPath, caller: CallerDep, ctx: Ctx) -> CheckpointOut:
    with ctx.store.transaction() as s:
        caller.audit_log(s, t)
        caller.require_perm("checkpoint.sign")
    row = ctx.audit.sign_checkpoint(t, clock.now())
    return CheckpointOut(size=row.size, root=row.root, envelope=row.envelope.decode())


@router.post("/tenants/{t}/audit/checkpoints/{size}/cosignatures", response_model=CosignOut)
def cosign_checkpoint(t: TenantPath, body: CosignIn, caller: CallerDep, ctx: Ctx,
                      size: int = Path(ge=1, le=MAX_SIZE)) -> CosignOut:
    """Keep an outside witness's co-signature on the stored checkpoint of ``size``.

    The signature is its own authority: only one by a witness key of the tenant's current root
    over that checkpoint's exact payload is kept. Nothing is written to the tenant's log (a
    co-signature logged would grow the log the witness co-signs, for ever)."""
    with ctx.store.read() as s:
        caller.audit_log(s, t)
        caller.require_perm("checkpoint.cosign")
        root = current_trusted(s, t)
    if not root.witnesses:
        raise Conflict("this tenant's root names no outside witness")
    row, added = ctx.audit.add_cosignatures(t, size, body.envelope.encode(), root.witnesses)
    present = sorted(AuditLog.witness_signers(row.envelope, frozenset(root.witnesses)))
    if not present:
        raise BadRequest("no co-signature by a witness of the tenant's root verifies on this checkpoint")
    if added:
        ctx.gateway.wake_tenant(t)
    return CosignOut(size=row.size, witnesses=present, added=sorted(added))


@router.get("/tenants/{t}/audit/consistency", response_model=ProofOut)
def consistency(t: TenantPath, caller: CallerDep, ctx: Ctx, old: int = Query(ge=0, le=MAX_SIZE),
                new: int = Query(ge=0, le=MAX_SIZE)) -> ProofOut:
    with ctx.store.read() as s:
        caller.audit_log(s, t)
        proof = ctx.audit.consistency_proof(s, t, old, new)
    return ProofOut(proof=[p.hex() for p in proof])


@router.get("/tenants/{t}/audit/inclusion", response_model=ProofOut)
def inclusion(t: TenantPath, caller: CallerDep, ctx: Ctx, index: int = Query(ge=0, le=MAX_SIZE),
              size: int = Query(ge=0, le=MAX_SIZE)) -> ProofOut:
    with ctx.store.read() as s:
        caller.audit_log(s, t)
        proof = ctx.audit.inclusion_proof(s, t, index, size)
    return ProofOut(proof=[p.hex() for p in proof])
