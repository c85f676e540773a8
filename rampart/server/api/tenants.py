"""``/tenants``: tenants, their members, published roots and the root being signed.

Invariants: only MSP-wide owners create tenants; each tenant gets its own
audit log and log key; a root is published only if an agent would accept it
(:mod:`rampart.server.tenant_roots`); a proposal keeps only signatures that
verify by owners of the proposed or the current root, over the same bytes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import shutil

from fastapi import APIRouter
from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from rampart.trust import (
    ROOT_TYPE,
    OperatorPublicKey,
    TrustError,
    check_root_signatures,
    decode_envelope,
    new_tenant_id,
)
from rampart.trust import Envelope as DsseEnvelope

from .. import clock, root_expiry
from ..access import address_allowed, normalise_networks, require_step_up, tenant_networks
from ..audit import SERVER_LOG
from ..errors import BadRequest, Conflict, Forbidden, NotFound
from ..models import (
    Account,
    AccountTenant,
    AuditLogRow,
    DeletedTenant,
    Device,
    NotifyTarget,
    OperatorKeyRow,
    RootProposal,
    RootVersion,
    Tenant,
)
from ..notifier import forget_secret, tls_files_dir
from ..purge import purge_tenant
from ..tenant_roots import check_keys_exclusive, check_publishable, current_root, trusted_from_store
from .deps import CallerDep, Ctx, TenantPath
from .schemas import (
    DeletedTenantOut,
    EnvelopeIn,
    MemberOut,
    PublicKeyOut,
    RootOut,
    RootProposalOut,
    TenantDeleteIn,
    TenantIn,
    TenantOut,
    TenantSettingsIn,
    TenantSettingsOut,
)

router = APIRouter(tags=["tenants"])


def tenant_out(s: Session, t: Tenant) -> TenantOut:
    log = s.get(AuditLogRow, t.id)
    root = current_root(s, t.id)
    log_keys = [PublicKeyOut(keyid=log.log_keyid, public="rampart-log-pub:" + log.log_public)] \
        if log else []
    status = "archived" if t.archived_at is not None else "active" if root else "pending-root"
    return TenantOut(id=t.id, name=t.name, status=status,  # type: ignore[arg-type]
                     root_version=root.version if root else None, log_keys=log_keys)


def envelope_bytes(text: str) -> bytes:
    return text.encode("utf-8")


@router.post("/tenants", response_model=TenantOut)
def create_tenant(body: TenantIn, caller: CallerDep, ctx: Ctx) -> TenantOut:
    """Create a tenant with its audit log and log key (MSP-wide owners)."""
    caller.require_perm("tenant.create")
    if caller.tenants is not None:
        raise BadRequest("only MSP-wide owners can create tenants")
    now = clock.now()
    with ctx.store.transaction() as s:
        if s.scalars(select(Tenant.id).where(Tenant.name == body.name)).first():
            raise Conflict("a tenant with this name exists")
        tenant = Tenant(id=new_tenant_id(), name=body.name, created_at=now)
        s.add(tenant)
        ctx.audit.create_log(s, tenant.id)
        ctx.audit.record(s, [tenant.id], "tenant.created", caller.username,
                         {"tenant": tenant.id, "name": body.name}, now)
        out = tenant_out(s, tenant)
    ctx.audit.sign_checkpoint(out.id, now)
    return out


@router.get("/tenants", response_model=list[TenantOut])
def list_tenants(caller: CallerDep, ctx: Ctx) -> list[TenantOut]:
    with ctx.store.read() as s:
        rows = s.scalars(select(Tenant).order_by(Tenant.name))
        return [tenant_out(s, t) for t in rows if caller.reaches(t.id)]


@router.get("/tenants/{t}", response_model=TenantOut)
def get_tenant(t: TenantPath, caller: CallerDep, ctx: Ctx) -> TenantOut:
    with ctx.store.read() as s:
        return tenant_out(s, caller.tenant(s, t))


def settings_out(t: Tenant) -> TenantSettingsOut:
    return TenantSettingsOut(mass_action_limit=t.mass_action_limit, dormant_days=t.dormant_days,
                             allowed_networks=[str(n) for n in tenant_networks(t)])


@router.get("/tenants/{t}/settings", response_model=TenantSettingsOut)
def get_settings(t: TenantPath, caller: CallerDep, ctx: Ctx) -> TenantSettingsOut:
    """The tenant's access settings: mass-action limit (G5), dormancy (S2), networks (N3)."""
    with ctx.store.read() as s:
        return settings_out(caller.tenant(s, t))


