"""Running a verified job: scripts and files contained, packages, updates and backups as root.

:class:`rampart.agent.core.Agent` calls :func:`run` only after
:func:`rampart.trust.authorize_job` accepted the job against the pinned root,
the audit log and the device policy, and after the job's nonce was committed
(docs/trust-chain.md). This module decides *how* each action kind runs and
what its receipt says; it never widens what the trust core allowed.

Per action: what the grant must give, what the device must allow, how it runs.

* ``script``: script (+ net, + root as declared); the device's write roots and
  ``--allow-root``; a contained child.
* ``file`` [DEST, MODE]: file, and DEST below a path the job declares it
  writes; DEST below a device write root; the agent's own deployment code
  (:mod:`rampart.agent._filejob`) in a contained child, as the agent's user,
  writing only beneath the declared path (Landlock) and below the write root
  without following symlinks (the engine).
* ``package`` [install, NAME(, VERSION)] or [remove, NAME]: package **and
  root** (the job declares ``run_as root``); ``--allow-root`` and a package
  manager (not ``none``); as root, outside Landlock.
* ``os-update``: patch; a package manager (not ``none``); as root, outside Landlock.
* ``backup-run``: backup; a backup section; as root (borg).
* ``inventory-refresh``: inventory; nothing; the telemetry trigger.

Why ``package`` needs ``root`` and ``os-update``/``backup-run`` do not
(docs/design/patching-backup.md, "Wiring"): a package job chooses what runs as
root (any package of the device's sources, whose maintainer scripts run as
root, or the removal of a security tool), so it is a root job and needs what
every root job needs: the high-risk ``root`` capability (two approvers under
the default tenant policy) and a device enrolled with ``--allow-root``. The
payload-free actions choose nothing: the updates come from the device's own
configured, signed sources and never remove a package; the backup goes from
the device's configured paths to its configured append-only repository. They
are what an automation key may trigger under a standing grant, and making
each such grant need two approvers would slow the patch cadence (H5) without
taking any choice away from an attacker. The device opts in to them at
enrolment (``--package-manager``, ``--backup-repo``).

Receipts: outcome ``ran`` (exit 0) or ``failed`` (exit 1); stdout one JSON
document of the structured result (at most :data:`MAX_DOC_BYTES`; lists are
cut, failures first, and ``"truncated": true`` is set when it would be larger);
stderr one line naming the error. Contained jobs report the containment their
child applied; root actions report level ``none`` and the uid they ran as.
Refusals (nothing ran) carry one of ``bad-arguments``, ``not-configured``,
``capability-not-granted`` or ``containment-unavailable``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import pwd
import random
import re
import shlex
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import msgspec

import rampart
from rampart import trust
from rampart.wire.check_result import MAX_DETAIL, MAX_TAIL, CheckResult

from . import _command, backup, containment, jobscope, patching
from .errors import JobRefused, LocalFault

log = logging.getLogger("rampart.agent")

__all__ = [
    "MAX_DOC_BYTES", "ActionPolicy", "BackupConfig", "Done", "PolicyError", "add_enroll_options",
    "policy_from_args", "run", "run_check",
]

#: Bytes of stdout and stderr kept from a contained job (each).
MAX_OUTPUT = 64 * 1024
#: Largest JSON result document a root action puts in its receipt.
MAX_DOC_BYTES = 60 * 1024
#: Longest one-line error (stderr, detail).
MAX_ERROR_CHARS = 1000
JOB_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MANAGERS = ("auto", "apt", "dnf", "none")
DEFAULT_RESTORE_SAMPLES = 3
MAX_RESTORE_SAMPLES = 64
PASSPHRASE_FILE = "borg-passphrase"  # noqa: S105 - a file name, not a secret
#: A reboot a minute from now, so the job's receipt goes out first.
DEFAULT_REBOOT: tuple[str, ...] = ("/sbin/shutdown", "-r", "+1", "Rampart: reboot requested under a grant")
_MODE = re.compile(r"0?([0-7]{3})")
_FILEJOB_BOOT = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
                 "from rampart.agent._filejob import main; sys.exit(main())")


class PolicyError(LocalFault, ValueError):
    """A device-policy setting is not acceptable; the message is one line for the administrator."""


class Refusal(JobRefused):
    """The job is refused before anything runs: ``reason`` is the receipt's refusal slug."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --- device policy ----------------------------------------------------------------------------------


