"""The trust core in isolation: envelopes, payload decoders, keys, key files, roots, grants, jobs.

Security tests are named after the threat they play (THREAT-MODEL.md); each
asserts the precise refusal.
"""

from __future__ import annotations

import hashlib
import json
import time

import pytest
from harness.tenant import Tenant, env_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rampart import trust
from rampart.trust import (
    Checkpoint,
    DeviceKey,
    Grant,
    Job,
    OperatorKey,
    OperatorPublicKey,
    Policy,
    Receipt,
    Revocation,
    TenantRoot,
    merkle,
)

NOW = int(time.time())


@pytest.fixture(autouse=True)
def _fresh_now() -> None:
    """Each test's "now" is when it runs, not when the module was collected minutes earlier."""
    global NOW
    NOW = int(time.time())


# --- DSSE ---------------------------------------------------------------------------------


def test_pae_matches_the_dsse_spec_example() -> None:
    # From the DSSE protocol document (secure-systems-lab/dsse, protocol.md).
    assert trust.pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_envelope_round_trip_and_signature_count() -> None:
    k1, k2 = OperatorKey.generate(), OperatorKey.generate()
    env = trust.sign_envelope("t", b"payload", [k1, k2])
    back = trust.decode_envelope(env.to_bytes())
    assert back == env
    keys = {k.key_id: k.public for k in (k1, k2)}
    assert trust.verified_signers(back, keys, threshold=2).met
    tampered = trust.Envelope("t", b"payload!", back.signatures)
    assert trust.verified_signers(tampered, keys, threshold=1).signed == frozenset()


@pytest.mark.parametrize("doc, why", [
    (b'{"payloadType":"t","payload":"","signatures":[],"x":1}', "unknown field"),
    (b'{"payloadType":"t","payloadType":"u","payload":"","signatures":[]}', "duplicate"),
    (b'{"payloadType":"t","payload":"***","signatures":[]}', "base64"),
    (b'{"payloadType":"t","payload":"","signatures":{}}', "list"),
    (b'{"payloadType":"t","payload":"","signatures":[{"keyid":"AB","sig":""}]}', "keyid"),
    (b'[1,2]', "object"),
    (b'\xff\xfe', "UTF-8"),
    (b'{"payloadType":NaN}', "non-finite"),
])
def test_T13_malformed_envelopes_give_a_clear_decode_error(doc: bytes, why: str) -> None:
    with pytest.raises(trust.DecodeError) as exc:
        trust.decode_envelope(doc)
    assert why in str(exc.value)


def test_T13_oversized_envelope_is_refused_before_parsing() -> None:
    with pytest.raises(trust.DecodeError, match="exceeds the limit"):
        trust.decode_envelope(b" " * (trust.DEFAULT_LIMITS.max_envelope_bytes + 1))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_T13_envelope_decoder_never_raises_anything_else(data: bytes) -> None:
    try:
        trust.decode_envelope(data)
    except trust.DecodeError:
        pass


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=10), children, max_size=5)),
    max_leaves=25,
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([TenantRoot, Grant, Job, Receipt, Checkpoint, Revocation]), JSONISH)
def test_T13_payload_decoders_never_raise_anything_else(cls: type, doc: object) -> None:
    try:
        trust.decode_payload(json.dumps(doc).encode(), cls)
    except trust.DecodeError:
        pass


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_T13_mutated_valid_job_fields_decode_or_fail_cleanly(data: st.DataObject) -> None:
    t = _TENANT
    job = trust.decode_envelope(t.job(t.grant(["dev-" + "0" * 24]), ["dev-" + "0" * 24])).payload
    doc = json.loads(job)
    key = data.draw(st.sampled_from(sorted(doc)))
    doc[key] = data.draw(JSONISH)
    try:
        j = trust.decode_payload(json.dumps(doc).encode(), Job)
    except trust.DecodeError:
        return
    assert isinstance(j, Job)


def test_T13_unknown_fields_and_wrong_types_are_refused() -> None:
    t = _TENANT
    doc = json.loads(trust.decode_envelope(t.roots[0]).payload)
    doc["extra"] = 1
    with pytest.raises(trust.DecodeError, match="unknown field"):
        trust.decode_payload(json.dumps(doc).encode(), TenantRoot)
    doc.pop("extra")
    doc["version"] = "1"
    with pytest.raises(trust.DecodeError, match="Expected `int`"):
        trust.decode_payload(json.dumps(doc).encode(), TenantRoot)


