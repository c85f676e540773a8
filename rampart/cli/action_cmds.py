"""Software, patches, files and backups: sign the job locally, send it, summarise the receipts.

    rampart package install TENANT --grant G --devices D NAME[=VERSION] [--wait]
    rampart package remove  TENANT --grant G --devices D NAME [--wait]
    rampart patch apply     TENANT --grant G --devices D [--wait]
    rampart file deploy     TENANT --grant G --devices D --src FILE --dest PATH [--mode 0644] [--wait]
    rampart backup run      TENANT --grant G --devices D [--wait]
    rampart backup forget-state TENANT DEVICE --grant G [--wait]

Every command goes through the same flow as ``rampart run``
(:func:`rampart.cli.job_cmds.sign_job`: the grant is verified against the
locally trusted root and must be for your own key and give every capability
the job needs, then the job is signed with that key;
:func:`~rampart.cli.job_cmds.send_and_follow`: upload, the G5 step-up when the
server asks for one, receipts). What each job needs (docs/patching.md):

* ``package``: the job declares ``run_as root`` (maintainer scripts run as
  root), so the grant needs ``package`` and ``root`` (two approvers by
  default) and the device ``--allow-root``;
* ``patch apply`` (``os-update``): ``patch``; ``backup run``
  (``backup-run``): ``backup``; both payload-free;
* ``file deploy``: ``file``; the job declares the destination's directory as
  its write path, carries the file's SHA-256, and the device writes it only
  below one of its write roots;
* ``backup forget-state`` (``backup-forget-state``): ``backup``; one device,
  no arguments (the device clears borg's record of the repository its own
  backup policy names); a person's key only, after the vault holder rolled
  the repository back (docs/backup-vault.md, step 7).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer

from rampart.trust import Action, ActionKind, Declared

from .common import api, resolve_tenant
from .errors import UsageProblem
from .job_cmds import (
    MAX_SCRIPT_BYTES,
    DevicesOpt,
    ExpiresOpt,
    GrantOpt,
    JsonOpt,
    TenantArg,
    WaitOpt,
    WaitTimeoutOpt,
    job_times,
    payload_ref,
    raw_output,
    send_and_follow,
    sign_job,
)

package_app = typer.Typer(help="Install and remove software packages (root jobs: grant 'package' and "
                               "'root').", no_args_is_help=True)
patch_app = typer.Typer(help="Apply OS updates from each device's configured sources.", no_args_is_help=True)
file_app = typer.Typer(help="Deploy files whose SHA-256 you sign.", no_args_is_help=True)
backup_app = typer.Typer(help="Run each device's backup policy.", no_args_is_help=True)

#: The agent channel carries at most 4 MiB frames (base64): the same bound as a script.
MAX_FILE_BYTES = MAX_SCRIPT_BYTES
# Permissive shape checks (apt or dnf names and versions); the agent applies the exact rules of its
# package manager. They keep options and shell syntax out of the signed job.
_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+\-]{0,199}(?::[a-z0-9][a-z0-9\-]{0,31})?")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+~:^_\-]{0,199}")
_MODE = re.compile(r"0?([0-7]{3})")

TimeoutOpt = Annotated[int, typer.Option("--timeout", help="Time limit on the device, in seconds.")]


# --- what the commands share ---------------------------------------------------------------------


def _send(tenant: str, grant: str, devices: str, *, action: Action, declared: Declared,
          payloads: dict[str, bytes], timeout: int, expires: str, wait: bool, wait_timeout: str | None,
          json_out: bool) -> None:
    devs, lifetime, waiting = job_times(devices, expires, wait_timeout, timeout)
    cfg, client, session = api()
    with client:
        t = resolve_tenant(client, tenant)
        envelope, job, targets = sign_job(cfg, client, session, t["id"], grant_id=grant, devices=devs,
                                          action=action, declared=declared, timeout_s=timeout,
                                          lifetime_s=lifetime)
        send_and_follow(client, t["id"], envelope, job, targets, payloads, wait=wait, wait_s=waiting,
                        json_out=json_out, render=render_result, enrich=with_results)


def result_doc(receipt: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON result document an action's receipt carries on stdout (None for a script or a refusal)."""
    text = receipt.get("stdout")
    if not isinstance(text, str) or not text.startswith("{"):
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("action"), str) else None


