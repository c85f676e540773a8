"""Private keys at rest (pure: bytes in, bytes out; the caller does the file I/O).

Two formats, both JSON with ``"format": "rampart-key-v1"``:

* ``encrypted``: operator and automation keys. The seed is sealed with
  ChaCha20-Poly1305 under a key derived from the passphrase with Argon2id
  (memory-hard). The key kind and public key are bound as associated data, so
  a file cannot be relabelled as another kind of key.
* ``plain``: device and log keys, which must live in a root-only 0600 file.

Security invariant: a wrong passphrase or any change to the file yields
:class:`KeyFileError`, never a usable key and never the secret in a message.
"""

from __future__ import annotations

import json
import os

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .errors import DecodeError
from .keys import PRIVATE_KINDS, PrivateKey, b64decode_strict, b64encode

FORMAT = "rampart-key-v1"
# Argon2id parameters (RFC 9106 second recommended option: 64 MiB, t=3, p=4 -> p=1 here).
KDF_TIME_COST = 3
KDF_MEMORY_KIB = 64 * 1024
KDF_PARALLELISM = 1
MAX_KEYFILE_BYTES = 16 * 1024


class KeyFileError(DecodeError):
    reason = "bad-keyfile"


def _aad(kind: str, public_b64: str) -> bytes:
    return f"{FORMAT}|{kind}|{public_b64}".encode()


def _derive(passphrase: str, salt: bytes, t: int, m: int, p: int) -> bytes:
    return hash_secret_raw(
        passphrase.encode("utf-8"), salt, time_cost=t, memory_cost=m, parallelism=p,
        hash_len=32, type=Type.ID,
    )


def encrypt_private_key(key: PrivateKey, passphrase: str, *, memory_kib: int = KDF_MEMORY_KIB) -> bytes:
    """Seal ``key`` under ``passphrase`` (Argon2id + ChaCha20-Poly1305)."""
    if not passphrase:
        raise KeyFileError("an empty passphrase cannot protect a key")
    salt = os.urandom(16)
    nonce = os.urandom(12)
    pub = key.public.to_b64()
    sealed = ChaCha20Poly1305(_derive(passphrase, salt, KDF_TIME_COST, memory_kib, KDF_PARALLELISM)).encrypt(
        nonce, key.seed(), _aad(key.KIND, pub)
    )
    doc = {
        "format": FORMAT,
        "kind": key.KIND,
        "protection": "encrypted",
        "public": pub,
        "kdf": {"name": "argon2id", "salt": b64encode(salt), "t": KDF_TIME_COST,
                "m": memory_kib, "p": KDF_PARALLELISM},
        "cipher": "chacha20-poly1305",
        "nonce": b64encode(nonce),
        "ciphertext": b64encode(sealed),
    }
    return (json.dumps(doc, indent=1) + "\n").encode()


def encode_plain_private_key(key: PrivateKey) -> bytes:
    """Unencrypted key file, for device and log keys kept 0600 in a root-only directory."""
    doc = {"format": FORMAT, "kind": key.KIND, "protection": "plain",
           "public": key.public.to_b64(), "seed": b64encode(key.seed())}
    return (json.dumps(doc, indent=1) + "\n").encode()


def _load(data: bytes) -> dict[str, object]:
    if not isinstance(data, bytes) or len(data) > MAX_KEYFILE_BYTES:
        raise KeyFileError("key file too large or not bytes")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise KeyFileError("key file is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise KeyFileError(f"not a {FORMAT} key file")
    if doc.get("kind") not in PRIVATE_KINDS:
        raise KeyFileError("unknown key kind")
    return doc


def key_file_kind(data: bytes) -> tuple[str, str]:
    """(kind, protection) of a key file, without decrypting it."""
    doc = _load(data)
    return str(doc["kind"]), str(doc.get("protection"))


def decode_private_key(data: bytes, passphrase: str | None = None, *,
                       expect_kind: str | None = None) -> PrivateKey:
    """Open a key file. Encrypted files need ``passphrase``; the kind is checked."""
    doc = _load(data)
    kind = str(doc["kind"])
    if expect_kind is not None and kind != expect_kind:
        raise KeyFileError(f"expected a {expect_kind} key, this file holds a {kind} key")
    cls = PRIVATE_KINDS[kind]
    pub = doc.get("public")
    if not isinstance(pub, str):
        raise KeyFileError("missing public key")
    if doc.get("protection") == "plain":
        seed = b64decode_strict(doc.get("seed"), what="seed")
    elif doc.get("protection") == "encrypted":
        if passphrase is None:
            raise KeyFileError("this key is encrypted: a passphrase is required")
        kdf = doc.get("kdf")
        if not isinstance(kdf, dict) or kdf.get("name") != "argon2id":
            raise KeyFileError("unsupported key derivation")
        try:
            t, m, p = int(kdf["t"]), int(kdf["m"]), int(kdf["p"])
        except (KeyError, TypeError, ValueError):
            raise KeyFileError("bad key derivation parameters") from None
        if not (1 <= t <= 20 and 8 * 1024 <= m <= 4 * 1024 * 1024 and 1 <= p <= 16):
            raise KeyFileError("key derivation parameters out of range")
        salt = b64decode_strict(kdf.get("salt"), what="salt")
        nonce = b64decode_strict(doc.get("nonce"), what="nonce")
        ct = b64decode_strict(doc.get("ciphertext"), what="ciphertext")
        if len(nonce) != 12 or len(salt) < 16:
            raise KeyFileError("bad nonce or salt")
        try:
            seed = ChaCha20Poly1305(_derive(passphrase, salt, t, m, p)).decrypt(nonce, ct, _aad(kind, pub))
        except InvalidTag:
            raise KeyFileError("wrong passphrase or damaged key file") from None
    else:
        raise KeyFileError("unknown key protection")
    key = cls(seed)
    if key.public.to_b64() != pub:
        raise KeyFileError("key file public key does not match its secret")
    return key
