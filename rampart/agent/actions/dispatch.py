"""Dispatch: the handler of each action (``run``) and of a repeating script check (``run_check``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from rampart import trust

from .backup import _backup_forget_state, _backup_run
from .files import _file
from .host import JobHost
from .inventory import _inventory_refresh
from .limits import log
from .packages import _os_update, _package
from .reboot import _reboot
from .results import Done, Refusal, one_line
from .script import _script

# --- dispatch ----------------------------------------------------------------------------------------


Handler = Callable[[JobHost, trust.Authorization, Mapping[str, bytes]], Done]


def run(agent: JobHost, auth: trust.Authorization, payloads: Mapping[str, bytes]) -> Done:
    """Run one authorized job; every outcome (ran, failed, refused) is a :class:`Done`, never an exception."""
    kind = auth.job.action.kind
    handler = _HANDLERS.get(kind)
    if handler is None:
        return Done("refused", "unsupported-action", f"this agent version cannot run {kind!r} actions")
    try:
        return handler(agent, auth, payloads)
    except Refusal as exc:
        log.warning("refused job %s: %s: %s", auth.job.id, exc.reason, exc.detail)
        return Done("refused", exc.reason, one_line(exc.detail))
    except Exception as exc:  # noqa: BLE001 - a receipt must still say what happened
        log.exception("job %s (%s) failed inside the agent", auth.job.id, kind)
        return Done("failed", detail=one_line(f"the agent failed running this job: {type(exc).__name__}: "
                                              f"{exc}"))


def run_check(agent: JobHost, auth: trust.RepeatAuthorization, script: bytes) -> Done:
    """A later run of a script check (:mod:`rampart.agent.script_checks`): exactly a script job's run."""
    try:
        return _script(agent, auth, {"script": script})
    except Exception as exc:  # noqa: BLE001 - the result must still say what happened
        log.exception("script check %s failed inside the agent", auth.job.id)
        return Done("failed", detail=one_line(f"the agent failed running this check: {type(exc).__name__}: "
                                              f"{exc}"))


_HANDLERS: dict[str, Handler] = {
    "script": _script,
    "file": _file,
    "package": _package,
    "os-update": _os_update,
    "backup-run": _backup_run,
    "backup-forget-state": _backup_forget_state,
    "reboot": _reboot,
    "inventory-refresh": _inventory_refresh,
}
