"""Device groups: named sets of a tenant's devices, for patch rings (docs/patching.md).

A group decides only which devices the scheduler *considers* for a ring. It
never widens what a job may touch: every job still names explicit devices,
and an agent runs it only under an approver-signed grant listing that device.
A device added to a group used by a patch policy is therefore patched only
once a standing grant covering it is approved; until then the scheduler says
so in a ``patch-grant-missing`` alert.

Invariants:

* A group holds devices of its own tenant only (checked on every change).
* A group named by a patch policy cannot be removed (409); a membership
  change that would put a device in two rings or two policies is refused
  (rampart/server/patching.py ``check_placement``), in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .errors import BadRequest, NotFound
from .models import Device, DeviceGroup, DeviceGroupMember

NAME = r"^[a-z0-9][a-z0-9_-]{0,31}$"
MAX_MEMBERS = 10_000


def get_group(s: Session, tenant_id: str, name: str) -> DeviceGroup:
    row = s.scalars(select(DeviceGroup).where(DeviceGroup.tenant_id == tenant_id,
                                              DeviceGroup.name == name)).first()
    if row is None:
        raise NotFound(f"no device group {name}")
    return row


def check_devices(s: Session, tenant_id: str, devices: Iterable[str]) -> None:
    """BadRequest unless every id is a device of this tenant (another tenant's looks unknown)."""
    wanted = set(devices)
    if not wanted:
        return
    known = set(s.scalars(select(Device.id).where(Device.tenant_id == tenant_id, Device.id.in_(wanted))))
    if known != wanted:
        raise BadRequest(f"unknown device {sorted(wanted - known)[0]}")


def members(s: Session, group_id: str) -> list[str]:
    q = select(DeviceGroupMember.device_id).where(DeviceGroupMember.group_id == group_id)
    return sorted(s.scalars(q))


def members_by_name(s: Session, tenant_id: str, names: Iterable[str], *, strict: bool = True
                    ) -> dict[str, tuple[str, ...]]:
    """Each named group's devices, sorted; an unknown name is a BadRequest (or empty if not strict)."""
    wanted = set(names)
    if not wanted:
        return {}
    out: dict[str, list[str]] = {n: [] for n in wanted}
    rows = s.execute(select(DeviceGroup.name, DeviceGroupMember.device_id)
                     .outerjoin(DeviceGroupMember, DeviceGroupMember.group_id == DeviceGroup.id)
                     .where(DeviceGroup.tenant_id == tenant_id, DeviceGroup.name.in_(wanted))).all()
    found = {name for name, _ in rows}
    if strict and found != wanted:
        raise BadRequest(f"unknown device group {sorted(wanted - found)[0]}")
    for name, device_id in rows:
        if device_id is not None:
            out[name].append(device_id)
    return {n: tuple(sorted(d)) for n, d in out.items()}


def groups_of_devices(s: Session, tenant_id: str, devices: list[str] | None = None) -> dict[str, list[str]]:
    """Device id -> the names of the groups it is in (sorted), for listings (only ``devices`` if given)."""
    out: dict[str, list[str]] = {}
    stmt = (select(DeviceGroup.name, DeviceGroupMember.device_id)
            .join(DeviceGroupMember, DeviceGroupMember.group_id == DeviceGroup.id)
            .where(DeviceGroup.tenant_id == tenant_id))
    if devices is not None:
        stmt = stmt.where(DeviceGroupMember.device_id.in_(devices))
    for name, device_id in s.execute(stmt.order_by(DeviceGroup.name)):
        out.setdefault(device_id, []).append(name)
    return out


def set_members(s: Session, group: DeviceGroup, devices: Iterable[str]) -> None:
    """Replace the group's members (the caller checked the ids belong to the tenant)."""
    wanted = sorted(set(devices))
    if len(wanted) > MAX_MEMBERS:
        raise BadRequest(f"a group holds at most {MAX_MEMBERS} devices")
    s.execute(delete(DeviceGroupMember).where(DeviceGroupMember.group_id == group.id))
    s.add_all(DeviceGroupMember(group_id=group.id, device_id=d) for d in wanted)
    s.flush()


def group_doc(s: Session, group: DeviceGroup, used_by: list[str]) -> dict[str, Any]:
    return {"name": group.name, "description": group.description, "devices": members(s, group.id),
            "used_by": used_by, "created_by": group.created_by, "created_at": group.created_at,
            "updated_at": group.updated_at}
