"""dnf: pending updates from ``dnf check-update`` and the security advisories."""

from __future__ import annotations

import time

from .. import _command
from ..inventory.packages import dnf_security_tokens, parse_dnf_check_update
from . import roots
from .reboot import _needs_reboot_pkg, _reboot_flag_packages
from .results import Update
from .roots import PackageRoot, _dnf_options
from .state import _snapshot

# --- dnf: pending updates ----------------------------------------------------------------


def _dnf_pending(root: PackageRoot, deadline: float) -> tuple[list[Update], str]:
    env = roots._env(root)
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
