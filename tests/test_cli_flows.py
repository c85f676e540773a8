"""The operator CLI, through the real `rampart` command, against a real server process.

One server per module (the bootstrap token works once); the tests run in
order and build on each other like an operator's day: bootstrap, keys, a
tenant and its root, a second and third operator, a root rotation, a device,
grants, a job, the audit log. Every secret is given through the environment or
stdin, never argv; TOTP codes are computed with pyotp from the otpauth URI the
CLI prints.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import sqlite3
import ssl
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pyotp
import pytest
from harness.ports import free_port

from rampart import tlspin, trust
from rampart.cli.recovery import key_from_paper
from rampart.trust import DeviceKey

# The subject is the CLI; the server routes behind it are repeated on PostgreSQL by the
# server and access tests.
pytestmark = pytest.mark.client_side

REPO = Path(__file__).resolve().parent.parent
PASSPHRASE = "correct horse battery staple"


@dataclass
class Server:
    url: str
    fingerprint: str
    bootstrap_token: str
    data: Path
    cert_der: bytes
    db_url: str | None = None


class Totp:
    """TOTP codes that are never reused (the server accepts each code once, ±1 step)."""

    def __init__(self) -> None:
        self.used: dict[str, int] = {}

    def code(self, secret: str) -> str:
        step = int(time.time()) // 30
        last = self.used.get(secret, -1)
        if step <= last:
            step = last + 1
            while step > int(time.time()) // 30 + 1:
                time.sleep(1)
        self.used[secret] = step
        return str(pyotp.TOTP(secret).at(step * 30))


TOTP = Totp()


@dataclass
class Operator:
    """One person at their own machine: a config dir and their secrets (env only)."""

    name: str
    config: Path
    server: Server
    password: str = ""
    totp_secret: str = ""
    keyid: str = ""
    fingerprint: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, extra_env: dict[str, str] | None = None, input: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "rampart.cli.main", *args],
                              env=self.environ(extra_env), input=input, capture_output=True,
                              text=True, timeout=timeout, cwd=REPO)

    def environ(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")}
        env["PYTHONPATH"] = str(REPO)
        env["RAMPART_CONFIG_DIR"] = str(self.config)
        env["COLUMNS"] = "200"
        env.update(self.env)
        env.update(extra or {})
        return env

    def ok(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        r = self.run(*args, **kw)
        assert r.returncode == 0, f"{args}: rc={r.returncode}\nstdout={r.stdout}\nstderr={r.stderr}"
        return r

    def json(self, *args: str, **kw: Any) -> Any:
        return json.loads(self.ok(*args, "--json", **kw).stdout)

    def login(self) -> None:
        self.ok("login", "--server", self.server.url, "--user", self.name, extra_env={
            "RAMPART_PASSWORD": self.password, "RAMPART_TOTP": TOTP.code(self.totp_secret),
            "RAMPART_SERVER_FINGERPRINT": self.server.fingerprint})

    def enrol_interactively(self, flag: str, token_env: str, token: str) -> str:
        """`login --bootstrap/--activate`: read the printed otpauth URI, answer with a code."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "rampart.cli.main", "login", "--server", self.server.url,
             "--user", self.name, "--fingerprint", self.server.fingerprint, flag],
            env=self.environ({token_env: token, "RAMPART_PASSWORD": self.password}),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=REPO)
        assert proc.stdout is not None and proc.stdin is not None
        seen = []
        uri = ""
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("otpauth URI: "):
                uri = line.split(": ", 1)[1].strip()
                break
        assert uri.startswith("otpauth://totp/"), "".join(seen)
        assert any("█" in ln or "▀" in ln or "▄" in ln for ln in seen), "no QR code printed"
        self.totp_secret = parse_qs(urlsplit(uri).query)["secret"][0]
        out, err = proc.communicate(TOTP.code(self.totp_secret) + "\n", timeout=60)
        assert proc.returncode == 0, f"rc={proc.returncode}\n{out}\n{err}"
        return out

    def key_new(self, *args: str) -> str:
        doc = self.json("key", "new", *args, extra_env={"RAMPART_KEY_PASSPHRASE": PASSPHRASE})
        self.keyid = doc["keyid"]
        self.fingerprint = doc["fingerprint"]  # what the key holder reads to an owner
        return self.keyid


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    """Assert the CLI failed with exactly one line on stderr and no traceback."""
    assert r.returncode != 0, r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert lines[0].startswith("rampart: error: ")
    return lines[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, pg_cluster: Any) -> Any:
    from rampart.server import commands as server_commands
    data = tmp_path_factory.mktemp("server") / "data"
    db_url = pg_cluster.new_database() if pg_cluster is not None else None
    res = server_commands.init_data_dir(data, db_url)
    port = free_port()
    log = data.parent / "server.log"
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rampart.cli.main", "server", "run", "--data", str(data),
             "--listen", f"127.0.0.1:{port}", "--agent-listen", f"127.0.0.1:{free_port()}"],
            stdout=fh, stderr=fh, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    cert = ssl.PEM_cert_to_DER_cert((data / "tls" / "cert.pem").read_text())
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            tlspin.fetch_certificate("127.0.0.1", port, timeout=1)
            break
        except OSError:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    assert tlspin.fingerprint(cert) == res.cert_sha256
    yield Server(f"https://127.0.0.1:{port}", res.cert_sha256, res.bootstrap_token, data, cert,
                 db_url)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def people(server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Operator]:
    base = tmp_path_factory.mktemp("operators")
    return {n: Operator(n, base / n, server, password=f"pw-{n}-{os.urandom(6).hex()}")
            for n in ("alice", "bob", "carol", "mallory")}


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    """Ids made by earlier tests (tenant, device, grants)."""
    return {}


# --- login -----------------------------------------------------------------------------------


