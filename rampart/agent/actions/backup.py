"""The backup handlers: ``backup-run`` (a BorgBackup run of the configured paths, then a restore check)
and ``backup-forget-state`` (borg's record of the device's repository dropped after a vault rollback)."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec

from rampart import trust

from .. import backup
from .host import JobHost
from .policy import BackupConfig, _within
from .results import Done, Refusal, _finished, _no_declarations, _uncontained, one_line

# --- backups -----------------------------------------------------------------------------------------------


def _backup_limits(seconds: float) -> backup.BackupLimits:
    d = backup.DEFAULT_LIMITS
    s = max(1.0, seconds)
    return replace(d, init_timeout_s=min(d.init_timeout_s, s), create_timeout_s=min(d.create_timeout_s, s),
                   check_timeout_s=min(d.check_timeout_s, s), list_timeout_s=min(d.list_timeout_s, s),
                   extract_timeout_s=min(d.extract_timeout_s, s))


def _restore_samples(cfg: BackupConfig, skip: Sequence[str]) -> list[str]:
    """Up to ``cfg.restore_samples`` regular files the archive must hold (not excluded, same file system)."""
    if cfg.restore_samples == 0:
        return []
    rng = random.SystemRandom()
    found = backup.sample_files(list(cfg.paths), cfg.restore_samples + 16, rng=rng)
    found += [p for p in cfg.paths if os.path.isfile(p) and not os.path.islink(p)]  # a path that is a file
    out = []
    for path in rng.sample(found, len(found)):
        if any(_within(path, x) for x in skip):
            continue
        top = next((p for p in cfg.paths if _within(path, p)), None)
        try:
            if top is None or os.lstat(path).st_dev != os.stat(top).st_dev:
                continue  # borg create --one-file-system leaves it out
        except OSError:
            continue
        out.append(path)
        if len(out) == cfg.restore_samples:
            break
    return sorted(out)


def _backup_run(agent: JobHost, auth: trust.Authorization, payloads: Mapping[str, bytes]) -> Done:
    job = auth.job
    _no_declarations(job)
    pol = agent.config.actions
    if pol.error:
        raise Refusal("not-configured", f"the device policy's backup settings are invalid: {pol.error}")
    cfg = pol.backup
    if cfg is None:
        raise Refusal("not-configured", "no backup is configured on this device (rampart-agent enroll "
                                        "--backup-repo ... --backup-path ...)")
    deadline = time.monotonic() + job.timeout_s
    started = time.time()

    def repo() -> backup.BorgRepo:
        assert cfg is not None
        return backup.BorgRepo(location=cfg.repository, passphrase_file=Path(cfg.passphrase_file),
                               base_dir=agent.state_dir / "borg", rsh=cfg.rsh,
                               limits=_backup_limits(deadline - time.monotonic()))

    state = str(agent.state_dir.resolve())
    skip = [*cfg.excludes, state]
    name = backup.validate_archive_name(f"{backup.archive_name(agent.device_id, started)}-{job.id[4:12]}")
    made = backup.create_archive(repo(), list(cfg.paths), name=name,
                                 excludes=[f"pp:{p}" for p in skip], compression=cfg.compression)
    doc: dict[str, Any] = {"schema": 1, "action": "backup-run", "repository": cfg.repository,
                           "archive": msgspec.to_builtins(made), "check": None,
                           "restore_test": None}
    if not made.ok:
        return _finished(ok=False, doc=doc, error=f"borg create failed: {made.error}",
                         summary=f"no archive was made: {one_line(made.error, 300)}", started=started,
                         applied=_uncontained(job.timeout_s))
    checked = backup.check(repo())
    doc["check"] = msgspec.to_builtins(checked)
    samples = _restore_samples(cfg, skip)
    tested = backup.restore_test(repo(), made.name, samples) if samples else []
    passed: bool | None = backup.restore_test_passed(tested) if cfg.restore_samples else None
    doc["restore_test"] = {"passed": passed, "requested": cfg.restore_samples,
                           "samples": sorted(msgspec.to_builtins(tested), key=lambda s: (s["ok"], s["path"]))}
    errors = []
    if not checked.ok:
        errors.append(f"borg check failed: {checked.error}")
    if passed is False:
        bad = [f"{s.path} {s.status}" for s in tested if not s.ok] or ["no file could be sampled"]
        errors.append("restore test failed: " + ", ".join(bad[:5]))
    ok = not errors
    summary = (f"archive {made.name}: {made.nfiles} files, {made.original_size} bytes "
               f"({made.deduplicated_size} new); check {'ok' if checked.ok else 'FAILED'}; restore test "
               + ("skipped" if passed is None else f"{sum(1 for s in tested if s.ok)}/{len(tested)} matched"))
    if made.warning:
        summary += "; some files could not be read"
    return _finished(ok=ok, doc=doc, error="; ".join(errors), summary=summary, started=started,
                     applied=_uncontained(job.timeout_s))


def _backup_forget_state(agent: JobHost, auth: trust.Authorization, payloads: Mapping[str, bytes]) -> Done:
    """``backup-forget-state``: drop borg's record of the device's own repository, after a vault rollback.

    The target is never the job's choice: the action takes no arguments (the
    trust core refuses any), and the repository is the one the device's backup
    policy names; only borg's replay record of it (the manifest timestamp in
    its security directory, and its cache) below the agent's ``BORG_BASE_DIR``
    goes (:func:`rampart.agent.backup.forget_repository_state`).
    Then the repository is listed once, so the receipt shows which history the
    device accepts from now on (or why it still cannot open it).
    """
    job = auth.job
    _no_declarations(job)
    pol = agent.config.actions
    if pol.error:
        raise Refusal("not-configured", f"the device policy's backup settings are invalid: {pol.error}")
    cfg = pol.backup
    if cfg is None:
        raise Refusal("not-configured", "no backup is configured on this device: there is no borg state "
                                        "to forget")
    started = time.time()
    repo = backup.BorgRepo(location=cfg.repository, passphrase_file=Path(cfg.passphrase_file),
                           base_dir=agent.state_dir / "borg", rsh=cfg.rsh,
                           limits=_backup_limits(job.timeout_s))
    forgot = backup.forget_repository_state(repo)
    doc: dict[str, Any] = {"schema": 1, "action": "backup-forget-state", "repository": cfg.repository,
                           "cleared": msgspec.to_builtins(forgot.cleared), "error": forgot.error,
                           "after": None}
    if not forgot.ok:
        return _finished(ok=False, doc=doc, error=forgot.error,
                         summary=f"borg's state was not (fully) cleared: {one_line(forgot.error, 300)}",
                         started=started, applied=_uncontained(job.timeout_s))
    archives, error = backup.list_archives_checked(repo)
    last = archives[-1] if archives else None
    doc["after"] = {"ok": not error, "archives": len(archives), "last_archive": last.name if last else "",
                    "last_archive_time": last.time if last else None, "error": error}
    parts = [f"{c.id[:12]}… (" + " and ".join(x for x, y in (("manifest timestamp", c.manifest_timestamp),
                                                             ("cache", c.cache)) if y) + ")"
             for c in forgot.cleared]
    what = "cleared " + ", ".join(parts) if parts else "nothing to clear"
    summary = f"borg's record of {cfg.repository}: {what}; " + (
        f"the repository opens: {len(archives)} archive(s)" + (f", last {last.name}" if last else "")
        if not error else f"the repository does not open yet: {one_line(error, 300)}")
    return _finished(ok=True, doc=doc, error="", summary=summary, started=started,
                     applied=_uncontained(job.timeout_s))
