"""Suppression rules: a tenant silences one known false positive, visibly, for a while (issue 15).

A rule names a finding kind, an *exact* executable path or an *exact*
SHA-256 of an executable (never a pattern, a tool or a whole kind), and
optionally one device; it carries a reason and an expiry (at most
:data:`MAX_DAYS` days) and is audited when added or removed. A finding a rule
matches is still stored and listed, with ``evidence["suppressed"]`` naming the
rule, its reason and its expiry; it raises no alert, and its live alert is
resolved by ``suppression:<rule id>``. When the rule expires or is removed,
the next report raises the alert again.

Matching uses what the agent reported (``exe``, ``location``, ``sha256`` in
the evidence): device text, compared exactly, never interpreted. An agent
cannot suppress its own findings: a ``suppressed`` entry it sends is dropped
on ingest. Rules live in the ``settings`` table (one JSON document per
tenant, at most :data:`MAX_RULES` rules).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import asdict, dataclass

from sqlalchemy.orm import Session

from rampart.textsafe import is_safe
from rampart.trust import new_id
from rampart.wire.finding import FINDING_KINDS, MAX_EVIDENCE, MAX_VALUE, Finding

from .models import Setting

__all__ = ["MAX_DAYS", "MAX_RULES", "Rule", "apply", "load", "new_rule", "save"]

MAX_RULES = 200
MAX_DAYS = 365
MAX_REASON = 200
_KEY = "suppress:"
_SHA = re.compile(r"^[0-9a-f]{64}$")
_DEVICE = re.compile(r"^dev-[0-9a-f]{24}$")


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    kind: str
    #: Exact executable path ("" when the rule names a fingerprint).
    path: str
    #: Exact SHA-256 of the executable ("" when the rule names a path).
    sha256: str
    #: One device, or "" for every device of the tenant.
    device: str
    reason: str
    expires_at: float
    created_by: str
    created_at: float

    def matches(self, device_id: str, f: Finding, now: float) -> bool:
        if now >= self.expires_at or f.kind != self.kind or (self.device and self.device != device_id):
            return False
        ev = f.evidence
        if self.path:
            return self.path in (ev.get("exe"), ev.get("location"))
        return bool(self.sha256) and ev.get("sha256") == self.sha256


def new_rule(*, kind: str, path: str, sha256: str, device: str, reason: str, days: int, who: str,
             now: float) -> Rule:
    """A checked rule; ``ValueError`` with a one-line reason when it is not acceptable."""
    if kind not in FINDING_KINDS or kind == "inventory-truncated":
        raise ValueError(f"unknown or unsuppressible finding kind {kind[:40]!r}")
    if bool(path) == bool(sha256):
        raise ValueError("name exactly one of an executable path or a SHA-256")
    if path and (not path.startswith("/") or len(path) > MAX_VALUE or not is_safe(path)
                 or any(c in path for c in "*?[")):
        raise ValueError("the path must be one exact absolute path (no patterns)")
    if sha256 and not _SHA.match(sha256):
        raise ValueError("the fingerprint must be a SHA-256 in lowercase hex")
    if device and not _DEVICE.match(device):
        raise ValueError("bad device id")
    reason = reason.strip()
    if not reason or len(reason) > MAX_REASON or not is_safe(reason):
        raise ValueError(f"a reason of 1..{MAX_REASON} printable characters is required")
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"the expiry must be 1..{MAX_DAYS} days")
    return Rule(id=new_id("sp"), kind=kind, path=path, sha256=sha256, device=device, reason=reason,
                expires_at=now + days * 86400, created_by=who, created_at=now)


def load(s: Session, tenant_id: str) -> list[Rule]:
    """The tenant's rules (expired ones included, until removed)."""
    row = s.get(Setting, _KEY + tenant_id)
    if row is None:
        return []
    try:
        docs = json.loads(row.value)
        return [Rule(**d) for d in docs if isinstance(d, dict)][:MAX_RULES]
    except (ValueError, TypeError):
        return []


def save(s: Session, tenant_id: str, rules: list[Rule]) -> None:
    if len(rules) > MAX_RULES:
        raise ValueError(f"a tenant holds at most {MAX_RULES} suppression rules")
    value = json.dumps([asdict(r) for r in rules], sort_keys=True, separators=(",", ":"))
    row = s.get(Setting, _KEY + tenant_id)
    if row is None:
        s.add(Setting(key=_KEY + tenant_id, value=value))
    else:
        row.value = value


def _until(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%MZ")


def apply(rules: list[Rule], device_id: str, f: Finding, now: float) -> tuple[Finding, str]:
    """``f`` with any agent-sent ``suppressed`` entry dropped, then marked when a rule matches;
    and the matching rule's id ("" when none)."""
    ev = {k: v for k, v in f.evidence.items() if k != "suppressed"}
    rule = next((r for r in rules if r.matches(device_id, f, now)), None)
    if rule is not None:
        if len(ev) >= MAX_EVIDENCE:
            ev.pop(next(reversed(ev)))
        ev["suppressed"] = f"{rule.id} until {_until(rule.expires_at)}: {rule.reason}"[:MAX_VALUE]
    marked = f if ev == f.evidence else Finding(kind=f.kind, severity=f.severity, key=f.key, tool=f.tool,
                                                 subject=f.subject, evidence=ev)
    return marked, rule.id if rule is not None else ""