def _abs_path(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//") \
            or os.path.normpath(value) != value or any(ord(c) < 0x20 for c in value) or len(value) > 1024:
        raise PolicyError(f"{what} must be a normalised absolute path, not {str(value)[:200]!r}")
    return value


def _within(path: str, root: str) -> bool:
    """``path`` is ``root`` or beneath it (by component)."""
    return root == "/" or path == root or path.startswith(root + "/")


def _below(path: str, root: str) -> bool:
    """``path`` is strictly beneath ``root`` (by component)."""
    return path != root and _within(path, root)


@dataclass(frozen=True, slots=True)
class BackupConfig:
    """The device's backup policy, set at enrolment (docs/backup-vault.md, docs/patching.md).

    ``repository``: ``ssh://...`` to the vault (or a local path: no air gap);
    ``rsh``: the command borg reaches the vault with (``ssh -i KEY ...``);
    ``passphrase_file``: 0600, owned by root or the agent's user, read by the
    agent only and handed to borg on a pipe; ``paths``/``excludes``: absolute
    paths (excludes are path prefixes); ``restore_samples``: files restored and
    compared after each backup.
    """

    repository: str
    passphrase_file: str
    paths: tuple[str, ...]
    rsh: tuple[str, ...] | None = None
    excludes: tuple[str, ...] = ()
    compression: str = "zstd,3"
    restore_samples: int = DEFAULT_RESTORE_SAMPLES

    def __post_init__(self) -> None:
        limits = backup.DEFAULT_LIMITS
        try:
            backup.validate_location(self.repository)
        except backup.BackupSpecError as exc:
            raise PolicyError(f"backup repository: {exc}") from None
        _abs_path(self.passphrase_file, "the backup passphrase file")
        if not 1 <= len(self.paths) <= limits.max_paths or len(set(self.paths)) != len(self.paths):
            raise PolicyError(f"a backup needs between 1 and {limits.max_paths} distinct paths")
        for p in self.paths:
            _abs_path(p, "a backup path")
        if len(self.excludes) > limits.max_excludes:
            raise PolicyError(f"more than {limits.max_excludes} backup excludes")
        for e in self.excludes:
            _abs_path(e, "a backup exclude (an absolute path prefix)")
        if self.rsh is not None and (not self.rsh or any(not isinstance(x, str) or not x or "\0" in x
                                                         for x in self.rsh)):
            raise PolicyError("the backup SSH command must be a non-empty command line")
        try:
            backup.BackupPolicy(paths=list(self.paths), compression=self.compression)
        except backup.BackupSpecError as exc:
            raise PolicyError(f"backup: {exc}") from None
        if isinstance(self.restore_samples, bool) or not isinstance(self.restore_samples, int) \
                or not 0 <= self.restore_samples <= MAX_RESTORE_SAMPLES:
            raise PolicyError(f"restore samples must be between 0 and {MAX_RESTORE_SAMPLES}")

    @classmethod
    def from_dict(cls, doc: object) -> BackupConfig:
        if not isinstance(doc, dict):
            raise PolicyError("the backup section must be an object")
        unknown = set(doc) - {"repository", "passphrase_file", "paths", "rsh", "excludes", "compression",
                              "restore_samples"}
        if unknown:
            raise PolicyError(f"unknown backup settings {sorted(unknown)}")

        def strings(key: str, value: object) -> tuple[str, ...]:
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                raise PolicyError(f"backup {key} must be a list of strings")
            return tuple(value)

        rsh = doc.get("rsh")
        compression = doc.get("compression", "zstd,3")
        if not isinstance(compression, str):
            raise PolicyError("backup compression must be a string")
        return cls(repository=str(doc.get("repository", "")),
                   passphrase_file=str(doc.get("passphrase_file", "")),
                   paths=strings("paths", doc.get("paths", [])),
                   rsh=None if rsh is None else strings("rsh", rsh),
                   excludes=strings("excludes", doc.get("excludes", [])), compression=compression,
                   restore_samples=doc.get("restore_samples", DEFAULT_RESTORE_SAMPLES))

    def to_dict(self) -> dict[str, Any]:
        return {"repository": self.repository, "passphrase_file": self.passphrase_file,
                "paths": list(self.paths), "rsh": list(self.rsh) if self.rsh is not None else None,
                "excludes": list(self.excludes), "compression": self.compression,
                "restore_samples": self.restore_samples}


@dataclass(frozen=True, slots=True)
class ActionPolicy:
    """The device policy for packages, updates and backups (``policy.json``, set at enrolment).

    A stored policy that cannot be read is kept with ``error`` set and package
    management off: every root-level action is then refused (fail closed),
    while the agent keeps running and reporting.
    """

    package_root: str = "/"
    package_manager: str = "auto"
    security_only_updates: bool = False
    backup: BackupConfig | None = None
    #: The command a ``reboot`` job runs (``--allow-reboot``/``--reboot-command``); None: reboots refused.
    reboot_command: tuple[str, ...] | None = None
    error: str = ""

    def __post_init__(self) -> None:
        _abs_path(self.package_root, "the package root")
        if self.package_manager not in MANAGERS:
            raise PolicyError(f"package manager must be one of {', '.join(MANAGERS)}")
        if not isinstance(self.security_only_updates, bool):
            raise PolicyError("security_only_updates must be true or false")
        if self.reboot_command is not None and (not self.reboot_command or any(
                not isinstance(x, str) or not x or "\0" in x for x in self.reboot_command)
                or not self.reboot_command[0].startswith("/")):
            raise PolicyError("the reboot command must be a command line starting with an absolute path")

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ActionPolicy:
        """Read the settings from a stored policy; never raises (see the class docstring)."""
        try:
            section = doc.get("backup")
            reboot = doc.get("reboot_command")
            if reboot is not None and (not isinstance(reboot, list) or not all(isinstance(x, str)
                                                                                for x in reboot)):
                raise PolicyError("reboot_command must be a list of strings")
            return cls(package_root=doc.get("package_root", "/"),
                       package_manager=doc.get("package_manager", "auto"),
                       security_only_updates=doc.get("security_only_updates", False),
                       backup=None if section is None else BackupConfig.from_dict(section),
                       reboot_command=None if reboot is None else tuple(reboot))
        except PolicyError as exc:
            log.error("the device policy's package and backup settings are invalid: %s", exc)
            return cls(package_manager="none", error=str(exc))

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"package_root": self.package_root, "package_manager": self.package_manager,
                               "security_only_updates": self.security_only_updates,
                               "backup": self.backup.to_dict() if self.backup is not None else None,
                               "reboot_command": list(self.reboot_command) if self.reboot_command else None}
        if self.error:
            doc["policy_error"] = self.error
        return doc


# --- enrolment options ------------------------------------------------------------------------------


