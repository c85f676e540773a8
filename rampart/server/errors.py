"""Errors of the server layer, each mapped to one HTTP status.

    ServerError                 a request was refused; ``status`` and a one-line ``detail``
    ├── BadRequest              400: malformed or unacceptable input (incl. failed trust checks)
    ├── Unauthenticated         401: no valid session, or invalid credentials
    ├── Forbidden               403: authenticated but the role does not allow it
    ├── NotFound                404: absent, or in a tenant the caller cannot reach
    ├── Conflict                409: the state does not allow it (exists, not ready, already done)
    └── TooLarge                413: a body or message exceeds its limit

    SetupError                  the operator misused setup (data dir missing or already initialised)

Security invariant: ``detail`` never carries a secret (password, token, TOTP
code or secret) nor echoes client input; it is safe to log and to return.
"""

from __future__ import annotations


class ServerError(Exception):
    """A refused request; ``detail`` is one line, safe to show."""

    status = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


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


class SetupError(Exception):
    """Misuse of ``server init``/``server run`` (not a request error)."""
