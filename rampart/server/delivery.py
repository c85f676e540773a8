"""The gateway's database side: device identity, job delivery and receipt intake.

Invariants (docs/design/protocol.md, "Agent protocol"; T15):

* Only approved devices are given jobs (S3); a job is offered while its
  target is not ``done`` and the job has not expired, oldest first, so an
  agent that was offline or crashed gets every job it has not answered.
* Each job is sent with an inclusion proof against a signed checkpoint that
  covers it and a consistency proof from the checkpoint size the agent last
  reported, so the agent can check the log only grew (T7).
* A job or grant that commits a device set is sent with this device's own
  inclusion proofs (O(log N)), built from the stored targets and the grant's
  stored list; the job message is otherwise the same for every device.
* A target becomes ``done`` in the same transaction that stores the receipt
  (verified with the device's own key) and appends it to the log: a crash
  loses neither, and a replayed receipt is acknowledged without a second entry.
"""

from __future__ import annotations

import base64
import functools
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rampart.trust import (
    GRANT_TYPE,
    JOB_TYPE,
    DeviceProofs,
    DevicePublicKey,
    DeviceSet,
    DeviceSetTree,
    Grant,
    Job,
    TrustError,
    UsageError,
    decode_envelope,
    decode_payload,
    verify_receipt,
)
from rampart.wire import JobLog, JobMessage, encode_message

from .audit import AuditLog
from .db import Store
from .models import (
    Device,
    GrantRow,
    JobCancellation,
    JobPayload,
    JobRow,
    JobTarget,
    ReceiptRow,
    RootVersion,
    Tenant,
)
from .tenant_cache import TenantCache
from .tenant_roots import current_root, trusted_from_store

log = logging.getLogger(__name__)
T = TypeVar("T")

# The statements every connection and every fan-out chunk runs, built once as Core statements (no
# statement construction or ORM work per call; their compiled form is cached by SQLAlchemy).
_DT: Table = Device.__table__  # type: ignore[assignment]
_TT: Table = Tenant.__table__  # type: ignore[assignment]
_JT: Table = JobTarget.__table__  # type: ignore[assignment]
_JR: Table = JobRow.__table__  # type: ignore[assignment]
_IDENTITY = (select(_DT.c.tenant_id, _DT.c.public_key, _DT.c.status, _TT.c.archived_at)
             .join(_TT, _TT.c.id == _DT.c.tenant_id).where(_DT.c.id == bindparam("device")))
_APPROVED_AMONG = select(_DT.c.id).where(_DT.c.id.in_(bindparam("ids", expanding=True)),
                                         _DT.c.status == "approved")
_UNDONE_OF = (select(_JT.c.device_id, _JR.c.id).join(_JR, _JT.c.job_id == _JR.c.id)
              .where(_JT.c.device_id.in_(bindparam("ids", expanding=True)),
                     _JT.c.state.in_(("pending", "sent")), _JR.c.expires_at > bindparam("now"))
              .order_by(_JT.c.device_id, _JR.c.log_index))


@dataclass(frozen=True, slots=True)
class _Checked:
    """A receipt that verified, ready to be logged and stored."""

    job_id: str
    device_id: str
    tenant_id: str
    data: bytes
    outcome: str


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
    #: Not sent: the job waits for the outside witnesses' co-signatures until this time (epoch s).
    held_until: float = 0.0


@dataclass(frozen=True, slots=True)
class ConnectEnvelopes:
    """The signed envelopes a new connection is sent before any job (DeliveryStore.on_connect)."""

    roots: list[str]
    revocations: list[str]
    cancellations: list[str]


@dataclass(frozen=True, slots=True)
class _TenantEnvelopes:
    """A tenant's part of what every new connection is sent, as one snapshot read it."""

    roots: tuple[tuple[int, str], ...]  # (version, envelope), oldest first
    revocations: tuple[str, ...]
    cancellations: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DeliveryAsk:
    """One device's question "what is my next job?": the jobs it was already sent (and has not
    answered) are left out; ``agent_size`` is the checkpoint size it last reported."""

    device_id: str
    exclude: frozenset[str]
    agent_size: int