def test_login_refused_without_pin_and_without_terminal(people: dict[str, Operator]) -> None:
    a = people["alice"]
    r = a.run("login", "--server", a.server.url, "--user", "alice", input="")
    line = one_line_error(r)
    assert "--fingerprint" in line and a.server.fingerprint in line
    assert not (a.config / "session.json").exists()


def test_login_refused_with_wrong_fingerprint(people: dict[str, Operator]) -> None:
    a = people["alice"]
    r = a.run("login", "--server", a.server.url, "--user", "alice", "--fingerprint", "ab" * 32,
              extra_env={"RAMPART_PASSWORD": "x", "RAMPART_TOTP": "123456"})
    line = one_line_error(r)
    assert "not the expected" in line
    assert not (a.config / "session.json").exists()


def test_bootstrap_first_owner_with_totp_from_printed_uri(people: dict[str, Operator]) -> None:
    a = people["alice"]
    out = a.enrol_interactively("--bootstrap", "RAMPART_BOOTSTRAP_TOKEN", a.server.bootstrap_token)
    assert "logged in" in out and "alice" in out
    session = a.config / "session.json"
    assert stat.S_IMODE(session.stat().st_mode) == 0o600
    assert stat.S_IMODE(a.config.stat().st_mode) == 0o700
    doc = json.loads(session.read_text())
    assert doc["username"] == "alice" and doc["cert_sha256"] == a.server.fingerprint
    me = a.json("whoami")
    assert me["username"] == "alice" and me["role"] == "owner"


def test_bootstrap_token_is_refused_the_second_time(people: dict[str, Operator]) -> None:
    m = people["mallory"]
    r = m.run("login", "--server", m.server.url, "--user", "mallory", "--fingerprint",
              m.server.fingerprint, "--bootstrap",
              extra_env={"RAMPART_BOOTSTRAP_TOKEN": m.server.bootstrap_token,
                         "RAMPART_PASSWORD": "whatever-long-password"}, input="")
    line = one_line_error(r)
    assert "403" in line


def test_password_login_with_totp_and_wrong_password(people: dict[str, Operator]) -> None:
    a = people["alice"]
    r = a.run("login", "--server", a.server.url, "--user", "alice", extra_env={
        "RAMPART_PASSWORD": "wrong", "RAMPART_TOTP": TOTP.code(a.totp_secret)})
    line = one_line_error(r)
    assert "invalid credentials" in line
    assert "wrong" not in line.replace("wrong passphrase", "")
    a.login()  # the pinned certificate from the first login is reused without --fingerprint
    assert a.json("whoami")["username"] == "alice"


def test_not_logged_in_is_one_line(tmp_path: Path, server: Server) -> None:
    nobody = Operator("nobody", tmp_path / "cfg", server)
    line = one_line_error(nobody.run("tenant", "list"))
    assert "not logged in" in line


# --- keys ------------------------------------------------------------------------------------


def test_M5_key_new_needs_a_tenant(people: dict[str, Operator]) -> None:
    a = people["alice"]
    r = a.run("key", "new", extra_env={"RAMPART_KEY_PASSPHRASE": PASSPHRASE})
    assert "per tenant" in one_line_error(r)
    assert a.json("key", "list") == []


# --- tenant, root v1 -------------------------------------------------------------------------


def test_tenant_create_signs_root_v1_locally(people: dict[str, Operator],
                                             world: dict[str, Any]) -> None:
    a = people["alice"]
    doc = a.json("tenant", "create", "acme", extra_env={"RAMPART_KEY_PASSPHRASE": PASSPHRASE})
    world["tenant"] = doc["id"]
    assert doc["root_version"] == 1
    # The tenant's owner key was made for it (keys are per tenant, M5), encrypted, 0600.
    # The other owner is the offline recovery key: shown once (here, in --json), kept nowhere.
    [a.keyid] = [k for k in doc["owner_keys"] if k != doc["recovery_keyid"]]
    assert len(doc["owner_keys"]) == 2
    spare = key_from_paper(doc["id"], doc["recovery_key"])
    assert spare.key_id == doc["recovery_keyid"]
    stored = b"".join(f.read_bytes() for f in a.config.rglob("*") if f.is_file())
    assert spare.seed().hex().encode() not in stored and doc["recovery_key"].encode() not in stored
    keyfile = a.config / "keys" / f"{a.keyid}.key"
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    assert stat.S_IMODE((a.config / "keys").stat().st_mode) == 0o700
    sealed = json.loads(keyfile.read_text())
    assert sealed["protection"] == "encrypted" and "seed" not in sealed
    assert trust.decode_private_key(keyfile.read_bytes(), PASSPHRASE).key_id == a.keyid
    listed = a.json("key", "list")
    assert [k for k in listed if k["keyid"] == a.keyid and k["registered"] and k["local"]
            and k["tenant"] == doc["id"]]
    saved = (a.config / "roots" / f"{doc['id']}.json").read_bytes()
    assert trust.root_sha256(saved) == doc["root_sha256"]
    root = a.json("root", "show", "acme")
    assert root["version"] == 1 and root["sha256"] == doc["root_sha256"]
    owners = {k["keyid"]: k for k in root["roles"]["owner"]["keys"]}
    approvers = [k["keyid"] for k in root["roles"]["approver"]["keys"]]
    assert set(owners) == {a.keyid, spare.key_id} and approvers == [a.keyid]
    assert root["roles"]["owner"]["threshold"] == 1
    assert owners[a.keyid]["name"] == "alice" and not owners[a.keyid]["recovery"]
    assert owners[spare.key_id]["recovery"] and root["expiry_stage"] is None
    human = a.ok("root", "show", doc["id"]).stdout  # by id, human output
    assert "root v1" in human and doc["root_sha256"] in human
    tenants = a.json("tenant", "list")
    assert [t for t in tenants if t["id"] == doc["id"] and t["trusted_root_version"] == 1]


