"""Request dependencies: the server context, the authenticated caller, tenant access.

Invariants:

* T12: a tenant-scoped handler calls :meth:`Caller.tenant` before anything
  else; it answers 404 for a tenant the caller cannot reach exactly as for one
  that does not exist, and only then checks the role (403).
* N3: :meth:`Caller.tenant` also refuses a source address outside the
  tenant's approved networks (403 ``network-refused``, audited).
* M3: a handler that changes state calls :meth:`Caller.require_perm` with
  one permission of :mod:`rampart.server.roles`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import clock
from ..access import check_network
from ..auth import SESSION_TOUCH_S, resolve_session, touch_session
from ..context import ServerContext
from ..errors import Forbidden, NotFound, Unauthenticated
from ..models import AccountTenant, DeletedTenant, Tenant
from ..roles import allowed, roles_with
from .schemas import ALERT_ID, DEVICE_ID, GRANT_ID, JOB_ID, TENANT_ID, USERNAME

bearer = HTTPBearer(auto_error=False, description="Session token from /api/v1/auth/login")

TenantPath = Annotated[str, Path(pattern=TENANT_ID, description="tenant id")]
DevicePath = Annotated[str, Path(pattern=DEVICE_ID, description="device id")]
GrantPath = Annotated[str, Path(pattern=GRANT_ID, description="grant id")]
JobPath = Annotated[str, Path(pattern=JOB_ID, description="job id")]
UsernamePath = Annotated[str, Path(pattern=USERNAME, description="account name")]
AlertPath = Annotated[str, Path(pattern=ALERT_ID, description="alert id")]


def get_ctx(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ServerContext, Depends(get_ctx)]


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated account: its role, the tenants it reaches (None: all), its session."""

    account_id: int
    username: str
    role: str
    tenants: frozenset[str] | None
    token: str
    #: Source address of the request (after trusted-proxy rewriting), if known.
    address: str | None = None
    #: When this session last passed a TOTP step-up (G5).
    step_up_at: float | None = None

    def reaches(self, tenant_id: str) -> bool:
        return self.tenants is None or tenant_id in self.tenants

    def tenant(self, s: Session, tenant_id: str) -> Tenant:
        """The tenant if the caller reaches it from an approved network; 404 if not reached."""
        row = s.get(Tenant, tenant_id) if self.reaches(tenant_id) else None
        if row is None:
            raise NotFound("tenant not found")
        check_network(row, self.address, self.username)
        return row

    def audit_log(self, s: Session, tenant_id: str) -> None:
        """Allow reading ``tenant_id``'s audit log: a tenant the caller reaches, or, for an account
        that reaches every tenant, a deleted tenant whose log is still kept; 404 otherwise."""
        if self.tenants is None and s.get(Tenant, tenant_id) is None \
                and s.get(DeletedTenant, tenant_id) is not None:
            return
        self.tenant(s, tenant_id)

    def tenant_ref(self, s: Session, ref: str) -> Tenant:
        """Resolve a tenant id or name the caller reaches; 404 otherwise (network checked)."""
        row = s.get(Tenant, ref) or s.scalars(select(Tenant).where(Tenant.name == ref)).first()
        if row is None or not self.reaches(row.id):
            raise NotFound("tenant not found")
        check_network(row, self.address, self.username)
        return row

    def scoped(self, s: Session, tenant_id: str | None, what: str) -> None:
        """404 unless the caller may see a record of ``tenant_id``.

        ``None`` marks an MSP-wide record (no tenant): MSP-wide staff only.
        """
        if tenant_id is None:
            if self.tenants is not None:
                raise NotFound(f"{what} not found")
            return
        if not self.reaches(tenant_id):
            raise NotFound(f"{what} not found")
        self.tenant(s, tenant_id)

    def require_perm(self, permission: str) -> None:
        """403 unless the caller's role holds ``permission`` (see :mod:`..roles`)."""
        if not allowed(self.role, permission):
            raise Forbidden(f"{permission} needs the role {' or '.join(roles_with(permission))}")


def client_address(request: Request) -> str | None:
    return request.client.host if request.client is not None else None


def resolve_caller(ctx: ServerContext, token: str | None, address: str | None) -> Caller:
    """The caller of a session token, or Unauthenticated."""
    if not token or len(token) > 256:
        raise Unauthenticated("not logged in")
    now = clock.now()
    with ctx.store.read() as s:  # no write lock for a request, unless the last use is stale
        account, row = resolve_session(s, token, now, ctx.limits)
        tenants = None if account.all_tenants else frozenset(s.scalars(
            select(AccountTenant.tenant_id).where(AccountTenant.account_id == account.id)))
        caller = Caller(account.id, account.username, account.role, tenants, token, address,
                        row.step_up_at)
        stale = now - row.last_used_at >= SESSION_TOUCH_S
    if stale:
        with ctx.store.transaction() as s:
            touch_session(s, token, now)
    return caller


def current_caller(ctx: Ctx, request: Request,
                   creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Caller:
    if creds is None or creds.scheme.lower() != "bearer":
        raise Unauthenticated("not logged in")
    return resolve_caller(ctx, creds.credentials, client_address(request))


CallerDep = Annotated[Caller, Depends(current_caller)]
