"""Errors of the operator CLI.

Every failure the operator can cause or meet ends as one line on stderr and a
non-zero exit status (see :func:`rampart.cli.main.main`, the error boundary)::

    CliError                  anything the CLI reports (exit 1 unless stated)
    ├── UsageProblem          bad arguments or missing input (exit 2)
    ├── NotLoggedIn           no session, or the session expired (exit 3)
    ├── ServerProblem         the server answered with an error (exit 4)
    ├── NetworkProblem        the server could not be reached, or TLS failed (exit 5)
    └── Refused               local verification refused what the server sent (exit 6)

Lower-level exceptions (rampart.cli.transport, ssl, rampart.trust) are translated into these at
the boundary where they occur, with ``raise ... from exc``. Messages never
contain secrets (passwords, TOTP codes, tokens, passphrases). A message may quote
what a device or the server sent, so it is made one inert line when built
(:func:`one_line`): a control, line break or bidi character shows as an escape.
"""

from __future__ import annotations

from rampart.textsafe import safe_line


def one_line(message: object) -> str:
    """``message`` as one safe line: ends trimmed, runs of spaces collapsed, unsafe characters escaped."""
    text = str(message).strip(" \t\r\n")
    return safe_line(" ".join(part for part in text.split(" ") if part))


class CliError(Exception):
    """A failure reported to the operator as one line."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = one_line(message)

    def __str__(self) -> str:
        return self.message


class UsageProblem(CliError):
    exit_code = 2


class NotLoggedIn(CliError):
    exit_code = 3


class ServerProblem(CliError):
    exit_code = 4

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class NetworkProblem(CliError):
    exit_code = 5


class Refused(CliError):
    """Local verification failed: nothing was signed, stored or trusted."""

    exit_code = 6
