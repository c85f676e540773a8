"""What a handler returns: Done, Refusal, the bounded JSON result document, a check's CheckResult."""

from __future__ import annotations

import copy
import json
import os
import pwd
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rampart import trust
from rampart.wire.check_result import MAX_DETAIL, MAX_TAIL, CheckResult

from .. import containment
from ..errors import JobRefused
from .limits import MAX_DOC_BYTES, MAX_ERROR_CHARS

# --- results ----------------------------------------------------------------------------------------


class Refusal(JobRefused):
    """The job is refused before anything runs: ``reason`` is the receipt's refusal slug."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Done:
    """What the receipt of one job says (see :meth:`rampart.agent.core.Agent._receipt`)."""

    outcome: str
    refusal: str = ""
    detail: str = ""
    result: containment.ContainedResult | None = None


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return " ".join(str(text).split())[:limit]


def _largest(node: Any, parent: Any = None, key: Any = None) -> tuple[int, Any, Any, Any]:
    """(encoded size, parent, key, value) of the biggest list (2+ items) or long string in ``node``."""
    best: tuple[int, Any, Any, Any] = (0, None, None, None)
    if isinstance(node, dict):
        items: Sequence[tuple[Any, Any]] = list(node.items())
    elif isinstance(node, list):
        items = list(enumerate(node))
    else:
        items = []
    if (isinstance(node, list) and len(node) > 1) or (isinstance(node, str) and len(node) > 80):
        best = (len(json.dumps(node)), parent, key, node)
    for k, v in items:
        cand = _largest(v, node, k)
        if cand[0] > best[0]:
            best = cand
    return best


def bounded_json(doc: Mapping[str, Any], limit: int = MAX_DOC_BYTES) -> tuple[bytes, bool]:
    """``doc`` as compact JSON of at most ``limit`` bytes: halve the biggest list or string until it fits.

    Lists keep their first items (callers put failures first); the result says
    ``"truncated": true`` when anything was cut.
    """
    data = json.dumps(doc, separators=(",", ":")).encode()
    if len(data) <= limit:
        return data, False
    work: dict[str, Any] = copy.deepcopy(dict(doc))
    work["truncated"] = True
    for _ in range(400):
        _, parent, key, value = _largest(work)
        if parent is None:
            break
        if isinstance(value, list):
            del value[max(1, len(value) // 2):]
        else:
            parent[key] = value[: len(value) // 2] + "…"
        data = json.dumps(work, separators=(",", ":")).encode()
        if len(data) <= limit:
            return data, True
    return json.dumps({"schema": 1, "action": doc.get("action"), "truncated": True,
                       "error": "the result was too large for a receipt"}).encode(), True


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _uncontained(timeout_s: float) -> containment.Containment:
    """What applies to an action the agent runs itself as root: no Landlock, no user switch."""
    uid = os.geteuid()
    return containment.Containment(landlock_abi=containment.detect_abi(), filesystem=False, network=False,
                                   no_new_privs=False, user=_user_name(uid), uid=uid, limits={},
                                   timeout_s=float(timeout_s), level="none")


def _finished(*, ok: bool, doc: Mapping[str, Any], error: str, summary: str, started: float,
              applied: containment.Containment | None, timed_out: bool = False) -> Done:
    """The receipt of an action the agent ran itself; ``applied`` is the containment that applied (if any)."""
    out, cut = bounded_json(doc)
    err = (one_line(error) + "\n").encode() if error else b""
    result = containment.ContainedResult(
        exit_code=0 if ok else 1, signal=None, timed_out=timed_out, stdout=out, stderr=err,
        stdout_truncated=cut, stderr_truncated=False, started_at=started, ended_at=time.time(),
        containment=applied, refused=None)
    return Done("ran" if ok else "failed", detail=one_line(summary), result=result)


def _tail(data: bytes) -> str:
    text = data[-MAX_TAIL:].decode("utf-8", errors="replace")
    return text[-MAX_TAIL:]


def result_of(job_id: str, done: Done, interval_s: int, *, started: float) -> CheckResult:
    """A script check's result of one run (:mod:`rampart.agent.script_checks`) from its :class:`Done`."""
    r = done.result
    ended = r.ended_at if r is not None and done.outcome != "refused" else time.time()
    begun = r.started_at if r is not None and done.outcome != "refused" else started
    exit_code = r.exit_code if r is not None else None
    ok = (done.outcome == "ran" and r is not None and exit_code == 0 and not r.timed_out)
    detail = ""
    if done.outcome != "ran":
        detail = one_line(f"{done.outcome}: {done.refusal + ': ' if done.refusal else ''}"
                                  f"{done.detail}", MAX_DETAIL)
    return CheckResult(
        job=job_id, run_at=begun, duration_s=max(0.0, ended - begun),
        exit_code=exit_code, signal=r.signal if r is not None else None,
        timed_out=bool(r.timed_out) if r is not None else False, ok=ok,
        interval_s=min(max(1, interval_s), trust.DEFAULT_LIMITS.max_repeat_every_s),
        stdout=_tail(r.stdout) if r is not None else "", stderr=_tail(r.stderr) if r is not None else "",
        detail=detail[:MAX_DETAIL],
    )


def _no_declarations(job: trust.Job) -> None:
    if job.declared.writes or job.declared.connect:
        raise Refusal("bad-arguments", f"a {job.action.kind} job declares no write paths or ports: the "
                                       "package manager is not contained")
