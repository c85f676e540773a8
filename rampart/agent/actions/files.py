"""The ``file`` handler: write one file, contained, through :mod:`rampart.agent._filejob`."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from rampart import trust

from .contained import _code_root, _contained
from .host import JobHost
from .limits import _FILEJOB_BOOT, _MODE
from .policy import _below, _within
from .results import Done, Refusal, one_line


def _file_args(args: Sequence[str]) -> tuple[str, int]:
    if len(args) != 2:
        raise Refusal("bad-arguments", "a file job's arguments are [DEST, MODE]")
    dest, mode_text = args
    if not dest.startswith("/") or dest.startswith("//") or os.path.normpath(dest) != dest or dest == "/" \
            or any(ord(c) < 0x20 for c in dest) or len(dest) > 1024:
        raise Refusal("bad-arguments", f"the destination must be a normalised absolute file path, "
                                       f"not {dest[:200]!r}")
    m = _MODE.fullmatch(mode_text)
    if m is None:
        raise Refusal("bad-arguments", f"the mode must be octal like 0644, without setuid, setgid or sticky "
                                       f"bits, not {mode_text[:20]!r}")
    return dest, int(m.group(1), 8)


def _file(agent: JobHost, auth: trust.Authorization, payloads: Mapping[str, bytes]) -> Done:
    job = auth.job
    refs = job.action.payloads
    if [p.name for p in refs] != ["file"]:
        raise Refusal("bad-arguments", "a file job carries exactly one payload named 'file'")
    dest, mode = _file_args(job.action.args)
    declared = auth.effective.writes
    if not any(_below(dest, w) for w in declared):
        raise Refusal("capability-not-granted", f"{dest} is not below a path the job declares it writes "
                                                f"({', '.join(declared) or 'none'})")
    protected = [str(agent.state_dir.resolve())]
    roots = [r for r in agent.config.write_roots
             if _below(dest, r) and not any(_within(r, p) for p in protected)]
    if not roots:
        raise Refusal("capability-not-granted", f"{dest} is not below a write root of this device")
    ref = refs[0]

    def argv(workdir: Path) -> tuple[str, ...]:
        spec = {"payload": str(workdir / "file"), "sha256": ref.sha256, "dest": dest, "mode": mode,
                "roots": roots}
        return (sys.executable, "-I", "-c", _FILEJOB_BOOT, _code_root(), json.dumps(spec))

    result = _contained(agent, auth, {"file": payloads["file"]}, argv, as_agent=True)
    if result.refused is not None:
        return Done("refused", "containment-unavailable", result.refused, result)
    if result.timed_out or result.exit_code != 0:
        why = one_line(result.stderr.decode("utf-8", "replace")) or (
            "timed out" if result.timed_out else f"the deployment exited with {result.exit_code}")
        return Done("failed", detail=f"{dest} not written: {why}", result=result)
    return Done("ran", detail=f"wrote {dest} ({ref.size} bytes, mode {mode:04o})", result=result)
