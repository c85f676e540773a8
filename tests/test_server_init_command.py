"""``rampart-server init`` as a user runs it: what it prints, what it refuses, what it loads.

The test harness initialises data directories in-process with the same
function (``init_data_dir``); this is the command's own test.
"""

from __future__ import annotations

import hashlib
import ssl
import subprocess
import sys

from harness.server import REPO, _env


def _init(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rampart.server", "init", *args],
                          capture_output=True, text=True, env=_env(), cwd=REPO, timeout=120)


def test_server_init_prints_the_certificate_pin_and_a_bootstrap_token(tmp_path) -> None:
    data = tmp_path / "data"
    r = _init("--data", str(data))
    assert r.returncode == 0, r.stderr
    der = ssl.PEM_cert_to_DER_cert((data / "tls" / "cert.pem").read_text())
    assert f"TLS certificate SHA-256: {hashlib.sha256(der).hexdigest()}" in r.stdout
    [token_line] = [ln for ln in r.stdout.splitlines() if ln.startswith("Bootstrap token")]
    assert len(token_line.split(": ", 1)[1].strip()) >= 32
    assert (data / "tls" / "key.pem").stat().st_mode & 0o077 == 0
    assert (data / "rampart.db").stat().st_mode & 0o077 == 0

    again = _init("--data", str(data))  # an initialised directory is never overwritten
    assert again.returncode != 0 and "not empty" in again.stderr
    assert "Traceback" not in again.stderr
    assert ssl.PEM_cert_to_DER_cert((data / "tls" / "cert.pem").read_text()) == der


def test_server_init_and_admin_commands_do_not_load_the_web_stack() -> None:
    """`init` and the host commands start fast: FastAPI and uvicorn load only for `run`."""
    code = ("import sys, rampart.server, rampart.server.commands, rampart.server.setup; "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'rampart.server.app') "
            "if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(),
                       cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_a_server_whose_store_is_at_head_starts_without_loading_alembic(tmp_path) -> None:
    """The start-up schema check is one query when nothing needs migrating; the head it compares
    with is the one Alembic computes from the same migrations."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from rampart.server.db import MIGRATIONS, head_revision

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert head_revision() == ScriptDirectory.from_config(cfg).get_current_head()

    data = tmp_path / "data"
    assert _init("--data", str(data)).returncode == 0  # init migrates the new store to head
    code = ("import sys; from pathlib import Path; from rampart.server.config import load_config; "
            "from rampart.server.db import Store, migrate; "
            f"store = Store(load_config(Path({str(data)!r})).db_url); migrate(store.engine); "
            "print('alembic' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(),
                       cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