@router.put("/tenants/{t}/settings", response_model=TenantSettingsOut)
def put_settings(t: TenantPath, body: TenantSettingsIn, caller: CallerDep,
                 ctx: Ctx) -> TenantSettingsOut:
    """Change access settings (owners); each change is an audit entry.

    Setting networks that exclude the caller's own address is refused, so an
    owner cannot lock themselves out by mistake.
    """
    now = clock.now()
    with ctx.store.transaction() as s:
        tenant = caller.tenant(s, t)
        caller.require_perm("tenant.settings")
        changes: dict[str, object] = {}
        if body.mass_action_limit is not None:
            tenant.mass_action_limit = changes["mass_action_limit"] = body.mass_action_limit
        if body.dormant_days is not None:
            tenant.dormant_days = changes["dormant_days"] = body.dormant_days
        if body.allowed_networks is not None:
            nets = normalise_networks(body.allowed_networks)
            parsed = [ipaddress.ip_network(n) for n in nets]
            if nets and not address_allowed(parsed, caller.address):
                raise BadRequest("these networks exclude your own address; include it first")
            tenant.allowed_networks = json.dumps(nets)
            changes["allowed_networks"] = nets
        if not changes:
            raise BadRequest("nothing to change")
        ctx.audit.record(s, [t], "tenant.settings", caller.username, changes, now)
        out = settings_out(tenant)
    if "dormant_days" in changes:  # agents hold it for their detection: pushed, as tools are
        ctx.gateway.detection_changed()
    return out


@router.get("/tenants/{t}/members", response_model=list[MemberOut])
def list_members(t: TenantPath, caller: CallerDep, ctx: Ctx) -> list[MemberOut]:
    """Accounts that reach the tenant, with their operator keys for it: what belongs in a root."""
    with ctx.store.read() as s:
        caller.tenant(s, t)
        linked = select(AccountTenant.account_id).where(AccountTenant.tenant_id == t)
        accounts = s.scalars(select(Account).where(
            or_(Account.all_tenants.is_(True), Account.id.in_(linked))).order_by(Account.username))
        out: list[MemberOut] = []
        for a in accounts:
            keys = s.scalars(select(OperatorKeyRow).where(
                OperatorKeyRow.account_id == a.id,
                or_(OperatorKeyRow.tenant_id.is_(None), OperatorKeyRow.tenant_id == t),
                OperatorKeyRow.public.startswith(OperatorPublicKey.prefix()),
            ).order_by(OperatorKeyRow.keyid))
            out.append(MemberOut(username=a.username, role=a.role,
                                 keys=[PublicKeyOut(keyid=k.keyid, public=k.public) for k in keys]))
        return out


def root_out(r: RootVersion) -> RootOut:
    return RootOut(version=r.version, sha256=r.sha256, envelope=r.envelope.decode())


@router.get("/tenants/{t}/roots", response_model=list[RootOut])
def list_roots(t: TenantPath, caller: CallerDep, ctx: Ctx) -> list[RootOut]:
    with ctx.store.read() as s:
        caller.tenant(s, t)
        rows = s.scalars(select(RootVersion).where(RootVersion.tenant_id == t)
                         .order_by(RootVersion.version))
        return [root_out(r) for r in rows]


@router.get("/tenants/{t}/roots/current", response_model=RootOut)
def get_current_root(t: TenantPath, caller: CallerDep, ctx: Ctx) -> RootOut:
    with ctx.store.read() as s:
        caller.tenant(s, t)
        row = current_root(s, t)
        if row is None:
            raise NotFound("this tenant has no root yet")
        return root_out(row)


@router.post("/tenants/{t}/roots", response_model=RootOut)
def publish_root(t: TenantPath, body: EnvelopeIn, caller: CallerDep, ctx: Ctx) -> RootOut:
    """Publish the next root version, verified as agents verify it (T1, T6)."""
    now = clock.now()
    data = envelope_bytes(body.envelope)
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        caller.require_perm("root.manage")
        trusted = check_publishable(s, t, data, int(now))
        check_keys_exclusive(s, t, trusted.root, shared_allowed=ctx.config.shared_operator_keys)
        row = RootVersion(tenant_id=t, version=trusted.version, sha256=trusted.sha256,
                          envelope=data, published_at=now)
        s.add(row)
        s.execute(delete(RootProposal).where(RootProposal.tenant_id == t,
                                             RootProposal.version <= trusted.version))
        signers = sorted({sig.keyid for sig in decode_envelope(data).signatures})
        ctx.audit.record(s, [t], "root.published", caller.username,
                         {"version": trusted.version, "sha256": trusted.sha256,
                          "signed_by": signers}, now)
        s.flush()
        root_expiry.check_tenant(s, t, now)  # a renewal answers the older version's alerts
        out = root_out(row)
    ctx.gateway.roots_published(t)
    return out


