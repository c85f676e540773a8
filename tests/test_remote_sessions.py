"""Remote support sessions end to end: a real server, a real agent, the technician's real CLI in a pty.

`rampart shell` through the relay (commands, resize, Ctrl-C, exit status, several sessions at once),
`rampart cp` both ways, the device's recording checked by `rampart sessions play`, a watcher,
revocation and consent. The attacks on the relay are in tests/test_T1_session_relay.py.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest
from harness.sessions import SessionWorld, session_world

from rampart import trust

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="sessions run as a dynamic uid: the agent must be root")

PROMPT = "RP-READY> "
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def world(pg_cluster: Any) -> Iterator[SessionWorld]:
    with session_world(pg_cluster) as w:
        w.enrol("main")
        yield w


def spawn(w: SessionWorld, *args: str, rows: int = 24, cols: int = 80, config: str = "cli-tech") -> pexpect.spawn:
    argv = w.cli_argv(*args)
    return pexpect.spawn(argv[0], argv[1:], env=w.cli_env(config), dimensions=(rows, cols), timeout=60,
                         cwd=str(Path(__file__).resolve().parent.parent))


def open_shell(w: SessionWorld, grant: str, *extra: str, config: str = "cli-tech") -> tuple[pexpect.spawn, str]:
    child = spawn(w, "shell", "acme", w.main.device_id, "--grant", grant, *extra, config=config)
    child.expect(r"session (job-[0-9a-z]+) open")
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


def test_interactive_shell_runs_commands_resizes_interrupts_and_returns_the_exit_status(world: SessionWorld) -> None:
    grant = world.grant(["shell"])
    child, job_id = open_shell(world, grant)
    # A real shell on the device, as the session's own unprivileged uid, in its scratch directory.
    uid = int(run(child, "id -u").strip().splitlines()[-1])
    assert 61184 <= uid <= 65519
    assert run(child, "echo $((6*7))-$RAMPART_SESSION").strip().endswith(f"42-{job_id}")
    assert run(child, "tty").strip().startswith("/dev/pts/")
    # Window resize reaches the device's pty.
    child.setwinsize(40, 132)
    time.sleep(0.5)
    assert run(child, "stty size").strip().splitlines()[-1] == "40 132"
    # Ctrl-C interrupts the running program, not the session.
    child.sendline("sleep 30 && echo NOT-''INTERRUPTED")
    time.sleep(1.0)
    began = time.monotonic()
    child.sendcontrol("c")
    child.expect_exact(PROMPT, timeout=10)
    assert time.monotonic() - began < 10
    assert b"NOT-INTERRUPTED" not in child.before and b"^C" in child.before
    # The exit status of the shell is the CLI's.
    child.sendline("exit 7")
    child.expect(pexpect.EOF, timeout=30)
    child.close()
    assert child.exitstatus == 7
    r = world.receipt_envelope(job_id)
    assert r.outcome == "ran" and r.exit_code == 7
    assert isinstance(r.session, trust.SessionSummary) and r.session.end == "exit"
    assert r.containment is not None and r.containment.uid == uid
    assert r.session.bytes_in > 0 and r.session.bytes_out > 0
    # The local session log tells the device's people who came and went.
    events = [e for e in world.session_log() if e["session"] == job_id]
    assert [e["event"] for e in events] == ["start", "end"]
    assert events[0]["technician_key"] == world.tech_key.key_id and events[1]["end"] == "exit"
