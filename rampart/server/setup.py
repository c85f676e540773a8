"""``rampart server init``: create a data directory, its TLS identity and the bootstrap token.

Invariants: an initialised (non-empty) directory is never overwritten; the
TLS key, log keys and the TOTP sealing key are created 0600 in 0700 directories; the bootstrap
token is returned once to be printed and only its SHA-256 is stored. No
account, password or operator key is created here (no default credentials).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from rampart.tlspin import fingerprint

from . import clock
from .audit import SERVER_LOG, AuditLog
from .auth import set_bootstrap_token
from .config import default_sqlite_url, normalise_db_url, write_config
from .db import Store, migrate
from .errors import SetupError
from .keystore import LogKeyStore, write_private_file
from .models import AuditLogRow
from .totp_store import create_key

CERT_DAYS = 5 * 365


@dataclass(frozen=True, slots=True)
class InitResult:
    cert_sha256: str
    bootstrap_token: str


def make_tls_identity(cert_path: Path, key_path: Path, *, now: datetime.datetime) -> str:
    """Self-signed ECDSA P-256 certificate for localhost/127.0.0.1/::1; return its SHA-256."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rampart server")])
    san = x509.SubjectAlternativeName([
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    write_private_file(key_path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return fingerprint(cert.public_bytes(serialization.Encoding.DER))


def cert_sha256_of(cert_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return fingerprint(cert.public_bytes(serialization.Encoding.DER))


def init_data_dir(data_dir: Path | str, db_url: str | None = None) -> InitResult:
    """Initialise ``data_dir`` (must be absent or empty) and its database."""
    data_dir = Path(data_dir)
    if data_dir.exists() and any(data_dir.iterdir()):
        raise SetupError(f"{data_dir} is not empty: refusing to overwrite an initialised directory")
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    url = normalise_db_url(db_url) if db_url else default_sqlite_url(data_dir)
    if db_url is None:  # the database holds TOTP secrets and hashes: owner-only from birth
        write_private_file(data_dir / "rampart.db", b"")
    (data_dir / "tls").mkdir(mode=0o700)
    keys_dir = data_dir / "keys"
    keys_dir.mkdir(mode=0o700)
    create_key(keys_dir)  # seals TOTP secrets; never in the database (.totp_store)
    cert_sha = make_tls_identity(data_dir / "tls" / "cert.pem", data_dir / "tls" / "key.pem",
                                 now=datetime.datetime.now(datetime.UTC))
    store = Store(url)
    try:
        migrate(store.engine)
        audit = AuditLog(store, LogKeyStore(keys_dir))
        with store.transaction() as s:
            if s.get(AuditLogRow, SERVER_LOG) is not None:
                raise SetupError("the database is already initialised by another data directory")
            audit.create_log(s, SERVER_LOG)
            token = set_bootstrap_token(s)
        audit.sign_checkpoint(SERVER_LOG, clock.now())
    finally:
        store.dispose()
    write_config(data_dir, db_url or url)
    return InitResult(cert_sha256=cert_sha, bootstrap_token=token)
