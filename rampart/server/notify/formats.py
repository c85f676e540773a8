r"""Pure formatters: one :class:`~.events.Event` to one line of JSON, CEF or RFC 5424 syslog.

No I/O, no clock, no exceptions for any event: every formatter returns one
record without a line break. Each record is bounded: with the default
:class:`FormatLimits` and a host name of at most 255 characters no record
exceeds :data:`MAX_RECORD` (8192) bytes of UTF-8, the default message size of
common syslog receivers. Records carry no trailing newline; the caller joins
them (``"\n"`` for files and JSON lines, :func:`octet_frame` on TCP).

Log injection (MISSION G2, C3: the SOC must be able to trust a record's
fields): tenant names, actors, subjects and details can come from people the
SOC watches. So, in every format:

* Each field is escaped as its format defines (the CEF header holds no such
  field, see below): CEF extension ``\\``, ``\=``, ``\n``, ``\r`` (Micro Focus CEF Implementation
  Standard, "Character encoding"); RFC 5424 PARAM-VALUE ``\"``, ``\\``, ``\]``
  (section 6.3.3); JSON string escapes. A value can never end its field or
  start a new one.
* A character that could break a record or mislead a reader and that has no
  escape in the format is written as text: ``#`` and three octal digits for
  C0 controls, DEL and C1 controls (the convention of RFC 5424 section 8.2,
  also rsyslog's), ``#u`` and four hex digits for U+2028, U+2029, U+FEFF, lone
  surrogates and the bidirectional controls (U+061C, U+200E, U+200F,
  U+202A-U+202E, U+2066-U+2069) that can reorder what an analyst sees. ``#``
  itself is not escaped: ``#012`` in a record is either a neutralised line
  feed or that literal text, never a line break. JSON escapes these as
  ``\uXXXX`` instead, so JSON lines are lossless.
* Each field is cut to its limit in bytes *as written* (after escaping),
  never inside an escape, and a cut field ends with ``…``.

Syslog facility: 13, "log audit" in RFC 5424 table 1, the facility meant for
audit records; pass ``facility=16`` (local0) if the receiver routes on local
facilities. Severity: critical 2, warning 4, info 6. Structured data uses
SD-IDs ``rampart@32473`` and ``details@32473``; 32473 is the enterprise number
RFC 5612 reserves for documentation examples. MSG is UTF-8 and starts with
the BOM (RFC 5424 section 6.4). On a syslog channel CEF and JSON-lines
records travel as the MSG of an RFC 5424 message (:func:`syslog_record`),
never bare in the RFC 6587 frame.

CEF header fields are constants of the event's class (vendor, product,
version, ``<source>:<kind>``, the kind as Name, severity): nothing a person
or a device wrote reaches the header, where common parsers (pycef) split on
``=``. Such text goes to escaped extensions only, each within its length in
the CEF key dictionary (``dvchost`` 100, ``externalId`` 40, ``act`` 63,
``msg`` 1023, ``cs1``-``cs6`` 4000), cut with ``…`` when longer.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from rampart import __version__

from .events import MAX_TIME, Event, Scalar

ExportFormat = Literal["cef", "syslog", "jsonl"]
EXPORT_FORMATS: Final[tuple[ExportFormat, ...]] = ("cef", "syslog", "jsonl")

#: Upper bound of one record in bytes with the default limits (see the module docstring).
MAX_RECORD: Final = 8192

#: RFC 5424 section 6.4: a UTF-8 MSG starts with the byte order mark.
BOM: Final = "\ufeff"

#: RFC 5424 facility 13, "log audit".
FACILITY_LOG_AUDIT: Final = 13
SD_ID: Final = "rampart@32473"
DETAILS_SD_ID: Final = "details@32473"

CEF_VENDOR: Final = "Rampart"
CEF_PRODUCT: Final = "Rampart"
CEF_SEVERITY: Final[Mapping[str, int]] = {"info": 3, "warning": 6, "critical": 9}
#: Lengths of the CEF key dictionary for the keys Rampart writes.
CEF_DVCHOST_MAX: Final = 100
CEF_EXTERNAL_ID_MAX: Final = 40
SYSLOG_SEVERITY: Final[Mapping[str, int]] = {"critical": 2, "warning": 4, "info": 6}


@dataclass(frozen=True, slots=True)
class FormatLimits:
    """Bytes of UTF-8 per field as written (escapes included), and entries of ``details``.

    ``kind`` is CEF's limit for ``act``; ``subject`` CEF's limit for the event
    name; ``detail_key`` RFC 5424's limit for a PARAM-NAME; ``details`` bounds
    all detail entries of one record together.
    """

    field: int = 255
    kind: int = 63
    subject: int = 512
    detail_key: int = 32
    detail_value: int = 512
    detail_count: int = 32
    details: int = 3000

    def __post_init__(self) -> None:
        if min(self.field, self.kind, self.subject, self.detail_key, self.detail_value,
               self.details) < 16 or self.detail_count < 1:
            raise ValueError("format limits below 16 bytes (or no details at all) are refused")


DEFAULT_LIMITS: Final = FormatLimits()

# -- neutralising and escaping ------------------------------------------------------

_BIDI: Final = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
#: Characters no record carries raw (see the module docstring).
_UNSAFE: Final = "\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff\ud800-\udfff" + _BIDI
_ELLIPSIS: Final = "…"


def _code(cp: int) -> str:
    return f"#{cp:03o}" if cp < 0x100 else f"#u{cp:04x}"


def _utf8_len(cp: int) -> int:
    return 1 if cp < 0x80 else 2 if cp < 0x800 else 3 if cp < 0x10000 else 4


class _Escaper:
    """Escapes one format's specials, neutralises unsafe characters, and cuts to a byte limit."""

    __slots__ = ("_special", "_table")

    def __init__(self, table: Mapping[str, str]) -> None:
        self._table = dict(table)
        specials = "".join(re.escape(c) for c in table)
        self._special = re.compile(f"[{_UNSAFE}{specials}]")

    def _piece(self, ch: str) -> str:
        rep = self._table.get(ch)
        if rep is not None:
            return rep
        return _code(ord(ch)) if self._special.match(ch) else ch

    def __call__(self, text: str, limit: int) -> str:
        head = text[: limit + 1]  # every character is at least one byte: no more can fit
        if self._special.search(head) is None:
            data = head.encode("utf-8")
            if len(data) <= limit and len(head) == len(text):
                return head
            return data[: limit - len(_ELLIPSIS.encode())].decode("utf-8", "ignore") + _ELLIPSIS
        pieces: list[str] = []
        sizes: list[int] = []
        size = 0
        for ch in head:
            piece = self._piece(ch)
            n = len(piece) if piece is not ch else _utf8_len(ord(ch))
            pieces.append(piece)
            sizes.append(n)
            size += n
            if size > limit:
                break
        if size <= limit and len(head) == len(text):
            return "".join(pieces)
        room = limit - len(_ELLIPSIS.encode())
        while pieces and size > room:
            pieces.pop()
            size -= sizes.pop()
        return "".join(pieces) + _ELLIPSIS