def test_wrong_passphrase_is_refused_in_one_line_and_nothing_is_created(
        people: dict[str, Operator]) -> None:
    a = people["alice"]
    r = a.run("tenant", "create", "never", extra_env={"RAMPART_KEY_PASSPHRASE": "wrong"})
    line = one_line_error(r)
    assert "wrong passphrase" in line
    assert not [t for t in a.json("tenant", "list") if t["name"] == "never"]


def test_account_create_and_activation_login(people: dict[str, Operator]) -> None:
    a = people["alice"]
    for name, role in (("bob", "technician"), ("carol", "owner")):
        doc = a.json("account", "create", name, "--role", role)
        assert doc["role"] == role and "--activate" in doc["login_command"]
        p = people[name]
        out = p.enrol_interactively("--activate", "RAMPART_ACTIVATION_TOKEN",
                                    doc["activation_token"])
        assert f"logged in to {a.server.url} as {name}" in out
        p.key_new("--tenant", "acme")
    accounts = a.json("account", "list")
    assert {"alice", "bob", "carol"} <= {x["username"] for x in accounts}
    r = people["bob"].run("account", "create", "eve", "--role", "owner")
    assert "403" in one_line_error(r)


# --- root rotation ---------------------------------------------------------------------------


def test_root_rotation_adds_keys_with_propose_sign_publish(people: dict[str, Operator]) -> None:
    a, b = people["alice"], people["bob"]
    env = {"RAMPART_KEY_PASSPHRASE": PASSPHRASE}
    r = a.ok("root", "propose", "acme", "--add-key", b.keyid, "--role", "technician",
             "--name", "bob", "--add-key", a.keyid, "--role", "technician", "--name", "alice")
    assert "proposed root v2" in r.stdout and f"+ key bob {b.keyid[:16]}" in r.stdout
    assert b.fingerprint in r.stdout
    # --yes alone never approves a change: the keys must be named, with their fingerprints
    r = a.run("root", "sign", "acme", "--yes", extra_env=env)
    assert "differs from the changes you named" in one_line_error(r)
    # bob reads his fingerprint to alice over the phone; she names exactly what she expects
    r = a.ok("root", "sign", "acme", "--add-key", b.keyid, "--role", "technician",
             "--fingerprint", b.fingerprint, "--add-key", a.keyid, "--role", "technician",
             "--fingerprint", a.fingerprint or _fingerprint_of(a, a.keyid), extra_env=env)
    assert "owners of v1: 1 of 1" in r.stdout
    r = a.ok("root", "publish", "acme")
    assert "published root v2" in r.stdout
    root = a.json("root", "show", "acme")
    assert root["version"] == 2
    assert {k["keyid"] for k in root["roles"]["technician"]["keys"]} == {a.keyid, b.keyid}
    # bob sees the tenant root without a pin (told on stderr), but cannot sign for it ...
    r = b.ok("root", "show", "acme", "--json")
    assert json.loads(r.stdout)["version"] == 2 and "not pinned" in r.stderr
    # ... until he pins the SHA-256 alice gives him out of band
    r = b.ok("root", "pin", "acme", root["sha256"])
    assert "pinned acme" in r.stdout and "root v2" in r.stdout


def _fingerprint_of(op: Operator, keyid: str) -> str:
    """The fingerprint of a key in ``op``'s trusted root (computed locally from its public key)."""
    from rampart.trust import key_fingerprint_b64
    root = op.json("root", "show", "acme")
    data = (op.config / "roots" / f"{root['tenant']}.json").read_bytes()
    payload = trust.decode_payload(trust.decode_envelope(data).payload, trust.TenantRoot)
    return key_fingerprint_b64(payload.keys[keyid].public)


def test_root_publish_refused_until_owner_threshold_met(people: dict[str, Operator]) -> None:
    a, c = people["alice"], people["carol"]
    env = {"RAMPART_KEY_PASSPHRASE": PASSPHRASE}
    a.ok("root", "propose", "acme", "--add-key", c.keyid, "--role", "owner", "--add-key",
         c.keyid, "--role", "approver", "--owner-threshold", "2", "--name", "carol", "--name",
         "carol")
    expect = ("--add-key", c.keyid, "--role", "owner", "--fingerprint", c.fingerprint,
              "--add-key", c.keyid, "--role", "approver", "--fingerprint", c.fingerprint,
              "--owner-threshold", "2")
    a.ok("root", "sign", "acme", *expect, extra_env=env)
    r = a.run("root", "publish", "acme")
    line = one_line_error(r)
    assert "threshold" in line and "1 of 2" in line
    assert a.json("root", "show", "acme")["version"] == 2  # nothing changed locally
    # carol (an owner of v3) pins v2 from alice's word, and signs what she expects
    r = c.run("root", "sign", "acme", *expect, extra_env=env)
    assert r.returncode != 0 and "have not pinned" in r.stderr and "root pin" in r.stderr
    c.ok("root", "pin", "acme", a.json("root", "show", "acme")["sha256"])
    r = c.ok("root", "sign", "acme", *expect, extra_env=env)
    assert "owners of v3: 2 of 2" in r.stdout
    c.ok("root", "publish", "acme")
    root = a.json("root", "show", "acme")
    assert root["version"] == 3 and root["roles"]["owner"]["threshold"] == 2


def test_root_sign_refused_for_a_non_owner(people: dict[str, Operator]) -> None:
    a, b = people["alice"], people["bob"]
    a.ok("root", "propose", "acme", "--expires", "200d")
    r = b.run("root", "sign", "acme", extra_env={"RAMPART_KEY_PASSPHRASE": PASSPHRASE})
    assert "your signature would not count" in one_line_error(r)


