"""Patch policies: rings, maintenance windows, deferral, reboot notices, and the patch report.

A policy lists rings in order (pilot first). The scheduler (:class:`PatchScheduler`)
runs *cycles*: in an open window occurrence, when a device of the policy has
updates pending for at least the deferral, a cycle starts with ring 0; each
ring's devices with eligible updates get an ``os-update`` job signed with the
tenant's automation key (rampart/server/automation.py); when every job of a
ring has a receipt and none failed, the next ring starts once its delay has
passed and a window is open. A failed (or unanswered) job halts the cycle at
that ring with a critical ``patch-ring-halted`` alert: later rings are never
patched until an approver or owner resumes (``rampart patch resume``).

Security invariants:

* The scheduler can trigger only ``os-update`` (payload-free: the device's
  own signed sources, never a removal) and only under an approver-signed
  standing grant; ``check_job`` refuses everything else as agents would.
* A policy names devices of its own tenant only, each in at most one ring of
  one policy; its ids are validated before storing.
* Ages ("security update pending for N days") count from when the server first
  saw the update pending in the device's reported inventory: the device
  cannot make an update look older than the server has seen it.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from rampart import trust, windows
from rampart.trust import RECEIPT_TYPE, new_id
from rampart.wire.inventory import Inventory

from . import groups
from .alerts import raise_alert, resolve
from .audit import AuditLog
from .automation import AutomationKeyStore, NoStandingGrant, trigger
from .db import Store
from .errors import BadRequest, Conflict, NotFound
from .models import (
    Device,
    DeviceInventory,
    DevicePatchState,
    JobRow,
    PatchCycle,
    PatchPolicy,
    PatchRun,
    PendingUpdateRow,
    ReceiptRow,
    Tenant,
)
from .telemetry import TelemetryStore, live_alert
from .tenant_roots import current_trusted

log = logging.getLogger("rampart.server.patching")

MAX_RINGS = 8
MAX_DELAY_S = 90 * 86400
REBOOT_POLICIES = ("never", "notify", "if-required")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
HALTED_ALERT = "patch-ring-halted"
GRANT_ALERT = "patch-grant-missing"
REBOOT_ALERT = "reboot-required"


@dataclass(frozen=True, slots=True)
class Ring:
    """One ring as the scheduler sees it: ``devices`` is ``members`` plus the named groups' devices."""

    name: str
    devices: tuple[str, ...]
    delay_s: int
    members: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    def to_doc(self) -> dict[str, Any]:
        return {"name": self.name, "devices": list(self.devices), "members": list(self.members),
                "groups": list(self.groups), "delay_s": self.delay_s}

    def stored_doc(self) -> dict[str, Any]:
        """What ``patch_policies.rings`` keeps: explicit devices and group names, never their expansion."""
        return {"name": self.name, "devices": list(self.members), "groups": list(self.groups),
                "delay_s": self.delay_s}


def _expand(name: str, members: tuple[str, ...], groups: tuple[str, ...], delay_s: int,
            resolved: dict[str, tuple[str, ...]]) -> Ring:
    seen: dict[str, None] = dict.fromkeys(members)
    for g in groups:
        seen.update(dict.fromkeys(resolved.get(g, ())))
    return Ring(name, tuple(seen), delay_s, members, groups)


def rings_of(s: Session, row: PatchPolicy) -> list[Ring]:
    """The policy's rings with their groups expanded to the groups' current devices."""
    raw = json.loads(row.rings)
    names = {g for r in raw for g in r.get("groups", [])}
    resolved = groups.members_by_name(s, row.tenant_id, names, strict=False)
    return [_expand(r["name"], tuple(r["devices"]), tuple(r.get("groups", [])), int(r["delay_s"]), resolved)
            for r in raw]


