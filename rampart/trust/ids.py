"""Unguessable identifiers (128 bits of randomness, base32, lowercase)."""

from __future__ import annotations

import base64
import secrets


def new_id(prefix: str) -> str:
    """``<prefix>-<26 base32 chars>``: 130 random bits, never sequential."""
    raw = base64.b32encode(secrets.token_bytes(17)).decode().rstrip("=").lower()[:26]
    return f"{prefix}-{raw}"


def new_tenant_id() -> str:
    return new_id("tn")


def new_grant_id() -> str:
    return new_id("gr")


def new_job_id() -> str:
    return new_id("job")


def new_nonce() -> str:
    return secrets.token_hex(16)
