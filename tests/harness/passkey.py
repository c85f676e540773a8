"""A software WebAuthn authenticator for the trust core's tests (real ES256/EdDSA signatures).

It makes assertions exactly as a browser and authenticator do (clientDataJSON, authenticator
data, signature over ``authenticatorData || SHA-256(clientDataJSON)``), and lets a test make
every kind of wrong one (other challenge, origin, RP ID, type, flags, counter).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from rampart import trust

ORIGIN = "http://localhost:8765"


@dataclass
class SoftPasskey:
    alg: str = "ES256"
    rp_id: str = "localhost"
    origin: str = ORIGIN
    credential_id: bytes = field(default_factory=lambda: os.urandom(16))
    counter: int = 0
    counting: bool = True

    def __post_init__(self) -> None:
        self._key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey = (
            ec.generate_private_key(ec.SECP256R1()) if self.alg == "ES256"
            else ed25519.Ed25519PrivateKey.generate())
        spki = self._key.public_key().public_bytes(serialization.Encoding.DER,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
        self.blob = trust.passkey_blob(alg=self.alg, spki=spki, credential_id=self.credential_id,
                                       rp_id=self.rp_id, origin=self.origin)
        self.public = trust.PasskeyPublicKey(self.blob)

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def entry(self, name: str = "passkey") -> trust.KeyEntry:
        return trust.KeyEntry(public=self.public.to_b64(), name=name, type="webauthn")

    def assertion(self, message: bytes, *, challenge: str | None = None, origin: str | None = None,
                rp_id: str | None = None, kind: str = "webauthn.get", flags: int = 0x05,
                counter: int | None = None, extra: dict[str, object] | None = None) -> bytes:
        """The ``sig`` of an assertion over ``message`` (a PAE); overrides make a wrong one."""
        if counter is None:
            if self.counting:
                self.counter += 1
            counter = self.counter if self.counting else 0
        client = {"type": kind, "challenge": challenge or trust.assertion_challenge(message),
                  "origin": origin or self.origin, "crossOrigin": False, **(extra or {})}
        cd = json.dumps(client).encode()
        ad = (hashlib.sha256((rp_id or self.rp_id).encode()).digest() + bytes([flags])
              + counter.to_bytes(4, "big"))
        signed = ad + hashlib.sha256(cd).digest()
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            sig = self._key.sign(signed, ec.ECDSA(hashes.SHA256()))
        else:
            sig = self._key.sign(signed)
        return trust.PasskeyAssertion(ad, cd, sig).to_sig()

    def sign(self, env: trust.Envelope, **kw: object) -> trust.Envelope:
        """``env`` with this passkey's assertion added (as the local console assembles it)."""
        sig = self.assertion(env.signed_message(), **kw)  # type: ignore[arg-type]
        return trust.add_passkey_signature(env, self.key_id, sig)