_PLAIN: Final = _Escaper({})
_CEF_EXT: Final = _Escaper({"\\": "\\\\", "=": "\\=", "\n": "\\n", "\r": "\\r"})
_SD_VALUE: Final = _Escaper({'"': '\\"', "\\": "\\\\", "]": "\\]"})


def one_line(text: str, limit: int = 200) -> str:
    """``text`` with no character that could break a line or mislead a reader, at most ``limit`` bytes."""
    return _PLAIN(text, max(limit, 8))


def _rfc3339(t: float) -> str | None:
    """RFC 3339 UTC with microseconds (RFC 5424 TIMESTAMP), or None for a time it cannot show."""
    if not (isinstance(t, int | float) and math.isfinite(t) and 0.0 <= t <= MAX_TIME):
        return None
    dt = datetime.fromtimestamp(t, tz=UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{dt.microsecond:06d}Z"


def _scalar_text(value: Scalar) -> str:
    """A details value as text (JSON spelling for everything but strings)."""
    if isinstance(value, str):
        return value
    return json.dumps(_json_scalar(value, 64), ensure_ascii=False)


# -- JSON -------------------------------------------------------------------------

_JSON_UNSAFE: Final = re.compile(f"[\x7f-\x9f\u2028\u2029\ufeff\ud800-\udfff{_BIDI}]")
_JSON_SHORT: Final = frozenset('"\\\b\f\n\r\t')


def _json_cost(ch: str) -> int:
    cp = ord(ch)
    if ch in _JSON_SHORT:
        return 2
    if cp < 0x20 or _JSON_UNSAFE.match(ch):
        return 6
    return _utf8_len(cp)


def _json_clip(text: str, limit: int) -> str:
    """``text`` cut so that its JSON string form (quotes excluded) is at most ``limit`` bytes."""
    if len(text) * 6 <= limit:  # no character costs more than six bytes in JSON
        return text
    room = limit - len(_ELLIPSIS.encode())
    size = cut = 0
    for i, ch in enumerate(text):  # ends within limit + 1 characters: each costs one byte or more
        size += _json_cost(ch)
        if size <= room:
            cut = i + 1
        if size > limit:
            return text[:cut] + _ELLIPSIS
    return text


def _json_scalar(value: Any, limit: int) -> Scalar:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else "out-of-range-integer"
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str):
        return _json_clip(value, limit)
    return f"<{type(value).__name__}>"


