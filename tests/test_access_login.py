"""T11: a login page and a password list, played for real against a real server.

Pacing per name and per source address (429 with Retry-After, before any
password work), lockout after 10 failures with an alert, the same answer and
timing for unknown and known names, single-use TOTP steps, and a forwarded
header that cannot launder the source address.
"""

from __future__ import annotations

import statistics
import time

import httpx
import pyotp
import pytest
from harness.operators import PASSWORD, Operator, audit_events, bootstrap_owner, ok
from harness.server import RunningServer

pytestmark = pytest.mark.store

INVALID = {"detail": "invalid credentials"}


def attempt(c: httpx.Client, username: str, password: str = "wrong password 123",  # noqa: S107
            totp: str = "000000") -> tuple[httpx.Response, float]:
    t0 = time.perf_counter()
    r = c.post("/auth/login", json={"username": username, "password": password, "totp": totp})
    return r, time.perf_counter() - t0


def make_tenant_and_victim(server: RunningServer, name: str = "victim") -> tuple[Operator, Operator,
                                                                                    str]:
    owner = bootstrap_owner(server)
    tid = ok(owner.http.post("/tenants", json={"name": "Acme"}))["id"]
    return owner, owner.create_account(name, "technician", [tid]), tid


def test_T11_brute_force_of_200_passwords_is_paced_locked_and_alerted(server: RunningServer) -> None:
    owner, victim, tid = make_tenant_and_victim(server)
    statuses: list[int] = []
    with server.client(source="127.0.0.5") as attacker:
        # A patient attacker honours Retry-After until the account locks (10 failures) ...
        failures = 0
        while failures < 10:
            r, _ = attempt(attacker, "victim")
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert r.json() == {"detail": "too many failed attempts; retry later"}
                time.sleep(int(r.headers["Retry-After"]))
            else:
                assert (r.status_code, r.json()) == (401, INVALID)
                failures += 1
        # ... then fires the rest of the 200 as fast as it can: all paced.
        while len(statuses) < 200:
            r, _ = attempt(attacker, "victim")
            statuses.append(r.status_code)
        assert set(statuses) == {401, 429}
        assert statuses.count(401) == 10 and statuses.count(429) == 190
        # Even the right password and a fresh code fail while locked, exactly like a wrong one.
        r, _ = attempt(attacker, "victim", PASSWORD, victim.totp.code())
        assert r.status_code == 429
        time.sleep(int(r.headers["Retry-After"]))
        r, _ = attempt(attacker, "victim", PASSWORD, victim.totp.code())
        assert (r.status_code, r.json()) == (401, INVALID)

    alerts = ok(owner.http.get(f"/tenants/{tid}/alerts"))
    locked = [a for a in alerts if a["kind"] == "account-locked"]
    assert len(locked) == 1 and "victim" in locked[0]["subject"]
    assert "127.0.0.5" in locked[0]["detail"]
    kinds = [e["kind"] for e in audit_events(owner, tid)]
    assert kinds.count("account.locked") == 1 and kinds.count("login.failed") >= 10
    assert [a["status"] for a in ok(owner.http.get("/accounts")) if a["username"] == "victim"] \
        == ["locked"]

    # An owner unlocks; the real user logs in at once.
    ok(owner.http.post("/accounts/victim/unlock"))
    victim.login()
    assert "account.unlocked" in [e["kind"] for e in audit_events(owner, tid)]


def test_T11_unknown_and_known_users_get_the_same_answer_and_timing(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    known = [owner.create_account(f"known{i}", "viewer", None).username for i in range(4)]
    unknown = [f"ghost{i}" for i in range(4)]
    times: dict[str, list[float]] = {"known": [], "unknown": []}
    for i, (k, u) in enumerate(zip(known, unknown, strict=True)):
        with server.client(source=f"127.0.0.{20 + i}") as ck, \
                server.client(source=f"127.0.0.{40 + i}") as cu:
            for _ in range(5):  # within the free budget of a name and an address
                for label, c, name in (("known", ck, k), ("unknown", cu, u)):
                    r, dt = attempt(c, name)
                    assert (r.status_code, r.json()) == (401, INVALID), r.text
                    times[label].append(dt)
            if i == 0:  # pacing treats both names alike: after 8 failures each must wait
                paced = []
                for c, name in ((ck, k), (cu, u)):
                    failures = 5
                    while failures < 8:
                        r, _ = attempt(c, name)
                        if r.status_code == 429:
                            time.sleep(int(r.headers["Retry-After"]))
                        else:
                            failures += 1
                    r, _ = attempt(c, name)
                    paced.append((r.status_code, r.json()))
                assert paced[0] == paced[1] and paced[0][0] == 429
    mk, mu = statistics.median(times["known"]), statistics.median(times["unknown"])
    # Both do the same Argon2id work: the medians differ by no more than noise.
    assert abs(mk - mu) <= 0.25 * max(mk, mu) + 0.005, (mk, mu)


def test_T11_totp_steps_are_single_use_and_never_earlier(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    user = owner.create_account("alice", "viewer", None)
    user.login()
    used = user.totp.last_step
    with server.client(source="127.0.0.7") as c:
        for step in (used, used - 1):
            code = pyotp.TOTP(user.totp.secret).at(step * 30)
            r, _ = attempt(c, "alice", PASSWORD, code)
            assert (r.status_code, r.json()) == (401, INVALID)
    user.login()  # a later step works


def test_T11_address_pacing_and_forwarded_header_is_not_trusted(server: RunningServer) -> None:
    bootstrap_owner(server)
    names = (f"user{i}" for i in range(1000))
    with server.client(source="127.0.0.9") as sprayer:
        for _ in range(20):  # password spraying: a new name each time, one address
            r, _ = attempt(sprayer, next(names))
            assert r.status_code == 401
        failures = 20
        while failures < 24:  # past the free budget each failure doubles the wait: 4 s after 24
            r, _ = attempt(sprayer, next(names))
            if r.status_code == 429:
                time.sleep(int(r.headers["Retry-After"]))
            else:
                assert r.status_code == 401
                failures += 1
        r, _ = attempt(sprayer, next(names))
        assert r.status_code == 429
        spoofed = sprayer.post("/auth/login", headers={"X-Forwarded-For": "10.9.8.7"},
                               json={"username": next(names), "password": "x" * 12,
                                     "totp": "000000"})
        assert spoofed.status_code == 429
    with server.client(source="127.0.0.10") as other:
        r, _ = attempt(other, next(names))
        assert r.status_code == 401
