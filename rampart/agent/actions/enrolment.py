"""The ``rampart-agent enroll`` options of the handlers and the ActionPolicy they make."""

from __future__ import annotations

import argparse
import os
import shlex
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import _command
from .limits import DEFAULT_REBOOT, DEFAULT_RESTORE_SAMPLES, MANAGERS, MAX_RESTORE_SAMPLES, PASSPHRASE_FILE
from .policy import ActionPolicy, BackupConfig, PolicyError, _abs_path, _within

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
