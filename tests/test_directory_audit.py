r"""Directory audit (issue 19, G3) through the real ``rampart`` CLI against a real server process and
a real OpenLDAP ``slapd`` (Debian's) on 127.0.0.1, over LDAPS and StartTLS with a certificate made
here (tests/harness/slapd.py).

The seeded directory has AD-like accounts (an overlay schema with ``lastLogonTimestamp``,
``userAccountControl``, ``whenCreated``, ``sAMAccountName``) and OpenLDAP ones (ppolicy's
``pwdAccountLockedTime``, posix ``loginShell``), groups (one nested in Domain Admins) and one
account whose name and description carry terminal attacks. Attackers played for real: an impostor
TLS listener with another certificate (T8: it must receive nothing, the password least of all),
a tenant's directory reached from another tenant (T12), hostile directory text (T16).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ldap3
import pytest
from harness.operators import Operator, TenantSetup, bootstrap_owner, ok, setup_tenant
from harness.server import RunningServer, free_port, init_server
from harness.slapd import (
    AUDITOR_DN,
    AUDITOR_PASSWORD,
    ROOT_PASSWORD,
    SUFFIX,
    Slapd,
    filetime,
    gentime,
    start_slapd,
)
from harness.tls import make_cert

from rampart import tlspin
from rampart.cli.config import Config, Session

# The subject is the directory link and the CLI; slapd is installed by ./run-tests (no skip if absent).
pytestmark = pytest.mark.client_side

REPO = Path(__file__).resolve().parent.parent
DAY = 86400
HOSTILE_NAME = "mallory\x1b[2J\x1b]52;c;cm0gLXJmIH4K\x07\u202e\nFAKELOG directory all clear"
HOSTILE_DESC = "ops\x1b]8;;https://evil.example/\x1b\\click\x9b2J\r\nFAKELOG forged line"
PRIVILEGED = ["--privileged-group", "Domain Admins", "--privileged-group", "ops-admins"]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def seed(now: float) -> str:
    people = f"ou=people,{SUFFIX}"
    svc = f"ou=service accounts,{SUFFIX}"

    def ad(uid: str, *, uac: int = 512, logon: float | None = None, created: float = now - 400 * DAY,
           extra: str = "") -> str:
        lines = [f"dn: uid={uid},{people}", "objectClass: inetOrgPerson", "objectClass: rampartADUser",
                 f"uid: {uid}", f"cn: {uid}", f"sn: {uid}", f"sAMAccountName: {uid}",
                 f"userAccountControl: {uac}", f"whenCreated: {gentime(created)}"]
        if logon is not None:
            lines.append(f"lastLogonTimestamp: {filetime(logon)}")
        return "\n".join(lines) + ("\n" + extra if extra else "") + "\n\n"

    def group(cn: str, members: list[str]) -> str:
        return (f"dn: cn={cn},ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: {cn}\n"
                + "".join(f"member: {m}\n" for m in members) + "\n")

    def person(uid: str) -> str:
        return f"uid={uid},{people}"

    return (
        f"dn: {people}\nobjectClass: organizationalUnit\nou: people\n\n"
        f"dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n\n"
        f"dn: {svc}\nobjectClass: organizationalUnit\nou: service accounts\n\n"
        + ad("alice", logon=now - 2 * DAY)                      # active admin
        + ad("bob", logon=now - 200 * DAY)                      # inactive
        + ad("carol", uac=514, logon=now - 1 * DAY)             # disabled, still a Domain Admin
        + ad("dave", uac=66048, logon=now - 1 * DAY)            # password never expires
        + ad("erin")                                            # never logged in, made long ago
        + ad("fresh", created=now - 3 * DAY)                    # never logged in, made this week
        + ad("gina", logon=now - 300 * DAY)                     # stale, admin through a nested group
        # OpenLDAP's own schema: locked by ppolicy, in a groupOfNames named on the command line
        + f"dn: {person('frank')}\nobjectClass: inetOrgPerson\nuid: frank\ncn: frank\nsn: frank\n"
          f"pwdAccountLockedTime: 000001010000Z\n\n"
        # a posix service account with a login shell
        + f"dn: uid=svc-backup,{svc}\nobjectClass: inetOrgPerson\nobjectClass: posixAccount\n"
          f"uid: svc-backup\ncn: svc-backup\nsn: svc\nuidNumber: 2001\ngidNumber: 2001\n"
          f"homeDirectory: /var/backups\nloginShell: /bin/bash\n\n"
        + f"dn: uid=svc-web,{svc}\nobjectClass: inetOrgPerson\nobjectClass: posixAccount\n"
          f"uid: svc-web\ncn: svc-web\nsn: svc\nuidNumber: 2002\ngidNumber: 2002\n"
          f"homeDirectory: /srv\nloginShell: /usr/sbin/nologin\n\n"
        # terminal attacks in the name and the description; inactive so it is reported
        + f"dn: uid=mallory,{people}\nobjectClass: inetOrgPerson\nobjectClass: rampartADUser\n"
          f"uid: mallory\ncn: mallory\nsn: m\nsAMAccountName:: {_b64(HOSTILE_NAME)}\n"
          f"description:: {_b64(HOSTILE_DESC)}\nuserAccountControl: 512\n"
          f"lastLogonTimestamp: {filetime(now - 500 * DAY)}\n\n"
        + group("Domain Admins", [person("alice"), person("carol"), f"cn=Helpdesk Leads,ou=groups,{SUFFIX}"])
        + group("Helpdesk Leads", [person("gina")])
        + group("ops-admins", [person("frank")])
        + group("staff", [person("bob"), person("dave")])
    )


class Cli:
    """One person's ``rampart`` (own config directory), stdout and stderr on pipes."""

    def __init__(self, config: Path) -> None:
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("RAMPART_") and k not in ("COLUMNS", "LINES")}
        self.env.update(PYTHONPATH=str(REPO), RAMPART_CONFIG_DIR=str(config), TZ="UTC")

    def run(self, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if password is not None:
            env["RAMPART_LDAP_PASSWORD"] = password
        return subprocess.run([sys.executable, "-m", "rampart.cli.main", *args], capture_output=True,
                              text=True, timeout=120, cwd=REPO, stdin=subprocess.DEVNULL, env=env)

    def ok(self, *args: str, **kw: Any) -> str:
        r = self.run(*args, **kw)
        assert r.returncode == 0, f"{args}: rc={r.returncode}\n{r.stdout}\n{r.stderr}"
        return r.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def fails(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        r = self.run(*args, **kw)
        assert r.returncode != 0, f"{args} succeeded:\n{r.stdout}"
        return r


def cli_for(base: Path, server: RunningServer, op: Operator) -> Cli:
    cfg = Config(base / f"cli-{op.username}")
    cfg.ensure()
    cfg.save_session(Session(server=server.url, cert_sha256=tlspin.fingerprint(server.cert_der),
                             username=op.username, token=op.token), server.cert_der)
    return Cli(base / f"cli-{op.username}")


@dataclass
class World:
    server: RunningServer
    ldap: Slapd
    t: TenantSetup
    owner: Cli
    tech: Cli
    viewer: Cli
    other: TenantSetup
    other_owner: Operator
    base: Path
    added: list[str] = field(default_factory=list)


def wait_until(check: Any, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return got


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("dir")
    ldap = start_slapd(base / "slapd", seed(time.time()))
    server = init_server(base / "srv")
    config = server.data_dir / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "scheduler_interval_s": 1}))
    try:
        server.start()
        owner = bootstrap_owner(server)
        t = setup_tenant(owner, "acme")
        viewer = owner.create_account("cust", "customer-viewer", [t.id])
        other = setup_tenant(owner, "bravo", prefix="b-")
        other_owner = owner.create_account("b-owner", "owner", [other.id])
        yield World(server, ldap, t, cli_for(base, server, owner), cli_for(base, server, t.tech),
                    cli_for(base, server, viewer), other, other_owner, base)
    finally:
        server.stop()
        ldap.stop()


