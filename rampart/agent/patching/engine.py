"""Running an operation (apply updates, install, remove) and reporting what changed, per package."""

from __future__ import annotations

import os
import re
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec

from .. import _command
from . import roots
from .limits import Action, Operation, PackageSpecError, PatchLimits
from .pending import pending_updates_checked
from .reboot import _mark_reboot, _needs_reboot_pkg, reboot_required
from .results import PackageChange, PatchResult, Update
from .roots import PackageRoot, _apt_options, _dnf_options, _dpkg_root_options, _rpm_root_options
from .state import _DPKG_TRANSIENT, _Installed, _native_arch, _Snapshot, _snapshot
from .versions import compare_deb_versions, validate_name, validate_version

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
        done = _command.run(argv, env=roots._env(self.root), timeout=left, merge_stderr=True,
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
        done = _command.run(argv, env=roots._env(root), timeout=max(1.0, run.deadline - time.monotonic()),
                            max_stdout=root.limits.max_stdout)
        if not done.ok:
            run.failure = done.error or (done.tail.strip().splitlines() or ["apt-get -s remove failed"])[-1]
            run.exit_code = done.returncode
            return None
        removed = {m.group(1).split(":", 1)[0] for line in done.stdout.decode("utf-8", "replace").splitlines()
                   if (m := _SIM_REMOVE.match(line))}
        return sorted(removed - {base})
    done = _command.run(["rpm", *_rpm_root_options(root), "-e", "--test", name], env=roots._env(root),
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
