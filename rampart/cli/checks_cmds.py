"""``rampart checks``: disk, memory, CPU, service and port checks, and signed script checks.

``rampart checks script`` signs a repeating script job locally with the
technician's key (:func:`rampart.cli.job_cmds.sign_script_job`, the same flow as
``rampart run``) and submits it; the agents run it on that schedule themselves
and report each result. A script check is stopped by revoking its grant
(``rampart grant revoke``) or when its ``--for`` period or its grant ends; the
server cannot start, speed up or change one (docs/monitoring.md).

Its grant is one made for it: ``--grant``, or an approved grant of yours whose
signed reason is ``script check: LABEL`` (LABEL: ``--name``, else the script's
file name) for exactly ``script`` on these devices. Any other grant (an
incident's, a colleague's) is never picked, so a check never silently ends
with an unrelated grant. Without one, the command offers to request it
(``--request-grant`` without asking), checked first against the policy.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from rampart import trust

from . import prompts
from .client import Client, expect_dict, expect_list
from .common import api, resolve_tenant, trusted_root
from .config import Config, Session
from .errors import Refused, UsageProblem
from .job_cmds import send_and_follow, sign_script_job
from .output import (
    OutputOpt,
    fmt_duration,
    fmt_time,
    parse_duration,
    print_json,
    say,
    say_lines,
    table,
    wants_json,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
checks_app = typer.Typer(help="Monitoring checks (evaluated from each device's inventory).",
                         no_args_is_help=True)


@checks_app.command("add")
def checks_add(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    kind: Annotated[str, typer.Argument(help="disk, memory, cpu, service or port.")],
    device: Annotated[str | None, typer.Option("--device", help="One device (default: all).")
                      ] = None,
    mountpoint: Annotated[str, typer.Option("--mountpoint", help="disk: the filesystem.")] = "/",
    max_used: Annotated[float | None, typer.Option("--max-used", help="disk: highest used %.")
                        ] = None,
    min_available: Annotated[float | None, typer.Option(
        "--min-available", help="memory: lowest available %.")] = None,
    max_load: Annotated[float | None, typer.Option(
        "--max-load", help="cpu: highest 1-minute load per CPU.")] = None,
    unit: Annotated[str | None, typer.Option("--unit", help="service: systemd unit.")] = None,
    port: Annotated[int | None, typer.Option("--port", help="port: must be listening.")] = None,
    udp: Annotated[bool, typer.Option("--udp", help="port: UDP instead of TCP.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Add a check; a failing check opens an alert, which resolves when it passes again."""
    params: dict[str, Any]
    if kind == "disk":
        params = {"mountpoint": mountpoint, "max_used_percent": max_used}
    elif kind == "memory":
        params = {"min_available_percent": min_available}
    elif kind == "cpu":
        params = {"max_load_per_cpu": max_load}
    elif kind == "service":
        params = {"unit": unit}
    elif kind == "port":
        params = {"port": port, "proto": "udp" if udp else "tcp"}
    else:
        raise UsageProblem("KIND must be disk, memory, cpu, service or port")
    missing = [k for k, v in params.items() if v is None]
    if missing:
        flag = {"max_used_percent": "--max-used", "min_available_percent": "--min-available",
                "max_load_per_cpu": "--max-load", "unit": "--unit", "port": "--port"}[missing[0]]
        raise UsageProblem(f"a {kind} check needs {flag}")
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        doc = expect_dict(client.post(f"/tenants/{t['id']}/checks",
                                      {"kind": kind, "device": device, "params": params}), "check")
    if json_out:
        print_json(doc)
        return
    say(f"check {doc.get('id')} added ({kind} on {device or 'every device'})")


@checks_app.command("list")
def checks_list(tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
                json_out: JsonOpt = False, output: OutputOpt = None) -> None:
    """List checks and the devices where each fails, then script checks with each device's last result.

    With ``--json``: one list; script checks have ``"kind": "script"`` and ``"id"`` = their job id.
    """
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        docs = expect_list(client.get(f"/tenants/{t['id']}/checks"), "checks")
        scripts = [d for d in expect_list(client.get(f"/tenants/{t['id']}/script-checks"), "script checks")
                   if isinstance(d, dict)]
    if wants_json(json_out, output):
        print_json([*docs, *({"kind": "script", "id": d.get("job"), **d} for d in scripts)])
        return
    table(["id", "kind", "device", "parameters", "failing on", "unknown on"],
          ([d.get("id"), d.get("kind"), d.get("device") or "all",
            ", ".join(f"{k}={v}" for k, v in (d.get("params") or {}).items()),
            ", ".join(d.get("failing") or []) or "-", ", ".join(d.get("unknown") or []) or "-"]
           for d in docs if isinstance(d, dict)),
          title="Checks", plain_title=True)
    rows = []
    for d in scripts:
        for dev in d.get("devices") or [{}]:
            if not isinstance(dev, dict):
                continue
            last = "-" if dev.get("last_run_at") is None else (
                f"{'ok' if dev.get('ok') else 'FAILED'} (exit {dev.get('exit_code')}) "
                f"at {fmt_time(dev.get('last_run_at'))}")
            if dev.get("overdue"):
                last += " OVERDUE"
            rows.append([d.get("job"), d.get("name") or "-", fmt_duration(int(d.get("every_s") or 0)),
                         fmt_time(d.get("until")), d.get("status"), dev.get("device", "-"),
                         dev.get("state", "-"), last, f"{dev.get('failures', 0)}/{dev.get('runs', 0)}"])
    table(["job", "name", "every", "until", "status", "device", "state", "last result", "failed/runs"],
          rows, title="Script checks", plain_title=True)


