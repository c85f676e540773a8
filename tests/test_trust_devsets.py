"""Committed device sets: a grant or job names thousands of devices in constant size, and a device
runs it only with a valid proof that it is in the set its signers committed to.

The attacker (T1: holds the server) chooses every proof a device receives and every device list a
signer's machine is shown; the signed root and count are the only things it cannot choose.
"""

from __future__ import annotations

import hashlib
import time

import msgspec
import pytest
from harness.tenant import Tenant

from rampart import trust
from rampart.trust import Grant, Job, merkle


def dev(i: int) -> str:
    return "dev-" + hashlib.sha256(str(i).encode()).hexdigest()[:24]


FLEET = [dev(i) for i in range(1000)]
ME = FLEET[537]


def _pinned(t: Tenant) -> trust.TrustedRoot:
    return trust.pin_root(t.roots[0], expected_sha256=t.root_sha256, now=int(time.time()))


def _authorize(t: Tenant, job: bytes, grant: bytes, device: str, proofs: trust.DeviceProofs | None,
               *, repeat: bool = False) -> object:
    if repeat:
        return trust.authorize_repeat(root=_pinned(t), grant=grant, job=job,
                                      payloads={"script": b"echo hello\n"},
                                      device=trust.DevicePolicy(device_id=device), now=int(time.time()),
                                      proofs=proofs)
    index = t.append(job)
    ev = trust.LogEvidence(checkpoint=t.checkpoint(), index=index,
                           inclusion=tuple(t.tree.inclusion_proof(index)))
    return trust.authorize_job(
        root=_pinned(t), grant=grant, job=job, payloads={"script": b"echo hello\n"}, log=ev,
        last_checkpoint=None, device=trust.DevicePolicy(device_id=device), now=int(time.time()),
        seen_nonces=frozenset(), proofs=proofs)


def _two_approvers(t: Tenant) -> list[trust.PrivateKey]:
    return list(t.approvers[:2])  # more than 10 devices: the default policy asks for two


def _world(commit_grant: bool = True, commit_job: bool = True,
           job_devices: list[str] | None = None) -> tuple[Tenant, bytes, bytes]:
    t = Tenant()
    grant = t.grant(FLEET, commit=commit_grant, approvers=_two_approvers(t))
    job = t.job(grant, job_devices if job_devices is not None else FLEET, commit=commit_job)
    return t, grant, job


def _proofs(job_tree: trust.DeviceSetTree | None, grant_tree: trust.DeviceSetTree | None,
            device: str) -> trust.DeviceProofs:
    return trust.DeviceProofs(
        job=job_tree.proof(device) if job_tree else msgspec.UNSET,
        grant=grant_tree.proof(device) if grant_tree else msgspec.UNSET)


# --- what is signed ----------------------------------------------------------------------------


def test_a_committed_job_is_the_same_size_for_ten_devices_and_ten_thousand() -> None:
    t = Tenant()
    small, large = [dev(i) for i in range(10)], [dev(i) for i in range(10_000)]
    g_small = t.grant(small, commit=True)
    g_large = t.grant(large, commit=True, approvers=_two_approvers(t))
    j_small, j_large = t.job(g_small, small, commit=True), t.job(g_large, large, commit=True)
    assert abs(len(j_large) - len(j_small)) < 8  # only the count's digits differ
    listed = t.job(t.grant(large, approvers=_two_approvers(t)), large)
    assert len(listed) > 40 * len(j_large)
    tree = trust.DeviceSetTree(large)
    assert len(tree.proof(large[4242]).path) == 14  # ceil(log2(10,000))


def test_a_listed_job_encodes_exactly_as_before_device_sets_existed() -> None:
    t = Tenant()
    job = trust.decode_envelope(t.job(t.grant(FLEET[:3]), FLEET[:3])).payload
    assert b"device_set" not in job and b'"devices":["dev-' in job


def test_the_commitment_is_over_the_sorted_set_whatever_order_it_is_given_in() -> None:
    assert trust.commit_devices(FLEET) == trust.commit_devices(list(reversed(FLEET)))
    assert trust.commit_devices(FLEET) != trust.commit_devices(FLEET[:-1])
    with pytest.raises(trust.UsageError, match="twice"):
        trust.commit_devices([*FLEET[:3], FLEET[0]])


