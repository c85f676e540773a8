"""Per-tenant append-only audit logs (RFC 9162 Merkle trees) and signed checkpoints.

Each log is a row in ``audit_logs`` (its size, locked to append) and its
entries in ``audit_entries`` (index, kind, exact data bytes, leaf hash).
Entry data is the exact envelope bytes for ``job.created`` and ``receipt``
entries, and compact JSON ``{"kind","time","actor","details"}`` otherwise.

Invariants:

* :meth:`AuditLog.append` runs inside the caller's transaction and locks the
  log row first, so indices are dense and assigned in commit order: a
  committed size ``n`` implies entries ``0..n-1`` are committed.
* The in-memory :class:`~rampart.trust.merkle.MerkleTree` per log is a cache
  filled only from committed rows by transactions that do not append, so it
  never holds a leaf that could still roll back.
* A checkpoint is signed with the log's own key over the committed size and
  root; one per (log, size). Agents refuse jobs without an inclusion proof
  against a checkpoint consistent with the last one they saw (T7).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from typing import Any, cast

from sqlalchemy import Table, func, insert, select, update
from sqlalchemy.orm import Session

from rampart.trust import (
    CHECKPOINT_TYPE,
    Checkpoint,
    DecodeError,
    Envelope,
    PublicKey,
    decode_envelope,
    encode_payload,
    sign_envelope,
    verified_signers,
)
from rampart.trust.merkle import MerkleTree, leaf_hash

from .db import Store
from .errors import BadRequest, Conflict, NotFound
from .keystore import LogKeyStore
from .models import Account, AccountTenant, AuditEntry, AuditLogRow, CheckpointRow, Tenant

#: The log for events that concern no tenant (logins of accounts that reach none).
SERVER_LOG = "tn-00000000000000000000server"

EVENT_KINDS = frozenset({
    "login", "login.failed", "key.added", "root.published", "grant.requested",
    "grant.approved", "job.created", "receipt", "device.enrolled", "device.approved",
    "account.created", "tenant.created", "device.rejected", "device.retired", "device.renamed",
    "tenant.archived", "tenant.unarchived", "account.role-changed", "tenant.deleted", "job.cancelled",
    "tenant.audit-log-removed", "device.records-removed",
    # identity and access (docs/access.md)
    "stepup.required", "stepup.verified", "stepup.passed", "account.disabled",
    "account.enabled", "account.locked", "account.unlocked", "account.revoked",
    "account.reissued", "account.enrolment-started", "account.enrolled",
    "login.network-refused", "access.network-refused", "tenant.settings", "grant.revoked",
    "alert.acknowledged", "alert.resolved",
    # alert delivery (docs/monitoring.md)
    "notify.target-added", "notify.target-removed", "check.added", "check.removed",
    # telemetry (docs/monitoring.md)
    "tool.sanctioned", "tool.unsanctioned", "catalog.imported", "inventory.requested",
    "finding.suppressed", "finding.unsuppressed",
    # scheduled work (docs/patching.md)
    "automation.key-created", "automation.triggered", "patch.policy-set", "patch.policy-removed",
    "patch.cycle-started", "patch.cycle-halted", "patch.cycle-resumed", "patch.cycle-done",
    "backup.policy-set", "backup.policy-removed",
    # device groups (docs/patching.md)
    "group.set", "group.removed",
    # remote sessions (docs/remote-support.md)
    "session.relayed", "session.recording",
    # the service statement (docs/compliance.md)
    "statement.changed",
    # directory audit (docs/directory-audit.md)
    "directory.added", "directory.removed", "directory.audited", "directory.audit-failed",
})


def event_bytes(kind: str, actor: str, details: dict[str, Any], now: float) -> bytes:
    """Compact JSON of an event entry. Callers never put secrets in ``details``."""
    doc = {"kind": kind, "time": round(now, 3), "actor": actor, "details": details}
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


#: The entries table, for the group append's Core INSERT.
_ENTRIES = cast(Table, AuditEntry.__table__)


class AuditLog:
    """Appends entries, serves proofs and signs checkpoints for every log."""

    def __init__(self, store: Store, keys: LogKeyStore) -> None:
        self._store = store
        self._keys = keys
        self._trees: dict[str, MerkleTree] = {}
        self._latest: dict[str, CheckpointRow] = {}
        self._lock = threading.Lock()

    # -- writing (inside the caller's transaction) ---------------------------------

    def create_log(self, s: Session, log_id: str) -> str:
        """Create ``log_id`` and its key; return the key's ``rampart-log-pub:`` text."""
        key = self._keys.create(log_id)
        s.add(AuditLogRow(id=log_id, size=0, log_keyid=key.key_id, log_public=key.public.to_b64()))
        s.flush()
        return key.public.to_text()

    def forget_key(self, log_id: str) -> None:
        """Delete the checkpoint key of a log that retention removed (never of a live log)."""
        self._keys.forget(log_id)

    def append(self, s: Session, log_id: str, kind: str, data: bytes, now: float) -> int:
        """Append one entry and return its index (the log row stays locked until commit)."""
        return self.append_many(s, log_id, [(kind, data)], now)

    def append_many(self, s: Session, log_id: str, entries: Sequence[tuple[str, bytes]], now: float) -> int:
        """Append entries in order with one locked read of the log's size, one multi-row INSERT and one
        size update (group commit: the caller's transaction makes them durable together); return the
        index of the first. Indices stay contiguous: the log row is locked until commit."""
        for kind, _ in entries:
            if kind not in EVENT_KINDS:
                raise ValueError(f"unknown audit kind {kind!r}")
        size = s.execute(
            select(AuditLogRow.size).where(AuditLogRow.id == log_id).with_for_update()
        ).scalar_one()
        if entries:
            # Core INSERT on the table (not the ORM bulk path): one executemany, no per-row objects.
            s.execute(insert(_ENTRIES), [
                {"log_id": log_id, "idx": size + i, "kind": kind, "time": now, "data": data,
                 "leaf_hash": leaf_hash(data)} for i, (kind, data) in enumerate(entries)])
            s.execute(update(AuditLogRow).where(AuditLogRow.id == log_id)
                      .values(size=size + len(entries)))
        return int(size)

    def record(self, s: Session, log_ids: Iterable[str], kind: str, actor: str,
               details: dict[str, Any], now: float) -> None:
        """Append one event entry to each of ``log_ids``."""
        data = event_bytes(kind, actor, details, now)
        for log_id in sorted(set(log_ids)):
            self.append(s, log_id, kind, data, now)

    @staticmethod
    def logs_for_account(s: Session, account: Account) -> list[str]:
        """Every tenant log the account can reach, or the server log if none."""
        if account.all_tenants:
            ids = list(s.scalars(select(Tenant.id)))
        else:
            ids = list(s.scalars(
                select(AccountTenant.tenant_id).where(AccountTenant.account_id == account.id)))
        return ids or [SERVER_LOG]

    # -- reading -------------------------------------------------------------------

    @staticmethod
    def size(s: Session, log_id: str) -> int:
        return int(s.execute(select(AuditLogRow.size).where(AuditLogRow.id == log_id)).scalar_one())

    def _tree(self, s: Session, log_id: str, size: int) -> MerkleTree:
        """The cached tree holding at least ``size`` committed leaves (call with the lock held)."""
        tree = self._trees.get(log_id)
        if tree is None:
            tree = self._trees[log_id] = MerkleTree()
        if tree.size < size:
            tree.extend(s.scalars(
                select(AuditEntry.leaf_hash)
                .where(AuditEntry.log_id == log_id, AuditEntry.idx >= tree.size,
                       AuditEntry.idx < size)
                .order_by(AuditEntry.idx)))
            if tree.size < size:
                raise RuntimeError(f"audit log {log_id} has a gap below {size}")
        return tree

    def _check_size(self, s: Session, log_id: str, *sizes: int) -> None:
        committed = self.size(s, log_id)
        for n in sizes:
            if not 0 <= n <= committed:
                raise BadRequest(f"size {n} is outside 0..{committed}")

    def inclusion_proof(self, s: Session, log_id: str, index: int, size: int) -> list[bytes]:
        self._check_size(s, log_id, size)
        if not 0 <= index < size:
            raise BadRequest(f"index {index} is outside 0..{size - 1}")
        with self._lock:
            return self._tree(s, log_id, size).inclusion_proof(index, size)

    def consistency_proof(self, s: Session, log_id: str, old: int, new: int) -> list[bytes]:
        self._check_size(s, log_id, old, new)
        if old > new:
            raise BadRequest("old size is larger than new size")
        with self._lock:
            return self._tree(s, log_id, new).consistency_proof(old, new)

    @staticmethod
    def latest_checkpoint(s: Session, log_id: str) -> CheckpointRow | None:
        return s.scalars(select(CheckpointRow).where(CheckpointRow.log_id == log_id)
                         .order_by(CheckpointRow.size.desc()).limit(1)).first()

    # -- checkpoints (own transaction, after the appends committed) ----------------

    def sign_checkpoint(self, log_id: str, now: float) -> CheckpointRow:
        """Sign the committed size of ``log_id`` unless the latest checkpoint already covers it."""
        with self._store.transaction() as s:
            log = s.execute(
                select(AuditLogRow).where(AuditLogRow.id == log_id).with_for_update()
            ).scalar_one()
            latest = self.latest_checkpoint(s, log_id)
            if latest is not None and latest.size == log.size:
                row = latest
            else:
                with self._lock:
                    root = self._tree(s, log_id, log.size).root(log.size)
                cp = Checkpoint(log=log_id, size=log.size, root=root.hex(), time=int(now))
                env = sign_envelope(CHECKPOINT_TYPE, encode_payload(cp), [self._keys.get(log_id)])
                row = CheckpointRow(log_id=log_id, size=log.size, root=root.hex(),
                                    envelope=env.to_bytes(), created_at=now)
                s.add(row)
        self._remember_checkpoint(row)  # only once committed
        return row

    def _remember_checkpoint(self, row: CheckpointRow) -> None:
        with self._lock:
            known = self._latest.get(row.log_id)
            if known is None or known.size < row.size:
                self._latest[row.log_id] = row

    # -- outside witnesses (docs/design/witness.md) ------------------------------------

    def add_cosignatures(self, log_id: str, size: int, data: bytes,
                         witnesses: dict[str, PublicKey]) -> tuple[CheckpointRow, list[str]]:
        """Merge into the stored checkpoint of ``size`` the co-signatures in ``data`` that verify
        by a key of ``witnesses``; return the row and the key ids newly added.

        ``data`` must carry the stored checkpoint's payload byte for byte (a witness signs what
        it was shown); every other signature in it is ignored. The server verifies here only so
        as not to store junk: agents verify every co-signature themselves.
        """
        try:
            given = decode_envelope(data, expect_type=CHECKPOINT_TYPE)
        except DecodeError as exc:
            raise BadRequest(f"not a checkpoint envelope: {exc.message}") from None
        with self._store.transaction() as s:
            row = s.execute(select(CheckpointRow).where(
                CheckpointRow.log_id == log_id, CheckpointRow.size == size)
                .with_for_update()).scalar_one_or_none()
            if row is None:
                raise NotFound(f"no checkpoint of size {size}")
            stored = decode_envelope(row.envelope, expect_type=CHECKPOINT_TYPE)
            if given.payload != stored.payload:
                raise Conflict(f"the envelope is not the stored checkpoint of size {size}")
            valid = verified_signers(given, witnesses, threshold=1).signed
            have = {sig.keyid for sig in stored.signatures}
            new = [sig for sig in given.signatures if sig.keyid in valid and sig.keyid not in have]
            if new:
                row.envelope = Envelope(stored.payload_type, stored.payload,
                                        (*stored.signatures, *new)).to_bytes()
            added = list(dict.fromkeys(sig.keyid for sig in new))
        with self._lock:
            known = self._latest.get(log_id)
            if known is not None and known.size == row.size:
                self._latest[log_id] = row
        return row, added

    @staticmethod
    def witness_signers(envelope: bytes, witness_ids: frozenset[str]) -> frozenset[str]:
        """The keys of ``witness_ids`` that signed ``envelope`` (their signatures checked when merged)."""
        try:
            env = decode_envelope(envelope, expect_type=CHECKPOINT_TYPE)
        except DecodeError:
            return frozenset()
        return frozenset(sig.keyid for sig in env.signatures) & witness_ids

    @classmethod
    def witnessed(cls, envelope: bytes, witness_ids: frozenset[str]) -> int:
        """How many distinct keys of ``witness_ids`` signed ``envelope``."""
        return len(cls.witness_signers(envelope, witness_ids))

    def witnessed_covering(self, log_id: str, index: int, *, at_least: int, need: int,
                           witness_ids: frozenset[str], scan: int = 32) -> CheckpointRow | None:
        """The newest stored checkpoint that includes entry ``index``, is no smaller than
        ``at_least`` and carries ``need`` co-signatures of ``witness_ids``; None when none of the
        newest ``scan`` qualifies (the job waits for the witness)."""
        with self._store.read() as s:
            rows = list(s.scalars(select(CheckpointRow).where(
                CheckpointRow.log_id == log_id, CheckpointRow.size > index,
                CheckpointRow.size >= at_least).order_by(CheckpointRow.size.desc()).limit(scan)))
        for row in rows:
            if self.witnessed(row.envelope, witness_ids) >= need:
                return row
        return None

    def checkpoint_covering(self, log_id: str, index: int, now: float, *,
                            at_least: int = 0) -> CheckpointRow:
        """A committed checkpoint that includes entry ``index`` and is no smaller than ``at_least``.

        Served from memory when this process signed or read one that qualifies
        (a fan-out to many agents reads the store once), else from the store,
        else newly signed.
        """
        with self._lock:
            known = self._latest.get(log_id)
        if known is not None and known.size > index and known.size >= at_least:
            return known
        with self._store.read() as s:
            latest = self.latest_checkpoint(s, log_id)
        if latest is not None and latest.size > index and latest.size >= at_least:
            self._remember_checkpoint(latest)
            return latest
        return self.sign_checkpoint(log_id, now)

    def sign_due(self, now: float) -> int:
        """Sign a checkpoint for every log that grew since its last one; return how many."""
        with self._store.transaction() as s:
            last = (select(CheckpointRow.log_id, func.max(CheckpointRow.size).label("size"))
                    .group_by(CheckpointRow.log_id).subquery())
            due = list(s.scalars(
                select(AuditLogRow.id).outerjoin(last, last.c.log_id == AuditLogRow.id)
                .where((last.c.size.is_(None)) | (last.c.size < AuditLogRow.size))))
        for log_id in due:
            self.sign_checkpoint(log_id, now)
        return len(due)
