"""S2 (CPG 2.D): dormant accounts are disabled automatically, on a real server with a shifted clock.

The clock is injected (RAMPART_CLOCK_OFFSET_S on the server process and the
same offset for the test's TOTP codes): nothing sleeps for days.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from harness.operators import Operator, audit_events, bootstrap_owner, ok
from harness.server import REPO, RunningServer, _env

pytestmark = pytest.mark.store

DAY = 86400


def shift_clock(server: RunningServer, people: list[Operator], seconds: int) -> None:
    """Restart the server with its clock ``seconds`` ahead; the people's authenticators follow."""
    server.stop()
    server.env["RAMPART_CLOCK_OFFSET_S"] = str(seconds)
    server.start()
    for p in people:
        p.totp.offset = seconds
        p.__dict__.pop("_http", None)


def login_status(server: RunningServer, p: Operator) -> int:
    with server.client() as c:
        return c.post("/auth/login", json={"username": p.username, "password": p.password,
                                           "totp": p.totp.code()}).status_code


def test_S2_dormant_account_disabled_after_the_clock_passes_N_days(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    tid = ok(owner.http.post("/tenants", json={"name": "Acme"}))["id"]
    assert ok(owner.http.get(f"/tenants/{tid}/settings"))["dormant_days"] == 30
    ok(owner.http.put(f"/tenants/{tid}/settings", json={"dormant_days": 7}))
    tech = owner.create_account("tech", "technician", [tid])
    tech.login()

    shift_clock(server, [owner, tech], 6 * DAY)  # not yet dormant
    tech.login()
    shift_clock(server, [owner, tech], 6 * DAY + 8 * DAY)  # 8 days after tech's last login
    assert login_status(server, tech) == 401  # disabled: the same answer as a wrong password
    owner.login()  # MSP-wide: the server default of 30 days applies, and 14 have passed
    [row] = [a for a in ok(owner.http.get("/accounts")) if a["username"] == "tech"]
    assert (row["status"], row["disabled_reason"]) == ("disabled", "dormant")
    disabled = [e for e in audit_events(owner, tid) if e["kind"] == "account.disabled"]
    assert [(e["actor"], e["details"]["username"], e["details"]["reason"]) for e in disabled] \
        == [("rampart", "tech", "dormant")]
    [alert] = [a for a in ok(owner.http.get(f"/tenants/{tid}/alerts"))
               if a["kind"] == "account-disabled"]
    assert "tech" in alert["subject"] and alert["status"] == "open"

    # An owner re-enables the account: dormancy counts afresh from now.
    ok(owner.http.post("/accounts/tech/enable"))
    tech.login()
    assert "account.enabled" in [e["kind"] for e in audit_events(owner, tid)]


def test_S2_last_owner_dormant_is_recovered_on_the_server_host(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    shift_clock(server, [owner], 31 * DAY)
    assert login_status(server, owner) == 401  # even the only owner is disabled when dormant
    r = subprocess.run([sys.executable, "-m", "rampart.server", "enable-account", "--data",
                        str(server.data_dir), "owner"], capture_output=True, text=True,
                       env={**_env(), **server.env}, cwd=REPO, timeout=60, check=False)
    assert r.returncode == 0 and "enabled" in r.stdout, r.stderr
    owner.login()
    r = subprocess.run([sys.executable, "-m", "rampart.server", "enable-account", "--data",
                        str(server.data_dir), "nobody"], capture_output=True, text=True,
                       env=_env(), cwd=REPO, timeout=60, check=False)
    assert r.returncode == 1 and "no account named nobody" in r.stderr
