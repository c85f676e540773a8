"""Scheduled work: the automation key, standing grants, patch policies and rings, backup policies.

    rampart automation enable T                  create the server's automation key, propose a root naming it
    rampart automation show T
    rampart automation grant T --action os-update (--devices D,.. | --policy P) [--for 90d] [--reason R]
    rampart patch policy set T NAME --ring pilot=D1 --ring broad=D2,group:G@3d [--window 'sat 02:00 4h']
                                     [--defer 2d] [--reboot never|notify] [--timeout 30m] [--disabled]
    rampart patch policy list|show|remove T [NAME]
    rampart patch status T        rampart patch resume T NAME        rampart patch report T [--older-than 7d]
    rampart backup policy set T DEVICE [--every 24h] [--window W] [--max-age 2d] [--verify-max-age 7d]
                                       [--keep-daily 7 --keep-weekly 4 --keep-monthly 6]
    rampart backup policy remove T DEVICE         rampart backup status T

Security: ``automation enable`` adds to the proposed root only the key whose
id it recomputed from the public key the server sent, and says so; owners
then sign the proposal as any other (``rampart root sign``), so the server
never puts a key in a root by itself. A standing grant is requested for that
key and, like every grant, becomes valid only with approvers' signatures made
on their own machines (``rampart grant approve``).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from rampart import trust, windows
from rampart.trust import ACTION_CAPABILITY, AutomationPublicKey, KeyEntry

from .action_cmds import backup_app, patch_app
from .client import Client, expect_dict, expect_list
from .common import api, resolve_tenant, trusted_root
from .errors import Refused, ServerProblem, UsageProblem
from .grant_cmds import split_list
from .group_cmds import GROUP_PREFIX, expand_devices
from .output import OutputOpt, fmt_duration, fmt_time, print_json, say, table, wants_json
from .root_cmds import diff_roots, propose

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
TenantArg = Annotated[str, typer.Argument(help="Tenant name or id.")]

automation_app = typer.Typer(help="The server's automation key and standing grants for scheduled work.",
                             no_args_is_help=True)
policy_app = typer.Typer(help="Patch policies: rings, window, deferral, reboot notices.",
                         no_args_is_help=True)
backup_policy_app = typer.Typer(help="When each device's backup runs and how old it may get.",
                                no_args_is_help=True)
patch_app.add_typer(policy_app, name="policy")
backup_app.add_typer(backup_policy_app, name="policy")


def _automation_key(doc: Any) -> tuple[str, str]:
    """(key id, base64 public key) of the server's answer, the id recomputed from the key."""
    d = expect_dict(doc, "automation key")
    text = d.get("public")
    if not isinstance(text, str):
        raise ServerProblem("the server sent an automation key without a public key")
    try:
        key = AutomationPublicKey.from_text(text)
    except trust.TrustError as exc:
        raise Refused(f"the server sent an invalid automation key: {exc}") from None
    if d.get("keyid") != key.key_id:
        raise Refused("the server's automation key id does not match its public key: refusing")
    return key.key_id, key.to_b64()


# --- automation ------------------------------------------------------------------------------------


@automation_app.command("enable")
def automation_enable(
    tenant: TenantArg,
    expires: Annotated[str, typer.Option("--expires", help="Lifetime of the proposed root.")] = "365d",
) -> None:
    """Create the tenant's automation key on the server and propose the next root naming it."""
    lifetime = parse_duration(expires, what="--expires")
    cfg, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        kid, pub = _automation_key(client.post(f"/tenants/{t['id']}/automation-key", {}))
        current = trusted_root(cfg, client, t["id"], allow_expired=True)
        if kid in current.automation:
            say(f"the automation key {kid[:16]}… is already in root v{current.version} of {t['name']}")
            return
        new = propose(client, t["id"], current, add=[(kid, "automation")], remove=[], owner_threshold=None,
                      lifetime_s=lifetime, sync=False, cfg=cfg,
                      extra_keys={kid: KeyEntry(public=pub, name="server-automation")})
    say(f"the server's automation key for {t['name']}: {kid}")
    say(f"proposed root v{new.version}:")
    for line in diff_roots(current.root, new):
        say(f"  {line}")
    say("It can only trigger os-update, backup-run and inventory-refresh under standing grants that")
    say(f"approvers sign. Owners: `rampart root sign {t['name']}`, then `rampart root publish {t['name']}`.")


