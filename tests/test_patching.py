"""Patch and package management on real dpkg and apt, offline, in scratch roots (issue 6, K1, H5, T9).

Every test builds real .deb packages with dpkg-deb, serves them from a local
Debian archive through a file: URI, and lets the real apt-get and dpkg install,
upgrade and remove them in a scratch root with its own dpkg database (dpkg
--root: maintainer scripts run chrooted there). The machine's own packages
never change: an autouse fixture compares the host's dpkg database byte for
byte before and after each test.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness.aptrepo import AptRepo, build_deb, dpkg_status_bytes, scratch_root

from rampart.agent import patching
from rampart.agent.patching import PackageRoot, PackageSpecError, PatchLimits

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="dpkg chroots into the scratch root for maintainer scripts"),
    pytest.mark.skipif(not os.path.exists("/usr/bin/dpkg-deb") or not os.path.exists("/usr/bin/apt-get"),
                       reason="needs dpkg and apt"),
]

BASE = ["stable", "stable-updates", "stable-security", "hotfix"]
REBOOT_POSTINST = 'echo "*** System restart required ***" > /run/reboot-required\necho rampart-reboot >> ' \
                  "/run/reboot-required.pkgs"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> AptRepo:
    repo = AptRepo(tmp_path_factory.mktemp("archive"))

    def deb(name: str, version: str, *, postinst: str | None = None, depends: str | None = None) -> Path:
        return build_deb(repo.path, name, version, postinst=postinst, depends=depends)

    repo.add("stable", [
        deb("rampart-demo", "1.0", postinst='echo "configured rampart-demo $2"'),
        deb("rampart-tool", "1.0"), deb("rampart-broken", "1.0", postinst="exit 0"),
        deb("rampart-lib", "1.0-1"), deb("rampart-dep", "1.0"),
        deb("rampart-app", "1.0", depends="rampart-dep"), deb("rampart-reboot", "1.0"),
        deb("rampart-slow", "1.0"),
    ])
    repo.add("stable-updates", [
        deb("rampart-demo", "2.0"), deb("rampart-tool", "1.5"),
        deb("rampart-broken", "1.1", postinst='echo "rampart-broken: cannot migrate its data" >&2\nexit 3'),
    ])
    repo.add("stable-security", [deb("rampart-demo", "1.1"),
                                 deb("rampart-reboot", "1.1", postinst=REBOOT_POSTINST)])
    # Not a *-security suite: security is known only from the Release file's Label.
    repo.add("hotfix", [deb("rampart-lib", "1.0-2")], label="Rampart Security")
    repo.add("conflict", [deb("rampart-app", "2.0", depends="rampart-dep, rampart-missing")])
    repo.add("slow", [deb("rampart-slow", "1.1", postinst="while :; do :; done")])
    repo.write()
    return repo


@pytest.fixture(autouse=True)
def host_packages_untouched() -> Iterator[None]:
    """The machine's own dpkg database and reboot flag are byte-identical after every test."""
    status = dpkg_status_bytes()
    reboot = os.path.exists("/run/reboot-required")
    yield
    assert dpkg_status_bytes() == status, "the host's /var/lib/dpkg/status changed"
    assert os.path.exists("/run/reboot-required") == reboot


def _root(tmp_path: Path, repo: AptRepo, suites: list[str] = BASE, *, trusted: bool = True,
          limits: PatchLimits | None = None, update: bool = True) -> PackageRoot:
    return scratch_root(tmp_path / "root", repo, suites, trusted=trusted, limits=limits, update=update)


def _install(root: PackageRoot, *specs: tuple[str, str]) -> None:
    for name, version in specs:
        result = patching.install(root, name, version)
        assert result.ok, result


def _by_name(result: patching.PatchResult) -> dict[str, patching.PackageChange]:
    return {c.name: c for c in result.changes}


def _status_text(root: PackageRoot) -> bytes:
    return root.file("var/lib/dpkg/status").read_bytes()


# --- names, versions, injection ------------------------------------------------------------------


