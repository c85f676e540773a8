"""A real ``nats-server`` (Debian's) on 127.0.0.1 for the scale-out tests.

It listens on a free loopback port with user/password authorization from a
0600 configuration file (the password never on a command line), and can be
stopped and started again on the same port (a NATS outage).
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

from harness import logs
from harness.server import free_port


class NatsServer:
    def __init__(self, base: Path) -> None:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        self.binary = binary
        self.dir = base
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.user = "rampart"
        self.password = secrets.token_urlsafe(24)
        self.conf = self.dir / "nats.conf"
        self.conf.touch(mode=0o600)
        self.conf.write_text(f'listen: "127.0.0.1:{self.port}"\n'
                             f'authorization {{ user: "{self.user}", password: "{self.password}" }}\n'
                             f'max_payload: 1MB\n')
        self.log = self.dir / "nats.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment a node needs to log in (rampart.server.doorbell)."""
        return {"RAMPART_NATS_USER": self.user, "RAMPART_NATS_PASSWORD": self.password}

    def start(self) -> NatsServer:
        logs.register(self.log)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=out,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(4).startswith(b"INFO"):
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"nats-server did not listen: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
