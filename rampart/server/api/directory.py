"""``/tenants/{t}/directories`` and ``/tenants/{t}/directory-findings``: directory audit (G3).

Adding or removing a directory needs ``directory.manage`` (owners: it hands
the server a bind credential); running an audit now needs ``directory.audit``
(staff); findings are read by anyone who reaches the tenant (customer
viewers too, C2). A directory is stored only after a test bind over the
pinned TLS channel succeeded and the base could be read: a wrong pin, CA,
password or base is a 400 with one line and nothing stored. The bind
password is write-only: no answer, audit entry or log line holds it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rampart import tlspin

from .. import clock
from ..directory import (
    DEFAULT_PRIVILEGED,
    DirectoryError,
    DirectoryFinding,
    DirectoryRow,
    Target,
    check_target,
    new_directory,
    probe,
    run_audit,
)
from ..errors import BadRequest, Conflict, NotFound
from .deps import CallerDep, Ctx, TenantPath
from .schemas import In, Secret

router = APIRouter(tags=["directory audit"])

DIRECTORY_NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
DirectoryName = Annotated[str, Path(pattern=DIRECTORY_NAME, description="directory name")]
Dn = Annotated[str, Field(min_length=1, max_length=512)]


class DirectoryIn(In):
    name: Annotated[str, Field(pattern=DIRECTORY_NAME)]
    url: Annotated[str, Field(pattern=r"^ldaps?://[^\s/?#@]{1,253}/?$", max_length=300)]
    bind_dn: Dn
    base: Dn
    password: Secret
    starttls: bool = False
    ca_cert: Annotated[str, Field(min_length=1, max_length=65536)] | None = None
    pin_sha256: Annotated[str, Field(min_length=64, max_length=95)] | None = None
    inactive_days: Annotated[int, Field(ge=1, le=3650)] = 90
    privileged_groups: Annotated[list[Annotated[str, Field(min_length=1, max_length=512)]],
                                 Field(max_length=64)] | None = None
    every_s: Annotated[int, Field(ge=60, le=30 * 86400)] = 86400


class DirectoryOut(BaseModel):
    id: str
    tenant: str
    name: str
    url: str
    starttls: bool
    bind_dn: str
    base: str
    pinning: Literal["ca", "sha256"]
    pin_sha256: str | None
    inactive_days: int
    privileged_groups: list[str]
    every_s: int
    next_run_at: float
    last_run_at: float | None
    last_status: str
    last_detail: str
    open_findings: int
    created_by: str
    created_at: float


class AuditRunOut(BaseModel):
    directory: str
    ok: bool
    detail: str
    accounts: int
    opened: int
    resolved: int
    open_findings: int


class DirectoryFindingOut(BaseModel):
    directory: str
    kind: str
    severity: str
    account: str
    subject: str
    evidence: dict[str, Any]
    first_seen: float
    last_seen: float
    resolved_at: float | None


def directory_out(s: Session, row: DirectoryRow) -> DirectoryOut:
    n = len(list(s.scalars(select(DirectoryFinding.key).where(
        DirectoryFinding.directory_id == row.id, DirectoryFinding.resolved_at.is_(None)))))
    return DirectoryOut(id=row.id, tenant=row.tenant_id, name=row.name, url=row.url,
                        starttls=row.starttls, bind_dn=row.bind_dn, base=row.base_dn,
                        pinning="ca" if row.ca_cert is not None else "sha256", pin_sha256=row.pin_sha256,
                        inactive_days=row.inactive_days, privileged_groups=json.loads(row.privileged_groups),
                        every_s=row.every_s, next_run_at=row.next_run_at, last_run_at=row.last_run_at,
                        last_status=row.last_status, last_detail=row.last_detail, open_findings=n,
                        created_by=row.created_by, created_at=row.created_at)


def _get(s: Session, tenant_id: str, name: str) -> DirectoryRow:
    row = s.scalars(select(DirectoryRow).where(DirectoryRow.tenant_id == tenant_id,
                                               DirectoryRow.name == name)).first()
    if row is None:
        raise NotFound("directory not found")
    return row


@router.post("/tenants/{t}/directories", response_model=DirectoryOut)
def add_directory(t: TenantPath, body: DirectoryIn, caller: CallerDep, ctx: Ctx) -> DirectoryOut:
    """Add a directory to audit: test-bind over pinned TLS first; stored only if that succeeds."""
    with ctx.store.read() as s:
        caller.tenant(s, t)
        caller.require_perm("directory.manage")
        if s.scalars(select(DirectoryRow.id).where(DirectoryRow.tenant_id == t,
                                                   DirectoryRow.name == body.name)).first() is not None:
            raise Conflict(f"the tenant already has a directory named {body.name}")
    try:
        pin = tlspin.normalise_fingerprint(body.pin_sha256) if body.pin_sha256 is not None else None
    except ValueError as exc:
        raise BadRequest(f"pin_sha256: {exc}") from None
    target = Target(url=body.url.rstrip("/"), starttls=body.starttls, bind_dn=body.bind_dn,
                    base_dn=body.base, ca_cert=body.ca_cert, pin_sha256=pin)
    try:
        check_target(target)
        accounts = probe(target, body.password)
    except DirectoryError as exc:
        raise BadRequest(f"directory not added: {exc}") from None
    now = clock.now()
    privileged = body.privileged_groups if body.privileged_groups is not None else list(DEFAULT_PRIVILEGED)
    try:
        with ctx.store.transaction() as s:
            caller.tenant(s, t)
            row = new_directory(s, tenant_id=t, name=body.name, target=target, password=body.password,
                                inactive_days=body.inactive_days, privileged_groups=privileged,
                                every_s=body.every_s, actor=caller.username, now=now)
            ctx.audit.record(s, [t], "directory.added", caller.username,
                             {"directory": row.id, "name": row.name, "url": row.url, "bind_dn": row.bind_dn,
                              "base": row.base_dn, "pinning": "ca" if row.ca_cert else "sha256",
                              "accounts_seen": accounts}, now)
            return directory_out(s, row)
    except IntegrityError:
        raise Conflict(f"the tenant already has a directory named {body.name}") from None


@router.get("/tenants/{t}/directories", response_model=list[DirectoryOut])
def list_directories(t: TenantPath, caller: CallerDep, ctx: Ctx) -> list[DirectoryOut]:
    with ctx.store.read() as s:
        caller.tenant(s, t)
        rows = s.scalars(select(DirectoryRow).where(DirectoryRow.tenant_id == t).order_by(DirectoryRow.name))
        return [directory_out(s, r) for r in rows]


@router.delete("/tenants/{t}/directories/{name}", response_model=DirectoryOut)
def remove_directory(t: TenantPath, name: DirectoryName, caller: CallerDep, ctx: Ctx) -> DirectoryOut:
    """Forget a directory: its sealed password and its findings go with it."""
    now = clock.now()
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        caller.require_perm("directory.manage")
        row = _get(s, t, name)
        out = directory_out(s, row)
        s.execute(delete(DirectoryFinding).where(DirectoryFinding.directory_id == row.id))
        s.delete(row)
        ctx.audit.record(s, [t], "directory.removed", caller.username,
                         {"directory": row.id, "name": row.name}, now)
        return out


@router.post("/tenants/{t}/directories/{name}/audit", response_model=AuditRunOut)
def audit_directory(t: TenantPath, name: DirectoryName, caller: CallerDep, ctx: Ctx) -> AuditRunOut:
    """Run the directory's audit now (as the schedule would); a failed audit is answered, not raised."""
    with ctx.store.read() as s:
        caller.tenant(s, t)
        caller.require_perm("directory.audit")
        row = _get(s, t, name)
        directory_id = row.id
    result = run_audit(ctx.store, ctx.audit, directory_id, clock.now(), caller.username)
    return AuditRunOut(directory=name, ok=result.ok, detail=result.detail, accounts=result.accounts,
                       opened=result.opened, resolved=result.resolved, open_findings=result.open_total)


