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
  :func:`send_email` (SMTP with STARTTLS), and the SIEM channels
  (:mod:`.channel`), which hold no queue and report how many records the
  receiver took: :class:`SyslogForwarder` (RFC 5424 over TCP, RFC 6587, or
  TLS, RFC 5425) and :class:`RelpForwarder` (RELP, each record acknowledged),
  with :class:`TlsSettings` (CA file or pin, hostname check, client
  certificate) from :mod:`.tlsconfig`.

Errors::

    ValueError          misuse by the caller or the operator: invalid settings
                        (SmtpSettings, TlsSettings, the channels, a webhook URL
                        given to check_webhook_url, a syslog host name), invalid
                        Event
      KeyFileError      a client key file others can read, or that is unusable
    DeliveryResult      every failure to deliver: ok=False, a one-line detail
                        without secrets, and whether a retry can help
    Delivered           a channel's report: records taken, and why not the rest

Each module's docstring states its security rules.
"""

from .channel import Channel, ChannelStats, Delivered
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
    syslog_record,
    to_cef,
    to_jsonl,
    to_syslog,
)
from .outbox import DeliveryResult, RetryPolicy
from .relp import RelpForwarder
from .syslog import SyslogForwarder
from .tlsconfig import KeyFileError, TlsSettings
from .webhook import check_webhook_url, send_webhook, sign, verify_signature

__all__ = [
    "EXPORT_FORMATS", "MAX_RECORD", "AlertLike", "AuditEntryLike", "Channel", "ChannelStats",
    "Delivered", "DeliveryResult", "Event", "EventLimits", "ExportFormat", "FormatLimits",
    "KeyFileError", "RelpForwarder", "RetryPolicy", "Scalar", "Severity", "SmtpSettings", "Source",
    "SyslogForwarder", "TlsSettings", "check_webhook_url", "format_event", "format_events",
    "from_alert", "from_audit", "octet_frame", "one_line", "render_email", "send_email",
    "send_webhook", "sign", "syslog_record", "to_cef", "to_jsonl", "to_syslog", "verify_signature",
]
