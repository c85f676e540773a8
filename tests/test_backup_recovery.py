"""Backups after an attack, end to end: attack, vault rollback, signed forget-state, backup, restore test.

docs/backup-vault.md, section 4, played with a real server, a real
``rampart-agent``, the technician's real ``rampart`` CLI and real borg against
an append-only vault (tests/harness/borgvault.py: a loopback vault host that
runs ``borg serve --append-only --restrict-to-repository`` for every
connection, as the forced command of an ``authorized_keys`` entry would).

The attack (T9): a signed, two-approver root script, holding the repository
passphrase, deletes the device's archive, prunes, compacts and adds a junk
archive through the vault channel. The device's next scheduled backup runs on
the attacked repository, so its borg now remembers the attacked state. The
vault holder rolls the repository back to the last good transaction; from then
on the device's backups fail ("Cache, or information obtained from the
security directory is newer than repository") until a person signs
``backup-forget-state`` (``rampart backup forget-state T DEV``), after which the
next backup and its restore test pass and the original archive restores by
digest. A forget-state under a grant without ``backup`` is refused by the CLI,
the server and (forged into the server's store, T1) the agent, and nothing of
the device's borg state changes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import borgvault as vault
from harness.agent import AgentProcess, traversable_dir
from harness.borgvault import VaultHost
from harness.operators import Operator, bootstrap_owner, ok, step_up, two_approver_tenant
from harness.server import REPO, RunningServer, start_server

from rampart import tlspin, trust
from rampart.agent import backup
from rampart.cli.config import Config, Session
from rampart.server.audit import AuditLog
from rampart.server.config import load_config
from rampart.server.db import Store
from rampart.server.keystore import LogKeyStore
from rampart.server.models import JobRow, JobTarget
from rampart.trust import Action, Declared, OperatorKey

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the agent runs backups and root jobs as root"),
    pytest.mark.skipif(shutil.which("borg") is None, reason="no borg (run-tests installs it)"),
    # The subject is the agent and the CLI; the job path is repeated on PostgreSQL elsewhere.
    pytest.mark.client_side,
]

SECRET = "vault passphrase 91be shared by the device and the vault holder"
KEY_PASSPHRASE = "technician key passphrase"


@dataclass
class World:
    base: Path
    server: RunningServer
    tenant: str
    owner: Operator
    approvers: list[tuple[Operator, OperatorKey]]
    tech: Operator
    tech_key: OperatorKey
    vault: VaultHost
    repo: Path  # the repository on the vault host
    holder: backup.BorgRepo  # the vault holder's view of it (on the vault host, vault credential)
    holder_env: dict[str, str]
    key_export: Path  # the vault holder's offline copy of the repository key
    data: Path  # the device's live files
    scratch: Path
    agent: AgentProcess

    @property
    def device(self) -> str:
        return self.agent.device_id

    def grant(self, caps: list[str]) -> str:
        """An approved grant for the technician on the device (two approvers for root, as policy says)."""
        doc = ok(self.tech.http.post(f"/tenants/{self.tenant}/grants", json={
            "devices": [self.device], "capabilities": caps, "duration_s": 3600,
            "reason": "backups after an attack"}))
        need = 2 if "root" in caps else 1
        got: dict[str, Any] = {}
        for op, k in self.approvers[:need]:
            current = ok(op.http.get(f"/grants/{doc['id']}"))["envelope"]
            signed = trust.add_signature(trust.decode_envelope(current.encode()), k)
            if need > 1:
                step_up(op)
            got = ok(op.http.post(f"/grants/{doc['id']}/signatures",
                                  json={"envelope": signed.to_bytes().decode()}))
        assert got["status"] == "approved", got
        return str(doc["id"])

    def job(self, grant: str, action: Action, declared: Declared | None = None) -> trust.Job:
        now = int(time.time())
        return trust.Job(id=trust.new_job_id(), tenant=self.tenant, grant=grant, signer=self.tech_key.key_id,
                         devices=[self.device], action=action, declared=declared or Declared(),
                         timeout_s=600, nonce=trust.new_nonce(), issued_at=now, expires_at=now + 3600)

    def envelope(self, job: trust.Job) -> bytes:
        return trust.sign_envelope(job.PAYLOAD_TYPE, trust.encode_payload(job), [self.tech_key]).to_bytes()

    def receipt(self, job_id: str, timeout: float = 300) -> dict[str, Any]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            target = ok(self.tech.http.get(f"/jobs/{job_id}"))["targets"][0]
            if target["receipt"]:
                return dict(target["receipt"])
            time.sleep(0.2)
        raise TimeoutError(f"no receipt for {job_id}:\n{self.agent.log_text()[-3000:]}")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")}
        env.update({"PYTHONPATH": str(REPO), "RAMPART_CONFIG_DIR": str(self.base / "cli-tech"),
                    "RAMPART_KEY_PASSPHRASE": KEY_PASSPHRASE, "COLUMNS": "200"})
        return subprocess.run([sys.executable, "-m", "rampart.cli.main", *args], env=env, capture_output=True,
                              text=True, timeout=600, cwd=REPO, stdin=subprocess.DEVNULL)

    def backup_run(self, grant: str) -> dict[str, Any]:
        """``rampart backup run acme --grant G --devices DEV --wait --json``: the device's receipt."""
        r = self.cli("backup", "run", "acme", "--grant", grant, "--devices", self.device, "--wait", "--json")
        assert r.stdout, r.stderr
        receipt: dict[str, Any] = json.loads(r.stdout)["targets"][0]["receipt"]
        return receipt

    def borg_state(self) -> dict[str, str]:
        """Everything below the agent's BORG_BASE_DIR: digests, symlink targets, directories."""
        base = self.agent.state / "borg"
        out = {}
        for p in sorted(base.rglob("*")):
            out[str(p.relative_to(base))] = (
                "link:" + os.readlink(p) if p.is_symlink() else
                hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
        return out


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("rampart: error: "), r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def w(pg_cluster: Any) -> Iterator[World]:
    base = traversable_dir("rampart-backup-recovery-")
    (base / "srv").mkdir()
    server = start_server(base / "srv", pg_cluster.new_database() if pg_cluster is not None else None)
    vault_host: VaultHost | None = None
    agent: AgentProcess | None = None
    try:
        owner = bootstrap_owner(server)
        team = two_approver_tenant(owner)
        tid, approvers, root_env = team.id, team.approvers, team.root_envelope
        (tech, tech_key), = team.techs

        # The vault holder makes the append-only repository and exports its key offline (section 3).
        (base / "vault-host").mkdir()
        (base / "vault-home").mkdir()
        repo = base / "vault-host" / "dev1"
        holder_base = base / "vault-holder"
        holder = vault.vault_repo(repo, holder_base, vault.passphrase_file(base / "vault-pass", SECRET))
        assert backup.init_repository(holder).ok
        holder_env = vault.vault_env(holder_base, SECRET)
        key_export = base / "offline-key"
        vault.export_key(repo, key_export, holder_env)
        vault_host = VaultHost(repo, base / "vault-home")
        relay = vault_host.relay(base / "vault-ssh")

        data = base / "device-data"
        for d in ("db", "docs"):
            (data / d).mkdir(parents=True)
        (data / "db" / "customers.bin").write_bytes(random.Random(16).randbytes(150_000))
        (data / "docs" / "contract.txt").write_text("The customer's signed contract.\n" * 40)
        (data / "docs" / "notes.txt").write_text("Quarterly notes.\n" * 10)
        scratch = base / "scratch"
        scratch.mkdir()
        scratch.chmod(0o777)

        # The device: its passphrase in the state directory (0600) before enrolment, a backup policy.
        (base / "dev1").mkdir(mode=0o700)
        vault.passphrase_file(base / "dev1" / "borg-passphrase", SECRET)
        tok = ok(owner.http.post(f"/tenants/{tid}/enrollment-tokens", json={"ttl_s": 600}))
        agent = AgentProcess(base / "dev1")
        r = agent.enroll(server.url, tok["token"], tok["root_sha256"], server.cert_sha256,
                         "--write-root", str(scratch), "--allow-root", "--package-manager", "none",
                         "--backup-repo", f"ssh://vault{repo}", "--backup-rsh", str(relay),
                         "--backup-path", str(data), "--backup-restore-samples", "3")
        assert r.returncode == 0, r.stderr
        ok(owner.http.post(f"/tenants/{tid}/devices/{agent.device_id}/approve"))
        agent.start()

        # The technician's CLI, as `rampart login` and `rampart key new` leave it.
        cfg = Config(base / "cli-tech")
        cfg.ensure()
        cfg.save_session(Session(server=server.url, cert_sha256=tlspin.fingerprint(server.cert_der),
                                 username="tech", token=tech.token), server.cert_der)
        cfg.save_key(tech_key.key_id, trust.encrypt_private_key(tech_key, KEY_PASSPHRASE), name="tech",
                     tenant=tid, username="tech")
        cfg.save_root(tid, 1, root_env.encode(), newest=True)
        cfg.save_pin(tid, trust.root_sha256(root_env.encode()))
        yield World(base, server, tid, owner, approvers, tech, tech_key, vault_host, repo, holder, holder_env,
                    key_export, data, scratch, agent)
    finally:
        if agent is not None:
            agent.stop()
        if vault_host is not None:
            vault_host.close()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def _attack(w: World, archive: str) -> dict[str, str]:
    """T9: a signed, two-approver root script with the passphrase goes after the backups; exit codes."""
    loc = f"ssh://vault{w.repo}"
    hostile = (
        "set +e\n"
        f"export HOME={w.scratch}/hostile BORG_BASE_DIR={w.scratch}/hostile\n"
        f"export BORG_RSH={w.base}/vault-ssh\n"
        f"export BORG_PASSPHRASE='{SECRET}'\n"  # worst case: the attacker learnt the passphrase elsewhere
        f"borg delete {loc}::{archive}; echo delete=$?\n"
        f"borg create {loc}::junk /etc/hostname; echo junk=$?\n"
        f"borg prune --keep-last 1 {loc}; echo prune=$?\n"
        f"borg compact --cleanup-commits {loc}; echo compact=$?\n"
    ).encode()
    job = w.job(w.grant(["net", "root", "script"]),
                Action(kind="script", payloads=[trust.PayloadRef(
                    name="script", sha256=hashlib.sha256(hostile).hexdigest(), size=len(hostile))]),
                Declared(writes=[str(w.scratch)], connect=[w.vault.port], run_as="root"))
    ok(w.tech.http.post(f"/tenants/{w.tenant}/jobs", json={
        "envelope": w.envelope(job).decode(),
        "payloads": {"script": base64.b64encode(hostile).decode()}}))
    receipt = w.receipt(job.id)
    assert receipt["outcome"] == "ran", receipt
    return dict(line.split("=", 1) for line in receipt["stdout"].splitlines() if "=" in line)


def _forge_into_store(w: World, job: trust.Job) -> None:
    """T1: the attacker holds the server and writes a job its API refused straight into the store."""
    envelope = w.envelope(job)
    w.server.stop(kill=True)
    cfg = load_config(w.server.data_dir)
    store = Store(cfg.db_url)
    try:
        audit = AuditLog(store, LogKeyStore(cfg.keys_dir))
        with store.transaction() as s:
            index = audit.append(s, w.tenant, "job.created", envelope, time.time())
            s.add(JobRow(id=job.id, tenant_id=w.tenant, grant_id=job.grant, signer=job.signer,
                         kind=job.action.kind, nonce=job.nonce, envelope=envelope, created_at=time.time(),
                         expires_at=job.expires_at, log_index=index))
            s.flush()
            s.add(JobTarget(job_id=job.id, device_id=w.device, state="pending"))
        audit.sign_checkpoint(w.tenant, time.time())
    finally:
        store.dispose()
        w.server.start()
        for op in (w.owner, w.tech, *(a for a, _ in w.approvers)):
            op.__dict__.pop("_http", None)


def test_T9_attack_vault_rollback_forget_state_then_backups_and_restore_tests_pass(w: World) -> None:
    """The whole procedure of docs/backup-vault.md section 4, through the real CLI and agent."""
    grant = w.grant(["backup"])
    first = w.backup_run(grant)
    assert (first["outcome"], first["exit_code"]) == ("ran", 0), first
    original = first["result"]["archive"]["name"]
    originals = {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in sorted(w.data.rglob("*")) if p.is_file()}
    good = vault.transactions(w.repo)[-1][0]  # the vault holder's last reviewed transaction

    # The attack, then the device's next (scheduled) backup, which runs on the attacked repository:
    # from now on the device's borg remembers the attacked state.
    codes = _attack(w, original)
    assert codes == {"delete": "0", "junk": "0", "prune": "0", "compact": "0"}, codes
    after_attack = w.backup_run(grant)
    assert (after_attack["outcome"], after_attack["exit_code"]) == ("ran", 0), after_attack
    assert original not in [a.name for a in backup.list_archives(w.holder)]

    # The vault holder's offline procedure: evidence, rollback to the last good transaction, key, verify.
    removed = vault.recover(w.repo, good, key_export=w.key_export, env=w.holder_env,
                            forensics=w.base / "dev1-attacked")
    assert removed and min(removed) == good + 1
    assert backup.check(w.holder, verify_data=True).ok
    assert [a.name for a in backup.list_archives(w.holder)] == [original]

    # The device now refuses the rolled-back repository: borg's replay protection, as the issue saw it.
    refused = w.backup_run(grant)
    assert (refused["outcome"], refused["exit_code"]) == ("failed", 1), refused
    assert "newer than repository" in refused["stderr"], refused
    assert [a.name for a in backup.list_archives(w.holder)] == [original]  # nothing was written

    # A forget-state under a grant without 'backup' is refused everywhere; the device's borg state stays.
    state = w.borg_state()
    assert state, "the device holds borg state for the repository"
    other = w.grant(["inventory"])
    r = w.cli("backup", "forget-state", "acme", w.device, "--grant", other, "--wait")
    assert r.returncode == 6 and "does not give backup" in one_line_error(r), r.stderr
    job = w.job(other, Action(kind="backup-forget-state"))
    resp = w.tech.http.post(f"/tenants/{w.tenant}/jobs", json={"envelope": w.envelope(job).decode(),
                                                               "payloads": {}})
    assert resp.status_code == 400 and "does not give ['backup']" in resp.text, resp.text
    _forge_into_store(w, job)
    receipt = w.receipt(job.id, timeout=120)
    assert (receipt["outcome"], receipt["refusal"]) == ("refused", "capability-not-granted"), receipt
    assert w.borg_state() == state
    # The CLI's own mistakes, in one line, before anything is signed.
    r = w.cli("backup", "forget-state", "acme", f"{w.device},{w.device}", "--grant", grant)
    assert r.returncode == 2 and "one device id" in one_line_error(r), r.stderr
    assert w.borg_state() == state

    # Step 7: the signed forget-state, through the real CLI.
    r = w.cli("backup", "forget-state", "acme", w.device, "--grant", grant, "--wait", "--json")
    assert r.returncode == 0, r.stderr
    receipt = json.loads(r.stdout)["targets"][0]["receipt"]
    assert (receipt["outcome"], receipt["exit_code"]) == ("ran", 0), receipt
    res = receipt["result"]
    assert res["action"] == "backup-forget-state" and res["repository"] == f"ssh://vault{w.repo}"
    [cleared] = res["cleared"]
    assert (cleared["manifest_timestamp"], cleared["cache"]) == (True, True)
    assert (w.repo / "config").read_text().count(f"id = {cleared['id']}") == 1  # the repository's own id
    after = res["after"]
    assert (after["ok"], after["archives"], after["last_archive"], after["error"]) == (True, 1, original, "")
    forgotten = w.borg_state()
    kept = {k for k in state if cleared["id"] not in k}
    assert kept <= set(forgotten)  # nothing but this repository's replay record went
    assert forgotten[f".config/borg/security/{cleared['id']}/nonce"] == \
        state[f".config/borg/security/{cleared['id']}/nonce"]  # the AES-CTR counter it reserved stays
    # Listing the repository once recorded its current (rolled-back) state, nothing more: no cache yet.
    assert not any(k.startswith(f".cache/borg/{cleared['id']}") for k in forgotten)
    # Idempotent: run again, the device ends in exactly the same state; readable for people.
    r = w.cli("backup", "forget-state", "acme", w.device, "--grant", grant, "--wait")
    assert r.returncode == 0, r.stderr
    assert f"cleared repository {cleared['id']}: manifest timestamp\n" in r.stdout, r.stdout
    assert f"the repository opens now: 1 archive(s), last {original}" in r.stdout, r.stdout
    assert w.borg_state() == forgotten

    # The next backup succeeds, its restore test passes by digest, and the original restores byte for byte.
    again = w.backup_run(grant)
    assert (again["outcome"], again["exit_code"], again["stderr"]) == ("ran", 0, ""), again
    res = again["result"]
    assert res["check"]["ok"] and res["restore_test"]["passed"] is True
    samples = res["restore_test"]["samples"]
    assert len(samples) == 3 and {s["status"] for s in samples} == {"match"}
    for s in samples:
        assert s["digest"] == originals[s["path"]]
    assert [a.name for a in backup.list_archives(w.holder)] == [original, res["archive"]["name"]]
    restored = backup.restore_test(w.holder, original, originals)
    assert [(s.path, s.status, s.digest) for s in restored] == \
        [(p, "match", d) for p, d in sorted(originals.items())]