# --- devices and grants ----------------------------------------------------------------------


def _enrol_fake_device(server: Server, token: str) -> str:
    """Enrol a device the way an agent does (the test holds the device key)."""
    key = DeviceKey.generate()
    with httpx.Client(verify=tlspin.pinned_context(server.cert_der), timeout=30) as c:
        r = c.post(f"{server.url}/agent/v1/enroll", json={
            "token": token, "public_key": key.public.to_text(), "hostname": "test-host",
            "agent_version": "test"})
    assert r.status_code == 200, r.text
    return str(r.json()["device_id"])


def test_enroll_new_prints_the_agent_command_with_local_pins(
        people: dict[str, Operator], world: dict[str, Any]) -> None:
    a = people["alice"]
    r = a.ok("enroll", "new", "acme", "--ttl", "10m")
    cmd = [ln.strip() for ln in r.stdout.splitlines() if ln.strip().startswith("rampart-agent enroll")][0]
    root = a.json("root", "show", "acme")
    assert f"--root-sha256 {root['sha256']}" in cmd
    assert f"--cert-sha256 {a.server.fingerprint}" in cmd
    assert f"--server {a.server.url}" in cmd and "--state /var/lib/rampart-agent" in cmd
    # The token is never on the agent's command line (ps, shell history): a no-echo read sets it.
    assert "--token" not in r.stdout and "read -rs RAMPART_ENROLL_TOKEN" in r.stdout
    token = re.search(r"^one-time enrolment token: (\S+)$", r.stdout, re.M)
    assert token
    dev = _enrol_fake_device(a.server, token.group(1))
    listed = a.json("devices", "list", "acme")
    assert [d for d in listed if d["id"] == dev and d["status"] == "pending"]
    a.ok("device", "approve", "acme", dev)
    assert [d for d in a.json("devices", "list", "acme")
            if d["id"] == dev and d["status"] == "approved"]
    world["device"] = dev


def test_grant_request_and_approval(people: dict[str, Operator], world: dict[str, Any]) -> None:
    a, b = people["alice"], people["bob"]
    env = {"RAMPART_KEY_PASSPHRASE": PASSPHRASE}
    dev = world["device"]
    doc = b.json("grant", "request", "acme", "--devices", dev, "--capabilities", "script",
                 "--for", "2h", "--reason", "disk cleanup")
    gid = doc["id"]
    assert gid.startswith("gr-") and doc["devices"] == [dev]
    # the technician cannot approve: not an approver of the root
    line = one_line_error(b.run("grant", "approve", gid, extra_env=env))
    assert "approver" in line
    shown = a.json("grant", "show", gid)
    assert shown["grantee_name"] == "bob" and shown["approvals"] == 0
    r = a.ok("grant", "approve", gid, extra_env=env)
    assert "technician:   bob" in r.stdout and "disk cleanup" in r.stdout
    assert "approved: 1 of 1" in r.stdout
    grants = a.json("grant", "list", "acme")
    assert [g for g in grants if g["id"] == gid and g["status"] == "approved"]
    world["grant"] = gid


def test_M3_owner_cannot_request_a_grant(people: dict[str, Operator],
                                        world: dict[str, Any]) -> None:
    """Least privilege: requesting access is the technician's job; owners approve."""
    a = people["alice"]
    r = a.run("grant", "request", "acme", "--devices", world["device"], "--capabilities",
              "script", "--for", "1h", "--reason", "self service")
    line = one_line_error(r)
    assert "403" in line and "grant.request" in line


# --- jobs ------------------------------------------------------------------------------------


def test_run_refused_under_unapproved_grant(people: dict[str, Operator], world: dict[str, Any],
                                            tmp_path: Path) -> None:
    b = people["bob"]
    doc = b.json("grant", "request", "acme", "--devices", world["device"], "--capabilities",
                 "script", "--for", "1h", "--reason", "not yet approved")
    script = tmp_path / "hello.sh"
    script.write_text("echo hello\n")
    r = b.run("run", "acme", "--grant", doc["id"], "--devices", world["device"], "--script",
              str(script), extra_env={"RAMPART_KEY_PASSPHRASE": PASSPHRASE})
    assert "not approved yet" in one_line_error(r)


def test_run_signs_and_uploads_a_job(people: dict[str, Operator], world: dict[str, Any],
                                     tmp_path: Path) -> None:
    b = people["bob"]
    script = tmp_path / "hello.sh"
    script.write_bytes(b"echo hello from rampart\n")
    # group:NAME is expanded here, before signing: the signed job lists the group's devices.
    b.ok("group", "set", "acme", "lab", "--devices", world["device"])
    b.ok("group", "set", "acme", "empty")
    r = b.run("run", "acme", "--grant", world["grant"], "--devices", "group:empty", "--script", str(script),
              extra_env={"RAMPART_KEY_PASSPHRASE": PASSPHRASE})
    assert "device group empty is empty" in one_line_error(r)
    r = b.ok("run", "acme", "--grant", world["grant"], "--devices", "group:lab", "--script",
             str(script), "--writes", "/tmp/rampart-test", "--timeout", "60",
             extra_env={"RAMPART_KEY_PASSPHRASE": PASSPHRASE})
    job_id = r.stdout.split()[0]
    assert job_id.startswith("job-")
    job = b.json("jobs", "show", job_id)
    assert job["id"] == job_id and job["grant"] == world["grant"]
    assert [t["device"] for t in job["targets"]] == [world["device"]]
    assert job["signer"] == b.keyid
    world["job"] = job_id
    # a capability the grant does not give is refused locally, nothing is sent
    r = b.run("run", "acme", "--grant", world["grant"], "--devices", world["device"], "--script",
              str(script), "--connect", "443", extra_env={"RAMPART_KEY_PASSPHRASE": PASSPHRASE})
    assert "does not give net" in one_line_error(r)


