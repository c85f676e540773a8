"""Script check results: one run of a repeating script job, as the agent reports it.

Invariant: a :class:`CheckResult` is strict and bounded both ways (unknown
fields refused, every string capped), so the server stores what a device says
about a run and nothing more (docs/design/script-checks.md).
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec
from msgspec import Meta

from rampart import trust

__all__ = ["MAX_DETAIL", "MAX_TAIL", "CheckResult", "decode_result", "encode_result"]

#: Characters of stdout and stderr kept from the end of each run's output.
MAX_TAIL: Final = 4096
MAX_DETAIL: Final = 1000


class CheckResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One run of a script check, as reported (agent clock). Strict and bounded both ways."""

    job: Annotated[str, Meta(pattern=r"^job-[0-9a-z]{16,64}$")]
    run_at: Annotated[float, Meta(ge=0, le=1 << 40)]
    duration_s: Annotated[float, Meta(ge=0, le=1 << 20)]
    exit_code: Annotated[int, Meta(ge=-(1 << 31), le=1 << 31)] | None = None
    signal: Annotated[int, Meta(ge=0, le=128)] | None = None
    timed_out: bool = False
    ok: bool
    #: The interval the device actually runs this check at (its floor may be above ``every_s``).
    interval_s: Annotated[int, Meta(ge=1, le=trust.DEFAULT_LIMITS.max_repeat_every_s)]
    stdout: Annotated[str, Meta(max_length=MAX_TAIL)] = ""
    stderr: Annotated[str, Meta(max_length=MAX_TAIL)] = ""
    #: Why the run did not happen or failed inside the agent (a refusal), else "".
    detail: Annotated[str, Meta(max_length=MAX_DETAIL)] = ""


_ENC = msgspec.json.Encoder()


def encode_result(r: CheckResult) -> bytes:
    return _ENC.encode(r)


def decode_result(data: bytes | str) -> CheckResult:
    """Strictly decode one result; raises ``msgspec.ValidationError`` / ``DecodeError``."""
    return msgspec.json.decode(data, type=CheckResult, strict=True)
