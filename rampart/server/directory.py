"""Directory audit (G3; docs/directory-audit.md, docs/design/directory-audit.md).

The server binds to a tenant's Active Directory or OpenLDAP over LDAPS or
StartTLS with ldap3, reads its accounts and groups, and turns what it finds
(inactive, never logged in, passwords that never expire, disabled or stale
accounts in privileged groups, members of privileged groups, service
accounts with an interactive shell) into findings and alerts like the
agents' ones.

Invariants:

* TLS only, with the server's certificate pinned: a CA certificate (PEM) that
  must validate it, or the SHA-256 of the certificate itself. A plain
  ``ldap://`` URL is accepted only with StartTLS; the pin is checked after
  the handshake and **before** the bind, so a wrong certificate never sees
  the password.
* The bind password is sealed at rest with the data directory's sealing key
  (the TOTP key, ``keys/totp.key``, AES-256-GCM) under its own associated
  data (``rampart/directory-bind/v1/<directory id>``): a copy of the
  database opens nothing, and a sealed value moved to another directory's
  row does not open. The password never reaches a log, an error message,
  an audit entry, a finding or an API answer.
* Directory text (names, descriptions, DNs) is attacker-controlled: it is
  stored as it is and escaped wherever shown (:mod:`rampart.textsafe`).
  What is read is bounded: at most :data:`MAX_ENTRIES` entries, values cut.
* A finding is keyed (directory, kind, DN): an audit opens new ones (with
  an alert for warning and critical ones), updates those still present and
  resolves (with their alerts) those gone. A failed audit changes no
  finding; it records the failure and raises one ``directory-audit-failed``
  alert.
"""

from __future__ import annotations

import calendar
import json
import logging
import re
import ssl
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

from sqlalchemy import Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from rampart import tlspin
from rampart.trust import new_id

from .alerts import AlertSpec, Severity, live_by_key, raise_alert, raise_many, resolve
from .audit import AuditLog
from .db import Store
from .errors import SetupError
from .models import ID, Base
from .totp_store import SESSION_INFO_KEY, TotpKey, open_text, seal_text

log = logging.getLogger("rampart.server.directory")

#: Most entries (accounts plus groups) one audit reads; more is a failed audit, not a partial one.
MAX_ENTRIES = 100_000
#: Longest value kept from a directory attribute (names, descriptions).
MAX_VALUE = 256
CONNECT_TIMEOUT_S = 10  # ldap3 packs these as integers
RECEIVE_TIMEOUT_S = 30
AAD_PREFIX = b"rampart/directory-bind/v1/"

#: Privileged groups by default (common name, compared case-insensitively): AD's built-in ones.
DEFAULT_PRIVILEGED = ("Domain Admins", "Enterprise Admins", "Schema Admins", "Administrators",
                      "Account Operators", "Backup Operators", "Server Operators", "Print Operators",
                      "Group Policy Creator Owners", "DnsAdmins", "Key Admins", "Enterprise Key Admins")
#: userAccountControl flags (MS-ADTS 2.2.16).
UAC_DISABLED = 0x2
UAC_DONT_EXPIRE_PASSWORD = 0x10000
#: Login shells that allow no interactive logon.
NO_LOGIN_SHELLS = frozenset({"nologin", "false", "true", "null", "sync", "halt", "shutdown"})
SERVICE_NAME = re.compile(r"^(svc|srv|service)[-_.]", re.IGNORECASE)
SERVICE_OU = re.compile(r"(^|,)\s*ou=(service accounts|services|service)\s*(,|$)", re.IGNORECASE)

#: What each kind of finding means, and its severity.
KINDS: dict[str, tuple[str, str]] = {
    "inactive": ("warning", "no logon for more than the inactivity limit"),
    "never-logged-in": ("warning", "never logged in (and older than the inactivity limit)"),
    "password-never-expires": ("warning", "its password never expires"),
    "privileged-member": ("info", "member of a privileged group"),
    "privileged-disabled": ("critical", "disabled but still in a privileged group"),
    "privileged-stale": ("critical", "stale (inactive or never logged in) and in a privileged group"),
    "service-interactive": ("warning", "service account with an interactive logon shell"),
}

