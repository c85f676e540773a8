"""Detections on the agent (H1, H2, H3, N2, S2, M6, threat T14) against real processes on this machine.

The attacker's moves are played for real: a copy of ``sleep`` named after a
catalogued remote access tool started from a temporary directory, programs
executed from a memfd or from a file deleted after start, a child process
listening on TeamViewer's port. Each is collected by the real inventory and
evaluated with the built-in catalog. The machine's own baseline must yield no
portable tool, and memory-only findings exactly for the programs that /proc
says run from memory. Pure tests with crafted inventories cover accounts, the
OS life cycle, vulnerable versions, key stability and output bounds. Only
loopback addresses are used for real sockets; other addresses appear only as
data in crafted inventories.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

import rampart.agent.findings as findings_mod
from rampart.agent.findings import DAY_S, evaluate, summarize
from rampart.agent.inventory import collect_full
from rampart.agent.inventory.processes import collect_processes
from rampart.catalog import Catalog, builtin_catalog, make_tool, tools_for_executable, tools_for_port
from rampart.wire.finding import (
    FINDING_KINDS,
    MAX_EVIDENCE,
    MAX_FINDINGS,
    MAX_KEY,
    MAX_SUBJECT,
    MAX_VALUE,
    SEVERITY,
    Finding,
)
from rampart.wire.inventory import (
    SECTION_KEYS,
    AgentInfo,
    EolStatus,
    Inventory,
    OsInfo,
    Package,
    Process,
    Service,
    Socket,
    User,
    canonical,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux /proc")

SLEEP = shutil.which("sleep") or "/bin/sleep"
CATALOG = builtin_catalog()
NOW = 1_800_000_000
NOBODY: frozenset[str] = frozenset()


# --- helpers for real processes ------------------------------------------------------------


def _wait_for(pred: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def _visible(pid: int, exe_prefix: str) -> bool:
    procs, _ = collect_processes()
    return any(p.pid == pid and (p.exe or "").startswith(exe_prefix) for p in procs)


def _inventory() -> Inventory:
    return collect_full(int(time.time()), "test", "none")


def _fs_type(path: str) -> str:
    """Filesystem type holding ``path`` (longest mount prefix), independent of the code under test."""
    best, kind = "", ""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point, fstype = line.split()[1], line.split()[2]
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, fstype
    return kind


def _of(found: list[Finding], kind: str, tool: str | None = None, pid: int | None = None) -> list[Finding]:
    return [f for f in found if f.kind == kind and (tool is None or f.tool == tool)
            and (pid is None or str(pid) in (f.evidence.get("pid"), *f.evidence.get("pids", "").split(",")))]


def _stop(proc: subprocess.Popen[Any]) -> None:
    proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture
def portable_anydesk(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A copy of sleep named ``anydesk`` in a directory under /tmp, running (a portable AnyDesk)."""
    assert [t.slug for t in tools_for_executable(CATALOG, path="/x/anydesk")] == ["anydesk"]
    folder = tmp_path / f"Downloads-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    exe = folder / "anydesk"
    shutil.copy2(SLEEP, exe)
    proc = subprocess.Popen([str(exe), "60"])
    try:
        _wait_for(lambda: _visible(proc.pid, str(exe)))
        yield exe, proc
    finally:
        _stop(proc)


def _run_from_memfd(name: str) -> subprocess.Popen[bytes]:
    fd = os.memfd_create(name)
    try:
        os.write(fd, Path(SLEEP).read_bytes())
        os.fchmod(fd, 0o700)
        proc = subprocess.Popen([f"/proc/self/fd/{fd}", "60"], pass_fds=(fd,))
    finally:
        os.close(fd)
    try:
        _wait_for(lambda: _visible(proc.pid, f"/memfd:{name}"))
    except BaseException:
        _stop(proc)
        raise
    return proc


# --- T14 / H1 / H3: a portable copy of a catalogued tool ------------------------------------


def test_t14_h3_portable_anydesk_started_from_tmp_is_reported_critical_and_unsanctioned(
        portable_anydesk: tuple[Path, subprocess.Popen[bytes]]) -> None:
    exe, proc = portable_anydesk
    found = evaluate(_inventory(), CATALOG, sanctioned=NOBODY, now=int(time.time()))

    portable = _of(found, "rat-portable", "anydesk", proc.pid)
    assert len(portable) == 1
    f = portable[0]
    assert f.severity == "critical"
    assert f.key == f"rat-portable:anydesk:{exe}"
    assert f.evidence["exe"] == str(exe) and f.evidence["ppid"] == str(os.getpid())
    assert f.evidence["cmdline"] == f"{exe} 60" and f.evidence["sanctioned"] == "no"
    assert "anydesk" in f.subject.lower() and str(exe) in f.subject

    # One finding per tool, whatever runs on this host meanwhile (a parallel test pass may run
    # its own anydesk): ours is among the instances it names.
    unsanctioned = _of(found, "rat-unsanctioned", "anydesk")
    assert len(unsanctioned) == 1
    assert unsanctioned[0].severity == "high" and unsanctioned[0].key == "rat-unsanctioned:anydesk"
    assert unsanctioned[0].evidence["found_by"].split(",")[0] == "process"
    assert _of(found, "rat-unsanctioned", "anydesk", proc.pid) == unsanctioned

    # A program on a memory filesystem is also memory-only; on disk it is not.
    on_tmpfs = _fs_type(str(exe)) in ("tmpfs", "ramfs")
    assert bool(_of(found, "memory-only", pid=proc.pid)) == on_tmpfs


