"""Grants: the server drafts the unsigned payload; approvers sign it on their machines.

Invariants: the grantee is a technician (or automation) key of the current
root that belongs to the requester; an approval is stored only if the
payload bytes are identical and the signature is one ``grant_status`` counts
(an approver of the current root, never the grantee's own key); an approver
cannot approve a grant for one of their own keys, nor their own request.
Approving a grant that needs more than one approver requires a fresh
step-up (G5). A revocation is stored only if it verifies as agents verify it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
from fastapi import APIRouter
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from rampart.trust import (
    GRANT_TYPE,
    Grant,
    TrustError,
    commit_devices,
    decode_envelope,
    decode_payload,
    encode_payload,
    new_grant_id,
    verify_revocation,
)
from rampart.trust import Envelope as DsseEnvelope
from rampart.trust import grant_status as trust_grant_status
from rampart.wire.limits import LISTED_DEVICES_UP_TO

from .. import clock
from ..access import require_step_up
from ..errors import BadRequest, Conflict, Forbidden, NotFound
from ..jobs import stored_devices
from ..models import Device, GrantRow, OperatorKeyRow
from ..tenant_roots import current_trusted
from .deps import Caller, CallerDep, Ctx, GrantPath, TenantPath
from .schemas import EnvelopeIn, GrantCreatedOut, GrantIn, GrantOut

router = APIRouter(tags=["grants"])


def caller_keyids(s: Session, caller: Caller, tenant_id: str) -> set[str]:
    return set(s.scalars(select(OperatorKeyRow.keyid).where(
        OperatorKeyRow.account_id == caller.account_id,
        or_(OperatorKeyRow.tenant_id.is_(None), OperatorKeyRow.tenant_id == tenant_id))))


def grant_out(s: Session, row: GrantRow, now: float) -> GrantOut:
    trusted = current_trusted(s, row.tenant_id)
    try:
        st = trust_grant_status(trusted, row.envelope)
    except TrustError as exc:  # the root changed under a stored grant: show it, unapproved
        raise Conflict(f"grant no longer decodes under the current root: {exc}") from None
    g = st.grant
    status = ("revoked" if row.revoked_at is not None else "expired" if now >= g.not_after
              else "approved" if st.complete else "requested")
    return GrantOut(id=g.id, tenant=g.tenant, grantee=g.grantee,
                    grantee_name=trusted.root.key_name(g.grantee), requested_by=g.requested_by,
                    devices=stored_devices(row, g), capabilities=list(g.capabilities),
                    not_before=g.not_before, not_after=g.not_after, reason=g.reason,
                    status=status,  # type: ignore[arg-type]
                    approvals=sorted(st.approved_by), required=st.required,
                    envelope=row.envelope.decode())


@router.post("/tenants/{t}/grants", response_model=GrantCreatedOut)
def request_grant(t: TenantPath, body: GrantIn, caller: CallerDep, ctx: Ctx) -> GrantCreatedOut:
    """Draft a grant for the caller's key in the current root (technicians and owners)."""
    now = int(clock.now())
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        caller.require_perm("grant.request")
        trusted = current_trusted(s, t)
        if body.for_automation:
            # A standing grant for the server's automation key: approvers still sign it, and
            # the key can only trigger the payload-free actions the grant names.
            server_key = ctx.automation.get(t)
            if not body.actions:
                raise BadRequest("a standing grant names the actions it allows (--action)")
            if server_key is None or server_key.key_id not in trusted.automation:
                raise Conflict("the server's automation key is not in this tenant's current root "
                               "(rampart automation enable)")
            mine = [server_key.key_id]
        else:
            eligible = trusted.automation if body.actions else trusted.technicians
            mine = sorted(caller_keyids(s, caller, t) & set(eligible))
        if not mine:
            kind = "automation" if body.actions else "technician"
            raise Conflict(f"none of your keys is a {kind} key of this tenant's current root")
        known = s.scalar(select(func.count()).select_from(Device).where(
            Device.tenant_id == t, Device.id.in_(set(body.devices))))
        if known != len(set(body.devices)):
            raise BadRequest("unknown device")
        policy = trusted.root.policy
        longest = policy.longest_grant(body.capabilities, automation=bool(body.actions))
        if body.duration_s > longest:
            raise BadRequest("the tenant policy refuses this duration: " + policy.grant_limit_text(
                body.capabilities, automation=bool(body.actions), tenant=trusted.root.name))
        refused = set(body.capabilities) - set(policy.capabilities)
        if refused:
            raise BadRequest(f"the tenant policy does not allow {sorted(refused)}")
        commit = (body.device_set if body.device_set is not None
                  else len(body.devices) > LISTED_DEVICES_UP_TO)
        try:
            targets: dict[str, Any] = ({"device_set": commit_devices(body.devices)} if commit
                                       else {"devices": body.devices})
            grant = Grant(id=new_grant_id(), tenant=t, grantee=mine[0], **targets,
                          capabilities=body.capabilities,
                          actions=body.actions,  # type: ignore[arg-type]
                          not_before=now, not_after=now + body.duration_s, reason=body.reason,
                          requested_by=caller.username)
            payload = encode_payload(grant)
            decode_payload(payload, Grant)
        except (ValueError, msgspec.ValidationError) as exc:
            raise BadRequest(f"invalid grant: {exc}") from None
        except TrustError as exc:
            raise BadRequest(exc.message) from None
        envelope = DsseEnvelope(GRANT_TYPE, payload, ()).to_bytes()
        s.add(GrantRow(id=grant.id, tenant_id=t, grantee=grant.grantee,
                       requested_by=caller.username, envelope=envelope, created_at=now,
                       not_after=grant.not_after,
                       device_list="\n".join(sorted(body.devices)).encode() if commit else None))
        ctx.audit.record(s, [t], "grant.requested", caller.username, {
            "grant": grant.id, "grantee": grant.grantee, "devices": grant.device_count,
            "capabilities": list(grant.capabilities), "not_after": grant.not_after,
            "payload_sha256": hashlib.sha256(payload).hexdigest()}, now)
    return GrantCreatedOut(id=grant.id, envelope=envelope.decode(), status="requested")


