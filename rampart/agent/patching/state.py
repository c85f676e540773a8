"""Installed state of a package root: the dpkg status / rpm database snapshot, the native architecture."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .. import _command
from . import roots
from .roots import PackageRoot, _dpkg_root_options, _rpm_root_options
from .versions import _DEB_ARCH

# --- installed state -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Installed:
    version: str
    state: str
    want: str = "install"


_Snapshot = dict[tuple[str, str], _Installed]
#: dpkg states after which a package is not in a final, working state.
_DPKG_TRANSIENT = frozenset({"half-installed", "unpacked", "half-configured", "triggers-awaited",
                             "triggers-pending"})


def _parse_dpkg_status(text: str, limit: int) -> _Snapshot:
    out: _Snapshot = {}
    fields: dict[str, str] = {}
    for line in [*text.split("\n"), ""]:
        if line.strip():
            if line[0] not in " \t":
                key, sep, value = line.partition(":")
                if sep and key in ("Package", "Version", "Architecture", "Status"):
                    fields[key] = value.strip()
            continue
        if fields:
            status = fields.get("Status", "").split()
            name, arch = fields.get("Package", ""), fields.get("Architecture", "")
            if len(status) == 3 and name and status[2] != "not-installed" and len(out) < limit:
                out[(name, arch)] = _Installed(fields.get("Version", ""), status[2], status[0])
            fields = {}
    return out


def _snapshot(root: PackageRoot) -> _Snapshot:
    """Every package the root's database knows (name, arch) -> version and state."""
    if root.manager == "apt":
        path = root.file("var/lib/dpkg/status")
        with open(path, "rb") as f:
            data = f.read(root.limits.max_status_bytes + 1)
        if len(data) > root.limits.max_status_bytes:
            raise OSError(f"{path} is larger than {root.limits.max_status_bytes} bytes")
        return _parse_dpkg_status(data.decode("utf-8", "replace"), root.limits.max_packages)
    qf = "%{NAME}\\t%{ARCH}\\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\\n"
    argv = ["rpm", *_rpm_root_options(root), "-qa", "--qf", qf]
    done = _command.run(argv, env=roots._env(root), timeout=root.limits.query_timeout_s,
                        max_stdout=root.limits.max_stdout)
    if not done.ok:
        raise OSError(done.error or f"rpm -qa exited with status {done.returncode}: {done.tail[-500:]}")
    out: _Snapshot = {}
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0] != "gpg-pubkey":
            evr = parts[2][2:] if parts[2].startswith("0:") else parts[2]
            out[(parts[0], parts[1])] = _Installed(evr, "installed")
    return out


def _native_arch(root: PackageRoot) -> str:
    done = _command.run(["dpkg", *_dpkg_root_options(root), "--print-architecture"], env=roots._env(root),
                        timeout=60, max_stdout=4096)
    arch = done.stdout.decode("ascii", "replace").strip()
    return arch if done.ok and _DEB_ARCH.fullmatch(arch) else os.uname().machine
