"""Errors of the agent: one tree, so a caller tells a refused job from a fault of this device.

Two families, never mixed (as in :mod:`rampart.trust.errors`, whose
:class:`~rampart.trust.TrustError` stays the trust core's own tree)::

    AgentError                          every error the agent raises on purpose
    ├── JobRefused                      a job (or a server message) is refused before it runs;
    │   │                               ``reason`` is the receipt's stable refusal slug
    │   ├── Refusal                     a handler refuses the job (actions.py; reason per refusal)
    │   ├── MessageError                a server message is malformed: dropped (core.py; "malformed")
    │   ├── FileDigestMismatchError     a file payload is not the one the job signed
    │   │                               (filedeploy.py; "digest-mismatch"; also a DeployError)
    │   ├── PathRefusedError            a file job's path is outside what it may write
    │   │                               (filedeploy.py; "path-refused"; also a DeployError)
    │   └── SessionEnded                a remote session job ends; ``reason`` is its receipt's
    │                                   end (session/runner.py; never escapes the session)
    ├── SpecError (ValueError)          a value (package name or version, backup repository, path)
    │   │                               is not acceptable; the caller turns it into a Refusal (from a
    │   │                               job) or a PolicyError (from the device policy)
    │   ├── PackageSpecError            patching.py
    │   └── BackupSpecError             backup.py
    └── LocalFault                      this device cannot do its part: configuration, state, kernel
        ├── PolicyError (ValueError)    a device-policy setting is not acceptable (actions.py)
        ├── EnrollError                 enrolment failed (enroll.py)
        ├── StateError                  the agent's durable state is unusable (state.py)
        ├── DeployError                 a file could not be written (filedeploy.py; "io")
        ├── SandboxError                the contained child could not set itself up (sandbox.py)
        ├── LandlockError (OSError)     the Landlock LSM call failed (landlock.py)
        │   └── LandlockUnavailable     this kernel has no (usable) Landlock
        ├── UidUnavailable              no dynamic uid is free for a job (jobscope.py)
        ├── StartRefused                a session's process could not be contained (session/proc.py)
        └── CommandError                an inventory command failed (inventory/_util.py)

Each class is defined in the module that raises it (and stays importable
from there); this module holds only the roots. A refusal's ``reason`` is a
short stable slug for receipts, logs and tests; its message never holds a
secret.

Also renamed here so no two agent classes share a name with another class of
Rampart: the file deployer's digest error is :class:`FileDigestMismatchError`
(the trust core has :class:`~rampart.trust.DigestMismatchError`), and the
containment limits are :class:`~rampart.agent.containment.ContainmentLimits`
(the trust core has :class:`~rampart.trust.Limits`).
"""

from __future__ import annotations

__all__ = ["AgentError", "JobRefused", "LocalFault", "SpecError"]


class AgentError(Exception):
    """Every error the agent raises on purpose (not a bug)."""


class JobRefused(AgentError):
    """A job or server message is refused before anything runs. ``reason`` is a stable slug."""

    reason: str = "refused"


class SpecError(AgentError, ValueError):
    """A value is not acceptable; the caller says whether a job or the device policy gave it."""


class LocalFault(AgentError):
    """This device cannot do its part (configuration, durable state, kernel, resources)."""
