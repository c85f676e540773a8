"""Day-two output of the operator CLI (issue 16), through the real ``rampart`` command against a
real server process, with a protocol-speaking device whose strings are attacker text (T16).

One server for the module: an owner, a tenant with approver and technician (keys and root v1
held by the harness and saved into each person's CLI config as `rampart login` / `key new`
leave them), and a device whose hostname carries a terminal escape and a forged line.
Commands run with stdout on a pipe (as in `rampart devices list T | grep dev-…`); TZ=UTC.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from harness.operators import Operator, TenantSetup, bootstrap_owner, ok, setup_tenant
from harness.server import RunningServer, init_server
from harness.wsagent import WireAgent

from rampart import tlspin, trust
from rampart.cli.config import Config, Session
from rampart.wire import Report, digest, encode_report
from rampart.wire.inventory import AgentInfo, EolStatus, Inventory, OsInfo, Package, Update

pytestmark = pytest.mark.client_side

REPO = Path(__file__).resolve().parent.parent
PASSPHRASE = "day two passphrase"
HOSTNAME = "web\x1b[2J\nFAKELOG all clear"


class Cli:
    """One person's `rampart` (their own config directory), stdout and stderr on pipes."""

    def __init__(self, config: Path) -> None:
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("RAMPART_") and k not in ("COLUMNS", "LINES")}
        self.env.update(PYTHONPATH=str(REPO), RAMPART_CONFIG_DIR=str(config), TZ="UTC",
                        RAMPART_KEY_PASSPHRASE=PASSPHRASE)

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "rampart.cli.main", *args], capture_output=True,
                              text=True, timeout=120, cwd=REPO, stdin=subprocess.DEVNULL,
                              env={**self.env, **(env or {})})

    def ok(self, *args: str, **kw: Any) -> str:
        r = self.run(*args, **kw)
        assert r.returncode == 0, f"{args}: rc={r.returncode}\n{r.stdout}\n{r.stderr}"
        return r.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def fails(self, *args: str, **kw: Any) -> str:
        r = self.run(*args, **kw)
        assert r.returncode != 0, f"{args} succeeded:\n{r.stdout}"
        assert r.stderr.count("\n") == 1, r.stderr
        return r.stderr


def cli_for(base: Path, server: RunningServer, op: Operator, t: TenantSetup,
            key: trust.OperatorKey | None) -> Cli:
    cfg = Config(base / f"cli-{op.username}")
    cfg.ensure()
    cfg.save_session(Session(server=server.url, cert_sha256=tlspin.fingerprint(server.cert_der),
                             username=op.username, token=op.token), server.cert_der)
    if key is not None:
        cfg.save_key(key.key_id, trust.encrypt_private_key(key, PASSPHRASE), name=op.username,
                     tenant=t.id, username=op.username)
    cfg.save_root(t.id, 1, t.root_envelope.encode(), newest=True)
    cfg.save_pin(t.id, trust.root_sha256(t.root_envelope.encode()))
    return Cli(base / f"cli-{op.username}")


@dataclass
class World:
    server: RunningServer
    t: TenantSetup
    agent: WireAgent
    owner: Cli
    tech: Cli
    approver: Cli

    @property
    def device(self) -> str:
        return self.agent.device_id


def report(updates: list[Update], *, notes: dict[str, str] | None = None) -> dict[str, Any]:
    now = int(time.time())
    inv = Inventory(
        collected_at=now, agent=AgentInfo(version="wire", containment="none"),
        os=OsInfo(id="debian", name="Debian GNU/Linux", version_id="12", kernel_release="6.1",
                  kernel_version="#1", arch="amd64", hostname=HOSTNAME, boot_time=now - 100,
                  eol=EolStatus(status="unknown")),
        packages=[Package(manager="dpkg", name="openssl", arch="amd64", version="1.0")],
        updates=updates, notes=notes or {})
    return {"type": "inventory", "report": encode_report(Report(full=inv)), "result": digest(inv),
            "base": None}


