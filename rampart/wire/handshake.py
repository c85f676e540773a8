"""The handshake: the server's challenge, and the agent's signed hello answering it.

Invariant: the agent proves its device key by signing
``b"rampart-agent-auth-v1\\n" + nonce + b"\\n" + device_id`` over a fresh
server nonce; this module is the only place those bytes are written, so the
server, the agent and every test or benchmark agent sign and check the same thing.
"""

from __future__ import annotations

import base64
import secrets
from typing import Final, Protocol

from rampart.trust import DevicePublicKey, b64decode_strict

from .messages import Challenge, Hello

__all__ = ["AUTH_CONTEXT", "Signer", "auth_message", "check_hello", "new_challenge", "sign_hello"]

#: Domain separation for the device's handshake signature.
AUTH_CONTEXT: Final = b"rampart-agent-auth-v1\n"


class Signer(Protocol):
    def sign(self, message: bytes) -> bytes: ...


def auth_message(nonce: str, device_id: str) -> bytes:
    """The bytes a device signs to answer ``nonce``."""
    return AUTH_CONTEXT + nonce.encode() + b"\n" + device_id.encode()


def new_challenge() -> Challenge:
    """A challenge with a fresh 32-byte nonce."""
    return Challenge(nonce=secrets.token_hex(32))


def sign_hello(key: Signer, challenge: Challenge, device_id: str, *, agent_version: str = "",
               root_version: int = 0, checkpoint_size: int = 0, catalog_sha256: str = "") -> Hello:
    """The hello answering ``challenge``, signed by the device key."""
    sig = key.sign(auth_message(challenge.nonce, device_id))
    return Hello(device=device_id, sig=base64.b64encode(sig).decode(), agent_version=agent_version,
                 root_version=root_version, checkpoint_size=checkpoint_size, catalog_sha256=catalog_sha256)


def check_hello(public: DevicePublicKey, challenge: Challenge, hello: Hello) -> bool:
    """True only when ``hello`` carries a valid signature of ``public`` over ``challenge``."""
    try:
        sig = b64decode_strict(hello.sig, what="hello signature")
    except Exception:  # noqa: BLE001 - a bad signature encoding is a failed proof, not an error
        return False
    return public.verify(sig, auth_message(challenge.nonce, hello.device))
