"""Scheduled work: the automation key, patch policies and the patch report (docs/patching.md).

Routes change only *when* the scheduler triggers payload-free jobs; what a job
may do is bounded by the approver-signed standing grant and checked by every
agent (rampart/server/automation.py).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import Field
from sqlalchemy import select

from rampart.trust import new_id

from .. import clock
from ..automation import public_doc
from ..errors import NotFound
from ..groups import NAME as GROUP_NAME
from ..models import PatchCycle, PatchPolicy, PatchRun
from ..patching import (
    PatchScheduler,
    cycle_doc,
    get_policy,
    latest_cycle,
    policy_doc,
    remove_policy,
    report,
    validate_policy,
)
from ..tenant_roots import current_root, current_trusted
from .deps import CallerDep, Ctx, TenantPath
from .schemas import DeviceId, In

router = APIRouter(tags=["scheduled work"])

PolicyName = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$", description="policy name")]
Doc = dict[str, Any]


class RingIn(In):
    """A ring names devices, device groups (expanded when the scheduler runs), or both."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
    devices: Annotated[list[DeviceId], Field(max_length=10_000)] = []
    groups: Annotated[list[Annotated[str, Field(pattern=GROUP_NAME)]], Field(max_length=32)] = []
    delay_s: Annotated[int, Field(ge=0, le=90 * 86400)] = 0


class PatchPolicyIn(In):
    rings: Annotated[list[RingIn], Field(min_length=1, max_length=8)]
    window: Annotated[str, Field(min_length=1, max_length=64)] = "always"
    defer_s: Annotated[int, Field(ge=0, le=90 * 86400)] = 0
    reboot: Literal["never", "notify", "if-required"] = "never"
    timeout_s: Annotated[int, Field(ge=60, le=6 * 3600)] = 1800
    enabled: bool = True


# --- the automation key ------------------------------------------------------------------------------


@router.get("/tenants/{t}/automation-key", response_model=Doc)
def get_automation_key(t: TenantPath, caller: CallerDep, ctx: Ctx) -> Doc:
    """The public half of the tenant's automation key, and whether the current root names it."""
    with ctx.store.read() as s:
        caller.tenant(s, t)
        key = ctx.automation.get(t)
        if key is None:
            raise NotFound("this tenant has no automation key yet (rampart automation enable)")
        trusted = current_trusted(s, t) if current_root(s, t) is not None else None
        return public_doc(key, trusted)


@router.post("/tenants/{t}/automation-key", response_model=Doc)
def create_automation_key(t: TenantPath, caller: CallerDep, ctx: Ctx) -> Doc:
    """Create the tenant's automation key (idempotent); owners then put it in the root."""
    now = clock.now()
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        caller.require_perm("root.manage")
        existed = ctx.automation.get(t) is not None
        key = ctx.automation.ensure(t)
        if not existed:
            ctx.audit.record(s, [t], "automation.key-created", caller.username, {"keyid": key.key_id}, now)
        trusted = current_trusted(s, t) if current_root(s, t) is not None else None
        return public_doc(key, trusted)


# --- patch policies ----------------------------------------------------------------------------------