def test_names_and_versions_follow_debian_policy() -> None:
    for good in ("rampart-demo", "libc6", "g++", "python3.11", "libfoo:i386", "0ad"):
        assert patching.validate_name(good) == good
    for bad in ("--foo", "-o", "pkg=1;rm", "pkg=1", "a b", "Pkg", "x", "foo*", "../x", "foo/bar", "",
                "foo:-i386", "foo\n", "foo;id", "$(id)"):
        with pytest.raises(PackageSpecError):
            patching.validate_name(bad)
    for good in ("1.0", "1:2.3-4", "2.0~rc1", "1.0+dfsg-1ubuntu0.1", "20240101", "1.0-1-2"):
        assert patching.validate_version(good) == good
    for bad in ("-1", "1.0;rm", "1.0 --force", "a1.0", "1.0-", "x:1.0", "1:", "", "1.0_1", "1.0/2", "=1"):
        with pytest.raises(PackageSpecError):
            patching.validate_version(bad)
    assert patching.validate_name("python3-dnf", "dnf") and patching.validate_version("2:1.0-3.el9", "dnf")
    for bad in ("--setopt=x", "-y", "a b", "pkg;rm"):
        with pytest.raises(PackageSpecError):
            patching.validate_name(bad, "dnf")


def test_argument_injection_is_refused_before_any_command(tmp_path: Path, repo: AptRepo) -> None:
    """A job naming ``--foo`` or ``pkg=1;rm`` never reaches apt: PackageSpecError, the root untouched."""
    root = _root(tmp_path, repo)
    _install(root, ("rampart-demo", "1.0"))
    status, history = _status_text(root), root.file("var/log/apt/history.log").read_bytes()
    attempts: list[Callable[[], object]] = [
        lambda: patching.install(root, "--reinstall"),
        lambda: patching.install(root, "rampart-tool=1.0;rm -rf /"),
        lambda: patching.install(root, "rampart-tool", "1.0 --allow-downgrades"),
        lambda: patching.install(root, "-oAPT::Get::AllowUnauthenticated=true"),
        lambda: patching.remove(root, "rampart-demo --purge"),
        lambda: patching.apply_updates(root, packages=["rampart-demo", "-s"]),
    ]
    for attempt in attempts:
        with pytest.raises(PackageSpecError):
            attempt()
    assert _status_text(root) == status
    assert root.file("var/log/apt/history.log").read_bytes() == history


def test_version_order_matches_dpkg() -> None:
    pairs = [("1.0", "1.0"), ("1.0", "1.1"), ("1.0~rc1", "1.0"), ("1:0.1", "2.0"), ("1.0-1", "1.0-1.1"),
             ("1.0a", "1.0"), ("1.0+b1", "1.0"), ("2.10", "2.9"), ("1.0-10", "1.0-9"), ("0:1.0", "1.0"),
             ("1.0~~", "1.0~"), ("1.2.3-0ubuntu1", "1.2.3-0ubuntu1.1"), ("1.0.0", "1.0"), ("abc", "abd"),
             ("1.0-0", "1.0"), ("7.88.1-10+deb12u5", "7.88.1-10+deb12u12")]
    for a, b in pairs:
        ours = patching.compare_deb_versions(a, b)
        for op, expect in (("lt", ours < 0), ("eq", ours == 0), ("gt", ours > 0)):
            real = subprocess.run(["dpkg", "--compare-versions", a, op, b], check=False).returncode == 0
            assert real == expect, (a, op, b)


# --- pending updates and applying them ---------------------------------------------------------------


def test_pending_updates_flag_security_from_suite_and_label(tmp_path: Path, repo: AptRepo) -> None:
    root = _root(tmp_path, repo)
    _install(root, ("rampart-demo", "1.0"), ("rampart-tool", "1.0"), ("rampart-lib", "1.0-1"))
    updates, error = patching.pending_updates_checked(root)
    assert error == ""
    by = {u.name: u for u in updates}
    assert set(by) == {"rampart-demo", "rampart-tool", "rampart-lib"}
    demo = by["rampart-demo"]
    # 2.0 (stable-updates) is the candidate; 1.1 from stable-security is the security fix.
    assert (demo.installed, demo.candidate, demo.security, demo.security_candidate, demo.origin) == \
        ("1.0", "2.0", True, "1.1", "stable-updates")
    assert by["rampart-tool"].security is False and by["rampart-tool"].security_candidate == ""
    lib = by["rampart-lib"]
    assert (lib.candidate, lib.security, lib.security_candidate) == ("1.0-2", True, "1.0-2")
    assert not any(u.reboot_required for u in updates)


