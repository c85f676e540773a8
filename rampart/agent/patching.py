"""Patch and package management on one package root (apt/dpkg or dnf/rpm): the agent's engine.

What it does (issue 6, K1, H5, M6): list pending updates with a security
flag, apply them (all, security only, or named packages), install and remove
packages by name and version, and report per package what changed (version
before and after, dpkg/rpm state, the package manager's error text) and
whether the host needs a reboot. It is pure I/O: verifying that a job was
signed and granted happens before, in :mod:`rampart.trust`; the job wiring
calls these functions with values taken from a verified job.

Security rules (docs/design/patching-backup.md, "Security"):

* **No argument injection.** Package names and versions are checked against
  Debian policy (5.6.1, 5.6.12) or rpm's rules before they reach a command
  line; anything else (``--foo``, ``pkg=1;rm``, spaces, globs, a version with
  a leading ``-``) raises :class:`PackageSpecError` and nothing runs. There is
  no shell anywhere; argv lists only.
* **Fixed environment.** Commands run from a fixed PATH with ``LC_ALL=C``,
  ``DEBIAN_FRONTEND=noninteractive`` and nothing inherited from the agent
  (:mod:`rampart.agent._command`), stdin ``/dev/null``, a time limit (the whole
  process group is killed past it) and bounded output.
* **The device's repositories only.** Nothing here adds a source, a key or a
  trust override; unauthenticated packages are refused even when the host's
  own apt configuration would allow them (``APT::Get::AllowUnauthenticated``
  forced off). A job chooses *which* packages and versions, never *where
  from*.
* **No silent collateral.** Updates never remove packages (``--no-remove``);
  :func:`remove` refuses when other packages would go too unless the caller
  says ``cascade=True``; downgrades need ``allow_downgrade=True``; essential
  packages stay protected by apt itself.
* **Never raises on package-manager failure.** Every operation returns a
  :class:`PatchResult`; a failing maintainer script, a lock held too long, a
  missing package or a time-out is a failure entry with the package left in
  a state the result names (``state``, ``broken``).

A :class:`PackageRoot` is the real system (``/``) or a scratch root, used by
the tests and the benchmark so that the machine's own packages never change.
For apt a scratch root gets its own configuration file (``APT_CONFIG``) that
points every ``Dir`` at the root, so nothing of the host's apt configuration
(hooks, proxies, sources) applies, and dpkg runs with ``--root``, so it uses
the root's database and runs maintainer scripts chrooted into the root. For
dnf, ``--installroot`` with the root's own configuration and repositories.
"""

from __future__ import annotations

import os
import re
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import msgspec

from . import _command
from .inventory.packages import dnf_security_tokens, parse_dnf_check_update

Manager = Literal["apt", "dnf"]
Action = Literal["upgraded", "downgraded", "installed", "removed", "unchanged", "failed"]
Operation = Literal["upgrade", "install", "remove"]


class PackageSpecError(ValueError):
    """A package name, version or root is not acceptable: the caller's input, refused before any command."""


@dataclass(frozen=True, slots=True)
class PatchLimits:
    """Every duration and size the engine bounds."""

    #: Listing pending updates (apt-cache, dnf -C): read-only, offline.
    query_timeout_s: float = 300.0
    #: One whole apply/install/remove operation, every command included.
    apply_timeout_s: float = 3600.0
    #: Refreshing the package lists (the only step that uses the network).
    refresh_timeout_s: float = 900.0
    #: How long apt waits for another package manager's lock before failing.
    lock_timeout_s: int = 120
    max_stdout: int = 64 << 20
    #: Last bytes of the package manager's output kept in a result.
    max_output_tail: int = 16 << 10
    #: Error text kept per package, and the general error lines kept.
    max_error_chars: int = 2000
    max_error_lines: int = 50
    max_packages: int = 20_000
    #: Largest dpkg status file read (a big one is ~20 MB).
    max_status_bytes: int = 64 << 20
    #: Named packages one operation may take.
    max_request: int = 1000


DEFAULT_LIMITS = PatchLimits()

# --- names and versions ----------------------------------------------------------------

# Debian policy 5.6.1: lower case letters, digits, + - . ; at least two characters, starting alphanumeric.
_DEB_NAME = re.compile(r"[a-z0-9][a-z0-9+.\-]{1,199}")
_DEB_ARCH = re.compile(r"[a-z0-9][a-z0-9\-]{0,31}")
# Debian policy 5.6.12: [epoch:]upstream[-revision]; upstream starts with a digit and may hold a hyphen
# only when there is a revision; the revision has no hyphen.
_DEB_EPOCH = re.compile(r"[0-9]{1,9}")
_DEB_UPSTREAM = re.compile(r"[0-9][A-Za-z0-9.+~\-]{0,127}")
_DEB_UPSTREAM_NOREV = re.compile(r"[0-9][A-Za-z0-9.+~]{0,127}")
_DEB_REVISION = re.compile(r"[A-Za-z0-9.+~]{1,64}")
# rpm: names of letters, digits and - . _ + (not starting with - or .); EVR [epoch:]version[-release].
_RPM_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+\-]{0,199}")
_RPM_VERSION = re.compile(r"(?:[0-9]{1,9}:)?[A-Za-z0-9._+~^]{1,128}(?:-[A-Za-z0-9._+~^]{1,128})?")


def validate_name(name: str, manager: Manager = "apt") -> str:
    """``name`` (apt: optionally ``name:arch``) if it is a valid name, else :class:`PackageSpecError`."""
    if not isinstance(name, str):
        raise PackageSpecError("package name must be a string")
    if manager == "apt":
        base, sep, arch = name.partition(":")
        if _DEB_NAME.fullmatch(base) and (not sep or _DEB_ARCH.fullmatch(arch)):
            return name
    elif _RPM_NAME.fullmatch(name):
        return name
    raise PackageSpecError(f"not a valid {manager} package name: {name[:80]!r}")


