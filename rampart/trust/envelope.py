"""DSSE envelopes (in-toto / Sigstore "Dead Simple Signing Envelope").

Each signature is over ``PAE(payloadType, payload)``::

    "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body

so the verifier checks the exact payload bytes and decodes them once; no JSON
canonicalisation is involved. Wire form::

    {"payloadType": "...", "payload": "<base64>", "signatures": [{"keyid": "<hex>", "sig": "<base64>"}]}

Security invariants:

* An envelope is decoded strictly: size-limited, no duplicate JSON keys, no
  unknown fields, strict base64. Failures are :class:`DecodeError`.
* :func:`verified_signers` counts each key id at most once and only when the
  key id names a key in the given trust set *and* its signature verifies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .errors import DecodeError, TrustError, UsageError
from .keys import PrivateKey, PublicKey, b64decode_strict, b64encode
from .limits import DEFAULT_LIMITS, Limits
from .webauthn import PasskeyPublicKey

#: A key id: 64 lowercase hex characters (re.ASCII: no other digits).
_KEYID = re.compile(r"[0-9a-f]{64}", re.ASCII)


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in pairs:
        if k in out:
            raise DecodeError(f"duplicate JSON key {k!r}")
        out[k] = v
    return out


def _reject_constant(name: str) -> object:
    raise DecodeError(f"non-finite number {name} is not allowed")


#: One decoder for every strict parse (``json.loads`` with hooks builds a new one per call).
_STRICT_DECODER = json.JSONDecoder(object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)


def strict_json(data: bytes, *, max_bytes: int, what: str) -> object:
    """Parse JSON bytes: size-limited, UTF-8, no duplicate keys, no NaN/Infinity."""
    if not isinstance(data, (bytes, bytearray)):
        raise DecodeError(f"{what}: expected bytes")
    if len(data) > max_bytes:
        raise DecodeError(f"{what}: {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        text = bytes(data).decode("utf-8")
        return _STRICT_DECODER.decode(text)
    except DecodeError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise DecodeError(f"{what}: not valid UTF-8 JSON") from None


@dataclass(frozen=True, slots=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded (not yet verified) DSSE envelope."""

    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    def to_bytes(self) -> bytes:
        doc = {
            "payloadType": self.payload_type,
            "payload": b64encode(self.payload),
            "signatures": [{"keyid": s.keyid, "sig": b64encode(s.sig)} for s in self.signatures],
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    def signed_message(self) -> bytes:
        return pae(self.payload_type, self.payload)


def decode_envelope(data: bytes, *, expect_type: str | None = None,
                    limits: Limits = DEFAULT_LIMITS) -> Envelope:
    """Decode envelope bytes strictly. Does not verify any signature."""
    doc = strict_json(data, max_bytes=limits.max_envelope_bytes, what="envelope")
    if not isinstance(doc, dict):
        raise DecodeError("envelope: expected a JSON object")
    extra = set(doc) - {"payloadType", "payload", "signatures"}
    if extra:
        raise DecodeError(f"envelope: unknown field(s) {sorted(extra)}")
    ptype = doc.get("payloadType")
    if not isinstance(ptype, str) or not ptype or len(ptype) > 256:
        raise DecodeError("envelope: payloadType must be a short non-empty string")
    if expect_type is not None and ptype != expect_type:
        raise DecodeError(f"envelope: payloadType {ptype!r}, expected {expect_type!r}")
    payload = b64decode_strict(doc.get("payload"), what="envelope payload")
    sigs_doc = doc.get("signatures")
    if not isinstance(sigs_doc, list):
        raise DecodeError("envelope: signatures must be a list")
    if len(sigs_doc) > limits.max_signatures:
        raise DecodeError(f"envelope: more than {limits.max_signatures} signatures")
    sigs: list[Signature] = []
    for s in sigs_doc:
        if not isinstance(s, dict) or set(s) != {"keyid", "sig"}:
            raise DecodeError("envelope: each signature must have exactly keyid and sig")
        kid = s["keyid"]
        if not isinstance(kid, str) or _KEYID.fullmatch(kid) is None:
            raise DecodeError("envelope: keyid must be 64 lowercase hex characters")
        sigs.append(Signature(kid, b64decode_strict(s["sig"], what="signature")))
    return Envelope(ptype, payload, tuple(sigs))


def sign_envelope(payload_type: str, payload: bytes, keys: Iterable[PrivateKey]) -> Envelope:
    """Make an envelope signed by each of ``keys``."""
    msg = pae(payload_type, payload)
    sigs = tuple(Signature(k.key_id, k.sign(msg)) for k in keys)
    return Envelope(payload_type, payload, sigs)


def add_signature(env: Envelope, key: PrivateKey) -> Envelope:
    """Add (or replace) ``key``'s signature on an existing envelope."""
    kept = tuple(s for s in env.signatures if s.keyid != key.key_id)
    return Envelope(env.payload_type, env.payload,
                    kept + (Signature(key.key_id, key.sign(env.signed_message())),))


def add_passkey_signature(env: Envelope, keyid: str, sig: bytes) -> Envelope:
    """Add (or replace) the signature of passkey ``keyid``: ``sig`` is
    :meth:`PasskeyAssertion.to_sig` of an assertion the authenticator made over this
    envelope's PAE. Nothing is checked here (verifiers check it)."""
    if len(keyid) != 64 or not all(c in "0123456789abcdef" for c in keyid):
        raise UsageError("a key id is 64 lowercase hex characters")
    kept = tuple(s for s in env.signatures if s.keyid != keyid)
    return Envelope(env.payload_type, env.payload, kept + (Signature(keyid, sig),))


@dataclass(frozen=True, slots=True)
class SignerResult:
    """Who, among ``authorised``, validly signed (each key counted once)."""

    signed: frozenset[str]
    authorised: frozenset[str]
    threshold: int
    #: Sign counter of each passkey among ``signed`` (its assertion's authenticatorData).
    counters: Mapping[str, int] = field(default_factory=dict)

    @property
    def met(self) -> bool:
        return len(self.signed) >= self.threshold


def verified_signers(env: Envelope, trusted: Mapping[str, PublicKey], *,
                     threshold: int) -> SignerResult:
    """Return the distinct key ids of ``trusted`` whose signature on ``env`` verifies.

    Unknown key ids and invalid signatures are ignored (they add nothing);
    duplicates of one key id count once. A passkey's signature is a WebAuthn assertion
    (:meth:`PasskeyPublicKey.check_assertion`); its sign counter is returned in ``counters``.
    """
    if threshold < 1:
        raise UsageError("threshold must be at least 1")
    msg = env.signed_message()
    signed: set[str] = set()
    counters: dict[str, int] = {}
    for s in env.signatures:
        if s.keyid in signed:
            continue
        key = trusted.get(s.keyid)
        if isinstance(key, PasskeyPublicKey):
            try:
                counters[s.keyid] = key.check_assertion(s.sig, msg)
            except TrustError:
                continue
            signed.add(s.keyid)
        elif key is not None and key.verify(s.sig, msg):
            signed.add(s.keyid)
    return SignerResult(frozenset(signed), frozenset(trusted), threshold, counters)
