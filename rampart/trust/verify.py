"""Verification of grants, jobs, checkpoints and receipts: the agent's one entry point.

:func:`authorize_job` is the only way a job becomes runnable. Its steps, in
order (docs/trust-chain.md, "Verifying a job"):

1. Decode the job envelope strictly; it must name the pinned root's tenant.
2. The signer is a technician or automation key of the pinned root, and its
   signature over the exact bytes verifies.
3. The grant verifies (:func:`verify_grant`): approver signatures as the
   root's policy requires for its reach, never counting the grantee's own
   key; valid now; within the policy's longest grant.
4. The job names that grant, its signer is the grant's grantee, and the grant
   has not been revoked.
5. This device is a target of the job; every target is covered by the grant.
6. The job is within its own validity window and was issued within the grant's.
7. Every capability the job needs is in the grant and in the tenant policy;
   an automation key may only trigger payload-free actions the grant names.
8. The device policy allows what the job declares (write paths under the
   device's write roots and away from the agent's protected paths; root; network).
9. Every payload's SHA-256 and size match the signed job.
10. The log checkpoint is signed by the root's log key, is consistent with the
    last checkpoint this device saw, and includes this exact job envelope.
11. The nonce and job id were never seen on this device.
12. A job signed by a passkey carries a sign counter above the last one this device
    saw for that passkey (:func:`~rampart.trust.webauthn.check_counter`); the new
    counter is returned in :attr:`Authorization.passkey_counters` for the caller to keep.

A repeating script job (a script check, ``Job.repeat``) passes these steps
once, at its first run; :func:`authorize_repeat` decides every later run.

"Now" is taken once by the caller and passed in. Nothing here does I/O or
mutates state: the caller persists the new checkpoint and nonce only after
this returns.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field

from . import merkle
from .devset import DeviceProofs, is_member
from .envelope import Envelope, decode_envelope, verified_signers
from .errors import (
    CancelledError,
    CapabilityError,
    DecodeError,
    DigestMismatchError,
    ExpiredError,
    InconsistentLogError,
    ReplayError,
    RevokedError,
    RollbackError,
    RootNotAllowedError,
    SignatureError,
    ThresholdError,
    TrustError,
    UnknownKeyError,
    WitnessQuorumError,
    WrongDeviceError,
    WrongTenantError,
)
from .keys import DevicePublicKey, PublicKey, device_id_for
from .limits import DEFAULT_LIMITS, Limits
from .payloads import (
    CANCELLATION_TYPE,
    CHECKPOINT_TYPE,
    GRANT_TYPE,
    JOB_TYPE,
    PAYLOAD_FREE_ACTIONS,
    RECEIPT_TYPE,
    REVOCATION_TYPE,
    Cancellation,
    Checkpoint,
    DeviceSet,
    Grant,
    Job,
    Receipt,
    Repeat,
    Revocation,
    SessionSummary,
    TenantRoot,
    decode_payload,
)
from .roots import TrustedRoot
from .webauthn import PasskeyPublicKey, check_counter


def approvers_required(root: TenantRoot, grant: Grant) -> int:
    """Approver signatures the tenant policy requires for this grant's reach."""
    p = root.policy
    if grant.device_count > p.approver_device_limit or (
        set(grant.capabilities) & set(p.high_risk_capabilities)
    ):
        return p.approvers_beyond_limit
    return 1


@dataclass(frozen=True, slots=True)
class GrantStatus:
    """A grant's signature status, without raising (for display while approvers sign)."""

    grant: Grant
    required: int
    approved_by: frozenset[str]

    @property
    def complete(self) -> bool:
        return len(self.approved_by) >= self.required


def grant_status(root: TrustedRoot, grant_bytes: bytes, *,
                 limits: Limits = DEFAULT_LIMITS) -> GrantStatus:
    """Decode a grant envelope and count valid approver signatures.

    The grantee's own key never counts, even if it is also an approver.
    """
    env = decode_envelope(grant_bytes, expect_type=GRANT_TYPE, limits=limits)
    grant = decode_payload(env.payload, Grant, max_bytes=limits.max_envelope_bytes)
    if grant.tenant != root.tenant:
        raise WrongTenantError("grant names another tenant")
    required = approvers_required(root.root, grant)
    eligible = {k: v for k, v in root.approvers.items() if k != grant.grantee}
    res = verified_signers(env, eligible, threshold=required)
    return GrantStatus(grant, required, res.signed)