_TENANT = Tenant()


# --- keys and key files ---------------------------------------------------------------------


def test_key_id_is_sha256_of_raw_public_key() -> None:
    k = OperatorKey.generate()
    assert k.key_id == hashlib.sha256(k.public.raw).hexdigest()


def test_a_device_key_cannot_pass_as_an_operator_key() -> None:
    d = DeviceKey.generate()
    with pytest.raises(trust.DecodeError, match="operator public key"):
        OperatorPublicKey.from_text(d.public.to_text())


def test_operator_key_file_is_encrypted_and_opens_only_with_the_passphrase() -> None:
    k = OperatorKey.generate()
    data = trust.encrypt_private_key(k, "correct horse", memory_kib=8 * 1024)
    assert k.seed() not in data and k.seed().hex().encode() not in data
    back = trust.decode_private_key(data, "correct horse")
    assert back.public == k.public
    with pytest.raises(trust.KeyFileError, match="wrong passphrase") as exc:
        trust.decode_private_key(data, "wrong")
    assert "correct horse" not in str(exc.value)


def test_key_file_cannot_be_relabelled_or_tampered() -> None:
    k = OperatorKey.generate()
    doc = json.loads(trust.encrypt_private_key(k, "pw", memory_kib=8 * 1024))
    relabelled = dict(doc, kind="automation")
    with pytest.raises(trust.KeyFileError):
        trust.decode_private_key(json.dumps(relabelled).encode(), "pw")
    ct = bytearray(__import__("base64").b64decode(doc["ciphertext"]))
    ct[0] ^= 1
    doc["ciphertext"] = __import__("base64").b64encode(bytes(ct)).decode()
    with pytest.raises(trust.KeyFileError):
        trust.decode_private_key(json.dumps(doc).encode(), "pw")
    with pytest.raises(trust.KeyFileError, match="expected a device key"):
        trust.decode_private_key(trust.encode_plain_private_key(k), expect_kind="device")


# --- roots (T6) -----------------------------------------------------------------------------


def _pinned(t: Tenant) -> trust.TrustedRoot:
    return trust.pin_root(t.roots[0], expected_sha256=t.root_sha256, now=NOW)


def test_T6_pin_requires_the_exact_root_bytes() -> None:
    t = Tenant()
    other = t.make_root(1, expires=NOW + 999)  # another v1 the server might offer instead
    with pytest.raises(trust.SignatureError, match="pinned SHA-256"):
        trust.pin_root(other, expected_sha256=t.root_sha256, now=NOW)


def test_T6_rotation_needs_old_and_new_owner_thresholds() -> None:
    t = Tenant()
    trusted = _pinned(t)
    new_owner = OperatorKey.generate()
    only_new = t.make_root(2, new_owner, owners=[new_owner])
    with pytest.raises(trust.ThresholdError, match="owners of v1"):
        trust.update_root(trusted, [only_new], now=NOW)
    only_old = t.make_root(2, *t.owners, owners=[new_owner])
    with pytest.raises(trust.ThresholdError, match="its own owners"):
        trust.update_root(trusted, [only_old], now=NOW)
    both = t.make_root(2, *t.owners, new_owner, owners=[new_owner])
    assert trust.update_root(trusted, [both], now=NOW).version == 2


def test_T6_rollback_and_skipped_versions_are_refused() -> None:
    t = Tenant()
    trusted = _pinned(t)
    v2 = t.make_root(2)
    v2_trusted = trust.update_root(trusted, [v2], now=NOW)
    with pytest.raises(trust.RollbackError, match="not newer"):
        trust.update_root(v2_trusted, [t.roots[0]], now=NOW)
    with pytest.raises(trust.RollbackError, match="skips"):
        trust.update_root(trusted, [t.make_root(3)], now=NOW)


def test_T6_expired_roots_can_be_stepped_through_but_the_newest_must_be_current() -> None:
    t = Tenant()
    trusted = _pinned(t)
    v2_expired = t.make_root(2, expires=NOW - 10)
    v3 = t.make_root(3)
    assert trust.update_root(trusted, [v2_expired, v3], now=NOW).version == 3
    with pytest.raises(trust.ExpiredError):
        trust.update_root(trusted, [v2_expired], now=NOW)