def check_grant_reason(label: str) -> str:
    """The reason of a grant made for the script check ``label`` (what `checks script` looks for)."""
    return f"script check: {label}"


def _grants_for_check(cfg: Config, client: Client, session: Session, tenant_id: str,
                      devices: list[str], reason: str) -> list[dict[str, Any]]:
    """Live grants of your keys made for this check: exactly ``script``, these devices, its reason."""
    mine = {k.keyid for k in cfg.key_candidates(session.username, tenant_id)}
    now = int(time.time())
    return [g for g in expect_list(client.get(f"/tenants/{tenant_id}/grants"), "grants")
            if isinstance(g, dict) and g.get("status") in ("approved", "requested")
            and g.get("grantee") in mine and g.get("reason") == reason
            and list(g.get("capabilities") or []) == ["script"]
            and sorted(g.get("devices") or []) == sorted(devices)
            and int(g.get("not_after") or 0) > now]


def _grant_for_check(cfg: Config, client: Client, session: Session, tenant: dict[str, Any],
                     devices: list[str], *, label: str, lasts_s: int, request: bool) -> tuple[str, bool]:
    """(grant id, True) for the approved grant made for this check; else request one (asked, or
    ``request``) and return (its id, False), or refuse saying how to get one. Never another grant."""
    reason = check_grant_reason(label)
    found = _grants_for_check(cfg, client, session, tenant["id"], devices, reason)
    approved = [g for g in found if g.get("status") == "approved"]
    if approved:
        return str(max(approved, key=lambda g: int(g.get("not_after") or 0))["id"]), True
    if found:
        gid = found[0]["id"]
        raise Refused(f"the grant made for this check ({gid}) waits for an approver: rampart grant "
                      f"approve {gid}; then run this command again")
    policy = trusted_root(cfg, client, tenant["id"]).root.policy
    if lasts_s > policy.longest_grant(["script"]):
        raise UsageProblem(f"--for {fmt_duration(lasts_s)} is longer than the tenant policy allows: "
                           + policy.grant_limit_text(["script"], tenant=tenant["name"]))
    what = (f"a grant for this check ('script' on {len(devices)} device(s) for "
            f"{fmt_duration(lasts_s)}, reason {reason!r})")
    if not request and not (prompts.stdin_is_tty() and prompts.confirm(f"Request {what}?")):
        raise Refused(f"no grant made for this check: request {what} with --request-grant, or "
                      "name one with --grant (a grant made for something else is never used)")
    from .grant_cmds import request_grant

    gid, _ = request_grant(cfg, client, session, tenant["id"], devices=devices,
                           capabilities=["script"], duration_s=lasts_s, reason=reason)
    return gid, False


