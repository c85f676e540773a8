"""Server-side access controls in front of the signed chain (issue 4, docs/access.md).

* G5 step-up: :func:`check_mass_action` counts the distinct devices an
  account's jobs reached in the last hour, across every tenant; a job that
  takes the count above the job's tenant limit needs a TOTP step-up on the
  same session within :data:`STEP_UP_WINDOW_S`. The count and the decision
  are serialised per account (:func:`lock_account`) until the caller's
  transaction, which stores the job, commits: concurrent submissions from
  one account cannot all read the same old count (issue 11, finding 3).
* S2 dormancy: :func:`sweep_dormant` disables accounts without a login for
  the strictest ``dormant_days`` of their tenants; :func:`disable_account`
  ends every session in the same transaction.
* N3 networks: :func:`check_network` refuses a source address outside a
  tenant's approved CIDR list (an empty list allows any).

None of these replaces a cryptographic limit of the tenant root; each
decision is an audit entry (refusals through :class:`~.errors.Refusal`).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .alerts import raise_alert
from .audit import AuditLog
from .errors import BadRequest, NetworkRefused, Refusal, StepUpRequired
from .models import Account, AccountTenant, JobRow, JobTarget, SessionRow, Tenant

STEP_UP_WINDOW_S = 300
MASS_ACTION_WINDOW_S = 3600
DEFAULT_DORMANT_DAYS = 30
MAX_NETWORKS = 64

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- approved networks (N3) -------------------------------------------------------------

def normalise_networks(items: Sequence[str]) -> list[str]:
    """Validate CIDR strings (host bits must be zero); return them normalised, deduplicated."""
    if len(items) > MAX_NETWORKS:
        raise BadRequest(f"at most {MAX_NETWORKS} networks")
    out: list[str] = []
    for item in items:
        try:
            net = ipaddress.ip_network(item.strip(), strict=True)
        except ValueError:
            raise BadRequest("each network must be CIDR notation such as 10.8.0.0/16 with "
                             "no host bits set") from None
        if str(net) not in out:
            out.append(str(net))
    return out


def tenant_networks(tenant: Tenant) -> list[IPNetwork]:
    try:
        items = json.loads(tenant.allowed_networks or "[]")
        return [ipaddress.ip_network(x) for x in items if isinstance(x, str)]
    except ValueError:  # a corrupt setting denies everything rather than allowing it
        return [ipaddress.ip_network("0.0.0.0/32")]


def address_allowed(networks: Sequence[IPNetwork], address: str | None) -> bool:
    if not networks:
        return True
    if address is None:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == n.version and ip in n for n in networks)


def check_network(tenant: Tenant, address: str | None, actor: str) -> None:
    """Refuse (403 ``network-refused``, audited, alerted) a source outside the tenant's list."""
    if address_allowed(tenant_networks(tenant), address):
        return
    shown = address or "unknown"
    raise NetworkRefused(
        "your source address is not in this tenant's approved networks",
        refusal=Refusal((tenant.id,), "access.network-refused", actor, {"address": shown},
                        alert=((tenant.id,), "network-refused", f"{actor}@{shown}",
                               f"{actor} refused from unapproved network {shown}")))


def login_network_allowed(s: Session, account: Account, address: str | None) -> bool:
    """A tenant-scoped account may log in only from a network one of its tenants allows."""
    if account.all_tenants:
        return True
    tenants = list(s.scalars(select(Tenant).join(
        AccountTenant, AccountTenant.tenant_id == Tenant.id).where(
        AccountTenant.account_id == account.id)))
    if not tenants:
        return True
    return any(address_allowed(tenant_networks(t), address) for t in tenants)


# --- mass-action step-up (G5) -------------------------------------------------------------

def lock_account(s: Session, account_id: int) -> None:
    """Hold the account's row lock until the transaction ends: one G5 decision at a time.

    PostgreSQL: ``SELECT ... FOR NO KEY UPDATE`` on the account row (it does
    not block foreign-key checks of sessions and keys referring to the account,
    only other holders of this lock); statements after it see every job a
    previous holder committed (READ COMMITTED takes a snapshot per statement).
    SQLite: the clause is not rendered; a write transaction starts with
    ``BEGIN IMMEDIATE`` (:mod:`.db`), so writers are already serialised.
    """
    s.execute(select(Account.id).where(Account.id == account_id)
              .with_for_update(key_share=True))


def devices_reached(s: Session, account_id: int, since: float) -> set[str]:
    """Distinct devices targeted by the account's jobs created at or after ``since``."""
    rows = s.scalars(select(JobTarget.device_id).join(JobRow, JobRow.id == JobTarget.job_id)
                     .where(JobRow.account_id == account_id, JobRow.created_at >= since)
                     .distinct())
    return set(rows)


def step_up_fresh(step_up_at: float | None, now: float) -> bool:
    return step_up_at is not None and 0 <= now - step_up_at <= STEP_UP_WINDOW_S


