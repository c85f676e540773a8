"""A tenant with a real enrolled agent, and the attacker's hold on the server (T1, T2).

``agent_world`` gives a tenant (owner, approver, technician with keys and root v1),
a real ``rampart-agent`` process enrolled and approved with a scratch
directory it may write, and an approved grant. ``server_owned`` plays the
attacker who holds the server's data directory, database and log keys;
``insert_job`` writes a job straight into the store as that attacker would.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rampart import trust
from rampart.server.audit import AuditLog
from rampart.server.config import load_config
from rampart.server.db import Store
from rampart.server.keystore import LogKeyStore
from rampart.server.models import JobPayload, JobRow, JobTarget
from rampart.trust import PrivateKey

from .agent import AgentProcess, traversable_dir
from .operators import TenantSetup, approved_grant, bootstrap_owner, ok, setup_tenant
from .server import RunningServer


@dataclass
class World:
    server: RunningServer
    t: TenantSetup
    agent: AgentProcess
    scratch: Path
    grant: str

    @property
    def device(self) -> str:
        return self.agent.device_id

    def marker_script(self, name: str) -> tuple[bytes, Path]:
        path = self.scratch / name
        return f"echo pwned > {path}\n".encode(), path

    def job(self, signer: PrivateKey, grant: str, script: bytes, *,
            signer_id: str | None = None) -> trust.Job:
        now = int(time.time())
        return trust.Job(
            id=trust.new_job_id(), tenant=self.t.id, grant=grant, signer=signer_id or signer.key_id,
            devices=[self.device],
            action=trust.Action(kind="script", payloads=[trust.PayloadRef(
                name="script", sha256=hashlib.sha256(script).hexdigest(), size=len(script))]),
            declared=trust.Declared(writes=[str(self.scratch)]),
            nonce=trust.new_nonce(), issued_at=now, expires_at=now + 3600)

    def receipt(self, job_id: str, timeout: float = 60) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                doc = ok(self.t.owner.http.get(f"/jobs/{job_id}"))
            except Exception:  # noqa: BLE001 - a restarting server
                self.t.owner.__dict__.pop("_http", None)
                time.sleep(0.3)
                continue
            target = doc["targets"][0]
            if target["receipt"]:
                return dict(target["receipt"])
            time.sleep(0.2)
        raise TimeoutError(f"no receipt for {job_id}:\n{self.agent.log_text()[-2000:]}")


def envelope(obj: trust.Payload, *keys: PrivateKey) -> bytes:
    return trust.sign_envelope(type(obj).PAYLOAD_TYPE, trust.encode_payload(obj), keys).to_bytes()


@contextmanager
def agent_world(server: RunningServer) -> Iterator[World]:
    """A tenant with a real agent and an approved grant; the honest path is checked first."""
    base = traversable_dir("rampart-compromise-")
    scratch = base / "scratch"
    scratch.mkdir()
    scratch.chmod(0o777)
    owner = bootstrap_owner(server)
    t = setup_tenant(owner, "victim")
    tok = ok(owner.http.post(f"/tenants/{t.id}/enrollment-tokens", json={"ttl_s": 600}))
    agent = AgentProcess(base / "agent")
    r = agent.enroll(server.url, tok["token"], tok["root_sha256"], server.cert_sha256,
                     "--write-root", str(scratch))
    assert r.returncode == 0, r.stderr
    ok(owner.http.post(f"/tenants/{t.id}/devices/{agent.device_id}/approve"))
    agent.start()
    try:
        w = World(server, t, agent, scratch, approved_grant(t, [agent.device_id]))
        # The honest path works: a job signed by the technician runs.
        legit = w.job(t.tech_key, w.grant, b"echo legit\n")
        ok(t.tech.http.post(f"/tenants/{t.id}/jobs", json={
            "envelope": envelope(legit, t.tech_key).decode(),
            "payloads": {"script": base64.b64encode(b"echo legit\n").decode()}}))
        assert w.receipt(legit.id)["outcome"] == "ran"
        yield w
    finally:
        agent.stop()
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def server_owned(w: World) -> Iterator[tuple[Store, AuditLog, LogKeyStore]]:
    """Kill the server, open its store and keys with its own code, restart it afterwards."""
    w.server.stop(kill=True)
    cfg = load_config(w.server.data_dir)
    store = Store(cfg.db_url)
    keys = LogKeyStore(cfg.keys_dir)
    try:
        yield store, AuditLog(store, keys), keys
    finally:
        store.dispose()
        w.server.start()
        for op in (w.t.owner, w.t.tech, w.t.approver):
            op.__dict__.pop("_http", None)


def insert_job(s: object, audit: AuditLog, tenant: str, env: bytes, job: trust.Job,
               script: bytes) -> None:
    now = time.time()
    index = audit.append(s, tenant, "job.created", env, now)  # type: ignore[arg-type]
    s.add(JobRow(id=job.id, tenant_id=tenant, grant_id=job.grant, signer=job.signer,  # type: ignore[attr-defined]
                 kind="script", nonce=job.nonce, envelope=env, created_at=now,
                 expires_at=job.expires_at, log_index=index))
    s.flush()  # type: ignore[attr-defined]
    s.add(JobPayload(job_id=job.id, name="script", data=script))  # type: ignore[attr-defined]
    for d in job.devices:
        s.add(JobTarget(job_id=job.id, device_id=d, state="pending"))  # type: ignore[attr-defined]
