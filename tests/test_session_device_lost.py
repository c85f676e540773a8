"""A technician is never left waiting on a session whose device is gone.

A CI run hung for 120 s in `rampart cp`: the device's side of the session was gone, and nothing told
the technician's CLI. The relay now ends a session's channel when the device connection that carried
it closes (``device-lost``), and when the device's receipt for it is stored (``device-ended``).
Here the agent is killed outright in the middle of a real shell session and of a real download.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest
from harness.server import REPO
from harness.sessions import SessionWorld, open_shell, run, session_world

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="sessions run as a dynamic uid: the agent must be root")


@pytest.fixture(scope="module")
def world(pg_cluster: Any) -> Iterator[SessionWorld]:
    with session_world(pg_cluster, prefix="rampart-device-lost-") as w:
        w.enrol("main")
        yield w


@pytest.fixture
def alive(world: SessionWorld) -> Iterator[SessionWorld]:
    """The world with its agent running, and running again after the test (which kills it)."""
    yield world
    if world.main.proc is None or world.main.proc.poll() is not None:
        _restart_agent(world)


def _kill_agent(world: SessionWorld) -> None:
    """SIGKILL: the agent says nothing more; its connection closes under the server."""
    agent = world.main
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait(timeout=30)


def _restart_agent(world: SessionWorld) -> None:
    world.main.start()
    world.wait_connected(world.main.device_id)


def test_a_shell_whose_device_dies_ends_at_once_with_device_lost(alive: SessionWorld) -> None:
    world = alive
    grant = world.grant(["shell"])
    child, job_id = open_shell(world, grant)
    assert run(child, "echo $((40+2))").strip().endswith("42")
    _kill_agent(world)
    began = time.monotonic()
    child.expect(pexpect.EOF, timeout=60)
    waited = time.monotonic() - began
    child.close()
    out = child.before.decode(errors="replace")
    assert waited < 20, f"the CLI waited {waited:.1f} s"
    assert "device-lost" in out, out[-2000:]
    assert child.exitstatus == 255  # the session did not end with the shell's own exit
    log = (world.base / "cli-tech" / "sessions.log").read_text().splitlines()
    ends = [e for e in map(json.loads, log) if e["session"] == job_id and e["event"] == "end"]
    assert [e["end"] for e in ends] == ["device-lost"]
    # The restarted agent answers for the session it lost (it never ran to its end).
    _restart_agent(world)
    r = world.receipt(job_id)
    assert r["outcome"] == "failed", r


def test_a_download_whose_device_dies_fails_at_once_and_writes_nothing(alive: SessionWorld,
                                                                        tmp_path: Path) -> None:
    world = alive
    grant = world.grant(["shell"])
    # A FIFO nobody writes: the device's reader blocks in it after telling the CLI it is sending.
    fifo = world.scratch / "never-ending"
    os.mkfifo(fifo, 0o666)
    fifo.chmod(0o666)
    dest = tmp_path / "got.bin"
    cli = subprocess.Popen(world.cli_argv("cp", "acme", f"{world.main.device_id}:{fifo}", str(dest),
                                          "--grant", grant),
                           env=world.cli_env(), cwd=str(REPO), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    writer = -1
    try:
        writer = _hold_writer(fifo)
        _kill_agent(world)
        began = time.monotonic()
        _, err = cli.communicate(timeout=60)
        waited = time.monotonic() - began
    finally:
        if cli.poll() is None:
            cli.kill()
        if writer >= 0:
            os.close(writer)  # the device's orphaned reader sees the end and exits
    assert waited < 20, f"the CLI waited {waited:.1f} s"
    assert cli.returncode != 0 and b"device-lost" in err, err
    assert not dest.exists() and list(tmp_path.iterdir()) == []  # not even a partial file


def _hold_writer(fifo: Path, timeout: float = 60) -> int:
    """Once a process opens ``fifo`` to read (the device's contained ``cat``), open it to write and
    hold it: the reader then waits for data that never comes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO while no reader has it open
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing opened {fifo} for reading")
