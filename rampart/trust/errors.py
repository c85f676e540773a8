"""Errors of the trust core.

Two families, never mixed (as in python-tuf):

    TrustError                      untrusted input failed a check: refuse it
    ├── DecodeError                 malformed, oversized, unknown field, wrong type, duplicate key
    ├── SignatureError              bad or missing signature, wrong role
    │   ├── UnknownKeyError         signed by a key the pinned root does not name
    │   ├── ThresholdError          not enough distinct authorised signers
    │   ├── PasskeyError            a WebAuthn assertion failed one check (reason passkey-<check>)
    │   └── WitnessQuorumError      a checkpoint lacks the outside witnesses' co-signatures the policy asks
    ├── ExpiredError                outside its validity window (expired or not yet valid)
    ├── RollbackError               version or log size would go backwards
    ├── ReplayError                 nonce (or job id) seen before
    │   └── PasskeyCounterError     a passkey's sign counter did not increase (cloned authenticator)
    ├── WrongDeviceError            not addressed to this device
    ├── WrongTenantError            object of another tenant
    ├── RevokedError                the grant was revoked by an approver
    ├── CancelledError              the job was cancelled by its technician or an approver
    ├── CapabilityError             declares something the grant, root or device policy does not allow
    │   └── RootNotAllowedError     runs as root on a device enrolled without --allow-root
    ├── DigestMismatchError         payload bytes do not match the signed SHA-256
    └── InconsistentLogError        Merkle inclusion or consistency proof does not verify

    UsageError                      the caller misused the API (a bug, not an attack)

Every TrustError carries ``reason``: a short stable slug (for receipts, logs
and tests) and a human message without secrets.
"""

from __future__ import annotations


class TrustError(Exception):
    """Untrusted input was refused. ``reason`` is a stable slug."""

    reason = "untrusted"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class DecodeError(TrustError):
    reason = "malformed"


class SignatureError(TrustError):
    reason = "bad-signature"


class UnknownKeyError(SignatureError):
    reason = "unknown-key"


class ThresholdError(SignatureError):
    reason = "threshold-not-met"


#: The checks of a passkey assertion, each a stable ``passkey-<check>`` reason (trust/webauthn.py).
PASSKEY_CHECKS = ("malformed", "type", "challenge", "origin", "rp-id", "user-present",
                  "user-verified", "signature")


class PasskeyError(SignatureError):
    """A WebAuthn assertion failed ``check`` (one of :data:`PASSKEY_CHECKS`)."""

    reason = "passkey"

    def __init__(self, check: str, message: str) -> None:
        if check not in PASSKEY_CHECKS:
            raise UsageError(f"unknown passkey check {check!r}")
        super().__init__(message)
        self.check = check
        self.reason = f"passkey-{check}"


class WitnessQuorumError(SignatureError):
    reason = "witness-quorum"


class ExpiredError(TrustError):
    reason = "expired"


class RollbackError(TrustError):
    reason = "rollback"


class ReplayError(TrustError):
    reason = "replay"


class PasskeyCounterError(ReplayError):
    reason = "passkey-counter"


class WrongDeviceError(TrustError):
    reason = "wrong-device"


class WrongTenantError(TrustError):
    reason = "wrong-tenant"


class RevokedError(TrustError):
    reason = "revoked"


class CancelledError(TrustError):
    reason = "job-cancelled"


class CapabilityError(TrustError):
    reason = "capability-not-granted"


class RootNotAllowedError(CapabilityError):
    """The device's own policy forbids root (enrolled without ``--allow-root``): the grant may
    well hold ``root``; the remedy is on the device, so the reason says so."""

    reason = "device-forbids-root"


class DigestMismatchError(TrustError):
    reason = "digest-mismatch"


class InconsistentLogError(TrustError):
    reason = "inconsistent-log"


class UsageError(Exception):
    """The caller misused the trust API: a programming error, not an attack."""