@pytest.mark.parametrize("fields, why", [
    ({"devices": FLEET[:2], "device_set": {"root": "0" * 64, "count": 2}}, "exactly one"),
    ({"devices": []}, "exactly one"),
    ({"device_set": {"root": "0" * 64, "count": 0}}, "count"),
])
def test_T13_a_job_names_its_devices_one_way_exactly(fields: dict[str, object], why: str) -> None:
    t = Tenant()
    doc = msgspec.json.decode(trust.decode_envelope(t.job(t.grant(FLEET[:2]), FLEET[:2])).payload)
    doc.pop("devices")
    doc.update(fields)
    with pytest.raises(trust.DecodeError, match=why):
        trust.decode_payload(msgspec.json.encode(doc), Job)


def test_T13_a_shell_job_cannot_commit_a_set_it_names_its_one_device() -> None:
    t = Tenant()
    doc = msgspec.json.decode(trust.decode_envelope(t.job(t.grant(FLEET[:2]), FLEET[:1])).payload)
    doc.pop("devices")
    doc["device_set"] = {"root": trust.commit_devices(FLEET[:1]).root, "count": 1}
    doc["action"] = {"kind": "shell"}
    doc["session"] = {"client_key": "A" * 43 + "="}
    with pytest.raises(trust.DecodeError, match="exactly one device"):
        trust.decode_payload(msgspec.json.encode(doc), Job)


def test_approvers_required_counts_a_committed_set_by_its_signed_count() -> None:
    t = Tenant()
    one_approver = t.grant(FLEET[:11], commit=True, approvers=list[trust.PrivateKey](t.approvers[:1]))
    with pytest.raises(trust.ThresholdError, match="1 of 2 approver signatures required for 11 device"):
        trust.verify_grant(_pinned(t), one_approver, now=int(time.time()))
    ten = trust.verify_grant(_pinned(t), t.grant(FLEET[:10], commit=True), now=int(time.time()))
    assert ten.device_count == 10


# --- on the device ------------------------------------------------------------------------------


@pytest.mark.parametrize("commit_grant, commit_job", [(True, True), (True, False), (False, True)])
def test_a_device_in_the_signed_sets_runs_the_job_with_its_own_proofs(commit_grant: bool,
                                                                      commit_job: bool) -> None:
    t, grant, job = _world(commit_grant, commit_job)
    tree = trust.DeviceSetTree(FLEET)
    auth = _authorize(t, job, grant, ME, _proofs(tree if commit_job else None,
                                                  tree if commit_grant else None, ME))
    assert isinstance(auth, trust.Authorization) and auth.job.device_count == len(FLEET)


def test_T1_a_proof_for_another_device_is_refused() -> None:
    t, grant, job = _world()
    tree = trust.DeviceSetTree(FLEET)
    neighbour = FLEET[538]
    with pytest.raises(trust.WrongDeviceError, match="no valid proof"):
        _authorize(t, job, grant, ME, trust.DeviceProofs(job=tree.proof(neighbour), grant=tree.proof(ME)))
    with pytest.raises(trust.CapabilityError, match="outside the grant"):
        _authorize(t, job, grant, ME, trust.DeviceProofs(job=tree.proof(ME), grant=tree.proof(neighbour)))
    # The same proof with this device's index claimed is still someone else's path.
    stolen = tree.proof(neighbour)
    with pytest.raises(trust.WrongDeviceError):
        _authorize(t, job, grant, ME, trust.DeviceProofs(
            job=trust.DeviceProof(index=tree.proof(ME).index, path=stolen.path), grant=tree.proof(ME)))


def test_T1_a_device_the_approvers_did_not_see_cannot_be_proven_into_their_set() -> None:
    t = Tenant()
    seen = FLEET[:500]
    outsider = FLEET[900]
    grant = t.grant(seen, commit=True, approvers=_two_approvers(t))
    # The technician's job (or the server's tree) includes the outsider; the approvers' set does not.
    job = t.job(grant, [*seen, outsider], commit=True)
    wider = trust.DeviceSetTree([*seen, outsider])
    with pytest.raises(trust.CapabilityError, match="outside the grant"):
        _authorize(t, job, grant, outsider, _proofs(wider, wider, outsider))
    # Every proof the wider tree can give for the outsider fails against the approvers' root.
    signed = trust.commit_devices(seen)
    assert not trust.is_member(signed, outsider, wider.proof(outsider))
    # A member still runs it, with proofs from the tree of what each signer committed to.
    ok = _authorize(t, job, grant, seen[7], _proofs(wider, trust.DeviceSetTree(seen), seen[7]))
    assert isinstance(ok, trust.Authorization)


