"""`rampart up`, the quickstart: one command to a working server, tenant and agent.

Run twice it reuses what it made; SIGINT and SIGTERM stop its children cleanly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from harness.ports import free_ports

from rampart import tlspin

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A free port whose next one is free too (the server's agent listener takes port + 1)."""
    return free_ports(2)


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")}
    e["PYTHONPATH"] = str(REPO)
    e["COLUMNS"] = "200"
    return e


def cli(*args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rampart.cli.main", *args],
                          env={**env(), **(extra or {})}, capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def start_up(data: Path, port: int, log: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rampart.cli.main", "up", "--data", str(data), "--listen",
             f"127.0.0.1:{port}", *extra], stdout=fh, stderr=subprocess.STDOUT, env=env(), cwd=REPO)
    deadline = time.monotonic() + 180
    while "Press Ctrl-C to stop." not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.3)
    return proc, log.read_text()


def stop(proc: subprocess.Popen[bytes], sig: int) -> int:
    proc.send_signal(sig)
    return proc.wait(timeout=60)


def shell_env(data: Path, name: str) -> dict[str, str]:
    """Apply the `export` lines of `rampart up --env NAME`."""
    r = cli("up", "--data", str(data), "--env", name)
    assert r.returncode == 0, r.stderr
    out: dict[str, str] = {}
    for line in r.stdout.splitlines():
        m = re.match(r"export (RAMPART_[A-Z_]+)=(.*)$", line)
        if m:
            import shlex

            out[m.group(1)] = shlex.split(m.group(2))[0]
    assert set(out) == {"RAMPART_CONFIG_DIR", "RAMPART_KEY_PASSPHRASE"}
    return out


@pytest.mark.slow
def test_up_twice_reuses_everything_and_stops_cleanly(tmp_path: Path) -> None:
    data = tmp_path / "up"
    port = free_port()
    proc, out = start_up(data, port, tmp_path / "up1.log")
    try:
        assert "created tenant demo" in out
        assert f"Console (status page): https://127.0.0.1:{port}/" in out
        m = re.search(r"admin login: user admin, password (\S+)", out)
        assert m
        creds = data / "quickstart" / "credentials.json"
        assert stat.S_IMODE(creds.stat().st_mode) == 0o600
        doc = json.loads(creds.read_text())
        assert doc["admin"]["password"] == m.group(1) and doc["admin"]["totp_secret"]
        device = re.search(r"enrolled a local agent as (dev-[0-9a-f]{24})", out)
        assert device
        tech = shell_env(data, "tech")
        listed = cli("devices", "list", "demo", "--json", extra=tech)
        assert listed.returncode == 0, listed.stderr
        assert [d for d in json.loads(listed.stdout)
                if d["id"] == device.group(1) and d["status"] == "approved"]
    finally:
        rc = stop(proc, signal.SIGINT)
    assert rc == 0
    assert (tmp_path / "up1.log").read_text().rstrip().endswith("stopped")
    # The server child is gone: nothing listens on the port any more. (Binding it again may still
    # fail for a minute: connections the server closed first linger in TIME_WAIT on that port.)
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))

    proc, out = start_up(data, port, tmp_path / "up2.log")
    try:
        assert "created" not in out and "enrolled" not in out
        assert device.group(1) in out
        admin = shell_env(data, "admin")
        tenants = json.loads(cli("tenant", "list", "--json", extra=admin).stdout)
        assert [t["name"] for t in tenants] == ["demo"]
        devices = json.loads(cli("devices", "list", "demo", "--json", extra=admin).stdout)
        assert [d["id"] for d in devices] == [device.group(1)]
    finally:
        rc = stop(proc, signal.SIGTERM)
    assert rc == 0


@pytest.mark.slow
def test_up_after_a_refused_totp_code_retries_with_the_same_bootstrap_token(tmp_path: Path) -> None:
    """Issue 11, finding 6: a failed first TOTP confirmation (here the server's clock is an hour behind, so
    the authenticator's code is refused) leaves the quickstart resumable: run again, it enrols the same
    owner with the same one-time bootstrap token, which is spent only then."""
    data = tmp_path / "up"
    port = free_port()
    r = subprocess.run([sys.executable, "-m", "rampart.cli.main", "up", "--data", str(data), "--listen",
                        f"127.0.0.1:{port}", "--no-agent"], env={**env(), "RAMPART_CLOCK_OFFSET_S": "-3600"},
                       capture_output=True, text=True, timeout=180, cwd=REPO)
    assert r.returncode != 0, r.stdout + r.stderr
    creds_path = data / "quickstart" / "credentials.json"
    creds = json.loads(creds_path.read_text())
    assert "admin" in creds, r.stdout + r.stderr
    assert creds["admin"]["totp_confirmed"] is False and creds["bootstrap_token"]
    token = creds["bootstrap_token"]
    proc, out = start_up(data, port, tmp_path / "up2.log", "--no-agent")
    try:
        assert "created the owner account admin" in out and "created tenant demo" in out
        creds = json.loads(creds_path.read_text())
        assert creds["admin"]["totp_confirmed"] is True and "bootstrap_token" not in creds
        assert token not in creds_path.read_text()
        admin = shell_env(data, "admin")
        listed = cli("tenant", "list", "--json", extra=admin)
        assert listed.returncode == 0 and [t["name"] for t in json.loads(listed.stdout)] == ["demo"]
    finally:
        assert stop(proc, signal.SIGINT) == 0


