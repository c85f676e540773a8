"""apt: pending updates from ``apt-cache policy`` and the release files, with the security flag."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .. import _command
from . import roots
from .reboot import _needs_reboot_pkg, _reboot_flag_packages
from .results import Update
from .roots import PackageRoot, _apt_options
from .state import _native_arch, _Snapshot, _snapshot
from .versions import compare_deb_versions

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
    env = roots._env(root)
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