def _dumps(doc: Any) -> str:
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    # Outside strings JSON text holds none of these, so escaping them keeps the JSON valid.
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _opt(value: str | None, limit: int) -> str | None:
    return None if value is None else _json_clip(value, limit)


def _bounded_details(
    details: Mapping[str, Scalar], limits: FormatLimits, render: Callable[[str, Scalar], str],
    budget: int,
) -> tuple[list[tuple[str, Scalar, str]], int]:
    """The detail entries whose rendering fits ``budget`` bytes (one separator each), and how many did not.

    Entries are kept in order; the first that does not fit ends the list, so
    what is shown is always a prefix of the details.
    """
    out: list[tuple[str, Scalar, str]] = []
    used = 0
    for n, (key, value) in enumerate(details.items()):
        if n >= limits.detail_count:
            break
        k = key if isinstance(key, str) else str(key)
        piece = render(k, value)
        cost = len(piece.encode("utf-8")) + 1
        if used + cost > budget:
            break
        out.append((k, value, piece))
        used += cost
    return out, len(details) - len(out)


def _json_details(event: Event, limits: FormatLimits, budget: int) -> tuple[dict[str, Scalar], int]:
    """The details that fit ``budget`` bytes of compact JSON (braces included), and how many did not."""
    def item(key: str, value: Scalar) -> tuple[str, Scalar]:
        return _json_clip(key, limits.detail_key), _json_scalar(value, limits.detail_value)

    def render(key: str, value: Scalar) -> str:
        return _dumps(dict([item(key, value)]))[1:-1]

    kept, dropped = _bounded_details(event.details, limits, render, budget - 2)
    return dict(item(k, v) for k, v, _ in kept), dropped


def to_jsonl(event: Event, *, limits: FormatLimits = DEFAULT_LIMITS) -> str:
    """One JSON object on one line (no trailing newline). Lossless within the limits.

    Keys: ``timestamp`` (RFC 3339 UTC), ``time`` (epoch seconds), ``source``,
    ``id``, ``index``, ``tenant_id``, ``tenant``, ``kind``, ``severity``,
    ``actor``, ``subject``, ``details``, and ``details_dropped`` when entries
    had to be left out.
    """
    f = limits.field
    details, dropped = _json_details(event, limits, limits.details)
    doc: dict[str, Any] = {
        "timestamp": _rfc3339(event.time),
        "time": _json_scalar(event.time, 32),
        "source": _json_clip(event.source, 16),
        "id": _json_clip(event.id, f),
        "index": _json_scalar(event.index, 32),
        "tenant_id": _opt(event.tenant_id, f),
        "tenant": _opt(event.tenant_name, f),
        "kind": _json_clip(event.kind, limits.kind),
        "severity": _json_clip(event.severity, 16),
        "actor": _json_clip(event.actor, f),
        "subject": _json_clip(event.subject, limits.subject),
        "details": details,
    }
    if dropped:
        doc["details_dropped"] = dropped
    return _dumps(doc)