def add_args(w: World, name: str, *extra: str) -> list[str]:
    return ["directory", "add", "acme", "--ldap", w.ldap.ldaps_url, "--bind-dn", AUDITOR_DN,
            "--base", SUFFIX, "--name", name, *extra]


def findings(cli: Cli, *extra: str) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = cli.json("directory", "findings", "acme", *extra)
    return docs


def kinds_by_name(docs: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(d["evidence"]["name"], d["kind"]) for d in docs}


def server_log(w: World) -> str:
    return w.server.log_path.read_text(errors="replace")


# --- the audit finds what it should, and only that ----------------------------------------------


def test_audit_over_ldaps_finds_inactive_stale_and_privileged_accounts(w: World) -> None:
    out = w.owner.ok(*add_args(w, "corp", "--pin-sha256", w.ldap.cert_sha256, "--inactive-days", "90",
                               *PRIVILEGED), password=AUDITOR_PASSWORD)
    assert "directory corp added" in out
    w.added.append("corp")
    out = w.tech.ok("directory", "audit", "acme", "corp")  # staff may run one now
    assert "corp: audited:" in out
    found = kinds_by_name(findings(w.owner, "--directory", "corp"))
    expected = {
        ("bob", "inactive"),
        ("carol", "privileged-member"), ("carol", "privileged-disabled"),
        ("dave", "password-never-expires"),
        ("erin", "never-logged-in"),
        ("gina", "inactive"), ("gina", "privileged-member"), ("gina", "privileged-stale"),
        ("frank", "privileged-member"), ("frank", "privileged-disabled"),
        ("svc-backup", "service-interactive"),
        ("alice", "privileged-member"),
        (HOSTILE_NAME, "inactive"),
    }
    assert expected <= found, expected - found
    # The active ones are not inactive; a week-old account not yet used is not "never logged in";
    # a service account without a shell is fine; the auditor (no logon data, no AD attributes) is clean.
    assert not {("alice", "inactive"), ("alice", "privileged-stale"), ("dave", "inactive"),
                ("fresh", "never-logged-in"), ("svc-web", "service-interactive")} & found
    assert not [n for n, _ in found if n in ("auditor", "svc-web", "fresh")]
    assert found - expected == set(), found - expected
    # Findings became alerts like the agents': critical for the disabled and stale admins.
    alerts = ok(w.t.owner.http.get(f"/tenants/{w.t.id}/alerts"))
    crit = {a["subject"] for a in alerts if a["kind"] == "directory-privileged-disabled"}
    assert any("carol" in s for s in crit) and any("frank" in s for s in crit)
    assert all(a["severity"] == "critical" for a in alerts if a["kind"] == "directory-privileged-stale")
    assert not [a for a in alerts if a["kind"] == "directory-privileged-member"]  # info: findings only
    # The customer sees its own directory findings (C2).
    assert kinds_by_name(findings(w.viewer)) >= expected
    kinds = [e["kind"] for e in ok(w.t.owner.http.get(f"/tenants/{w.t.id}/audit/entries",
                                                       params={"limit": 1000}))]
    assert "directory.added" in kinds and "directory.audited" in kinds
    # The posture report's G3 (audit directory accounts) now reads these audits: critical
    # findings open, so not met, with the directory and the counts as evidence.
    report = ok(w.t.owner.http.get(f"/tenants/{w.t.id}/report", params={"format": "json"}))
    g3 = next(c for c in report["controls"] if c["id"] == "G3")
    assert g3["status"] == "not-met", g3
    text = " ".join(g3["evidence"])
    assert "corp: audited" in text and "(ok)" in text
    crit = sum(1 for (_, kind) in found if kind in ("privileged-disabled", "privileged-stale"))
    assert f"open findings: {crit} critical" in text, text