def check_placement(s: Session, tenant_id: str, replace: tuple[str, list[Ring]] | None = None) -> None:
    """Conflict unless every device is in at most one ring of at most one policy of the tenant.

    ``replace`` is (policy name, rings) for a policy being set, checked in
    place of its stored rings. Called after every policy or group change, in
    the same transaction, so the invariant holds whichever changed. The
    tenant's row is locked first (PostgreSQL; SQLite serialises writers), so
    two concurrent changes cannot each pass the check against the other's
    old state.
    """
    s.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
    placed: dict[str, tuple[str, str]] = {}
    policies = [(p.name, rings_of(s, p)) for p in s.scalars(
        select(PatchPolicy).where(PatchPolicy.tenant_id == tenant_id).order_by(PatchPolicy.name))
        if replace is None or p.name != replace[0]]
    if replace is not None:
        policies.append(replace)
    for policy_name, rings in policies:
        for ring in rings:
            for d in ring.devices:
                where = (policy_name, ring.name)
                if d in placed:
                    first = placed[d]
                    raise Conflict(f"device {d} would be in ring {first[1]} of policy {first[0]} and "
                                   f"in ring {where[1]} of policy {where[0]}; a device is in one ring "
                                   "of one policy")
                placed[d] = where


def validate_policy(s: Session, tenant_id: str, name: str, rings: list[dict[str, Any]], *,
                    window: str, defer_s: int, reboot: str, timeout_s: int
                    ) -> tuple[list[Ring], windows.Window | None]:
    """Normalised rings (groups expanded) and window, or BadRequest/Conflict naming the first problem."""
    if not _NAME.match(name):
        raise BadRequest("policy name: lower-case letters, digits, '-' and '_', at most 32")
    if not 1 <= len(rings) <= MAX_RINGS:
        raise BadRequest(f"a policy has 1 to {MAX_RINGS} rings")
    parsed: list[tuple[str, tuple[str, ...], tuple[str, ...], int]] = []
    for i, r in enumerate(rings):
        rname = r.get("name")
        devices = r.get("devices", [])
        group_names = r.get("groups", [])
        delay = r.get("delay_s", 0)
        if not isinstance(rname, str) or not _NAME.match(rname) or rname in {x[0] for x in parsed}:
            raise BadRequest(f"ring {i + 1}: a distinct name of lower-case letters, digits, '-' and '_'")
        if not isinstance(devices, list) or len(devices) > 10000 \
                or not all(isinstance(d, str) and 0 < len(d) <= 32 for d in devices):
            raise BadRequest(f"ring {rname}: a list of device ids")
        if not isinstance(group_names, list) or len(group_names) > 32 \
                or not all(isinstance(g, str) and _NAME.match(g) for g in group_names):
            raise BadRequest(f"ring {rname}: a list of device group names")
        if not devices and not group_names:
            raise BadRequest(f"ring {rname}: name at least one device or device group")
        if len(set(devices)) != len(devices) or len(set(group_names)) != len(group_names):
            raise BadRequest(f"ring {rname}: a device or group is named twice")
        if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= MAX_DELAY_S:
            raise BadRequest(f"ring {rname}: delay_s must be 0 to {MAX_DELAY_S}")
        parsed.append((rname, tuple(devices), tuple(group_names), 0 if i == 0 else delay))
    groups.check_devices(s, tenant_id, {d for _, devs, _, _ in parsed for d in devs})
    resolved = groups.members_by_name(s, tenant_id, {g for _, _, gs, _ in parsed for g in gs})
    out = [_expand(rname, devs, gs, delay, resolved) for rname, devs, gs, delay in parsed]
    check_placement(s, tenant_id, replace=(name, out))
    try:
        win = windows.Window.parse(window)
    except windows.WindowError as exc:
        raise BadRequest(str(exc)) from None
    if isinstance(defer_s, bool) or not 0 <= defer_s <= MAX_DELAY_S:
        raise BadRequest(f"defer_s must be 0 to {MAX_DELAY_S}")
    if reboot not in REBOOT_POLICIES:
        raise BadRequest(f"reboot must be one of {', '.join(REBOOT_POLICIES)}")
    if not 60 <= timeout_s <= 6 * 3600:
        raise BadRequest("timeout_s must be 60 to 21600")
    return out, win


def policies_by_group(s: Session, tenant_id: str) -> dict[str, list[str]]:
    """Group name -> the names of the tenant's patch policies with a ring naming it (sorted)."""
    out: dict[str, list[str]] = {}
    q = select(PatchPolicy).where(PatchPolicy.tenant_id == tenant_id).order_by(PatchPolicy.name)
    for p in s.scalars(q):
        for g in sorted({g for r in json.loads(p.rings) for g in r.get("groups", [])}):
            out.setdefault(g, []).append(p.name)
    return out


