"""Issue 18: the gateways an agent tries in turn (agent/gateways.py, docs/scale-out.md).

A deployment of several nodes names every node's agent gateway (``agent_gateways`` in the
server configuration); an enrolling agent stores the list and, when the gateway it uses is
gone, tries the next one. The list says where to connect, never whom to trust: a server that
names unusable gateways (T1) gets no enrolment, and nothing is stored.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from harness.agent import AgentProcess, stop_all
from harness.mini_server import MiniServer
from harness.operators import bootstrap_owner, ok, setup_tenant
from harness.ports import free_port
from harness.server import REPO, RunningServer, init_server
from harness.tenant import Tenant

from rampart.wire.gateways import MAX_GATEWAYS, check_gateway_urls


def _gw(port: int) -> str:
    return f"wss://127.0.0.1:{port}/agent/v1/ws"


def _configure(server: RunningServer, gateways: object) -> None:
    cfg = server.data_dir / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "agent_gateways": gateways}))


def _gateways(agent: AgentProcess, *urls: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*agent.command, "gateways", "--state", str(agent.state), *urls],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def base(open_base: Path) -> Path:
    return open_base


def test_an_agent_given_the_deployments_gateways_tries_them_in_turn(base: Path, db_url: str | None) -> None:
    """The server names a dead gateway first and its own second: the enrolled agent stores both,
    `rampart-agent gateways` shows them, and the agent gets past the dead one to connect."""
    dead = free_port()
    server = init_server(base / "server", db_url)
    _configure(server, [_gw(dead), _gw(server.agent_port)])
    server.start()
    agent = AgentProcess(base / "agent")
    try:
        owner = bootstrap_owner(server)
        t = setup_tenant(owner, "acme")
        tok = ok(owner.http.post(f"/tenants/{t.id}/enrollment-tokens", json={"ttl_s": 600}))
        r = agent.enroll(server.url, tok["token"], tok["root_sha256"], server.cert_sha256)
        assert r.returncode == 0, r.stderr
        shown = _gateways(agent)
        assert shown.returncode == 0 and shown.stdout.split() == [_gw(dead), _gw(server.agent_port)]
        agent.start()
        agent.wait_log(f"connected to {_gw(server.agent_port)}", timeout=60)
        assert "connection to server lost" in agent.log_text()  # the dead one was tried first
        [device] = [d for d in ok(owner.http.get(f"/tenants/{t.id}/devices")) if d["id"] == agent.device_id]
        assert device["connected"] is True
    finally:
        stop_all([agent])
        server.stop()


def test_a_server_configuration_with_an_unusable_gateway_is_refused_at_start(base: Path) -> None:
    server = init_server(base / "server")
    for bad, why in (([], "non-empty"), (["https://127.0.0.1:1/agent/v1/ws"], "wss://"),
                     (["wss://u:p@127.0.0.1:1/x"], "no user or password"),
                     ([_gw(1), _gw(1)], "listed twice"),
                     ([_gw(p) for p in range(1, MAX_GATEWAYS + 2)], f"at most {MAX_GATEWAYS}")):
        _configure(server, bad)
        r = subprocess.run([sys.executable, "-m", "rampart.server", "run", "--data", str(server.data_dir),
                            "--listen", f"127.0.0.1:{free_port()}"], capture_output=True, text=True,
                           timeout=60, cwd=REPO)
        assert r.returncode != 0 and "agent_gateways" in r.stderr and why in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        if bad and "u:p@" in bad[0]:
            assert "u:p" not in r.stderr  # the credentials are not echoed


@pytest.mark.parametrize("named", [
    {"gateway_urls": ["wss://user:secret@127.0.0.1:9/agent/v1/ws"]},
    {"gateway_urls": [_gw(p) for p in range(1, MAX_GATEWAYS + 2)]},
    {"gateway_urls": ["ws://127.0.0.1:9/agent/v1/ws"]},
    {"gateway_urls": "wss://127.0.0.1:9/agent/v1/ws"},
    {"gateway_url": "wss://127.0.0.1:9/\x1b[2Jpwned"},
])
def test_T1_a_server_naming_unusable_gateways_enrols_nothing(base: Path, named: dict[str, object]) -> None:
    """A compromised server answers the enrolment with gateways the agent must not use: the
    enrolment is refused with a clear reason, and the device holds no enrolment afterwards."""
    tenant = Tenant()
    server = MiniServer(base / "server", tenant).start()
    server.enrol_extra = named
    agent = AgentProcess(base / "agent")
    try:
        r = agent.enroll(server.url, server.new_token(), tenant.root_sha256, server.cert_sha256)
        assert r.returncode != 0
        assert "unusable agent gateway" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert "secret" not in r.stderr and "\x1b" not in r.stderr
        status = subprocess.run([*agent.command, "status", "--state", str(agent.state)],
                                capture_output=True, text=True, timeout=60)
        assert status.returncode != 0  # not enrolled: nothing was stored
        assert _gateways(agent).returncode != 0
    finally:
        server.stop()


def test_the_device_replaces_its_gateways_and_a_bad_list_changes_nothing(base: Path) -> None:
    """`rampart-agent gateways URL…` is the device owner's choice (as `enroll --gateway`); a list
    that is not usable is refused whole, and the stored one stays."""
    tenant = Tenant()
    server = MiniServer(base / "server", tenant).start()
    agent = AgentProcess(base / "agent")
    try:
        mine = [_gw(server.port), _gw(free_port())]
        r = agent.enroll(server.url, server.new_token(), tenant.root_sha256, server.cert_sha256,
                         *[x for url in mine for x in ("--gateway", url)])
        assert r.returncode == 0, r.stderr
        assert _gateways(agent).stdout.split() == mine
        r = _gateways(agent, _gw(1), "http://127.0.0.1:2/")
        assert r.returncode != 0 and "nothing changed" in r.stderr
        assert _gateways(agent).stdout.split() == mine
        r = _gateways(agent, _gw(3))
        assert r.returncode == 0
        assert _gateways(agent).stdout.split() == [_gw(3)]
        bad = AgentProcess(base / "agent-bad")
        r = bad.enroll(server.url, server.new_token(), tenant.root_sha256, server.cert_sha256,
                       "--gateway", "wss://127.0.0.1:1/x", "--gateway", "wss://127.0.0.1:1/x")
        assert r.returncode != 0 and "--gateway" in r.stderr and "listed twice" in r.stderr
    finally:
        server.stop()


def test_gateway_lists_keep_their_rule() -> None:
    ok_list = [_gw(1), "wss://[::1]:8444/agent/v1/ws", "wss://node-2.example:443/agent/v1/ws"]
    assert check_gateway_urls(ok_list) == ok_list
    for bad in (None, "wss://x/", [""], ["wss://"], ["wss://h:99999/x"], ["wss://h/ x"],
                ["wss://h/" + "a" * 600], [1]):
        with pytest.raises(ValueError):
            check_gateway_urls(bad)
