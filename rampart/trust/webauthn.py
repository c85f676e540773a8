"""Passkeys (WebAuthn credentials) as keys of a tenant root: the offline assertion check.

A passkey key of a root (``KeyEntry.type == "webauthn"``) has as its ``public`` the base64 of
a canonical JSON document that binds everything a verifier pins::

    {"alg":"ES256","credential_id":"<base64url>","origin":"http://localhost:8765",
     "rp_id":"localhost","spki":"<base64 SubjectPublicKeyInfo DER>","v":1}

(keys sorted, no spaces: :func:`passkey_blob`). Its key id is the SHA-256 of those bytes, as
an Ed25519 key's is of its 32 raw bytes, so the owners' fingerprint covers the origin and RP
ID too: a root that moved a passkey to another origin names another key.

A passkey signs a DSSE envelope by a WebAuthn assertion whose challenge is
``base64url(SHA-256(PAE(payloadType, payload)))``; the envelope's ``sig`` is the base64 of the
canonical JSON ``{"authenticatorData":…,"clientDataJSON":…,"signature":…}`` (each standard
base64). :meth:`PasskeyPublicKey.check_assertion` accepts it only if all hold (W3C WebAuthn
Level 3, 7.2 "Verifying an Authentication Assertion", the steps an offline verifier can do):

* ``clientDataJSON`` is strict JSON with ``type == "webauthn.get"``, ``challenge`` equal to the
  one computed here from the exact message, ``origin`` equal to the pinned origin byte for
  byte, and ``crossOrigin`` absent or false;
* ``authenticatorData`` starts with SHA-256 of the pinned RP ID, has the UP (user present)
  and UV (user verified) flags set;
* the signature verifies under the pinned public key over
  ``authenticatorData || SHA-256(clientDataJSON)``: ES256 (ECDSA P-256, DER) or EdDSA
  (Ed25519), with the ``cryptography`` library (OpenSSL).

Failures raise :class:`~rampart.trust.errors.PasskeyError` whose ``reason`` names the check
(``passkey-origin``, ``passkey-challenge`` …). The sign counter is returned, not judged: a
counter needs state, so :func:`check_counter` takes the last one seen and the caller keeps it.
Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from .errors import DecodeError, PasskeyCounterError, PasskeyError
from .keys import PublicKey, b64decode_strict, b64encode, key_id

#: The ``type`` of a passkey entry in a root's ``keys`` (absent: an Ed25519 key).
PASSKEY_KEY_TYPE: Final = "webauthn"
#: COSE algorithm names a passkey key may use (``-7`` ES256, ``-8`` EdDSA).
PASSKEY_ALGORITHMS: Final = ("ES256", "EdDSA")
FLAG_UP: Final = 0x01
FLAG_UV: Final = 0x04
MAX_BLOB_BYTES: Final = 2048
MAX_CLIENT_DATA_BYTES: Final = 2048
MAX_AUTH_DATA_BYTES: Final = 1024
MAX_SIGNATURE_BYTES: Final = 256
_BLOB_FIELDS: Final = frozenset({"alg", "credential_id", "origin", "rp_id", "spki", "v"})
_SIG_FIELDS: Final = frozenset({"authenticatorData", "clientDataJSON", "signature"})


def b64url(data: bytes) -> str:
    """Unpadded base64url, as WebAuthn writes challenges and credential ids."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: object, what: str) -> bytes:
    if not isinstance(text, str) or not text or len(text) > 1024 or "=" in text:
        raise DecodeError(f"{what}: expected unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise DecodeError(f"{what}: invalid base64url") from None
    if b64url(raw) != text:
        raise DecodeError(f"{what}: non-canonical base64url")
    return raw


def assertion_challenge(message: bytes) -> str:
    """The WebAuthn challenge that signs ``message`` (a DSSE PAE): base64url(SHA-256(message))."""
    return b64url(hashlib.sha256(message).digest())


def _canonical(doc: dict[str, object]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=True).encode()


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise DecodeError("duplicate JSON key")
    return out


def _no_constant(name: str) -> object:
    raise DecodeError(f"non-finite number {name}")


def _strict_object(data: bytes, *, max_bytes: int, what: str) -> dict[str, object]:
    """A JSON object from UTF-8 bytes: bounded, no duplicate keys, no NaN (as envelope.strict_json,
    which imports this module)."""
    if len(data) > max_bytes:
        raise DecodeError(f"{what}: more than {max_bytes} bytes")
    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates,
                         parse_constant=_no_constant)
    except DecodeError as exc:
        raise DecodeError(f"{what}: {exc.message}") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise DecodeError(f"{what}: not valid UTF-8 JSON") from None
    if not isinstance(doc, dict):
        raise DecodeError(f"{what}: expected a JSON object")
    return doc


