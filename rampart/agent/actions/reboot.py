"""The ``reboot`` handler."""

from __future__ import annotations

import time
from collections.abc import Mapping

from rampart import trust

from .. import _command
from .host import JobHost
from .limits import JOB_PATH
from .results import Done, Refusal, _finished, _no_declarations, _uncontained


def _reboot(agent: JobHost, auth: trust.Authorization, payloads: Mapping[str, bytes]) -> Done:
    """Run the device's own reboot command (``--allow-reboot``); the server chooses only when."""
    job = auth.job
    _no_declarations(job)
    pol = agent.config.actions
    if pol.error or pol.reboot_command is None:
        raise Refusal("not-configured",
                      "reboots are off on this device (rampart-agent enroll --allow-reboot)")
    started = time.time()
    done = _command.run(list(pol.reboot_command), env={"PATH": JOB_PATH, "LC_ALL": "C.UTF-8"},
                        timeout=min(60.0, float(job.timeout_s)), max_stdout=4096, max_tail=4096,
                        merge_stderr=True)
    doc = {"schema": 1, "action": "reboot", "command": list(pol.reboot_command), "exit_code": done.returncode,
           "output_tail": done.tail[-2000:]}
    why = done.error or f"exit status {done.returncode}"
    return _finished(ok=done.ok, doc=doc, error="" if done.ok else f"the reboot command failed: {why}",
                     summary="reboot requested" if done.ok else "the reboot command failed", started=started,
                     applied=_uncontained(job.timeout_s))
