"""Operator identity: Argon2id passwords, single-use TOTP, hashed sessions and tokens.

Invariants (THREAT-MODEL T2, T11):

* No default account and no web setup: the first owner is created only with
  the one-time bootstrap token printed by ``server init``, and only while no
  owner exists; a wrong token and "owner exists" are the same refusal.
* Every login failure (unknown user, wrong password, wrong or reused TOTP
  code, locked account, unfinished enrolment) is the same 401, after the same
  Argon2id work, so accounts cannot be enumerated.
* After ``lockout_after_failures`` consecutive failures an account is locked
  for ``lockout_s`` (or until an owner unlocks it) and an alert is raised; the
  lock answers exactly like a wrong password. Disabled and dormant accounts
  answer the same way.
* Before any password work, :mod:`.throttle` paces failures per name and per
  source address (429 with ``Retry-After``), for unknown names alike.
* A TOTP code is accepted once: the step it matched is stored and only later
  steps are accepted afterwards.
* Enrolment (bootstrap, activation) can be retried until its token expires: the
  bootstrap or activation token is spent only when the TOTP enrolment is
  confirmed, each retry starts a fresh TOTP secret, and every wrong token or
  code is paced, counted and locked out exactly like a failed login
  (:class:`EnrolmentFailed`). See docs/access.md, "Recovery".
* Passwords and tokens are stored only as hashes (Argon2id, SHA-256 of
  256-bit random tokens); the TOTP shared secret is sealed with the data
  directory's key and bound to its account (:mod:`.totp_store`). None of
  them appears in logs, URLs or error messages.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from . import access, throttle, totp_store
from .alerts import raise_alert
from .audit import SERVER_LOG, AuditLog
from .config import ServerLimits
from .errors import (
    BadRequest,
    Forbidden,
    NetworkRefused,
    Refusal,
    ServerError,
    TooManyRequests,
    Unauthenticated,
)
from .models import Account, LoginThrottle, SessionRow, Setting

BOOTSTRAP_SETTING = "bootstrap_token_sha256"
TOTP_ISSUER = "Rampart"
TOTP_STEP_S = 30
INVALID_CREDENTIALS = "invalid credentials"

_hasher = PasswordHasher()
_dummy_hash: str | None = None


def new_token() -> str:
    """A random 256-bit token: hex, so it never starts with ``-`` on a command line."""
    return secrets.token_hex(32)


def token_hash(token: str) -> str:
    """How tokens are stored: hex SHA-256 (they have 256 bits of entropy, so no salt)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def _verify_password(stored: str | None, password: str) -> bool:
    """Argon2id check; runs the same work against a dummy hash when ``stored`` is None."""
    global _dummy_hash
    if stored is None:
        if _dummy_hash is None:
            _dummy_hash = _hasher.hash(secrets.token_hex(16))
        stored = _dummy_hash
        password = password + "\x00never"
    try:
        return _hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def check_password_policy(password: str, limits: ServerLimits) -> None:
    if not limits.min_password_chars <= len(password) <= limits.max_password_chars:
        raise BadRequest(
            f"password must be {limits.min_password_chars} to {limits.max_password_chars} "
            "characters")


