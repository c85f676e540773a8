"""A world for remote session tests: a real server, a real agent, and a technician's real CLI.

The tenant's root names two approvers (``shell`` is high-risk: a grant needs both),
a technician whose CLI configuration is laid out as ``rampart login`` and
``rampart key new`` leave it, and an owner. The agent runs as root with its
own dynamic uid per session, writes confined to a scratch directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pexpect

from harness import logs
from harness.agent import AgentProcess, stop_all, traversable_dir
from harness.operators import Operator, bootstrap_owner, ok, step_up, two_approver_tenant
from harness.server import REPO, RunningServer, start_server
from rampart import diagnostics, tlspin, trust
from rampart.cli.config import Config, Session
from rampart.trust import OperatorKey

KEY_PASSPHRASE = "session test passphrase"


@dataclass
class SessionWorld:
    base: Path
    server: RunningServer
    tenant: str
    owner: Operator
    approvers: list[tuple[Operator, OperatorKey]]
    tech: Operator
    tech_key: OperatorKey
    scratch: Path
    agents: dict[str, AgentProcess] = field(default_factory=dict)
    grants: dict[tuple[str, tuple[str, ...]], str] = field(default_factory=dict)

    @property
    def main(self) -> AgentProcess:
        return self.agents["main"]

    def enrol(self, name: str, *extra: str) -> AgentProcess:
        tok = ok(self.owner.http.post(f"/tenants/{self.tenant}/enrollment-tokens", json={"ttl_s": 600}))
        agent = AgentProcess(self.base / name)
        r = agent.enroll(self.server.url, tok["token"], tok["root_sha256"], self.server.cert_sha256,
                         "--write-root", str(self.scratch),
                         "--session-log", str(self.base / f"{name}-sessions.log"),
                         *extra)
        assert r.returncode == 0, r.stderr
        ok(self.owner.http.post(f"/tenants/{self.tenant}/devices/{agent.device_id}/approve"))
        self.agents[name] = agent.start()
        self.wait_connected(agent.device_id)
        return agent

    def wait_connected(self, device_id: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for d in ok(self.owner.http.get(f"/tenants/{self.tenant}/devices")):
                if d["id"] == device_id and d["connected"]:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"{device_id} never connected")

    def session_log(self, name: str = "main") -> list[dict[str, Any]]:
        path = self.base / f"{name}-sessions.log"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def grant(self, caps: list[str], agent: str = "main", duration_s: int = 3600) -> str:
        """An approved grant for the technician (two approvers for shell or root)."""
        key = (agent, tuple(sorted(caps)))
        if key in self.grants and duration_s == 3600:
            return self.grants[key]
        doc = ok(self.tech.http.post(f"/tenants/{self.tenant}/grants", json={
            "devices": [self.agents[agent].device_id], "capabilities": caps, "duration_s": duration_s,
            "reason": "remote support tests"}))
        need = 2 if {"root", "shell"} & set(caps) else 1
        got: dict[str, Any] = {}
        for op, k in self.approvers[:need]:
            current = ok(op.http.get(f"/grants/{doc['id']}"))["envelope"]
            signed = trust.add_signature(trust.decode_envelope(current.encode()), k)
            if need > 1:
                step_up(op)
            got = ok(op.http.post(f"/grants/{doc['id']}/signatures",
                                  json={"envelope": signed.to_bytes().decode()}))
        assert got["status"] == "approved", got
        if duration_s == 3600:
            self.grants[key] = str(doc["id"])
        return str(doc["id"])

    def revoke(self, grant_id: str, *, stepped_up: bool = False) -> None:
        """Revoke as the first approver (with a fresh TOTP step-up unless ``stepped_up``)."""
        op, k = self.approvers[0]
        rev = trust.Revocation(tenant=self.tenant, grant=grant_id, reason="revoked in a test",
                               issued_at=int(time.time()))
        env = trust.sign_envelope(rev.PAYLOAD_TYPE, trust.encode_payload(rev), [k]).to_bytes().decode()
        if not stepped_up:
            step_up(op)
        ok(op.http.post(f"/grants/{grant_id}/revocation", json={"envelope": env}))

    def cli_env(self, config: str = "cli-tech") -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")}
        env.update({"PYTHONPATH": str(REPO), "RAMPART_CONFIG_DIR": str(self.base / config),
                    "RAMPART_KEY_PASSPHRASE": KEY_PASSPHRASE, "COLUMNS": "200", "TERM": "xterm-256color",
                    diagnostics.ENV: "1"})
        return env

    def cli(self, *args: str, timeout: float = 150, input: bytes | None = None,
            config: str = "cli-tech", env_extra: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "rampart.cli.main", *args],
                              env={**self.cli_env(config), **(env_extra or {})},
                              capture_output=True, timeout=timeout, cwd=REPO, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)

    def cli_argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "rampart.cli.main", *args]

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(ok(self.tech.http.get(f"/jobs/{job_id}")))

    def receipt(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            target = self.job(job_id)["targets"][0]
            if target["receipt"]:
                return dict(target["receipt"])
            time.sleep(0.2)
        raise TimeoutError(f"no receipt for {job_id}:\n{self.main.log_text()[-3000:]}")

    def receipt_envelope(self, job_id: str) -> trust.Receipt:
        doc = ok(self.tech.http.get(f"/sessions/{job_id}"))
        assert doc["receipt_envelope"], doc
        return trust.decode_payload(trust.decode_envelope(doc["receipt_envelope"].encode()).payload,
                                    trust.Receipt)

    def sessions(self) -> list[dict[str, Any]]:
        return list(ok(self.tech.http.get(f"/tenants/{self.tenant}/sessions")))

    def wait_recording(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            doc = ok(self.tech.http.get(f"/sessions/{job_id}"))
            if doc.get("recording"):
                return dict(doc)
            time.sleep(0.2)
        raise TimeoutError(f"no recording for {job_id}")


def cli_config(world: SessionWorld, name: str, op: Operator, key: OperatorKey, root_env: str) -> None:
    """An operator's CLI configuration, as `rampart login` and `rampart key new` leave it."""
    cfg = Config(world.base / name)
    cfg.ensure()
    server = world.server
    cfg.save_session(Session(server=server.url, cert_sha256=tlspin.fingerprint(server.cert_der),
                             username=op.username, token=op.token), server.cert_der)
    cfg.save_key(key.key_id, trust.encrypt_private_key(key, KEY_PASSPHRASE), name=op.username,
                 tenant=world.tenant, username=op.username)
    cfg.save_root(world.tenant, 1, root_env.encode(), newest=True)
    cfg.save_pin(world.tenant, trust.root_sha256(root_env.encode()))


