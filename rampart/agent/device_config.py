"""The local device policy (:class:`DeviceConfig`), fixed at enrolment by the device's administrator.

Its own module so the agent core (:mod:`.core`) and enrolment (:mod:`.enroll`)
both use it without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .actions import ActionPolicy

__all__ = ["DeviceConfig"]


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """The local device policy, fixed at enrolment by the device's administrator."""

    write_roots: tuple[str, ...]
    allow_root: bool
    allow_network: bool
    job_user: str | None
    require_containment: str
    max_timeout_s: int
    #: Packages, updates and backups (rampart.agent.actions, docs/patching.md).
    actions: ActionPolicy = field(default_factory=ActionPolicy)
    #: The shortest interval this device runs one script check at, whatever the check asks.
    min_check_interval_s: int = 60
    #: Remote sessions (docs/remote-support.md): wait for a local user's consent before one opens.
    require_consent: bool = False
    consent_timeout_s: int = 120
    #: The session log the device's own people read (one JSON line per start and end).
    session_log: str = "/var/log/rampart-agent/sessions.log"

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> DeviceConfig:
        return cls(
            write_roots=tuple(str(p) for p in doc.get("write_roots", [])),
            allow_root=bool(doc.get("allow_root", False)),
            allow_network=bool(doc.get("allow_network", True)),
            job_user=doc.get("job_user") or None,
            require_containment=str(doc.get("require_containment", "full")),
            max_timeout_s=int(doc.get("max_timeout_s", 3600)),
            actions=ActionPolicy.from_dict(doc),
            min_check_interval_s=max(1, int(doc.get("min_check_interval_s", 60))),
            require_consent=bool(doc.get("require_consent", False)),
            consent_timeout_s=max(5, int(doc.get("consent_timeout_s", 120))),
            session_log=str(doc.get("session_log") or "/var/log/rampart-agent/sessions.log"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "write_roots": list(self.write_roots), "allow_root": self.allow_root,
            "allow_network": self.allow_network, "job_user": self.job_user,
            "require_containment": self.require_containment, "max_timeout_s": self.max_timeout_s,
            "min_check_interval_s": self.min_check_interval_s,
            "require_consent": self.require_consent, "consent_timeout_s": self.consent_timeout_s,
            "session_log": self.session_log,
            **self.actions.to_dict(),
        }
