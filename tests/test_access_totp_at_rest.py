"""T1/T11: TOTP secrets are sealed at rest (issue 11, finding 4), against a real server.

The attacker has a copy of the database (a stolen backup, a read-only SQL
injection, a leaked dump): it must yield no account's second factor. The
secrets are sealed with a key in the data directory (``keys/totp.key``,
0600) and bound to their account, so the raw database file (SQLite) or a
``pg_dump`` (PostgreSQL) holds no secret, a ciphertext moved to another
account or altered opens nothing (the login fails cleanly), an older data
directory's clear secrets are sealed at its first start, and a missing key
is never silently replaced. ./run-tests repeats the store tests on PostgreSQL.
"""

from __future__ import annotations

import base64
import os
import stat
import subprocess
from pathlib import Path

import httpx
import pytest
from alembic import command
from alembic.config import Config
from harness.operators import (
    PASSWORD,
    Operator,
    Totp,
    bootstrap_owner,
    ok,
    setup_tenant,
    step_up,
)
from harness.server import PG_BIN, RunningServer
from sqlalchemy import select, update

from rampart.server.config import load_config
from rampart.server.db import MIGRATIONS, Store
from rampart.server.models import Account
from rampart.server.totp_store import (
    KEY_FILE,
    SEALED_PREFIX,
    TotpKey,
    load_key,
    open_sealed,
    seal,
)


def _store(server: RunningServer) -> Store:
    return Store(load_config(server.data_dir).db_url)


def stored_secrets(server: RunningServer) -> dict[str, tuple[int, str | None]]:
    """username -> (account id, the raw ``totp_secret`` column), read straight from the database."""
    store = _store(server)
    try:
        with store.read() as s:
            rows = s.execute(select(Account.username, Account.id, Account.totp_secret)).all()
            return {name: (aid, value) for name, aid, value in rows}
    finally:
        store.dispose()


def write_secrets(server: RunningServer, values: dict[str, str | None]) -> None:
    """Write raw ``totp_secret`` values, as an attacker with database access would."""
    store = _store(server)
    try:
        with store.transaction() as s:
            for name, value in values.items():
                s.execute(update(Account).where(Account.username == name)
                          .values(totp_secret=value))
    finally:
        store.dispose()


def database_copy(server: RunningServer) -> bytes:
    """What a copy of the database gives the attacker: the raw SQLite files, or a pg_dump."""
    if server.db_url is None:
        db = server.data_dir / "rampart.db"
        return b"".join(p.read_bytes() for p in (db, db.with_name("rampart.db-wal"))
                        if p.exists())
    return subprocess.run([str(PG_BIN / "pg_dump"), "--dbname", server.db_url],
                          capture_output=True, check=True, timeout=60).stdout


def forms_of(secret: str) -> list[bytes]:
    """The secret as text (either case) and as the raw key bytes it encodes."""
    return [secret.encode(), secret.lower().encode(), base64.b32decode(secret)]


def key_file(server: RunningServer) -> Path:
    return server.data_dir / "keys" / KEY_FILE


def unused_code(totp: Totp) -> str:
    """A valid, never used code for an attempt that must fail (the server records no step)."""
    saved = totp.last_step
    code = totp.code()
    totp.last_step = saved
    return code


def login(server: RunningServer, op: Operator, code: str) -> httpx.Response:
    with server.client() as c:
        return c.post("/auth/login", json={"username": op.username, "password": PASSWORD,
                                           "totp": code})


