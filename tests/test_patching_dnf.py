"""Patch management on real dnf and rpm, offline, in a scratch installroot (issue 6).

Runs where dnf, rpm, rpmbuild and createrepo_c exist: on the machine, or
unpacked from Debian packages into ``RAMPART_TEST_DNF_PREFIX`` (see
tests/harness/rpmrepo.py) on a Debian machine whose own packages must not
change (./run-tests prepares that prefix in .venv/dnf-prefix). Skipped
otherwise, with the reason printed.

When the tools come from that prefix they are outside the agent's fixed
PATH: the test then adds the prefix to the engine's PATH and the three
variables the unpacked libraries need. That is the only thing adjusted;
dnf, rpm and the scriptlets run for real.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.aptrepo import _copy_with_libraries, dpkg_status_bytes
from harness.rpmrepo import DnfTools, build_rpm, make_repo

from rampart.agent import _command, patching
from rampart.agent.patching import PackageRoot

TOOLS = DnfTools()
pytestmark = [
    pytest.mark.skipif(not TOOLS.available(), reason="dnf, rpmbuild and createrepo_c are not available "
                                                     "(set RAMPART_TEST_DNF_PREFIX, see harness/rpmrepo.py)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="rpm chroots into the installroot for scriptlets"),
]


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    top = tmp_path_factory.mktemp("rpmbuild")

    def rpm(name: str, version: str, *, post: str | None = None, requires: str | None = None,
            provides: str | None = None, files: bool = True) -> Path:
        return build_rpm(TOOLS, top, name, version, post=post, requires=requires, provides=provides,
                         files=files)

    # Scriptlets need /bin/sh in the installroot: this package provides it (the file is copied in).
    base = make_repo(TOOLS, top / "repo-base", [
        rpm("rampart-base", "1.0", provides="/bin/sh", files=False),
        rpm("rampart-demo", "1.0", post="echo configured"), rpm("rampart-tool", "1.0"),
        rpm("rampart-broken", "1.0", post="exit 0"), rpm("rampart-dep", "1.0"),
        rpm("rampart-app", "1.0", requires="rampart-dep")])
    updates = make_repo(TOOLS, top / "repo-updates", [
        rpm("rampart-demo", "1.1"), rpm("rampart-tool", "1.5"),
        rpm("rampart-broken", "1.1", post='echo "rampart-broken: cannot migrate its data"\nexit 3')],
        security=[("rampart-demo", "1.1")])
    return base, updates


@pytest.fixture
def root(tmp_path: Path, repos: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[PackageRoot]:
    if TOOLS.prefix is not None:
        real_env = patching.roots._env
        monkeypatch.setattr(_command, "SAFE_PATH", TOOLS.path)
        monkeypatch.setattr(patching.roots, "_env",
                            lambda r: {**real_env(r), "PATH": TOOLS.path, **TOOLS.extra_env()})
    host = dpkg_status_bytes()
    root = PackageRoot.scratch(tmp_path / "root", "dnf")
    _copy_with_libraries("/bin/sh", root.path, "/bin/sh")
    base, updates = repos
    # gpgcheck=0: repositories built by the test a moment ago and read through file:, the same reasoning
    # as [trusted=yes] in tests/harness/aptrepo.py; the engine's own default stays gpgcheck=True.
    root.file("etc/yum.repos.d/rampart.repo").write_text(
        f"[base]\nname=base\nbaseurl=file://{base}\ngpgcheck=0\n"
        f"[updates]\nname=updates\nbaseurl=file://{updates}\ngpgcheck=0\n")
    assert patching.refresh(root).ok
    assert patching.install(root, "rampart-base").ok
    yield root
    assert dpkg_status_bytes() == host


def test_dnf_security_flag_and_security_only_update(root: PackageRoot) -> None:
    for name in ("rampart-demo", "rampart-tool"):
        assert patching.install(root, name, "1.0-1").ok
    by = {u.name: u for u in patching.pending_updates(root)}
    assert (by["rampart-demo"].installed, by["rampart-demo"].candidate, by["rampart-demo"].security) == \
        ("1.0-1", "1.1-1", True)
    assert by["rampart-tool"].security is False and by["rampart-tool"].origin == "updates"
    result = patching.apply_updates(root, only_security=True)
    assert result.ok, result
    assert [(c.name, c.before, c.after, c.action) for c in result.changes] == \
        [("rampart-demo", "1.0-1", "1.1-1", "upgraded")]
    assert patching.installed_version(root, "rampart-tool") == "1.0-1"


def test_dnf_failing_scriptlet_is_a_failure_and_the_rest_upgrades(root: PackageRoot) -> None:
    for name in ("rampart-tool", "rampart-broken"):
        assert patching.install(root, name, "1.0-1").ok
    result = patching.apply_updates(root)
    changes = {c.name: c for c in result.changes}
    assert not result.ok
    assert (changes["rampart-tool"].after, changes["rampart-tool"].action) == ("1.5-1", "upgraded")
    broken = changes["rampart-broken"]
    assert (broken.action, broken.after) == ("failed", "1.1-1")
    assert "cannot migrate its data" in broken.error and "scriptlet failed, exit status 3" in broken.error


def test_dnf_remove_refuses_collateral_and_missing_package_fails(root: PackageRoot) -> None:
    assert patching.install(root, "rampart-app").ok
    assert patching.installed_version(root, "rampart-dep") == "1.0-1"
    refused = patching.remove(root, "rampart-dep")
    assert not refused.ok and "would also remove: rampart-app" in refused.error
    assert patching.installed_version(root, "rampart-dep") == "1.0-1"
    assert patching.remove(root, "rampart-app").ok
    missing = patching.install(root, "rampart-nonexistent")
    assert not missing.ok and missing.changes[0].action == "failed"
    assert missing.errors == ["Error: Unable to find a match: rampart-nonexistent"]