def add_enroll_options(p: argparse.ArgumentParser) -> None:
    """The ``rampart-agent enroll`` options of this module (docs/patching.md)."""
    g = p.add_argument_group("software, updates and backups (docs/patching.md)")
    g.add_argument("--package-root", default="/", metavar="PATH",
                   help="root whose packages jobs manage (default /; another root holds its own "
                        "package database)")
    g.add_argument("--package-manager", choices=MANAGERS, default="auto",
                   help="apt, dnf, auto (detect) or none (no package or update jobs)")
    g.add_argument("--security-only-updates", action="store_true",
                   help="os-update jobs install security updates only")
    g.add_argument("--backup-repo", metavar="LOCATION",
                   help="borg repository on the vault: ssh://[USER@]HOST[:PORT]/PATH (docs/backup-vault.md)")
    g.add_argument("--backup-rsh", metavar="COMMAND",
                   help="how borg reaches the vault, e.g. 'ssh -i /var/lib/rampart-agent/vault_ed25519 "
                        "-o BatchMode=yes'")
    g.add_argument("--backup-passphrase-file", metavar="PATH",
                   help=f"repository passphrase, mode 0600 (default STATE/{PASSPHRASE_FILE})")
    g.add_argument("--backup-path", action="append", default=[], metavar="PATH",
                   help="a directory or file to back up (repeatable)")
    g.add_argument("--backup-exclude", action="append", default=[], metavar="PATH",
                   help="a path below a backup path to leave out (repeatable)")
    g.add_argument("--backup-restore-samples", type=int, default=DEFAULT_RESTORE_SAMPLES, metavar="N",
                   help=f"files restored and compared after each backup (0-{MAX_RESTORE_SAMPLES}, "
                        f"default {DEFAULT_RESTORE_SAMPLES})")
    g.add_argument("--backup-compression", default="zstd,3", metavar="SPEC", help="borg compression")
    g.add_argument("--allow-reboot", action="store_true",
                   help="allow reboot jobs (payload-free: a patch policy's reboot); they run "
                        + " ".join(DEFAULT_REBOOT))
    g.add_argument("--reboot-command", metavar="COMMAND",
                   help="what a reboot job runs instead (implies --allow-reboot; absolute path first)")


def _detect_manager(root: Path) -> str:
    if (root / "var/lib/dpkg/status").is_file():
        return "apt"
    if (root / "var/lib/rpm").is_dir():
        return "dnf"
    raise PolicyError(f"{root} holds neither a dpkg nor an rpm database")