def chunks(items: list[T], size: int) -> Iterator[list[T]]:
    """``items`` in consecutive lists of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _update_targets(s: Session, pairs: Sequence[tuple[str, str]], *where: Any, **values: Any) -> None:
    """Set ``values`` on the targets of (job id, device id) ``pairs`` that also match ``where``:
    one UPDATE per job and chunk of devices."""
    by_job: dict[str, list[str]] = {}
    for job_id, device_id in pairs:
        by_job.setdefault(job_id, []).append(device_id)
    for job_id, ids in by_job.items():
        for chunk in chunks(ids, LOOKUP_CHUNK):
            s.execute(update(JobTarget).where(JobTarget.job_id == job_id,
                                              JobTarget.device_id.in_(chunk), *where).values(**values))


@dataclass(frozen=True, slots=True)
class _JobParts:
    tenant: str
    index: int
    job: str
    grant: str
    payloads: dict[str, str]
    #: The device sets the job and its grant commit (None: listed), from their signed payloads.
    job_set: DeviceSet | None = None
    grant_id: str = ""
    grant_set: DeviceSet | None = None
    created_at: float = 0.0


def _committed(device_set: DeviceSet | msgspec.UnsetType) -> DeviceSet | None:
    return device_set if isinstance(device_set, DeviceSet) else None


@dataclass(frozen=True, slots=True)
class _Signer:
    tenant_id: str
    public: DevicePublicKey


@dataclass(slots=True)
class _BatchRows:
    """The rows a batch of receipts is checked against, read in the batch's transaction with one
    query per kind and job: the (job, device) targets, receipts already stored, device keys."""

    targets: set[tuple[str, str]]
    stored: set[tuple[str, str]]
    devices: dict[str, _Signer]

    @classmethod
    def load(cls, s: Session, pairs: list[tuple[str, str]]) -> _BatchRows:
        """Rows for (device id, job id) ``pairs``."""
        by_job: dict[str, set[str]] = {}
        for device_id, job_id in pairs:
            by_job.setdefault(job_id, set()).add(device_id)
        targets: set[tuple[str, str]] = set()
        stored: set[tuple[str, str]] = set()
        for job_id, device_ids in by_job.items():
            for chunk in chunks(sorted(device_ids), LOOKUP_CHUNK):
                targets.update((job_id, d) for d in s.scalars(select(JobTarget.device_id).where(
                    JobTarget.job_id == job_id, JobTarget.device_id.in_(chunk))))
                stored.update((job_id, d) for d in s.scalars(select(ReceiptRow.device_id).where(
                    ReceiptRow.job_id == job_id, ReceiptRow.device_id.in_(chunk))))
        devices: dict[str, _Signer] = {}
        wanted = sorted({d for (_, d) in targets})
        for chunk in chunks(wanted, LOOKUP_CHUNK):
            for dev_id, tenant_id, key in s.execute(select(Device.id, Device.tenant_id, Device.public_key)
                                                    .where(Device.id.in_(chunk))):
                devices[dev_id] = _Signer(tenant_id, _public_key(key))
        return cls(targets, stored, devices)


@functools.lru_cache(maxsize=65536)
def _public_key(text: str) -> DevicePublicKey:
    """A device's stored public key, parsed once (keys never change; a new one is a new text)."""
    return DevicePublicKey.from_text(text)


#: Seconds a tenant's witness policy (from its current root) is reused before it is read again.
WITNESS_POLICY_TTL_S = 2.0
#: Seconds the envelopes every new connection of a tenant is sent (roots, revocations,
#: cancellations) are reused: a fleet reconnecting reads them once, not once per device. A change
#: through this process is seen at once (the gateway forgets the tenant's on publishing).
CONNECT_ENVELOPES_TTL_S = 2.0
PARTS_CACHE = 256
#: Devices looked up per query of a fan-out (well under SQLite's bound parameter limit).
LOOKUP_CHUNK = 500
MESSAGE_CACHE = 1024
#: Device-set trees kept (each ~100 bytes per device): the jobs being fanned out now.
TREE_CACHE = 16


