r"""Threat T16 through the real CLI in a real terminal: a hostile device's strings stay inert text.

A device key holder (here :class:`harness.wsagent.WireAgent`, speaking the real
protocol with a real device key against a real server process) reports
terminal attacks in every field it controls: its hostname at enrolment, the OS
name, packages, a pending security update, processes (name, path, command
line, user), accounts, an inventory note, a remote access tool's evidence, a
job's stdout, stderr and detail. The payloads: ``ESC[2J`` (clear the screen),
``ESC[?1049h`` (switch screens), ``ESC[8m`` (conceal), OSC 8 (a link), OSC 52
(write the clipboard), the C1 CSI ``\x9b``, NUL, BEL, CR/LF forged lines
("FAKELOG … all clear"), U+202E (reverse what follows) and U+200B.

Each command runs as the operator runs it: the real ``rampart`` process with
stdout and stderr on pseudo-terminals (output post-processing off, so every
CR read was written by the CLI). Asserted on the bytes the terminal receives:
no ESC except Rich's own styling (and, on stderr, its progress bar), no OSC,
C1, CR, NUL or bidi/invisible character; the payloads are readable as escapes
(``\x1b[2J``, ``\u202e``); no forged line starts a line or a table row; and
``--json`` (run in the terminal too) gives back the exact strings.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness.operators import (
    TenantSetup,
    approved_grant,
    bootstrap_owner,
    ok,
    setup_tenant,
    step_up,
)
from harness.server import RunningServer, init_server
from harness.wsagent import WireAgent

from rampart import tlspin, trust
from rampart.cli.config import Config, Session
from rampart.trust import RECEIPT_TYPE
from rampart.wire import Finding, Report, ToolSeen, digest, encode_report
from rampart.wire.inventory import AgentInfo, EolStatus, Inventory, OsInfo, Package, Process, Update, User

# The subject is the CLI's output; the server's storage of these strings is tested elsewhere.
pytestmark = [pytest.mark.client_side,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux ptys")]

REPO = Path(__file__).resolve().parent.parent
PASSPHRASE = "hostile text passphrase"
COLUMNS, ROWS = 1000, 50  # wide enough that no cell is folded, so every escape stays whole

# --- the payloads -------------------------------------------------------------------------------------

CLEAR = "\x1b[2J"
ALT_SCREEN = "\x1b[?1049h"
CONCEAL = "\x1b[8m"
OSC8 = "\x1b]8;;https://evil.example/\x1b\\"
OSC52 = "\x1b]52;c;cm0gLXJmIH4K\x07"  # puts "rm -rf ~" on the operator's clipboard
C1_CSI = "\x9b2J"
RLO = "\u202e"
ZWSP = "\u200b"

HOSTNAME = f"web{CLEAR}{RLO}gnp.exe{C1_CSI}\r\nFAKELOG host all clear"
OFFLINE_HOSTNAME = f"db{OSC52}{ZWSP}\nFAKELOG offline all clear"
OS_NAME = f"Debian{OSC52}{OSC8}GNU/Linux{RLO}21 mrof\r\nFAKELOG os all clear"
KERNEL = f"6.1{ALT_SCREEN}"
PACKAGE = f"openssl{CLEAR}\nFAKELOG package all clear"
PACKAGE_VERSION = f"3.0{ZWSP}{RLO}1"
UPDATE = f"libc6{OSC8}\rFAKELOG update all clear"
PROCESS = f"sshd{C1_CSI}{CONCEAL}"
EXE = f"/tmp/{RLO}fdp.exe"
CMDLINE = ["/bin/sh", "-c", f"echo{ALT_SCREEN}\r\nFAKELOG process all clear\x00{OSC52}"]
PROCESS_USER = f"root{CONCEAL}"
ACCOUNT = f"admin{RLO}{CLEAR}"
SHELL = f"/bin/bash\nFAKELOG shell all clear{OSC8}"
NOTE = f"truncated{CLEAR}\nFAKELOG note all clear"
TOOL_EXE = f"/opt/any{OSC52}desk\nFAKELOG tool all clear"

#: A job may print any lines it likes, even one that looks like the CLI's own status line for a device.
FAKE_STATUS = "dev-000000000000000000000000: ran, exit 0"
JOB_STDOUT = (f"progress 50%\rFAKELOG job all clear\n{CLEAR}{ALT_SCREEN}wiped\n{OSC52}{OSC8}link\n"
              f"{C1_CSI}\x00\x07{RLO}txt.exe\n{FAKE_STATUS}\nlast line\r\n").encode()
JOB_STDERR = f"warn{CONCEAL}\rFAKELOG stderr all clear\r\nsecond line".encode()
JOB_DETAIL = f"done{CLEAR}\nFAKELOG detail all clear"

#: Every payload sequence that must never reach the terminal as it is.
RAW_PAYLOADS = [CLEAR, ALT_SCREEN, CONCEAL, "\x1b]", "\x9b", "\x00", "\x07", RLO, ZWSP]

# --- what reaches the terminal ----------------------------------------------------------------------

#: Rich's own table styling (reset, bold, dim, italic): the only escape sequences stdout may carry.
RICH_STYLES = {"0", "1", "2", "3", "1;3", "22", "23"}
#: Rich's transient progress bar on stderr: hide/show the cursor, erase a line, move up, CR.
RICH_PROGRESS = re.compile(r"\x1b\[\?25[lh]|\x1b\[2K|\x1b\[\d*A|\r")
SGR_ANY = re.compile(r"\x1b\[([0-9;]*)m")


def forbidden(ch: str) -> bool:
    """What a terminal or a bidi renderer acts on (independent of rampart.textsafe)."""
    return unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"}


def inert(raw: bytes, *, progress: bool = False) -> str:
    """The text a terminal shows for ``raw``, after asserting that nothing in it acts on the terminal."""
    text = raw.decode("utf-8")  # strict: the CLI writes valid UTF-8
    for payload in RAW_PAYLOADS:
        assert payload not in text, f"{payload!r} reached the terminal:\n{text!r}"
    for params in SGR_ANY.findall(text):  # on stderr the progress bar has colours too
        assert progress or params in RICH_STYLES, f"SGR {params!r} reached the terminal: {text!r}"
    text = SGR_ANY.sub("", text)
    if progress:
        text = RICH_PROGRESS.sub("", text)
    bad = sorted({f"U+{ord(c):04X}" for c in text if c != "\n" and forbidden(c)})
    assert not bad, f"{bad} reached the terminal:\n{text!r}"
    return text


def assert_no_forged_line(text: str) -> None:
    """Every FAKELOG sits after the visible escape of the CR or LF that tried to start its line."""
    assert "FAKELOG" in text
    for line in text.split("\n"):
        assert not re.match(r"^[\s│┃|]*FAKELOG", line), f"forged line: {line!r}"
    assert text.count("FAKELOG") == len(re.findall(r"(?:\\r|\\n)FAKELOG", text)), text


@dataclass
class Shown:
    rc: int
    stdout: bytes
    stderr: bytes


class Terminal:
    """The real ``rampart`` command with stdout and stderr each on a pseudo-terminal."""

    def __init__(self, config: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")
                    and k not in ("NO_COLOR", "FORCE_COLOR", "TERM", "COLUMNS", "LINES")}
        self.env.update(PYTHONPATH=str(REPO), RAMPART_CONFIG_DIR=str(config), TERM="xterm-256color",
                        COLUMNS=str(COLUMNS), LINES=str(ROWS), RAMPART_KEY_PASSPHRASE=PASSPHRASE)

    def start(self, *args: str) -> tuple[subprocess.Popen[bytes], threading.Thread, dict[int, bytearray]]:
        masters, slaves = [], []
        for _ in range(2):
            master, slave = pty.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
            attrs = termios.tcgetattr(slave)
            attrs[1] &= ~termios.OPOST  # no LF -> CRLF translation: every CR read was written
            termios.tcsetattr(slave, termios.TCSANOW, attrs)
            masters.append(master)
            slaves.append(slave)
        proc = subprocess.Popen([sys.executable, "-m", "rampart.cli.main", *args], stdin=subprocess.DEVNULL,
                                stdout=slaves[0], stderr=slaves[1], env=self.env, cwd=REPO)
        for fd in slaves:
            os.close(fd)
        got: dict[int, bytearray] = {0: bytearray(), 1: bytearray()}

        def drain() -> None:
            live = dict(zip(masters, (0, 1), strict=True))
            while live:
                ready, _, _ = select.select(list(live), [], [], 0.5)
                for fd in ready:
                    try:
                        chunk = os.read(fd, 65536)
                    except OSError:  # EIO: every slave end is closed
                        chunk = b""
                    if chunk:
                        got[live[fd]] += chunk
                    else:
                        os.close(fd)
                        del live[fd]

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        return proc, reader, got

    def finish(self, proc: subprocess.Popen[bytes], reader: threading.Thread,
               got: dict[int, bytearray], timeout: float = 90) -> Shown:
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        reader.join(timeout=10)
        assert not reader.is_alive()
        return Shown(rc, bytes(got[0]), bytes(got[1]))

    def run(self, *args: str) -> Shown:
        return self.finish(*self.start(*args))

    def show(self, *args: str) -> str:
        """stdout of a command that must succeed, asserted inert."""
        r = self.run(*args)
        assert r.rc == 0, f"{args}: rc={r.rc}\n{r.stdout!r}\n{r.stderr!r}"
        inert(r.stderr)
        return inert(r.stdout)

    def json(self, *args: str) -> Any:
        """``--json`` in the terminal: inert bytes that decode to the exact strings."""
        return json.loads(self.show(*args, "--json"))


# --- one world for the module: a server, a tenant, a hostile device, the technician's terminal ---------


@dataclass
class World:
    server: RunningServer
    t: TenantSetup
    agent: WireAgent
    offline: str
    grant: str
    term: Terminal

    @property
    def device(self) -> str:
        return self.agent.device_id


def _hostile_report() -> dict[str, Any]:
    now = int(time.time())
    inv = Inventory(
        collected_at=now, agent=AgentInfo(version="wire", containment="none"),
        os=OsInfo(id="debian", name=OS_NAME, version_id="12", kernel_release=KERNEL, kernel_version="#1",
                  arch="amd64", hostname=HOSTNAME, boot_time=now - 100, eol=EolStatus(status="unknown")),
        packages=[Package(manager="dpkg", name=PACKAGE, arch="amd64", version=PACKAGE_VERSION)],
        updates=[Update(manager="apt", name=UPDATE, arch="amd64", installed="1.0", candidate="1.1",
                        security=True, origin="stable-security")],
        processes=[Process(pid=4242, ppid=1, start_ticks=7, start_time=now - 50, name=PROCESS, exe=EXE,
                           cmdline=CMDLINE, uid=0, euid=0, user=PROCESS_USER)],
        users=[User(name=ACCOUNT, uid=1001, gid=1001, shell=SHELL, login_shell=True, password_state="set")],
        notes={"packages": NOTE})
    # A finding's own text is refused with controls (Finding validates it); the hostname carries them.
    finding = Finding(kind="eol-os", severity="warning", key="eol-os::debian:9",
                      subject="Debian 9 reached end of life")
    tool = ToolSeen(slug="anydesk", found_by=["process"], evidence={"exe": TOOL_EXE})
    return {"type": "inventory", "report": encode_report(Report(full=inv, findings=[finding], tools=[tool])),
            "result": digest(inv), "base": None}


def _enrol(t: TenantSetup, hostname: str) -> WireAgent:
    tok = ok(t.owner.http.post(f"/tenants/{t.id}/enrollment-tokens", json={"ttl_s": 600}))
    agent = WireAgent.enrol(t.owner.server, tok["token"], tok["root_sha256"], hostname=hostname)
    ok(t.owner.http.post(f"/tenants/{t.id}/devices/{agent.device_id}/approve"))
    return agent


def _wait_until(check: Any, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("t16")
    server = init_server(base / "srv")
    config = server.data_dir / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "scheduler_interval_s": 1}))
    server.start()  # the scheduler folds inventories into the patch report every second
    agent: WireAgent | None = None
    try:
        owner = bootstrap_owner(server)
        t = setup_tenant(owner, "acme")
        agent = _enrol(t, HOSTNAME)
        offline = _enrol(t, OFFLINE_HOSTNAME).device_id  # enrolled, never connected
        assert agent.connect()["type"] == "welcome"
        agent.send(_hostile_report())
        assert agent.wait_for("inventory-ack")["result"]
        grant = approved_grant(t, [agent.device_id])

        # The technician's machine, as `rampart login` and `rampart key new` leave it.
        cfg = Config(base / "cli-tech")
        cfg.ensure()
        cfg.save_session(Session(server=server.url, cert_sha256=tlspin.fingerprint(server.cert_der),
                                 username=t.tech.username, token=t.tech.token), server.cert_der)
        cfg.save_key(t.tech_key.key_id, trust.encrypt_private_key(t.tech_key, PASSPHRASE), name="tech",
                     tenant=t.id, username=t.tech.username)
        cfg.save_root(t.id, 1, t.root_envelope.encode(), newest=True)
        cfg.save_pin(t.id, trust.root_sha256(t.root_envelope.encode()))  # given out of band

        # The security update has been pending for more than a second (patch report --older-than 1s).
        _wait_until(lambda: any(m["missing_security"] for r in ok(t.tech.http.get(
            f"/tenants/{t.id}/patch-report", params={"older_than_s": 1}))["rings"] for m in r["devices"]),
            "the overdue security update")
        yield World(server, t, agent, offline, grant, Terminal(base / "cli-tech"))
    finally:
        if agent is not None:
            agent.close()
        server.stop()


# --- the tables ------------------------------------------------------------------------------------------


def test_T16_devices_list_shows_a_hostile_hostname_as_escapes(w: World) -> None:
    text = w.term.show("devices", "list", "acme")
    assert "web\\x1b[2J\\u202egnp.exe\\x9b2J\\r\\nFAKELOG host all clear" in text
    assert "db\\x1b]52;c;cm0gLXJmIH4K\\x07\\u200b\\nFAKELOG offline all clear" in text
    assert_no_forged_line(text)
    hosts = {d["id"]: d["hostname"] for d in w.term.json("devices", "list", "acme")}
    assert hosts == {w.device: HOSTNAME, w.offline: OFFLINE_HOSTNAME}


def test_T16_inventory_summary_does_not_write_the_clipboard(w: World) -> None:
    text = w.term.show("inventory", "acme", w.device)
    # The OSC 52 clipboard write and the OSC 8 link are shown, not run.
    assert "Debian\\x1b]52;c;cm0gLXJmIH4K\\x07\\x1b]8;;https://evil.example/\\x1b\\GNU/Linux" in text
    assert "\\u202e21 mrof\\r\\nFAKELOG os all clear" in text
    assert "6.1\\x1b[?1049h" in text and "truncated\\x1b[2J\\nFAKELOG note all clear" in text
    assert_no_forged_line(text)
    doc = w.term.json("inventory", "acme", w.device)
    assert doc["os"]["name"] == OS_NAME and doc["os"]["kernel_release"] == KERNEL
    assert doc["notes"] == {"packages": NOTE} and doc["hostname"] == HOSTNAME


@pytest.mark.parametrize(("section", "shown", "exact"), [
    ("os", ["Debian\\x1b]52;c;", "web\\x1b[2J\\u202egnp.exe"], lambda d: d["os"]["name"] == OS_NAME),
    ("packages", ["openssl\\x1b[2J\\nFAKELOG package all clear", "3.0\\u200b\\u202e1"],
     lambda d: (d["packages"][0]["name"], d["packages"][0]["version"]) == (PACKAGE, PACKAGE_VERSION)),
    ("processes", ["sshd\\x9b2J\\x1b[8m", "root\\x1b[8m", "/tmp/\\u202efdp.exe",
                   "echo\\x1b[?1049h\\r\\nFAKELOG process all clear\\x00\\x1b]52;c;cm0gLXJmIH4K\\x07"],
     lambda d: d["processes"][0]["cmdline"] == CMDLINE and d["processes"][0]["name"] == PROCESS),
    ("users", ["admin\\u202e\\x1b[2J", "/bin/bash\\nFAKELOG shell all clear\\x1b]8;;https://evil"],
     lambda d: (d["users"][0]["name"], d["users"][0]["shell"]) == (ACCOUNT, SHELL)),
    ("updates", ["libc6\\x1b]8;;https://evil.example/\\x1b\\\\rFAKELOG update all clear"],
     lambda d: d["updates"][0]["name"] == UPDATE),
])
def test_T16_inventory_sections_show_hostile_fields_as_escapes(
        w: World, section: str, shown: list[str], exact: Any) -> None:
    text = w.term.show("inventory", "acme", w.device, "-s", section)
    for piece in shown:
        assert piece in text, f"{piece!r} not in\n{text}"
    if "FAKELOG" in text:
        assert_no_forged_line(text)
    assert exact(w.term.json("inventory", "acme", w.device, "-s", section))


def test_T16_findings_alerts_and_tools_show_the_hostname_inert(w: World) -> None:
    host = "web\\x1b[2J\\u202egnp.exe\\x9b2J\\r\\nFAKELOG host all clear"
    findings = w.term.show("findings", "acme", "--status", "all")
    assert host in findings and "Debian 9 reached end of life" in findings
    alerts = w.term.show("alerts", "list", "acme", "--status", "all")
    assert f"{host}: Debian 9 reached end of life" in alerts
    tools = w.term.show("tools", "list", "acme")
    assert host in tools and "/opt/any\\x1b]52;c;cm0gLXJmIH4K\\x07desk\\nFAKELOG tool all clear" in tools
    for text in (findings, alerts, tools):
        assert_no_forged_line(text)
    assert {f["hostname"] for f in w.term.json("findings", "acme", "--status", "all")} == {HOSTNAME}
    assert any(a["subject"].startswith(HOSTNAME + ": ")
               for a in w.term.json("alerts", "list", "acme", "--status", "all"))
    [tool] = w.term.json("tools", "list", "acme")
    assert tool["hostname"] == HOSTNAME and tool["evidence"]["exe"] == TOOL_EXE


def test_T16_patch_report_shows_hostname_and_update_name_inert(w: World) -> None:
    text = w.term.show("patch", "report", "acme", "--older-than", "1s")
    assert "web\\x1b[2J\\u202egnp.exe\\x9b2J\\r\\nFAKELOG host all clear" in text
    assert "libc6\\x1b]8;;https://evil.example/\\x1b\\\\rFAKELOG update all clear 1.1" in text
    assert_no_forged_line(text)
    doc = w.term.json("patch", "report", "acme", "--older-than", "1s")
    members = {m["device"]: m for r in doc["rings"] for m in r["devices"]}
    assert members[w.device]["hostname"] == HOSTNAME
    assert members[w.device]["missing_security"][0]["name"] == UPDATE


def test_T16_a_note_on_stderr_quoting_the_hostname_is_inert(w: World) -> None:
    r = w.term.run("inventory", "refresh", "acme", w.offline)
    assert r.rc == 0, r
    text = inert(r.stderr)
    assert "db\\x1b]52;c;cm0gLXJmIH4K\\x07\\u200b\\nFAKELOG offline all clear" in text
    assert f"({w.offline}) is not connected" in text
    assert_no_forged_line(text)
    inert(r.stdout)


# --- job output ------------------------------------------------------------------------------------------


def _answer_with_hostile_output(agent: WireAgent) -> str:
    msg = agent.wait_for("job", timeout=60)
    agent.verify_job(msg)
    job_id = str(msg["job_id"])
    r = trust.Receipt(tenant=agent.tenant, job=job_id, device=agent.device_id, outcome="ran", exit_code=0,
                      detail=JOB_DETAIL, stdout=base64.b64encode(JOB_STDOUT).decode(),
                      stdout_sha256=hashlib.sha256(JOB_STDOUT).hexdigest(),
                      stderr=base64.b64encode(JOB_STDERR).decode(),
                      stderr_sha256=hashlib.sha256(JOB_STDERR).hexdigest(),
                      started_at=time.time(), ended_at=time.time())
    env = trust.sign_envelope(RECEIPT_TYPE, trust.encode_payload(r), [agent.key]).to_bytes().decode()
    assert agent.send_receipt(job_id, env)["type"] == "ack"
    return job_id


def _assert_job_output(text: str, device: str) -> None:
    lines = text.rstrip("\n").split("\n")
    # The job's lines are kept (LF, CRLF), each made safe, and all indented under the device's own
    # status line: a job cannot print a line that starts where the CLI's lines start.
    head = lines.index(f"{device}: ran, exit 0")
    assert lines[head + 1:] == [
        "  detail: done\\x1b[2J\\nFAKELOG detail all clear",
        "  --- stdout ---",
        "  progress 50%\\rFAKELOG job all clear",
        "  \\x1b[2J\\x1b[?1049hwiped",
        "  \\x1b]52;c;cm0gLXJmIH4K\\x07\\x1b]8;;https://evil.example/\\x1b\\link",
        "  \\x9b2J\\x00\\x07\\u202etxt.exe",
        f"  {FAKE_STATUS}",
        "  last line",
        "  --- stderr ---",
        "  warn\\x1b[8m\\rFAKELOG stderr all clear",
        "  second line",
    ], text
    assert_no_forged_line(text)


def test_T16_run_wait_shows_hostile_job_output_inert(w: World, tmp_path: Path) -> None:
    script = tmp_path / "payload.sh"
    script.write_text("printf 'hostile output'\n")
    step_up(w.t.tech)  # the CLI's session is the technician's: `run` asks for a fresh TOTP code
    proc, reader, got = w.term.start("run", "acme", "--grant", w.grant, "--devices", w.device,
                                     "--script", str(script), "--wait", "--wait-timeout", "60s")
    job_id = _answer_with_hostile_output(w.agent)
    r = w.term.finish(proc, reader, got)
    assert r.rc == 0, r
    text = inert(r.stdout)
    inert(r.stderr, progress=True)  # Rich's progress bar is the only thing allowed to move the cursor
    assert f"job {job_id} sent to 1 device(s)" in text
    _assert_job_output(text, w.device)

    # `jobs show` shows the same, and --json gives the exact output back.
    _assert_job_output(w.term.show("jobs", "show", job_id), w.device)
    [target] = w.term.json("jobs", "show", job_id)["targets"]
    receipt = target["receipt"]
    assert (receipt["stdout"], receipt["stderr"], receipt["detail"]) == (
        JOB_STDOUT.decode(), JOB_STDERR.decode(), JOB_DETAIL)


# --- exports: exact in a pipe, inert on a terminal -----------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "cef", "syslog"])
def test_T16_events_export_is_inert_on_a_terminal_and_exact_in_a_pipe(w: World, fmt: str) -> None:
    # The audit log's first events include the hostile device's enrolment, with its hostname.
    args = ("events", "export", "acme", "--format", fmt, "--start", "0", "--limit", "20")
    text = w.term.show(*args)
    assert "FAKELOG host all clear" in text
    for line in text.split("\n"):
        assert not re.match(r"^\s*FAKELOG", line), f"forged line: {line!r}"
    piped = subprocess.run([sys.executable, "-m", "rampart.cli.main", *args], env=w.term.env, cwd=REPO,
                           capture_output=True, timeout=60)
    assert piped.returncode == 0, piped.stderr
    exact = w.t.tech.http.get(f"/tenants/{w.t.id}/events", params={"format": fmt, "start": 0, "limit": 20})
    assert exact.status_code == 200 and piped.stdout == exact.content
