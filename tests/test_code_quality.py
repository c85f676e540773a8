"""The code stays lint-clean and type-clean, and the trust core keeps its layering and surface."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import rampart.trust

REPO = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing() -> None:
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "rampart", "tests", "bench"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict_finds_nothing() -> None:
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "rampart"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


def test_trust_core_imports_no_io_layer() -> None:
    """rampart.trust is pure: it never imports the server, agent, CLI or an I/O library."""
    forbidden = ("rampart.server", "rampart.agent", "rampart.cli", "rampart.console", "socket",
                 "subprocess", "sqlite3", "httpx", "websockets", "sqlalchemy", "pathlib", "io")
    for path in (REPO / "rampart" / "trust").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                assert not any(name == f or name.startswith(f + ".") for f in forbidden), \
                    f"{path.name} imports {name}"


def test_trust_public_surface_is_locked() -> None:
    """Adding or removing a public name of the trust core is a deliberate change: update this list."""
    assert sorted(rampart.trust.__all__) == sorted([
        "Action", "Authorization", "AutomationKey", "AutomationPublicKey", "CapabilityError",
        "Checkpoint", "ContainmentReport", "DecodeError", "Declared", "DeviceKey", "DevicePolicy",
        "DevicePublicKey", "DigestMismatchError", "Effective", "Envelope", "ExpiredError", "Grant",
        "GrantStatus", "InconsistentLogError", "Job", "KeyEntry", "KeyFileError", "LogEvidence",
        "LogKey", "LogPublicKey", "OperatorKey", "OperatorPublicKey", "PayloadRef", "Policy",
        "Receipt", "Repeat", "RepeatAuthorization", "ReplayError", "Revocation", "RevokedError",
        "RoleSpec", "Roles",
        "RollbackError", "SignatureError", "TenantRoot", "ThresholdError", "TrustError",
        "TrustedRoot", "UnknownKeyError", "UsageError", "WrongDeviceError", "WrongTenantError",
        "add_signature", "approvers_required", "authorize_job", "authorize_repeat",
        "check_log_progress",
        "check_root_signatures", "decode_envelope", "decode_payload", "decode_private_key",
        "device_id_for", "encode_payload", "encode_plain_private_key", "encrypt_private_key",
        "grant_status", "key_id", "new_grant_id", "new_job_id", "new_nonce", "new_tenant_id",
        "pae", "pin_root", "reload_root", "root_sha256", "sign_envelope", "update_root",
        "verified_signers", "verify_checkpoint", "verify_grant", "verify_receipt",
        "verify_revocation",
    ])
    for name in rampart.trust.__all__:
        assert hasattr(rampart.trust, name), name
