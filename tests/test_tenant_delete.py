"""Deleting a tenant and the retention of retired devices (issue 16).

A real server (SQLite, and PostgreSQL in ./run-tests' second pass), a real
agent of the tenant "acme" with a job it ran, and a second tenant "bravo"
whose rows must never change. Deleting needs an archived tenant, its name
typed again, an owner who reaches every tenant and a fresh TOTP step-up;
every refusal leaves every row of every tenant table as it was. Done, no row
of any table refers to the tenant or its devices (checked over the whole
schema, so a table added later is checked too), its secrets are gone from
the data directory, and its audit log stays readable and verifiable until
retention removes it. Retention, with the server's clock moved on, removes a
retired device's records after 90 days and the deleted tenant's log after
365, and says so in the audit log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from harness.consolefleet import store_of
from harness.operators import TenantSetup, audit_events, enrol_devices, ok, setup_tenant, step_up
from harness.sessions import SessionWorld, cli_config, session_world
from sqlalchemy import String, Table, func, select
from test_access_dormant import shift_clock

from rampart import trust
from rampart.server.models import (
    AuditEntry,
    AuditLogRow,
    Base,
    DeletedTenant,
    Device,
    DeviceGroupMember,
    DeviceInventory,
)

pytestmark = pytest.mark.store

DAY = 86400
#: Tables whose rows belong to no tenant (or to the audit log, kept on purpose).
NOT_TENANT_DATA = {"audit_logs", "audit_entries", "checkpoints", "accounts", "sessions", "settings",
                   "login_throttle", "deleted_tenants"}
#: Columns a live agent changes by being connected (its heartbeat), not by anything a deletion does.
VOLATILE = {"last_seen"}
#: Tables the server's scheduler fills from an inventory the agent already sent, on its own tick
#: (every 60 s): they may change between any two snapshots, whatever a request did. (A CI run
#: caught the tick between T11's snapshots.) The deletion test still finds none of their rows left.
SCHEDULER_DERIVED = {"pending_updates", "device_patch_state"}


@pytest.fixture(scope="module")
def world(pg_cluster: Any) -> Iterator[SessionWorld]:
    with session_world(pg_cluster, prefix="rampart-tenant-delete-") as w:
        cli_config(w, "cli-owner", w.owner, w.owner_key, w.root_env)  # type: ignore[attr-defined]
        w.enrol("main")
        _wait_inventory(w, w.main.device_id)
        bravo = setup_tenant(w.owner, "bravo", prefix="b-")
        w.bravo = bravo  # type: ignore[attr-defined]
        w.bravo_devices = enrol_devices(bravo, 2)  # type: ignore[attr-defined]
        yield w


def _wait_inventory(w: SessionWorld, device_id: str) -> None:
    """Until the agent's first inventory (and the findings it raises) is stored."""
    store = store_of(w.server.data_dir)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with store.read() as s:
                if s.scalar(select(func.count()).select_from(DeviceInventory)
                            .where(DeviceInventory.device_id == device_id)):
                    return
            time.sleep(0.3)
        raise TimeoutError("no inventory from the agent")
    finally:
        store.dispose()