def test_t14_sanctioning_anydesk_silences_unsanctioned_but_never_portable_use(
        portable_anydesk: tuple[Path, subprocess.Popen[bytes]]) -> None:
    """Attackers bring sanctioned tools too (CISA AA23-025A): portable use is reported regardless."""
    exe, proc = portable_anydesk
    found = evaluate(_inventory(), CATALOG, sanctioned=frozenset({"anydesk"}), now=int(time.time()))
    assert _of(found, "rat-unsanctioned", "anydesk") == []
    portable = _of(found, "rat-portable", "anydesk", proc.pid)
    assert [(f.key, f.severity, f.evidence["sanctioned"]) for f in portable] == [
        (f"rat-portable:anydesk:{exe}", "critical", "yes")]


def test_t14_restarted_portable_tool_keeps_its_finding_key(
        portable_anydesk: tuple[Path, subprocess.Popen[bytes]]) -> None:
    exe, first = portable_anydesk
    found = evaluate(_inventory(), CATALOG, sanctioned=NOBODY, now=int(time.time()))
    before = _of(found, "rat-portable", "anydesk", first.pid)
    _stop(first)
    second = subprocess.Popen([str(exe), "60"])
    try:
        _wait_for(lambda: _visible(second.pid, str(exe)))
        after = _of(evaluate(_inventory(), CATALOG, sanctioned=NOBODY, now=int(time.time())), "rat-portable",
                    "anydesk", second.pid)
    finally:
        _stop(second)
    assert second.pid != first.pid
    assert [f.key for f in before] == [f.key for f in after] == [f"rat-portable:anydesk:{exe}"]
    assert before[0].evidence["pid"] == str(first.pid) and after[0].evidence["pid"] == str(second.pid)


# --- H2: memory-only programs -----------------------------------------------------------------


def test_h2_program_executed_from_a_memfd_is_reported_critical_with_its_pid() -> None:
    name = f"rampart-findings-{uuid.uuid4().hex[:8]}"
    proc = _run_from_memfd(name)
    try:
        inv = _inventory()
        found = evaluate(inv, CATALOG, sanctioned=NOBODY, now=int(time.time()))
        silenced = evaluate(inv, CATALOG, sanctioned=NOBODY, now=int(time.time()),
                            agent_pids=frozenset({proc.pid}))
    finally:
        _stop(proc)
    mem = _of(found, "memory-only", pid=proc.pid)
    assert len(mem) == 1
    f = mem[0]
    assert f.severity == "critical" and f.tool == ""
    assert f.evidence["reason"] == "memfd" and f.evidence["pid"] == str(proc.pid)
    assert f.evidence["exe"] == f"/memfd:{name}" and f.key == f"memory-only::/memfd:{name}"
    assert f.evidence["parent_exe"] and f.evidence["ppid"] == str(os.getpid())
    # The agent's own process is never a memory-only finding (it is told its pids).
    assert _of(silenced, "memory-only", pid=proc.pid) == []


def test_h2_memfd_named_after_a_sanctioned_tool_is_still_reported() -> None:
    proc = _run_from_memfd("rustdesk")
    try:
        inv = _inventory()
        open_found = evaluate(inv, CATALOG, sanctioned=NOBODY, now=int(time.time()))
        sanctioned = evaluate(inv, CATALOG, sanctioned=frozenset({"rustdesk"}), now=int(time.time()))
    finally:
        _stop(proc)
    for found in (open_found, sanctioned):
        mem = _of(found, "memory-only", pid=proc.pid)
        assert [(f.tool, f.severity, f.evidence["reason"]) for f in mem] == [
            ("rustdesk", "critical", "memfd")]
    # Another rustdesk may run on this host meanwhile (a parallel test pass): ours is named.
    assert len(_of(open_found, "rat-unsanctioned", "rustdesk", proc.pid)) == 1
    assert _of(sanctioned, "rat-unsanctioned", "rustdesk") == []


