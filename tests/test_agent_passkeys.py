"""A real ``rampart-agent`` runs passkey-signed jobs and keeps each passkey's sign counter.

The root the agent pins holds a passkey approver and a passkey technician (software
authenticator, real ES256 assertions: tests/harness/passkey.py). The stand-in server
(:class:`MiniServer`) sends what the test wants, as a compromised server would (T1).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
from harness.agent import AgentProcess
from harness.mini_server import MiniServer
from harness.passkey import SoftPasskey
from harness.tenant import Tenant

from rampart import trust
from rampart.trust import Grant, Job, Receipt, RoleSpec, TenantRoot


@dataclass
class PasskeyTenant(Tenant):
    """A tenant whose roots also hold a passkey approver and a passkey technician."""

    pk_approver: SoftPasskey = field(default_factory=SoftPasskey)
    pk_tech: SoftPasskey = field(default_factory=SoftPasskey)

    def root_doc(self, version: int, **kw: object) -> TenantRoot:
        doc = super().root_doc(version, **kw)  # type: ignore[arg-type]
        keys = {**doc.keys, self.pk_approver.key_id: self.pk_approver.entry("alice-passkey"),
                self.pk_tech.key_id: self.pk_tech.entry("bob-passkey")}
        roles = msgspec.structs.replace(
            doc.roles,
            approver=RoleSpec(keyids=[*doc.roles.approver.keyids, self.pk_approver.key_id]),
            technician=RoleSpec(keyids=[*doc.roles.technician.keyids, self.pk_tech.key_id]))
        return msgspec.structs.replace(doc, keys=keys, roles=roles)

    def passkey_grant(self, devices: list[str]) -> bytes:
        now = int(time.time())
        g = Grant(id=trust.new_grant_id(), tenant=self.id, grantee=self.pk_tech.key_id, devices=devices,
                  capabilities=["script", "file"], not_before=now - 60, not_after=now + 3600,
                  reason="passkeys")
        unsigned = trust.Envelope(Grant.PAYLOAD_TYPE, trust.encode_payload(g), ())
        return self.pk_approver.sign(unsigned).to_bytes()

    def passkey_job(self, grant: bytes, devices: list[str], script: bytes, *, counter: int | None = None,
                    origin: str | None = None, writes: tuple[str, ...] = ()) -> bytes:
        j = trust.decode_payload(trust.decode_envelope(
            self.job(grant, devices, script, writes=writes)).payload, Job)
        j = msgspec.structs.replace(j, signer=self.pk_tech.key_id)
        env = trust.Envelope(Job.PAYLOAD_TYPE, trust.encode_payload(j), ())
        return self.pk_tech.sign(env, counter=counter, origin=origin).to_bytes()


class Env:
    def __init__(self, base: Path) -> None:
        self.tenant = PasskeyTenant()
        self.server = MiniServer(base / "server", self.tenant).start()
        self.scratch = base / "scratch"
        self.scratch.mkdir()
        self.scratch.chmod(0o777)
        self.agent = AgentProcess(base / "agent")
        r = self.agent.enroll(self.server.url, self.server.new_token(), self.tenant.root_sha256,
                              self.server.cert_sha256, "--write-root", str(self.scratch))
        assert r.returncode == 0, r.stderr
        self.agent.start()
        self.server.wait_connected(self.agent.device_id)

    def run(self, name: str, **kw: object) -> tuple[Receipt, Path]:
        """A passkey job that would create ``scratch/name``; its receipt and that path."""
        marker = self.scratch / name
        script = f"#!/bin/sh\ntouch {marker}\n".encode()
        d = [self.agent.device_id]
        grant = self.tenant.passkey_grant(d)
        job = self.tenant.passkey_job(grant, d, script, writes=(str(self.scratch),), **kw)  # type: ignore[arg-type]
        jid = self.server.publish(job, grant, {"script": script}, d)
        return self.server.wait_receipt(jid, self.agent.device_id), marker


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    base = Path(tempfile.mkdtemp(prefix="rampart-passkey-agent-"))
    base.chmod(0o755)
    e = Env(base)
    try:
        yield e
    finally:
        e.agent.stop()
        e.server.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_T5_a_passkey_counter_that_does_not_increase_is_refused_even_after_a_restart(env: Env) -> None:
    r, marker = env.run("counter-7", counter=7)
    assert r.outcome == "ran" and r.exit_code == 0 and marker.exists(), r
    env.agent.stop()
    env.agent.start()  # the stored counter survives the restart
    env.server.wait_connected(env.agent.device_id)
    for counter in (7, 2, 0):  # an old assertion's counter, or a cloned authenticator's
        r, marker = env.run(f"counter-{counter}-again", counter=counter)
        assert (r.outcome, r.refusal) == ("refused", "passkey-counter"), r
        assert not marker.exists()
    r, marker = env.run("counter-8", counter=8)
    assert r.outcome == "ran" and marker.exists(), r


def test_T1_a_passkey_assertion_from_another_origin_runs_nothing(env: Env) -> None:
    r, marker = env.run("phished", counter=100, origin="https://rampart.example.com")
    assert (r.outcome, r.refusal) == ("refused", "passkey-origin"), r
    assert not marker.exists()
    r, marker = env.run("after-phish", counter=9)  # the refused one stored no counter
    assert r.outcome == "ran" and marker.exists(), r
