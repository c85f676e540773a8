"""Inventory reports: the ``report`` an ``inventory`` message carries, and how it is packed.

Invariant: decoding is bounded before any JSON is parsed (strict base64,
:func:`inflate` stops at a limit) and the JSON lands in strict structs whose
lists and strings are bounded, so the server can take a report from a hostile
device. A :class:`Report` holds exactly one of a full inventory or a delta.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

from .finding import MAX_EVIDENCE, MAX_FINDINGS, EvidenceName, EvidenceValue, Finding
from .inventory import Inventory, Time
from .inventory_delta import Delta
from .limits import MAX_MESSAGE_BYTES

__all__ = [
    "MAX_REPORT_BYTES", "MAX_SANCTIONED", "MAX_TOOLS", "MAX_WIRE_BYTES", "TOOL_WAYS", "EarlierFinding",
    "Report", "ReportError", "ToolSeen", "ToolWay", "decode_report", "decode_report_blob", "encode_report",
    "inflate", "report_blob", "unb64",
]

#: Largest decompressed report the agent builds and the server's default decoding limit.
MAX_REPORT_BYTES: Final = 64 << 20
#: Largest ``inventory`` message text the gateway accepts: the protocol's message limit.
MAX_WIRE_BYTES: Final = MAX_MESSAGE_BYTES
MAX_TOOLS: Final = 1000
#: Sanctioned tool names in one ``detection`` message.
MAX_SANCTIONED: Final = 1000
_SLUG = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"


class ReportError(ValueError):
    """Untrusted telemetry input (a report, a catalog blob) was refused; nothing was changed."""


# --- wire format ---------------------------------------------------------------------------------


class _Struct(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    pass


class EarlierFinding(_Struct, frozen=True, kw_only=True):
    """A finding seen since the last acknowledged report that the current snapshot no longer has."""

    finding: Finding
    #: Agent clock, unix seconds: the first and last collection that saw it.
    first_seen: Time
    last_seen: Time


ToolWay = Literal["process", "package", "service"]
TOOL_WAYS: Final[tuple[ToolWay, ...]] = ("process", "package", "service")


class ToolSeen(_Struct, frozen=True, kw_only=True):
    """A catalogued remote access tool present on the host, sanctioned or not (H1, S1)."""

    slug: Annotated[str, Meta(min_length=1, max_length=64, pattern=_SLUG)]
    found_by: Annotated[list[ToolWay], Meta(min_length=1, max_length=3)]
    #: It also runs from a portable location (a ``rat-portable`` finding exists for it).
    portable: bool = False
    evidence: Annotated[dict[EvidenceName, EvidenceValue], Meta(max_length=MAX_EVIDENCE)] = {}


class Report(_Struct, frozen=True, kw_only=True):
    """One inventory report: exactly one of ``full`` or ``delta``, and what was detected in it."""

    schema: Literal[1] = 1
    full: Inventory | None = None
    delta: Delta | None = None
    findings: Annotated[list[Finding], Meta(max_length=MAX_FINDINGS)] = []
    earlier: Annotated[list[EarlierFinding], Meta(max_length=MAX_FINDINGS)] = []
    tools: Annotated[list[ToolSeen], Meta(max_length=MAX_TOOLS)] = []

    def __post_init__(self) -> None:
        if (self.full is None) == (self.delta is None):
            raise ValueError("a report holds exactly one of full or delta")
        if len({f.key for f in self.findings}) != len(self.findings):
            raise ValueError("duplicate finding keys")


def inflate(data: bytes, limit: int) -> bytes:
    """zlib-decompress ``data``, refusing output over ``limit`` bytes (a compression bomb) or junk."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ReportError(f"not zlib data: {exc}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise ReportError(f"decompresses to more than {limit} bytes")
    if not d.eof or d.unused_data:
        raise ReportError("truncated zlib data or trailing bytes")
    return out


def unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ReportError(f"{what} is not valid base64") from None


def encode_report(report: Report) -> str:
    """The ``report`` field of an ``inventory`` message: base64 of zlib of the strict JSON."""
    return base64.b64encode(zlib.compress(msgspec.json.encode(report), 6)).decode("ascii")


def decode_report(text: str, *, max_bytes: int = MAX_REPORT_BYTES) -> Report:
    """The :class:`Report` in a message's ``report`` field, or :class:`ReportError`."""
    return decode_report_blob(unb64(text, "report"), max_bytes=max_bytes)


def report_blob(text: str) -> bytes:
    """The compressed bytes of a ``report`` field (strict base64), or :class:`ReportError`."""
    return unb64(text, "report")


def decode_report_blob(blob: bytes, *, max_bytes: int = MAX_REPORT_BYTES) -> Report:
    """The :class:`Report` in compressed bytes (what the server keeps for a delta)."""
    raw = inflate(blob, max_bytes)
    try:
        return msgspec.json.decode(raw, type=Report)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        raise ReportError(f"invalid report: {str(exc)[:240]}") from None