def wait_until(check: Any, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return got


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("day2")
    server = init_server(base / "srv")
    config = server.data_dir / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "scheduler_interval_s": 1}))
    server.start()
    agent: WireAgent | None = None
    try:
        owner = bootstrap_owner(server)
        t = setup_tenant(owner, "acme")
        tok = ok(owner.http.post(f"/tenants/{t.id}/enrollment-tokens", json={"ttl_s": 600}))
        agent = WireAgent.enrol(server, tok["token"], tok["root_sha256"], hostname=HOSTNAME)
        ok(owner.http.post(f"/tenants/{t.id}/devices/{agent.device_id}/approve"))
        assert agent.connect()["type"] == "welcome"
        yield World(server, t, agent, cli_for(base, server, owner, t, t.owner_key),
                    cli_for(base, server, t.tech, t, t.tech_key),
                    cli_for(base, server, t.approver, t, t.approver_key))
    finally:
        if agent is not None:
            agent.close()
        server.stop()


# --- first: a script check that outlives its grant (its alert is asserted at the end) -------------

SHORT: dict[str, str] = {}


def test_a_script_check_signed_under_a_shorter_grant_says_so(w: World, tmp_path: Path) -> None:
    script = tmp_path / "short.sh"
    script.write_bytes(b"#!/bin/sh\ntrue\n")
    gid = w.tech.ok("grant", "request", "acme", "--devices", w.device, "--capabilities", "script",
                    "--for", "1m", "--reason", "script check: short").splitlines()[0]
    w.approver.ok("grant", "approve", gid, "--yes")
    out = w.tech.ok("checks", "script", "acme", str(script), "--device", w.device, "--name", "short",
                    "--for", "1d", "--grant", gid)
    assert "(when its grant ends)" in out
    SHORT.update(grant=gid, job=out.split()[0])
    # Half of its time under the grant is still to go: no alert yet.
    assert not [a for a in w.tech.json("alerts", "list", "acme")
                if a["kind"] == "script-check-grant-ending"]


# --- accounts -----------------------------------------------------------------------------------


def test_account_list_shows_status_from_the_status_field_and_tenant_names(w: World) -> None:
    owner = w.t.owner
    ok(owner.http.post("/accounts", json={"username": "newbie", "role": "technician",
                                          "tenants": [w.t.id]}))
    gone = owner.create_account("gone", "viewer", [w.t.id])
    ok(owner.http.post("/auth/step-up", json={"code": owner.totp.code()}))
    ok(owner.http.post(f"/accounts/{gone.username}/revoke", json={"reason": "left"}))
    owner.login()  # a second session: the account has a last login
    rows = {line.split()[0]: line for line in w.owner.ok("account", "list").splitlines()}
    assert rows["username"].split() == ["username", "role", "tenants", "status", "last", "login"]
    # Plain rows: the tenant by name with its id, and the status column (never the `active` flag).
    assert re.fullmatch(rf"newbie\s+technician\s+acme \({w.t.id}\)\s+pending\s+-", rows["newbie"])
    assert re.search(r"\brevoked\b", rows["gone"]) and "active" not in rows["gone"]
    assert re.search(r"\bactive\s+-$", rows[w.t.tech.username])
    # Times say their zone.
    assert re.fullmatch(r"owner\s+owner\s+all\s+active\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC",
                        rows["owner"])
    # --json and -o json are the same document.
    assert w.owner.json("account", "list") == json.loads(w.owner.ok("account", "list", "-o", "json"))


# --- tables when stdout is not a terminal ---------------------------------------------------------


def test_T16_piped_tables_are_plain_rows_that_grep_finds_whole(w: World) -> None:
    out = w.tech.ok("devices", "list", "acme")
    [row] = [line for line in out.splitlines() if w.device in line]
    # One line: the whole id, the escaped hostname (its LF cannot start a row), the status.
    assert "web\\x1b[2J\\nFAKELOG all clear" in row and "approved" in row
    assert "\x1b" not in out and "│" not in out
    assert not any(line.startswith("FAKELOG") for line in out.splitlines())
    # A narrow terminal width does not fold a piped row either.
    narrow = w.tech.ok("devices", "list", "acme", env={"COLUMNS": "40"})
    assert [line for line in narrow.splitlines() if w.device in line] == [row]
    # -o wide prints the same plain rows; -o json is --json; --json stays.
    assert w.tech.ok("devices", "list", "acme", "-o", "wide") == out
    assert json.loads(w.tech.ok("devices", "list", "acme", "-o", "json")) == \
        w.tech.json("devices", "list", "acme")
    assert "use one of table, wide, json" in w.tech.fails("devices", "list", "acme", "-o", "yaml")


