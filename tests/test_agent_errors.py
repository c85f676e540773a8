"""The agent's errors form one tree (rampart/agent/errors.py), and no agent class reuses a trust name."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import rampart.agent
import rampart.trust
from rampart.agent.errors import AgentError, JobRefused, LocalFault, SpecError


def _agent_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(rampart.agent.__path__, "rampart.agent."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name:
                found[f"{info.name}.{name}"] = obj
    return found


def test_every_agent_exception_is_in_the_agent_error_tree() -> None:
    errors = _agent_exceptions()
    assert len(errors) >= 15
    outside = sorted(n for n, cls in errors.items() if not issubclass(cls, AgentError))
    assert not outside, f"not under rampart.agent.errors.AgentError: {outside}"
    for name, cls in errors.items():
        if cls in (AgentError, JobRefused, LocalFault, SpecError):
            continue
        assert issubclass(cls, (JobRefused, SpecError, LocalFault)), f"{name} is in no family"


def test_job_refusals_carry_a_stable_reason() -> None:
    for name, cls in _agent_exceptions().items():
        if issubclass(cls, JobRefused) and cls is not JobRefused and "reason" in vars(cls):
            assert isinstance(vars(cls)["reason"], str) and vars(cls)["reason"], name
    from rampart.agent.core import MessageError
    from rampart.agent.filedeploy import FileDigestMismatchError, PathRefusedError
    assert (MessageError.reason, FileDigestMismatchError.reason, PathRefusedError.reason) == (
        "malformed", "digest-mismatch", "path-refused")


def test_no_agent_class_shares_a_name_with_the_trust_core() -> None:
    """Two different classes called ``DigestMismatchError`` (or ``Limits``) read alike in a traceback."""
    trust_names = set(rampart.trust.__all__)
    clashes = []
    for info in pkgutil.walk_packages(rampart.agent.__path__, "rampart.agent."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and obj.__module__ == info.name and name in trust_names:
                clashes.append(f"{info.name}.{name}")
    assert not clashes, clashes