def validate_version(version: str, manager: Manager = "apt") -> str:
    """``version`` if valid for Debian (policy 5.6.12) or rpm (EVR), else :class:`PackageSpecError`."""
    if not isinstance(version, str):
        raise PackageSpecError("version must be a string")
    if manager == "dnf":
        if _RPM_VERSION.fullmatch(version):
            return version
        raise PackageSpecError(f"not a valid rpm version: {version[:80]!r}")
    epoch, sep, rest = version.partition(":")
    if not sep:
        epoch, rest = "", version
    elif not _DEB_EPOCH.fullmatch(epoch):
        raise PackageSpecError(f"not a valid Debian version: {version[:80]!r}")
    upstream, dash, revision = rest.rpartition("-")
    ok = (_DEB_UPSTREAM.fullmatch(upstream) is not None and _DEB_REVISION.fullmatch(revision) is not None
          if dash else _DEB_UPSTREAM_NOREV.fullmatch(rest) is not None)
    if not ok:
        raise PackageSpecError(f"not a valid Debian version: {version[:80]!r}")
    return version


def _order(c: str) -> int:
    if c.isascii() and c.isalpha():
        return ord(c)
    if c == "~":
        return -1
    return ord(c) + 256 if c else 0


def _verrevcmp(a: str, b: str) -> int:
    """dpkg's ``verrevcmp``: compare one version part (lib/dpkg/version.c)."""
    i = j = 0
    digits = "0123456789"
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and a[i] not in digits) or (j < len(b) and b[j] not in digits):
            ac = _order(a[i]) if i < len(a) else 0
            bc = _order(b[j]) if j < len(b) else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i] in digits and j < len(b) and b[j] in digits:
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i] in digits:
            return 1
        if j < len(b) and b[j] in digits:
            return -1
        if first_diff:
            return first_diff
    return 0


def _split_deb(version: str) -> tuple[int, str, str]:
    epoch, sep, rest = version.partition(":")
    if not sep or not epoch.isdigit():
        epoch, rest = "0", version
    upstream, dash, revision = rest.rpartition("-")
    return (int(epoch), upstream, revision) if dash else (int(epoch), rest, "")