def test_T1_a_cli_without_a_root_pin_signs_no_job_and_approves_no_grant(
        people: dict[str, Operator], world: dict[str, Any], tmp_path: Path) -> None:
    """Issue 11 finding 5: with the root only seen (no pin), nothing is signed for the tenant."""
    a, b = people["alice"], people["bob"]
    env = {"RAMPART_KEY_PASSPHRASE": PASSPHRASE}
    script = tmp_path / "x.sh"
    script.write_text("echo unpinned\n")
    pins = {op.name: op.config / "roots" / f"{world['tenant']}.pin" for op in (a, b)}
    saved = {n: p.read_bytes() for n, p in pins.items()}
    gid = b.json("grant", "request", "acme", "--devices", world["device"], "--capabilities",
                 "script", "--for", "1h", "--reason", "unpinned approver")["id"]
    jobs_before = len(b.json("jobs", "list", "acme"))
    try:
        for p in pins.values():
            p.unlink()
        r = b.run("run", "acme", "--grant", world["grant"], "--devices", world["device"],
                  "--script", str(script), extra_env=env)
        assert "have not pinned" in one_line_error(r) and "root pin" in r.stderr
        r = a.run("grant", "approve", gid, "--yes", extra_env=env)
        assert "have not pinned" in r.stderr and r.returncode != 0
    finally:
        for n, p in pins.items():
            p.write_bytes(saved[n])
    assert len(b.json("jobs", "list", "acme")) == jobs_before
    assert a.json("grant", "show", gid)["approvals"] == 0


def test_checks_script_signs_a_repeating_job_and_checks_list_shows_it(
        people: dict[str, Operator], world: dict[str, Any], tmp_path: Path) -> None:
    """`rampart checks script` signs one job with a repeat rule (the agent runs it on that schedule)."""
    a, b = people["alice"], people["bob"]
    env = {"RAMPART_KEY_PASSPHRASE": PASSPHRASE}
    script = tmp_path / "check.sh"
    script.write_bytes(b"#!/bin/sh\ntest -d /\n")
    dev = world["device"]
    for args, why in ((["--every", "0s"], "must be positive"), (["--for", "91d"], "at most 90d"),
                      (["--every", "8d"], "--every must be")):
        r = b.run("checks", "script", "acme", str(script), "--device", dev, *args, extra_env=env)
        assert why in one_line_error(r)
    # The approved grant covering the device was made for something else: never picked by itself.
    r = b.run("checks", "script", "acme", str(script), "--device", dev, "--every", "5m", "--for", "1h",
              "--name", "root fs", extra_env=env)
    assert "no grant made for this check" in one_line_error(r)
    out = b.ok("checks", "script", "acme", str(script), "--device", dev, "--every", "5m", "--for", "1d",
               "--name", "root fs", "--grant", world["grant"], extra_env=env).stdout
    job_id = out.split()[0]
    assert job_id.startswith("job-") and "until" in out and "(when its grant ends)" in out  # 2 h grant
    assert f"rampart grant revoke {world['grant']}" in out
    job = b.json("jobs", "show", job_id)
    assert job["grant"] == world["grant"] and job["signer"] == b.keyid
    [check] = [c for c in a.json("checks", "list", "acme") if c.get("kind") == "script"]
    assert check["id"] == job_id and check["name"] == "root fs" and check["every_s"] == 300
    assert check["status"] == "active" and [d["device"] for d in check["devices"]] == [dev]
    assert check["devices"][0]["state"] == "pending"
    assert a.json("checks", "results", "acme", job_id) == []


def test_run_wait_with_a_real_agent(people: dict[str, Operator], world: dict[str, Any],
                                    tmp_path: Path) -> None:
    """The whole path: enrol a real agent, approve it, grant, run --wait, read its receipt."""
    from harness.agent import AgentProcess

    a, b = people["alice"], people["bob"]
    env = {"RAMPART_KEY_PASSPHRASE": PASSPHRASE}
    info = a.json("enroll", "new", "acme", "--ttl", "10m")
    base = Path(tempfile.mkdtemp(prefix="rampart-cli-test-"))
    base.chmod(0o755)  # jobs may run as an unprivileged user: the scratch must be reachable
    scratch = base / "scratch"
    scratch.mkdir()
    scratch.chmod(0o777)
    agent = AgentProcess(base / "agent")
    r = agent.enroll(info["server"], info["token"], info["root_sha256"], info["cert_sha256"],
                     "--write-root", str(scratch))
    assert r.returncode == 0, r.stderr
    dev = agent.device_id
    a.ok("device", "approve", "acme", dev)
    agent.start()
    try:
        gid = b.json("grant", "request", "acme", "--devices", dev, "--capabilities", "script",
                     "--for", "1h", "--reason", "real agent")["id"]
        a.ok("grant", "approve", gid, extra_env=env)
        script = tmp_path / "hello.sh"
        script.write_text(f"echo hello from the agent\necho written > {scratch}/out.txt\n")
        r = b.run("run", "acme", "--grant", gid, "--devices", dev, "--script", str(script),
                  "--writes", str(scratch), "--timeout", "60", "--wait", "--wait-timeout", "90s",
                  extra_env=env)
        assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{agent.log.read_text()}"
        assert f"{dev}: ran, exit 0" in r.stdout and "hello from the agent" in r.stdout
        assert (scratch / "out.txt").read_text() == "written\n"
        # a failing script makes `run --wait` exit non-zero with one line
        script.write_text("echo failing >&2\nexit 3\n")
        r = b.run("run", "acme", "--grant", gid, "--devices", dev, "--script", str(script),
                  "--timeout", "60", "--wait", "--wait-timeout", "90s", extra_env=env)
        assert "exit 3" in r.stdout and "failing" in r.stdout
        assert "failed or refused" in one_line_error(r)
    finally:
        agent.stop()
        shutil.rmtree(base, ignore_errors=True)