def test_apply_security_only_installs_security_versions(tmp_path: Path, repo: AptRepo) -> None:
    root = _root(tmp_path, repo)
    _install(root, ("rampart-demo", "1.0"), ("rampart-tool", "1.0"), ("rampart-lib", "1.0-1"))
    result = patching.apply_updates(root, only_security=True)
    assert result.ok, result
    changes = _by_name(result)
    demo = changes["rampart-demo"]
    assert (demo.before, demo.after, demo.action) == ("1.0", "1.1", "upgraded")
    assert (changes["rampart-lib"].before, changes["rampart-lib"].after) == ("1.0-1", "1.0-2")
    assert "rampart-tool" not in changes
    assert patching.installed_version(root, "rampart-tool") == "1.0"
    remaining = {u.name: u for u in patching.pending_updates(root)}
    assert set(remaining) == {"rampart-demo", "rampart-tool"} and not remaining["rampart-demo"].security


def test_failing_postinst_is_reported_and_the_rest_still_upgrades(tmp_path: Path, repo: AptRepo) -> None:
    """A failing maintainer script: its package is left half-configured, named, with dpkg's words."""
    root = _root(tmp_path, repo)
    _install(root, ("rampart-demo", "1.0"), ("rampart-tool", "1.0"), ("rampart-broken", "1.0"))
    result = patching.apply_updates(root)
    assert not result.ok
    changes = _by_name(result)
    assert (changes["rampart-demo"].after, changes["rampart-demo"].action) == ("2.0", "upgraded")
    assert (changes["rampart-tool"].after, changes["rampart-tool"].action) == ("1.5", "upgraded")
    broken = changes["rampart-broken"]
    assert (broken.action, broken.before, broken.after, broken.state, broken.wanted) == \
        ("failed", "1.0", "1.1", "half-configured", "1.1")
    assert "cannot migrate its data" in broken.error
    assert "post-installation script subprocess returned error exit status 3" in broken.error
    assert len(broken.error) <= PatchLimits().max_error_chars
    assert result.broken == ["rampart-broken:half-configured"]
    assert [c.name for c in result.failures] == ["rampart-broken"]
    assert result.exit_code == 100 and "rampart-broken" in result.error
    # The known state is dpkg's own: its audit names the package as not configured.
    audit = subprocess.run(["dpkg", f"--root={root.path}", "--audit"], capture_output=True, text=True)
    assert "rampart-broken" in audit.stdout
    assert patching.state_of(root, "rampart-broken") == "half-configured"


def test_reboot_required_after_an_update_that_asks_for_it(tmp_path: Path, repo: AptRepo) -> None:
    root = _root(tmp_path, repo)
    _install(root, ("rampart-reboot", "1.0"))
    assert patching.reboot_required(root) is False
    result = patching.apply_updates(root, only_security=True)
    assert result.ok and result.reboot_required
    assert _by_name(result)["rampart-reboot"].after == "1.1"
    assert patching.reboot_required(root)
    assert root.file("run/reboot-required.pkgs").read_text().split() == ["rampart-reboot"]


def test_named_packages_only_and_not_installed_is_a_failure(tmp_path: Path, repo: AptRepo) -> None:
    root = _root(tmp_path, repo)
    _install(root, ("rampart-demo", "1.0"), ("rampart-tool", "1.0"))
    result = patching.apply_updates(root, packages=["rampart-tool", "rampart-dep"])
    changes = _by_name(result)
    assert (changes["rampart-tool"].before, changes["rampart-tool"].after) == ("1.0", "1.5")
    dep = changes["rampart-dep"]
    assert (dep.action, dep.error) == ("failed", "package not installed")
    assert "rampart-demo" not in changes and patching.installed_version(root, "rampart-demo") == "1.0"
    assert not result.ok
    again = patching.apply_updates(root, packages=["rampart-tool"])
    assert again.ok and _by_name(again)["rampart-tool"].action == "unchanged"


def test_resolver_conflict_does_not_hold_back_other_updates(tmp_path: Path, repo: AptRepo) -> None:
    """rampart-app 2.0 needs a package no source has: apt refuses the batch; each update is retried alone."""
    root = _root(tmp_path, repo, [*BASE, "conflict"])
    _install(root, ("rampart-dep", "1.0"), ("rampart-app", "1.0"), ("rampart-tool", "1.0"))
    result = patching.apply_updates(root)
    changes = _by_name(result)
    assert (changes["rampart-tool"].after, changes["rampart-tool"].action) == ("1.5", "upgraded")
    app = changes["rampart-app"]
    assert (app.action, app.after, app.wanted) == ("failed", "1.0", "2.0")
    assert "rampart-missing" in app.error or "held broken packages" in app.error
    assert not result.ok and result.broken == []


# --- install and remove --------------------------------------------------------------------------