def _check_passphrase_file(path: str) -> None:
    """A regular file (not a symlink), no group or other bits, owned by root or us, readable by us."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise PolicyError(f"backup passphrase file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise PolicyError(f"backup passphrase file {path} is not a regular file")
    if st.st_uid not in (0, os.geteuid()):
        raise PolicyError(f"backup passphrase file {path} must be owned by root or the agent's user")
    if st.st_mode & 0o077:
        raise PolicyError(f"backup passphrase file {path} has mode {st.st_mode & 0o777:04o}; "
                          "it must be 0600 or stricter")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        os.close(fd)
    except OSError as exc:
        raise PolicyError(f"backup passphrase file {path}: {exc.strerror}") from None


def _warn(message: str) -> None:
    print(f"rampart-agent: warning: {message}", file=sys.stderr)


def policy_from_args(a: argparse.Namespace, *, state_dir: Path, write_roots: Sequence[str]) -> ActionPolicy:
    """Validate the enrolment options into an :class:`ActionPolicy`, or raise :class:`PolicyError`."""
    state = str(state_dir.resolve())
    manager = str(a.package_manager)
    root = _abs_path(a.package_root, "--package-root")
    if manager != "none":
        if not os.path.isdir(root):
            raise PolicyError(f"--package-root {root}: not an existing directory")
        if root == "/":
            if manager != "auto" and not _command.which("apt-get" if manager == "apt" else "dnf"):
                raise PolicyError(f"--package-manager {manager}: {manager} is not installed")
        else:
            found = _detect_manager(Path(root))
            if manager != "auto" and found != manager:
                raise PolicyError(f"--package-root {root} holds a {found} database, not {manager}")
    reboot: tuple[str, ...] | None = DEFAULT_REBOOT if getattr(a, "allow_reboot", False) else None
    if getattr(a, "reboot_command", None):
        try:
            reboot = tuple(shlex.split(a.reboot_command))
        except ValueError as exc:
            raise PolicyError(f"--reboot-command: {exc}") from None
        if not reboot or not reboot[0].startswith("/") or not _command.which(reboot[0]):
            raise PolicyError("--reboot-command must start with the absolute path of an executable")
    given = [a.backup_rsh, a.backup_passphrase_file, *a.backup_path, *a.backup_exclude]
    if not a.backup_repo:
        if any(given):
            raise PolicyError("the --backup-* options need --backup-repo")
        return ActionPolicy(package_root=root, package_manager=manager,
                            security_only_updates=bool(a.security_only_updates), reboot_command=reboot)
    if not a.backup_path:
        raise PolicyError("--backup-repo needs at least one --backup-path")
    try:
        rsh = tuple(shlex.split(a.backup_rsh)) if a.backup_rsh else None
    except ValueError as exc:
        raise PolicyError(f"--backup-rsh: {exc}") from None
    if rsh is not None and (not rsh or not _command.which(rsh[0])):
        raise PolicyError(f"--backup-rsh: {rsh[0] if rsh else 'an empty command'} is not an executable")
    passphrase = a.backup_passphrase_file or str(Path(state) / PASSPHRASE_FILE)
    cfg = BackupConfig(repository=a.backup_repo, passphrase_file=passphrase, paths=tuple(a.backup_path),
                       rsh=rsh, excludes=tuple(a.backup_exclude), compression=a.backup_compression,
                       restore_samples=a.backup_restore_samples)
    _check_passphrase_file(cfg.passphrase_file)
    for p in cfg.paths:
        if _within(p, state):
            raise PolicyError(f"--backup-path {p} is inside the agent's state directory")
    if cfg.repository.startswith("/"):
        for other in (*write_roots, *cfg.paths):
            if _within(cfg.repository, other) or _within(other, cfg.repository):
                raise PolicyError(f"the local backup repository {cfg.repository} overlaps {other}: jobs or "
                                  "backups could reach it")
        _warn("a repository on the device itself is no air gap: use an append-only vault over SSH "
              "(docs/backup-vault.md)")
    if not _within(os.path.realpath(cfg.passphrase_file), state):
        _warn(f"the passphrase file {cfg.passphrase_file} is outside the agent's state directory, where "
              "jobs granted root could read it; keep it in the state directory")
    return ActionPolicy(package_root=root, package_manager=manager,
                        security_only_updates=bool(a.security_only_updates), backup=cfg,
                        reboot_command=reboot)


# --- results ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Done:
    """What the receipt of one job says (see :meth:`rampart.agent.core.Agent._receipt`)."""

    outcome: str
    refusal: str = ""
    detail: str = ""
    result: containment.ContainedResult | None = None


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return " ".join(str(text).split())[:limit]


def _largest(node: Any, parent: Any = None, key: Any = None) -> tuple[int, Any, Any, Any]:
    """(encoded size, parent, key, value) of the biggest list (2+ items) or long string in ``node``."""
    best: tuple[int, Any, Any, Any] = (0, None, None, None)
    if isinstance(node, dict):
        items: Sequence[tuple[Any, Any]] = list(node.items())
    elif isinstance(node, list):
        items = list(enumerate(node))
    else:
        items = []
    if (isinstance(node, list) and len(node) > 1) or (isinstance(node, str) and len(node) > 80):
        best = (len(json.dumps(node)), parent, key, node)
    for k, v in items:
        cand = _largest(v, node, k)
        if cand[0] > best[0]:
            best = cand
    return best


def bounded_json(doc: Mapping[str, Any], limit: int = MAX_DOC_BYTES) -> tuple[bytes, bool]:
    """``doc`` as compact JSON of at most ``limit`` bytes: halve the biggest list or string until it fits.

    Lists keep their first items (callers put failures first); the result says
    ``"truncated": true`` when anything was cut.
    """
    data = json.dumps(doc, separators=(",", ":")).encode()
    if len(data) <= limit:
        return data, False
    work: dict[str, Any] = copy.deepcopy(dict(doc))
    work["truncated"] = True
    for _ in range(400):
        _, parent, key, value = _largest(work)
        if parent is None:
            break
        if isinstance(value, list):
            del value[max(1, len(value) // 2):]
        else:
            parent[key] = value[: len(value) // 2] + "…"
        data = json.dumps(work, separators=(",", ":")).encode()
        if len(data) <= limit:
            return data, True
    return json.dumps({"schema": 1, "action": doc.get("action"), "truncated": True,
                       "error": "the result was too large for a receipt"}).encode(), True


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _uncontained(timeout_s: float) -> containment.Containment:
    """What applies to an action the agent runs itself as root: no Landlock, no user switch."""
    uid = os.geteuid()
    return containment.Containment(landlock_abi=containment.detect_abi(), filesystem=False, network=False,
                                   no_new_privs=False, user=_user_name(uid), uid=uid, limits={},
                                   timeout_s=float(timeout_s), level="none")


def _finished(*, ok: bool, doc: Mapping[str, Any], error: str, summary: str, started: float,
              applied: containment.Containment | None, timed_out: bool = False) -> Done:
    """The receipt of an action the agent ran itself; ``applied`` is the containment that applied (if any)."""
    out, cut = bounded_json(doc)
    err = (one_line(error) + "\n").encode() if error else b""
    result = containment.ContainedResult(
        exit_code=0 if ok else 1, signal=None, timed_out=timed_out, stdout=out, stderr=err,
        stdout_truncated=cut, stderr_truncated=False, started_at=started, ended_at=time.time(),
        containment=applied, refused=None)
    return Done("ran" if ok else "failed", detail=one_line(summary), result=result)


# --- what a handler sees of the agent ------------------------------------------------------------------


class HostConfig(Protocol):
    """The device's local policy as handlers read it (:class:`rampart.agent.device_config.DeviceConfig`)."""

    @property
    def write_roots(self) -> tuple[str, ...]: ...
    @property
    def job_user(self) -> str | None: ...
    @property
    def require_containment(self) -> str: ...
    @property
    def actions(self) -> ActionPolicy: ...


class JobHost(Protocol):
    """What a handler sees of the agent (:class:`rampart.agent.core.Agent` is one).

    A protocol, so this module never imports the agent core that calls it.
    """

    @property
    def device_id(self) -> str: ...
    @property
    def state_dir(self) -> Path: ...
    @property
    def config(self) -> HostConfig: ...
    @property
    def inventory_trigger(self) -> Callable[[], bool] | None: ...


# --- dispatch ----------------------------------------------------------------------------------------


Handler = Callable[[JobHost, trust.Authorization, Mapping[str, bytes]], Done]