# --- audit -----------------------------------------------------------------------------------


def test_audit_verify_and_export(people: dict[str, Operator], world: dict[str, Any],
                                 tmp_path: Path) -> None:
    a = people["alice"]
    report = a.json("audit", "verify", "acme")
    assert report["ok"] and report["size"] > 0 and report["jobs_verified"] >= 1
    saved = a.config / "checkpoints" / f"{world['tenant']}.json"
    assert saved.exists()
    r = a.ok("audit", "verify", "acme")
    assert r.stdout.startswith("OK: audit log of acme") and "consistent with your last" in r.stdout
    out = tmp_path / "audit.jsonl"
    a.ok("audit", "export", "acme", "--format", "jsonl", "--output", str(out))
    lines = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert len(lines) >= report["size"]
    jobs = [x for x in lines if x["kind"] == "job"]
    assert any(x["decoded"]["payload"]["id"] == world["job"] for x in jobs)
    assert all(base64.b64decode(x["data"]) for x in lines)


def test_audit_verify_detects_a_checkpoint_the_log_does_not_extend(
        people: dict[str, Operator], world: dict[str, Any]) -> None:
    """T7: what this operator saw before must stay a prefix of the log."""
    a = people["alice"]
    saved = a.config / "checkpoints" / f"{world['tenant']}.json"
    good = saved.read_bytes()
    env = trust.decode_envelope(good)
    cp = trust.decode_payload(env.payload, trust.Checkpoint)
    forged = trust.Checkpoint(log=cp.log, size=cp.size, root="00" * 32, time=cp.time)
    saved.write_bytes(trust.Envelope(env.payload_type, trust.encode_payload(forged),
                                     env.signatures).to_bytes())
    r = a.run("audit", "verify", "acme")
    line = one_line_error(r)
    assert "FAILED" in line and "changed since" in line
    assert "PROBLEM:" in r.stdout
    saved.write_bytes(good)


# --- errors and --json -----------------------------------------------------------------------


@pytest.mark.parametrize("args, needle", [
    (("tenant", "list", "--bogus"), "no such option"),
    (("root", "show", "no-such-tenant"), "no tenant"),
    (("grant", "request", "acme", "--devices", "dev-000000000000000000000000", "--capabilities",
      "script", "--for", "2 fortnights", "--reason", "x"), "invalid --for"),
    (("grant", "request", "acme", "--devices", "dev-000000000000000000000000", "--capabilities",
      "telepathy", "--for", "1h", "--reason", "x"), "unknown capabilities"),
    (("grant", "approve", "gr-doesnotexist0000000000"), "404"),
    (("jobs", "show", "job-doesnotexist000000000"), "404"),
    (("audit", "export", "acme", "--format", "csv"), "jsonl"),
])
def test_errors_are_one_line(people: dict[str, Operator], args: tuple[str, ...],
                             needle: str) -> None:
    line = one_line_error(people["alice"].run(*args))
    assert needle.lower() in line.lower()


def test_json_outputs_parse(people: dict[str, Operator], world: dict[str, Any]) -> None:
    a = people["alice"]
    for args in (("whoami",), ("tenant", "list"), ("account", "list"), ("key", "list"),
                 ("root", "show", "acme"), ("root", "history", "acme"),
                 ("devices", "list", "acme"), ("grant", "list", "acme"),
                 ("grant", "show", world["grant"]), ("jobs", "show", world["job"]),
                 ("jobs", "list", "acme")):
        assert a.json(*args) is not None


# --- the server is the attacker (T1): the CLI verifies before it trusts or signs ---------------


class _Db:
    """The attacker's direct handle on the server's database, SQLite or PostgreSQL."""

    def __init__(self, server: Server) -> None:
        self.pg = server.db_url is not None
        if server.db_url is not None:
            import psycopg

            self.conn: Any = psycopg.connect(server.db_url.replace("+psycopg", ""), autocommit=True)
        else:
            self.conn = sqlite3.connect(server.data / "rampart.db", timeout=30, isolation_level=None)

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self.conn.execute(sql.replace("?", "%s") if self.pg else sql, params)

    def close(self) -> None:
        self.conn.close()


def _db(server: Server) -> _Db:
    return _Db(server)


def test_T1_forged_root_on_the_server_is_refused_and_not_trusted(
        people: dict[str, Operator], world: dict[str, Any]) -> None:
    """An attacker with the database publishes a self-signed next root naming their own key."""
    a = people["alice"]
    trusted = a.config / "roots" / f"{world['tenant']}.json"
    before = trusted.read_bytes()
    env = trust.decode_envelope(before)
    cur = trust.decode_payload(env.payload, trust.TenantRoot)
    attacker = trust.OperatorKey.generate()
    aid = attacker.key_id
    forged = trust.TenantRoot(
        tenant=cur.tenant, name=cur.name, version=cur.version + 1, expires=cur.expires,
        keys={aid: trust.KeyEntry(public=attacker.public.to_b64(), name="alice")},
        roles=trust.Roles(owner=trust.RoleSpec(keyids=[aid]), approver=trust.RoleSpec(keyids=[aid]),
                          technician=trust.RoleSpec(keyids=[aid])),
        log_keys=cur.log_keys, policy=cur.policy)
    data = trust.sign_envelope(trust.TenantRoot.PAYLOAD_TYPE, trust.encode_payload(forged),
                               [attacker]).to_bytes()
    db = _db(a.server)
    db.execute("INSERT INTO roots (tenant_id, version, sha256, envelope, published_at) "
               "VALUES (?, ?, ?, ?, ?)",
               (cur.tenant, forged.version, trust.root_sha256(data), data, time.time()))
    try:
        line = one_line_error(a.run("root", "show", "acme"))
        assert "threshold-not-met" in line and f"v{forged.version}" in line
        assert trusted.read_bytes() == before
        assert not (a.config / "roots" / cur.tenant / f"v{forged.version}.json").exists()
        # a newcomer trusting on first use also refuses the broken chain
        fresh = Operator("carol", a.config.parent / "carol-2", a.server, people["carol"].password,
                         people["carol"].totp_secret)
        fresh.login()
        assert "threshold-not-met" in one_line_error(fresh.run("root", "show", "acme"))
        assert not (fresh.config / "roots" / f"{cur.tenant}.json").exists()
    finally:
        db.execute("DELETE FROM roots WHERE tenant_id = ? AND version = ?",
                   (cur.tenant, forged.version))
        db.close()