def test_T1_a_proof_from_a_tree_of_another_size_does_not_verify_against_the_signed_count() -> None:
    t, grant, job = _world()
    bigger = trust.DeviceSetTree([*FLEET, dev(5000)])  # one more leaf: different count, different root
    with pytest.raises(trust.WrongDeviceError):
        _authorize(t, job, grant, ME, _proofs(bigger, trust.DeviceSetTree(FLEET), ME))
    # The count is the signers' own (they computed it with the root from the list they saw): it sets
    # the shape of every path, so the last leaves' proofs stop fitting a count that is off by one.
    real = trust.DeviceSetTree(FLEET)
    last = real.ids[-1]
    lying = trust.DeviceSet(root=real.commitment.root, count=real.commitment.count + 1)
    assert trust.is_member(real.commitment, last, real.proof(last))
    assert not trust.is_member(lying, last, real.proof(last))
    # And a signer's machine shown a list whose count differs from the signed one refuses it.
    with pytest.raises(trust.DigestMismatchError, match="1000 devices listed, 1001 signed"):
        trust.expand([], lying, FLEET)


@pytest.mark.parametrize("tamper", ["missing", "flipped-hash", "short", "long", "index"])
def test_T1_a_damaged_or_missing_proof_is_refused(tamper: str) -> None:
    t, grant, job = _world()
    tree = trust.DeviceSetTree(FLEET)
    good = tree.proof(ME)
    bad: trust.DeviceProof | None = {
        "missing": None,
        "flipped-hash": trust.DeviceProof(index=good.index, path=[("f" if good.path[0][0] != "f" else "e")
                                                                   + good.path[0][1:], *good.path[1:]]),
        "short": trust.DeviceProof(index=good.index, path=good.path[:-1]),
        "long": trust.DeviceProof(index=good.index, path=[*good.path, "0" * 64]),
        "index": trust.DeviceProof(index=good.index + 1, path=good.path),
    }[tamper]
    proofs = trust.DeviceProofs(job=bad if bad is not None else msgspec.UNSET, grant=good)
    with pytest.raises(trust.WrongDeviceError):
        _authorize(t, job, grant, ME, proofs)


def test_T1_a_committed_job_with_a_listed_grant_runs_only_on_listed_devices() -> None:
    t = Tenant()
    grant = t.grant(FLEET[:100], approvers=_two_approvers(t))
    job = t.job(grant, FLEET[:200], commit=True)
    tree = trust.DeviceSetTree(FLEET[:200])
    with pytest.raises(trust.CapabilityError, match="outside the grant"):
        _authorize(t, job, grant, FLEET[150], _proofs(tree, None, FLEET[150]))
    ok = _authorize(t, job, grant, FLEET[50], _proofs(tree, None, FLEET[50]))
    assert isinstance(ok, trust.Authorization)


def test_a_repeating_job_checks_the_stored_proofs_again_at_every_run() -> None:
    t = Tenant()
    grant = t.grant(FLEET, commit=True, approvers=_two_approvers(t))
    until = int(time.time()) + 600
    job = t.job(grant, FLEET, commit=True, repeat=trust.Repeat(every_s=60, until=until))
    tree = trust.DeviceSetTree(FLEET)
    assert isinstance(_authorize(t, job, grant, ME, _proofs(tree, tree, ME), repeat=True),
                      trust.RepeatAuthorization)
    with pytest.raises(trust.WrongDeviceError):
        _authorize(t, job, grant, ME, None, repeat=True)


# --- on the signer's machine -----------------------------------------------------------------


def test_T1_a_device_list_that_is_not_the_signed_set_is_never_shown_as_it() -> None:
    signed = trust.commit_devices(FLEET)
    assert trust.expand([], signed, list(reversed(FLEET))) == sorted(FLEET)
    for listed, why in ((FLEET[:-1], "999 devices listed, 1000 signed"),
                        ([*FLEET[:-1], dev(4000)], "does not match"),
                        ([*FLEET, FLEET[0]], "twice"),
                        ([], "missing")):
        with pytest.raises(trust.DigestMismatchError, match=why):
            trust.expand([], signed, listed)
    # A listed grant is its own list, whatever the server says.
    assert trust.expand(FLEET[:3], msgspec.UNSET, [dev(9999)]) == FLEET[:3]


def test_device_leaves_are_not_audit_log_leaves() -> None:
    assert trust.DeviceSetTree([ME]).commitment.root != merkle.leaf_hash(ME.encode()).hex()
    g = trust.decode_payload(trust.decode_envelope(Tenant().grant([ME], commit=True)).payload, Grant)
    assert isinstance(g.device_set, trust.DeviceSet) and g.devices == []
