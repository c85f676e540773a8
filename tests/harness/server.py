"""Real server processes and a throwaway PostgreSQL cluster for tests.

``start_server`` runs ``python -m rampart.server init`` and ``... run`` as
separate processes on a free 127.0.0.1 port, waits until the pinned TLS
endpoint answers, and returns a :class:`RunningServer` with pinned httpx
clients. ``PostgresCluster`` runs the machine's ``initdb``/``postgres`` as an
unprivileged user (initdb refuses root) and hands out one fresh database per
test. Nothing here knows about agents: see ``harness/agent.py``.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from harness import logs
from harness.ports import free_port, free_ports  # noqa: F401 - re-exported for the tests
from rampart.tlspin import fetch_pinned_certificate, pinned_context

REPO = Path(__file__).resolve().parents[2]
PG_BIN = Path(os.environ.get("RAMPART_PG_BIN", "/usr/lib/postgresql/15/bin"))
#: A server starts in ~3 s on an idle machine (imports); CI runs two passes on two cores, and
#: one start once took over 30 s there.
START_TIMEOUT_S = 90.0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"  # the access log (stdout) is in the file when a failure shows its end
    return env


@dataclass
class RunningServer:
    """A server process plus what a client needs to reach it with the pinned certificate."""

    data_dir: Path
    port: int
    cert_sha256: str
    bootstrap_token: str
    db_url: str | None
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    cert_der: bytes = b""
    agent_port: int = field(default_factory=lambda: free_port())
    #: Extra environment for the server process (e.g. RAMPART_CLOCK_OFFSET_S).
    env: dict[str, str] = field(default_factory=dict)
    #: Extra ``rampart server run`` arguments (e.g. --trusted-proxy).
    args: list[str] = field(default_factory=list)
    #: The loopback address it listens on (nodes of one deployment may share ports on 127.0.0.x).
    host: str = "127.0.0.1"
    _clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"wss://{self.host}:{self.port}/agent/v1/ws"

    def ssl_context(self) -> ssl.SSLContext:
        return pinned_context(self.cert_der)

    def client(self, token: str | None = None, *, api: bool = True,
               source: str | None = None) -> httpx.Client:
        """An httpx client that trusts exactly the server's certificate.

        ``source`` binds the client to a local loopback address (127.0.0.x), so
        tests can play operators on different networks.
        """
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = httpx.HTTPTransport(verify=self.ssl_context(), local_address=source) \
            if source else None
        c = httpx.Client(base_url=self.url + ("/api/v1" if api else ""), verify=self.ssl_context(),
                         headers=headers, timeout=30.0, transport=transport)
        self._clients.append(c)
        return c

    def start(self) -> None:
        cmd = [sys.executable, "-m", "rampart.server", "run", "--data", str(self.data_dir),
               "--listen", f"{self.host}:{self.port}", "--agent-listen",
               f"{self.host}:{self.agent_port}", *self.args]
        logs.register(self.log_path)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     env={**_env(), **self.env}, cwd=REPO, start_new_session=True)
        log.close()
        logs.watch(self.proc, self.log_path)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                self.cert_der = fetch_pinned_certificate(self.host, self.port, self.cert_sha256,
                                                         timeout=2)
                with httpx.Client(verify=self.ssl_context(), timeout=5) as c:
                    if c.get(self.url + "/api/v1/health").status_code == 200:
                        return
            except (OSError, httpx.HTTPError):
                pass
            time.sleep(0.1)
        tail = self.log_path.read_text()[-3000:]
        where = logs.stack_of(self.proc, self.log_path)
        self.stop(kill=True)
        raise RuntimeError(f"server did not start in {START_TIMEOUT_S:.0f} s: {tail}\n"
                           f"where it was:\n{where}\n{logs.machine()}")

    def stop(self, *, kill: bool = False) -> None:
        """Stop the process: SIGTERM (graceful) or SIGKILL (a crash)."""
        for c in self._clients:
            c.close()
        self._clients.clear()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def restart(self, *, kill: bool = True) -> None:
        self.stop(kill=kill)
        self.start()


def init_server(base: Path, db_url: str | None = None) -> RunningServer:
    """Initialise a data directory as ``rampart server init`` does (the same function, called
    in this process: the command's own output is tested in test_server_setup.py)."""
    from rampart.server.setup import init_data_dir

    data_dir = base / "data"
    res = init_data_dir(data_dir, db_url)
    return RunningServer(data_dir=data_dir, port=free_port(), cert_sha256=res.cert_sha256,
                         bootstrap_token=res.bootstrap_token, db_url=db_url,
                         log_path=base / "server.log")


def start_server(base: Path, db_url: str | None = None, **settings: object) -> RunningServer:
    """A started server; ``settings`` go into its config.json first (e.g. ``witness_wait_s=4``)."""
    server = init_server(base, db_url)
    if settings:
        cfg = server.data_dir / "config.json"
        cfg.write_text(json.dumps({**json.loads(cfg.read_text()), **settings}))
    server.start()
    return server


class PostgresCluster:
    """A private PostgreSQL cluster in a temporary directory (trust auth on 127.0.0.1)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rampart-pg-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._user = "nobody" if os.geteuid() == 0 else None
        self._count = 0

    def _as_user(self) -> dict[str, object]:
        return {"user": self._user} if self._user else {}

    def start(self) -> None:
        if self._user:
            pw = pwd.getpwnam(self._user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        data = self.dir / "data"
        subprocess.run([str(PG_BIN / "initdb"), "-D", str(data), "-U", "rampart", "--auth=trust",
                        "-E", "UTF8", "--no-sync", "--no-instructions"],
                       check=True, capture_output=True, cwd=self.dir, timeout=120,
                       **self._as_user())  # type: ignore[arg-type]
        self._run()

    def restart(self, down_s: float = 0.0) -> None:
        """Stop the server (fast shutdown: every connection ends), stay down ``down_s``, start it
        again on the same data and port."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        time.sleep(down_s)
        self._run()

    def _run(self) -> None:
        data = self.dir / "data"
        log = (self.dir / "postgres.log").open("ab")
        self.proc = subprocess.Popen(
            [str(PG_BIN / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(self.dir),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.dir, start_new_session=True,
            **self._as_user())  # type: ignore[arg-type]
        log.close()
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.admin_url("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError((self.dir / "postgres.log").read_text()[-2000:]) from None
                time.sleep(0.2)

    def admin_url(self, db: str) -> str:
        return f"postgresql://rampart@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh empty database; returns its ``postgresql://`` URL."""
        import psycopg

        self._count += 1
        name = f"t{os.getpid()}_{self._count}"
        with psycopg.connect(self.admin_url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.admin_url(name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