# --- grants: the approver sees hostnames next to the signed ids ------------------------------------


def test_T16_grant_approve_shows_server_hostnames_escaped_next_to_signed_ids(w: World) -> None:
    gid = w.tech.ok("grant", "request", "acme", "--devices", w.device, "--capabilities", "script",
                    "--for", "1h", "--reason", "disk full").splitlines()[0]
    out = w.approver.ok("grant", "approve", gid, "--yes")
    [line] = [x for x in out.splitlines() if w.device in x]
    assert line.strip() == f'{w.device}  hostname "web\\x1b[2J\\nFAKELOG all clear"'
    assert "signed ids; hostname as the server reports it" in out
    assert "\x1b" not in out and not any(x.startswith("FAKELOG") for x in out.splitlines())
    assert re.search(r"window: +\S+ \S+ UTC -> \S+ \S+ UTC", out)
    # --json keeps the exact label apart from the signed device list.
    shown = w.approver.json("grant", "show", gid)
    assert shown["devices"] == [w.device] and shown["server_hostnames"] == {w.device: HOSTNAME}


# --- patch report: fresh security updates are shown -----------------------------------------------


def test_patch_report_shows_fresh_security_updates_in_their_own_column(w: World) -> None:
    # The newest candidate (2.0, from updates) is not the security fix (1.1, from security).
    w.agent.send(report([Update(manager="apt", name="openssl", arch="amd64", installed="1.0",
                                candidate="2.0", security=True, origin="bookworm-updates",
                                security_candidate="1.1"),
                         Update(manager="apt", name="vim", arch="amd64", installed="9.0",
                                candidate="9.1", origin="bookworm")]))
    assert w.agent.wait_for("inventory-ack")["result"]
    wait_until(lambda: any(m["security_pending"] for r in w.t.tech.http.get(
        f"/tenants/{w.t.id}/patch-report").json()["rings"] for m in r["devices"]), "the report")
    out = w.tech.ok("patch", "report", "acme")
    assert out.splitlines()[0] == ("acme: 1 device(s) with security updates pending, 0 of them "
                                   "pending for more than 7d")
    title, header, row = [x for x in out.splitlines()[1:] if x.strip()]
    assert title == "== No patch policy: 0 missing =="
    assert re.split(r"\s{2,}", header)[:5] == ["device", "host", "security pending", "older than 7d",
                                              "oldest (days)"]
    # Pending for seconds, not 7 days: listed as security pending, not (yet) overdue.
    cells = re.split(r"\s{2,}", row)
    assert cells[0] == w.device and cells[2] == "openssl 1.1 (candidate 2.0)" and cells[3] == "0.0"
    doc = w.tech.json("patch", "report", "acme")
    [m] = doc["rings"][0]["devices"]
    assert [(u["name"], u["security_version"], u["candidate"]) for u in m["security_updates"]] == \
        [("openssl", "1.1", "2.0")] and m["missing_security"] == []
    assert doc["devices_security_pending"] == 1 and doc["devices_missing"] == 0


# --- a service check where the device lists no services is unknown, not failing -------------------


def test_service_check_without_systemd_is_unknown_not_failing(w: World) -> None:
    check = w.tech.json("checks", "add", "acme", "service", "--unit", "ssh.service")
    w.agent.send(report([], notes={"services": "systemd is not the running init system; "
                                               "no services listed"}))
    assert w.agent.wait_for("inventory-ack")["result"]
    listed = wait_until(lambda: [c for c in w.tech.json("checks", "list", "acme")
                                 if c.get("id") == check["id"] and c["unknown"]], "the verdict")
    assert listed[0]["unknown"] == [w.device] and listed[0]["failing"] == []
    [row] = [x for x in w.tech.ok("checks", "list", "acme").splitlines() if check["id"] in x]
    assert re.split(r"\s{2,}", row)[-2:] == ["-", w.device]
    alerts = w.tech.json("alerts", "list", "acme")
    assert not [a for a in alerts if a["kind"] == "check-failed"]
    [unknown] = [a for a in alerts if a["kind"] == "check-unknown"]
    assert unknown["severity"] == "info" and "no services listed" in unknown["subject"]
    # A device that lists its services again gets a verdict; the unknown alert resolves.
    w.agent.send(report([]))
    assert w.agent.wait_for("inventory-ack")["result"]
    wait_until(lambda: not [a for a in w.tech.json("alerts", "list", "acme")
                            if a["kind"] == "check-unknown"], "the unknown alert resolved")
    assert [a for a in w.tech.json("alerts", "list", "acme") if a["kind"] == "check-failed"]
    w.tech.ok("checks", "remove", check["id"])


