"""Jobs: sign a job locally, upload it, follow its receipts.

``rampart run`` (script jobs) lives here, with the flow every job command
shares (:func:`sign_job`, :func:`send_and_follow`); packages, patches, files and
backups are in :mod:`rampart.cli.action_cmds`.

Security invariants:

* ``run`` signs only after verifying, against the locally trusted root, that the
  grant is fully approved and valid now (:func:`rampart.trust.verify_grant`),
  that it is for this operator's own key, and that it covers every target device
  and every capability the job declares. Agents check all of this again.
* The job carries the SHA-256 and size of the exact script bytes read from
  disk; the server relays the bytes but cannot change them unnoticed.
* Each job has a fresh random nonce and id and a bounded lifetime, so a copy
  cannot be replayed later or elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rampart import trust
from rampart.textsafe import safe_line, safe_lines
from rampart.trust import JOB_TYPE, Action, Declared, Job, PayloadRef
from rampart.wire.limits import LISTED_DEVICES_UP_TO

from .client import Client, expect_dict, expect_list, field
from .common import (
    api,
    envelope_bytes,
    now,
    refusing,
    require_pin,
    resolve_tenant,
    trusted_root,
    unlock_key,
)
from .config import Config, Session
from .errors import CliError, NetworkProblem, Refused, UsageProblem
from .grant_cmds import decode_grant, split_list
from .group_cmds import expand_devices
from .output import OutputOpt, err_console, fmt_time, parse_duration, print_json, say, table, wants_json

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
TenantArg = Annotated[str, typer.Argument(help="Tenant name or id.")]
GrantOpt = Annotated[str, typer.Option("--grant", help="Approved grant id (gr-…).")]
DevicesOpt = Annotated[str, typer.Option("--devices", help="Comma-separated device ids, or group:NAME "
                                                         "(the group's devices now).")]
ExpiresOpt = Annotated[str, typer.Option("--expires", help="Job lifetime, e.g. 1h.")]
WaitOpt = Annotated[bool, typer.Option("--wait", help="Wait for every receipt.")]
WaitTimeoutOpt = Annotated[str | None, typer.Option(
    "--wait-timeout", help="How long --wait waits (default: the timeout plus 60s).")]
MAX_SCRIPT_BYTES = 2 * 1024 * 1024  # the agent channel carries at most 4 MiB frames (base64)
POLL_INTERVAL_S = 0.5

jobs_app = typer.Typer(help="Jobs and their receipts.", no_args_is_help=True)


# --- flows (also used by `rampart up`, the action commands and tests) ---------------------------


def sign_job(cfg: Config, client: Client, session: Session, tenant_id: str, *, grant_id: str,
             devices: list[str], action: Action, declared: Declared, timeout_s: int,
             lifetime_s: int, repeat: trust.Repeat | None = None,
             session_spec: trust.SessionSpec | None = None) -> tuple[bytes, Job, list[str]]:
    """Verify the grant locally, then build and sign the job with the grantee key.

    ``repeat`` makes it a script check (the agents run it again on that schedule).
    ``group:NAME`` in ``devices`` is the group's devices now: the signed job lists them (or,
    beyond :data:`LISTED_DEVICES_UP_TO`, commits to them). Returns the envelope, the job and
    its target devices (what :func:`submit_job` sends beside a committed set).
    """
    mine = {k.keyid: k for k in cfg.key_candidates(session.username, tenant_id)}
    payload, job, targets = prepare_job(cfg, client, session, tenant_id, grant_id=grant_id, devices=devices,
                               action=action, declared=declared, timeout_s=timeout_s,
                               lifetime_s=lifetime_s, repeat=repeat, session_spec=session_spec,
                               mine=set(mine))
    key = unlock_key(mine[job.signer])
    env = trust.sign_envelope(JOB_TYPE, payload, [key])
    return env.to_bytes(), job, targets


def prepare_job(cfg: Config, client: Client, session: Session, tenant_id: str, *, grant_id: str,
                devices: list[str], action: Action, declared: Declared, timeout_s: int,
                lifetime_s: int, mine: set[str], repeat: trust.Repeat | None = None,
                session_spec: trust.SessionSpec | None = None) -> tuple[bytes, Job, list[str]]:
    """Every check of :func:`sign_job` and the job's payload bytes, unsigned: the grant verifies
    locally against the pinned root and its grantee is one of ``mine`` (the operator's key ids:
    key files, or passkeys for the local console), which signs the job as ``signer``."""
    devices = expand_devices(client, tenant_id, devices)
    root = trusted_root(cfg, client, tenant_id)
    summary = expect_dict(client.get(f"/grants/{grant_id}"), "grant")
    data = envelope_bytes(summary, "grant")
    _, g = decode_grant(data)
    if g.id != grant_id or g.tenant != tenant_id:
        raise Refused(f"grant {grant_id} does not belong to tenant {tenant_id}")
    st = None
    with refusing("grant"):
        st = trust.grant_status(root, data)
    if not st.complete:
        raise Refused(f"grant {grant_id} is not approved yet: {len(st.approved_by)} of "
                      f"{st.required} approver signature(s)")
    t = now()
    with refusing(f"grant {grant_id}"):
        grant = trust.verify_grant(root, data, now=t)
    if grant.grantee not in mine:
        raise Refused(f"grant {grant_id} is for key {grant.grantee[:16]}…, which is not one of "
                      "your keys")
    with refusing(f"the device list of grant {grant_id}"):
        # A committed grant's list comes from the server: shown only once it recomputes to the
        # signed set, so "covered" means covered by what the approvers signed.
        covered = trust.expand(grant.devices, grant.device_set, summary.get("devices") or [])
    outside = sorted(set(devices) - set(covered))
    if outside:
        raise UsageProblem(f"the grant does not cover {', '.join(outside)}")
    targets: dict[str, Any] = ({"devices": devices} if len(devices) <= LISTED_DEVICES_UP_TO
                               or session_spec is not None
                               else {"device_set": trust.commit_devices(devices)})
    try:
        job = Job(
            id=trust.new_job_id(), tenant=tenant_id, grant=grant.id, signer=grant.grantee,
            **targets, action=action, declared=declared, timeout_s=timeout_s,
            nonce=trust.new_nonce(), issued_at=t, expires_at=t + lifetime_s,
            repeat=repeat if repeat is not None else msgspec.UNSET,
            session=session_spec if session_spec is not None else msgspec.UNSET,
        )
        payload = trust.encode_payload(job)
        trust.decode_payload(payload, Job)  # validate exactly as an agent will decode it
    except (ValueError, msgspec.ValidationError) as exc:
        raise UsageProblem(f"invalid job: {exc}") from None
    except trust.DecodeError as exc:
        raise UsageProblem(f"invalid job: {exc.message}") from None
    missing = job.required_capabilities() - set(grant.capabilities)
    if missing:
        raise Refused(f"grant {grant_id} does not give {', '.join(sorted(missing))}")
    require_pin(cfg, tenant_id, root)  # no job is signed for a tenant whose root is not pinned
    return payload, job, list(devices)


def job_times(devices: str, expires: str, wait_timeout: str | None,
              timeout: int) -> tuple[list[str], int, int]:
    """(device ids, job lifetime, how long --wait waits) from the common options."""
    return (split_list(devices, "--devices"), parse_duration(expires, what="--expires"),
            parse_duration(wait_timeout, what="--wait-timeout") if wait_timeout else timeout + 60)


def payload_ref(name: str, data: bytes) -> PayloadRef:
    """The signed reference to a payload: its exact size and SHA-256."""
    return PayloadRef(name=name, sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def sign_script_job(cfg: Config, client: Client, session: Session, tenant_id: str, *,
                    grant_id: str, devices: list[str], script: bytes, writes: list[str],
                    connect: list[int], as_root: bool, timeout_s: int,
                    lifetime_s: int, repeat: trust.Repeat | None = None) -> tuple[bytes, Job, list[str]]:
    """A script job: the script's digest signed, with what it declares it writes and connects to."""
    if len(script) > MAX_SCRIPT_BYTES:
        raise UsageProblem(f"the script is larger than {MAX_SCRIPT_BYTES // 1024} KiB")
    try:
        declared = Declared(writes=writes, connect=connect, run_as="root" if as_root else "job")
    except (ValueError, msgspec.ValidationError) as exc:
        raise UsageProblem(f"invalid job: {exc}") from None
    return sign_job(cfg, client, session, tenant_id, grant_id=grant_id, devices=devices,
                    action=Action(kind="script", payloads=[payload_ref("script", script)]),
                    declared=declared, timeout_s=timeout_s, lifetime_s=lifetime_s, repeat=repeat)


