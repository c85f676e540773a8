"""Shared fixtures: a real server process per test on SQLite or PostgreSQL.

Set ``RAMPART_TEST_DB=postgresql`` to run every server test on a throwaway
PostgreSQL cluster (one database per test) instead of SQLite.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import logs
from harness.server import PostgresCluster, RunningServer, start_server


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster | None]:
    if os.environ.get("RAMPART_TEST_DB", "sqlite") != "postgresql":
        yield None
        return
    cluster = PostgresCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def db_url(pg_cluster: PostgresCluster | None) -> str | None:
    """None for the default SQLite store, else a fresh PostgreSQL database URL."""
    return pg_cluster.new_database() if pg_cluster is not None else None


@pytest.fixture
def server(tmp_path: Path, db_url: str | None) -> Iterator[RunningServer]:
    srv = start_server(tmp_path, db_url)
    try:
        yield srv
    finally:
        srv.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that runs a server store as ``store``: ./run-tests repeats those on PostgreSQL."""
    for item in items:
        if {"db_url", "pg_cluster"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.store)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing test's report ends with the logs of the servers and agents it ran (harness.logs)."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        started = getattr(item, "_rampart_started", call.start)
        for path, text in logs.tails_since(started):
            report.sections.append((f"log {path} (end)", text))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item._rampart_started = logs.now()  # type: ignore[attr-defined]