def test_T6_owner_threshold_two_needs_two_distinct_owners() -> None:
    t = Tenant()
    trusted = _pinned(t)
    o2 = OperatorKey.generate()
    v2 = t.make_root(2, t.owners[0], o2, owners=[t.owners[0], o2], owner_threshold=2)
    t2 = trust.update_root(trusted, [v2], now=NOW)
    one = t.make_root(3, t.owners[0], owners=[t.owners[0], o2], owner_threshold=2)
    e = trust.decode_envelope(one)
    twice = trust.Envelope(e.payload_type, e.payload, e.signatures * 2).to_bytes()
    with pytest.raises(trust.ThresholdError):
        trust.update_root(t2, [twice], now=NOW)


def test_root_refuses_mismatched_key_ids_and_orphan_roles() -> None:
    t = Tenant()
    doc = json.loads(trust.decode_envelope(t.roots[0]).payload)
    kid = next(iter(doc["keys"]))
    doc["keys"][kid]["public"] = OperatorKey.generate().public.to_b64()
    with pytest.raises(trust.DecodeError, match="does not match"):
        trust.decode_payload(json.dumps(doc).encode(), TenantRoot)


# --- grants (T4) ----------------------------------------------------------------------------


def test_T4_approver_cannot_approve_a_grant_for_their_own_key() -> None:
    t = Tenant()
    both = t.approvers[0]
    t.technicians.append(both)  # one person who is both approver and technician
    t.roots[0] = t.make_root(1)
    trusted = _pinned(t)
    grant = t.grant(["dev-" + "1" * 24], grantee=both, approvers=[both])
    with pytest.raises(trust.ThresholdError, match="0 of 1"):
        trust.verify_grant(trusted, grant, now=NOW)
    ok = t.grant(["dev-" + "1" * 24], grantee=both, approvers=[both, t.approvers[1]])
    assert trust.verify_grant(trusted, ok, now=NOW).grantee == both.key_id


def test_T4_policy_reach_and_length_are_enforced() -> None:
    t = Tenant(policy=Policy(approver_device_limit=2, max_grant_seconds=3600,
                             capabilities=["script", "file"]))
    trusted = _pinned(t)
    devs = ["dev-" + f"{i:024x}" for i in range(3)]
    with pytest.raises(trust.ThresholdError):
        trust.verify_grant(trusted, t.grant(devs), now=NOW)
    assert trust.verify_grant(trusted, t.grant(devs, approvers=t.approvers[:2]), now=NOW)
    with pytest.raises(trust.CapabilityError, match="longer"):
        trust.verify_grant(trusted, t.grant(devs[:1], seconds=7200), now=NOW)
    with pytest.raises(trust.CapabilityError, match="does not allow"):
        trust.verify_grant(trusted, t.grant(devs[:1], caps=("net",)), now=NOW)


# --- jobs -----------------------------------------------------------------------------------


def _authorize(t: Tenant, job: bytes, grant: bytes, device: str, *, payloads: dict[str, bytes],
               policy: trust.DevicePolicy | None = None) -> trust.Authorization:
    index = t.append(job)
    cp = t.checkpoint()
    ev = trust.LogEvidence(checkpoint=cp, index=index, inclusion=tuple(t.tree.inclusion_proof(index)))
    return trust.authorize_job(
        root=_pinned(t), grant=grant, job=job, payloads=payloads, log=ev, last_checkpoint=None,
        device=policy or trust.DevicePolicy(device_id=device, write_roots=("/srv/data",),
                                            protected_paths=("/var/lib/rampart-agent",)),
        now=int(time.time()), seen_nonces=frozenset())


def test_effective_capabilities_are_what_was_declared_and_allowed() -> None:
    t = Tenant()
    d = "dev-" + "a" * 24
    g = t.grant([d], caps=("script", "net"))
    a = _authorize(t, t.job(g, [d], b"x", writes=("/srv/data/app",), connect=(443,)), g, d,
                   payloads={"script": b"x"})
    assert a.effective == trust.Effective(("/srv/data/app",), (443,), "job", 60)


@pytest.mark.parametrize("path", ["/srv/database", "/srv", "/var/lib/rampart-agent/x"])
def test_T9_write_paths_are_matched_by_component_not_prefix(path: str) -> None:
    t = Tenant()
    d = "dev-" + "b" * 24
    g = t.grant([d])
    policy = trust.DevicePolicy(device_id=d, write_roots=("/srv/data", "/var/lib"),
                                protected_paths=("/var/lib/rampart-agent",))
    with pytest.raises(trust.CapabilityError):
        _authorize(t, t.job(g, [d], b"x", writes=(path,)), g, d, payloads={"script": b"x"},
                   policy=policy)


