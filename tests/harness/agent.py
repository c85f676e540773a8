"""Real ``rampart-agent`` processes for tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness import logs


def agent_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "rampart.agent", *args]


class AgentProcess:
    """One enrolled agent: its state dir, and its ``run`` process when started. ``command`` runs
    another installation of the agent (a package's ``rampart-agent``) instead of this checkout's."""

    def __init__(self, state: Path, command: list[str] | None = None) -> None:
        self.state = state
        self.command = command or agent_cmd()
        self.proc: subprocess.Popen[bytes] | None = None
        self.device_id = ""
        self.log = state.parent / f"{state.name}.log"
        logs.register(self.log)

    def enroll(self, server: str, token: str, root_sha256: str, cert_sha256: str,
               *extra: str) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [*self.command, "enroll", "--server", server, "--token", token, "--root-sha256",
             root_sha256, "--cert-sha256", cert_sha256, "--state", str(self.state), *extra],
            capture_output=True, text=True, timeout=60,
        )
        if r.returncode == 0:
            self.device_id = r.stdout.strip().splitlines()[-1].split(": ", 1)[1]
        return r

    def start(self) -> AgentProcess:
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen([*self.command, "run", "--state", str(self.state)],
                                         stdout=subprocess.DEVNULL, stderr=logf)
        logs.watch(self.proc, self.log)
        return self

    def stop(self, timeout: float = 30, *, signalled: bool = False) -> int:
        """SIGTERM (unless ``signalled`` already: a second one could land after the agent's own
        handler is gone) and wait for the exit status; killed and raised after ``timeout``."""
        if self.proc is None:
            return 0
        if not signalled and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            where = logs.stack_of(self.proc, self.log)  # where it hangs, before it is killed
            self.proc.kill()  # still a failure (raised below), but no agent outlives its test
            self.proc.wait(timeout=10)
            raise AssertionError(f"agent {self.state} did not stop {timeout:.0f} s after SIGTERM; "
                                 f"its threads:\n{where}") from None
        finally:
            self.proc = None

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def status(self) -> dict[str, Any]:
        r = subprocess.run([*self.command, "status", "--state", str(self.state), "--json"],
                           capture_output=True, text=True, timeout=60, check=True)
        doc: dict[str, Any] = json.loads(r.stdout)
        return doc

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, needle: str, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if needle in self.log_text():
                return
            time.sleep(0.05)
        raise TimeoutError(f"{needle!r} not in agent log:\n{self.log_text()[-2000:]}")


def stop_all(agents: Iterable[AgentProcess], timeout: float = 30) -> None:
    """Stop every agent, even when one of them fails to stop (the first failure is raised after).

    All are told at once (SIGTERM), then each has until one shared deadline to exit."""
    agents = list(agents)
    for a in agents:
        if a.proc is not None and a.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                a.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    failure: BaseException | None = None
    for a in agents:
        try:
            a.stop(timeout=max(1.0, deadline - time.monotonic()), signalled=True)
        except Exception as exc:  # noqa: BLE001 - re-raised once all are stopped
            failure = failure or exc
    if failure is not None:
        raise failure


def traversable_dir(prefix: str) -> Path:
    """A temp dir the job user can traverse (pytest's tmp_path is 0700 root-only)."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)
    return base


def enroll_fleet(base: Path, server_url: str, cert_sha256: str, root_sha256: str,
                 tokens: list[str], scratch: Path, *extra: str) -> list[AgentProcess]:
    """Enrol one real agent per token (in parallel) and start them all."""
    from concurrent.futures import ThreadPoolExecutor

    agents = [AgentProcess(base / f"agent-{i:03d}") for i in range(len(tokens))]

    def one(pair: tuple[AgentProcess, str]) -> None:
        agent, token = pair
        r = agent.enroll(server_url, token, root_sha256, cert_sha256,
                         "--write-root", str(scratch), *extra)
        assert r.returncode == 0, r.stderr

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(one, zip(agents, tokens, strict=True)))
    for a in agents:
        a.start()
    return agents