@router.put("/tenants/{t}/patch-policies/{name}", response_model=Doc)
def set_patch_policy(t: TenantPath, name: PolicyName, body: PatchPolicyIn, caller: CallerDep,
                     ctx: Ctx) -> Doc:
    """Create or replace a policy; a running cycle keeps going with the new rings."""
    now = clock.now()
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        caller.require_perm("patch.manage")
        row = s.scalars(select(PatchPolicy).where(PatchPolicy.tenant_id == t,
                                                  PatchPolicy.name == name)).first()
        rings, win = validate_policy(s, t, name, [r.model_dump() for r in body.rings], window=body.window,
                                     defer_s=body.defer_s, reboot=body.reboot, timeout_s=body.timeout_s)
        fields = {"rings": json.dumps([r.stored_doc() for r in rings]),
                  "window": json.dumps(win.to_doc()) if win else "", "defer_s": body.defer_s,
                  "reboot": body.reboot, "timeout_s": body.timeout_s, "enabled": body.enabled,
                  "updated_at": now}
        if row is None:
            row = PatchPolicy(id=new_id("pp"), tenant_id=t, name=name, created_by=caller.username,
                              created_at=now, **fields)
            s.add(row)
        else:
            for k, v in fields.items():
                setattr(row, k, v)
        s.flush()
        ctx.audit.record(s, [t], "patch.policy-set", caller.username,
                         {"policy": name, "rings": [{"name": r.name, "devices": len(r.devices),
                                                     "groups": list(r.groups), "delay_s": r.delay_s}
                                                    for r in rings],
                          "window": body.window, "defer_s": body.defer_s, "reboot": body.reboot,
                          "enabled": body.enabled}, now)
        return policy_doc(s, row, latest_cycle(s, row.id))


@router.get("/tenants/{t}/patch-policies", response_model=list[Doc])
def list_patch_policies(t: TenantPath, caller: CallerDep, ctx: Ctx) -> list[Doc]:
    with ctx.store.read() as s:
        caller.tenant(s, t)
        rows = s.scalars(select(PatchPolicy).where(PatchPolicy.tenant_id == t).order_by(PatchPolicy.name))
        return [policy_doc(s, r, latest_cycle(s, r.id)) for r in rows]


@router.get("/tenants/{t}/patch-policies/{name}", response_model=Doc)
def show_patch_policy(t: TenantPath, name: PolicyName, caller: CallerDep, ctx: Ctx,
                      cycles: Annotated[int, Query(ge=1, le=100)] = 5) -> Doc:
    """The policy with its latest cycles and every device's run in them."""
    with ctx.store.read() as s:
        caller.tenant(s, t)
        row = get_policy(s, t, name)
        doc = policy_doc(s, row)
        recent = s.scalars(select(PatchCycle).where(PatchCycle.policy_id == row.id)
                           .order_by(PatchCycle.started_at.desc()).limit(cycles))
        doc["cycles"] = [cycle_doc(s, row, c, s.scalars(select(PatchRun).where(PatchRun.cycle_id == c.id)
                                                        .order_by(PatchRun.ring, PatchRun.device_id)))
                         for c in recent]
        return doc


@router.delete("/tenants/{t}/patch-policies/{name}", response_model=Doc)
def remove_patch_policy(t: TenantPath, name: PolicyName, caller: CallerDep, ctx: Ctx) -> Doc:
    now = clock.now()
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        caller.require_perm("patch.manage")
        row = get_policy(s, t, name)
        doc = policy_doc(s, row)
        remove_policy(s, row)
        ctx.audit.record(s, [t], "patch.policy-removed", caller.username, {"policy": name}, now)
        return doc


@router.post("/tenants/{t}/patch-policies/{name}/resume", response_model=Doc)
def resume_patch_policy(t: TenantPath, name: PolicyName, caller: CallerDep, ctx: Ctx) -> Doc:
    """Accept a halted ring's failures (approvers and owners): the next ring follows."""
    now = clock.now()
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        caller.require_perm("patch.resume")
        row = get_policy(s, t, name)
        cycle = PatchScheduler(ctx.automation, ctx.audit).resume(s, row, caller.username, now)
        return cycle_doc(s, row, cycle)


@router.get("/tenants/{t}/patch-report", response_model=Doc)
def patch_report(t: TenantPath, caller: CallerDep, ctx: Ctx,
                 older_than_s: Annotated[int, Query(ge=0, le=366 * 86400)] = 7 * 86400) -> Doc:
    """Devices missing security updates pending longer than ``older_than_s``, ring by ring."""
    with ctx.store.read() as s:
        caller.tenant(s, t)
        return report(s, t, older_than_s, clock.now())