def _valid_origin(origin: str, rp_id: str) -> bool:
    """``scheme://rp_id[:port]`` with no path: https, or http for ``localhost`` only."""
    for scheme in ("https://", "http://"):
        if origin.startswith(scheme):
            host = origin[len(scheme):]
            name, colon, port = host.partition(":")
            if colon and not port:
                return False
            if scheme == "http://" and name != "localhost":
                return False
            if name != rp_id and not name.endswith("." + rp_id):
                return False
            return port == "" or (port.isdigit() and 0 < int(port) < 65536 and not port.startswith("0"))
    return False


def _valid_rp_id(rp_id: str) -> bool:
    """A domain name (WebAuthn refuses an IP address as RP ID)."""
    if not (0 < len(rp_id) <= 253) or not rp_id.isascii() or rp_id != rp_id.lower():
        return False
    labels = rp_id.split(".")
    if all(label.isdigit() for label in labels):
        return False
    return all(0 < len(lb) <= 63 and lb[0] != "-" and lb[-1] != "-"
               and all(c.isalnum() or c == "-" for c in lb) for lb in labels)


def passkey_blob(*, alg: str, spki: bytes, credential_id: bytes, rp_id: str, origin: str) -> bytes:
    """The canonical bytes of a passkey key (what its key id hashes); checked like a verifier."""
    blob = _canonical({"alg": alg, "credential_id": b64url(credential_id), "origin": origin,
                       "rp_id": rp_id, "spki": b64encode(spki), "v": 1})
    PasskeyPublicKey(blob)  # the same checks a root's decoder makes
    return blob


class PasskeyPublicKey(PublicKey):
    """A WebAuthn credential's public key with its pinned RP ID and origin.

    Immutable; ``raw`` is the canonical blob (what ``KeyEntry.public`` holds in base64) and
    ``key_id`` its SHA-256. :meth:`verify` is True only for an assertion every check of
    :meth:`check_assertion` accepts; it never raises on hostile input.
    """

    KIND = "passkey"
    __slots__ = ("alg", "credential_id", "rp_id", "origin", "_spki", "_key")

    def __init__(self, raw: bytes) -> None:  # noqa: PLR0912 - one check per field
        if not isinstance(raw, bytes) or len(raw) > MAX_BLOB_BYTES:
            raise DecodeError("passkey key: expected at most 2048 bytes")
        doc = _strict_object(raw, max_bytes=MAX_BLOB_BYTES, what="passkey key")
        if set(doc) != _BLOB_FIELDS or type(doc["v"]) is not int or doc["v"] != 1:
            raise DecodeError("passkey key: expected exactly alg, credential_id, origin, rp_id, spki, v=1")
        alg, rp_id, origin = doc["alg"], doc["rp_id"], doc["origin"]
        if alg not in PASSKEY_ALGORITHMS:
            raise DecodeError(f"passkey key: algorithm must be one of {PASSKEY_ALGORITHMS}")
        if not isinstance(rp_id, str) or not _valid_rp_id(rp_id):
            raise DecodeError("passkey key: rp_id must be a domain name (not an IP address)")
        if not isinstance(origin, str) or not _valid_origin(origin, rp_id):
            raise DecodeError("passkey key: origin must be https://RP_ID[:PORT] or http://localhost[:PORT]")
        cred = _b64url_decode(doc["credential_id"], "passkey credential id")
        spki = b64decode_strict(doc["spki"], what="passkey spki")
        if len(spki) > 512:
            raise DecodeError("passkey key: spki too long")
        try:
            key = serialization.load_der_public_key(spki)
        except (ValueError, TypeError):
            raise DecodeError("passkey key: spki is not a public key") from None
        if alg == "ES256":
            if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
                raise DecodeError("passkey key: ES256 needs a P-256 public key")
        elif not isinstance(key, ed25519.Ed25519PublicKey):
            raise DecodeError("passkey key: EdDSA needs an Ed25519 public key")
        if _canonical(doc) != raw:
            raise DecodeError("passkey key: not in canonical form")
        self._raw = raw
        self._id = key_id(raw)
        self.alg: str = str(alg)
        self.credential_id: bytes = cred
        self.rp_id: str = rp_id
        self.origin: str = origin
        self._spki = spki
        self._key = key

    @property
    def spki(self) -> bytes:
        return self._spki

    def check_assertion(self, signature: bytes, message: bytes) -> int:
        """The sign counter of a valid assertion over ``message``; else :class:`PasskeyError`."""
        a = decode_assertion(signature)
        try:
            client = _strict_object(a.client_data_json, max_bytes=MAX_CLIENT_DATA_BYTES,
                                    what="clientDataJSON")
        except DecodeError:
            raise PasskeyError("malformed", "clientDataJSON is not strict JSON") from None
        if client.get("type") != "webauthn.get":
            raise PasskeyError("type", "clientDataJSON.type is not webauthn.get")
        if client.get("challenge") != assertion_challenge(message):
            raise PasskeyError("challenge", "the assertion signs another object (challenge differs)")
        if client.get("origin") != self.origin:
            raise PasskeyError("origin", "the assertion comes from another origin than the pinned one")
        if client.get("crossOrigin", False) is not False:
            raise PasskeyError("origin", "the assertion was made in a cross-origin frame")
        ad = a.authenticator_data
        if len(ad) < 37:
            raise PasskeyError("malformed", "authenticatorData is shorter than 37 bytes")
        if ad[:32] != hashlib.sha256(self.rp_id.encode()).digest():
            raise PasskeyError("rp-id", "the assertion is for another RP ID")
        if not ad[32] & FLAG_UP:
            raise PasskeyError("user-present", "the authenticator did not see the user (UP flag)")
        if not ad[32] & FLAG_UV:
            raise PasskeyError("user-verified", "the authenticator did not verify the user (UV flag)")
        signed = ad + hashlib.sha256(a.client_data_json).digest()
        try:
            if isinstance(self._key, ec.EllipticCurvePublicKey):
                self._key.verify(a.signature, signed, ec.ECDSA(hashes.SHA256()))
            elif isinstance(self._key, ed25519.Ed25519PublicKey):
                self._key.verify(a.signature, signed)
            else:  # pragma: no cover - __init__ admits only the two
                raise PasskeyError("signature", "unsupported key")
        except (InvalidSignature, ValueError, TypeError):
            raise PasskeyError("signature", "the assertion's signature does not verify") from None
        return int.from_bytes(ad[33:37], "big")

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            self.check_assertion(signature, message)
        except (PasskeyError, DecodeError):
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PasskeyPublicKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash((self.KIND, self._raw))


