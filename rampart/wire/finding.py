"""Findings: what the agent detected in one inventory, as both sides exchange it.

Invariant: a :class:`Finding` is valid whether built or decoded (bounded,
one-line text, known kind and severity), so a hostile device can send nothing
a display could misrender; the detections that build them live in
:mod:`rampart.agent.findings`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Final, Literal, get_args

import msgspec
from msgspec import Meta

__all__ = [
    "FINDING_KINDS", "MAX_DORMANT_DAYS", "MAX_EVIDENCE", "MAX_EVIDENCE_NAME", "MAX_FINDINGS", "MAX_KEY",
    "MAX_SUBJECT", "MAX_VALUE", "SEVERITIES", "SEVERITY", "UNSAFE", "EvidenceName", "EvidenceValue",
    "Finding", "FindingKind", "Severity",
]

FindingKind = Literal[
    "memory-only", "rat-portable", "rat-behaviour", "rat-unsanctioned", "vulnerable-tool",
    "inventory-truncated", "rat-port", "dormant-local-user", "eol-os",
]
Severity = Literal["critical", "high", "warning"]

#: Every kind of finding, in the order of the table in the module docstring.
FINDING_KINDS: Final[tuple[FindingKind, ...]] = get_args(FindingKind)
#: Severities, most severe first.
SEVERITIES: Final[tuple[Severity, ...]] = get_args(Severity)
#: The usual severity of each kind (a memory-only finding for a file deleted from disk is "high").
SEVERITY: Final[Mapping[FindingKind, Severity]] = MappingProxyType({
    "memory-only": "critical",
    "rat-portable": "critical",
    "rat-behaviour": "high",
    "inventory-truncated": "high",
    "rat-unsanctioned": "high",
    "vulnerable-tool": "high",
    "rat-port": "warning",
    "dormant-local-user": "warning",
    "eol-os": "warning",
})

MAX_KEY: Final = 512
MAX_SUBJECT: Final = 300
#: Entries in one finding's evidence.
MAX_EVIDENCE: Final = 16
MAX_EVIDENCE_NAME: Final = 32
MAX_VALUE: Final = 256
#: Findings returned by one evaluation; past it the least severe are left out.
MAX_FINDINGS: Final = 2000
MAX_DORMANT_DAYS: Final = 36500
_SLUG = r"^(?:[a-z0-9]+(?:-[a-z0-9]+)*)?$"
_EVIDENCE_NAME = r"^[a-z][a-z0-9_]*$"
#: Characters that would break a one-line display or disguise text (C0/C1 controls, bidi, separators).
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")

EvidenceName = Annotated[str, Meta(min_length=1, max_length=MAX_EVIDENCE_NAME, pattern=_EVIDENCE_NAME)]
EvidenceValue = Annotated[str, Meta(max_length=MAX_VALUE)]


class Finding(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One detection (built by :func:`rampart.agent.findings.evaluate`); validated when built and decoded.

    ``key`` is stable across inventories (never a pid or a time); ``tool`` is
    the catalogued tool's slug or ``""``; ``subject`` is one line for a
    person; ``evidence`` holds what was seen (pid, exe, cmdline, user, port,
    remote, version, ...), every value one bounded line.
    """

    kind: FindingKind
    severity: Severity
    key: Annotated[str, Meta(min_length=1, max_length=MAX_KEY)]
    tool: Annotated[str, Meta(max_length=64, pattern=_SLUG)] = ""
    subject: Annotated[str, Meta(min_length=1, max_length=MAX_SUBJECT)]
    evidence: Annotated[dict[EvidenceName, EvidenceValue], Meta(max_length=MAX_EVIDENCE)] = {}

    def __post_init__(self) -> None:
        # msgspec checks the Meta constraints when decoding only; built objects obey the same rules.
        if self.kind not in FINDING_KINDS or self.severity not in SEVERITIES:
            raise ValueError("unknown kind or severity")
        if not 0 < len(self.key) <= MAX_KEY or not 0 < len(self.subject) <= MAX_SUBJECT:
            raise ValueError("key and subject must be 1..MAX characters")
        if len(self.tool) > 64 or not re.match(_SLUG, self.tool):
            raise ValueError(f"bad tool slug {self.tool[:80]!r}")
        if len(self.evidence) > MAX_EVIDENCE:
            raise ValueError("too many evidence entries")
        texts = [self.key, self.subject]
        for name, value in self.evidence.items():
            if not isinstance(name, str) or len(name) > MAX_EVIDENCE_NAME or not re.match(_EVIDENCE_NAME,
                                                                                          name):
                raise ValueError(f"bad evidence name {str(name)[:40]!r}")
            if not isinstance(value, str) or len(value) > MAX_VALUE:
                raise ValueError(f"evidence {name!r} must be text of at most {MAX_VALUE} characters")
            texts.append(value)
        if any(UNSAFE.search(t) for t in texts):
            raise ValueError("control or bidi characters in a finding")
