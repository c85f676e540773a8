"""Nothing outlives its job (issue 13; T9 and T3: an approved script, or a stolen
technician key, leaves a process behind to keep running after its job "ended").

Each test is the attack, played for real: a contained job (``run_contained``,
the agent's real job runner, and once through a real ``rampart-agent`` that
signs the receipt) starts a process that leaves its process group in a
different way (setsid, double fork into a new group, daemon(3), SIGTERM
ignored at the time limit). After the job ends no process of it may be left:
``/proc`` is scanned for the job's dynamic uid and for a marker in the
environment every process of the job inherits, and the result (and the
signed receipt) must count what was killed. Also: two jobs never share a uid,
and one job cannot signal, ptrace or inspect another; a job that cannot get a
kill-all scope is refused when ``full`` containment is required, and runs no
code.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
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

import msgspec
import pytest

from rampart.agent import containment, jobscope, landlock
from rampart.agent.containment import (
    DYNAMIC,
    ContainedResult,
    ContainmentLimits,
    ContainmentSpec,
    run_contained,
)
from rampart.trust import ContainmentReport

ABI = landlock.abi_version()
IS_ROOT = os.geteuid() == 0
JOB_PY = "/usr/bin/python3"  # world-executable, unlike a venv under /root
CGROUP = IS_ROOT and jobscope.cgroup_root() is not None

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only"),
    pytest.mark.skipif(not IS_ROOT, reason="needs root to run jobs as dynamic users"),
    pytest.mark.skipif(ABI < 4, reason="needs Landlock ABI >= 4 for level full"),
    pytest.mark.skipif(not os.access(JOB_PY, os.X_OK), reason="needs /usr/bin/python3"),
]

# Every reaper that kills all of a job, as available here: cgroup only when this host has one.
KILL_ALL = [pytest.param("cgroup", marks=pytest.mark.skipif(not CGROUP, reason="no usable cgroup v2")),
            "uid"]


@pytest.fixture
def world() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rampart-escape-", dir="/tmp"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=KILL_ALL)
def reaper(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once per kill-all mechanism (``uid``: cgroups switched off for the test)."""
    if request.param == "uid":
        monkeypatch.setattr(jobscope, "_UNSAFE_DISABLE_CGROUP", True)
    return str(request.param)


def marked_processes(marker: str) -> list[int]:
    """Live processes whose environment carries ``marker`` (every process of the job inherits it)."""
    found = []
    needle = f"RAMPART_ESCAPE_MARKER={marker}".encode()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in env.split(b"\0") and state != b"Z":
            found.append(int(name))
    return found


def run_job(world: Path, argv: tuple[str, ...], marker: str, **overrides: Any) -> ContainedResult:
    fields: dict[str, Any] = {
        "argv": argv,
        "cwd": str(world),
        "env": {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "RAMPART_ESCAPE_MARKER": marker},
        "write_paths": (str(world),),
        "deny_read_paths": (),
        "connect_ports": (),
        "run_as": DYNAMIC,
        "timeout_s": 30.0,
    }
    fields.update(overrides)
    return run_contained(ContainmentSpec(**fields))


def sh(world: Path, script: str, marker: str, **overrides: Any) -> ContainedResult:
    return run_job(world, ("/bin/sh", "-c", dedent(script)), marker, **overrides)


def py(world: Path, code: str, marker: str, **overrides: Any) -> ContainedResult:
    return run_job(world, (JOB_PY, "-c", dedent(code)), marker, **overrides)


def assert_nothing_survives(result: ContainedResult, marker: str, escapees: list[int]) -> None:
    assert result.refused is None, result.refused
    c = result.containment
    assert c is not None and c.level == "full"
    assert jobscope.DYNAMIC_UID_MIN <= c.uid <= jobscope.DYNAMIC_UID_MAX
    assert c.user == f"dynamic:{c.uid}"
    assert escapees, result.stdout  # the job did start processes that left its group
    assert marked_processes(marker) == []
    assert jobscope.processes_of_uid(c.uid) == []
    for pid in escapees:
        assert not Path(f"/proc/{pid}").exists() or jobscope._uids_of(pid) is None or \
            c.uid not in (jobscope._uids_of(pid) or ())
    assert result.killed >= len(escapees), (result.killed, escapees)


def pids_in(out: bytes) -> list[int]:
    return [int(x) for x in out.split() if x.isdigit()]


# --- the escapes -----------------------------------------------------------------------------------


