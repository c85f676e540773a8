"""Alert e-mail over SMTP (smtplib). :func:`send_email` never raises.

Security rules:

* Header injection is impossible: a subject or address holding CR, LF or any
  other control character is refused, not cleaned, before a message exists.
  So is one holding ``=?``, the start of an RFC 2047 encoded word: the
  standard library decodes encoded words when a header is set and, without
  the fix for CVE-2024-6923 (Python 3.11.10), writes a decoded CR LF out as a
  real line break: ``=?utf-8?q?x=0D=0ABcc:_...?=`` would add a header.
  Addresses are bare ASCII ``local@domain`` (no display name, comment, comma
  or angle bracket). The standard library's SMTP policy, which also refuses
  line breaks in header values, is a second line. Headers are folded only
  past 998 characters, so the bounded subject always stays on one line.
* TLS: STARTTLS (port 587) or implicit TLS (port 465) with the certificate
  and host name verified (system trust store, or ``tls`` for a private CA).
  Plain SMTP is allowed only to a loopback IP literal: a local MTA. When
  STARTTLS is configured and the server does not offer it, nothing is sent:
  there is no downgrade to plain text.
* The password is not part of the settings: ``password_env`` names the
  environment variable read at sending time. It is never logged or returned;
  results carry only the SMTP reply code and the server's one-line text.
* Bounds: 50 recipients, a 255-character subject, a 256 KiB body, and
  ``timeout`` for each network operation.
* The body is plain UTF-8 text; control characters other than line feed and
  tab are written as ``#ooo`` and line endings are normalised.
  ``Auto-Submitted: auto-generated`` (RFC 3834) keeps auto-responders quiet.
"""

from __future__ import annotations

import ipaddress
import os
import re
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, make_msgid
from typing import Final

from .outbox import DeliveryResult

#: CRLF line ends; fold only past RFC 5322's hard limit, so bounded headers stay on one line.
_POLICY: Final = SMTP_POLICY.clone(max_line_length=998)
MAX_RECIPIENTS: Final = 50
MAX_SUBJECT: Final = 255
MAX_BODY: Final = 256 * 1024

_ATOM: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDRESS: Final = re.compile(rf"(?=[^@]{{1,64}}@)({_ATOM}(?:\.{_ATOM})*)@({_LABEL}(?:\.{_LABEL})+)")
_HOST: Final = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_BODY_CONTROL: Final = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
#: Opens an RFC 2047 encoded word, which the email package decodes in header values.
_ENCODED_WORD: Final = "=?"


def _valid_address(addr: str) -> bool:
    return (isinstance(addr, str) and len(addr) <= 254 and _ENCODED_WORD not in addr
            and _ADDRESS.fullmatch(addr) is not None)