#: Computers (AD's computer class is a user) are dropped after reading: a filter naming a class the
#: schema lacks (OpenLDAP has no ``computer``) would match nothing at all.
USER_FILTER = "(|(objectClass=person)(objectClass=posixAccount))"
GROUP_FILTER = ("(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=group)"
                "(objectClass=posixGroup))")
USER_ATTRS = ["cn", "uid", "sAMAccountName", "description", "userAccountControl",
              "lastLogonTimestamp", "lastLogon", "pwdLastSuccess", "authTimestamp",
              "whenCreated", "createTimestamp", "servicePrincipalName", "loginShell",
              "pwdAccountLockedTime", "objectClass"]
GROUP_ATTRS = ["cn", "member", "uniqueMember", "memberUid"]


# --- storage ----------------------------------------------------------------------------------

class DirectoryRow(Base):
    """A tenant's directory: where and how to bind (password sealed), what to audit, and when."""

    __tablename__ = "directories"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(String(512))
    starttls: Mapped[bool] = mapped_column(Boolean)
    bind_dn: Mapped[str] = mapped_column(String(512))
    base_dn: Mapped[str] = mapped_column(String(512))
    ca_cert: Mapped[str | None] = mapped_column(Text, nullable=True)
    pin_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    password_sealed: Mapped[str] = mapped_column(Text)
    inactive_days: Mapped[int] = mapped_column(Integer)
    privileged_groups: Mapped[str] = mapped_column(Text)  # JSON list
    every_s: Mapped[int] = mapped_column(Integer)
    next_run_at: Mapped[float] = mapped_column(Float, index=True)
    last_run_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_status: Mapped[str] = mapped_column(String(16))
    last_detail: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)


class DirectoryFinding(Base):
    """One finding of a directory audit: open while audits keep finding it."""

    __tablename__ = "directory_findings"
    directory_id: Mapped[str] = mapped_column(ForeignKey("directories.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    account: Mapped[str] = mapped_column(String(512))
    subject: Mapped[str] = mapped_column(String(300))
    evidence: Mapped[str] = mapped_column(Text)
    first_seen: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)
    resolved_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)


# --- the bind password, sealed -----------------------------------------------------------------

def _key(s: Session) -> TotpKey:
    key = s.info.get(SESSION_INFO_KEY)
    if not isinstance(key, TotpKey):
        raise SetupError("the sealing key is not loaded for this store (totp_store.attach)")
    return key


def seal_password(s: Session, directory_id: str, password: str) -> str:
    """The text to store for ``password``, bound to this directory."""
    return seal_text(_key(s), AAD_PREFIX + directory_id.encode("ascii"), password)


def open_password(s: Session, directory_id: str, stored: str) -> str | None:
    """The password sealed in ``stored`` for this directory, or None if it does not open."""
    return open_text(_key(s), AAD_PREFIX + directory_id.encode("ascii"), stored)


# --- connecting --------------------------------------------------------------------------------

class DirectoryError(Exception):
    """An audit or a test bind failed; the message is one line, safe to show, and holds no secret."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how to bind (no password)."""

    url: str
    starttls: bool
    bind_dn: str
    base_dn: str
    ca_cert: str | None
    pin_sha256: str | None

    @property
    def host_port(self) -> tuple[str, int, bool]:
        """(host, port, LDAPS?) from the URL; DirectoryError if it is not ldaps:// or ldap://."""
        parts = urlsplit(self.url)
        if parts.scheme not in ("ldaps", "ldap") or not parts.hostname:
            raise DirectoryError("the directory URL must be ldaps://HOST[:PORT] or ldap://HOST[:PORT] "
                                 "with StartTLS")
        if parts.path not in ("", "/") or parts.query or parts.username or parts.password:
            raise DirectoryError("the directory URL takes only a host and a port")
        try:
            port = parts.port or (636 if parts.scheme == "ldaps" else 389)
        except ValueError:
            raise DirectoryError("the directory URL has an invalid port") from None
        return parts.hostname, port, parts.scheme == "ldaps"