def test_T9_setsid_escapee_is_killed_when_the_job_ends(world: Path, reaper: str) -> None:
    marker = uuid.uuid4().hex
    result = sh(world, """
        setsid sh -c 'sleep 300' &
        echo $!
        sleep 0.3
        """, marker)
    assert result.exit_code == 0, result.stderr
    assert result.containment is not None and result.containment.reaper == reaper
    assert_nothing_survives(result, marker, pids_in(result.stdout))


def test_T9_double_fork_into_a_new_process_group_is_killed(world: Path, reaper: str) -> None:
    marker = uuid.uuid4().hex
    result = py(world, """
        import os, time
        r, w = os.pipe()
        if os.fork() == 0:
            if os.fork() == 0:
                os.setpgid(0, 0)  # out of the job's process group, not even in its session's group
                os.write(w, str(os.getpid()).encode())
                os.close(w)
                time.sleep(300)
                os._exit(0)
            os._exit(0)  # the middle child exits: the grandchild is orphaned
        os.close(w)
        print(os.read(r, 64).decode(), flush=True)
        """, marker)
    assert result.exit_code == 0, result.stderr
    assert result.containment is not None and result.containment.reaper == reaper
    assert_nothing_survives(result, marker, pids_in(result.stdout))


def test_T9_daemon_style_escapee_is_killed(world: Path, reaper: str) -> None:
    marker = uuid.uuid4().hex
    result = py(world, """
        import os, time
        r, w = os.pipe()
        if os.fork() == 0:          # daemon(3): fork, setsid, fork, chdir /, close fds
            os.setsid()
            if os.fork() == 0:
                os.chdir("/")
                os.write(w, str(os.getpid()).encode())
                null = os.open("/dev/null", os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.closerange(3, 1024)
                time.sleep(300)
                os._exit(0)
            os._exit(0)
        os.close(w)
        print(os.read(r, 64).decode(), flush=True)
        """, marker)
    assert result.exit_code == 0, result.stderr
    assert result.containment is not None and result.containment.reaper == reaper
    assert_nothing_survives(result, marker, pids_in(result.stdout))


def test_T9_escapee_ignoring_sigterm_is_killed_at_the_time_limit(world: Path, reaper: str) -> None:
    marker = uuid.uuid4().hex
    result = sh(world, """
        trap '' TERM
        sleep 300 &
        echo $!
        setsid sh -c "trap '' TERM; sleep 300" &
        echo $!
        sleep 300
        """, marker, timeout_s=1.5)
    assert result.timed_out
    assert result.signal == signal.SIGKILL  # SIGTERM was ignored: the grace period ran out
    assert result.containment is not None and result.containment.reaper == reaper
    # Its own group died with it at the time limit; what left the group is counted.
    assert_nothing_survives(result, marker, pids_in(result.stdout)[1:])


def test_T9_background_ignoring_sigterm_is_killed_when_the_job_ends(world: Path, reaper: str) -> None:
    marker = uuid.uuid4().hex
    result = sh(world, "trap '' TERM; sleep 300 &\necho $!\n", marker)
    assert result.exit_code == 0
    assert_nothing_survives(result, marker, pids_in(result.stdout))
    assert result.killed == 1


def test_T9_a_job_that_leaves_nothing_behind_reports_zero_killed(world: Path, reaper: str) -> None:
    result = sh(world, "sleep 0.1 & wait\necho ok\n", uuid.uuid4().hex)
    assert (result.exit_code, result.stdout, result.killed) == (0, b"ok\n", 0)
    assert result.containment is not None and result.containment.reaper == reaper


# --- no kill-all scope: refused, or said -----------------------------------------------------------


