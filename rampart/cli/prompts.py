"""Secret input: from the environment, a terminal (never echoed), or one line of stdin.

Security invariants:

* Secrets (passwords, TOTP codes, passphrases, one-time tokens) never come from
  command-line flags, so they never show in ``ps`` or shell history.
* On a terminal, input is read without echo (:func:`getpass.getpass`).
* Without a terminal and without the environment variable, one line is read
  from stdin (like ``docker login --password-stdin``); end of input is an error.
* Nothing read here is printed, logged or put into an error message.
"""

from __future__ import annotations

import getpass
import os
import sys

from rampart.textsafe import safe_line

from .errors import UsageProblem

ENV_PASSWORD = "RAMPART_PASSWORD"  # noqa: S105 - a variable name
ENV_TOTP = "RAMPART_TOTP"
ENV_KEY_PASSPHRASE = "RAMPART_KEY_PASSPHRASE"  # noqa: S105 - a variable name
ENV_ACTIVATION_TOKEN = "RAMPART_ACTIVATION_TOKEN"  # noqa: S105 - a variable name
ENV_BOOTSTRAP_TOKEN = "RAMPART_BOOTSTRAP_TOKEN"  # noqa: S105 - a variable name
ENV_SERVER_FINGERPRINT = "RAMPART_SERVER_FINGERPRINT"


def stdin_is_tty() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def _read_line(prompt: str, what: str, env: str) -> str:
    sys.stdout.flush()
    sys.stderr.write(prompt)
    sys.stderr.flush()
    line = sys.stdin.readline()
    if not line:
        raise UsageProblem(f"no {what}: set {env} or run on a terminal")
    return line.rstrip("\r\n")


def secret(env: str, prompt: str, what: str, *, confirm: bool = False) -> str:
    """Return a secret from ``env``, else a no-echo terminal prompt, else a stdin line."""
    value = os.environ.get(env)
    if value:
        return value
    if stdin_is_tty():
        sys.stdout.flush()
        try:
            value = getpass.getpass(prompt, stream=sys.stderr)
        except EOFError:
            raise UsageProblem(f"no {what} given") from None
        if not value:
            raise UsageProblem(f"an empty {what} is not accepted")
        if confirm:
            again = getpass.getpass("Repeat: ", stream=sys.stderr)
            if again != value:
                raise UsageProblem(f"the two {what}s differ")
        return value
    value = _read_line(prompt, what, env)
    if not value:
        raise UsageProblem(f"an empty {what} is not accepted")
    return value


def password(*, confirm: bool = False) -> str:
    return secret(ENV_PASSWORD, "Password: ", "password", confirm=confirm)


def totp_code() -> str:
    code = secret(ENV_TOTP, "TOTP code: ", "TOTP code").strip().replace(" ", "")
    if not (code.isdigit() and len(code) == 6):
        raise UsageProblem("a TOTP code is 6 digits")
    return code


def key_passphrase(*, confirm: bool = False) -> str:
    return secret(ENV_KEY_PASSPHRASE, "Key passphrase: ", "key passphrase", confirm=confirm)


def confirm(question: str, *, default: bool = False) -> bool:
    """Ask a yes/no question on a terminal; without one, the answer is ``default``."""
    if not stdin_is_tty():
        return default
    sys.stdout.flush()
    suffix = " [Y/n] " if default else " [y/N] "
    try:
        answer = input(safe_line(question) + suffix).strip().lower()
    except EOFError:
        return False
    if not answer:
        return default
    return answer in ("y", "yes")


def ask(question: str) -> str:
    """One line typed at a terminal (echoed: for things that are not secret, e.g. fingerprints)."""
    if not stdin_is_tty():
        raise UsageProblem("this needs a terminal, or the answer given as a flag")
    sys.stdout.flush()
    try:
        return input(safe_line(question))
    except EOFError:
        raise UsageProblem("no answer given") from None