def test_install_exact_version_and_downgrade_needs_permission(tmp_path: Path, repo: AptRepo) -> None:
    root = _root(tmp_path, repo)
    first = patching.install(root, "rampart-tool")
    assert first.ok and _by_name(first)["rampart-tool"].after == "1.5"
    down = patching.install(root, "rampart-tool", "1.0")
    assert not down.ok and _by_name(down)["rampart-tool"].action == "failed"
    assert "downgrade" in (down.error + _by_name(down)["rampart-tool"].error).lower()
    assert patching.installed_version(root, "rampart-tool") == "1.5"
    allowed = patching.install(root, "rampart-tool", "1.0", allow_downgrade=True)
    assert allowed.ok and _by_name(allowed)["rampart-tool"].action == "downgraded"
    same = patching.install(root, "rampart-tool", "1.0")
    assert same.ok and _by_name(same)["rampart-tool"].action == "unchanged"


def test_missing_package_or_version_is_a_failure_result(tmp_path: Path, repo: AptRepo) -> None:
    root = _root(tmp_path, repo)
    status = _status_text(root)
    for result in (patching.install(root, "rampart-nonexistent"),
                   patching.install(root, "rampart-tool", "9.9")):
        assert not result.ok
        assert [c.action for c in result.changes] == ["failed"]
        assert result.changes[0].state == "not-installed"
        assert result.errors and result.errors[0].startswith("E: ")
    assert _status_text(root) == status


def test_install_brings_dependencies_and_remove_refuses_collateral(tmp_path: Path, repo: AptRepo) -> None:
    root = _root(tmp_path, repo)
    installed = patching.install(root, "rampart-app", "1.0")
    assert installed.ok
    assert {c.name: c.action for c in installed.changes} == \
        {"rampart-app": "installed", "rampart-dep": "installed"}
    refused = patching.remove(root, "rampart-dep")
    assert not refused.ok and "would also remove: rampart-app" in refused.error
    assert patching.installed_version(root, "rampart-app") == "1.0"
    assert patching.installed_version(root, "rampart-dep") == "1.0"
    cascaded = patching.remove(root, "rampart-dep", cascade=True)
    assert cascaded.ok
    assert {c.name: c.action for c in cascaded.changes} == \
        {"rampart-app": "removed", "rampart-dep": "removed"}
    assert patching.remove(root, "rampart-dep").ok  # already gone: ok, unchanged


def test_unsigned_source_is_refused(tmp_path: Path, repo: AptRepo) -> None:
    """Without [trusted=yes] an unsigned archive gives apt nothing to install: the engine adds no override."""
    root = _root(tmp_path, repo, ["stable"], trusted=False, update=False)
    refreshed = patching.refresh(root)
    assert not refreshed.ok and "not signed" in refreshed.error
    result = patching.install(root, "rampart-tool")
    assert not result.ok and patching.installed_version(root, "rampart-tool") is None


def test_timeout_kills_the_whole_package_manager_process_group(tmp_path: Path, repo: AptRepo) -> None:
    """A maintainer script that never ends: stopped at the time limit, no process left behind."""
    root = _root(tmp_path, repo, [*BASE, "slow"], limits=PatchLimits(apply_timeout_s=6.0))
    _install(root, ("rampart-slow", "1.0"))
    t0 = time.monotonic()
    result = patching.apply_updates(root, packages=["rampart-slow"])
    assert time.monotonic() - t0 < 6.0 + 20.0
    assert result.timed_out and not result.ok and "timed out" in result.error
    slow = _by_name(result)["rampart-slow"]
    assert slow.action == "failed" and slow.state in ("half-configured", "unpacked")
    time.sleep(0.2)
    leftovers = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"rampart-slow" in cmdline or str(root.path).encode() in cmdline:
            leftovers.append(cmdline)
    assert leftovers == []


# --- the real host, read-only ------------------------------------------------------------------


def test_real_host_pending_updates_are_read_only() -> None:
    """Listing updates on the machine itself only reads: its dpkg database stays the same (fixture)."""
    root = PackageRoot.system("apt")
    updates, error = patching.pending_updates_checked(root)
    assert error == ""
    status = Path("/var/lib/dpkg/status").read_text(errors="replace")
    for u in updates:
        assert f"Package: {u.name}\n" in status
        assert patching.compare_deb_versions(u.candidate, u.installed) > 0
        assert not u.security or patching.compare_deb_versions(u.security_candidate, u.installed) > 0