def policy_doc(s: Session, row: PatchPolicy, cycle: PatchCycle | None = None) -> dict[str, Any]:
    win = windows.Window.from_doc(json.loads(row.window)) if row.window else None
    return {"id": row.id, "name": row.name, "rings": [r.to_doc() for r in rings_of(s, row)],
            "window": windows.describe(win), "defer_s": row.defer_s, "reboot": row.reboot,
            "timeout_s": row.timeout_s, "enabled": row.enabled, "created_by": row.created_by,
            "updated_at": row.updated_at, "cycle": cycle_doc(s, row, cycle) if cycle else None}


def cycle_doc(s: Session, policy: PatchPolicy, c: PatchCycle,
              runs: Iterable[PatchRun] = ()) -> dict[str, Any]:
    rings = rings_of(s, policy)
    return {"id": c.id, "state": c.state, "ring": c.ring,
            "ring_name": rings[c.ring].name if c.ring < len(rings) else None,
            "started_at": c.started_at, "finished_at": c.finished_at, "ring_done_at": c.ring_done_at,
            "detail": c.detail,
            "runs": [{"device": r.device_id, "ring": rings[r.ring].name if r.ring < len(rings) else r.ring,
                      "state": r.state, "job": r.job_id, "updated": r.updated, "failed": r.failed,
                      "reboot_required": r.reboot_required, "started_at": r.started_at,
                      "finished_at": r.finished_at, "detail": r.detail} for r in runs]}


def latest_cycle(s: Session, policy_id: str, live_only: bool = False) -> PatchCycle | None:
    q = select(PatchCycle).where(PatchCycle.policy_id == policy_id)
    if live_only:
        q = q.where(PatchCycle.state.in_(("running", "halted")))
    return s.scalars(q.order_by(PatchCycle.started_at.desc()).limit(1)).first()


# --- pending updates, with the age the server has seen ------------------------------------------------


def refresh_pending(store: Store, telemetry: TelemetryStore, now: float) -> int:
    """Fold new inventories into ``pending_updates``; returns the devices refreshed.

    Each inventory is read (and materialised) outside the write transaction
    that records it: the telemetry store writes on its own.
    """
    with store.read() as s:
        rows = s.execute(select(DeviceInventory.device_id, DeviceInventory.head, DevicePatchState.digest)
                         .outerjoin(DevicePatchState, DevicePatchState.device_id == DeviceInventory.device_id)
                         ).all()
    changed = [d for d, head, seen in rows if head != seen]
    for device_id in changed:
        stored = telemetry.inventory(device_id, now)
        if stored is not None:
            with store.transaction() as s:
                _record_pending(s, device_id, stored.inventory, stored.digest, now)
    return len(changed)


def _record_pending(s: Session, device_id: str, inv: Inventory, inv_digest: str, now: float) -> None:
    old = {(r.name, r.arch): r for r in s.scalars(
        select(PendingUpdateRow).where(PendingUpdateRow.device_id == device_id))}
    current = {(u.name, u.arch): u for u in inv.updates}
    for key, gone in old.items():
        if key not in current:
            s.delete(gone)
    for key, u in current.items():
        row = old.get(key)
        if row is None:
            s.add(PendingUpdateRow(device_id=device_id, name=u.name, arch=u.arch, candidate=u.candidate,
                                   security=u.security, security_candidate=u.security_candidate,
                                   first_seen=now, security_since=now if u.security else None))
        else:
            row.candidate = u.candidate
            row.security_candidate = u.security_candidate
            if u.security and not row.security:
                row.security_since = now
            elif not u.security:
                row.security_since = None
            row.security = u.security
    state = s.get(DevicePatchState, device_id)
    reboot = bool(inv.patching and inv.patching.reboot_required)
    if state is None:
        s.add(DevicePatchState(device_id=device_id, digest=inv_digest, reboot_required=reboot, seen_at=now))
    else:
        state.digest, state.reboot_required, state.seen_at = inv_digest, reboot, now


def _pending_out(r: PendingUpdateRow, now: float) -> dict[str, Any]:
    """A pending security update as the report shows it: the security fix (``security_version``,
    the candidate when an older agent did not say) beside the newest candidate."""
    return {"name": r.name, "candidate": r.candidate, "security_version": r.security_candidate or r.candidate,
            "days": round((now - (r.security_since or now)) / 86400, 1)}