def check_target(t: Target) -> None:
    """Refuse what could only ever bind without a pinned TLS channel."""
    _, _, ldaps = t.host_port
    if not ldaps and not t.starttls:
        raise DirectoryError("plain LDAP is refused: use ldaps:// or StartTLS (--starttls)")
    if ldaps and t.starttls:
        raise DirectoryError("StartTLS is for ldap:// URLs; an ldaps:// URL is TLS from the start")
    if (t.ca_cert is None) == (t.pin_sha256 is None):
        raise DirectoryError("pin the directory's certificate: give exactly one of a CA certificate "
                             "or the certificate's SHA-256")
    if t.ca_cert is not None and "-----BEGIN CERTIFICATE-----" not in t.ca_cert:
        raise DirectoryError("the CA certificate must be PEM")


def _scrub(text: str, password: str) -> str:
    line = " ".join(str(text).split())[:300]
    return line.replace(password, "[password]") if password else line


def connect(t: Target, password: str) -> Any:
    """An ldap3 connection bound over pinned TLS; DirectoryError (one safe line) otherwise."""
    import ldap3  # type: ignore[import-untyped]

    check_target(t)
    host, port, ldaps = t.host_port
    if t.ca_cert is not None:
        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_data=t.ca_cert,
                        version=ssl.PROTOCOL_TLS_CLIENT)
    else:  # the pin is checked below, before the bind
        tls = ldap3.Tls(validate=ssl.CERT_NONE, version=ssl.PROTOCOL_TLS_CLIENT)
    server = ldap3.Server(host, port=port, use_ssl=ldaps, tls=tls, get_info=ldap3.NONE,
                          connect_timeout=CONNECT_TIMEOUT_S)
    conn = ldap3.Connection(server, user=t.bind_dn, password=password, raise_exceptions=False,
                            receive_timeout=RECEIVE_TIMEOUT_S, auto_bind=ldap3.AUTO_BIND_NONE,
                            read_only=True, check_names=False)
    where = f"{host}:{port}"
    try:
        conn.open()
        if t.starttls and not conn.start_tls():
            raise DirectoryError(f"{where}: StartTLS failed ({_scrub(conn.result, password)})")
        sock = conn.socket
        if not isinstance(sock, ssl.SSLSocket):
            raise DirectoryError(f"{where}: the connection is not TLS")
        der = sock.getpeercert(binary_form=True)
        if t.ca_cert is not None:  # validated against the CA in the handshake; the name is checked here
            from ldap3.core.tls import check_hostname  # type: ignore[import-untyped]

            check_hostname(sock, host, None)
        if t.pin_sha256 is not None and (der is None or tlspin.fingerprint(der) != t.pin_sha256):
            raise DirectoryError(f"{where}: the directory's TLS certificate does not match the pinned "
                                 "SHA-256; nothing was sent")
        if not conn.bind():
            desc = (conn.result or {}).get("description", "refused")
            if desc == "invalidCredentials":
                raise DirectoryError(f"{where}: the bind was refused: wrong bind DN or password "
                                     "(invalidCredentials)")
            raise DirectoryError(f"{where}: the bind was refused ({_scrub(desc, password)})")
    except DirectoryError:
        _close(conn)
        raise
    except Exception as exc:  # LDAPException, OSError, or a broken answer: one safe line
        _close(conn)
        raise DirectoryError(f"{where}: {_scrub(f'{type(exc).__name__}: {exc}', password)}") from None
    return conn


def _close(conn: Any) -> None:
    try:
        conn.unbind()
    except Exception:  # noqa: S110 - closing a broken connection; nothing to report
        pass


# --- reading and judging ----------------------------------------------------------------------

