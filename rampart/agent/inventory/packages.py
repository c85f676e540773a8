"""Installed packages (dpkg, rpm), pending updates (apt, dnf) and whether a reboot is pending.

* dpkg: /var/lib/dpkg/status is parsed directly (no subprocess).
* rpm: ``rpm -qa --qf`` with a tab-separated format.
* apt updates: ``apt-cache policy`` over the installed packages, offline (it
  reads the lists apt already downloaded; never the network). A package is
  pending when its candidate is newer than the installed version; it is a
  security update when a security archive (a ``*-security`` suite or
  codename, a "security" label, a ``security.*`` host) offers a version newer
  than the installed one, and that version is reported as
  ``security_candidate`` even when the candidate is newer still (the rules of
  the patching engine, :mod:`rampart.agent.patching.apt`). This is roughly four times
  cheaper than simulating ``apt-get upgrade`` and also lists upgrades that
  ``upgrade`` would hold back because they need new packages.
* dnf/yum updates: ``dnf -q -C check-update`` (cache only, no network) and
  ``updateinfo list --security`` for the security flag.

Pending updates only change when the package database, the downloaded lists
or the apt/dnf configuration change, so :class:`UpdatesCache` keeps the last
result with a fingerprint (paths, sizes, mtimes) and skips the command when
nothing moved. Every parser skips lines it does not understand.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from rampart.wire.inventory import (
    DEFAULT_LIMITS,
    InventoryLimits,
    Package,
    Patching,
    Update,
    canonical,
    package_key,
    update_key,
)

from ._util import CommandError, clip, run, which
from .apt_policy import apt_security_and_origin, is_pending, parse_apt_policy_packages, parse_apt_release_map

DPKG_STATUS = "/var/lib/dpkg/status"
#: dpkg states in which package files are (at least partly) on disk.
_DPKG_PRESENT = frozenset({"installed", "half-configured", "unpacked", "half-installed", "triggers-awaited",
                           "triggers-pending"})
_PKG_NAME = re.compile(r"^[a-z0-9][a-z0-9+.\-]{0,254}$")
_ARCH = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,62}$")
_APT_CHUNK = 8000

APT_STATE_PATHS = ("/var/lib/dpkg/status", "/var/lib/apt/lists", "/var/lib/apt/extended_states",
                   "/etc/apt/sources.list", "/etc/apt/sources.list.d", "/etc/apt/preferences",
                   "/etc/apt/preferences.d", "/etc/apt/apt.conf.d")
DNF_STATE_PATHS = ("/var/lib/rpm", "/usr/lib/sysimage/rpm", "/var/cache/dnf", "/var/cache/yum",
                   "/etc/yum.repos.d", "/etc/dnf")


# --- dpkg ----------------------------------------------------------------------------


_DPKG_FIELDS = frozenset({"Package", "Version", "Architecture", "Status", "Source"})


def _dpkg_package(fields: dict[str, str]) -> Package | None:
    name, version, arch = fields.get("Package", ""), fields.get("Version", ""), fields.get("Architecture", "")
    state = fields.get("Status", "").split()
    if not (_PKG_NAME.match(name) and version and _ARCH.match(arch) and len(state) == 3):
        return None
    if state[2] not in _DPKG_PRESENT:
        return None
    source = fields.get("Source", "").split(" ", 1)[0]
    return Package(manager="dpkg", name=name, arch=arch, version=clip(version),
                   source=clip(source) if source != name else "", status=state[2])


def parse_dpkg_status(text: str, limit: int = DEFAULT_LIMITS.max_packages) -> tuple[list[Package], bool]:
    """Packages present per a dpkg status file, canonical order; the flag says ``limit`` cut the list.

    Stanzas without a valid name, version or architecture, or in a state with
    no files on disk ("config-files", "not-installed"), are skipped.
    """
    found: list[Package] = []
    fields: dict[str, str] = {}
    for line in [*text.split("\n"), ""]:
        if line.strip():
            if line[0] not in " \t":  # continuation lines of multi-line fields are skipped
                key, sep, value = line.partition(":")
                if sep and key in _DPKG_FIELDS:
                    fields[key] = value.strip()
            continue
        if not fields:
            continue
        pkg = _dpkg_package(fields)
        fields = {}
        if pkg is not None:
            found.append(pkg)
    packages = canonical(found, package_key)
    return packages[:limit], len(packages) > limit


def collect_dpkg(path: str = DPKG_STATUS, limits: InventoryLimits = DEFAULT_LIMITS,
                 ) -> tuple[list[Package], bool]:
    """Packages in the dpkg status file at ``path``; raises OSError/ValueError when it cannot be read."""
    with open(path, "rb") as f:
        data = f.read(limits.max_file_bytes + 1)
    if len(data) > limits.max_file_bytes:
        raise ValueError(f"{path} is larger than {limits.max_file_bytes} bytes")
    return parse_dpkg_status(data.decode("utf-8", "replace"), limits.max_packages)


# --- rpm -----------------------------------------------------------------------------

RPM_QUERY_FORMAT = "%{NAME}\\t%{EPOCH}\\t%{VERSION}\\t%{RELEASE}\\t%{ARCH}\\t%{SOURCERPM}\\n"


def rpm_version(epoch: str, version: str, release: str) -> str:
    """EVR text as rpm prints it: ``epoch:version-release``, epoch omitted when none or 0."""
    evr = f"{version}-{release}" if release and release != "(none)" else version
    return evr if epoch in ("", "(none)", "0") else f"{epoch}:{evr}"


def parse_rpm_qa(text: str, limit: int = DEFAULT_LIMITS.max_packages) -> tuple[list[Package], bool]:
    """Packages from ``rpm -qa --qf RPM_QUERY_FORMAT`` output; gpg-pubkey pseudo-packages skipped."""
    found = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) != 6:
            continue
        name, epoch, version, release, arch, srpm = parts
        if not name or not version or name == "gpg-pubkey" or len(name) > 256:
            continue
        source = srpm.rsplit("-", 2)[0] if srpm.endswith(".rpm") and srpm.count("-") >= 2 else ""
        found.append(Package(manager="rpm", name=name, arch=clip(arch if arch != "(none)" else "noarch"),
                             version=clip(rpm_version(epoch, version, release)),
                             source=clip(source) if source != name else ""))
    packages = canonical(found, package_key)
    return packages[:limit], len(packages) > limit


def collect_rpm(limits: InventoryLimits = DEFAULT_LIMITS) -> tuple[list[Package], bool]:
    out = run(["rpm", "-qa", "--qf", RPM_QUERY_FORMAT], timeout=limits.command_timeout_s,
              max_output=limits.max_command_output)
    return parse_rpm_qa(out, limits.max_packages)


# --- pending updates -----------------------------------------------------------------

def parse_apt_policy(text: str, native_arch: str,
                     releases: Mapping[str, Mapping[str, str]] | None = None) -> list[Update]:
    """Updates from ``apt-cache policy PKG...``: packages whose candidate is newer than the installed
    version, with the security fix found in the version table (the patching engine's own rules)."""
    out: list[Update] = []
    for e in parse_apt_policy_packages(text, native_arch):
        if not is_pending(e):
            continue
        fix, origin = apt_security_and_origin(e, releases or {})
        out.append(Update(manager="apt", name=clip(e.name), arch=clip(e.arch), installed=clip(e.installed),
                          candidate=clip(e.candidate), security=bool(fix), origin=clip(origin),
                          security_candidate=clip(fix)))
    return out


def native_dpkg_arch(packages: Sequence[Package]) -> str:
    """The host's dpkg architecture: dpkg's own package is always native."""
    for p in packages:
        if p.manager == "dpkg" and p.name == "dpkg" and p.arch != "all":
            return p.arch
    archs = [p.arch for p in packages if p.arch != "all"]
    return max(set(archs), key=archs.count) if archs else os.uname().machine


def collect_apt_updates(packages: Sequence[Package], limits: InventoryLimits = DEFAULT_LIMITS,
                        ) -> list[Update]:
    """Pending apt updates for the installed dpkg ``packages`` (offline)."""
    native = native_dpkg_arch(packages)
    wanted: dict[tuple[str, str], Package] = {}
    args: list[str] = []
    for p in packages:
        if p.manager != "dpkg" or p.status != "installed" or not _PKG_NAME.match(p.name):
            continue
        arch = native if p.arch == "all" else p.arch
        wanted[(p.name, arch)] = p
        args.append(p.name if arch == native else f"{p.name}:{p.arch}")
    found: list[Update] = []
    releases = parse_apt_release_map(run(["apt-cache", "-o", "Debug::NoLocking=1", "policy"],
                                         timeout=limits.command_timeout_s,
                                         max_output=limits.max_command_output))
    for i in range(0, len(args), _APT_CHUNK):
        text = run(["apt-cache", "-o", "Debug::NoLocking=1", "policy", *args[i:i + _APT_CHUNK]],
                   timeout=limits.command_timeout_s, max_output=limits.max_command_output)
        found.extend(parse_apt_policy(text, native, releases))
    updates = []
    for u in found:
        pkg = wanted.get((u.name, u.arch))
        if pkg is not None:  # report with the installed package's own architecture ("all" stays "all")
            updates.append(Update(manager="apt", name=u.name, arch=pkg.arch, installed=u.installed,
                                  candidate=u.candidate, security=u.security, origin=u.origin,
                                  security_candidate=u.security_candidate))
    return canonical(updates, update_key)[: limits.max_updates]


def parse_dnf_check_update(text: str) -> list[tuple[str, str, str, str]]:
    """(name, arch, version, repo) from ``dnf check-update`` output; stops at "Obsoleting Packages"."""
    out = []
    for line in text.splitlines():
        if line.strip().lower().startswith("obsoleting"):
            break
        parts = line.split()
        if len(parts) != 3 or "." not in parts[0] or line[0].isspace():
            continue
        name, _, arch = parts[0].rpartition(".")
        if name and arch and parts[1][0].isdigit():
            out.append((name, arch, parts[1], parts[2]))
    return out


def dnf_security_tokens(text: str) -> set[str]:
    """Every whitespace-separated token of ``updateinfo list --security`` (NEVRAs among them)."""
    return set(text.split())


def collect_dnf_updates(packages: Sequence[Package], limits: InventoryLimits = DEFAULT_LIMITS,
                        ) -> list[Update]:
    """Pending dnf (or yum) updates from the metadata cache only (``-C``: never the network)."""
    tool = "dnf" if which("dnf") else "yum"
    timeout, cap = limits.command_timeout_s, limits.max_command_output
    text = run([tool, "-q", "-C", "check-update"], ok_codes=(0, 100), timeout=timeout, max_output=cap)
    try:
        argv = [tool, "-q", "-C", "updateinfo", "list", "--security"]
        advisories = run(argv, timeout=timeout, max_output=cap)
        security = dnf_security_tokens(advisories)
    except CommandError:
        security = set()
    return dnf_updates(parse_dnf_check_update(text), packages, security, limits)


def dnf_updates(rows: Iterable[tuple[str, str, str, str]], packages: Sequence[Package], security: set[str],
                limits: InventoryLimits = DEFAULT_LIMITS) -> list[Update]:
    """Join check-update rows with the installed rpm versions and the security advisory NEVRAs."""
    installed = {(p.name, p.arch): p.version for p in packages if p.manager == "rpm"}
    updates = []
    for name, arch, version, repo in rows:
        plain = version.split(":", 1)[1] if ":" in version else version
        # dnf lists only the newest version, so the security fix is known only when it is that one.
        secure = f"{name}-{plain}.{arch}" in security
        updates.append(Update(manager="dnf", name=clip(name), arch=clip(arch),
                              installed=clip(installed.get((name, arch), "")), candidate=clip(version),
                              security=secure, origin=clip(repo),
                              security_candidate=clip(version) if secure else ""))
    return canonical(updates, update_key)[: limits.max_updates]


def collect_patching(limits: InventoryLimits = DEFAULT_LIMITS, run_dir: str = "/run") -> Patching:
    """Which update manager the host uses and whether it waits for a reboot."""
    manager: Literal["apt", "dnf", "none"] = (
        "apt" if which("apt-cache") else "dnf" if (which("dnf") or which("yum")) else "none")
    required = os.path.exists(f"{run_dir}/reboot-required")
    pkgs: list[str] = []
    try:
        with open(f"{run_dir}/reboot-required.pkgs", "rb") as f:
            text = f.read(1 << 20).decode("utf-8", "replace")
        pkgs = sorted({clip(x.strip()) for x in text.splitlines() if x.strip()})[:1024]
    except OSError:
        pass
    if not required and manager == "dnf" and which("needs-restarting"):
        try:
            run(["needs-restarting", "-r"], timeout=limits.command_timeout_s, max_output=1 << 20)
        except CommandError as exc:
            required = "status 1" in str(exc)
    return Patching(manager=manager, reboot_required=required, reboot_packages=pkgs)


# --- caching -------------------------------------------------------------------------


def state_fingerprint(paths: Iterable[str], max_entries: int = 4096) -> tuple[tuple[str, int, int], ...]:
    """(path, mtime_ns, size) of each path and of each entry of a directory path (one level)."""
    out: list[tuple[str, int, int]] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        out.append((path, st.st_mtime_ns, st.st_size))
        if os.path.isdir(path):
            try:
                with os.scandir(path) as it:
                    for i, entry in enumerate(it):
                        if i >= max_entries:
                            break
                        try:
                            est = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        out.append((entry.path, est.st_mtime_ns, est.st_size))
            except OSError:
                continue
    return tuple(sorted(out))


class UpdatesCache:
    """The last pending-updates list and the package-state fingerprint it was computed for.

    Reuse is only valid while the fingerprint is unchanged: any package
    install, list download or configuration change invalidates it.
    """

    def __init__(self) -> None:
        self._key: tuple[object, ...] | None = None
        self._value: list[Update] = []

    def get(self, key: tuple[object, ...]) -> list[Update] | None:
        return list(self._value) if self._key == key else None

    def put(self, key: tuple[object, ...], value: list[Update]) -> None:
        self._key, self._value = key, list(value)


def collect_updates(manager: str, packages: Sequence[Package], limits: InventoryLimits = DEFAULT_LIMITS,
                    cache: UpdatesCache | None = None) -> list[Update]:
    """Pending updates for ``manager`` ("apt" | "dnf"), reusing ``cache`` while package state is unchanged."""
    if manager not in ("apt", "dnf"):
        return []
    paths = APT_STATE_PATHS if manager == "apt" else DNF_STATE_PATHS
    key = (manager, state_fingerprint(paths))
    if cache is not None and (hit := cache.get(key)) is not None:
        return hit
    collect = collect_apt_updates if manager == "apt" else collect_dnf_updates
    updates = collect(packages, limits)
    if cache is not None:
        cache.put(key, updates)
    return updates
