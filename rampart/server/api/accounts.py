"""``/accounts`` and ``/keys``: operator accounts (owners only) and their public keys.

An account is not a key (T2): creating one gives it no power over any agent
until owners sign a root naming one of its keys. A tenant-scoped owner can
only create and manage accounts within its own tenants. Keys are registered
for one tenant (M5) unless the server allows shared operator keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from rampart.trust import AutomationPublicKey, OperatorPublicKey, TrustError

from .. import clock
from ..access import account_tenant_ids, disable_account, enable_account, require_step_up, step_up_fresh
from ..auth import new_token, reissue_activation, token_hash
from ..errors import BadRequest, Conflict, NotFound, Refusal, StepUpRequired
from ..models import (
    Account,
    AccountTenant,
    LoginThrottle,
    OperatorKeyRow,
    RootVersion,
)
from ..tenant_roots import current_root, trusted_from_store
from ..throttle import user_key
from .deps import Caller, CallerDep, Ctx, UsernamePath
from .schemas import (
    AccountCreatedOut,
    AccountIn,
    AccountOut,
    AccountReissuedOut,
    AccountRevokedOut,
    AccountRevokeIn,
    AccountRoleIn,
    KeyIdOut,
    KeyIn,
    KeyOut,
    RevokedKeyOut,
)

router = APIRouter(tags=["accounts"])


@router.post("/accounts", response_model=AccountCreatedOut)
def create_account(body: AccountIn, caller: CallerDep, ctx: Ctx) -> AccountCreatedOut:
    """Create an account (owner); its one-time activation token is returned once."""
    caller.require_perm("account.manage")
    now = clock.now()
    with ctx.store.transaction() as s:
        if body.tenants is None and caller.tenants is not None:
            raise BadRequest("only MSP-wide owners can create MSP-wide accounts")
        if body.role == "customer-viewer" and len(set(body.tenants or [])) != 1:
            raise BadRequest("a customer-viewer account belongs to exactly one tenant")
        tenant_ids = sorted({caller.tenant_ref(s, ref).id for ref in body.tenants or []})
        if s.scalars(select(Account.id).where(Account.username == body.username)).first():
            raise Conflict("an account with this username exists")
        token = new_token()
        account = Account(username=body.username, role=body.role,
                          all_tenants=body.tenants is None, activation_token_hash=token_hash(token),
                          enrolment_expires_at=now + ctx.limits.activation_ttl_s, created_at=now,
                          failed_logins=0, locked_until=0.0, totp_last_step=0,
                          totp_confirmed=False)
        s.add(account)
        s.flush()
        for tid in tenant_ids:
            s.add(AccountTenant(account_id=account.id, tenant_id=tid))
        s.flush()
        ctx.audit.record(s, ctx.audit.logs_for_account(s, account), "account.created",
                         caller.username, {"username": body.username, "role": body.role,
                                           "tenants": tenant_ids if body.tenants else None}, now)
    return AccountCreatedOut(username=body.username, role=body.role, activation_token=token,
                             activation_expires_at=now + ctx.limits.activation_ttl_s)


@router.get("/accounts", response_model=list[AccountOut])
def list_accounts(caller: CallerDep, ctx: Ctx) -> list[AccountOut]:
    """Accounts that share a tenant with the caller (all, for MSP-wide owners)."""
    caller.require_perm("account.manage")
    out: list[AccountOut] = []
    now = clock.now()
    with ctx.store.read() as s:
        links: dict[int, list[str]] = {}
        for link in s.scalars(select(AccountTenant)):
            links.setdefault(link.account_id, []).append(link.tenant_id)
        for a in s.scalars(select(Account).order_by(Account.username)):
            tenants = None if a.all_tenants else sorted(links.get(a.id, []))
            if caller.tenants is not None:
                if tenants is not None:
                    tenants = [t for t in tenants if t in caller.tenants]
                    if not tenants:
                        continue
            out.append(account_out(a, tenants, now))
    return out


def account_out(a: Account, tenants: list[str] | None, now: float) -> AccountOut:
    status = ("disabled" if a.disabled_at is not None else "locked" if a.locked_until > now
              else "active" if a.password_hash is not None and a.totp_confirmed else "pending")
    return AccountOut(username=a.username, role=a.role, tenants=tenants,
                      active=a.password_hash is not None, totp_confirmed=a.totp_confirmed,
                      last_login=a.last_login_at, status=status,  # type: ignore[arg-type]
                      disabled_reason=a.disabled_reason, disabled_at=a.disabled_at)


def manageable_account(s: Session, caller: Caller, username: str) -> Account:
    """An account the calling owner may manage: 404 unless every tenant of it is reachable."""
    account = s.scalars(select(Account).where(Account.username == username)).first()
    if account is None:
        raise NotFound("account not found")
    if caller.tenants is not None:
        theirs = set(account_tenant_ids(s, account))
        if account.all_tenants or not theirs or not theirs <= caller.tenants:
            raise NotFound("account not found")
    return account


@router.post("/accounts/{username}/revoke", response_model=AccountRevokedOut)
def revoke_account(username: UsernamePath, body: AccountRevokeIn, caller: CallerDep,
                   ctx: Ctx) -> AccountRevokedOut:
    """Disable login at once and end every session; list the keys owners must drop from roots.

    The account's keys still verify on agents until owners publish roots
    without them (``rampart account revoke`` proposes those roots).
    """
    now = clock.now()
    with ctx.store.transaction() as s:
        account = manageable_account(s, caller, username)
        caller.require_perm("account.manage")
        if account.id == caller.account_id:
            raise BadRequest("you cannot revoke your own account")
        keys = list(s.scalars(select(OperatorKeyRow).where(
            OperatorKeyRow.account_id == account.id)))
        keyids = {k.keyid for k in keys}
        tenants = []
        for tid in s.scalars(select(RootVersion.tenant_id).distinct()):
            if not caller.reaches(tid):
                continue
            row = current_root(s, tid)
            if row is not None and keyids & set(trusted_from_store(row.envelope).root.keys):
                tenants.append(tid)
        ended = 0
        if account.disabled_at is None or account.disabled_reason != "revoked":
            ended = disable_account(s, ctx.audit, account, reason="revoked", actor=caller.username,
                                    now=now)
        ctx.audit.record(s, ctx.audit.logs_for_account(s, account), "account.revoked",
                         caller.username, {"username": account.username, "reason": body.reason,
                                           "keys": sorted(keyids), "tenants": sorted(tenants)},
                         now)
        return AccountRevokedOut(username=account.username, sessions_ended=ended,
                                 keys=[RevokedKeyOut(keyid=k.keyid, tenant=k.tenant_id)
                                       for k in keys], tenants=sorted(tenants))


@router.post("/accounts/{username}/reissue", response_model=AccountReissuedOut)
def reissue(username: UsernamePath, caller: CallerDep, ctx: Ctx) -> AccountReissuedOut:
    """Re-enrol an account from scratch (lost phone, failed enrolment): a new activation token.

    Needs a fresh step-up of the calling owner (G5). In one transaction: the
    account's password, TOTP secret and any pending enrolment are dropped (the
    old authenticator no longer logs in), every session of the account ends,
    its lockout and pacing are cleared, and a new one-time activation token is
    returned once. Nothing changes when refused. See docs/access.md, "Recovery".
    """
    now = clock.now()
    with ctx.store.transaction() as s:
        account = manageable_account(s, caller, username)
        caller.require_perm("account.manage")
        if account.id == caller.account_id:
            raise BadRequest("you cannot re-issue your own activation: another owner does it")
        if account.disabled_at is not None:
            raise Conflict("the account is disabled: enable it first (rampart account enable)")
        logs = ctx.audit.logs_for_account(s, account)
        details: dict[str, object] = {"username": account.username, "for": "account reissue"}
        if not step_up_fresh(caller.step_up_at, now):
            raise StepUpRequired(
                "step-up required before re-issuing an activation; confirm with a fresh TOTP code",
                refusal=Refusal(tuple(logs), "stepup.required", caller.username, details))
        ctx.audit.record(s, logs, "stepup.passed", caller.username, details, now)
        token, expires, ended = reissue_activation(s, ctx.audit, account, actor=caller.username,
                                                   now=now, limits=ctx.limits)
        return AccountReissuedOut(username=account.username, role=account.role,
                                  activation_token=token, activation_expires_at=expires,
                                  sessions_ended=ended)


@router.post("/accounts/{username}/unlock", response_model=AccountOut)
def unlock_account(username: UsernamePath, caller: CallerDep, ctx: Ctx) -> AccountOut:
    """End a lockout after failed logins (owners); the account's failure count restarts."""
    now = clock.now()
    with ctx.store.transaction() as s:
        account = manageable_account(s, caller, username)
        caller.require_perm("account.manage")
        account.locked_until = 0.0
        account.failed_logins = 0
        s.execute(delete(LoginThrottle).where(LoginThrottle.key == user_key(account.username)))
        ctx.audit.record(s, ctx.audit.logs_for_account(s, account), "account.unlocked",
                         caller.username, {"username": account.username}, now)
        return account_out(account, account_tenants_or_none(s, account), now)


