"""The operator's local state: config directory, session, keys, trusted roots.

Layout (docs/design/protocol.md, "Operator CLI state")::

    $RAMPART_CONFIG_DIR (default ~/.config/rampart)   0700
      session.json          {server, cert_sha256, username, token}    0600
      server.pem            the pinned server certificate
      keys/<keyid>.key      encrypted operator key (Argon2id + ChaCha20-Poly1305)  0600
      keys/<keyid>.json     {keyid, name, tenant, username, created}
      roots/<t>.json        the newest tenant root this operator verified (exact envelope bytes)
      roots/<t>/v<N>.json   every root version this operator verified
      roots/<t>.pin         the SHA-256 of the root version this operator pinned out of band
      labels.json           {keyid: label}: this operator's own names for keys (never the server's)
      checkpoints/<t>.json  the newest audit checkpoint this operator verified (envelope bytes)

Security invariants:

* Every file is written atomically (temporary file, fsync, rename) with mode
  0600 in a 0700 directory, so a crash never leaves a half-written key, root or
  session, and no other local user can read them.
* Private keys are only ever stored encrypted; this module never sees a
  passphrase.
* A root or checkpoint is written here only after the caller verified it.
* A pin is written only from what the operator was given out of band (or a root
  it built itself); nothing signs for a tenant without one (docs/access.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rampart.private_files import write_private_atomic

from .errors import CliError, NotLoggedIn

ENV_CONFIG_DIR = "RAMPART_CONFIG_DIR"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def default_config_dir() -> Path:
    env = os.environ.get(ENV_CONFIG_DIR)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "rampart"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it 0700."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise CliError(f"cannot create directory {path}: {exc.strerror}") from exc
    return path


def write_private(path: Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path`` with mode 0600."""
    ensure_private_dir(path.parent)
    write_private_atomic(path, data)