def test_T9_no_kill_all_scope_refuses_a_full_job_before_it_runs(
    world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared named user and no cgroup: only the process group could be killed."""
    monkeypatch.setattr(jobscope, "_UNSAFE_DISABLE_CGROUP", True)
    proof = world / "ran"
    result = sh(world, f"touch {proof}\nsetsid sleep 300 &\n", uuid.uuid4().hex,
                run_as="nobody", require="full")
    assert result.refused is not None and "kill scope=process-group" in result.refused
    assert result.containment is None and result.exit_code != 0
    assert not proof.exists()  # nothing of the job ran


def test_T9_no_kill_all_scope_is_reported_when_the_device_accepts_less(
    world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobscope, "_UNSAFE_DISABLE_CGROUP", True)
    marker = uuid.uuid4().hex
    result = sh(world, "sleep 0.2 &\necho $!\n", marker, run_as="nobody", require="filesystem")
    assert result.refused is None
    c = result.containment
    assert c is not None and (c.reaper, c.level, c.user) == ("process-group", "filesystem", "nobody")
    assert result.killed == 1  # its own group is still killed, and counted
    assert marked_processes(marker) == []


# --- one uid per job ---------------------------------------------------------------------------------


def test_T3_concurrent_jobs_get_different_uids_and_cannot_touch_each_other(
    world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Job A tries to signal, ptrace and read job B. Landlock is off (forced ABI 0), so
    only the uid separates them; B must be untouched and finish normally."""
    monkeypatch.setattr(containment, "_UNSAFE_FORCE_ABI", 0)
    b_dir = world / "b"
    b_dir.mkdir(mode=0o777)
    b_dir.chmod(0o777)
    pid_file, done = b_dir / "pid", b_dir / "done"
    results: dict[str, ContainedResult] = {}

    def job_b() -> None:
        results["b"] = py(world, f"""
            import os, time
            open({str(pid_file)!r} + ".tmp", "w").write(str(os.getpid()))
            os.rename({str(pid_file)!r} + ".tmp", {str(pid_file)!r})
            deadline = time.time() + 20
            while not os.path.exists({str(done)!r}) and time.time() < deadline:
                time.sleep(0.02)
            print("b alive", os.getuid())
            """, uuid.uuid4().hex, require="none")

    tb = threading.Thread(target=job_b)
    tb.start()
    try:
        deadline = time.time() + 20
        while not pid_file.exists() and time.time() < deadline:
            time.sleep(0.02)
        b_pid = int(pid_file.read_text())
        a = py(world, f"""
            import ctypes, errno, os, signal
            def attempt(fn):
                try:
                    fn()
                    return "ok"
                except OSError as e:
                    return errno.errorcode.get(e.errno, str(e.errno))
            libc = ctypes.CDLL(None, use_errno=True)
            def ptrace():
                if libc.ptrace(16, {b_pid}, None, None) != 0:  # PTRACE_ATTACH
                    raise OSError(ctypes.get_errno(), "ptrace")
            def environ():
                open("/proc/{b_pid}/environ", "rb").read()
            print(attempt(lambda: os.kill({b_pid}, 0)), attempt(lambda: os.kill({b_pid}, signal.SIGKILL)),
                  attempt(ptrace), attempt(environ), os.getuid())
            """, uuid.uuid4().hex, require="none")
    finally:
        done.touch()
        tb.join(timeout=30)
    b = results["b"]
    assert a.containment is not None and b.containment is not None
    assert a.containment.uid != b.containment.uid
    assert a.containment.reaper in ("cgroup", "uid")
    sig0, sigkill, ptrace, environ, a_uid = a.stdout.split()
    assert (sig0, sigkill, ptrace, environ) == (b"EPERM", b"EPERM", b"EPERM", b"EACCES"), a.stdout
    assert int(a_uid) == a.containment.uid
    # No state changed: B was neither killed nor stopped, and finished on its own.
    assert (b.exit_code, b.signal, b.timed_out) == (0, None, False), b.stderr
    assert b.stdout == f"b alive {b.containment.uid}\n".encode()


def test_T9_process_limit_counts_only_the_jobs_own_processes(world: Path) -> None:
    """RLIMIT_NPROC counts per uid: with a uid per job, two jobs' processes never add up."""
    code = """
        import os, time
        kids = []
        for _ in range(5):
            pid = os.fork()
            if pid == 0:
                time.sleep(2)
                os._exit(0)
            kids.append(pid)
        for pid in kids:
            os.waitpid(pid, 0)
        print("forked", len(kids))
        """
    results: list[ContainedResult] = []
    threads = [threading.Thread(target=lambda: results.append(
        py(world, code, uuid.uuid4().hex, limits=ContainmentLimits(processes=8)))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 3
    assert all(r.stdout == b"forked 5\n" for r in results), [r.stdout + r.stderr for r in results]
    assert len({r.containment.uid for r in results if r.containment}) == 3


def test_dynamic_uids_are_free_distinct_and_released(tmp_path: Path) -> None:
    lock_dir = str(tmp_path / "locks")
    users = [jobscope.allocate_dynamic_user(lock_dir=lock_dir) for _ in range(20)]
    try:
        uids = [u.uid for u in users]
        assert len(set(uids)) == 20
        for uid in uids:
            assert jobscope.DYNAMIC_UID_MIN <= uid <= jobscope.DYNAMIC_UID_MAX
            assert not jobscope._has_account(uid)
            assert jobscope.processes_of_uid(uid) == []
        assert sorted(os.listdir(lock_dir)) == sorted(str(u) for u in uids)
    finally:
        for u in users:
            u.release()
    assert os.listdir(lock_dir) == []
    assert not any(u.held for u in users)


def test_dynamic_uid_with_a_running_process_is_never_leased(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A uid some process already runs as (say, a leftover of an agent that crashed) is not free."""
    uid = 65519
    assert not jobscope._has_account(uid)
    squatter = subprocess.Popen(["/bin/sleep", "30"], user=uid, group=uid, extra_groups=[])
    try:
        monkeypatch.setattr(jobscope, "DYNAMIC_UID_MIN", uid)
        monkeypatch.setattr(jobscope, "DYNAMIC_UID_MAX", uid)
        with pytest.raises(jobscope.UidUnavailable):
            jobscope.allocate_dynamic_user(lock_dir=str(tmp_path / "locks"))
        assert squatter.poll() is None  # refusing to lease did not touch it
    finally:
        squatter.kill()
        squatter.wait()


def test_dynamic_uid_leased_by_another_agent_is_never_leased(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock_dir = str(tmp_path / "locks")
    monkeypatch.setattr(jobscope, "DYNAMIC_UID_MIN", 65000)
    monkeypatch.setattr(jobscope, "DYNAMIC_UID_MAX", 65000)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from rampart.agent import jobscope;"
            "jobscope.DYNAMIC_UID_MIN = jobscope.DYNAMIC_UID_MAX = 65000;"
            "u = jobscope.allocate_dynamic_user(lock_dir=sys.argv[2]); print(u.uid, flush=True);"
            "sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(Path(jobscope.__file__).parents[2]), lock_dir],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "65000"
        with pytest.raises(jobscope.UidUnavailable):
            jobscope.allocate_dynamic_user(lock_dir=lock_dir)
    finally:
        with contextlib.suppress(OSError):
            assert holder.stdin is not None
            holder.stdin.close()
        holder.wait(timeout=10)
        assert holder.stdout is not None
        holder.stdout.close()
    with jobscope.dynamic_user(lock_dir=lock_dir) as user:  # released by its holder: free again
        assert user.uid == 65000


# --- the receipt ----------------------------------------------------------------------------------


def test_receipts_of_older_agents_still_decode() -> None:
    old = {"level": "full", "landlock_abi": 6, "filesystem": True, "network": True,
           "no_new_privs": True, "user": "nobody", "uid": 65534, "timeout_s": 60.0}
    report = msgspec.json.decode(msgspec.json.encode(old), type=ContainmentReport)
    assert (report.reaper, report.killed) == ("process-group", 0)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode({**old, "killed": -1}), type=ContainmentReport)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode({**old, "reaper": "hope"}), type=ContainmentReport)


@pytest.fixture(scope="module")
def agent_env() -> Iterator[Any]:
    from harness.agent import AgentProcess
    from harness.mini_server import MiniServer
    from harness.tenant import Tenant

    base = Path(tempfile.mkdtemp(prefix="rampart-escape-agent-"))
    base.chmod(0o755)
    scratch = base / "scratch"
    scratch.mkdir()
    scratch.chmod(0o777)
    tenant = Tenant()
    server = MiniServer(base / "server", tenant).start()
    agent = AgentProcess(base / "agent")
    try:
        r = agent.enroll(server.url, server.new_token(), tenant.root_sha256, server.cert_sha256,
                         "--write-root", str(scratch))
        assert r.returncode == 0, r.stderr
        agent.start()
        server.wait_connected(agent.device_id)
        yield tenant, server, agent, scratch
    finally:
        agent.stop()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_T3_signed_receipt_counts_the_escapees_a_hostile_script_left(agent_env: Any) -> None:
    """Through a real agent: the hostile script's escapees die, and the device-signed receipt says so."""
    tenant, server, agent, scratch = agent_env
    marker = uuid.uuid4().hex
    script = dedent(f"""\
        export RAMPART_ESCAPE_MARKER={marker}
        setsid sh -c 'sleep 300' &
        ( trap '' TERM; exec setsid sleep 300 ) &
        sleep 0.3
        id -u
        """).encode()
    grant = tenant.grant([agent.device_id])
    job = tenant.job(grant, [agent.device_id], script, writes=(str(scratch),))
    jid = server.publish(job, grant, {"script": script}, [agent.device_id])
    receipt = server.wait_receipt(jid, agent.device_id)
    assert receipt.outcome == "ran", (receipt.refusal, receipt.detail)
    c = receipt.containment
    assert c is not None and c.level == "full" and c.reaper in ("cgroup", "uid")
    assert c.reaper == ("cgroup" if CGROUP else "uid")
    uid = int(base64.b64decode(receipt.stdout).split()[-1])
    assert uid == c.uid and c.user == f"dynamic:{uid}"
    assert c.killed >= 3  # setsid's sh and its sleep, and the second sleep
    assert marked_processes(marker) == []
    assert jobscope.processes_of_uid(uid) == []
