"""Real rpm packages and dnf repositories for the dnf tests, built with rpmbuild and createrepo_c.

The tools come from the machine (``dnf``, ``rpmbuild``, ``createrepo_c`` on
PATH) or, on a machine whose own packages must not change, from Debian
packages unpacked into a directory named by ``RAMPART_TEST_DNF_PREFIX``::

    mkdir -p /tmp/dnf/debs && cd /tmp/dnf/debs
    apt-get download dnf python3-dnf python3-libdnf python3-hawkey libdnf2 libdnf2-common dnf-data \\
        rpm rpm-common librpm9 librpmio9 librpmbuild9 librpmsign9 python3-rpm libsolv1 libsolvext1 \\
        librepo0 libmodulemd2 libcomps0 python3-libcomps libgpgme11 python3-gpg libzck1 libdrpm0 \\
        liblua5.3-0 libpopt0 libfsverity0 debugedit rpm2cpio createrepo-c libcreaterepo-c0
    for f in *.deb; do dpkg-deb -x "$f" /tmp/dnf/prefix; done
    RAMPART_TEST_DNF_PREFIX=/tmp/dnf/prefix pytest tests/test_patching_dnf.py

(``apt-get download`` fetches, it installs nothing.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class DnfTools:
    """Where dnf, rpm, rpmbuild and createrepo_c come from, and the environment they need."""

    def __init__(self) -> None:
        prefix = os.environ.get("RAMPART_TEST_DNF_PREFIX", "")
        self.prefix = Path(prefix) if prefix else None

    @property
    def bin_dir(self) -> str:
        return f"{self.prefix}/usr/bin" if self.prefix else ""

    @property
    def path(self) -> str:
        return f"{self.bin_dir}:{SYSTEM_PATH}" if self.prefix else SYSTEM_PATH

    def extra_env(self) -> dict[str, str]:
        if self.prefix is None:
            return {}
        return {"LD_LIBRARY_PATH": f"{self.prefix}/usr/lib/x86_64-linux-gnu",
                "PYTHONPATH": f"{self.prefix}/usr/lib/python3/dist-packages",
                "RPM_CONFIGDIR": f"{self.prefix}/usr/lib/rpm"}

    def env(self) -> dict[str, str]:
        return {"PATH": self.path, "LC_ALL": "C", "HOME": "/root", **self.extra_env()}

    def available(self) -> bool:
        return all(shutil.which(t, path=self.path) for t in ("dnf", "rpm", "rpmbuild", "createrepo_c",
                                                               "modifyrepo_c"))


def build_rpm(tools: DnfTools, topdir: Path, name: str, version: str, *, post: str | None = None,
              requires: str | None = None, provides: str | None = None, files: bool = True) -> Path:
    """A real noarch rpm ``name-version-1``; ``post`` is a %post scriptlet body."""
    spec_dir = topdir / "SPECS"
    spec_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"Name: {name}", f"Version: {version}", "Release: 1", "Summary: Rampart test package",
             "License: MIT", "BuildArch: noarch"]
    if requires:
        lines.append(f"Requires: {requires}")
    if provides:
        lines.append(f"Provides: {provides}")
    lines += ["%description", "Rampart test package.", "%install"]
    if files:
        lines += [f"mkdir -p %{{buildroot}}/usr/share/{name}",
                  f"echo '{name} {version}' > %{{buildroot}}/usr/share/{name}/VERSION",
                  "%files", f"/usr/share/{name}/VERSION"]
    else:
        lines += ["%files"]
    if post is not None:
        lines += ["%post", post]
    spec = spec_dir / f"{name}-{version}.spec"
    spec.write_text("\n".join(lines) + "\n")
    subprocess.run(["rpmbuild", "-bb", "--define", f"_topdir {topdir}", str(spec)], env=tools.env(),
                   check=True, capture_output=True)
    return topdir / "RPMS" / "noarch" / f"{name}-{version}-1.noarch.rpm"


def make_repo(tools: DnfTools, path: Path, rpms: list[Path], *,
              security: Sequence[tuple[str, str]] = ()) -> Path:
    """A dnf repository of ``rpms``; ``security`` (name, version) pairs get a security advisory."""
    path.mkdir(parents=True, exist_ok=True)
    for rpm in rpms:
        shutil.copy2(rpm, path / rpm.name)
    subprocess.run(["createrepo_c", "-q", str(path)], env=tools.env(), check=True, capture_output=True)
    if security:
        packages = "".join(
            f'<package name="{n}" version="{v}" release="1" epoch="0" arch="noarch">'
            f"<filename>{n}-{v}-1.noarch.rpm</filename></package>" for n, v in security)
        info = path.parent / f"{path.name}-updateinfo.xml"
        info.write_text(
            '<?xml version="1.0" encoding="UTF-8"?>\n<updates><update from="tests@example.invalid" '
            'status="stable" type="security" version="1"><id>RAMPART-2026-0001</id><title>fix</title>'
            '<issued date="2026-01-01 00:00:00"/><severity>Important</severity><description>fix</description>'
            f'<pkglist><collection short="rampart"><name>rampart</name>{packages}</collection></pkglist>'
            "</update></updates>\n")
        subprocess.run(["modifyrepo_c", "--mdtype=updateinfo", str(info), str(path / "repodata")],
                       env=tools.env(), check=True, capture_output=True)
    return path
