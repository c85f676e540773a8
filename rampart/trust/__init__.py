"""Rampart's trust core: pure, I/O-free verification of everything an agent obeys.

Server, agent and CLI import this package; it imports none of them. Inputs
are bytes, trusted state and the time; outputs are frozen verified objects or
a :class:`TrustError` with a precise ``reason``. The trust chain it enforces is
specified in docs/trust-chain.md.

``__all__`` is the whole surface: code outside this package imports from
``rampart.trust`` (or uses the :mod:`.merkle` namespace it exports), never from
its other submodules (tests/test_code_quality.py checks both).
"""

from . import merkle
from .devset import (
    DeviceProof,
    DeviceProofs,
    DeviceSetTree,
    ProofHash,
    check_proof_hashes,
    commit_devices,
    expand,
    is_member,
)
from .envelope import (
    Envelope,
    SignerResult,
    add_passkey_signature,
    add_signature,
    decode_envelope,
    pae,
    sign_envelope,
    verified_signers,
)
from .errors import (
    CancelledError,
    CapabilityError,
    DecodeError,
    DigestMismatchError,
    ExpiredError,
    InconsistentLogError,
    PasskeyCounterError,
    PasskeyError,
    ReplayError,
    RevokedError,
    RollbackError,
    SignatureError,
    ThresholdError,
    TrustError,
    UnknownKeyError,
    UsageError,
    WitnessQuorumError,
    WrongDeviceError,
    WrongTenantError,
)
from .ids import new_grant_id, new_id, new_job_id, new_nonce, new_tenant_id
from .keyfile import KeyFileError, decode_private_key, encode_plain_private_key, encrypt_private_key
from .keys import (
    AutomationKey,
    AutomationPublicKey,
    DeviceKey,
    DevicePublicKey,
    LogKey,
    LogPublicKey,
    OperatorKey,
    OperatorPublicKey,
    PrivateKey,
    PublicKey,
    WitnessKey,
    WitnessPublicKey,
    b64decode_strict,
    device_id_for,
    key_id,
)
from .limits import DEFAULT_LIMITS, Limits
from .payloads import (
    ACTION_CAPABILITY,
    ALL_CAPABILITIES,
    CANCELLATION_TYPE,
    CHECKPOINT_TYPE,
    GRANT_TYPE,
    JOB_TYPE,
    PAYLOAD_FREE_ACTIONS,
    RECEIPT_TYPE,
    REVOCATION_TYPE,
    ROOT_TYPE,
    Action,
    ActionKind,
    Cancellation,
    Checkpoint,
    ContainmentReport,
    Declared,
    DeviceSet,
    Grant,
    Job,
    KeyEntry,
    Payload,
    PayloadRef,
    Policy,
    Receipt,
    Repeat,
    Revocation,
    Roles,
    RoleSpec,
    SessionSpec,
    SessionSummary,
    TenantRoot,
    decode_payload,
    encode_payload,
)
from .review import (
    FINGERPRINT_GROUPS,
    RootDiff,
    default_key_name,
    key_fingerprint,
    key_fingerprint_b64,
    normalise_fingerprint,
    root_diff,
)
from .roots import (
    TrustedRoot,
    check_root_signatures,
    pin_root,
    reload_root,
    root_sha256,
    update_root,
)
from .verify import (
    Authorization,
    DevicePolicy,
    Effective,
    GrantStatus,
    LogEvidence,
    RepeatAuthorization,
    SessionRecord,
    approvers_required,
    authorize_job,
    authorize_repeat,
    check_cancellation,
    check_log_progress,
    grant_status,
    verify_cancellation,
    verify_checkpoint,
    verify_grant,
    verify_receipt,
    verify_revocation,
    verify_session_record,
)
from .webauthn import (
    PASSKEY_KEY_TYPE,
    PasskeyAssertion,
    PasskeyPublicKey,
    assertion_challenge,
    passkey_blob,
)
from .witness import cosign_checkpoint, witness_checkpoint

__all__ = [
    "ACTION_CAPABILITY", "ALL_CAPABILITIES", "CHECKPOINT_TYPE", "DEFAULT_LIMITS",
    "FINGERPRINT_GROUPS", "GRANT_TYPE", "JOB_TYPE", "PAYLOAD_FREE_ACTIONS", "RECEIPT_TYPE",
    "REVOCATION_TYPE", "ROOT_TYPE", "ActionKind", "Limits", "Payload", "PrivateKey", "PublicKey",
    "RootDiff", "SignerResult", "b64decode_strict", "default_key_name", "key_fingerprint",
    "key_fingerprint_b64", "merkle", "new_id", "normalise_fingerprint", "root_diff",
    "Action", "Authorization", "AutomationKey", "AutomationPublicKey", "CapabilityError",
    "Checkpoint", "ContainmentReport", "DecodeError", "Declared", "DeviceKey", "DevicePolicy",
    "DevicePublicKey", "DigestMismatchError", "Effective", "Envelope", "ExpiredError", "Grant",
    "GrantStatus", "InconsistentLogError", "Job", "KeyEntry", "KeyFileError", "LogEvidence",
    "LogKey", "LogPublicKey", "OperatorKey", "OperatorPublicKey", "PayloadRef", "Policy",
    "Receipt", "Repeat", "RepeatAuthorization", "ReplayError", "Revocation", "RevokedError",
    "SessionSpec", "SessionSummary",
    "RoleSpec", "Roles",
    "RollbackError", "SignatureError", "TenantRoot", "ThresholdError", "TrustError",
    "TrustedRoot", "UnknownKeyError", "UsageError", "WrongDeviceError", "WrongTenantError",
    "add_signature", "approvers_required", "authorize_job", "authorize_repeat", "check_log_progress",
    "check_root_signatures", "decode_envelope", "decode_payload", "decode_private_key",
    "device_id_for", "encode_payload", "encode_plain_private_key", "encrypt_private_key",
    "grant_status", "key_id", "new_grant_id", "new_job_id", "new_nonce", "new_tenant_id",
    "pae", "pin_root", "reload_root", "root_sha256", "sign_envelope", "update_root", "verified_signers",
    "verify_checkpoint", "verify_grant", "verify_receipt", "verify_revocation", "verify_session_record",
    "SessionRecord",
    "CANCELLATION_TYPE", "Cancellation", "CancelledError", "check_cancellation", "verify_cancellation",
    "PASSKEY_KEY_TYPE", "PasskeyAssertion", "PasskeyCounterError", "PasskeyError", "PasskeyPublicKey",
    "add_passkey_signature", "assertion_challenge", "passkey_blob",
    "DeviceProof", "DeviceProofs", "DeviceSet", "DeviceSetTree", "commit_devices", "expand", "is_member",
    "ProofHash", "check_proof_hashes",
    "WitnessKey", "WitnessPublicKey", "WitnessQuorumError", "cosign_checkpoint", "witness_checkpoint",
]
