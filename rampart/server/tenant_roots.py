"""Publishing tenant roots, checked exactly as an agent will check them.

The server cannot make a root (it holds no owner key); it only refuses to
relay one an agent would refuse (T1, T6):

* version 1 must carry its own owner threshold (what ``pin_root`` checks);
* version N+1 must pass ``update_root`` from the stored version N (owner
  thresholds of both N and N+1, no skipped or repeated version, same tenant);
* every root must name this tenant's log key, or agents could not verify a
  single checkpoint, and must be unexpired when published;
* no root may name another tenant's operator key (M5, :func:`check_keys_exclusive`).
"""

from __future__ import annotations

import functools

from sqlalchemy import select
from sqlalchemy.orm import Session

from rampart.trust import (
    TenantRoot,
    TrustedRoot,
    TrustError,
    pin_root,
    root_sha256,
    update_root,
)

from .errors import BadRequest, Conflict
from .models import AuditLogRow, OperatorKeyRow, RootVersion


@functools.lru_cache(maxsize=1024)
def trusted_from_store(envelope: bytes) -> TrustedRoot:
    """Rebuild the TrustedRoot of a root that passed :func:`check_publishable` when stored.

    Expiry is deliberately not re-checked (``now=-1``): an expired current
    root must still be the base of its own rotation; agents check expiry.
    """
    return pin_root(envelope, expected_sha256=root_sha256(envelope), now=-1)


def current_root(s: Session, tenant_id: str) -> RootVersion | None:
    return s.scalars(select(RootVersion).where(RootVersion.tenant_id == tenant_id)
                     .order_by(RootVersion.version.desc()).limit(1)).first()


def current_trusted(s: Session, tenant_id: str) -> TrustedRoot:
    row = current_root(s, tenant_id)
    if row is None:
        raise Conflict("this tenant has no root yet")
    return trusted_from_store(row.envelope)


def check_publishable(s: Session, tenant_id: str, envelope: bytes, now: int) -> TrustedRoot:
    """Check ``envelope`` as the next root of ``tenant_id``; BadRequest if an agent would refuse."""
    current = current_root(s, tenant_id)
    try:
        if current is None:
            trusted = pin_root(envelope, expected_sha256=root_sha256(envelope), now=now)
            if trusted.version != 1:
                raise BadRequest("the first root of a tenant must be version 1")
        else:
            trusted = update_root(trusted_from_store(current.envelope), [envelope], now=now)
    except TrustError as exc:
        raise BadRequest(str(exc)) from None
    if trusted.tenant != tenant_id:
        raise BadRequest("root names another tenant")
    log = s.get(AuditLogRow, tenant_id)
    if log is None or log.log_keyid not in trusted.root.log_keys:
        raise BadRequest("root does not name this tenant's audit log key")
    return trusted


def check_keys_exclusive(s: Session, tenant_id: str, root: TenantRoot, *,
                         shared_allowed: bool) -> None:
    """M5: refuse a root naming an operator key of another tenant (unless sharing is allowed).

    A key conflicts when it is registered to another tenant (or to every
    tenant), or when another tenant's current root names it. The message
    never names the other tenant.
    """
    if shared_allowed:
        return
    keyids = set(root.keys)
    for row in s.scalars(select(OperatorKeyRow).where(OperatorKeyRow.keyid.in_(keyids))):
        if row.tenant_id != tenant_id:
            raise Conflict(f"key {row.keyid[:16]} is not registered for this tenant: operator "
                           "keys are per tenant (rampart key new --tenant T)")
    latest: dict[str, RootVersion] = {}
    for r in s.scalars(select(RootVersion).where(RootVersion.tenant_id != tenant_id)
                       .order_by(RootVersion.version)):
        latest[r.tenant_id] = r
    for r in latest.values():
        other = set(trusted_from_store(r.envelope).root.keys)
        shared = keyids & other
        if shared:
            raise Conflict(f"key {min(shared)[:16]} is in another tenant's root: operator keys "
                           "are per tenant (rampart key new --tenant T)")
