"""Telemetry end to end (issue 5): real server processes, real agent processes, real programs.

What an attacker does on an endpoint is played for real on this machine: a
copy of ``sleep`` named after a catalogued remote access tool started from a
download folder (T14, H1, H3), a program executed from a memfd (H2), a
listener on TeamViewer's port (N2). The real ``rampart-agent`` collects,
evaluates and reports; the real server stores findings and raises alerts; the
API and the real ``rampart`` CLI show them. The wire protocol is also played
by hand (:class:`harness.wsagent.WireAgent`) to send what no honest agent
sends (T13) and to lose reports on purpose (T15). Only loopback addresses.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
from harness.agent import AgentProcess, agent_cmd, traversable_dir
from harness.operators import PASSWORD, Operator, TenantSetup, audit_events, bootstrap_owner, ok, setup_tenant
from harness.server import PostgresCluster, RunningServer, init_server
from harness.wsagent import WireAgent

from rampart.agent.telemetry import DetectionConfig, parse_detection
from rampart.catalog import builtin_catalog, encode_catalog, make_tool
from rampart.catalog.model import Catalog
from rampart.server.config import load_config
from rampart.server.db import Store
from rampart.server.models import DeviceInventory, InventoryDelta
from rampart.wire import Finding, Inventory, Report, ReportError, decode_report, diff, digest, encode_report
from rampart.wire.inventory import AgentInfo, Process, encode
from rampart.wire.telemetry import inflate

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux agent")

REPO = Path(__file__).resolve().parent.parent
SLEEP = shutil.which("sleep") or "/bin/sleep"
INTERVAL = 2.0
LOLRMM_FEED = Path("/work/shared/data/lolrmm/rmm_tools.json")
T = TypeVar("T")


# --- helpers -------------------------------------------------------------------------------------


def wait_until(fn: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


def configured_server(base: Path, db_url: str | None, interval: float = INTERVAL) -> RunningServer:
    """A server whose expected agent interval is ``interval`` (config.json ``inventory_interval_s``)."""
    srv = init_server(base, db_url)
    cfg = srv.data_dir / "config.json"
    doc = json.loads(cfg.read_text())
    doc["inventory_interval_s"] = interval
    cfg.write_text(json.dumps(doc))
    srv.start()
    return srv


def start_agent(agent: AgentProcess, interval: float = INTERVAL) -> AgentProcess:
    with open(agent.log, "ab") as logf:
        agent.proc = subprocess.Popen(
            agent_cmd("run", "--state", str(agent.state), "--inventory-interval", str(interval)),
            stdout=subprocess.DEVNULL, stderr=logf)
    return agent


def enrol_agent(server: RunningServer, t: TenantSetup, state: Path) -> AgentProcess:
    tok = ok(t.owner.http.post(f"/tenants/{t.id}/enrollment-tokens", json={"ttl_s": 600}))
    agent = AgentProcess(state)
    r = agent.enroll(server.url, tok["token"], tok["root_sha256"], server.cert_sha256)
    assert r.returncode == 0, r.stderr
    ok(t.owner.http.post(f"/tenants/{t.id}/devices/{agent.device_id}/approve"))
    return agent


def findings(op: Operator, tenant: str, status: str = "all") -> list[dict[str, Any]]:
    return list(ok(op.http.get(f"/tenants/{tenant}/findings", params={"status": status})))


def find(op: Operator, tenant: str, device: str, kind: str, *, key: str | None = None,
         pid: int | None = None, status: str = "open") -> dict[str, Any] | None:
    for f in findings(op, tenant, status):
        if f["device"] != device or f["kind"] != kind or (key is not None and f["key"] != key):
            continue
        pids = {f["evidence"].get("pid"), *f["evidence"].get("pids", "").split(",")}
        if pid is None or str(pid) in pids:
            return f
    return None


def alert_for(op: Operator, tenant: str, finding_key: str, device: str) -> dict[str, Any] | None:
    for a in ok(op.http.get(f"/tenants/{tenant}/alerts", params={"status": "all"})):
        if f"device {device} " in a["detail"] and f"key {finding_key};" in a["detail"] + ";":
            return dict(a)
    return None


def store_of(server: RunningServer) -> Store:
    return Store(load_config(server.data_dir).db_url)


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def portable_copy(name: str) -> tuple[Path, subprocess.Popen[bytes]]:
    """A copy of sleep named ``name`` in a fresh download folder under /tmp, running."""
    folder = traversable_dir("rampart-t14-") / "Downloads"
    folder.mkdir()
    exe = folder / name
    shutil.copy2(SLEEP, exe)
    return exe, subprocess.Popen([str(exe), "600"])


def run_from_memfd(name: str) -> subprocess.Popen[bytes]:
    fd = os.memfd_create(name)
    try:
        os.write(fd, Path(SLEEP).read_bytes())
        os.fchmod(fd, 0o700)
        return subprocess.Popen([f"/proc/self/fd/{fd}", "600"], pass_fds=(fd,))
    finally:
        os.close(fd)


class Cli:
    """The real ``rampart`` command, logged in as an operator of the harness."""

    def __init__(self, server: RunningServer, op: Operator, config: Path) -> None:
        self.config = config
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")}
        self.env.update(PYTHONPATH=str(REPO), RAMPART_CONFIG_DIR=str(config), COLUMNS="250")
        self.ok("login", "--server", server.url, "--user", op.username, env={
            "RAMPART_PASSWORD": PASSWORD, "RAMPART_TOTP": op.totp.code(),
            "RAMPART_SERVER_FINGERPRINT": server.cert_sha256})

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "rampart.cli.main", *args], capture_output=True,
                              text=True, env={**self.env, **(env or {})}, timeout=120, cwd=REPO)

    def ok(self, *args: str, env: dict[str, str] | None = None) -> str:
        r = self.run(*args, env=env)
        assert r.returncode == 0, f"{args}: rc={r.returncode}\n{r.stdout}\n{r.stderr}"
        return r.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))


# --- a live world: a server, a tenant, a real agent reporting every 2 s ---------------------------


@dataclass
class Live:
    server: RunningServer
    t: TenantSetup
    agent: AgentProcess
    base: Path
    cli: Cli

    @property
    def owner(self) -> Operator:
        return self.t.owner

    @property
    def device(self) -> str:
        return self.agent.device_id


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, pg_cluster: PostgresCluster | None) -> Iterator[Live]:
    base = traversable_dir("rampart-telemetry-")
    db_url = pg_cluster.new_database() if pg_cluster is not None else None
    server = configured_server(tmp_path_factory.mktemp("live"), db_url)
    agent: AgentProcess | None = None
    try:
        owner = bootstrap_owner(server)
        t = setup_tenant(owner, "acme")
        agent = start_agent(enrol_agent(server, t, base / "agent"))
        cli = Cli(server, owner, base / "cli")
        wait_until(lambda: owner.http.get(f"/tenants/{t.id}/devices/{agent.device_id}/inventory")
                   .status_code == 200, "the first inventory")
        yield Live(server, t, agent, base, cli)
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_inventory_first_full_then_deltas_applied_on_read(live: Live) -> None:
    """Issue 5.1: after the first full report only changes are sent; the server rebuilds the snapshot."""
    marker = f"rampart-marker-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(["/bin/sh", "-c", f"exec -a {marker} {SLEEP} 600"])
    try:
        def shown() -> dict[str, Any] | None:
            doc = ok(live.owner.http.get(f"/tenants/{live.t.id}/devices/{live.device}/inventory",
                                         params={"section": ["processes", "os"]}))
            return doc if any(p["pid"] == proc.pid for p in doc["processes"]) else None

        doc = wait_until(shown, "the new process in the inventory")
    finally:
        stop(proc)
    assert doc["sections"] == ["processes", "os"] and "packages" not in doc
    assert doc["os"]["hostname"] == socket.gethostname()
    assert live.agent.proc is not None and any(p["pid"] == live.agent.proc.pid for p in doc["processes"])
    # The snapshot the server shows is exactly the one the agent described (digest over canonical bytes).
    whole = ok(live.owner.http.get(f"/tenants/{live.t.id}/devices/{live.device}/inventory"))
    inv = msgspec.convert({k: v for k, v in whole.items() if k in Inventory.__struct_fields__}, Inventory)
    assert digest(inv) == whole["digest"] and len(inv.packages) > 0
    # Reading folded the deltas into the snapshot; from now on only deltas arrive (a full report would
    # replace the snapshot and drop them).
    snapshot_at = _snapshot_at(live.server, live.device)
    wait_until(lambda: _deltas(live.server, live.device) >= 2 or None, "deltas stored", timeout=30)
    assert _snapshot_at(live.server, live.device) == snapshot_at
    # The CLI shows the same inventory: a summary table, a section table, and JSON.
    summary = live.cli.ok("inventory", "acme", live.device)
    assert doc["os"]["name"] in summary and live.device in summary
    table = live.cli.ok("inventory", "show", "acme", live.device, "--section", "users")
    assert "root" in table and "Users" in table
    as_json = live.cli.json("inventory", "acme", live.device, "--section", "os")
    assert as_json["os"]["hostname"] == socket.gethostname() and as_json["device"] == live.device


def test_t14_portable_unsanctioned_tool_on_a_real_agent_is_a_critical_alert(live: Live) -> None:
    """T14, H1, H3: a portable AnyDesk started from a download folder is detected and alerted."""
    op, tid, dev = live.owner, live.t.id, live.device
    exe, proc = portable_copy("anydesk")
    try:
        portable = wait_until(lambda: find(op, tid, dev, "rat-portable", pid=proc.pid), "rat-portable")
        unsanctioned = wait_until(lambda: find(op, tid, dev, "rat-unsanctioned",
                                               key="rat-unsanctioned:anydesk", pid=proc.pid),
                                  "rat-unsanctioned")
        assert portable["severity"] == "critical" and portable["key"] == f"rat-portable:anydesk:{exe}"
        assert portable["evidence"]["exe"] == str(exe) and portable["evidence"]["sanctioned"] == "no"
        assert unsanctioned["severity"] == "high" and unsanctioned["tool"] == "anydesk"
        for f in (portable, unsanctioned):
            a = wait_until(lambda f=f: alert_for(op, tid, f["key"], dev), f"alert for {f['key']}")
            assert a["kind"] == f["kind"] and a["severity"] == "critical" and a["status"] == "open"
            assert a["subject"].startswith(socket.gethostname() + ": ") and a["count"] == 1
        # The CLI lists the finding and the tool (not sanctioned, portable).
        keys = {f["key"] for f in live.cli.json("findings", "acme")}
        assert {portable["key"], unsanctioned["key"]} <= keys
        tools = [x for x in live.cli.json("tools", "list", "acme") if x["device"] == dev]
        [anydesk] = [x for x in tools if x["tool"] == "anydesk"]
        assert anydesk["sanctioned"] is False and anydesk["portable"] is True
        assert "process" in anydesk["found_by"] and anydesk["name"] == "AnyDesk"
        assert re.search(r"AnyDesk \(anydesk\)\s+NO\b", live.cli.ok("tools", "list", "acme"))
    finally:
        stop(proc)
    # The tool stopped: the agent's next report resolves the findings, and the server their alerts.
    wait_until(lambda: find(op, tid, dev, "rat-portable", key=portable["key"], status="resolved"),
               "portable finding resolved")
    a = alert_for(op, tid, portable["key"], dev)
    assert a is not None and a["status"] == "resolved" and a["resolved_by"] == f"device:{dev}"


def test_t14_sanctioned_tool_is_not_unsanctioned_but_portable_use_still_alerts(live: Live) -> None:
    """H1: sanctioning (pushed to the agent at once) silences rat-unsanctioned, never rat-portable."""
    op, tid, dev = live.owner, live.t.id, live.device
    assert "is sanctioned" in live.cli.ok("tools", "allow", "acme", "AnyDesk")
    live.agent.wait_log("detection configuration: 1 sanctioned tool(s)", timeout=30)
    assert [x["slug"] for x in live.cli.json("tools", "sanctioned", "acme")] == ["anydesk"]
    exe, proc = portable_copy("anydesk")
    try:
        portable = wait_until(lambda: find(op, tid, dev, "rat-portable", pid=proc.pid), "rat-portable")
        assert portable["evidence"]["sanctioned"] == "yes" and portable["severity"] == "critical"
        assert find(op, tid, dev, "rat-unsanctioned", key="rat-unsanctioned:anydesk") is None
        assert wait_until(lambda: alert_for(op, tid, portable["key"], dev), "alert")["status"] == "open"
        live_unsanctioned = [a for a in ok(op.http.get(f"/tenants/{tid}/alerts"))
                             if a["kind"] == "rat-unsanctioned" and "anydesk" in a["subject"].lower()]
        assert live_unsanctioned == []
        [tool] = [x for x in ok(op.http.get(f"/tenants/{tid}/tools"))
                  if x["device"] == dev and x["tool"] == "anydesk"]
        assert tool["sanctioned"] is True and tool["portable"] is True
        # Withdrawn: the agent is told at once and reports the running tool as unsanctioned again.
        assert "no longer sanctioned" in live.cli.ok("tools", "disallow", "acme", "anydesk")
        again = wait_until(lambda: find(op, tid, dev, "rat-unsanctioned", key="rat-unsanctioned:anydesk",
                                        pid=proc.pid), "rat-unsanctioned after disallow", timeout=30)
        assert wait_until(lambda: alert_for(op, tid, again["key"], dev), "alert")["status"] == "open"
    finally:
        stop(proc)
    events = [(e["kind"], e["details"].get("tool")) for e in audit_events(op, tid)]
    assert ("tool.sanctioned", "anydesk") in events and ("tool.unsanctioned", "anydesk") in events


def test_h2_program_run_from_a_memfd_is_a_memory_only_finding_and_alert(live: Live) -> None:
    op, tid, dev = live.owner, live.t.id, live.device
    name = f"payload-{uuid.uuid4().hex[:8]}"
    proc = run_from_memfd(name)
    try:
        f = wait_until(lambda: find(op, tid, dev, "memory-only", pid=proc.pid), "memory-only finding")
    finally:
        stop(proc)
    assert f["severity"] == "critical" and f["key"] == f"memory-only::/memfd:{name}"
    assert f["evidence"]["reason"] == "memfd" and f["evidence"]["exe"] == f"/memfd:{name}"
    a = wait_until(lambda: alert_for(op, tid, f["key"], dev), "memory-only alert")
    assert a["kind"] == "memory-only" and a["severity"] == "critical"
    shown = live.cli.ok("findings", "acme", "--status", "all", "--kind", "memory-only")
    assert f"/memfd:{name}" in shown


_LISTENER = """
import socket, sys, time
for port in [int(p) for p in sys.argv[1:]]:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        continue
    s.listen()
    print(port, flush=True)
    time.sleep(600)