@dataclass
class Account:
    dn: str
    name: str
    description: str = ""
    uac: int | None = None
    disabled: bool = False
    last_logon: float | None = None
    created: float | None = None
    service: bool = False
    shell: str | None = None
    groups: list[str] = field(default_factory=list)

    @property
    def ad(self) -> bool:
        return self.uac is not None


@dataclass(frozen=True, slots=True)
class Found:
    kind: str
    account: str
    subject: str
    evidence: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.account.lower()}"[:512]

    @property
    def severity(self) -> str:
        return KINDS[self.kind][0]


def _values(attrs: dict[str, Any], name: str) -> list[str]:
    for k, v in attrs.items():
        if k.lower() == name.lower():
            vals = v if isinstance(v, list) else [v]
            return [(x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x))[:MAX_VALUE * 8]
                    for x in vals]
    return []


def _first(attrs: dict[str, Any], name: str) -> str | None:
    vals = _values(attrs, name)
    return vals[0] if vals else None


def _filetime(text: str | None) -> float | None:
    """An AD FILETIME (100 ns since 1601) as Unix time; 0 and 'never' values are None."""
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    if value <= 0 or value >= 0x7FFFFFFFFFFFFFFF:
        return None
    return value / 10_000_000 - 11644473600


def _gentime(text: str | None) -> float | None:
    """LDAP GeneralizedTime (``YYYYmmddHHMMSS[.f]Z``) as Unix time, or None."""
    if text is None:
        return None
    m = re.fullmatch(r"(\d{14})(?:[.,]\d+)?Z", text.strip())
    if m is None:
        return None
    try:
        return float(calendar.timegm(time.strptime(m.group(1), "%Y%m%d%H%M%S")))
    except ValueError:
        return None


def _account(dn: str, attrs: dict[str, Any]) -> Account:
    name = (_first(attrs, "sAMAccountName") or _first(attrs, "uid") or _first(attrs, "cn") or dn)
    uac_text = _first(attrs, "userAccountControl")
    uac = int(uac_text) if uac_text is not None and re.fullmatch(r"-?\d{1,12}", uac_text) else None
    logons = [_filetime(_first(attrs, "lastLogonTimestamp")), _filetime(_first(attrs, "lastLogon")),
              _gentime(_first(attrs, "pwdLastSuccess")), _gentime(_first(attrs, "authTimestamp"))]
    known = [x for x in logons if x is not None]
    created = _gentime(_first(attrs, "whenCreated")) or _gentime(_first(attrs, "createTimestamp"))
    disabled = bool(uac is not None and uac & UAC_DISABLED) or bool(_values(attrs, "pwdAccountLockedTime"))
    service = bool(_values(attrs, "servicePrincipalName")) or bool(SERVICE_NAME.match(name)) \
        or bool(SERVICE_OU.search(dn))
    return Account(dn=dn, name=name[:MAX_VALUE], description=(_first(attrs, "description") or "")[:MAX_VALUE],
                   uac=uac, disabled=disabled, last_logon=max(known) if known else None,
                   created=created, service=service, shell=_first(attrs, "loginShell"))


def _interactive(shell: str | None) -> bool:
    if not shell:
        return False
    return shell.rstrip("/").rsplit("/", 1)[-1].lower() not in NO_LOGIN_SHELLS and shell != "/dev/null"


def _privileged(groups: dict[str, tuple[str, set[str]]], wanted: Sequence[str]) -> dict[str, str]:
    """Privileged group DN (lowercase) -> its name, by common name or DN, with nested groups."""
    names = {w.lower() for w in wanted}
    out = {dn: cn for dn, (cn, _) in groups.items() if cn.lower() in names or dn in names}
    # a group that is a member of a privileged group is privileged too (AD nesting)
    changed = True
    while changed:
        changed = False
        for dn, (cn, _) in groups.items():
            parent = next((p for p in out if dn in groups[p][1]), None) if dn not in out else None
            if parent is not None:
                out[dn] = f"{cn} (in {out[parent]})"[:MAX_VALUE]
                changed = True
    return out


