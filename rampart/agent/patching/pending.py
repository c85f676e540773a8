"""The queries: pending updates (apt or dnf) and refreshing the package lists."""

from __future__ import annotations

import time

from .. import _command
from . import roots
from .apt import _apt_pending
from .dnf import _dnf_pending
from .results import RefreshResult, Update
from .roots import PackageRoot, _apt_options, _dnf_options


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
    done = _command.run(argv, env=roots._env(root), timeout=root.limits.refresh_timeout_s, merge_stderr=True,
                        max_tail=root.limits.max_output_tail)
    errors = [line for line in done.tail.splitlines() if line.startswith(("E:", "Err:", "Error:", "W:"))]
    ok = done.ok and not any(e.startswith(("E:", "Err:", "Error:")) for e in errors)
    return RefreshResult(ok=ok, error=done.error or "\n".join(errors)[:2000], exit_code=done.returncode,
                         output_tail=done.tail, duration_s=done.duration_s)