def _rows(w: SessionWorld) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every tenant-data table, sorted (the whole state a deletion may touch)."""
    store = store_of(w.server.data_dir)
    try:
        with store.read() as s:
            return {t.name: sorted(tuple(map(repr, r)) for r in s.execute(
                        select(*[c for c in t.columns if c.name not in VOLATILE])))
                    for t in Base.metadata.sorted_tables
                    if t.name not in NOT_TENANT_DATA | SCHEDULER_DERIVED}
    finally:
        store.dispose()


def _referring(w: SessionWorld, tenant: str, devices: list[str], jobs: list[str]) -> dict[str, int]:
    """Rows of any table that name the tenant, one of its devices or one of its jobs."""
    store = store_of(w.server.data_dir)
    out: dict[str, int] = {}
    try:
        with store.read() as s:
            for t in Base.metadata.sorted_tables:
                if t.name in NOT_TENANT_DATA:
                    continue
                for col, values in (("tenant_id", [tenant]), ("device_id", devices), ("job_id", jobs),
                                    ("id", [tenant, *devices, *jobs])):
                    if col in t.columns and values and isinstance(t.columns[col].type, String):
                        n = s.scalar(select(func.count()).select_from(t).where(t.columns[col].in_(values)))
                        if n:
                            out[f"{t.name}.{col}"] = int(n)
    finally:
        store.dispose()
    return out


def _bravo_rows(w: SessionWorld) -> dict[str, list[tuple[Any, ...]]]:
    bravo: TenantSetup = w.bravo  # type: ignore[attr-defined]
    devices: list[str] = w.bravo_devices  # type: ignore[attr-defined]
    rows = _rows(w)
    keep = {bravo.id, *devices}
    return {t: [r for r in rs if any(repr(v) in r for v in keep)] for t, rs in rows.items()}


def _inventory_job(w: SessionWorld, grant: str) -> str:
    now = int(time.time())
    job = trust.Job(id=trust.new_job_id(), tenant=w.tenant, grant=grant, signer=w.tech_key.key_id,
                    devices=[w.main.device_id], action=trust.Action(kind="inventory-refresh"),
                    nonce=trust.new_nonce(), issued_at=now, expires_at=now + 600)
    env = trust.sign_envelope(job.PAYLOAD_TYPE, trust.encode_payload(job), [w.tech_key]).to_bytes()
    ok(w.tech.http.post(f"/tenants/{w.tenant}/jobs", json={"envelope": env.decode(), "payloads": {}}))
    w.receipt(job.id)
    return job.id


def test_T11_deleting_a_tenant_needs_archive_its_name_a_step_up_and_an_owner_of_every_tenant(
        world: SessionWorld) -> None:
    w = world
    local_owner = w.owner.create_account("acme-owner", "owner", [w.tenant])
    w.main.stop()  # what the device reports is not the subject here
    before = _rows(w)
    body = {"confirm": "acme"}
    # Not archived: refused, whoever asks.
    step_up(w.owner)
    r = w.owner.http.post(f"/tenants/{w.tenant}/delete", json=body)
    assert r.status_code == 409 and "archive the tenant first" in r.text
    # (No TOTP code for the CLI: the archive check comes first, so no step-up is asked for.)
    r2 = w.cli("tenant", "delete", "acme", "--confirm", "acme", config="cli-owner")
    assert r2.returncode != 0 and b"archive the tenant first" in r2.stderr
    ok(w.owner.http.post(f"/tenants/{w.tenant}/archive"))
    # The CLI wants the name typed again; without it nothing is sent.
    r2 = w.cli("tenant", "delete", "acme", config="cli-owner")
    assert r2.returncode != 0 and b"not confirmed" in r2.stderr
    # A wrong name, the wrong roles, an owner of this tenant only, no fresh step-up: all refused.
    assert w.owner.http.post(f"/tenants/{w.tenant}/delete", json={"confirm": "acme2"}).status_code == 400
    for op in (w.tech, w.approvers[0][0]):
        r = op.http.post(f"/tenants/{w.tenant}/delete", json=body)
        assert r.status_code == 403 and "needs the role" in r.text
    step_up(local_owner)
    r = local_owner.http.post(f"/tenants/{w.tenant}/delete", json=body)
    assert r.status_code == 403 and "every tenant" in r.text
    w.owner.login()  # a fresh session: no step-up yet
    r = w.owner.http.post(f"/tenants/{w.tenant}/delete", json=body)
    assert r.status_code == 403 and "step-up" in r.text
    after = _rows(w)
    after_tenants = after.pop("tenants")
    before_tenants = before.pop("tenants")
    assert after == before  # nothing changed but the archive mark
    assert len(after_tenants) == len(before_tenants)
    assert ok(w.owner.http.get(f"/tenants/{w.tenant}"))["status"] == "archived"
    step_up(w.owner)
    ok(w.owner.http.post(f"/tenants/{w.tenant}/unarchive"))
    w.main.start()
    w.wait_connected(w.main.device_id)


def test_deleting_an_archived_tenant_removes_all_it_holds_and_keeps_its_audit_log(
        world: SessionWorld) -> None:
    w = world
    grant = w.grant(["inventory"])
    job = _inventory_job(w, grant)
    hook = ok(w.owner.http.post(f"/tenants/{w.tenant}/notify-targets", json={
        "kind": "webhook", "name": "on-call", "url": "https://127.0.0.1:9/hook", "min_severity": "warning"}))
    secret = w.server.data_dir / "keys" / f"notify-{hook['id']}.secret"
    assert secret.exists()
    tls = w.server.data_dir / "siem-tls" / w.tenant
    tls.mkdir(parents=True, exist_ok=True)
    (tls / "client.key").write_bytes(b"not a real key")
    devices = [d["id"] for d in ok(w.owner.http.get(f"/tenants/{w.tenant}/devices"))]
    assert _referring(w, w.tenant, devices, [job])  # the tenant holds rows in many tables
    bravo_before = _bravo_rows(w)
    audit_size = len(audit_events(w.owner, w.tenant))

    step_up(w.owner)
    ok(w.owner.http.post(f"/tenants/{w.tenant}/archive"))
    r = w.cli("tenant", "delete", "acme", "--confirm", "acme", "--json", config="cli-owner",
              env_extra={"RAMPART_TOTP": w.owner.totp.code()})
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert done["id"] == w.tenant and done["deleted_by"] == "owner"
    assert done["removed"]["devices"] == len(devices) and done["removed"]["jobs"] >= 1
    assert done["audit_until"] - done["deleted_at"] == pytest.approx(365 * DAY)

    # Nothing of the tenant is left in any table; the other tenant is untouched.
    assert _referring(w, w.tenant, devices, [job]) == {}
    assert _bravo_rows(w) == bravo_before
    assert w.owner.http.get(f"/tenants/{w.tenant}").status_code == 404
    assert w.tenant not in [t["id"] for t in ok(w.owner.http.get("/tenants"))]
    assert not tls.exists()
    assert not secret.exists()
    # Its devices are strangers now: the agent's next handshake is refused as an unknown key (an
    # archived device that still existed would be told "this device is archived" first).
    w.main.stop()
    seen = len(w.main.log_text())
    w.main.start()
    time.sleep(4)
    tail = w.main.log_text()[seen:]
    assert "connected to" not in tail and "this device is" not in tail, tail

    # The audit log stays: listed, exported and verified by the MSP owner, ending with the deletion.
    r = w.cli("tenant", "deleted", "--json", config="cli-owner")
    assert r.returncode == 0, r.stderr
    assert [d["name"] for d in json.loads(r.stdout)] == ["acme"]
    r = w.cli("audit", "export", w.tenant, config="cli-owner")
    assert r.returncode == 0, r.stderr
    kinds = [json.loads(line)["kind"] for line in r.stdout.splitlines()]
    assert len(kinds) > audit_size and kinds[-1] == "tenant.deleted"
    r = w.cli("audit", "verify", "acme", config="cli-owner")
    assert r.returncode == 0 and b"OK: audit log of acme (deleted)" in r.stdout, r.stdout + r.stderr
    # Someone who does not reach every tenant sees neither the tombstone nor the log.
    assert ok(w.tech.http.get("/deleted-tenants")) == []
    assert w.tech.http.get(f"/tenants/{w.tenant}/audit/entries").status_code == 404


def test_retention_removes_a_retired_devices_records_then_a_deleted_tenants_audit_log(
        world: SessionWorld) -> None:
    w = world
    bravo: TenantSetup = w.bravo  # type: ignore[attr-defined]
    old, kept = w.bravo_devices  # type: ignore[attr-defined]
    ok(bravo.owner.http.put(f"/tenants/{bravo.id}/device-groups/lab", json={"devices": [old, kept]}))
    step_up(bravo.owner)
    ok(bravo.owner.http.post(f"/tenants/{bravo.id}/devices/{old}/retire"))
    deleted = w.tenant  # deleted by the test before
    key_file = w.server.data_dir / "keys" / f"log-{deleted}.key"
    assert key_file.exists()

    def state() -> tuple[int, int, int, int, list[str]]:
        store = store_of(w.server.data_dir)
        try:
            with store.read() as s:
                return (int(s.scalar(select(func.count()).select_from(Device).where(Device.id == old)) or 0),
                        int(s.scalar(select(func.count()).select_from(Device).where(Device.id == kept)) or 0),
                        int(s.scalar(select(func.count()).select_from(AuditEntry)
                                     .where(AuditEntry.log_id == deleted)) or 0),
                        int(s.scalar(select(func.count()).select_from(DeletedTenant)) or 0),
                        [k for k, in s.execute(select(AuditEntry.kind).where(AuditEntry.log_id == bravo.id))])
        finally:
            store.dispose()

    retired, still, log_entries, tombstones, _ = state()
    assert (retired, still, tombstones) == (1, 1, 1) and log_entries > 0
    shift_clock(w.server, [w.owner, bravo.owner], 91 * DAY)  # past the retired device's 90 days
    deadline = time.monotonic() + 30
    while state()[0] and time.monotonic() < deadline:
        time.sleep(0.3)
    retired, still, log_entries2, tombstones, kinds = state()
    assert (retired, still, tombstones) == (0, 1, 1)
    assert log_entries2 == log_entries  # the deleted tenant's log is kept for its 365 days
    assert "device.records-removed" in kinds
    assert _referring(w, "", [old], []) == {}
    store = store_of(w.server.data_dir)
    try:
        with store.read() as s:
            assert list(s.scalars(select(DeviceGroupMember.device_id))) == [kept]
    finally:
        store.dispose()

    shift_clock(w.server, [w.owner, bravo.owner], 400 * DAY)  # past the audit log's 365 days
    deadline = time.monotonic() + 30  # the key file goes right after the log's transaction commits
    while (state()[3] or key_file.exists()) and time.monotonic() < deadline:
        time.sleep(0.3)
    _, still, log_entries3, tombstones, _ = state()
    assert (still, log_entries3, tombstones) == (1, 0, 0)
    assert not key_file.exists()
    store = store_of(w.server.data_dir)
    try:
        with store.read() as s:
            assert s.get(AuditLogRow, deleted) is None
            assert s.get(AuditLogRow, bravo.id) is not None
    finally:
        store.dispose()


def test_purge_covers_every_table_that_refers_to_a_tenant_or_device() -> None:
    """Every table with a tenant or device column is reached by the purge, by foreign key or by name."""
    from rampart.server.purge import _children, _unconstrained_device_columns

    reached: set[str] = set()

    def walk(table: Table) -> None:
        for child, _, _ in _children(table):
            if child.name not in reached:
                reached.add(child.name)
                walk(child)

    walk(Base.metadata.tables["tenants"])
    reached |= {col.table.name for col in _unconstrained_device_columns()}
    holding = {t.name for t in Base.metadata.sorted_tables
               if {"tenant_id", "device_id"} & set(t.columns.keys()) and t.name not in NOT_TENANT_DATA}
    assert holding <= reached, holding - reached
