"""What the people at a device learn of a remote session: wall messages, a local log, local consent.

Invariants:

* Every session start and end is appended to the device's session log (one
  JSON line each, 0644, readable by the customer's own staff) before the
  session opens and after it ends; a log that cannot be written refuses the
  session (the end user must be able to know).
* Texts shown to local users name the technician as the pinned root names
  their key (never anything the server says) and are made inert (no control
  characters reach a terminal through ``wall``).
* Consent is given only by a local user: a file ``JOB.accept`` (or
  ``JOB.refuse``) in the consent directory (``/run/rampart-agent/consent``,
  mode 1733: anyone may create, no one may list or remove another's) whose
  owner is root or a regular login account, never the shared ``nobody`` nor a
  job's dynamic uid. ``rampart-agent consent accept|refuse JOB`` writes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

from rampart.agent.jobscope import DYNAMIC_UID_MAX, DYNAMIC_UID_MIN
from rampart.textsafe import safe_lines

__all__ = ["CONSENT_DIR", "DEFAULT_SESSION_LOG", "consent_answer", "ensure_consent_dir", "log_event",
           "wall", "write_consent"]

DEFAULT_SESSION_LOG = "/var/log/rampart-agent/sessions.log"
CONSENT_DIR = "/run/rampart-agent/consent"
_FIRST_LOGIN_UID = 1000
_NOBODY = 65534


def log_event(path: str, event: dict[str, object]) -> None:
    """Append one JSON line to the session log (created 0644, its directory 0755)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **event},
                      ensure_ascii=True, sort_keys=True) + "\n"
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def wall(text: str) -> bool:
    """Tell every logged-in terminal (``wall``); True when wall ran. Inert text only."""
    binary = shutil.which("wall")
    if binary is None:
        return False
    message = "\n".join(safe_lines(text)) + "\n"
    try:
        done = subprocess.run([binary], input=message.encode(), capture_output=True, timeout=10,
                              check=False, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def ensure_consent_dir(path: str = CONSENT_DIR) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)
    os.chmod(path, 0o1733)  # noqa: S103 - sticky and unlistable, like /tmp: local users answer here


def _local_user(uid: int) -> bool:
    if uid == 0:
        return True
    if DYNAMIC_UID_MIN <= uid <= DYNAMIC_UID_MAX or uid == _NOBODY or uid < _FIRST_LOGIN_UID:
        return False
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return False
    return not pw.pw_shell.endswith(("nologin", "false"))


def consent_answer(job_id: str, path: str = CONSENT_DIR) -> tuple[str, str] | None:
    """("accepted" | "refused", user) once a local user answered for ``job_id``, else None."""
    for answer, word in (("refuse", "refused"), ("accept", "accepted")):
        f = os.path.join(path, f"{job_id}.{answer}")
        try:
            st = os.lstat(f)
        except OSError:
            continue
        if not os.path.isfile(f) or os.path.islink(f) or not _local_user(st.st_uid):
            continue
        try:
            name = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            name = str(st.st_uid)
        return word, name
    return None


def clear_consent(job_id: str, path: str = CONSENT_DIR) -> None:
    for answer in ("accept", "refuse"):
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(path, f"{job_id}.{answer}"))


def write_consent(job_id: str, accept: bool, path: str = CONSENT_DIR) -> Path:
    """The local user's answer (``rampart-agent consent``): a new file owned by the caller."""
    f = Path(path) / f"{job_id}.{'accept' if accept else 'refuse'}"
    fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    os.close(fd)
    return f
