"""Which node of a deployment runs the periodic chores (issue 18, docs/scale-out.md).

The chores (alert delivery and SIEM forwarding, the patch and backup scheduler,
monitoring checks, overdue sweeps, retention, dormant accounts, root expiry,
directory audits, due checkpoints) must run once per deployment, not once per
node: two nodes would send a notification twice. On PostgreSQL the node that
holds a session-level advisory lock (on a connection kept for it) runs them;
when that node dies, PostgreSQL ends its connection, the lock is free, and the
next node that asks takes it. On SQLite there is one process: it always runs them.

Invariant: :meth:`ChoresLease.held` answers True only while this process holds
the lock on a connection that answered at the last asking; a lost connection is
a lost lease. It waits at most ASK_WAIT_S for another caller.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Connection, text

from .db import Store

log = logging.getLogger("rampart.server.chores")

#: The advisory lock's key ("RAMP" in ASCII); advisory locks are scoped to the current database.
LOCK_KEY = 0x52414D50
#: How long a chore waits for another's question to the database before it takes the last answer.
ASK_WAIT_S = 5.0


class ChoresLease:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._shared = store.engine.dialect.name == "postgresql"
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self._last = False

    def held(self) -> bool:
        """True when this node should run the chores now (thread-safe; may touch the database).

        Waits at most :data:`ASK_WAIT_S` for another caller: chores run in the shared worker
        threads, and a database that does not answer must not hold them all (nor the requests
        that share those threads). A caller that waited that long gets the last answer. (Not at
        once: the chores that run at start all ask together, and an answer of "not yet" would
        skip each of them until its next interval.)
        """
        if not self._shared:
            return True
        if not self._lock.acquire(timeout=ASK_WAIT_S):
            return self._last
        try:
            self._last = self._ask()
            return self._last
        finally:
            self._lock.release()

    def _ask(self) -> bool:
        try:
            if self._conn is not None:
                self._conn.execute(text("SELECT 1")).scalar()
                self._conn.commit()
                return True
            conn = self._store.engine.connect()
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY}).scalar())
            conn.commit()
            if not got:
                conn.close()
                return False
            self._conn = conn
            log.warning("this node runs the deployment's periodic chores")
            return True
        except Exception as exc:  # noqa: BLE001 - the database is away: no lease, ask again later
            self._drop()
            log.warning("chores lease lost or not taken (%s)", type(exc).__name__)
            return False

    def release(self) -> None:
        """Give the lease up (a clean stop): another node takes it at its next chore."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()  # the connection ends: PostgreSQL frees the lock with it
            except Exception:  # noqa: BLE001,S110 - already gone
                pass
            self._conn = None
