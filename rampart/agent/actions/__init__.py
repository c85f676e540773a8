"""Running a verified job: scripts and files contained, packages, updates and backups as root.

:class:`rampart.agent.core.Agent` calls :func:`run` only after
:func:`rampart.trust.authorize_job` accepted the job against the pinned root,
the audit log and the device policy, and after the job's nonce was committed
(docs/trust-chain.md). This module decides *how* each action kind runs and
what its receipt says; it never widens what the trust core allowed.

Per action: what the grant must give, what the device must allow, how it runs.

* ``script``: script (+ net, + root as declared); the device's write roots and
  ``--allow-root``; a contained child.
* ``file`` [DEST, MODE]: file, and DEST below a path the job declares it
  writes; DEST below a device write root; the agent's own deployment code
  (:mod:`rampart.agent._filejob`) in a contained child, as the agent's user,
  writing only beneath the declared path (Landlock) and below the write root
  without following symlinks (the engine).
* ``package`` [install, NAME(, VERSION)] or [remove, NAME]: package **and
  root** (the job declares ``run_as root``); ``--allow-root`` and a package
  manager (not ``none``); as root, outside Landlock.
* ``os-update``: patch; a package manager (not ``none``); as root, outside Landlock.
* ``backup-run``: backup; a backup section; as root (borg).
* ``backup-forget-state``: backup; a backup section; as the agent (borg's state of the
  configured repository only); signed by a person, never an automation key.
* ``inventory-refresh``: inventory; nothing; the telemetry trigger.

Why ``package`` needs ``root`` and ``os-update``/``backup-run`` do not
(docs/design/patching-backup.md, "Wiring"): a package job chooses what runs as
root (any package of the device's sources, whose maintainer scripts run as
root, or the removal of a security tool), so it is a root job and needs what
every root job needs: the high-risk ``root`` capability (two approvers under
the default tenant policy) and a device enrolled with ``--allow-root``. The
payload-free actions choose nothing: the updates come from the device's own
configured, signed sources and never remove a package; the backup goes from
the device's configured paths to its configured append-only repository. They
are what an automation key may trigger under a standing grant, and making
each such grant need two approvers would slow the patch cadence (H5) without
taking any choice away from an attacker. The device opts in to them at
enrolment (``--package-manager``, ``--backup-repo``).

Receipts: outcome ``ran`` (exit 0) or ``failed`` (exit 1); stdout one JSON
document of the structured result (at most :data:`MAX_DOC_BYTES`; lists are
cut, failures first, and ``"truncated": true`` is set when it would be larger);
stderr one line naming the error. Contained jobs report the containment their
child applied; root actions report level ``none`` and the uid they ran as.
Refusals (nothing ran) carry one of ``bad-arguments``, ``not-configured``,
``capability-not-granted`` or ``containment-unavailable``.

The package, by section: :mod:`.limits` (bounds and defaults), :mod:`.policy`
(the device's action policy), :mod:`.enrolment` (its ``enroll`` options),
:mod:`.results` (:class:`Done`, :class:`Refusal`, result documents),
:mod:`.host` (the :class:`JobHost` protocol), :mod:`.contained` (running a
contained job), one module per handler family (:mod:`.script`, :mod:`.files`,
:mod:`.packages`, :mod:`.backup`, :mod:`.inventory`, :mod:`.reboot`) and
:mod:`.dispatch` (the handler table, :func:`run`, :func:`run_check`).
"""

from __future__ import annotations

from .dispatch import run, run_check
from .enrolment import _detect_manager as _detect_manager
from .enrolment import add_enroll_options, policy_from_args
from .limits import MAX_DOC_BYTES
from .policy import ActionPolicy, BackupConfig, PolicyError
from .results import Done, bounded_json, result_of

__all__ = [
    "MAX_DOC_BYTES", "ActionPolicy", "BackupConfig", "Done", "PolicyError", "add_enroll_options",
    "bounded_json", "policy_from_args", "result_of", "run", "run_check",
]