@router.post("/accounts/{username}/enable", response_model=AccountOut)
def enable(username: UsernamePath, caller: CallerDep, ctx: Ctx) -> AccountOut:
    """Re-enable a disabled (dormant or revoked) account; dormancy counts afresh from now."""
    now = clock.now()
    with ctx.store.transaction() as s:
        account = manageable_account(s, caller, username)
        caller.require_perm("account.manage")
        if account.disabled_at is None:
            raise Conflict("the account is not disabled")
        enable_account(s, ctx.audit, account, actor=caller.username, now=now)
        return account_out(account, account_tenants_or_none(s, account), now)


def account_tenants_or_none(s: Session, account: Account) -> list[str] | None:
    return None if account.all_tenants else sorted(account_tenant_ids(s, account))


#: A passkey is registered by its key id only (its key is the SHA-256 of a blob of several
#: hundred bytes; the key itself enters a root from its holder's file, fingerprint confirmed:
#: docs/design/passkeys.md). The claim lets the account request grants for that key id.
PASSKEY_ID_PREFIX = "rampart-passkey-id:"


@dataclass(frozen=True)
class PasskeyClaim:
    key_id: str
    KIND = "passkey"

    def to_text(self) -> str:
        return PASSKEY_ID_PREFIX + self.key_id


