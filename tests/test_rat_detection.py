"""Remote access tools that a renamed copy or a flood cannot hide (issue 15; threats T14, T16).

Real tools from Debian (x11vnc with Xvfb, TigerVNC's Xtigervnc, xrdp), started by the test and bound
to loopback only (127.0.0.1 / ::1), never any other address. The SQLite and PostgreSQL passes of
./run-tests run side by side on one host, so every assertion on host-global state (/proc, listening
sockets) looks only at the processes this test started; the probe is pointed at this test's own
listeners only. Each test asserts the detection and that nothing else changed (the tool still runs,
other listeners are not probed, nothing else is reported about the test's processes).

The server half (truncation resolves nothing, alerts follow their findings) runs the real ingest
(:class:`rampart.server.telemetry.TelemetryStore`) on the test's database.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from test_telemetry import live  # noqa: F401 - the real agent and server fixture

from rampart.agent.findings import evaluate
from rampart.agent.inventory.detect import (
    DetectCache,
    fingerprint,
    is_relevant,
    probe_listeners,
    probe_target,
)
from rampart.agent.inventory.processes import collect_processes
from rampart.agent.inventory.sockets import collect_sockets
from rampart.catalog import builtin_catalog
from rampart.catalog.fingerprint import scan
from rampart.wire.finding import Finding
from rampart.wire.inventory import (
    AgentInfo,
    Inventory,
    InventoryLimits,
    Process,
    Socket,
    canonical,
    socket_key,
)

X11VNC, XVFB, XTIGERVNC, XRDP = "/usr/bin/x11vnc", "/usr/bin/Xvfb", "/usr/bin/Xtigervnc", "/usr/sbin/xrdp"
NOBODY: frozenset[str] = frozenset()
#: The agent's inventory interval in these tests: detection must land within one.
INTERVAL_S = 10.0

needs_vnc = pytest.mark.skipif(not (os.access(X11VNC, os.X_OK) and os.access(XVFB, os.X_OK)),
                               reason="x11vnc and Xvfb are installed by ./run-tests")


# --- helpers ---------------------------------------------------------------------------------


def _free_port() -> int:
    """A loopback port nothing listens on, outside the catalogued VNC (5900-5999) and RDP ranges."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port > 10000:
            return port