@pytest.mark.store
def test_T1_a_database_copy_yields_no_usable_totp_secret(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    t = setup_tenant(owner, "Acme")
    people = [t.owner, t.approver, t.tech]

    copy = database_copy(server)
    for op in people:
        for form in forms_of(op.totp.secret):
            assert form not in copy, f"{op.username}'s TOTP secret is in the database"

    # The key lives in the data directory, owner-only, and not in the database.
    path = key_file(server)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    key = load_key(path.parent)
    assert key.raw not in copy and base64.b64encode(key.raw) not in copy

    # What the database holds is a sealed value that opens only with that key.
    rows = stored_secrets(server)
    for op in people:
        aid, value = rows[op.username]
        assert value is not None and value.startswith(SEALED_PREFIX)
        assert open_sealed(TotpKey.generate(), aid, value) is None
        assert open_sealed(key, aid, value) == op.totp.secret

    for op in people:  # and every second factor still works
        op.login()
    step_up(t.tech)
    log = server.log_path.read_bytes()
    assert not any(f in log for op in people for f in forms_of(op.totp.secret))


@pytest.mark.store
def test_T1_an_older_data_dir_with_clear_secrets_is_sealed_at_first_start(
        server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    t = setup_tenant(owner, "Acme")
    people = [t.owner, t.approver, t.tech]
    server.stop()
    # Make the data directory of a version before issue 11: schema 0008, clear secrets, no key.
    write_secrets(server, {op.username: op.totp.secret for op in people})
    key_file(server).unlink()
    store = _store(server)
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with store.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0008")
    finally:
        store.dispose()
    assert all(op.totp.secret.encode() in database_copy(server) for op in people)

    server.start()
    path = key_file(server)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    copy = database_copy(server)
    for op in people:
        assert not any(form in copy for form in forms_of(op.totp.secret)), op.username
    rows = stored_secrets(server)
    assert all(str(rows[op.username][1]).startswith(SEALED_PREFIX) for op in people)
    for op in people:  # the same authenticators keep working
        op.login()
    step_up(t.tech)

    # A later start loads the same key; nothing is sealed twice.
    key_bytes = path.read_bytes()
    server.restart(kill=False)
    assert path.read_bytes() == key_bytes
    assert stored_secrets(server) == rows
    t.owner.login()


@pytest.mark.store
def test_T1_a_swapped_or_altered_totp_ciphertext_is_refused(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    t = setup_tenant(owner, "Acme")
    rows = stored_secrets(server)
    original = {name: value for name, (_, value) in rows.items()}

    # Swap the owner's and the technician's sealed secrets.
    swapped = {"owner": original["tech"], "tech": original["owner"]}
    write_secrets(server, swapped)
    for op in (t.owner, t.tech):
        r = login(server, op, unused_code(op.totp))
        assert r.status_code == 401 and r.json()["detail"] == "invalid credentials", r.text
    r = t.tech.http.post("/auth/step-up", json={"code": unused_code(t.tech.totp)})
    assert r.status_code in (401, 403), r.text

    # Alter one character of the owner's ciphertext (still valid base64).
    value = str(original["owner"])
    i = len(SEALED_PREFIX) + 20
    altered = value[:i] + ("A" if value[i] != "A" else "B") + value[i + 1:]
    write_secrets(server, {"owner": altered, "tech": original["tech"]})
    r = login(server, t.owner, unused_code(t.owner.totp))
    assert r.status_code == 401, r.text
    # A clear secret planted in the column is refused too (only sealed values are read).
    write_secrets(server, {"owner": t.owner.totp.secret})
    r = login(server, t.owner, unused_code(t.owner.totp))
    assert r.status_code == 401, r.text

    # No crash, nothing rewritten by the server, and the error and log hold no secret.
    assert ok(server.client().get("/health"))
    assert stored_secrets(server)["owner"][1] == t.owner.totp.secret
    log = server.log_path.read_text()
    assert "does not open" in log
    assert t.owner.totp.secret not in log and t.tech.totp.secret not in log

    write_secrets(server, original)
    t.owner.login()
    t.tech.login()


@pytest.mark.store
def test_T1_a_lost_totp_key_is_never_silently_replaced(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    server.stop()
    path = key_file(server)
    saved = path.read_bytes()
    path.unlink()
    with pytest.raises(RuntimeError, match="restore the key file"):
        server.start()
    assert not path.exists()  # no new key: it would lock every account out of its TOTP

    path.write_bytes(saved)
    os.chmod(path, 0o644)
    with pytest.raises(RuntimeError, match="chmod 600"):
        server.start()
    os.chmod(path, 0o600)
    server.start()
    owner.login()


def test_T1_a_sealed_secret_opens_only_for_its_account_and_key() -> None:
    key = TotpKey.generate()
    secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    sealed = seal(key, 7, secret)
    assert sealed.startswith(SEALED_PREFIX) and secret not in sealed
    assert open_sealed(key, 7, sealed) == secret
    assert seal(key, 7, secret) != sealed  # a fresh nonce every time
    assert open_sealed(key, 8, sealed) is None  # moved to another account
    assert open_sealed(TotpKey.generate(), 7, sealed) is None  # another key
    body = base64.urlsafe_b64decode(sealed[len(SEALED_PREFIX):])
    flipped = SEALED_PREFIX + base64.urlsafe_b64encode(
        body[:-1] + bytes([body[-1] ^ 1])).decode()
    assert open_sealed(key, 7, flipped) is None  # altered
    assert open_sealed(key, 7, SEALED_PREFIX[:-1]) is None
    for junk in (secret, SEALED_PREFIX, SEALED_PREFIX + "!!!", SEALED_PREFIX + "AAAA"):
        assert open_sealed(key, 7, junk) is None
    assert key.raw.hex() not in repr(key)
    with pytest.raises(ValueError):
        TotpKey(b"short")