def _loopback_literal(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """Where and how alert e-mail is sent. Invalid settings raise ValueError when built.

    ``starttls`` (the default, port 587) and ``implicit_tls`` (port 465) are
    exclusive; with neither, ``host`` must be a loopback IP address.
    ``username`` needs ``password_env``, the name of the environment variable
    holding the password. ``helo_name`` is sent in EHLO (default: this host's
    fully qualified name).
    """

    host: str
    from_addr: str
    port: int = 587
    starttls: bool = True
    implicit_tls: bool = False
    username: str | None = None
    password_env: str | None = None
    timeout: float = 10.0
    tls: ssl.SSLContext | None = None
    helo_name: str | None = None

    def __post_init__(self) -> None:
        if not (_HOST.fullmatch(self.host) or _loopback_literal(self.host) or self._ip_literal()):
            raise ValueError("SMTP host must be a host name or an IP address")
        if not (isinstance(self.port, int) and 1 <= self.port <= 65535):
            raise ValueError("SMTP port must be 1 to 65535")
        if self.starttls and self.implicit_tls:
            raise ValueError("choose STARTTLS or implicit TLS, not both")
        if not (self.starttls or self.implicit_tls) and not _loopback_literal(self.host):
            raise ValueError("SMTP without TLS is allowed only to a loopback IP address")
        if not _valid_address(self.from_addr):
            raise ValueError("the From address must be a plain ASCII local@domain address")
        if self.username is not None:
            if not self.username or len(self.username) > 256 or _CONTROL.search(self.username):
                raise ValueError("SMTP user name must be 1 to 256 characters without control characters")
            if self.password_env is None or not _ENV_NAME.fullmatch(self.password_env):
                raise ValueError("an SMTP user name needs password_env, an environment variable name")
        elif self.password_env is not None:
            raise ValueError("password_env without a user name")
        if not (0 < self.timeout <= 300):
            raise ValueError("SMTP timeout must be in (0, 300] seconds")
        if self.helo_name is not None and not _HOST.fullmatch(self.helo_name):
            raise ValueError("helo_name must be a host name")

    def _ip_literal(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


def _message_problem(to: Sequence[str], subject: str, body: str) -> str | None:
    """Why the message may not be sent, or None. Nothing here echoes the input."""
    if isinstance(to, str) or not to:
        return "no recipients"
    if len(to) > MAX_RECIPIENTS:
        return f"more than {MAX_RECIPIENTS} recipients"
    for n, addr in enumerate(to, 1):
        if not _valid_address(addr):
            return f"recipient {n} is not a plain local@domain address"
    if not isinstance(subject, str) or _CONTROL.search(subject):
        return "the subject holds a line break or control character"
    if _ENCODED_WORD in subject:
        return "the subject holds =? (RFC 2047 encoded-word syntax)"
    if len(subject) > MAX_SUBJECT:
        return f"the subject is longer than {MAX_SUBJECT} characters"
    if not isinstance(body, str) or len(body.encode("utf-8", "replace")) > MAX_BODY:
        return f"the body is larger than {MAX_BODY} bytes"
    return None


def _clean_body(body: str) -> str:
    text = body.replace("\r\n", "\n").replace("\r", "\n")
    return _BODY_CONTROL.sub(lambda m: f"#{ord(m.group()):03o}" if ord(m.group()) < 0x100
                             else f"#u{ord(m.group()):04x}", text)


def _build(smtp: SmtpSettings, to: Sequence[str], subject: str, body: str, now: float | None) -> EmailMessage:
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = smtp.from_addr
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Date"] = formatdate(now, usegmt=True)
    msg["Message-ID"] = make_msgid(domain=smtp.from_addr.rsplit("@", 1)[1])
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(_clean_body(body), charset="utf-8")
    return msg


def _reply(exc: smtplib.SMTPResponseException) -> str:
    raw = exc.smtp_error
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return f"{exc.smtp_code} {text}"


def _login(client: smtplib.SMTP, username: str, password: str, where: str) -> DeliveryResult | None:
    """One AUTH attempt with PLAIN or LOGIN (not smtplib's login(), which tries every mechanism
    in turn and so counts several failures against the account at the server)."""
    offered = client.esmtp_features.get("auth", "").upper().split()
    for mechanism, respond in (("PLAIN", client.auth_plain), ("LOGIN", client.auth_login)):
        if mechanism in offered:
            client.user, client.password = username, password
            try:
                client.auth(mechanism, respond, initial_response_ok=True)
            finally:
                client.password = ""
            return None
    return DeliveryResult.failure(f"{where} offers neither AUTH PLAIN nor AUTH LOGIN", retryable=False)


def send_email(smtp: SmtpSettings, to: Sequence[str], subject: str, body: str, *,
               now: float | None = None) -> DeliveryResult:
    """Send one plain-text message to ``to``; never raises.

    Ok only if every recipient was accepted. ``now`` sets the Date header
    (default: the clock).
    """
    problem = _message_problem(to, subject, body)
    if problem is not None:
        return DeliveryResult.failure(f"refused: {problem}", retryable=False)
    to = list(dict.fromkeys(to))
    password = None
    if smtp.username is not None and smtp.password_env is not None:
        password = os.environ.get(smtp.password_env)
        if not password:
            return DeliveryResult.failure(
                f"refused: environment variable {smtp.password_env} (SMTP password) is not set",
                retryable=False)
    try:
        msg = _build(smtp, to, subject, body, now)
    except (ValueError, TypeError) as exc:
        return DeliveryResult.failure(f"refused: {type(exc).__name__} building the message", retryable=False)

    where = f"{smtp.host}:{smtp.port}"
    context = smtp.tls if smtp.tls is not None else ssl.create_default_context()
    stage = "connect"
    try:
        client: smtplib.SMTP
        if smtp.implicit_tls:
            client = smtplib.SMTP_SSL(smtp.host, smtp.port, local_hostname=smtp.helo_name,
                                      timeout=smtp.timeout, context=context)
        else:
            client = smtplib.SMTP(smtp.host, smtp.port, local_hostname=smtp.helo_name, timeout=smtp.timeout)
        with client:
            stage = "EHLO"
            client.ehlo()
            if smtp.starttls:
                stage = "STARTTLS"
                if not client.has_extn("starttls"):
                    return DeliveryResult.failure(f"{where} does not offer STARTTLS; nothing was sent",
                                                  retryable=False)
                client.starttls(context=context)
                client.ehlo()
            if smtp.username is not None and password is not None:
                stage = "AUTH"
                failed = _login(client, smtp.username, password, where)
                if failed is not None:
                    return failed
            stage = "sending"
            refused = client.send_message(msg, from_addr=smtp.from_addr, to_addrs=to)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        return DeliveryResult.failure(f"{where} refused all {len(codes)} recipients",
                                      retryable=all(400 <= c < 500 for c in codes),
                                      status=codes[0] if codes else None)
    except smtplib.SMTPAuthenticationError as exc:
        return DeliveryResult.failure(f"{where} refused the login: {exc.smtp_code}", retryable=False,
                                      status=exc.smtp_code)
    except smtplib.SMTPResponseException as exc:
        return DeliveryResult.failure(f"{where} at {stage}: {_reply(exc)}",
                                      retryable=400 <= exc.smtp_code < 500, status=exc.smtp_code)
    except smtplib.SMTPNotSupportedError:
        return DeliveryResult.failure(f"{where} does not support {stage}", retryable=False)
    except ssl.SSLCertVerificationError as exc:
        return DeliveryResult.failure(f"{where} at {stage}: certificate not trusted: {exc.verify_message}",
                                      retryable=False)
    except (OSError, smtplib.SMTPException) as exc:
        return DeliveryResult.failure(f"{where} at {stage}: {type(exc).__name__}: {exc}", retryable=True)
    except Exception as exc:  # a delivery never breaks its caller
        return DeliveryResult.failure(f"{where} at {stage}: {type(exc).__name__}", retryable=True)
    if refused:
        return DeliveryResult.failure(f"{where} accepted {len(to) - len(refused)} of {len(to)} recipients",
                                      retryable=False, status=250)
    return DeliveryResult.success(f"sent to {len(to)} recipient(s) via {where}", status=250)