def submit_job(client: Client, tenant_id: str, envelope: bytes, payloads: dict[str, bytes],
               job: Job, targets: list[str]) -> dict[str, Any]:
    """Upload a signed job; a job that commits a device set goes with its devices' list."""
    body: dict[str, Any] = {
        "envelope": envelope.decode(),
        "payloads": {name: base64.b64encode(data).decode() for name, data in payloads.items()},
    }
    if isinstance(job.device_set, trust.DeviceSet):
        body["devices"] = sorted(targets)
    return expect_dict(client.post(f"/tenants/{tenant_id}/jobs", body), "job")


def wait_for_receipts(client: Client, job_id: str, total: int, deadline: float, *,
                      show_progress: bool = True) -> dict[str, Any]:
    """Poll the job's summary (counts only, whatever the fleet's size) until every target has a
    receipt or was cancelled, or ``deadline`` passes; then fetch the whole job once."""
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err_console, transient=True,
                        disable=not show_progress)
    with progress:
        task = progress.add_task(f"receipts for {job_id}", total=total)
        while True:
            try:
                summary = expect_dict(client.get(f"/jobs/{job_id}/summary"), "job summary")
            except NetworkProblem:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
                continue
            raw_states, raw_count = summary.get("states"), summary.get("targets")
            states: dict[str, Any] = raw_states if isinstance(raw_states, dict) else {}
            count = raw_count if isinstance(raw_count, int) else 0
            done = sum(int(v) for k, v in states.items() if k in ("done", "cancelled") and isinstance(v, int))
            progress.update(task, completed=done, total=max(total, count))
            if (count and done >= count) or time.monotonic() > deadline:
                return expect_dict(client.get(f"/jobs/{job_id}"), "job")
            time.sleep(POLL_INTERVAL_S)