@checks_app.command("script")
def checks_script(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    script: Annotated[Path, typer.Argument(help="Script file (exit 0 = pass).")],
    device: Annotated[list[str], typer.Option("--device", help="Target device (repeatable).")],
    every: Annotated[str, typer.Option("--every", help="Interval, e.g. 5m (the device may run it "
                                                       "less often: its floor).")] = "5m",
    lasts: Annotated[str, typer.Option("--for", help="How long it repeats, e.g. 7d (at most 90d; "
                                                     "it also stops when the grant ends).")] = "7d",
    grant: Annotated[str | None, typer.Option("--grant", help="Grant id (default: your approved grant "
                                                              "made for this check, by its reason).")] = None,
    request: Annotated[bool, typer.Option(
        "--request-grant", help="No grant made for this check yet: request one without asking "
                                "(script on these devices for --for).")] = False,
    name: Annotated[str, typer.Option("--name", help="A label shown in 'checks list'.")] = "",
    timeout: Annotated[int, typer.Option("--timeout", help="Run time limit of each run, seconds.")] = 60,
    expires: Annotated[str, typer.Option("--expires", help="Deadline for the first run (an offline "
                                                           "device starts later, within it).")] = "1d",
    json_out: JsonOpt = False,
) -> None:
    """Sign a repeating script job (a script check) with your key and send it."""
    if not device:
        raise UsageProblem("name at least one --device")
    every_s = parse_duration(every, what="--every")
    lasts_s = parse_duration(lasts, what="--for")
    lim = trust.DEFAULT_LIMITS
    if not lim.min_repeat_every_s <= every_s <= lim.max_repeat_every_s:
        raise UsageProblem(f"--every must be {lim.min_repeat_every_s}s to "
                           f"{fmt_duration(lim.max_repeat_every_s)}")
    if lasts_s > lim.max_repeat_lifetime_s:
        raise UsageProblem(f"--for may be at most {fmt_duration(lim.max_repeat_lifetime_s)}")
    lifetime = min(parse_duration(expires, what="--expires"), lasts_s, lim.max_job_lifetime_s)
    try:
        body = script.read_bytes()
    except OSError as exc:
        raise UsageProblem(f"cannot read {script}: {exc.strerror}") from None
    _repeat(every_s, int(time.time()) + lasts_s, name)  # a bad --name fails before any request
    label = name or script.name
    cfg, client, session = api()
    with client:
        t = resolve_tenant(client, tenant)
        grant_id, approved = (grant, True) if grant else _grant_for_check(
            cfg, client, session, t, list(device), label=label, lasts_s=lasts_s, request=request)
        if not approved:
            reason = check_grant_reason(label)
            if json_out:
                print_json({"grant": grant_id, "status": "requested", "job": None, "reason": reason})
                return
            say(f"grant {grant_id} requested for this check (reason {reason!r}); nothing is signed yet")
            say(f"an approver approves it with: rampart grant approve {grant_id}")
            say("then run this command again: it finds the grant by its reason")
            return
        assert grant_id is not None
        g = expect_dict(client.get(f"/grants/{grant_id}"), "grant")
        until = int(time.time()) + lasts_s
        if not grant:  # its own grant, requested for --for: the check ends with it, as planned
            until = min(until, int(g.get("not_after") or until))
        repeat = _repeat(every_s, until, name)
        envelope, job, targets = sign_script_job(
            cfg, client, session, t["id"], grant_id=grant_id, devices=list(device), script=body,
            writes=[], connect=[], as_root=False, timeout_s=timeout, lifetime_s=lifetime, repeat=repeat)
        send_and_follow(client, t["id"], envelope, job, targets, {"script": body}, wait=False, wait_s=0,
                        json_out=json_out)
    if not json_out:
        ends = min(repeat.until, int(g.get("not_after") or 0))
        say(f"script check every {fmt_duration(every_s)} on {len(targets)} device(s) until "
            f"{fmt_time(ends)}" + (" (when its grant ends)" if ends < repeat.until else ""))
        say(f"results: rampart checks results {tenant} {job.id}; stop it: rampart grant revoke {grant_id}")


def _repeat(every_s: int, until: int, name: str) -> trust.Repeat:
    try:
        return trust.Repeat(every_s=every_s, until=until, name=name)
    except (ValueError, TypeError) as exc:
        raise UsageProblem(f"invalid --name or schedule: {exc}") from None


@checks_app.command("results")
def checks_results(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    job: Annotated[str, typer.Argument(help="The script check's job id (job-…).")],
    device: Annotated[str | None, typer.Option("--device", help="One device only.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="How many results (newest first).")] = 20,
    output: Annotated[bool, typer.Option("--output", help="Show each run's output tail.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Show a script check's result history, newest first."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        params: dict[str, Any] = {"limit": limit}
        if device:
            params["device"] = device
        url = f"/tenants/{t['id']}/script-checks/{job}/results"
        docs = [d for d in expect_list(client.get(url, **params), "results") if isinstance(d, dict)]
    if json_out:
        print_json(docs)
        return
    table(["run at", "device", "result", "exit", "duration", "detail"],
          ([fmt_time(d.get("run_at")), d.get("device"), "ok" if d.get("ok") else "FAILED",
            "timed out" if d.get("timed_out") else d.get("exit_code"),
            f"{float(d.get('duration_s') or 0):.2f}s", d.get("detail") or "-"] for d in docs),
          title=f"Results of {job}")
    if output:
        for d in docs:
            for stream in ("stdout", "stderr"):
                if d.get(stream):
                    say(f"--- {fmt_time(d.get('run_at'))} {d.get('device')} {stream} ---")
                    say_lines(str(d[stream]).rstrip("\r\n"), indent="  ")


@checks_app.command("remove")
def checks_remove(check: Annotated[str, typer.Argument(help="Check id (ck-…).")]) -> None:
    """Remove a check."""
    _, client, _ = api()
    with client:
        client.request("DELETE", f"/checks/{check}")
    say(f"check {check} removed")


def register(app: typer.Typer) -> None:
    app.add_typer(checks_app, name="checks")
