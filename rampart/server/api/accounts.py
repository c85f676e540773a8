"""``/accounts`` and ``/keys``: operator accounts (owners only) and their public keys.

An account is not a key (T2): creating one gives it no power over any agent
until owners sign a root naming one of its keys. A tenant-scoped owner can
only create accounts within its own tenants.
"""

from __future__ import annotations

import time

from fastapi import APIRouter
from sqlalchemy import select

from rampart.trust import AutomationPublicKey, OperatorPublicKey, TrustError

from ..auth import new_token, token_hash
from ..errors import BadRequest, Conflict
from ..models import Account, AccountTenant, OperatorKeyRow
from .deps import CallerDep, Ctx
from .schemas import AccountCreatedOut, AccountIn, AccountOut, KeyIdOut, KeyIn, KeyOut

router = APIRouter(tags=["accounts"])


@router.post("/accounts", response_model=AccountCreatedOut)
def create_account(body: AccountIn, caller: CallerDep, ctx: Ctx) -> AccountCreatedOut:
    """Create an account (owner); its one-time activation token is returned once."""
    caller.require("owner")
    now = time.time()
    with ctx.store.transaction() as s:
        if body.tenants is None and caller.tenants is not None:
            raise BadRequest("only MSP-wide owners can create MSP-wide accounts")
        tenant_ids = sorted({caller.tenant_ref(s, ref).id for ref in body.tenants or []})
        if s.scalars(select(Account.id).where(Account.username == body.username)).first():
            raise Conflict("an account with this username exists")
        token = new_token()
        account = Account(username=body.username, role=body.role,
                          all_tenants=body.tenants is None, activation_token_hash=token_hash(token),
                          created_at=now, failed_logins=0, locked_until=0.0, totp_last_step=0,
                          totp_confirmed=False)
        s.add(account)
        s.flush()
        for tid in tenant_ids:
            s.add(AccountTenant(account_id=account.id, tenant_id=tid))
        s.flush()
        ctx.audit.record(s, ctx.audit.logs_for_account(s, account), "account.created",
                         caller.username, {"username": body.username, "role": body.role,
                                           "tenants": tenant_ids if body.tenants else None}, now)
    return AccountCreatedOut(username=body.username, role=body.role, activation_token=token)


@router.get("/accounts", response_model=list[AccountOut])
def list_accounts(caller: CallerDep, ctx: Ctx) -> list[AccountOut]:
    """Accounts that share a tenant with the caller (all, for MSP-wide owners)."""
    caller.require("owner")
    out: list[AccountOut] = []
    with ctx.store.transaction() as s:
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
            out.append(AccountOut(username=a.username, role=a.role, tenants=tenants,
                                  active=a.password_hash is not None,
                                  totp_confirmed=a.totp_confirmed, last_login=a.last_login_at))
    return out


def parse_operator_key(text: str) -> OperatorPublicKey | AutomationPublicKey:
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
    now = time.time()
    with ctx.store.transaction() as s:
        tenant_id = caller.tenant_ref(s, body.tenant).id if body.tenant is not None else None
        if s.get(OperatorKeyRow, key.key_id) is not None:
            raise Conflict("this key is already registered")
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
    with ctx.store.transaction() as s:
        mine = OperatorKeyRow.account_id == caller.account_id
        rows = s.scalars(select(OperatorKeyRow).where(mine).order_by(OperatorKeyRow.created_at))
        return [KeyOut(keyid=r.keyid, public=r.public, name=r.name, tenant=r.tenant_id)
                for r in rows]