# -- CEF --------------------------------------------------------------------------


_NOT_CEF_NAME: Final = re.compile(r"[^A-Za-z0-9._:-]")


def _cef_class(text: str, limit: int) -> str:
    """A header field made of the event's class: letters, digits and ``._:-`` only, never empty.

    Cut to ``limit`` bytes with ``…`` when longer (the rest is ASCII).
    """
    if len(text) > limit:
        return _NOT_CEF_NAME.sub("_", text[: limit - len(_ELLIPSIS.encode())]) + _ELLIPSIS
    return _NOT_CEF_NAME.sub("_", text) or "-"


def to_cef(event: Event, *, hostname: str | None = None, limits: FormatLimits = DEFAULT_LIMITS) -> str:
    """One ArcSight CEF:0 record (no syslog prefix, no trailing newline).

    Header: ``CEF:0|Rampart|Rampart|<version>|<source>:<kind>|<kind>|<0-10>``
    (info 3, warning 6, critical 9): Device Event Class ID and Name are
    constants of the event's class, reduced to ``A-Z a-z 0-9 . _ : -`` (any
    other character becomes ``_``); the subject, which can quote device
    text, is in ``msg`` only. Extensions: ``rt`` (epoch milliseconds),
    ``cat`` (``rampart/<source>``), ``act`` (kind), ``suser`` (actor),
    ``cs1``/``cs1Label=tenant`` (tenant name, else id), ``cs2``/``cs2Label=tenantId``,
    ``externalId`` (event id), ``cn1``/``cn1Label=logIndex`` (audit entries),
    ``dvchost`` (``hostname``, when given, at most 100 bytes), ``msg`` (subject) and
    ``cs4``/``cs4Label=details`` (the details as a JSON object).
    """
    f = limits.field
    header = "|".join((
        "CEF:0", CEF_VENDOR, CEF_PRODUCT, _cef_class(__version__, 31),
        _cef_class(f"{event.source}:{event.kind}", limits.kind + 8),
        _cef_class(event.kind, limits.kind),
        str(CEF_SEVERITY.get(event.severity, 5)),
    ))
    ext: list[tuple[str, str]] = []
    if _rfc3339(event.time) is not None:
        ext.append(("rt", str(round(event.time * 1000))))
    ext.append(("cat", _CEF_EXT(f"rampart/{event.source}", 32)))
    ext.append(("act", _CEF_EXT(event.kind, limits.kind)))
    ext.append(("suser", _CEF_EXT(event.actor, f)))
    tenant = event.tenant_name or event.tenant_id
    if tenant:
        ext += [("cs1Label", "tenant"), ("cs1", _CEF_EXT(tenant, f))]
    if event.tenant_id:
        ext += [("cs2Label", "tenantId"), ("cs2", _CEF_EXT(event.tenant_id, f))]
    ext.append(("externalId", _CEF_EXT(event.id, CEF_EXTERNAL_ID_MAX)))
    if isinstance(event.index, int) and 0 <= event.index < 2**63:
        ext += [("cn1Label", "logIndex"), ("cn1", str(event.index))]
    if hostname:
        ext.append(("dvchost", _CEF_EXT(hostname, CEF_DVCHOST_MAX)))
    ext.append(("msg", _CEF_EXT(event.subject, limits.subject)))

    def render(key: str, value: Scalar) -> str:
        text = _dumps({_json_clip(key, limits.detail_key): _json_scalar(value, limits.detail_value)})
        # Large enough never to cut: a cut would leave the JSON in cs4 unparseable.
        return _CEF_EXT(text[1:-1], 2 * (limits.detail_key + limits.detail_value) + 16)

    kept, dropped = _bounded_details(event.details, limits, render, limits.details - 2)
    if kept or dropped:
        ext += [("cs4Label", "details"), ("cs4", "{" + ",".join(p for _, _, p in kept) + "}")]
    if dropped:
        ext += [("cn2Label", "detailsDropped"), ("cn2", str(dropped))]
    return header + "|" + " ".join(f"{k}={v}" for k, v in ext if v)


# -- RFC 5424 syslog ----------------------------------------------------------------