class DeliveryStore:
    """Synchronous database operations; the gateway runs them in worker threads."""

    def __init__(self, store: Store, audit: AuditLog, *, witness_wait_s: float = 30.0) -> None:
        self._store = store
        self._audit = audit
        #: Seconds a job of a tenant whose root asks a witness quorum waits for a co-signed
        #: checkpoint that covers it; then it goes out without one and the agent refuses it with
        #: the reason ``witness-quorum`` (a clear answer, never a hang).
        self._witness_wait_s = witness_wait_s
        self._parts: OrderedDict[str, _JobParts] = OrderedDict()
        self._messages: OrderedDict[tuple[str, int, int, int], str | JobMessage] = OrderedDict()
        self._trees: OrderedDict[str, DeviceSetTree | None] = OrderedDict()
        self.witnesses: TenantCache[tuple[int, frozenset[str]]] = TenantCache(WITNESS_POLICY_TTL_S)
        self._cache_lock = threading.Lock()
        self.connect_envelopes: TenantCache[_TenantEnvelopes] = TenantCache(CONNECT_ENVELOPES_TTL_S)

    def identity(self, device_id: str) -> DeviceIdentity | None:
        with self._store.read() as s:
            row = s.execute(_IDENTITY, {"device": device_id}).first()
        if row is None:
            return None
        tenant_id, public_key, status, archived_at = row
        if archived_at is not None and status in ("pending", "approved"):
            status = "archived"
        return DeviceIdentity(device_id, tenant_id, _public_key(public_key), status == "approved",
                              status)

    def touch(self, device_id: str, now: float) -> None:
        with self._store.transaction() as s:
            s.execute(update(Device).where(Device.id == device_id).values(last_seen=now))

    def roots_after(self, tenant_id: str, version: int) -> list[str]:
        with self._store.read() as s:
            return self._roots_after(s, tenant_id, version)

    def revocations(self, tenant_id: str, now: float, limit: int = 1000) -> list[str]:
        """Signed revocations of the tenant's grants that have not expired yet (newest first)."""
        with self._store.read() as s:
            return self._revocations(s, tenant_id, now, limit)

    def cancellations(self, tenant_id: str, now: float, limit: int = 1000) -> list[str]:
        """Signed cancellations of the tenant's jobs that have not expired yet (newest first)."""
        with self._store.read() as s:
            return self._cancellations(s, tenant_id, now, limit)

    def on_connect(self, tenant_id: str, root_version: int, now: float) -> ConnectEnvelopes:
        """What a new connection is sent before any job: the tenant's roots after the agent's
        version, its grant revocations and its job cancellations (read in one snapshot, shared by
        the tenant's connections for CONNECT_ENVELOPES_TTL_S; see :meth:`forget_tenant`)."""
        got = self.connect_envelopes.get(tenant_id, lambda: self._tenant_envelopes(tenant_id, now))
        return ConnectEnvelopes([env for version, env in got.roots if version > root_version],
                                list(got.revocations), list(got.cancellations))

    def _tenant_envelopes(self, tenant_id: str, now: float) -> _TenantEnvelopes:
        with self._store.read() as s:
            roots = tuple((v, e.decode()) for v, e in s.execute(
                select(RootVersion.version, RootVersion.envelope)
                .where(RootVersion.tenant_id == tenant_id).order_by(RootVersion.version)))
            return _TenantEnvelopes(roots, tuple(self._revocations(s, tenant_id, now, 1000)),
                                    tuple(self._cancellations(s, tenant_id, now, 1000)))

    def forget_tenant(self, tenant_id: str) -> None:
        """The tenant's roots, revocations or cancellations changed (committed): the next
        connection reads them, and so does the next delivery's witness policy."""
        self.connect_envelopes.forget(tenant_id)
        self.witnesses.forget(tenant_id)

    @staticmethod
    def _roots_after(s: Session, tenant_id: str, version: int) -> list[str]:
        return [r.decode() for r in s.scalars(
            select(RootVersion.envelope).where(RootVersion.tenant_id == tenant_id,
                                               RootVersion.version > version)
            .order_by(RootVersion.version))]

    @staticmethod
    def _revocations(s: Session, tenant_id: str, now: float, limit: int) -> list[str]:
        return [r.decode() for r in s.scalars(
            select(GrantRow.revocation).where(
                GrantRow.tenant_id == tenant_id, GrantRow.revocation.is_not(None),
                GrantRow.not_after > now)
            .order_by(GrantRow.revoked_at.desc()).limit(limit)) if r is not None]

    @staticmethod
    def _cancellations(s: Session, tenant_id: str, now: float, limit: int) -> list[str]:
        return [r.decode() for r in s.scalars(
            select(JobCancellation.envelope).where(
                JobCancellation.tenant_id == tenant_id, JobCancellation.expires_at > int(now))
            .order_by(JobCancellation.created_at.desc()).limit(limit))]

    def next_delivery(self, device_id: str, exclude: set[str], agent_size: int,
                      now: float) -> Delivery | None:
        """The oldest undone, unexpired job for an approved device, not in ``exclude``."""
        return self.next_deliveries([DeliveryAsk(device_id, frozenset(exclude), agent_size)],
                                    now).get(device_id)

    def next_deliveries(self, asks: list[DeliveryAsk], now: float) -> dict[str, Delivery | None]:
        """:meth:`next_delivery` for many devices at once (a fan-out): two queries for all of them.

        A fan-out sends the same job to many devices that mostly reported the
        same checkpoint size, so the serialised message is built once per
        (job, checkpoint, agent size) and reused; only the device's own
        inclusion proofs (a committed set) are per device.
        """
        out: dict[str, Delivery | None] = {a.device_id: None for a in asks}
        picked: list[tuple[DeliveryAsk, str, bool]] = []
        with self._store.read() as s:
            for chunk in chunks(asks, LOOKUP_CHUNK):
                ids = [a.device_id for a in chunk]
                approved = set(s.execute(_APPROVED_AMONG, {"ids": ids}).scalars())
                undone: dict[str, list[str]] = {}
                for dev, job_id in s.execute(_UNDONE_OF, {"ids": ids, "now": int(now)}):
                    undone.setdefault(dev, []).append(job_id)
                for a in chunk:
                    jobs = [j for j in undone.get(a.device_id, ()) if j not in a.exclude]
                    if a.device_id in approved and jobs:
                        picked.append((a, jobs[0], len(jobs) > 1))
            parts = {job_id: self._job_parts(s, job_id) for _, job_id, _ in picked}
        for a, job_id, more in picked:
            out[a.device_id] = self._delivery(parts[job_id], job_id, a.device_id, a.agent_size,
                                              more, now)
        return out

    def _delivery(self, parts: _JobParts, job_id: str, device_id: str, agent_size: int, more: bool,
                  now: float) -> Delivery:
        """The ``job`` message for one device, or a hold while the job waits for witnesses."""
        need, witnesses = self.witness_policy(parts.tenant)
        cp = None
        if need:
            cp = self._audit.witnessed_covering(parts.tenant, parts.index, at_least=agent_size,
                                                need=need, witness_ids=witnesses)
            until = parts.created_at + self._witness_wait_s
            if cp is None and now < until:
                # A signed checkpoint that covers the job must exist for the witness to co-sign.
                self._audit.checkpoint_covering(parts.tenant, parts.index, now, at_least=agent_size)
                return Delivery(job_id, 0, "", more, held_until=until)
        if cp is None:  # no witness asked, or none came in time: the agent decides
            cp = self._audit.checkpoint_covering(parts.tenant, parts.index, now, at_least=agent_size)
        key = (job_id, cp.size, agent_size, len(cp.envelope))  # co-signatures make the envelope grow
        with self._cache_lock:
            cached = self._messages.get(key)
        if cached is None:
            with self._store.read() as s:
                inclusion = self._audit.inclusion_proof(s, parts.tenant, parts.index, cp.size)
                consistency = (self._audit.consistency_proof(s, parts.tenant, agent_size, cp.size)
                               if agent_size <= cp.size else [])
            msg = JobMessage(
                job_id=job_id, job=parts.job, grant=parts.grant, payloads=parts.payloads,
                log=JobLog(checkpoint=cp.envelope.decode(), index=parts.index,
                           inclusion=[h.hex() for h in inclusion],
                           consistency=[h.hex() for h in consistency]))
            # A committed job's message is small and gets per-device proofs: keep the struct.
            cached = msg if parts.job_set or parts.grant_set else encode_message(msg)
            self._remember(self._messages, key, cached, MESSAGE_CACHE)
        if isinstance(cached, str):
            return Delivery(job_id, cp.size, cached, more)
        return Delivery(job_id, cp.size, encode_message(msgspec.structs.replace(
            cached, proofs=self._proofs(parts, job_id, device_id))), more)

    def witness_policy(self, tenant_id: str) -> tuple[int, frozenset[str]]:
        """(co-signatures a checkpoint needs, the witness key ids) of the tenant's current root."""
        return self.witnesses.get(tenant_id, lambda: self._read_witness_policy(tenant_id))

    def _read_witness_policy(self, tenant_id: str) -> tuple[int, frozenset[str]]:
        with self._store.read() as s:
            row = current_root(s, tenant_id)
        if row is None:
            return 0, frozenset()
        root = trusted_from_store(row.envelope)
        return root.root.policy.witnesses_required, frozenset(root.witnesses)

    def _proofs(self, parts: _JobParts, job_id: str, device_id: str) -> DeviceProofs:
        """This device's proofs for the job's and the grant's committed sets (absent where none
        is committed, or where the device is not a member: it then refuses the job itself)."""
        out: dict[str, object] = {}
        for name, signed, kind, ident in (("job", parts.job_set, "job", job_id),
                                          ("grant", parts.grant_set, "grant", parts.grant_id)):
            tree = self._tree(kind, ident, signed) if signed is not None else None
            if tree is not None and device_id in tree:
                out[name] = tree.proof(device_id)
        return DeviceProofs(**out)  # type: ignore[arg-type]

    def _tree(self, kind: str, ident: str, signed: DeviceSet) -> DeviceSetTree | None:
        """The tree of a job's stored targets (``kind`` "job") or a grant's stored list ("grant"),
        cached; None (and logged) when the stored ids do not recompute to the ``signed`` set."""
        key = f"{kind}:{ident}"
        with self._cache_lock:
            if key in self._trees:
                self._trees.move_to_end(key)
                return self._trees[key]
        with self._store.read() as s:
            if kind == "job":
                ids = list(s.scalars(select(JobTarget.device_id).where(JobTarget.job_id == ident)))
            else:
                listed = s.scalar(select(GrantRow.device_list).where(GrantRow.id == ident))
                ids = listed.decode().split() if listed else []
        tree: DeviceSetTree | None = None
        try:
            tree = DeviceSetTree(ids) if ids else None
        except UsageError:  # a stored id twice
            tree = None
        if tree is None or tree.commitment != signed:
            log.error("%s: the stored device ids do not recompute to the signed device set; "
                      "its devices get no proof and refuse it", key)
            tree = None
        self._remember(self._trees, key, tree, TREE_CACHE)
        return tree

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
            j = decode_payload(decode_envelope(job.envelope, expect_type=JOB_TYPE).payload, Job)
            g = decode_payload(decode_envelope(grant.envelope, expect_type=GRANT_TYPE).payload, Grant)
            parts = _JobParts(job.tenant_id, job.log_index, job.envelope.decode(),
                              grant.envelope.decode(), payloads, _committed(j.device_set),
                              grant.id, _committed(g.device_set), job.created_at)
            self._remember(self._parts, job_id, parts, PARTS_CACHE)
        return parts

    def _remember(self, cache: OrderedDict[Any, Any], key: Any, value: Any, limit: int) -> None:
        with self._cache_lock:
            cache[key] = value
            while len(cache) > limit:
                cache.popitem(last=False)

    def commit_batch(self, receipts: list[tuple[str, str, bytes]], sent: list[tuple[str, str]],
                     now: float, seen: Sequence[str] = ()) -> list[bool | ReceiptRefused]:
        """Group commit: store many receipts, "sent" marks and last-seen times (the devices in
        ``seen`` were in contact at ``now``) in one transaction.

        Each receipt is checked on its own (a bad one is refused, the others
        still commit); the result list matches ``receipts``: True stored, False
        already stored, or the ReceiptRefused for that one. The rows a batch
        needs are read with one query per kind and job, not per receipt. If the
        batch loses a race with another server process, each receipt is retried alone.
        """
        results: list[bool | ReceiptRefused] = []
        try:
            with self._store.transaction() as s:
                _update_targets(s, sent, JobTarget.state == "pending", state="sent", sent_at=now)
                for chunk in chunks(list(seen), LOOKUP_CHUNK):
                    s.execute(update(Device).where(Device.id.in_(chunk)).values(last_seen=now))
                rows = _BatchRows.load(s, [(d, j) for d, j, _ in receipts])
                first_copy: set[tuple[str, str]] = set()
                checked: list[_Checked] = []
                for device_id, job_id, data in receipts:
                    if (device_id, job_id) in first_copy:
                        results.append(False)
                        continue
                    first_copy.add((device_id, job_id))
                    try:
                        ok = self._check_receipt(rows, device_id, job_id, data)
                    except ReceiptRefused as exc:
                        results.append(exc)
                        continue
                    if ok is None:
                        results.append(False)
                        continue
                    checked.append(ok)
                    results.append(True)
                self._record_receipts(s, checked, now)
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
        ok = self._check_receipt(_BatchRows.load(s, [(device_id, job_id)]), device_id, job_id, data)
        if ok is None:
            return False
        self._record_receipts(s, [ok], now)
        return True

    @staticmethod
    def _check_receipt(rows: _BatchRows, device_id: str, job_id: str, data: bytes) -> _Checked | None:
        """The receipt verified for this device and job; None if already stored; ReceiptRefused if not."""
        if (job_id, device_id) not in rows.targets:
            raise ReceiptRefused("no such job for this device")
        if (job_id, device_id) in rows.stored:
            return None
        device = rows.devices[device_id]
        try:
            r = verify_receipt(data, device.public)
        except TrustError as exc:
            raise ReceiptRefused(str(exc)) from None
        if r.job != job_id or r.device != device_id or r.tenant != device.tenant_id:
            raise ReceiptRefused("receipt does not name this job, device and tenant")
        return _Checked(job_id, device_id, device.tenant_id, data, r.outcome)

    def _record_receipts(self, s: Session, checked: list[_Checked], now: float) -> None:
        """Append verified receipts to their tenants' logs (one group append per tenant), store them and
        mark their targets done, in the caller's transaction (Core statements: no object per row)."""
        by_tenant: dict[str, list[_Checked]] = {}
        for c in checked:
            by_tenant.setdefault(c.tenant_id, []).append(c)
        for tenant_id, group in by_tenant.items():
            first = self._audit.append_many(s, tenant_id, [("receipt", c.data) for c in group], now)
            s.execute(insert(ReceiptRow), [
                {"job_id": c.job_id, "device_id": c.device_id, "envelope": c.data,
                 "outcome": c.outcome, "received_at": now, "log_index": first + i}
                for i, c in enumerate(group)])
        _update_targets(s, [(c.job_id, c.device_id) for c in checked], state="done", done_at=now)
