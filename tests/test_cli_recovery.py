"""Recovery without weakening MFA, through the real `rampart` command (issue 11, finding 6).

A person whose first login fails (no code, a wrong code) runs the same command
again with the same bootstrap or activation token; an owner re-enrols an
operator who lost their phone with `rampart account reissue USER` (a fresh
TOTP code of the owner is asked for: step-up). Secrets only through the
environment or stdin, as in tests/test_cli_flows.py, whose server fixture and
helpers this module reuses (a server of its own).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from test_cli_flows import TOTP, Operator, Server, one_line_error, server  # noqa: F401

pytestmark = pytest.mark.client_side

WRONG_CODE = "000000"  # one chance in ~300,000 that it is a valid code: then the test fails


@pytest.fixture(scope="module")
def people(server: Server,  # noqa: F811 (the fixture imported above)
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, Operator]:
    base = tmp_path_factory.mktemp("operators")
    return {n: Operator(n, base / n, server, password=f"pw-{n}-{os.urandom(6).hex()}")
            for n in ("alice", "bob")}


def first_login(p: Operator, flag: str, token_env: str, token: str, *,
                totp: str | None) -> Any:
    env = {token_env: token, "RAMPART_PASSWORD": p.password}
    if totp is not None:
        env["RAMPART_TOTP"] = totp
    return p.run("login", "--server", p.server.url, "--user", p.name, "--fingerprint",
                 p.server.fingerprint, flag, extra_env=env, input="")


def has_session(p: Operator) -> bool:
    path = p.config / "session.json"
    return path.exists() and bool(json.loads(path.read_text()).get("token"))


def test_T11_cli_bootstrap_retried_after_missing_and_wrong_codes(
        people: dict[str, Operator]) -> None:
    a = people["alice"]
    token = a.server.bootstrap_token
    for code in (None, WRONG_CODE):  # no code given (stdin at its end), then a wrong one
        r = first_login(a, "--bootstrap", "RAMPART_BOOTSTRAP_TOKEN", token, totp=code)
        assert r.returncode != 0 and "Traceback" not in r.stderr
        line = r.stderr.strip().splitlines()[-1]
        assert line.startswith(("rampart: error: ", "TOTP code: rampart: error: "))
        assert "bootstrap token is still valid" in line and "run the same command again" in line
        assert token not in line
        assert not has_session(a)
    out = a.enrol_interactively("--bootstrap", "RAMPART_BOOTSTRAP_TOKEN", token)
    assert "logged in" in out
    assert a.json("whoami")["role"] == "owner"
    # Spent once enrolled: the same command is refused now.
    line = one_line_error(first_login(people["bob"], "--bootstrap", "RAMPART_BOOTSTRAP_TOKEN",
                                      token, totp=WRONG_CODE))
    assert "bootstrap refused" in line and "403" in line


def test_T11_cli_activation_retried_and_reissue_for_a_lost_phone(
        people: dict[str, Operator]) -> None:
    a, b = people["alice"], people["bob"]
    doc = a.json("account", "create", "bob", "--role", "technician")
    token = doc["activation_token"]
    line = one_line_error(first_login(b, "--activate", "RAMPART_ACTIVATION_TOKEN", token,
                                      totp=WRONG_CODE))
    assert "activation token is still valid" in line and not has_session(b)
    b.enrol_interactively("--activate", "RAMPART_ACTIVATION_TOKEN", token)
    assert b.json("whoami")["username"] == "bob"
    old_secret = b.totp_secret

    # A technician cannot re-issue anyone, even with a fresh code of its own.
    line = one_line_error(b.run("account", "reissue", "alice",
                                extra_env={"RAMPART_TOTP": TOTP.code(b.totp_secret)}))
    assert "404" in line or "403" in line
    assert a.json("whoami")["username"] == "alice"

    # Bob lost his phone. Without a fresh TOTP code of the owner (step-up): refused, no change.
    r = a.run("account", "reissue", "bob", input="")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "step-up required" in r.stderr and "no TOTP code" in r.stderr
    assert b.json("whoami")["username"] == "bob"

    doc = a.json("account", "reissue", "bob", extra_env={"RAMPART_TOTP": TOTP.code(a.totp_secret)})
    assert doc["username"] == "bob" and doc["sessions_ended"] >= 1
    assert "--activate" in doc["login_command"] and doc["activation_token"] != token
    assert "not logged in" in one_line_error(b.run("whoami")).lower() \
        or "401" in one_line_error(b.run("whoami"))
    # The old authenticator no longer logs in.
    r = b.run("login", "--server", b.server.url, "--user", "bob", extra_env={
        "RAMPART_PASSWORD": b.password, "RAMPART_TOTP": TOTP.code(old_secret)})
    assert "invalid credentials" in one_line_error(r)
    # The new activation enrols a new secret.
    b.enrol_interactively("--activate", "RAMPART_ACTIVATION_TOKEN", doc["activation_token"])
    assert b.totp_secret != old_secret and b.json("whoami")["username"] == "bob"
    human = a.ok("account", "list").stdout
    assert "bob" in human