@dataclass
class Started:
    procs: list[subprocess.Popen[bytes]]

    @property
    def pids(self) -> set[int]:
        return {p.pid for p in self.procs}

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def _xvfb() -> tuple[subprocess.Popen[bytes], int]:
    """Xvfb on a free display (it picks one: -displayfd), no TCP."""
    r, w = os.pipe()
    proc = subprocess.Popen([XVFB, "-displayfd", str(w), "-nolisten", "tcp", "-screen", "0", "320x240x16"],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        line = f.readline().strip()
    assert line.isdigit(), "Xvfb gave no display"
    return proc, int(line)


def _listening(pid: int, port: int, timeout: float = 15.0) -> list[Socket]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        mine = [s for s in collect_sockets()[0]
                if s.pid == pid and s.state == "listen" and s.local_port == port]
        if mine:
            return mine
        time.sleep(0.1)
    raise AssertionError(f"pid {pid} does not listen on {port}")


def _x11vnc(program: str | int, display: int, port: int, pass_fds: tuple[int, ...] = (),
            forever: bool = True) -> subprocess.Popen[bytes]:
    exe = program if isinstance(program, str) else f"/proc/self/fd/{program}"
    return subprocess.Popen([exe, "-display", f":{display}", "-rfbport", str(port), "-localhost",
                             *(["-forever"] if forever else []), "-nopw", "-quiet", "-nolookup"],
                            pass_fds=pass_fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _detect(pids: set[int]) -> tuple[list[Finding], Inventory]:
    """The agent's detection pipeline (collect, fingerprint, probe, evaluate) over this test's own processes
    and listeners only: the other test pass's tools on this host are not ours to judge or to probe."""
    procs = [p for p in collect_processes()[0] if p.pid in pids]
    socks = [s for s in collect_sockets()[0] if s.pid in pids]
    cache = DetectCache()
    procs, _ = fingerprint(procs, cache, listener_pids=frozenset(s.pid for s in socks if s.pid))
    socks, _ = probe_listeners(socks, cache)
    inv = Inventory(collected_at=int(time.time()), agent=AgentInfo(version="t", containment="none"),
                    processes=procs, sockets=socks)
    return evaluate(inv, builtin_catalog(), sanctioned=NOBODY, now=int(time.time())), inv


def _kinds(found: list[Finding]) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {}
    for f in found:
        out.setdefault(f.kind, []).append(f)
    return out


@pytest.fixture
def display() -> Iterator[int]:
    proc, number = _xvfb()
    try:
        yield number
    finally:
        _stop([proc])


# --- T14: content and behaviour, not names ---------------------------------------------------


@needs_vnc
def test_t14_renamed_x11vnc_on_an_odd_port_is_found_by_content_and_protocol(tmp_path: Path,
                                                                            display: int) -> None:
    copy = tmp_path / "updater"
    shutil.copy2(X11VNC, copy)
    port = _free_port()
    started = time.monotonic()
    vnc = _x11vnc(str(copy), display, port, forever=False)  # x11vnc's default: exit after one client
    try:
        listeners = _listening(vnc.pid, port)
        assert {s.local_addr for s in listeners} <= {"127.0.0.1", "::1"}  # loopback only
        found, inv = _detect({vnc.pid})
        took = time.monotonic() - started
        kinds = _kinds(found)
        # By protocol: the listener answers with an RFB banner, whatever the name and port.
        [behaviour] = [f for f in kinds["rat-behaviour"] if f.evidence["by"] == "protocol"]
        assert behaviour.tool == "x11vnc" and behaviour.evidence["protocol"].startswith("rfb 003.")
        assert behaviour.evidence["port"] == str(port) and behaviour.severity == "high"
        # By content: a renamed copy in a temporary folder is x11vnc run portably (critical).
        [portable] = kinds["rat-portable"]
        assert portable.tool == "x11vnc" and portable.evidence["exe"] == str(copy)
        assert kinds["rat-unsanctioned"][0].tool == "x11vnc"
        [proc] = inv.processes
        assert "x11vnc:build-id" in proc.content and "vnc-server:library" in proc.content
        # A detection-relevant program carries its exact fingerprint, shown in its findings.
        digest = hashlib.sha256(copy.read_bytes()).hexdigest()
        assert proc.content[-1] == f"sha256:{digest}" and portable.evidence["sha256"] == digest
        # The port is not a catalogued one: no port finding, and nothing but what is asserted here.
        assert "rat-port" not in kinds
        if "memory-only" in kinds:  # a host whose /tmp is a tmpfs: the copy never was on disk
            assert [f.evidence["reason"] for f in kinds.pop("memory-only")] == ["memory-filesystem"]
        assert set(kinds) == {"rat-behaviour", "rat-portable", "rat-unsanctioned"}
        assert took < INTERVAL_S, took
        time.sleep(0.5)
        assert vnc.poll() is None  # the probe is no client: even a one-client x11vnc keeps running
    finally:
        _stop([vnc])


@pytest.mark.skipif(not os.access(XTIGERVNC, os.X_OK), reason="tigervnc-standalone-server by ./run-tests")
def test_t14_debian_tigervnc_server_is_recognised_while_running() -> None:
    port = _free_port()
    r, w = os.pipe()
    vnc = subprocess.Popen([XTIGERVNC, "-displayfd", str(w), "-rfbport", str(port), "-localhost",
                            "-interface", "127.0.0.1", "-SecurityTypes", "None", "-nolisten", "tcp"],
                           pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            assert f.readline().strip().isdigit()
        _listening(vnc.pid, port)
        found, _ = _detect({vnc.pid})
        kinds = _kinds(found)
        [running] = kinds["rat-unsanctioned"]
        assert running.tool == "tigervnc" and "process" in running.evidence["found_by"]
        assert running.evidence["exe"] == XTIGERVNC
        [behaviour] = kinds["rat-behaviour"]
        assert behaviour.tool == "tigervnc" and behaviour.evidence["protocol"].startswith("rfb ")
        assert "rat-portable" not in kinds and "memory-only" not in kinds  # installed where Debian puts it
        assert vnc.poll() is None
    finally:
        _stop([vnc])


@needs_vnc
def test_t14_renamed_copy_under_opt_deleted_after_start_is_found(display: int) -> None:
    if not os.access("/opt", os.W_OK):
        pytest.skip("needs to write /opt (./run-tests runs as root)")
    folder = Path("/opt") / f"rampart-test-{uuid.uuid4().hex[:12]}"
    folder.mkdir()
    copy = folder / "svc-helper"
    port = _free_port()
    vnc: subprocess.Popen[bytes] | None = None
    try:
        shutil.copy2(X11VNC, copy)
        vnc = _x11vnc(str(copy), display, port)
        _listening(vnc.pid, port)
        copy.unlink()
        folder.rmdir()
        found, _ = _detect({vnc.pid})
        kinds = _kinds(found)
        [deleted] = kinds["memory-only"]
        assert deleted.evidence["reason"] == "deleted" and deleted.severity == "high"
        assert deleted.evidence["tools"] == "x11vnc"  # read through /proc/PID/exe although deleted
        [portable] = kinds["rat-portable"]
        assert portable.tool == "x11vnc"  # /opt/... is not x11vnc's install path
        assert {f.evidence["by"] for f in kinds["rat-behaviour"]} == {"protocol", "library"}
        assert vnc.poll() is None
    finally:
        if vnc is not None:
            _stop([vnc])
        shutil.rmtree(folder, ignore_errors=True)


@needs_vnc
def test_t14_x11vnc_loaded_only_in_memory_is_named_by_its_content(display: int) -> None:
    fd = os.memfd_create("kworker", 0)  # a harmless-looking name; no MFD_CLOEXEC: exec'd through /proc
    try:
        with open(X11VNC, "rb") as f:
            os.write(fd, f.read())
        port = _free_port()
        vnc = _x11vnc(fd, display, port, pass_fds=(fd,))
    finally:
        os.close(fd)
    try:
        _listening(vnc.pid, port)
        found, inv = _detect({vnc.pid})
        [proc] = inv.processes
        assert proc.exe is not None and proc.exe.startswith("/memfd:kworker")
        kinds = _kinds(found)
        [mem] = kinds["memory-only"]
        assert mem.severity == "critical" and mem.tool == "x11vnc" and mem.evidence["reason"] == "memfd"
        # Its exact fingerprint, what a suppression rule names for a known memfd program (issue 15, 7).
        assert mem.evidence["sha256"] == hashlib.sha256(Path(X11VNC).read_bytes()).hexdigest()
        assert kinds["rat-unsanctioned"][0].tool == "x11vnc"
        assert any(f.evidence["by"] == "protocol" for f in kinds["rat-behaviour"])
    finally:
        _stop([vnc])


@pytest.mark.skipif(not os.access(XRDP, os.X_OK), reason="xrdp is installed by ./run-tests")
def test_t14_xrdp_on_an_odd_loopback_port_answers_rdp(tmp_path: Path) -> None:
    port = _free_port()
    ini = tmp_path / "xrdp.ini"
    text = Path("/etc/xrdp/xrdp.ini").read_text()
    lines = [f"port=tcp://127.0.0.1:{port}" if line.startswith("port=") else line
             for line in text.splitlines()]
    ini.write_text("\n".join(lines) + "\n")
    rdp = subprocess.Popen([XRDP, "--nodaemon", "--config", str(ini)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        [listener] = _listening(rdp.pid, port)
        assert listener.local_addr == "127.0.0.1"
        found, inv = _detect({rdp.pid})
        assert [s.protocol for s in inv.sockets if s.state == "listen"] == ["rdp"]
        kinds = _kinds(found)
        [behaviour] = kinds["rat-behaviour"]
        assert behaviour.tool == "xrdp" and behaviour.evidence["protocol"] == "rdp"
        assert rdp.poll() is None
    finally:
        _stop([rdp])


def test_t14_the_probe_never_leaves_this_host() -> None:
    own = frozenset({"127.0.0.1", "::1", "192.0.2.10"})

    def target(addr: str, proto: str = "tcp", state: str = "listen") -> tuple[int, str] | None:
        return probe_target(Socket(proto=proto, state=state, local_addr=addr, local_port=5901,  # type: ignore[arg-type]
                                   remote_addr="0.0.0.0", remote_port=0, inode=1, uid=0), own)

    assert target("0.0.0.0") == (socket.AF_INET, "127.0.0.1")
    assert target("::", "tcp6") == (socket.AF_INET6, "::1")
    assert target("127.0.0.5") == (socket.AF_INET, "127.0.0.5")
    assert target("192.0.2.10") == (socket.AF_INET, "192.0.2.10")  # one of this host's own addresses
    # A listener bound to an address that is not this host's (IP_FREEBIND, a crafted snapshot) is never
    # connected to; nor are UDP sockets, connections, or link-local listeners (they need a scope).
    assert target("203.0.113.7") is None
    assert target("::ffff:198.51.100.1", "tcp6") is None
    assert target("fe80::1", "tcp6") is None
    assert target("0.0.0.0", "udp") is None
    assert target("127.0.0.1", state="established") is None


def test_t14_content_marks_need_the_tools_own_text_not_its_name(tmp_path: Path) -> None:
    # A program that merely mentions x11vnc (a help text, a script) is not x11vnc.
    assert scan(b"#!/bin/sh\nexec x11vnc -forever\n") == ()
    assert scan(b"\x7fELF... see x11vnc and tigervnc ...") == ()
    if os.access(X11VNC, os.R_OK):
        data = Path(X11VNC).read_bytes()
        assert {"x11vnc:build-id", "x11vnc:sha256", "x11vnc:strings", "vnc-server:library"} <= set(scan(data))
        # A rebuilt binary (one byte changed in its build-id) loses the known-build marks, keeps the text.
        note = b"\x04\x00\x00\x00\x14\x00\x00\x00\x03\x00\x00\x00GNU\x00"  # NT_GNU_BUILD_ID header
        at = data.find(note) + len(note)
        changed = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
        marks = set(scan(changed))
        assert "x11vnc:build-id" not in marks and "x11vnc:sha256" not in marks and "x11vnc:strings" in marks
    # The other Debian servers the catalog knows by content (as installed by ./run-tests).
    for path, slug in ((XTIGERVNC, "tigervnc"), (XRDP, "xrdp"), ("/usr/bin/tmate", "tmate")):
        if os.access(path, os.R_OK):
            assert {f"{slug}:build-id", f"{slug}:strings"} <= set(scan(Path(path).read_bytes())), path
    # Programs that are not remote access servers carry no marks.
    for path in ("/usr/bin/sleep", "/usr/bin/ssh", "/usr/sbin/sshd", sys.executable):
        if os.access(path, os.R_OK):
            assert scan(Path(os.path.realpath(path)).read_bytes()) == (), path


# --- T16: a flood cannot hide a listener or a process ----------------------------------------


@needs_vnc
def test_t16_a_flood_of_loopback_connections_does_not_push_a_listener_out(tmp_path: Path,
                                                                          display: int) -> None:
    copy = tmp_path / "updater"
    shutil.copy2(X11VNC, copy)
    port = _free_port()
    vnc = _x11vnc(str(copy), display, port)
    sink = socket.socket()
    flood: list[socket.socket] = []
    try:
        _listening(vnc.pid, port)
        sink.bind(("127.0.0.1", 0))
        sink.listen(4096)
        for _ in range(1500):  # 3,000 loopback sockets: past a cap of 1,000
            c = socket.create_connection(sink.getsockname())
            flood.append(c)
            flood.append(sink.accept()[0])
        limits = InventoryLimits(max_sockets=1000)
        socks, note = collect_sockets(limits)
        assert len(socks) == 1000 and note.startswith("truncated to 1000 of ")
        assert {s.local_port for s in socks if s.pid == vnc.pid and s.state == "listen"} == {port}
        # Every listener of this (namespace's) host is kept, not only ours.
        everything, _ = collect_sockets(InventoryLimits(max_sockets=100_000))
        assert {s.inode for s in everything if s.state == "listen"} <= {s.inode for s in socks}
        # Detection over the truncated report finds the tool and says the report was cut.
        procs = [p for p in collect_processes()[0] if p.pid == vnc.pid]
        cache = DetectCache()
        procs, _ = fingerprint(procs, cache)
        mine, _ = probe_listeners([s for s in socks if s.pid == vnc.pid], cache)
        inv = Inventory(collected_at=int(time.time()), agent=AgentInfo(version="t", containment="none"),
                        processes=procs, sockets=canonical(mine, socket_key),
                        notes={"sockets": note})
        kinds = _kinds(evaluate(inv, builtin_catalog(), sanctioned=NOBODY, now=int(time.time())))
        assert [f.severity for f in kinds["inventory-truncated"]] == ["high"]
        assert any(f.evidence["by"] == "protocol" for f in kinds["rat-behaviour"])
        assert vnc.poll() is None
    finally:
        for c in flood:
            c.close()
        sink.close()
        _stop([vnc])


def test_t16_a_flood_of_processes_does_not_push_a_portable_tool_out(tmp_path: Path) -> None:
    # A program run from a temporary folder (a copy of sleep: the cap, not the tool, is under test).
    copy = tmp_path / "updater"
    shutil.copy2("/usr/bin/sleep", copy)
    flood = [subprocess.Popen(["/usr/bin/sleep", "60"]) for _ in range(40)]
    tool = subprocess.Popen([str(copy), "60"])  # started last: the highest pid, the first a cap cuts
    try:
        everything, _ = collect_processes()
        relevant = sum(1 for p in everything if is_relevant(p))
        cap = relevant + 20
        assert len(everything) > cap + 20, "not enough processes on this host to test the cap"
        kept, truncated = collect_processes(InventoryLimits(max_processes=cap), relevant=is_relevant)
        assert truncated and len(kept) == cap
        assert tool.pid in {p.pid for p in kept}
        # Without the relevance order the same cap keeps the lowest pids: the tool is cut whenever its pid
        # is above them (pids wrap around, and the other test pass starts processes meanwhile).
        plain, _ = collect_processes(InventoryLimits(max_processes=cap))
        plain_pids = sorted(p.pid for p in plain)
        assert len(plain_pids) == cap
        assert (tool.pid in plain_pids) == (tool.pid <= plain_pids[-1])
    finally:
        _stop([tool, *flood])


# --- the server: truncation resolves nothing; alerts follow their findings ---------------------


@dataclass
class _Db:
    telemetry: object
    store: object
    tenant: str
    device: str


@pytest.fixture
def ingest(tmp_path: Path, db_url: str | None) -> Iterator[_Db]:
    from rampart.server.config import ServerLimits
    from rampart.server.db import Store, migrate
    from rampart.server.models import Device, Tenant
    from rampart.server.telemetry import TelemetryStore

    store = Store(db_url or f"sqlite:///{tmp_path / 'rampart.db'}")
    migrate(store.engine)
    now = time.time()
    tenant, device = "tn-" + uuid.uuid4().hex[:16], "dev-" + uuid.uuid4().hex[:24]
    with store.transaction() as s:
        s.add(Tenant(id=tenant, name="acme-" + tenant, created_at=now))
        s.flush()
        s.add(Device(id=device, tenant_id=tenant, public_key="k", hostname="host1", agent_version="t",
                     status="approved", enrolled_at=now))
    try:
        yield _Db(TelemetryStore(store, ServerLimits()), store, tenant, device)
    finally:
        store.dispose()


def _report(db: _Db, findings: list[Finding], at: float) -> None:
    from rampart.server.telemetry import Incoming
    from rampart.wire import Report, digest, encode_report

    inv = Inventory(collected_at=int(at), agent=AgentInfo(version="t", containment="none"),
                    processes=[Process(pid=1, ppid=0, start_ticks=1, start_time=1, name="init", uid=0,
                                       euid=0)])
    item = Incoming(device_id=db.device, tenant_id=db.tenant,
                    report=encode_report(Report(full=inv, findings=findings)), result=digest(inv), base=None)
    outcomes, _ = db.telemetry.ingest_batch([item], at)  # type: ignore[attr-defined]
    assert outcomes == ["stored"], outcomes


def _state(db: _Db) -> tuple[dict[str, bool], dict[str, tuple[str, str, int, str]]]:
    from rampart.server.models import AlertRow, FindingRow

    with db.store.read() as s:  # type: ignore[attr-defined]
        rows = {r.key: r.resolved_at is None for r in s.scalars(select(FindingRow).where(
            FindingRow.device_id == db.device))}
        alerts = {a.dedup_key: (a.status, a.subject, a.count, a.detail) for a in s.scalars(
            select(AlertRow).where(AlertRow.tenant_id == db.tenant, AlertRow.device_id == db.device))}
    return rows, alerts


_TOOL = Finding(kind="rat-behaviour", severity="high", key="rat-behaviour:x11vnc:rfb:/tmp/u", tool="x11vnc",
                subject="/tmp/u (pid 9, user root) serves VNC (RFB) on ::1:5905", evidence={"by": "protocol"})
_CUT = Finding(kind="inventory-truncated", severity="high", key="inventory-truncated::sockets",
               subject="Inventory cut at its limits (sockets)", evidence={"sockets": "truncated to 10000"})


def test_t16_a_truncated_report_resolves_nothing_and_a_complete_one_does(ingest: _Db) -> None:
    t = time.time()
    _report(ingest, [_TOOL], t)
    _report(ingest, [_CUT], t + 60)  # the flood pushed the listener out of the report
    rows, alerts = _state(ingest)
    assert rows == {_TOOL.key: True, _CUT.key: True}  # still open, and the cut itself is a finding
    assert {k.split(":", 1)[0]: v[0] for k, v in alerts.items()} == {"rat-behaviour": "open",
                                                                      "inventory-truncated": "open"}
    _report(ingest, [], t + 120)  # a complete report without the tool: now it is gone
    rows, alerts = _state(ingest)
    assert rows == {_TOOL.key: False, _CUT.key: False}
    assert {v[0] for v in alerts.values()} == {"resolved"}


def test_t14_an_alert_follows_its_finding_from_installed_to_running(ingest: _Db) -> None:
    from rampart.server.alerts import acknowledge
    from rampart.server.models import AlertRow

    installed = Finding(kind="rat-unsanctioned", severity="high", key="rat-unsanctioned:x11vnc",
                        tool="x11vnc",
                        subject="Unsanctioned remote access tool x11vnc (installed): package x11vnc 0.9.16-9",
                        evidence={"found_by": "package"})
    running = Finding(kind="rat-unsanctioned", severity="high", key="rat-unsanctioned:x11vnc", tool="x11vnc",
                      subject="Unsanctioned remote access tool x11vnc (running, installed): /tmp/u",
                      evidence={"found_by": "process,package"})
    t = time.time()
    _report(ingest, [installed], t)
    with ingest.store.transaction() as s:  # type: ignore[attr-defined]
        [row] = s.scalars(select(AlertRow).where(AlertRow.device_id == ingest.device))
        acknowledge(row, "op", t + 1)
    _report(ingest, [running], t + 60)
    _, alerts = _state(ingest)
    [(status, subject, count, detail)] = alerts.values()
    assert subject == "host1: " + running.subject and status == "open" and count == 2
    assert "changed at" in detail and "(installed)" in detail  # the earlier facts are recorded
    _report(ingest, [running], t + 120)  # same facts: no change, no new notification
    _, again = _state(ingest)
    assert [v[2] for v in again.values()] == [2]


# --- the catalog: port ranges, Debian servers, LOLRMM keeps Linux names and install paths ------


def test_t14_vnc_and_rdp_port_ranges_are_catalogued() -> None:
    from rampart.catalog import tools_for_port

    cat = builtin_catalog()
    for port in (5900, 5905, 5931, 5999):
        found = {t.slug for t in tools_for_port(cat, port)}
        assert {"x11vnc", "tigervnc", "tightvnc", "realvnc"} <= found, port
    assert "ammyy-admin" in {t.slug for t in tools_for_port(cat, 5931)}  # no longer Ammyy Admin alone
    assert {t.slug for t in tools_for_port(cat, 5938)} == {"teamviewer"}  # TeamViewer's registered port
    for port in (3389, 3390, 3399):
        assert "xrdp" in {t.slug for t in tools_for_port(cat, port)}, port
    assert tools_for_port(cat, 6000) == () and tools_for_port(cat, 5899) == ()  # X11 and beyond: not VNC


def test_t14_debian_packaged_servers_are_known_by_their_executables() -> None:
    from rampart.catalog import tools_for_executable, tools_for_install_path

    cat = builtin_catalog()
    for path, slug in (("/usr/bin/Xtigervnc", "tigervnc"), ("/usr/bin/x0tigervncserver", "tigervnc"),
                       ("/usr/sbin/tigervncsession", "tigervnc"), ("/usr/bin/x11vnc", "x11vnc"),
                       ("/usr/bin/Xtightvnc", "tightvnc"), ("/usr/sbin/xrdp", "xrdp"),
                       ("/usr/sbin/xrdp-sesman", "xrdp"), ("/usr/bin/tmate", "tmate")):
        assert slug in {t.slug for t in tools_for_executable(cat, path=path)}, path
        assert slug in {t.slug for t in tools_for_install_path(cat, path)}, path
    # The kernel's 15-character name of Xtigervnc (what /proc/PID/stat says) is enough.
    assert "tigervnc" in {t.slug for t in tools_for_executable(cat, name="Xtigervnc")}
    assert tools_for_install_path(cat, "/usr/bin/ls") == () and tools_for_install_path(cat, "relative") == ()


def test_t14_lolrmm_import_keeps_linux_names_and_matches_on_install_paths() -> None:
    import json

    from rampart.catalog import parse_feed, tools_for_executable, tools_for_install_path

    feed = json.dumps([{
        "Name": "Nezha", "Category": "RMM",
        "Details": {"SupportedOS": ["Linux", "Windows"],
                    "PEMetadata": [{"Filename": "nezha-agent.exe"}],
                    "InstallationPaths": ["C:\\nezha\\*", "/opt/nezha/*", "/opt/nezha/agent",
                                          "/opt/nezha/agent/nezha-agent", "/opt/nezha/dashboard",
                                          "/etc/systemd/system/nezha-agent.service"]},
        "Artifacts": {"Disk": [{"File": "/opt/nezha/agent/config.yml"}]},
    }, {
        "Name": "Remotely", "Category": "RAT",
        "Details": {"SupportedOS": ["Linux"],
                    "InstallationPaths": ["/usr/local/bin/Remotely/Remotely_Agent",
                                          "/usr/local/bin/Remotely/ConnectionInfo.json"]},
    }]).encode()
    cat = builtin_catalog().merged(parse_feed(feed).catalog)
    nezha, remotely = cat.get("nezha"), cat.get("remotely")
    assert nezha is not None and remotely is not None
    # Linux names survive: extensionless files named after the tool; folders and configs are no names.
    assert "nezha-agent" in nezha.executables and "nezha-agent.exe" in nezha.executables
    assert not {"agent", "dashboard", "config.yml", "nezha-agent.service"} & set(nezha.executables)
    assert "remotely_agent" in remotely.executables and "connectioninfo.json" not in remotely.executables
    assert [t.slug for t in tools_for_executable(cat, path="/tmp/x/nezha-agent")] == ["nezha"]
    # A program in the tool's install folder is the tool, whatever its name.
    assert [t.slug for t in tools_for_install_path(cat, "/opt/nezha/agent/updater")] == ["nezha"]
    assert tools_for_install_path(cat, "/opt/nezhax/agent") == ()
    proc = Process(pid=4242, ppid=1, start_ticks=1, start_time=1, name="updater",
                   exe="/opt/nezha/agent/updater", uid=0, euid=0, user="root")
    inv = Inventory(collected_at=1, agent=AgentInfo(version="t", containment="none"), processes=[proc])
    kinds = _kinds(evaluate(inv, cat, sanctioned=NOBODY, now=2))
    assert [f.tool for f in kinds["rat-unsanctioned"]] == ["nezha"] and "rat-portable" not in kinds


# --- end to end: a real agent reporting to a real server --------------------------------------


@needs_vnc
def test_t14_renamed_vnc_server_alerts_within_one_interval_and_a_suppression_silences_it_visibly(
        live: Any, display: int) -> None:  # noqa: F811 - the fixture imported above
    """A real agent (inventory every 2 s) and server: a renamed x11vnc on an odd loopback port is a
    `rat-behaviour` finding and alert within one interval; a suppression rule for its exact path keeps
    the finding listed as suppressed and resolves its alert; removing the rule raises it again."""
    from harness.operators import audit_events
    from test_telemetry import INTERVAL, alert_for, find, wait_until

    op, tid, dev = live.owner, live.t.id, live.device
    folder = Path(live.base) / f"dl-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    copy = folder / "updater"
    shutil.copy2(X11VNC, copy)
    port = _free_port()
    started = time.monotonic()
    vnc = _x11vnc(str(copy), display, port)
    try:
        f = wait_until(lambda: find(op, tid, dev, "rat-behaviour", pid=vnc.pid), "rat-behaviour", timeout=30)
        alert = wait_until(lambda: alert_for(op, tid, f["key"], dev), "its alert", timeout=30)
        took = time.monotonic() - started
        assert f["tool"] == "x11vnc" and alert["status"] == "open" and alert["severity"] == "critical"
        # One interval, plus the collection and the tool's own start-up (x11vnc takes ~1 s to listen).
        assert took < 3 * INTERVAL + 5, took
        print(f"renamed x11vnc: start to alert {took:.1f} s (agent interval {INTERVAL} s)")
        sha = f["evidence"].get("sha256") or ""
        # Suppress by exact path: still listed (marked), alert resolved by the rule.
        out = live.cli.ok("suppressions", "add", "acme", "--kind", "rat-behaviour", "--path", str(copy),
                          "--reason", "lab VNC server", "--days", "1")
        rule = re.search(r"rule (sp-[a-z2-7]{26})", out)
        assert rule is not None, out
        quiet = wait_until(lambda: (x := find(op, tid, dev, "rat-behaviour", key=f["key"])) is not None
                           and x.get("suppressed") and x, "suppressed finding", timeout=30)
        assert quiet["suppressed"].startswith(rule.group(1)) and quiet["status"] == "open"
        resolved = wait_until(lambda: (a := alert_for(op, tid, f["key"], dev)) and a["status"] == "resolved"
                              and a, "alert resolved by the rule", timeout=30)
        assert resolved["resolved_by"] == f"suppression:{rule.group(1)}"
        assert "(suppressed)" in live.cli.ok("findings", "acme", "--kind", "rat-behaviour")
        # Other findings about the same program are not silenced (the rule names one kind).
        portable = find(op, tid, dev, "rat-portable", pid=vnc.pid)
        assert portable is not None and alert_for(op, tid, portable["key"], dev)["status"] == "open"
        # Removed: the next report raises the alert again.
        assert "removed" in live.cli.ok("suppressions", "remove", "acme", rule.group(1))
        wait_until(lambda: (a := alert_for(op, tid, f["key"], dev)) and a["status"] == "open" and a,
                   "alert raised again", timeout=30)
        kinds = [e["kind"] for e in audit_events(op, tid)]
        assert "finding.suppressed" in kinds and "finding.unsuppressed" in kinds
        assert len(sha) in (0, 64)
    finally:
        _stop([vnc])
        shutil.rmtree(folder, ignore_errors=True)


TMATE = "/usr/bin/tmate"


def _tmate(folder: Path) -> subprocess.Popen[bytes]:
    """tmate in the foreground, its relay server set to a closed loopback port: it runs as an attacker
    would start it and never reaches beyond this host (no tmate.io)."""
    conf = folder / "tmate.conf"
    conf.write_text("set -g tmate-server-host 127.0.0.1\nset -g tmate-server-port 9\n")
    return subprocess.Popen([TMATE, "-f", str(conf), "-S", str(folder / "tmate.sock"), "-F"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _start_scenario(name: str, display: int, folder: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    """Start one attacker scenario with a real tool; (its process, expected finding kind, tool)."""
    port = _free_port()
    if name == "installed-tigervnc-running":
        r, w = os.pipe()
        proc = subprocess.Popen([XTIGERVNC, "-displayfd", str(w), "-rfbport", str(port), "-localhost",
                                 "-interface", "127.0.0.1", "-SecurityTypes", "None", "-nolisten", "tcp"],
                                pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            f.readline()
        return proc, "rat-unsanctioned", "tigervnc"
    if name == "portable-x11vnc-in-downloads":
        (folder / "Downloads").mkdir()
        copy = folder / "Downloads" / "x11vnc"
        shutil.copy2(X11VNC, copy)
        return _x11vnc(str(copy), display, port), "rat-portable", "x11vnc"
    if name == "renamed-under-opt-deleted":
        opt = Path("/opt") / f"rampart-test-{uuid.uuid4().hex[:12]}"
        opt.mkdir()
        copy = opt / "svc-helper"
        shutil.copy2(X11VNC, copy)
        proc = _x11vnc(str(copy), display, port)
        _listening(proc.pid, port)
        shutil.rmtree(opt)
        return proc, "memory-only", "x11vnc"
    if name == "memfd-x11vnc":
        fd = os.memfd_create("kworker", 0)
        try:
            with open(X11VNC, "rb") as f:
                os.write(fd, f.read())
            return _x11vnc(fd, display, port, pass_fds=(fd,)), "memory-only", "x11vnc"
        finally:
            os.close(fd)
    if name == "xrdp-odd-port":
        ini = folder / "xrdp.ini"
        ini.write_text("\n".join(f"port=tcp://127.0.0.1:{port}" if line.startswith("port=") else line
                                 for line in Path("/etc/xrdp/xrdp.ini").read_text().splitlines()) + "\n")
        return subprocess.Popen([XRDP, "--nodaemon", "--config", str(ini)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL), "rat-behaviour", "xrdp"
    assert name == "tmate-running"
    return _tmate(folder), "rat-unsanctioned", "tmate"


SCENARIOS = ["installed-tigervnc-running", "portable-x11vnc-in-downloads", "renamed-under-opt-deleted",
             "memfd-x11vnc", "xrdp-odd-port", "tmate-running"]


@needs_vnc
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_t14_each_tool_is_a_finding_and_an_alert_within_one_interval_on_a_real_agent(
        live: Any, display: int, scenario: str) -> None:  # noqa: F811 - the fixture imported above
    """Each attacker scenario with the real tool, against a real agent (inventory every 2 s) and
    server: the finding names the tool and the process, its alert is open, and both arrive within one
    interval of the tool's start (plus collection and the tool's own start-up)."""
    from test_telemetry import INTERVAL, alert_for, find, wait_until

    if scenario == "renamed-under-opt-deleted" and not os.access("/opt", os.W_OK):
        pytest.fail("./run-tests runs as root: /opt must be writable")
    for need in (XTIGERVNC, XRDP, TMATE):
        assert os.access(need, os.X_OK), f"{need} is installed by ./run-tests"
    op, tid, dev = live.owner, live.t.id, live.device
    folder = Path(live.base) / f"scenario-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    started = time.monotonic()
    proc, kind, tool = _start_scenario(scenario, display, folder)
    try:
        f = wait_until(lambda: find(op, tid, dev, kind, pid=proc.pid), f"{kind} for {scenario}", timeout=30)
        alert = wait_until(lambda: alert_for(op, tid, f["key"], dev), "its alert", timeout=30)
        took = time.monotonic() - started
        assert f["tool"] == tool, f
        assert alert["status"] == "open" and alert["severity"] in ("high", "critical"), alert
        assert took < 3 * INTERVAL + 5, took
        print(f"{scenario}: start to alert {took:.1f} s (agent interval {INTERVAL} s)")
        assert proc.poll() is None  # found while running; nothing killed it
    finally:
        _stop([proc])
        shutil.rmtree(folder, ignore_errors=True)


def test_t16_a_device_cannot_suppress_its_own_finding_and_rules_are_exact(ingest: _Db) -> None:
    from rampart.server import suppression

    forged = Finding(kind="rat-behaviour", severity="high", key=_TOOL.key, tool="x11vnc",
                     subject=_TOOL.subject,
                     evidence={"by": "protocol", "exe": "/tmp/u", "suppressed": "sp-x until 2099: ok"})
    t = time.time()
    _report(ingest, [forged], t)
    rows, alerts = _state(ingest)
    assert rows == {_TOOL.key: True} and [v[0] for v in alerts.values()] == ["open"]
    from rampart.server.models import FindingRow

    with ingest.store.read() as s:  # type: ignore[attr-defined]
        [row] = s.scalars(select(FindingRow).where(FindingRow.device_id == ingest.device))
        assert "suppressed" not in row.evidence  # the device's own claim is dropped on ingest
    # A rule is one exact path or hash: patterns, relative paths, whole kinds are refused.
    for bad in ({"path": "/tmp/*"}, {"path": "tmp/u"}, {"path": "", "sha256": ""},
                {"path": "/tmp/u", "sha256": "0" * 64}, {"sha256": "ABC"}):
        with pytest.raises(ValueError):
            suppression.new_rule(kind="rat-behaviour", path=bad.get("path", ""), sha256=bad.get("sha256", ""),
                                 device="", reason="r", days=1, who="op", now=t)
    with pytest.raises(ValueError):
        suppression.new_rule(kind="inventory-truncated", path="/tmp/u", sha256="", device="", reason="r",
                             days=1, who="op", now=t)
    # A rule for the exact path marks the finding and resolves its alert at the next report.
    rule = suppression.new_rule(kind="rat-behaviour", path="/tmp/u", sha256="", device="", reason="lab",
                                days=1, who="op", now=t)
    with ingest.store.transaction() as s:  # type: ignore[attr-defined]
        suppression.save(s, ingest.tenant, [rule])
    _report(ingest, [forged], t + 60)
    rows, alerts = _state(ingest)
    assert rows == {_TOOL.key: True} and [v[0] for v in alerts.values()] == ["resolved"]
    with ingest.store.read() as s:  # type: ignore[attr-defined]
        [row] = s.scalars(select(FindingRow).where(FindingRow.device_id == ingest.device))
        assert f'"suppressed":"{rule.id} until ' in row.evidence and ': lab"' in row.evidence
    # Another path is not covered.
    other = Finding(kind="rat-behaviour", severity="high", key=_TOOL.key + "2", tool="x11vnc",
                    subject=_TOOL.subject, evidence={"by": "protocol", "exe": "/tmp/u2"})
    _report(ingest, [forged, other], t + 120)
    _, alerts = _state(ingest)
    assert sorted(v[0] for v in alerts.values()) == ["open", "resolved"]


_FLOOD = r"""
import socket, sys, time
role, n = sys.argv[1], int(sys.argv[2])
held = []
if role == "server":
    s = socket.create_server(("127.0.0.1", 0), backlog=4096)
    print(s.getsockname()[1], flush=True)
    while len(held) < n:
        held.append(s.accept()[0])
else:
    port = int(sys.argv[3])
    for _ in range(n):
        held.append(socket.create_connection(("127.0.0.1", port)))
print("ready", flush=True)
time.sleep(600)
"""


@needs_vnc
def test_t16_a_flood_of_loopback_connections_closes_nothing_on_a_real_agent(
        live: Any, display: int, tmp_path: Path) -> None:  # noqa: F811 - the fixture imported above
    """20,000 loopback connections (40,000 sockets, past the agent's cap of 10,000): the agent reports
    the cut (`inventory-truncated`), and a tool that stops meanwhile keeps its finding and alert open
    until a complete report says it is gone."""
    import sys

    from test_telemetry import alert_for, find, wait_until

    op, tid, dev = live.owner, live.t.id, live.device
    copy = tmp_path / "updater"
    shutil.copy2(X11VNC, copy)
    port = _free_port()
    vnc = _x11vnc(str(copy), display, port)
    flood: list[subprocess.Popen[str]] = []
    try:
        f = wait_until(lambda: find(op, tid, dev, "rat-behaviour", pid=vnc.pid), "rat-behaviour", timeout=30)
        wait_until(lambda: alert_for(op, tid, f["key"], dev), "its alert", timeout=30)
        # 20,000 connections (40,000 sockets), in two pairs of processes: one process may hold at most
        # 20,000 open files here, and each end of a connection is one.
        n, pairs = 20_000, 2
        for _ in range(pairs):
            server = subprocess.Popen([sys.executable, "-c", _FLOOD, "server", str(n // pairs)],
                                      stdout=subprocess.PIPE, text=True)
            flood.append(server)
            assert server.stdout is not None
            sink = int(server.stdout.readline())
            client = subprocess.Popen([sys.executable, "-c", _FLOOD, "client", str(n // pairs), str(sink)],
                                      stdout=subprocess.PIPE, text=True)
            flood.append(client)
            assert client.stdout is not None and client.stdout.readline().strip() == "ready"
        cut = wait_until(lambda: next((x for x in findings_of(op, tid, dev, "inventory-truncated")), None),
                         "inventory-truncated finding", timeout=60)
        assert "truncated to 10000 of " in cut["evidence"]["sockets"] and cut["severity"] == "high"
        # The tool stops while the reports are cut: nothing is resolved by absence.
        _stop([vnc])
        time.sleep(3 * 2.0 + 2)  # three more inventories
        still = find(op, tid, dev, "rat-behaviour", key=f["key"])
        assert still is not None and still["status"] == "open"
        assert alert_for(op, tid, f["key"], dev)["status"] == "open"
    finally:
        _stop([vnc, *flood])  # type: ignore[list-item]
        for p in flood:
            if p.stdout is not None:
                p.stdout.close()
    # The flood is over: a complete report resolves the gone tool, and the cut itself.
    wait_until(lambda: find(op, tid, dev, "rat-behaviour", key=f["key"], status="resolved"),
               "rat-behaviour resolved by a complete report", timeout=60)
    wait_until(lambda: not findings_of(op, tid, dev, "inventory-truncated"), "the cut resolved", timeout=30)


def findings_of(op: Any, tid: str, dev: str, kind: str) -> list[dict[str, Any]]:
    from test_telemetry import findings

    return [x for x in findings(op, tid, "open") if x["device"] == dev and x["kind"] == kind]


def test_t16_a_hostile_listener_costs_the_probe_only_its_bounds() -> None:
    """Listeners that flood bytes, never answer, or answer RDP: the probe reads at most MAX_READ bytes,
    sends a silent listener exactly the 19-byte RDP Connection Request and nothing else, and ends within
    its deadline; probed sockets are cached and never probed again."""
    import threading

    from rampart.agent.inventory import detect
    from rampart.catalog.fingerprint import RDP_CONNECTION_REQUEST

    stop = threading.Event()
    received: list[bytes] = []
    flood, silent, rdp = (socket.create_server(("127.0.0.1", 0)) for _ in range(3))

    def serve(sock: socket.socket, mode: str) -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(0.2)
                if mode == "flood":
                    try:
                        for _ in range(1000):
                            conn.sendall(b"A" * 4096)
                    except OSError:
                        pass
                    continue
                got = b""
                while not stop.is_set():
                    try:
                        chunk = conn.recv(4096)
                    except TimeoutError:
                        if mode == "rdp" and got:
                            break
                        continue
                    except OSError:
                        break
                    if not chunk:
                        break
                    got += chunk
                    if mode == "rdp" and len(got) >= 19:
                        conn.sendall(bytes.fromhex("0300000b06d00000000000"))
                if mode == "silent":
                    received.append(got)

    threads = [threading.Thread(target=serve, args=(s, m), daemon=True)
               for s, m in ((flood, "flood"), (silent, "silent"), (rdp, "rdp"))]
    for t in threads:
        t.start()
    try:
        ports = {s.getsockname()[1]: name for s, name in ((flood, "flood"), (silent, "silent"), (rdp, "rdp"))}
        mine = [s for s in collect_sockets()[0] if s.state == "listen" and s.local_port in ports
                and s.pid == os.getpid()]
        assert len(mine) == 3
        cache = DetectCache()
        started = time.monotonic()
        out, skipped = probe_listeners(mine, cache)
        took = time.monotonic() - started
        assert skipped == 0 and took < detect.PROBE_DEADLINE_S + 0.5, took
        assert {ports[s.local_port]: s.protocol for s in out} == {"flood": "", "silent": "", "rdp": "rdp"}
        # Probed once in a socket's life: the next inventory connects to nothing.
        again, _ = probe_listeners(mine, cache)
        assert [s.protocol for s in again] == [s.protocol for s in out]
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(2)
        assert received == [RDP_CONNECTION_REQUEST]  # one connection, and all it ever got
    finally:
        stop.set()
        for s in (flood, silent, rdp):
            s.close()


def test_t16_crafted_marks_and_protocols_are_inert_and_sanctioning_names_the_tool() -> None:
    """A snapshot is attacker text: unknown protocols and malformed marks name nothing, control and
    bidi characters never reach a finding; sanctioning silences a sanctioned tool's listener only."""
    def proc(pid: int, exe: str, content: list[str]) -> Process:
        return Process(pid=pid, ppid=1, start_ticks=pid, start_time=1, name=Path(exe).name, exe=exe, uid=0,
                       euid=0, user="root", content=content)

    def listener(pid: int, port: int, protocol: str) -> Socket:
        return Socket(proto="tcp", state="listen", local_addr="127.0.0.1", local_port=port,
                      remote_addr="0.0.0.0", remote_port=0, inode=pid, uid=0, pid=pid, protocol=protocol)

    procs = [proc(10, "/srv/a", ["x11vnc:strings"]), proc(11, "/srv/b", []),
             proc(12, "/srv/c", ["teamviewer:magic", "Evil\u202e:build-id", "x:y:z"]),
             proc(13, "/srv/d", [])]
    socks = [listener(10, 40001, "rfb 003.008"), listener(11, 40002, "rfb 003.008"),
             listener(12, 40003, "ssh"), listener(13, 40004, "rdp\u202e")]
    inv = Inventory(collected_at=1, agent=AgentInfo(version="t", containment="none"), processes=procs,
                    sockets=socks)
    found = evaluate(inv, builtin_catalog(), sanctioned=frozenset({"x11vnc"}), now=2)
    behaviour = [f for f in found if f.kind == "rat-behaviour"]
    # x11vnc (by content) is sanctioned: its listener is not reported; the unknown VNC server is.
    assert [(f.tool, f.evidence["exe"]) for f in behaviour] == [("", "/srv/b")]
    # Unknown protocols and malformed marks name no tool and raise nothing.
    assert not [f for f in found if f.evidence.get("pid") in ("12", "13")]
    unsanctioned = evaluate(inv, builtin_catalog(), sanctioned=NOBODY, now=2)
    assert {f.evidence["exe"] for f in unsanctioned if f.kind == "rat-behaviour"} == {"/srv/a", "/srv/b"}


def test_t14_an_alert_escalates_with_its_finding(ingest: _Db) -> None:
    low = Finding(kind="rat-behaviour", severity="warning", key="rat-behaviour::rfb:/srv/v",
                  subject="v (warning)", evidence={"by": "protocol"})
    high = Finding(kind="rat-behaviour", severity="high", key=low.key, subject="v (high)",
                   evidence={"by": "protocol"})
    t = time.time()
    _report(ingest, [low], t)
    from rampart.server.models import AlertRow

    with ingest.store.read() as s:  # type: ignore[attr-defined]
        [before] = [(a.severity, a.count) for a in s.scalars(select(AlertRow).where(
            AlertRow.device_id == ingest.device))]
    assert before == ("warning", 1)
    _report(ingest, [high], t + 60)
    with ingest.store.read() as s:  # type: ignore[attr-defined]
        [after] = [(a.severity, a.count, a.subject, a.detail) for a in s.scalars(select(AlertRow).where(
            AlertRow.device_id == ingest.device))]
    assert after[:3] == ("critical", 2, "host1: v (high)") and "escalated at" in after[3]
    assert "was: v (warning)" in after[3]