def eligible(s: Session, devices: Iterable[str], defer_s: int, now: float) -> set[str]:
    """Devices with an update pending for at least ``defer_s`` (as the server has seen it)."""
    ids = list(devices)
    if not ids:
        return set()
    return set(s.scalars(select(PendingUpdateRow.device_id).where(
        PendingUpdateRow.device_id.in_(ids), PendingUpdateRow.first_seen <= now - defer_s).distinct()))


# --- receipts of os-update jobs ----------------------------------------------------------------------


def read_receipt(data: bytes) -> trust.Receipt | None:
    try:
        env = trust.decode_envelope(data, expect_type=RECEIPT_TYPE)
        return trust.decode_payload(env.payload, trust.Receipt)
    except trust.TrustError:
        return None


def output_text(b64: str) -> str:
    """A receipt's stdout or stderr (base64 in the signed receipt) as text."""
    try:
        return base64.b64decode(b64, validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return ""


def result_doc(receipt: trust.Receipt) -> dict[str, Any]:
    """The structured result a root action printed (empty when there is none)."""
    text = output_text(receipt.stdout)
    try:
        doc = json.loads(text) if text.startswith("{") else {}
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _settle(run: PatchRun, receipt: trust.Receipt, now: float) -> None:
    doc = result_doc(receipt)
    result = doc.get("result") if isinstance(doc.get("result"), dict) else {}
    assert isinstance(result, dict)
    changes = [c for c in result.get("changes", []) if isinstance(c, dict)]
    run.updated = sum(1 for c in changes if c.get("action") in ("upgraded", "installed"))
    run.failed = sum(1 for c in changes if c.get("action") == "failed")
    run.reboot_required = bool(result.get("reboot_required"))
    run.finished_at = now
    if receipt.outcome == "ran":
        run.state, run.detail = "ok", f"{run.updated} package(s) updated"
    else:
        run.state = "failed"
        names = ", ".join(str(c.get("name")) for c in changes if c.get("action") == "failed")[:300]
        lines = output_text(receipt.stderr).strip().splitlines()
        why = receipt.refusal or (lines or [receipt.outcome])[0][:300]
        run.detail = f"{receipt.outcome}: {why}" + (f" ({names})" if names else "")


class PatchScheduler:
    """Advances every enabled policy's cycle; one call per scheduler tick (idempotent)."""

    def __init__(self, keys: AutomationKeyStore, audit: AuditLog) -> None:
        self._keys = keys
        self._audit = audit

    def step(self, s: Session, policy: PatchPolicy, now: float) -> set[str]:
        """Advance one policy; returns the devices that got a new job (to wake after commit)."""
        rings = rings_of(s, policy)
        win = windows.Window.from_doc(json.loads(policy.window)) if policy.window else None
        occ = windows.occurrence(win, now)
        cycle = latest_cycle(s, policy.id, live_only=True)
        if cycle is None:
            if not policy.enabled or occ is None:
                return set()
            last = latest_cycle(s, policy.id)
            if last is not None and last.window_start >= occ:
                return set()
            devices = [d for r in rings for d in r.devices]
            if not eligible(s, devices, policy.defer_s, now):
                return set()
            cycle = PatchCycle(id=new_id("pc"), policy_id=policy.id, tenant_id=policy.tenant_id,
                               window_start=occ, state="running", ring=0, ring_done_at=None,
                               started_at=now, finished_at=None, detail="")
            s.add(cycle)
            s.flush()
            self._audit.record(s, [policy.tenant_id], "patch.cycle-started", "scheduler",
                               {"policy": policy.name, "cycle": cycle.id}, now)
        if cycle.state != "running" or not policy.enabled:
            return set()
        ring = rings[cycle.ring]
        runs = list(s.scalars(select(PatchRun).where(PatchRun.cycle_id == cycle.id,
                                                     PatchRun.ring == cycle.ring)))
        woken: set[str] = set()
        if not runs:
            if cycle.ring > 0 and now < (cycle.ring_done_at or 0) + ring.delay_s:
                return set()
            if occ is None:
                return set()
            targets = eligible(s, ring.devices, policy.defer_s, now)
            for d in ring.devices:
                run = PatchRun(cycle_id=cycle.id, device_id=d, ring=cycle.ring, job_id=None,
                               state="waiting" if d in targets else "up-to-date", started_at=now,
                               finished_at=None if d in targets else now, updated=0, failed=0,
                               reboot_required=False, detail="" if d in targets else "nothing pending")
                s.add(run)
                runs.append(run)
            s.flush()
        members = set(ring.devices)
        for r in runs:  # a device that left the ring (its group changed) before its job was sent
            if r.state == "waiting" and r.device_id not in members:
                r.state, r.finished_at, r.detail = "left", now, "left the ring before its job was sent"
        waiting = [r for r in runs if r.state == "waiting"]
        if waiting and occ is not None:
            woken |= self._send(s, policy, cycle, waiting, now)
        elif not waiting:
            self._grant_resolved(s, policy, cycle, now)
        for run in runs:
            if run.state == "pending":
                self._collect(s, run, now)
                if run.state == "ok" and run.reboot_required and policy.reboot == "if-required":
                    woken |= self._reboot(s, policy, run, now)
        self._conclude(s, policy, cycle, rings, runs, now)
        return woken

    def _send(self, s: Session, policy: PatchPolicy, cycle: PatchCycle, runs: list[PatchRun],
              now: float) -> set[str]:
        """Jobs for the waiting devices a standing grant covers; the others keep waiting, with an alert.

        A device no grant covers (say, one just added to a ring's group) never
        holds back the patches of the devices approvers did grant; it waits,
        and so does the ring's completion, until a grant naming it is approved
        or it leaves the ring.
        """
        key = self._keys.get(policy.tenant_id)
        dedup = f"{policy.id}"
        by_device: dict[str, str] = {}
        reason = ""
        try:
            if key is None:
                raise NoStandingGrant("the tenant has no automation key (rampart automation enable)")
            trusted = current_trusted(s, policy.tenant_id)
            jobs = trigger(s, self._audit, key, trusted, policy.tenant_id, "os-update",
                           [r.device_id for r in runs], now=now, timeout_s=policy.timeout_s,
                           skip_uncovered=True)
            by_device = {d: job for job, devices in jobs.items() for d in devices}
            missing = [r.device_id for r in runs if r.device_id not in by_device]
            if missing:
                raise NoStandingGrant.for_devices("os-update", missing)
        except (NoStandingGrant, Conflict) as exc:
            reason = str(exc) if isinstance(exc, NoStandingGrant) else exc.detail
        for r in runs:
            if r.device_id in by_device:
                r.job_id, r.state, r.started_at, r.detail = by_device[r.device_id], "pending", now, ""
            else:
                r.detail = reason
        if reason:
            alert = live_alert(s, policy.tenant_id, GRANT_ALERT, dedup)
            if cycle.detail != reason:
                cycle.detail = reason
                if alert is None:
                    raise_alert(s, [policy.tenant_id], kind=GRANT_ALERT, severity="warning", dedup=dedup,
                                subject=f"patch policy {policy.name} cannot run: {reason}"[:256],
                                detail=reason, now=now)
                else:
                    alert.detail = reason
        else:
            self._grant_resolved(s, policy, cycle, now)
        return set(by_device)

    @staticmethod
    def _grant_resolved(s: Session, policy: PatchPolicy, cycle: PatchCycle, now: float) -> None:
        """No device of the ring waits for a grant any more: the reason and its alert go."""
        cycle.detail = ""
        alert = live_alert(s, policy.tenant_id, GRANT_ALERT, policy.id)
        if alert is not None:
            resolve(alert, "scheduler", now)

    def _reboot(self, s: Session, policy: PatchPolicy, run: PatchRun, now: float) -> set[str]:
        """``if-required``: a payload-free ``reboot`` job for a device whose update needs one."""
        key = self._keys.get(policy.tenant_id)
        try:
            if key is None:
                raise NoStandingGrant("the tenant has no automation key")
            jobs = trigger(s, self._audit, key, current_trusted(s, policy.tenant_id), policy.tenant_id,
                           "reboot", [run.device_id], now=now, timeout_s=120)
        except (NoStandingGrant, Conflict) as exc:
            reason = str(exc) if isinstance(exc, NoStandingGrant) else exc.detail
            run.detail = f"{run.detail}; reboot not requested: {reason}"[:2000]
            return set()
        run.detail = f"{run.detail}; reboot requested ({next(iter(jobs))})"[:2000]
        return {run.device_id}

    def _collect(self, s: Session, run: PatchRun, now: float) -> None:
        assert run.job_id is not None
        receipt_row = s.get(ReceiptRow, (run.job_id, run.device_id))
        if receipt_row is not None:
            receipt = read_receipt(receipt_row.envelope)
            if receipt is None:
                run.state, run.detail, run.finished_at = "failed", "the receipt could not be read", now
            else:
                _settle(run, receipt, now)
            return
        job = s.get(JobRow, run.job_id)
        if job is None or now >= job.expires_at:
            run.state, run.finished_at = "failed", now
            run.detail = "no receipt before the job expired (device offline?)"

    def _conclude(self, s: Session, policy: PatchPolicy, cycle: PatchCycle, rings: list[Ring],
                  runs: list[PatchRun], now: float) -> None:
        failed = [r for r in runs if r.state == "failed"]
        if failed:
            cycle.state = "halted"
            ring = rings[cycle.ring]
            cycle.detail = (f"halted at ring {ring.name}: " + "; ".join(
                f"{r.device_id} {r.detail}" for r in failed[:5]))[:2000]
            later = [x.name for x in rings[cycle.ring + 1:]]
            raise_alert(s, [policy.tenant_id], kind=HALTED_ALERT, severity="critical", dedup=policy.id,
                        subject=f"patch policy {policy.name} halted at ring {ring.name}"[:256],
                        detail=cycle.detail + (f"; not patched: rings {', '.join(later)}" if later else ""),
                        now=now)
            self._audit.record(s, [policy.tenant_id], "patch.cycle-halted", "scheduler",
                               {"policy": policy.name, "cycle": cycle.id, "ring": ring.name,
                                "failed": sorted(r.device_id for r in failed)}, now)
            return
        if any(r.state in ("waiting", "pending") for r in runs):
            return
        self._next_ring(s, policy, cycle, rings, now, actor="scheduler")

    def _next_ring(self, s: Session, policy: PatchPolicy, cycle: PatchCycle, rings: list[Ring],
                   now: float, *, actor: str) -> None:
        if cycle.ring + 1 < len(rings):
            cycle.ring += 1
            cycle.ring_done_at = now
            cycle.state = "running"
            return
        cycle.state, cycle.finished_at, cycle.detail = "done", now, ""
        self._audit.record(s, [policy.tenant_id], "patch.cycle-done", actor,
                           {"policy": policy.name, "cycle": cycle.id}, now)

    def resume(self, s: Session, policy: PatchPolicy, who: str, now: float) -> PatchCycle:
        """An approver accepts a halted ring's failures: the cycle goes on with the next ring."""
        cycle = latest_cycle(s, policy.id, live_only=True)
        if cycle is None or cycle.state != "halted":
            raise Conflict(f"policy {policy.name} has no halted cycle")
        rings = rings_of(s, policy)
        self._audit.record(s, [policy.tenant_id], "patch.cycle-resumed", who,
                           {"policy": policy.name, "cycle": cycle.id, "ring": rings[cycle.ring].name}, now)
        self._next_ring(s, policy, cycle, rings, now, actor=who)
        alert = live_alert(s, policy.tenant_id, HALTED_ALERT, policy.id)
        if alert is not None:
            resolve(alert, who, now)
        return cycle


def reboot_notices(s: Session, now: float) -> None:
    """``notify`` and ``if-required``: one ``reboot-required`` alert per device while it reports one."""
    for policy in s.scalars(select(PatchPolicy).where(PatchPolicy.reboot.in_(("notify", "if-required")))):
        for ring in rings_of(s, policy):
            for device_id in ring.devices:
                state = s.get(DevicePatchState, device_id)
                dedup = f"device:{device_id}"
                alert = live_alert(s, policy.tenant_id, REBOOT_ALERT, dedup)
                if state is not None and state.reboot_required and alert is None:
                    raise_alert(s, [policy.tenant_id], kind=REBOOT_ALERT, severity="warning", dedup=dedup,
                                subject=f"{device_id} needs a reboot to finish its updates",
                                detail=f"device {device_id} (policy {policy.name}) reports a reboot is "
                                       "required", now=now, device_id=device_id)
                elif (state is None or not state.reboot_required) and alert is not None:
                    resolve(alert, "scheduler", now)


# --- the report -------------------------------------------------------------------------------------------


def report(s: Session, tenant_id: str, older_than_s: int, now: float) -> dict[str, Any]:
    """Ring by ring: which devices miss security updates pending for longer than ``older_than_s``.

    ``security_pending`` lists every pending security update however fresh (the overdue
    ones are ``missing_security``), so a report never reads "nothing missing" while the
    inventory shows security updates; ``devices_security_pending`` counts those devices.
    """
    devices = {d.id: d for d in s.scalars(select(Device).where(Device.tenant_id == tenant_id))}
    placed: dict[str, tuple[str, str]] = {}
    order: list[tuple[str, str]] = []
    for policy in s.scalars(select(PatchPolicy).where(PatchPolicy.tenant_id == tenant_id)
                            .order_by(PatchPolicy.name)):
        for ring in rings_of(s, policy):
            order.append((policy.name, ring.name))
            for d in ring.devices:
                placed[d] = (policy.name, ring.name)
    pending: dict[str, list[PendingUpdateRow]] = {}
    for row in s.scalars(select(PendingUpdateRow).join(Device, Device.id == PendingUpdateRow.device_id)
                         .where(Device.tenant_id == tenant_id)):
        pending.setdefault(row.device_id, []).append(row)
    states = {r.device_id: r for r in s.scalars(
        select(DevicePatchState).join(Device, Device.id == DevicePatchState.device_id)
        .where(Device.tenant_id == tenant_id))}
    last_runs: dict[str, PatchRun] = {}
    for done in s.scalars(select(PatchRun).join(Device, Device.id == PatchRun.device_id)
                          .where(Device.tenant_id == tenant_id, PatchRun.finished_at.is_not(None))
                          .order_by(PatchRun.finished_at)):
        last_runs[done.device_id] = done
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {k: [] for k in order}
    groups[("", "")] = []
    for device_id, dev in sorted(devices.items(), key=lambda kv: kv[1].hostname):
        rows = pending.get(device_id, [])
        sec = [r for r in rows if r.security and r.security_since is not None]
        overdue = sorted((r for r in sec if r.security_since is not None
                          and r.security_since <= now - older_than_s), key=lambda r: r.security_since or 0)
        run = last_runs.get(device_id)
        state = states.get(device_id)
        groups[placed.get(device_id, ("", ""))].append({
            "device": device_id, "hostname": dev.hostname,
            "inventory": state is not None,
            "pending": len(rows), "security_pending": len(sec),
            "security_updates": [_pending_out(r, now)
                                 for r in sorted(sec, key=lambda r: (r.security_since or 0, r.name))],
            "missing_security": [_pending_out(r, now) for r in overdue],
            "oldest_security_days": round((now - min(r.security_since or now for r in sec)) / 86400, 1)
            if sec else None,
            "reboot_required": bool(state and state.reboot_required),
            "last_run": None if run is None else {"state": run.state, "finished_at": run.finished_at,
                                                  "updated": run.updated, "failed": run.failed,
                                                  "detail": run.detail},
        })
    rings = [{"policy": p or None, "ring": r or None, "devices": members,
              "missing": sum(1 for m in members if m["missing_security"])}
             for (p, r), members in groups.items() if members or p]
    return {"tenant": tenant_id, "older_than_s": older_than_s, "generated_at": now, "rings": rings,
            "devices_missing": sum(x["missing"] for x in rings),
            "devices_security_pending": sum(1 for members in groups.values() for m in members
                                            if m["security_pending"])}


def get_policy(s: Session, tenant_id: str, name: str) -> PatchPolicy:
    row = s.scalars(select(PatchPolicy).where(PatchPolicy.tenant_id == tenant_id,
                                              PatchPolicy.name == name)).first()
    if row is None:
        raise NotFound("no such patch policy")
    return row


def remove_policy(s: Session, row: PatchPolicy) -> None:
    cycles = [c.id for c in s.scalars(select(PatchCycle).where(PatchCycle.policy_id == row.id))]
    if cycles:
        s.execute(delete(PatchRun).where(PatchRun.cycle_id.in_(cycles)))
        s.execute(delete(PatchCycle).where(PatchCycle.id.in_(cycles)))
    s.delete(row)