@automation_app.command("show")
def automation_show(tenant: TenantArg, json_out: JsonOpt = False) -> None:
    """The server's automation key of a tenant and whether your trusted root names it."""
    cfg, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        kid, _ = _automation_key(client.get(f"/tenants/{t['id']}/automation-key"))
        current = trusted_root(cfg, client, t["id"], allow_expired=True)
    doc = {"tenant": t["id"], "keyid": kid, "in_root": kid in current.automation,
           "root_version": current.version}
    if json_out:
        print_json(doc)
        return
    say(f"automation key {kid}")
    say(f"  in root v{current.version}: {'yes' if doc['in_root'] else 'no (rampart automation enable)'}")


def _policy_devices(client: Client, tenant_id: str, name: str) -> list[str]:
    doc = expect_dict(client.get(f"/tenants/{tenant_id}/patch-policies/{name}"), "patch policy")
    return [d for r in expect_list(doc.get("rings"), "rings") for d in expect_dict(r, "ring")["devices"]]


@automation_app.command("grant")
def automation_grant(
    tenant: TenantArg,
    action: Annotated[list[str], typer.Option("--action", help="os-update, reboot, backup-run or "
                                                              "inventory-refresh (repeatable).")],
    devices: Annotated[str | None, typer.Option("--devices", help="Comma-separated device ids or "
                                                                  "group:NAME.")] = None,
    policy: Annotated[str | None, typer.Option("--policy", help="Every device of this patch policy "
                                                                "now.")] = None,
    duration: Annotated[str, typer.Option("--for", help="How long the standing grant lasts.")] = "90d",
    reason: Annotated[str, typer.Option("--reason", help="Why (shown to approvers).")] = "scheduled work",
    json_out: JsonOpt = False,
) -> None:
    """Request a standing grant for the server's automation key; approvers then sign it."""
    kinds = list(dict.fromkeys(action))
    bad = [a for a in kinds if a not in ("os-update", "reboot", "backup-run", "inventory-refresh")]
    if bad:
        raise UsageProblem("--action must be os-update, reboot, backup-run or inventory-refresh, "
                           f"not {bad[0]!r}")
    if (devices is None) == (policy is None):
        raise UsageProblem("give either --devices or --policy")
    seconds = parse_duration(duration, what="--for")
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        devs = expand_devices(client, t["id"], split_list(devices, "--devices")) if devices is not None \
            else _policy_devices(client, t["id"], str(policy))
        doc = expect_dict(client.post(f"/tenants/{t['id']}/grants", {
            "devices": devs, "capabilities": sorted({ACTION_CAPABILITY[a] for a in kinds}),
            "actions": kinds, "duration_s": seconds, "reason": reason, "for_automation": True}), "grant")
    if json_out:
        print_json({"id": doc.get("id"), "tenant": t["id"], "devices": devs, "actions": kinds,
                    "duration_s": seconds})
        return
    say(f"requested standing grant {doc.get('id')} for the automation key: {', '.join(kinds)} on "
        f"{len(devs)} device(s) for {fmt_duration(seconds)}")
    say(f"approvers: `rampart grant approve {doc.get('id')}`")


# --- patch policies ------------------------------------------------------------------------------------