def test_h2_program_whose_file_is_deleted_after_start_is_reported(tmp_path: Path) -> None:
    exe = tmp_path / f"dropper-{uuid.uuid4().hex[:8]}"
    shutil.copy2(SLEEP, exe)
    on_tmpfs = _fs_type(str(exe)) in ("tmpfs", "ramfs")
    proc = subprocess.Popen([str(exe), "60"])
    try:
        _wait_for(lambda: _visible(proc.pid, str(exe)))
        exe.unlink()
        found = evaluate(_inventory(), CATALOG, sanctioned=NOBODY, now=int(time.time()))
    finally:
        _stop(proc)
    mem = _of(found, "memory-only", pid=proc.pid)
    expected = ("memory-filesystem", "critical") if on_tmpfs else ("deleted", "high")
    assert [(f.evidence["reason"], f.severity, f.evidence["exe"]) for f in mem] == [(*expected, str(exe))]


# --- N2: remote access ports --------------------------------------------------------------------

_LISTENER = """
import json, socket, sys, time
candidates, banned = json.loads(sys.argv[1]), set(json.loads(sys.argv[2]))
for _ in range(200):
    port = candidates.pop(0) if candidates else 0
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        continue
    if s.getsockname()[1] in banned:
        s.close()
        continue
    s.listen()
    print(s.getsockname()[1], flush=True)
    time.sleep(60)
    break
"""


def _listener(candidates: list[int], banned: set[int]) -> tuple[subprocess.Popen[str], int]:
    argv = [sys.executable, "-c", _LISTENER, json.dumps(candidates), json.dumps(sorted(banned))]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip():
        _stop(proc)
        raise AssertionError("the listener could not bind")
    return proc, int(line)


def test_n2_child_listening_on_teamviewer_port_is_reported_and_an_ordinary_port_is_not() -> None:
    catalogued = sorted(CATALOG.by_port)
    assert tools_for_port(CATALOG, 5938) and tools_for_port(CATALOG, 443) == ()
    # TeamViewer's port, or if busy another catalogued port that is not shared by ordinary services.
    rat, rat_port = _listener([5938, *[p for p in catalogued if p != 5938]], set())
    plain, plain_port = None, 0
    try:
        assert rat_port in CATALOG.by_port
        plain, plain_port = _listener([], set(catalogued))
        _wait_for(lambda: _socket_visible(rat.pid, rat_port) and _socket_visible(plain.pid, plain_port))
        inv = _inventory()
        found = evaluate(inv, CATALOG, sanctioned=NOBODY, now=int(time.time()))
        port_tools = frozenset(t.slug for t in tools_for_port(CATALOG, rat_port))
        all_sanctioned = evaluate(inv, CATALOG, sanctioned=port_tools, now=int(time.time()))
    finally:
        _stop(rat)
        if plain is not None:
            _stop(plain)
    ports = _of(found, "rat-port", pid=rat.pid)
    assert len(ports) == 1
    f = ports[0]
    assert f.severity == "warning" and f.evidence["direction"] == "listen"
    assert f.evidence["port"] == str(rat_port) and f.evidence["local"] == "127.0.0.1"
    assert set(f.evidence["tools"].split(",")) == port_tools
    if rat_port == 5938:
        assert f.tool == "teamviewer" and "TeamViewer" in f.subject
    assert "pid" not in f.key and str(rat.pid) not in f.key
    # The ordinary listener on an ephemeral port is nothing.
    assert _of(found, "rat-port", pid=plain.pid) == []
    assert not any(x.evidence.get("port") == str(plain_port) for x in found)
    # N2 "except for legitimate tools": when every tool known for the port is sanctioned, it is explained.
    assert _of(all_sanctioned, "rat-port", pid=rat.pid) == []


def _socket_visible(pid: int, port: int) -> bool:
    from rampart.agent.inventory.sockets import collect_sockets
    socks, _ = collect_sockets()
    return any(s.pid == pid and s.local_port == port and s.state == "listen" for s in socks)


# --- this machine's baseline ----------------------------------------------------------------------


def _memory_only_exes_from_proc() -> dict[int, str]:
    """pid -> executable of every process that /proc says runs from memory or a deleted file.

    Written independently of the collector: a memfd target, a target on tmpfs/ramfs, or a target
    marked " (deleted)" outside the root-owned system trees.
    """
    lines = Path("/proc/self/mounts").read_text().splitlines()
    memory = [line.split()[1] for line in lines if line.split()[2] in ("tmpfs", "ramfs")]
    system = ("/usr/", "/bin/", "/sbin/", "/lib/", "/lib32/", "/lib64/", "/libx32/", "/opt/", "/snap/",
              "/nix/store/", "/gnu/store/")
    out: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            target = os.readlink(f"/proc/{entry}/exe")
        except OSError:
            continue
        deleted = target.endswith(" (deleted)")
        path = target.removesuffix(" (deleted)")
        on_memory = any(path == m or path.startswith(m.rstrip("/") + "/") for m in memory)
        if path.startswith("/memfd:") or on_memory or (deleted and not path.startswith(system)):
            out[int(entry)] = path
    return out