"""


def test_n2_listener_on_a_catalogued_port_is_a_rat_port_finding(live: Live) -> None:
    op, tid, dev = live.owner, live.t.id, live.device
    ports = [5938, *sorted(p for p in builtin_catalog().by_port if p != 5938)]
    proc = subprocess.Popen([sys.executable, "-c", _LISTENER, *map(str, ports)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        f = wait_until(lambda: find(op, tid, dev, "rat-port", pid=proc.pid), "rat-port finding")
    finally:
        stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()
    assert f["severity"] == "warning" and f["evidence"]["port"] == str(port)
    assert f["evidence"]["direction"] == "listen" and f["evidence"]["local"] == "127.0.0.1"
    a = wait_until(lambda: alert_for(op, tid, f["key"], dev), "rat-port alert")
    assert a["severity"] == "warning" and a["kind"] == "rat-port"


def test_inventory_on_demand_for_an_agent_on_a_long_interval(live: Live) -> None:
    """An operator's request makes a 1-hour agent report now (paced to one collection per 30 s)."""
    op, tid = live.owner, live.t.id
    slow = start_agent(enrol_agent(live.server, live.t, live.base / "slow"), interval=3600)
    try:
        url = f"/tenants/{tid}/devices/{slow.device_id}/inventory"
        wait_until(lambda: op.http.get(url).status_code == 200, "the slow agent's first inventory")
        marker = subprocess.Popen([SLEEP, "600"])
        try:
            out = live.cli.ok("inventory", "refresh", "acme", slow.device_id)
            assert "asked" in out
            slow.wait_log("the server asked for an inventory")

            def has_marker() -> bool:
                doc = ok(op.http.get(f"/tenants/{tid}/devices/{slow.device_id}/inventory",
                                     params={"section": "processes"}))
                return any(p["pid"] == marker.pid for p in doc["processes"])

            wait_until(has_marker, "the marker in the requested inventory", timeout=75)
        finally:
            stop(marker)
        events = audit_events(op, tid)
        assert any(e["kind"] == "inventory.requested" and e["details"]["device"] == slow.device_id
                   for e in events)
    finally:
        slow.stop()


