"""Job containment (threat T9: a signed job turns against the endpoint or the agent).

Real kernel enforcement, real processes, no mocks. Every job runs through
``run_contained``; the assertions check what the kernel let the job do.
Network tests use loopback only.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rampart.agent import containment, landlock
from rampart.agent.containment import (
    ContainedResult,
    ContainmentLimits,
    ContainmentSpec,
    detect_abi,
    kernel_level,
    run_contained,
)
from rampart.agent.sandbox import SandboxError, read_roots_excluding
from rampart.trust import ContainmentReport

ABI = landlock.abi_version()
IS_ROOT = os.geteuid() == 0
NOBODY = "nobody"
JOB_PY = "/usr/bin/python3"  # world-executable, unlike a venv under /root

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root to drop to another user")
needs_fs = pytest.mark.skipif(ABI < 3, reason="needs Landlock ABI >= 3")
needs_net = pytest.mark.skipif(ABI < 4, reason="needs Landlock ABI >= 4 (TCP)")
needs_scope = pytest.mark.skipif(ABI < 6, reason="needs Landlock ABI >= 6 (scoping)")
needs_job_py = pytest.mark.skipif(not os.access(JOB_PY, os.X_OK), reason="needs /usr/bin/python3")

pytestmark = linux_only


@pytest.fixture
def world() -> Iterator[Path]:
    """A scratch directory every user can traverse (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="rampart-t9-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def open_dir(path: Path) -> Path:
    """Create a directory DAC lets everybody write, so only Landlock can refuse."""
    path.mkdir()
    path.chmod(0o777)
    return path


def spec(cwd: Path, argv: tuple[str, ...], **overrides: Any) -> ContainmentSpec:
    fields: dict[str, Any] = {
        "argv": argv,
        "cwd": str(cwd),
        "env": {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
        "write_paths": (),
        "deny_read_paths": (),
        "connect_ports": (),
        "run_as": NOBODY,
        "timeout_s": 30.0,
    }
    fields.update(overrides)
    return ContainmentSpec(**fields)


def py(cwd: Path, code: str, **overrides: Any) -> ContainedResult:
    """Run a Python snippet as a contained job and insist that it actually ran."""
    result = run_contained(spec(cwd, (JOB_PY, "-c", dedent(code)), **overrides))
    assert result.refused is None, result.refused
    assert result.containment is not None
    return result


def json_out(result: ContainedResult) -> Any:
    assert result.exit_code == 0, (result.exit_code, result.signal, result.stderr.decode())
    return json.loads(result.stdout)


# Probes run inside jobs: each returns "ok" or the errno name of the refusal.
PROBES = """
import errno, json, os, sys
def attempt(fn, *args):
    try:
        fn(*args)
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def write(path, data=b"x"):
    with open(path, "wb") as f:
        f.write(data)
def read(path):
    with open(path, "rb") as f:
        return f.read()
"""


# --- read_roots_excluding: the allow-list that carves out the deny-read paths ------------


def test_read_roots_excluding_carves_out_only_the_denied_tree(world: Path) -> None:
    (world / "a" / "state" / "keys").mkdir(parents=True)
    (world / "a" / "work").mkdir()
    (world / "a" / "notes.txt").write_text("n")
    (world / "a" / "link").symlink_to(world / "a" / "state")
    denied = world / "a" / "state"
    # Other processes create and remove entries in /tmp all the time (a parallel test pass):
    # only siblings that exist before the call and still exist after it are checked.
    before = {a: set(a.parent.iterdir()) for a in [*denied.parents][:-1]}
    roots = read_roots_excluding([str(denied)])
    assert str(world / "a" / "work") in roots
    assert str(world / "a" / "notes.txt") in roots
    assert str(world / "a" / "link") not in roots  # never follow a symlink into a denied tree
    assert "/usr" in roots
    for root in roots:
        assert not (root == str(denied) or root.startswith(str(denied) + "/"))
        assert not str(denied).startswith(root.rstrip("/") + "/"), f"{root} is an ancestor"
    # Every sibling along the way is covered, so nothing else becomes unreadable.
    for ancestor in [*denied.parents][:-1]:
        for child in before[ancestor] & set(ancestor.parent.iterdir()):
            if child != ancestor and not child.is_symlink():
                assert str(child) in roots


def test_read_roots_excluding_edge_cases(world: Path) -> None:
    (world / "d" / "inner").mkdir(parents=True)
    (world / "other").mkdir()
    assert read_roots_excluding([]) == ["/"]
    assert read_roots_excluding(["/"]) == []
    nested = read_roots_excluding([str(world / "d"), str(world / "d" / "inner")])
    assert nested == read_roots_excluding([str(world / "d")])
    assert read_roots_excluding([str(world / "d") + "/./"]) == nested
    alias = world / "alias"
    alias.symlink_to(world / "d")
    via_alias = read_roots_excluding([str(alias)])  # the target is what gets protected
    assert str(world / "d") not in via_alias and str(world / "other") in via_alias
    with pytest.raises(SandboxError):
        read_roots_excluding(["relative/path"])


_names = st.sampled_from(["a", "b", "c", "d"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tree=st.sets(st.lists(_names, min_size=1, max_size=3).map(tuple), min_size=1, max_size=12),
    picks=st.lists(st.integers(min_value=0, max_value=11), min_size=1, max_size=3),
)
def test_read_roots_excluding_property(tree: set[tuple[str, ...]], picks: list[int]) -> None:
    """Everything outside the denied trees stays reachable; nothing inside does."""
    base = Path(tempfile.mkdtemp(prefix="rampart-rr-", dir="/tmp"))
    try:
        ordered = sorted(tree)
        for parts in ordered:
            (base.joinpath(*parts)).mkdir(parents=True, exist_ok=True)
        denied = {str(base.joinpath(*ordered[i % len(ordered)])) for i in picks}
        roots = read_roots_excluding(sorted(denied))

        def within(p: str, r: str) -> bool:
            return p == r or p.startswith(r.rstrip("/") + "/")

        for root in roots:
            assert not any(within(root, d) or within(d, root) for d in denied)
        for path in [str(p) for p in base.rglob("*")]:
            hidden = any(within(path, d) for d in denied)
            ancestor_of_denied = any(within(d, path) for d in denied)
            covered = any(within(path, r) for r in roots)
            if hidden:
                assert not covered, path
            elif not ancestor_of_denied:
                assert covered, path
    finally:
        shutil.rmtree(base)


# --- Landlock bindings ------------------------------------------------------------------


def test_landlock_constants_match_the_uapi_header() -> None:
    from rampart.agent.landlock import _NetPortAttr, _PathBeneathAttr, _RulesetAttr

    assert landlock.fs_rights(0) == 0
    assert landlock.fs_rights(1) == 0x1FFF
    assert landlock.fs_rights(2) == 0x3FFF  # + REFER
    assert landlock.fs_rights(3) == landlock.fs_rights(4) == 0x7FFF  # + TRUNCATE
    assert landlock.fs_rights(5) == landlock.fs_rights(7) == 0xFFFF  # + IOCTL_DEV
    assert landlock.net_rights(3) == 0 and landlock.net_rights(4) == 0b11
    assert landlock.scopes(5) == 0 and landlock.scopes(6) == 0b11
    assert ctypes.sizeof(_PathBeneathAttr) == 12  # packed
    assert ctypes.sizeof(_NetPortAttr) == 16
    assert ctypes.sizeof(_RulesetAttr) == 24


def test_landlock_absent_is_abi_zero_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "no-such-arch")
    assert landlock.abi_version() == 0
    with pytest.raises(landlock.LandlockUnavailable):
        landlock.Ruleset(0, handled_fs=landlock.fs_rights(7))


def test_detect_abi_and_kernel_level(monkeypatch: pytest.MonkeyPatch) -> None:
    assert detect_abi() == ABI
    expected = "full" if ABI >= 4 else "filesystem" if ABI >= 3 else "none"
    assert kernel_level() == expected
    monkeypatch.setattr(containment, "_UNSAFE_FORCE_ABI", 3)
    assert detect_abi() == min(ABI, 3)
    assert kernel_level() == ("filesystem" if ABI >= 3 else "none")
    monkeypatch.setattr(containment, "_UNSAFE_FORCE_ABI", 0)
    assert kernel_level() == "none"


# --- T9: filesystem ---------------------------------------------------------------------


@needs_fs
@needs_root
@needs_job_py
def test_T9_job_cannot_write_outside_declared_paths(world: Path) -> None:
    allowed, outside = open_dir(world / "allowed"), open_dir(world / "outside")
    (outside / "existing").write_text("original")
    (outside / "existing").chmod(0o666)
    result = py(
        world,
        PROBES
        + dedent(f"""
        out, ok = {str(outside)!r}, {str(allowed)!r}
        print(json.dumps({{
            "create_outside": attempt(write, out + "/new"),
            "overwrite_outside": attempt(write, out + "/existing"),
            "truncate_outside": attempt(os.truncate, out + "/existing", 0),
            "mkdir_outside": attempt(os.mkdir, out + "/dir"),
            "symlink_outside": attempt(os.symlink, "/etc/passwd", out + "/sym"),
            "write_tmp": attempt(write, "/tmp/rampart-t9-escape-{uuid.uuid4().hex}"),
            "write_allowed": attempt(write, ok + "/result"),
            "mkdir_allowed": attempt(os.mkdir, ok + "/sub"),
            "move_out": attempt(os.rename, ok + "/result", out + "/moved"),
            "dev_null": attempt(write, "/dev/null"),
        }}))
        """),
        write_paths=(str(allowed),),
    )
    probe = json_out(result)
    for name in (
        "create_outside",
        "overwrite_outside",
        "truncate_outside",
        "mkdir_outside",
        "symlink_outside",
        "write_tmp",
        "move_out",
    ):
        assert probe[name] in ("EACCES", "EPERM", "EXDEV"), (name, probe[name])
    assert probe["write_allowed"] == probe["mkdir_allowed"] == probe["dev_null"] == "ok"
    assert sorted(p.name for p in outside.iterdir()) == ["existing"]
    assert (outside / "existing").read_text() == "original"
    assert (allowed / "result").read_bytes() == b"x"
    assert not list(Path("/tmp").glob("rampart-t9-escape-*"))
    assert result.containment is not None and result.containment.level == "full"


@needs_fs
@needs_job_py
def test_T9_landlock_blocks_writes_even_for_root(world: Path) -> None:
    """No user drop at all: the kernel's Landlock domain alone stops a root job."""
    if not IS_ROOT:
        pytest.skip("proves enforcement against root")
    allowed, outside = open_dir(world / "allowed"), world / "root-owned"
    outside.mkdir(mode=0o755)
    result = py(
        world,
        PROBES
        + dedent(f"""
        print(json.dumps({{
            "uid": os.getuid(),
            "outside": attempt(write, {str(outside / "x")!r}),
            "etc": attempt(write, "/etc/rampart-t9-escape"),
            "chmod_ok_but_no_write": attempt(write, {str(outside / "y")!r}),
            "allowed": attempt(write, {str(allowed / "x")!r}),
        }}))
        """),
        write_paths=(str(allowed),),
        run_as=None,
        require="filesystem",
    )
    probe = json_out(result)
    assert probe["uid"] == 0
    assert probe["outside"] == probe["etc"] == probe["chmod_ok_but_no_write"] == "EACCES"
    assert probe["allowed"] == "ok"
    assert not (outside / "x").exists() and not Path("/etc/rampart-t9-escape").exists()
    c = result.containment
    assert c is not None and c.uid == 0 and c.filesystem and c.level == "filesystem"


@needs_fs
@needs_job_py
@pytest.mark.parametrize("run_as", [None, NOBODY], ids=["as-root", "as-nobody"])
def test_T9_job_cannot_touch_agent_state(world: Path, run_as: str | None) -> None:
    if not IS_ROOT:
        pytest.skip("needs root")
    state, work = open_dir(world / "state"), open_dir(world / "work")
    key = state / "device.key"
    key.write_bytes(b"SECRET-KEY")
    key.chmod(0o666)  # DAC would allow anyone: only Landlock stands in the way
    result = py(
        world,
        PROBES
        + dedent(f"""
        key, state, work = {str(key)!r}, {str(state)!r}, {str(work)!r}
        os.symlink(key, work + "/via-symlink")
        print(json.dumps({{
            "read": attempt(read, key),
            "read_via_symlink": attempt(read, work + "/via-symlink"),
            "read_via_proc": attempt(read, "/proc/self/root" + key),
            "write": attempt(write, key),
            "truncate": attempt(os.truncate, key, 0),
            "rename": attempt(os.rename, key, state + "/renamed"),
            "move_out": attempt(os.rename, key, work + "/stolen"),
            "hardlink_out": attempt(os.link, key, work + "/hardlink"),
            "delete": attempt(os.unlink, key),
            "list": attempt(os.listdir, state),
            "plant": attempt(write, state + "/planted"),
            "rmtree": attempt(os.rmdir, state),
            "work": attempt(write, work + "/ok"),
        }}))
        """),
        write_paths=(str(work),),
        deny_read_paths=(str(state),),
        run_as=run_as,
        require="full" if run_as else "filesystem",
    )
    probe = json_out(result)
    assert probe.pop("work") == "ok"
    for name, outcome in probe.items():
        assert outcome in ("EACCES", "EPERM", "EXDEV"), (name, outcome)
    assert key.read_bytes() == b"SECRET-KEY"
    assert sorted(p.name for p in state.iterdir()) == ["device.key"]
    assert not (work / "stolen").exists() and not (work / "hardlink").exists()


@needs_fs
@needs_root
def test_T9_write_path_overlapping_agent_state_is_refused(world: Path) -> None:
    state = open_dir(world / "state")
    marker = world / "ran"
    result = run_contained(
        spec(
            world,
            ("/bin/sh", "-c", f"touch {marker}"),
            write_paths=(str(world),),  # would include the state dir
            deny_read_paths=(str(state),),
        )
    )
    assert result.refused is not None and "overlaps deny-read path" in result.refused
    assert result.containment is None and result.exit_code == 126
    assert not marker.exists()


@needs_fs
@needs_root
@needs_job_py
def test_T9_deny_path_inside_a_root_only_directory(world: Path) -> None:
    """The carve-out is computed with the agent's view, so a 0700 parent still works."""
    private = world / "private"
    private.mkdir(mode=0o700)
    (private / "state").mkdir()
    (private / "state" / "device.key").write_bytes(b"SECRET-KEY")
    (private / "sibling").write_text("s")
    result = py(
        world,
        PROBES
        + dedent(f"""
        print(json.dumps({{"key": attempt(read, {str(private / "state" / "device.key")!r}),
                           "usr": attempt(read, "/usr/bin/env")}}))
        """),
        deny_read_paths=(str(private / "state"),),
    )
    assert json_out(result) == {"key": "EACCES", "usr": "ok"}


# --- T9: privilege escalation -------------------------------------------------------------


@needs_fs
@needs_root
def test_T9_job_cannot_escalate_with_setuid(world: Path) -> None:
    suid_id = world / "suid-id"
    shutil.copy2("/usr/bin/id", suid_id)
    os.chown(suid_id, 0, 0)
    suid_id.chmod(0o4755)
    control = subprocess.run([str(suid_id), "-u"], user=NOBODY, capture_output=True, check=True)
    if control.stdout.strip() != b"0":
        pytest.skip("setuid binaries are inert here (nosuid mount?)")
    result = run_contained(spec(world, (str(suid_id), "-u")))
    assert result.refused is None and result.exit_code == 0
    assert result.stdout.strip() == b"65534"
    c = result.containment
    assert c is not None and c.no_new_privs and c.uid == 65534 and c.user == NOBODY


@needs_fs
@needs_root
@needs_job_py
def test_T9_job_cannot_regain_root_or_keep_groups(world: Path) -> None:
    result = py(
        world,
        PROBES
        + dedent("""
        print(json.dumps({
            "ids": [os.getresuid(), os.getresgid(), os.getgroups()],
            "setuid0": attempt(os.setuid, 0),
            "setgroups": attempt(os.setgroups, [0]),
            "caps": [l.split()[1] for l in open("/proc/self/status")
                     if l.startswith(("CapInh", "CapPrm", "CapEff", "CapAmb"))],
        }))
        """),
    )
    probe = json_out(result)
    assert probe["ids"] == [[65534] * 3, [65534] * 3, []]
    assert probe["setuid0"] == probe["setgroups"] == "EPERM"
    assert set(probe["caps"]) == {"0000000000000000"}


# --- T9: network --------------------------------------------------------------------------


@pytest.fixture
def listeners() -> Iterator[tuple[int, int]]:
    socks = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        socks.append(s)
    try:
        yield socks[0].getsockname()[1], socks[1].getsockname()[1]
    finally:
        for s in socks:
            s.close()


NET_PROBE = (
    PROBES
    + """
import socket
def connect(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
def bind(port):
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen(1)
"""
)


@needs_net
@needs_root
@needs_job_py
def test_T9_tcp_connect_only_to_declared_ports(world: Path, listeners: tuple[int, int]) -> None:
    declared, other = listeners
    result = py(
        world,
        NET_PROBE
        + dedent(f"""
        print(json.dumps({{"declared": attempt(connect, {declared}),
                           "other": attempt(connect, {other})}}))
        """),
        connect_ports=(declared,),
    )
    assert json_out(result) == {"declared": "ok", "other": "EACCES"}
    assert result.containment is not None and result.containment.network


@needs_net
@needs_root
@needs_job_py
def test_T9_job_cannot_bind_or_listen_on_tcp(world: Path, listeners: tuple[int, int]) -> None:
    declared, _ = listeners
    result = py(
        world,
        NET_PROBE
        + dedent("""
        print(json.dumps({"ephemeral": attempt(bind, 0), "high": attempt(bind, 47001)}))
        """),
        connect_ports=(declared,),
    )
    assert json_out(result) == {"ephemeral": "EACCES", "high": "EACCES"}


# --- T9: IPC scoping ------------------------------------------------------------------------


@needs_scope
@needs_job_py
def test_T9_job_cannot_reach_abstract_sockets_or_signal_outside(world: Path) -> None:
    """Even as root, the job cannot signal the agent's processes or use its abstract sockets."""
    if not IS_ROOT:
        pytest.skip("proves enforcement against root")
    name = f"\0rampart-t9-{uuid.uuid4().hex}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(name)
    server.listen(1)
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        result = py(
            world,
            NET_PROBE
            + dedent(f"""
            import signal, subprocess
            def unix(name):
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(name)
            own = subprocess.Popen(["sleep", "60"])
            print(json.dumps({{
                "abstract": attempt(unix, {name!r}),
                "kill_outside": attempt(os.kill, {bystander.pid}, signal.SIGKILL),
                "kill_agent": attempt(os.kill, {os.getpid()}, 0),
                "kill_own_child": attempt(os.kill, own.pid, signal.SIGKILL),
            }}))
            own.wait()
            """),
            run_as=None,
            require="filesystem",
        )
        assert json_out(result) == {
            "abstract": "EPERM",
            "kill_outside": "EPERM",
            "kill_agent": "EPERM",
            "kill_own_child": "ok",
        }
        assert bystander.poll() is None
        assert result.containment is not None and result.containment.ipc_scoped
    finally:
        bystander.kill()
        bystander.wait()
        server.close()


# --- supervision: timeout, process group, output bound ------------------------------------


def _gone(pid: int) -> bool:
    """Not running any more (absent, or a zombie awaiting its new parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _wait_gone(pid: int, within: float = 5.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if _gone(pid):
            return True
        time.sleep(0.02)
    return _gone(pid)


def test_timeout_kills_the_whole_process_group(world: Path) -> None:
    start = time.monotonic()
    result = run_contained(
        spec(
            world,
            ("/bin/sh", "-c", "sleep 300 & echo $!; sleep 300"),
            timeout_s=1.0,
            run_as=NOBODY if IS_ROOT else None,
            require="none",
        )
    )
    elapsed = time.monotonic() - start
    assert result.timed_out and result.refused is None
    assert result.signal == signal.SIGTERM and result.exit_code is None
    assert elapsed < 1.0 + containment.TERM_GRACE_S + 3
    grandchild = int(result.stdout.split()[0])
    assert _wait_gone(grandchild), "grandchild survived the timeout"


def test_timeout_escalates_to_sigkill_when_sigterm_is_ignored(world: Path) -> None:
    start = time.monotonic()
    result = run_contained(
        spec(
            world,
            ("/bin/sh", "-c", "trap '' TERM; sleep 300 & echo $!; wait; wait; sleep 300"),
            timeout_s=0.5,
            run_as=NOBODY if IS_ROOT else None,
            require="none",
        )
    )
    assert result.timed_out and result.signal == signal.SIGKILL
    assert time.monotonic() - start < 0.5 + containment.TERM_GRACE_S + 3
    assert _wait_gone(int(result.stdout.split()[0]))


def test_background_leftovers_are_killed_when_the_job_exits(world: Path) -> None:
    start = time.monotonic()
    result = run_contained(
        spec(
            world,
            ("/bin/sh", "-c", "sleep 300 & echo $!"),
            run_as=NOBODY if IS_ROOT else None,
            require="none",
        )
    )
    assert result.exit_code == 0 and not result.timed_out
    assert time.monotonic() - start < 5, "waited on a straggler holding the pipes"
    assert _wait_gone(int(result.stdout.split()[0]))


@needs_job_py
def test_output_is_bounded_and_truncation_is_flagged(world: Path) -> None:
    result = py(
        world,
        """
        import sys
        sys.stdout.buffer.write(b"o" * (8 << 20))
        sys.stdout.flush()
        sys.stderr.write("short")
        """,
        max_output_bytes=1000,
        run_as=NOBODY if IS_ROOT else None,
        require="none",
    )
    assert result.exit_code == 0 and not result.timed_out  # never blocked on a full pipe
    assert result.stdout == b"o" * 1000 and result.stdout_truncated
    assert result.stderr == b"short" and not result.stderr_truncated


def test_exec_failure_is_reported_not_hidden(world: Path) -> None:
    result = run_contained(
        spec(world, ("/nonexistent/job",), run_as=NOBODY if IS_ROOT else None, require="none")
    )
    assert result.refused is None and result.containment is not None
    assert result.exit_code == 127
    assert b"cannot execute '/nonexistent/job'" in result.stderr


# --- resource limits ---------------------------------------------------------------------


@needs_fs
@needs_root
@needs_job_py
def test_rlimits_are_visible_inside_the_child(world: Path) -> None:
    limits = ContainmentLimits(
        cpu_seconds=7,
        address_space_bytes=768 << 20,
        open_files=64,
        processes=48,
        file_size_bytes=1 << 20,
    )
    work = open_dir(world / "work")
    result = run_contained(
        spec(
            work,
            (
                "/bin/sh",
                "-c",
                "cat /proc/self/limits; head -c 2097152 /dev/zero > big; echo rc=$?",
            ),
            write_paths=(str(work),),
            limits=limits,
        )
    )
    text = result.stdout.decode()
    rows = {line[:26].strip(): line[26:].split()[:2] for line in text.splitlines()[1:] if line[:26]}
    assert rows["Max cpu time"] == ["7", "8"]
    assert rows["Max address space"] == [str(768 << 20)] * 2
    assert rows["Max open files"] == ["64", "64"]
    assert rows["Max processes"] == ["48", "48"]
    assert rows["Max file size"] == [str(1 << 20)] * 2
    assert rows["Max core file size"] == ["0", "0"]
    assert "rc=153" in text  # head was killed by SIGXFSZ (128 + 25)
    assert (work / "big").stat().st_size == 1 << 20
    c = result.containment
    assert c is not None
    assert c.limits == {
        "cpu_seconds": 7,
        "address_space_bytes": 768 << 20,
        "open_files": 64,
        "processes": 48,
        "file_size_bytes": 1 << 20,
        "core_bytes": 0,
    }


@needs_job_py
def test_cpu_limit_stops_a_spinning_job(world: Path) -> None:
    result = run_contained(
        spec(
            world,
            (JOB_PY, "-c", "while True: pass"),
            limits=ContainmentLimits(cpu_seconds=1),
            run_as=NOBODY if IS_ROOT else None,
            require="none",
        )
    )
    assert not result.timed_out
    assert result.signal in (signal.SIGXCPU, signal.SIGKILL)


@needs_root
@needs_job_py
def test_process_limit_caps_a_fork_bomb(world: Path) -> None:
    result = py(
        world,
        """
        import os, time
        kids, failed = [], None
        for _ in range(40):
            try:
                pid = os.fork()
            except BlockingIOError:
                failed = len(kids)
                break
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            kids.append(pid)
        print(failed)
        """,
        limits=ContainmentLimits(processes=8),
        # RLIMIT_NPROC counts per uid: as the shared `nobody` this depended on what else ran as
        # nobody on the host (PostgreSQL test servers do); a dynamic uid counts the job alone.
        run_as=containment.DYNAMIC,
    )
    assert result.exit_code == 0
    assert result.stdout.strip() != b"None" and int(result.stdout) < 8


# --- refusal ----------------------------------------------------------------------------------


@needs_job_py
@pytest.mark.parametrize(("forced", "require"), [(3, "full"), (0, "filesystem"), (0, "full")])
def test_refused_when_required_level_exceeds_what_applies(
    world: Path, monkeypatch: pytest.MonkeyPatch, forced: int, require: str
) -> None:
    if forced >= ABI:
        pytest.skip("forcing only ever lowers the ABI")
    monkeypatch.setattr(containment, "_UNSAFE_FORCE_ABI", forced)
    work = open_dir(world / "work")
    result = run_contained(
        spec(
            work,
            ("/bin/sh", "-c", "echo ran > marker"),
            write_paths=(str(work),),
            run_as=NOBODY if IS_ROOT else None,
            require=require,
        )
    )
    assert result.refused is not None and f"below the required {require!r}" in result.refused
    assert result.containment is None and result.exit_code == 126
    assert result.stdout == b"" and not (work / "marker").exists()


def test_level_none_runs_without_landlock_and_says_so(
    world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(containment, "_UNSAFE_FORCE_ABI", 0)
    result = run_contained(
        spec(world, ("/bin/echo", "hi"), run_as=NOBODY if IS_ROOT else None, require="none")
    )
    assert result.refused is None and result.stdout == b"hi\n"
    c = result.containment
    assert c is not None and c.level == "none" and c.landlock_abi == 0
    assert not c.filesystem and not c.network and not c.ipc_scoped and c.no_new_privs


@needs_job_py
def test_report_never_claims_more_than_applied_on_an_old_abi(
    world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ABI 2 cannot confine truncate(2): rules apply, but filesystem is not claimed."""
    if ABI < 3:
        pytest.skip("needs a kernel above the forced ABI")
    monkeypatch.setattr(containment, "_UNSAFE_FORCE_ABI", 2)
    outside = open_dir(world / "outside")
    result = py(
        world,
        PROBES + f"print(attempt(write, {str(outside / 'x')!r}))",
        run_as=NOBODY if IS_ROOT else None,
        require="none",
    )
    assert result.stdout.strip() == b"EACCES"  # best effort still applied
    c = result.containment
    assert c is not None and c.landlock_abi == 2
    assert not c.filesystem and not c.network and c.level == "none"


@needs_root
def test_unknown_user_is_refused(world: Path) -> None:
    result = run_contained(spec(world, ("/bin/true",), run_as="no-such-user-rampart"))
    assert result.refused is not None and "unknown user" in result.refused
    assert result.containment is None


def test_malformed_spec_is_a_caller_error(world: Path) -> None:
    with pytest.raises(ValueError):
        run_contained(spec(world, ()))
    with pytest.raises(ValueError):
        run_contained(spec(world, ("/bin/true",), write_paths=("relative",)))
    with pytest.raises(ValueError):
        run_contained(spec(world, ("/bin/true",), require="most"))
    with pytest.raises(ValueError):
        run_contained(spec(world, ("/bin/echo", "nul\0byte")))
    with pytest.raises(ValueError):
        run_contained(spec(world, ("/bin/true",), timeout_s=0))


# --- the report is the truth ------------------------------------------------------------------


@needs_fs
@needs_root
@needs_job_py
def test_containment_report_matches_what_the_child_observes(world: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "ONLY": "this"}
    result = py(
        world,
        """
        import json, os, resource
        status = dict(l.split(":", 1) for l in open("/proc/self/status"))
        print(json.dumps({
            "uid": os.getuid(), "euid": os.geteuid(),
            "nnp": int(status["NoNewPrivs"].strip()),
            "env": [e.decode() for e in open("/proc/self/environ", "rb").read().split(b"\\0") if e],
            "fds": sorted(int(f) for f in os.listdir("/proc/self/fd")),
            "stdin": os.read(0, 10).decode(),
            "session_leader": os.getsid(0) == os.getpid(),
            "limits": [resource.getrlimit(r)[0] for r in (
                resource.RLIMIT_CPU, resource.RLIMIT_AS, resource.RLIMIT_NOFILE,
                resource.RLIMIT_NPROC, resource.RLIMIT_FSIZE, resource.RLIMIT_CORE)],
        }))
        """,
        env=env,
    )
    seen = json_out(result)
    c = result.containment
    assert c is not None
    assert seen["uid"] == seen["euid"] == c.uid == 65534 and c.user == NOBODY
    assert bool(seen["nnp"]) is c.no_new_privs is True
    assert sorted(seen["env"]) == sorted(
        f"{k}={v}" for k, v in env.items()
    )  # exactly the spec's environment, nothing of the agent's
    assert seen["fds"][:3] == [0, 1, 2] and len(seen["fds"]) == 4  # + the listing's own fd
    assert seen["stdin"] == ""
    assert seen["session_leader"]
    assert seen["limits"] == [
        c.limits[k]
        for k in (
            "cpu_seconds",
            "address_space_bytes",
            "open_files",
            "processes",
            "file_size_bytes",
            "core_bytes",
        )
    ]
    assert c.landlock_abi == ABI and c.filesystem and c.level == "full"
    assert c.network is (ABI >= 4) and c.ipc_scoped is (ABI >= 6)
    assert c.timeout_s == 30.0
    assert ContainmentReport(**c.to_dict()).ipc_scoped is c.ipc_scoped  # fits the receipt


@needs_fs
@needs_root
def test_concurrent_runs_from_worker_threads(world: Path) -> None:
    results: list[ContainedResult] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        r = run_contained(spec(world, ("/bin/sh", "-c", f"echo {i}")))
        with lock:
            results.append(r)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(int(r.stdout) for r in results) == list(range(6))
    assert all(r.refused is None and r.exit_code == 0 for r in results)