def parse_ring(text: str) -> dict[str, Any]:
    """``NAME=DEV1,group:G,...[@DELAY]``: the ring's devices and device groups, and for a later ring
    its delay after the previous. Groups are expanded by the server whenever the scheduler runs."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise UsageProblem(f"--ring is NAME=DEVICE,group:GROUP,...[@DELAY], not {text[:80]!r}")
    members, at, delay = rest.partition("@")
    items = split_list(members, f"ring {name}")
    return {"name": name.strip(), "devices": [i for i in items if not i.startswith(GROUP_PREFIX)],
            "groups": [i.removeprefix(GROUP_PREFIX) for i in items if i.startswith(GROUP_PREFIX)],
            "delay_s": parse_duration(delay, what=f"the delay of ring {name}") if at else 0}


def parse_duration(text: str, *, what: str) -> int:
    """``0s``, ``30m``, ``4h``, ``7d``, ``2w`` as seconds (zero allowed: a delay or deferral of none)."""
    try:
        return windows.parse_duration(text, what=what)
    except windows.WindowError as exc:
        raise UsageProblem(str(exc)) from None


def _window_text(text: str) -> str:
    Window, WindowError = windows.Window, windows.WindowError
    try:
        Window.parse(text)
    except WindowError as exc:
        raise UsageProblem(f"--window: {exc}") from None
    return text


@policy_app.command("set")
def policy_set(
    tenant: TenantArg,
    name: Annotated[str, typer.Argument(help="Policy name (lower case).")],
    ring: Annotated[list[str], typer.Option("--ring", help="NAME=DEVICE,group:GROUP,...[@DELAY], pilot "
                                                          "first (repeatable).")],
    window: Annotated[str, typer.Option("--window", help="'DAYS HH:MM DURATION' in UTC, or 'always'.")
                      ] = "always",
    defer: Annotated[str, typer.Option("--defer", help="Apply an update only once it has been pending "
                                                       "this long.")] = "0s",
    reboot: Annotated[str, typer.Option("--reboot", help="never; notify (alert while a reboot is required); "
                                                         "if-required (also a reboot job).")] = "never",
    timeout: Annotated[str, typer.Option("--timeout", help="Time limit of each update job.")] = "30m",
    disabled: Annotated[bool, typer.Option("--disabled", help="Store it without scheduling.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Create or replace a patch policy (the scheduler runs it under a standing grant)."""
    if reboot not in ("never", "notify", "if-required"):
        raise UsageProblem("--reboot must be never, notify or if-required")
    body = {"rings": [parse_ring(r) for r in ring], "window": _window_text(window),
            "defer_s": parse_duration(defer, what="--defer"), "reboot": reboot,
            "timeout_s": parse_duration(timeout, what="--timeout"), "enabled": not disabled}
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        doc = expect_dict(client.put(f"/tenants/{t['id']}/patch-policies/{name}", body), "patch policy")
    if json_out:
        print_json(doc)
        return
    _print_policy(doc)
    extra = " --action reboot" if reboot == "if-required" else ""
    say(f"the scheduler needs a standing grant: `rampart automation grant {t['name']} --action os-update"
        f"{extra} --policy {name}`, approved by approvers")


def _print_policy(doc: dict[str, Any]) -> None:
    say(f"patch policy {doc.get('name')}: window {doc.get('window')}, "
        f"defer {fmt_duration(doc.get('defer_s') or 0)}, reboot {doc.get('reboot')}"
        + ("" if doc.get("enabled") else ", DISABLED"))
    for i, r in enumerate(expect_list(doc.get("rings"), "rings")):
        after = "" if i == 0 else f" ({fmt_duration(r.get('delay_s') or 0)} after the previous ring)"
        named = [f"group:{g}" for g in r.get("groups") or []] + list(r.get("members") or [])
        via = f" [{', '.join(named)}]" if r.get("groups") else ""
        say(f"  ring {r.get('name')}: {', '.join(r.get('devices') or []) or '(no device now)'}{via}{after}")


def _cycle_line(c: dict[str, Any] | None) -> str:
    if not c:
        return "no cycle yet"
    line = f"{c.get('state')} at ring {c.get('ring_name')} (started {fmt_time(c.get('started_at'))})"
    return line + (f": {c.get('detail')}" if c.get("detail") else "")