def _started_by_a_test_run(pid: int) -> bool:
    """True when a pytest process is among pid's ancestors (or pid has already gone).

    ./run-tests runs its SQLite and PostgreSQL passes at once on this host, and the other pass
    plants real remote access tools from its own temporary folders; those are not this machine's
    baseline. A process that exited before we could look was transient, hence not baseline either.
    """
    seen = 0
    while pid > 1 and seen < 64:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if b"pytest" in cmdline:
            return True
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        seen += 1
    return False


def test_baseline_of_this_machine_has_no_portable_tool_and_only_true_memory_only_programs() -> None:
    """No test process runs here. Expected hits are exact: on this machine the sandbox that runs the
    session executes its helpers from sealed memfds, which *are* programs loaded only in memory and
    must be reported; anything else /proc shows as memory-only must be too, and nothing more."""
    before = _memory_only_exes_from_proc()
    found = evaluate(_inventory(), CATALOG, sanctioned=NOBODY, now=int(time.time()),
                     agent_pids=frozenset({os.getpid()}))
    after = _memory_only_exes_from_proc()

    assert [f for f in _of(found, "rat-portable") if not _started_by_a_test_run(int(f.evidence["pid"]))] == []
    reported = {f.evidence["exe"] for f in _of(found, "memory-only")}
    stable = {exe for pid, exe in before.items() if after.get(pid) == exe}
    assert stable <= reported <= set(before.values()) | set(after.values())
    assert not _of(found, "memory-only", pid=os.getpid())
    for f in _of(found, "memory-only"):
        assert f.evidence["reason"] in ("memfd", "memory-filesystem", "deleted")
        assert f.severity == ("high" if f.evidence["reason"] == "deleted" else "critical")


# --- crafted inventories (pure) -------------------------------------------------------------------


def _inv(**sections: Any) -> Inventory:
    for name, items in list(sections.items()):
        if name in SECTION_KEYS:
            sections[name] = canonical(items, SECTION_KEYS[name])
    return Inventory(collected_at=NOW, agent=AgentInfo(version="t", containment="none"), **sections)


def _proc(pid: int, exe: str | None, *, name: str = "", cmdline: list[str] | None = None, ppid: int = 1,
          start: int = 1000, deleted: bool = False, memory: bool = False, user: str = "bob") -> Process:
    base = name or (exe or "x").rsplit("/", 1)[-1][:15]
    argv = cmdline if cmdline is not None else [exe or base]
    return Process(pid=pid, ppid=ppid, start_ticks=start, start_time=NOW - 100, name=base, exe=exe,
                   exe_deleted=deleted, memory_only=memory, cmdline=argv, uid=1000, euid=1000, user=user)


def _user(name: str, last: int | None, *, login_shell: str = "/bin/bash", pw_state: str = "set",
          uid: int = 1000) -> User:
    login = not login_shell.endswith(("nologin", "false"))
    return User(name=name, uid=uid, gid=uid, home=f"/home/{name}", shell=login_shell, login_shell=login,
                password_state=pw_state, last_login=last)  # type: ignore[arg-type]


def _kinds(found: list[Finding]) -> list[tuple[str, str]]:
    return [(f.kind, f.tool) for f in found]


def test_s2_dormant_and_never_used_login_accounts_are_reported() -> None:
    users = [
        _user("old", NOW - 31 * DAY_S, uid=1001),
        _user("edge", NOW - 30 * DAY_S, uid=1002),
        _user("recent", NOW - 29 * DAY_S, uid=1003),
        _user("never", None, uid=1004),
        _user("locked", None, pw_state="locked", uid=1005),
        _user("daemon", None, login_shell="/usr/sbin/nologin", uid=1006),
        _user("noshadow", NOW - 400 * DAY_S, pw_state="unknown", uid=1007),
        _user("future", NOW + 5 * DAY_S, uid=1008),
    ]
    found = evaluate(_inv(users=users), CATALOG, sanctioned=NOBODY, now=NOW)
    by_user = {f.evidence["user"]: f for f in found if f.kind == "dormant-local-user"}
    assert sorted(by_user) == ["edge", "never", "noshadow", "old"]
    assert by_user["old"].evidence["days_idle"] == "31" and by_user["old"].severity == "warning"
    assert by_user["old"].key == "dormant-local-user::old"
    assert by_user["never"].evidence["last_login"] == "never" and "never" in by_user["never"].subject
    assert by_user["old"].evidence["last_login"] == "2026-12-15T08:00:00Z"
    # The period is the caller's.
    strict = evaluate(_inv(users=users), CATALOG, sanctioned=NOBODY, now=NOW, dormant_days=400)
    assert sorted(f.evidence["user"] for f in strict) == ["never", "noshadow"]


