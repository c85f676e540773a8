"""The outside witness end to end (issue 19, C4; T7): a real server, real agents, a real `rampart witness`.

The tenant's root names one witness and asks a quorum of one. A job runs only once the witness
co-signed a checkpoint covering it. The attacker who holds the server rewrites the log's history
and shows the fork to a newly enrolled agent (a split view: that agent has seen no checkpoint to
compare with); the witness, which co-signed the honest log, refuses the fork, and the agent
refuses the job for want of a co-signature. With the witness offline, a job is refused with the
reason ``witness-quorum`` once the server's wait is over: a clear answer, not a hang.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from harness.agent import AgentProcess, stop_all
from harness.operators import approved_grant, make_root, ok, sign_root
from harness.server import REPO, RunningServer, start_server
from harness.world import World, agent_world, envelope, server_owned
from sqlalchemy import select, update

from rampart import tlspin, trust
from rampart.cli.config import Config, Session
from rampart.server.models import AuditEntry

#: The server's wait for a co-signature (config.json ``witness_wait_s``), short for the tests.
WAIT_S = 4


@pytest.fixture(scope="module")
def server(pg_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    srv = start_server(tmp_path_factory.mktemp("witness-srv"),
                       pg_cluster.new_database() if pg_cluster is not None else None, witness_wait_s=WAIT_S)
    try:
        yield srv
    finally:
        srv.stop()


class Witness:
    """The witness's machine: its own CLI configuration (a viewer account) and key."""

    def __init__(self, w: World, base: Path) -> None:
        self.w = w
        self.dir = base / "witness-cli"
        viewer = w.t.owner.create_account("witness", "viewer", [w.t.id])
        cfg = Config(self.dir)
        cfg.ensure()
        srv = w.server
        cfg.save_session(Session(server=srv.url, cert_sha256=tlspin.fingerprint(srv.cert_der),
                                 username=viewer.username, token=viewer.token), srv.cert_der)
        self.key_file = base / "witness.key"
        r = self.cli("witness", "key", "new", "--out", str(self.key_file))
        assert r.returncode == 0, r.stderr
        self.public = next(x.split(": ", 1)[1] for x in r.stdout.splitlines() if "public key" in x)
        assert self.key_file.stat().st_mode & 0o777 == 0o600

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")}
        env.update({"PYTHONPATH": str(REPO), "RAMPART_CONFIG_DIR": str(self.dir), "COLUMNS": "200"})
        return subprocess.run([sys.executable, "-m", "rampart.cli.main", *args], env=env, text=True,
                              capture_output=True, timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL)

    def once(self) -> subprocess.CompletedProcess[str]:
        return self.cli("witness", "run", self.w.t.tenant["name"], "--key", str(self.key_file),
                        "--root-sha256", trust.root_sha256(self.w.t.root_envelope.encode()), "--once")


@pytest.fixture(scope="module")
def world(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, Witness]]:
    with agent_world(server) as w:
        witness = Witness(w, tmp_path_factory.mktemp("witness"))
        # The owners add the witness and ask a quorum of one: root v2, signed by the owner.
        t = w.t
        root = make_root(t.tenant, 2, owners=[t.owner_key], approvers=[t.approver_key],
                         technicians=[t.tech_key])
        wkey = trust.WitnessPublicKey.from_text(witness.public)
        root = msgspec.structs.replace(root, witness_keys={wkey.key_id: wkey.to_b64()},
                                       policy=trust.Policy(witness_quorum=1))
        ok(t.owner.http.post(f"/tenants/{t.id}/roots", json={"envelope": sign_root(root, [t.owner_key])}))
        w.agent.wait_log("root updated to v2")
        yield w, witness


def _submit(w: World, device: str, grant: str, script: bytes) -> str:
    job = w.job(w.t.tech_key, grant, script)
    job = msgspec.structs.replace(job, devices=[device])
    ok(w.t.tech.http.post(f"/tenants/{w.t.id}/jobs", json={
        "envelope": envelope(job, w.t.tech_key).decode(),
        "payloads": {"script": base64.b64encode(script).decode()}}))
    return job.id


