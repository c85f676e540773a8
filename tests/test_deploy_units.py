"""The systemd unit for server nodes (deploy/systemd/, docs/scale-out.md "systemd").

Checked by systemd's own parser (`systemd-analyze verify`, installed by ./run-tests), and for
what the deployment guide promises: the NATS password comes from a root-only environment
file, never the command line; the node runs unprivileged and confined.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from harness.server import REPO

UNIT = REPO / "deploy" / "systemd" / "rampart-server@.service"
ENV_EXAMPLE = REPO / "deploy" / "systemd" / "rampart-node.env.example"


def _directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


def test_the_node_unit_passes_systemds_own_check(tmp_path: Path) -> None:
    rampart = Path(sys.executable).parent / "rampart"
    assert rampart.exists() and shutil.which("systemd-analyze")
    probe = tmp_path / "rampart-server@node1.service"
    probe.write_text(UNIT.read_text().replace("ExecStart=/usr/bin/rampart ", f"ExecStart={rampart} "))
    r = subprocess.run(["systemd-analyze", "verify", str(probe)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    # A broken directive is reported (the check is not a formality).
    probe.write_text(probe.read_text().replace("ProtectSystem=strict", "ProtectSystem=bogus"))
    r = subprocess.run(["systemd-analyze", "verify", str(probe)], capture_output=True, text=True, timeout=60)
    assert "ProtectSystem" in r.stderr or "protect system" in r.stderr


def test_the_node_unit_keeps_the_nats_password_off_the_command_line_and_runs_confined() -> None:
    d = _directives(UNIT.read_text())
    [exec_start] = d["ExecStart"]
    assert exec_start.startswith("/usr/bin/rampart server run --data /var/lib/rampart ")
    assert "--nats ${RAMPART_NATS_URL}" in exec_start and "PASSWORD" not in exec_start
    assert d["EnvironmentFile"] == ["/etc/rampart/node-%i.env"]
    assert d["User"] == ["rampart"] and d["NoNewPrivileges"] == ["yes"] and d["CapabilityBoundingSet"] == [""]
    assert d["ProtectSystem"] == ["strict"] and d["UMask"] == ["0077"]
    # Every variable the unit uses is in the example environment file, and nothing else is.
    used = set(re.findall(r"\$\{?([A-Z_]+)\}?", exec_start)) | {"RAMPART_NATS_USER", "RAMPART_NATS_PASSWORD"}
    example = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines()
               if line and not line.startswith("#")}
    assert used == example
    # The names the node reads its NATS login from (rampart.server.commands) are the file's.
    commands = (REPO / "rampart" / "server" / "commands.py").read_text()
    assert "RAMPART_NATS_USER" in commands and "RAMPART_NATS_PASSWORD" in commands