def test_m6_end_of_life_os_is_reported_and_current_or_unknown_is_not() -> None:
    def os_info(status: str) -> OsInfo:
        eol = EolStatus(status=status, product="debian", release="10", eol_date="2024-06-30",  # type: ignore[arg-type]
                        source="built-in")
        return OsInfo(id="debian", name="Debian GNU/Linux", version_id="10", kernel_release="6.1.0",
                      kernel_version="#1", arch="x86_64", hostname="h", boot_time=1, eol=eol)

    found = evaluate(_inv(os=os_info("eol")), CATALOG, sanctioned=NOBODY, now=NOW)
    assert [(f.kind, f.key, f.severity, f.evidence["eol_date"]) for f in found] == [
        ("eol-os", "eol-os::debian:10", "warning", "2024-06-30")]
    assert "end of life on 2024-06-30" in found[0].subject
    for status in ("current", "unknown"):
        assert evaluate(_inv(os=os_info(status)), CATALOG, sanctioned=NOBODY, now=NOW) == []
    assert evaluate(_inv(), CATALOG, sanctioned=NOBODY, now=NOW) == []


def _pkg(name: str, version: str, source: str = "", status: str = "installed") -> Package:
    return Package(manager="dpkg", name=name, arch="amd64", version=version, source=source, status=status)


def test_s1_vulnerable_tool_version_from_its_package_even_when_sanctioned() -> None:
    inv = _inv(packages=[_pkg("anydesk", "1:5.5.2-1")])
    found = evaluate(inv, CATALOG, sanctioned=NOBODY, now=NOW)
    assert sorted(_kinds(found)) == [("rat-unsanctioned", "anydesk"), ("vulnerable-tool", "anydesk")]
    vuln = _of(found, "vulnerable-tool")[0]
    assert vuln.severity == "high" and vuln.key == "vulnerable-tool:anydesk:anydesk:amd64"
    assert vuln.evidence["cves"] == "CVE-2020-13160" and vuln.evidence["fixed_in"] == "5.5.3"
    assert vuln.evidence["version"] == "1:5.5.2-1"
    unsanctioned = _of(found, "rat-unsanctioned")[0]
    assert unsanctioned.evidence["found_by"] == "package" and unsanctioned.evidence["package"] == "anydesk"
    # Sanctioning a tool never hides its known vulnerability.
    sanctioned = evaluate(inv, CATALOG, sanctioned=frozenset({"anydesk"}), now=NOW)
    assert _kinds(sanctioned) == [("vulnerable-tool", "anydesk")]
    assert sanctioned[0].evidence["sanctioned"] == "yes"
    # The fixed version, and a removed package with only its configuration left, are not vulnerable.
    assert _of(evaluate(_inv(packages=[_pkg("anydesk", "5.5.3")]), CATALOG, sanctioned=NOBODY, now=NOW),
               "vulnerable-tool") == []
    assert evaluate(_inv(packages=[_pkg("anydesk", "5.0", status="config-files")]), CATALOG,
                    sanctioned=NOBODY, now=NOW) == []


def test_s1_vulnerable_ranges_of_another_platform_do_not_apply() -> None:
    # TeamViewer's listed ranges are Windows ones; a Linux package of an old version is only unsanctioned.
    found = evaluate(_inv(packages=[_pkg("teamviewer", "15.0.1")]), CATALOG, sanctioned=NOBODY, now=NOW)
    assert _kinds(found) == [("rat-unsanctioned", "teamviewer")]


def test_s1_packages_are_tied_to_tools_by_source_package_once_per_tool() -> None:
    pkgs = [_pkg("tigervnc-standalone-server", "1.9.0+dfsg-3", source="tigervnc"),
            _pkg("tigervnc-common", "1.9.0+dfsg-3", source="tigervnc"), _pkg("coreutils", "9.1-1")]
    found = evaluate(_inv(packages=pkgs), CATALOG, sanctioned=NOBODY, now=NOW)
    assert sorted(_kinds(found)) == [("rat-unsanctioned", "tigervnc"), ("vulnerable-tool", "tigervnc")]
    vuln = _of(found, "vulnerable-tool")[0]
    assert vuln.evidence["packages"] == "2" and vuln.evidence["cves"].count("CVE-2019-") == 5


def test_h1_catalogued_services_count_as_installed_unless_not_found() -> None:
    svcs = [Service(unit="x11vnc.service", load="loaded", active="active", sub="running", enabled="enabled"),
            Service(unit="chrome-remote-desktop@bob.service", load="loaded", active="inactive", sub="dead"),
            Service(unit="teamviewerd.service", load="not-found", active="inactive", sub="dead"),
            Service(unit="ssh.service", load="loaded", active="active", sub="running")]
    found = evaluate(_inv(services=svcs), CATALOG, sanctioned=NOBODY, now=NOW)
    assert sorted(_kinds(found)) == [
        ("rat-unsanctioned", "chrome-remote-desktop"), ("rat-unsanctioned", "x11vnc")]
    x11 = _of(found, "rat-unsanctioned", "x11vnc")[0]
    assert x11.evidence["found_by"] == "service" and x11.evidence["service_state"] == "active/running"