# --- the wire protocol played by hand ---------------------------------------------------------------


def _inventory(n: int, at: int = 1_800_000_000) -> Inventory:
    procs = [Process(pid=100 + i, ppid=1, start_ticks=i, start_time=at, name=f"p{i}", uid=0, euid=0)
             for i in range(n)]
    return Inventory(collected_at=at, agent=AgentInfo(version="wire", containment="none"), processes=procs)


def _finding(key: str = "eol-os::debian:9") -> Finding:
    return Finding(kind="eol-os", severity="warning", key=key, subject="Debian 9 reached end of life")


def _full(inv: Inventory, findings_: list[Finding] | None = None) -> dict[str, Any]:
    return {"type": "inventory", "report": encode_report(Report(full=inv, findings=findings_ or [])),
            "result": digest(inv), "base": None}


def _delta(a: Inventory, b: Inventory, findings_: list[Finding] | None = None) -> dict[str, Any]:
    return {"type": "inventory", "report": encode_report(Report(delta=diff(a, b), findings=findings_ or [])),
            "result": digest(b), "base": digest(a)}


def _b64z(raw: bytes) -> str:
    return base64.b64encode(zlib.compress(raw)).decode()


@pytest.fixture
def wire(tmp_path: Path, db_url: str | None) -> Iterator[tuple[RunningServer, TenantSetup, WireAgent]]:
    server = configured_server(tmp_path, db_url, interval=300)
    try:
        owner = bootstrap_owner(server)
        t = setup_tenant(owner, "wire")
        tok = ok(owner.http.post(f"/tenants/{t.id}/enrollment-tokens", json={"ttl_s": 600}))
        agent = WireAgent.enrol(server, tok["token"], tok["root_sha256"])
        ok(owner.http.post(f"/tenants/{t.id}/devices/{agent.device_id}/approve"))
        assert agent.connect()["type"] == "welcome"
        detection = agent.wait_for("detection")
        assert detection["sanctioned"] == [] and detection["catalog_sha256"] == ""
        yield server, t, agent
        agent.close()
    finally:
        server.stop()


