"""The agent exits promptly on SIGTERM whatever its connection is doing.

A CI teardown once waited 20 s for an agent that was still inside ``connect()`` to a server that
had just been killed and restarted: the stop event was only looked at between connection attempts,
so a connect or handshake that hangs (up to its 15 s open timeout) held the exit. Here the server
process is frozen (SIGSTOP): the kernel still accepts the TCP connection, the TLS handshake never
completes, and the agent must still stop at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.agent import AgentProcess, traversable_dir
from harness.operators import bootstrap_owner, ok, setup_tenant
from harness.server import REPO, RunningServer, _env, start_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    srv = start_server(tmp_path / "srv")
    try:
        yield srv
    finally:
        srv.stop(kill=True)


def test_an_agent_stuck_connecting_to_a_frozen_server_stops_at_once_on_sigterm(
        server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    t = setup_tenant(owner, "acme")
    tok = ok(owner.http.post(f"/tenants/{t.id}/enrollment-tokens", json={"ttl_s": 600}))
    agent = AgentProcess(traversable_dir("rampart-agent-stop-") / "agent")
    r = agent.enroll(server.url, tok["token"], tok["root_sha256"], server.cert_sha256)
    assert r.returncode == 0, r.stderr
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        agent.start()
        time.sleep(3)  # it is inside connect() by now: TCP accepted, the TLS handshake unanswered
        assert agent.proc is not None and agent.proc.poll() is None  # still trying to connect
        started = time.monotonic()
        assert agent.stop() == 0
        took = time.monotonic() - started
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    # The connect's own timeout is 15 s: an agent that waited for it would take at least 10 s more.
    assert took < 5, f"the agent took {took:.1f} s to stop"
    assert "agent stopped" in agent.log_text()


_COMMAND_STOP = """
import threading, time
from rampart.agent.inventory import _util
errors = []
def collect():
    try:
        _util.run(["sleep", "30"], timeout=60, max_output=100)
    except _util.CommandError as exc:
        errors.append(str(exc))
worker = threading.Thread(target=collect)
worker.start()
time.sleep(0.5)
started = time.monotonic()
_util.stop_commands()
worker.join(10)
print(f"{time.monotonic() - started:.2f}", worker.is_alive(), errors)
try:
    _util.run(["true"], timeout=5, max_output=10)
except _util.CommandError as exc:
    print("after:", exc)
"""


def test_a_stopping_agent_ends_its_running_inventory_command_at_once() -> None:
    """A CI teardown waited 30 s for an agent whose worker thread was inside an inventory command
    (apt, slow with 20 agents on two cores): the loop's shutdown waits for its worker threads. On
    SIGTERM the agent now ends such a command at once and starts no other."""
    r = subprocess.run([sys.executable, "-c", _COMMAND_STOP], capture_output=True, text=True,
                       env=_env(), cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    took, alive, errors = r.stdout.splitlines()[0].split(" ", 2)
    assert float(took) < 2 and alive == "False", r.stdout
    assert "sleep was ended: the agent is stopping" in errors
    assert "after: the agent is stopping" in r.stdout