def target_ok(t: dict[str, Any]) -> bool:
    r = t.get("receipt")
    return (isinstance(r, dict) and r.get("outcome") == "ran" and r.get("exit_code") == 0
            and not r.get("timed_out"))


#: Lines to show for one receipt's output (the action commands summarise their JSON result);
#: :func:`print_targets` prints each one through :func:`say`, so each stays one safe line.
Render = Callable[[dict[str, Any]], list[str]]


def raw_output(receipt: dict[str, Any]) -> list[str]:
    """A script's stdout and stderr: their lines kept, each line made safe (T16)."""
    lines: list[str] = []
    for stream in ("stdout", "stderr"):
        text = receipt.get(stream)
        if text:
            lines.append(f"--- {stream} ---")
            lines += safe_lines(str(text).rstrip("\r\n"))
    return lines


def print_targets(doc: dict[str, Any], render: Render = raw_output) -> None:
    for t in doc.get("targets") or []:
        if not isinstance(t, dict):
            continue
        r = t.get("receipt")
        dev = t.get("device")
        if not isinstance(r, dict):
            say(f"{dev}: no receipt yet ({t.get('state', 'pending')})")
            continue
        outcome = r.get("outcome")
        if outcome == "refused":
            line = f"{dev}: REFUSED ({r.get('refusal') or 'unknown'})"
        elif outcome == "failed":
            line = f"{dev}: FAILED"
        else:
            if r.get("timed_out"):
                status = "timed out"
            elif r.get("signal"):
                status = f"killed by signal {r.get('signal')}"
            else:
                status = f"exit {r.get('exit_code')}"
            line = f"{dev}: ran, {status}"
        c = r.get("containment")
        if isinstance(c, dict) and c.get("level"):
            line += f" [containment {c['level']}]"
        say(line)
        if r.get("detail"):
            say(f"  detail: {r['detail']}")
        for ln in render(r):
            say(f"  {ln}")