def test_a_detection_change_reaches_connected_agents_and_the_next_connection_at_once(
        wire: tuple[RunningServer, TenantSetup, WireAgent]) -> None:
    """Detection settings are shared by a tenant's new connections for 2 s (tenant_cache.py); a
    change made through the server pushes to connected agents and is what the next one is sent."""
    server, t, agent = wire
    ok(t.owner.http.put(f"/tenants/{t.id}/settings", json={"dormant_days": 7}))
    assert agent.wait_for("detection")["dormant_days"] == 7
    ok(t.owner.http.put(f"/tenants/{t.id}/sanctioned-tools/anydesk"))
    assert agent.wait_for("detection")["sanctioned"] == ["anydesk"]
    agent.close()
    assert agent.connect()["type"] == "welcome"  # within the cache's 2 s of the last change
    detection = agent.wait_for("detection")
    assert (detection["dormant_days"], detection["sanctioned"]) == (7, ["anydesk"])


def test_t15_a_delta_on_a_base_the_server_does_not_hold_gets_inventory_full(
        wire: tuple[RunningServer, TenantSetup, WireAgent]) -> None:
    server, t, agent = wire
    a, b, c = _inventory(3), _inventory(4), _inventory(5)
    agent.send(_full(a))
    assert agent.wait_for("inventory-ack")["result"] == digest(a)
    # A delta from a snapshot the server never acknowledged (a report lost on the way).
    agent.send(_delta(b, c))
    assert agent.wait_for("inventory-full") == {"type": "inventory-full"}
    agent.send(_delta(a, b, [_finding()]))
    assert agent.wait_for("inventory-ack")["result"] == digest(b)
    doc = ok(t.owner.http.get(f"/tenants/{t.id}/devices/{agent.device_id}/inventory"))
    assert doc["digest"] == digest(b) and len(doc["processes"]) == 4
    [f] = findings(t.owner, t.id)
    assert f["kind"] == "eol-os" and f["status"] == "open" and f["device"] == agent.device_id
    # A reconnecting agent is told the head it may diff against.
    agent.close()
    agent.connect()
    assert agent.wait_for("inventory-ack")["result"] == digest(b)
    agent.send(_delta(b, c))  # no finding any more: resolved, with its alert
    assert agent.wait_for("inventory-ack")["result"] == digest(c)
    [f] = findings(t.owner, t.id)
    assert f["status"] == "resolved"
    [alert] = [x for x in ok(t.owner.http.get(f"/tenants/{t.id}/alerts", params={"status": "all"}))
               if x["kind"] == "eol-os"]
    assert alert["status"] == "resolved" and alert["severity"] == "warning"