def run(agent: JobHost, auth: trust.Authorization, payloads: Mapping[str, bytes]) -> Done:
    """Run one authorized job; every outcome (ran, failed, refused) is a :class:`Done`, never an exception."""
    kind = auth.job.action.kind
    handler = _HANDLERS.get(kind)
    if handler is None:
        return Done("refused", "unsupported-action", f"this agent version cannot run {kind!r} actions")
    try:
        return handler(agent, auth, payloads)
    except Refusal as exc:
        log.warning("refused job %s: %s: %s", auth.job.id, exc.reason, exc.detail)
        return Done("refused", exc.reason, one_line(exc.detail))
    except Exception as exc:  # noqa: BLE001 - a receipt must still say what happened
        log.exception("job %s (%s) failed inside the agent", auth.job.id, kind)
        return Done("failed", detail=one_line(f"the agent failed running this job: {type(exc).__name__}: "
                                              f"{exc}"))


def run_check(agent: JobHost, auth: trust.RepeatAuthorization, script: bytes) -> Done:
    """A later run of a script check (:mod:`rampart.agent.script_checks`): exactly a script job's run."""
    try:
        return _script(agent, auth, {"script": script})
    except Exception as exc:  # noqa: BLE001 - the result must still say what happened
        log.exception("script check %s failed inside the agent", auth.job.id)
        return Done("failed", detail=one_line(f"the agent failed running this check: {type(exc).__name__}: "
                                              f"{exc}"))


def _tail(data: bytes) -> str:
    text = data[-MAX_TAIL:].decode("utf-8", errors="replace")
    return text[-MAX_TAIL:]


def result_of(job_id: str, done: Done, interval_s: int, *, started: float) -> CheckResult:
    """A script check's result of one run (:mod:`rampart.agent.script_checks`) from its :class:`Done`."""
    r = done.result
    ended = r.ended_at if r is not None and done.outcome != "refused" else time.time()
    begun = r.started_at if r is not None and done.outcome != "refused" else started
    exit_code = r.exit_code if r is not None else None
    ok = (done.outcome == "ran" and r is not None and exit_code == 0 and not r.timed_out)
    detail = ""
    if done.outcome != "ran":
        detail = one_line(f"{done.outcome}: {done.refusal + ': ' if done.refusal else ''}"
                                  f"{done.detail}", MAX_DETAIL)
    return CheckResult(
        job=job_id, run_at=begun, duration_s=max(0.0, ended - begun),
        exit_code=exit_code, signal=r.signal if r is not None else None,
        timed_out=bool(r.timed_out) if r is not None else False, ok=ok,
        interval_s=min(max(1, interval_s), trust.DEFAULT_LIMITS.max_repeat_every_s),
        stdout=_tail(r.stdout) if r is not None else "", stderr=_tail(r.stderr) if r is not None else "",
        detail=detail[:MAX_DETAIL],
    )


# --- contained jobs: script and file -------------------------------------------------------------------


def _required_level(config: HostConfig, run_as: str | None) -> str:
    """The containment a job must get. A job granted root (two approvers and a device
    that allows root) cannot drop to another user, so "full" means everything else."""
    if run_as == "root" and config.require_containment == "full":
        return "filesystem"
    return config.require_containment


def _run_as(agent: JobHost, effective: str) -> str | None:
    """Who a job runs as: root if granted; else, for a root agent, a dynamic user of its own
    (``@dynamic``, the default; also for the shared ``nobody`` of older enrolments), or the
    fixed ``--job-user`` an administrator chose; an unprivileged agent stays itself."""
    if effective == "root":
        return "root" if os.geteuid() == 0 else None
    if os.geteuid() != 0:
        return None
    user = agent.config.job_user
    return containment.DYNAMIC if user in (None, "nobody", containment.DYNAMIC) else user


