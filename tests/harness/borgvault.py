"""A borg vault for tests: the vault host's forced command, and the vault holder's offline procedure.

* :class:`VaultHost` is the vault host for real agents: a loopback service that
  runs that forced command for every connection, with a small relay as the
  agent's ``--backup-rsh``, so the vault's side runs outside every job's
  sandbox, as a remote host would.
* :func:`forced_command` writes the stand-in for ``ssh vault`` that the agent's
  ``BORG_RSH`` points to. Like the ``command="..."`` of the device's entry in
  the vault's ``authorized_keys`` (docs/backup-vault.md), it ignores whatever
  the client asks for and runs ``borg serve --append-only
  --restrict-to-repository <repo>``; borg speaks its protocol over the pipe,
  no network involved.
* The rest are the steps of docs/backup-vault.md done by the vault holder on
  the vault host, as the test performs them: key export at creation, the
  transaction log, a hard-link forensic copy, rolling back to the last good
  transaction, importing the offline key.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import threading
from pathlib import Path

from rampart.agent.backup import BorgRepo

_TRANSACTION = re.compile(r"^transaction (\d+), UTC time (\S+)$")


def forced_command(path: Path, repo: Path, *, quota: str = "1G", log: Path | None = None) -> Path:
    """An executable that serves ``repo`` append-only, whatever the client asked for."""
    record = f'printf "%s\\n" "$*" >> "{log}"\n' if log else ""
    path.write_text(
        "#!/bin/sh\n"
        "# Stand-in for: ssh vault  +  authorized_keys command=\"borg serve --append-only ...\"\n"
        f"{record}"
        f"exec /usr/bin/borg serve --append-only --restrict-to-repository {repo} --storage-quota {quota}\n")
    path.chmod(0o755)
    return path


def passphrase_file(path: Path, secret: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return path


def vault_env(base_dir: Path, passphrase: str) -> dict[str, str]:
    """The vault holder's own borg environment: its own state directory, its copy of the passphrase."""
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "TZ": "UTC", "HOME": str(base_dir),
            "BORG_BASE_DIR": str(base_dir), "BORG_PASSPHRASE": passphrase}


def borg(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["borg", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300, check=False)


def export_key(repo: Path, dest: Path, env: dict[str, str]) -> bytes:
    """``borg key export``: the copy of the repository key the vault holder keeps offline."""
    r = borg(["key", "export", str(repo), str(dest)], env)
    assert r.returncode == 0, r.stderr
    return dest.read_bytes()


def transactions(repo: Path) -> list[tuple[int, str]]:
    """The append-only transaction log: (transaction id = last segment number, UTC time)."""
    out = []
    for line in (repo / "transactions").read_text().splitlines():
        if m := _TRANSACTION.match(line.strip()):
            out.append((int(m.group(1)), m.group(2)))
    return out


def segments(repo: Path) -> dict[int, str]:
    """Segment number -> SHA-256 of the segment file."""
    out = {}
    for f in (repo / "data").glob("*/*"):
        if f.name.isdigit():
            out[int(f.name)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def forensic_copy(repo: Path, dest: Path) -> None:
    """A hard-link copy of the attacked repository, kept for analysis (cheap: no segment is copied).

    borg never changes a segment file once written, but it *appends* to the
    ``transactions`` log in place: that one file is copied for real, or the
    copy's log would keep growing with the repository's.
    """
    subprocess.run(["cp", "-al", str(repo), str(dest)], check=True)
    (dest / "transactions").unlink()
    subprocess.run(["cp", "-p", str(repo / "transactions"), str(dest / "transactions")], check=True)


def rollback(repo: Path, good_transaction: int) -> list[int]:
    """Reset the repository to ``good_transaction``: drop index/hints/integrity, remove later segments."""
    for pattern in ("index.*", "hints.*", "integrity.*"):
        for f in repo.glob(pattern):
            f.unlink()
    removed = []
    for f in (repo / "data").glob("*/*"):
        if f.name.isdigit() and int(f.name) > good_transaction:
            f.unlink()
            removed.append(int(f.name))
    return sorted(removed)


def import_key(repo: Path, exported: Path, env: dict[str, str]) -> None:
    r = borg(["key", "import", str(repo), str(exported)], env)
    assert r.returncode == 0, r.stderr


def recover(repo: Path, good_transaction: int, *, key_export: Path, env: dict[str, str],
            forensics: Path) -> list[int]:
    """Section 4 of docs/backup-vault.md after an attack: keep evidence, roll back, re-import the key.

    Returns the segment numbers removed (those written after ``good_transaction``).
    """
    forensic_copy(repo, forensics)
    removed = rollback(repo, good_transaction)
    import_key(repo, key_export, env)
    return removed


def vault_repo(repo: Path, base_dir: Path, pass_file: Path) -> BorgRepo:
    """The vault holder's view: the repository path itself on the vault host, no forced command."""
    return BorgRepo(location=str(repo), passphrase_file=pass_file, base_dir=base_dir)


def copy_tree(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest, symlinks=True)


class VaultHost:
    """Each connection gets ``borg serve --append-only --restrict-to-repository REPO``, whatever it asks."""

    def __init__(self, repo: Path, home: Path) -> None:
        self.repo = repo
        self.home = home
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": str(self.home),
               "BORG_BASE_DIR": str(self.home)}
        with conn:
            subprocess.run(["borg", "serve", "--append-only", "--restrict-to-repository", str(self.repo),
                            "--storage-quota", "1G"], stdin=conn.fileno(), stdout=conn.fileno(),
                           stderr=subprocess.DEVNULL, env=env, timeout=600, check=False)

    def relay(self, path: Path) -> Path:
        """The ``ssh`` stand-in borg runs (BORG_RSH): pipes stdin/stdout to the vault host's port."""
        path.write_text(
            "#!/usr/bin/python3 -I\n"
            "# Stand-in for `ssh vault`: the vault host decides what runs (borg serve --append-only).\n"
            "import os, socket, sys, threading\n"
            f"s = socket.create_connection(('127.0.0.1', {self.port}))\n"
            "def up():\n"
            "    while True:\n"
            "        b = os.read(0, 65536)\n"
            "        if not b:\n"
            "            s.shutdown(socket.SHUT_WR)\n"
            "            return\n"
            "        s.sendall(b)\n"
            "threading.Thread(target=up, daemon=True).start()\n"
            "while True:\n"
            "    b = s.recv(65536)\n"
            "    if not b:\n"
            "        break\n"
            "    while b:\n"
            "        b = b[os.write(1, b):]\n")
        path.chmod(0o755)
        return path

    def close(self) -> None:
        self._stop = True
        self.sock.close()