def test_t13_hostile_inventory_reports_are_refused_and_change_nothing(
        wire: tuple[RunningServer, TenantSetup, WireAgent]) -> None:
    server, t, agent = wire
    good = _inventory(2)
    agent.send(_full(good, [_finding()]))
    assert agent.wait_for("inventory-ack")["result"] == digest(good)
    bomb = base64.b64encode(zlib.compress(b"\0" * (65 << 20), 9)).decode()
    bad_report = Report(full=good)
    raw = msgspec.json.encode(bad_report)
    hostile: list[tuple[dict[str, Any], str]] = [
        ({"type": "inventory", "report": "%%%not base64", "result": digest(good)}, "base64"),
        ({"type": "inventory", "report": bomb, "result": digest(good)}, "decompresses to more than"),
        ({"type": "inventory", "report": base64.b64encode(zlib.compress(raw)[:-6]).decode(),
          "result": digest(good)}, "truncated"),
        ({"type": "inventory", "report": base64.b64encode(zlib.compress(raw) + b"junk").decode(),
          "result": digest(good)}, "trailing"),
        ({"type": "inventory", "report": _b64z(raw[:-1] + b',"extra":1}'), "result": digest(good)},
         "invalid report"),
        ({"type": "inventory", "report": _b64z(b'{"findings":[]}'), "result": digest(good)},
         "exactly one of full or delta"),
        ({"type": "inventory", "report": encode_report(Report(full=_inventory(9))), "result": digest(good)},
         "does not match its digest"),
        ({"type": "inventory", "report": _b64z(raw.replace(b'"collected_at":', b'"collected_at":-')),
          "result": digest(good)}, "invalid report"),
        ({"type": "inventory", "report": _b64z(json.dumps({"full": json.loads(encode(good)), "findings": [{
            "kind": "eol-os", "severity": "warning", "key": "k", "subject": "x\u202ey"}]}).encode()),
          "result": digest(good)}, "invalid report"),
        ({"type": "inventory", "report": encode_report(Report(delta=diff(good, _inventory(3)))),
          "result": digest(_inventory(3)), "base": digest(_inventory(7))}, "base or result"),
        ({"type": "inventory", "report": "AAAA", "result": "not-a-digest"}, "bad message"),
    ]
    for msg, expected in hostile:
        agent.send(msg)
        reply = agent.wait_for("error")
        assert expected in reply["detail"], (expected, reply)
    # Nothing changed, the connection is still up, and an honest report still goes through.
    doc = ok(t.owner.http.get(f"/tenants/{t.id}/devices/{agent.device_id}/inventory"))
    assert doc["digest"] == digest(good)
    assert [f["key"] for f in findings(t.owner, t.id)] == [_finding().key]
    nxt = _inventory(4)
    agent.send(_delta(good, nxt, [_finding()]))
    assert agent.wait_for("inventory-ack")["result"] == digest(nxt)
    # Too many reports from one device are refused (burst 20, then one per refill period).
    answers = []
    for i in range(25):
        agent.send(_full(_inventory(5 + i % 2)))
        answers.append(_next_answer(agent))
        if answers[-1]["type"] == "error":
            break
    assert answers[0]["type"] == "inventory-ack"
    assert answers[-1]["type"] == "error" and "too frequent" in answers[-1]["detail"]
    # The server is fine: another connection works.
    assert ok(server.client().get("/health"))["status"] == "ok"


def _next_answer(agent: WireAgent) -> dict[str, Any]:
    while True:
        doc = agent.recv()
        if doc["type"] in ("inventory-ack", "inventory-full", "error"):
            return doc


def test_t13_a_frame_over_the_limit_closes_that_connection_only(
        wire: tuple[RunningServer, TenantSetup, WireAgent]) -> None:
    server, t, agent = wire
    agent.send({"type": "inventory", "report": "A" * (5 << 20), "result": "0" * 64})
    with pytest.raises(Exception):  # noqa: B017 - the server closes with 1009 (message too big)
        for _ in range(5):
            agent.recv(timeout=10)
    agent.close()
    assert agent.connect()["type"] == "welcome"
    inv = _inventory(1)
    agent.send(_full(inv))
    assert agent.wait_for("inventory-ack")["result"] == digest(inv)