def with_results(job: dict[str, Any]) -> dict[str, Any]:
    """The job document with each receipt's decoded ``result`` beside its raw stdout (for ``--json``)."""
    out = dict(job)
    targets = []
    for t in job.get("targets") or []:
        if isinstance(t, dict) and isinstance(t.get("receipt"), dict):
            t = {**t, "receipt": {**t["receipt"], "result": result_doc(t["receipt"])}}
        targets.append(t)
    out["targets"] = targets
    return out


def _d(doc: Any, key: str) -> dict[str, Any]:
    v = doc.get(key) if isinstance(doc, dict) else None
    return v if isinstance(v, dict) else {}


def _l(doc: Any, key: str) -> list[Any]:
    v = doc.get(key) if isinstance(doc, dict) else None
    return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []


def _package_lines(doc: dict[str, Any]) -> list[str]:
    result = _d(doc, "result")
    security = {u.get("name") for u in _l(doc, "pending") if u.get("security")}
    lines = []
    if doc.get("action") == "os-update":
        pending = _l(doc, "pending")
        lines.append(f"{len(pending)} update(s) were pending, {len(security)} of them security updates"
                     + (" (security updates only)" if doc.get("security_only") else ""))
        if not _d(doc, "refresh").get("ok", True):
            lines.append(f"package lists not refreshed: {_d(doc, 'refresh').get('error')}")
    for c in _l(result, "changes"):
        line = f"{c.get('name')}: {c.get('action')} {c.get('before') or '-'} -> {c.get('after') or '-'}"
        if c.get("name") in security:
            line += " [security]"
        if c.get("state") not in ("installed", "not-installed", None):
            line += f" (left {c.get('state')})"
        lines.append(line)
        if c.get("error"):
            lines += [f"    {x}" for x in str(c["error"]).splitlines()[:20]]
    if result.get("error"):
        lines.append(f"error: {result['error']}")
    if result.get("reboot_required"):
        lines.append("a reboot is required")
    return lines


def _file_lines(doc: dict[str, Any]) -> list[str]:
    r = _d(doc, "result")
    if not r:
        return [f"error: {doc.get('message') or doc.get('error')}"]
    line = f"{r.get('path')}: {r.get('size')} bytes, mode {r.get('mode')}, sha256 {r.get('sha256')}"
    if r.get("replaced"):
        line += f"; previous file kept as {r.get('backup')}"
    return [line]


def _backup_lines(doc: dict[str, Any]) -> list[str]:
    a, c, rt = _d(doc, "archive"), _d(doc, "check"), _d(doc, "restore_test")
    if not a.get("ok"):
        return [f"no archive: {a.get('error')}"]
    lines = [f"archive {a.get('name')}: {a.get('nfiles')} files, {a.get('original_size')} bytes, "
             f"{a.get('deduplicated_size')} new after deduplication",
             f"borg check: {'ok' if c.get('ok') else 'FAILED ' + str(c.get('error') or '')}"]
    if rt.get("passed") is None:
        lines.append("restore test: skipped (no samples configured)")
    else:
        lines.append(f"restore test: {'passed' if rt.get('passed') else 'FAILED'}")
        lines += [f"  {s.get('path')}: {s.get('status')}" for s in _l(rt, "samples")]
    return lines


def _forget_lines(doc: dict[str, Any]) -> list[str]:
    lines = []
    for c in _l(doc, "cleared"):
        parts = [x.replace("_", " ") for x in ("manifest_timestamp", "cache") if c.get(x)]
        lines.append(f"cleared repository {c.get('id')}: {' and '.join(parts) or 'nothing'}")
    if not lines:
        lines.append("nothing to clear: the device held no record of this repository")
    if doc.get("error"):
        lines.append(f"error: {doc['error']}")
    after = _d(doc, "after")
    if after.get("ok"):
        lines.append(f"the repository opens now: {after.get('archives')} archive(s)"
                     + (f", last {after.get('last_archive')}" if after.get("last_archive") else ""))
    elif after:
        lines.append(f"the repository does not open yet: {after.get('error')}")
    return lines