def test_T13_job_write_paths_must_be_normalised() -> None:
    with pytest.raises(trust.DecodeError, match="normalised"):
        t = Tenant()
        d = "dev-" + "c" * 24
        job = t.job(t.grant([d]), [d], b"x")
        doc = json.loads(trust.decode_envelope(job).payload)
        doc["declared"]["writes"] = ["/srv/data/../../etc"]
        trust.decode_payload(json.dumps(doc).encode(), Job)


def test_T8_an_unannounced_payload_is_refused() -> None:
    t = Tenant()
    d = "dev-" + "d" * 24
    g = t.grant([d])
    with pytest.raises(trust.DigestMismatchError, match="unexpected"):
        _authorize(t, t.job(g, [d], b"x"), g, d, payloads={"script": b"x", "extra": b"y"})


def test_automation_key_may_trigger_only_named_payload_free_actions() -> None:
    t = Tenant()
    d = "dev-" + "e" * 24
    auto = t.automation[0]
    g = t.grant([d], caps=("inventory", "patch"), grantee=auto, actions=("inventory-refresh",),
                seconds=30 * 86400)
    a = _authorize(t, t.job(g, [d], signer=auto, kind="inventory-refresh"), g, d, payloads={})
    assert a.signer_role == "automation"
    with pytest.raises(trust.CapabilityError, match="automation key"):
        _authorize(t, t.job(g, [d], signer=auto, kind="os-update"), g, d, payloads={})


def test_T1_only_a_person_may_sign_backup_forget_state_and_it_takes_no_arguments() -> None:
    """Dropping a device's record of its backup repository is a decision, never the automation key's."""
    t = Tenant()
    d = "dev-" + "9" * 24
    auto = t.automation[0]
    with pytest.raises(ValueError, match="not payload-free"):
        t.grant([d], caps=("backup",), grantee=auto, actions=("backup-forget-state",), seconds=86400)
    standing = t.grant([d], caps=("backup",), grantee=auto, actions=("backup-run",), seconds=86400)
    with pytest.raises(trust.CapabilityError, match="automation key"):
        _authorize(t, t.job(standing, [d], signer=auto, kind="backup-forget-state"), standing, d, payloads={})
    human = t.grant([d], caps=("backup",))
    a = _authorize(t, t.job(human, [d], kind="backup-forget-state"), human, d, payloads={})
    assert (a.signer_role, a.job.action.kind) == ("technician", "backup-forget-state")
    with pytest.raises(trust.CapabilityError):
        other = t.grant([d], caps=("inventory",))
        _authorize(t, t.job(other, [d], kind="backup-forget-state"), other, d, payloads={})
    with pytest.raises(ValueError, match="no arguments"):
        trust.Action(kind="backup-forget-state", args=["/var/lib/rampart-agent"])


def test_T5_seen_nonce_is_a_replay() -> None:
    t = Tenant()
    d = "dev-" + "f" * 24
    g = t.grant([d])
    job = t.job(g, [d], b"x")
    nonce = trust.decode_payload(trust.decode_envelope(job).payload, Job).nonce
    index = t.append(job)
    ev = trust.LogEvidence(checkpoint=t.checkpoint(), index=index,
                           inclusion=tuple(t.tree.inclusion_proof(index)))
    with pytest.raises(trust.ReplayError):
        trust.authorize_job(root=_pinned(t), grant=g, job=job, payloads={"script": b"x"}, log=ev,
                            last_checkpoint=None, device=trust.DevicePolicy(device_id=d),
                            now=int(time.time()), seen_nonces={nonce})


def test_receipt_verifies_only_with_the_device_key() -> None:
    dk = DeviceKey.generate()
    r = Receipt(tenant=_TENANT.id, job=trust.new_job_id(), device=trust.device_id_for(dk.public),
                outcome="ran", exit_code=0)
    data = env_bytes(r, dk)
    assert trust.verify_receipt(data, dk.public) == r
    with pytest.raises(trust.SignatureError):
        trust.verify_receipt(data, DeviceKey.generate().public)


def test_leaf_of_a_job_is_its_exact_envelope_bytes() -> None:
    job = _TENANT.job(_TENANT.grant(["dev-" + "9" * 24]), ["dev-" + "9" * 24])
    assert merkle.leaf_hash(job) == hashlib.sha256(b"\x00" + job).digest()