def send_and_follow(client: Client, tenant_id: str, envelope: bytes, job: Job, targets: list[str],
                    payloads: dict[str, bytes], *, wait: bool, wait_s: int, json_out: bool,
                    render: Render = raw_output,
                    enrich: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
    """Upload a signed job; with ``wait``, follow its receipts and fail unless every device ran it.

    ``enrich`` may add to the ``--json`` document (the action commands decode their results).
    """
    doc = submit_job(client, tenant_id, envelope, payloads, job, targets)
    job_id = field(doc, "id", str, "job")
    if job_id != job.id:
        raise Refused("the server stored the job under another id")
    devices = len(targets)
    if not wait:
        if json_out:
            print_json({"id": job_id, "targets": doc.get("targets")})
        else:
            say(job_id)
            say(f"follow it with: rampart jobs show {job_id}")
        return
    if not json_out:
        say(f"job {job_id} sent to {devices} device(s)")
    result = wait_for_receipts(client, job_id, devices, time.monotonic() + wait_s,
                               show_progress=not json_out)
    answers = [x for x in result.get("targets") or [] if isinstance(x, dict)]
    if json_out:
        print_json(enrich(result) if enrich is not None else result)
    else:
        print_targets(result, render)
    pending = [x for x in answers if not isinstance(x.get("receipt"), dict)]
    failed = [x for x in answers if isinstance(x.get("receipt"), dict) and not target_ok(x)]
    if pending:
        raise CliError(f"{len(pending)} device(s) sent no receipt within the wait time")
    if failed:
        raise CliError(f"{len(failed)} of {len(answers)} device(s) failed or refused the job")


# --- commands --------------------------------------------------------------------------------


def run(
    tenant: TenantArg,
    grant: GrantOpt,
    devices: DevicesOpt,
    script: Annotated[Path, typer.Option("--script", help="Script file to run.")],
    writes: Annotated[list[str] | None, typer.Option(
        "--writes", help="Absolute path the script may write (repeatable).")] = None,
    connect: Annotated[list[int] | None, typer.Option(
        "--connect", help="TCP port the script may connect to (repeatable; needs 'net').")] = None,
    as_root: Annotated[bool, typer.Option("--as-root", help="Run as root (needs 'root').")] = False,
    timeout: Annotated[int, typer.Option("--timeout", help="Run time limit in seconds.")] = 300,
    expires: ExpiresOpt = "1h",
    wait: WaitOpt = False,
    wait_timeout: WaitTimeoutOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Sign a script job locally with your technician key and send it; optionally wait."""
    devs, lifetime, waiting = job_times(devices, expires, wait_timeout, timeout)
    try:
        body = script.read_bytes()
    except OSError as exc:
        raise UsageProblem(f"cannot read {script}: {exc.strerror}") from None
    cfg, client, session = api()
    with client:
        t = resolve_tenant(client, tenant)
        envelope, job, targets = sign_script_job(
            cfg, client, session, t["id"], grant_id=grant, devices=devs, script=body,
            writes=list(writes or []), connect=list(connect or []), as_root=as_root,
            timeout_s=timeout, lifetime_s=lifetime)
        send_and_follow(client, t["id"], envelope, job, targets, {"script": body}, wait=wait, wait_s=waiting,
                         json_out=json_out)


@jobs_app.command("show")
def jobs_show(
    job: Annotated[str, typer.Argument(help="Job id (job-…).")],
    json_out: JsonOpt = False,
) -> None:
    """Show a job and each device's receipt."""
    _, client, _ = api()
    with client:
        doc = expect_dict(client.get(f"/jobs/{job}"), "job")
    if json_out:
        print_json(doc)
        return
    say(f"job {doc.get('id')} ({doc.get('kind')}) in {doc.get('tenant')}, "
        f"created {fmt_time(doc.get('created_at'))}")
    say(f"signer {str(doc.get('signer'))[:16]}…, grant {doc.get('grant')}")
    print_targets(doc)


@jobs_app.command("cancel")
def jobs_cancel(
    job: Annotated[str, typer.Argument(help="Job id (job-…).")],
    reason: Annotated[str, typer.Option("--reason", help="Why (signed, and in the audit log).")] = "",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Withdraw a job that has not run everywhere: sign a cancellation and push it to agents.

    The job's own technician may cancel it, or any approver or owner; agents check that
    against the root they pinned. Devices that already ran it keep their receipts."""
    from . import prompts
    from .common import pick_key

    if not job.startswith("job-"):
        raise UsageProblem("a job id looks like job-…")
    cfg, client, session = api()
    with client:
        doc = expect_dict(client.get(f"/jobs/{job}"), "job")
        if doc.get("id") != job:
            raise Refused("the server sent a different job than the one asked for")
        tenant_id = field(doc, "tenant", str, "job")
        root = trusted_root(cfg, client, tenant_id)
        require_pin(cfg, tenant_id, root)
        waiting = [t for t in doc.get("targets") or []
                   if isinstance(t, dict) and t.get("state") in ("pending", "sent")]
        if not waiting:
            raise UsageProblem(f"job {job} has already run (or was cancelled) on every device: "
                               "nothing to cancel")
        signer = str(doc.get("signer"))
        own = [k for k in cfg.key_candidates(session.username, tenant_id)
               if k.keyid == signer and signer in root.technicians]
        info = own[0] if own else pick_key(cfg, session, tenant_id, root, roles=("approver", "owner"))
        if prompts.stdin_is_tty() and not yes and not prompts.confirm(
                f"Cancel {job} on the {len(waiting)} device(s) that have not run it "
                f"({safe_line(str(doc.get('kind')))}, as the server reports it)?"):
            raise Refused("not cancelled")
        cancellation = trust.Cancellation(tenant=tenant_id, job=job, issued_at=now(), reason=reason)
        key = unlock_key(info)
        data = trust.sign_envelope(trust.CANCELLATION_TYPE, trust.encode_payload(cancellation),
                                   [key]).to_bytes()
        with refusing("cancellation"):
            trust.check_cancellation(root, data)  # what every agent checks before keeping it
        out = expect_dict(client.post(f"/jobs/{job}/cancellation", {"envelope": data.decode()}), "job")
    if json_out:
        print_json(out)
        return
    cancelled = [t.get("device") for t in out.get("targets") or []
                 if isinstance(t, dict) and t.get("state") == "cancelled"]
    say(f"job {job} cancelled on {len(cancelled)} device(s) that had not run it; agents refuse it "
        "from now on (a device that already held it may still have run it: see its receipt)")


@jobs_app.command("list")
def jobs_list(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    limit: Annotated[int, typer.Option("--limit", help="How many recent jobs.")] = 20,
    json_out: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """List a tenant's recent jobs."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        docs = expect_list(client.get(f"/tenants/{t['id']}/jobs", limit=limit), "jobs")
    if wants_json(json_out, output):
        print_json(docs)
        return
    table(["id", "kind", "created", "devices", "done"],
          ([d.get("id"), d.get("kind"), fmt_time(d.get("created_at")),
            len(d.get("devices") or []),
            sum(1 for x in d.get("targets") or [] if isinstance(x, dict) and x.get("receipt"))]
           for d in docs if isinstance(d, dict)), title="Jobs")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.add_typer(jobs_app, name="jobs")
