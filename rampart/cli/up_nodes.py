"""`rampart up --nodes N`: PostgreSQL and NATS on loopback for a local multi-node deployment.

The quickstart's single node runs on SQLite. With ``--nodes N`` it starts, under
the data directory, a private PostgreSQL cluster (``DATA/pg``, trust
authentication on 127.0.0.1 only, run as the ``postgres`` user when started as
root: ``initdb`` refuses root) and a ``nats-server`` (``DATA/nats``, a user and
a generated password in a 0600 configuration file), then N server nodes that
share both (docs/scale-out.md). Their ports are chosen once and kept in the
quickstart state, so a second ``rampart up`` reuses everything.

Demo convenience, not a production layout: a real deployment runs the
PostgreSQL and NATS its operators already run, with passwords and TLS.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import ensure_private_dir
from .errors import CliError
from .output import say

READY_TIMEOUT_S = 60.0
DB_NAME = "rampart"
DB_USER = "rampart"
NATS_USER = "rampart"
MAX_NODES = 9

Spawn = Callable[..., "subprocess.Popen[bytes]"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_bin() -> Path | None:
    """Debian's PostgreSQL binaries (the newest installed), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def nats_bin() -> str | None:
    return shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if os.access(p, os.X_OK)), None)


class LocalDeployment:
    """The PostgreSQL cluster and NATS server of one `rampart up --nodes` data directory."""

    def __init__(self, data: Path, state: dict[str, Any], creds: dict[str, Any]) -> None:
        self.data = data
        self.state = state  # saved by the caller
        self.creds = creds  # saved by the caller (0600)
        self.pg_dir = data / "pg"
        self.nats_dir = data / "nats"
        pg, nats = pg_bin(), nats_bin()
        if pg is None or nats is None:
            missing = " and ".join(n for n, b in (("PostgreSQL", pg), ("nats-server", nats)) if b is None)
            raise CliError(f"--nodes needs {missing} on this machine (Debian: apt install "
                           "postgresql nats-server); without --nodes, one node runs on SQLite")
        self.pg, self.nats = pg, nats
        # initdb and postgres refuse root: as root, the cluster belongs to Debian's postgres user
        # and lives in its home (it could not reach a root-only DATA such as one under /root).
        self.pg_user = "postgres" if os.geteuid() == 0 else None
        if self.pg_user is not None:
            try:
                home = Path(pwd.getpwnam(self.pg_user).pw_dir)
            except KeyError:
                raise CliError("--nodes as root needs the postgres user (Debian's postgresql "
                               "package creates it)") from None
            tag = hashlib.sha256(str(data).encode()).hexdigest()[:12]
            self.pg_dir = home / f"rampart-up-{tag}"

    def _kept_port(self, key: str) -> int:
        """A port chosen once and kept in the quickstart state (a second `up` reuses it)."""
        port = self.state.get(key)
        if not isinstance(port, int):
            port = self.state[key] = _free_port()
        return port

    @property
    def pg_port(self) -> int:
        return self._kept_port("pg_port")

    @property
    def nats_port(self) -> int:
        return self._kept_port("nats_port")

    @property
    def db_url(self) -> str:
        return f"postgresql://{DB_USER}@127.0.0.1:{self.pg_port}/{DB_NAME}"

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    def node_env(self) -> dict[str, str]:
        """What a node needs to log in to NATS (the environment, never a flag or the URL)."""
        return {"RAMPART_NATS_USER": NATS_USER, "RAMPART_NATS_PASSWORD": self._nats_password()}

    @staticmethod
    def set_agent_gateways(server_dir: Path, urls: list[str]) -> None:
        """Name every node's gateway in the server configuration: an enrolling agent is given the
        list and tries the nodes in turn, so it moves on when its node stops (no load balancer)."""
        path = server_dir / "config.json"
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read {path}: {exc}") from None
        if doc.get("agent_gateways") == urls:
            return
        doc["agent_gateways"] = urls
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, path)

    def _nats_password(self) -> str:
        pw = self.creds.get("nats_password")
        if not isinstance(pw, str):
            pw = self.creds["nats_password"] = secrets.token_urlsafe(24)
        return pw

    # --- PostgreSQL --------------------------------------------------------------------------

    def _as_pg_user(self) -> dict[str, Any]:
        return {"user": self.pg_user} if self.pg_user else {}

    def start_postgres(self, spawn: Spawn) -> None:
        cluster = self.pg_dir / "data"
        if not (cluster / "PG_VERSION").exists():
            say(f"initialising PostgreSQL in {self.pg_dir}")
            self.pg_dir.mkdir(parents=True, exist_ok=True)
            self.state["pg_dir"] = str(self.pg_dir)
            self.pg_dir.chmod(0o700)
            if self.pg_user:
                pw = pwd.getpwnam(self.pg_user)
                os.chown(self.pg_dir, pw.pw_uid, pw.pw_gid)
            res = subprocess.run([str(self.pg / "initdb"), "-D", str(cluster), "-U", DB_USER,
                                  "--auth=trust", "-E", "UTF8", "--no-instructions"],
                                 capture_output=True, text=True, cwd=self.pg_dir, timeout=300,
                                 check=False, **self._as_pg_user())
            if res.returncode != 0:
                raise CliError(f"initdb failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}")
        proc = spawn("postgres", [str(self.pg / "postgres"), "-D", str(cluster), "-p", str(self.pg_port),
                                  "-k", str(self.pg_dir), "-c", "listen_addresses=127.0.0.1"],
                     self.data / "quickstart" / "postgres.log", cwd=self.pg_dir, **self._as_pg_user())
        import psycopg

        admin = f"postgresql://{DB_USER}@127.0.0.1:{self.pg_port}/postgres"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                with psycopg.connect(admin, connect_timeout=2, autocommit=True) as conn:
                    if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                    (DB_NAME,)).fetchone() is None:
                        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
                return
            except psycopg.OperationalError:
                if proc.poll() is not None:
                    raise CliError(f"PostgreSQL exited with status {proc.returncode}: see "
                                   f"{self.data / 'quickstart' / 'postgres.log'}") from None
                if time.monotonic() > deadline:
                    raise CliError("PostgreSQL did not start in time") from None
                time.sleep(0.2)

    # --- NATS ----------------------------------------------------------------------------------

    def start_nats(self, spawn: Spawn) -> None:
        ensure_private_dir(self.nats_dir)
        conf = self.nats_dir / "nats.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f'listen: "127.0.0.1:{self.nats_port}"\n'
                     f'authorization {{ user: "{NATS_USER}", password: "{self._nats_password()}" }}\n')
        proc = spawn("nats", [self.nats, "-c", str(conf)], self.data / "quickstart" / "nats.log")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.nats_port), timeout=1) as s:
                    if s.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                pass
            if proc.poll() is not None:
                raise CliError(f"nats-server exited with status {proc.returncode}: see "
                               f"{self.data / 'quickstart' / 'nats.log'}")
            if time.monotonic() > deadline:
                raise CliError("nats-server did not start in time")
            time.sleep(0.2)
