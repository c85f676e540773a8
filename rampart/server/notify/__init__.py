"""Alert delivery and SIEM export (MISSION G2: events to SIEM tooling; C3: incidents to a SOC).

Layers, pure first:

* :mod:`.events`: :class:`Event`, the neutral form of one alert or one audit
  entry, built by :func:`from_alert` and :func:`from_audit` (envelopes are
  never decoded: their events carry the entry's SHA-256).
* :mod:`.formats`: pure formatters, one bounded line per event, safe against
  log injection: :func:`to_jsonl`, :func:`to_cef`, :func:`to_syslog`
  (RFC 5424), :func:`octet_frame` (RFC 6587), :func:`render_email`.
* :mod:`.outbox`: :class:`DeliveryResult` and the :class:`RetryPolicy` of
  failed deliveries.
* Senders, which never raise: :func:`send_webhook` (signed JSON POST),
  :func:`send_email` (SMTP with STARTTLS), :class:`SyslogForwarder`
  (RFC 5424 over TCP or TLS with a bounded queue).

Errors::

    ValueError          misuse by the caller or the operator: invalid settings
                        (SmtpSettings, SyslogForwarder, a webhook URL given to
                        check_webhook_url, a syslog host name), invalid Event
    DeliveryResult      every failure to deliver: ok=False, a one-line detail
                        without secrets, and whether a retry can help

Each module's docstring states its security rules.
"""

from .email import SmtpSettings, send_email
from .events import (
    AlertLike,
    AuditEntryLike,
    Event,
    EventLimits,
    Scalar,
    Severity,
    Source,
    from_alert,
    from_audit,
)
from .formats import (
    EXPORT_FORMATS,
    MAX_RECORD,
    ExportFormat,
    FormatLimits,
    format_event,
    format_events,
    octet_frame,
    one_line,
    render_email,
    to_cef,
    to_jsonl,
    to_syslog,
)
from .outbox import DeliveryResult, RetryPolicy
from .syslog import ForwarderStats, SyslogForwarder
from .webhook import check_webhook_url, send_webhook, sign, verify_signature

__all__ = [
    "EXPORT_FORMATS", "MAX_RECORD", "AlertLike", "AuditEntryLike", "DeliveryResult", "Event",
    "EventLimits", "ExportFormat", "FormatLimits", "ForwarderStats", "RetryPolicy", "Scalar",
    "Severity", "SmtpSettings", "Source", "SyslogForwarder", "check_webhook_url", "format_event",
    "format_events", "from_alert", "from_audit", "octet_frame", "one_line", "render_email",
    "send_email", "send_webhook", "sign", "to_cef", "to_jsonl", "to_syslog", "verify_signature",
]
