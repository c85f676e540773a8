"""Many devices and alerts written straight into a server's store (console tests and bench).

Enrolling 10,000 devices through the agent endpoint would take minutes; the console's
subject is reading them, so rows are inserted in bulk into the store the running server
uses (SQLite in WAL mode, or PostgreSQL), exactly as the gateway would have left them.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from sqlalchemy import insert

from rampart.server.config import load_config
from rampart.server.db import Store
from rampart.server.models import AlertRow, Device

SEVERITIES = ("info", "warning", "critical")


def store_of(data_dir: Path) -> Store:
    return Store(load_config(data_dir).db_url)


def add_devices(store: Store, tenant_id: str, n: int, *, prefix: str = "node", now: float | None = None,
                batch: int = 2000) -> list[str]:
    """``n`` approved devices named ``{prefix}-00000``…; a third seen recently, the rest long ago."""
    now = time.time() if now is None else now
    ids: list[str] = []
    rows = []
    for i in range(n):
        device_id = "dev-" + secrets.token_hex(12)
        ids.append(device_id)
        rows.append({"id": device_id, "tenant_id": tenant_id, "public_key": "ed25519:" + "A" * 43,
                     "hostname": f"{prefix}-{i:05d}", "agent_version": "0.1.0", "status": "approved",
                     "enrolled_at": now - 86400, "approved_at": now - 86000, "approved_by": "owner",
                     "last_seen": now - (30 if i % 3 == 0 else 7200)})
    with store.transaction() as s:
        for start in range(0, len(rows), batch):
            s.execute(insert(Device), rows[start:start + batch])
    return ids


def add_alerts(store: Store, tenant_id: str, device_ids: list[str], n: int, *, now: float | None = None,
               batch: int = 5000) -> None:
    """``n`` alerts spread over ``device_ids``: a tenth still open, the rest resolved."""
    now = time.time() if now is None else now
    rows = []
    for i in range(n):
        device = device_ids[i % len(device_ids)]
        live = i % 10 == 0
        rows.append({"id": "al-" + secrets.token_hex(10), "tenant_id": tenant_id, "device_id": device,
                     "kind": "check-failed", "severity": SEVERITIES[i % 3], "dedup_key": f"bench:{i}",
                     "subject": f"check {i} failed", "detail": "synthetic", "count": 1,
                     "status": "open" if live else "resolved", "first_seen": now - 3600, "last_seen": now - i,
                     "resolved_at": None if live else now - 60, "resolved_by": None if live else "owner"})
    with store.transaction() as s:
        for start in range(0, len(rows), batch):
            s.execute(insert(AlertRow), rows[start:start + batch])
