"""Access commands: account revoke/unlock/enable, grant revoke, tenant settings, alerts.

``account revoke`` disables the person on the server at once and then, for
each tenant whose root names one of their keys, proposes the next root
version without those keys, built from the owner's *locally verified* root
(the server never chooses what owners sign). ``grant revoke`` signs the
revocation with the caller's approver or owner key after checking the grant
against the trusted root.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer

from rampart import trust
from rampart.trust import REVOCATION_TYPE, Revocation

from . import prompts
from .auth_cmds import account_app
from .client import Client, expect_dict, expect_list, field
from .common import api, now, pick_key, refusing, resolve_tenant, trusted_root, unlock_key
from .errors import CliError, Refused, UsageProblem
from .grant_cmds import grant_app
from .output import OutputOpt, fmt_time, note, print_json, say, table, wants_json
from .root_cmds import DEFAULT_ROOT_LIFETIME, propose
from .tenant_cmds import tenant_app

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

alerts_app = typer.Typer(help="Alerts: list, acknowledge, resolve.", no_args_is_help=True)


# --- accounts ----------------------------------------------------------------------------------

@account_app.command("revoke")
def account_revoke(
    name: Annotated[str, typer.Argument(help="Account name.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the audit log).")] = "",
    json_out: JsonOpt = False,
) -> None:
    """Disable an account now, end its sessions, and propose roots without its keys.

    Owners then sign each proposal (`rampart root sign T`) and publish it
    (`rampart root publish T`); from that root on, agents refuse the keys.
    """
    cfg, client, _ = api()
    with client:
        doc = expect_dict(client.post(f"/accounts/{name}/revoke", {"reason": reason}),
                          "account revocation")
        keyids = {str(k.get("keyid")) for k in doc.get("keys") or [] if isinstance(k, dict)}
        proposals: list[dict[str, Any]] = []
        for tid in [str(t) for t in doc.get("tenants") or []]:
            proposals.append(_propose_without(cfg, client, tid, keyids))
    out = {**doc, "proposals": proposals}
    if json_out:
        print_json(out)
        return
    say(f"account {name} disabled; {doc.get('sessions_ended', 0)} session(s) ended")
    if not proposals:
        say("no tenant root names their keys: nothing to rotate")
    for p in proposals:
        if p.get("version"):
            say(f"proposed root v{p['version']} of {p['tenant_name']} without "
                f"{len(p['removed'])} key(s): owners sign it with "
                f"`rampart root sign {p['tenant_name']}`, then `rampart root publish "
                f"{p['tenant_name']}`")
        else:
            say(f"{p['tenant_name']}: {p['error']}")


def _propose_without(cfg: Any, client: Client, tenant_id: str, keyids: set[str]) -> dict[str, Any]:
    """Propose the next root of one tenant without ``keyids``; report instead of failing."""
    out: dict[str, Any] = {"tenant": tenant_id, "tenant_name": tenant_id}
    try:
        current = trusted_root(cfg, client, tenant_id, allow_expired=True)
        out["tenant_name"] = current.root.name
        removed = sorted(keyids & set(current.root.keys))
        out["removed"] = removed
        owners_left = set(current.root.roles.owner.keyids) - set(removed)
        if len(owners_left) < current.root.roles.owner.threshold:
            raise Refused(f"removing these keys leaves {len(owners_left)} owner key(s) for an "
                          f"owner threshold of {current.root.roles.owner.threshold}: propose a "
                          "root with a replacement owner key by hand (rampart root propose)")
        new = propose(client, tenant_id, current, add=[], remove=removed, owner_threshold=None,
                      lifetime_s=DEFAULT_ROOT_LIFETIME, sync=False)
        out["version"] = new.version
    except CliError as exc:
        out["error"] = exc.message
    return out


def _account_change(name: str, action: str, done: str) -> None:
    _, client, _ = api()
    with client:
        doc = expect_dict(client.post(f"/accounts/{name}/{action}"), "account")
    say(f"account {name} {done} ({doc.get('status')})")


@account_app.command("unlock")
def account_unlock(name: Annotated[str, typer.Argument(help="Account name.")]) -> None:
    """End a lockout after failed logins."""
    _account_change(name, "unlock", "unlocked")


@account_app.command("enable")
def account_enable(name: Annotated[str, typer.Argument(help="Account name.")]) -> None:
    """Re-enable a disabled (dormant or revoked) account; dormancy counts afresh."""
    _account_change(name, "enable", "enabled")


@account_app.command("role")
def account_role(
    name: Annotated[str, typer.Argument(help="Account name.")],
    role: Annotated[str, typer.Argument(help="owner, approver, technician, viewer or customer-viewer.")],
) -> None:
    """Change an account's role (owners; asks for a fresh TOTP code). Its keys' roles in tenant
    roots change only with new roots: `rampart root propose`."""
    roles = ("owner", "approver", "technician", "viewer", "customer-viewer")
    if role not in roles:
        raise UsageProblem(f"the role is one of {', '.join(roles)}")
    _, client, _ = api()
    with client:
        doc = expect_dict(client.put(f"/accounts/{name}/role", {"role": role}), "account")
    say(f"account {name} is now {doc.get('role')}; the roles of its signing keys in tenant roots "
        "change only when owners publish new roots (rampart root propose)")


# --- grants ------------------------------------------------------------------------------------

@grant_app.command("revoke")
def grant_revoke(
    grant: Annotated[str, typer.Argument(help="Grant id (gr-…).")],
    reason: Annotated[str, typer.Option("--reason", help="Why (signed, and in the audit log).")
                      ] = "",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """End a grant early: sign a revocation with your approver or owner key and push it to agents."""
    if not grant.startswith("gr-"):
        raise UsageProblem("a grant id looks like gr-…")
    cfg, client, session = api()
    with client:
        summary = expect_dict(client.get(f"/grants/{grant}"), "grant")
        tenant_id = field(summary, "tenant", str, "grant")
        root = trusted_root(cfg, client, tenant_id)
        if summary.get("id") != grant:
            raise Refused("the server sent a different grant than the one asked for")
        info = pick_key(cfg, session, tenant_id, root, roles=("approver", "owner"))
        if (prompts.stdin_is_tty() and not yes
                and not prompts.confirm(f"Revoke {grant} ({summary.get('reason', '')})?")):
            raise Refused("not revoked")
        rev = Revocation(tenant=tenant_id, grant=grant, issued_at=now(), reason=reason)
        key = unlock_key(info)
        data = trust.sign_envelope(REVOCATION_TYPE, trust.encode_payload(rev), [key]).to_bytes()
        with refusing("revocation"):
            trust.verify_revocation(root, data)  # what every agent will check
        doc = expect_dict(client.post(f"/grants/{grant}/revocation",
                                      {"envelope": data.decode()}), "grant")
    say(f"grant {grant} revoked ({doc.get('status')}); agents refuse it from their next job on")


# --- tenant settings ---------------------------------------------------------------------------

@tenant_app.command("settings")
def tenant_settings(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    mass_action_limit: Annotated[int | None, typer.Option(
        "--mass-action-limit", help="Distinct devices per account per hour before step-up MFA.")
    ] = None,
    dormant_days: Annotated[int | None, typer.Option(
        "--dormant-days", help="Disable accounts without a login for this many days.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Show or change a tenant's access settings (changing needs the owner role)."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        body = {k: v for k, v in (("mass_action_limit", mass_action_limit),
                                  ("dormant_days", dormant_days)) if v is not None}
        path = f"/tenants/{t['id']}/settings"
        doc = expect_dict(client.put(path, body) if body else client.get(path), "settings")
    _print_settings(str(t.get("name", tenant)), doc, json_out)


@tenant_app.command("networks")
def tenant_networks(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    allow: Annotated[list[str] | None, typer.Option(
        "--allow", help="CIDR operators may act from (repeatable; replaces the list).")] = None,
    any_network: Annotated[bool, typer.Option(
        "--any", help="Clear the list: operators may act from any network.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Show or set the networks (CIDR) operators may log in and act from (N3)."""
    if allow and any_network:
        raise UsageProblem("give --allow CIDR… or --any, not both")
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        path = f"/tenants/{t['id']}/settings"
        if allow or any_network:
            doc = expect_dict(client.put(path, {"allowed_networks": list(allow or [])}), "settings")
        else:
            doc = expect_dict(client.get(path), "settings")
    _print_settings(str(t.get("name", tenant)), doc, json_out)


