"""Recovery without weakening MFA (issue 11, finding 6), on a real server.

The failure: one wrong or missing TOTP code at first login left the account
created but unconfirmed and its bootstrap or activation token spent, with no
way back; an operator who lost their phone could not be re-enrolled.

What must hold: enrolment is retried with the same token until it expires (the
token is spent only when TOTP enrolment is confirmed), every wrong token or
code is paced and locked out like a failed login (T11), a token is refused once
enrolment completed (replay, T5-like) and after it expires, and an owner with a
fresh step-up re-issues an activation (`POST /accounts/{user}/reissue`) that ends
every session and retires the old password and TOTP secret, audited. Each
refusal is asserted together with the state it must have left unchanged.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import httpx
import pyotp
import pytest
from harness.operators import (
    PASSWORD,
    Operator,
    Totp,
    audit_events,
    bootstrap_owner,
    ok,
)
from harness.server import REPO, RunningServer, _env

pytestmark = pytest.mark.store

DAY = 86400
INVALID_ENROLMENT = {"detail": "invalid enrolment token or code"}
INVALID_ACTIVATION = {"detail": "invalid activation"}


def wrong_code(totp: Totp) -> str:
    """A six-digit code that is none of the codes the server accepts right now."""
    t = pyotp.TOTP(totp.secret)
    now = time.time() + totp.offset
    valid = {t.at(now + d) for d in (-30, 0, 30)}
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in valid)


def login_status(server: RunningServer, username: str, password: str, totp: Totp, *,
                 retired: bool = False) -> int:
    """The status of a login; ``retired``: the secret no longer counts, so its current code is
    tried without spending (or waiting for) a step."""
    with server.client() as c:
        return c.post("/auth/login", json={"username": username, "password": password,
                                           "totp": totp.unspent() if retired else totp.code()}).status_code


def account_row(owner: Operator, username: str) -> dict[str, Any]:
    [row] = [a for a in ok(owner.http.get("/accounts")) if a["username"] == username]
    return row


def enrol(c: httpx.Client, path: str, body: dict[str, Any]) -> tuple[str, Totp]:
    doc = ok(c.post(path, json=body))
    return doc["enrolment_token"], Totp.from_uri(doc["otpauth_uri"])


def confirm(c: httpx.Client, token: str, code: str) -> httpx.Response:
    return c.post("/auth/totp/confirm", json={"enrolment_token": token, "code": code})


def shift_clock(server: RunningServer, people: list[Operator], seconds: int) -> None:
    """Restart the server with its clock ``seconds`` ahead; the people's authenticators follow."""
    server.stop()
    server.env["RAMPART_CLOCK_OFFSET_S"] = str(seconds)
    server.start()
    for p in people:
        p.totp.offset = seconds
        p.__dict__.pop("_http", None)


def step_up(op: Operator) -> None:
    ok(op.http.post("/auth/step-up", json={"code": op.totp.code()}))


# --- failed first login: retried with the same token ------------------------------------------


def test_T11_bootstrap_retried_after_a_wrong_code_succeeds_with_the_same_token(
        server: RunningServer) -> None:
    token = server.bootstrap_token
    with server.client() as c:
        # First try under a mistyped name, and a wrong code: nothing is confirmed.
        typo_enrol, typo_totp = enrol(c, "/auth/bootstrap", {"token": token, "username": "ownr",
                                                             "password": PASSWORD})
        r = confirm(c, typo_enrol, wrong_code(typo_totp))
        assert (r.status_code, r.json()) == (401, INVALID_ENROLMENT)
        assert login_status(server, "ownr", PASSWORD, typo_totp) == 401
        # Second try (a missing code: the person never answered), same token, right name.
        first_enrol, first_totp = enrol(c, "/auth/bootstrap", {"token": token, "username": "owner",
                                                               "password": PASSWORD})
        # Third try: the same token still works and enrols a fresh secret.
        enrol_token, totp = enrol(c, "/auth/bootstrap", {"token": token, "username": "owner",
                                                         "password": PASSWORD})
        assert totp.secret != first_totp.secret
        # The superseded enrolment no longer confirms, even with its own right code.
        r = confirm(c, first_enrol, first_totp.code())
        assert (r.status_code, r.json()) == (401, INVALID_ENROLMENT)
        session = ok(confirm(c, enrol_token, totp.code()))
        assert (session["username"], session["role"]) == ("owner", "owner")
        # Enrolment completed: the bootstrap token is spent (replay refused) for any name.
        for name in ("owner", "mallory"):
            r = c.post("/auth/bootstrap", json={"token": token, "username": name,
                                                "password": PASSWORD})
            assert (r.status_code, r.json()) == (403, {"detail": "bootstrap refused"})
        # The finished enrolment token cannot be confirmed again either.
        r = confirm(c, enrol_token, totp.code())
        assert (r.status_code, r.json()) == (401, INVALID_ENROLMENT)
    owner = Operator(server, "owner", "owner", session["token"], totp)
    # Exactly one owner, the mistyped pending one is gone, and nothing else was created.
    assert [(a["username"], a["status"]) for a in ok(owner.http.get("/accounts"))] \
        == [("owner", "active")]
    owner.login()


