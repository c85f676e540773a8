"""The outside witness in the trust core (C4, T7): who may co-sign, what a quorum means to an agent.

Attacks played here against the pure functions; the same attacks against a real server, a real
witness process and a real agent are in tests/test_e2e_witness.py.
"""

from __future__ import annotations

import time

import msgspec
import pytest
from harness.tenant import Tenant

from rampart import trust
from rampart.trust import (
    InconsistentLogError,
    LogKey,
    Policy,
    RollbackError,
    TenantRoot,
    UnknownKeyError,
    WitnessKey,
    WitnessQuorumError,
    merkle,
)


def _tenant(quorum: int | None, witnesses: int = 2) -> tuple[Tenant, trust.TrustedRoot]:
    policy = Policy(witness_quorum=quorum) if quorum else Policy()
    t = Tenant(policy=policy, witnesses=[WitnessKey.generate() for _ in range(witnesses)])
    t.roots[0] = t.make_root(1)
    for i in range(5):
        t.append(f"entry {i}".encode())
    return t, trust.pin_root(t.roots[0], expected_sha256=t.root_sha256, now=_now())


def _now() -> int:
    return int(time.time())


def test_a_root_without_witnesses_encodes_exactly_as_before() -> None:
    t = Tenant()
    doc = t.root_doc(1)
    raw = trust.encode_payload(doc)
    assert b"witness" not in raw
    assert trust.decode_payload(raw, TenantRoot) == doc


def test_a_root_asking_more_witnesses_than_it_names_is_invalid() -> None:
    t = Tenant(witnesses=[WitnessKey.generate()])
    t.policy = Policy(witness_quorum=2)
    with pytest.raises((ValueError, msgspec.ValidationError), match="witness"):
        t.root_doc(1)


def test_a_witness_key_cannot_double_as_the_log_key() -> None:
    t = Tenant()
    doc = t.root_doc(1)
    raw = msgspec.json.decode(trust.encode_payload(doc))
    raw["witness_keys"] = dict(raw["log_keys"])
    with pytest.raises(trust.DecodeError, match="witness key cannot also be"):
        trust.decode_payload(msgspec.json.encode(raw), TenantRoot)


def test_T7_an_unwitnessed_checkpoint_is_refused_when_the_policy_asks_a_quorum() -> None:
    t, root = _tenant(quorum=1)
    cp = t.checkpoint()
    with pytest.raises(WitnessQuorumError, match="0 of the 1 outside witness") as exc:
        trust.verify_checkpoint(root, cp, now=_now())
    assert exc.value.reason == "witness-quorum"
    # Co-signed by one witness of the root: accepted.
    assert trust.verify_checkpoint(root, trust.cosign_checkpoint(cp, t.witnesses[0]), now=_now()).size == 5


def test_T1_a_cosignature_by_a_key_outside_the_roots_witnesses_counts_for_nothing() -> None:
    t, root = _tenant(quorum=1)
    cp = t.checkpoint()
    for impostor in (WitnessKey.generate(), LogKey.generate()):
        forged = trust.add_signature(trust.decode_envelope(cp), impostor).to_bytes()
        with pytest.raises(WitnessQuorumError):
            trust.verify_checkpoint(root, forged, now=_now())
    # The log key signing twice is still one log key, not a witness.
    again = trust.add_signature(trust.decode_envelope(cp), t.log_key).to_bytes()
    with pytest.raises(WitnessQuorumError):
        trust.verify_checkpoint(root, again, now=_now())


def test_T1_one_witness_signing_twice_is_one_of_a_quorum_of_two() -> None:
    t, root = _tenant(quorum=2)
    once = trust.cosign_checkpoint(t.checkpoint(), t.witnesses[0])
    env = trust.decode_envelope(once)
    dup = trust.Envelope(env.payload_type, env.payload, (*env.signatures, env.signatures[-1])).to_bytes()
    with pytest.raises(WitnessQuorumError, match="1 of the 2"):
        trust.verify_checkpoint(root, dup, now=_now())
    both = trust.cosign_checkpoint(once, t.witnesses[1])
    assert trust.verify_checkpoint(root, both, now=_now()).size == 5


def test_T1_a_witness_signature_over_a_changed_checkpoint_does_not_verify() -> None:
    t, root = _tenant(quorum=1)
    signed = trust.decode_envelope(trust.cosign_checkpoint(t.checkpoint(), t.witnesses[0]))
    other = trust.decode_envelope(t.checkpoint(size=4))
    moved = trust.Envelope(other.payload_type, other.payload, other.signatures + signed.signatures[-1:])
    with pytest.raises(WitnessQuorumError):
        trust.verify_checkpoint(root, moved.to_bytes(), now=_now())


def test_T7_split_view_the_witness_refuses_a_fork_of_what_it_cosigned() -> None:
    t, root = _tenant(quorum=1)
    honest = t.checkpoint()
    seen = trust.witness_checkpoint(root, honest, last=None, consistency=[], now=_now())
    # The server shows another view: entry 2 rewritten, one entry more, signed by the real log key.
    leaves = [t.tree.leaf(i) for i in range(t.tree.size)]
    leaves[2] = merkle.leaf_hash(b"rewritten")
    forked = merkle.MerkleTree.from_leaf_hashes(leaves)
    forked.append(merkle.leaf_hash(b"attacker's job"))
    fork = t.checkpoint(size=forked.size, root=forked.root())
    with pytest.raises(InconsistentLogError):
        trust.witness_checkpoint(root, fork, last=seen, consistency=forked.consistency_proof(seen.size),
                                 now=_now())
    # The same size with another root hash: inconsistent, whatever proof comes with it.
    same_size = t.checkpoint(size=5, root=merkle.MerkleTree.from_leaf_hashes(leaves).root())
    with pytest.raises(InconsistentLogError):
        trust.witness_checkpoint(root, same_size, last=seen, consistency=[], now=_now())
    # A smaller checkpoint is a rollback.
    with pytest.raises(RollbackError):
        trust.witness_checkpoint(root, t.checkpoint(size=3), last=seen, consistency=[], now=_now())


def test_the_witness_cosigns_an_honest_extension_and_needs_no_quorum_itself() -> None:
    t, root = _tenant(quorum=1)
    first = trust.witness_checkpoint(root, t.checkpoint(), last=None, consistency=[], now=_now())
    t.append(b"entry 5")
    grown = t.checkpoint()
    cp = trust.witness_checkpoint(root, grown, last=first, consistency=t.tree.consistency_proof(5),
                                  now=_now())
    assert cp.size == 6
    cosigned = trust.cosign_checkpoint(grown, t.witnesses[0])
    assert trust.decode_envelope(cosigned).payload == trust.decode_envelope(grown).payload


def test_the_witness_refuses_a_checkpoint_not_signed_by_the_roots_log_key() -> None:
    t, root = _tenant(quorum=1)
    with pytest.raises(UnknownKeyError):
        trust.witness_checkpoint(root, t.checkpoint(key=LogKey.generate()), last=None, consistency=[],
                                 now=_now())