@router.get("/tenants/{t}/grants", response_model=list[GrantOut])
def list_grants(t: TenantPath, caller: CallerDep, ctx: Ctx) -> list[GrantOut]:
    now = clock.now()
    with ctx.store.read() as s:
        caller.tenant(s, t)
        rows = s.scalars(select(GrantRow).where(GrantRow.tenant_id == t)
                         .order_by(GrantRow.created_at.desc()).limit(ctx.limits.max_list))
        return [grant_out(s, r, now) for r in rows]


def load_grant(s: Session, caller: Caller, grant_id: str) -> GrantRow:
    """The grant if the caller reaches its tenant; 404 otherwise."""
    row = s.get(GrantRow, grant_id)
    if row is None or not caller.reaches(row.tenant_id):
        raise NotFound("grant not found")
    return row


@router.get("/grants/{g}", response_model=GrantOut)
def get_grant(g: GrantPath, caller: CallerDep, ctx: Ctx) -> GrantOut:
    with ctx.store.read() as s:
        return grant_out(s, load_grant(s, caller, g), clock.now())


@router.post("/grants/{g}/signatures", response_model=GrantOut)
def approve_grant(g: GrantPath, body: EnvelopeIn, caller: CallerDep, ctx: Ctx) -> GrantOut:
    """Keep the approver signatures ``grant_status`` counts, over the identical payload bytes."""
    now = clock.now()
    with ctx.store.transaction() as s:
        row = load_grant(s, caller, g)
        tenant = caller.tenant(s, row.tenant_id)
        caller.require_perm("grant.approve")
        if row.grantee in caller_keyids(s, caller, row.tenant_id):
            raise Forbidden("you cannot approve a grant for your own key")
        if row.requested_by == caller.username:
            raise Forbidden("you cannot approve your own request")
        if row.revoked_at is not None:
            raise Conflict("the grant was revoked")
        if now >= row.not_after:
            raise Conflict("the grant has expired")
        try:
            stored = decode_envelope(row.envelope, expect_type=GRANT_TYPE)
            new = decode_envelope(body.envelope.encode(), expect_type=GRANT_TYPE)
        except TrustError as exc:
            raise BadRequest(str(exc)) from None
        if new.payload != stored.payload:
            raise BadRequest("signatures must be over the grant's exact payload bytes")
        if any(sig.keyid == row.grantee for sig in new.signatures):
            raise BadRequest("the grantee cannot approve its own grant")
        trusted = current_trusted(s, row.tenant_id)
        status_before = trust_grant_status(trusted, row.envelope)
        before = status_before.approved_by
        if status_before.required > 1:  # beyond single-approver reach: G5 step-up
            require_step_up(s, ctx.audit, tenant_id=tenant.id, actor=caller.username,
                            step_up_at=caller.step_up_at, why="approving a multi-approver grant",
                            details={"grant": row.id, "required": status_before.required,
                                     "devices": status_before.grant.device_count}, now=now)
        merged = {sig.keyid: sig for sig in stored.signatures}
        merged.update({sig.keyid: sig for sig in new.signatures if sig.keyid not in before})
        candidate = DsseEnvelope(stored.payload_type, stored.payload,
                                 tuple(merged[k] for k in sorted(merged)))
        st = trust_grant_status(trusted, candidate.to_bytes())
        added = sorted(st.approved_by - before)
        if not added:
            raise BadRequest("no new valid approver signature")
        kept = tuple(merged[k] for k in sorted(st.approved_by))
        row.envelope = DsseEnvelope(stored.payload_type, stored.payload, kept).to_bytes()
        ctx.audit.record(s, [row.tenant_id], "grant.approved", caller.username, {
            "grant": row.id, "approvers": added, "approvals": len(st.approved_by),
            "required": st.required}, now)
        return grant_out(s, row, now)


