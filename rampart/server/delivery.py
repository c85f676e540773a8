"""The gateway's database side: device identity, job delivery and receipt intake.

Invariants (docs/design/protocol.md, "Agent protocol"; T15):

* Only approved devices are given jobs (S3); a job is offered while its
  target is not ``done`` and the job has not expired, oldest first, so an
  agent that was offline or crashed gets every job it has not answered.
* Each job is sent with an inclusion proof against a signed checkpoint that
  covers it and a consistency proof from the checkpoint size the agent last
  reported, so the agent can check the log only grew (T7).
* A target becomes ``done`` in the same transaction that stores the receipt
  (verified with the device's own key) and appends it to the log: a crash
  loses neither, and a replayed receipt is acknowledged without a second entry.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from rampart.trust import DevicePublicKey, TrustError, verify_receipt

from .audit import AuditLog
from .db import Store
from .models import Device, GrantRow, JobPayload, JobRow, JobTarget, ReceiptRow, RootVersion


class ReceiptRefused(Exception):
    """A receipt that is not this device's signed answer to one of its jobs."""


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    device_id: str
    tenant_id: str
    public: DevicePublicKey
    approved: bool


@dataclass(frozen=True, slots=True)
class Delivery:
    job_id: str
    checkpoint_size: int
    message: dict[str, Any]


class DeliveryStore:
    """Synchronous database operations; the gateway runs them in worker threads."""

    def __init__(self, store: Store, audit: AuditLog) -> None:
        self._store = store
        self._audit = audit

    def identity(self, device_id: str) -> DeviceIdentity | None:
        with self._store.transaction() as s:
            d = s.get(Device, device_id)
            if d is None:
                return None
            return DeviceIdentity(d.id, d.tenant_id, DevicePublicKey.from_text(d.public_key),
                                  d.status == "approved")

    def touch(self, device_id: str, now: float) -> None:
        with self._store.transaction() as s:
            s.execute(update(Device).where(Device.id == device_id).values(last_seen=now))

    def roots_after(self, tenant_id: str, version: int) -> list[str]:
        with self._store.transaction() as s:
            return [r.envelope.decode() for r in s.scalars(
                select(RootVersion).where(RootVersion.tenant_id == tenant_id,
                                          RootVersion.version > version)
                .order_by(RootVersion.version))]

    def next_delivery(self, device_id: str, exclude: set[str], agent_size: int,
                      now: float) -> Delivery | None:
        """The oldest undone, unexpired job for an approved device, not in ``exclude``."""
        with self._store.transaction() as s:
            device = s.get(Device, device_id)
            if device is None or device.status != "approved":
                return None
            q = (select(JobRow).join(JobTarget, JobTarget.job_id == JobRow.id)
                 .where(JobTarget.device_id == device_id, JobTarget.state != "done",
                        JobRow.expires_at > int(now)))
            if exclude:
                q = q.where(JobRow.id.not_in(exclude))
            job = s.scalars(q.order_by(JobRow.log_index).limit(1)).first()
            if job is None:
                return None
            grant = s.get(GrantRow, job.grant_id)
            assert grant is not None
            payloads = {p.name: base64.b64encode(p.data).decode() for p in s.scalars(
                select(JobPayload).where(JobPayload.job_id == job.id))}
            tenant, index, job_env, grant_env = job.tenant_id, job.log_index, job.envelope, \
                grant.envelope
        cp = self._audit.checkpoint_covering(tenant, index, now)
        with self._store.transaction() as s:
            inclusion = self._audit.inclusion_proof(s, tenant, index, cp.size)
            consistency = (self._audit.consistency_proof(s, tenant, agent_size, cp.size)
                           if agent_size <= cp.size else [])
        message = {
            "type": "job", "job_id": job.id, "job": job_env.decode(), "grant": grant_env.decode(),
            "payloads": payloads,
            "log": {"checkpoint": cp.envelope.decode(), "index": index,
                    "inclusion": [h.hex() for h in inclusion],
                    "consistency": [h.hex() for h in consistency]},
        }
        return Delivery(job.id, cp.size, message)

    def mark_sent(self, job_id: str, device_id: str, now: float) -> None:
        with self._store.transaction() as s:
            s.execute(update(JobTarget).where(
                JobTarget.job_id == job_id, JobTarget.device_id == device_id,
                JobTarget.state == "pending").values(state="sent", sent_at=now))

    def store_receipt(self, device_id: str, job_id: str, data: bytes, now: float) -> bool:
        """Store, log and mark done; False if already stored; ReceiptRefused if not valid."""
        try:
            with self._store.transaction() as s:
                target = s.get(JobTarget, {"job_id": job_id, "device_id": device_id})
                if target is None:
                    raise ReceiptRefused("no such job for this device")
                if s.get(ReceiptRow, {"job_id": job_id, "device_id": device_id}) is not None:
                    return False
                device = s.get(Device, device_id)
                assert device is not None
                try:
                    r = verify_receipt(data, DevicePublicKey.from_text(device.public_key))
                except TrustError as exc:
                    raise ReceiptRefused(str(exc)) from None
                if r.job != job_id or r.device != device_id or r.tenant != device.tenant_id:
                    raise ReceiptRefused("receipt does not name this job, device and tenant")
                index = self._audit.append(s, device.tenant_id, "receipt", data, now)
                s.add(ReceiptRow(job_id=job_id, device_id=device_id, envelope=data,
                                 outcome=r.outcome, received_at=now, log_index=index))
                target.state, target.done_at = "done", now
                return True
        except IntegrityError:  # a concurrent copy of the same receipt won the race
            return False