def write_private_json(path: Path, doc: Any) -> None:
    write_private(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def safe_component(name: str, what: str) -> str:
    """A path component from untrusted text (tenant id, key id): no traversal."""
    if not _SAFE_NAME.match(name):
        raise CliError(f"invalid {what}: {name!r}")
    return name


@dataclass(frozen=True, slots=True)
class Session:
    server: str
    cert_sha256: str
    username: str
    token: str


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A locally stored operator key (public facts only)."""

    keyid: str
    name: str
    tenant: str | None
    username: str
    created: int
    path: Path
    #: Base64 public key (keys made before fingerprints were shown have none).
    public: str | None = None

    @property
    def fingerprint(self) -> str | None:
        """The fingerprint the key holder reads to an owner, if the public key is on record."""
        if self.public is None:
            return None
        try:
            raw = base64.b64decode(self.public, validate=True)
        except (binascii.Error, ValueError):
            return None
        if hashlib.sha256(raw).hexdigest() != self.keyid or len(raw) != 32:
            return None
        from rampart.trust import key_fingerprint  # rampart.trust only when needed

        return key_fingerprint(raw)

    def to_json(self) -> dict[str, Any]:
        return {"keyid": self.keyid, "name": self.name, "tenant": self.tenant,
                "username": self.username, "created": self.created, "file": str(self.path),
                "fingerprint": self.fingerprint}


class Config:
    """One operator's config directory."""

    def __init__(self, directory: Path | None = None) -> None:
        self.dir = (directory or default_config_dir()).expanduser()

    # --- paths -----------------------------------------------------------------------

    @property
    def session_path(self) -> Path:
        return self.dir / "session.json"

    @property
    def cert_path(self) -> Path:
        return self.dir / "server.pem"

    @property
    def keys_dir(self) -> Path:
        return self.dir / "keys"

    @property
    def roots_dir(self) -> Path:
        return self.dir / "roots"

    @property
    def checkpoints_dir(self) -> Path:
        return self.dir / "checkpoints"

    def ensure(self) -> None:
        ensure_private_dir(self.dir)

    # --- session ---------------------------------------------------------------------

    def save_session(self, session: Session, cert_der: bytes) -> None:
        self.ensure()
        write_private(self.cert_path, ssl.DER_cert_to_PEM_cert(cert_der).encode())
        write_private_json(self.session_path, {
            "server": session.server, "cert_sha256": session.cert_sha256,
            "username": session.username, "token": session.token,
        })

    def load_session(self) -> Session | None:
        try:
            doc = json.loads(self.session_path.read_text())
            return Session(server=str(doc["server"]), cert_sha256=str(doc["cert_sha256"]),
                           username=str(doc["username"]), token=str(doc.get("token") or ""))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CliError(f"cannot read {self.session_path}: damaged session file") from exc

    def require_session(self) -> Session:
        s = self.load_session()
        if s is None or not s.token:
            raise NotLoggedIn("not logged in: run `rampart login --server URL --user NAME`")
        return s

    def clear_token(self) -> None:
        s = self.load_session()
        if s is not None:
            write_private_json(self.session_path, {
                "server": s.server, "cert_sha256": s.cert_sha256,
                "username": s.username, "token": "",
            })

    def load_cert(self) -> bytes | None:
        try:
            return ssl.PEM_cert_to_DER_cert(self.cert_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read the pinned certificate {self.cert_path}") from exc

    # --- keys ------------------------------------------------------------------------

    def save_key(self, keyid: str, key_file: bytes, *, name: str, tenant: str | None,
                 username: str, public: str | None = None) -> KeyInfo:
        safe_component(keyid, "key id")
        path = self.keys_dir / f"{keyid}.key"
        write_private(path, key_file)
        created = int(time.time())
        doc: dict[str, Any] = {"keyid": keyid, "name": name, "tenant": tenant,
                               "username": username, "created": created}
        if public is not None:
            doc["public"] = public
        write_private_json(self.keys_dir / f"{keyid}.json", doc)
        return KeyInfo(keyid, name, tenant, username, created, path, public)

    def delete_key(self, keyid: str) -> None:
        safe_component(keyid, "key id")
        for suffix in (".key", ".json"):
            try:
                (self.keys_dir / f"{keyid}{suffix}").unlink()
            except FileNotFoundError:
                pass

    def list_keys(self, username: str | None = None) -> list[KeyInfo]:
        out: list[KeyInfo] = []
        if not self.keys_dir.is_dir():
            return out
        for meta in sorted(self.keys_dir.glob("*.json")):
            try:
                doc = json.loads(meta.read_text())
                pub = doc.get("public")
                info = KeyInfo(str(doc["keyid"]), str(doc["name"]),
                               doc.get("tenant") or None, str(doc["username"]),
                               int(doc.get("created", 0)), meta.with_suffix(".key"),
                               pub if isinstance(pub, str) else None)
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if not info.path.exists():
                continue
            if username is None or info.username == username:
                out.append(info)
        out.sort(key=lambda k: (k.created, k.keyid))
        return out

    def key_candidates(self, username: str, tenant_id: str | None) -> list[KeyInfo]:
        """Signing keys for ``tenant_id``: tenant-specific, then general; newest first."""
        keys = self.list_keys(username)
        specific = [k for k in keys if tenant_id is not None and k.tenant == tenant_id]
        general = [k for k in keys if k.tenant is None]
        return list(reversed(specific)) + list(reversed(general))

    # --- trusted roots -----------------------------------------------------------------

    def root_path(self, tenant_id: str) -> Path:
        return self.roots_dir / f"{safe_component(tenant_id, 'tenant id')}.json"

    def load_root_bytes(self, tenant_id: str) -> bytes | None:
        try:
            return self.root_path(tenant_id).read_bytes()
        except FileNotFoundError:
            return None

    def load_root_version(self, tenant_id: str, version: int) -> bytes | None:
        try:
            return (self.roots_dir / safe_component(tenant_id, "tenant id")
                    / f"v{int(version)}.json").read_bytes()
        except FileNotFoundError:
            return None

    def save_root(self, tenant_id: str, version: int, envelope: bytes, *, newest: bool) -> None:
        """Store a root version the caller has verified (and, if ``newest``, make it current)."""
        d = self.roots_dir / safe_component(tenant_id, "tenant id")
        write_private(d / f"v{int(version)}.json", envelope)
        if newest:
            write_private(self.root_path(tenant_id), envelope)

    def root_history(self, tenant_id: str) -> list[bytes]:
        d = self.roots_dir / safe_component(tenant_id, "tenant id")
        if not d.is_dir():
            return []
        found: list[tuple[int, bytes]] = []
        for p in d.glob("v*.json"):
            try:
                found.append((int(p.stem[1:]), p.read_bytes()))
            except (ValueError, OSError):
                continue
        return [b for _, b in sorted(found)]

    def pin_path(self, tenant_id: str) -> Path:
        return self.roots_dir / f"{safe_component(tenant_id, 'tenant id')}.pin"

    def load_pin(self, tenant_id: str) -> str | None:
        """The SHA-256 this operator pinned for ``tenant_id`` (None if none)."""
        try:
            text = self.pin_path(tenant_id).read_text().strip().lower()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CliError(f"cannot read {self.pin_path(tenant_id)}: {exc.strerror}") from exc
        return text if re.fullmatch(r"[0-9a-f]{64}", text) else None

    def save_pin(self, tenant_id: str, sha256: str) -> None:
        write_private(self.pin_path(tenant_id), (sha256.lower() + "\n").encode())

    # --- key labels (this operator's own records) -------------------------------------

    @property
    def labels_path(self) -> Path:
        return self.dir / "labels.json"

    def load_labels(self) -> dict[str, str]:
        """Key id -> label, from this operator's records and own key files."""
        out = {k.keyid: k.name for k in self.list_keys()}
        try:
            doc = json.loads(self.labels_path.read_text())
        except FileNotFoundError:
            return out
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read {self.labels_path}: damaged labels file") from exc
        if isinstance(doc, dict):
            out.update({str(k): str(v) for k, v in doc.items() if isinstance(v, str)})
        return out

    def save_label(self, keyid: str, label: str) -> None:
        safe_component(keyid, "key id")
        try:
            doc = json.loads(self.labels_path.read_text())
        except (FileNotFoundError, ValueError):
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        doc[keyid] = label
        self.ensure()
        write_private_json(self.labels_path, doc)

    # --- audit checkpoints ---------------------------------------------------------------

    def checkpoint_path(self, tenant_id: str) -> Path:
        return self.checkpoints_dir / f"{safe_component(tenant_id, 'tenant id')}.json"

    def load_checkpoint(self, tenant_id: str) -> bytes | None:
        try:
            return self.checkpoint_path(tenant_id).read_bytes()
        except FileNotFoundError:
            return None

    def save_checkpoint(self, tenant_id: str, envelope: bytes) -> None:
        write_private(self.checkpoint_path(tenant_id), envelope)