_PRINTUSASCII: Final = re.compile(r"[\x21-\x7e]+")
_NOT_SD_NAME: Final = re.compile(r'[^\x21-\x7e]|[="\]]')


def _header_field(value: str, limit: int, what: str) -> str:
    """An RFC 5424 header field set by the operator: PRINTUSASCII, bounded; empty is NILVALUE."""
    if value == "":
        return "-"
    if len(value) > limit or not _PRINTUSASCII.fullmatch(value):
        raise ValueError(f"syslog {what} must be 1 to {limit} printable ASCII characters")
    return value


def _sd_name(text: str, limit: int) -> str:
    """A PARAM-NAME (or MSGID): printable ASCII without ``= ] "`` and space, at most 32."""
    return _NOT_SD_NAME.sub("_", text[: min(limit, 32)]) or "_"


def to_syslog(event: Event, *, hostname: str, app_name: str = "rampart",
              facility: int = FACILITY_LOG_AUDIT, limits: FormatLimits = DEFAULT_LIMITS) -> str:
    """One RFC 5424 message (no framing, no trailing newline).

    ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID [rampart@32473 ...][details@32473 ...] MSG``:
    MSGID is the kind (printable ASCII, 32 at most), the rampart element holds
    ``source id kind severity actor tenant tenantId index``, the details
    element one parameter per detail, and MSG the subject as UTF-8 after the
    BOM (section 6.4; no MSG at all when the subject is empty).
    ``hostname`` and ``app_name`` are the operator's and must already be valid
    header fields (ValueError otherwise); event content never raises.
    """
    head = _syslog_head(event, hostname=hostname, app_name=app_name, facility=facility)

    f = limits.field
    params = [("source", _SD_VALUE(event.source, 16)), ("id", _SD_VALUE(event.id, f)),
              ("kind", _SD_VALUE(event.kind, limits.kind)), ("severity", _SD_VALUE(event.severity, 16)),
              ("actor", _SD_VALUE(event.actor, f))]
    tenant = event.tenant_name or event.tenant_id
    if tenant:
        params.append(("tenant", _SD_VALUE(tenant, f)))
    if event.tenant_id:
        params.append(("tenantId", _SD_VALUE(event.tenant_id, f)))
    if isinstance(event.index, int) and 0 <= event.index < 2**63:
        params.append(("index", str(event.index)))
    sd = "[" + SD_ID + "".join(f' {k}="{v}"' for k, v in params) + "]"

    def render(key: str, value: Scalar) -> str:
        name = _sd_name(key, limits.detail_key)
        return f'{name}="{_SD_VALUE(_scalar_text(value), limits.detail_value)}"'

    kept, dropped = _bounded_details(event.details, limits, render, limits.details - 40)
    pieces = [p for _, _, p in kept]
    if dropped:
        pieces.append(f'dropped="{dropped}"')
    if pieces:
        sd += "[" + DETAILS_SD_ID + " " + " ".join(pieces) + "]"
    msg = _PLAIN(event.subject, limits.subject)
    return head + sd + (" " + BOM + msg if msg else "")


def _syslog_head(event: Event, *, hostname: str, app_name: str, facility: int) -> str:
    """``<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID `` (ValueError for invalid operator fields)."""
    if not (isinstance(facility, int) and 0 <= facility <= 23):
        raise ValueError("syslog facility must be 0 to 23")
    host = _header_field(hostname, 255, "hostname")
    app = _header_field(app_name, 48, "app name")
    pri = facility * 8 + SYSLOG_SEVERITY.get(event.severity, 5)
    msgid = _sd_name(event.kind, 32) if event.kind else "-"
    return f"<{pri}>1 {_rfc3339(event.time) or '-'} {host} {app} - {msgid} "


