"""TOTP shared secrets sealed at rest (issue 11, finding 4; docs/access.md, "TOTP secrets at rest").

The server must read a TOTP secret to check a code, so it cannot be hashed
like a password. It is sealed instead, with a key the database does not hold.

Invariants:

* The database holds no usable TOTP secret: ``accounts.totp_secret`` holds
  :data:`SEALED_PREFIX` + base64url(nonce || AES-256-GCM ciphertext and tag)
  under the key in ``DIR/keys/totp.key`` (32 random bytes, file 0600 in the
  0700 keys directory). A copy of the database alone opens nothing; the key
  must be backed up together with the database.
* A sealed secret is bound to its account: the associated data names the
  account id, so a value altered, or copied into another account's row, does
  not open. A value that does not open (and any clear value found after
  start-up) is *no secret*: :func:`secret_of` returns None and the login or
  step-up fails like a wrong code, with no crash and no detail to the caller.
* The key is created by ``server init`` and, for a data directory made by an
  older version, at its first start, but only while the database holds no
  sealed secret: a missing key with sealed secrets is a :class:`SetupError`
  (restore the key from the backup), never a silent new key.
* At start, before anything is served, clear secrets written by older
  versions are sealed in one transaction (:func:`seal_clear_secrets`); the
  table is then vacuumed (SQLite: the whole file, and its write-ahead log is
  truncated) so the clear values do not survive in free space. Backups and
  PostgreSQL WAL archives made before the upgrade still hold them
  (docs/access.md says what to do).
* Neither a secret nor the key ever reaches a log, URL or error message.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select, update
from sqlalchemy.orm import Session, object_session

from .db import Store
from .errors import SetupError
from .keystore import write_private_file
from .models import Account

log = logging.getLogger("rampart.server.totp")

KEY_FILE = "totp.key"
KEY_BYTES = 32
NONCE_BYTES = 12
#: Marks a sealed value; a clear base32 secret (A-Z, 2-7) can never start with it.
SEALED_PREFIX = "gcm1:"
#: Domain separation: the associated data is this prefix plus the account id.
AAD_PREFIX = b"rampart/totp-secret/v1/account:"
_KEY_TEXT_PREFIX = "rampart-totp-key-v1:"
#: ``Session.info`` entry through which sessions of a :class:`Store` carry the key.
SESSION_INFO_KEY = "rampart.totp_key"


@dataclass(frozen=True, slots=True)
class TotpKey:
    """The AES-256-GCM key that seals TOTP secrets (its repr never shows the key)."""

    raw: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.raw) != KEY_BYTES:
            raise ValueError("a TOTP key is 32 bytes")

    @classmethod
    def generate(cls) -> TotpKey:
        return cls(os.urandom(KEY_BYTES))


# --- sealing (no I/O) --------------------------------------------------------------------

def _aad(account_id: int) -> bytes:
    return AAD_PREFIX + str(account_id).encode("ascii")


def seal_text(key: TotpKey, aad: bytes, text: str) -> str:
    """Seal ``text`` (UTF-8) bound to the associated data ``aad``: the text to store."""
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key.raw).encrypt(nonce, text.encode("utf-8"), aad)
    return SEALED_PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")


def open_text(key: TotpKey, aad: bytes, stored: str) -> str | None:
    """The text sealed in ``stored`` under ``aad``, or None if it does not open (never raises)."""
    if not stored.startswith(SEALED_PREFIX):
        return None
    try:
        blob = base64.urlsafe_b64decode(stored[len(SEALED_PREFIX):].encode("ascii"))
        if len(blob) <= NONCE_BYTES:
            return None
        return AESGCM(key.raw).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad).decode("utf-8")
    except (InvalidTag, binascii.Error, ValueError):  # UnicodeError is a ValueError
        return None


def seal(key: TotpKey, account_id: int, secret: str) -> str:
    """Seal ``secret`` for the account ``account_id``: the text to store in the database."""
    secret.encode("ascii")  # a base32 secret: anything else is a caller's bug
    return seal_text(key, _aad(account_id), secret)


def open_sealed(key: TotpKey, account_id: int, stored: str) -> str | None:
    """The secret sealed in ``stored`` for this account, or None if it does not open."""
    clear = open_text(key, _aad(account_id), stored)
    return clear if clear is not None and clear.isascii() else None


def is_sealed(stored: str) -> bool:
    return stored.startswith(SEALED_PREFIX)


# --- the account's secret, through its session ------------------------------------------------

def attach(store: Store, key: TotpKey) -> None:
    """Give every later session of ``store`` the key (see :func:`set_secret`, :func:`secret_of`)."""
    store.set_session_info(SESSION_INFO_KEY, key)


def _key_for(account: Account) -> tuple[Session, TotpKey]:
    s = object_session(account)
    key = s.info.get(SESSION_INFO_KEY) if s is not None else None
    if s is None or not isinstance(key, TotpKey):
        raise SetupError("the TOTP key is not loaded for this store (totp_store.attach)")
    return s, key


def set_secret(account: Account, secret: str) -> None:
    """Store ``secret`` sealed for ``account`` (flushing a new account first, for its id).

    The clear secret is never written: a new account is inserted without one.
    """
    s, key = _key_for(account)
    if account.id is None:
        account.totp_secret = None
        s.flush()
    account.totp_secret = seal(key, account.id, secret)


def secret_of(account: Account) -> str | None:
    """The account's TOTP secret, or None if it has none or it does not open (logged, not shown)."""
    stored = account.totp_secret
    if stored is None:
        return None
    _, key = _key_for(account)
    secret = open_sealed(key, account.id, stored)
    if secret is None:
        log.warning("the stored TOTP secret of account id %d does not open (altered, moved from "
                    "another account, or sealed under another key): TOTP refused", account.id)
    return secret


