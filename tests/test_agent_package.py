"""The agent's Debian package (issue 16): built from this checkout by the build `make deb` runs,
installed by the one line `rampart enroll new --package` prints into a scratch root with the real
dpkg (``--root``, maintainer scripts run with ``DPKG_ROOT`` instead of a chroot), and the
installed ``rampart-agent`` enrols with a real server, reports its inventory and runs a signed job.

Two commands of that line would change this machine, so they are stood in for on its PATH:
``apt-get install -y ./FILE`` runs ``dpkg --root=SCRATCH -i FILE`` (same package, same scripts)
and ``systemctl`` records its arguments (the test starts ``rampart-agent run`` itself).
The scratch root's dpkg database holds this machine's ``python3`` entry, so the package's
``Depends`` is checked for real. Built once per session (about 15 s with the wheels fetched).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness.agent import AgentProcess, traversable_dir
from harness.operators import TenantSetup, approved_grant, bootstrap_owner, ok, setup_tenant, signed_job
from harness.server import RunningServer, start_server

import rampart
from rampart import tlspin, trust
from rampart.cli.config import Config, Session

pytestmark = pytest.mark.client_side
REPO = Path(__file__).resolve().parent.parent
PASSPHRASE = "package passphrase"
SERVER_DISTS = ("fastapi", "sqlalchemy", "uvicorn", "alembic", "starlette", "psycopg", "typer", "rich",
                "jinja2", "pydantic", "cyclonedx")
SERVER_MODULES = ("rampart/server/", "rampart/cli/", "rampart/console/", "rampart/webui/", "rampart/sbom.py")


@dataclass
class Built:
    deb: Path
    sha256: str
    bundle: Path
    bundle_sha256: str


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """`make deb agent-bundle`'s build, once: both artefacts and the SHA-256 lines it prints."""
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, str(REPO / "scripts/build_agent_package.py"), "deb", "bundle",
                        "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    (deb,) = out.glob("*.deb")
    (bundle,) = out.glob("rampart-agent-*.tar.gz")
    sums = {m.group(2): m.group(1) for m in re.finditer(r"^SHA-256 ([0-9a-f]{64})  (\S+)$", r.stdout, re.M)}
    assert set(sums) == {deb.name, bundle.name}, r.stdout
    return Built(deb, sums[deb.name], bundle, sums[bundle.name])


def scratch_root(base: Path) -> Path:
    """An empty root with a dpkg database that knows this machine's python3 (for Depends)."""
    root = base / "root"
    admin = root / "var/lib/dpkg"
    (admin / "info").mkdir(parents=True)
    (admin / "updates").mkdir()
    (admin / "available").touch()
    host = subprocess.run(["dpkg-query", "-s", "python3"], capture_output=True, text=True, check=True).stdout
    (admin / "status").write_text(host.rstrip("\n") + "\n\n")
    return root


def shims(base: Path, root: Path) -> Path:
    """``apt-get install -y ./FILE`` → the real dpkg into ``root``; ``systemctl`` → a record."""
    d = base / "shims"
    d.mkdir()
    (d / "apt-get").write_text(
        "#!/bin/sh\nset -e\n[ \"$1\" = install ] && [ \"$2\" = -y ] || exit 64\n"
        f"exec dpkg --root={root} --force-script-chrootless --log={base}/dpkg.log -i \"$3\"\n")
    (d / "systemctl").write_text(f"#!/bin/sh\necho \"$@\" >> {base}/systemctl.calls\n")
    for f in d.iterdir():
        f.chmod(0o755)
    return d