# --- the proposal owners sign before it is published ---------------------------------------

def proposal_out(s: Session, tenant_id: str, p: RootProposal) -> RootProposalOut:
    current = current_root(s, tenant_id)
    previous = trusted_from_store(current.envelope).root if current else None
    try:
        root, own, prev = check_root_signatures(p.envelope, previous=previous)
    except TrustError as exc:
        raise BadRequest(str(exc)) from None
    return RootProposalOut(
        version=root.version, envelope=p.envelope.decode(), signed_by=sorted(own.signed),
        threshold=own.threshold, previous_signed_by=sorted(prev.signed) if prev else None,
        previous_threshold=prev.threshold if prev else None,
        complete=own.met and (prev is None or prev.met))


def _check_proposal(s: Session, tenant_id: str, data: bytes, shared_allowed: bool) -> int:
    current = current_root(s, tenant_id)
    previous = trusted_from_store(current.envelope).root if current else None
    try:
        root, _, _ = check_root_signatures(data, previous=previous)
    except TrustError as exc:
        raise BadRequest(str(exc)) from None
    if root.tenant != tenant_id:
        raise BadRequest("root names another tenant")
    expected = current.version + 1 if current else 1
    if root.version != expected:
        raise BadRequest(f"the next root of this tenant is version {expected}")
    check_keys_exclusive(s, tenant_id, root, shared_allowed=shared_allowed)
    return root.version


@router.put("/tenants/{t}/root-proposal", response_model=RootProposalOut)
def put_proposal(t: TenantPath, body: EnvelopeIn, caller: CallerDep, ctx: Ctx) -> RootProposalOut:
    data = envelope_bytes(body.envelope)
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        caller.require_perm("root.manage")
        version = _check_proposal(s, t, data, ctx.config.shared_operator_keys)
        row = s.get(RootProposal, t)
        if row is None:
            row = RootProposal(tenant_id=t, version=version, envelope=data, updated_at=clock.now())
            s.add(row)
        else:
            row.version, row.envelope, row.updated_at = version, data, clock.now()
        return proposal_out(s, t, row)


@router.get("/tenants/{t}/root-proposal", response_model=RootProposalOut)
def get_proposal(t: TenantPath, caller: CallerDep, ctx: Ctx) -> RootProposalOut:
    with ctx.store.read() as s:
        caller.tenant(s, t)
        row = s.get(RootProposal, t)
        if row is None:
            raise NotFound("no root proposal")
        return proposal_out(s, t, row)


@router.post("/tenants/{t}/root-proposal/signatures", response_model=RootProposalOut)
def sign_proposal(t: TenantPath, body: EnvelopeIn, caller: CallerDep,
                  ctx: Ctx) -> RootProposalOut:
    """Merge owner signatures made over the proposal's exact payload bytes."""
    incoming = envelope_bytes(body.envelope)
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        caller.require_perm("root.manage")
        row = s.get(RootProposal, t)
        if row is None:
            raise NotFound("no root proposal")
        try:
            stored = decode_envelope(row.envelope, expect_type=ROOT_TYPE)
            new = decode_envelope(incoming, expect_type=ROOT_TYPE)
        except TrustError as exc:
            raise BadRequest(str(exc)) from None
        if new.payload != stored.payload:
            raise BadRequest("signatures must be over the proposal's exact payload bytes")
        current = current_root(s, t)
        previous = trusted_from_store(current.envelope).root if current else None
        root, _, _ = check_root_signatures(row.envelope, previous=previous)
        owners = dict(root.role_keys("owner"))
        if previous is not None:
            owners.update(previous.role_keys("owner"))
        merged = {sig.keyid: sig for sig in stored.signatures}
        added = 0
        for sig in new.signatures:
            key = owners.get(sig.keyid)
            if key is not None and key.verify(sig.sig, new.signed_message()):
                added += sig.keyid not in merged
                merged[sig.keyid] = sig
        if not added:
            raise BadRequest("no new valid owner signature")
        row.envelope = DsseEnvelope(stored.payload_type, stored.payload,
                                    tuple(merged[k] for k in sorted(merged))).to_bytes()
        row.updated_at = clock.now()
        return proposal_out(s, t, row)


# --- archive (issue 16) -------------------------------------------------------------------------------