# --- the key file and start-up ---------------------------------------------------------------

def key_path(keys_dir: Path) -> Path:
    return keys_dir / KEY_FILE


def create_key(keys_dir: Path) -> TotpKey:
    """Write a new key to ``keys_dir/totp.key`` (0600, never replacing an existing file)."""
    key = TotpKey.generate()
    text = _KEY_TEXT_PREFIX + base64.b64encode(key.raw).decode("ascii") + "\n"
    write_private_file(key_path(keys_dir), text.encode("ascii"))
    return key


def load_key(keys_dir: Path) -> TotpKey:
    """Read the key; refuse a file that others may read or that is not a regular file."""
    path = key_path(keys_dir)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077:
            raise SetupError(f"{path} must be a regular file readable by the server's user only "
                             "(chmod 600)")
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    try:
        text = data.decode("ascii").strip()
        if not text.startswith(_KEY_TEXT_PREFIX):
            raise ValueError
        return TotpKey(base64.b64decode(text[len(_KEY_TEXT_PREFIX):], validate=True))
    except (ValueError, binascii.Error):
        raise SetupError(f"{path} is not a Rampart TOTP key") from None


def _any_sealed(store: Store) -> bool:
    with store.read() as s:
        return s.scalars(select(Account.id).where(
            Account.totp_secret.startswith(SEALED_PREFIX, autoescape=True)).limit(1)).first() \
            is not None


def load_or_create_key(keys_dir: Path, store: Store) -> TotpKey:
    """The data directory's key; created on the first start of an older data directory.

    A missing key while the database holds sealed secrets is refused: a new key
    would silently lock every account out of its second factor.
    """
    try:
        return load_key(keys_dir)
    except FileNotFoundError:
        pass
    if _any_sealed(store):
        raise SetupError(f"{key_path(keys_dir)} is missing but the database holds sealed TOTP "
                         "secrets: restore the key file from the backup of this data directory")
    try:
        key = create_key(keys_dir)
    except FileExistsError:  # another server process made it first
        return load_key(keys_dir)
    log.info("created the TOTP sealing key %s (back it up with the database)",
             key_path(keys_dir))
    return key


def seal_clear_secrets(store: Store, key: TotpKey) -> int:
    """Seal every clear TOTP secret (written by an older version); return how many.

    On SQLite the file is then checkpointed and vacuumed so the clear values
    do not survive in free pages or the write-ahead log.
    """
    with store.transaction() as s:
        rows = s.execute(select(Account.id, Account.totp_secret).where(
            Account.totp_secret.is_not(None))).all()
        clear = [(aid, value) for aid, value in rows
                 if value is not None and not is_sealed(value)]
        for aid, value in clear:
            s.execute(update(Account).where(Account.id == aid, Account.totp_secret == value)
                      .values(totp_secret=seal(key, aid, value)))
    if not clear:
        return 0
    if store.engine.dialect.name == "sqlite":
        raw = store.engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            cur.execute("VACUUM")
            cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            cur.close()
        finally:
            raw.close()
    elif store.engine.dialect.name == "postgresql":  # rewrite the table: no dead clear tuples
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM FULL accounts")
    log.info("sealed %d clear TOTP secret(s) written by an older version", len(clear))
    return len(clear)


def prepare(store: Store, keys_dir: Path) -> TotpKey:
    """At start: load (or first create) the key, seal clear secrets, attach the key to ``store``."""
    key = load_or_create_key(keys_dir, store)
    seal_clear_secrets(store, key)
    attach(store, key)
    return key