def test_h1_installed_tool_in_its_install_path_is_unsanctioned_not_portable() -> None:
    inv = _inv(processes=[_proc(500, "/usr/bin/anydesk", cmdline=["/usr/bin/anydesk", "--service"])],
               packages=[_pkg("anydesk", "6.3.0")])
    found = evaluate(inv, CATALOG, sanctioned=NOBODY, now=NOW)
    assert _kinds(found) == [("rat-unsanctioned", "anydesk")]
    assert found[0].evidence["found_by"] == "process,package" and found[0].evidence["version"] == "6.3.0"
    assert evaluate(inv, CATALOG, sanctioned=frozenset({"anydesk"}), now=NOW) == []


def test_h1_sanctioning_by_alias_and_unknown_names_silence_nothing_else() -> None:
    inv = _inv(processes=[_proc(700, "/opt/NinjaRMMAgent/programdata/ninjarmm-linagent")])
    assert _kinds(evaluate(inv, CATALOG, sanctioned=NOBODY, now=NOW)) == [("rat-unsanctioned", "ninjaone")]
    assert evaluate(inv, CATALOG, sanctioned=frozenset({"ninjarmm"}), now=NOW) == []
    assert _kinds(evaluate(inv, CATALOG, sanctioned=frozenset({"no-such-tool", ""}), now=NOW)) == [
        ("rat-unsanctioned", "ninjaone")]


def test_h3_windows_tool_under_wine_is_judged_by_its_windows_path() -> None:
    wine = _proc(800, "/usr/bin/wine64-preloader", name="anydesk.exe",
                 cmdline=["C:\\users\\bob\\Downloads\\AnyDesk.exe"])
    renamed = _proc(801, "/usr/bin/python3", name="anydesk", cmdline=["python3", "x.py"])
    found = evaluate(_inv(processes=[wine, renamed]), CATALOG, sanctioned=NOBODY, now=NOW)
    portable = _of(found, "rat-portable")
    assert [(f.tool, f.evidence["pid"], f.evidence["location"]) for f in portable] == [
        ("anydesk", "800", "C:\\users\\bob\\Downloads\\AnyDesk.exe")]
    # Known only by its process name, the python process is the tool but its location is not judged.
    unsanctioned = _of(found, "rat-unsanctioned", "anydesk")[0]
    assert unsanctioned.evidence["processes"] == "2" and unsanctioned.evidence["pids"] == "800,801"


def test_h2_kernel_threads_agent_and_upgraded_system_programs_are_not_memory_only() -> None:
    procs = [
        _proc(2, "/memfd:x", ppid=0, deleted=True, memory=True),                     # kthreadd
        _proc(30, "/memfd:y", ppid=2, deleted=True, memory=True),                    # a kernel thread
        _proc(31, None, deleted=True, memory=True),                                  # unreadable
        _proc(32, "/memfd:agent", deleted=True, memory=True),                        # the agent itself
        _proc(33, "/usr/sbin/sshd", deleted=True),                                   # replaced by apt
        _proc(34, "/opt/google/chrome/chrome", deleted=True),                        # /opt: not exempt
        _proc(35, "/home/bob/.cache/x", deleted=True),                               # dropped and deleted
        _proc(36, "/usr/../home/bob/y", deleted=True),                               # not fooled by ".."
        _proc(37, "/dev/shm/z", memory=True),                                        # on tmpfs
    ]
    found = evaluate(_inv(processes=procs), CATALOG, sanctioned=NOBODY, now=NOW, agent_pids=frozenset({32}))
    mem = {f.evidence["pid"]: (f.evidence["reason"], f.severity) for f in _of(found, "memory-only")}
    # /opt is not a package-managed tree (issue 15: a renamed tool copied there and deleted after start
    # was invisible); an upgraded /opt program is a "deleted" (high) finding until it restarts.
    assert mem == {"34": ("deleted", "high"), "35": ("deleted", "high"), "36": ("deleted", "high"),
                   "37": ("memory-filesystem", "critical")}


