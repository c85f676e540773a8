"""`rampart up`: a whole working Rampart on this machine in one command (the quickstart).

It initialises a server data directory (embedded SQLite), starts the server,
creates an owner ``admin`` (bootstrap) and a technician ``tech`` (activation),
operator keys for both, a tenant ``demo`` with its root signed locally, enrols a
local agent confined to a scratch directory, approves it, and prints what to
try next. Run again, it reuses everything it made. Ctrl-C stops the children.

Demo convenience, NOT a production practice: the generated passwords, TOTP
secrets and key passphrases are kept in ``DATA/quickstart/credentials.json``
(0600) so that ``up`` can log in again and sign the demo root. Real operators
keep their key passphrase in their head and their TOTP secret in an
authenticator app, and each uses their own machine.

The trust chain is the real one: the roots, grants and jobs are signed with
the operators' keys exactly as the CLI commands do; the server holds no key
that the agent trusts.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlsplit

import typer

from rampart import tlspin

from .auth_cmds import enrolment, password_login, register_key, session_from
from .client import Client, expect_dict, expect_list, field
from .common import key_passphrase, trusted_root
from .config import Config, Session, ensure_private_dir, write_private_json
from .errors import CliError, NotLoggedIn, ServerProblem, UsageProblem
from .output import note, say
from .root_cmds import DEFAULT_ROOT_LIFETIME, propose, publish_proposal, sign_proposal, unsigned
from .tenant_cmds import create_tenant, enrollment_command
from .up_nodes import MAX_NODES, LocalDeployment

DEFAULT_DATA = Path.home() / ".local" / "share" / "rampart" / "up"
DEFAULT_LISTEN = "127.0.0.1:8443"
TENANT = "demo"
ADMIN = "admin"
TECH = "tech"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


class _Stop(Exception):
    """SIGINT or SIGTERM arrived."""


def _python_cmd(module: str) -> list[str]:
    return [sys.executable, "-m", module]


def _agent_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("rampart.agent.main") is not None
    except ImportError:
        return False


def _parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageProblem("--listen must be HOST:PORT, e.g. 127.0.0.1:8443")
    return host.strip("[]"), int(port)


class Quickstart:
    """State and steps of one `rampart up` run."""

    def __init__(self, data: Path, listen: str) -> None:
        self.data = data.expanduser().resolve()
        #: The server's data directory: DATA itself, or DATA/server once made by --nodes.
        many = self.data / "server"
        self.server_dir = many if (many / "config.json").exists() else self.data
        self.listen = listen
        self.host, self.port = _parse_listen(listen)
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"https://{shown}:{self.port}"
        self.qs = self.data / "quickstart"
        self.creds_path = self.qs / "credentials.json"
        self.state_path = self.qs / "state.json"
        self.agent_state = self.data / "agent"
        # The agent protects its whole state directory from jobs, so the scratch
        # directory jobs may write to lives next to it, not inside it.
        self.scratch = self.data / "scratch"
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.creds: dict[str, Any] = {}
        self.state: dict[str, Any] = {}

    # --- files -------------------------------------------------------------------------

    def load(self) -> None:
        for attr, path in (("creds", self.creds_path), ("state", self.state_path)):
            try:
                setattr(self, attr, json.loads(path.read_text()))
            except FileNotFoundError:
                setattr(self, attr, {})
            except (OSError, ValueError) as exc:
                raise CliError(f"cannot read {path}: {exc}") from exc

    def save_creds(self) -> None:
        ensure_private_dir(self.qs)
        self.creds["note"] = ("Demo convenience of `rampart up`: these secrets let the quickstart "
                              "log in and sign for you. Never keep real ones like this.")
        write_private_json(self.creds_path, self.creds)

    def save_state(self) -> None:
        ensure_private_dir(self.qs)
        write_private_json(self.state_path, self.state)

    def operator(self, name: str) -> Config:
        cfg = Config(self.data / "operators" / name)
        cfg.ensure()
        return cfg

    # --- server --------------------------------------------------------------------------

    def init_server(self, db_url: str | None = None) -> None:
        """Initialise the server's data directory once (``db_url``: PostgreSQL, for ``--nodes``,
        whose server directory is ``DATA/server``: PostgreSQL and NATS live beside it)."""
        if (self.server_dir / "config.json").exists():
            return
        try:
            from rampart.server import init_data_dir
        except ImportError as exc:
            raise CliError(f"the server is not available in this installation ({exc})") from exc
        say(f"initialising a server in {self.server_dir}")
        try:
            res = init_data_dir(self.server_dir, db_url)
        except Exception as exc:  # SetupError and OS errors, as one line
            raise CliError(f"cannot initialise {self.server_dir}: {exc}") from exc
        self.creds["bootstrap_token"] = res.bootstrap_token
        self.save_creds()

    def check_layout(self, nodes: int) -> None:
        """Refuse to turn a one-node quickstart into a multi-node one, or back (before starting anything)."""
        if nodes > 1 and (self.data / "config.json").exists():
            raise CliError(f"{self.data} holds a one-node quickstart on SQLite: give --nodes "
                           "another --data directory")
        if nodes == 1 and self.server_dir != self.data:
            raise CliError(f"{self.data} holds a multi-node quickstart: run it with --nodes")

    def cert(self) -> bytes:
        try:
            return ssl.PEM_cert_to_DER_cert((self.server_dir / "tls" / "cert.pem").read_text())
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read the server certificate in {self.server_dir}/tls") from exc

    def _port_in_use(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=1.0):
                return True
        except OSError:
            return False

    def spawn(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None,
              **popen: Any) -> subprocess.Popen[bytes]:
        ensure_private_dir(log.parent)
        fh = os.fdopen(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=fh,
                                    start_new_session=True, env=env, **popen)
        finally:
            fh.close()
        self.children.append((name, proc))
        return proc

    def start_server(self, name: str = "server", port: int | None = None, extra: list[str] | None = None,
                     env: dict[str, str] | None = None) -> None:
        """Start one server node on ``port`` (default: --listen's) and wait until it serves."""
        port = self.port if port is None else port
        shown = f"[{self.host}]" if ":" in self.host else self.host
        listen = f"{shown}:{port}"
        if self._port_in_use(port):
            raise CliError(f"{listen} is already in use (another `rampart up`?): stop it or "
                           "use --listen")
        log = self.qs / f"{name}.log"
        proc = self.spawn(name, _python_cmd("rampart.cli.main") + [
            "server", "run", "--data", str(self.server_dir), "--listen", listen, *(extra or [])], log,
            env)
        want = tlspin.fingerprint(self.cert())
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise CliError(f"the {name} exited with status {proc.returncode}: see {log}")
            try:
                der = tlspin.fetch_certificate(self.host, port, timeout=2.0)
                if tlspin.fingerprint(der) != want:
                    raise CliError(f"{listen} serves another certificate than {self.server_dir}")
                return
            except (OSError, ssl.SSLError, tlspin.PinError):
                pass
            if time.monotonic() > deadline:
                raise CliError(f"the server did not start within {READY_TIMEOUT_S:.0f}s: see {log}")
            time.sleep(0.2)

    def client(self, token: str | None = None) -> Client:
        return Client(self.url, self.cert(), token)

    # --- accounts ------------------------------------------------------------------------

    def _totp(self, name: str) -> str:
        """A TOTP code never used before by this quickstart (codes are accepted once)."""
        import pyotp

        totp = pyotp.TOTP(self.creds[name]["totp_secret"])
        step = int(time.time()) // 30
        last = int(self.state.get("totp_steps", {}).get(name, 0))
        if step <= last:
            step = last + 1
            while step > int(time.time()) // 30 + 1:  # the server accepts one step ahead
                time.sleep(1)
        self.state.setdefault("totp_steps", {})[name] = step
        self.save_state()
        return str(totp.at(step * 30))

    def _enrol_totp(self, client: Client, name: str, doc: Any, cfg: Config) -> Session:
        enrol_token, uri = enrolment(doc)
        secret = parse_qs(urlsplit(uri).query).get("secret", [""])[0]
        if not secret:
            raise ServerProblem("the server's otpauth URI has no secret")
        # Kept unconfirmed until the server accepts a code: a failed confirmation (a clock off by
        # minutes, an interrupted run) leaves the enrolment to retry with the same one-time token.
        self.creds[name]["totp_secret"] = secret
        self.creds[name]["totp_confirmed"] = False
        self.save_creds()
        sdoc = client.post("/auth/totp/confirm", {"enrolment_token": enrol_token,
                                                   "code": self._totp(name)})
        self.creds[name]["totp_confirmed"] = True
        self.save_creds()
        session = session_from(sdoc, self.url, self.cert(), name)
        cfg.save_session(session, self.cert())
        return session

    def login(self, name: str, cfg: Config) -> Session:
        """Reuse a live session of ``name`` or log in with the stored password and TOTP."""
        existing = cfg.load_session()
        if existing is not None and existing.token and existing.server == self.url:
            try:
                with self.client(existing.token) as c:
                    c.get("/me")
                return existing
            except NotLoggedIn:
                pass
        with self.client() as c:
            sdoc = password_login(c, name, self.creds[name]["password"], self._totp(name))
        session = session_from(sdoc, self.url, self.cert(), name)
        cfg.save_session(session, self.cert())
        return session

    def enrolled(self, name: str) -> bool:
        """The account's TOTP enrolment was confirmed (credentials from before the flag existed were)."""
        entry = self.creds.get(name) or {}
        return bool(entry.get("totp_secret")) and entry.get("totp_confirmed", True) is not False

    def ensure_admin(self, cfg: Config) -> Session:
        entry = self.creds.get(ADMIN) or {}
        if self.enrolled(ADMIN):
            return self.login(ADMIN, cfg)
        token = self.creds.get("bootstrap_token")
        if not token:
            raise CliError(f"the admin account is unknown and the bootstrap token is spent: remove "
                           f"{self.data} to start over")
        self.creds[ADMIN] = {"password": entry.get("password") or secrets.token_urlsafe(18)}
        self.save_creds()
        with self.client() as c:
            doc = c.post("/auth/bootstrap", {"token": token, "username": ADMIN,
                                             "password": self.creds[ADMIN]["password"]})
            session = self._enrol_totp(c, ADMIN, doc, cfg)
        self.creds.pop("bootstrap_token", None)
        self.save_creds()
        say(f"created the owner account {ADMIN}")
        return session

    def ensure_tech(self, admin: Client, cfg: Config) -> Session:
        entry = self.creds.get(TECH) or {}
        if self.enrolled(TECH):
            return self.login(TECH, cfg)
        activation = entry.get("activation_token")
        if not activation:  # else: an earlier run's activation failed; retry it with its token
            doc = expect_dict(admin.post("/accounts", {"username": TECH, "role": "technician",
                                                       "tenants": None}), "account")
            activation = field(doc, "activation_token", str, "account")
            self.creds[TECH] = {"password": secrets.token_urlsafe(18), "activation_token": activation}
            self.save_creds()
        with self.client() as c:
            doc = c.post("/auth/activate", {"username": TECH, "activation_token": activation,
                                            "password": self.creds[TECH]["password"]})
            session = self._enrol_totp(c, TECH, doc, cfg)
        self.creds[TECH].pop("activation_token", None)
        self.save_creds()
        say(f"created the technician account {TECH}")
        return session

    def passphrase(self, name: str) -> str:
        """The operator's key passphrase (generated once, kept in the 0600 credentials file)."""
        passphrase = self.creds[name].get("key_passphrase") or secrets.token_urlsafe(18)
        if self.creds[name].get("key_passphrase") != passphrase:
            self.creds[name]["key_passphrase"] = passphrase
            self.save_creds()
        return str(passphrase)

    def ensure_key(self, name: str, cfg: Config, session: Session, tenant_id: str) -> None:
        """A signing key of ``name`` for the tenant (keys are per tenant, M5)."""
        if any(k.tenant == tenant_id for k in cfg.list_keys(session.username)):
            return
        from rampart.trust import OperatorKey

        with self.client(session.token) as c:
            register_key(cfg, c, session, OperatorKey.generate(), self.passphrase(name),
                         name=name, tenant_id=tenant_id)
        say(f"made an operator key for {name} in {TENANT}")

    # --- tenant and agent ------------------------------------------------------------------

    def ensure_tenant(self, admin_cfg: Config, admin: Client, admin_s: Session,
                      tech_cfg: Config, tech: Client, tech_s: Session) -> tuple[str, str]:
        tenants = expect_list(admin.get("/tenants"), "tenants")
        found = [t for t in tenants if isinstance(t, dict) and t.get("name") == TENANT
                 and t.get("status") != "pending-root"]
        with key_passphrase(self.passphrase(ADMIN)):
            if found:
                tid = str(found[0]["id"])
                root = trusted_root(admin_cfg, admin, tid)
            else:
                made = create_tenant(admin_cfg, admin, admin_s, TENANT, recovery_file=self.qs)
                root = made.trusted
                tid = root.tenant
                say(f"created tenant {TENANT} ({tid}) with root v{root.version}; its offline "
                    f"recovery key is in {made.sheet_path}: keep it off-line")
            self.ensure_key(TECH, tech_cfg, tech_s, tid)
            tech_keys = {k.keyid for k in tech_cfg.list_keys(tech_s.username)}
            if not tech_keys & set(root.technicians):
                # The technician's key is not in the root yet: rotate to v+1 adding the key
                # made here (known locally, so no fingerprint to read out), and sign the
                # exact bytes built here, never the server's copy (issue 11).
                mine = sorted(tech_keys - set(root.technicians))
                new = propose(admin, tid, root, add=[(k, "technician") for k in mine], remove=[],
                              owner_threshold=None, lifetime_s=DEFAULT_ROOT_LIFETIME, sync=False,
                              names={k: TECH for k in mine}, cfg=admin_cfg)
                sign_proposal(admin, admin_cfg, admin_s, tid, root, unsigned(new).to_bytes())
                root = publish_proposal(admin, admin_cfg, tid, root)
                say(f"published root v{root.version} with the technician's key")
        if tech_cfg.load_root_bytes(tid) is None:
            trusted_root(tech_cfg, tech, tid, pin_sha256=root.sha256)
        else:
            trusted_root(tech_cfg, tech, tid)
        return tid, root.sha256

    def ensure_agent(self, admin_cfg: Config, admin: Client, admin_s: Session, tid: str) -> str:
        if self.agent_state.is_dir() and any(self.agent_state.iterdir()):
            res = subprocess.run(_python_cmd("rampart.agent.main") + [
                "status", "--state", str(self.agent_state), "--json"],
                capture_output=True, text=True, timeout=60, check=False)
            try:
                doc = json.loads(res.stdout) if res.returncode == 0 else {}
            except ValueError:
                doc = {}
            device = doc.get("device") if isinstance(doc, dict) else None
            if isinstance(device, str) and doc.get("tenant") == tid:
                self.state["device"] = device
                self.save_state()
                return device
            raise CliError(f"{self.agent_state} holds an agent that cannot be reused: remove it "
                           "and run `rampart up` again")
        ensure_private_dir(self.scratch)
        info = enrollment_command(admin_cfg, admin, admin_s, tid, 3600,
                                  state=str(self.agent_state), agent_server=self.url)
        env = {**os.environ, "RAMPART_ENROLL_TOKEN": info["token"]}
        argv = _python_cmd("rampart.agent.main") + [
            "enroll", "--server", self.url, "--root-sha256", info["root_sha256"],
            "--cert-sha256", info["cert_sha256"], "--state", str(self.agent_state),
            "--write-root", str(self.scratch)]
        res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120,
                             check=False)
        lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
        if res.returncode != 0 or not lines or not lines[-1].startswith("device: "):
            err = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise CliError(f"agent enrolment failed: {err}")
        device = lines[-1].split(":", 1)[1].strip()
        self.state["device"] = device
        self.save_state()
        say(f"enrolled a local agent as {device}")
        return device

    def start_agent(self) -> None:
        self.spawn("agent", _python_cmd("rampart.agent.main") + [
            "run", "--state", str(self.agent_state)], self.qs / "agent.log")

    def approve(self, admin: Client, tid: str, device: str) -> None:
        for d in expect_list(admin.get(f"/tenants/{tid}/devices"), "devices"):
            if isinstance(d, dict) and d.get("id") == device:
                if d.get("status") != "approved":
                    admin.post(f"/tenants/{tid}/devices/{device}/approve")
                    say(f"approved device {device}")
                return
        raise CliError(f"the server does not know device {device}: remove {self.agent_state} "
                       "and run `rampart up` again")

    # --- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        for name, proc in reversed(self.children):
            if proc.poll() is None:  # PostgreSQL: a fast shutdown (SIGTERM waits for its clients)
                proc.send_signal(signal.SIGINT if name == "postgres" else signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for name, proc in reversed(self.children):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                note(f"{name} did not stop in time: killing it")
                proc.kill()
                proc.wait()
        self.children.clear()

    def supervise(self) -> None:
        while True:
            for name, proc in self.children:
                if proc.poll() is not None:
                    raise CliError(f"the {name} exited with status {proc.returncode}: see "
                                   f"{self.qs / (name + '.log')}")
            time.sleep(0.5)


def _start_nodes(q: Quickstart, nodes: int) -> None:
    """PostgreSQL, NATS, then ``nodes`` server nodes sharing both (the first on --listen)."""
    q.server_dir = q.data / "server"
    deploy = LocalDeployment(q.data, q.state, q.creds)
    ensure_private_dir(q.data)
    deploy.start_postgres(q.spawn)
    deploy.start_nats(q.spawn)
    q.save_creds()
    q.save_state()
    q.init_server(deploy.db_url)
    shown = f"[{q.host}]" if ":" in q.host else q.host
    deploy.set_agent_gateways(q.server_dir, [f"wss://{shown}:{q.port + 2 * i + 1}/agent/v1/ws"
                                             for i in range(nodes)])
    env = {**os.environ, **deploy.node_env()}
    for i in range(nodes):
        q.start_server("server" if i == 0 else f"node-{i + 1}", q.port + 2 * i,
                       ["--nats", deploy.nats_url], env)
    q.state["nodes"] = [q.port + 2 * i for i in range(nodes)]
    say(f"{nodes} server nodes share PostgreSQL on 127.0.0.1:{deploy.pg_port} and NATS on "
        f"{deploy.nats_url}")


def _print_next(q: Quickstart, device: str | None) -> None:
    admin_dir = q.data / "operators" / ADMIN
    tech_dir = q.data / "operators" / TECH
    cmd = "rampart"
    dev = device or "DEVICE"
    say("")
    say(f"Rampart is running. Console (status page): {q.url}/")
    ports = q.state.get("nodes")
    if isinstance(ports, list) and len(ports) > 1:
        shown = f"[{q.host}]" if ":" in q.host else q.host
        say("  nodes (any of them serves the console, the API and agents): "
            + ", ".join(f"https://{shown}:{p}/" for p in ports))
    say(f"  certificate SHA-256: {tlspin.fingerprint(q.cert())}")
    say(f"  admin login: user {ADMIN}, password {q.creds[ADMIN]['password']}")
    say(f"  TOTP secret and key passphrases (demo convenience): {q.creds_path}")
    say(f"Warning: tenant {TENANT} accepts operators from any network (no approved networks, "
        f"N3). Restrict it with: {cmd} tenant networks {TENANT} --allow 127.0.0.0/8")
    say("")
    say("Try it (in another terminal). The technician asks for access, the approver grants it:")
    opts = "" if q.data == DEFAULT_DATA.resolve() else f" --data {shlex.quote(str(q.data))}"
    say(f"  eval \"$({cmd} up{opts} --env {TECH})\"")
    say(f"  {cmd} grant request {TENANT} --devices {dev} --capabilities script --for 1h "
        "--reason 'try rampart'")
    say(f"  eval \"$({cmd} up{opts} --env {ADMIN})\"")
    say(f"  {cmd} grant approve GRANT_ID")
    say(f"  eval \"$({cmd} up{opts} --env {TECH})\"")
    say("  printf 'echo hello from $(hostname)\\n' > hello.sh")
    say(f"  {cmd} run {TENANT} --grant GRANT_ID --devices {dev} --script hello.sh --wait")
    say(f"  {cmd} audit verify {TENANT}")
    say("")
    say(f"Without `up --env`: RAMPART_CONFIG_DIR={shlex.quote(str(tech_dir))} for the technician, "
        f"RAMPART_CONFIG_DIR={shlex.quote(str(admin_dir))} for the approver; the key passphrase "
        "is asked for.")
    say("Press Ctrl-C to stop.")


def _print_env(q: Quickstart, name: str) -> None:
    """Shell lines that make ``name`` the current operator (re-logging in if needed)."""
    if name not in (ADMIN, TECH):
        raise UsageProblem(f"--env takes {ADMIN} or {TECH}")
    if not q.enrolled(name):
        raise CliError(f"{q.data} has no {name} account yet: run `rampart up` first")
    url = q.state.get("url")
    if isinstance(url, str) and url != q.url:
        q.url = url  # the address the last `rampart up` served on
    cfg = q.operator(name)
    q.login(name, cfg)
    # Shell code for `eval`, not text for people: every value is local and shlex-quoted.
    sys.stdout.write(f"export RAMPART_CONFIG_DIR={shlex.quote(str(cfg.dir))}\n")
    sys.stdout.write("export RAMPART_KEY_PASSPHRASE="
                     f"{shlex.quote(q.creds[name]['key_passphrase'])}\n")
    sys.stdout.write(f"echo 'rampart: now acting as {name}' >&2\n")
    sys.stdout.flush()


def up(
    data: Annotated[Path, typer.Option("--data", help="Data directory.")] = DEFAULT_DATA,
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT to serve on.")
                      ] = DEFAULT_LISTEN,
    env: Annotated[str | None, typer.Option(
        "--env", help="Print shell exports to act as admin or tech (server must be running).")
    ] = None,
    no_agent: Annotated[bool, typer.Option("--no-agent", help="Do not enrol or run a local agent.")
                        ] = False,
    nodes: Annotated[int, typer.Option(
        "--nodes", min=1, max=MAX_NODES,
        help="Server nodes: more than 1 starts PostgreSQL and NATS on loopback too, and the nodes "
             "on --listen's port, +2, +4… (docs/scale-out.md).")] = 1,
) -> None:
    """Start a complete local Rampart (server, two operators, a demo tenant and an agent)."""
    q = Quickstart(data, listen)
    q.load()
    if env is not None:
        _print_env(q, env)
        return

    def _on_signal(signum: int, frame: Any) -> None:
        raise _Stop()

    stop_signals = (signal.SIGINT, signal.SIGTERM)
    for s in stop_signals:
        signal.signal(s, _on_signal)
    try:
        q.check_layout(nodes)
        if nodes > 1:
            _start_nodes(q, nodes)
        else:
            q.init_server()
            q.start_server()
        q.state["url"] = q.url
        q.save_state()
        admin_cfg, tech_cfg = q.operator(ADMIN), q.operator(TECH)
        admin_s = q.ensure_admin(admin_cfg)
        with q.client(admin_s.token) as admin:
            tech_s = q.ensure_tech(admin, tech_cfg)
            with q.client(tech_s.token) as tech:
                tid, _ = q.ensure_tenant(admin_cfg, admin, admin_s, tech_cfg, tech, tech_s)
            device = None
            if no_agent:
                pass
            elif not _agent_available():
                note("the agent is not available in this installation: no device enrolled")
            else:
                device = q.ensure_agent(admin_cfg, admin, admin_s, tid)
                q.start_agent()
                q.approve(admin, tid, device)
        _print_next(q, device)
        q.supervise()
    except _Stop:
        say("stopping…")
    finally:
        # A second Ctrl-C must not leave children running, nor kill this process once they are
        # stopped: the signals stay ignored until it exits (it does, right after "stopped").
        for s in stop_signals:
            signal.signal(s, signal.SIG_IGN)
        q.stop()
    say("stopped")


def register(app: typer.Typer) -> None:
    app.command("up")(up)
