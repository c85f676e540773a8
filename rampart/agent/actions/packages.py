"""The ``package`` and ``os-update`` handlers (root, outside Landlock) on :mod:`rampart.agent.patching`.

After either changed the installed packages, the agent reports a fresh inventory (at most
30 s later, the telemetry's minimum gap) so `rampart patch report` stops listing an applied
update without waiting for the next periodic inventory (docs/patching.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec

from rampart import trust

from .. import patching
from .enrolment import _detect_manager
from .host import JobHost
from .policy import PolicyError
from .results import Done, Refusal, _finished, _no_declarations, _uncontained, one_line

# --- packages and updates (root, outside Landlock) -------------------------------------------------------


def _patch_limits(seconds: float) -> patching.PatchLimits:
    d = patching.DEFAULT_LIMITS
    s = max(1.0, seconds)
    return replace(d, apply_timeout_s=s, query_timeout_s=min(d.query_timeout_s, s),
                   refresh_timeout_s=min(d.refresh_timeout_s, s))


def _package_root(agent: JobHost, timeout_s: float) -> patching.PackageRoot:
    pol = agent.config.actions
    if pol.error:
        raise Refusal("not-configured", f"the device policy's package settings are invalid: {pol.error}")
    if pol.package_manager == "none":
        raise Refusal("not-configured", "package management is off on this device (--package-manager none)")
    if os.geteuid() != 0:
        raise Refusal("not-configured", "package management needs the agent to run as root")
    limits = _patch_limits(timeout_s)
    manager = None if pol.package_manager == "auto" else pol.package_manager
    try:
        if pol.package_root == "/":
            return patching.PackageRoot.system(manager, limits)  # type: ignore[arg-type]
        path = Path(pol.package_root)
        if not path.is_dir():
            raise Refusal("not-configured", f"the package root {path} does not exist")
        found = manager or _detect_manager(path)
        return patching.PackageRoot.scratch(path, found, limits)  # type: ignore[arg-type]
    except (patching.PackageSpecError, PolicyError) as exc:
        raise Refusal("not-configured", str(exc)) from None


def _with_budget(root: patching.PackageRoot, deadline: float) -> patching.PackageRoot:
    return replace(root, limits=_patch_limits(deadline - time.monotonic()))


def _package_args(args: Sequence[str], manager: str) -> tuple[str, str, str | None]:
    if len(args) in (2, 3) and args[0] == "install":
        name, version = args[1], (args[2] if len(args) == 3 else None)
    elif len(args) == 2 and args[0] == "remove":
        name, version = args[1], None
    else:
        raise Refusal("bad-arguments", "a package job's arguments are [install, NAME], "
                                       "[install, NAME, VERSION] or [remove, NAME]")
    try:
        patching.validate_name(name, manager)  # type: ignore[arg-type]
        if version is not None:
            patching.validate_version(version, manager)  # type: ignore[arg-type]
    except patching.PackageSpecError as exc:
        raise Refusal("bad-arguments", str(exc)) from None
    return args[0], name, version


def _patch_doc(result: patching.PatchResult) -> dict[str, Any]:
    doc: dict[str, Any] = msgspec.to_builtins(result)
    doc["changes"].sort(key=lambda c: (c.get("action") != "failed", c.get("name", "")))
    return doc


def _patch_error(result: patching.PatchResult) -> str:
    if result.ok:
        return ""
    failed = [f"{c.name}: {one_line(c.error, 300)}" for c in result.failures]
    return "; ".join(filter(None, [result.error, *failed])) or "the package manager failed"


def _inventory_after_change(agent: JobHost, changed: bool) -> None:
    """Ask telemetry for an inventory now when packages changed (a no-op without telemetry)."""
    trigger = agent.inventory_trigger
    if changed and trigger is not None:
        trigger()


def _package(agent: JobHost, auth: trust.Authorization, payloads: Mapping[str, bytes]) -> Done:
    job = auth.job
    if job.declared.run_as != "root":
        raise Refusal("capability-not-granted",
                      "a package job runs maintainer scripts as root outside containment: it must declare "
                      "run_as root, which needs the 'root' capability in its grant and a device enrolled "
                      "with --allow-root")
    _no_declarations(job)
    root = _package_root(agent, job.timeout_s)
    operation, name, version = _package_args(job.action.args, root.manager)
    started = time.time()
    if operation == "install":
        result = patching.install(root, name, version)
    else:
        result = patching.remove(root, name)
    request = {"operation": operation, "name": name, "version": version}
    doc = {"schema": 1, "action": "package", "request": request, "root": str(root.path),
           "result": _patch_doc(result)}
    mine = next((c for c in result.changes if c.name == name.split(":", 1)[0]), None)
    what = f"{operation} {name}" + (f"={version}" if version else "")
    if result.ok and mine is not None:
        summary = f"{what}: {mine.action} ({mine.before or 'none'} -> {mine.after or 'none'})"
    else:
        summary = f"{what}: " + ("done" if result.ok else f"failed: {_patch_error(result)}")
    _inventory_after_change(agent, bool(result.changes))
    return _finished(ok=result.ok, doc=doc, error=_patch_error(result), summary=summary, started=started,
                     applied=_uncontained(job.timeout_s), timed_out=result.timed_out)


def _os_update(agent: JobHost, auth: trust.Authorization, payloads: Mapping[str, bytes]) -> Done:
    job = auth.job
    _no_declarations(job)
    root = _package_root(agent, job.timeout_s)
    security_only = agent.config.actions.security_only_updates
    deadline = time.monotonic() + job.timeout_s
    started = time.time()
    refreshed = patching.refresh(_with_budget(root, deadline))
    pending, pending_error = patching.pending_updates_checked(_with_budget(root, deadline))
    result = patching.apply_updates(_with_budget(root, deadline), only_security=security_only)
    security = {u.name for u in pending if u.security}
    upgraded = [c for c in result.changes if c.action in ("upgraded", "installed")]
    doc = {"schema": 1, "action": "os-update", "root": str(root.path), "security_only": security_only,
           "refresh": msgspec.to_builtins(refreshed),
           "pending": sorted(msgspec.to_builtins(pending), key=lambda u: (not u["security"], u["name"])),
           "pending_error": pending_error, "result": _patch_doc(result)}
    fixes = sum(1 for c in upgraded if c.name in security)
    summary = (f"{len(upgraded)} package(s) updated, {fixes} of them security updates; "
               f"{len(result.failures)} failed")
    if not refreshed.ok:
        summary += f"; package lists not refreshed: {one_line(refreshed.error, 200)}"
    if result.reboot_required:
        summary += "; reboot required"
    _inventory_after_change(agent, bool(result.changes))
    return _finished(ok=result.ok, doc=doc, error=_patch_error(result), summary=summary, started=started,
                     applied=_uncontained(job.timeout_s), timed_out=result.timed_out)