def check_totp(account: Account, code: str, now: float) -> bool:
    """Accept ``code`` for the current step ±1 if that step was not used before; record it."""
    secret = totp_store.secret_of(account)  # None if it does not open: a refusal, no crash
    if secret is None or len(code) != 6 or not code.isdigit():
        return False
    totp = pyotp.TOTP(secret, interval=TOTP_STEP_S)
    current = int(now // TOTP_STEP_S)
    for step in (current - 1, current, current + 1):
        if step > account.totp_last_step and hmac.compare_digest(totp.at(step * TOTP_STEP_S), code):
            account.totp_last_step = step
            return True
    return False


@dataclass(frozen=True, slots=True)
class Enrolment:
    """What a new account receives to set up TOTP (shown once, never stored in clear)."""

    enrolment_token: str
    otpauth_uri: str


@dataclass(frozen=True, slots=True)
class NewSession:
    token: str
    expires_at: float
    account: Account


def _start_enrolment(account: Account, now: float, limits: ServerLimits,
                     expires_at: float | None = None) -> Enrolment:
    """A fresh TOTP secret and enrolment token (any earlier one stops working)."""
    secret = pyotp.random_base32()
    totp_store.set_secret(account, secret)  # sealed; the clear secret is never stored
    account.totp_confirmed = False
    account.totp_last_step = 0
    token = new_token()
    account.enrolment_token_hash = token_hash(token)
    account.enrolment_expires_at = (now + limits.enrolment_account_ttl_s if expires_at is None
                                    else expires_at)
    uri = pyotp.TOTP(secret, interval=TOTP_STEP_S).provisioning_uri(
        name=account.username, issuer_name=TOTP_ISSUER)
    return Enrolment(token, uri)


def set_bootstrap_token(s: Session) -> str:
    """Create the one-time bootstrap token and store only its hash."""
    token = new_token()
    s.merge(Setting(key=BOOTSTRAP_SETTING, value=token_hash(token)))
    return token


def bootstrap_owner(s: Session, *, token: str, username: str, password: str, now: float,
                    limits: ServerLimits, address: str | None = None) -> Enrolment:
    """Create the first owner (MSP-wide) if ``token`` is the bootstrap token and no owner exists.

    The token stays valid until an owner confirms TOTP enrolment
    (:func:`confirm_totp`), so a failed first login is retried with the same
    token: the pending owner gets a new password and TOTP secret (and a pending
    owner of another name, a typo, is replaced). A wrong token is paced and
    counted like a failed login and raises :class:`EnrolmentFailed`.
    """
    _pace(s, username, address, now)
    stored = s.get(Setting, BOOTSTRAP_SETTING)
    owner_exists = s.scalars(select(Account.id).where(
        Account.role == "owner", Account.totp_confirmed.is_(True)).limit(1)).first()
    ok = stored is not None and hmac.compare_digest(stored.value, token_hash(token))
    pending = list(s.scalars(select(Account).where(Account.role == "owner",
                                                   Account.totp_confirmed.is_(False))))
    account = next((a for a in pending if a.username == username), None)
    if not ok or owner_exists is not None or (account is not None and account.locked_until > now):
        raise EnrolmentFailed(account, username, Forbidden("bootstrap refused"))
    check_password_policy(password, limits)
    for other in pending:
        if other is not account:  # an earlier, unfinished bootstrap under another name
            s.delete(other)
    s.flush()
    if account is None:
        account = Account(username=username, role="owner", all_tenants=True, created_at=now,
                          failed_logins=0, locked_until=0.0)
        s.add(account)
        s.flush()  # the account's id exists before its TOTP secret is stored
    account.password_hash = hash_password(password)
    enrolment = _start_enrolment(account, now, limits)
    s.flush()
    return enrolment


def activate_account(s: Session, *, username: str, activation_token: str, password: str,
                     now: float, limits: ServerLimits, address: str | None = None) -> Enrolment:
    """Set a new account's password with its activation token and start TOTP enrolment.

    The token is spent only when enrolment is confirmed; until then (and
    until ``enrolment_expires_at``, the activation's expiry) it may be used
    again, each time with a fresh TOTP secret. A wrong or expired token, or a
    locked or disabled account, raises :class:`EnrolmentFailed` (one answer).
    """
    _pace(s, username, address, now)
    account = None if "\x00" in username else \
        s.scalars(select(Account).where(Account.username == username)).first()
    if (account is None or account.activation_token_hash is None
            or not hmac.compare_digest(account.activation_token_hash,
                                       token_hash(activation_token))
            or account.enrolment_expires_at is None or account.enrolment_expires_at <= now
            or account.locked_until > now or account.disabled_at is not None):
        raise EnrolmentFailed(account, username, Unauthenticated("invalid activation"))
    check_password_policy(password, limits)
    account.password_hash = hash_password(password)
    return _start_enrolment(account, now, limits, expires_at=account.enrolment_expires_at)


def confirm_totp(s: Session, *, enrolment_token: str, code: str, now: float,
                 limits: ServerLimits, address: str | None = None) -> NewSession:
    """Finish enrolment: the first valid TOTP code proves the authenticator works.

    Only now is the activation token (or, for an owner, the bootstrap token)
    spent. A wrong code raises :class:`EnrolmentFailed`: paced, counted towards
    lockout, and the enrolment stays usable until it expires.
    """
    account = s.scalars(
        select(Account).where(Account.enrolment_token_hash == token_hash(enrolment_token))).first()
    # An unknown token has no name to pace: such attempts share one key, and the address's.
    name = account.username if account is not None else ""
    _pace(s, name, address, now)
    if (account is None or account.enrolment_expires_at is None
            or account.enrolment_expires_at <= now or account.locked_until > now
            or account.disabled_at is not None or not check_totp(account, code, now)):
        raise EnrolmentFailed(account, name, Unauthenticated("invalid enrolment token or code"))
    account.enrolment_token_hash = None
    account.enrolment_expires_at = None
    account.activation_token_hash = None
    account.totp_confirmed = True
    account.failed_logins = 0
    throttle.record_success(s, account.username)
    if account.role == "owner":
        stored = s.get(Setting, BOOTSTRAP_SETTING)
        if stored is not None:  # an owner exists now: the bootstrap token is spent
            s.delete(stored)
    return create_session(s, account, now, limits)


def _pace(s: Session, username: str, address: str | None, now: float) -> None:
    try:
        throttle.check(s, username, address, now)
    except throttle.Throttled as exc:
        raise TooManyRequests("too many failed attempts; retry later", exc.retry_after) from None


class LoginFailed(Exception):
    """A login failed; carries which account (if any) so the failure can be counted."""

    def __init__(self, account_id: int | None, *, dormant: bool = False) -> None:
        super().__init__(INVALID_CREDENTIALS)
        self.account_id = account_id
        self.dormant = dormant
        self.error: ServerError = Unauthenticated(INVALID_CREDENTIALS)


class EnrolmentFailed(LoginFailed):
    """A bootstrap, activation or enrolment step failed: counted exactly like a failed login.

    ``username`` is the name to pace (the one attempted), ``error`` the answer.
    """

    def __init__(self, account: Account | None, username: str, error: ServerError) -> None:
        super().__init__(account.id if account is not None else None)
        self.username = username
        self.error = error


def login(s: Session, audit: AuditLog, *, username: str, password: str, totp: str, now: float,
          limits: ServerLimits, address: str | None = None) -> NewSession:
    """Password + TOTP login; every credential failure raises the same :class:`LoginFailed`.

    Order: pacing (429, no password work), then the same Argon2id work for
    every name, then the checks (password, enrolment, lock, disabled,
    dormant, TOTP step), and only with valid credentials the network check
    (so a refused network reveals nothing about accounts). The caller rolls
    this transaction back and calls :func:`record_login_failure` in a new one,
    so a failure never consumes a TOTP step but is always counted.
    """
    try:
        throttle.check(s, username, address, now)
    except throttle.Throttled as exc:
        raise TooManyRequests("too many failed attempts; retry later", exc.retry_after) from None
    # A name no account can have (PostgreSQL refuses NUL in text) is an unknown user, same answer.
    account = None if "\x00" in username else \
        s.scalars(select(Account).where(Account.username == username)).first()
    password_ok = _verify_password(account.password_hash if account else None, password)
    if account is None:
        raise LoginFailed(None)
    if not (password_ok and account.totp_confirmed and account.locked_until <= now
            and account.disabled_at is None):
        raise LoginFailed(account.id)
    if access.is_dormant(s, account, now):
        raise LoginFailed(account.id, dormant=True)
    if not check_totp(account, totp, now):
        raise LoginFailed(account.id)
    if not access.login_network_allowed(s, account, address):
        shown = address or "unknown"
        scopes = access.account_tenant_ids(s, account)
        raise NetworkRefused(
            "login is not allowed from this network",
            refusal=Refusal(tuple(scopes), "login.network-refused", account.username,
                            {"address": shown},
                            alert=(tuple(scopes), "network-refused", f"{username}@{shown}",
                                   f"{username} refused from unapproved network {shown}")))
    account.failed_logins = 0
    account.last_login_at = now
    throttle.record_success(s, username)
    audit.record(s, audit.logs_for_account(s, account), "login", account.username,
                 {"address": address or "unknown"}, now)
    return create_session(s, account, now, limits)


def record_login_failure(s: Session, audit: AuditLog, failed: LoginFailed, *, username: str,
                         now: float, limits: ServerLimits, address: str | None = None) -> None:
    """Count a failure towards pacing and lockout and audit it.

    The attempted name is recorded only if the account exists; an unknown name
    is never stored (it may be a password typed into the wrong field).
    """
    throttle.record_failure(s, username, address, now)
    shown = address or "unknown"
    account = s.get(Account, failed.account_id) if failed.account_id is not None else None
    if account is None:
        audit.record(s, [SERVER_LOG], "login.failed", "unknown", {"address": shown}, now)
        return
    if failed.dormant and account.disabled_at is None:
        access.disable_account(s, audit, account, reason="dormant", actor="rampart", now=now)
        return
    account.failed_logins += 1
    logs = audit.logs_for_account(s, account)
    if account.failed_logins >= limits.lockout_after_failures and account.locked_until <= now:
        account.locked_until = now + limits.lockout_s
        account.failed_logins = 0
        audit.record(s, logs, "account.locked", "rampart",
                     {"username": account.username, "until": account.locked_until,
                      "address": shown}, now)
        scopes: list[str | None] = list(access.account_tenant_ids(s, account)) or [None]
        raise_alert(s, scopes, kind="account-locked", severity="warning", dedup=account.username,
                    subject=f"account {account.username} locked after "
                            f"{limits.lockout_after_failures} failed logins",
                    detail=f"last attempt from {shown}; locked until an owner unlocks it or "
                           f"{limits.lockout_s} s pass", now=now)
    audit.record(s, logs, "login.failed", account.username, {"address": shown}, now)


def step_up(s: Session, audit: AuditLog, *, account_id: int, token: str, code: str,
            now: float) -> float:
    """Mark this session as freshly MFA-verified if ``code`` is an unused TOTP step (G5).

    A wrong code raises :class:`LoginFailed` so the caller counts it exactly like
    a failed login (pacing and lockout apply to a stolen session guessing codes).
    """
    account = s.get(Account, account_id)
    row = s.get(SessionRow, token_hash(token))
    if account is None or row is None or not check_totp(account, code, now):
        raise LoginFailed(account_id)
    row.step_up_at = now
    audit.record(s, audit.logs_for_account(s, account), "stepup.verified", account.username, {},
                 now)
    return now


def create_session(s: Session, account: Account, now: float, limits: ServerLimits) -> NewSession:
    token = new_token()
    expires = now + limits.session_absolute_s
    s.add(SessionRow(token_hash=token_hash(token), account_id=account.id, created_at=now,
                     last_used_at=now, expires_at=expires))
    s.flush()
    return NewSession(token, expires, account)


#: A session's last use is written at most this often: most requests then need no write transaction,
#: so API reads never queue behind other writers (T16: a device's flood). Idle expiry is this much coarser.
SESSION_TOUCH_S = 30.0


def resolve_session(s: Session, token: str, now: float,
                    limits: ServerLimits) -> tuple[Account, SessionRow]:
    """The account and row of a live session (idle and absolute limits), or Unauthenticated.

    A disabled account has no live session even if a row survived. Works in
    a read-only session: it changes nothing (see :func:`touch_session`).
    """
    row = s.get(SessionRow, token_hash(token))
    if row is None or row.expires_at <= now or row.last_used_at + limits.session_idle_s <= now:
        raise Unauthenticated("not logged in")
    account = s.get(Account, row.account_id)
    if account is None or account.disabled_at is not None:
        raise Unauthenticated("not logged in")
    return account, row


def touch_session(s: Session, token: str, now: float) -> None:
    """Record the session's use now (in the caller's write transaction)."""
    s.execute(update(SessionRow).where(SessionRow.token_hash == token_hash(token),
                                       SessionRow.last_used_at < now).values(last_used_at=now))


def end_session(s: Session, token: str) -> None:
    s.execute(delete(SessionRow).where(SessionRow.token_hash == token_hash(token)))


def reissue_activation(s: Session, audit: AuditLog, account: Account, *, actor: str, now: float,
                       limits: ServerLimits) -> tuple[str, float, int]:
    """Re-enrol ``account`` from scratch in the caller's transaction; audited.

    Drops its password, TOTP secret and unfinished enrolment, ends every
    session, clears lockout and pacing. Returns the new one-time activation
    token (never stored in clear), its expiry and how many sessions ended.
    Authorisation (owner, reach, step-up) is the caller's job.
    """
    token = new_token()
    expires = now + limits.activation_ttl_s
    account.activation_token_hash = token_hash(token)
    account.enrolment_expires_at = expires
    account.enrolment_token_hash = None
    account.password_hash = None
    account.totp_secret = None
    account.totp_confirmed = False
    account.failed_logins = 0
    account.locked_until = 0.0
    s.execute(delete(LoginThrottle).where(LoginThrottle.key == throttle.user_key(account.username)))
    result = s.execute(delete(SessionRow).where(SessionRow.account_id == account.id))
    ended = int(getattr(result, "rowcount", 0) or 0)
    audit.record(s, audit.logs_for_account(s, account), "account.reissued", actor,
                 {"username": account.username, "sessions_ended": ended,
                  "activation_expires_at": expires}, now)
    return token, expires, ended