@router.get("/tenants/{t}/directory-findings", response_model=list[DirectoryFindingOut])
def list_findings(t: TenantPath, caller: CallerDep, ctx: Ctx,
                  status: Literal["open", "all"] = Query("open"),
                  directory: Annotated[str | None, Query(pattern=DIRECTORY_NAME)] = None,
                  limit: int = Query(5000, ge=1, le=50000)) -> list[DirectoryFindingOut]:
    """The tenant's directory findings, most severe first (open ones unless ``status=all``)."""
    with ctx.store.read() as s:
        caller.tenant(s, t)
        q = select(DirectoryFinding, DirectoryRow.name).join(
            DirectoryRow, DirectoryRow.id == DirectoryFinding.directory_id).where(
            DirectoryFinding.tenant_id == t)
        if status == "open":
            q = q.where(DirectoryFinding.resolved_at.is_(None))
        if directory is not None:
            q = q.where(DirectoryRow.name == directory)
        rank = {"critical": 0, "warning": 1, "info": 2}
        rows = sorted(s.execute(q).tuples().all(),
                      key=lambda r: (rank.get(r[0].severity, 3), r[0].kind, r[0].account))[:limit]
        return [DirectoryFindingOut(directory=dname, kind=f.kind, severity=f.severity, account=f.account,
                                    subject=f.subject, evidence=json.loads(f.evidence),
                                    first_seen=f.first_seen, last_seen=f.last_seen,
                                    resolved_at=f.resolved_at)
                for f, dname in rows]