def test_s3_a_pending_device_reports_nothing_until_approved(tmp_path: Path, db_url: str | None) -> None:
    server = configured_server(tmp_path, db_url, interval=300)
    try:
        owner = bootstrap_owner(server)
        t = setup_tenant(owner, "pending")
        tok = ok(owner.http.post(f"/tenants/{t.id}/enrollment-tokens", json={"ttl_s": 600}))
        agent = WireAgent.enrol(server, tok["token"], tok["root_sha256"])
        assert agent.connect()["status"] == "pending"
        inv = _inventory(1)
        agent.send(_full(inv, [_finding()]))
        assert "pending approval" in agent.wait_for("error")["detail"]
        assert findings(owner, t.id) == [] and ok(owner.http.get(f"/tenants/{t.id}/alerts")) == []
        ok(owner.http.post(f"/tenants/{t.id}/devices/{agent.device_id}/approve"))
        agent.send(_full(inv, [_finding()]))
        assert agent.wait_for("inventory-ack")["result"] == digest(inv)
        agent.close()
    finally:
        server.stop()


# --- server restarts and lost connections (T15) -------------------------------------------------------


def test_t15_server_killed_agent_keeps_its_delta_chain_and_loses_no_finding(
        tmp_path: Path, db_url: str | None) -> None:
    """kill -9 of the server: the agent resumes with deltas; a tool that ran only while the server was
    down is still reported ("earlier") and alerted."""
    base = traversable_dir("rampart-t15-")
    server = configured_server(tmp_path, db_url)
    agent: AgentProcess | None = None
    try:
        owner = bootstrap_owner(server)
        t = setup_tenant(owner, "t15")
        agent = start_agent(enrol_agent(server, t, base / "agent"))
        dev = agent.device_id
        wait_until(lambda: owner.http.get(f"/tenants/{t.id}/devices/{dev}/inventory").status_code == 200,
                   "first inventory")
        snapshot_at = _snapshot_at(server, dev)
        server.stop(kill=True)
        # While the server is down: a portable tool runs for a few inventories, then stops.
        exe, proc = portable_copy("rustdesk")
        try:
            time.sleep(3 * INTERVAL + 1)
        finally:
            stop(proc)
        time.sleep(2 * INTERVAL)
        server.start()
        owner.__dict__.pop("_http", None)
        key = f"rat-portable:rustdesk:{exe}"
        f = wait_until(lambda: find(owner, t.id, dev, "rat-portable", key=key, status="resolved"),
                       "the finding seen while the server was down", timeout=90)
        assert f["severity"] == "critical"
        a = wait_until(lambda: alert_for(owner, t.id, key, dev), "its alert")
        assert a["status"] == "resolved" and "no longer seen" in a["subject"] and "agent clock" in a["detail"]
        # The agent resumed its delta chain: no full report replaced the stored snapshot.
        wait_until(lambda: _deltas(server, dev) >= 2 or None, "deltas after the restart", timeout=30)
        assert _snapshot_at(server, dev) == snapshot_at
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def _snapshot_at(server: RunningServer, device: str) -> float:
    store = store_of(server)
    try:
        with store.read() as s:
            row = s.get(DeviceInventory, device)
            assert row is not None
            return row.snapshot_at
    finally:
        store.dispose()


def _deltas(server: RunningServer, device: str) -> int:
    store = store_of(server)
    try:
        with store.read() as s:
            return s.query(InventoryDelta).filter(InventoryDelta.device_id == device).count()
    finally:
        store.dispose()


def test_offline_and_overdue_agents_are_alerted_and_resolved_when_they_report(
        tmp_path: Path, db_url: str | None) -> None:
    """Issue 5.4: no contact for 2 intervals: agent-offline; in contact without inventory: agent-overdue."""
    base = traversable_dir("rampart-overdue-")
    server = configured_server(tmp_path, db_url)
    agent: AgentProcess | None = None
    quiet: WireAgent | None = None
    try:
        owner = bootstrap_owner(server)
        t = setup_tenant(owner, "overdue")
        agent = start_agent(enrol_agent(server, t, base / "agent"))
        dev = agent.device_id
        wait_until(lambda: owner.http.get(f"/tenants/{t.id}/devices/{dev}/inventory").status_code == 200,
                   "first inventory")
        # A device that connects but never reports an inventory (a broken or tampered agent).
        tok = ok(owner.http.post(f"/tenants/{t.id}/enrollment-tokens", json={"ttl_s": 600}))
        quiet = WireAgent.enrol(server, tok["token"], tok["root_sha256"], hostname="quiet")
        ok(owner.http.post(f"/tenants/{t.id}/devices/{quiet.device_id}/approve"))
        quiet.connect()

        def live_alerts(kind: str) -> list[dict[str, Any]]:
            return [a for a in ok(owner.http.get(f"/tenants/{t.id}/alerts")) if a["kind"] == kind]

        overdue = wait_until(lambda: live_alerts("agent-overdue"), "agent-overdue", timeout=40)
        assert [a["subject"] for a in overdue] == ["quiet: inventory overdue"]
        assert live_alerts("agent-offline") == []  # the reporting agent is fine
        agent.stop()
        offline = wait_until(lambda: live_alerts("agent-offline"), "agent-offline", timeout=40)
        assert len(offline) == 1 and dev in offline[0]["detail"]
        time.sleep(3 * INTERVAL)
        assert live_alerts("agent-offline")[0]["count"] == 1  # raised once, not every sweep
        start_agent(agent)
        wait_until(lambda: not live_alerts("agent-offline") or None, "offline resolved", timeout=40)
        [resolved] = [a for a in ok(owner.http.get(f"/tenants/{t.id}/alerts", params={"status": "all"}))
                      if a["kind"] == "agent-offline"]
        # Resolved by its report, or by the sweep that saw it back in contact first.
        assert resolved["resolved_by"] in (f"device:{dev}", "server")
        # The quiet device finally reports: its overdue alert is resolved. (Only its own: the
        # restarted agent may itself be overdue for a moment, in contact before its first report.)
        quiet.send(_full(_inventory(1)))
        quiet.wait_for("inventory-ack")
        try:
            wait_until(lambda: not [a for a in live_alerts("agent-overdue") if a["device"] == quiet.device_id]
                       or None, "overdue resolved", timeout=20)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; live: {live_alerts('agent-overdue')}") from None
    finally:
        if quiet is not None:
            quiet.close()
        if agent is not None:
            agent.stop()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


