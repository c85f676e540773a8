"""Shared fixtures: a real server process per test on SQLite or PostgreSQL.

Set ``RAMPART_TEST_DB=postgresql`` to run every server test on a throwaway
PostgreSQL cluster (one database per test) instead of SQLite.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from harness import logs
from harness.server import PostgresCluster, RunningServer, start_server

from rampart.diagnostics import ENV

# Every Rampart process the tests start dumps its thread stacks on SIGUSR1 (rampart.diagnostics):
# a failing test's report shows where the processes it left running were waiting.
os.environ[ENV] = "1"


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
def open_base() -> Iterator[Path]:
    """A temporary directory that job users and agents can traverse (tmp_path is root-only),
    removed afterwards."""
    import shutil

    from harness.agent import traversable_dir

    path = traversable_dir("rampart-test-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


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
    if report.failed and call.excinfo is not None and call.excinfo.errisinstance(pexpect.ExceptionPexpect):
        report.longrepr = _short_pexpect(call.excinfo)
    if report.failed:
        started = getattr(item, "_rampart_started", call.start)
        tails = logs.tails_since(started)
        if report.when == "call":
            report.sections.append(("machine", logs.machine()))
            for label, text in logs.stacks():
                report.sections.append((label, text))
        for path, text in tails:
            report.sections.append((f"log {path} (end)", text))


_PEXPECT_KEYS = ("args:", "buffer (last", "before (last", "exitstatus:", "searcher", "0:", "1:", "2:")


def _short_pexpect(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    """A pexpect failure in a few lines (where in the tests, what was awaited, what the program last
    printed) instead of pexpect's page of internals: CI shows only a part of a failure's report."""
    where = [f"{e.path}:{e.lineno + 1}: {str(e.statement).strip()}" for e in excinfo.traceback
             if "site-packages" not in str(e.path)]
    text = str(excinfo.value).splitlines()
    kept = [line for line in text[1:] if line.lstrip().startswith(_PEXPECT_KEYS)]
    return "\n".join([*where, f"{excinfo.typename}: {text[0] if text else ''}", *kept])


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item._rampart_started = logs.now()  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how long the harness waited for unused TOTP steps (one code per account per 30 s)."""
    from harness.operators import TOTP_WAITED, TOTP_WAITED_BY_TEST
    if TOTP_WAITED[0]:
        terminalreporter.write_line(f"waited for TOTP steps: {TOTP_WAITED[0]:.0f} s; most in:")
        for test, waited in sorted(TOTP_WAITED_BY_TEST.items(), key=lambda kv: -kv[1])[:8]:
            terminalreporter.write_line(f"  {waited:4.0f} s  {test}")
