"""Backups with BorgBackup into an append-only repository: the agent's engine (issue 6, K1, S4).

What the agent may do to a repository: create archives, list them, check
them, and extract sample files into a private temporary directory to prove
they restore (a restore test). It can never delete, prune, compact or rewrite
backup history, and neither can anything that takes over the agent or the
RMM server (T1, T9): that is S4, the air gap.

How that holds (docs/backup-vault.md, docs/design/patching-backup.md):

* **The repository lives on a vault host**, reached over SSH with a key whose
  ``authorized_keys`` entry forces ``borg serve --append-only
  --restrict-to-repository <this device's repository> --storage-quota ...``.
  Whatever borg command the client runs, the server side only appends: a
  ``delete``, ``prune`` or re-created archive is recorded as a new
  transaction on top of the old segments, never in place of them, and
  ``compact`` does nothing. The vault holder can roll the repository back to
  the last good transaction (the offline procedure in docs/backup-vault.md).
* **The repository itself is append-only too** (``append_only = 1`` in its
  config, set by :func:`init_repository`), so even a vault-side mistake of
  serving it without ``--append-only`` keeps history.
* **Prune and compact** need the vault credential: a login on the vault
  host (or an SSH key not forced to ``--append-only``) that Rampart, the
  agent and the RMM server never hold.

Secrets: the repository passphrase is read by the agent from a file that
must be a regular file owned by the agent's user with no group or other
permission bits, and handed to borg through a pipe (``BORG_PASSPHRASE_FD``):
it is never on a command line, in an environment variable or in a log or
result.

Commands run with :mod:`rampart.agent._command` (fixed PATH, no shell, a fixed
environment, time limits, bounded output); borg's own state (keys, cache,
the security directory that detects a repository being swapped or rolled
back) lives in ``BorgRepo.base_dir``, not in a home directory.

Errors: :class:`BackupSpecError` (a ``ValueError``) for invalid arguments
from the caller (a location, archive name or path that is not acceptable),
raised before anything runs. Everything else is a result with ``ok`` False
and an ``error``: the functions never raise for a failing borg.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shlex
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from . import _command
from .errors import LocalFault, SpecError


class BackupSpecError(SpecError):
    """A repository location, archive name, path or setting given by the caller is not acceptable."""


@dataclass(frozen=True, slots=True)
class BackupLimits:
    """Every duration and size the engine bounds."""

    init_timeout_s: float = 300.0
    create_timeout_s: float = 6 * 3600.0
    check_timeout_s: float = 6 * 3600.0
    list_timeout_s: float = 600.0
    extract_timeout_s: float = 3600.0
    #: How long borg waits for the repository lock (another backup, a vault-side check).
    lock_wait_s: int = 120
    max_json_bytes: int = 64 << 20
    max_output_tail: int = 16 << 10
    max_passphrase_bytes: int = 4096
    max_paths: int = 256
    max_excludes: int = 256
    max_samples: int = 64
    #: Largest file a restore test extracts and hashes.
    max_sample_bytes: int = 256 << 20
    #: Directory entries :func:`sample_files` looks at before choosing.
    max_sample_walk: int = 100_000


DEFAULT_LIMITS = BackupLimits()

_LOCAL_LOCATION = re.compile(r"/[^\x00-\x1f:]*")
_SSH_LOCATION = re.compile(r"ssh://(?:[A-Za-z0-9._\-]{1,64}@)?[A-Za-z0-9.\-]{1,253}(?::[0-9]{1,5})?/[^\x00-\x1f:]*")
_ARCHIVE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+\-]{0,127}")
_ENCRYPTION = frozenset({"repokey-blake2", "repokey", "keyfile-blake2", "keyfile"})
_COMPRESSION = re.compile(r"(?:none|lz4|zstd(?:,[0-9]{1,2})?|zlib(?:,[0-9])?|lzma(?:,[0-9])?"
                          r"|auto,\w+(?:,[0-9]+)?)")


def validate_location(location: str) -> str:
    """A local absolute path or ``ssh://[user@]host[:port]/path``; no ``::`` (borg's archive separator)."""
    if not isinstance(location, str) or not (
            (_LOCAL_LOCATION.fullmatch(location) and os.path.normpath(location) == location)
            or _SSH_LOCATION.fullmatch(location)):
        raise BackupSpecError(f"not an acceptable repository location: {str(location)[:200]!r}")
    return location


