"""Package roots (the real system or a scratch root) and the environment and command-line options for one."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import _command
from .limits import DEFAULT_LIMITS, Manager, PackageSpecError, PatchLimits

# --- package roots ---------------------------------------------------------------------


_SCRATCH_DIRS = (
    "var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "var/lib/apt/lists/partial",
    "var/cache/apt/archives/partial", "var/log/apt", "etc/apt/apt.conf.d", "etc/apt/sources.list.d",
    "etc/apt/preferences.d", "etc/apt/trusted.gpg.d", "run", "tmp",
)


def _apt_conf_string(value: str) -> str:
    if any(c in value for c in '"\n\r\\{};'):
        raise PackageSpecError(f"path not usable in an apt configuration: {value!r}")
    return f'"{value}"'


@dataclass(frozen=True)
class PackageRoot:
    """Where packages are managed: the system (``/``) or a scratch root; and with which manager.

    Build with :meth:`system` or :meth:`scratch`. A scratch root is a
    directory holding its own dpkg database and apt state (or rpm database
    and dnf configuration); operations on it never read or write the host's.
    """

    path: Path
    manager: Manager
    limits: PatchLimits = field(default=DEFAULT_LIMITS)

    def __post_init__(self) -> None:
        if not self.path.is_absolute() or os.path.normpath(self.path) != str(self.path):
            raise PackageSpecError(f"package root must be a normalised absolute path: {self.path}")
        if self.manager not in ("apt", "dnf"):
            raise PackageSpecError(f"unknown package manager {self.manager!r}")

    @property
    def is_system(self) -> bool:
        return str(self.path) == "/"

    def file(self, rel: str) -> Path:
        """A path inside the root (``rel`` is relative, e.g. ``var/lib/dpkg/status``)."""
        return self.path / rel

    @property
    def apt_config(self) -> Path:
        """The configuration file apt reads for a scratch root (``APT_CONFIG``)."""
        return self.file("etc/apt/rampart-root.conf")

    @classmethod
    def system(cls, manager: Manager | None = None, limits: PatchLimits = DEFAULT_LIMITS) -> PackageRoot:
        """The real system; the manager is detected (apt if ``apt-get`` exists, else dnf) unless given."""
        if manager is None:
            if _command.which("apt-get"):
                manager = "apt"
            elif _command.which("dnf"):
                manager = "dnf"
            else:
                raise PackageSpecError("neither apt-get nor dnf is installed")
        return cls(Path("/"), manager, limits)

    @classmethod
    def scratch(cls, path: Path, manager: Manager = "apt", limits: PatchLimits = DEFAULT_LIMITS,
                ) -> PackageRoot:
        """A scratch root at ``path`` (created when missing, idempotent): empty package database.

        For apt it writes ``etc/apt/rampart-root.conf``, which points apt's
        ``Dir`` and ``Dir::State::status`` into the root; sources go in the
        root's ``etc/apt/sources.list``. Maintainer scripts run chrooted into
        the root, so packages with scripts need a shell there (``bin/sh``).
        """
        path = Path(os.path.normpath(os.path.abspath(path)))
        if str(path) == "/":
            raise PackageSpecError("a scratch root cannot be /")
        root = cls(path, manager, limits)
        if manager == "apt":
            for rel in _SCRATCH_DIRS:
                root.file(rel).mkdir(parents=True, exist_ok=True)
            for rel in ("var/lib/dpkg/status", "var/lib/dpkg/available"):
                root.file(rel).touch(exist_ok=True)
            status = root.file("var/lib/dpkg/status")
            root.apt_config.write_text(
                "// Written by rampart.agent.patching.PackageRoot.scratch: apt works inside this root only.\n"
                f"Dir {_apt_conf_string(str(path) + '/')};\n"
                f"Dir::State::status {_apt_conf_string(str(status))};\n")
        else:
            for rel in ("etc/yum.repos.d", "etc/dnf", "var/lib/rpm", "var/cache/dnf", "run", "tmp"):
                root.file(rel).mkdir(parents=True, exist_ok=True)
            conf = root.file("etc/dnf/dnf.conf")
            if not conf.exists():
                conf.write_text("[main]\ngpgcheck=1\ninstallonly_limit=3\nclean_requirements_on_remove=False\n")
        return root


# --- environment and command lines ----------------------------------------------------------


# Every module of the package calls this as ``roots._env(...)``: one name to adjust (the dnf tests
# add their tool prefix to PATH here).
def _env(root: PackageRoot) -> dict[str, str]:
    env = {"PATH": _command.SAFE_PATH, "LC_ALL": "C", "LANG": "C", "LANGUAGE": "C", "TERM": "dumb",
           "DEBIAN_FRONTEND": "noninteractive", "APT_LISTCHANGES_FRONTEND": "none",
           "APT_LISTBUGS_FRONTEND": "none", "UCF_FORCE_CONFFOLD": "1", "NEEDRESTART_MODE": "l",
           "HOME": "/root" if os.geteuid() == 0 else "/",
           "TMPDIR": "/tmp"}  # noqa: S108 - the system's temporary directory, as maintainer scripts expect
    if root.manager == "apt" and not root.is_system:
        # Read first by apt: every Dir (sources, lists, apt.conf.d, logs, archives) is the root's.
        env["APT_CONFIG"] = str(root.apt_config)
    return env


def _apt_options(root: PackageRoot) -> list[str]:
    """Options every apt command gets: the root, dpkg's root, and no trust override."""
    opts = ["-o", "APT::Get::AllowUnauthenticated=false", "-o", "Acquire::AllowInsecureRepositories=false",
            "-o", "Acquire::AllowDowngradeToInsecureRepositories=false", "-o", "APT::Color=0",
            "-o", "Dpkg::Use-Pty=0", "-o", "quiet::NoProgress=1"]
    if not root.is_system:
        opts += ["-o", f"Dir={root.path}/", "-o", f"Dir::State::status={root.file('var/lib/dpkg/status')}",
                 "-o", f"DPkg::Options::=--root={root.path}"]
        if os.geteuid() != 0:
            opts += ["-o", "DPkg::Options::=--force-not-root"]
    return opts


def _dpkg_root_options(root: PackageRoot) -> list[str]:
    if root.is_system:
        return []
    opts = [f"--root={root.path}"]
    if os.geteuid() != 0:
        opts.append("--force-not-root")
    return opts


def _dnf_options(root: PackageRoot) -> list[str]:
    opts = ["--assumeyes", "--setopt=install_weak_deps=False", "--setopt=clean_requirements_on_remove=False",
            "--setopt=gpgcheck=True", "--setopt=localpkg_gpgcheck=True", "--color=never"]
    if not root.is_system:
        opts += [f"--installroot={root.path}", f"--config={root.file('etc/dnf/dnf.conf')}",
                 f"--setopt=reposdir={root.file('etc/yum.repos.d')}"]
    return opts


def _rpm_root_options(root: PackageRoot) -> list[str]:
    return [] if root.is_system else [f"--root={root.path}"]