def test_a_finding_resolves_with_its_alert_when_the_directory_changes(w: World) -> None:
    assert ("bob", "inactive") in kinds_by_name(findings(w.owner, "--directory", "corp"))
    admin = _admin(w)
    assert admin.modify(f"uid=bob,ou=people,{SUFFIX}",
                        {"lastLogonTimestamp": [(ldap3.MODIFY_REPLACE, [str(filetime(time.time()))])]})
    admin.unbind()
    w.tech.ok("directory", "audit", "acme", "corp")
    assert ("bob", "inactive") not in kinds_by_name(findings(w.owner, "--directory", "corp"))
    resolved = [d for d in findings(w.owner, "--all") if d["evidence"]["name"] == "bob"]
    assert resolved and resolved[0]["resolved_at"] is not None
    alerts = ok(w.t.owner.http.get(f"/tenants/{w.t.id}/alerts", params={"status": "all"}))
    bob = [a for a in alerts if a["kind"] == "directory-inactive" and "bob" in a["subject"]]
    assert bob and all(a["status"] == "resolved" for a in bob)


def test_the_scheduled_audit_runs_over_starttls_with_a_pinned_ca(w: World) -> None:
    w.owner.ok("directory", "add", "acme", "--ldap", w.ldap.starttls_url, "--starttls", "--bind-dn",
               AUDITOR_DN, "--base", f"ou=people,{SUFFIX}", "--name", "people-starttls",
               "--ca-cert", str(w.ldap.cert_path), "--every", "1h", password=AUDITOR_PASSWORD)
    w.added.append("people-starttls")

    def audited() -> dict[str, Any] | None:
        docs = w.viewer.json("directory", "list", "acme")
        doc = next(d for d in docs if d["name"] == "people-starttls")
        return doc if doc["last_status"] != "never" else None

    doc = wait_until(audited, "the scheduled audit")  # no one ran it: the scheduler did
    assert doc["last_status"] == "ok", doc
    assert doc["pinning"] == "ca" and doc["next_run_at"] >= doc["last_run_at"] + 3600 - 1
    kinds = {d["kind"] for d in findings(w.owner, "--directory", "people-starttls")}
    assert "inactive" in kinds
    # groups live outside this base: no group, so no privileged findings from it
    assert "privileged-member" not in kinds


