"""Scheduled patching and backups end to end: a real server, real agents, dpkg/apt and borg (issue 6).

One server (scheduler every second) and two real ``rampart-agent`` processes,
each with its own scratch package root fed by a local apt archive built here:

* ``pilot``: ``rampart-broken`` 1.0 installed, whose 1.1 update fails in its
  postinst, and ``rampart-demo`` 1.0; a backup policy to a local append-only
  borg repository (borg serve forced to --append-only, as the vault's
  ``authorized_keys`` entry would);
* ``broad``: ``rampart-demo`` 1.0.

The whole flow goes through the real CLI of three people on their own
"machines" (config directories): the owner puts the server's automation key
in the root (``rampart automation enable``, ``root sign``, ``root publish``),
the technician writes the policy and requests the standing grant, the
approver approves it. The machine's own dpkg database is never touched.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import borgvault as vault
from harness import hostguard
from harness.agent import AgentProcess, agent_cmd, stop_all, traversable_dir
from harness.aptrepo import AptRepo, build_deb, scratch_root
from harness.operators import Operator, TenantSetup, audit_events, bootstrap_owner, ok, setup_tenant
from harness.server import REPO, RunningServer, init_server

from rampart import tlspin, trust
from rampart.agent import backup, patching
from rampart.agent.patching import PackageRoot
from rampart.cli.config import Config, Session
from rampart.server.audit import AuditLog
from rampart.server.backups import DeviceBackup
from rampart.server.config import load_config
from rampart.server.db import Store
from rampart.server.keystore import LogKeyStore
from rampart.server.models import BackupPolicyRow, BackupResult, JobPayload, JobRow, JobTarget
from rampart.windows import Window, WindowError, occurrence, parse_duration

# The machine's own dpkg database is byte-identical around every test (autouse fixtures).
host_dpkg = hostguard.host_dpkg
host_packages_untouched = hostguard.host_packages_untouched

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="dpkg chroots into the scratch root; agents run as root"),
    pytest.mark.skipif(not (shutil.which("dpkg-deb") and shutil.which("apt-get") and shutil.which("borg")),
                       reason="needs dpkg, apt and borg (run-tests installs borg)"),
]

PASS = "key passphrase of this operator"
SECRET = "vault passphrase 81f2 shared by the device and the vault holder"
SUITES = ["stable", "stable-updates", "stable-security"]


@dataclass
class World:
    base: Path
    server: RunningServer
    t: TenantSetup
    roots: dict[str, PackageRoot]
    agents: dict[str, AgentProcess]
    data: Path

    def cli(self, who: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")}
        env.update({"PYTHONPATH": str(REPO), "RAMPART_CONFIG_DIR": str(self.base / f"cli-{who}"),
                    "RAMPART_KEY_PASSPHRASE": PASS, "COLUMNS": "220"})
        return subprocess.run([sys.executable, "-m", "rampart.cli.main", *args], env=env, capture_output=True,
                              text=True, timeout=300, cwd=REPO, stdin=subprocess.DEVNULL)

    def ok_cli(self, who: str, *args: str) -> str:
        r = self.cli(who, *args)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r.stdout

    def json_cli(self, who: str, *args: str) -> Any:
        return json.loads(self.ok_cli(who, *args, "--json"))

    def dev(self, name: str) -> str:
        return self.agents[name].device_id


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def operator_cli(base: Path, server: RunningServer, op: Operator, key: trust.OperatorKey, tenant: str,
                 root_envelope: str) -> None:
    """The operator's own machine, as `rampart login` and `rampart key new` leave it."""
    cfg = Config(base / f"cli-{op.username}")
    cfg.ensure()
    cfg.save_session(Session(server=server.url, cert_sha256=tlspin.fingerprint(server.cert_der),
                             username=op.username, token=op.token), server.cert_der)
    cfg.save_key(key.key_id, trust.encrypt_private_key(key, PASS), name=op.username, tenant=tenant,
                 username=op.username)
    cfg.save_root(tenant, 1, root_envelope.encode(), newest=True)
    cfg.save_pin(tenant, trust.root_sha256(root_envelope.encode()))  # given out of band