# --- e-mail alerts without an SMTP relay -----------------------------------------------------------


def test_email_target_is_refused_at_once_without_an_smtp_relay(w: World) -> None:
    err = w.owner.fails("alerts", "notify", "add", "acme", "--name", "on-call",
                        "--email", "oncall@msp.example")
    assert "e-mail alerts need an SMTP relay and this server has none" in err
    assert 'add an "smtp" section (host, from) to DATA/config.json' in err
    assert w.owner.json("alerts", "notify", "list", "acme") == []


# --- script checks: a grant made for the check, policy limits in human units ----------------------


def test_checks_script_never_uses_an_unrelated_grant_and_requests_its_own(w: World, tmp_path: Path) -> None:
    script = tmp_path / "raid.sh"
    script.write_bytes(b"#!/bin/sh\ntest -d /\n")
    check = ("checks", "script", "acme", str(script), "--device", w.device, "--every", "5m",
             "--name", "raid")
    jobs_before = w.tech.json("jobs", "list", "acme")
    # An approved script grant covering the device exists (the 'disk full' incident's): not used.
    assert [g for g in w.tech.json("grant", "list", "acme")
            if g["status"] == "approved" and "script" in g["capabilities"]]
    err = w.tech.fails(*check, "--for", "2h")
    assert "no grant made for this check: request a grant for this check ('script' on 1 device(s) " \
           "for 2h, reason 'script check: raid') with --request-grant" in err
    # The default policy allows 8 h: refused before anything is requested, in human units, with
    # the command that changes it.
    err = w.tech.fails(*check, "--for", "7d", "--request-grant")
    assert "--for 7d is longer than the tenant policy allows: grants with script may last at most " \
           "8h (28800 s); an owner changes it with: rampart root propose acme --policy " \
           "max_grant_seconds_by_capability=script:DURATION" in err
    assert w.tech.json("jobs", "list", "acme") == jobs_before
    # The owners allow 30-day script-only grants (a per-capability maximum in the signed policy).
    w.owner.ok("root", "propose", "acme", "--policy", "max_grant_seconds_by_capability=script:30d")
    w.owner.ok("root", "sign", "acme", "--yes", "--policy", "max_grant_seconds_by_capability=script:30d")
    w.owner.ok("root", "publish", "acme")
    shown = w.tech.ok("root", "show", "acme")
    assert "longest grant 8h, script 30d; standing (automation) grant 90d" in shown
    # A grant with shell as well stays within 8 h.
    err = w.tech.fails("grant", "request", "acme", "--devices", w.device, "--capabilities",
                       "script,shell", "--for", "2d", "--reason", "long shell")
    assert "grants with script,shell may last at most 8h (28800 s)" in err
    out = w.tech.ok(*check, "--for", "7d", "--request-grant")
    gid = re.search(r"grant (gr-\S+) requested for this check", out)[1]  # type: ignore[index]
    assert f"rampart grant approve {gid}" in out and w.tech.json("jobs", "list", "acme") == jobs_before
    assert f"({gid}) waits for an approver" in w.tech.fails(*check, "--for", "7d")
    assert "approved: 1 of 1" in w.approver.ok("grant", "approve", gid, "--yes")
    out = w.tech.ok(*check, "--for", "7d")
    job = w.tech.json("jobs", "show", out.split()[0])
    assert job["grant"] == gid
    grant = w.tech.json("grant", "show", gid)
    assert grant["reason"] == "script check: raid"
    assert grant["not_after"] - grant["not_before"] == 7 * 86400


def test_a_script_check_whose_grant_ends_first_raises_an_alert_before_it_stops(w: World) -> None:
    """(Its check was signed by the first test of the module, under a one-minute grant.)"""
    [alert] = wait_until(lambda: [a for a in w.tech.json("alerts", "list", "acme")
                                  if a["kind"] == "script-check-grant-ending"],
                         "the grant-ending alert", timeout=60)
    assert alert["severity"] == "warning"
    # Only the check that outlives its grant: 'raid' ends with the grant made for it.
    assert re.fullmatch(rf"script check short stops in 0h 0m, when its grant {SHORT['grant']} ends",
                        alert["subject"]), alert