def syslog_record(event: Event, fmt: ExportFormat, *, hostname: str, app_name: str = "rampart",
                  facility: int = FACILITY_LOG_AUDIT, limits: FormatLimits = DEFAULT_LIMITS) -> str:
    """The RFC 5424 message a syslog channel carries for ``event`` in ``fmt`` (no framing).

    ``syslog`` is :func:`to_syslog`. ``cef`` and ``jsonl`` are the RFC 5424
    header of :func:`to_syslog` (same PRI, TIMESTAMP, HOSTNAME, APP-NAME and
    MSGID), no structured data, and the :func:`to_cef` or :func:`to_jsonl`
    record as MSG after the BOM: what SIEM connectors expect of CEF over
    syslog, and what a receiver parses without falling back to legacy rules.
    """
    if fmt == "syslog":
        return to_syslog(event, hostname=hostname, app_name=app_name, facility=facility, limits=limits)
    head = _syslog_head(event, hostname=hostname, app_name=app_name, facility=facility)
    if fmt == "cef":
        body = to_cef(event, hostname=hostname or None, limits=limits)
    elif fmt == "jsonl":
        body = to_jsonl(event, limits=limits)
    else:
        raise ValueError(f"unknown export format {fmt!r}")
    return head + "- " + BOM + body


def octet_frame(message: str | bytes) -> bytes:
    """RFC 6587 section 3.4.1 octet counting: ``MSG-LEN SP SYSLOG-MSG`` for syslog over TCP/TLS."""
    data = message.encode("utf-8", "replace") if isinstance(message, str) else message
    return str(len(data)).encode("ascii") + b" " + data


# -- for people and for exports -------------------------------------------------------


def render_email(event: Event, *, limits: FormatLimits = DEFAULT_LIMITS) -> tuple[str, str]:
    """A one-line subject and a plain-text body for a notification e-mail.

    Every value is neutralised (no value can add a line or a header) and
    bounded; the body has one ``key: value`` line per detail. In the subject,
    ``=?`` becomes ``=#077``: an RFC 2047 encoded word in a header value is
    decoded by mail software and could carry a line break (see
    :func:`~.email.send_email`, which refuses subjects holding ``=?``).
    """
    tenant = event.tenant_name or event.tenant_id or "MSP-wide"
    subject = f"[Rampart {event.severity}] {tenant}: {event.subject}".replace("=?", "=#077")
    subject = one_line(subject, 200)
    f = limits.field
    lines = [
        f"Rampart {one_line(event.source, 16)} ({one_line(event.severity, 16)})",
        "",
        f"Subject:  {_PLAIN(event.subject, limits.subject)}",
        f"Tenant:   {_PLAIN(tenant, f)}" + (f" ({_PLAIN(event.tenant_id, f)})"
                                              if event.tenant_name and event.tenant_id else ""),
        f"Kind:     {_PLAIN(event.kind, limits.kind)}",
        f"Time:     {_rfc3339(event.time) or '-'}",
        f"Actor:    {_PLAIN(event.actor, f)}",
        f"Event:    {_PLAIN(event.id, f)}" + (f" (log index {event.index})"
                                             if isinstance(event.index, int) else ""),
    ]

    def render(key: str, value: Scalar) -> str:
        return f"  {_PLAIN(key, limits.detail_key)}: {_PLAIN(_scalar_text(value), limits.detail_value)}"

    kept, dropped = _bounded_details(event.details, limits, render, limits.details)
    if kept:
        lines += ["", "Details:", *(p for _, _, p in kept)]
    if dropped:
        lines.append(f"  ({dropped} more not shown)")
    return subject, "\n".join(lines) + "\n"


def format_event(event: Event, fmt: ExportFormat, *, hostname: str,
                 limits: FormatLimits = DEFAULT_LIMITS) -> str:
    """One record in ``fmt`` (for ``rampart events export --format``)."""
    if fmt == "cef":
        return to_cef(event, hostname=hostname or None, limits=limits)
    if fmt == "syslog":
        return to_syslog(event, hostname=hostname, limits=limits)
    if fmt == "jsonl":
        return to_jsonl(event, limits=limits)
    raise ValueError(f"unknown export format {fmt!r}")


def format_events(events: Iterable[Event], fmt: ExportFormat, *, hostname: str,
                  limits: FormatLimits = DEFAULT_LIMITS) -> Iterable[str]:
    """Records of ``events`` in ``fmt``, one per event, each without its newline (checked eagerly)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}")
    if fmt == "syslog":
        _header_field(hostname, 255, "hostname")
    return (format_event(event, fmt, hostname=hostname, limits=limits) for event in events)
