"""Script checks on the server: results the agents report, alerts, overdue checks (issue 5).

A script check is a repeating script job (``Job.repeat``), signed once by a
technician and stored like every job (:mod:`.api.jobs`); the agents run it on
their own schedule (:mod:`rampart.agent.script_checks`). The server only
*receives* results: nothing here sends anything to an agent, so the server
can neither start, speed up nor change a check (docs/design/script-checks.md).

Per result (``check-result`` on the agent gateway):

* Refused, storing nothing, unless the job is a script check of the
  connection's own tenant and the connection's device is one of its targets,
  the device is approved, and the run time is plausible (not in the future,
  not before the check existed). Every field is bounded by the strict
  :class:`rampart.wire.check_result.CheckResult` decoding; NUL characters are
  replaced before storing (T13).
* Stored once per (job, device, agent sequence number), so a result resent
  after a lost acknowledgement is not counted twice; the history keeps the
  newest :data:`HISTORY_MAX` per job and device; the latest is in
  ``script_check_status``.
* A failing run opens one ``script-check-failed`` alert per (job, device),
  resolved by the next passing run; any result resolves ``script-check-overdue``.

:meth:`ScriptCheckStore.sweep_overdue` (every few seconds, with the monitoring
checks) raises ``script-check-overdue`` for a live check whose results stopped
arriving for :data:`OVERDUE_INTERVALS` intervals from a device connected here,
and resolves it when the check ended (its ``until``, its grant's end or revocation).
It also raises ``script-check-grant-ending`` (one per check) when the check's grant
ends before the check's own ``until`` and is within :func:`grant_warning_s` of its
end, so a check does not stop unnoticed; resolved when the check ended.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from rampart.wire.check_result import CheckResult

from .alerts import raise_alert, resolve
from .db import Store
from .models import Device, GrantRow, JobRow, JobTarget, ScriptCheck, ScriptCheckResult, ScriptCheckStatus
from .telemetry import live_alert

log = logging.getLogger("rampart.server.script_checks")

ALERT_FAILED = "script-check-failed"
ALERT_OVERDUE = "script-check-overdue"
ALERT_GRANT_ENDING = "script-check-grant-ending"
#: Warn at most this long before a check's grant ends (a day: time to get a new grant approved).
GRANT_WARNING_MAX_S = 86400
#: Results kept per (job, device).
HISTORY_MAX = 200
#: A live check is overdue on a connected device after this many of its intervals without a result.
OVERDUE_INTERVALS = 3
#: Added to the overdue limit (run time, transport).
OVERDUE_SLACK_S = 5.0
CLOCK_SKEW_S = 300.0


def grant_warning_s(span_s: float) -> float:
    """How long before its grant ends a check's ``script-check-grant-ending`` alert is raised: a
    day, or half the time from the check's creation to the grant's end when that is shorter (so
    a new check is not flagged at once)."""
    return min(GRANT_WARNING_MAX_S, span_s / 2)


class ResultRefused(ValueError):
    """A reported result was refused (one line for the agent); nothing was stored."""


@dataclass(frozen=True, slots=True)
class Stored:
    duplicate: bool


def _clean(text: str) -> str:
    return text.replace("\x00", "\ufffd")


def _dedup(job_id: str, device_id: str) -> str:
    return f"{job_id}:{device_id}"


class ScriptCheckStore:
    """Synchronous database work for script checks; the gateway and the cadence run it in threads."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def ingest(self, device_id: str, tenant_id: str, seq: int, r: CheckResult, now: float) -> Stored:
        """Store one result reported over ``device_id``'s authenticated connection, or raise ResultRefused."""
        with self._store.transaction() as s:
            check = s.get(ScriptCheck, r.job)
            if check is None or check.tenant_id != tenant_id:
                raise ResultRefused("no such script check for this device")
            if s.get(JobTarget, (r.job, device_id)) is None:
                raise ResultRefused("this device is not a target of that script check")
            device = s.get(Device, device_id)
            if device is None or device.status != "approved":
                raise ResultRefused("this device is not approved")
            if r.run_at > now + CLOCK_SKEW_S or r.run_at < check.created_at - CLOCK_SKEW_S:
                raise ResultRefused("the run time is outside the check's life")
            if s.scalars(select(ScriptCheckResult.id).where(
                    ScriptCheckResult.job_id == r.job, ScriptCheckResult.device_id == device_id,
                    ScriptCheckResult.seq == seq)).first() is not None:
                return Stored(duplicate=True)
            s.add(ScriptCheckResult(
                job_id=r.job, device_id=device_id, seq=seq, run_at=r.run_at, duration_s=r.duration_s,
                exit_code=r.exit_code, timed_out=r.timed_out, ok=r.ok, stdout=_clean(r.stdout),
                stderr=_clean(r.stderr), detail=_clean(r.detail), received_at=now))
            status = s.get(ScriptCheckStatus, (r.job, device_id))
            latest = status is None or r.run_at >= status.last_run_at
            if status is None:
                status = ScriptCheckStatus(job_id=r.job, device_id=device_id, tenant_id=tenant_id,
                                           last_run_at=r.run_at, last_received_at=now, ok=r.ok,
                                           exit_code=r.exit_code, detail=_clean(r.detail),
                                           interval_s=r.interval_s, runs=0, failures=0)
                s.add(status)
            status.runs += 1
            status.failures += 0 if r.ok else 1
            status.last_received_at = now
            if latest:
                status.last_run_at, status.ok, status.exit_code = r.run_at, r.ok, r.exit_code
                status.detail, status.interval_s = _clean(r.detail), r.interval_s
            s.flush()
            self._prune(s, r.job, device_id)
            overdue = live_alert(s, tenant_id, ALERT_OVERDUE, _dedup(r.job, device_id))
            if overdue is not None:
                resolve(overdue, f"device:{device_id}", now)
            if latest:
                self._alert(s, check, device, r, now)
        return Stored(duplicate=False)

    @staticmethod
    def _prune(s: Session, job_id: str, device_id: str) -> None:
        old = list(s.scalars(select(ScriptCheckResult.id).where(
            ScriptCheckResult.job_id == job_id, ScriptCheckResult.device_id == device_id)
            .order_by(ScriptCheckResult.id.desc()).offset(HISTORY_MAX).limit(1000)))
        if old:
            s.execute(delete(ScriptCheckResult).where(ScriptCheckResult.id.in_(old)))

    @staticmethod
    def _alert(s: Session, check: ScriptCheck, device: Device, r: CheckResult, now: float) -> None:
        dedup = _dedup(check.job_id, device.id)
        alert = live_alert(s, check.tenant_id, ALERT_FAILED, dedup)
        if r.ok:
            if alert is not None:
                resolve(alert, f"device:{device.id}", now)
            return
        label = check.name or check.job_id
        why = r.detail or ("timed out" if r.timed_out else f"exit code {r.exit_code}")
        detail = f"script check {check.job_id} on {device.id}: {why}"
        if alert is None:
            raise_alert(s, [check.tenant_id], kind=ALERT_FAILED, severity="warning", dedup=dedup,
                        subject=f"script check {label} failed on {device.hostname or device.id}: {why}",
                        detail=detail, now=now, device_id=device.id)
        else:
            alert.detail = detail[:2000]
            alert.last_seen = now

    def sweep_overdue(self, now: float, connected: Collection[str]) -> int:
        """Raise ``script-check-overdue`` where results stopped; resolve it for ended checks."""
        raised = 0
        with self._store.transaction() as s:
            rows = s.execute(
                select(ScriptCheck, GrantRow.id, GrantRow.not_after, GrantRow.revoked_at)
                .join(JobRow, JobRow.id == ScriptCheck.job_id)
                .join(GrantRow, GrantRow.id == JobRow.grant_id)).all()
            for check, grant_id, not_after, revoked_at in rows:
                live = now < check.until and now < not_after and revoked_at is None
                raised += self._grant_ending(s, check, grant_id, not_after, live, now)
                targets = s.execute(
                    select(JobTarget.device_id, JobTarget.done_at, ScriptCheckStatus)
                    .outerjoin(ScriptCheckStatus, (ScriptCheckStatus.job_id == JobTarget.job_id)
                               & (ScriptCheckStatus.device_id == JobTarget.device_id))
                    .where(JobTarget.job_id == check.job_id)).all()
                for device_id, done_at, status in targets:
                    dedup = _dedup(check.job_id, device_id)
                    alert = live_alert(s, check.tenant_id, ALERT_OVERDUE, dedup)
                    if not live:
                        if alert is not None:
                            resolve(alert, "rampart", now)
                        continue
                    last = status.last_received_at if status is not None else done_at
                    if last is None or device_id not in connected or alert is not None:
                        continue
                    interval = max(check.every_s, status.interval_s if status is not None else 0)
                    late = now - last
                    if late > OVERDUE_INTERVALS * interval + OVERDUE_SLACK_S:
                        label = check.name or check.job_id
                        raise_alert(s, [check.tenant_id], kind=ALERT_OVERDUE, severity="warning",
                                    dedup=dedup,
                                    subject=f"script check {label} reported nothing from {device_id} "
                                            f"for {int(late)} s",
                                    detail=f"script check {check.job_id} on {device_id}: no result for "
                                           f"{int(late)} s (runs every {interval} s)", now=now,
                                    device_id=device_id)
                        raised += 1
        return raised

    @staticmethod
    def _grant_ending(s: Session, check: ScriptCheck, grant_id: str, not_after: int, live: bool,
                      now: float) -> int:
        alert = live_alert(s, check.tenant_id, ALERT_GRANT_ENDING, check.job_id)
        if not live:
            if alert is not None:
                resolve(alert, "rampart", now)
            return 0
        if alert is not None or check.until <= not_after \
                or not_after - now > grant_warning_s(not_after - check.created_at):
            return 0
        label = check.name or check.job_id
        left = max(0, int(not_after - now))
        raise_alert(s, [check.tenant_id], kind=ALERT_GRANT_ENDING, severity="warning",
                    dedup=check.job_id,
                    subject=f"script check {label} stops in {left // 3600}h {left % 3600 // 60}m, "
                            f"when its grant {grant_id} ends",
                    detail=f"script check {check.job_id} was signed to run until {check.until} but "
                           f"its grant {grant_id} ends at {not_after}: sign it again under a new "
                           f"grant (rampart checks script ... --request-grant)", now=now)
        return 1