def parse_operator_key(text: str) -> OperatorPublicKey | AutomationPublicKey | PasskeyClaim:
    if text.startswith(PASSKEY_ID_PREFIX):
        kid = text[len(PASSKEY_ID_PREFIX):]
        if len(kid) != 64 or any(c not in "0123456789abcdef" for c in kid):
            raise BadRequest("a passkey key id is 64 lowercase hex characters")
        return PasskeyClaim(kid)
    try:
        if text.startswith(AutomationPublicKey.prefix()):
            return AutomationPublicKey.from_text(text)
        return OperatorPublicKey.from_text(text)
    except TrustError as exc:
        raise BadRequest(exc.message) from None


@router.post("/keys", response_model=KeyIdOut)
def add_key(body: KeyIn, caller: CallerDep, ctx: Ctx) -> KeyIdOut:
    """Register the caller's public key (for one tenant, or every tenant it reaches)."""
    key = parse_operator_key(body.public)
    now = clock.now()
    with ctx.store.transaction() as s:
        tenant_id = caller.tenant_ref(s, body.tenant).id if body.tenant is not None else None
        caller.require_perm("key.register")
        if tenant_id is None and not ctx.config.shared_operator_keys:
            raise BadRequest("operator keys are per tenant: register this key for one tenant "
                             "(rampart key new --tenant T)")
        if s.get(OperatorKeyRow, key.key_id) is not None:
            raise Conflict("this key is already registered (operator keys are per tenant: make "
                           "another with rampart key new --tenant T)")
        s.add(OperatorKeyRow(keyid=key.key_id, public=key.to_text(), name=body.name,
                             account_id=caller.account_id, tenant_id=tenant_id, created_at=now))
        account = s.get(Account, caller.account_id)
        assert account is not None
        logs = [tenant_id] if tenant_id else ctx.audit.logs_for_account(s, account)
        ctx.audit.record(s, logs, "key.added", caller.username,
                         {"keyid": key.key_id, "name": body.name, "kind": key.KIND}, now)
    return KeyIdOut(keyid=key.key_id)


@router.get("/keys", response_model=list[KeyOut])
def list_keys(caller: CallerDep, ctx: Ctx) -> list[KeyOut]:
    with ctx.store.read() as s:
        mine = OperatorKeyRow.account_id == caller.account_id
        rows = s.scalars(select(OperatorKeyRow).where(mine).order_by(OperatorKeyRow.created_at))
        return [KeyOut(keyid=r.keyid, public=r.public, name=r.name, tenant=r.tenant_id)
                for r in rows]


@router.put("/accounts/{username}/role", response_model=AccountOut)
def change_role(username: UsernamePath, body: AccountRoleIn, caller: CallerDep, ctx: Ctx) -> AccountOut:
    """Change an account's role (owners, fresh TOTP step-up); it applies to its next request.

    Not to oneself, never leaving no MSP-wide owner, and a customer viewer keeps exactly one tenant.
    The account's signing keys keep their role in tenant roots until owners publish new roots.
    """
    now = clock.now()
    with ctx.store.transaction() as s:
        account = manageable_account(s, caller, username)
        caller.require_perm("account.manage")
        if account.role == body.role:
            return account_out(account, account_tenants_or_none(s, account), now)
        if account.id == caller.account_id:
            raise BadRequest("you cannot change your own role (another owner can)")
        tenants = account_tenants_or_none(s, account)
        if body.role == "customer-viewer" and (tenants is None or len(tenants) != 1):
            raise BadRequest("a customer-viewer account belongs to exactly one tenant")
        if account.role == "owner" and account.all_tenants:
            owners = s.scalars(select(Account.id).where(
                Account.role == "owner", Account.all_tenants.is_(True), Account.disabled_at.is_(None))).all()
            if len(owners) <= 1:
                raise BadRequest("this is the last MSP-wide owner")
        logs = ctx.audit.logs_for_account(s, account)
        require_step_up(s, ctx.audit, tenant_id=logs[0], actor=caller.username, step_up_at=caller.step_up_at,
                        why="changing an account's role", details={"username": username}, now=now)
        before = account.role
        account.role = body.role
        ctx.audit.record(s, logs, "account.role-changed", caller.username,
                         {"username": username, "from": before, "to": body.role}, now)
        return account_out(account, tenants, now)