def validate_archive_name(name: str) -> str:
    """Letters, digits and ``. _ + -``, starting alphanumeric: no borg placeholders (``{now}``), no ``::``."""
    if not isinstance(name, str) or not _ARCHIVE_NAME.fullmatch(name):
        raise BackupSpecError(f"not an acceptable archive name: {str(name)[:200]!r}")
    return name


def validate_path(path: str) -> str:
    """A normalised absolute path without control characters (so never an option or a pattern)."""
    if not isinstance(path, str) or not path.startswith("/") or os.path.normpath(path) != path \
            or path.startswith("//") or any(ord(c) < 0x20 for c in path):
        raise BackupSpecError(f"not a normalised absolute path: {str(path)[:200]!r}")
    return path


def validate_exclude(pattern: str) -> str:
    """An exclude given as one ``--exclude=...`` argument; control characters refused."""
    if not isinstance(pattern, str) or not pattern or len(pattern) > 1024 \
            or any(ord(c) < 0x20 for c in pattern):
        raise BackupSpecError(f"not an acceptable exclude pattern: {str(pattern)[:200]!r}")
    return pattern


@dataclass(frozen=True)
class BorgRepo:
    """One device's repository and how the agent reaches it.

    ``location``: a local path (tests, or a vault disk mounted on the device:
    not an air gap, see docs/backup-vault.md) or ``ssh://...`` to the vault.
    ``rsh``: the command borg uses instead of plain ``ssh`` (for example
    ``["ssh", "-i", "/var/lib/rampart-agent/vault_ed25519", "-o", "BatchMode=yes"]``).
    ``passphrase_file``: the repository passphrase (mode 0600 or stricter,
    owned by the agent's user). ``base_dir``: borg's keys, cache and
    security state for this agent (``BORG_BASE_DIR``).
    """

    location: str
    passphrase_file: Path
    base_dir: Path
    rsh: tuple[str, ...] | None = None
    limits: BackupLimits = field(default=DEFAULT_LIMITS)

    def __post_init__(self) -> None:
        validate_location(self.location)
        if not self.base_dir.is_absolute() or not self.passphrase_file.is_absolute():
            raise BackupSpecError("base_dir and passphrase_file must be absolute paths")
        if self.rsh is not None and (not self.rsh or any(not isinstance(a, str) or "\0" in a
                                                         for a in self.rsh)):
            raise BackupSpecError("rsh must be a non-empty argv")

    def archive(self, name: str) -> str:
        return f"{self.location}::{validate_archive_name(name)}"


# --- results ---------------------------------------------------------------------------------------