def test_T1_grant_swapped_on_the_server_is_not_approved(
        people: dict[str, Operator], world: dict[str, Any]) -> None:
    """The database swaps a requested grant's payload for one naming the attacker's key."""
    a, b = people["alice"], people["bob"]
    gid = b.json("grant", "request", "acme", "--devices", world["device"], "--capabilities",
                 "script", "--for", "1h", "--reason", "routine")["id"]
    db = _db(a.server)
    (raw,) = db.execute("SELECT envelope FROM grants WHERE id = ?", (gid,)).fetchone()
    env = trust.decode_envelope(bytes(raw))
    g = trust.decode_payload(env.payload, trust.Grant)
    attacker = trust.OperatorKey.generate()
    swapped = trust.Grant(id=g.id, tenant=g.tenant, grantee=attacker.key_id, devices=g.devices,
                          capabilities=g.capabilities, not_before=g.not_before,
                          not_after=g.not_after, reason=g.reason, requested_by=g.requested_by)
    data = trust.Envelope(env.payload_type, trust.encode_payload(swapped), ()).to_bytes()
    db.execute("UPDATE grants SET envelope = ?, grantee = ? WHERE id = ?",
               (data, attacker.key_id, gid))
    db.close()
    r = a.run("grant", "approve", gid, extra_env={"RAMPART_KEY_PASSPHRASE": PASSPHRASE})
    assert "not a technician or automation key" in one_line_error(r)
    db = _db(a.server)
    try:
        (raw,) = db.execute("SELECT envelope FROM grants WHERE id = ?", (gid,)).fetchone()
    finally:
        db.close()
    assert trust.decode_envelope(bytes(raw)).signatures == ()  # nothing was signed or uploaded


# --- identity and access (issue 4) -------------------------------------------------------------


def test_N3_tenant_networks_warns_while_any_network_is_allowed(people: dict[str, Operator]) -> None:
    a = people["alice"]
    r = a.ok("tenant", "networks", "acme")
    assert "accepts operators from any network" in r.stderr
    r = a.run("tenant", "networks", "acme", "--allow", "10.0.0.1/8")
    assert "CIDR" in one_line_error(r)
    doc = a.json("tenant", "settings", "acme")
    assert doc == {"mass_action_limit": 10, "dormant_days": 30, "allowed_networks": []}


def test_G5_run_asks_for_a_fresh_totp_code_and_retries(people: dict[str, Operator],
                                                       world: dict[str, Any],
                                                       tmp_path: Path) -> None:
    a, b = people["alice"], people["bob"]
    env = {"RAMPART_KEY_PASSPHRASE": PASSPHRASE}
    info = a.json("enroll", "new", "acme", "--ttl", "10m")
    second = _enrol_fake_device(a.server, info["token"])
    a.ok("device", "approve", "acme", second)
    devices = f"{world['device']},{second}"
    gid = b.json("grant", "request", "acme", "--devices", devices, "--capabilities", "script",
                 "--for", "1h", "--reason", "two hosts")["id"]
    a.ok("grant", "approve", gid, extra_env=env)
    assert a.json("tenant", "settings", "acme", "--mass-action-limit", "1")[
        "mass_action_limit"] == 1
    script = tmp_path / "two.sh"
    script.write_text("echo two\n")
    argv = ("run", "acme", "--grant", gid, "--devices", devices, "--script", str(script))
    # No terminal and no RAMPART_TOTP: the step-up cannot be answered, nothing is stored.
    r = b.run(*argv, extra_env=env)
    assert r.returncode != 0 and "step-up required" in r.stderr and "RAMPART_TOTP" in r.stderr
    # With a fresh code the CLI proves it and retries the same signed job once.
    r = b.ok(*argv, extra_env={**env, "RAMPART_TOTP": TOTP.code(b.totp_secret)})
    assert "step-up verified" in r.stderr
    job = b.json("jobs", "show", r.stdout.split()[0])
    assert sorted(tg["device"] for tg in job["targets"]) == sorted(devices.split(","))
    a.json("tenant", "settings", "acme", "--mass-action-limit", "10")
    world["two_hosts_grant"] = gid


def test_G4_grant_revoke_signs_a_revocation_and_ends_the_grant(
        people: dict[str, Operator], world: dict[str, Any], tmp_path: Path) -> None:
    a, b = people["alice"], people["bob"]
    env = {"RAMPART_KEY_PASSPHRASE": PASSPHRASE}
    gid = world["two_hosts_grant"]
    r = b.run("grant", "revoke", gid, "--yes", extra_env=env)
    assert "approver or owner role" in one_line_error(r)  # refused locally, nothing signed
    r = a.ok("grant", "revoke", gid, "--reason", "work done", "--yes", extra_env=env)
    assert f"grant {gid} revoked" in r.stdout
    assert a.json("grant", "show", gid)["status"] == "revoked"
    script = tmp_path / "late.sh"
    script.write_text("echo too late\n")
    r = b.run("run", "acme", "--grant", gid, "--devices", world["device"], "--script",
              str(script), extra_env=env)
    assert "revoked" in one_line_error(r)


