"""The strict base every protocol message derives from.

Invariant: a message is a frozen msgspec struct tagged by its ``type`` field;
unknown fields are refused, so a message decodes to exactly one struct or is
refused, never half-read.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec
from msgspec import Meta

__all__ = ["Count", "Hex64", "Message", "Short", "WireError"]

#: A size or version counter.
Count = Annotated[int, Meta(ge=0, le=1 << 48)]
Short = Annotated[str, Meta(max_length=128)]
Hex64 = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]


class Message(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, tag_field="type"):
    """A protocol message; each subclass names its ``type`` tag.

    Every field is encoded, defaults included (``"base": null``), except where a
    message says otherwise: a receiver may rely on a field being present.
    """


class WireError(ValueError):
    """A message was refused; ``reason`` is stable: too-large, not-json, unknown-type or malformed.

    ``message_type`` is the message's ``type`` when it named one, and
    ``job_id`` a well-formed job id a refused ``job`` message carried (so the
    agent can answer it with a signed refusal).
    """

    REASONS: Final = ("too-large", "not-json", "unknown-type", "malformed")

    def __init__(self, reason: str, detail: str, *, message_type: str | None = None,
                 job_id: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.message_type = message_type
        self.job_id = job_id