class _Struct(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class BorgResult(_Struct, frozen=True, kw_only=True):
    """A borg command that only succeeds or fails (init)."""

    ok: bool
    exit_code: int | None = None
    error: str = ""
    output_tail: str = ""
    duration_s: float = 0.0


class ArchiveResult(_Struct, frozen=True, kw_only=True):
    """One :func:`create_archive` run. ``warning``: borg finished but could not read some files."""

    ok: bool
    name: str
    id: str = ""
    start: float = 0.0
    end: float = 0.0
    nfiles: int = 0
    original_size: int = 0
    compressed_size: int = 0
    deduplicated_size: int = 0
    warning: bool = False
    exit_code: int | None = None
    error: str = ""
    output_tail: str = ""
    duration_s: float = 0.0


class CheckResult(_Struct, frozen=True, kw_only=True):
    """One ``borg check``: repository segments and index, archive metadata, optionally every chunk's data."""

    ok: bool
    time: float
    verify_data: bool = False
    repository_only: bool = False
    exit_code: int | None = None
    error: str = ""
    output_tail: str = ""
    duration_s: float = 0.0


class ArchiveInfo(_Struct, frozen=True, kw_only=True):
    name: str
    id: str
    #: When the archive was started (Unix time).
    time: float


SampleStatus = Literal["match", "mismatch", "changed-since-backup", "missing-in-archive", "not-regular",
                       "too-large", "live-missing", "error"]


class RestoreSample(_Struct, frozen=True, kw_only=True):
    """One sample file of a restore test. ``ok`` only when the restored bytes match (``status`` "match")."""

    path: str
    ok: bool
    status: SampleStatus
    #: SHA-256 of the restored file ("" when nothing was restored).
    digest: str = ""
    #: What it was compared with: the recorded digest, or the live file's.
    expected: str = ""
    error: str = ""


class BackupStatus(_Struct, frozen=True, kw_only=True):
    archive_count: int = 0
    last_archive: str = ""
    last_archive_time: float | None = None
    #: Seconds since the last archive (None when there is none).
    age_s: float | None = None
    #: No archive, or the last one is older than the policy allows.
    stale: bool = True
    last_check_time: float | None = None
    last_check_ok: bool | None = None
    #: No check, a failed one, or the last one is older than the policy allows.
    check_stale: bool = True
    error: str = ""


Seconds = Annotated[int, Meta(ge=60, le=366 * 86400)]
Keep = Annotated[int, Meta(ge=0, le=10_000)]


class BackupPolicy(_Struct, frozen=True, kw_only=True):
    """A device's backup policy, as an approver signs it into the device's standing grant.

    The agent uses ``paths``, ``excludes``, ``compression``, the intervals and
    ``restore_samples``. ``keep_*`` is the retention the *vault holder*
    applies offline with ``borg prune`` (docs/backup-vault.md); the agent can
    never prune, so it only reports it.
    """

    paths: Annotated[list[str], Meta(min_length=1, max_length=256)]
    excludes: Annotated[list[str], Meta(max_length=256)] = []
    compression: str = "zstd,3"
    #: How often to back up, and when the last archive counts as stale.
    interval_s: Seconds = 86400
    max_age_s: Seconds = 2 * 86400
    #: How often to run ``borg check`` (repository and archives) and a restore test.
    check_interval_s: Seconds = 7 * 86400
    restore_samples: Annotated[int, Meta(ge=0, le=64)] = 8
    keep_daily: Keep = 7
    keep_weekly: Keep = 4
    keep_monthly: Keep = 12

    def __post_init__(self) -> None:
        for p in self.paths:
            validate_path(p)
        for e in self.excludes:
            validate_exclude(e)
        if not _COMPRESSION.fullmatch(self.compression):
            raise BackupSpecError(f"unknown compression {self.compression[:40]!r}")
        if self.max_age_s < self.interval_s:
            raise BackupSpecError("max_age_s must be at least interval_s")


def archive_name(prefix: str, now: float) -> str:
    """``<prefix>-YYYY-MM-DDTHH-MM-SSZ`` (UTC): sortable, no borg placeholders, no colons."""
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H-%M-%SZ")
    return validate_archive_name(f"{prefix}-{stamp}")


# --- running borg ----------------------------------------------------------------------------------


class _PassphraseError(LocalFault):
    pass


def _read_passphrase(path: Path, limit: int) -> bytes:
    """The passphrase from ``path``: a regular file, ours, no group/other bits, not a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise _PassphraseError(f"passphrase file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _PassphraseError(f"passphrase file {path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise _PassphraseError(f"passphrase file {path} is not owned by the agent's user")
        if st.st_mode & 0o077:
            raise _PassphraseError(f"passphrase file {path} is accessible to group or others "
                                   f"(mode {st.st_mode & 0o777:o}); it must be 0600 or stricter")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise _PassphraseError(f"passphrase file {path} is larger than {limit} bytes")
    data = data[:-1] if data.endswith(b"\n") else data
    if not data or b"\0" in data:
        raise _PassphraseError(f"passphrase file {path} is empty or holds a NUL byte")
    return data


def _env(repo: BorgRepo, passphrase_fd: int | None) -> dict[str, str]:
    env = {
        "PATH": _command.SAFE_PATH, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "TZ": "UTC",
        "HOME": str(repo.base_dir), "BORG_BASE_DIR": str(repo.base_dir),
        # Never answer borg's questions with yes: a repository moved, swapped for an unencrypted one,
        # or a dangerous command all stop instead.
        "BORG_RELOCATED_REPO_ACCESS_IS_OK": "no", "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "no",
        "BORG_CHECK_I_KNOW_WHAT_I_AM_DOING": "NO", "BORG_DELETE_I_KNOW_WHAT_I_AM_DOING": "NO",
        "BORG_DISPLAY_PASSPHRASE": "no",
    }
    if passphrase_fd is not None:
        env["BORG_PASSPHRASE_FD"] = str(passphrase_fd)
    if repo.rsh is not None:
        env["BORG_RSH"] = shlex.join(repo.rsh)
    return env


@contextmanager
def _passphrase_pipe(repo: BorgRepo) -> Iterator[int]:
    """A pipe's read end holding the passphrase (written whole, then closed): BORG_PASSPHRASE_FD."""
    secret = _read_passphrase(repo.passphrase_file, repo.limits.max_passphrase_bytes)
    r, w = os.pipe()
    try:
        os.write(w, secret)  # far below the pipe's capacity: never blocks
        os.close(w)
        w = -1
        yield r
    finally:
        if w >= 0:
            os.close(w)
        os.close(r)


def _borg(repo: BorgRepo, args: Sequence[str], *, timeout: float, cwd: str = "/",
          needs_key: bool = True) -> _command.Completed:
    base = ["borg", "--lock-wait", str(repo.limits.lock_wait_s)]
    repo.base_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not needs_key:
        return _command.run([*base, *args], env=_env(repo, None), timeout=timeout, cwd=cwd,
                            max_stdout=repo.limits.max_json_bytes, max_tail=repo.limits.max_output_tail)
    with _passphrase_pipe(repo) as fd:
        return _command.run([*base, *args], env=_env(repo, fd), timeout=timeout, cwd=cwd, pass_fds=(fd,),
                            max_stdout=repo.limits.max_json_bytes, max_tail=repo.limits.max_output_tail)


def _failure(done: _command.Completed) -> str:
    if done.error:
        return done.error
    lines = [x for x in done.tail.strip().splitlines() if x.strip()]
    # borg's last lines name the exception or error; tracebacks from the server come before them.
    return f"borg exited with status {done.returncode}: " + " | ".join(lines[-3:])[:1000]


def _parse_time(text: str) -> float:
    """borg's ISO time (UTC, since TZ=UTC) as Unix time; 0.0 when unreadable."""
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()
    except (TypeError, ValueError):
        return 0.0


# --- operations -----------------------------------------------------------------------------------------


def init_repository(repo: BorgRepo, *, append_only: bool = True,
                    encryption: str = "repokey-blake2") -> BorgResult:
    """Create the repository (encrypted with the passphrase; ``append_only = 1`` in its config).

    For tests and for the vault holder's setup (docs/backup-vault.md): in
    production the vault holder creates the repository on the vault host,
    exports its key to offline storage and only then gives the device its
    append-only SSH key.
    """
    if encryption not in _ENCRYPTION:
        raise BackupSpecError(f"unsupported encryption mode {encryption!r}")
    t0 = time.monotonic()
    args = ["init", f"--encryption={encryption}", *(["--append-only"] if append_only else []), "--",
            repo.location]
    try:
        done = _borg(repo, args, timeout=repo.limits.init_timeout_s)
    except _PassphraseError as exc:
        return BorgResult(ok=False, error=str(exc))
    return BorgResult(ok=done.ok, exit_code=done.returncode, error="" if done.ok else _failure(done),
                      output_tail=done.tail, duration_s=time.monotonic() - t0)


def create_archive(repo: BorgRepo, paths: Sequence[str], *, name: str, excludes: Sequence[str] = (),
                   compression: str = "zstd,3", one_file_system: bool = True) -> ArchiveResult:
    """Back up ``paths`` into a new archive ``name``. An existing name is never overwritten (borg refuses).

    Exit status 1 (some files could not be read) is ``ok`` with ``warning``.
    """
    validate_archive_name(name)
    if not paths or len(paths) > repo.limits.max_paths:
        raise BackupSpecError(f"between 1 and {repo.limits.max_paths} paths are needed")
    for p in paths:
        validate_path(p)
    if len(excludes) > repo.limits.max_excludes:
        raise BackupSpecError(f"more than {repo.limits.max_excludes} excludes")
    for e in excludes:
        validate_exclude(e)
    if not _COMPRESSION.fullmatch(compression):
        raise BackupSpecError(f"unknown compression {compression[:40]!r}")
    t0 = time.monotonic()
    args = ["create", "--json", f"--compression={compression}", "--exclude-caches",
            *(["--one-file-system"] if one_file_system else []), *(f"--exclude={e}" for e in excludes),
            "--", repo.archive(name), *paths]
    try:
        done = _borg(repo, args, timeout=repo.limits.create_timeout_s)
    except _PassphraseError as exc:
        return ArchiveResult(ok=False, name=name, error=str(exc))
    took = time.monotonic() - t0
    if done.error or done.returncode not in (0, 1):
        return ArchiveResult(ok=False, name=name, exit_code=done.returncode, error=_failure(done),
                             output_tail=done.tail, duration_s=took)
    try:
        info = msgspec.json.decode(done.stdout)["archive"]
        stats = info.get("stats", {})
        return ArchiveResult(
            ok=True, name=str(info["name"]), id=str(info["id"]), start=_parse_time(info.get("start", "")),
            end=_parse_time(info.get("end", "")), nfiles=int(stats.get("nfiles", 0)),
            original_size=int(stats.get("original_size", 0)),
            compressed_size=int(stats.get("compressed_size", 0)),
            deduplicated_size=int(stats.get("deduplicated_size", 0)), warning=done.returncode == 1,
            exit_code=done.returncode, output_tail=done.tail, duration_s=took)
    except (msgspec.DecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        return ArchiveResult(ok=False, name=name, exit_code=done.returncode, output_tail=done.tail,
                             error=f"borg create succeeded but its JSON was unreadable: {exc}",
                             duration_s=took)


def check(repo: BorgRepo, *, verify_data: bool = False, repository_only: bool = False) -> CheckResult:
    """``borg check``: segments and index, then archive metadata (every chunk's data with ``verify_data``).

    Never ``--repair``: repairing is the vault holder's decision (and an
    append-only server refuses it anyway).
    """
    now = time.time()
    t0 = time.monotonic()
    args = ["check", *(["--verify-data"] if verify_data else []),
            *(["--repository-only"] if repository_only else []), "--", repo.location]
    try:
        done = _borg(repo, args, timeout=repo.limits.check_timeout_s, needs_key=not repository_only)
    except _PassphraseError as exc:
        return CheckResult(ok=False, time=now, verify_data=verify_data, repository_only=repository_only,
                           error=str(exc))
    return CheckResult(ok=done.ok, time=now, verify_data=verify_data, repository_only=repository_only,
                       exit_code=done.returncode, error="" if done.ok else _failure(done),
                       output_tail=done.tail, duration_s=time.monotonic() - t0)


def list_archives_checked(repo: BorgRepo) -> tuple[list[ArchiveInfo], str]:
    """(archives oldest first, error); error is "" on success."""
    try:
        done = _borg(repo, ["list", "--json", "--", repo.location], timeout=repo.limits.list_timeout_s)
    except _PassphraseError as exc:
        return [], str(exc)
    if not done.ok:
        return [], _failure(done)
    try:
        raw = msgspec.json.decode(done.stdout)["archives"]
        out = [ArchiveInfo(name=str(a["name"]), id=str(a["id"]),
                           time=_parse_time(a.get("start") or a["time"])) for a in raw]
    except (msgspec.DecodeError, KeyError, TypeError) as exc:
        return [], f"borg list succeeded but its JSON was unreadable: {exc}"
    return sorted(out, key=lambda a: (a.time, a.name)), ""


def list_archives(repo: BorgRepo) -> list[ArchiveInfo]:
    """Archives in the repository, oldest first ([] when borg cannot list: see list_archives_checked)."""
    return list_archives_checked(repo)[0]


def _hash_file(path: Path, limit: int) -> tuple[str, str]:
    """(sha256 hex, "") or ("", status) for a file opened without following symlinks."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return "", "missing"
    except OSError:
        return "", "not-regular"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "", "not-regular"
        if st.st_size > limit:
            return "", "too-large"
        h = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
        return h.hexdigest(), ""
    finally:
        os.close(fd)


def restore_test(repo: BorgRepo, archive: str, samples: Mapping[str, str | None] | Sequence[str], *,
                 workdir: Path | None = None) -> list[RestoreSample]:
    """Extract sample files of ``archive`` into a private temporary directory and compare their SHA-256.

    ``samples`` maps absolute paths to the digest recorded when they were
    backed up, or None to compare with the live file; a live file whose
    mtime differs from the archived one is "changed-since-backup" (nothing to
    compare with, not a failure of the backup). A sequence means all None.
    Extracted files are opened without following symlinks and the directory
    is removed afterwards.
    """
    validate_archive_name(archive)
    wanted: dict[str, str | None] = dict(samples) if isinstance(samples, Mapping) else dict.fromkeys(samples)
    if len(wanted) > repo.limits.max_samples:
        raise BackupSpecError(f"more than {repo.limits.max_samples} samples")
    for p, digest in wanted.items():
        validate_path(p)
        if digest is not None and not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise BackupSpecError(f"recorded digest for {p[:200]} is not a SHA-256 hex digest")
    if not wanted:
        return []
    patterns = [f"pp:{p.lstrip('/')}" for p in sorted(wanted)]

    def all_failed(message: str) -> list[RestoreSample]:
        return [RestoreSample(path=p, ok=False, status="error", expected=d or "", error=message[:1000])
                for p, d in sorted(wanted.items())]

    # What the archive holds for these paths (type, size, mtime), before extracting anything.
    try:
        listed = _borg(repo, ["list", "--json-lines", "--", repo.archive(archive), *patterns],
                       timeout=repo.limits.list_timeout_s)
    except _PassphraseError as exc:
        return all_failed(str(exc))
    if not listed.ok:
        return all_failed(_failure(listed))
    items: dict[str, dict[str, object]] = {}
    for line in listed.stdout.splitlines():
        try:
            item = msgspec.json.decode(line)
        except msgspec.DecodeError:
            continue
        if isinstance(item, dict) and isinstance(item.get("path"), str):
            items["/" + item["path"]] = item
    results: dict[str, RestoreSample] = {}
    to_extract: list[str] = []
    for p, digest in sorted(wanted.items()):
        item = items.get(p)
        if item is None:
            results[p] = RestoreSample(path=p, ok=False, status="missing-in-archive", expected=digest or "")
        elif item.get("type") != "-":
            results[p] = RestoreSample(path=p, ok=False, status="not-regular", expected=digest or "")
        elif not isinstance(item.get("size"), int) or int(str(item["size"])) > repo.limits.max_sample_bytes:
            results[p] = RestoreSample(path=p, ok=False, status="too-large", expected=digest or "")
        else:
            to_extract.append(p)
    if to_extract:
        parent = workdir or repo.base_dir / "restore-tests"
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="restore-", dir=parent))
        try:
            try:
                done = _borg(repo, ["extract", "--", repo.archive(archive),
                                    *(f"pp:{p.lstrip('/')}" for p in to_extract)],
                             timeout=repo.limits.extract_timeout_s, cwd=str(tmp))
            except _PassphraseError as exc:
                return all_failed(str(exc))
            extract_error = "" if done.returncode in (0, 1) and not done.error else _failure(done)
            for p in to_extract:
                results[p] = _compare(p, wanted[p], tmp / p.lstrip("/"), items[p], extract_error,
                                      repo.limits.max_sample_bytes)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return [results[p] for p in sorted(results)]


def _compare(path: str, recorded: str | None, restored: Path, item: Mapping[str, object], extract_error: str,
             limit: int) -> RestoreSample:
    digest, problem = _hash_file(restored, limit)
    if problem:
        status: SampleStatus = "error" if problem == "missing" else problem  # type: ignore[assignment]
        return RestoreSample(path=path, ok=False, status=status, expected=recorded or "",
                             error=extract_error or f"restored file is {problem}")
    if recorded is not None:
        ok = digest == recorded
        return RestoreSample(path=path, ok=ok, status="match" if ok else "mismatch", digest=digest,
                             expected=recorded)
    try:
        live = os.lstat(path)
    except OSError:
        return RestoreSample(path=path, ok=False, status="live-missing", digest=digest)
    archived_mtime = _parse_time(str(item.get("mtime", "")))
    if not stat.S_ISREG(live.st_mode) or abs(live.st_mtime_ns / 1e9 - archived_mtime) > 1e-5:
        return RestoreSample(path=path, ok=False, status="changed-since-backup", digest=digest)
    live_digest, problem = _hash_file(Path(path), limit)
    if problem:
        return RestoreSample(path=path, ok=False, status="changed-since-backup", digest=digest)
    ok = digest == live_digest
    return RestoreSample(path=path, ok=ok, status="match" if ok else "mismatch", digest=digest,
                         expected=live_digest)


def restore_test_passed(samples: Sequence[RestoreSample]) -> bool:
    """At least one sample matched and none failed (files changed since the backup are neutral)."""
    return any(s.ok for s in samples) and all(s.ok or s.status == "changed-since-backup" for s in samples)


def sample_files(paths: Sequence[str], count: int, *, rng: random.Random | None = None,
                 max_bytes: int = DEFAULT_LIMITS.max_sample_bytes,
                 max_walk: int = DEFAULT_LIMITS.max_sample_walk) -> list[str]:
    """Up to ``count`` regular files below ``paths`` chosen uniformly (reservoir sampling), sorted.

    Symlinks are neither followed nor chosen; at most ``max_walk`` entries are
    looked at; files larger than ``max_bytes`` or empty are skipped.
    """
    for p in paths:
        validate_path(p)
    rng = rng or random.SystemRandom()
    chosen: list[str] = []
    seen = walked = 0
    for top in paths:
        for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
            dirnames.sort()
            for name in sorted(filenames):
                walked += 1
                if walked > max_walk:
                    return sorted(chosen)
                full = os.path.join(dirpath, name)
                try:
                    st = os.lstat(full)
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode) or not 0 < st.st_size <= max_bytes \
                        or any(ord(c) < 0x20 for c in full):
                    continue
                seen += 1
                if len(chosen) < count:
                    chosen.append(full)
                elif (j := rng.randrange(seen)) < count:
                    chosen[j] = full
    return sorted(chosen)


def summarize(archives: Sequence[ArchiveInfo], *, now: float, max_age_s: float,
              last_check: CheckResult | None = None, check_max_age_s: float | None = None,
              error: str = "") -> BackupStatus:
    """The backup status from an archive list and the last check (pure)."""
    last = max(archives, key=lambda a: (a.time, a.name)) if archives else None
    age = None if last is None else max(0.0, now - last.time)
    check_stale = last_check is None or not last_check.ok or (
        check_max_age_s is not None and now - last_check.time > check_max_age_s)
    return BackupStatus(archive_count=len(archives), last_archive=last.name if last else "",
                        last_archive_time=last.time if last else None, age_s=age,
                        stale=bool(error) or age is None or age > max_age_s,
                        last_check_time=last_check.time if last_check else None,
                        last_check_ok=last_check.ok if last_check else None, check_stale=check_stale,
                        error=error)


def status(repo: BorgRepo, *, now: float, max_age_s: float, last_check: CheckResult | None = None,
           check_max_age_s: float | None = None) -> BackupStatus:
    """Last archive, its age and staleness, and the last check's result (lists the repository)."""
    archives, error = list_archives_checked(repo)
    return summarize(archives, now=now, max_age_s=max_age_s, last_check=last_check,
                     check_max_age_s=check_max_age_s, error=error)


class ForgottenRepository(_Struct, frozen=True, kw_only=True):
    """borg's replay record of one repository id that :func:`forget_repository_state` removed."""

    #: The repository id (64 hex digits): the directory name under ``security/`` and the cache.
    id: str
    #: Whether the newest manifest timestamp borg had seen (``security/<id>/manifest-timestamp``) was removed.
    manifest_timestamp: bool
    #: Whether its cache (``.cache/borg/<id>``, which records that timestamp too) was removed.
    cache: bool


class ForgetResult(_Struct, frozen=True, kw_only=True):
    """What :func:`forget_repository_state` removed; ``ok`` False when something could not be removed."""

    ok: bool
    cleared: list[ForgottenRepository] = []
    error: str = ""


_REPO_ID = re.compile(r"[0-9a-f]{64}")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Largest ``location`` (security directory) or cache ``config`` file read.
_MAX_STATE_FILE = 64 << 10
_MANIFEST_TIMESTAMP = "manifest-timestamp"


class _StateError(LocalFault):
    """borg's state directory holds something other than plain directories and files where it must."""


def _open_dir(parent: int, name: str) -> int | None:
    """``name`` below the open directory ``parent`` without following a symlink; None when absent."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _StateError(f"{name}: not a plain directory ({exc.strerror})") from None


def _read_small(parent: int, name: str) -> str | None:
    """A small regular file below ``parent``, not through a symlink; None when absent or not regular."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=parent)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, _MAX_STATE_FILE).decode("utf-8", errors="replace")
    finally:
        os.close(fd)


def _cache_location(text: str) -> str:
    """``[cache] previous_location`` of a borg cache's ``config`` ("" when it has none)."""
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "previous_location":
            return value.strip()
    return ""


def _is_dir(parent: int, name: str) -> bool:
    """Whether ``name`` below ``parent`` is a directory itself (a symlink to one is not)."""
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def _entries(fd: int, read: str, match: Callable[[str | None], bool]) -> set[str]:
    """Repository-id directories below ``fd`` (not symlinks) whose file ``read`` satisfies ``match``."""
    found = set()
    for name in os.listdir(fd):
        if not _REPO_ID.fullmatch(name) or not _is_dir(fd, name):
            continue
        sub = _open_dir(fd, name)
        if sub is None:
            continue
        try:
            if match(_read_small(sub, read)):
                found.add(name)
        finally:
            os.close(sub)
    return found


def _forget_timestamp(security: int | None, rid: str) -> bool:
    """Remove ``security/<rid>/manifest-timestamp`` (never through a symlink); whether it was there."""
    if security is None or not _is_dir(security, rid):
        return False
    sub = _open_dir(security, rid)
    if sub is None:
        return False
    try:
        os.unlink(_MANIFEST_TIMESTAMP, dir_fd=sub)  # unlink removes a symlink itself, never its target
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(sub)


def _remove_cache(cache: int | None, rid: str) -> bool:
    """Remove the directory ``.cache/borg/<rid>`` (never through a symlink); whether it was there."""
    if cache is None or not _is_dir(cache, rid):
        return False
    # With dir_fd, rmtree works from open directory descriptors and never follows a symlink.
    shutil.rmtree(rid, dir_fd=cache)
    return True


def forget_repository_state(repo: BorgRepo) -> ForgetResult:
    """Remove borg's replay record of ``repo.location``: the manifest timestamp it saw, and its cache.

    borg remembers the newest manifest it has seen for each repository (in
    the security directory's ``manifest-timestamp`` and in the cache's
    ``config``) and refuses an older one ("Cache, or information obtained from
    the security directory is newer than repository - this is either an
    attack or unsafe"). That is what a repository rolled back by the vault
    holder looks like to a client that saw the attacked state, so after the
    vault procedure (docs/backup-vault.md, step 7) the agent keeps refusing it
    until this is run, deliberately, as its own signed action
    (``backup-forget-state``): it accepts the repository's current history as
    the right one. borg records the current manifest again at the next access.

    Invariants: only ``BORG_BASE_DIR`` (``repo.base_dir``, itself not a
    symlink) is touched, and in it only ``.config/borg/security/<id>/
    manifest-timestamp`` and the directory ``.cache/borg/<id>``, for a
    repository id (64 hex digits) whose security directory names exactly this
    location (its ``location`` file) or whose cache does (``previous_location``
    in its ``config``). The rest of the security directory stays: ``nonce``
    (the AES-CTR counter this client reserved; without it borg would trust the
    repository's own counter, which someone who rolled the vault back could
    have lowered too), ``location`` and ``key-type``. Every path is opened from
    an open directory without following symlinks (a symlink on the way is an
    error, an id entry that is a symlink is not borg's record and is left
    alone); keys (``.config/borg/keys``) and restore-test directories stay.
    Idempotent: a second run finds nothing to remove and reports nothing.
    """
    try:
        base = os.open(repo.base_dir, _DIR_FLAGS)
    except FileNotFoundError:
        return ForgetResult(ok=True)
    except OSError as exc:
        return ForgetResult(ok=False, error=f"borg's state directory {repo.base_dir}: not a plain directory "
                                            f"({exc.strerror})")
    opened: list[int] = [base]

    def down(parent: int, *names: str) -> int | None:
        fd: int | None = parent
        for name in names:
            if fd is None:
                return None
            fd = _open_dir(fd, name)
            if fd is not None:
                opened.append(fd)
        return fd

    cleared: list[ForgottenRepository] = []
    try:
        security = down(base, ".config", "borg", "security")
        cache = down(base, ".cache", "borg")
        ids = set() if security is None else _entries(
            security, "location", lambda text: text is not None and text.strip() == repo.location)
        if cache is not None:
            ids |= _entries(cache, "config",
                            lambda text: text is not None and _cache_location(text) == repo.location)
        for rid in sorted(ids):
            done = ForgottenRepository(id=rid, manifest_timestamp=_forget_timestamp(security, rid),
                                       cache=_remove_cache(cache, rid))
            if done.manifest_timestamp or done.cache:
                cleared.append(done)
    except (OSError, _StateError) as exc:
        what = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return ForgetResult(ok=False, cleared=cleared, error=f"cannot clear borg's state in {repo.base_dir}: "
                                                             f"{what}"[:1000])
    finally:
        for fd in reversed(opened):
            os.close(fd)
    return ForgetResult(ok=True, cleared=cleared)


def backup_due(policy: BackupPolicy, last_archive_time: float | None, now: float) -> bool:
    """Whether the policy's interval has passed since the last archive (or there is none)."""
    return last_archive_time is None or now - last_archive_time >= policy.interval_s


__all__ = [
    "DEFAULT_LIMITS", "ArchiveInfo", "ArchiveResult", "BackupLimits", "BackupPolicy", "BackupSpecError",
    "BackupStatus", "BorgRepo", "BorgResult", "CheckResult", "ForgetResult", "ForgottenRepository",
    "RestoreSample", "archive_name", "backup_due",
    "check", "create_archive", "forget_repository_state", "init_repository", "list_archives",
    "list_archives_checked", "restore_test", "restore_test_passed", "sample_files", "status", "summarize",
    "validate_archive_name", "validate_exclude", "validate_location", "validate_path",
]
