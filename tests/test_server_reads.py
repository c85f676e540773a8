"""Reads never take the write lock (issue 17): listing devices, jobs, grants and the audit log answer while
another writer holds SQLite's write lock; a write waits for it.

A real server on SQLite; the test itself plays the busy writer by holding ``BEGIN IMMEDIATE`` on the same
database file (what a long receipt batch does during a fan-out).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import httpx
from harness.operators import approved_grant, bootstrap_owner, enrol_devices, ok, setup_tenant, signed_job
from harness.server import start_server

READS = ["/tenants", "/tenants/{t}", "/tenants/{t}/devices", "/tenants/{t}/jobs", "/jobs/{j}",
         "/tenants/{t}/grants", "/grants/{g}", "/tenants/{t}/audit/entries", "/tenants/{t}/audit/checkpoint",
         "/tenants/{t}/device-groups", "/tenants/{t}/checks", "/tenants/{t}/patch-report",
         "/tenants/{t}/backup-status", "/tenants/{t}/roots", "/accounts"]


def test_reads_answer_while_a_writer_holds_the_lock_and_writes_wait(tmp_path: Path) -> None:
    server = start_server(tmp_path / "srv", None)
    try:
        owner = bootstrap_owner(server)
        t = setup_tenant(owner, "acme")
        devices = enrol_devices(t, 2)
        grant = approved_grant(t, devices)
        env, payloads, job = signed_job(t, grant, devices)
        ok(t.tech.http.post(f"/tenants/{t.id}/jobs", json={"envelope": env, "payloads": payloads}))
        ok(owner.http.post(f"/tenants/{t.id}/audit/checkpoint"))
        owner.login()  # a fresh session: its last-use write is not due while the lock is held
        ids = {"t": t.id, "j": job, "g": grant}

        db = sqlite3.connect(server.data_dir / "rampart.db", isolation_level=None, timeout=30)
        db.execute("BEGIN IMMEDIATE")  # the busy writer
        try:
            for path in READS:
                r = owner.http.get(path.format(**ids), timeout=httpx.Timeout(10.0))
                assert r.status_code == 200, (path, r.status_code, r.text[:200])
            # A write must wait for the lock: it has not finished while the writer holds it.
            done: list[int] = []
            writer = threading.Thread(target=lambda: done.append(owner.http.put(
                f"/tenants/{t.id}/device-groups/lab", json={"devices": devices[:1]},
                timeout=httpx.Timeout(60.0)).status_code))
            writer.start()
            writer.join(3.0)
            assert done == [] and writer.is_alive()
        finally:
            db.execute("ROLLBACK")
            db.close()
        writer.join(30.0)
        assert done == [200]
    finally:
        server.stop()
