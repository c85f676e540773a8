"""Package names and versions: validation against Debian policy and rpm's rules, Debian version comparison."""

from __future__ import annotations

import re

from ..inventory.debversion import compare_deb_versions
from .limits import Manager, PackageSpecError

__all__ = ["compare_deb_versions", "validate_name", "validate_version"]

# --- names and versions ----------------------------------------------------------------

# Debian policy 5.6.1: lower case letters, digits, + - . ; at least two characters, starting alphanumeric.
_DEB_NAME = re.compile(r"[a-z0-9][a-z0-9+.\-]{1,199}")
_DEB_ARCH = re.compile(r"[a-z0-9][a-z0-9\-]{0,31}")
# Debian policy 5.6.12: [epoch:]upstream[-revision]; upstream starts with a digit and may hold a hyphen
# only when there is a revision; the revision has no hyphen.
_DEB_EPOCH = re.compile(r"[0-9]{1,9}")
_DEB_UPSTREAM = re.compile(r"[0-9][A-Za-z0-9.+~\-]{0,127}")
_DEB_UPSTREAM_NOREV = re.compile(r"[0-9][A-Za-z0-9.+~]{0,127}")
_DEB_REVISION = re.compile(r"[A-Za-z0-9.+~]{1,64}")
# rpm: names of letters, digits and - . _ + (not starting with - or .); EVR [epoch:]version[-release].
_RPM_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+\-]{0,199}")
_RPM_VERSION = re.compile(r"(?:[0-9]{1,9}:)?[A-Za-z0-9._+~^]{1,128}(?:-[A-Za-z0-9._+~^]{1,128})?")


def validate_name(name: str, manager: Manager = "apt") -> str:
    """``name`` (apt: optionally ``name:arch``) if it is a valid name, else :class:`PackageSpecError`."""
    if not isinstance(name, str):
        raise PackageSpecError("package name must be a string")
    if manager == "apt":
        base, sep, arch = name.partition(":")
        if _DEB_NAME.fullmatch(base) and (not sep or _DEB_ARCH.fullmatch(arch)):
            return name
    elif _RPM_NAME.fullmatch(name):
        return name
    raise PackageSpecError(f"not a valid {manager} package name: {name[:80]!r}")


def validate_version(version: str, manager: Manager = "apt") -> str:
    """``version`` if valid for Debian (policy 5.6.12) or rpm (EVR), else :class:`PackageSpecError`."""
    if not isinstance(version, str):
        raise PackageSpecError("version must be a string")
    if manager == "dnf":
        if _RPM_VERSION.fullmatch(version):
            return version
        raise PackageSpecError(f"not a valid rpm version: {version[:80]!r}")
    epoch, sep, rest = version.partition(":")
    if not sep:
        epoch, rest = "", version
    elif not _DEB_EPOCH.fullmatch(epoch):
        raise PackageSpecError(f"not a valid Debian version: {version[:80]!r}")
    upstream, dash, revision = rest.rpartition("-")
    ok = (_DEB_UPSTREAM.fullmatch(upstream) is not None and _DEB_REVISION.fullmatch(revision) is not None
          if dash else _DEB_UPSTREAM_NOREV.fullmatch(rest) is not None)
    if not ok:
        raise PackageSpecError(f"not a valid Debian version: {version[:80]!r}")
    return version
