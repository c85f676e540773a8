"""Roles and what each may do: the one permission table (M3, G1; docs/access.md).

Every route that changes state names one permission here and calls
``Caller.require_perm``; reading a tenant's records needs only that the caller
reaches the tenant (``Caller.tenant``). A test walks every route of the API
with every role against an independent expectation table.

Roles:

* ``viewer``: read-only monitoring of the tenants it reaches.
* ``customer-viewer``: read-only, exactly one tenant; sees all MSP activity
  there (C2), including the audit log.
* ``technician``: requests grants and signs jobs; never approves.
* ``approver``: approves grants (never their own request, never for their
  own key), revokes grants, approves devices.
* ``owner``: accounts, tenants, roots, tenant settings; may also approve.
"""

from __future__ import annotations

from typing import Final

ROLES: Final = ("owner", "approver", "technician", "viewer", "customer-viewer")

_STAFF: Final = frozenset({"owner", "approver", "technician"})

PERMISSIONS: Final[dict[str, frozenset[str]]] = {
    # accounts, tenants and roots
    "account.manage": frozenset({"owner"}),
    "tenant.create": frozenset({"owner"}),
    "tenant.settings": frozenset({"owner"}),
    "tenant.archive": frozenset({"owner"}),
    "tenant.delete": frozenset({"owner"}),
    "root.manage": frozenset({"owner"}),
    # keys: anyone who may sign something
    "key.register": _STAFF,
    # devices
    "device.enrol": _STAFF,
    "device.approve": frozenset({"owner", "approver"}),
    "device.rename": _STAFF,
    # device groups only choose what the patch scheduler considers; grants still name devices
    "group.manage": _STAFF,
    # grants and jobs
    "grant.request": frozenset({"technician"}),
    "grant.approve": frozenset({"owner", "approver"}),
    "grant.revoke": frozenset({"owner", "approver"}),
    "job.create": frozenset({"technician"}),
    # a technician cancels the jobs their key signed, an approver or owner any (the signature decides)
    "job.cancel": _STAFF,
    # remote sessions: the relay socket of a shell job the same account submitted (docs/remote-support.md)
    "session.open": frozenset({"technician"}),
    # audit log and alerts
    "checkpoint.sign": _STAFF,
    # an outside witness's co-signature: its signature is the authority, any account that reaches
    # the tenant may carry it (docs/design/witness.md)
    "checkpoint.cosign": frozenset(ROLES),
    "alert.manage": _STAFF,
    "notify.manage": frozenset({"owner"}),
    # the service statement a customer is given (C1, M7); reading it and the posture report needs reach only
    "statement.manage": frozenset({"owner"}),
    "checks.manage": _STAFF,
    # Script checks have read-only routes only (/tenants/{t}/script-checks...): one is added as a
    # signed repeating job ("job.create") and stopped by revoking its grant ("grant.revoke").
    # telemetry (docs/monitoring.md)
    "tools.manage": frozenset({"owner", "approver"}),
    "catalog.import": frozenset({"owner"}),
    "inventory.request": _STAFF,
    # scheduled work (docs/patching.md): when payload-free jobs run; approvers sign the grants
    "patch.manage": _STAFF,
    "patch.resume": frozenset({"owner", "approver"}),
    "backup.manage": _STAFF,
    # directory audit (docs/directory-audit.md): adding one hands the server a bind credential
    "directory.manage": frozenset({"owner"}),
    "directory.audit": _STAFF,
}


def allowed(role: str, permission: str) -> bool:
    """Whether ``role`` holds ``permission``; an unknown permission is held by no one."""
    return role in PERMISSIONS.get(permission, frozenset())


def roles_with(permission: str) -> list[str]:
    return [r for r in ROLES if allowed(r, permission)]