def verify_grant(root: TrustedRoot, grant_bytes: bytes, *, now: int,
                 limits: Limits = DEFAULT_LIMITS) -> Grant:
    """Return the grant if it is fully approved and valid at ``now``; else raise."""
    st = grant_status(root, grant_bytes, limits=limits)
    grant = st.grant
    is_automation = grant.grantee in root.automation
    if grant.grantee not in root.technicians and not is_automation:
        raise UnknownKeyError("grant is for a key that is not a technician or automation key of the root")
    if not st.complete:
        raise ThresholdError(
            f"grant has {len(st.approved_by)} of {st.required} approver signatures required "
            f"for {grant.device_count} device(s) and capabilities {sorted(grant.capabilities)}"
        )
    policy = root.root.policy
    refused = set(grant.capabilities) - set(policy.capabilities)
    if refused:
        raise CapabilityError(f"tenant policy does not allow {sorted(refused)}")
    longest = policy.longest_grant(grant.capabilities, automation=is_automation)
    if grant.not_after - grant.not_before > longest:
        raise CapabilityError(f"grant lasts longer than the policy's {longest} s for "
                              f"{sorted(grant.capabilities)}")
    if now < grant.not_before - limits.clock_skew_s:
        raise ExpiredError("grant is not valid yet")
    if now >= grant.not_after:
        raise ExpiredError("grant has expired")
    return grant


