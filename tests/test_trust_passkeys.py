"""Passkeys as root keys: the trust core's offline check of WebAuthn assertions (issue 14 part 4).

A software authenticator (tests/harness/passkey.py) makes real ES256 and EdDSA assertions; each
test plays one attacker and asserts the precise refusal (docs/design/passkeys.md, Security).
Threat ids: THREAT-MODEL.md.
"""

from __future__ import annotations

import time

import msgspec
import pytest
from harness.passkey import ORIGIN, SoftPasskey
from harness.tenant import Tenant, env_bytes
from hypothesis import given, settings
from hypothesis import strategies as st

from rampart import trust
from rampart.trust import Grant, Job, KeyEntry, RoleSpec, TenantRoot

DEVICE = "dev-" + "c" * 24


class World:
    """A tenant whose root holds a passkey approver and a passkey technician (besides its Ed25519 keys)."""

    def __init__(self, alg: str = "ES256", counting: bool = True) -> None:
        self.t = Tenant()
        self.approver = SoftPasskey(alg=alg, counting=counting)
        self.tech = SoftPasskey(alg=alg, counting=counting)
        doc = self.t.root_doc(1)
        keys = {**doc.keys, self.approver.key_id: self.approver.entry("alice-passkey"),
                self.tech.key_id: self.tech.entry("bob-passkey")}
        roles = msgspec.structs.replace(
            doc.roles,
            approver=RoleSpec(keyids=[*doc.roles.approver.keyids, self.approver.key_id]),
            technician=RoleSpec(keyids=[*doc.roles.technician.keyids, self.tech.key_id]))
        self.root_doc = msgspec.structs.replace(doc, keys=keys, roles=roles)
        self.root_bytes = env_bytes(self.root_doc, *self.t.owners)
        self.root = trust.pin_root(self.root_bytes, expected_sha256=trust.root_sha256(self.root_bytes),
                                   now=int(time.time()))

    def grant(self, *, approver: SoftPasskey | None = None, grantee: str | None = None,
              **kw: object) -> bytes:
        now = int(time.time())
        g = Grant(id=trust.new_grant_id(), tenant=self.t.id, grantee=grantee or self.tech.key_id,
                  devices=[DEVICE], capabilities=["script"], not_before=now - 60, not_after=now + 3600,
                  reason="passkey test")
        env = trust.Envelope(Grant.PAYLOAD_TYPE, trust.encode_payload(g), ())
        return (approver or self.approver).sign(env, **kw).to_bytes()

    def job(self, grant: bytes, *, signer: SoftPasskey | None = None, **kw: object) -> bytes:
        unsigned = trust.decode_envelope(self.t.job(grant, [DEVICE], b"x", signer=self.t.technicians[0]))
        j = trust.decode_payload(unsigned.payload, Job)
        j = msgspec.structs.replace(j, signer=(signer or self.tech).key_id)
        env = trust.Envelope(Job.PAYLOAD_TYPE, trust.encode_payload(j), ())
        return (signer or self.tech).sign(env, **kw).to_bytes()

    def authorize(self, job: bytes, grant: bytes,
                  counters: dict[str, int] | None = None) -> trust.Authorization:
        self.t.tree = trust.merkle.MerkleTree()
        idx = self.t.append(job)
        ev = trust.LogEvidence(checkpoint=self.t.checkpoint(), index=idx,
                               inclusion=tuple(self.t.tree.inclusion_proof(idx, self.t.tree.size)))
        return trust.authorize_job(
            root=self.root, grant=grant, job=job, payloads={"script": b"x"}, log=ev,
            last_checkpoint=None, device=trust.DevicePolicy(device_id=DEVICE), now=int(time.time()),
            seen_nonces=frozenset(), passkey_counters=counters)


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_a_passkey_approved_grant_and_a_passkey_signed_job_run(alg: str) -> None:
    w = World(alg)
    g = w.grant()
    assert trust.verify_grant(w.root, g, now=int(time.time())).grantee == w.tech.key_id
    a = w.authorize(w.job(g), g)
    assert a.signer_role == "technician"
    assert a.passkey_counters == {w.tech.key_id: w.tech.counter}


def test_existing_roots_keep_their_bytes() -> None:
    """An Ed25519 key entry encodes exactly as before passkeys (no ``type`` field)."""
    t = Tenant()
    doc = t.root_doc(1)
    assert b'"type":"webauthn"' not in trust.encode_payload(doc)
    e = KeyEntry(public=t.owners[0].public.to_b64(), name="k")
    assert msgspec.json.encode(e) == b'{"public":"%s","name":"k"}' % e.public.encode()