@policy_app.command("list")
def policy_list(tenant: TenantArg, json_out: JsonOpt = False) -> None:
    """Every patch policy of a tenant with its current cycle."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        rows = expect_list(client.get(f"/tenants/{t['id']}/patch-policies"), "patch policies")
    if json_out:
        print_json(rows)
        return
    table(["policy", "rings", "window", "defer", "reboot", "cycle"],
          ([r.get("name"), " → ".join(f"{g['name']}({len(g['devices'])})" for g in r.get("rings") or []),
            r.get("window"), fmt_duration(r.get("defer_s") or 0), r.get("reboot"),
            _cycle_line(r.get("cycle"))] for r in rows), title="Patch policies")


def _show(tenant: str, name: str, json_out: bool) -> None:
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        doc = expect_dict(client.get(f"/tenants/{t['id']}/patch-policies/{name}"), "patch policy")
    if json_out:
        print_json(doc)
        return
    _print_policy(doc)
    for c in expect_list(doc.get("cycles"), "cycles"):
        say(f"cycle {c.get('id')}: {_cycle_line(c)}")
        table(["ring", "device", "state", "updated", "failed", "reboot", "detail"],
              ([r.get("ring"), r.get("device"), r.get("state"), r.get("updated"), r.get("failed"),
                "yes" if r.get("reboot_required") else "", r.get("detail")] for r in c.get("runs") or []),
              title="Runs", plain_title=True)


@policy_app.command("show")
def policy_show(tenant: TenantArg, name: Annotated[str, typer.Argument(help="Policy name.")],
                json_out: JsonOpt = False) -> None:
    """A policy with its latest cycles and every device's run."""
    _show(tenant, name, json_out)


@policy_app.command("remove")
def policy_remove(tenant: TenantArg, name: Annotated[str, typer.Argument(help="Policy name.")]) -> None:
    """Remove a policy (its standing grant stays until it expires or is revoked)."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        client.request("DELETE", f"/tenants/{t['id']}/patch-policies/{name}")
    say(f"removed patch policy {name}; revoke its standing grant with `rampart grant revoke` if it is "
        "no longer needed")


@patch_app.command("status")
def patch_status(tenant: TenantArg, json_out: JsonOpt = False) -> None:
    """Every patch policy of a tenant with its current cycle (same as `patch policy list`)."""
    policy_list(tenant, json_out)


@patch_app.command("resume")
def patch_resume(tenant: TenantArg, name: Annotated[str, typer.Argument(help="Policy name.")]) -> None:
    """Accept a halted ring's failures (approvers, owners): the cycle goes on with the next ring."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        doc = expect_dict(client.post(f"/tenants/{t['id']}/patch-policies/{name}/resume", {}), "cycle")
    say(f"policy {name}: {_cycle_line(doc)}")


