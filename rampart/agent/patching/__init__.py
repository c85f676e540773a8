"""Patch and package management on one package root (apt/dpkg or dnf/rpm): the agent's engine.

What it does (issue 6, K1, H5, M6): list pending updates with a security
flag, apply them (all, security only, or named packages), install and remove
packages by name and version, and report per package what changed (version
before and after, dpkg/rpm state, the package manager's error text) and
whether the host needs a reboot. It is pure I/O: verifying that a job was
signed and granted happens before, in :mod:`rampart.trust`; the job wiring
calls these functions with values taken from a verified job.

Security rules (docs/design/patching-backup.md, "Security"):

* **No argument injection.** Package names and versions are checked against
  Debian policy (5.6.1, 5.6.12) or rpm's rules before they reach a command
  line; anything else (``--foo``, ``pkg=1;rm``, spaces, globs, a version with
  a leading ``-``) raises :class:`PackageSpecError` and nothing runs. There is
  no shell anywhere; argv lists only.
* **Fixed environment.** Commands run from a fixed PATH with ``LC_ALL=C``,
  ``DEBIAN_FRONTEND=noninteractive`` and nothing inherited from the agent
  (:mod:`rampart.agent._command`), stdin ``/dev/null``, a time limit (the whole
  process group is killed past it) and bounded output.
* **The device's repositories only.** Nothing here adds a source, a key or a
  trust override; unauthenticated packages are refused even when the host's
  own apt configuration would allow them (``APT::Get::AllowUnauthenticated``
  forced off). A job chooses *which* packages and versions, never *where
  from*.
* **No silent collateral.** Updates never remove packages (``--no-remove``);
  :func:`remove` refuses when other packages would go too unless the caller
  says ``cascade=True``; downgrades need ``allow_downgrade=True``; essential
  packages stay protected by apt itself.
* **Never raises on package-manager failure.** Every operation returns a
  :class:`PatchResult`; a failing maintainer script, a lock held too long, a
  missing package or a time-out is a failure entry with the package left in
  a state the result names (``state``, ``broken``).

A :class:`PackageRoot` is the real system (``/``) or a scratch root, used by
the tests and the benchmark so that the machine's own packages never change.
For apt a scratch root gets its own configuration file (``APT_CONFIG``) that
points every ``Dir`` at the root, so nothing of the host's apt configuration
(hooks, proxies, sources) applies, and dpkg runs with ``--root``, so it uses
the root's database and runs maintainer scripts chrooted into the root. For
dnf, ``--installroot`` with the root's own configuration and repositories.

The package, by section: :mod:`.limits` (literals, :class:`PatchLimits`,
:class:`PackageSpecError`), :mod:`.versions` (names and versions),
:mod:`.results` (result types), :mod:`.roots` (package roots, environment and
command lines), :mod:`.state` (installed state), :mod:`.reboot`, :mod:`.apt`
and :mod:`.dnf` (pending updates per manager), :mod:`.pending` (the queries
and refresh) and :mod:`.engine` (running an operation, the public operations).
"""

from __future__ import annotations

from ..inventory.apt_policy import is_security_source, parse_apt_policy_packages, parse_apt_release_map
from .engine import apply_updates, install, installed_version, remove, state_of
from .limits import DEFAULT_LIMITS, PackageSpecError, PatchLimits
from .pending import pending_updates, pending_updates_checked, refresh
from .reboot import reboot_required
from .results import PackageChange, PatchResult, RefreshResult, Update
from .roots import PackageRoot
from .versions import compare_deb_versions, validate_name, validate_version

__all__ = [
    "DEFAULT_LIMITS", "PackageChange", "PackageRoot", "PackageSpecError", "PatchLimits", "PatchResult",
    "RefreshResult", "Update", "apply_updates", "compare_deb_versions", "install", "installed_version",
    "is_security_source", "parse_apt_policy_packages", "parse_apt_release_map", "pending_updates",
    "pending_updates_checked", "reboot_required", "refresh", "remove", "state_of", "validate_name",
    "validate_version",
]