def _receipt(w: World, job_id: str, witness: Witness | None = None, timeout: float = 60) -> dict[str, Any]:
    """The job's receipt; the witness makes a pass every half second meanwhile, when given."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if witness is not None:
            witness.once()
        target = ok(w.t.owner.http.get(f"/jobs/{job_id}"))["targets"][0]
        if target["receipt"]:
            return dict(target["receipt"])
        time.sleep(0.5)
    raise TimeoutError(f"no receipt for {job_id}")


def test_a_job_runs_once_the_witness_cosigned_a_checkpoint_covering_it(world: tuple[World, Witness]) -> None:
    w, witness = world
    script, marker = w.marker_script("witnessed")
    job_id = _submit(w, w.device, w.grant, script)
    r = _receipt(w, job_id, witness)
    assert r["outcome"] == "ran", r
    assert marker.read_text() == "pwned\n"
    # The checkpoint the agent accepted carries the witness's co-signature, stored by the server.
    cp = ok(w.t.owner.http.get(f"/tenants/{w.t.id}/audit/checkpoint"))
    keyids = {s.keyid for s in trust.decode_envelope(cp["envelope"].encode()).signatures}
    assert trust.WitnessPublicKey.from_text(witness.public).key_id in keyids
    state = witness.dir / "witness" / "checkpoints.json"
    assert state.stat().st_mode & 0o777 == 0o600
    assert json.loads(state.read_text())[w.t.id]["size"] >= 1
    # The posture report's C4 says what the witness vouches for.
    report = ok(w.t.owner.http.get(f"/tenants/{w.t.id}/report", params={"format": "json"}))
    c4 = next(c for c in report["controls"] if c["id"] == "C4")
    assert any("1 outside witness(es) in the root; agents require 1 co-signature(s) per job; newest "
               "co-signed checkpoint" in e for e in c4["evidence"]), c4


def test_T7_witness_offline_the_job_is_refused_with_witness_quorum_after_the_wait(
        world: tuple[World, Witness]) -> None:
    w, _ = world
    script, marker = w.marker_script("unwitnessed")
    began = time.time()
    job_id = _submit(w, w.device, w.grant, script)
    r = _receipt(w, job_id, None, timeout=WAIT_S + 60)
    assert (r["outcome"], r["refusal"]) == ("refused", "witness-quorum"), r
    assert "witness" in r["detail"]
    assert time.time() - began >= WAIT_S - 1  # the server waited for a co-signature first
    assert not marker.exists()


def test_T1_a_cosignature_by_a_key_the_root_does_not_name_is_refused_and_stores_nothing(
        world: tuple[World, Witness]) -> None:
    w, _ = world
    cp = ok(w.t.owner.http.get(f"/tenants/{w.t.id}/audit/checkpoint"))
    before = cp["envelope"]
    forged = trust.add_signature(trust.decode_envelope(before.encode()), trust.WitnessKey.generate())
    r = w.t.tech.http.post(f"/tenants/{w.t.id}/audit/checkpoints/{cp['size']}/cosignatures",
                           json={"envelope": forged.to_bytes().decode()})
    assert r.status_code == 400 or r.json()["added"] == [], r.text
    after = ok(w.t.owner.http.get(f"/tenants/{w.t.id}/audit/checkpoint"))
    if after["size"] == cp["size"]:
        assert after["envelope"] == before  # no signature of the impostor was kept


def test_T7_split_view_the_witness_refuses_the_fork_and_the_new_agent_refuses_its_job(
        world: tuple[World, Witness]) -> None:
    w, witness = world
    r = witness.once()
    assert r.returncode == 0, r.stderr  # the honest log, co-signed
    seen = json.loads((witness.dir / "witness" / "checkpoints.json").read_text())[w.t.id]
    # The attacker holds the server: history is rewritten (entry 0 hidden) in the store.
    with server_owned(w) as (store, _, _):
        with store.transaction() as s:
            first = s.scalars(select(AuditEntry).where(AuditEntry.log_id == w.t.id,
                                                       AuditEntry.idx == 0)).one()
            hidden = b"nothing happened"
            s.execute(update(AuditEntry).where(AuditEntry.log_id == w.t.id, AuditEntry.idx == 0)
                      .values(data=hidden, leaf_hash=trust.merkle.leaf_hash(hidden)))
            assert first.idx == 0
    # A device enrolled now has seen no checkpoint: it would take the fork on the server's word.
    base = w.scratch.parent
    tok = ok(w.t.owner.http.post(f"/tenants/{w.t.id}/enrollment-tokens", json={"ttl_s": 600}))
    fresh = AgentProcess(base / "agent-fresh")
    e = fresh.enroll(w.server.url, tok["token"], tok["root_sha256"], w.server.cert_sha256,
                     "--write-root", str(w.scratch))
    assert e.returncode == 0, e.stderr
    ok(w.t.owner.http.post(f"/tenants/{w.t.id}/devices/{fresh.device_id}/approve"))
    fresh.start()
    try:
        fresh.wait_log("connected to")  # enrolled on root v2 (the token pins the current root)
        grant = approved_grant(w.t, [fresh.device_id])
        script, marker = w.marker_script("forked")
        job_id = _submit(w, fresh.device_id, grant, script)
        # The witness refuses every checkpoint of the fork, now and on every later pass.
        for _ in range(2):
            r = witness.once()
            assert r.returncode == 3, (r.stdout, r.stderr)
            assert "REFUSED" in r.stderr and "inconsistent-log" in r.stderr
        after = json.loads((witness.dir / "witness" / "checkpoints.json").read_text())[w.t.id]
        assert after == seen  # it signed nothing of the fork
        receipt = _receipt(w, job_id, None, timeout=WAIT_S + 60)
        assert (receipt["outcome"], receipt["refusal"]) == ("refused", "witness-quorum"), receipt
        assert not marker.exists()
        cp = ok(w.t.owner.http.get(f"/tenants/{w.t.id}/audit/checkpoint"))
        keyids = {s.keyid for s in trust.decode_envelope(cp["envelope"].encode()).signatures}
        assert trust.WitnessPublicKey.from_text(witness.public).key_id not in keyids
    finally:
        stop_all([fresh])
