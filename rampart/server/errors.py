"""Errors of the server layer, each mapped to one HTTP status.

    ServerError                 a request was refused; ``status`` and a one-line ``detail``
    ├── BadRequest              400: malformed or unacceptable input (incl. failed trust checks)
    ├── Unauthenticated         401: no valid session, or invalid credentials
    ├── Forbidden               403: authenticated but the role does not allow it
    ├── NotFound                404: absent, or in a tenant the caller cannot reach
    ├── Conflict                409: the state does not allow it (exists, not ready, already done)
    ├── TooLarge                413: a body or message exceeds its limit
    └── TooManyRequests         429: paced (failed logins); ``Retry-After`` says when to retry

A refusal may carry a machine-readable ``code`` (``step-up-required``,
``network-refused``) and a :class:`Refusal` record: the handler writes that
record (audit entry, optional alert) in a transaction of its own, because the
request's transaction is rolled back with the refusal.

    SetupError                  the operator misused setup (data dir missing or already initialised)

Security invariant: ``detail`` never carries a secret (password, token, TOTP
code or secret) nor echoes client input; it is safe to log and to return.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Refusal:
    """What to record about a refused request once its own transaction is rolled back."""

    logs: tuple[str, ...]
    kind: str
    actor: str
    details: dict[str, Any] = field(default_factory=dict)
    #: (tenant ids, kind, dedup key, subject) of an alert to raise, if any.
    alert: tuple[tuple[str | None, ...], str, str, str] | None = None


class ServerError(Exception):
    """A refused request; ``detail`` is one line, safe to show."""

    status = 400
    code: str | None = None

    def __init__(self, detail: str, *, refusal: Refusal | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.refusal = refusal


class BadRequest(ServerError):
    status = 400


class Unauthenticated(ServerError):
    status = 401


class Forbidden(ServerError):
    status = 403


class NotFound(ServerError):
    status = 404


class Conflict(ServerError):
    status = 409


class TooLarge(ServerError):
    status = 413


class TooManyRequests(ServerError):
    status = 429

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class StepUpRequired(Forbidden):
    """G5: the action needs a fresh TOTP code on this session (``POST /auth/step-up``)."""

    code = "step-up-required"


class NetworkRefused(Forbidden):
    """N3: the caller's source address is outside the tenant's approved networks."""

    code = "network-refused"


class SetupError(Exception):
    """Misuse of ``server init``/``server run`` (not a request error)."""