@pytest.mark.slow
def test_up_with_three_nodes_starts_postgresql_nats_and_nodes_that_share_them(tmp_path: Path) -> None:
    """Issue 18: `rampart up --nodes 3` runs the deployment of docs/scale-out.md on loopback: a real
    PostgreSQL and nats-server, three nodes that share them, one of which runs the chores; the NATS
    password is in no command line; Ctrl-C (twice) stops every child."""
    data = tmp_path / "up"
    port = free_ports(6)
    proc, out = start_up(data, port, tmp_path / "up.log", "--nodes", "3")
    state = json.loads((data / "quickstart" / "state.json").read_text())
    try:
        assert "3 server nodes share PostgreSQL" in out
        urls = [f"https://127.0.0.1:{port + 2 * i}/" for i in range(3)]
        assert "nodes (any of them serves the console, the API and agents): " + ", ".join(urls) in out
        fingerprint = re.search(r"certificate SHA-256: ([0-9a-f]{64})", out)
        assert fingerprint
        for i in range(3):
            der = tlspin.fetch_pinned_certificate("127.0.0.1", port + 2 * i, fingerprint.group(1), timeout=5)
            with httpx.Client(verify=tlspin.pinned_context(der), timeout=10) as c:
                assert c.get(f"{urls[i]}api/v1/health").json()["status"] == "ok"
        # Enrolling agents are given every node's gateway, to try in turn (no balancer needed).
        config = json.loads((data / "server" / "config.json").read_text())
        assert config["agent_gateways"] == [f"wss://127.0.0.1:{port + 2 * i + 1}/agent/v1/ws"
                                            for i in range(3)]
        logs = [(data / "quickstart" / f"{name}.log").read_text() for name in ("server", "node-2", "node-3")]
        assert all("joined the deployment through NATS" in text for text in logs)
        assert sum("runs the deployment's periodic chores" in text for text in logs) == 1
        # The agent enrolled through the first node is approved in the one shared database.
        device = re.search(r"enrolled a local agent as (dev-[0-9a-f]{24})", out)
        assert device
        listed = cli("devices", "list", "demo", "--json", extra=shell_env(data, "tech"))
        assert [d["status"] for d in json.loads(listed.stdout) if d["id"] == device.group(1)] == ["approved"]
        password = json.loads((data / "quickstart" / "credentials.json").read_text())["nats_password"]
        cmdlines = [p.read_bytes() for p in Path("/proc").glob("[0-9]*/cmdline") if p.exists()]
        assert password.encode() not in b"\n".join(cmdlines)
        assert "nats://" in out and password not in out
    finally:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)  # impatient: the second one must not strand a child
        rc = proc.wait(timeout=60)
        if "pg_dir" in state:
            shutil.rmtree(state["pg_dir"], ignore_errors=True)
    assert rc == 0 and (tmp_path / "up.log").read_text().rstrip().endswith("stopped")
    for p in (state["pg_port"], state["nats_port"], *[port + 2 * i for i in range(3)]):
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", p))


def test_up_refuses_to_switch_a_data_directory_between_one_node_and_several(tmp_path: Path) -> None:
    """Nothing is started, and nothing in the directory changes, when the layout does not match."""
    from rampart.server.setup import init_data_dir

    one, many = tmp_path / "one", tmp_path / "many"
    init_data_dir(one)
    init_data_dir(many / "server")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    r = cli("up", "--data", str(one), "--listen", "127.0.0.1:9", "--nodes", "2")
    assert r.returncode == 1 and "holds a one-node quickstart on SQLite" in r.stderr, r.stderr
    r = cli("up", "--data", str(many), "--listen", "127.0.0.1:9")
    assert r.returncode == 1 and "holds a multi-node quickstart: run it with --nodes" in r.stderr, r.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