def compare_deb_versions(a: str, b: str) -> int:
    """<0, 0 or >0 as Debian version ``a`` sorts before, with or after ``b`` (dpkg's algorithm)."""
    ea, ua, ra = _split_deb(a)
    eb, ub, rb = _split_deb(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _verrevcmp(ua, ub) or _verrevcmp(ra, rb)


# --- result types ----------------------------------------------------------------------


class _Struct(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class Update(_Struct, frozen=True, kw_only=True):
    """One pending update of an installed package."""

    manager: Manager
    name: str
    arch: str
    installed: str
    #: The version the package manager would install (apt's candidate, dnf's update).
    candidate: str
    #: A version newer than ``installed`` comes from a security source (``*-security`` suite, a
    #: "Security" label, a dnf security advisory).
    security: bool = False
    #: The newest version a security source offers (what a security-only run installs); may be
    #: older than ``candidate`` when a normal suite has an even newer one.
    security_candidate: str = ""
    #: Archive, suite or repository that offers the candidate.
    origin: str = ""
    #: Updating this package usually needs a reboot to take effect (kernel, libc, systemd, ...).
    reboot_required: bool = False


class PackageChange(_Struct, frozen=True, kw_only=True):
    """What happened to one package in an operation."""

    name: str
    arch: str = ""
    before: str | None = None
    after: str | None = None
    action: Action
    #: The package's state afterwards: dpkg's status word ("installed", "half-configured",
    #: "unpacked", ..., "not-installed") or "installed"/"not-installed" for rpm.
    state: str = "not-installed"
    #: The version the operation aimed for, when it named one.
    wanted: str = ""
    error: str = ""


class PatchResult(_Struct, frozen=True, kw_only=True):
    """The outcome of :func:`apply_updates`, :func:`install` or :func:`remove`; never an exception."""

    manager: Manager
    operation: Operation
    ok: bool
    #: Every package whose version or state changed, and every requested one (even if unchanged).
    changes: list[PackageChange] = []
    #: Why the operation failed as a whole ("" when ``ok``); per-package reasons are in ``changes``.
    error: str = ""
    #: General error lines of the package manager ("E: ...", "Error: ..."), bounded.
    errors: list[str] = []
    exit_code: int | None = None
    timed_out: bool = False
    #: Packages left in a non-final state ("name:state"), e.g. a failed maintainer script.
    broken: list[str] = []
    reboot_required: bool = False
    output_tail: str = ""
    output_truncated: bool = False
    started: float = 0.0
    finished: float = 0.0

    @property
    def failures(self) -> list[PackageChange]:
        return [c for c in self.changes if c.action == "failed"]


class RefreshResult(_Struct, frozen=True, kw_only=True):
    ok: bool
    error: str = ""
    exit_code: int | None = None
    output_tail: str = ""
    duration_s: float = 0.0


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


# --- installed state -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Installed:
    version: str
    state: str
    want: str = "install"


_Snapshot = dict[tuple[str, str], _Installed]
#: dpkg states after which a package is not in a final, working state.
_DPKG_TRANSIENT = frozenset({"half-installed", "unpacked", "half-configured", "triggers-awaited",
                             "triggers-pending"})


def _parse_dpkg_status(text: str, limit: int) -> _Snapshot:
    out: _Snapshot = {}
    fields: dict[str, str] = {}
    for line in [*text.split("\n"), ""]:
        if line.strip():
            if line[0] not in " \t":
                key, sep, value = line.partition(":")
                if sep and key in ("Package", "Version", "Architecture", "Status"):
                    fields[key] = value.strip()
            continue
        if fields:
            status = fields.get("Status", "").split()
            name, arch = fields.get("Package", ""), fields.get("Architecture", "")
            if len(status) == 3 and name and status[2] != "not-installed" and len(out) < limit:
                out[(name, arch)] = _Installed(fields.get("Version", ""), status[2], status[0])
            fields = {}
    return out


def _snapshot(root: PackageRoot) -> _Snapshot:
    """Every package the root's database knows (name, arch) -> version and state."""
    if root.manager == "apt":
        path = root.file("var/lib/dpkg/status")
        with open(path, "rb") as f:
            data = f.read(root.limits.max_status_bytes + 1)
        if len(data) > root.limits.max_status_bytes:
            raise OSError(f"{path} is larger than {root.limits.max_status_bytes} bytes")
        return _parse_dpkg_status(data.decode("utf-8", "replace"), root.limits.max_packages)
    qf = "%{NAME}\\t%{ARCH}\\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\\n"
    argv = ["rpm", *_rpm_root_options(root), "-qa", "--qf", qf]
    done = _command.run(argv, env=_env(root), timeout=root.limits.query_timeout_s,
                        max_stdout=root.limits.max_stdout)
    if not done.ok:
        raise OSError(done.error or f"rpm -qa exited with status {done.returncode}: {done.tail[-500:]}")
    out: _Snapshot = {}
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0] != "gpg-pubkey":
            evr = parts[2][2:] if parts[2].startswith("0:") else parts[2]
            out[(parts[0], parts[1])] = _Installed(evr, "installed")
    return out


def _native_arch(root: PackageRoot) -> str:
    done = _command.run(["dpkg", *_dpkg_root_options(root), "--print-architecture"], env=_env(root),
                        timeout=60, max_stdout=4096)
    arch = done.stdout.decode("ascii", "replace").strip()
    return arch if done.ok and _DEB_ARCH.fullmatch(arch) else os.uname().machine


# --- reboot ------------------------------------------------------------------------------

#: Packages whose update takes full effect only after a reboot. rpm: the list dnf's
#: ``needs-restarting -r`` uses (dnf-plugins-core); Debian: the same components by their Debian names.
_REBOOT_DEB = re.compile(r"(linux-image-.*|linux-modules-.*|linux-firmware.*|firmware-linux.*|intel-microcode"
                         r"|amd64-microcode|libc6|systemd|udev|libssl3|libgnutls30|dbus|dbus-broker)")
_REBOOT_RPM = re.compile(r"(kernel|kernel-rt|kernel-core|glibc|linux-firmware|systemd|udev|openssl-libs"
                         r"|gnutls|dbus|dbus-broker|microcode_ctl)")


def _needs_reboot_pkg(manager: Manager, name: str) -> bool:
    return (_REBOOT_DEB if manager == "apt" else _REBOOT_RPM).fullmatch(name.split(":", 1)[0]) is not None


def _reboot_flag_packages(root: PackageRoot) -> set[str]:
    try:
        with open(root.file("run/reboot-required.pkgs"), "rb") as f:
            return {x.strip() for x in f.read(1 << 20).decode("utf-8", "replace").splitlines() if x.strip()}
    except OSError:
        return set()


def reboot_required(root: PackageRoot) -> bool:
    """Whether the root's system waits for a reboot.

    ``run/reboot-required`` (written by Debian/Ubuntu packages through
    update-notifier, and by :func:`apply_updates` when it changed a package
    that needs one); on the real system with dnf, ``dnf needs-restarting -r``.
    """
    if root.file("run/reboot-required").exists():
        return True
    if root.is_system and root.manager == "dnf":
        done = _command.run(["dnf", "-q", "needs-restarting", "-r"], env=_env(root),
                            timeout=root.limits.query_timeout_s, max_stdout=1 << 20)
        return done.returncode == 1
    return False


def _mark_reboot(root: PackageRoot, names: Iterable[str]) -> None:
    """Record a pending reboot the way Debian's update-notifier does (best effort)."""
    names = sorted(set(names))
    if not names:
        return
    try:
        run_dir = root.file("run")
        if not run_dir.is_dir():
            return
        known = _reboot_flag_packages(root)
        with open(run_dir / "reboot-required.pkgs", "a", encoding="utf-8") as f:
            for name in names:
                if name not in known:
                    f.write(name + "\n")
        (run_dir / "reboot-required").write_text("*** System restart required ***\n")
    except OSError:
        pass


# --- apt: pending updates ----------------------------------------------------------------

_POLICY_FILE = re.compile(r"^ *(-?\d+) (\S.*)$")
_POLICY_RELEASE = re.compile(r"^ +release (.*)$")
_POLICY_VERSION = re.compile(r"^ (?:\*\*\*| {3}) (\S+) (-?\d+)$")
_POLICY_SOURCE = re.compile(r"^ {8}(-?\d+) (\S.*)$")
_SECURITY_LABEL = re.compile(r"(?:^|[\s_\-])security(?:$|[\s_\-])", re.IGNORECASE)
_APT_CHUNK = 4000


def _release_fields(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in re.split(r",(?=[a-z]=)", text):
        key, sep, value = part.partition("=")
        if sep and len(key) == 1:
            out[key] = value
    return out


def parse_apt_release_map(text: str) -> dict[str, dict[str, str]]:
    """``apt-cache policy``: index line ("URI dist/comp arch Packages") -> release fields (o, a, n, l)."""
    out: dict[str, dict[str, str]] = {}
    current: str | None = None
    for line in text.splitlines():
        if m := _POLICY_RELEASE.match(line):
            if current is not None:
                out[current] = _release_fields(m.group(1))
            continue
        if line.startswith("Pinned packages"):
            break
        m = _POLICY_FILE.match(line)
        current = m.group(2).strip() if m else None
        if current is not None:
            out.setdefault(current, {})
    return out


def is_security_source(index: str, release: Mapping[str, str]) -> bool:
    """A security archive: a ``*-security`` suite or codename, or a label with the word "security".

    Without release fields (lists not yet indexed) the dist in the index line
    decides (``bookworm-security/main``), or a ``security.*`` host.
    """
    for key in ("a", "n"):
        if release.get(key, "").endswith("-security"):
            return True
    if _SECURITY_LABEL.search(release.get("l", "")):
        return True
    parts = index.split()
    dist = parts[1].split("/", 1)[0] if len(parts) >= 2 else ""
    host = parts[0].split("/")[2] if parts and parts[0].count("/") >= 2 else ""
    return dist.endswith("-security") or host.startswith("security.")


@dataclass
class _PolicyEntry:
    name: str
    arch: str
    installed: str = ""
    candidate: str = ""
    versions: list[tuple[str, list[str]]] = field(default_factory=list)


def parse_apt_policy_packages(text: str, native_arch: str) -> list[_PolicyEntry]:
    """Per package: installed, candidate and the version table with each version's index lines."""
    out: list[_PolicyEntry] = []
    cur: _PolicyEntry | None = None
    for line in text.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            name, _, arch = line[:-1].partition(":")
            cur = _PolicyEntry(name, arch or native_arch)
            out.append(cur)
            continue
        if cur is None:
            continue
        stripped = line.strip()
        if stripped.startswith("Installed:"):
            cur.installed = stripped.partition(":")[2].strip()
        elif stripped.startswith("Candidate:"):
            cur.candidate = stripped.partition(":")[2].strip()
        elif m := _POLICY_VERSION.match(line):
            cur.versions.append((m.group(1), []))
        elif (m := _POLICY_SOURCE.match(line)) and cur.versions:
            cur.versions[-1][1].append(m.group(2).strip())
    return out


def _apt_updates_from_policy(entries: Sequence[_PolicyEntry], releases: Mapping[str, Mapping[str, str]],
                             snapshot: _Snapshot, reboot_pkgs: set[str]) -> list[Update]:
    updates: list[Update] = []
    for e in entries:
        if e.installed in ("", "(none)") or e.candidate in ("", "(none)", e.installed):
            continue
        if compare_deb_versions(e.candidate, e.installed) <= 0:
            continue  # a pinned downgrade is not an update
        real_arch = e.arch
        if (e.name, e.arch) not in snapshot and (e.name, "all") in snapshot:
            real_arch = "all"
        security_versions: list[str] = []
        origin = ""
        for version, sources in e.versions:
            remote = [s for s in sources if "://" in s or s.startswith("file:") or s.startswith("copy:")]
            if version == e.candidate and remote and not origin:
                rel = releases.get(remote[0], {})
                origin = rel.get("a") or rel.get("n") or (remote[0].split()[1] if len(remote[0].split()) > 1
                                                           else "")
            if compare_deb_versions(version, e.installed) > 0 and any(
                    is_security_source(s, releases.get(s, {})) for s in remote):
                security_versions.append(version)
        best_security = ""
        for v in security_versions:
            if not best_security or compare_deb_versions(v, best_security) > 0:
                best_security = v
        updates.append(Update(manager="apt", name=e.name, arch=real_arch, installed=e.installed,
                              candidate=e.candidate, security=bool(best_security),
                              security_candidate=best_security, origin=origin[:200],
                              reboot_required=_needs_reboot_pkg("apt", e.name) or e.name in reboot_pkgs))
    return sorted(updates, key=lambda u: (u.name, u.arch))


def _apt_pending(root: PackageRoot, deadline: float) -> tuple[list[Update], str]:
    """(updates, error); error is "" on success."""
    try:
        snap = _snapshot(root)
    except OSError as exc:
        return [], f"cannot read the package database: {exc}"
    native = _native_arch(root)
    env = _env(root)
    base = ["apt-cache", *_apt_options(root), "-o", "Debug::NoLocking=1", "policy"]
    left = max(1.0, deadline - time.monotonic())
    done = _command.run(base, env=env, timeout=left, max_stdout=root.limits.max_stdout)
    if not done.ok:
        return [], done.error or f"apt-cache policy exited with status {done.returncode}: {done.tail[-500:]}"
    releases = parse_apt_release_map(done.stdout.decode("utf-8", "replace"))
    args = sorted({name if arch in (native, "all") else f"{name}:{arch}"
                   for (name, arch), inst in snap.items() if inst.state == "installed"})
    entries: list[_PolicyEntry] = []
    for i in range(0, len(args), _APT_CHUNK):
        left = deadline - time.monotonic()
        if left <= 0:
            return [], "timed out listing pending updates"
        done = _command.run([*base, *args[i:i + _APT_CHUNK]], env=env, timeout=left,
                            max_stdout=root.limits.max_stdout)
        if not done.ok:
            return [], done.error or f"apt-cache policy exited with {done.returncode}: {done.tail[-500:]}"
        entries += parse_apt_policy_packages(done.stdout.decode("utf-8", "replace"), native)
    return _apt_updates_from_policy(entries, releases, snap, _reboot_flag_packages(root)), ""


# --- dnf: pending updates ----------------------------------------------------------------


def _dnf_pending(root: PackageRoot, deadline: float) -> tuple[list[Update], str]:
    env = _env(root)
    base = ["dnf", *_dnf_options(root), "-q", "-C"]
    done = _command.run([*base, "check-update"], env=env, timeout=max(1.0, deadline - time.monotonic()),
                        max_stdout=root.limits.max_stdout)
    if done.error or done.returncode not in (0, 100):
        return [], done.error or f"dnf check-update exited with status {done.returncode}: {done.tail[-500:]}"
    rows = parse_dnf_check_update(done.stdout.decode("utf-8", "replace"))
    adv = _command.run([*base, "updateinfo", "list", "--updates", "--security"], env=env,
                       timeout=max(1.0, deadline - time.monotonic()), max_stdout=root.limits.max_stdout)
    security = dnf_security_tokens(adv.stdout.decode("utf-8", "replace")) if adv.ok else set()
    try:
        snap = _snapshot(root)
    except OSError as exc:
        return [], f"cannot read the rpm database: {exc}"
    reboot_pkgs = _reboot_flag_packages(root)
    updates = []
    for name, arch, version, repo in rows:
        plain = version.split(":", 1)[1] if ":" in version else version
        sec = f"{name}-{plain}.{arch}" in security
        installed = snap.get((name, arch))
        updates.append(Update(manager="dnf", name=name, arch=arch,
                              installed=installed.version if installed else "",
                              candidate=version, security=sec, security_candidate=version if sec else "",
                              origin=repo[:200],
                              reboot_required=_needs_reboot_pkg("dnf", name) or name in reboot_pkgs))
    return sorted(updates, key=lambda u: (u.name, u.arch)), ""


def pending_updates(root: PackageRoot) -> list[Update]:
    """Pending updates of the installed packages, offline (the lists and metadata already downloaded).

    Sorted by (name, arch). Returns ``[]`` when the package manager cannot
    answer; use :func:`pending_updates_checked` to see why.
    """
    return pending_updates_checked(root)[0]


def pending_updates_checked(root: PackageRoot) -> tuple[list[Update], str]:
    """(updates, error): like :func:`pending_updates`, with the reason when the query failed ("" if not)."""
    deadline = time.monotonic() + root.limits.query_timeout_s
    return _apt_pending(root, deadline) if root.manager == "apt" else _dnf_pending(root, deadline)


def refresh(root: PackageRoot) -> RefreshResult:
    """Download fresh package lists (``apt-get update`` / ``dnf makecache``): the only networked step."""
    if root.manager == "apt":
        argv = ["apt-get", *_apt_options(root), "-o", f"DPkg::Lock::Timeout={root.limits.lock_timeout_s}",
                "-q", "update"]
    else:
        argv = ["dnf", *_dnf_options(root), "-q", "makecache"]
    done = _command.run(argv, env=_env(root), timeout=root.limits.refresh_timeout_s, merge_stderr=True,
                        max_tail=root.limits.max_output_tail)
    errors = [line for line in done.tail.splitlines() if line.startswith(("E:", "Err:", "Error:", "W:"))]
    ok = done.ok and not any(e.startswith(("E:", "Err:", "Error:")) for e in errors)
    return RefreshResult(ok=ok, error=done.error or "\n".join(errors)[:2000], exit_code=done.returncode,
                         output_tail=done.tail, duration_s=done.duration_s)


# --- running an operation ---------------------------------------------------------------------


_DPKG_ERROR = re.compile(r"^dpkg: error processing (?:package|archive) (\S+)")
_DPKG_DEPENDENCY = re.compile(r"^dpkg: dependency problems prevent (?:configuration|processing) of (\S+?):?$")
# rpm/dnf: "warning: %post(foo-1.0-1.noarch) scriptlet failed, exit status 1" and
# "Error in POSTIN scriptlet in rpm package foo".
_RPM_SCRIPTLET_NEVRA = re.compile(r"^warning: %\w+\((\S+)\) scriptlet failed")
_RPM_SCRIPTLET_NAME = re.compile(r"^Error in \S+ scriptlet in rpm package (\S+)")
_RPM_PROGRESS = re.compile(r"^\s+(?:Running scriptlet|Installing|Upgrading|Downgrading|Reinstalling|Erasing)"
                           r"\s*: (\S+)-[^-\s]+-[^-\s]+\s")


# dpkg's progress lines name the package the following output (its maintainer scripts' among it) is about.
_DPKG_PROGRESS = re.compile(
    r"^(?:Setting up|Unpacking|Removing|Purging configuration files for|Processing triggers for)"
    r" ([a-z0-9][a-z0-9+.\-]*)(?::\S+)? |^Preparing to unpack \S*/([a-z0-9][a-z0-9+.\-]*)_")


class _ErrorCollector:
    """Picks the error blocks of a package manager's output as it streams: per package, and general.

    A package's error text is what dpkg printed about it since its last
    progress line ("Setting up foo (1.1) ...", the maintainer script's own
    output), the "dpkg: error processing package foo" line and its indented
    continuation, bounded.
    """

    def __init__(self, limits: PatchLimits) -> None:
        self.limits = limits
        self.by_package: dict[str, str] = {}
        self.general: list[str] = []
        self._subject = ""
        self._context: deque[str] = deque(maxlen=12)
        self._current: str | None = None
        self._general_open = False

    def _add(self, pkg: str, text: str) -> None:
        have = self.by_package.get(pkg, "")
        if text in have or len(have) >= self.limits.max_error_chars:
            return
        self.by_package[pkg] = (have + ("\n" if have else "") + text)[: self.limits.max_error_chars]

    def __call__(self, line: str) -> None:
        if self._current is not None and line.startswith((" ", "\t")):
            self._add(self._current, line.strip())
            return
        self._current = None
        if self._general_open and line.startswith((" ", "\t")) and line.strip():
            # dnf: "Error:" then the problem on indented lines.
            last = self.general[-1]
            if len(last) < self.limits.max_error_chars:
                self.general[-1] = (last.rstrip() + " " + line.strip())[: self.limits.max_error_chars]
            return
        self._general_open = False
        if m := _DPKG_PROGRESS.match(line):
            self._subject = m.group(1) or m.group(2) or ""
            self._context.clear()
        elif m := _RPM_PROGRESS.match(line):
            self._subject = m.group(1)
            self._context.clear()
            return
        m = _DPKG_ERROR.match(line) or _DPKG_DEPENDENCY.match(line)
        if m:
            target = m.group(1)
            pkg = os.path.basename(target).split("_", 1)[0] if target.endswith(".deb") else target
            pkg = pkg.split(":", 1)[0]
            context = list(self._context) if self._subject == pkg else []
            self._add(pkg, "\n".join([*context, line]))
            self._current = pkg
            self._context.clear()
            self._subject = ""
            return
        if m2 := _RPM_SCRIPTLET_NEVRA.match(line):
            pkg = m2.group(1).rsplit("-", 2)[0]
            context = [c for c in self._context if c.strip()] if self._subject == pkg else []
            self._add(pkg, "\n".join([*context, line.strip()]))
        elif m3 := _RPM_SCRIPTLET_NAME.match(line):
            self._add(m3.group(1), line.strip())
        elif line.startswith(("E: ", "Error: ", "Error:", "error: ")) and \
                len(self.general) < self.limits.max_error_lines:
            self.general.append(line[: self.limits.max_error_chars])
            self._general_open = line.startswith("Error:")
        self._context.append(line[:500])


@dataclass
class _Run:
    """Accumulates the commands of one operation."""

    root: PackageRoot
    deadline: float
    errors: _ErrorCollector
    tail: str = ""
    truncated: bool = False
    exit_code: int | None = None
    timed_out: bool = False
    failure: str = ""

    def __call__(self, argv: Sequence[str]) -> _command.Completed:
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.timed_out = True
            self.failure = self.failure or "operation timed out"
            return _command.Completed(tuple(argv), None, b"", "", False, timed_out=True,
                                      error="operation timed out")
        done = _command.run(argv, env=_env(self.root), timeout=left, merge_stderr=True,
                            max_tail=self.root.limits.max_output_tail, on_line=self.errors)
        self.tail = (self.tail + "\n" + done.tail)[-self.root.limits.max_output_tail:] if self.tail \
            else done.tail
        self.truncated = self.truncated or done.tail_truncated
        self.exit_code = done.returncode
        self.timed_out = self.timed_out or done.timed_out
        if done.error:
            self.failure = self.failure or done.error
        return done


def _apt_get(root: PackageRoot, *args: str) -> list[str]:
    return ["apt-get", *_apt_options(root), "-o", f"DPkg::Lock::Timeout={root.limits.lock_timeout_s}",
            "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold",
            "-y", "-q", *args]


def _spec(root: PackageRoot, name: str, version: str | None, native: str | None = None,
          arch: str | None = None) -> str:
    if root.manager == "apt":
        qualified = name if not arch or arch in ("all", native) or ":" in name else f"{name}:{arch}"
        return f"{qualified}={version}" if version else qualified
    if version:
        return f"{name}-{version}" if not arch else f"{name}-{version}.{arch}"
    return name


def _base_name(spec_name: str) -> str:
    return spec_name.split(":", 1)[0]


def _diff(root: PackageRoot, before: _Snapshot, after: _Snapshot, wanted: Mapping[str, str | None],
          operation: Operation, errors: _ErrorCollector, general_error: str) -> list[PackageChange]:
    """Per-package changes between two snapshots, plus an entry for each requested package."""
    changes: dict[tuple[str, str], PackageChange] = {}
    cmp = compare_deb_versions if root.manager == "apt" else None
    def present(x: _Installed | None) -> bool:
        return x is not None and x.state != "config-files"

    for key in sorted(set(before) | set(after)):
        b, a = before.get(key), after.get(key)
        if b == a:
            continue
        name, arch = key
        if present(b) and not present(a):
            action: Action = "removed"
        elif present(a) and not present(b):
            action = "installed"
        elif a is None or b is None or a.version == b.version:
            action = "unchanged"
        elif cmp is not None:
            action = "upgraded" if cmp(a.version, b.version) > 0 else "downgraded"
        else:
            action = "upgraded"
        changes[key] = PackageChange(name=name, arch=arch, before=b.version if b else None,
                                     after=a.version if a else None, action=action,
                                     state=a.state if a else "not-installed")
    for spec_name, want_version in wanted.items():
        name = _base_name(spec_name)
        keys = [k for k in set(before) | set(after) if k[0] == name]
        key = sorted(keys)[0] if keys else (name, "")
        b, a = before.get(key), after.get(key)
        state = a.state if a else "not-installed"
        if operation == "remove":
            ok = not present(a)
        else:
            ok = a is not None and a.state == "installed" and (not want_version or a.version == want_version)
        error = errors.by_package.get(name, "")
        # dpkg: a package that ends installed at the wanted version succeeded, whatever was printed on the
        # way (a recovery may have configured it). rpm: a failed scriptlet leaves the package installed
        # but its setup undone, so it is a failure.
        if ok and not (root.manager == "dnf" and error):
            if key not in changes:
                changes[key] = PackageChange(name=name, arch=key[1], before=b.version if b else None,
                                             after=a.version if a else None, action="unchanged", state=state,
                                             wanted=want_version or "")
            else:
                changes[key] = msgspec.structs.replace(changes[key], wanted=want_version or "")
            continue
        if not error:
            error = general_error or ("package not installed" if a is None and operation != "remove"
                                      else f"package is {state} at {a.version if a else 'none'}")
        changes[key] = PackageChange(name=name, arch=key[1], before=b.version if b else None,
                                     after=a.version if a else None, action="failed", state=state,
                                     wanted=want_version or "", error=error[: root.limits.max_error_chars])
    return [changes[k] for k in sorted(changes)]


def _finish(root: PackageRoot, operation: Operation, run: _Run, before: _Snapshot,
            wanted: Mapping[str, str | None], started: float, pre_failed: Sequence[PackageChange] = (),
            error: str = "") -> PatchResult:
    try:
        after = _snapshot(root)
    except OSError as exc:
        after = before
        error = error or f"cannot read the package database afterwards: {exc}"
    general = "\n".join(run.errors.general)[: root.limits.max_error_chars]
    failure = error or run.failure
    if not failure and run.exit_code not in (0, None):
        failure = general or f"package manager exited with status {run.exit_code}"
    changes = _diff(root, before, after, wanted, operation, run.errors, failure or general)
    changes = sorted([*changes, *pre_failed], key=lambda c: (c.name, c.arch))
    broken = sorted(f"{n}:{i.state}" for (n, _), i in after.items() if i.state in _DPKG_TRANSIENT)
    changed = [c.name for c in changes if c.action in ("upgraded", "downgraded", "installed")]
    reboot_pkgs = [n for n in changed if _needs_reboot_pkg(root.manager, n)]
    if reboot_pkgs:
        _mark_reboot(root, reboot_pkgs)
    failed = [f"{c.name} ({c.state})" for c in changes if c.action == "failed"]
    ok = not failure and not broken and not failed
    summary = [f"failed: {', '.join(failed[:20])}" if failed else "",
               f"left unconfigured: {', '.join(broken[:20])}" if broken and not failed else "", failure]
    failure = "; ".join(x for x in summary if x)
    return PatchResult(manager=root.manager, operation=operation, ok=ok, changes=changes,
                       error=failure[:2000],
                       errors=run.errors.general, exit_code=run.exit_code, timed_out=run.timed_out,
                       broken=broken, reboot_required=reboot_required(root), output_tail=run.tail,
                       output_truncated=run.truncated, started=started, finished=time.time())


def _recover_dpkg(root: PackageRoot, run: _Run) -> None:
    """After a failed apt run, configure what can be (``dpkg --configure --pending``), as an admin would."""
    if root.manager != "apt":
        return
    try:
        snap = _snapshot(root)
    except OSError:
        return
    # half-configured alone means a maintainer script failed: running it again would only repeat that.
    if any(i.state in _DPKG_TRANSIENT - {"half-configured"} for i in snap.values()):
        code, failure = run.exit_code, run.failure
        run(["dpkg", *_dpkg_root_options(root), "--force-confdef", "--force-confold", "--configure",
             "--pending"])
        run.exit_code, run.failure = code, failure


def _refused(root: PackageRoot, operation: Operation, error: str, started: float,
             changes: Sequence[PackageChange] = ()) -> PatchResult:
    return PatchResult(manager=root.manager, operation=operation, ok=False, changes=list(changes),
                       error=error, reboot_required=reboot_required(root), started=started,
                       finished=time.time())


# --- public operations --------------------------------------------------------------------------


def apply_updates(root: PackageRoot, *, only_security: bool = False,
                  packages: Sequence[str] | None = None) -> PatchResult:
    """Apply pending updates: all, only security ones, or those of the named installed ``packages``.

    Each target goes to the version :func:`pending_updates` reported (its
    ``security_candidate`` when ``only_security``), pinned on the command
    line, so what runs is exactly what was listed. Updates never remove a
    package. When the whole batch fails before anything was installed (a
    resolver conflict), each target is retried alone so that one broken
    update does not hold back the others. A named package that is not
    installed is a failure; one that is up to date is ``unchanged``.
    """
    started = time.time()
    names = [validate_name(n, root.manager) for n in (packages or ())]
    if len(names) > root.limits.max_request:
        raise PackageSpecError(f"more than {root.limits.max_request} packages in one request")
    deadline = time.monotonic() + root.limits.apply_timeout_s
    updates, err = pending_updates_checked(root)
    if err:
        return _refused(root, "upgrade", f"cannot list pending updates: {err}", started)
    try:
        before = _snapshot(root)
    except OSError as exc:
        return _refused(root, "upgrade", f"cannot read the package database: {exc}", started)
    pre_failed: list[PackageChange] = []
    by_name: dict[str, list[Update]] = {}
    for u in updates:
        by_name.setdefault(u.name, []).append(u)
    if names:
        chosen: list[Update] = []
        installed_names = {n for n, _ in before}
        for n in names:
            base = _base_name(n)
            if base not in installed_names:
                pre_failed.append(PackageChange(name=base, action="failed", error="package not installed"))
            chosen += by_name.get(base, [])
        updates = chosen
    if only_security:
        updates = [u for u in updates if u.security]
    targets = {(u.name, u.arch): (u.security_candidate if only_security else u.candidate) for u in updates}
    native = _native_arch(root) if root.manager == "apt" else None
    wanted: dict[str, str | None] = {u.name: targets[(u.name, u.arch)] for u in updates}
    for n in names:
        wanted.setdefault(_base_name(n), None)
    for c in pre_failed:
        wanted.pop(c.name, None)
    run = _Run(root, deadline, _ErrorCollector(root.limits))
    if not targets:
        return _finish(root, "upgrade", run, before, wanted, started, pre_failed)
    specs = [_spec(root, name, version, native, arch) for (name, arch), version in sorted(targets.items())]

    def attempt(batch: Sequence[str]) -> None:
        if root.manager == "apt":
            run(_apt_get(root, "--only-upgrade", "--no-remove", "install", *batch))
        else:
            run(["dnf", *_dnf_options(root), "upgrade", *(["--security"] if only_security else []), *batch])

    attempt(specs)
    if run.exit_code != 0 and not run.timed_out and len(specs) > 1 and _unchanged_since(root, before):
        # Nothing was touched: the resolver refused the batch (a conflict, a held or missing dependency).
        # Try each update alone so that one bad update does not hold back the others; each attempt's
        # error lines are attributed to its package.
        run.errors.general.clear()
        run.failure, worst = "", 0
        for (name, _), spec in zip(sorted(targets), specs, strict=True):
            mark = len(run.errors.general)
            attempt([spec])
            new = run.errors.general[mark:]
            if run.exit_code:
                worst = worst or run.exit_code
                if new and name not in run.errors.by_package:
                    run.errors.by_package[name] = "\n".join(new)[: root.limits.max_error_chars]
            if run.timed_out:
                break
        run.exit_code = worst
    if run.exit_code != 0:
        _recover_dpkg(root, run)
    return _finish(root, "upgrade", run, before, wanted, started, pre_failed)


def _unchanged_since(root: PackageRoot, before: _Snapshot) -> bool:
    try:
        return _snapshot(root) == before
    except OSError:
        return False


def install(root: PackageRoot, name: str, version: str | None = None, *,
            allow_downgrade: bool = False) -> PatchResult:
    """Install ``name`` (at exactly ``version`` when given) from the root's configured sources.

    Dependencies come too; recommended packages do not. Nothing is removed.
    Installing an older version than the installed one fails unless
    ``allow_downgrade``. A package already at the wanted version is
    ``unchanged`` and the result ok.
    """
    started = time.time()
    validate_name(name, root.manager)
    if version is not None:
        validate_version(version, root.manager)
    try:
        before = _snapshot(root)
    except OSError as exc:
        return _refused(root, "install", f"cannot read the package database: {exc}", started)
    run = _Run(root, time.monotonic() + root.limits.apply_timeout_s, _ErrorCollector(root.limits))
    spec = _spec(root, name, version)
    if root.manager == "apt":
        extra = ["--allow-downgrades"] if allow_downgrade else []
        run(_apt_get(root, "--no-remove", "--no-install-recommends", *extra, "install", spec))
        if run.exit_code != 0:
            _recover_dpkg(root, run)
    else:
        run(["dnf", *_dnf_options(root), "install", spec])
        if run.exit_code != 0 and allow_downgrade and version:
            run(["dnf", *_dnf_options(root), "downgrade", spec])
    return _finish(root, "install", run, before, {_base_name(name): version}, started)


def remove(root: PackageRoot, name: str, *, purge: bool = False, cascade: bool = False) -> PatchResult:
    """Remove ``name`` (``purge``: its configuration files too).

    Refused, with nothing run, when other installed packages depend on it
    and would be removed with it, unless ``cascade``: a job that names one
    package removes that package. Essential packages stay protected by apt.
    Removing a package that is not installed is ok and ``unchanged``.
    """
    started = time.time()
    validate_name(name, root.manager)
    try:
        before = _snapshot(root)
    except OSError as exc:
        return _refused(root, "remove", f"cannot read the package database: {exc}", started)
    base = _base_name(name)
    run = _Run(root, time.monotonic() + root.limits.apply_timeout_s, _ErrorCollector(root.limits))
    if not any(n == base for n, _ in before):
        return _finish(root, "remove", run, before, {base: None}, started)
    if not cascade:
        others = _removal_collateral(root, name, run)
        if others is None:
            return _finish(root, "remove", run, before, {base: None}, started,
                           error=run.failure or "cannot tell what the removal would take with it")
        if others:
            msg = "would also remove: " + ", ".join(others[:50]) + (" ..." if len(others) > 50 else "")
            return _refused(root, "remove", msg, started, [PackageChange(
                name=base, before=next((i.version for (n, _), i in before.items() if n == base), None),
                after=next((i.version for (n, _), i in before.items() if n == base), None), action="failed",
                state="installed", error=msg)])
    if root.manager == "apt":
        run(_apt_get(root, "--no-auto-remove", "purge" if purge else "remove", name))
        if run.exit_code != 0:
            _recover_dpkg(root, run)
    else:
        run(["dnf", *_dnf_options(root), "remove", name])
    return _finish(root, "remove", run, before, {base: None}, started)


_SIM_REMOVE = re.compile(r"^Remv (\S+)")


def _removal_collateral(root: PackageRoot, name: str, run: _Run) -> list[str] | None:
    """Other packages a removal of ``name`` would take (sorted), or None if that cannot be told."""
    base = _base_name(name)
    if root.manager == "apt":
        argv = ["apt-get", *_apt_options(root), "-o", "Debug::NoLocking=1", "-s", "-q", "--no-auto-remove",
                "remove", name]
        done = _command.run(argv, env=_env(root), timeout=max(1.0, run.deadline - time.monotonic()),
                            max_stdout=root.limits.max_stdout)
        if not done.ok:
            run.failure = done.error or (done.tail.strip().splitlines() or ["apt-get -s remove failed"])[-1]
            run.exit_code = done.returncode
            return None
        removed = {m.group(1).split(":", 1)[0] for line in done.stdout.decode("utf-8", "replace").splitlines()
                   if (m := _SIM_REMOVE.match(line))}
        return sorted(removed - {base})
    done = _command.run(["rpm", *_rpm_root_options(root), "-e", "--test", name], env=_env(root),
                        timeout=max(1.0, run.deadline - time.monotonic()), max_stdout=root.limits.max_stdout)
    if done.ok:
        return []
    needed = re.findall(r"is needed by \(installed\) (\S+)", done.tail)
    return sorted(set(needed)) if needed else None


def installed_version(root: PackageRoot, name: str) -> str | None:
    """The installed version of ``name`` (first architecture found), or None."""
    validate_name(name, root.manager)
    base = _base_name(name)
    for (n, _), inst in sorted(_snapshot(root).items()):
        if n == base and inst.state not in ("config-files",):
            return inst.version
    return None


def state_of(root: PackageRoot, name: str) -> str:
    """The package's dpkg/rpm state word ("installed", "half-configured", ..., "not-installed")."""
    validate_name(name, root.manager)
    base = _base_name(name)
    for (n, _), inst in sorted(_snapshot(root).items()):
        if n == base:
            return inst.state
    return "not-installed"


__all__ = [
    "DEFAULT_LIMITS", "PackageChange", "PackageRoot", "PackageSpecError", "PatchLimits", "PatchResult",
    "RefreshResult", "Update", "apply_updates", "compare_deb_versions", "install", "installed_version",
    "is_security_source", "parse_apt_policy_packages", "parse_apt_release_map", "pending_updates",
    "pending_updates_checked", "reboot_required", "refresh", "remove", "state_of", "validate_name",
    "validate_version",
]
