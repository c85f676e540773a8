"""apt: pending updates from ``apt-cache policy`` and the release files, with the security flag."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from .. import _command
from ..inventory.apt_policy import (
    PolicyEntry,
    apt_security_and_origin,
    is_pending,
    parse_apt_policy_packages,
    parse_apt_release_map,
)
from . import roots
from .reboot import _needs_reboot_pkg, _reboot_flag_packages
from .results import Update
from .roots import PackageRoot, _apt_options
from .state import _native_arch, _Snapshot, _snapshot

# --- apt: pending updates ----------------------------------------------------------------

_APT_CHUNK = 4000


def _apt_updates_from_policy(entries: Sequence[PolicyEntry], releases: Mapping[str, Mapping[str, str]],
                             snapshot: _Snapshot, reboot_pkgs: set[str]) -> list[Update]:
    updates: list[Update] = []
    for e in entries:
        if not is_pending(e):
            continue
        real_arch = e.arch
        if (e.name, e.arch) not in snapshot and (e.name, "all") in snapshot:
            real_arch = "all"
        best_security, origin = apt_security_and_origin(e, releases)
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
    entries: list[PolicyEntry] = []
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