def render_result(receipt: dict[str, Any]) -> list[str]:
    """A short summary of an action's result for people; a script's output as it came."""
    doc = result_doc(receipt)
    if doc is None:
        return raw_output(receipt)
    action = doc.get("action")
    if action in ("package", "os-update"):
        lines = _package_lines(doc)
    elif action == "file":
        lines = _file_lines(doc)
    elif action == "backup-run":
        lines = _backup_lines(doc)
    elif action == "backup-forget-state":
        lines = _forget_lines(doc)
    else:
        lines = [json.dumps(doc, sort_keys=True)]
    if doc.get("truncated"):
        lines.append("(the result was cut to fit the receipt)")
    return lines


# --- commands --------------------------------------------------------------------------------------


def _package_spec(text: str) -> tuple[str, str | None]:
    name, sep, version = text.partition("=")
    if not _NAME.fullmatch(name):
        raise UsageProblem(f"not a package name: {name[:80]!r}")
    if sep and not _VERSION.fullmatch(version):
        raise UsageProblem(f"not a package version: {version[:80]!r}")
    return name, (version if sep else None)


@package_app.command("install")
def package_install(
    tenant: TenantArg,
    spec: Annotated[str, typer.Argument(metavar="NAME[=VERSION]", help="Package to install.")],
    grant: GrantOpt, devices: DevicesOpt, timeout: TimeoutOpt = 1800, expires: ExpiresOpt = "1h",
    wait: WaitOpt = False, wait_timeout: WaitTimeoutOpt = None, json_out: JsonOpt = False,
) -> None:
    """Install a package (at exactly VERSION when given) from each device's configured sources."""
    name, version = _package_spec(spec)
    args = ["install", name] + ([version] if version else [])
    _send(tenant, grant, devices, action=Action(kind="package", args=args), declared=Declared(run_as="root"),
          payloads={}, timeout=timeout, expires=expires, wait=wait, wait_timeout=wait_timeout,
          json_out=json_out)


@package_app.command("remove")
def package_remove(
    tenant: TenantArg, name: Annotated[str, typer.Argument(metavar="NAME", help="Package to remove.")],
    grant: GrantOpt, devices: DevicesOpt, timeout: TimeoutOpt = 1800, expires: ExpiresOpt = "1h",
    wait: WaitOpt = False, wait_timeout: WaitTimeoutOpt = None, json_out: JsonOpt = False,
) -> None:
    """Remove a package; refused on a device where other packages would have to go with it."""
    pkg, version = _package_spec(name)
    if version is not None:
        raise UsageProblem("remove takes a package name without a version")
    _send(tenant, grant, devices, action=Action(kind="package", args=["remove", pkg]),
          declared=Declared(run_as="root"), payloads={}, timeout=timeout, expires=expires, wait=wait,
          wait_timeout=wait_timeout, json_out=json_out)


def _payload_free(kind: ActionKind, doc: str) -> Callable[..., None]:
    """A command that sends a payload-free job (``os-update``, ``backup-run``): nothing to choose but when."""

    def command(tenant: TenantArg, grant: GrantOpt, devices: DevicesOpt, timeout: TimeoutOpt = 3600,
                expires: ExpiresOpt = "1h", wait: WaitOpt = False, wait_timeout: WaitTimeoutOpt = None,
                json_out: JsonOpt = False) -> None:
        _send(tenant, grant, devices, action=Action(kind=kind), declared=Declared(), payloads={},
              timeout=timeout, expires=expires, wait=wait, wait_timeout=wait_timeout,
              json_out=json_out)

    command.__doc__ = doc
    return command