@dataclass(frozen=True, slots=True)
class PasskeyAssertion:
    """The three parts of a WebAuthn assertion, as a passkey signature carries them."""

    authenticator_data: bytes
    client_data_json: bytes
    signature: bytes

    def to_sig(self) -> bytes:
        """The bytes that go (base64) into a DSSE signature's ``sig``."""
        return _canonical({"authenticatorData": b64encode(self.authenticator_data),
                           "clientDataJSON": b64encode(self.client_data_json),
                           "signature": b64encode(self.signature)})


def decode_assertion(sig: bytes) -> PasskeyAssertion:
    """A passkey signature's parts, decoded strictly; :class:`PasskeyError` ``malformed`` else."""
    try:
        doc = _strict_object(sig, max_bytes=4096, what="passkey signature")
        if set(doc) != _SIG_FIELDS:
            raise DecodeError("passkey signature: expected authenticatorData, clientDataJSON, signature")
        ad = b64decode_strict(doc["authenticatorData"], what="authenticatorData")
        cd = b64decode_strict(doc["clientDataJSON"], what="clientDataJSON")
        s = b64decode_strict(doc["signature"], what="signature")
    except DecodeError as exc:
        raise PasskeyError("malformed", exc.message) from None
    if len(ad) > MAX_AUTH_DATA_BYTES or len(cd) > MAX_CLIENT_DATA_BYTES or len(s) > MAX_SIGNATURE_BYTES:
        raise PasskeyError("malformed", "an assertion part exceeds its limit")
    return PasskeyAssertion(ad, cd, s)


def check_counter(keyid: str, counter: int, last_seen: int | None) -> None:
    """WebAuthn's clone check for one passkey: refuse a counter that did not increase.

    ``last_seen`` is the highest counter the caller stored for ``keyid`` (None: never seen).
    Both zero means the authenticator keeps no counter (allowed); otherwise the new counter
    must be greater, or the assertion may come from a cloned authenticator.
    """
    if last_seen is None or (counter == 0 and last_seen == 0):
        return
    if counter <= last_seen:
        raise PasskeyCounterError(
            f"passkey {keyid[:16]}… signed with counter {counter}, not above {last_seen} seen "
            "before (a cloned authenticator, or an old assertion)")
