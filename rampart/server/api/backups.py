"""Backup policies and status (docs/patching.md, "Backups"; docs/backup-vault.md).

A policy only schedules the device's own, payload-free ``backup-run``; the
paths and the repository are the device's settings, never the server's.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import Field
from sqlalchemy.orm import Session

from .. import clock
from ..backups import device_backups, status_doc, validate_policy
from ..errors import BadRequest, NotFound
from ..models import BackupPolicyRow, Device
from .deps import CallerDep, Ctx, DevicePath, TenantPath
from .schemas import In

router = APIRouter(tags=["scheduled work"])
Doc = dict[str, Any]


class BackupPolicyIn(In):
    every_s: Annotated[int, Field(ge=60, le=90 * 86400)] = 86400
    window: Annotated[str, Field(min_length=1, max_length=64)] = "always"
    max_age_s: Annotated[int | None, Field(ge=60, le=180 * 86400)] = None
    verify_max_age_s: Annotated[int | None, Field(ge=60, le=180 * 86400)] = None
    retention: Annotated[dict[Annotated[str, Field(max_length=16)], int] | None, Field(max_length=3)] = None
    timeout_s: Annotated[int, Field(ge=60, le=86400)] = 3600
    enabled: bool = True


def _device(s: Session, t: str, d: str) -> Device:
    dev = s.get(Device, d)
    if dev is None or dev.tenant_id != t:
        raise NotFound("device not found")
    return dev


@router.put("/tenants/{t}/devices/{d}/backup-policy", response_model=Doc)
def set_backup_policy(t: TenantPath, d: DevicePath, body: BackupPolicyIn, caller: CallerDep,
                      ctx: Ctx) -> Doc:
    now = clock.now()
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        caller.require_perm("backup.manage")
        _device(s, t, d)
        win, max_age, verify, retention = validate_policy(
            every_s=body.every_s, window=body.window, max_age_s=body.max_age_s,
            verify_max_age_s=body.verify_max_age_s, retention=body.retention, timeout_s=body.timeout_s)
        row = s.get(BackupPolicyRow, d)
        fields = {"every_s": body.every_s, "window": json.dumps(win.to_doc()) if win else "",
                  "max_age_s": max_age, "verify_max_age_s": verify, "retention": json.dumps(retention),
                  "timeout_s": body.timeout_s, "enabled": body.enabled, "updated_at": now}
        if row is None:
            row = BackupPolicyRow(device_id=d, tenant_id=t, created_by=caller.username, created_at=now,
                                  trigger_error="", **fields)
            s.add(row)
        else:
            for k, v in fields.items():
                setattr(row, k, v)
        s.flush()
        ctx.audit.record(s, [t], "backup.policy-set", caller.username,
                         {"device": d, "every_s": body.every_s, "window": body.window, "max_age_s": max_age,
                          "verify_max_age_s": verify, "retention": retention, "enabled": body.enabled}, now)
        b = next(x for x in device_backups(s, t, now) if x.device_id == d)
        return status_doc(b, now)


@router.delete("/tenants/{t}/devices/{d}/backup-policy", response_model=Doc)
def remove_backup_policy(t: TenantPath, d: DevicePath, caller: CallerDep, ctx: Ctx) -> Doc:
    now = clock.now()
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        caller.require_perm("backup.manage")
        _device(s, t, d)
        row = s.get(BackupPolicyRow, d)
        if row is None:
            raise BadRequest("the device has no backup policy")
        s.delete(row)
        ctx.audit.record(s, [t], "backup.policy-removed", caller.username, {"device": d}, now)
        return {"device": d, "removed": True}


@router.get("/tenants/{t}/backup-status", response_model=list[Doc])
def backup_status(t: TenantPath, caller: CallerDep, ctx: Ctx) -> list[Doc]:
    """Every device with a backup policy or a reported backup: state, newest archive and verification."""
    now = clock.now()
    with ctx.store.read() as s:
        caller.tenant(s, t)
        return [status_doc(b, now) for b in device_backups(s, t, now)]

