"""The engine's vocabulary and bounds: the manager, action and operation literals,
PackageSpecError, PatchLimits and DEFAULT_LIMITS."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import SpecError

Manager = Literal["apt", "dnf"]
Action = Literal["upgraded", "downgraded", "installed", "removed", "unchanged", "failed"]
Operation = Literal["upgrade", "install", "remove"]


class PackageSpecError(SpecError):
    """A package name, version or root is not acceptable: the caller's input, refused before any command."""


@dataclass(frozen=True, slots=True)
class PatchLimits:
    """Every duration and size the engine bounds."""

    #: Listing pending updates (apt-cache, dnf -C): read-only, offline.
    query_timeout_s: float = 300.0
    #: One whole apply/install/remove operation, every command included.
    apply_timeout_s: float = 3600.0
    #: Refreshing the package lists (the only step that uses the network).
    refresh_timeout_s: float = 900.0
    #: How long apt waits for another package manager's lock before failing.
    lock_timeout_s: int = 120
    max_stdout: int = 64 << 20
    #: Last bytes of the package manager's output kept in a result.
    max_output_tail: int = 16 << 10
    #: Error text kept per package, and the general error lines kept.
    max_error_chars: int = 2000
    max_error_lines: int = 50
    max_packages: int = 20_000
    #: Largest dpkg status file read (a big one is ~20 MB).
    max_status_bytes: int = 64 << 20
    #: Named packages one operation may take.
    max_request: int = 1000


DEFAULT_LIMITS = PatchLimits()
