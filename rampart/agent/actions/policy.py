"""The device's action policy, set at enrolment: ActionPolicy, BackupConfig, PolicyError."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import backup
from ..errors import LocalFault
from .limits import DEFAULT_RESTORE_SAMPLES, MANAGERS, MAX_RESTORE_SAMPLES, log


class PolicyError(LocalFault, ValueError):
    """A device-policy setting is not acceptable; the message is one line for the administrator."""


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
