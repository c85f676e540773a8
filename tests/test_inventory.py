"""Agent inventory (requirements K1 monitoring, H2, M6, S2, N2) against this real machine.

Processes, memfd executables, sockets and packages are real: the tests start
programs, open loopback sockets and compare with what the OS's own tools say.
Only loopback addresses (127.0.0.0/8, ::1) are used. Parsers are fed crafted
and random input: a hostile or corrupt file never crashes a collector, and a
failing collector never takes the others down.
"""

from __future__ import annotations

import datetime as dt
import os
import pwd
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rampart.agent.inventory as inventory
from rampart.agent.inventory import UpdatesCache, collect_full, eol_status, load_table, next_delay
from rampart.agent.inventory import collect as collect_mod
from rampart.agent.inventory._util import CommandError, run
from rampart.agent.inventory.eol import BUILTIN, parse_distro_info, release_key
from rampart.agent.inventory.packages import (
    DPKG_STATUS,
    collect_dpkg,
    collect_updates,
    dnf_updates,
    parse_apt_policy,
    parse_dnf_check_update,
    parse_dpkg_status,
    parse_rpm_qa,
)
from rampart.agent.inventory.processes import (
    classify_exe,
    collect_processes,
    parse_stat,
    redact_cmdline,
    split_cmdline,
)
from rampart.agent.inventory.services import merge_services, parse_list_units, parse_show, parse_unit_files
from rampart.agent.inventory.sockets import collect_sockets, decode_address, parse_proc_net
from rampart.agent.inventory.system import (
    block_filesystems,
    parse_cpuinfo,
    parse_meminfo,
    parse_mounts,
    parse_os_release,
)
from rampart.agent.inventory.users import (
    COMPAT32,
    TIME64,
    USER_PROCESS,
    collect_users,
    parse_lastlog,
    parse_wtmp,
)
from rampart.wire.inventory import (
    SECTION_KEYS,
    AgentInfo,
    CpuTicks,
    Disk,
    DiskUsage,
    EolStatus,
    Hardware,
    Inventory,
    InventoryLimits,
    Metrics,
    OsInfo,
    Package,
    Patching,
    Process,
    Service,
    Socket,
    Update,
    User,
    canonical,
    decode,
    encode,
)
from rampart.wire.inventory_delta import Delta, DeltaError, apply, decode_delta, diff, encode_delta

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux /proc")

HAS_DPKG = os.path.exists(DPKG_STATUS) and shutil.which("dpkg-query") is not None
SLEEP = shutil.which("sleep") or "/bin/sleep"


def _now() -> int:
    return int(time.time())


def _fs_type(path: str) -> str:
    """Filesystem type holding ``path`` (longest mount prefix), independent of the code under test."""
    best, kind = "", ""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        point = parts[1]
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind


def _wait_for(pred: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def _find_process(pid: int) -> Process | None:
    procs, _ = collect_processes()
    return next((p for p in procs if p.pid == pid), None)


@pytest.fixture
def copied_sleep(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A copy of sleep under a unique name, running."""
    exe = tmp_path / f"rampart-inv-{uuid.uuid4().hex[:12]}"
    shutil.copy2(SLEEP, exe)
    proc = subprocess.Popen([str(exe), "60"])
    try:
        _wait_for(lambda: (p := _find_process(proc.pid)) is not None and p.exe == str(exe))
        yield exe, proc
    finally:
        proc.kill()
        proc.wait()


# --- processes (H2) ------------------------------------------------------------------


def test_started_process_appears_with_exe_cmdline_parent_and_user(
        copied_sleep: tuple[Path, subprocess.Popen[bytes]]) -> None:
    exe, proc = copied_sleep
    p = _find_process(proc.pid)
    assert p is not None
    assert p.exe == str(exe)
    assert p.cmdline == [str(exe), "60"] and not p.cmdline_truncated
    assert p.ppid == os.getpid()
    assert p.uid == os.getuid() and p.euid == os.geteuid()
    assert p.user == pwd.getpwuid(os.geteuid()).pw_name
    assert p.name == exe.name[:15]  # the kernel's comm is 15 characters
    assert abs(p.start_time - time.time()) < 30
    assert not p.exe_deleted
    assert p.memory_only == (_fs_type(str(exe)) in ("tmpfs", "ramfs"))


def test_h2_deleting_the_executable_on_disk_flips_exe_deleted(
        copied_sleep: tuple[Path, subprocess.Popen[bytes]]) -> None:
    exe, proc = copied_sleep
    exe.unlink()
    p = _find_process(proc.pid)
    assert p is not None
    assert p.exe_deleted
    assert p.exe == str(exe)  # the kernel's " (deleted)" suffix is not part of the path


def test_h2_program_run_from_memfd_is_flagged_memory_only() -> None:
    name = f"rampart-memfd-{uuid.uuid4().hex[:8]}"
    fd = os.memfd_create(name)
    try:
        os.write(fd, Path(SLEEP).read_bytes())
        os.fchmod(fd, 0o700)
        proc = subprocess.Popen([f"/proc/self/fd/{fd}", "60"], pass_fds=(fd,))
    finally:
        os.close(fd)
    try:
        _wait_for(lambda: (p := _find_process(proc.pid)) is not None and (p.exe or "").startswith("/memfd:"))
        p = _find_process(proc.pid)
        assert p is not None
        assert p.memory_only and p.exe_deleted
        assert p.exe == f"/memfd:{name}"
        assert p.ppid == os.getpid()
    finally:
        proc.kill()
        proc.wait()


def test_ordinary_processes_are_not_flagged() -> None:
    p = _find_process(os.getpid())
    assert p is not None
    assert p.exe is not None and os.path.realpath(p.exe) == os.path.realpath(sys.executable)
    assert not p.exe_deleted and not p.memory_only


def test_kernel_threads_are_left_out_and_processes_are_unique_and_sorted() -> None:
    procs, truncated = collect_processes()
    assert not truncated
    assert all(p.pid != 2 for p in procs)  # kthreadd
    keys = [(p.pid, p.start_ticks) for p in procs]
    assert keys == sorted(set(keys))


def test_process_cap_truncates_and_says_so() -> None:
    procs, truncated = collect_processes(InventoryLimits(max_processes=2))
    assert len(procs) == 2 and truncated


def test_a_process_vanishing_mid_walk_is_skipped(tmp_path: Path) -> None:
    fake = tmp_path / "proc"
    (fake / "4242").mkdir(parents=True)  # a pid directory with nothing left in it
    (fake / "stat").write_text("btime 100\n")
    (fake / "self").mkdir()
    (fake / "self" / "mounts").write_text("")
    procs, truncated = collect_processes(proc=str(fake))
    assert procs == [] and not truncated


def test_cmdline_is_bounded() -> None:
    args, truncated = split_cmdline(b"a\0" * 5000, max_bytes=100, max_args=256)
    assert truncated and sum(len(a) + 1 for a in args) <= 101
    args, truncated = split_cmdline(b"x\0" * 300, max_bytes=4096, max_args=256)
    assert truncated and len(args) == 256


def test_stat_parser_handles_hostile_command_names() -> None:
    tail = " ".join(["S", "77", *["0"] * 4, "4194560", *["0"] * 12, "12345"])
    assert parse_stat(f"99 (a) b (c)) {tail}") == ("a) b (c)", 77, 4194560, 12345)
    assert parse_stat("99 no parens") is None
    assert parse_stat("99 (x) S") is None


def test_credentials_on_a_command_line_never_leave_the_host() -> None:
    secrets = ["--password", "hunter2", "--api-key=k3y", "PGPASSWORD=pgsecret", "https://u:urlpw@127.0.0.1/x"]
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *secrets])
    try:
        _wait_for(lambda: (p := _find_process(proc.pid)) is not None and "--password" in p.cmdline)
        p = _find_process(proc.pid)
        assert p is not None
        assert p.cmdline[3:] == ["--password", "<redacted>", "--api-key=<redacted>", "PGPASSWORD=<redacted>",
                                 "https://u:<redacted>@127.0.0.1/x"]
        assert not any(s in msgspec.json.encode(p) for s in (b"hunter2", b"k3y", b"pgsecret", b"urlpw"))
    finally:
        proc.kill()
        proc.wait()


def test_redaction_leaves_ordinary_arguments_alone() -> None:
    args = ["--passes=3", "--bypass-cache", "x", "--max-tokens", "5", "PATH=/bin", "-", "file://host/x",
            "https://127.0.0.1:8080/a@b", "--user=root"]
    assert redact_cmdline(args) == args
    assert redact_cmdline(["--token", "t", "GITHUB_TOKEN=g", "postgres://me:se@cr@t@127.0.0.1/db"]) == [
        "--token", "<redacted>", "GITHUB_TOKEN=<redacted>", "postgres://me:<redacted>@127.0.0.1/db"]


def test_memfd_and_tmpfs_classification() -> None:
    assert classify_exe("/memfd:x (deleted)", []) == ("/memfd:x", True, True)
    assert classify_exe("/dev/shm/tool", ["/dev/shm"]) == ("/dev/shm/tool", False, True)
    assert classify_exe("/dev/shmx/tool", ["/dev/shm"]) == ("/dev/shmx/tool", False, False)
    assert classify_exe("/usr/bin/x (deleted)", ["/dev/shm"]) == ("/usr/bin/x", True, False)


# --- sockets (N2) --------------------------------------------------------------------


def _sockets() -> list[Socket]:
    found, note = collect_sockets()
    assert note == ""
    return found


def test_n2_tcp_listener_appears_as_listening_with_its_pid() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        match = [s for s in _sockets() if s.proto == "tcp" and s.local_port == port]
    assert len(match) == 1
    s = match[0]
    assert s.state == "listen" and s.local_addr == "127.0.0.1" and s.pid == os.getpid()
    assert s.uid == os.geteuid() and s.remote_port == 0


def test_n2_established_loopback_connection_shows_remote_endpoint() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            conn, _ = srv.accept()
            with conn:
                cport = client.getsockname()[1]
                found = _sockets()
    outbound = [s for s in found if s.local_port == cport and s.remote_port == port]
    inbound = [s for s in found if s.local_port == port and s.remote_port == cport]
    assert len(outbound) == 1 and len(inbound) == 1
    for s in (outbound[0], inbound[0]):
        assert s.state == "established" and s.proto == "tcp" and s.pid == os.getpid()
        assert s.local_addr == "127.0.0.1" and s.remote_addr == "127.0.0.1"


def test_n2_udp_bound_socket_listens() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        match = [s for s in _sockets() if s.proto == "udp" and s.local_port == port]
    assert [(s.state, s.pid) for s in match] == [("listen", os.getpid())]


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
def test_n2_ipv6_listener_on_loopback() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as srv:
        srv.bind(("::1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        match = [s for s in _sockets() if s.proto == "tcp6" and s.local_port == port]
    assert [(s.state, s.local_addr, s.pid) for s in match] == [("listen", "::1", os.getpid())]


def test_kernel_address_encoding() -> None:
    assert decode_address("0100007F:1F90") == ("127.0.0.1", 8080)
    assert decode_address("00000000000000000000000001000000:0016") == ("::1", 22)
    assert decode_address("0000000000000000FFFF00000100007F:0050") == ("::ffff:127.0.0.1", 80)
    for bad in ("", "zz:1", "0100007F", "0100007F:", "0100007F:FFFFF", "01007F:0050"):
        assert decode_address(bad) is None


def test_proc_net_states_other_than_listen_and_established_are_left_out() -> None:
    head = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  inode\n"
    rows = [
        "0: 0100007F:0050 00000000:0000 0A 0:0 00:0 0 1000 0 111 1",
        "1: 0100007F:0050 0100007F:C000 01 0:0 00:0 0 1000 0 112 1",
        "2: 0100007F:0050 0100007F:C001 06 0:0 00:0 0 1000 0 0 1",  # TIME_WAIT
        "3: garbage",
    ]
    got = parse_proc_net(head + "\n".join(rows), "tcp")
    assert [(r[0], r[4], r[6]) for r in got] == [("listen", 0, 111), ("established", 49152, 112)]


# --- packages and updates (M6, H5) ---------------------------------------------------


@pytest.mark.skipif(not HAS_DPKG, reason="not a dpkg system")
def test_dpkg_packages_match_dpkg_query_exactly() -> None:
    ours, truncated = collect_dpkg()
    assert not truncated
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\t${Architecture}\t${Version}\t${db:Status-Status}\n"],
        capture_output=True, text=True, check=True).stdout
    theirs = {tuple(line.split("\t")[:3]) for line in out.splitlines()
              if line.split("\t")[3] not in ("config-files", "not-installed")}
    assert {(p.name, p.arch, p.version) for p in ours} == theirs
    by_name = {p.name: p for p in ours}
    core = by_name.get("libc6") or by_name["python3"]
    assert core.version[0].isdigit()
    if core.name == "libc6":
        assert core.source == "glibc"


@pytest.mark.skipif(not (HAS_DPKG and shutil.which("apt-get")), reason="not an apt system")
def test_pending_apt_updates_include_everything_apt_would_upgrade() -> None:
    packages, _ = collect_dpkg()
    updates = collect_updates("apt", packages)
    sim = subprocess.run(["apt-get", "-s", "-o", "Debug::NoLocking=1", "upgrade"], capture_output=True,
                         text=True, check=True, env={**os.environ, "LC_ALL": "C"}).stdout
    apt_says = {line.split()[1].split(":")[0] for line in sim.splitlines()
                if line.startswith("Inst ") and "[" in line}
    ours = {u.name: u for u in updates}
    assert apt_says <= set(ours)
    installed = {(p.name, p.arch): p.version for p in packages}
    for u in updates:
        assert installed[(u.name, u.arch)] == u.installed != u.candidate


def test_apt_policy_parser_marks_security_updates() -> None:
    text = """openssl:
  Installed: 3.0.11-1~deb12u1
  Candidate: 3.0.15-1~deb12u1
  Version table:
     3.0.15-1~deb12u1 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
 *** 3.0.11-1~deb12u1 100
        100 /var/lib/dpkg/status
bash:
  Installed: 5.2.15-2+b2
  Candidate: 5.2.15-2+b7
  Version table:
     5.2.15-2+b7 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
 *** 5.2.15-2+b2 100
        100 /var/lib/dpkg/status
zlib1g:i386:
  Installed: 1:1.2.11
  Candidate: 1:1.2.13
  Version table:
     1:1.2.13 500
        500 http://security.ubuntu.com/ubuntu jammy-updates/main i386 Packages
demo:
  Installed: 1.0
  Candidate: 2.0
  Version table:
     2.0 500
        500 http://deb.debian.org/debian bookworm-updates/main amd64 Packages
     1.1 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
 *** 1.0 100
        100 /var/lib/dpkg/status
     0.9 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
pinned-down:
  Installed: 3.0
  Candidate: 2.0
  Version table:
     2.0 990
        990 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
 *** 3.0 100
        100 /var/lib/dpkg/status
current:
  Installed: 1.0
  Candidate: 1.0
gone:
  Installed: (none)
  Candidate: 2.0
"""
    got = {u.name: u for u in parse_apt_policy(text, "amd64")}
    assert set(got) == {"openssl", "bash", "zlib1g", "demo"}  # a pinned downgrade is not an update
    assert got["openssl"].security and got["openssl"].origin == "bookworm-security"
    assert got["openssl"].security_candidate == "3.0.15-1~deb12u1"
    # The candidate comes from updates; the security fix is the older 1.1 (never the 0.9 below 1.0).
    assert (got["demo"].candidate, got["demo"].origin, got["demo"].security, got["demo"].security_candidate) \
        == ("2.0", "bookworm-updates", True, "1.1")
    assert got["bash"].security_candidate == ""
    assert not got["bash"].security and got["bash"].origin == "bookworm"
    assert got["zlib1g"].arch == "i386" and got["zlib1g"].security  # security.* host
    assert got["openssl"].installed == "3.0.11-1~deb12u1" and got["openssl"].candidate == "3.0.15-1~deb12u1"


def test_updates_cache_reused_only_while_package_state_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    fake = [Update(manager="apt", name="x", arch="amd64", installed="1", candidate="2")]

    def fake_collect(packages: Any, limits: Any) -> list[Update]:
        calls.append(1)
        return fake

    state = {"fp": ((("p", 1, 1),))}
    monkeypatch.setattr("rampart.agent.inventory.packages.collect_apt_updates", fake_collect)
    monkeypatch.setattr("rampart.agent.inventory.packages.state_fingerprint", lambda paths: state["fp"])
    cache = UpdatesCache()
    assert collect_updates("apt", [], cache=cache) == fake
    assert collect_updates("apt", [], cache=cache) == fake
    assert len(calls) == 1
    state["fp"] = ((("p", 2, 1),))
    collect_updates("apt", [], cache=cache)
    assert len(calls) == 2


def test_rpm_and_dnf_output_parsing() -> None:
    qa = ("bash\t(none)\t5.1.8\t9.el9\tx86_64\tbash-5.1.8-9.el9.src.rpm\n"
          "openssl-libs\t1\t3.0.7\t27.el9\tx86_64\topenssl-3.0.7-27.el9.src.rpm\n"
          "gpg-pubkey\t(none)\tfd431d51\t4ae0493b\t(none)\t(none)\n"
          "broken line\n")
    pkgs, truncated = parse_rpm_qa(qa)
    assert not truncated
    assert [(p.name, p.version, p.source) for p in pkgs] == [
        ("bash", "5.1.8-9.el9", ""), ("openssl-libs", "1:3.0.7-27.el9", "openssl")]
    check = ("\nopenssl-libs.x86_64   1:3.0.7-28.el9   baseos\nbash.x86_64  5.1.8-10.el9  baseos\n"
             "Obsoleting Packages\nfoo.x86_64  1-1  appstream\n")
    rows = parse_dnf_check_update(check)
    assert rows == [("openssl-libs", "x86_64", "1:3.0.7-28.el9", "baseos"),
                    ("bash", "x86_64", "5.1.8-10.el9", "baseos")]
    ups = {u.name: u for u in dnf_updates(rows, pkgs, {"openssl-libs-3.0.7-28.el9.x86_64"})}
    assert ups["openssl-libs"].security and not ups["bash"].security
    assert ups["bash"].installed == "5.1.8-9.el9"


def test_garbage_dpkg_status_does_not_crash(tmp_path: Path) -> None:
    garbage = tmp_path / "status"
    garbage.write_bytes(os.urandom(200_000) + b"\n\nPackage: ok\nStatus: install ok installed\n"
                        b"Architecture: amd64\nVersion: 1.0\n\nPackage: -bad\nStatus: install ok installed\n"
                        b"Architecture: amd64\nVersion: 1\n\nPackage: half\nVersion: 2\n")
    pkgs, truncated = collect_dpkg(str(garbage))
    assert [(p.name, p.version) for p in pkgs] == [("ok", "1.0")] and not truncated
    inv = collect_full(_now(), "0.1.0", "full", dpkg_status=str(garbage), updates_cache=UpdatesCache())
    assert "packages" not in inv.errors and [p.name for p in inv.packages] == ["ok"]


def test_unreadable_dpkg_status_is_an_error_of_that_section_only(tmp_path: Path) -> None:
    inv = collect_full(_now(), "0.1.0", "full", dpkg_status=str(tmp_path))  # a directory
    assert "packages" in inv.errors and inv.packages == []
    assert inv.os is not None and inv.processes and inv.hardware is not None


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("Package: Status install ok installed Version Arch\n \t:1-")),
               max_size=400))
def test_dpkg_parser_never_crashes_and_output_is_canonical(text: str) -> None:
    pkgs, _ = parse_dpkg_status(text)
    assert pkgs == canonical(pkgs, SECTION_KEYS["packages"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300), st.binary(max_size=2000))
def test_every_parser_survives_garbage(text: str, data: bytes) -> None:
    parse_apt_policy(text, "amd64")
    parse_rpm_qa(text)
    parse_dnf_check_update(text)
    parse_proc_net(text, "tcp")
    parse_proc_net(text, "udp6")
    parse_stat(text)
    parse_list_units(text)
    parse_unit_files(text)
    parse_show(text)
    parse_os_release(text)
    parse_meminfo(text)
    parse_cpuinfo(text)
    parse_mounts(text, block_filesystems(text))
    parse_distro_info("debian", text)
    parse_wtmp(data, COMPAT32)
    parse_wtmp(data, TIME64)
    parse_lastlog(data, [0, 1, 5, 1000], COMPAT32)
    split_cmdline(data, 100, 4)


# --- EOL (M6) ------------------------------------------------------------------------


def _at(day: str) -> int:
    return int(dt.datetime.fromisoformat(day + "T12:00:00+00:00").timestamp())


def test_m6_eol_status_with_injected_dates() -> None:
    table = {k: (v, "built-in") for k, v in BUILTIN.items()}
    assert eol_status("debian", "12", now=_at("2028-06-30"), table=table).status == "current"
    late = eol_status("debian", "12", now=_at("2028-07-01"), table=table)
    assert (late.status, late.eol_date, late.product, late.release) == ("eol", "2028-06-30", "debian", "12")
    assert eol_status("debian", "10", now=_at("2026-11-23"), table=table).status == "eol"
    assert eol_status("ubuntu", "20.04", now=_at("2025-05-30"), table=table).status == "eol"
    assert eol_status("ubuntu", "24.04", now=_at("2025-05-30"), table=table).status == "current"
    assert eol_status("rhel", "9.4", now=_at("2030-01-01"), table=table).eol_date == "2032-05-31"
    assert eol_status("rocky", "8.10", now=_at("2029-06-01"), table=table).status == "eol"
    assert eol_status("almalinux", "8.9", now=_at("2029-02-28"), table=table).status == "current"
    assert eol_status("fedora", "40", now=_at("2025-06-01"), table=table).status == "eol"
    assert eol_status("raspbian", "11", now=_at("2026-09-01"), table=table).status == "eol"
    assert eol_status("centos", "7", now=_at("2024-07-01"), table=table).status == "eol"
    for os_id, version in (("arch", ""), ("debian", ""), ("ubuntu", "99.04"), ("linuxmint", "21.3")):
        assert eol_status(os_id, version, now=_at("2026-01-01"), table=table).status == "unknown"
    assert release_key("RHEL", "9.4") == ("rhel", "9")


def test_m6_host_distro_info_overrides_the_builtin_table(tmp_path: Path) -> None:
    (tmp_path / "debian.csv").write_text(
        "version,codename,series,created,release,eol,eol-lts,eol-elts\n"
        "12,Bookworm,bookworm,2021-08-14,2023-06-10,2026-07-11,2029-01-31,2033-06-30\n"
        "14,Forky,forky,2025-08-09\n"
        "x,garbage\n")
    (tmp_path / "ubuntu.csv").write_text(
        "version,codename,series,created,release,eol,eol-server,eol-esm\n"
        "12.04 LTS,Precise,precise,2011-10-13,2012-04-26,2015-04-24,2017-04-26,2019-04-26\n")
    table = load_table(str(tmp_path))
    assert table[("debian", "12")] == ("2029-01-31", "distro-info")
    assert ("debian", "14") not in table  # no date yet
    assert table[("ubuntu", "12.04")] == ("2017-04-26", "distro-info")  # the later server date
    assert table[("rhel", "9")] == ("2032-05-31", "built-in")
    assert parse_distro_info("debian", "not,a,csv\n\x00\n") == {}


def test_this_hosts_os_has_a_known_eol_status() -> None:
    inv = collect_full(_now(), "0.1.0", "full", updates_cache=UpdatesCache())
    assert inv.os is not None
    assert inv.os.kernel_release == os.uname().release
    if inv.os.id in ("debian", "ubuntu") and inv.os.version_id:
        assert inv.os.eol.status in ("current", "eol") and inv.os.eol.eol_date


# --- users and last login (S2) -------------------------------------------------------


def _lastlog_record(when: int, line: str, host: str) -> bytes:
    return struct.pack("<i32s256s", when, line.encode(), host.encode())


def _utmp_record(ut_type: int, user: str, line: str, host: str, when: int) -> bytes:
    rec = bytearray(384)
    struct.pack_into("<hxxi32s4s32s256s", rec, 0, ut_type, 1234, line.encode(), b"ts/1", user.encode(),
                     host.encode())
    struct.pack_into("<i", rec, 340, when)
    return bytes(rec)


def _fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "var/log").mkdir(parents=True)
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\n"
        "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
        "svc:x:120:120::/srv:/bin/sh\n"
        "alice:x:1000:1000::/home/alice:/bin/bash\n"
        "bob:x:1001:1001::/home/bob:/usr/sbin/nologin\n"
        "nobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n"
        "broken line\n"
        "evil:x:notanumber:0::/:/bin/sh\n")
    (root / "etc/shadow").write_text("root:!:19000::::::\nalice:$y$j9T$abc:19000::::::\nbob::19000::::::\n")
    (root / "etc/login.defs").write_text("UID_MIN 1000\n")
    return root


def test_s2_crafted_lastlog_gives_each_users_last_login(tmp_path: Path) -> None:
    root = _fake_root(tmp_path)
    with open(root / "var/log/lastlog", "wb") as f:  # sparse, one record per uid, as login writes it
        f.seek(0)
        f.write(_lastlog_record(1_700_000_000, "tty1", ""))
        f.seek(1000 * 292)
        f.write(_lastlog_record(1_750_000_000, "pts/3", "127.0.0.1"))
    users, truncated = collect_users(root=str(root), machine="x86_64")
    assert not truncated
    by = {u.name: u for u in users}
    assert set(by) == {"root", "svc", "alice", "bob"}  # daemon and nobody: system ids without a shell
    assert by["alice"].last_login == 1_750_000_000
    assert (by["alice"].last_login_from, by["alice"].last_login_tty) == ("127.0.0.1", "pts/3")
    assert by["root"].last_login == 1_700_000_000 and by["root"].last_login_tty == "tty1"
    assert by["bob"].last_login is None and by["svc"].last_login is None
    assert by["alice"].password_state == "set" and by["root"].password_state == "locked"
    assert by["bob"].password_state == "empty" and by["svc"].password_state == "unknown"
    assert by["alice"].login_shell and not by["bob"].login_shell


def test_s2_no_lastlog_means_no_last_login(tmp_path: Path) -> None:
    users, _ = collect_users(root=str(_fake_root(tmp_path)), machine="x86_64")
    assert all(u.last_login is None for u in users)


def test_s2_newer_wtmp_and_lastlog2_entries_win(tmp_path: Path) -> None:
    root = _fake_root(tmp_path)
    (root / "var/log/lastlog").write_bytes(_lastlog_record(1_700_000_000, "tty1", ""))
    wtmp = (_utmp_record(USER_PROCESS, "root", "pts/0", "127.0.0.2", 1_710_000_000)
            + _utmp_record(8, "root", "pts/0", "", 1_790_000_000)  # DEAD_PROCESS: not a login
            + _utmp_record(USER_PROCESS, "alice", "pts/1", "127.0.0.3", 1_720_000_000))
    (root / "var/log/wtmp").write_bytes(b"\x01" * 10 + wtmp)  # a torn leading record is skipped
    (root / "var/lib/lastlog").mkdir(parents=True)
    db = sqlite3.connect(root / "var/lib/lastlog/lastlog2.db")
    db.execute("CREATE TABLE Lastlog2 (Name TEXT PRIMARY KEY, Time INTEGER, TTY TEXT, RemoteHost TEXT, "
               "Service TEXT)")
    db.execute("INSERT INTO Lastlog2 VALUES ('alice', 1730000000, 'pts/9', '127.0.0.9', 'sshd')")
    db.commit()
    db.close()
    by = {u.name: u for u in collect_users(root=str(root), machine="x86_64")[0]}
    assert (by["root"].last_login, by["root"].last_login_from) == (1_710_000_000, "127.0.0.2")
    assert (by["alice"].last_login, by["alice"].last_login_tty) == (1_730_000_000, "pts/9")


def test_s2_time64_lastlog_layout() -> None:
    data = struct.pack("<q32s256s", 0, b"", b"") + struct.pack("<q32s256s", 1_760_000_000, b"pts/0", b"::1")
    assert parse_lastlog(data, [0, 1, 2], TIME64) == {1: parse_lastlog(data, [1], TIME64)[1]}
    assert parse_lastlog(data, [1], TIME64)[1].time == 1_760_000_000


# --- services ------------------------------------------------------------------------


def test_systemctl_output_parsing() -> None:
    units = parse_list_units(
        "ssh.service loaded active running OpenBSD Secure Shell server\n"
        "● ghost.service not-found inactive dead ghost.service\n"
        "bad line\n")
    files = parse_unit_files("ssh.service enabled enabled\ngetty@.service enabled enabled\n"
                             "rsync.service disabled enabled\n")
    show = parse_show("Id=ssh.service\nMainPID=812\nFragmentPath=/lib/systemd/system/ssh.service\n\n"
                      "Id=ghost.service\nMainPID=0\nFragmentPath=\n")
    services = {s.unit: s for s in merge_services(units, files, show)}
    assert set(services) == {"ssh.service", "ghost.service", "rsync.service"}
    ssh = services["ssh.service"]
    assert (ssh.active, ssh.sub, ssh.enabled, ssh.main_pid) == ("active", "running", "enabled", 812)
    assert ssh.description == "OpenBSD Secure Shell server"
    assert services["ghost.service"].main_pid is None and services["ghost.service"].load == "not-found"
    assert services["rsync.service"].load == "not-loaded" and services["rsync.service"].enabled == "disabled"


def test_services_section_explains_when_systemd_is_not_running() -> None:
    inv = collect_full(_now(), "0.1.0", "full", updates_cache=UpdatesCache())
    if os.path.isdir("/run/systemd/system"):
        assert "services" not in inv.notes and inv.services
    else:
        assert inv.services == [] and "systemd" in inv.notes["services"]


# --- the full collection -------------------------------------------------------------


def test_full_inventory_of_this_host_round_trips_and_has_every_section() -> None:
    inv = collect_full(_now(), "0.1.0", "filesystem", updates_cache=UpdatesCache())
    assert inv.errors == {}
    assert inv.agent == AgentInfo(version="0.1.0", containment="filesystem")
    assert inv.os is not None and inv.hardware is not None and inv.patching is not None
    assert inv.hardware.logical_cpus == os.cpu_count()
    assert any(d.mountpoint == "/" for d in inv.disks) or _fs_type("/") in ("overlay", "tmpfs")
    assert inv.processes and inv.users and any(u.name == "root" for u in inv.users)
    assert inv.metrics.uptime_s > 0 and inv.metrics.cpu.idle > 0
    assert decode(encode(inv)) == inv


def test_one_failing_collector_never_aborts_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(collect_mod, "collect_processes", boom)
    monkeypatch.setattr(collect_mod, "collect_os", boom)
    inv = collect_full(_now(), "0.1.0", "full", updates_cache=UpdatesCache())
    assert inv.errors["processes"] == "RuntimeError: simulated failure"
    assert inv.errors["os"] == "RuntimeError: simulated failure"
    assert inv.processes == [] and inv.os is None
    assert inv.hardware is not None and inv.users and inv.metrics.uptime_s > 0
    assert decode(encode(inv)) == inv


def test_decoding_enforces_limits_order_and_known_fields() -> None:
    base = Inventory(collected_at=1, agent=AgentInfo(version="1", containment="none"))
    raw = msgspec.json.decode(encode(base))
    proc = {"pid": 1, "ppid": 0, "start_ticks": 0, "start_time": 0, "name": "x", "uid": 0, "euid": 0}
    too_many = {**raw, "processes": [{**proc, "pid": i + 1} for i in range(5001)]}
    with pytest.raises(msgspec.ValidationError):
        decode(msgspec.json.encode(too_many))
    unsorted = {**raw, "processes": [{**proc, "pid": 2}, {**proc, "pid": 1}]}
    with pytest.raises(msgspec.ValidationError, match="sorted"):
        decode(msgspec.json.encode(unsorted))
    with pytest.raises(msgspec.ValidationError):
        decode(msgspec.json.encode({**raw, "surprise": 1}))
    with pytest.raises(msgspec.ValidationError):
        decode(msgspec.json.encode({**raw, "processes": [{**proc, "name": "x" * 300}]}))


def test_next_delay_is_jittered_around_the_interval() -> None:
    assert next_delay(300, 0.2, rand=lambda: 0.0) == pytest.approx(240)
    assert next_delay(300, 0.2, rand=lambda: 1.0) == pytest.approx(360)
    delays = {next_delay() for _ in range(50)}
    assert len(delays) > 1 and all(240 <= d <= 360 for d in delays)
    with pytest.raises(ValueError):
        next_delay(0)


def test_commands_are_bounded_in_time_and_output() -> None:
    t0 = time.monotonic()
    with pytest.raises(CommandError, match="timed out"):
        run(["sleep", "30"], timeout=0.3, max_output=1024)
    assert time.monotonic() - t0 < 5
    with pytest.raises(CommandError, match="more than"):
        run(["yes"], timeout=10, max_output=1 << 16)
    with pytest.raises(CommandError, match="not found"):
        run(["rampart-no-such-program"], timeout=1, max_output=1)
    with pytest.raises(CommandError, match="status 1"):
        run(["false"], timeout=5, max_output=1)
    assert run(["echo", "hi"], timeout=5, max_output=10) == "hi\n"


# --- deltas --------------------------------------------------------------------------

_n = st.text(alphabet="abc", min_size=1, max_size=2)
_i = st.integers(0, 3)

_disk = st.builds(Disk, mountpoint=st.sampled_from(["/", "/a", "/b"]), device=_n, fstype=_n,
                  total_bytes=_i, read_only=st.booleans())
_package = st.builds(Package, manager=st.sampled_from(["dpkg", "rpm"]), name=_n,
                     arch=st.sampled_from(["all", "x"]), version=_n, source=_n)
_update = st.builds(Update, manager=st.just("apt"), name=_n, arch=st.just("x"), installed=_n, candidate=_n,
                    security=st.booleans())
_process = st.builds(Process, pid=st.integers(1, 4), ppid=_i, start_ticks=_i, start_time=_i, name=_n,
                     exe=st.none() | _n, exe_deleted=st.booleans(), memory_only=st.booleans(),
                     cmdline=st.lists(_n, max_size=2), uid=_i, euid=_i, user=st.none() | _n)
_socket = st.builds(Socket, proto=st.sampled_from(["tcp", "udp6"]),
                    state=st.sampled_from(["listen", "established"]),
                    local_addr=st.sampled_from(["127.0.0.1", "::1"]), local_port=_i,
                    remote_addr=st.just("127.0.0.1"), remote_port=_i, inode=_i, uid=_i,
                    pid=st.none() | st.integers(1, 3))
_service = st.builds(Service, unit=st.sampled_from(["a.service", "b.service", "c.service"]), active=_n,
                     sub=_n, main_pid=st.none() | st.integers(1, 3))
_user = st.builds(User, name=_n, uid=_i, gid=_i, last_login=st.none() | _i, login_shell=st.booleans())
_usage = st.builds(DiskUsage, mountpoint=_n, used_bytes=_i, avail_bytes=_i)
_metrics = st.builds(Metrics, uptime_s=st.floats(0, 1e6, allow_nan=False),
                     load1=st.floats(0, 100, allow_nan=False), mem_free_bytes=_i,
                     cpu=st.builds(CpuTicks, user=_i, idle=_i), disks=st.lists(_usage, max_size=2))
_os = st.builds(OsInfo, id=_n, name=_n, kernel_release=_n, kernel_version=_n, arch=_n, hostname=_n,
                boot_time=_i, eol=st.builds(EolStatus, status=st.sampled_from(["current", "eol", "unknown"])))
_errors = st.dictionaries(st.sampled_from(["os", "processes", "users"]), _n, max_size=2)


def _section(strategy: st.SearchStrategy[Any], name: str) -> st.SearchStrategy[list[Any]]:
    return st.lists(strategy, max_size=6).map(lambda xs: canonical(xs, SECTION_KEYS[name]))


_inventory = st.builds(
    Inventory, collected_at=_i, agent=st.builds(AgentInfo, version=_n, containment=_n), os=st.none() | _os,
    hardware=st.none() | st.builds(Hardware, cpu_model=_n, logical_cpus=_i),
    patching=st.none() | st.builds(Patching, manager=st.sampled_from(["apt", "dnf", "none"]),
                                   reboot_required=st.booleans()),
    disks=_section(_disk, "disks"), packages=_section(_package, "packages"),
    updates=_section(_update, "updates"),
    processes=_section(_process, "processes"), services=_section(_service, "services"),
    sockets=_section(_socket, "sockets"), users=_section(_user, "users"), metrics=_metrics, errors=_errors,
    notes=_errors,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_inventory, _inventory)
def test_delta_round_trip_reproduces_the_snapshot_exactly(a: Inventory, b: Inventory) -> None:
    delta = decode_delta(encode_delta(diff(a, b)))  # as it crosses the wire
    out = apply(a, delta)
    assert out == b
    assert encode(out) == encode(b)
    assert diff(a, a).entries() == 0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_inventory, _inventory, _inventory)
def test_delta_refused_on_any_other_base(a: Inventory, b: Inventory, other: Inventory) -> None:
    delta = diff(a, b)
    if encode(other) != encode(a):
        with pytest.raises(DeltaError):
            apply(other, delta)


def _base_and_delta() -> tuple[Inventory, Delta]:
    a = Inventory(collected_at=1, agent=AgentInfo(version="1", containment="none"))
    p = Process(pid=7, ppid=1, start_ticks=1, start_time=1, name="x", uid=0, euid=0)
    b = Inventory(collected_at=2, agent=AgentInfo(version="1", containment="none"), processes=[p])
    return a, diff(a, b)


def test_tampered_delta_is_refused() -> None:
    a, delta = _base_and_delta()
    forged = msgspec.structs.replace(delta, collected_at=3)
    with pytest.raises(DeltaError, match="did not produce"):
        apply(a, forged)


def test_delta_growing_a_section_past_its_limit_is_refused() -> None:
    a, delta = _base_and_delta()
    with pytest.raises(DeltaError, match="limit"):
        apply(a, delta, limits=InventoryLimits(max_processes=0))


def test_delta_with_inconsistent_entries_is_refused() -> None:
    a, delta = _base_and_delta()
    removes_unknown = msgspec.structs.replace(
        delta, processes=msgspec.structs.replace(delta.processes, removed=[(9, 9)]))
    with pytest.raises(DeltaError, match="unknown"):
        apply(a, removes_unknown)


def test_real_delta_contains_exactly_the_started_process(tmp_path: Path) -> None:
    cache = UpdatesCache()
    first = collect_full(_now(), "0.1.0", "full", updates_cache=cache)
    exe = tmp_path / f"rampart-delta-{uuid.uuid4().hex[:8]}"
    shutil.copy2(SLEEP, exe)
    proc = subprocess.Popen([str(exe), "60"])
    try:
        _wait_for(lambda: (p := _find_process(proc.pid)) is not None and p.exe == str(exe))
        second = collect_full(_now() + 1, "0.1.0", "full", updates_cache=cache)
    finally:
        proc.kill()
        proc.wait()
    delta = diff(first, second)
    ours = [p for p in delta.processes.added if p.ppid == os.getpid()]
    assert [(p.pid, p.exe) for p in ours] == [(proc.pid, str(exe))]
    assert not any(p.ppid == os.getpid() for p in delta.processes.changed)
    assert not delta.packages and not delta.users and delta.os is None and delta.hardware is None
    assert apply(first, decode_delta(encode_delta(delta))) == second
    assert len(encode_delta(delta)) < len(encode(second)) // 2


def test_public_surface_is_locked() -> None:
    assert sorted(inventory.__all__) == sorted([
        "DEFAULT_INTERVAL_S", "UpdatesCache", "collect_full", "eol_status", "load_table", "next_delay",
    ])
    for name in inventory.__all__:
        assert hasattr(inventory, name), name
