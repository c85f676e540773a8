"""Job cancellation in the trust core (issue 16): who may withdraw a job, and what a device then does.

A cancellation counts for a job when it names that job of this tenant and is
signed by an approver or owner of the root, or by the technician key that
signed the job. Anything else is ignored by :func:`rampart.trust.authorize_job`
(a forged or misdirected cancellation cannot block a valid job), and refused
with a stable reason by :func:`rampart.trust.verify_cancellation`.
"""

from __future__ import annotations

import time

import pytest
from harness.tenant import Tenant, env_bytes

from rampart import trust
from rampart.trust import Cancellation, Job, OperatorKey

DEVICE = "dev-" + "c" * 24


def _job(t: Tenant) -> tuple[bytes, bytes, Job]:
    grant = t.grant([DEVICE])
    job = t.job(grant, [DEVICE], b"x")
    return grant, job, trust.decode_payload(trust.decode_envelope(job).payload, Job)


def _cancel(t: Tenant, job_id: str, *signers: trust.PrivateKey, tenant: str | None = None) -> bytes:
    c = Cancellation(tenant=tenant or t.id, job=job_id, issued_at=int(time.time()), reason="wrong device")
    return env_bytes(c, *signers)


def _authorize(t: Tenant, grant: bytes, job: bytes, stored: dict[str, list[bytes]]) -> trust.Authorization:
    index = t.append(job)
    ev = trust.LogEvidence(checkpoint=t.checkpoint(), index=index,
                           inclusion=tuple(t.tree.inclusion_proof(index)))
    return trust.authorize_job(root=_root(t), grant=grant, job=job, payloads={"script": b"x"}, log=ev,
                               last_checkpoint=None, device=trust.DevicePolicy(device_id=DEVICE),
                               now=int(time.time()), seen_nonces=frozenset(),
                               cancellations_of=lambda job_id: stored.get(job_id, []))


def _root(t: Tenant) -> trust.TrustedRoot:
    return trust.pin_root(t.roots[0], expected_sha256=t.root_sha256, now=int(time.time()))


@pytest.mark.parametrize("who", ["technician who signed it", "approver", "owner"])
def test_a_cancelled_job_is_refused_with_its_reason(who: str) -> None:
    t = Tenant()
    grant, job, j = _job(t)
    signer = {"technician who signed it": t.technicians[0], "approver": t.approvers[2],
              "owner": t.owners[0]}[who]
    env = _cancel(t, j.id, signer)
    assert trust.verify_cancellation(_root(t), env, j).job == j.id
    with pytest.raises(trust.CancelledError) as e:
        _authorize(t, grant, job, {j.id: [env]})
    assert e.value.reason == "job-cancelled"


def test_T11_another_technician_cannot_cancel_a_job_they_did_not_sign() -> None:
    t = Tenant()
    grant, job, j = _job(t)
    env = _cancel(t, j.id, t.technicians[1])  # a person of the root, but not the job's signer
    assert trust.check_cancellation(_root(t), env).job == j.id  # stored by the device ...
    with pytest.raises(trust.UnknownKeyError):
        trust.verify_cancellation(_root(t), env, j)
    assert _authorize(t, grant, job, {j.id: [env]}).job.id == j.id  # ... and the job still runs
    # Stored beside it, an approver's cancellation of the same job still counts.
    with pytest.raises(trust.CancelledError):
        _authorize(t, grant, job, {j.id: [env, _cancel(t, j.id, t.approvers[0])]})


def test_T1_a_cancellation_the_root_does_not_sign_cannot_block_a_job() -> None:
    t = Tenant()
    grant, job, j = _job(t)
    server_key = OperatorKey.generate()  # what a compromised server holds
    forged = _cancel(t, j.id, server_key)
    with pytest.raises(trust.UnknownKeyError):
        trust.check_cancellation(_root(t), forged)
    with pytest.raises(trust.UnknownKeyError):
        trust.verify_cancellation(_root(t), forged, j)
    assert _authorize(t, grant, job, {j.id: [forged]}).job.id == j.id


def test_T1_an_automation_key_cannot_cancel() -> None:
    t = Tenant()
    grant, job, j = _job(t)
    env = _cancel(t, j.id, t.automation[0])
    with pytest.raises(trust.UnknownKeyError):
        trust.check_cancellation(_root(t), env)
    assert _authorize(t, grant, job, {j.id: [env]}).job.id == j.id


def test_T12_a_cancellation_of_another_tenant_or_another_job_does_not_count() -> None:
    t = Tenant()
    grant, job, j = _job(t)
    _, _, other = _job(t)
    elsewhere = _cancel(t, j.id, t.approvers[0], tenant=trust.new_tenant_id())
    with pytest.raises(trust.WrongTenantError):
        trust.check_cancellation(_root(t), elsewhere)
    misdirected = _cancel(t, other.id, t.approvers[0])  # stored under this job's id by a server
    with pytest.raises(trust.WrongDeviceError, match="another job"):
        trust.verify_cancellation(_root(t), misdirected, j)
    assert _authorize(t, grant, job, {j.id: [misdirected]}).job.id == j.id
    assert _authorize(t, grant, t.job(grant, [DEVICE], b"x"), {j.id: [elsewhere]}) is not None


def test_T13_a_malformed_cancellation_is_a_decode_error_and_blocks_nothing() -> None:
    t = Tenant()
    grant, job, j = _job(t)
    for junk in (b"", b"{}", b"not json", job):  # a job envelope is not a cancellation
        with pytest.raises(trust.TrustError):
            trust.verify_cancellation(_root(t), junk, j)
    assert _authorize(t, grant, job, {j.id: [b"{}"]}).job.id == j.id
