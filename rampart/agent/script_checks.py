"""Script checks: repeating signed script jobs the agent runs itself, and their results.

A script job whose signed payload carries ``repeat`` (:class:`rampart.trust.Repeat`)
first runs as every job does (:meth:`rampart.agent.core.Agent.handle_job`:
:func:`rampart.trust.authorize_job`, nonce committed, signed receipt). In the
transaction that records that run, the agent stores the job envelope, the
grant envelope and the script it verified (``script_checks`` in the state
database). From then on *the agent* runs it every ``max(every_s, device floor)``
seconds (:class:`ScriptChecks`); the server only receives results.

Before every later run, :func:`rampart.trust.authorize_repeat` decides again,
against the root the agent has pinned *now* and the revocations it holds: the
signer is still a technician, the grant still verifies and is not revoked,
the repeat period and the grant have not ended, and the stored script still
has its signed SHA-256. A schedule that fails is dropped (and logged); nothing
brings it back but a new signed job. The script then runs exactly like a
script job (:func:`rampart.agent.actions.run_check`: same containment, same
device policy).

Security invariants:

* Nothing the server sends adds, changes, speeds up or restarts a schedule: the
  table is written only by the first run of a verified job and by the
  scheduler itself. A server re-sending the job gets the stored receipt (the job
  id is spent); a different job is a different, separately signed check.
* The device chooses the floor (``min_check_interval_s`` in its policy, set at
  enrolment, 60 s by default): a check runs at most that often, whatever it asks.
* One job or check runs at a time (:attr:`rampart.agent.core.Agent.exec_lock`).

Results (:class:`rampart.wire.check_result.CheckResult`) go to the server in ``check-result`` messages and
stay in the durable outbox (``check_outbox``, newest
:data:`~rampart.agent.state.CHECK_OUTBOX_MAX`) until the server answers
``check-ack`` for their sequence number, so results produced while
disconnected are sent at the next connection (docs/design/script-checks.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import msgspec

from rampart import trust
from rampart.wire import CheckResultMessage, encode_message
from rampart.wire.check_result import CheckResult, decode_result, encode_result

from . import actions
from .actions import result_of
from .state import StoredCheck

if TYPE_CHECKING:
    from .core import Agent

# The result type (CheckResult, encode_result, decode_result) is the wire contract: rampart.wire.check_result.
__all__ = ["DEFAULT_MIN_INTERVAL_S", "ScriptChecks", "result_of"]

log = logging.getLogger("rampart.agent")

#: The device's default floor between two runs of one check.
DEFAULT_MIN_INTERVAL_S: Final = 60
#: Longest sleep of the scheduler between looks at its table.
_MAX_SLEEP_S: Final = 30.0
#: Results sent and not yet acknowledged, at most (below the gateway's rate limit per minute).
SEND_WINDOW: Final = 100
#: A result sent this long ago without an acknowledgement is sent again.
RESEND_AFTER_S: Final = 60.0

SendText = Callable[[str], Awaitable[None]]


class ScriptChecks:
    """Runs the stored script checks on their schedule and sends their results."""

    def __init__(self, agent: Agent, *, clock: Callable[[], float] = time.time) -> None:
        self._agent = agent
        self._clock = clock
        self._wake = asyncio.Event()
        self._send: SendText | None = None
        #: seq -> when it was sent on this connection, until acknowledged.
        self._sent: dict[int, float] = {}
        self.runs = 0

    # --- the link --------------------------------------------------------------------------

    def attach(self, send: SendText) -> None:
        """A connection is up: send every queued result now."""
        self._send = send
        self._sent = {}
        self._wake.set()

    def detach(self) -> None:
        self._send = None

    def changed(self) -> None:
        """A schedule may have been added (a first run finished): look again."""
        self._wake.set()

    async def on_ack(self, seq: object) -> None:
        if isinstance(seq, int) and not isinstance(seq, bool):
            await asyncio.to_thread(self._agent.state.ack_check_result, seq)
            if self._sent.pop(seq, None) is not None and len(self._sent) < SEND_WINDOW // 2:
                self._wake.set()  # room in the window: send more of a backlog

    async def flush(self) -> None:
        """Send queued results, oldest first, keeping at most SEND_WINDOW unacknowledged."""
        send = self._send
        if send is None:
            return
        now = time.monotonic()
        self._sent = {k: v for k, v in self._sent.items() if now - v < RESEND_AFTER_S}
        for seq, data in await asyncio.to_thread(self._agent.state.check_outbox):
            if seq in self._sent:
                continue
            if len(self._sent) >= SEND_WINDOW:
                return
            try:
                text = encode_message(CheckResultMessage(seq=seq, result=decode_result(data)))
            except (msgspec.DecodeError, ValueError):  # ValidationError is a DecodeError
                log.warning("dropped script check result %d: it no longer decodes", seq)
                await asyncio.to_thread(self._agent.state.ack_check_result, seq)
                continue
            try:
                await send(text)
            except Exception as exc:  # noqa: BLE001 - a lost connection: sent again on the next one
                log.info("script check results kept until the server is back (%s)", type(exc).__name__)
                return
            self._sent[seq] = time.monotonic()

    # --- running ---------------------------------------------------------------------------

    def run_due(self) -> float:
        """Run every check that is due (in this worker thread); return when the next one is due."""
        now = self._clock()
        for check in self._agent.state.script_checks():
            if check.next_run <= now:
                self.run_one(check)
                now = self._clock()
        nexts = [c.next_run for c in self._agent.state.script_checks()]
        return min(nexts) if nexts else now + _MAX_SLEEP_S

    def run_one(self, check: StoredCheck) -> CheckResult | None:
        """Re-verify and run one stored check; drop it when it no longer verifies."""
        agent = self._agent
        with agent.exec_lock:
            started = self._clock()
            try:
                auth = trust.authorize_repeat(
                    root=agent.trusted_root(), grant=check.grant, job=check.job,
                    payloads={"script": check.script}, device=agent.policy, now=int(started),
                    revoked_grants=_Revoked(agent), proofs=_proofs(check.proofs),
                )
            except trust.TrustError as exc:
                agent.state.drop_script_check(check.job_id)
                log.warning("script check %s stopped: %s: %s", check.job_id, exc.reason, exc.message)
                return None
            done = actions.run_check(agent, auth, check.script)
            result = result_of(check.job_id, done, check.interval_s, started=started)
            next_run = max(self._clock(), started + check.interval_s)
            agent.state.record_check_run(check.job_id, next_run, encode_result(result))
            self.runs += 1
        log.info("script check %s ran: %s (exit %s)", check.job_id, "ok" if result.ok else "FAILED",
                 result.exit_code)
        return result

    async def run(self) -> None:
        """Run checks when due and send results, forever (cancel to stop)."""
        while True:
            self._wake.clear()
            try:
                next_due = await asyncio.to_thread(self.run_due)
            except Exception:  # never let one bad check stop the others
                log.exception("running script checks failed")
                next_due = self._clock() + 5.0
            await self.flush()
            delay = min(_MAX_SLEEP_S, max(0.05, next_due - self._clock()))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except TimeoutError:
                pass


def _proofs(stored: bytes) -> trust.DeviceProofs | None:
    """The device-set proofs stored with a check (None when it names its devices in lists).

    Stored by this agent after the first run verified them; a damaged copy decodes to none,
    and the run is then refused like any job without its proof.
    """
    if not stored:
        return None
    try:
        return msgspec.json.decode(stored, type=trust.DeviceProofs)
    except msgspec.DecodeError:
        return None


class _Revoked:
    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def __contains__(self, item: object) -> bool:
        return isinstance(item, str) and self._agent.state.grant_revoked(item)


def describe(check: StoredCheck) -> str:
    """A one-line summary for ``rampart-agent status``."""
    try:
        job = trust.decode_payload(trust.decode_envelope(check.job).payload, trust.Job)
    except trust.TrustError:
        return json.dumps({"job": check.job_id, "error": "unreadable"})
    rep = job.repeating
    return json.dumps({"job": check.job_id, "name": rep.name if rep else "", "interval_s": check.interval_s,
                       "until": rep.until if rep else 0, "runs": check.runs, "next_run": int(check.next_run)})