def check_mass_action(s: Session, audit: AuditLog, *, account_id: int, actor: str,
                      step_up_at: float | None, tenant: Tenant, devices: Iterable[str],
                      now: float) -> None:
    """Refuse a job that takes the account past the tenant limit without a fresh step-up.

    A job allowed *because of* a step-up is recorded as ``stepup.passed`` in
    the tenant log (in the caller's transaction, with the job itself). The
    caller must store the job in the same transaction: the account lock taken
    here is what makes the count and the decision one step under concurrency.
    """
    lock_account(s, account_id)
    targets = set(devices)
    reached = devices_reached(s, account_id, now - MASS_ACTION_WINDOW_S)
    total = len(reached | targets)
    limit = tenant.mass_action_limit
    if total <= limit:
        return
    details = {"devices_in_hour": total, "limit": limit, "job_devices": len(targets)}
    if step_up_fresh(step_up_at, now):
        audit.record(s, [tenant.id], "stepup.passed", actor, {**details, "for": "job"}, now)
        return
    raise StepUpRequired(
        f"step-up required: this job would take you to {total} distinct devices within an hour "
        f"(tenant limit {limit}); confirm with a fresh TOTP code",
        refusal=Refusal((tenant.id,), "stepup.required", actor, {**details, "for": "job"}))


def require_step_up(s: Session, audit: AuditLog, *, tenant_id: str, actor: str,
                    step_up_at: float | None, why: str, details: dict[str, object],
                    now: float) -> None:
    """Refuse unless this session stepped up recently; record the pass when it did."""
    if step_up_fresh(step_up_at, now):
        audit.record(s, [tenant_id], "stepup.passed", actor, {**details, "for": why}, now)
        return
    raise StepUpRequired(
        f"step-up required before {why}; confirm with a fresh TOTP code",
        refusal=Refusal((tenant_id,), "stepup.required", actor, {**details, "for": why}))


# --- dormant and disabled accounts (S2) --------------------------------------------------

def account_tenant_ids(s: Session, account: Account) -> list[str]:
    if account.all_tenants:
        return []
    return list(s.scalars(select(AccountTenant.tenant_id).where(
        AccountTenant.account_id == account.id)))


def dormant_days_for(s: Session, account: Account) -> int:
    """The strictest ``dormant_days`` of the account's tenants; MSP-wide accounts: the default.

    An MSP-wide account is not bound by one customer's setting (a tenant owner
    could otherwise disable MSP staff); it gets :data:`DEFAULT_DORMANT_DAYS`.
    """
    if account.all_tenants:
        return DEFAULT_DORMANT_DAYS
    days = [d for d in s.scalars(select(Tenant.dormant_days).join(
        AccountTenant, AccountTenant.tenant_id == Tenant.id).where(
        AccountTenant.account_id == account.id)) if d and d > 0]
    return min(days) if days else DEFAULT_DORMANT_DAYS


def last_active(account: Account) -> float:
    return max(account.created_at, account.last_login_at or 0.0, account.enabled_at or 0.0)


def is_dormant(s: Session, account: Account, now: float) -> bool:
    return now - last_active(account) > dormant_days_for(s, account) * 86400


def disable_account(s: Session, audit: AuditLog, account: Account, *, reason: str, actor: str,
                    now: float) -> int:
    """Disable login and delete every session in this transaction; audit and alert.

    Returns how many sessions were ended.
    """
    account.disabled_at = now
    account.disabled_reason = reason
    result = s.execute(delete(SessionRow).where(SessionRow.account_id == account.id))
    ended = int(getattr(result, "rowcount", 0) or 0)
    tenants = account_tenant_ids(s, account)
    audit.record(s, audit.logs_for_account(s, account), "account.disabled", actor,
                 {"username": account.username, "reason": reason, "sessions_ended": ended}, now)
    scopes: list[str | None] = list(tenants) if tenants else [None]
    raise_alert(s, scopes, kind="account-disabled", severity="warning",
                dedup=account.username,
                subject=f"account {account.username} disabled ({reason})",
                detail=f"{account.username} was disabled by {actor}: {reason}; "
                       f"{ended} session(s) ended", now=now)
    return ended


def sweep_dormant(s: Session, audit: AuditLog, now: float) -> list[str]:
    """Disable every enabled account that is dormant at ``now``; return their names."""
    out: list[str] = []
    for account in s.scalars(select(Account).where(Account.disabled_at.is_(None))):
        if is_dormant(s, account, now):
            disable_account(s, audit, account, reason="dormant", actor="rampart", now=now)
            out.append(account.username)
    return out


def enable_account(s: Session, audit: AuditLog, account: Account, *, actor: str,
                   now: float) -> None:
    """Re-enable a disabled or locked account; dormancy counts afresh from now."""
    account.disabled_at = None
    account.disabled_reason = None
    account.enabled_at = now
    account.locked_until = 0.0
    account.failed_logins = 0
    audit.record(s, audit.logs_for_account(s, account), "account.enabled", actor,
                 {"username": account.username}, now)