# --- the catalog ------------------------------------------------------------------------------------


def test_catalog_import_of_the_lolrmm_feed_reaches_running_agents(live: Live) -> None:
    """Issue 5.2: `rampart catalog import` → every agent detects the feed's tools (GLPI's glpi-remote)."""
    if not LOLRMM_FEED.is_file():
        print(f"skipped: the LOLRMM feed snapshot is absent at {LOLRMM_FEED}")
        pytest.skip(f"the LOLRMM feed snapshot is absent at {LOLRMM_FEED}")
    op, tid, dev = live.owner, live.t.id, live.device
    before = live.cli.json("catalog", "show")
    assert before["imported"] == 0 and before["sha256"] is None
    out = live.cli.ok("catalog", "import", str(LOLRMM_FEED))
    assert "imported" in out
    after = live.cli.json("catalog", "show")
    assert after["imported"] > 200 and after["merged"] > before["merged"] and after["sha256"]
    assert "glpi-agent" in {x["slug"] for x in after["tools"]}
    live.agent.wait_log(f"catalog {after['sha256'][:12]}", timeout=30)
    exe, proc = portable_copy("glpi-remote")
    try:
        f = wait_until(lambda: find(op, tid, dev, "rat-unsanctioned", key="rat-unsanctioned:glpi-agent",
                                    pid=proc.pid), "the feed's tool detected")
        assert f["tool"] == "glpi-agent"
    finally:
        stop(proc)
    events = [e for e in audit_events(op, tid) if e["kind"] == "catalog.imported"]
    assert events and events[-1]["details"]["sha256"] == after["sha256"]


def test_t13_hostile_catalog_uploads_and_unknown_tools_are_refused(live: Live) -> None:
    op, tid = live.owner, live.t.id
    before = ok(op.http.get("/catalog"))
    for body, status in (({"catalog": "not json"}, 400),
                         ({"catalog": json.dumps({"format": "rampart.catalog.v1", "tools": [{"x": 1}]})},
                          400),
                         ({"catalog": "{}", "extra": 1}, 422),
                         ({"catalog": "x" * ((2 << 20) + 10)}, 413)):
        r = op.http.post("/catalog", json=body)
        assert r.status_code == status, (body if len(str(body)) < 200 else "big", r.text)
    assert ok(op.http.get("/catalog"))["sha256"] == before["sha256"]
    r = op.http.put(f"/tenants/{tid}/sanctioned-tools/no-such-tool")
    assert r.status_code == 400 and "no tool" in r.json()["detail"]
    assert op.http.delete(f"/tenants/{tid}/sanctioned-tools/teamviewer").status_code == 404
    assert op.http.put(f"/tenants/{tid}/sanctioned-tools/Bad_Slug").status_code == 422
    cli = live.cli.run("tools", "allow", "acme", "no such tool")
    assert cli.returncode == 4 and "no tool" in cli.stderr and cli.stderr.count("\n") == 1
    assert ok(op.http.get(f"/tenants/{tid}/sanctioned-tools")) == []


# --- the agent's side of detection configuration (pure) -----------------------------------------------


def test_t1_a_server_can_only_add_catalog_facts_never_remove_built_in_ones() -> None:
    """A compromised server sends a catalog that redefines AnyDesk without its executables."""
    builtin = builtin_catalog()
    hollow = Catalog([make_tool("AnyDesk", category="remote_access", platforms=["windows"],
                                executables=["harmless.exe"])])
    data = encode_catalog(hollow)
    sha = hashlib.sha256(data).hexdigest()
    msg = {"sanctioned": [], "dormant_days": 30, "catalog_sha256": sha, "catalog": _b64z(data)}
    config, kept = parse_detection(msg, DetectionConfig(), builtin)
    assert kept == data and config.catalog is not None
    anydesk = config.catalog.get("anydesk")
    assert anydesk is not None and set(builtin.get("anydesk").executables) <= set(anydesk.executables)  # type: ignore[union-attr]
    # A catalog that does not match its digest, a bomb, or nonsense is refused; nothing is adopted.
    for bad, why in ((dict(msg, catalog_sha256="0" * 64), "digest"),
                     (dict(msg, catalog=base64.b64encode(zlib.compress(b"\0" * (40 << 20))).decode()),
                      "decompresses"),
                     (dict(msg, dormant_days=0), "dormant_days"),
                     (dict(msg, sanctioned=["x" * 65]), "sanctioned"),
                     (dict(msg, catalog=None, catalog_sha256="1" * 64), "did not send")):
        with pytest.raises(ReportError, match=why):
            parse_detection(bad, DetectionConfig(), builtin)


