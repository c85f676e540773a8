"""The agent's durable state: pinned root, last checkpoint, nonces, receipts.

Everything lives in one directory that only the agent's user can enter
(0700) and that every job is denied by containment (read and write)::

    STATE/device.key     the device's Ed25519 key (0600)
    STATE/server.pem     the pinned server certificate
    STATE/state.db       SQLite, synchronous=FULL: meta, roots, jobs, outbox,
                         script checks (job, grant and script as verified at the first run)
                         and their results not yet acknowledged
    STATE/logs/          agent log

Security invariants:

* A job's nonce and id are committed (fsync'd by SQLite) *before* the job
  starts, so a kill -9 at any moment can never let it run twice. A job found
  in state ``started`` at start-up was interrupted; it is reported as failed
  and never re-run.
* The pinned root and last checkpoint only move forward; they are replaced in
  the same transaction that records the job that proved them.
* Receipts stay in the outbox until the server acknowledges them.
* A grant id, once a verified revocation named it, stays revoked for good.
* A job cancellation signed by a person of the root is kept (at most
  :data:`MAX_CANCELLATIONS_PER_JOB` per job); whether it counts is decided when
  the job arrives (:func:`rampart.trust.authorize_job`), and never undone.
* A passkey's highest sign counter seen on a job is stored in the transaction that
  commits that job's nonce, and only ever grows; :func:`rampart.trust.authorize_job`
  refuses a later job whose counter does not exceed it (a cloned authenticator).
* A script check is stored only after its first run passed
  :func:`rampart.trust.authorize_job`, in the transaction that records that
  run; the server cannot add, change or reschedule one (nothing it sends
  writes this table). Every later run is re-verified from these bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LocalFault

#: Cancellations kept per job: more than anyone signs, few enough that none can fill the disk.
MAX_CANCELLATIONS_PER_JOB = 8

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS roots (version INTEGER PRIMARY KEY, envelope BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS passkey_counters (keyid TEXT PRIMARY KEY, counter INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    nonce TEXT UNIQUE,
    expires_at INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('started', 'done', 'refused')),
    receipt BLOB,
    acked INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_unacked ON jobs (acked) WHERE acked = 0;
CREATE TABLE IF NOT EXISTS revoked_grants (
    grant_id TEXT PRIMARY KEY,
    envelope BLOB NOT NULL,
    stored_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS job_cancellations (
    job_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    envelope BLOB NOT NULL,
    stored_at REAL NOT NULL,
    PRIMARY KEY (job_id, digest)
);
CREATE TABLE IF NOT EXISTS script_checks (
    job_id TEXT PRIMARY KEY,
    job BLOB NOT NULL,
    grant_env BLOB NOT NULL,
    script BLOB NOT NULL,
    interval_s INTEGER NOT NULL,
    next_run REAL NOT NULL,
    runs INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS script_check_proofs (
    job_id TEXT PRIMARY KEY,
    proofs BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS check_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    result BLOB NOT NULL,
    created_at REAL NOT NULL
);
"""

#: Script check results kept while the server is unreachable; the oldest go first beyond this.
CHECK_OUTBOX_MAX = 2000

KEY_FILE = "device.key"
CERT_FILE = "server.pem"
DB_FILE = "state.db"
POLICY_FILE = "policy.json"


class StateError(LocalFault):
    """The state directory is missing, unsafe or not enrolled."""


@dataclass(frozen=True, slots=True)
class PendingReceipt:
    job_id: str
    receipt: bytes