# --- the assertion's checks, each refused with its own reason ------------------------------------


def _job_refusal(w: World, **kw: object) -> trust.TrustError:
    g = w.grant()
    with pytest.raises(trust.TrustError) as info:
        w.authorize(w.job(g, **kw), g)  # type: ignore[arg-type]
    return info.value


def test_T1_an_assertion_for_another_job_is_refused() -> None:
    """The server takes a passkey assertion made for job A and attaches it to job B."""
    w = World()
    g = w.grant()
    a = trust.decode_envelope(w.job(g))
    b_bytes = w.job(g)
    b = trust.decode_envelope(b_bytes)
    swapped = trust.add_passkey_signature(b, w.tech.key_id, a.signatures[0].sig).to_bytes()
    with pytest.raises(trust.PasskeyError) as info:
        w.authorize(swapped, g)
    assert info.value.reason == "passkey-challenge"


def test_T1_a_challenge_the_server_chose_is_refused() -> None:
    """A page that asked the authenticator to sign a challenge of its own choosing."""
    err = _job_refusal(World(), challenge=trust.assertion_challenge(b"something else"))
    assert err.reason == "passkey-challenge"


@pytest.mark.parametrize("origin", ["https://rampart.example.com", "http://localhost:8766",
                                    "http://127.0.0.1:8765", "https://localhost:8765", ORIGIN + "/"])
def test_T1_an_assertion_from_another_origin_is_refused(origin: str) -> None:
    """The server's own pages (or any other site) got the user to sign: the origin is not the pinned one."""
    assert _job_refusal(World(), origin=origin).reason == "passkey-origin"


def test_T1_a_cross_origin_frame_is_refused() -> None:
    assert _job_refusal(World(), extra={"crossOrigin": True}).reason == "passkey-origin"


def test_T1_an_assertion_for_another_rp_id_is_refused() -> None:
    assert _job_refusal(World(), rp_id="rampart.example.com").reason == "passkey-rp-id"


def test_T1_a_registration_response_is_not_an_assertion() -> None:
    assert _job_refusal(World(), kind="webauthn.create").reason == "passkey-type"


@pytest.mark.parametrize(("flags", "reason"), [(0x04, "passkey-user-present"), (0x00, "passkey-user-present"),
                                               (0x01, "passkey-user-verified")])
def test_T3_an_assertion_without_user_presence_or_verification_is_refused(flags: int, reason: str) -> None:
    """Malware with the security key plugged in but no touch, or no PIN / biometric."""
    assert _job_refusal(World(), flags=flags).reason == reason


def test_T1_an_altered_signature_or_client_data_is_refused() -> None:
    w = World()
    g = w.grant()
    env = trust.decode_envelope(w.job(g))
    a = _parts(env.signatures[0].sig)
    bad_sig = bytearray(a.signature)
    bad_sig[-1] ^= 1
    for forged in (trust.PasskeyAssertion(a.authenticator_data, a.client_data_json, bytes(bad_sig)),
                   trust.PasskeyAssertion(a.authenticator_data[:33] + (99).to_bytes(4, "big"),
                                          a.client_data_json, a.signature),
                   trust.PasskeyAssertion(a.authenticator_data, a.client_data_json + b" ", a.signature)):
        job = trust.add_passkey_signature(env, w.tech.key_id, forged.to_sig()).to_bytes()
        with pytest.raises(trust.PasskeyError) as info:
            w.authorize(job, g)
        assert info.value.reason == "passkey-signature"


def _parts(sig: bytes) -> trust.PasskeyAssertion:
    import json

    from rampart.trust import b64decode_strict
    d = json.loads(sig)
    return trust.PasskeyAssertion(b64decode_strict(d["authenticatorData"], what="a"),
                                  b64decode_strict(d["clientDataJSON"], what="c"),
                                  b64decode_strict(d["signature"], what="s"))


def test_T4_a_passkey_counts_only_in_its_role() -> None:
    """The approver's passkey cannot sign a job; the technician's passkey approves nothing."""
    w = World()
    g = w.grant()
    with pytest.raises(trust.UnknownKeyError):
        w.authorize(w.job(g, signer=w.approver), g)
    g2 = w.grant(approver=w.tech, grantee=w.t.technicians[0].key_id)
    st = trust.grant_status(w.root, g2)
    assert st.approved_by == frozenset() and not st.complete
    with pytest.raises(trust.ThresholdError):
        trust.verify_grant(w.root, g2, now=int(time.time()))