@router.post("/tenants/{t}/archive", response_model=TenantOut)
async def archive_tenant(t: TenantPath, caller: CallerDep, ctx: Ctx) -> TenantOut:
    """Archive a tenant (owners, fresh TOTP step-up): its devices are disconnected and refused, no job
    is accepted for it; everything it holds, its audit log first, stays (and can be unarchived)."""
    def archive() -> tuple[TenantOut, list[str]]:
        now = clock.now()
        with ctx.store.transaction() as s:
            tenant = caller.tenant(s, t)
            caller.require_perm("tenant.archive")
            devices = list(s.scalars(select(Device.id).where(Device.tenant_id == t)))
            if tenant.archived_at is None:
                require_step_up(s, ctx.audit, tenant_id=t, actor=caller.username,
                                step_up_at=caller.step_up_at, why="archiving a tenant",
                                details={"tenant": t}, now=now)
                tenant.archived_at = now
                ctx.audit.record(s, [t], "tenant.archived", caller.username,
                                 {"tenant": t, "devices": len(devices)}, now)
            return tenant_out(s, tenant), devices

    out, devices = await asyncio.to_thread(archive)
    for d in devices:
        await ctx.gateway.disconnect(d)
    return out


@router.post("/tenants/{t}/unarchive", response_model=TenantOut)
def unarchive_tenant(t: TenantPath, caller: CallerDep, ctx: Ctx) -> TenantOut:
    """Bring an archived tenant back (owners, fresh TOTP step-up); its agents reconnect within the hour."""
    now = clock.now()
    with ctx.store.transaction() as s:
        tenant = caller.tenant(s, t)
        caller.require_perm("tenant.archive")
        if tenant.archived_at is not None:
            require_step_up(s, ctx.audit, tenant_id=t, actor=caller.username, step_up_at=caller.step_up_at,
                            why="unarchiving a tenant", details={"tenant": t}, now=now)
            tenant.archived_at = None
            ctx.audit.record(s, [t], "tenant.unarchived", caller.username, {"tenant": t}, now)
        return tenant_out(s, tenant)


# --- delete (issue 16) --------------------------------------------------------------------------------

_DAY = 86400.0


@router.post("/tenants/{t}/delete", response_model=DeletedTenantOut)
async def delete_tenant(t: TenantPath, body: TenantDeleteIn, caller: CallerDep, ctx: Ctx) -> DeletedTenantOut:
    """Delete an archived tenant for good (an owner who reaches every tenant, its name typed again, a
    fresh TOTP step-up). In one transaction every row it holds goes; its audit log stays, readable,
    for ``deleted_tenant_audit_days``; its webhook secrets and SIEM TLS files are removed after."""
    def delete_all() -> tuple[DeletedTenantOut, list[str]]:
        now = clock.now()
        with ctx.store.transaction() as s:
            tenant = caller.tenant(s, t)
            caller.require_perm("tenant.delete")
            if caller.tenants is not None:
                raise Forbidden("only an owner who reaches every tenant may delete one")
            if tenant.archived_at is None:
                raise Conflict(f"archive the tenant first (rampart tenant archive {tenant.name}); "
                               "deletion cannot be undone")
            if body.confirm != tenant.name:
                raise BadRequest("the name typed does not match the tenant's name: nothing deleted")
            require_step_up(s, ctx.audit, tenant_id=t, actor=caller.username, step_up_at=caller.step_up_at,
                            why="deleting a tenant", details={"tenant": t}, now=now)
            targets = list(s.scalars(select(NotifyTarget.id).where(NotifyTarget.tenant_id == t)))
            name = tenant.name
            removed = purge_tenant(s, t)
            gone = DeletedTenant(id=t, name=name, deleted_at=now, deleted_by=caller.username,
                                 audit_until=now + ctx.limits.deleted_tenant_audit_days * _DAY)
            s.add(gone)
            details = {"tenant": t, "name": name, "rows": sum(removed.values())}
            ctx.audit.record(s, [t, SERVER_LOG], "tenant.deleted", caller.username, details, now)
            return deleted_out(gone, removed), targets

    out, targets = await asyncio.to_thread(delete_all)
    for target in targets:  # after the commit: a failed deletion keeps working secrets
        forget_secret(ctx.config, target)
    shutil.rmtree(tls_files_dir(ctx.config, t), ignore_errors=True)
    return out


def deleted_out(row: DeletedTenant, removed: dict[str, int] | None = None) -> DeletedTenantOut:
    return DeletedTenantOut(id=row.id, name=row.name, deleted_at=row.deleted_at, deleted_by=row.deleted_by,
                            audit_until=row.audit_until, removed=removed or {})


@router.get("/deleted-tenants", response_model=list[DeletedTenantOut])
def list_deleted_tenants(caller: CallerDep, ctx: Ctx) -> list[DeletedTenantOut]:
    """Deleted tenants whose audit log is still kept (accounts that reach every tenant)."""
    if caller.tenants is not None:
        return []
    with ctx.store.read() as s:
        return [deleted_out(r) for r in s.scalars(select(DeletedTenant).order_by(DeletedTenant.deleted_at))]
