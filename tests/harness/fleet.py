"""Real agent processes running signed jobs for a test: a fleet enrolled, approved and connected."""

from __future__ import annotations

import base64
import hashlib
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rampart import trust

from .agent import AgentProcess, enroll_fleet, stop_all, traversable_dir
from .operators import TenantSetup, bootstrap_owner, ok, setup_tenant, step_up
from .server import RunningServer


def job_writing(t: TenantSetup, grant: str, devices: list[str], script: bytes,
                writes: Path) -> tuple[str, dict[str, str], str]:
    """A script job signed by the technician's key that declares writes under ``writes``."""
    now = int(time.time())
    job = trust.Job(
        id=trust.new_job_id(), tenant=t.id, grant=grant, signer=t.tech_key.key_id, devices=devices,
        action=trust.Action(kind="script", payloads=[trust.PayloadRef(
            name="script", sha256=hashlib.sha256(script).hexdigest(), size=len(script))]),
        declared=trust.Declared(writes=[str(writes)]),
        nonce=trust.new_nonce(), issued_at=now, expires_at=now + 3600)
    env = trust.sign_envelope(trust.Job.PAYLOAD_TYPE, trust.encode_payload(job), [t.tech_key])
    return env.to_bytes().decode(), {"script": base64.b64encode(script).decode()}, job.id


@dataclass
class Fleet:
    server: RunningServer
    tenant: TenantSetup
    agents: list[AgentProcess]
    scratch: Path

    @property
    def devices(self) -> list[str]:
        return [a.device_id for a in self.agents]

    def wait_connected(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            devs = ok(self.tenant.owner.http.get(f"/tenants/{self.tenant.id}/devices"))
            if devs and all(d["connected"] for d in devs if d["id"] in self.devices):
                return
            time.sleep(0.2)
        raise TimeoutError("agents did not all connect")

    def post_job(self, grant: str, devices: list[str], script: bytes) -> str:
        env, payloads, job_id = job_writing(self.tenant, grant, devices, script, self.scratch)
        body = {"envelope": env, "payloads": payloads}
        r = self.tenant.tech.http.post(f"/tenants/{self.tenant.id}/jobs", json=body)
        if r.status_code == 403 and r.json().get("code") == "step-up-required":
            step_up(self.tenant.tech)  # a fan-out beyond 10 devices needs a fresh TOTP (G5)
            r = self.tenant.tech.http.post(f"/tenants/{self.tenant.id}/jobs", json=body)
        ok(r)
        return job_id

    def wait_done(self, job_ids: list[str], timeout: float = 120) -> dict[str, dict]:
        deadline = time.time() + timeout
        jobs: dict[str, dict] = {}
        while time.time() < deadline:
            try:
                jobs = {j: ok(self.tenant.tech.http.get(f"/jobs/{j}")) for j in job_ids}
            except Exception:  # noqa: BLE001 - the server may be restarting
                self.reopen_clients()
                time.sleep(0.3)
                continue
            if all(t["state"] == "done" for j in jobs.values() for t in j["targets"]):
                return jobs
            time.sleep(0.2)
        pending = [(j, t["device"], t["state"]) for j, d in jobs.items() for t in d["targets"]
                   if t["state"] != "done"]
        raise TimeoutError(f"targets not done: {pending[:5]} ...")

    def reopen_clients(self) -> None:
        """After a server restart: sessions survive (they are in the store); clients do not."""
        for op in (self.tenant.owner, self.tenant.tech, self.tenant.approver):
            op.__dict__.pop("_http", None)

    def runs(self) -> Counter[tuple[str, str]]:
        log = self.scratch / "runs.log"
        lines = log.read_text().split("\n") if log.exists() else []
        return Counter(tuple(line.split()) for line in lines if line)  # type: ignore[misc]


def record_scratch(base: Path) -> Path:
    """``base/scratch``, where jobs may write, holding ``runs.log``: the record every job appends
    to. Each job runs as a uid of its own (docs/containment.md), so both exist beforehand,
    writable by all of them."""
    scratch = base / "scratch"
    scratch.mkdir()
    scratch.chmod(0o777)
    (scratch / "runs.log").touch()
    (scratch / "runs.log").chmod(0o666)
    return scratch


def make_fleet(server: RunningServer, n: int) -> Iterator[Fleet]:
    base = traversable_dir("rampart-fleet-")
    scratch = record_scratch(base)
    owner = bootstrap_owner(server)
    t = setup_tenant(owner, "fleet")
    tokens = [ok(owner.http.post(f"/tenants/{t.id}/enrollment-tokens", json={"ttl_s": 600}))["token"]
              for _ in range(n)]
    root_sha = ok(owner.http.get(f"/tenants/{t.id}/roots/current"))["sha256"]
    agents = enroll_fleet(base, server.url, server.cert_sha256, root_sha, tokens, scratch)
    try:
        for a in agents:
            ok(owner.http.post(f"/tenants/{t.id}/devices/{a.device_id}/approve"))
        fleet = Fleet(server, t, agents, scratch)
        fleet.wait_connected()
        yield fleet
    finally:
        stop_all(agents)
        shutil.rmtree(base, ignore_errors=True)