def test_T4_a_grant_approval_by_a_bad_assertion_does_not_count() -> None:
    w = World()
    g = w.grant(origin="https://rampart.example.com")
    assert trust.grant_status(w.root, g).approved_by == frozenset()
    with pytest.raises(trust.ThresholdError):
        w.authorize(w.job(w.grant(origin="https://rampart.example.com")), g)


# --- the sign counter --------------------------------------------------------------------------


def test_T5_a_replayed_or_cloned_counter_is_refused() -> None:
    """The device stored counter 7 for the passkey: an assertion at 7 or below is a clone or an old one."""
    w = World()
    g = w.grant()
    job = w.job(g, counter=7)
    assert w.authorize(job, g, {}).passkey_counters == {w.tech.key_id: 7}
    for counter in (7, 3, 0):
        with pytest.raises(trust.PasskeyCounterError) as info:
            w.authorize(w.job(g, counter=counter), g, {w.tech.key_id: 7})
        assert info.value.reason == "passkey-counter"
    assert w.authorize(w.job(g, counter=8), g, {w.tech.key_id: 7}).passkey_counters == {w.tech.key_id: 8}


def test_a_passkey_without_a_counter_stays_at_zero() -> None:
    """Many platform passkeys (synced ones) always report 0: allowed while the stored one is 0."""
    w = World(counting=False)
    g = w.grant()
    assert w.authorize(w.job(g), g, {w.tech.key_id: 0}).passkey_counters == {w.tech.key_id: 0}


# --- keys in roots -------------------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["http://127.0.0.1:8765", "http://rampart.example.com", "ftp://localhost",
                                    "http://localhost:08765", "http://localhost/x", "http://localhost:",
                                    "http://localhost:99999", "https://evil.example"])
def test_T6_a_root_with_a_passkey_on_an_unusable_origin_does_not_decode(origin: str) -> None:
    with pytest.raises(trust.DecodeError):
        SoftPasskey(origin=origin)


def test_T6_a_passkey_blob_must_be_canonical() -> None:
    """Only the canonical bytes decode (one key, one key id): reordered, spaced, v=true refused."""
    import json

    p = SoftPasskey()
    doc = json.loads(p.blob)
    for variant in (json.dumps(doc).encode(), json.dumps(dict(reversed(list(doc.items())))).encode(),
                    p.blob.replace(b'"v":1', b'"v":true')):
        with pytest.raises(trust.DecodeError):
            trust.PasskeyPublicKey(variant)


def test_T6_an_ip_address_is_no_rp_id() -> None:
    with pytest.raises(trust.DecodeError):
        SoftPasskey(rp_id="127.0.0.1", origin="https://127.0.0.1")


def test_T6_the_key_id_and_fingerprint_cover_the_pinned_origin() -> None:
    """Moving a passkey to another origin makes another key (owners confirm a new fingerprint)."""
    a = SoftPasskey()
    moved = trust.PasskeyPublicKey(trust.passkey_blob(
        alg="ES256", spki=a.public.spki, credential_id=a.credential_id, rp_id="localhost",
        origin="http://localhost:9999"))
    assert moved.key_id != a.key_id
    assert trust.key_fingerprint(moved.raw) != trust.key_fingerprint(a.public.raw)


def test_T6_a_passkey_cannot_be_an_automation_key() -> None:
    w = World()
    doc = msgspec.json.decode(trust.encode_payload(w.root_doc))
    doc["roles"]["approver"]["keyids"].remove(w.approver.key_id)
    doc["roles"]["automation"]["keyids"].append(w.approver.key_id)
    with pytest.raises(trust.DecodeError):
        trust.decode_payload(msgspec.json.encode(doc), TenantRoot)


# --- hostile bytes -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_T13_hostile_signature_bytes_never_verify_and_never_crash(data: bytes) -> None:
    key = SoftPasskey().public
    assert key.verify(data, b"DSSEv1 1 x 1 y") is False
    with pytest.raises(trust.PasskeyError):
        key.check_assertion(data, b"DSSEv1 1 x 1 y")


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["type", "challenge", "origin", "crossOrigin", "x"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=40)), max_size=5))
def test_T13_hostile_client_data_is_refused(client: dict[str, object]) -> None:
    import hashlib
    import json

    p = SoftPasskey()
    cd = json.dumps(client).encode()
    ad = hashlib.sha256(b"localhost").digest() + b"\x05" + b"\0\0\0\1"
    sig = trust.PasskeyAssertion(ad, cd, b"\x30\x00").to_sig()
    with pytest.raises(trust.PasskeyError):
        p.public.check_assertion(sig, b"DSSEv1 1 x 1 y")
