"""Database engine, transactions and migrations.

Security/durability invariants:

* Every request runs in exactly one transaction (:meth:`Store.transaction`):
  it commits whole or not at all, so a refused or crashed request leaves no
  partial write.
* SQLite runs in WAL mode with ``synchronous=FULL`` (a committed transaction
  survives kill -9 and power loss), foreign keys on, a busy timeout, and
  ``BEGIN IMMEDIATE`` so writers serialise instead of failing on lock upgrade.
* The schema is brought to Alembic ``head`` before the server serves anything.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str, *, read_only: bool = False) -> Engine:
    """An engine with the pragmas above for SQLite; a small pool for PostgreSQL.

    A ``read_only`` SQLite engine begins with a deferred ``BEGIN``: under WAL,
    readers then see one consistent snapshot without taking the write lock,
    so reads never queue behind writers (or each other).
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False,
                                                  "timeout": BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Upgrade the schema to head (serialised across processes on PostgreSQL).

    A store already at head is recognised with one query, without loading Alembic (a third of a
    second of every server start)."""
    if _stored_revision(engine) == head_revision():
        return
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(7261636)"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


_REVISION = re.compile(r'^(revision|down_revision) = (?:"([^"]*)"|None)$', re.M)


@functools.cache
def head_revision() -> str | None:
    """The one revision of ``migrations/versions`` that no other revises; None when that is not
    exactly one (a branch: Alembic then decides)."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        for kind, value in _REVISION.findall(path.read_text()):
            if value:
                (revisions if kind == "revision" else revised).add(value)
    heads = revisions - revised
    return heads.pop() if len(heads) == 1 else None


def _stored_revision(engine: Engine) -> str | None:
    """The schema revision the store records (None: no schema yet, or not one revision)."""
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).all()
            conn.rollback()
    except DBAPIError:
        return None
    return str(rows[0][0]) if len(rows) == 1 else None


class Store:
    """The server's database: one engine, one session per transaction."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_engine = make_engine(url, read_only=True) if url.startswith("sqlite") \
            else self.engine
        self._read_sessions = sessionmaker(self._read_engine, expire_on_commit=False)

    def set_session_info(self, name: str, value: object) -> None:
        """Every later session carries ``value`` as ``session.info[name]`` (the TOTP key:
        :mod:`.totp_store`)."""
        for maker in (self._sessions, self._read_sessions):
            info = dict(maker.kw.get("info") or {})
            info[name] = value
            maker.configure(info=info)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """Run the block in one transaction: commit on success, roll back on any exception."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only snapshot: nothing the block does is committed.

        Closing the session hands its connection back to the pool, which rolls
        back; loaded objects stay readable (detached, not expired).
        """
        with self._read_sessions() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
        if self._read_engine is not self.engine:
            self._read_engine.dispose()