def _code_root() -> str:
    """The directory holding this copy of the ``rampart`` package (handed to ``python -I``)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(rampart.__file__)))


def _contained(agent: JobHost, auth: trust.Authorization | trust.RepeatAuthorization,
               files: Mapping[str, bytes],
               argv: Callable[[Path], tuple[str, ...]], *,
               as_agent: bool = False) -> containment.ContainedResult:
    """Run ``argv(workdir)`` in the job's sandbox, with ``files`` in a private work directory.

    ``as_agent``: the program is the agent's own code (not the job's), run as the agent's user
    under the job's Landlock rules: the job user may not be able to execute the agent's interpreter.
    """
    run_as = None if as_agent else _run_as(agent, auth.effective.run_as)
    if run_as == containment.DYNAMIC:
        # Lease the job's own uid here, so its work directory can be given to it.
        try:
            user = jobscope.allocate_dynamic_user()
        except jobscope.UidUnavailable as exc:
            return containment.refused_result(time.time(), f"no dynamic user for the job: {exc}")
        with user:
            return _contained_as(agent, auth, files, argv, user, as_agent=as_agent)
    return _contained_as(agent, auth, files, argv, run_as, as_agent=as_agent)


def _contained_as(agent: JobHost, auth: trust.Authorization | trust.RepeatAuthorization,
                  files: Mapping[str, bytes], argv: Callable[[Path], tuple[str, ...]],
                  run_as: str | jobscope.DynamicUser | None, *,
                  as_agent: bool) -> containment.ContainedResult:
    job, eff = auth.job, auth.effective
    workdir = Path(tempfile.mkdtemp(prefix="rampart-job-"))
    try:
        for name, data in files.items():
            (workdir / name).write_bytes(data)
        owner: tuple[int, int] | None = None
        if isinstance(run_as, jobscope.DynamicUser):
            owner = (run_as.uid, run_as.gid)
        elif run_as not in (None, "root"):
            pw = pwd.getpwnam(run_as)
            owner = (pw.pw_uid, pw.pw_gid)
        if owner is not None:
            os.chown(workdir, *owner)
            for name in files:
                os.chown(workdir / name, *owner)
        os.chmod(workdir, 0o500)
        for name in files:
            os.chmod(workdir / name, 0o500)
        home = eff.writes[0] if eff.writes else str(workdir)
        spec = containment.ContainmentSpec(
            argv=argv(workdir), cwd=home,
            env={"PATH": JOB_PATH, "LANG": "C.UTF-8", "RAMPART_JOB_ID": job.id,
                 "RAMPART_DEVICE_ID": agent.device_id, "HOME": home},
            write_paths=eff.writes, deny_read_paths=(str(agent.state_dir.resolve()),),
            connect_ports=eff.connect, run_as=run_as, timeout_s=float(eff.timeout_s),
            max_output_bytes=MAX_OUTPUT,
            require=_required_level(agent.config, "root" if as_agent and os.geteuid() == 0
                                    else run_as if isinstance(run_as, str) else None),
        )
        return containment.run_contained(spec)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _script(agent: JobHost, auth: trust.Authorization | trust.RepeatAuthorization,
            payloads: Mapping[str, bytes]) -> Done:
    script = payloads["script"]
    args = auth.job.action.args

    def argv(workdir: Path) -> tuple[str, ...]:
        path = str(workdir / "script")
        return (path, *args) if script.startswith(b"#!") else ("/bin/sh", path, *args)

    result = _contained(agent, auth, {"script": script}, argv)
    if result.refused is not None:
        return Done("refused", "containment-unavailable", result.refused, result)
    return Done("ran", result=result)


def _file_args(args: Sequence[str]) -> tuple[str, int]:
    if len(args) != 2:
        raise Refusal("bad-arguments", "a file job's arguments are [DEST, MODE]")
    dest, mode_text = args
    if not dest.startswith("/") or dest.startswith("//") or os.path.normpath(dest) != dest or dest == "/" \
            or any(ord(c) < 0x20 for c in dest) or len(dest) > 1024:
        raise Refusal("bad-arguments", f"the destination must be a normalised absolute file path, "
                                       f"not {dest[:200]!r}")
    m = _MODE.fullmatch(mode_text)
    if m is None:
        raise Refusal("bad-arguments", f"the mode must be octal like 0644, without setuid, setgid or sticky "
                                       f"bits, not {mode_text[:20]!r}")
    return dest, int(m.group(1), 8)


def _file(agent: JobHost, auth: trust.Authorization, payloads: Mapping[str, bytes]) -> Done:
    job = auth.job
    refs = job.action.payloads
    if [p.name for p in refs] != ["file"]:
        raise Refusal("bad-arguments", "a file job carries exactly one payload named 'file'")
    dest, mode = _file_args(job.action.args)
    declared = auth.effective.writes
    if not any(_below(dest, w) for w in declared):
        raise Refusal("capability-not-granted", f"{dest} is not below a path the job declares it writes "
                                                f"({', '.join(declared) or 'none'})")
    protected = [str(agent.state_dir.resolve())]
    roots = [r for r in agent.config.write_roots
             if _below(dest, r) and not any(_within(r, p) for p in protected)]
    if not roots:
        raise Refusal("capability-not-granted", f"{dest} is not below a write root of this device")
    ref = refs[0]

    def argv(workdir: Path) -> tuple[str, ...]:
        spec = {"payload": str(workdir / "file"), "sha256": ref.sha256, "dest": dest, "mode": mode,
                "roots": roots}
        return (sys.executable, "-I", "-c", _FILEJOB_BOOT, _code_root(), json.dumps(spec))

    result = _contained(agent, auth, {"file": payloads["file"]}, argv, as_agent=True)
    if result.refused is not None:
        return Done("refused", "containment-unavailable", result.refused, result)
    if result.timed_out or result.exit_code != 0:
        why = one_line(result.stderr.decode("utf-8", "replace")) or (
            "timed out" if result.timed_out else f"the deployment exited with {result.exit_code}")
        return Done("failed", detail=f"{dest} not written: {why}", result=result)
    return Done("ran", detail=f"wrote {dest} ({ref.size} bytes, mode {mode:04o})", result=result)


# --- packages and updates (root, outside Landlock) -------------------------------------------------------


def _patch_limits(seconds: float) -> patching.PatchLimits:
    d = patching.DEFAULT_LIMITS
    s = max(1.0, seconds)
    return replace(d, apply_timeout_s=s, query_timeout_s=min(d.query_timeout_s, s),
                   refresh_timeout_s=min(d.refresh_timeout_s, s))


def _package_root(agent: JobHost, timeout_s: float) -> patching.PackageRoot:
    pol = agent.config.actions
    if pol.error:
        raise Refusal("not-configured", f"the device policy's package settings are invalid: {pol.error}")
    if pol.package_manager == "none":
        raise Refusal("not-configured", "package management is off on this device (--package-manager none)")
    if os.geteuid() != 0:
        raise Refusal("not-configured", "package management needs the agent to run as root")
    limits = _patch_limits(timeout_s)
    manager = None if pol.package_manager == "auto" else pol.package_manager
    try:
        if pol.package_root == "/":
            return patching.PackageRoot.system(manager, limits)  # type: ignore[arg-type]
        path = Path(pol.package_root)
        if not path.is_dir():
            raise Refusal("not-configured", f"the package root {path} does not exist")
        found = manager or _detect_manager(path)
        return patching.PackageRoot.scratch(path, found, limits)  # type: ignore[arg-type]
    except (patching.PackageSpecError, PolicyError) as exc:
        raise Refusal("not-configured", str(exc)) from None


def _with_budget(root: patching.PackageRoot, deadline: float) -> patching.PackageRoot:
    return replace(root, limits=_patch_limits(deadline - time.monotonic()))


def _package_args(args: Sequence[str], manager: str) -> tuple[str, str, str | None]:
    if len(args) in (2, 3) and args[0] == "install":
        name, version = args[1], (args[2] if len(args) == 3 else None)
    elif len(args) == 2 and args[0] == "remove":
        name, version = args[1], None
    else:
        raise Refusal("bad-arguments", "a package job's arguments are [install, NAME], "
                                       "[install, NAME, VERSION] or [remove, NAME]")
    try:
        patching.validate_name(name, manager)  # type: ignore[arg-type]
        if version is not None:
            patching.validate_version(version, manager)  # type: ignore[arg-type]
    except patching.PackageSpecError as exc:
        raise Refusal("bad-arguments", str(exc)) from None
    return args[0], name, version


def _patch_doc(result: patching.PatchResult) -> dict[str, Any]:
    doc: dict[str, Any] = msgspec.to_builtins(result)
    doc["changes"].sort(key=lambda c: (c.get("action") != "failed", c.get("name", "")))
    return doc


def _patch_error(result: patching.PatchResult) -> str:
    if result.ok:
        return ""
    failed = [f"{c.name}: {one_line(c.error, 300)}" for c in result.failures]
    return "; ".join(filter(None, [result.error, *failed])) or "the package manager failed"


def _no_declarations(job: trust.Job) -> None:
    if job.declared.writes or job.declared.connect:
        raise Refusal("bad-arguments", f"a {job.action.kind} job declares no write paths or ports: the "
                                       "package manager is not contained")


def _package(agent: JobHost, auth: trust.Authorization, payloads: Mapping[str, bytes]) -> Done:
    job = auth.job
    if job.declared.run_as != "root":
        raise Refusal("capability-not-granted",
                      "a package job runs maintainer scripts as root outside containment: it must declare "
                      "run_as root, which needs the 'root' capability in its grant and a device enrolled "
                      "with --allow-root")
    _no_declarations(job)
    root = _package_root(agent, job.timeout_s)
    operation, name, version = _package_args(job.action.args, root.manager)
    started = time.time()
    if operation == "install":
        result = patching.install(root, name, version)
    else:
        result = patching.remove(root, name)
    request = {"operation": operation, "name": name, "version": version}
    doc = {"schema": 1, "action": "package", "request": request, "root": str(root.path),
           "result": _patch_doc(result)}
    mine = next((c for c in result.changes if c.name == name.split(":", 1)[0]), None)
    what = f"{operation} {name}" + (f"={version}" if version else "")
    if result.ok and mine is not None:
        summary = f"{what}: {mine.action} ({mine.before or 'none'} -> {mine.after or 'none'})"
    else:
        summary = f"{what}: " + ("done" if result.ok else f"failed: {_patch_error(result)}")
    return _finished(ok=result.ok, doc=doc, error=_patch_error(result), summary=summary, started=started,
                     applied=_uncontained(job.timeout_s), timed_out=result.timed_out)


def _os_update(agent: JobHost, auth: trust.Authorization, payloads: Mapping[str, bytes]) -> Done:
    job = auth.job
    _no_declarations(job)
    root = _package_root(agent, job.timeout_s)
    security_only = agent.config.actions.security_only_updates
    deadline = time.monotonic() + job.timeout_s
    started = time.time()
    refreshed = patching.refresh(_with_budget(root, deadline))
    pending, pending_error = patching.pending_updates_checked(_with_budget(root, deadline))
    result = patching.apply_updates(_with_budget(root, deadline), only_security=security_only)
    security = {u.name for u in pending if u.security}
    upgraded = [c for c in result.changes if c.action in ("upgraded", "installed")]
    doc = {"schema": 1, "action": "os-update", "root": str(root.path), "security_only": security_only,
           "refresh": msgspec.to_builtins(refreshed),
           "pending": sorted(msgspec.to_builtins(pending), key=lambda u: (not u["security"], u["name"])),
           "pending_error": pending_error, "result": _patch_doc(result)}
    fixes = sum(1 for c in upgraded if c.name in security)
    summary = (f"{len(upgraded)} package(s) updated, {fixes} of them security updates; "
               f"{len(result.failures)} failed")
    if not refreshed.ok:
        summary += f"; package lists not refreshed: {one_line(refreshed.error, 200)}"
    if result.reboot_required:
        summary += "; reboot required"
    return _finished(ok=result.ok, doc=doc, error=_patch_error(result), summary=summary, started=started,
                     applied=_uncontained(job.timeout_s), timed_out=result.timed_out)


# --- backups -----------------------------------------------------------------------------------------------


def _backup_limits(seconds: float) -> backup.BackupLimits:
    d = backup.DEFAULT_LIMITS
    s = max(1.0, seconds)
    return replace(d, init_timeout_s=min(d.init_timeout_s, s), create_timeout_s=min(d.create_timeout_s, s),
                   check_timeout_s=min(d.check_timeout_s, s), list_timeout_s=min(d.list_timeout_s, s),
                   extract_timeout_s=min(d.extract_timeout_s, s))


def _restore_samples(cfg: BackupConfig, skip: Sequence[str]) -> list[str]:
    """Up to ``cfg.restore_samples`` regular files the archive must hold (not excluded, same file system)."""
    if cfg.restore_samples == 0:
        return []
    rng = random.SystemRandom()
    found = backup.sample_files(list(cfg.paths), cfg.restore_samples + 16, rng=rng)
    found += [p for p in cfg.paths if os.path.isfile(p) and not os.path.islink(p)]  # a path that is a file
    out = []
    for path in rng.sample(found, len(found)):
        if any(_within(path, x) for x in skip):
            continue
        top = next((p for p in cfg.paths if _within(path, p)), None)
        try:
            if top is None or os.lstat(path).st_dev != os.stat(top).st_dev:
                continue  # borg create --one-file-system leaves it out
        except OSError:
            continue
        out.append(path)
        if len(out) == cfg.restore_samples:
            break
    return sorted(out)


def _backup_run(agent: JobHost, auth: trust.Authorization, payloads: Mapping[str, bytes]) -> Done:
    job = auth.job
    _no_declarations(job)
    pol = agent.config.actions
    if pol.error:
        raise Refusal("not-configured", f"the device policy's backup settings are invalid: {pol.error}")
    cfg = pol.backup
    if cfg is None:
        raise Refusal("not-configured", "no backup is configured on this device (rampart-agent enroll "
                                        "--backup-repo ... --backup-path ...)")
    deadline = time.monotonic() + job.timeout_s
    started = time.time()

    def repo() -> backup.BorgRepo:
        assert cfg is not None
        return backup.BorgRepo(location=cfg.repository, passphrase_file=Path(cfg.passphrase_file),
                               base_dir=agent.state_dir / "borg", rsh=cfg.rsh,
                               limits=_backup_limits(deadline - time.monotonic()))

    state = str(agent.state_dir.resolve())
    skip = [*cfg.excludes, state]
    name = backup.validate_archive_name(f"{backup.archive_name(agent.device_id, started)}-{job.id[4:12]}")
    made = backup.create_archive(repo(), list(cfg.paths), name=name,
                                 excludes=[f"pp:{p}" for p in skip], compression=cfg.compression)
    doc: dict[str, Any] = {"schema": 1, "action": "backup-run", "repository": cfg.repository,
                           "archive": msgspec.to_builtins(made), "check": None,
                           "restore_test": None}
    if not made.ok:
        return _finished(ok=False, doc=doc, error=f"borg create failed: {made.error}",
                         summary=f"no archive was made: {one_line(made.error, 300)}", started=started,
                         applied=_uncontained(job.timeout_s))
    checked = backup.check(repo())
    doc["check"] = msgspec.to_builtins(checked)
    samples = _restore_samples(cfg, skip)
    tested = backup.restore_test(repo(), made.name, samples) if samples else []
    passed: bool | None = backup.restore_test_passed(tested) if cfg.restore_samples else None
    doc["restore_test"] = {"passed": passed, "requested": cfg.restore_samples,
                           "samples": sorted(msgspec.to_builtins(tested), key=lambda s: (s["ok"], s["path"]))}
    errors = []
    if not checked.ok:
        errors.append(f"borg check failed: {checked.error}")
    if passed is False:
        bad = [f"{s.path} {s.status}" for s in tested if not s.ok] or ["no file could be sampled"]
        errors.append("restore test failed: " + ", ".join(bad[:5]))
    ok = not errors
    summary = (f"archive {made.name}: {made.nfiles} files, {made.original_size} bytes "
               f"({made.deduplicated_size} new); check {'ok' if checked.ok else 'FAILED'}; restore test "
               + ("skipped" if passed is None else f"{sum(1 for s in tested if s.ok)}/{len(tested)} matched"))
    if made.warning:
        summary += "; some files could not be read"
    return _finished(ok=ok, doc=doc, error="; ".join(errors), summary=summary, started=started,
                     applied=_uncontained(job.timeout_s))


# --- inventory -------------------------------------------------------------------------------------------


def _inventory_refresh(agent: JobHost, auth: trust.Authorization, payloads: Mapping[str, bytes]) -> Done:
    started = time.time()
    trigger = agent.inventory_trigger
    if trigger is None:
        return _finished(ok=False, doc={"schema": 1, "action": "inventory-refresh", "status": "unavailable"},
                         error="inventory reporting is not running in this agent process",
                         summary="inventory reporting is not running", started=started, applied=None)
    connected = trigger()
    status = "requested" if connected else "queued"
    summary = ("an inventory report was requested" if connected else
               "the server is not connected: an inventory is reported when the connection is back")
    return _finished(ok=True, doc={"schema": 1, "action": "inventory-refresh", "status": status},
                     error="", summary=summary, started=started, applied=None)


def _reboot(agent: JobHost, auth: trust.Authorization, payloads: Mapping[str, bytes]) -> Done:
    """Run the device's own reboot command (``--allow-reboot``); the server chooses only when."""
    job = auth.job
    _no_declarations(job)
    pol = agent.config.actions
    if pol.error or pol.reboot_command is None:
        raise Refusal("not-configured",
                      "reboots are off on this device (rampart-agent enroll --allow-reboot)")
    started = time.time()
    done = _command.run(list(pol.reboot_command), env={"PATH": JOB_PATH, "LC_ALL": "C.UTF-8"},
                        timeout=min(60.0, float(job.timeout_s)), max_stdout=4096, max_tail=4096,
                        merge_stderr=True)
    doc = {"schema": 1, "action": "reboot", "command": list(pol.reboot_command), "exit_code": done.returncode,
           "output_tail": done.tail[-2000:]}
    why = done.error or f"exit status {done.returncode}"
    return _finished(ok=done.ok, doc=doc, error="" if done.ok else f"the reboot command failed: {why}",
                     summary="reboot requested" if done.ok else "the reboot command failed", started=started,
                     applied=_uncontained(job.timeout_s))


_HANDLERS: dict[str, Handler] = {
    "script": _script,
    "file": _file,
    "package": _package,
    "os-update": _os_update,
    "backup-run": _backup_run,
    "reboot": _reboot,
    "inventory-refresh": _inventory_refresh,
}
