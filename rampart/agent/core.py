"""The agent's decision and execution path for one job: verify, record, contain, receipt.

Security invariants (docs/trust-chain.md, docs/containment.md):

* Nothing runs unless :func:`rampart.trust.authorize_job` accepted it against
  the pinned root, the last checkpoint seen and the device policy.
* The nonce, job id and new checkpoint are committed before the job starts.
* A job runs only through :func:`rampart.agent.containment.run_contained`
  with exactly the effective capabilities, never more; the receipt reports
  the containment the child actually applied.
* Every outcome (ran, refused, failed) yields a receipt signed by the device key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from rampart import trust
from rampart.trust import Checkpoint, ContainmentReport, Receipt, decode_payload, reload_root
from rampart.wire import JobMessage
from rampart.wire.check_result import encode_result
from rampart.wire.limits import JOB_ID_PATTERN

from . import actions, containment
from .device_config import DeviceConfig
from .enroll import load_device_key
from .errors import JobRefused
from .state import AgentState, StoredCheck

log = logging.getLogger("rampart.agent")

_JOB_ID = re.compile(JOB_ID_PATTERN)


class MessageError(JobRefused):
    """A server message is malformed (it is dropped; nothing runs)."""

    reason = "malformed"


def protected_paths(state_dir: Path) -> tuple[str, ...]:
    """The agent's own files: state, keys, logs and code. Never writable by a job."""
    code = Path(trust.__file__).resolve().parent.parent
    paths = {str(state_dir.resolve()), str(code), str(Path(sys.prefix).resolve())}
    return tuple(sorted(paths))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise MessageError(f"{what} must be base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MessageError(f"{what} is not valid base64") from None


class Agent:
    """Verifies and runs jobs for one enrolled device. Not thread-safe: one job at a time."""

    def __init__(self, state_dir: Path, *, clock: Any = time.time) -> None:
        self.state_dir = state_dir
        self.state = AgentState(state_dir)
        self.key = load_device_key(state_dir)
        self.device_id = trust.device_id_for(self.key.public)  # type: ignore[arg-type]
        from .state import load_policy

        self.config = DeviceConfig.from_dict(load_policy(state_dir))
        self.clock = clock
        self.policy = trust.DevicePolicy(
            device_id=self.device_id,
            write_roots=self.config.write_roots,
            protected_paths=protected_paths(state_dir),
            allow_root=self.config.allow_root,
            allow_network=self.config.allow_network,
            max_timeout_s=self.config.max_timeout_s,
        )
        self._root: trust.TrustedRoot | None = None
        self._checkpoint: tuple[bytes, Checkpoint] | None = None
        #: Set by the running agent: ask telemetry for an inventory now; True if the server is connected.
        self.inventory_trigger: Callable[[], bool] | None = None
        #: Held while a job or a script check runs: one at a time (rampart.agent.script_checks).
        self.exec_lock = threading.RLock()
        #: Called (from the job's thread) when a repeating job stored its schedule.
        self.on_check_stored: Callable[[], None] | None = None
        #: Set by the running agent: start the session of an authorised shell job (from the job's
        #: thread); the session stores and sends its receipt when it ends (rampart.agent.session).
        self.on_session: Callable[[trust.Authorization], None] | None = None

    # --- trusted state ----------------------------------------------------------------

    @property
    def tenant(self) -> str:
        return self.trusted_root().tenant

    def trusted_root(self) -> trust.TrustedRoot:
        """The pinned root, re-verified from its stored bytes (it was verified when pinned)."""
        if self._root is None:
            self._root = reload_root(self.state.current_root())
        return self._root

    def last_checkpoint(self) -> Checkpoint | None:
        """The checkpoint this device last accepted, decoded once per stored value."""
        data = self.state.checkpoint()
        if data is None:
            return None
        cached = self._checkpoint
        if cached is not None and cached[0] == data:
            return cached[1]
        cp = decode_payload(trust.decode_envelope(data).payload, Checkpoint)
        self._checkpoint = (data, cp)
        return cp

    def checkpoint_size(self) -> int:
        cp = self.last_checkpoint()
        return 0 if cp is None else cp.size

    def root_version(self) -> int:
        return self.trusted_root().version

    def apply_roots(self, envelopes: list[bytes]) -> int:
        """Move the pinned root forward through ``envelopes`` (rotation rule); return the version."""
        current = self.trusted_root()
        newer: list[tuple[int, bytes]] = []
        for e in envelopes:
            env = trust.decode_envelope(e, expect_type=trust.TenantRoot.PAYLOAD_TYPE)
            version = decode_payload(env.payload, trust.TenantRoot).version
            if version > current.version:
                newer.append((version, e))
        if not newer:
            return current.version
        updated = trust.update_root(current, [e for _, e in newer], now=int(self.clock()))
        with self.state.transaction() as db:
            for version, e in newer:
                self.state.save_root(db, version, e)
        self._root = updated
        log.info("root updated to v%d", updated.version)
        return updated.version

    def apply_revocations(self, envelopes: list[bytes]) -> int:
        """Keep every revocation that verifies against the pinned root; return how many were new.

        A revocation that does not verify (wrong tenant, not an approver or
        owner, bad signature) is skipped and logged; it changes nothing.
        """
        root = self.trusted_root()
        verified: dict[str, bytes] = {}
        for e in envelopes[:_MAX_REVOCATIONS]:
            try:
                rev = trust.verify_revocation(root, e)
            except trust.TrustError as exc:
                log.warning("ignored a revocation: %s: %s", exc.reason, exc.message)
                continue
            verified[rev.grant] = e
        added = self.state.add_revocations(verified, self.clock())
        if added:
            log.info("%d grant(s) revoked", added)
        return added

    def apply_cancellations(self, envelopes: list[bytes]) -> int:
        """Keep every job cancellation a person of the pinned root signed; return how many were new.

        Whether one counts is decided when its job arrives: only the job's own technician, an
        approver or an owner can withdraw a job (:func:`rampart.trust.verify_cancellation`)."""
        root = self.trusted_root()
        checked: list[tuple[str, bytes]] = []
        for e in envelopes[:_MAX_REVOCATIONS]:
            try:
                c = trust.check_cancellation(root, e)
            except trust.TrustError as exc:
                log.warning("ignored a job cancellation: %s: %s", exc.reason, exc.message)
                continue
            checked.append((c.job, e))
        added = self.state.add_cancellations(checked, self.clock())
        if added:
            log.info("%d job cancellation(s) stored", added)
        return added

    # --- jobs ---------------------------------------------------------------------------

    def recover_interrupted(self) -> None:
        """Jobs that were running when the agent died are reported failed, never re-run."""
        for job_id in self.state.interrupted_jobs():
            r = self._receipt(job_id, outcome="failed",
                              detail="the agent stopped while this job ran; it is not run again")
            self.state.finish_job(job_id, r)
            log.warning("job %s was interrupted by an agent restart; reported failed", job_id)

    def handle_job(self, msg: JobMessage,
                   on_started: Callable[[], None] | None = None) -> bytes | None:
        """Process one decoded ``job`` message; return the signed receipt to send (or None to drop).

        ``on_started`` is called once the job's nonce and the new checkpoint are
        committed and before it runs, so the server can hear at once which
        checkpoint this device now holds.
        """
        with self.exec_lock:
            return self._handle_job(msg, on_started)

    def refuse_message(self, job_id: str, detail: str) -> bytes | None:
        """A ``job`` message for ``job_id`` did not decode: sign its refusal (``malformed``); nothing runs.

        A job already run here (or interrupted) keeps its receipt, which is sent again.
        """
        with self.exec_lock:
            if not _JOB_ID.match(job_id):
                return None
            prior = self.state.job_record(job_id)
            if prior is not None and prior[0] in ("done", "started"):
                return prior[1]
            log.warning("refused job %s: malformed: %s", job_id, detail)
            receipt = self._receipt(job_id, outcome="refused", refusal="malformed", detail=detail)
            self.state.record_refusal(job_id, receipt)
            return receipt

    def _handle_job(self, msg: JobMessage, on_started: Callable[[], None] | None) -> bytes | None:
        job_id = msg.job_id
        if not _JOB_ID.match(job_id):  # checked by the wire type; a struct built in process is not
            log.warning("dropped a job message without a valid job id")
            return None
        prior = self.state.job_record(job_id)
        if prior is not None and prior[0] in ("done", "started"):
            # Already run here (or interrupted): never again. Resend what we reported.
            return prior[1]
        try:
            auth, job_bytes, payloads = self._authorize(msg)
        except (trust.TrustError, MessageError) as exc:
            reason = exc.reason if isinstance(exc, trust.TrustError) else "malformed"
            detail = exc.message if isinstance(exc, trust.TrustError) else str(exc)
            log.warning("refused job %s: %s: %s", job_id, reason, detail)
            receipt = self._receipt(job_id, outcome="refused", refusal=reason, detail=detail)
            self.state.record_refusal(job_id, receipt)
            return receipt
        if auth.job.id != job_id:
            receipt = self._receipt(job_id, outcome="refused", refusal="malformed",
                                    detail="message job id does not match the signed job")
            self.state.record_refusal(job_id, receipt)
            return receipt
        self.state.start_job(job_id=job_id, nonce=auth.job.nonce, expires_at=auth.job.expires_at,
                             checkpoint=msg.log.checkpoint.encode(),
                             checkpoint_size=auth.checkpoint.size,
                             passkey_counters=auth.passkey_counters)
        if on_started is not None:
            on_started()
        log.info("running job %s (%s) signed by %s", job_id, auth.job.action.kind,
                 self.trusted_root().root.key_name(auth.job.signer))
        if auth.job.action.kind == "shell":
            if self.on_session is None:
                receipt = self._receipt(job_id, outcome="failed",
                                        detail="remote sessions need the running agent's connection")
                self.state.finish_job(job_id, receipt)
                return receipt
            self.on_session(auth)
            return None  # the session sends its receipt when it ends
        started = self.clock()
        done = actions.run(self, auth, payloads)
        receipt = self._receipt(auth.job.id, outcome=done.outcome, refusal=done.refusal, detail=done.detail,
                                result=done.result)
        proofs = msgspec.json.encode(msg.proofs) if isinstance(msg.proofs, trust.DeviceProofs) else b""
        check, result = self._schedule(auth, job_bytes, msg.grant.encode(), payloads, done, started, proofs)
        self.state.finish_job(job_id, receipt, check=check, result=result)
        if check is not None:
            log.info("script check %s scheduled every %d s until %d", job_id, check.interval_s,
                     min(auth.job.repeating.until if auth.job.repeating else 0, auth.grant.not_after))
            if self.on_check_stored is not None:
                self.on_check_stored()
        return receipt

    def _schedule(self, auth: trust.Authorization, job: bytes, grant: bytes, payloads: Mapping[str, bytes],
                  done: actions.Done, started: float,
                  proofs: bytes = b"") -> tuple[StoredCheck | None, bytes | None]:
        """For a repeating script job that ran: its schedule and its first result (else nothing)."""
        rep = auth.job.repeating
        if rep is None or done.outcome == "refused":
            return None, None
        interval = max(rep.every_s, self.config.min_check_interval_s)
        result = encode_result(actions.result_of(auth.job.id, done, interval, started=started))
        now = self.clock()
        if now >= min(rep.until, auth.grant.not_after):
            return None, result
        return StoredCheck(job_id=auth.job.id, job=job, grant=grant, script=payloads["script"],
                           interval_s=interval, next_run=max(now, started + interval), runs=1,
                           proofs=proofs), result

    def _authorize(self, msg: JobMessage) -> tuple[trust.Authorization, bytes, dict[str, bytes]]:
        # The wire type bounded the counts and checked the proofs are hex; base64 is checked here.
        payloads = {k: _unb64(v, f"payload {k}") for k, v in msg.payloads.items()}
        lg = msg.log
        evidence = trust.LogEvidence(
            checkpoint=lg.checkpoint.encode(), index=lg.index,
            inclusion=tuple(bytes.fromhex(h) for h in lg.inclusion),
            consistency=tuple(bytes.fromhex(h) for h in lg.consistency),
        )
        job_bytes, grant_bytes = msg.job.encode(), msg.grant.encode()
        auth = trust.authorize_job(
            root=self.trusted_root(), grant=grant_bytes, job=job_bytes, payloads=payloads,
            log=evidence, last_checkpoint=self.last_checkpoint(), device=self.policy,
            now=int(self.clock()), seen_nonces=_Seen(self.state.nonce_seen),
            seen_jobs=_Seen(self.state.job_seen),
            revoked_grants=_Seen(self.state.grant_revoked),
            passkey_counters=self.state.passkey_counters(),
            cancellations_of=self.state.cancellations_of,
            proofs=msg.proofs if isinstance(msg.proofs, trust.DeviceProofs) else None,
        )
        return auth, job_bytes, payloads

    def finish_session(self, job_id: str, *, outcome: str, detail: str, summary: trust.SessionSummary,
                       containment: containment.Containment | None, exit_code: int | None,
                       signal: int | None, killed: int, started_at: float) -> bytes:
        """Sign and store the receipt of a session that ended (called from its thread)."""
        result = None
        if containment is not None:
            result = _session_result(containment, exit_code, signal, killed, started_at, self.clock())
        receipt = self._receipt(job_id, outcome=outcome, detail=detail, result=result, session=summary)
        self.state.finish_job(job_id, receipt)
        return receipt

    def _receipt(self, job_id: str, *, outcome: str, refusal: str = "", detail: str = "",
                 result: containment.ContainedResult | None = None,
                 session: trust.SessionSummary | None = None) -> bytes:
        out = result.stdout if result else b""
        err = result.stderr if result else b""
        c = result.containment if result else None
        now = self.clock()
        receipt = Receipt(
            tenant=self.tenant, job=job_id, device=self.device_id, outcome=outcome,  # type: ignore[arg-type]
            refusal=refusal[:64], detail=detail[:4000],
            exit_code=result.exit_code if result else None,
            signal=result.signal if result else None,
            timed_out=result.timed_out if result else False,
            stdout=_b64(out), stderr=_b64(err),
            stdout_sha256=hashlib.sha256(out).hexdigest(),
            stderr_sha256=hashlib.sha256(err).hexdigest(),
            stdout_truncated=result.stdout_truncated if result else False,
            stderr_truncated=result.stderr_truncated if result else False,
            started_at=result.started_at if result else now,
            ended_at=result.ended_at if result else now,
            containment=ContainmentReport(
                level=c.level, landlock_abi=c.landlock_abi, filesystem=c.filesystem,  # type: ignore[arg-type]
                network=c.network, no_new_privs=c.no_new_privs, user=c.user, uid=c.uid,
                timeout_s=c.timeout_s, ipc_scoped=c.ipc_scoped, limits=dict(c.limits),
                reaper=c.reaper, killed=result.killed if result else 0,  # type: ignore[arg-type]
            ) if c else None,
            session=session if session is not None else msgspec.UNSET,
        )
        env = trust.sign_envelope(Receipt.PAYLOAD_TYPE, trust.encode_payload(receipt), [self.key])
        return env.to_bytes()


_MAX_REVOCATIONS = 1000


def _session_result(c: containment.Containment, exit_code: int | None, signal: int | None, killed: int,
                    started_at: float, ended_at: float) -> containment.ContainedResult:
    """A session's process as a contained result (no output: that is in the recording)."""
    return containment.ContainedResult(
        exit_code=exit_code, signal=signal, timed_out=False, stdout=b"", stderr=b"",
        stdout_truncated=False, stderr_truncated=False, started_at=started_at, ended_at=ended_at,
        containment=c, refused=None, killed=killed)


class _Seen:
    """A Container view over the durable nonce / job-id store."""

    def __init__(self, lookup: Any) -> None:
        self._lookup = lookup

    def __contains__(self, item: object) -> bool:
        return isinstance(item, str) and bool(self._lookup(item))