@pytest.fixture(scope="module")
def w(pg_cluster: Any) -> Iterator[World]:
    base = traversable_dir("rampart-schedule-")
    server = init_server(base / "srv", pg_cluster.new_database() if pg_cluster is not None else None)
    cfg_path = server.data_dir / "config.json"
    doc = json.loads(cfg_path.read_text())
    doc.update({"scheduler_interval_s": 1, "inventory_interval_s": 2})
    cfg_path.write_text(json.dumps(doc))
    server.start()
    agents: dict[str, AgentProcess] = {}
    try:
        owner = bootstrap_owner(server)
        t = setup_tenant(owner, "acme")
        for op, key in ((owner, t.owner_key), (t.approver, t.approver_key), (t.tech, t.tech_key)):
            operator_cli(base, server, op, key, t.id, t.root_envelope)

        archive = AptRepo(base / "archive")
        archive.add("stable", [build_deb(archive.path, "rampart-demo", "1.0"),
                               build_deb(archive.path, "linux-image-rampart-test", "1.0"),
                               build_deb(archive.path, "rampart-broken", "1.0", postinst="exit 0")])
        archive.add("stable-updates", [
            build_deb(archive.path, "rampart-demo", "2.0"),
            build_deb(archive.path, "linux-image-rampart-test", "2.0"),  # an update that needs a reboot
            build_deb(archive.path, "rampart-broken", "1.1",
                      postinst='echo "rampart-broken: cannot migrate its data" >&2\nexit 3')])
        archive.add("stable-security", [build_deb(archive.path, "rampart-demo", "1.1")])
        archive.write()
        roots = {n: scratch_root(base / f"root-{n}", archive, SUITES) for n in ("pilot", "broad")}
        for n, root in roots.items():
            assert patching.install(root, "rampart-demo", "1.0").ok
            if n == "pilot":
                assert patching.install(root, "rampart-broken", "1.0").ok
            else:
                assert patching.install(root, "linux-image-rampart-test", "1.0").ok

        # The pilot's backup: an append-only repository made by the vault holder.
        repo_path = base / "vault" / "pilot"
        repo_path.parent.mkdir()
        holder = vault.vault_repo(repo_path, base / "holder",
                                  vault.passphrase_file(base / "holder-pass", SECRET))
        assert backup.init_repository(holder).ok
        rsh = vault.forced_command(base / "vault-ssh", repo_path)
        data = base / "data"
        data.mkdir()
        (data / "ledger.txt").write_text("the customer's ledger\n" * 100)

        for n in ("pilot", "broad"):
            tok = ok(owner.http.post(f"/tenants/{t.id}/enrollment-tokens", json={"ttl_s": 600}))
            state = base / n
            extra = ["--package-root", str(roots[n].path), "--package-manager", "apt"]
            if n == "pilot":
                state.mkdir(mode=0o700)
                vault.passphrase_file(state / "borg-passphrase", SECRET)
                extra += ["--backup-repo", f"ssh://vault{repo_path}", "--backup-rsh", str(rsh),
                          "--backup-path", str(data), "--backup-restore-samples", "1"]
            else:  # the device's own reboot command: here it only leaves a mark
                reboot = base / "reboot-command"
                reboot.write_text(f"#!/bin/sh\necho rebooted >> {base / 'rebooted'}\n")
                reboot.chmod(0o755)
                extra += ["--reboot-command", str(reboot)]
            agent = AgentProcess(state)
            r = agent.enroll(server.url, tok["token"], tok["root_sha256"], server.cert_sha256, *extra)
            assert r.returncode == 0, r.stderr
            ok(owner.http.post(f"/tenants/{t.id}/devices/{agent.device_id}/approve"))
            with open(agent.log, "ab") as logf:
                agent.proc = subprocess.Popen(
                    agent_cmd("run", "--state", str(state), "--inventory-interval", "2"),
                    stdout=subprocess.DEVNULL, stderr=logf)
            agents[n] = agent
        yield World(base, server, t, roots, agents, data)
    finally:
        stop_all(agents.values())
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def alerts(w: World, kind: str, status: str = "open") -> list[dict[str, Any]]:
    return [a for a in ok(w.t.owner.http.get(f"/tenants/{w.t.id}/alerts", params={"status": "all"}))
            if a["kind"] == kind and (status == "any" or a["status"] == status)]


