"""The ``script`` handler (also a repeating script check's run)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from rampart import trust

from .contained import _contained
from .host import JobHost
from .results import Done


def _script(agent: JobHost, auth: trust.Authorization | trust.RepeatAuthorization,
            payloads: Mapping[str, bytes]) -> Done:
    script = payloads["script"]
    args = auth.job.action.args

    def argv(workdir: Path) -> tuple[str, ...]:
        path = str(workdir / "script")
        return (path, *args) if script.startswith(b"#!") else ("/bin/sh", path, *args)

    result = _contained(agent, auth, {"script": script}, argv)
    if result.refused is not None:
        return Done("refused", "containment-unavailable", result.refused, result)
    return Done("ran", result=result)
