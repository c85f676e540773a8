"""Tenant roots: pinning and rotation (the TUF root-rotation rule).

Rules enforced here (docs/trust-chain.md, "Roots"):

1. A root is pinned only by the SHA-256 of its exact envelope bytes, given
   out of band, and must be signed by the owner threshold of its own owner
   role (self-consistency).
2. Version N+1 is accepted only if it is exactly N+1, names the same tenant,
   and is signed by the owner threshold of version N *and* of version N+1.
3. Versions never go back (rollback refused) and none is skipped.
4. Expired intermediate roots may be stepped through; the newest trusted root
   must be unexpired at ``now``.

All functions are pure: bytes and time in, a frozen :class:`TrustedRoot` out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from .envelope import Envelope, SignerResult, decode_envelope, verified_signers
from .errors import ExpiredError, RollbackError, ThresholdError, UsageError, WrongTenantError
from .keys import PublicKey
from .limits import DEFAULT_LIMITS, Limits
from .payloads import ROOT_TYPE, TenantRoot, decode_payload


@dataclass(frozen=True, slots=True)
class TrustedRoot:
    """A root that passed verification, with its keys parsed once."""

    root: TenantRoot
    envelope: bytes
    sha256: str
    owners: dict[str, PublicKey] = field(repr=False)
    approvers: dict[str, PublicKey] = field(repr=False)
    technicians: dict[str, PublicKey] = field(repr=False)
    automation: dict[str, PublicKey] = field(repr=False)
    log_keys: dict[str, PublicKey] = field(repr=False)
    #: Outside witnesses that co-sign checkpoints (empty: the root names none).
    witnesses: dict[str, PublicKey] = field(repr=False, default_factory=dict)

    @property
    def tenant(self) -> str:
        return self.root.tenant

    @property
    def version(self) -> int:
        return self.root.version


def root_sha256(envelope_bytes: bytes) -> str:
    """The out-of-band pin: hex SHA-256 of the root envelope's exact bytes."""
    return hashlib.sha256(envelope_bytes).hexdigest()


def _trusted(root: TenantRoot, env_bytes: bytes) -> TrustedRoot:
    return TrustedRoot(
        root=root, envelope=env_bytes, sha256=root_sha256(env_bytes),
        owners=root.role_keys("owner"), approvers=root.role_keys("approver"),
        technicians=root.role_keys("technician"), automation=root.role_keys("automation"),
        log_keys=root.log_public_keys(), witnesses=root.witness_public_keys(),
    )


def owner_signatures(env: Envelope, root: TenantRoot) -> SignerResult:
    """Which owners of ``root`` validly signed ``env`` (each key once)."""
    return verified_signers(env, root.role_keys("owner"), threshold=root.roles.owner.threshold)


def _decode_root(data: bytes, limits: Limits) -> tuple[Envelope, TenantRoot]:
    env = decode_envelope(data, expect_type=ROOT_TYPE, limits=limits)
    return env, decode_payload(env.payload, TenantRoot, max_bytes=limits.max_envelope_bytes)


def pin_root(envelope_bytes: bytes, *, expected_sha256: str, now: int,
             limits: Limits = DEFAULT_LIMITS) -> TrustedRoot:
    """Trust a root first seen at enrolment, by its out-of-band SHA-256 pin."""
    if not isinstance(expected_sha256, str) or len(expected_sha256) != 64:
        raise UsageError("expected_sha256 must be 64 hex characters")
    if root_sha256(envelope_bytes) != expected_sha256.lower():
        from .errors import SignatureError

        raise SignatureError("root does not match the pinned SHA-256")
    env, root = _decode_root(envelope_bytes, limits)
    res = owner_signatures(env, root)
    if not res.met:
        raise ThresholdError(
            f"root v{root.version} has {len(res.signed)} of {res.threshold} owner signatures"
        )
    if root.expires <= now:
        raise ExpiredError(f"root v{root.version} expired")
    return _trusted(root, envelope_bytes)


def check_root_signatures(
    envelope_bytes: bytes, *, previous: TenantRoot | None, limits: Limits = DEFAULT_LIMITS,
) -> tuple[TenantRoot, SignerResult, SignerResult | None]:
    """Signature status of a proposed root against its own and the previous owners.

    Does not raise for a missing threshold (for showing progress while owners
    sign); :func:`update_root` is the call that enforces.
    """
    env, root = _decode_root(envelope_bytes, limits)
    own = owner_signatures(env, root)
    prev = owner_signatures(env, previous) if previous is not None else None
    return root, own, prev


def update_root(trusted: TrustedRoot, new_envelopes: Sequence[bytes], *, now: int,
                limits: Limits = DEFAULT_LIMITS) -> TrustedRoot:
    """Step from ``trusted`` through ``new_envelopes`` (N+1, N+2, ...) and return the newest.

    Nothing is returned (and so nothing can be persisted) unless every step
    verifies and the newest root is unexpired.
    """
    if len(new_envelopes) > limits.max_root_versions_per_update:
        raise UsageError("too many root versions in one update")
    current = trusted
    for data in new_envelopes:
        env, root = _decode_root(data, limits)
        if root.tenant != current.root.tenant:
            raise WrongTenantError("root names another tenant")
        if root.version <= current.root.version:
            raise RollbackError(
                f"root v{root.version} is not newer than trusted v{current.root.version}"
            )
        if root.version != current.root.version + 1:
            raise RollbackError(
                f"root v{root.version} skips versions after v{current.root.version}"
            )
        old = verified_signers(env, current.owners, threshold=current.root.roles.owner.threshold)
        if not old.met:
            raise ThresholdError(
                f"root v{root.version} has {len(old.signed)} of {old.threshold} signatures "
                f"from the owners of v{current.root.version}"
            )
        new = owner_signatures(env, root)
        if not new.met:
            raise ThresholdError(
                f"root v{root.version} has {len(new.signed)} of {new.threshold} signatures "
                "from its own owners"
            )
        current = _trusted(root, data)
    if current.root.expires <= now:
        raise ExpiredError(f"newest root v{current.root.version} is expired")
    return current


def reload_root(envelope_bytes: bytes, *, limits: Limits = DEFAULT_LIMITS) -> TrustedRoot:
    """Rebuild a root the caller verified earlier and kept in protected storage.

    Checks the owner threshold again but not expiry: an expired pinned root
    still anchors the rotation to its successor (rule 4); callers that act on
    a root check expiry through :func:`update_root` or the objects it signs.
    """
    env, root = _decode_root(envelope_bytes, limits)
    res = owner_signatures(env, root)
    if not res.met:
        raise ThresholdError(f"stored root v{root.version} lacks its owner signatures")
    return _trusted(root, envelope_bytes)