@dataclass(frozen=True, slots=True)
class StoredCheck:
    """A repeating script job the agent runs itself (rampart.agent.script_checks)."""

    job_id: str
    job: bytes
    grant: bytes
    script: bytes
    interval_s: int
    next_run: float
    runs: int
    #: The job's device-set proofs (JSON ``DeviceProofs``) when it or its grant commits a set; else b"".
    proofs: bytes = b""


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` 0700 (or tighten it); refuse a symlink or a directory others can write."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise StateError(f"{path} is not a directory")
    if st.st_uid != os.geteuid():
        raise StateError(f"{path} is owned by another user")
    os.chmod(path, 0o700)


class AgentState:
    """Durable agent state in ``STATE/state.db`` (one connection, one thread at a time)."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        ensure_private_dir(state_dir)
        (state_dir / "logs").mkdir(mode=0o700, exist_ok=True)
        db = state_dir / DB_FILE
        self._lock = threading.RLock()
        self._db = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        os.chmod(db, 0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _one(self, sql: str, args: tuple[object, ...] = ()) -> tuple[Any, ...] | None:
        with self._lock:
            row: tuple[Any, ...] | None = self._db.execute(sql, args).fetchone()
            return row

    def _all(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    # --- meta -------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else bytes(row[0])

    def get_text(self, key: str) -> str | None:
        v = self.get(key)
        return None if v is None else v.decode()

    def set_many(self, db: sqlite3.Connection, items: Mapping[str, bytes | str]) -> None:
        for k, v in items.items():
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (k, v.encode() if isinstance(v, str) else v),
            )

    # --- revocations --------------------------------------------------------------------

    def add_revocations(self, items: Mapping[str, bytes], now: float) -> int:
        """Store verified revocations (grant id -> envelope); return how many were new."""
        added = 0
        with self.transaction() as db:
            for grant_id, envelope in items.items():
                cur = db.execute("INSERT OR IGNORE INTO revoked_grants (grant_id, envelope, stored_at) "
                                 "VALUES (?, ?, ?)", (grant_id, envelope, now))
                added += cur.rowcount
        return added

    def grant_revoked(self, grant_id: str) -> bool:
        return self._one("SELECT 1 FROM revoked_grants WHERE grant_id = ?", (grant_id,)) is not None

    def revoked_count(self) -> int:
        row = self._one("SELECT count(*) FROM revoked_grants")
        return int(row[0]) if row else 0

    # --- job cancellations ---------------------------------------------------------------

    def add_cancellations(self, items: list[tuple[str, bytes]], now: float) -> int:
        """Store (job id, envelope) pairs a person of the root signed; return how many were new."""
        added = 0
        with self.transaction() as db:
            for job_id, envelope in items:
                n = db.execute("SELECT count(*) FROM job_cancellations WHERE job_id = ?",
                               (job_id,)).fetchone()
                if int(n[0]) >= MAX_CANCELLATIONS_PER_JOB:
                    continue
                cur = db.execute("INSERT OR IGNORE INTO job_cancellations "
                                 "(job_id, digest, envelope, stored_at) VALUES (?, ?, ?, ?)",
                                 (job_id, hashlib.sha256(envelope).hexdigest(), envelope, now))
                added += cur.rowcount
        return added

    def cancellations_of(self, job_id: str) -> list[bytes]:
        with self._lock:
            rows = self._db.execute("SELECT envelope FROM job_cancellations WHERE job_id = ? "
                                    "ORDER BY stored_at", (job_id,)).fetchall()
        return [bytes(r[0]) for r in rows]

    @property
    def enrolled(self) -> bool:
        return self.get("enrolled") == b"1"

    # --- roots ------------------------------------------------------------------------

    def save_root(self, db: sqlite3.Connection, version: int, envelope: bytes) -> None:
        """Record a verified root as current; the caller verified it moves forward."""
        current = self.root_version()
        if current is not None and version <= current:
            raise StateError(f"refusing to store root v{version}: v{current} is already pinned")
        db.execute("INSERT INTO roots (version, envelope) VALUES (?, ?)", (version, envelope))
        self.set_many(db, {"root_version": str(version)})

    def root_version(self) -> int | None:
        row = self._one("SELECT MAX(version) FROM roots")
        return None if row is None or row[0] is None else int(row[0])

    def current_root(self) -> bytes:
        row = self._one("SELECT envelope FROM roots ORDER BY version DESC LIMIT 1")
        if row is None:
            raise StateError("no pinned root: enrol the agent first")
        return bytes(row[0])

    # --- checkpoint -------------------------------------------------------------------

    def checkpoint(self) -> bytes | None:
        return self.get("checkpoint")

    # --- jobs -------------------------------------------------------------------------

    def job_record(self, job_id: str) -> tuple[str, bytes | None] | None:
        row = self._one("SELECT state, receipt FROM jobs WHERE job_id = ?", (job_id,))
        if row is None:
            return None
        return str(row[0]), (None if row[1] is None else bytes(row[1]))

    def nonce_seen(self, nonce: str) -> bool:
        return self._one("SELECT 1 FROM jobs WHERE nonce = ?", (nonce,)) is not None

    def job_seen(self, job_id: str) -> bool:
        return self._one(
            "SELECT 1 FROM jobs WHERE job_id = ? AND state != 'refused'", (job_id,)
        ) is not None

    def passkey_counters(self) -> dict[str, int]:
        """The highest sign counter stored per passkey key id."""
        return {str(k): int(c) for k, c in self._all("SELECT keyid, counter FROM passkey_counters")}

    def start_job(self, *, job_id: str, nonce: str, expires_at: int, checkpoint: bytes,
                  checkpoint_size: int, passkey_counters: Mapping[str, int] | None = None) -> None:
        """Commit the nonce, the new checkpoint and the signer's passkey counter before the job
        runs (at-most-once; a counter never goes down)."""
        with self.transaction() as db:
            for keyid, counter in (passkey_counters or {}).items():
                db.execute("INSERT INTO passkey_counters (keyid, counter) VALUES (?, ?) ON CONFLICT "
                           "(keyid) DO UPDATE SET counter = MAX(counter, excluded.counter)",
                           (keyid, counter))
            db.execute("DELETE FROM jobs WHERE job_id = ? AND state = 'refused'", (job_id,))
            db.execute(
                "INSERT INTO jobs (job_id, nonce, expires_at, state, updated_at) "
                "VALUES (?, ?, ?, 'started', ?)",
                (job_id, nonce, expires_at, time.time()),
            )
            self.set_many(db, {"checkpoint": checkpoint, "checkpoint_size": str(checkpoint_size)})

    def finish_job(self, job_id: str, receipt: bytes, *, check: StoredCheck | None = None,
                   result: bytes | None = None) -> None:
        """Store the receipt; for a repeating job also its schedule and first result (one transaction)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'done', receipt = ?, updated_at = ? WHERE job_id = ?",
                (receipt, time.time(), job_id),
            )
            if check is not None:
                db.execute(
                    "INSERT OR IGNORE INTO script_checks (job_id, job, grant_env, script, interval_s, "
                    "next_run, runs) VALUES (?, ?, ?, ?, ?, ?, 1)",
                    (check.job_id, check.job, check.grant, check.script, check.interval_s,
                     check.next_run),
                )
                if check.proofs:
                    db.execute("INSERT OR IGNORE INTO script_check_proofs (job_id, proofs) VALUES (?, ?)",
                               (check.job_id, check.proofs))
            if result is not None:
                self._queue_result(db, job_id, result)

    # --- script checks ------------------------------------------------------------------

    def _queue_result(self, db: sqlite3.Connection, job_id: str, result: bytes) -> None:
        db.execute("INSERT INTO check_outbox (job_id, result, created_at) VALUES (?, ?, ?)",
                   (job_id, result, time.time()))
        db.execute("DELETE FROM check_outbox WHERE seq <= "
                   "(SELECT MAX(seq) FROM check_outbox) - ?", (CHECK_OUTBOX_MAX,))

    def script_checks(self) -> list[StoredCheck]:
        rows = self._all("SELECT c.job_id, c.job, c.grant_env, c.script, c.interval_s, c.next_run, c.runs, "
                         "p.proofs FROM script_checks c LEFT JOIN script_check_proofs p USING (job_id) "
                         "ORDER BY c.next_run")
        return [StoredCheck(str(r[0]), bytes(r[1]), bytes(r[2]), bytes(r[3]), int(r[4]),
                            float(r[5]), int(r[6]), bytes(r[7] or b"")) for r in rows]

    def script_check(self, job_id: str) -> StoredCheck | None:
        return next((c for c in self.script_checks() if c.job_id == job_id), None)

    def record_check_run(self, job_id: str, next_run: float, result: bytes) -> None:
        """One later run: move its schedule on and queue its result, in one transaction."""
        with self.transaction() as db:
            db.execute("UPDATE script_checks SET next_run = ?, runs = runs + 1 WHERE job_id = ?",
                       (next_run, job_id))
            self._queue_result(db, job_id, result)

    def drop_script_check(self, job_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM script_checks WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM script_check_proofs WHERE job_id = ?", (job_id,))

    def check_outbox(self, limit: int = 500) -> list[tuple[int, bytes]]:
        rows = self._all("SELECT seq, result FROM check_outbox ORDER BY seq LIMIT ?", (limit,))
        return [(int(r[0]), bytes(r[1])) for r in rows]

    def ack_check_result(self, seq: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM check_outbox WHERE seq = ?", (seq,))

    def record_refusal(self, job_id: str, receipt: bytes) -> None:
        """Keep a refusal receipt to send; a refusal never consumes a nonce."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO jobs (job_id, nonce, expires_at, state, receipt, updated_at) "
                "VALUES (?, NULL, 0, 'refused', ?, ?) "
                "ON CONFLICT (job_id) DO UPDATE SET receipt = excluded.receipt, acked = 0, "
                "updated_at = excluded.updated_at WHERE jobs.state = 'refused'",
                (job_id, receipt, time.time()),
            )

    def interrupted_jobs(self) -> list[str]:
        rows = self._all("SELECT job_id FROM jobs WHERE state = 'started'")
        return [str(r[0]) for r in rows]

    def mark_acked(self, job_id: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE jobs SET acked = 1 WHERE job_id = ? AND receipt IS NOT NULL", (job_id,))

    def unacked_receipts(self) -> list[PendingReceipt]:
        rows = self._all(
            "SELECT job_id, receipt FROM jobs WHERE acked = 0 AND receipt IS NOT NULL "
            "ORDER BY updated_at"
        )
        return [PendingReceipt(str(r[0]), bytes(r[1])) for r in rows]

    def prune(self, now: int, keep_s: int = 30 * 24 * 3600) -> None:
        """Forget acknowledged jobs long expired (expiry alone then refuses a replay)."""
        with self.transaction() as db:
            db.execute(
                "DELETE FROM jobs WHERE acked = 1 AND state != 'started' AND expires_at < ?",
                (now - keep_s,),
            )


def load_policy(state_dir: Path) -> dict[str, object]:
    try:
        doc = json.loads((state_dir / POLICY_FILE).read_text())
    except FileNotFoundError:
        raise StateError("no device policy: enrol the agent first") from None
    except ValueError:
        raise StateError("device policy file is damaged") from None
    if not isinstance(doc, dict):
        raise StateError("device policy file is damaged")
    return doc