def test_keys_are_stable_across_pid_changes_and_same_program_is_one_finding() -> None:
    def snapshot(pids: list[int], start: int) -> list[Finding]:
        procs = [_proc(pid, "/tmp/x/rustdesk", start=start + i) for i, pid in enumerate(pids)]
        procs.append(_proc(pids[0] + 1000, "/memfd:payload", deleted=True, memory=True, start=start))
        socks = [Socket(proto="tcp", state="listen", local_addr="0.0.0.0", local_port=21116,
                        remote_addr="0.0.0.0", remote_port=0, inode=start, uid=1000, pid=pids[0])]
        return evaluate(_inv(processes=procs, sockets=socks), CATALOG, sanctioned=NOBODY, now=NOW)

    a, b = snapshot([100, 101], 5000), snapshot([4242], 9000)
    assert [f.key for f in a] == [f.key for f in b]
    assert [f.kind for f in a] == ["memory-only", "rat-portable", "rat-unsanctioned", "rat-port"]
    portable_a = _of(a, "rat-portable")[0]
    assert portable_a.evidence["instances"] == "2" and portable_a.evidence["pids"] == "100,101"
    assert _of(b, "rat-portable")[0].evidence["pid"] == "4242"
    assert not any(str(pid) in f.key for f in a + b for pid in (100, 101, 4242, 1100, 5242))


def test_n2_inbound_ephemeral_ports_and_loopback_peers_are_not_rat_ports() -> None:
    def sock(state: str, lport: int, raddr: str, rport: int, inode: int, pid: int | None = 10) -> Socket:
        return Socket(proto="tcp", state=state, local_addr="127.0.0.1" if state == "listen" else "192.0.2.1",  # type: ignore[arg-type]
                      local_port=lport, remote_addr=raddr, remote_port=rport, inode=inode, uid=0, pid=pid)

    procs = [_proc(10, "/usr/bin/curl"), _proc(11, "/usr/bin/wget")]
    socks = [
        sock("listen", 22, "0.0.0.0", 0, 1),
        sock("established", 22, "192.0.2.9", 41641, 2),    # inbound ssh from Tailscale's port number
        sock("established", 40000, "127.0.0.1", 5938, 3, pid=11),  # loopback peer
        sock("established", 40002, "::ffff:127.0.0.1", 5938, 5, pid=11),  # the same, IPv4-mapped
        sock("established", 40001, "192.0.2.7", 5938, 4),  # outbound to TeamViewer's port
    ]
    found = evaluate(_inv(processes=procs, sockets=socks), CATALOG, sanctioned=NOBODY, now=NOW)
    assert [(f.kind, f.tool, f.evidence["direction"], f.evidence["remote_port"]) for f in found] == [
        ("rat-port", "teamviewer", "outbound", "5938")]
    assert found[0].key == "rat-port:teamviewer:connect:port 5938:/usr/bin/curl"


def test_n2_catalogued_address_and_sanctioned_owner() -> None:
    tool = make_tool("Relay Tool", category="remote_access", platforms=["linux"], executables=["relaytool"],
                     addresses=["8.8.4.4"], install_paths=["/opt/relaytool"])
    cat = Catalog([*CATALOG.tools, tool])
    procs = [_proc(20, "/opt/relaytool/relaytool"), _proc(21, "/opt/teamviewer/tv_bin/teamviewerd")]
    socks = [Socket(proto="tcp", state="established", local_addr="192.0.2.1", local_port=50000,
                    remote_addr="8.8.4.4", remote_port=443, inode=1, uid=0, pid=20),
             Socket(proto="tcp", state="listen", local_addr="0.0.0.0", local_port=5938, remote_addr="0.0.0.0",
                    remote_port=0, inode=2, uid=0, pid=21),
             Socket(proto="tcp", state="listen", local_addr="0.0.0.0", local_port=5900, remote_addr="0.0.0.0",
                    remote_port=0, inode=3, uid=0, pid=None)]
    found = evaluate(_inv(processes=procs, sockets=socks), cat, sanctioned=NOBODY, now=NOW)
    ports = {(f.tool, f.evidence["direction"]) for f in _of(found, "rat-port")}
    assert ports == {("relay-tool", "outbound"), ("teamviewer", "listen"), ("", "listen")}
    vnc = [f for f in _of(found, "rat-port") if f.evidence["port"] == "5900"][0]
    assert "realvnc" in vnc.evidence["tools"].split(",") and vnc.subject.startswith("Unknown process listens")
    inv = _inv(processes=procs, sockets=socks)
    quiet = evaluate(inv, cat, sanctioned=frozenset({"relay-tool", "teamviewer"}), now=NOW)
    # The sanctioned tools' own traffic is explained; sanctioning one VNC does not explain port 5900.
    assert [f.evidence["port"] for f in _of(quiet, "rat-port")] == ["5900"]
    assert _of(quiet, "rat-unsanctioned") == []
    assert _of(evaluate(inv, cat, sanctioned=frozenset({"realvnc"}), now=NOW), "rat-port", "") != []


