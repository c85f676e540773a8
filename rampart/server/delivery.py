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
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rampart.trust import DevicePublicKey, TrustError, verify_receipt
from rampart.wire import JobLog, JobMessage, encode_message

from .audit import AuditLog
from .db import Store
from .models import Device, GrantRow, JobPayload, JobRow, JobTarget, ReceiptRow, RootVersion, Tenant


class ReceiptRefused(Exception):
    """A receipt that is not this device's signed answer to one of its jobs."""


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    device_id: str
    tenant_id: str
    public: DevicePublicKey
    approved: bool
    #: pending, approved, rejected or retired (a rejected or retired device is told so and refused).
    status: str = "approved"


@dataclass(frozen=True, slots=True)
class Delivery:
    job_id: str
    checkpoint_size: int
    text: str  # the serialised ``job`` message
    more: bool = True  # another undone job existed when this one was picked


@dataclass(frozen=True, slots=True)
class _JobParts:
    tenant: str
    index: int
    job: str
    grant: str
    payloads: dict[str, str]


PARTS_CACHE = 256
MESSAGE_CACHE = 1024


class DeliveryStore:
    """Synchronous database operations; the gateway runs them in worker threads."""

    def __init__(self, store: Store, audit: AuditLog) -> None:
        self._store = store
        self._audit = audit
        self._parts: OrderedDict[str, _JobParts] = OrderedDict()
        self._messages: OrderedDict[tuple[str, int, int], str] = OrderedDict()
        self._cache_lock = threading.Lock()

    def identity(self, device_id: str) -> DeviceIdentity | None:
        with self._store.read() as s:
            d = s.get(Device, device_id)
            if d is None:
                return None
            archived = s.scalar(select(Tenant.archived_at).where(Tenant.id == d.tenant_id)) is not None
            status = "archived" if archived and d.status in ("pending", "approved") else d.status
            return DeviceIdentity(d.id, d.tenant_id, DevicePublicKey.from_text(d.public_key),
                                  status == "approved", status)

    def touch(self, device_id: str, now: float) -> None:
        with self._store.transaction() as s:
            s.execute(update(Device).where(Device.id == device_id).values(last_seen=now))

    def roots_after(self, tenant_id: str, version: int) -> list[str]:
        with self._store.read() as s:
            return [r.envelope.decode() for r in s.scalars(
                select(RootVersion).where(RootVersion.tenant_id == tenant_id,
                                          RootVersion.version > version)
                .order_by(RootVersion.version))]

    def revocations(self, tenant_id: str, now: float, limit: int = 1000) -> list[str]:
        """Signed revocations of the tenant's grants that have not expired yet (newest first)."""
        with self._store.read() as s:
            return [r.decode() for r in s.scalars(
                select(GrantRow.revocation).where(
                    GrantRow.tenant_id == tenant_id, GrantRow.revocation.is_not(None),
                    GrantRow.not_after > now)
                .order_by(GrantRow.revoked_at.desc()).limit(limit)) if r is not None]

    def next_delivery(self, device_id: str, exclude: set[str], agent_size: int,
                      now: float) -> Delivery | None:
        """The oldest undone, unexpired job for an approved device, not in ``exclude``.

        A fan-out sends the same job to many devices that mostly reported the
        same checkpoint size, so the serialised message is built once per
        (job, checkpoint, agent size) and reused; only the lookup of the
        device's next job is per device.
        """
        with self._store.read() as s:
            status = s.scalar(select(Device.status).where(Device.id == device_id))
            if status != "approved":
                return None
            q = (select(JobRow.id).join(JobTarget, JobTarget.job_id == JobRow.id)
                 .where(JobTarget.device_id == device_id, JobTarget.state != "done",
                        JobRow.expires_at > int(now)))
            if exclude:
                q = q.where(JobRow.id.not_in(exclude))
            found = list(s.scalars(q.order_by(JobRow.log_index).limit(2)))
            if not found:
                return None
            job_id, more = found[0], len(found) > 1
            parts = self._job_parts(s, job_id)
        cp = self._audit.checkpoint_covering(parts.tenant, parts.index, now, at_least=agent_size)
        key = (job_id, cp.size, agent_size)
        text = self._messages.get(key)
        if text is None:
            with self._store.read() as s:
                inclusion = self._audit.inclusion_proof(s, parts.tenant, parts.index, cp.size)
                consistency = (self._audit.consistency_proof(s, parts.tenant, agent_size, cp.size)
                               if agent_size <= cp.size else [])
            text = encode_message(JobMessage(
                job_id=job_id, job=parts.job, grant=parts.grant, payloads=parts.payloads,
                log=JobLog(checkpoint=cp.envelope.decode(), index=parts.index,
                           inclusion=[h.hex() for h in inclusion],
                           consistency=[h.hex() for h in consistency])))
            self._remember(self._messages, key, text, MESSAGE_CACHE)
        return Delivery(job_id, cp.size, text, more)

    def _job_parts(self, s: Session, job_id: str) -> _JobParts:
        """A job's immutable delivery parts (envelopes and payloads), cached by job id."""
        parts = self._parts.get(job_id)
        if parts is None:
            job = s.get(JobRow, job_id)
            assert job is not None
            grant = s.get(GrantRow, job.grant_id)
            assert grant is not None
            payloads = {p.name: base64.b64encode(p.data).decode() for p in s.scalars(
                select(JobPayload).where(JobPayload.job_id == job_id))}
            parts = _JobParts(job.tenant_id, job.log_index, job.envelope.decode(),
                              grant.envelope.decode(), payloads)
            self._remember(self._parts, job_id, parts, PARTS_CACHE)
        return parts

    def _remember(self, cache: OrderedDict[Any, Any], key: Any, value: Any, limit: int) -> None:
        with self._cache_lock:
            cache[key] = value
            while len(cache) > limit:
                cache.popitem(last=False)

    def commit_batch(self, receipts: list[tuple[str, str, bytes]], sent: list[tuple[str, str]],
                     now: float) -> list[bool | ReceiptRefused]:
        """Group commit: store many receipts and "sent" marks in one transaction.

        Each receipt is checked on its own (a bad one is refused, the others
        still commit); the result list matches ``receipts``: True stored, False
        already stored, or the ReceiptRefused for that one. If the batch loses a
        race with another server process, each receipt is retried alone.
        """
        results: list[bool | ReceiptRefused] = []
        try:
            with self._store.transaction() as s:
                for job_id, device_id in sent:
                    s.execute(update(JobTarget).where(
                        JobTarget.job_id == job_id, JobTarget.device_id == device_id,
                        JobTarget.state == "pending").values(state="sent", sent_at=now))
                seen: set[tuple[str, str]] = set()
                for device_id, job_id, data in receipts:
                    if (device_id, job_id) in seen:
                        results.append(False)
                        continue
                    seen.add((device_id, job_id))
                    try:
                        results.append(self._store_receipt(s, device_id, job_id, data, now))
                    except ReceiptRefused as exc:
                        results.append(exc)
            return results
        except IntegrityError:
            return [self._store_receipt_alone(d, j, b, now) for d, j, b in receipts]

    def _store_receipt_alone(self, device_id: str, job_id: str, data: bytes,
                             now: float) -> bool | ReceiptRefused:
        try:
            return self.store_receipt(device_id, job_id, data, now)
        except ReceiptRefused as exc:
            return exc

    def store_receipt(self, device_id: str, job_id: str, data: bytes, now: float) -> bool:
        """Store, log and mark done; False if already stored; ReceiptRefused if not valid."""
        try:
            with self._store.transaction() as s:
                return self._store_receipt(s, device_id, job_id, data, now)
        except IntegrityError:  # a concurrent copy of the same receipt won the race
            return False

    def _store_receipt(self, s: Session, device_id: str, job_id: str, data: bytes,
                       now: float) -> bool:
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