@patch_app.command("report")
def patch_report(
    tenant: TenantArg,
    older_than: Annotated[str, typer.Option("--older-than", help="Report security updates pending longer "
                                                                 "than this as overdue.")] = "7d",
    json_out: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """Security updates pending on each device, ring by ring: all of them, and those older than N days.

    Each update shows the security fix (the newest version a security archive offers), and the
    newest candidate after it when that is newer still ("openssl 3.0.15 (candidate 3.1.0)").
    """
    seconds = parse_duration(older_than, what="--older-than")
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        doc = expect_dict(client.get(f"/tenants/{t['id']}/patch-report", older_than_s=seconds),
                          "patch report")
    if wants_json(json_out, output):
        print_json(doc)
        return
    say(f"{t['name']}: {doc.get('devices_security_pending', '?')} device(s) with security updates "
        f"pending, {doc.get('devices_missing')} of them pending for more than {fmt_duration(seconds)}")
    for ring in expect_list(doc.get("rings"), "rings"):
        title = f"{ring.get('policy')} / {ring.get('ring')}" if ring.get("policy") else "No patch policy"
        table(["device", "host", "security pending", f"older than {fmt_duration(seconds)}",
               "oldest (days)", "pending", "reboot", "last run"],
              ([m.get("device"), m.get("hostname"),
                _updates(m.get("security_updates")) if m.get("inventory") else "no inventory",
                _updates(m.get("missing_security")),
                m.get("oldest_security_days"), m.get("pending") if m.get("inventory") else "no inventory",
                "yes" if m.get("reboot_required") else "",
                (m.get("last_run") or {}).get("state")] for m in ring.get("devices") or []),
              title=f"{title}: {ring.get('missing')} missing", plain_title=True)


def _updates(updates: Any) -> str:
    """``name security-version [(candidate newer)], ...`` of a report's update list."""
    out = []
    for u in updates or []:
        if isinstance(u, dict):
            fix = u.get("security_version") or u.get("candidate")
            newer = f" (candidate {u.get('candidate')})" if u.get("candidate") not in (None, fix) else ""
            out.append(f"{u.get('name')} {fix}{newer}")
    return ", ".join(out)


# --- backup policies -------------------------------------------------------------------------------------


@backup_policy_app.command("set")
def backup_policy_set(
    tenant: TenantArg,
    device: Annotated[str, typer.Argument(help="Device id.")],
    every: Annotated[str, typer.Option("--every", help="How often the backup runs.")] = "24h",
    window: Annotated[str, typer.Option("--window", help="'DAYS HH:MM DURATION' in UTC, or 'always'.")
                      ] = "always",
    max_age: Annotated[str | None, typer.Option("--max-age", help="Alert when the newest good archive is "
                                                                  "older (default 2 × every + 1h).")] = None,
    verify_max_age: Annotated[str | None, typer.Option(
        "--verify-max-age", help="Alert when the newest passing check and restore test is older "
                                 "(default 7d).")] = None,
    keep_daily: Annotated[int, typer.Option("--keep-daily",
                                            help="Retention for the vault holder's prune.")] = 7,
    keep_weekly: Annotated[int, typer.Option("--keep-weekly")] = 4,
    keep_monthly: Annotated[int, typer.Option("--keep-monthly")] = 6,
    timeout: Annotated[str, typer.Option("--timeout", help="Time limit of each backup job.")] = "1h",
    disabled: Annotated[bool, typer.Option("--disabled", help="Keep the policy, stop scheduling.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Schedule a device's backup (its paths and vault are the device's own settings)."""
    body = {"every_s": parse_duration(every, what="--every"), "window": _window_text(window),
            "max_age_s": parse_duration(max_age, what="--max-age") if max_age else None,
            "verify_max_age_s": parse_duration(verify_max_age, what="--verify-max-age")
            if verify_max_age else None,
            "retention": {"daily": keep_daily, "weekly": keep_weekly, "monthly": keep_monthly},
            "timeout_s": parse_duration(timeout, what="--timeout"), "enabled": not disabled}
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        doc = expect_dict(client.put(f"/tenants/{t['id']}/devices/{device}/backup-policy", body), "status")
    if json_out:
        print_json(doc)
        return
    p = expect_dict(doc.get("policy"), "policy")
    say(f"backup of {device}: every {fmt_duration(p['every_s'])}, window {p['window']}, alert after "
        f"{fmt_duration(p['max_age_s'])} without a good archive or {fmt_duration(p['verify_max_age_s'])} "
        "without a passing verification")
    say(f"retention (the vault holder's offline prune, docs/backup-vault.md): {p['prune']}")
    say(f"the scheduler needs a standing grant: `rampart automation grant {t['name']} --action backup-run "
        f"--devices {device}`")


@backup_policy_app.command("remove")
def backup_policy_remove(tenant: TenantArg,
                         device: Annotated[str, typer.Argument(help="Device id.")]) -> None:
    """Stop scheduling a device's backups (archives stay in the vault)."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        client.request("DELETE", f"/tenants/{t['id']}/devices/{device}/backup-policy")
    say(f"removed the backup policy of {device}; its archives stay in the append-only vault")


@backup_app.command("status")
def backup_status(tenant: TenantArg, json_out: JsonOpt = False) -> None:
    """Every device's newest archive and verification, and whether it is ok, stale, failed or unverified."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        rows = expect_list(client.get(f"/tenants/{t['id']}/backup-status"), "backup status")
    if json_out:
        print_json(rows)
        return
    table(["device", "host", "state", "newest archive", "verified", "schedule", "why"],
          ([r.get("device"), r.get("hostname"), r.get("state"), fmt_time(r.get("last_archive_at")),
            fmt_time(r.get("last_verified_at")),
            f"every {fmt_duration(r['policy']['every_s'])}" if r.get("policy") else "no policy",
            r.get("why") or ((r.get("policy") or {}).get("trigger_error") or "")] for r in rows),
          title="Backups")


def register(app: typer.Typer) -> None:
    app.add_typer(automation_app, name="automation")