@contextmanager
def session_world(pg_cluster: Any, prefix: str = "rampart-sessions-") -> Iterator[SessionWorld]:
    base = traversable_dir(prefix)
    (base / "srv").mkdir()
    server = start_server(base / "srv", pg_cluster.new_database() if pg_cluster is not None else None)
    w: SessionWorld | None = None
    try:
        owner = bootstrap_owner(server)
        team = two_approver_tenant(owner, technicians=("tech", "tech2"))
        tid, approvers, root_env, owner_key = team.id, team.approvers, team.root_envelope, team.owner_key
        (tech, tech_key), (tech2, tech2_key) = team.techs
        scratch = base / "scratch"
        scratch.mkdir()
        scratch.chmod(0o777)
        w = SessionWorld(base, server, tid, owner, approvers, tech, tech_key, scratch)
        w.tech2 = tech2  # type: ignore[attr-defined]
        w.tech2_key = tech2_key  # type: ignore[attr-defined]
        w.root_env = root_env  # type: ignore[attr-defined]
        w.owner_key = owner_key  # type: ignore[attr-defined]
        cli_config(w, "cli-tech", tech, tech_key, root_env)
        cli_config(w, "cli-tech2", tech2, tech2_key, root_env)
        yield w
    finally:
        if w is not None:
            stop_all(w.agents.values())
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


# --- the technician's CLI in a real pty -----------------------------------------------------------

PROMPT = "RP-READY> "
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def spawn(w: SessionWorld, *args: str, rows: int = 24, cols: int = 80,
          config: str = "cli-tech") -> pexpect.spawn:
    argv = w.cli_argv(*args)
    # 90 s: longer than the CLI's own 60 s wait for the device, so its error shows if it gives up.
    child = pexpect.spawn(argv[0], argv[1:], env=w.cli_env(config), dimensions=(rows, cols), timeout=90,
                          cwd=str(REPO))
    logs.watch(child, None)
    return child


def open_shell(w: SessionWorld, grant: str, *extra: str, config: str = "cli-tech") -> tuple[pexpect.spawn,
                                                                                            str]:
    child = spawn(w, "shell", "acme", w.main.device_id, "--grant", grant, *extra, config=config)
    # 150 s: beyond the CLI's own longest wait before it prints (a 30 s request, 15 s to open the
    # relay, 60 s for the device), so that when it gives up its own message is what fails the test.
    child.expect(r"session (job-[0-9a-z]+) open", timeout=150)
    job_id = child.match.group(1).decode()
    # Written so that the echoed command line does not itself match the prompt.
    child.sendline("bind 'set enable-bracketed-paste off'; export PS1='RP-''READY> '")
    child.expect_exact(PROMPT)
    return child, job_id


_MARKS = iter(range(1, 1 << 30))


def run(child: pexpect.spawn, command: str) -> str:
    """Run one command at the prompt; its output (between the echoed command line and an end marker
    that the echoed line itself does not contain)."""
    mark = f"M{next(_MARKS)}"
    child.sendline(f"{command}; echo '{mark}''-END'")
    child.expect_exact(f"{mark}-END")
    text = ANSI.sub("", child.before.decode(errors="replace"))
    child.expect_exact(PROMPT)
    return text.split("-END'\r\n", 1)[-1]


