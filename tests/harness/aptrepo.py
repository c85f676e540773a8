"""A real, local, offline apt repository and scratch package roots, for the patching tests and benchmark.

* :func:`build_deb` makes a real ``.deb`` with ``dpkg-deb --build`` (control
  file, one data file, optional maintainer scripts).
* :class:`AptRepo` lays them out as a Debian archive (``dists/<suite>/Release``
  with the SHA-256 of each ``Packages`` index, ``pool/``), written here rather
  than with apt-ftparchive so the tests need nothing beyond dpkg and apt.
* :func:`scratch_root` makes a :class:`~rampart.agent.patching.PackageRoot`
  with its own dpkg database and apt state, pointed at the repository through
  a ``file:`` URI, and the few files dpkg needs to run maintainer scripts
  chrooted into it (``/bin/sh`` and the C library). The machine's own dpkg
  database is never opened for writing.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from rampart.agent.patching import PackageRoot, PatchLimits, refresh

MAINTAINER = "Rampart Tests <tests@example.invalid>"


def native_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


def build_deb(out_dir: Path, name: str, version: str, *, postinst: str | None = None,
              depends: str | None = None, arch: str = "all", payload: bytes | None = None) -> Path:
    """A real .deb of ``name`` ``version`` in ``out_dir``; ``postinst`` is a shell script body."""
    work = out_dir / "build" / f"{name}_{version}"
    if work.exists():
        shutil.rmtree(work)
    (work / "DEBIAN").mkdir(parents=True)
    share = work / "usr" / "share" / name
    share.mkdir(parents=True)
    (share / "VERSION").write_bytes(payload if payload is not None else f"{name} {version}\n".encode())
    control = [f"Package: {name}", f"Version: {version}", f"Architecture: {arch}",
               f"Maintainer: {MAINTAINER}", "Section: misc", "Priority: optional"]
    if depends:
        control.append(f"Depends: {depends}")
    control.append(f"Description: Rampart test package {name}\n built by tests/harness/aptrepo.py")
    (work / "DEBIAN" / "control").write_text("\n".join(control) + "\n")
    if postinst is not None:
        script = work / "DEBIAN" / "postinst"
        script.write_text("#!/bin/sh\n" + postinst.strip() + "\n")
        script.chmod(0o755)
    pool = out_dir / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    deb = pool / f"{name}_{version}_{arch}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(work), str(deb)], check=True,
                   capture_output=True)
    return deb


@dataclass
class AptRepo:
    """A Debian archive in ``path``: suites of one component ("main") for one architecture."""

    path: Path
    arch: str = field(default_factory=native_arch)
    suites: dict[str, tuple[str, list[Path]]] = field(default_factory=dict)

    def add(self, suite: str, debs: list[Path], *, label: str = "Rampart") -> None:
        self.suites[suite] = (label, list(debs))

    def write(self) -> None:
        """(Re)write every suite's Packages index and Release file."""
        for suite, (label, debs) in self.suites.items():
            rel_index = f"main/binary-{self.arch}/Packages"
            index = self.path / "dists" / suite / rel_index
            index.parent.mkdir(parents=True, exist_ok=True)
            stanzas = []
            for deb in debs:
                data = deb.read_bytes()
                control = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True,
                                         check=True).stdout.rstrip("\n")
                stanzas.append(f"{control}\nFilename: {deb.relative_to(self.path)}\nSize: {len(data)}\n"
                               f"SHA256: {hashlib.sha256(data).hexdigest()}\n")
            packages = "\n".join(stanzas).encode()
            index.write_bytes(packages)
            release = (f"Origin: Rampart\nLabel: {label}\nSuite: {suite}\nCodename: {suite}\n"
                       f"Architectures: {self.arch}\nComponents: main\nDate: Thu, 01 Jan 2026 00:00:00 UTC\n"
                       f"SHA256:\n {hashlib.sha256(packages).hexdigest()} {len(packages)} {rel_index}\n")
            (self.path / "dists" / suite / "Release").write_text(release)

    def source_line(self, suite: str, *, trusted: bool = True) -> str:
        # [trusted=yes]: this archive was built by the test a moment ago in a private directory and is
        # read through file:, so there is nothing to authenticate; signing it would exercise gpg, not
        # Rampart. Production sources are never marked so, and test_unsigned_source_is_refused shows the
        # engine refuses an unsigned source that is not.
        opts = "[trusted=yes] " if trusted else ""
        return f"deb {opts}file:{self.path} {suite} main"


_LDD_PATH = re.compile(r"(/\S+)")


def _copy_with_libraries(binary: str, root: Path, dest: str) -> None:
    target = root / dest.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(binary), target)
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        for lib in _LDD_PATH.findall(line):
            if not os.path.exists(lib):
                continue
            copy = root / lib.lstrip("/")
            copy.parent.mkdir(parents=True, exist_ok=True)
            if not copy.exists():
                shutil.copy2(os.path.realpath(lib), copy)


def scratch_root(path: Path, repo: AptRepo, suites: list[str], *, trusted: bool = True,
                 limits: PatchLimits | None = None, update: bool = True) -> PackageRoot:
    """A scratch package root using ``suites`` of ``repo``, with its package lists downloaded."""
    root = PackageRoot.scratch(path, "apt", limits) if limits else PackageRoot.scratch(path, "apt")
    # dpkg runs maintainer scripts chrooted into the root: give it a shell and its C library there.
    _copy_with_libraries("/bin/sh", root.path, "/bin/sh")
    (root.file("etc/apt/sources.list")).write_text(
        "".join(repo.source_line(s, trusted=trusted) + "\n" for s in suites))
    if update:
        result = refresh(root)
        if trusted and not result.ok:
            raise RuntimeError(f"apt-get update in the scratch root failed: {result.error}\n"
                               f"{result.output_tail}")
    return root


def dpkg_status_bytes() -> bytes:
    """The host's own dpkg database, to prove it never changes."""
    return Path("/var/lib/dpkg/status").read_bytes()