patch_app.command("apply")(_payload_free(
    "os-update", "Apply pending OS updates (all, or security only where the device policy says so)."))
backup_app.command("run")(_payload_free(
    "backup-run", "Back up each device's configured paths to its append-only vault, then check and "
                  "restore-test."))


_DEVICE_ID = re.compile(r"dev-[0-9a-f]{24}")


@backup_app.command("forget-state")
def backup_forget_state(
    tenant: TenantArg,
    device: Annotated[str, typer.Argument(metavar="DEVICE", help="Device id (dev-…): one device.")],
    grant: GrantOpt, timeout: TimeoutOpt = 600, expires: ExpiresOpt = "1h", wait: WaitOpt = False,
    wait_timeout: WaitTimeoutOpt = None, json_out: JsonOpt = False,
) -> None:
    """Make DEVICE forget borg's record of its repository, after the vault holder rolled it back.

    borg on a device that saw the attacked repository refuses the rolled-back
    one ("... newer than repository"); this signed job clears borg's record
    of the newest manifest it saw (security directory) and its cache for the
    repository the device's own backup policy names, nothing else, and lists
    the repository once. Run it only after the
    vault holder confirmed the rollback (docs/backup-vault.md, step 7).
    """
    if not _DEVICE_ID.fullmatch(device):
        raise UsageProblem(f"DEVICE must be one device id (dev-…), not {device[:80]!r}: a repository's "
                           "state is forgotten one device at a time")
    _send(tenant, grant, device, action=Action(kind="backup-forget-state"), declared=Declared(), payloads={},
          timeout=timeout, expires=expires, wait=wait, wait_timeout=wait_timeout, json_out=json_out)


@file_app.command("deploy")
def file_deploy(
    tenant: TenantArg, grant: GrantOpt, devices: DevicesOpt,
    src: Annotated[Path, typer.Option("--src", help="Local file to deploy.")],
    dest: Annotated[str, typer.Option("--dest", help="Absolute path on the devices.")],
    mode: Annotated[str, typer.Option("--mode", help="Octal mode of the deployed file.")] = "0644",
    timeout: TimeoutOpt = 300, expires: ExpiresOpt = "1h", wait: WaitOpt = False,
    wait_timeout: WaitTimeoutOpt = None, json_out: JsonOpt = False,
) -> None:
    """Deploy a file: the devices check its SHA-256 and write it atomically below a write root."""
    if not dest.startswith("/") or dest.startswith("//") or dest.endswith("/") \
            or os.path.normpath(dest) != dest or any(ord(c) < 0x20 for c in dest):
        raise UsageProblem(f"--dest must be a normalised absolute file path, not {dest[:200]!r}")
    m = _MODE.fullmatch(mode)
    if m is None:
        raise UsageProblem(f"--mode must be octal like 0644 (no setuid, setgid or sticky bits), not {mode!r}")
    try:
        if src.stat().st_size > MAX_FILE_BYTES:
            raise UsageProblem(f"{src} is larger than {MAX_FILE_BYTES // 1024} KiB: ship it in a package")
        data = src.read_bytes()
    except OSError as exc:
        raise UsageProblem(f"cannot read {src}: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise UsageProblem(f"{src} is larger than {MAX_FILE_BYTES // 1024} KiB: ship it in a package")
    try:
        declared = Declared(writes=[os.path.dirname(dest)])
    except (ValueError, msgspec.ValidationError) as exc:
        raise UsageProblem(f"--dest: {exc}") from None
    action = Action(kind="file", args=[dest, "0" + m.group(1)], payloads=[payload_ref("file", data)])
    _send(tenant, grant, devices, action=action, declared=declared, payloads={"file": data},
          timeout=timeout, expires=expires, wait=wait, wait_timeout=wait_timeout, json_out=json_out)


def register(app: typer.Typer) -> None:
    app.add_typer(package_app, name="package")
    app.add_typer(patch_app, name="patch")
    app.add_typer(file_app, name="file")
    app.add_typer(backup_app, name="backup")