def test_S2_account_revoke_proposes_roots_without_the_keys(people: dict[str, Operator]) -> None:
    a, b, c = people["alice"], people["bob"], people["carol"]
    env = {"RAMPART_KEY_PASSPHRASE": PASSPHRASE}
    before = a.json("root", "show", "acme")
    doc = a.json("account", "revoke", "bob", "--reason", "left the company")
    assert doc["tenants"] == [before["tenant"]] and doc["sessions_ended"] >= 1
    [proposal] = doc["proposals"]
    assert proposal["version"] == before["version"] + 1 and proposal["removed"] == [b.keyid]
    # bob's session is gone at once.
    assert "log in again" in one_line_error(b.run("whoami"))
    # The owners (threshold 2 since v3) sign and publish; bob's key is out of the root.
    # --yes alone is not enough: each owner names the key they expect to go
    assert "differs" in one_line_error(a.run("root", "sign", "acme", "--yes", extra_env=env))
    a.ok("root", "sign", "acme", "--yes", "--remove-key", b.keyid, extra_env=env)
    c.ok("root", "sign", "acme", "--yes", "--remove-key", b.keyid, extra_env=env)
    a.ok("root", "publish", "acme")
    after = a.json("root", "show", "acme")
    assert after["version"] == proposal["version"]
    assert b.keyid not in {k["keyid"] for role in after["roles"].values() for k in role["keys"]}
    # bob was MSP-wide staff: the alert is MSP-wide, listed and acknowledged by MSP staff.
    assert not [x for x in a.json("alerts", "list", "acme") if x["kind"] == "account-disabled"]
    alerts = a.json("alerts", "list")
    [alert] = [x for x in alerts if x["kind"] == "account-disabled"]
    assert "bob" in alert["subject"]
    assert f"alert {alert['id']} acknowledged by alice" in a.ok("alerts", "ack", alert["id"]).stdout
    assert a.json("alerts", "list", "--status", "acknowledged")[0]["id"] == alert["id"]
    accounts = {x["username"]: x for x in a.json("account", "list")}
    assert accounts["bob"]["status"] == "disabled"


# --- alert delivery and SIEM export (issue 5) ------------------------------------------------


def test_G2_events_export_and_notify_targets_from_the_cli(people: dict[str, Operator],
                                                         tmp_path: Path) -> None:
    from test_notify import parse_cef, parse_syslog

    a = people["alice"]
    out = tmp_path / "acme.cef"
    r = a.ok("events", "export", "acme", "--format", "cef", "--output", str(out))
    lines = out.read_text().splitlines()
    assert f"{len(lines)} events written" in r.stdout and len(lines) > 10
    kinds = {parse_cef(line)[0][4] for line in lines}
    assert {"audit:tenant.created", "audit:grant.revoked", "audit:account.revoked"} <= kinds
    syslog_lines = a.ok("events", "export", "acme", "--format", "syslog", "--limit", "3").stdout
    assert [parse_syslog(x).app for x in syslog_lines.splitlines()] == ["rampart"] * 3
    assert "--format must be" in one_line_error(a.run("events", "export", "acme", "--format", "xml"))
    doc = a.json("alerts", "notify", "add", "acme", "--webhook", "http://127.0.0.1:9/hook",
                 "--name", "ticketing")
    assert doc["kind"] == "webhook" and len(doc["secret"]) == 64
    listed = a.json("alerts", "notify", "list", "acme")
    assert [x["name"] for x in listed] == ["ticketing"] and "secret" not in listed[0]
    assert "not delivered" in one_line_error(a.run("alerts", "notify", "test", doc["id"]))
    a.ok("alerts", "notify", "remove", doc["id"])
    assert a.json("alerts", "notify", "list", "acme") == []


def test_G6_sbom_of_a_real_agents_device(people: dict[str, Operator], tmp_path: Path) -> None:
    """A real agent reports its inventory; `rampart sbom DEVICE` turns it into CycloneDX."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    from harness.agent import AgentProcess, agent_cmd

    a = people["alice"]
    info = a.json("enroll", "new", "acme", "--ttl", "10m")
    base = Path(tempfile.mkdtemp(prefix="rampart-sbom-test-"))
    agent = AgentProcess(base / "agent")
    r = agent.enroll(info["server"], info["token"], info["root_sha256"], info["cert_sha256"])
    assert r.returncode == 0, r.stderr
    a.ok("device", "approve", "acme", agent.device_id)
    with open(agent.log, "ab") as logf:
        proc = subprocess.Popen(agent_cmd("run", "--state", str(agent.state),
                                          "--inventory-interval", "2"),
                                stdout=subprocess.DEVNULL, stderr=logf)
    try:
        deadline = time.time() + 90
        while a.run("inventory", "show", "acme", agent.device_id, "--json").returncode != 0:
            assert time.time() < deadline, agent.log.read_text()[-2000:]
            time.sleep(1)
        out = tmp_path / "dev.cdx.json"
        assert "SBOM written" in a.ok("sbom", agent.device_id, "--output", str(out)).stdout
        text = out.read_text()
        assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
        doc = json.loads(text)
        assert doc["metadata"]["component"]["bom-ref"] == agent.device_id
        assert any(c["name"] == "bash" for c in doc["components"])
        assert "DEVICE or --self" in one_line_error(a.run("sbom"))
        own = json.loads(a.ok("sbom", "--self").stdout)
        assert own["metadata"]["component"]["name"] == "rampart"
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(base, ignore_errors=True)