@router.post("/grants/{g}/revocation", response_model=GrantOut)
def revoke_grant(g: GrantPath, body: EnvelopeIn, caller: CallerDep, ctx: Ctx) -> GrantOut:
    """Store a signed revocation (approver or owner key of the current root) and push it.

    The server checks the revocation exactly as agents do; from then on it
    refuses jobs under the grant, and agents refuse them once they hold it.
    """
    now = clock.now()
    data = body.envelope.encode()
    with ctx.store.transaction() as s:
        row = load_grant(s, caller, g)
        caller.tenant(s, row.tenant_id)
        caller.require_perm("grant.revoke")
        if row.revoked_at is not None:
            raise Conflict("the grant is already revoked")
        trusted = current_trusted(s, row.tenant_id)
        try:
            rev = verify_revocation(trusted, data)
        except TrustError as exc:
            raise BadRequest(f"revocation refused: {exc}") from None
        if rev.grant != row.id:
            raise BadRequest("the revocation names another grant")
        signers = sorted(sig.keyid for sig in decode_envelope(data).signatures
                         if sig.keyid in {**trusted.approvers, **trusted.owners})
        row.revocation = data
        row.revoked_at = now
        row.revoked_by = caller.username
        ctx.audit.record(s, [row.tenant_id], "grant.revoked", caller.username, {
            "grant": row.id, "signers": signers, "reason": rev.reason,
            "sha256": hashlib.sha256(data).hexdigest()}, now)
        out = grant_out(s, row, now)
        tenant_id = row.tenant_id
    ctx.audit.sign_checkpoint(tenant_id, now)
    ctx.gateway.revocations_published(tenant_id)
    return out
