"""The offline/overdue sweep reads the fleet without the write lock and writes only what changes
(issue 17: at 10,000 devices it loaded every device as an object inside a write transaction,
holding receipt commits behind it)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from rampart.server.config import ServerLimits
from rampart.server.db import Store, migrate
from rampart.server.models import AlertRow, Device, DeviceInventory, Tenant
from rampart.server.telemetry import TelemetryStore

T = "tn-" + "s" * 16
QUIET, GONE, SILENT = ("dev-" + c * 24 for c in "abc")


def _inventory(device: str, at: float) -> DeviceInventory:
    return DeviceInventory(device_id=device, digest="0" * 64, snapshot=b"", snapshot_at=at, head="0" * 64,
                           updated_at=at)


@pytest.fixture
def sweep_db(tmp_path: Path) -> Iterator[tuple[Store, TelemetryStore, float]]:
    store = Store(f"sqlite:///{tmp_path}/server.db")
    migrate(store.engine)
    now = time.time()
    with store.transaction() as s:
        s.add(Tenant(id=T, name="acme", created_at=now))
        s.flush()
        for dev in (QUIET, GONE, SILENT):
            s.add(Device(id=dev, tenant_id=T, public_key="k", hostname=f"host-{dev[4]}", agent_version="t",
                         status="approved", enrolled_at=now, last_seen=now))
        s.flush()
        s.add(_inventory(QUIET, now + 10_000))
    yield store, TelemetryStore(store, ServerLimits()), now
    store.dispose()


def _live(store: Store) -> set[str]:
    with store.read() as s:
        return set(s.scalars(select(AlertRow.dedup_key).where(AlertRow.status == "open")))


def test_the_sweep_alerts_once_reads_under_a_held_write_lock_and_resolves_on_contact(
        sweep_db: tuple[Store, TelemetryStore, float], tmp_path: Path) -> None:
    store, telemetry, now = sweep_db
    later = now + ServerLimits().overdue_after_s + 60
    # QUIET reported an inventory recently and is connected; GONE is not connected; SILENT is
    # connected but never sent an inventory.
    connected = frozenset({QUIET, SILENT})
    assert telemetry.sweep_overdue(later, connected) == (1, 1)
    assert _live(store) == {f"agent-offline:{GONE}", f"agent-overdue:{SILENT}"}

    # Nothing changed: the sweep reads while another writer holds SQLite's write lock, and writes
    # nothing (with a write transaction it would wait for the lock, then fail).
    busy = sqlite3.connect(tmp_path / "server.db", timeout=0)
    busy.execute("BEGIN IMMEDIATE")
    try:
        assert telemetry.sweep_overdue(later + 1, connected) == (0, 0)
    finally:
        busy.rollback()
        busy.close()
    assert _live(store) == {f"agent-offline:{GONE}", f"agent-overdue:{SILENT}"}

    # GONE comes back (connected again, with an inventory): its offline alert resolves, the rest stay.
    with store.transaction() as s:
        s.add(_inventory(GONE, later + 2))
    assert telemetry.sweep_overdue(later + 3, connected | {GONE}) == (0, 0)
    assert _live(store) == {f"agent-overdue:{SILENT}"}
    with store.read() as s:
        resolved = s.scalars(select(AlertRow).where(AlertRow.dedup_key == f"agent-offline:{GONE}")).one()
    assert (resolved.status, resolved.resolved_by) == ("resolved", "server")