def test_plain_ldap_is_refused_and_a_pin_is_required(w: World) -> None:
    r = w.owner.fails("directory", "add", "acme", "--ldap", w.ldap.starttls_url, "--bind-dn", AUDITOR_DN,
                      "--base", SUFFIX, "--name", "plain", "--pin-sha256", w.ldap.cert_sha256,
                      password=AUDITOR_PASSWORD)
    assert "plain LDAP is refused" in r.stderr
    r = w.owner.fails(*add_args(w, "nopin"), password=AUDITOR_PASSWORD)
    assert "--ca-cert" in r.stderr and "--pin-sha256" in r.stderr
    names = {d["name"] for d in w.owner.json("directory", "list", "acme")}
    assert not {"plain", "nopin"} & names


# --- attackers ---------------------------------------------------------------------------------


class Impostor:
    """A TLS listener on loopback with its own certificate, standing in for the directory."""

    def __init__(self, base: Path) -> None:
        cert, key, self.sha256 = make_cert(base)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", free_port()))
        self.port = self.sock.getsockname()[1]
        self.received = bytearray()
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(30)
        try:
            raw, _ = self.sock.accept()
        except OSError:
            return
        self.connections += 1
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as tls:
                tls.settimeout(5)
                while chunk := tls.recv(65536):
                    self.received += chunk
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        self.thread.join(10)


def _state(w: World) -> tuple[Any, ...]:
    dirs = sorted(d["name"] for d in w.owner.json("directory", "list", "acme"))
    entries = ok(w.t.owner.http.get(f"/tenants/{w.t.id}/audit/entries", params={"limit": 1000}))
    return dirs, len(entries)


def test_T8_an_impostor_directory_with_another_certificate_gets_refused_and_no_password(
        w: World, tmp_path: Path) -> None:
    impostor = Impostor(tmp_path / "impostor")
    before = _state(w)
    try:
        r = w.owner.fails("directory", "add", "acme", "--ldap", f"ldaps://127.0.0.1:{impostor.port}",
                          "--bind-dn", AUDITOR_DN, "--base", SUFFIX, "--name", "impostor",
                          "--pin-sha256", w.ldap.cert_sha256, password=AUDITOR_PASSWORD)
    finally:
        impostor.close()
    assert impostor.connections == 1  # it was reached, and its certificate refused
    assert "does not match the pinned SHA-256" in r.stderr and "nothing was sent" in r.stderr
    assert AUDITOR_PASSWORD.encode() not in bytes(impostor.received)
    assert b"auditor" not in bytes(impostor.received)  # not even the bind request went out
    assert _state(w) == before  # nothing stored, nothing recorded
    # A CA that did not issue the directory's certificate is refused the same way.
    other_ca, _, _ = make_cert(tmp_path / "other-ca")
    r = w.owner.fails(*add_args(w, "wrong-ca", "--ca-cert", str(other_ca)), password=AUDITOR_PASSWORD)
    assert "directory not added" in r.stderr and "CERTIFICATE_VERIFY_FAILED" in r.stderr
    assert _state(w) == before


def test_a_wrong_bind_password_is_a_clear_error_and_never_shown(w: World) -> None:
    wrong = "Wr0ng-bind-pass-\u00e9-unique-4471"
    before = _state(w)
    r = w.owner.fails(*add_args(w, "wrongpw", "--pin-sha256", w.ldap.cert_sha256), password=wrong)
    assert "wrong bind DN or password" in r.stderr, r.stderr
    assert wrong not in r.stdout + r.stderr
    assert _state(w) == before
    time.sleep(0.5)
    assert wrong not in server_log(w) and AUDITOR_PASSWORD not in server_log(w)


def test_the_bind_password_is_sealed_at_rest(w: World) -> None:
    blobs = b"".join(p.read_bytes() for p in w.server.data_dir.rglob("*") if p.is_file())
    assert blobs and AUDITOR_PASSWORD.encode() not in blobs
    assert w.added  # directories with that password are stored
    docs = w.owner.json("directory", "list", "acme")
    assert AUDITOR_PASSWORD not in json.dumps(docs) and "password" not in json.dumps(docs)


