"""What a signer checks before signing a root: fingerprints and the root diff.

Pure and I/O-free (docs/trust-chain.md, "The signing ceremony").

* :func:`key_fingerprint` is the short, human-comparable form of an operator
  key: six groups of five digits (about 100 bits) derived from the SHA-256 of
  the public key, the same digest as the key id. The key holder reads it out
  of band (phone, in person); the owner types or passes it while signing.
  A server that swaps a key cannot make its fingerprint match without a
  second preimage of SHA-256 on those bits.
* :func:`root_diff` describes exactly what a proposed root changes relative to
  the root the signer trusts, as data; the CLI shows it and compares it with
  the changes the owner named. Nothing here reads a key label from anywhere
  but the two roots it is given.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field

import msgspec

from .errors import UsageError
from .payloads import TenantRoot

__all__ = ["FINGERPRINT_GROUPS", "RootDiff", "default_key_name", "key_fingerprint",
           "key_fingerprint_b64", "normalise_fingerprint", "root_diff"]

#: Groups of five digits in a fingerprint (each from 5 bytes of the digest).
FINGERPRINT_GROUPS = 6
_ROLES = ("owner", "approver", "technician", "automation")


def key_fingerprint(public_key: bytes) -> str:
    """``"12345 67890 …"``: six groups of five digits from SHA-256(public key).

    ``public_key`` is what a root's ``keys`` hold: an Ed25519 key's 32 raw bytes, or a
    passkey's canonical blob (its algorithm, public key, credential id, RP ID and origin), so a
    passkey's fingerprint covers its pinned origin too.
    """
    if len(public_key) != 32 and not (public_key.startswith(b"{") and len(public_key) <= 2048):
        raise UsageError("an Ed25519 public key is 32 bytes")
    digest = hashlib.sha256(public_key).digest()
    groups = [int.from_bytes(digest[i * 5:(i + 1) * 5], "big") % 100000
              for i in range(FINGERPRINT_GROUPS)]
    return " ".join(f"{g:05d}" for g in groups)


def key_fingerprint_b64(public_b64: str) -> str:
    """The fingerprint of a base64 public key as it appears in a root's ``keys``."""
    try:
        raw = base64.b64decode(public_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UsageError("invalid base64 public key") from exc
    return key_fingerprint(raw)


def normalise_fingerprint(text: str) -> str:
    """The digits of a typed fingerprint in canonical grouping; spaces, dashes, dots ignored.

    Raises :class:`UsageError` if it is not exactly 30 digits.
    """
    digits = "".join(ch for ch in text if not ch.isspace() and ch not in "-._:")
    if len(digits) != 5 * FINGERPRINT_GROUPS or not digits.isascii() or not digits.isdigit():
        raise UsageError(f"a key fingerprint is {FINGERPRINT_GROUPS} groups of five digits")
    return " ".join(digits[i:i + 5] for i in range(0, len(digits), 5))


def default_key_name(public_b64: str) -> str:
    """The name a key gets in a root when its signer's records hold none: from its fingerprint."""
    return "key-" + key_fingerprint_b64(public_b64).replace(" ", "-")[:11]


@dataclass(frozen=True, slots=True)
class RootDiff:
    """What ``new`` changes relative to ``old`` (both already decoded).

    ``added`` and ``removed`` map key ids to their roles; ``roles_changed`` and
    ``renamed`` are for keys in both; scalar changes are ``(old, new)`` pairs.
    """

    old_version: int
    new_version: int
    added: dict[str, tuple[str, ...]]
    removed: dict[str, tuple[str, ...]]
    roles_changed: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]
    renamed: dict[str, tuple[str, str]]
    thresholds: dict[str, tuple[int, int]]
    policy: dict[str, tuple[object, object]]
    log_keys_changed: bool
    tenant_changed: bool
    name: tuple[str, str] | None
    expires: tuple[int, int]
    #: Outside witness keys the new root adds (key id -> base64 key) and removes (key ids).
    witnesses_added: dict[str, str] = field(default_factory=dict)
    witnesses_removed: tuple[str, ...] = ()


def root_diff(old: TenantRoot, new: TenantRoot) -> RootDiff:
    """Every difference between two roots, except signatures (which are not in payloads)."""
    added = {k: tuple(new.roles_of(k)) for k in sorted(set(new.keys) - set(old.keys))}
    removed = {k: tuple(old.roles_of(k)) for k in sorted(set(old.keys) - set(new.keys))}
    roles_changed: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    renamed: dict[str, tuple[str, str]] = {}
    for k in sorted(set(old.keys) & set(new.keys)):
        a, b = tuple(old.roles_of(k)), tuple(new.roles_of(k))
        if a != b:
            roles_changed[k] = (a, b)
        if old.keys[k].name != new.keys[k].name:
            renamed[k] = (old.keys[k].name, new.keys[k].name)
        if old.keys[k].public != new.keys[k].public:  # key ids hash the key: cannot happen
            raise UsageError(f"key {k[:16]} has two public keys")
    thresholds = {r: (old.roles.get(r).threshold, new.roles.get(r).threshold) for r in _ROLES
                  if old.roles.get(r).threshold != new.roles.get(r).threshold}
    pa, pb = msgspec.to_builtins(old.policy), msgspec.to_builtins(new.policy)
    policy = {k: (pa.get(k), pb.get(k)) for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)}
    return RootDiff(
        old_version=old.version, new_version=new.version, added=added, removed=removed,
        roles_changed=roles_changed, renamed=renamed, thresholds=thresholds, policy=policy,
        log_keys_changed=dict(old.log_keys) != dict(new.log_keys),
        tenant_changed=old.tenant != new.tenant,
        name=(old.name, new.name) if old.name != new.name else None,
        expires=(old.expires, new.expires),
        witnesses_added={k: v for k, v in sorted(new.witnesses().items()) if k not in old.witnesses()},
        witnesses_removed=tuple(sorted(set(old.witnesses()) - set(new.witnesses()))),
    )
