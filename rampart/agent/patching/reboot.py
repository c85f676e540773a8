"""Whether a package root needs a reboot: packages that need one, the reboot-required flag."""

from __future__ import annotations

import re
from collections.abc import Iterable

from .. import _command
from . import roots
from .limits import Manager
from .roots import PackageRoot

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
        done = _command.run(["dnf", "-q", "needs-restarting", "-r"], env=roots._env(root),
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
