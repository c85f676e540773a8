"""Request dependencies: the server context, the authenticated caller, tenant access.

Invariant (T12): a tenant-scoped handler calls :meth:`Caller.tenant` before
anything else; it answers 404 for a tenant the caller cannot reach exactly as
for one that does not exist, and only then checks the role (403).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..auth import resolve_session
from ..context import ServerContext
from ..errors import Forbidden, NotFound, Unauthenticated
from ..models import AccountTenant, Tenant
from .schemas import DEVICE_ID, GRANT_ID, JOB_ID, TENANT_ID

bearer = HTTPBearer(auto_error=False, description="Session token from /api/v1/auth/login")

TenantPath = Annotated[str, Path(pattern=TENANT_ID, description="tenant id")]
DevicePath = Annotated[str, Path(pattern=DEVICE_ID, description="device id")]
GrantPath = Annotated[str, Path(pattern=GRANT_ID, description="grant id")]
JobPath = Annotated[str, Path(pattern=JOB_ID, description="job id")]


def get_ctx(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ServerContext, Depends(get_ctx)]


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated account: its role and the tenants it reaches (None: all)."""

    account_id: int
    username: str
    role: str
    tenants: frozenset[str] | None
    token: str

    def reaches(self, tenant_id: str) -> bool:
        return self.tenants is None or tenant_id in self.tenants

    def tenant(self, s: Session, tenant_id: str) -> Tenant:
        """The tenant if the caller reaches it; 404 otherwise, whether or not it exists."""
        row = s.get(Tenant, tenant_id) if self.reaches(tenant_id) else None
        if row is None:
            raise NotFound("tenant not found")
        return row

    def tenant_ref(self, s: Session, ref: str) -> Tenant:
        """Resolve a tenant id or name the caller reaches; 404 otherwise."""
        row = s.get(Tenant, ref) or s.scalars(select(Tenant).where(Tenant.name == ref)).first()
        if row is None or not self.reaches(row.id):
            raise NotFound("tenant not found")
        return row

    def require(self, *roles: str) -> None:
        if self.role not in roles:
            raise Forbidden(f"this needs the role {' or '.join(roles)}")


def current_caller(ctx: Ctx, creds: Annotated[HTTPAuthorizationCredentials | None,
                                               Depends(bearer)]) -> Caller:
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise Unauthenticated("not logged in")
    token = creds.credentials
    if len(token) > 256:
        raise Unauthenticated("not logged in")
    with ctx.store.transaction() as s:
        account = resolve_session(s, token, time.time(), ctx.limits)
        tenants = None if account.all_tenants else frozenset(s.scalars(
            select(AccountTenant.tenant_id).where(AccountTenant.account_id == account.id)))
        return Caller(account.id, account.username, account.role, tenants, token)


CallerDep = Annotated[Caller, Depends(current_caller)]