def _print_settings(name: str, doc: dict[str, Any], json_out: bool) -> None:
    if json_out:
        print_json(doc)
        return
    nets = doc.get("allowed_networks") or []
    say(f"{name}: step-up above {doc.get('mass_action_limit')} devices per hour; accounts "
        f"disabled after {doc.get('dormant_days')} days without login")
    if nets:
        say("approved networks: " + ", ".join(map(str, nets)))
    else:
        note(f"warning: {name} accepts operators from any network; restrict it with "
             f"`rampart tenant networks {name} --allow CIDR`")


# --- alerts ------------------------------------------------------------------------------------

@alerts_app.command("list")
def alerts_list(
    tenant: Annotated[str | None, typer.Argument(help="Tenant name or id (default: all).")] = None,
    status: Annotated[str, typer.Option(
        "--status", help="live (open or acknowledged), open, acknowledged, resolved or all.")
    ] = "live",
    kind: Annotated[str | None, typer.Option("--kind", help="Only this kind (rat-portable, ...).")] = None,
    severity: Annotated[str | None, typer.Option(
        "--severity", help="At least this severity: info, warning or critical.")] = None,
    device: Annotated[str | None, typer.Option(
        "--device", help="Only this device's alerts (dev-…), all of them.")] = None,
    per_device: Annotated[int | None, typer.Option(
        "--per-device", min=0, help="At most N alerts of one device (default 20; 0: no cap).")] = None,
    json_out: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """List alerts of a tenant, or of every tenant you reach: most severe first, then newest.

    One device shows at most 20 alerts unless --per-device or --device says
    otherwise; a line on stderr says how many each capped device has beyond.
    """
    if status not in ("live", "open", "acknowledged", "resolved", "all"):
        raise UsageProblem("--status must be live, open, acknowledged, resolved or all")
    if severity not in (None, "info", "warning", "critical"):
        raise UsageProblem("--severity must be info, warning or critical")
    if device is not None and not _DEVICE_ID.fullmatch(device):
        raise UsageProblem("--device must be a device id (dev- and 24 hex digits)")
    _, client, _ = api()
    query = {"status": status, "kind": kind, "severity": severity, "device": device,
             "per_device": per_device}
    with client:
        if tenant is None:
            raw, headers = client.get_with_headers("/alerts", **query)
        else:
            t = resolve_tenant(client, tenant)
            raw, headers = client.get_with_headers(f"/tenants/{t['id']}/alerts", **query)
    docs = expect_list(raw, "alerts")
    if wants_json(json_out, output):
        print_json(docs)
    else:
        table(["id", "severity", "kind", "status", "count", "last seen", "subject"],
              ([d.get("id"), d.get("severity"), d.get("kind"), d.get("status"), d.get("count"),
                fmt_time(d.get("last_seen")), d.get("subject")] for d in docs if isinstance(d, dict)),
              title="Alerts")
    for line in capped_lines(headers):
        note(line)


_DEVICE_ID = re.compile(r"dev-[0-9a-f]{24}")
_CAPPED_ENTRY = re.compile(r"(dev-[0-9a-f]{24})=([0-9]{1,9})")
_CAPPED_MORE = re.compile(r"devices=([0-9]{1,9}),alerts=([0-9]{1,9})")


def capped_lines(headers: dict[str, str]) -> list[str]:
    """What the server's per-device cap left out, one line per device (only well-formed entries)."""
    out = []
    for entry in headers.get("rampart-alerts-capped", "").split(","):
        m = _CAPPED_ENTRY.fullmatch(entry.strip())
        if m:
            dev, n = m.group(1), int(m.group(2))
            out.append(f"{dev}: {n} more alert{'s' if n != 1 else ''} not shown "
                       f"(--device {dev}, or --per-device 0)")
    more = _CAPPED_MORE.fullmatch(headers.get("rampart-alerts-capped-more", "").strip())
    if more:
        out.append(f"{more.group(1)} more devices: {more.group(2)} more alerts not shown (--per-device 0)")
    return out


@alerts_app.command("ack")
def alerts_ack(alert: Annotated[str, typer.Argument(help="Alert id (al-…).")]) -> None:
    """Acknowledge an alert (you are recorded as the one handling it)."""
    _, client, _ = api()
    with client:
        doc = expect_dict(client.post(f"/alerts/{alert}/ack"), "alert")
    say(f"alert {alert} acknowledged by {doc.get('acked_by')}")


@alerts_app.command("resolve")
def alerts_resolve(alert: Annotated[str, typer.Argument(help="Alert id (al-…).")]) -> None:
    """Resolve an alert."""
    _, client, _ = api()
    with client:
        doc = expect_dict(client.post(f"/alerts/{alert}/resolve"), "alert")
    say(f"alert {alert} resolved by {doc.get('resolved_by')}")


def register(app: typer.Typer) -> None:
    app.add_typer(alerts_app, name="alerts")
