"""Alembic environment: runs on the connection the server hands over (no alembic.ini)."""

from __future__ import annotations

from alembic import context

from rampart.server.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only the server runs migrations
    raise RuntimeError("run migrations through rampart.server.db.migrate")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
