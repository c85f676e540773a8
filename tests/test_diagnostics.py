"""Thread stacks on request (rampart.diagnostics) and the harness reports built on them.

A CI failure that says only "timed out" cannot be mended; these tests keep the means of seeing
where a real process waits from breaking silently.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from harness import logs
from harness import server as harness_server
from harness.server import REPO, init_server

from rampart.diagnostics import ENV

_SLEEPER = ("from rampart.diagnostics import stacks_on_request; stacks_on_request(); "
            "import sys, time; print('ready', flush=True); time.sleep(60)")


def _sleeper(tmp_path: Path, env_value: str | None) -> tuple[subprocess.Popen[bytes], Path]:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if env_value is not None:
        env[ENV] = env_value
    log = tmp_path / "sleeper.log"
    with log.open("wb") as f:
        proc = subprocess.Popen([sys.executable, "-c", _SLEEPER], stdout=subprocess.PIPE,
                                stderr=f, env=env, cwd=REPO)
    assert proc.stdout is not None
    with proc.stdout:
        assert proc.stdout.readline() == b"ready\n"
    return proc, log


def test_a_process_asked_for_its_stacks_writes_them_and_goes_on(tmp_path: Path) -> None:
    proc, log = _sleeper(tmp_path, "1")
    try:
        where = logs.stack_of(proc, log)
        assert "<string>" in where and "Current thread" in where  # the sleeping main thread
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_without_the_variable_sigusr1_keeps_its_default(tmp_path: Path) -> None:
    proc, log = _sleeper(tmp_path, None)
    os.kill(proc.pid, signal.SIGUSR1)
    assert proc.wait(timeout=10) == -signal.SIGUSR1  # the default action: terminated
    assert "Current thread" not in log.read_text()


def test_a_server_that_does_not_start_in_time_is_reported_with_where_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stack request is registered before the server's imports: a start that stalls there
    (as one did on a loaded CI machine) says so instead of an empty log."""
    monkeypatch.setattr(harness_server, "START_TIMEOUT_S", 0.3)
    srv = init_server(tmp_path / "srv")
    with pytest.raises(RuntimeError, match="did not start") as err:
        srv.start()
    text = str(err.value)
    # A stack, not an empty log: the process was alive and answered (SIGUSR1 would have killed it
    # before the handler was registered).
    assert "where it was:\nCurrent thread" in text
    assert "load average" in text
    assert srv.proc is not None and srv.proc.poll() is not None  # not left running


def test_a_running_server_dumps_its_stacks_and_keeps_serving(tmp_path: Path) -> None:
    srv = init_server(tmp_path / "srv")
    srv.start()
    try:
        assert srv.proc is not None
        where = logs.stack_of(srv.proc, srv.log_path)
        assert "Thread 0x" in where or "Current thread" in where
        assert srv.proc.poll() is None
        with httpx.Client(verify=srv.ssl_context(), timeout=10) as c:
            assert c.get(srv.url + "/api/v1/health").status_code == 200
    finally:
        srv.stop()