# --- the per-capability maximum in the signed policy (trust core, no server) ----------------------


def test_T3_per_capability_grant_maximum_is_enforced_and_absent_keeps_root_bytes() -> None:
    from harness.tenant import Tenant

    # Absent, the field is not encoded: every existing root keeps its bytes and its SHA-256.
    assert b"max_grant_seconds_by_capability" not in trust.encode_payload(Tenant().root_doc(1))
    t = Tenant(policy=msgspec.convert({"max_grant_seconds_by_capability": {"script": 30 * 86400}},
                                      trust.Policy))
    now = int(time.time())
    root = trust.pin_root(t.roots[0], expected_sha256=t.root_sha256, now=now)
    week = 7 * 86400
    assert trust.verify_grant(root, t.grant(["dev-" + "a" * 24], seconds=week), now=now)
    # A grant that also holds a capability without its own limit gets max_grant_seconds (8 h).
    with pytest.raises(trust.CapabilityError, match="longer than the policy's 28800 s"):
        trust.verify_grant(root, t.grant(["dev-" + "a" * 24], caps=("script", "net"), seconds=week),
                           now=now)
    with pytest.raises(trust.CapabilityError, match="longer than the policy's 2592000 s"):
        trust.verify_grant(root, t.grant(["dev-" + "a" * 24], seconds=31 * 86400), now=now)


# --- enrolment: the token never on a command line ----------------------------------------------------


def test_enroll_new_prints_the_env_form_and_the_printed_lines_enrol_a_real_agent(
        w: World, tmp_path: Path) -> None:
    state = tmp_path / "agent-state"
    out = w.owner.ok("enroll", "new", "acme", "--ttl", "10m", "--state", str(state))
    assert "--token" not in out
    lines = [x.strip() for x in out.splitlines()]
    step = next(x for x in lines if x.startswith("read "))
    command = next(x for x in lines if x.startswith("rampart-agent enroll"))
    token = next(x for x in lines if x.startswith("one-time enrolment token: ")).split(": ", 1)[1]
    assert step == "read -rs RAMPART_ENROLL_TOKEN && export RAMPART_ENROLL_TOKEN"
    assert token not in command and token not in step
    # The two lines as printed, in a shell on the device, the token pasted at the prompt (stdin).
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=str(REPO))
    r = subprocess.run(["bash", "-c", f"{step}\n{command}"], input=token + "\n", capture_output=True,
                       text=True, timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (state / "device.key").exists()
    pending = [d for d in w.owner.json("devices", "list", "acme") if d["status"] == "pending"]
    assert [d["hostname"] for d in pending] == [socket.gethostname()]
    # --json carries the token apart from the command.
    doc = w.owner.json("enroll", "new", "acme", "--ttl", "10m")
    assert doc["token"] not in doc["command"] and doc["token_env"] == "RAMPART_ENROLL_TOKEN"


# --- the README's role labels and sources hold -------------------------------------------------------


def test_readme_automation_grant_is_the_technicians_and_catalog_import_says_where_the_feed_is(
        w: World) -> None:
    args = ("automation", "grant", "acme", "--action", "os-update", "--devices", w.device, "--for", "1d")
    assert "grant.request needs the role technician" in w.owner.fails(*args)
    # The technician passes the role check (this tenant's root has no automation key yet).
    assert "automation key is not in this tenant's current root" in w.tech.fails(*args)
    readme = (REPO / "README.md").read_text()
    assert "# technician (Tess):\nrampart group set acme web" in readme
    assert "https://lolrmm.io/api/rmm_tools.json" in w.owner.ok("catalog", "import", "--help")
    assert "--writes /var/spool/cups" not in readme and "--token" not in readme


def test_key_new_and_key_list_name_the_tenant(w: World) -> None:
    out = w.approver.ok("key", "new", "--tenant", "acme", "--name", "spare")
    assert re.search(rf"^key [0-9a-f]{{64}} created for {w.t.approver.username} \(tenant acme "
                     rf"\({w.t.id}\)\)$", out, re.M), out
    rows = [x for x in w.approver.ok("key", "list").splitlines() if "spare" in x]
    assert len(rows) == 1 and f"acme ({w.t.id})" in rows[0]