def verify_revocation(root: TrustedRoot, data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> Revocation:
    """A revocation counts when signed by any approver or owner of the root."""
    env = decode_envelope(data, expect_type=REVOCATION_TYPE, limits=limits)
    rev = decode_payload(env.payload, Revocation, max_bytes=limits.max_envelope_bytes)
    if rev.tenant != root.tenant:
        raise WrongTenantError("revocation names another tenant")
    signers = {**root.approvers, **root.owners}
    if not verified_signers(env, signers, threshold=1).met:
        raise UnknownKeyError("revocation is not signed by an approver or owner of the root")
    return rev


def _decode_cancellation(root: TrustedRoot, data: bytes, limits: Limits) -> tuple[Envelope, Cancellation]:
    env = decode_envelope(data, expect_type=CANCELLATION_TYPE, limits=limits)
    c = decode_payload(env.payload, Cancellation, max_bytes=limits.max_envelope_bytes)
    if c.tenant != root.tenant:
        raise WrongTenantError("cancellation names another tenant")
    return env, c


def check_cancellation(root: TrustedRoot, data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> Cancellation:
    """A cancellation of this tenant signed by a person of the root (owner, approver or technician).

    Whether it counts for its job is decided with the job (:func:`verify_cancellation`): a
    technician may cancel only a job their own key signed."""
    env, c = _decode_cancellation(root, data, limits)
    people = {**root.technicians, **root.approvers, **root.owners}
    if not verified_signers(env, people, threshold=1).met:
        raise UnknownKeyError("cancellation is not signed by a person of the root")
    return c


def verify_cancellation(root: TrustedRoot, data: bytes, job: Job, *,
                        limits: Limits = DEFAULT_LIMITS) -> Cancellation:
    """The cancellation names ``job`` and is signed by an approver or owner of the root, or by the
    technician key that signed the job (never an automation key: a person cancels)."""
    env, c = _decode_cancellation(root, data, limits)
    if job.tenant != root.tenant:
        raise WrongTenantError("cancellation names another tenant")
    if c.job != job.id:
        raise WrongDeviceError("cancellation names another job")
    signers: dict[str, PublicKey] = {**root.approvers, **root.owners}
    if job.signer in root.technicians:
        signers[job.signer] = root.technicians[job.signer]
    if not verified_signers(env, signers, threshold=1).met:
        raise UnknownKeyError("cancellation is not signed by the job's technician or an approver or owner")
    return c


def verify_checkpoint(root: TrustedRoot, data: bytes, *, now: int, witnessed: bool = True,
                      limits: Limits = DEFAULT_LIMITS) -> Checkpoint:
    """A checkpoint of this tenant's log, signed by a log key the root names and, when the root's
    policy asks a witness quorum (and ``witnessed``), co-signed by that many distinct witnesses of
    the root. ``witnessed=False`` is for a witness itself, deciding whether to co-sign."""
    env = decode_envelope(data, expect_type=CHECKPOINT_TYPE, limits=limits)
    cp = decode_payload(env.payload, Checkpoint, max_bytes=limits.max_envelope_bytes)
    if cp.log != root.tenant:
        raise WrongTenantError("checkpoint is for another tenant's log")
    if not verified_signers(env, root.log_keys, threshold=1).met:
        raise UnknownKeyError("checkpoint is not signed by a log key of the root")
    if cp.time > now + limits.clock_skew_s:
        raise ExpiredError("checkpoint is dated in the future")
    need = root.root.policy.witnesses_required
    if witnessed and need:
        got = verified_signers(env, root.witnesses, threshold=need)
        if not got.met:
            raise WitnessQuorumError(
                f"the checkpoint at size {cp.size} has {len(got.signed)} of the {need} outside witness "
                f"co-signature(s) the tenant policy requires (is the witness running and reaching "
                f"the server?)")
    return cp


def check_log_progress(last: Checkpoint | None, new: Checkpoint, consistency: Sequence[bytes]) -> None:
    """The new checkpoint extends the last one seen (RFC 9162 consistency), never shrinks it."""
    if last is None:
        return
    if new.size < last.size:
        raise RollbackError(f"log shrank from {last.size} to {new.size} entries")
    try:
        merkle.verify_consistency(
            old_size=last.size, new_size=new.size, old_root=bytes.fromhex(last.root),
            new_root=bytes.fromhex(new.root), proof=consistency,
        )
    except InconsistentLogError as exc:
        raise InconsistentLogError(
            f"checkpoint at size {new.size} is inconsistent with the one seen at size {last.size}: "
            f"{exc.message}"
        ) from None


@dataclass(frozen=True, slots=True)
class DevicePolicy:
    """What this device allows any job, whatever its grant says (set locally, never by the server)."""

    device_id: str
    write_roots: tuple[str, ...] = ()
    protected_paths: tuple[str, ...] = ()
    allow_root: bool = False
    allow_network: bool = True
    max_timeout_s: int = 3600


@dataclass(frozen=True, slots=True)
class LogEvidence:
    """Proof that a job is in the tenant's audit log."""

    checkpoint: bytes
    index: int
    inclusion: tuple[bytes, ...]
    consistency: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Effective:
    """The capabilities a job actually gets: declared ∩ granted ∩ device policy."""

    writes: tuple[str, ...]
    connect: tuple[int, ...]
    run_as: str
    timeout_s: int


@dataclass(frozen=True, slots=True)
class Authorization:
    job: Job
    grant: Grant
    checkpoint: Checkpoint
    effective: Effective
    signer_role: str
    #: The job signer's passkey sign counter, to store (empty for an Ed25519 signer).
    passkey_counters: Mapping[str, int] = field(default_factory=dict)


def _under(path: str, root: str) -> bool:
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root if root == "/" else root + "/")


def _check_device_policy(job: Job, device: DevicePolicy) -> Effective:
    d = job.declared
    if d.run_as == "root" and not device.allow_root:
        raise RootNotAllowedError("this device does not allow jobs to run as root (it was enrolled "
                                  "without --allow-root)")
    if d.connect and not device.allow_network:
        raise CapabilityError("this device does not allow jobs network access")
    for p in d.writes:
        norm = posixpath.normpath(p)
        if not any(_under(norm, r) for r in device.write_roots):
            raise CapabilityError(f"write path {p} is outside the device's allowed write roots")
        for prot in device.protected_paths:
            if _under(norm, prot) or _under(prot, norm):
                raise CapabilityError(f"write path {p} overlaps the agent's protected files")
    if job.timeout_s > device.max_timeout_s:
        raise CapabilityError(f"timeout {job.timeout_s} s exceeds the device limit")
    return Effective(tuple(d.writes), tuple(d.connect), d.run_as, job.timeout_s)


def _check_payloads(j: Job, payloads: Mapping[str, bytes]) -> None:
    wanted = {p.name for p in j.action.payloads}
    extra = set(payloads) - wanted
    if extra:
        raise DigestMismatchError(f"unexpected payload(s) {sorted(extra)}")
    for ref in j.action.payloads:
        data = payloads.get(ref.name)
        if data is None:
            raise DigestMismatchError(f"payload {ref.name!r} is missing")
        if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
            raise DigestMismatchError(f"payload {ref.name!r} does not match its signed SHA-256")


def _check_binding(j: Job, g: Grant, device_id: str, revoked_grants: Container[str],
                   proofs: DeviceProofs | None) -> None:
    """The job names this grant and is signed by its grantee; the grant is not revoked; this
    device is a target and inside the grant.

    With both lists, every target must be inside the grant (as the server and the
    signer's CLI check). With a committed set on either side, this device proves its
    own membership of each set (the others prove theirs: a target outside the grant
    refuses the job itself, so no device runs anything the approvers did not name).
    """
    if g.id != j.grant:
        raise CapabilityError("job names a different grant than the one supplied")
    if g.grantee != j.signer:
        raise CapabilityError("job signer is not the grant's grantee")
    if g.id in revoked_grants:
        raise RevokedError("the grant was revoked")
    p = proofs if proofs is not None else DeviceProofs()
    if isinstance(j.device_set, DeviceSet):
        if not is_member(j.device_set, device_id, p.job):
            raise WrongDeviceError("this device is not a target of the job "
                                   "(no valid proof that it is in the job's signed device set)")
    elif device_id not in j.devices:
        raise WrongDeviceError("this device is not a target of the job")
    if isinstance(g.device_set, DeviceSet):
        if not is_member(g.device_set, device_id, p.grant):
            raise CapabilityError("this device is outside the grant "
                                  "(no valid proof that it is in the grant's signed device set)")
    elif isinstance(j.device_set, DeviceSet):
        if device_id not in g.devices:
            raise CapabilityError("this device is outside the grant")
    else:
        outside = set(j.devices) - set(g.devices)
        if outside:
            raise CapabilityError(f"job targets {len(outside)} device(s) outside the grant")


def _decode_job(root: TrustedRoot, job: bytes, limits: Limits) -> tuple[Envelope, Job]:
    """The job envelope and payload, decoded within the limits; it names the root's tenant."""
    env = decode_envelope(job, expect_type=JOB_TYPE, limits=limits)
    j = decode_payload(env.payload, Job, max_bytes=limits.max_envelope_bytes)
    if j.tenant != root.tenant:
        raise WrongTenantError("job names another tenant")
    return env, j


def _check_signature(env: Envelope, j: Job, key: PublicKey) -> Mapping[str, int]:
    """The job carries its signer's valid signature; a passkey signer's sign counter."""
    if isinstance(key, PasskeyPublicKey):
        first: TrustError | None = None
        for sig in (s for s in env.signatures if s.keyid == j.signer):
            try:
                return {j.signer: key.check_assertion(sig.sig, env.signed_message())}
            except TrustError as exc:  # the first failure's precise reason, if none verifies
                first = first or exc
        raise first or SignatureError("job signature is missing or invalid")
    if not verified_signers(env, {j.signer: key}, threshold=1).met:
        raise SignatureError("job signature is missing or invalid")
    return {}


def _check_grant_window(j: Job, g: Grant, limits: Limits) -> None:
    """The job was issued inside the grant's window (its start less the clock skew, its end)."""
    if not (g.not_before - limits.clock_skew_s <= j.issued_at < g.not_after):
        raise ExpiredError("job was issued outside the grant's window")


def _check_capabilities(j: Job, g: Grant, root: TrustedRoot) -> None:
    """The grant gives, and the tenant policy allows, every capability the job needs."""
    needed = j.required_capabilities()
    missing = needed - set(g.capabilities)
    if missing:
        raise CapabilityError(f"grant does not give {sorted(missing)}")
    not_allowed = needed - set(root.root.policy.capabilities)
    if not_allowed:
        raise CapabilityError(f"tenant policy does not allow {sorted(not_allowed)}")


def authorize_job(
    *,
    root: TrustedRoot,
    grant: bytes,
    job: bytes,
    payloads: Mapping[str, bytes],
    log: LogEvidence,
    last_checkpoint: Checkpoint | None,
    device: DevicePolicy,
    now: int,
    seen_nonces: Container[str],
    seen_jobs: Container[str] = frozenset(),
    revoked_grants: Container[str] = frozenset(),
    passkey_counters: Mapping[str, int] | None = None,
    cancellations_of: Callable[[str], Sequence[bytes]] | None = None,
    proofs: DeviceProofs | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Authorization:
    """Decide whether this device may run ``job``; return its effective capabilities or raise.

    Raises a :class:`~rampart.trust.errors.TrustError` whose ``reason`` is the
    precise refusal. ``passkey_counters`` are the highest sign counters this device
    stored per passkey key id (from earlier jobs). ``cancellations_of`` returns the
    cancellation envelopes stored for a job id: one that
    :func:`verify_cancellation` accepts refuses the job (those that do not are
    ignored: they cannot block a valid job). ``proofs`` show this device is in
    the job's and the grant's committed device sets, where they commit one. Pure: the caller persists nonce,
    checkpoint and :attr:`Authorization.passkey_counters` afterwards.
    """
    # 1. decode
    env, j = _decode_job(root, job, limits)
    # 2. signer
    if j.signer in root.technicians:
        role, key = "technician", root.technicians[j.signer]
    elif j.signer in root.automation:
        role, key = "automation", root.automation[j.signer]
    else:
        raise UnknownKeyError("job signer is not a technician or automation key of the pinned root")
    counters = _check_signature(env, j, key)
    # 2b. withdrawn by a person before it ran
    for cancelled in cancellations_of(j.id) if cancellations_of is not None else ():
        try:
            verify_cancellation(root, cancelled, j, limits=limits)
        except TrustError:
            continue
        raise CancelledError("the job was cancelled by its technician or an approver")
    # 3. grant
    g = verify_grant(root, grant, now=now, limits=limits)
    # 4. binding, 5. devices
    _check_binding(j, g, device.device_id, revoked_grants, proofs)
    # 6. time
    if now >= j.expires_at:
        raise ExpiredError("job has expired")
    if j.issued_at > now + limits.clock_skew_s:
        raise ExpiredError("job is issued in the future")
    _check_grant_window(j, g, limits)
    # 7. capabilities
    _check_capabilities(j, g, root)
    if role == "automation":
        if j.action.kind not in PAYLOAD_FREE_ACTIONS or j.action.kind not in g.actions:
            raise CapabilityError(
                f"an automation key may not sign a {j.action.kind!r} action under this grant"
            )
        if j.declared.writes or j.declared.connect or j.declared.run_as != "job":
            raise CapabilityError("an automation job may not declare capabilities")
    # 8. device policy
    effective = _check_device_policy(j, device)
    # 9. payload digests
    _check_payloads(j, payloads)
    # 10. audit log
    cp = verify_checkpoint(root, log.checkpoint, now=now, limits=limits)
    check_log_progress(last_checkpoint, cp, log.consistency)
    merkle.verify_inclusion(
        leaf_hash=merkle.leaf_hash(job), index=log.index, tree_size=cp.size,
        proof=log.inclusion, root=bytes.fromhex(cp.root),
    )
    # 11. replay
    if j.nonce in seen_nonces or j.id in seen_jobs:
        raise ReplayError("this job was already seen on this device")
    # 12. passkey sign counter
    last = passkey_counters or {}
    for kid, counter in counters.items():
        check_counter(kid, counter, last.get(kid))
    return Authorization(j, g, cp, effective, role, dict(counters))


@dataclass(frozen=True, slots=True)
class RepeatAuthorization:
    """A later run of a repeating script job that the agent may start now."""

    job: Job
    grant: Grant
    repeat: Repeat
    effective: Effective

    @property
    def runs_until(self) -> int:
        """When the schedule ends at the latest: the repeat's ``until`` or the grant's end."""
        return min(self.repeat.until, self.grant.not_after)


def authorize_repeat(
    *,
    root: TrustedRoot,
    grant: bytes,
    job: bytes,
    payloads: Mapping[str, bytes],
    device: DevicePolicy,
    now: int,
    revoked_grants: Container[str] = frozenset(),
    proofs: DeviceProofs | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> RepeatAuthorization:
    """Decide whether a repeating script job that already ran here once may run again now.

    The agent calls this before every later run, with the job and grant
    envelopes and the script it stored at the first run, the root it has
    pinned *now* and the revocations it holds. Everything that can change with
    time is checked again: the signer is still a technician of the pinned root
    (a rotation that removed it ends the schedule), the grant still verifies
    against that root, is valid now and is not revoked, ``now`` is before the
    repeat's ``until``, the device is a target, the capabilities and the device
    policy still allow it, and the stored script still has the signed SHA-256.

    Deliberately not checked: the nonce (the first run consumed it; every
    later run is of the same signed job), the job's own ``expires_at`` (the
    deadline for the first run) and the audit log (the first run proved the
    job is in the log; the job bytes are the same). ``proofs`` are the device-set
    proofs the first run came with (stored beside the job). Pure: no I/O.
    """
    env, j = _decode_job(root, job, limits)
    rep = j.repeating
    if rep is None:
        raise CapabilityError("this job does not repeat")
    # Payload rules hold these already; re-checked so this function alone guarantees them.
    if j.action.kind != "script" or j.declared.run_as == "root":
        raise CapabilityError("only a script job that does not run as root may repeat")
    key = root.technicians.get(j.signer)
    if key is None:
        raise UnknownKeyError("the repeating job's signer is not a technician of the pinned root")
    _check_signature(env, j, key)
    g = verify_grant(root, grant, now=now, limits=limits)
    _check_binding(j, g, device.device_id, revoked_grants, proofs)
    if now >= rep.until:
        raise ExpiredError("the job's repeat period has ended")
    _check_grant_window(j, g, limits)
    _check_capabilities(j, g, root)
    effective = _check_device_policy(j, device)
    _check_payloads(j, payloads)
    return RepeatAuthorization(j, g, rep, effective)


def verify_receipt(data: bytes, device_key: DevicePublicKey, *,
                   limits: Limits = DEFAULT_LIMITS) -> Receipt:
    """A receipt signed by exactly this device's key."""
    env = decode_envelope(data, expect_type=RECEIPT_TYPE, limits=limits)
    r = decode_payload(env.payload, Receipt, max_bytes=limits.max_envelope_bytes)
    if not verified_signers(env, {device_key.key_id: device_key}, threshold=1).met:
        raise SignatureError("receipt is not signed by the device's key")
    return r


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A remote session as its evidence proves it: the signed job and the device's signed receipt."""

    job: Job
    receipt: Receipt | None
    recording_verified: bool


def verify_session_record(root: TrustedRoot, job: bytes, receipt: bytes | None, device_key: DevicePublicKey,
                          recording: bytes | None = None, *,
                          limits: Limits = DEFAULT_LIMITS) -> SessionRecord:
    """Check a session's evidence from the server against the pinned root; raise TrustError if any fails.

    The job is a ``shell`` job signed by a technician of ``root``; ``device_key`` is the key of the one
    device the job targets (its id is derived from the key, so the server cannot substitute another);
    the receipt is that device's signature over this job's outcome; and ``recording``, when given, has
    exactly the SHA-256 and size the receipt signs. Pure.
    """
    env, j = _decode_job(root, job, limits)
    key = root.technicians.get(j.signer)
    if key is None:
        raise UnknownKeyError("the session job's signer is not a technician of the pinned root")
    _check_signature(env, j, key)
    if j.action.kind != "shell" or j.session_spec is None:
        raise DecodeError("this job is not a remote session")
    if device_id_for(device_key) != j.devices[0]:
        raise SignatureError("the device key is not the key of the device the session job targets")
    if receipt is None:
        if recording is not None:
            raise SignatureError("a recording without the device's signed receipt cannot be checked")
        return SessionRecord(j, None, False)
    r = verify_receipt(receipt, device_key, limits=limits)
    if r.job != j.id or r.device != j.devices[0] or r.tenant != j.tenant:
        raise SignatureError("the receipt is for another session")
    if recording is None:
        return SessionRecord(j, r, False)
    summary = r.session
    if not isinstance(summary, SessionSummary):
        raise SignatureError("the receipt signs no recording")
    if (hashlib.sha256(recording).hexdigest() != summary.recording_sha256
            or len(recording) != summary.recording_bytes):
        raise SignatureError("the recording differs from the one the device signed (changed on the server)")
    return SessionRecord(j, r, True)