def cli_env(base: Path, server: RunningServer, t: TenantSetup) -> dict[str, str]:
    """The owner's `rampart` configuration as `rampart login` and `key new` leave it."""
    cfg = Config(base / "cli")
    cfg.ensure()
    cfg.save_session(Session(server=server.url, cert_sha256=tlspin.fingerprint(server.cert_der),
                             username=t.owner.username, token=t.owner.token), server.cert_der)
    cfg.save_key(t.owner_key.key_id, trust.encrypt_private_key(t.owner_key, PASSPHRASE),
                 name=t.owner.username, tenant=t.id, username=t.owner.username)
    cfg.save_root(t.id, 1, t.root_envelope.encode(), newest=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")}
    env.update(PYTHONPATH=str(REPO), RAMPART_CONFIG_DIR=str(base / "cli"), TZ="UTC",
               RAMPART_KEY_PASSPHRASE=PASSPHRASE)
    return env


def run_line(line: str, cwd: Path, shim_dir: Path, root: Path,
             token: str) -> subprocess.CompletedProcess[str]:
    """The printed line in bash on the "device", the token pasted at its prompt (stdin)."""
    env = {"PATH": f"{shim_dir}:{root}/usr/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(cwd),
           "LANG": "C.UTF-8"}
    return subprocess.run(["bash", "-c", line], input=token + "\n", capture_output=True, text=True,
                          timeout=120, env=env, cwd=cwd)


@dataclass
class Installed:
    server: RunningServer
    t: TenantSetup
    built: Built
    base: Path
    root: Path
    line: str
    printed: str
    token: str
    run: subprocess.CompletedProcess[str]
    agent: AgentProcess


@pytest.fixture(scope="module")
def installed(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = traversable_dir("rampart-pkg-")  # the job's own uid reads the package's tree
    server = start_server(tmp_path_factory.mktemp("srv"))
    agent: AgentProcess | None = None
    try:
        owner = bootstrap_owner(server)
        t = setup_tenant(owner, "acme")
        root = scratch_root(base)
        device_dir = base / "device"
        device_dir.mkdir()
        shutil.copy(built.deb, device_dir)  # the operator copied the file to the device
        state = root / "var/lib/rampart-agent"
        r = subprocess.run([sys.executable, "-m", "rampart.cli.main", "enroll", "new", "acme", "--ttl", "10m",
                            "--package", str(built.deb), "--state", str(state)],
                           capture_output=True, text=True, timeout=120, cwd=REPO, stdin=subprocess.DEVNULL,
                           env=cli_env(base, server, t))
        assert r.returncode == 0, r.stdout + r.stderr
        lines = [x.strip() for x in r.stdout.splitlines()]
        line = next(x for x in lines if x.startswith("read "))
        token = next(x for x in lines if x.startswith("one-time enrolment token: ")).split(": ", 1)[1]
        done = run_line(line, device_dir, shims(base, root), root, token)
        agent = AgentProcess(state, [str(root / "usr/bin/rampart-agent")])
        if done.returncode == 0:
            agent.device_id = done.stdout.strip().splitlines()[-1].split(": ", 1)[1]
            ok(owner.http.post(f"/tenants/{t.id}/devices/{agent.device_id}/approve"))
            agent.start()
        yield Installed(server, t, built, base, root, line, r.stdout, token, done, agent)
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_the_printed_line_holds_no_token_pins_the_server_and_checks_the_package(installed: Installed) -> None:
    i = installed
    assert i.token not in i.line and "--token" not in i.line
    assert f"{i.built.sha256}  {i.built.deb.name}" in i.line and "sha256sum -c -" in i.line
    assert f"package SHA-256 {i.built.sha256}" in i.printed
    assert f"--cert-sha256 {i.server.cert_sha256}" in i.line
    assert f"--root-sha256 {trust.root_sha256(i.t.root_envelope.encode())}" in i.line
    # The line ran whole: checked, installed, enrolled, then enabled and started the unit.
    assert i.run.returncode == 0, i.run.stdout + i.run.stderr
    assert f"{i.built.deb.name}: OK" in i.run.stdout
    assert (i.base / "systemctl.calls").read_text().splitlines()[-1] == "enable --now rampart-agent"
    status = subprocess.run(["dpkg-query", f"--root={i.root}", "-W", "-f", "${Status} ${Version}",
                             "rampart-agent"], capture_output=True, text=True, check=True).stdout
    assert status == f"install ok installed {rampart.__version__}"


def test_the_installed_agent_enrols_reports_and_runs_a_signed_job(installed: Installed) -> None:
    i = installed
    assert i.run.returncode == 0, i.run.stderr
    owner, t = i.t.owner, i.t
    deadline = time.time() + 60
    while time.time() < deadline:
        inv = owner.http.get(f"/tenants/{t.id}/devices/{i.agent.device_id}/inventory")
        if inv.status_code == 200:
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"no inventory:\n{i.agent.log_text()[-3000:]}")
    assert inv.json()["agent"]["version"] == rampart.__version__
    grant = approved_grant(t, [i.agent.device_id])
    env, payloads, job_id = signed_job(t, grant, [i.agent.device_id], b"echo from-the-package\n")
    ok(t.tech.http.post(f"/tenants/{t.id}/jobs", json={"envelope": env, "payloads": payloads}))
    deadline = time.time() + 60
    receipt = None
    while receipt is None and time.time() < deadline:
        receipt = ok(t.tech.http.get(f"/jobs/{job_id}"))["targets"][0]["receipt"]
        time.sleep(0.3)
    assert receipt is not None, i.agent.log_text()[-3000:]
    assert receipt["outcome"] == "ran" and receipt["exit_code"] == 0, receipt
    # It is the package's code that runs, under the system Python, not this checkout's.
    status = i.agent.status()
    assert status["device"] == i.agent.device_id
    ps = Path(f"/proc/{i.agent.proc.pid}/cmdline").read_bytes().split(b"\0") if i.agent.proc else []
    assert re.fullmatch(rb"/usr/bin/python3\.1[1-3]", ps[0]) and ps[1] == b"-I", ps
    assert any(a.startswith(f"{i.root}/usr/lib/rampart-agent/py3.".encode()) for a in ps), ps


def interpreters(version: str) -> list[Path]:
    """CPython ``version`` on this machine: the system's, and pyenv's builds if there are any."""
    found = [Path(f"/usr/bin/python{version}")]
    found += sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"))
    return [p for p in found if p.is_file() and os.access(p, os.X_OK)]


def test_each_python_tree_runs_the_installed_agent(installed: Installed) -> None:
    """Every py3.X tree imports the agent's native dependencies and reads its state with that
    Python (3.11 always: the system's; 3.12 and 3.13 where this machine has them)."""
    i = installed
    lib = i.root / "usr/lib/rampart-agent"
    trees = sorted(p.name.removeprefix("py") for p in lib.iterdir())
    assert trees == ["3.11", "3.12", "3.13"]
    boot = re.search(r"-c '([^']+)'", (i.root / "usr/bin/rampart-agent").read_text())
    assert boot is not None
    ran = []
    for v in trees:
        for python in interpreters(v)[:1]:
            r = subprocess.run([str(python), "-I", "-B", "-c", boot.group(1), str(lib / f"py{v}"), "status",
                                "--state", str(i.agent.state), "--json"], capture_output=True, text=True,
                               timeout=60)
            assert r.returncode == 0, (v, r.stderr)
            assert json.loads(r.stdout)["device"] == i.agent.device_id
            ran.append(v)
    assert "3.11" in ran, ran


def test_secrets_dirs_unit_and_contents(installed: Installed) -> None:
    i = installed
    for d in ("etc/rampart-agent", "var/lib/rampart-agent"):
        st = (i.root / d).lstat()
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == 0, d
    assert stat.S_IMODE((i.root / "var/lib/rampart-agent/device.key").stat().st_mode) == 0o600
    unit = (i.root / "usr/lib/systemd/system/rampart-agent.service").read_text()
    assert "\nExecStart=/usr/bin/rampart-agent run --state /var/lib/rampart-agent\n" in unit
    # Checked as installed (./run-tests installs systemd-analyze), its binary in the scratch root.
    probe = i.base / "unit" / "rampart-agent.service"
    probe.parent.mkdir(exist_ok=True)
    probe.write_text(unit.replace("ExecStart=/usr/bin/", f"ExecStart={i.root}/usr/bin/"))
    r = subprocess.run(["systemd-analyze", "verify", str(probe)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    listing = subprocess.run(["dpkg-deb", "-c", str(i.built.deb)], capture_output=True, text=True,
                             check=True).stdout
    paths = [row.split()[-1] for row in listing.splitlines()]
    assert any(p.endswith("/rampart/agent/main.py") for p in paths)
    assert not [p for p in paths if any(m in p for m in SERVER_MODULES)]
    dists = {p.split("/")[5].split("-")[0].lower() for p in paths if ".dist-info/" in p}
    assert {"cryptography", "pynacl", "msgspec", "websockets", "httpx"} <= dists
    assert not dists & set(SERVER_DISTS), dists & set(SERVER_DISTS)
    # Nothing others can write, nothing set-id.
    for row in listing.splitlines():
        mode = row.split()[0]
        assert mode[5] != "w" and mode[8] != "w" and "s" not in mode, row


def test_dpkg_deb_info_fields(built: Built) -> None:
    def field(name: str) -> str:
        return subprocess.run(["dpkg-deb", "-f", str(built.deb), name], capture_output=True, text=True,
                              check=True).stdout.strip()

    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    assert field("Package") == "rampart-agent"
    assert field("Version") == rampart.__version__
    assert field("Architecture") == arch
    assert built.deb.name == f"rampart-agent_{rampart.__version__}_{arch}.deb"
    assert field("Depends") == "python3 (>= 3.11), python3 (<< 3.14)"
    assert int(field("Installed-Size")) > 1000
    assert hashlib.sha256(built.deb.read_bytes()).hexdigest() == built.sha256


def test_a_swapped_package_is_refused_before_anything_is_installed(installed: Installed) -> None:
    i = installed
    base = traversable_dir("rampart-pkg-evil-")
    try:
        root = scratch_root(base)
        device_dir = base / "device"
        device_dir.mkdir()
        evil = bytearray(i.built.deb.read_bytes())
        evil[-1] ^= 1
        (device_dir / i.built.deb.name).write_bytes(bytes(evil))
        r = run_line(i.line, device_dir, shims(base, root), root, "not-used")
        assert r.returncode != 0 and "FAILED" in r.stdout + r.stderr
        assert not (root / "usr/bin/rampart-agent").exists() and not (base / "dpkg.log").exists()
        assert not (base / "systemctl.calls").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_bundle_installs_under_opt_and_its_agent_enrols(installed: Installed) -> None:
    """The other distributions' install: unpack, install.sh (into a scratch root), enrol."""
    i = installed
    bundle = i.built.bundle
    assert hashlib.sha256(bundle.read_bytes()).hexdigest() == i.built.bundle_sha256
    base = traversable_dir("rampart-bundle-")
    try:
        subprocess.run(["tar", "-xzf", str(bundle), "-C", str(base)], check=True)
        root = base / "root"
        top = base / bundle.name.removesuffix(".tar.gz")
        r = subprocess.run([str(top / "install.sh"), "--root", str(root)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "enrols nothing and starts nothing" in r.stdout
        for d in ("etc/rampart-agent", "var/lib/rampart-agent"):
            assert stat.S_IMODE((root / d).stat().st_mode) == 0o700, d
        unit = (root / "etc/systemd/system/rampart-agent.service").read_text()
        assert "\nExecStart=/opt/rampart-agent/bin/rampart-agent run --state /var/lib/rampart-agent\n" in unit
        assert os.readlink(root / "usr/local/bin/rampart-agent") == "/opt/rampart-agent/bin/rampart-agent"
        lib = root / "opt/rampart-agent/lib"
        assert not [p for p in lib.rglob("*") if any(m in str(p) for m in SERVER_MODULES)]
        assert not [p for p in lib.rglob("*") if p.stat().st_mode & 0o022 and not p.is_symlink()]
        # Enrol with a token from the environment, never a flag.
        tok = ok(i.t.owner.http.post(f"/tenants/{i.t.id}/enrollment-tokens", json={"ttl_s": 600}))
        env = {"PATH": "/usr/bin:/bin", "RAMPART_ENROLL_TOKEN": tok["token"]}
        agent = str(root / "opt/rampart-agent/bin/rampart-agent")
        r = subprocess.run([agent, "enroll", "--server", i.server.url, "--root-sha256", tok["root_sha256"],
                            "--cert-sha256", i.server.cert_sha256,
                            "--state", str(root / "var/lib/rampart-agent")],
                           capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        device = r.stdout.strip().splitlines()[-1].split(": ", 1)[1]
        devices = ok(i.t.owner.http.get(f"/tenants/{i.t.id}/devices"))
        assert [d["status"] for d in devices if d["id"] == device] == ["pending"]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_enroll_new_refuses_a_file_that_is_not_an_agent_package(installed: Installed) -> None:
    i = installed
    other = i.base / "rampart-agent_0.1.0_amd64.tar"
    other.write_bytes(b"x")
    env = cli_env(i.base / "cli-bad", i.server, i.t)
    for bad, why in ((other, "not an agent package"), (i.base / "rampart-agent_9_amd64.deb", "No such file")):
        r = subprocess.run([sys.executable, "-m", "rampart.cli.main", "enroll", "new", "acme",
                            "--package", str(bad)], capture_output=True, text=True, timeout=120, cwd=REPO,
                           stdin=subprocess.DEVNULL, env=env)
        assert r.returncode != 0 and why in r.stderr and "token" not in r.stdout, r.stdout + r.stderr


def test_purge_removes_the_enrolment_and_touches_no_service_of_this_host(installed: Installed,
                                                                                tmp_path: Path) -> None:
    # Last in this module: it removes the package the other tests use.
    i = installed
    i.agent.stop()
    r = subprocess.run(["dpkg", f"--root={i.root}", "--force-script-chrootless", f"--log={tmp_path}/log",
                        "--purge", "rampart-agent"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (i.root / "var/lib/rampart-agent").exists() and not (i.root / "etc/rampart-agent").exists()
    assert not (i.root / "usr/lib/rampart-agent").exists() and not (i.root / "usr/bin/rampart-agent").exists()
    calls = (i.base / "systemctl.calls").read_text().splitlines()
    assert calls == ["enable --now rampart-agent"]  # DPKG_ROOT: the scripts leave this host's systemd alone