def test_t13_report_decoding_is_bounded_before_parsing() -> None:
    inv = _inventory(50)
    text = encode_report(Report(full=inv))
    assert decode_report(text).full == inv
    with pytest.raises(ReportError, match="more than"):
        decode_report(text, max_bytes=1000)
    with pytest.raises(ReportError, match="more than"):
        inflate(zlib.compress(b"a" * 10_000), 9_999)
    assert inflate(zlib.compress(b"a" * 10_000), 10_000) == b"a" * 10_000


def test_agent_stops_cleanly(live: Live) -> None:
    """SIGTERM stops the agent's telemetry task with the rest (exit 0, "agent stopped")."""
    assert live.agent.proc is not None
    live.agent.proc.send_signal(signal.SIGTERM)
    assert live.agent.proc.wait(timeout=20) == 0
    live.agent.proc = None
    assert "agent stopped" in live.agent.log_text()
    assert "Traceback" not in live.agent.log_text()


def test_t15_agent_diffs_only_against_what_the_server_acknowledged() -> None:
    """The agent's side of T15, with a scripted host: lost acks cost a full report, never a wrong delta;
    a finding seen between two reports is carried as ``earlier`` until a report covering it is acked."""
    import asyncio

    from rampart.agent.telemetry import Telemetry

    portable = Process(pid=777, ppid=1, start_ticks=1, start_time=1_800_000_000, name="anydesk",
                       exe="/home/eve/Downloads/anydesk", uid=1000, euid=1000)
    with_tool = Inventory(collected_at=1_800_000_000, agent=AgentInfo(version="wire", containment="none"),
                          processes=[*_inventory(2).processes, portable])
    hosts = [_inventory(1), _inventory(2), with_tool, _inventory(4), _inventory(5), _inventory(6)]
    script = iter(hosts)
    sent: list[dict[str, Any]] = []

    async def send(text: str) -> None:
        sent.append(json.loads(text))

    async def scenario() -> None:
        tel = Telemetry(None, interval_s=60, collect=lambda now: next(script))
        tel.attach(send)
        await tel.report(await tel.collect_now())
        await tel.report(await tel.collect_now())  # no ack yet: full again, never a delta on a guess
        assert [m["base"] for m in sent] == [None, None]
        tel.on_ack(sent[0]["result"])  # a late ack of the first: its snapshot is not the latest one
        tel.on_ack(sent[1]["result"])
        # Offline: the portable tool is seen by a collection whose report cannot be sent...
        tel.detach()
        assert await tel.report(await tel.collect_now()) is False
        tel.attach(send)
        # ...and is gone by the next one, which carries it as "earlier", as a delta on what was acked.
        await tel.report(await tel.collect_now())
        third = decode_report(sent[2]["report"])
        assert sent[2]["base"] == digest(hosts[1]) and third.delta is not None
        assert [e.finding.key for e in third.earlier if e.finding.kind == "rat-portable"] == [
            "rat-portable:anydesk:/home/eve/Downloads/anydesk"]
        assert third.findings == []
        tel.on_ack(sent[2]["result"])
        await tel.report(await tel.collect_now())
        assert decode_report(sent[3]["report"]).earlier == [] and sent[3]["base"] == digest(hosts[3])
        # The server holds something else (its ack names an unknown snapshot): the next report is full.
        tel.on_ack("f" * 64)
        assert tel.acked_digest is None
        await tel.report(await tel.collect_now())
        assert sent[4]["base"] is None and decode_report(sent[4]["report"]).full == hosts[5]

    asyncio.run(scenario())


def test_t13_a_delta_that_does_not_produce_its_promised_digest_is_dropped_on_reading(
        wire: tuple[RunningServer, TenantSetup, WireAgent]) -> None:
    """A lying (or broken) agent's delta is stored (its base matches), but materialising it fails the
    digest check: it is dropped with every later delta, the last good snapshot is kept, and the agent is
    asked for a full report."""
    server, t, agent = wire
    a, b = _inventory(2), _inventory(3)
    agent.send(_full(a))
    agent.wait_for("inventory-ack")
    lie = msgspec.structs.replace(diff(a, b), result="e" * 64)
    agent.send({"type": "inventory", "report": encode_report(Report(delta=lie)), "result": "e" * 64,
                "base": digest(a)})
    assert agent.wait_for("inventory-ack")["result"] == "e" * 64  # the base matched: accepted for now
    doc = ok(t.owner.http.get(f"/tenants/{t.id}/devices/{agent.device_id}/inventory"))
    assert doc["digest"] == digest(a) and len(doc["processes"]) == 2
    assert agent.wait_for("inventory-full") == {"type": "inventory-full"}
    # Its next delta (on a snapshot the server does not hold) gets the same answer; the full report it
    # then sends is taken.
    agent.send(_delta(b, _inventory(4)))
    assert agent.wait_for("inventory-full") == {"type": "inventory-full"}
    agent.send(_full(b))
    assert agent.wait_for("inventory-ack")["result"] == digest(b)
    assert _deltas(server, agent.device_id) == 0
    assert ok(t.owner.http.get(f"/tenants/{t.id}/devices/{agent.device_id}/inventory"))["digest"] == digest(b)