def test_T11_activation_retried_after_a_wrong_code_and_refused_once_enrolled(
        server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    tid = ok(owner.http.post("/tenants", json={"name": "Acme"}))["id"]
    doc = ok(owner.http.post("/accounts", json={"username": "tech", "role": "technician",
                                                "tenants": [tid]}))
    token = doc["activation_token"]
    assert doc["activation_expires_at"] > time.time() + 6 * DAY
    body = {"username": "tech", "password": PASSWORD, "activation_token": token}
    with server.client() as c:
        enrol_token, totp = enrol(c, "/auth/activate", body)
        r = confirm(c, enrol_token, wrong_code(totp))
        assert (r.status_code, r.json()) == (401, INVALID_ENROLMENT)
        assert account_row(owner, "tech")["status"] == "pending"
        assert login_status(server, "tech", PASSWORD, totp) == 401
        # Retried with the same activation token: a fresh secret, and it works.
        enrol2, totp2 = enrol(c, "/auth/activate", body)
        assert totp2.secret != totp.secret
        assert confirm(c, enrol_token, totp.code()).status_code == 401  # superseded
        tech = Operator(server, "tech", "technician", ok(confirm(c, enrol2, totp2.code()))["token"],
                        totp2)
        assert ok(tech.http.get("/me"))["username"] == "tech"
        # Replay of the activation token once enrolment completed: refused, nothing changed.
        r = c.post("/auth/activate", json={**body, "password": "another long password"})
        assert (r.status_code, r.json()) == (401, INVALID_ACTIVATION)
    assert ok(tech.http.get("/me"))["username"] == "tech"
    tech.login()  # the password and secret are those of the completed enrolment
    assert account_row(owner, "tech")["status"] == "active"
    kinds = [e["kind"] for e in audit_events(owner, tid)]
    assert kinds.count("account.enrolment-started") == 2 and kinds.count("account.enrolled") == 1
    assert "login.failed" in kinds  # the wrong code was counted like a failed login


def test_T11_activation_token_refused_after_it_expires_and_reissue_recovers(
        server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    doc = ok(owner.http.post("/accounts", json={"username": "late", "role": "viewer",
                                                "tenants": None}))
    shift_clock(server, [owner], 8 * DAY)  # the default activation lifetime is 7 days
    owner.login()
    with server.client() as c:
        r = c.post("/auth/activate", json={"username": "late", "password": PASSWORD,
                                           "activation_token": doc["activation_token"]})
        assert (r.status_code, r.json()) == (401, INVALID_ACTIVATION)
    row = account_row(owner, "late")
    assert (row["status"], row["active"], row["totp_confirmed"]) == ("pending", False, False)
    # The owner re-issues (with a step-up); the new token works, the expired one still does not.
    step_up(owner)
    new = ok(owner.http.post("/accounts/late/reissue"))
    with server.client() as c:
        r = c.post("/auth/activate", json={"username": "late", "password": PASSWORD,
                                           "activation_token": doc["activation_token"]})
        assert r.status_code == 401
        enrol_token, totp = enrol(c, "/auth/activate", {
            "username": "late", "password": PASSWORD, "activation_token": new["activation_token"]})
        totp.offset = 8 * DAY
        ok(confirm(c, enrol_token, totp.code()))
    assert account_row(owner, "late")["status"] == "active"


def test_T11_wrong_enrolment_codes_are_paced_and_locked_like_logins(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    tid = ok(owner.http.post("/tenants", json={"name": "Acme"}))["id"]
    doc = ok(owner.http.post("/accounts", json={"username": "victim", "role": "technician",
                                                "tenants": [tid]}))
    with server.client(source="127.0.0.7") as c:
        enrol_token, totp = enrol(c, "/auth/activate", {
            "username": "victim", "password": PASSWORD,
            "activation_token": doc["activation_token"]})
        statuses: list[int] = []
        failures = 0
        while failures < 10:  # lockout_after_failures
            r = confirm(c, enrol_token, wrong_code(totp))
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert r.json() == {"detail": "too many failed attempts; retry later"}
                time.sleep(int(r.headers["Retry-After"]))
            else:
                assert (r.status_code, r.json()) == (401, INVALID_ENROLMENT)
                failures += 1
        assert 429 in statuses  # paced before the lock, like logins
        r = confirm(c, enrol_token, totp.code())
        if r.status_code == 429:
            time.sleep(int(r.headers["Retry-After"]))
            r = confirm(c, enrol_token, totp.code())
        # Locked: even the right code is refused with the same answer, and nothing is enrolled.
        assert (r.status_code, r.json()) == (401, INVALID_ENROLMENT)
        assert account_row(owner, "victim")["status"] == "locked"
        assert account_row(owner, "victim")["totp_confirmed"] is False
        alerts = [a for a in ok(owner.http.get(f"/tenants/{tid}/alerts"))
                  if a["kind"] == "account-locked"]
        assert len(alerts) == 1 and "victim" in alerts[0]["subject"]
        # A wrong activation token is paced and counted the same way (still locked: refused).
        r = c.post("/auth/activate", json={"username": "victim", "password": PASSWORD,
                                           "activation_token": "0" * 64})
        assert r.status_code in (401, 429)
        # The owner unlocks; the same enrolment, still unexpired, then completes.
        ok(owner.http.post("/accounts/victim/unlock"))
        ok(confirm(c, enrol_token, totp.code()))
    kinds = [e["kind"] for e in audit_events(owner, tid)]
    assert kinds.count("account.locked") == 1 and kinds.count("login.failed") >= 10


# --- lost phone: an owner re-issues the activation ---------------------------------------------


def test_T11_reissued_activation_ends_old_sessions_and_retires_the_old_totp(
        server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    tid = ok(owner.http.post("/tenants", json={"name": "Acme"}))["id"]
    tech = owner.create_account("tech", "technician", [tid])
    old_session = tech.token
    second_session = tech.login()
    old_totp = tech.totp

    # Without a fresh step-up: refused, and nothing changed.
    r = owner.http.post("/accounts/tech/reissue")
    assert r.status_code == 403 and r.json()["code"] == "step-up-required"
    for token in (old_session, second_session):
        with server.client(token) as c:
            assert c.get("/me").status_code == 200
    assert account_row(owner, "tech")["status"] == "active"
    tech.login()  # the old password and TOTP still work: nothing was reset
    events = audit_events(owner, tid)
    assert "account.reissued" not in [e["kind"] for e in events]
    assert [e["details"].get("for") for e in events if e["kind"] == "stepup.required"] \
        == ["account reissue"]

    step_up(owner)
    doc = ok(owner.http.post("/accounts/tech/reissue"))
    assert doc["username"] == "tech" and doc["sessions_ended"] == 3
    new_token = doc["activation_token"]
    # Every old session is over; the old password and TOTP secret no longer log in.
    for token in (old_session, second_session, tech.token):
        with server.client(token) as c:
            assert c.get("/me").status_code == 401
    assert login_status(server, "tech", PASSWORD, old_totp, retired=True) == 401
    row = account_row(owner, "tech")
    assert (row["status"], row["active"], row["totp_confirmed"]) == ("pending", False, False)

    # The new activation works and enrols a new secret; the old secret stays useless.
    with server.client() as c:
        enrol_token, new_totp = enrol(c, "/auth/activate", {
            "username": "tech", "password": "a brand new password", "activation_token": new_token})
        assert new_totp.secret != old_totp.secret
        ok(confirm(c, enrol_token, new_totp.code()))
    assert login_status(server, "tech", "a brand new password", new_totp) == 200
    assert login_status(server, "tech", "a brand new password", old_totp) == 401

    [entry] = [e for e in audit_events(owner, tid) if e["kind"] == "account.reissued"]
    assert entry["actor"] == "owner"
    assert (entry["details"]["username"], entry["details"]["sessions_ended"]) == ("tech", 3)
    assert new_token not in str(entry)


def test_T12_reissue_refused_to_non_owners_other_tenants_and_oneself(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    acme = ok(owner.http.post("/tenants", json={"name": "Acme"}))["id"]
    other = ok(owner.http.post("/tenants", json={"name": "Other"}))["id"]
    tech = owner.create_account("tech", "technician", [acme])
    approver = owner.create_account("appr", "approver", [acme])
    other_owner = owner.create_account("owner-b", "owner", [other])
    before = {a["username"]: a for a in ok(owner.http.get("/accounts"))}

    for op in (tech, approver, other_owner):
        step_up(op)  # a fresh step-up does not lend the power either
    assert approver.http.post("/accounts/tech/reissue").status_code == 403
    assert tech.http.post("/accounts/appr/reissue").status_code == 403
    assert tech.http.post("/accounts/owner/reissue").status_code == 404  # out of its reach
    # An owner of tenant B does not even see tenant A's accounts (T12).
    r = other_owner.http.post("/accounts/tech/reissue")
    assert (r.status_code, r.json()) == (404, {"detail": "account not found"})
    assert other_owner.http.post("/accounts/owner/reissue").status_code == 404
    # An owner cannot re-issue itself (another owner does it).
    step_up(owner)
    assert owner.http.post("/accounts/owner/reissue").status_code == 400
    assert owner.http.post("/accounts/nobody/reissue").status_code == 404

    # Nothing changed: every session lives and every account is as before.
    for op in (owner, tech, approver, other_owner):
        assert ok(op.http.get("/me"))["username"] == op.username
    assert {a["username"]: a for a in ok(owner.http.get("/accounts"))} == before
    for tenant in (acme, other):
        assert "account.reissued" not in [e["kind"] for e in audit_events(owner, tenant)]


def test_T11_only_owner_lost_phone_is_reissued_on_the_server_host(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    tid = ok(owner.http.post("/tenants", json={"name": "Acme"}))["id"]
    old_session, old_totp = owner.token, owner.totp
    r = subprocess.run([sys.executable, "-m", "rampart.server", "reissue-account", "--data",
                        str(server.data_dir), "owner"], capture_output=True, text=True,
                       env={**_env(), **server.env}, cwd=REPO, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    [token] = [ln.rsplit(": ", 1)[1] for ln in r.stdout.splitlines() if "activation token" in ln]
    with server.client(old_session) as c:
        assert c.get("/me").status_code == 401
    assert login_status(server, "owner", PASSWORD, old_totp, retired=True) == 401
    # The bootstrap token stays spent: the host command is the only way back in.
    with server.client() as c:
        r2 = c.post("/auth/bootstrap", json={"token": server.bootstrap_token, "username": "x",
                                             "password": PASSWORD})
        assert r2.status_code == 403
        enrol_token, totp = enrol(c, "/auth/activate", {"username": "owner", "password": PASSWORD,
                                                        "activation_token": token})
        session = ok(confirm(c, enrol_token, totp.code()))
    owner = Operator(server, "owner", "owner", session["token"], totp)
    [entry] = [e for e in audit_events(owner, tid) if e["kind"] == "account.reissued"]
    assert entry["actor"] == "server-admin" and token not in str(entry)
    r = subprocess.run([sys.executable, "-m", "rampart.server", "reissue-account", "--data",
                        str(server.data_dir), "nobody"], capture_output=True, text=True,
                       env={**_env(), **server.env}, cwd=REPO, timeout=60, check=False)
    assert r.returncode == 1 and "no account named nobody" in r.stderr
