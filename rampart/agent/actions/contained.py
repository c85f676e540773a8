"""Running a job contained (script and file jobs): the required level, the job user, the child."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import rampart
from rampart import trust

from .. import containment, jobscope
from .host import HostConfig, JobHost
from .limits import JOB_PATH, MAX_OUTPUT

# --- contained jobs: script and file -------------------------------------------------------------------


def _required_level(config: HostConfig, run_as: str | None) -> str:
    """The containment a job must get. A job granted root (two approvers and a device
    that allows root) cannot drop to another user, so "full" means everything else."""
    if run_as == "root" and config.require_containment == "full":
        return "filesystem"
    return config.require_containment


def _run_as(agent: JobHost, effective: str) -> str | None:
    """Who a job runs as: root if granted; else, for a root agent, a dynamic user of its own
    (``@dynamic``, the default; also for the shared ``nobody`` of older enrolments), or the
    fixed ``--job-user`` an administrator chose; an unprivileged agent stays itself."""
    if effective == "root":
        return "root" if os.geteuid() == 0 else None
    if os.geteuid() != 0:
        return None
    user = agent.config.job_user
    return containment.DYNAMIC if user in (None, "nobody", containment.DYNAMIC) else user


def _code_root() -> str:
    """The directory holding this copy of the ``rampart`` package (handed to ``python -I``)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(rampart.__file__)))


def _contained(agent: JobHost, auth: trust.Authorization | trust.RepeatAuthorization,
               files: Mapping[str, bytes],
               argv: Callable[[Path], tuple[str, ...]], *,
               as_agent: bool = False) -> containment.ContainedResult:
    """Run ``argv(workdir)`` in the job's sandbox, with ``files`` in a private work directory.

    ``as_agent``: the program is the agent's own code (not the job's), run as the agent's user
    under the job's Landlock rules: the job user may not be able to execute the agent's interpreter.
    """
    run_as = None if as_agent else _run_as(agent, auth.effective.run_as)
    if run_as == containment.DYNAMIC:
        # Lease the job's own uid here, so its work directory can be given to it.
        try:
            user = jobscope.allocate_dynamic_user()
        except jobscope.UidUnavailable as exc:
            return containment.refused_result(time.time(), f"no dynamic user for the job: {exc}")
        with user:
            return _contained_as(agent, auth, files, argv, user, as_agent=as_agent)
    return _contained_as(agent, auth, files, argv, run_as, as_agent=as_agent)


def _contained_as(agent: JobHost, auth: trust.Authorization | trust.RepeatAuthorization,
                  files: Mapping[str, bytes], argv: Callable[[Path], tuple[str, ...]],
                  run_as: str | jobscope.DynamicUser | None, *,
                  as_agent: bool) -> containment.ContainedResult:
    job, eff = auth.job, auth.effective
    workdir = Path(tempfile.mkdtemp(prefix="rampart-job-"))
    try:
        for name, data in files.items():
            (workdir / name).write_bytes(data)
        owner: tuple[int, int] | None = None
        if isinstance(run_as, jobscope.DynamicUser):
            owner = (run_as.uid, run_as.gid)
        elif run_as not in (None, "root"):
            pw = pwd.getpwnam(run_as)
            owner = (pw.pw_uid, pw.pw_gid)
        if owner is not None:
            os.chown(workdir, *owner)
            for name in files:
                os.chown(workdir / name, *owner)
        os.chmod(workdir, 0o500)
        for name in files:
            os.chmod(workdir / name, 0o500)
        home = eff.writes[0] if eff.writes else str(workdir)
        spec = containment.ContainmentSpec(
            argv=argv(workdir), cwd=home,
            env={"PATH": JOB_PATH, "LANG": "C.UTF-8", "RAMPART_JOB_ID": job.id,
                 "RAMPART_DEVICE_ID": agent.device_id, "HOME": home},
            write_paths=eff.writes, deny_read_paths=(str(agent.state_dir.resolve()),),
            connect_ports=eff.connect, run_as=run_as, timeout_s=float(eff.timeout_s),
            max_output_bytes=MAX_OUTPUT,
            require=_required_level(agent.config, "root" if as_agent and os.geteuid() == 0
                                    else run_as if isinstance(run_as, str) else None),
        )
        return containment.run_contained(spec)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