def test_T16_hostile_directory_text_is_inert_in_the_cli(w: World) -> None:
    out = w.owner.ok("directory", "findings", "acme", "--directory", "corp")
    for raw in ("\x1b", "\x07", "\x9b", "\u202e", "\r"):
        assert raw not in out, repr(raw)
    assert "\\x1b[2J" in out and "\\u202e" in out  # readable as escapes
    assert not any(line.startswith("FAKELOG") for line in out.splitlines())
    # --json gives the exact strings back (JSON-escaped)
    docs = findings(w.owner, "--directory", "corp")
    [evil] = [d for d in docs if d["evidence"]["name"] == HOSTILE_NAME]
    assert evil["evidence"]["description"] == HOSTILE_DESC
    out = w.owner.ok("alerts", "list", "acme")
    assert "\x1b" not in out and not any(line.startswith("FAKELOG") for line in out.splitlines())


def test_T12_another_tenant_cannot_reach_or_audit_the_directory(w: World) -> None:
    b = w.other_owner.http
    assert b.get(f"/tenants/{w.t.id}/directories").status_code == 404
    assert b.get(f"/tenants/{w.t.id}/directory-findings").status_code == 404
    assert b.post(f"/tenants/{w.t.id}/directories/corp/audit").status_code == 404
    assert b.delete(f"/tenants/{w.t.id}/directories/corp").status_code == 404
    # its own tenant has no such directory, and its findings list is empty
    assert b.post(f"/tenants/{w.other.id}/directories/corp/audit").status_code == 404
    assert ok(b.get(f"/tenants/{w.other.id}/directory-findings")) == []
    assert "corp" in {d["name"] for d in w.owner.json("directory", "list", "acme")}


def test_roles_a_technician_cannot_add_and_a_customer_cannot_audit(w: World) -> None:
    r = w.tech.fails(*add_args(w, "tech", "--pin-sha256", w.ldap.cert_sha256), password=AUDITOR_PASSWORD)
    assert "directory.manage needs the role owner" in r.stderr
    r = w.viewer.fails("directory", "audit", "acme", "corp")
    assert "directory.audit needs the role" in r.stderr


def _admin(w: World) -> ldap3.Connection:
    return ldap3.Connection(ldap3.Server("127.0.0.1", port=w.ldap.ldaps_port, use_ssl=True,
                                         tls=ldap3.Tls(validate=ssl.CERT_REQUIRED,
                                                       ca_certs_file=str(w.ldap.cert_path))),
                            f"cn=admin,{SUFFIX}", ROOT_PASSWORD, auto_bind=True)


def _set_auditor_password(w: World, password: str) -> None:
    admin = _admin(w)
    assert admin.modify(AUDITOR_DN, {"userPassword": [(ldap3.MODIFY_REPLACE, [password])]})
    admin.unbind()


def test_a_failed_audit_changes_no_finding_and_raises_one_alert(w: World) -> None:
    before = {(d["kind"], d["account"]) for d in findings(w.owner, "--directory", "corp")}
    _set_auditor_password(w, "rotated by the customer 0c1d")  # the stored password no longer binds
    try:
        r = w.tech.fails("directory", "audit", "acme", "corp")
        assert "audit FAILED" in r.stdout and "wrong bind DN or password" in r.stdout
        assert "the audit failed for corp" in r.stderr
        assert AUDITOR_PASSWORD not in r.stdout + r.stderr
        assert {(d["kind"], d["account"]) for d in findings(w.owner, "--directory", "corp")} == before
        [doc] = [d for d in w.owner.json("directory", "list", "acme") if d["name"] == "corp"]
        assert doc["last_status"] == "failed" and "invalidCredentials" in doc["last_detail"]
        failed = [a for a in ok(w.t.owner.http.get(f"/tenants/{w.t.id}/alerts"))
                  if a["kind"] == "directory-audit-failed"]
        assert len(failed) == 1 and failed[0]["status"] == "open"
    finally:
        _set_auditor_password(w, AUDITOR_PASSWORD)
    w.tech.ok("directory", "audit", "acme", "corp")  # the next good audit resolves the failure alert
    alerts = ok(w.t.owner.http.get(f"/tenants/{w.t.id}/alerts", params={"status": "all"}))
    assert [a["status"] for a in alerts if a["kind"] == "directory-audit-failed"] == ["resolved"]
    assert AUDITOR_PASSWORD not in server_log(w)


def test_remove_forgets_the_directory_and_its_findings(w: World) -> None:
    w.owner.ok("directory", "remove", "acme", "people-starttls")
    assert "people-starttls" not in {d["name"] for d in w.owner.json("directory", "list", "acme")}
    assert not findings(w.owner, "--all", "--directory", "people-starttls")
    assert findings(w.owner, "--directory", "corp")