def policy(w: World, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = w.json_cli("tech", "patch", "policy", "show", "acme", name)
    return doc


def enable_automation(w: World) -> str:
    """The owner's CLI: the server's automation key into root v2, signed and published."""
    out = w.ok_cli("owner", "automation", "enable", "acme")
    assert "proposed root v2" in out and "automation" in out, out
    # the owner names the change it approves: this key, as automation, with this fingerprint
    kid = re.search(r"automation key for acme: ([0-9a-f]{64})", out)
    fp = re.search(r"fingerprint (\d{5}(?: \d{5}){5})", out)
    assert kid and fp, out
    w.ok_cli("owner", "root", "sign", "acme", "--yes", "--add-key", kid.group(1), "--role", "automation",
             "--fingerprint", fp.group(1))
    w.ok_cli("owner", "root", "publish", "acme")
    shown = w.json_cli("owner", "automation", "show", "acme")
    assert shown["in_root"] is True and shown["root_version"] == 2, shown
    return str(shown["keyid"])


# --- the pure parts -----------------------------------------------------------------------------------------


def test_windows_parse_and_open_occurrences() -> None:
    sat = Window.parse("sat 02:00 4h")
    assert sat is not None and sat.days == (5,) and sat.start_min == 120 and sat.duration_min == 240
    t0 = 1767405600.0  # 2026-01-03 02:00 UTC, a Saturday
    assert occurrence(sat, t0) == t0 and occurrence(sat, t0 + 3 * 3600) == t0
    assert occurrence(sat, t0 + 4 * 3600) is None and occurrence(sat, t0 - 60) is None
    late = Window.parse("fri 23:00 3h")  # runs past midnight into Saturday
    assert late is not None and occurrence(late, t0 - 2 * 3600) == t0 - 3 * 3600
    assert Window.parse("always") is None and occurrence(None, t0 + 5) == t0 - 2 * 3600  # one per UTC day
    assert Window.parse("weekdays 22:00 90m") == Window(days=(0, 1, 2, 3, 4), start_min=1320, duration_min=90)
    for bad in ("sat 25:00 1h", "someday 02:00 1h", "sat 02:00", "sat 02:00 2d", "sat,sat 02:00 1h"):
        with pytest.raises(WindowError):
            Window.parse(bad)
    assert parse_duration("3d") == 3 * 86400 and parse_duration("90") == 90
    with pytest.raises(WindowError):
        parse_duration("3 days")


def _result(job: str, at: float, *, ok: bool = True, archive: bool = True, check: bool | None = True,
            restore: bool | None = True) -> BackupResult:
    return BackupResult(job_id=job, device_id="dev-1", tenant_id="tn-1", finished_at=at, ok=ok,
                        archive="a" if archive else "", archive_ok=archive, nfiles=1, original_size=1,
                        check_ok=check, restore_ok=restore, error="" if ok else "borg create failed: locked")


def test_backup_state_is_failed_stale_unverified_or_ok_by_the_policy_ages() -> None:
    now = 10_000_000.0
    pol = BackupPolicyRow(device_id="dev-1", tenant_id="tn-1", every_s=3600, window="", max_age_s=7200,
                          verify_max_age_s=86400, retention="{}", timeout_s=600, enabled=True, created_by="x",
                          created_at=0, updated_at=0, trigger_error="")

    def state(results: list[BackupResult], running: bool = False) -> str:
        last_archive = next((r for r in reversed(results) if r.archive_ok), None)
        verified = next((r for r in reversed(results) if r.check_ok and r.restore_ok), None)
        return DeviceBackup("dev-1", "h", pol, results[-1] if results else None, last_archive, verified,
                            running).state(now)[0]

    assert state([]) == "never" and state([], running=True) == "running"
    assert state([_result("j1", now - 60)]) == "ok"
    assert state([_result("j1", now - 60), _result("j2", now - 30, ok=False, archive=False)]) == "failed"
    assert state([_result("j1", now - 7300)]) == "stale"
    assert state([_result("j1", now - 90000), _result("j2", now - 60, restore=None)]) == "unverified"
    assert state([_result("j2", now - 60, check=False)]) == "unverified"


def test_T13_bad_policies_get_one_line_errors_and_store_nothing(w: World) -> None:
    pilot = w.dev("pilot")
    cases = [
        (["--ring", f"pilot={pilot}", "--window", "sat 26:00 1h"], "HH:MM"),
        (["--ring", "pilot=dev-000000000000000000000000"], "unknown device"),
        (["--ring", f"pilot={pilot}", "--ring", f"broad={pilot}"], "is in one ring of one policy"),
        (["--ring", f"pilot={pilot}", "--reboot", "always"], "--reboot must be never, notify or if-required"),
        (["--ring", "pilot"], "--ring is NAME=DEVICE"),
        (["--ring", f"pilot={pilot}", "--defer", "forever"], "must look like 30m"),
        (["--ring", "pilot=group:nowhere"], "unknown device group nowhere"),
    ]
    for args, needle in cases:
        r = w.cli("tech", "patch", "policy", "set", "acme", "bad", *args)
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert r.returncode != 0 and len(lines) == 1 and needle in lines[0], (args, r.stderr)
    assert "bad" not in {p["name"] for p in w.json_cli("tech", "patch", "policy", "list", "acme")}
    r = w.cli("tech", "backup", "policy", "set", "acme", pilot, "--every", "10s")
    assert r.returncode != 0 and "every_s" in r.stderr, r.stderr
    r = w.cli("viewer-less", "patch", "report", "acme")  # no such operator machine: a clear error
    assert r.returncode != 0 and r.stderr.startswith("rampart: error: "), r.stderr
    # another tenant's device is unknown here (T12)
    other = ok(w.t.owner.http.post("/tenants", json={"name": "other"}))
    r2 = w.t.tech.http.put(f"/tenants/{other['id']}/patch-policies/x", json={
        "rings": [{"name": "pilot", "devices": [pilot]}]})
    assert r2.status_code in (403, 404), r2.text


# --- patch rings --------------------------------------------------------------------------------


def test_patch_ring_stops_at_pilot_when_a_pilot_device_fails_then_resumes_on_approval(w: World) -> None:
    pilot, broad = w.dev("pilot"), w.dev("broad")
    # The broad ring is a device group: the scheduler patches whatever the group holds.
    out = w.ok_cli("tech", "group", "set", "acme", "servers", "--devices", broad, "--description", "web")
    assert "device group servers: 1 device(s), named by no patch policy" in out, out
    out = w.ok_cli("tech", "patch", "policy", "set", "acme", "rings", "--ring", f"pilot={pilot}",
                   "--ring", "broad=group:servers@0s", "--window", "always", "--reboot", "if-required")
    assert "ring pilot" in out and f"ring broad: {broad} [group:servers]" in out, out
    assert "servers" in w.ok_cli("tech", "devices", "list", "acme")
    [listed] = w.json_cli("tech", "group", "list", "acme")
    assert listed["devices"] == [broad] and listed["used_by"] == ["rings"], listed
    # `group:NAME` in a grant request is expanded on the technician's machine: the grant lists devices.
    asked = w.json_cli("tech", "grant", "request", "acme", "--devices", "group:servers", "--capabilities",
                       "script", "--for", "1h", "--reason", "INC-7 group expansion")
    assert asked["devices"] == [broad], asked

    # Without an approved standing grant the scheduler sends nothing and says why.
    wait_for("the missing-grant alert", lambda: alerts(w, "patch-grant-missing"))
    assert patching.installed_version(w.roots["pilot"], "rampart-broken") == "1.0"
    assert "no automation key" in alerts(w, "patch-grant-missing")[0]["detail"]

    enable_automation(w)
    r = w.cli("tech", "automation", "grant", "acme", "--action", "os-update", "--action", "reboot",
              "--policy", "rings", "--for", "7d", "--json")
    assert r.returncode == 0, r.stderr
    grant = json.loads(r.stdout)["id"]
    assert sorted(json.loads(r.stdout)["devices"]) == sorted([pilot, broad])
    w.ok_cli("approver", "grant", "approve", grant, "--yes")

    # The pilot's job fails (rampart-broken's postinst): the cycle halts at the pilot ring.
    wait_for("the halted ring", lambda: policy(w, "rings")["cycles"]
             and policy(w, "rings")["cycles"][0]["state"] == "halted", timeout=180)
    cycle = policy(w, "rings")["cycles"][0]
    runs = {r["device"]: r for r in cycle["runs"]}
    assert runs[pilot]["state"] == "failed" and "rampart-broken" in runs[pilot]["detail"], runs
    assert broad not in runs, "the broad ring must not start after a pilot failure"
    [halted] = alerts(w, "patch-ring-halted")
    assert halted["severity"] == "critical" and "not patched: rings broad" in halted["detail"]
    assert not alerts(w, "patch-grant-missing"), "the grant alert resolves once a job was sent"
    # rampart-demo on the pilot did update; nothing at all on the broad ring, for several ticks.
    assert patching.installed_version(w.roots["pilot"], "rampart-demo") == "2.0"
    time.sleep(4)
    assert patching.installed_version(w.roots["broad"], "rampart-demo") == "1.0"
    assert broad not in {r["device"] for r in policy(w, "rings")["cycles"][0]["runs"]}
    kinds = [e["kind"] for e in audit_events(w.t.owner, w.t.id)]
    assert "patch.cycle-halted" in kinds and "automation.triggered" in kinds

    # The job was signed by the automation key, logged, and is the payload-free os-update.
    job = ok(w.t.tech.http.get(f"/jobs/{runs[pilot]['job']}"))
    assert job["kind"] == "os-update" and job["signer"] == w.json_cli("owner", "automation", "show",
                                                                      "acme")["keyid"]

    # A technician cannot accept the failure; an approver can, and the broad ring follows.
    r = w.cli("tech", "patch", "resume", "acme", "rings")
    assert r.returncode != 0 and "needs the role" in r.stderr, r.stderr
    w.ok_cli("approver", "patch", "resume", "acme", "rings")
    wait_for("the broad ring's update", lambda: policy(w, "rings")["cycles"][0]["state"] == "done",
             timeout=180)
    assert patching.installed_version(w.roots["broad"], "rampart-demo") == "2.0"
    runs = {r["device"]: r for r in policy(w, "rings")["cycles"][0]["runs"]}
    assert runs[broad]["state"] == "ok" and runs[broad]["updated"] >= 2 and runs[broad]["reboot_required"]
    # if-required: the kernel-like update needs a reboot; a payload-free reboot job runs the
    # device's own command (set at enrolment), and a reboot-required alert holds until it is done.
    assert "reboot requested" in runs[broad]["detail"], runs[broad]
    wait_for("the device's reboot command", lambda: (w.base / "rebooted").exists(), timeout=60)
    assert [a for a in alerts(w, "reboot-required") if broad in a["detail"] and a["device"] == broad]
    assert not alerts(w, "patch-ring-halted") and alerts(w, "patch-ring-halted", "resolved")
    # The alerts CLI filters by kind and by least severity (critical and warning alerts exist here).
    every = w.json_cli("tech", "alerts", "list", "acme", "--status", "all")
    assert {"critical", "warning"} <= {a["severity"] for a in every}, every
    critical = w.json_cli("tech", "alerts", "list", "acme", "--status", "all", "--severity", "critical")
    assert {a["severity"] for a in critical} == {"critical"}
    assert "patch-ring-halted" in {a["kind"] for a in critical}
    warned = w.json_cli("tech", "alerts", "list", "acme", "--status", "all", "--severity", "warning")
    assert {a["id"] for a in warned} == {a["id"] for a in every if a["severity"] in ("warning", "critical")}
    reboot = w.json_cli("tech", "alerts", "list", "acme", "--status", "all", "--kind", "reboot-required")
    assert reboot and {a["kind"] for a in reboot} == {"reboot-required"}
    assert "reboot-required" in w.ok_cli("tech", "alerts", "list", "acme", "--kind", "reboot-required")
    r = w.cli("tech", "alerts", "list", "acme", "--severity", "loud")
    assert r.returncode != 0 and "--severity must be info, warning or critical" in r.stderr, r.stderr

    # The report, ring by ring, with each device's last run.
    report = w.json_cli("tech", "patch", "report", "acme", "--older-than", "0s")
    by_ring = {(g["policy"], g["ring"]): g for g in report["rings"]}
    assert [d["device"] for d in by_ring[("rings", "pilot")]["devices"]] == [pilot]
    assert by_ring[("rings", "broad")]["devices"][0]["last_run"]["state"] == "ok"
    assert by_ring[("rings", "pilot")]["devices"][0]["last_run"]["state"] == "failed"
    table = w.ok_cli("tech", "patch", "report", "acme")
    assert "rings / pilot" in table and "rings / broad" in table, table


def test_T1_the_servers_automation_key_cannot_make_an_agent_run_a_script(w: World) -> None:
    """The attacker holds the server, its database and its automation key file (T1)."""
    pilot = w.dev("pilot")
    marker = w.base / "pwned-by-automation"
    script = f"touch {marker}\n".encode()
    cfg = load_config(w.server.data_dir)
    key = trust.decode_private_key((cfg.keys_dir / f"automation-{w.t.id}.key").read_bytes(),
                                   expect_kind="automation")
    grants = [g for g in ok(w.t.owner.http.get(f"/tenants/{w.t.id}/grants")) if g["grantee"] == key.key_id]
    assert grants, "the standing grant of the previous test"
    now = int(time.time())
    job = trust.Job(id=trust.new_job_id(), tenant=w.t.id, grant=grants[0]["id"], signer=key.key_id,
                    devices=[pilot], action=trust.Action(kind="script", payloads=[trust.PayloadRef(
                        name="script", sha256=hashlib.sha256(script).hexdigest(), size=len(script))]),
                    nonce=trust.new_nonce(), issued_at=now, expires_at=now + 600)
    env = trust.sign_envelope(job.PAYLOAD_TYPE, trust.encode_payload(job), [key]).to_bytes()
    # Through the API: refused up front.
    r = w.t.tech.http.post(f"/tenants/{w.t.id}/jobs", json={"envelope": env.decode(), "payloads": {
        "script": base64.b64encode(script).decode()}})
    assert r.status_code == 400 and "does not give ['script']" in r.text, r.text
    # Straight into the store, logged, as the attacker would: the agent refuses it.
    w.server.stop(kill=True)
    store = Store(cfg.db_url)
    try:
        audit = AuditLog(store, LogKeyStore(cfg.keys_dir))
        with store.transaction() as s:
            index = audit.append(s, w.t.id, "job.created", env, time.time())
            s.add(JobRow(id=job.id, tenant_id=w.t.id, grant_id=job.grant, signer=job.signer, kind="script",
                         nonce=job.nonce, envelope=env, created_at=time.time(), expires_at=job.expires_at,
                         log_index=index))
            s.flush()
            s.add(JobPayload(job_id=job.id, name="script", data=script))
            s.add(JobTarget(job_id=job.id, device_id=pilot, state="pending"))
        audit.sign_checkpoint(w.t.id, time.time())
    finally:
        store.dispose()
        w.server.start()
        for op in (w.t.owner, w.t.tech, w.t.approver):
            op.__dict__.pop("_http", None)
    receipt = wait_for("the agent's receipt", lambda: ok(w.t.tech.http.get(f"/jobs/{job.id}"))["targets"][0]
                       ["receipt"], timeout=60)
    assert receipt["outcome"] == "refused" and receipt["refusal"] == "capability-not-granted", receipt
    assert not marker.exists()


# --- backups ------------------------------------------------------------------------------------------------


def test_scheduled_backup_runs_under_a_standing_grant_and_status_follows_receipts(w: World) -> None:
    pilot = w.dev("pilot")
    out = w.ok_cli("tech", "backup", "policy", "set", "acme", pilot, "--every", "1h", "--keep-daily", "14")
    assert "borg prune --keep-daily 14 --keep-weekly 4 --keep-monthly 6" in out, out
    # No standing grant for backup-run yet: the policy says why, nothing runs.
    wait_for("the trigger error", lambda: "no approved standing grant" in (
        w.json_cli("tech", "backup", "status", "acme")[0]["policy"]["trigger_error"] or ""))
    r = w.cli("tech", "automation", "grant", "acme", "--action", "backup-run", "--devices", pilot, "--json")
    assert r.returncode == 0, r.stderr
    w.ok_cli("approver", "grant", "approve", json.loads(r.stdout)["id"], "--yes")

    status = wait_for("a verified scheduled backup", lambda: next(
        (s for s in w.json_cli("tech", "backup", "status", "acme") if s["state"] == "ok"), None), timeout=180)
    assert status["device"] == pilot and status["last"]["check_ok"] and status["last"]["restore_ok"]
    assert status["last"]["archive"].startswith(pilot)
    job = ok(w.t.tech.http.get(f"/jobs/{status['last']['job']}"))
    assert job["kind"] == "backup-run"
    table = w.ok_cli("tech", "backup", "status", "acme")
    assert "ok" in table and pilot in table

    # The vault becomes unreachable: the next backup (a technician's, now) fails, the status
    # and a critical alert say so; a good backup afterwards resolves it.
    rsh = w.base / "vault-ssh"
    good = rsh.read_bytes()
    rsh.write_text("#!/bin/sh\necho 'vault unreachable' >&2\nexit 255\n")
    try:
        tech_grant = ok(w.t.tech.http.post(f"/tenants/{w.t.id}/grants", json={
            "devices": [pilot], "capabilities": ["backup"], "duration_s": 3600, "reason": "backup test"}))
        w.ok_cli("approver", "grant", "approve", tech_grant["id"], "--yes")
        r = w.cli("tech", "backup", "run", "acme", "--grant", tech_grant["id"], "--devices", pilot, "--wait")
        assert r.returncode != 0
        wait_for("the failed state",
                 lambda: w.json_cli("tech", "backup", "status", "acme")[0]["state"] == "failed")
        [alert] = wait_for("the backup-failed alert", lambda: alerts(w, "backup-failed"))
        assert alert["severity"] == "critical" and pilot in alert["detail"] and alert["device"] == pilot
    finally:
        rsh.write_bytes(good)
    r = w.cli("tech", "backup", "run", "acme", "--grant", tech_grant["id"], "--devices", pilot, "--wait")
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for("the ok state again", lambda: w.json_cli("tech", "backup", "status", "acme")[0]["state"] == "ok")
    wait_for("the alert resolved", lambda: not alerts(w, "backup-failed"))


# --- last: it moves the server's clock -----------------------------------------------------------


def test_patch_report_shows_security_updates_pending_longer_than_n_days(w: World) -> None:
    # Put rampart-demo back to 1.0 on the broad device: 1.1 (security) and 2.0 are pending again.
    assert patching.install(w.roots["broad"], "rampart-demo", "1.0", allow_downgrade=True).ok
    broad = w.dev("broad")

    def missing(older: str) -> list[dict[str, Any]]:
        doc = w.json_cli("tech", "patch", "report", "acme", "--older-than", older)
        rows = [d for g in doc["rings"] for d in g["devices"] if d["device"] == broad]
        return list(rows[0]["missing_security"])

    got = wait_for("the security update in the report", lambda: missing("0s"), timeout=60)
    assert got[0]["name"] == "rampart-demo" and got[0]["candidate"] == "2.0"
    assert missing("7d") == [], "seen pending for seconds, not seven days"
    # Ten days later, as the server's clock sees it (a restart with the clock moved on).
    w.server.stop()
    w.server.env["RAMPART_CLOCK_OFFSET_S"] = str(10 * 86400)
    try:
        w.server.start()
        w.t.tech.totp.offset = 10 * 86400
        w.t.tech.login()  # ten days on, the sessions have expired
        doc = ok(w.t.tech.http.get(f"/tenants/{w.t.id}/patch-report", params={"older_than_s": 7 * 86400}))
        assert doc["devices_missing"] >= 1
        row = next(d for g in doc["rings"] for d in g["devices"] if d["device"] == broad)
        assert row["missing_security"][0]["days"] >= 10
    finally:
        w.server.stop()
        del w.server.env["RAMPART_CLOCK_OFFSET_S"]
        w.t.tech.totp.offset = 0.0
        w.server.start()
        for op in (w.t.owner, w.t.tech, w.t.approver):
            op.__dict__.pop("_http", None)
