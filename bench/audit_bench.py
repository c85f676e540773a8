"""Durable audit append on SQLite (issue 17): the server's group append against raw batched inserts.

Three ways to put N receipt-sized entries into one tenant's log, each in transactions of BATCH
entries on a fresh migrated store (WAL, synchronous=FULL: every commit is fsync'd), measured in
the same run so the machine's noise hits them alike:

* ``one_by_one``: ``AuditLog.append`` per entry (a locked read of the log's size, an INSERT and an
  UPDATE each), what every caller did before group commit;
* ``group``: ``AuditLog.append_many`` once per transaction (one locked read, one multi-row INSERT,
  one UPDATE), what receipt storing does now;
* ``raw``: ``executemany`` INSERTs of the same rows through sqlite3 with the same pragmas: the floor.

Prints the figures and writes them as JSON to the path given (default bench/results/audit.json).

    PYTHONPATH=. python bench/audit_bench.py [out.json] [--entries N]
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rampart.server.audit import AuditLog
from rampart.server.db import Store, migrate
from rampart.server.keystore import LogKeyStore
from rampart.trust.merkle import leaf_hash

ENTRIES = 50_000
BATCH = 1_000
#: About the size of a signed receipt envelope.
PAYLOAD = b"x" * 900
GOAL_PER_S = 50_000


def _store(base: Path) -> tuple[Store, AuditLog, str]:
    keys = base / "keys"
    keys.mkdir(mode=0o700)
    store = Store(f"sqlite:///{base / 'rampart.db'}")
    migrate(store.engine)
    audit = AuditLog(store, LogKeyStore(keys))
    with store.transaction() as s:
        audit.create_log(s, "tn-benchlog")
    return store, audit, "tn-benchlog"


def _entries(n: int, tag: str) -> list[bytes]:
    return [PAYLOAD + f"{tag}-{i}".encode() for i in range(n)]


def run_one_by_one(base: Path, n: int) -> float:
    store, audit, log = _store(base)
    data = _entries(n, "one")
    t0 = time.perf_counter()
    for i in range(0, n, BATCH):
        with store.transaction() as s:
            for d in data[i:i + BATCH]:
                audit.append(s, log, "receipt", d, 1.0)
    took = time.perf_counter() - t0
    store.dispose()
    return took


def run_group(base: Path, n: int) -> float:
    store, audit, log = _store(base)
    data = _entries(n, "group")
    t0 = time.perf_counter()
    for i in range(0, n, BATCH):
        with store.transaction() as s:
            audit.append_many(s, log, [("receipt", d) for d in data[i:i + BATCH]], 1.0)
    took = time.perf_counter() - t0
    with store.read() as s:
        assert audit.size(s, log) == n
    store.dispose()
    return took


def run_raw(base: Path, n: int) -> float:
    store, _, log = _store(base)
    store.dispose()
    db = sqlite3.connect(base / "rampart.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    data = _entries(n, "raw")
    t0 = time.perf_counter()
    for i in range(0, n, BATCH):
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO audit_entries (log_id, idx, kind, time, data, leaf_hash) "
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       [(log, i + j, "receipt", 1.0, d, leaf_hash(d))
                        for j, d in enumerate(data[i:i + BATCH])])
        db.execute("UPDATE audit_logs SET size = ? WHERE id = ?", (min(n, i + BATCH), log))
        db.execute("COMMIT")
    took = time.perf_counter() - t0
    db.close()
    return took


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv and not argv[0].startswith("--") else Path("bench/results/audit.json")
    n = int(argv[argv.index("--entries") + 1]) if "--entries" in argv else ENTRIES
    results: dict[str, Any] = {}
    for name, fn, count in (("raw", run_raw, n), ("group", run_group, n),
                            ("one_by_one", run_one_by_one, min(n, 10_000))):
        with tempfile.TemporaryDirectory(prefix="rampart-audit-bench-") as d:
            took = fn(Path(d), count)
        results[name] = {"entries": count, "seconds": round(took, 3), "entries_per_s": round(count / took)}
        print(f"{name:>11}: {count} entries in {took:.2f} s = {count / took:,.0f}/s", flush=True)
    raw = results["raw"]["entries_per_s"]
    doc = {
        "bench": "audit",
        "conditions": {"store": "SQLite, WAL, synchronous=FULL, fresh migrated database per way",
                       "batch_per_transaction": BATCH, "entry_bytes": len(PAYLOAD) + 10,
                       "cpus": os.cpu_count(), "python": sys.version.split()[0],
                       "loadavg": os.getloadavg()},
        "results": results,
        "group_vs_raw": round(results["group"]["entries_per_s"] / raw, 3),
        "one_by_one_vs_raw": round(results["one_by_one"]["entries_per_s"] / raw, 3),
        "goal_entries_per_s": GOAL_PER_S,
        "goal_met": results["group"]["entries_per_s"] >= GOAL_PER_S,
    }
    met = "met" if doc["goal_met"] else "NOT met"
    print(f"group append: {doc['group_vs_raw']}x raw batched inserts; "
          f"one by one: {doc['one_by_one_vs_raw']}x; goal {GOAL_PER_S:,}/s {met}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