def test_t13_hostile_strings_give_bounded_one_line_findings() -> None:
    evil = "/tmp/" + "a\n\x1b[31m\u202e" * 500 + "/anydesk"  # within PATH_MAX
    twin = evil[:-len("/anydesk")] + "b/anydesk"
    args = ["x" * 4096] * 256
    procs = [_proc(1, evil, cmdline=args, name="anydesk", deleted=True),
             _proc(2, twin, cmdline=args, name="anydesk", deleted=True, user="u\u2028" * 60)]
    users = [_user("n\nm" * 80, None)]
    found = evaluate(_inv(processes=procs, users=users), CATALOG, sanctioned=NOBODY, now=NOW)
    assert {f.kind for f in found} == {
        "memory-only", "rat-portable", "rat-unsanctioned", "dormant-local-user"}
    for f in found:
        assert len(f.key) <= MAX_KEY and len(f.subject) <= MAX_SUBJECT and len(f.evidence) <= MAX_EVIDENCE
        for text in (f.key, f.subject, *f.evidence.values()):
            assert not any(c in text for c in "\n\r\x1b\u202e\u2028")
        assert all(len(v) <= MAX_VALUE for v in f.evidence.values())
    portable_keys = [f.key for f in _of(found, "rat-portable")]
    assert len(portable_keys) == len(set(portable_keys)) == 2  # long paths differing at the end stay apart
    assert all(f.evidence["exe"].endswith("/anydesk") for f in _of(found, "rat-portable"))
    data = msgspec.json.encode(found)
    assert msgspec.json.decode(data, type=list[Finding]) == found


def test_h3_newline_in_a_directory_name_does_not_hide_portable_use() -> None:
    # GetScreen has no Linux install paths: only the temporary-location rule can catch it.
    procs = [_proc(60, "/tmp/a\nb/getscreen"), _proc(61, "/home/bob/x\ry/getscreen")]
    found = evaluate(_inv(processes=procs), CATALOG, sanctioned=frozenset({"getscreen"}), now=NOW)
    assert sorted(f.evidence["pid"] for f in _of(found, "rat-portable", "getscreen")) == ["60", "61"]
    assert all("\n" not in f.key and "\r" not in f.key for f in found)


def test_t13_finding_refuses_unbounded_or_unknown_content() -> None:
    good = {"kind": "eol-os", "severity": "warning", "key": "k", "subject": "s", "evidence": {"a": "b"}}
    assert msgspec.json.decode(json.dumps(good), type=Finding).key == "k"
    for bad in ({**good, "extra": 1}, {**good, "kind": "rat"}, {**good, "evidence": {"a": "x" * 257}},
                {**good, "evidence": {"Bad-Name": "x"}}, {**good, "subject": "two\nlines"},
                {**good, "evidence": {f"k{i}": "v" for i in range(MAX_EVIDENCE + 1)}},
                {**good, "tool": "Not A Slug"},
                {**good, "key": "k" * (MAX_KEY + 1)}):
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(json.dumps(bad), type=Finding)
    with pytest.raises(ValueError):
        Finding(kind="eol-os", severity="warning", key="k", subject="s",
                evidence={"a": "x" * (MAX_VALUE + 1)})
    with pytest.raises(ValueError):
        Finding(kind="eol-os", severity="warning", key="k\x00", subject="s")


def test_misuse_is_refused() -> None:
    inv = _inv()
    for kwargs in ({"dormant_days": 0}, {"dormant_days": -1}, {"dormant_days": True}, {"dormant_days": 36501},
                   {"now": -1}, {"sanctioned": {"anydesk"}}, {"sanctioned": frozenset({1})},
                   {"agent_pids": {1}}):
        args: dict[str, Any] = {"sanctioned": NOBODY, "now": NOW, **kwargs}
        with pytest.raises(ValueError):
            evaluate(inv, CATALOG, **args)


def test_result_is_capped_most_severe_first_and_summarized() -> None:
    users = [_user(f"u{i:05d}", None, uid=2000 + i) for i in range(MAX_FINDINGS + 500)]
    procs = [_proc(9, "/memfd:payload", deleted=True, memory=True)]
    found = evaluate(_inv(users=users, processes=procs), CATALOG, sanctioned=NOBODY, now=NOW)
    assert len(found) == MAX_FINDINGS
    assert found[0].kind == "memory-only" and found[0].severity == "critical"
    counts = summarize(found)
    assert list(counts) == list(FINDING_KINDS)
    assert counts["memory-only"] == 1 and counts["dormant-local-user"] == MAX_FINDINGS - 1
    assert counts["eol-os"] == 0 and sum(counts.values()) == MAX_FINDINGS
    assert summarize([]) == dict.fromkeys(FINDING_KINDS, 0)


def test_every_kind_has_a_documented_severity_and_row() -> None:
    doc = findings_mod.__doc__ or ""
    assert set(SEVERITY) == set(FINDING_KINDS)
    for kind in FINDING_KINDS:
        assert f"\n    {kind}" in doc and f"\n- {kind}:" in doc, kind


def test_public_surface_is_locked() -> None:
    assert sorted(findings_mod.__all__) == ["DAY_S", "ROOT_OWNED_TREES", "evaluate", "summarize"]
    for name in findings_mod.__all__:
        assert hasattr(findings_mod, name), name
