"""Device groups (rampart/server/groups.py): named sets of a tenant's devices for patch rings.

A group never widens what a job may touch (every job names explicit devices
under an approver-signed grant); it decides which devices the patch
scheduler considers. Every change is audited and re-checks that no device is
in two rings or two policies.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from rampart.trust import new_id

from .. import clock, groups
from ..context import ServerContext
from ..errors import Conflict
from ..models import DeviceGroup
from ..patching import check_placement, policies_by_group
from .deps import CallerDep, Ctx, TenantPath
from .schemas import DeviceId, In

router = APIRouter(tags=["devices"])

GroupName = Annotated[str, Path(pattern=groups.NAME, description="device group name")]
Doc = dict[str, Any]


class GroupIn(In):
    devices: Annotated[list[DeviceId], Field(max_length=groups.MAX_MEMBERS)] = []
    description: Annotated[str, Field(max_length=256)] = ""


class MembersIn(In):
    add: Annotated[list[DeviceId], Field(max_length=groups.MAX_MEMBERS)] = []
    remove: Annotated[list[DeviceId], Field(max_length=groups.MAX_MEMBERS)] = []


def _replace_members(s: Session, ctx: ServerContext, who: str, g: DeviceGroup, after: set[str],
                     now: float) -> Doc:
    """Store the group's new members, re-check ring placement, audit what changed (one transaction)."""
    before = set(groups.members(s, g.id))
    groups.set_members(s, g, after)
    g.updated_at = now
    check_placement(s, g.tenant_id)
    ctx.audit.record(s, [g.tenant_id], "group.set", who,
                     {"group": g.name, "added": sorted(after - before), "removed": sorted(before - after)},
                     now)
    return _doc(s, g)


def _doc(s: Session, g: DeviceGroup) -> Doc:
    return groups.group_doc(s, g, policies_by_group(s, g.tenant_id).get(g.name, []))


@router.get("/tenants/{t}/device-groups", response_model=list[Doc])
def list_groups(t: TenantPath, caller: CallerDep, ctx: Ctx) -> list[Doc]:
    with ctx.store.read() as s:
        caller.tenant(s, t)
        rows = s.scalars(select(DeviceGroup).where(DeviceGroup.tenant_id == t).order_by(DeviceGroup.name))
        used = policies_by_group(s, t)
        return [groups.group_doc(s, g, used.get(g.name, [])) for g in rows]


@router.get("/tenants/{t}/device-groups/{name}", response_model=Doc)
def show_group(t: TenantPath, name: GroupName, caller: CallerDep, ctx: Ctx) -> Doc:
    with ctx.store.read() as s:
        caller.tenant(s, t)
        return _doc(s, groups.get_group(s, t, name))


@router.put("/tenants/{t}/device-groups/{name}", response_model=Doc)
def set_group(t: TenantPath, name: GroupName, body: GroupIn, caller: CallerDep, ctx: Ctx) -> Doc:
    """Create a group or replace its devices and description."""
    now = clock.now()
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        caller.require_perm("group.manage")
        groups.check_devices(s, t, body.devices)
        g = s.scalars(select(DeviceGroup).where(DeviceGroup.tenant_id == t, DeviceGroup.name == name)).first()
        if g is None:
            g = DeviceGroup(id=new_id("dg"), tenant_id=t, name=name, description=body.description,
                            created_by=caller.username, created_at=now, updated_at=now)
            s.add(g)
            s.flush()
        g.description = body.description
        return _replace_members(s, ctx, caller.username, g, set(body.devices), now)


@router.post("/tenants/{t}/device-groups/{name}/members", response_model=Doc)
def change_members(t: TenantPath, name: GroupName, body: MembersIn, caller: CallerDep, ctx: Ctx) -> Doc:
    """Add and remove devices (removal wins for a device named in both)."""
    now = clock.now()
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        caller.require_perm("group.manage")
        g = groups.get_group(s, t, name)
        groups.check_devices(s, t, [*body.add, *body.remove])
        after = (set(groups.members(s, g.id)) | set(body.add)) - set(body.remove)
        return _replace_members(s, ctx, caller.username, g, after, now)


@router.delete("/tenants/{t}/device-groups/{name}", response_model=Doc)
def remove_group(t: TenantPath, name: GroupName, caller: CallerDep, ctx: Ctx) -> Doc:
    """Remove a group that no patch policy names."""
    now = clock.now()
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        caller.require_perm("group.manage")
        g = groups.get_group(s, t, name)
        used = policies_by_group(s, t).get(name, [])
        if used:
            raise Conflict(f"device group {name} is named by patch policy {used[0]}; change the policy first")
        doc = groups.group_doc(s, g, used)
        groups.set_members(s, g, [])
        s.delete(g)
        ctx.audit.record(s, [t], "group.removed", caller.username, {"group": name}, now)
        return doc