def judge(accounts: Sequence[Account], groups: dict[str, tuple[str, set[str]]], *,
          privileged_names: Sequence[str], inactive_days: int, now: float,
          tracks_logons: bool) -> list[Found]:
    """The findings for these accounts and groups (pure).

    ``groups`` maps a group's DN (lowercase) to its name and its members (DNs, lowercase, and
    ``uid:`` + uid for posixGroup members). ``tracks_logons``: the directory records logons
    (AD does; OpenLDAP with lastbind or ppolicy does), so a missing logon time means never.
    """
    cutoff = now - inactive_days * 86400
    privileged = _privileged(groups, privileged_names)
    out: list[Found] = []
    for a in accounts:
        ref = {a.dn.lower(), f"uid:{a.name.lower()}"}
        in_priv = sorted({privileged[g] for g in privileged if groups[g][1] & ref})[:32]
        ev: dict[str, Any] = {"name": a.name, "dn": a.dn}
        if a.description:
            ev["description"] = a.description
        if a.last_logon is not None:
            ev["last_logon"] = int(a.last_logon)
        if a.created is not None:
            ev["created"] = int(a.created)
        inactive = a.last_logon is not None and a.last_logon < cutoff
        never = (a.last_logon is None and (tracks_logons or a.ad)
                 and (a.created is None or a.created < cutoff))
        if not a.disabled:
            if inactive:
                days = int((now - (a.last_logon or now)) // 86400)
                out.append(Found("inactive", a.dn, f"{a.name}: no logon for {days} days "
                                 f"(limit {inactive_days})", {**ev, "days": days}))
            elif never:
                out.append(Found("never-logged-in", a.dn, f"{a.name}: never logged in", ev))
            if a.uac is not None and a.uac & UAC_DONT_EXPIRE_PASSWORD:
                out.append(Found("password-never-expires", a.dn, f"{a.name}: password never expires",
                                 {**ev, "userAccountControl": a.uac}))
            if a.service and _interactive(a.shell):
                out.append(Found("service-interactive", a.dn,
                                 f"{a.name}: service account with logon shell {a.shell}",
                                 {**ev, "shell": a.shell}))
        if in_priv:
            pev = {**ev, "groups": in_priv}
            out.append(Found("privileged-member", a.dn, f"{a.name}: member of {', '.join(in_priv)}", pev))
            if a.disabled:
                out.append(Found("privileged-disabled", a.dn,
                                 f"{a.name}: disabled but still in {', '.join(in_priv)}", pev))
            elif inactive or never:
                out.append(Found("privileged-stale", a.dn,
                                 f"{a.name}: {'inactive' if inactive else 'never logged in'} "
                                 f"but in {', '.join(in_priv)}", pev))
    return out


def _search(conn: Any, base: str, flt: str, attrs: list[str], budget: list[int]) -> Iterator[
        tuple[str, dict[str, Any]]]:
    for entry in conn.extend.standard.paged_search(base, flt, attributes=attrs, paged_size=500,
                                                   generator=True):
        if entry.get("type") != "searchResEntry":
            continue
        budget[0] -= 1
        if budget[0] < 0:
            raise DirectoryError(f"the directory holds more than {MAX_ENTRIES} entries under the base")
        yield str(entry.get("dn", ""))[:512], dict(entry.get("raw_attributes") or {})
    result = conn.result or {}
    if result.get("result", 0) not in (0,):
        raise DirectoryError(f"the search failed ({result.get('description', 'error')})")


def read_directory(conn: Any, base: str) -> tuple[list[Account], dict[str, tuple[str, set[str]]], bool]:
    """Accounts, groups (see :func:`judge`) and whether the directory records logons."""
    budget = [MAX_ENTRIES]
    accounts = [_account(dn, attrs) for dn, attrs in _search(conn, base, USER_FILTER, USER_ATTRS, budget)
                if "computer" not in {c.lower() for c in _values(attrs, "objectClass")}]
    groups: dict[str, tuple[str, set[str]]] = {}
    for dn, attrs in _search(conn, base, GROUP_FILTER, GROUP_ATTRS, budget):
        members = {m.lower() for m in _values(attrs, "member") + _values(attrs, "uniqueMember")}
        members |= {f"uid:{u.lower()}" for u in _values(attrs, "memberUid")}
        groups[dn.lower()] = ((_first(attrs, "cn") or dn)[:MAX_VALUE], members)
    tracks = any(a.last_logon is not None for a in accounts)
    return accounts, groups, tracks


def probe(t: Target, password: str) -> int:
    """Bind and read the base once (for ``directory add``); the number of accounts, or DirectoryError."""
    conn = connect(t, password)
    try:
        accounts, _, _ = read_directory(conn, t.base_dn)
    finally:
        _close(conn)
    return len(accounts)


# --- one audit ---------------------------------------------------------------------------------

def target_of(row: DirectoryRow) -> Target:
    return Target(url=row.url, starttls=row.starttls, bind_dn=row.bind_dn, base_dn=row.base_dn,
                  ca_cert=row.ca_cert, pin_sha256=row.pin_sha256)


@dataclass(frozen=True, slots=True)
class AuditOutcome:
    ok: bool
    detail: str
    accounts: int = 0
    opened: int = 0
    resolved: int = 0
    open_total: int = 0


def _apply(s: Session, row: DirectoryRow, found: Sequence[Found], now: float) -> tuple[int, int, int]:
    """Open, update and resolve the directory's findings and their alerts; (opened, resolved, open)."""
    current = {f.key: f for f in found}
    existing = {f.key: f for f in s.scalars(select(DirectoryFinding).where(
        DirectoryFinding.directory_id == row.id))}
    opened: list[Found] = []
    for key, f in current.items():
        rec = existing.get(key)
        if rec is None:
            s.add(DirectoryFinding(directory_id=row.id, key=key, tenant_id=row.tenant_id, kind=f.kind,
                                   severity=f.severity, account=f.account[:512], subject=f.subject[:300],
                                   evidence=json.dumps(f.evidence), first_seen=now, last_seen=now,
                                   resolved_at=None))
            opened.append(f)
            continue
        if rec.resolved_at is not None:  # back again: a new occurrence
            rec.resolved_at = None
            rec.first_seen = now
            opened.append(f)
        rec.last_seen = now
        rec.subject = f.subject[:300]
        rec.evidence = json.dumps(f.evidence)
    gone = [k for k, rec in existing.items() if k not in current and rec.resolved_at is None]
    if gone:
        for i in range(0, len(gone), 500):
            s.execute(update(DirectoryFinding).where(
                DirectoryFinding.directory_id == row.id,
                DirectoryFinding.key.in_(gone[i:i + 500])).values(resolved_at=now))
        keys = [_alert_key(row, k) for k in gone]
        for alert in live_by_key(s, row.tenant_id, keys).values():
            resolve(alert, f"directory:{row.name}", now)
    specs = [AlertSpec(kind=f"directory-{f.kind}", severity=cast(Severity, f.severity),
                       dedup=f"{row.id}:{f.key}", subject=f"directory {row.name}: {f.subject}"[:256],
                       detail=f"directory {row.name} ({row.url}): {f.subject}")
             for f in opened if f.severity != "info"]
    if specs:
        raise_many(s, row.tenant_id, None, specs, now)
    return len(opened), len(gone), len(current)


def _alert_key(row: DirectoryRow, finding_key: str) -> str:
    """The dedup key of a finding's alert (as :class:`AlertSpec` builds it)."""
    kind = finding_key.split(":", 1)[0]
    return AlertSpec(kind=f"directory-{kind}", severity="warning", dedup=f"{row.id}:{finding_key}",
                     subject="", detail="").key


def run_audit(store: Store, audit: AuditLog | None, directory_id: str, now: float,
              actor: str) -> AuditOutcome:
    """Audit one directory now: bind, read, judge, store findings and alerts, record the run.

    The LDAP work happens outside any store transaction.
    """
    with store.read() as s:
        row = s.get(DirectoryRow, directory_id)
        if row is None:
            return AuditOutcome(False, "the directory is gone")
        target = target_of(row)
        password = open_password(s, row.id, row.password_sealed)
        privileged = json.loads(row.privileged_groups)
        inactive_days = row.inactive_days
    found: list[Found] = []
    accounts = 0
    error: str | None = None
    if password is None:
        error = "the stored bind password does not open (sealed under another key or altered)"
    else:
        try:
            conn = connect(target, password)
            try:
                accts, groups, tracks = read_directory(conn, target.base_dn)
            finally:
                _close(conn)
            accounts = len(accts)
            found = judge(accts, groups, privileged_names=privileged, inactive_days=inactive_days,
                          now=now, tracks_logons=tracks)
        except DirectoryError as exc:
            error = str(exc)
        except Exception as exc:  # a broken answer from the directory: the audit fails, the server stays up
            log.warning("directory %s: audit failed: %s", directory_id, type(exc).__name__)
            error = f"the audit failed ({type(exc).__name__})"
    with store.transaction() as s:
        row = s.get(DirectoryRow, directory_id)
        if row is None:
            return AuditOutcome(False, "the directory is gone")
        row.last_run_at = now
        row.next_run_at = now + row.every_s
        if error is not None:
            row.last_status = "failed"
            row.last_detail = error
            raise_alert(s, [row.tenant_id], kind="directory-audit-failed", severity="warning",
                        dedup=row.id, subject=f"directory {row.name}: audit failed"[:256],
                        detail=error, now=now)
            if audit is not None:
                audit.record(s, [row.tenant_id], "directory.audit-failed", actor,
                             {"directory": row.id, "name": row.name, "detail": error}, now)
            log.info("directory %s: audit failed: %s", row.id, error)
            return AuditOutcome(False, error)
        opened, resolved, total = _apply(s, row, found, now)
        detail = f"{accounts} accounts read; {total} findings open ({opened} new, {resolved} resolved)"
        row.last_status = "ok"
        row.last_detail = detail
        for alert in live_by_key(s, row.tenant_id, [f"directory-audit-failed:{row.id}"]).values():
            resolve(alert, f"directory:{row.name}", now)
        if audit is not None:
            audit.record(s, [row.tenant_id], "directory.audited", actor,
                         {"directory": row.id, "name": row.name, "accounts": accounts, "open": total,
                          "opened": opened, "resolved": resolved}, now)
    return AuditOutcome(True, detail, accounts, opened, resolved, total)


def due(store: Store, now: float) -> list[str]:
    with store.read() as s:
        return list(s.scalars(select(DirectoryRow.id).where(DirectoryRow.next_run_at <= now)
                              .order_by(DirectoryRow.next_run_at)))


def sweep(store: Store, audit: AuditLog, now: float) -> int:
    """Run every directory audit that is due (the scheduled audits); return how many ran."""
    ran = 0
    for directory_id in due(store, now):
        try:
            run_audit(store, audit, directory_id, now, "scheduler")
        except Exception:
            log.exception("directory %s: scheduled audit failed", directory_id)
        ran += 1
    return ran


def new_directory(s: Session, *, tenant_id: str, name: str, target: Target, password: str,
                  inactive_days: int, privileged_groups: Iterable[str], every_s: int, actor: str,
                  now: float) -> DirectoryRow:
    """Store a directory (password sealed); its first scheduled audit is due at once."""
    row = DirectoryRow(id=new_id("dir"), tenant_id=tenant_id, name=name, url=target.url,
                       starttls=target.starttls, bind_dn=target.bind_dn, base_dn=target.base_dn,
                       ca_cert=target.ca_cert, pin_sha256=target.pin_sha256, password_sealed="",
                       inactive_days=inactive_days, privileged_groups=json.dumps(list(privileged_groups)),
                       every_s=every_s, next_run_at=now, last_run_at=None, last_status="never",
                       last_detail="", created_by=actor, created_at=now)
    row.password_sealed = seal_password(s, row.id, password)
    s.add(row)
    s.flush()
    return row
