"""What the engine reports: Update, PackageChange, PatchResult, RefreshResult (msgspec structs)."""

from __future__ import annotations

import msgspec

from .limits import Action, Manager, Operation

# --- result types ----------------------------------------------------------------------


class _Struct(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class Update(_Struct, frozen=True, kw_only=True):
    """One pending update of an installed package."""

    manager: Manager
    name: str
    arch: str
    installed: str
    #: The version the package manager would install (apt's candidate, dnf's update).
    candidate: str
    #: A version newer than ``installed`` comes from a security source (``*-security`` suite, a
    #: "Security" label, a dnf security advisory).
    security: bool = False
    #: The newest version a security source offers (what a security-only run installs); may be
    #: older than ``candidate`` when a normal suite has an even newer one.
    security_candidate: str = ""
    #: Archive, suite or repository that offers the candidate.
    origin: str = ""
    #: Updating this package usually needs a reboot to take effect (kernel, libc, systemd, ...).
    reboot_required: bool = False


class PackageChange(_Struct, frozen=True, kw_only=True):
    """What happened to one package in an operation."""

    name: str
    arch: str = ""
    before: str | None = None
    after: str | None = None
    action: Action
    #: The package's state afterwards: dpkg's status word ("installed", "half-configured",
    #: "unpacked", ..., "not-installed") or "installed"/"not-installed" for rpm.
    state: str = "not-installed"
    #: The version the operation aimed for, when it named one.
    wanted: str = ""
    error: str = ""


class PatchResult(_Struct, frozen=True, kw_only=True):
    """The outcome of :func:`apply_updates`, :func:`install` or :func:`remove`; never an exception."""

    manager: Manager
    operation: Operation
    ok: bool
    #: Every package whose version or state changed, and every requested one (even if unchanged).
    changes: list[PackageChange] = []
    #: Why the operation failed as a whole ("" when ``ok``); per-package reasons are in ``changes``.
    error: str = ""
    #: General error lines of the package manager ("E: ...", "Error: ..."), bounded.
    errors: list[str] = []
    exit_code: int | None = None
    timed_out: bool = False
    #: Packages left in a non-final state ("name:state"), e.g. a failed maintainer script.
    broken: list[str] = []
    reboot_required: bool = False
    output_tail: str = ""
    output_truncated: bool = False
    started: float = 0.0
    finished: float = 0.0

    @property
    def failures(self) -> list[PackageChange]:
        return [c for c in self.changes if c.action == "failed"]


class RefreshResult(_Struct, frozen=True, kw_only=True):
    ok: bool
    error: str = ""
    exit_code: int | None = None
    output_tail: str = ""
    duration_s: float = 0.0
