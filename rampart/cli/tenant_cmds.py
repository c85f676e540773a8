"""Tenants, enrolment commands and devices.

Security invariants:

* ``tenant create`` builds root v1 locally from the members' registered keys,
  shows who gets which role, signs it with the caller's own owner key and
  stores it as trusted only after the server accepted it. The caller's key
  must be an owner of the root it signs. Its second owner is an offline
  recovery key whose private half is shown once or written to a new 0600
  file before the root is published, and never sent (:mod:`.recovery`).
* ``enroll new`` prints the root SHA-256 of the root this operator verified and
  the certificate fingerprint pinned at login, never the server's claims about
  them: a compromised server cannot make a new agent pin a root it forged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rampart.textsafe import safe_line

from .client import Client, expect_dict, expect_list, field, split_server
from .common import (
    api,
    key_passphrase,
    local_root,
    new_key_passphrase,
    now,
    resolve_tenant,
    trust_root_v1,
    trusted_root,
    unlock_key,
)
from .config import Config, Session
from .errors import ServerProblem, UsageProblem
from .output import OutputOpt, fmt_time, note, parse_duration, print_json, say, table, wants_json

if TYPE_CHECKING:  # the trust core and the root commands load only where a command needs them
    from rampart import trust
    from rampart.trust import OperatorKey, TenantRoot

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
DEFAULT_AGENT_STATE = "/var/lib/rampart-agent"

tenant_app = typer.Typer(help="Tenants (customers).", no_args_is_help=True)
enroll_app = typer.Typer(help="Enrol devices.", no_args_is_help=True)
devices_app = typer.Typer(help="List devices.", no_args_is_help=True)
device_app = typer.Typer(help="Manage one device.", no_args_is_help=True)


# --- reusable flows --------------------------------------------------------------------------


def build_root_v1(client: Client, tenant: dict[str, Any], owner: OperatorKey,
                  owner_name: str, recovery: OperatorKey | None = None) -> TenantRoot:
    """Root v1 with this owner's own key (owner and approver), owner threshold 1.

    ``recovery``, if given, is a second owner key: the offline recovery key
    (:mod:`rampart.cli.recovery`), enough alone to sign v2 if the owner's key is
    lost. Nothing the server lists goes in (issue 11): other members' keys join
    by a root rotation in which an owner confirms each key's fingerprint.
    """
    from rampart.trust import KeyEntry, Policy

    from .recovery import recovery_entry
    from .root_cmds import DEFAULT_ROOT_LIFETIME, log_keys_of, make_root

    tid = field(tenant, "id", str, "tenant")
    log_entries = tenant.get("log_keys")
    if not log_entries:
        log_entries = expect_dict(client.get(f"/tenants/{tid}"), "tenant").get("log_keys")
    kid = owner.key_id
    keys = {kid: KeyEntry(public=owner.public.to_b64(), name=owner_name[:128])}
    roles = {"owner": [kid], "approver": [kid]}
    if recovery is not None:
        keys[recovery.key_id] = recovery_entry(recovery, now())
        roles["owner"].append(recovery.key_id)
    return make_root(tenant=tid, name=str(tenant.get("name") or tid), version=1,
                     expires=now() + DEFAULT_ROOT_LIFETIME, keys=keys, roles=roles,
                     thresholds={"owner": 1}, log_keys=log_keys_of(log_entries), policy=Policy())


@dataclass(frozen=True, slots=True)
class NewTenant:
    """What ``tenant create`` made: the trusted root v1 and, once, the recovery sheet."""

    trusted: trust.TrustedRoot
    recovery: OperatorKey | None
    sheet: str | None
    sheet_path: Path | None


def create_tenant(cfg: Config, client: Client, session: Session, name: str, *,
                  recovery: bool = True, recovery_file: Path | None = None) -> NewTenant:
    """Create the tenant (or finish one left without a root) and publish its signed root v1.

    The owner's signing key for the tenant is made here (keys are per tenant,
    M5) and sealed with the owner's passphrase, which is checked first. With
    ``recovery``, an offline recovery key joins root v1 as a second owner; its
    sheet is written to ``recovery_file`` (a new file, or a directory to put
    ``recovery-key-TENANT.txt`` in) *before* the root is published, so a key
    that could not be saved never becomes an owner.
    """
    from rampart import trust
    from rampart.trust import ROOT_TYPE, OperatorKey

    from .auth_cmds import make_tenant_key
    from .recovery import save_sheet, sheet

    if recovery_file is not None and not recovery_file.is_dir() and recovery_file.exists():
        raise UsageProblem(f"{recovery_file} exists: give a new file (or a directory) for the "
                           "recovery key")
    passphrase = new_key_passphrase(cfg, session)  # before anything changes on the server
    try:
        tenant = expect_dict(client.post("/tenants", {"name": name}), "tenant")
    except ServerProblem as exc:
        if exc.status != 409:
            raise
        existing = [t for t in expect_list(client.get("/tenants"), "tenants")
                    if isinstance(t, dict) and t.get("name") == name]
        if len(existing) != 1 or existing[0].get("status") != "pending-root":
            raise
        tenant = existing[0]
        note(f"tenant {name} exists without a root: publishing its root v1 now")
    tid = field(tenant, "id", str, "tenant")
    with key_passphrase(passphrase):
        mine = [k for k in cfg.key_candidates(session.username, tid) if k.tenant == tid]
        if mine:
            info = mine[0]
        else:
            made = make_tenant_key(cfg, client, session, tid, name=session.username)
            info = next(k for k in cfg.list_keys(session.username) if k.keyid == made["keyid"])
        key = unlock_key(info)
    spare = OperatorKey.generate() if recovery else None
    root = build_root_v1(client, tenant, key, info.name, spare)
    env = trust.sign_envelope(ROOT_TYPE, trust.encode_payload(root), [key])
    data = env.to_bytes()
    trust.pin_root(data, expected_sha256=trust.root_sha256(data), now=now())  # self-check
    text = path = None
    if spare is not None:
        text = sheet(root.tenant, root.name, spare, root_version=1,
                     root_sha256=trust.root_sha256(data))
        if recovery_file is not None:
            path = recovery_file / f"recovery-key-{root.tenant}.txt" if recovery_file.is_dir() \
                else recovery_file
            save_sheet(path, text)
    client.post(f"/tenants/{root.tenant}/roots", {"envelope": data.decode()})
    tr = trust_root_v1(cfg, data)
    return NewTenant(tr, spare, text, path)


def enrollment_command(cfg: Config, client: Client, session: Session, tenant_id: str, ttl_s: int,
                       *, state: str, agent_server: str | None) -> dict[str, Any]:
    """A one-time token and the agent command, with locally verified pins.

    The command never carries the token (a flag shows in `ps` and shell history): the
    agent reads it from ``RAMPART_ENROLL_TOKEN`` (:data:`TOKEN_ENV`), set by a no-echo
    ``read`` first (``token_step``).
    """
    tr = trusted_root(cfg, client, tenant_id)
    doc = expect_dict(client.post(f"/tenants/{tenant_id}/enrollment-tokens", {"ttl_s": ttl_s}),
                      "enrolment token")
    token = field(doc, "token", str, "enrolment token")
    if doc.get("root_sha256") not in (None, tr.sha256):
        note("warning: the server suggested a different root SHA-256 than the root you verified; "
             "using yours")
    if doc.get("cert_sha256") not in (None, session.cert_sha256):
        note("warning: the server suggested a different certificate fingerprint than the one you "
             "pinned; using yours")
    server = split_server(agent_server)[2] if agent_server else session.server
    command = (f"rampart-agent enroll --server {server} --root-sha256 {tr.sha256} "
               f"--cert-sha256 {session.cert_sha256} --state {state}")
    return {"token": token, "expires_at": doc.get("expires_at"), "server": server,
            "root_sha256": tr.sha256, "root_version": tr.version,
            "cert_sha256": session.cert_sha256, "token_env": TOKEN_ENV,
            "token_step": f"read -rs {TOKEN_ENV} && export {TOKEN_ENV}", "command": command}


#: The environment variable `rampart-agent enroll` reads the one-time token from.
TOKEN_ENV = "RAMPART_ENROLL_TOKEN"  # noqa: S105 - a variable name, not a secret


# --- commands --------------------------------------------------------------------------------


@tenant_app.command("create")
def tenant_create(
    name: Annotated[str, typer.Argument(help="Tenant (customer) name.")],
    recovery_key_file: Annotated[Path | None, typer.Option(
        "--recovery-key-file", help="Write the offline recovery key sheet to this new file (or "
        "into this directory) instead of printing it; keep it off-line.")] = None,
    no_recovery_key: Annotated[bool, typer.Option(
        "--no-recovery-key", help="Make no recovery key: losing your owner key then means the "
        "root can never change again unless the tenant has other owners.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Create a tenant and its root v1, signed locally with your owner key.

    Root v1 also names an offline recovery key as a second owner; its paper
    key is shown once (or written to --recovery-key-file): with it alone you
    can sign the next root if your owner key is lost (`rampart root recover`).
    """
    from .recovery import paper_key
    from .root_cmds import print_root

    if no_recovery_key and recovery_key_file is not None:
        raise UsageProblem("--no-recovery-key and --recovery-key-file exclude each other")
    cfg, client, session = api()
    with client:
        made = create_tenant(cfg, client, session, name, recovery=not no_recovery_key,
                             recovery_file=recovery_key_file)
    tr = made.trusted
    if json_out:
        doc: dict[str, Any] = {"id": tr.tenant, "name": tr.root.name, "root_version": tr.version,
                               "root_sha256": tr.sha256,
                               "owner_keys": list(tr.root.roles.owner.keyids)}
        if made.recovery is not None:
            doc["recovery_keyid"] = made.recovery.key_id
            if made.sheet_path is not None:
                doc["recovery_key_file"] = str(made.sheet_path)
            else:
                doc["recovery_key"] = paper_key(tr.tenant, made.recovery)
        print_json(doc)
        return
    say(f"tenant {tr.root.name} created: {tr.tenant}")
    print_root(tr.root, tr.sha256)
    if made.sheet_path is not None:
        say(f"the offline recovery key is in {made.sheet_path} (mode 0600): move it off-line "
            "(print it, then delete the file); it is not shown again")
    elif made.sheet is not None:
        say("")
        for line in made.sheet.splitlines():
            say(line)
        say("write the recovery key down now (or rerun with --recovery-key-file next time): "
            "it is not shown again and Rampart keeps no copy")


@tenant_app.command("list")
def tenant_list(json_out: JsonOpt = False, output: OutputOpt = None) -> None:
    """List the tenants this account can see."""
    cfg, client, _ = api()
    with client:
        docs = expect_list(client.get("/tenants"), "tenants")
    for d in docs:
        if isinstance(d, dict) and isinstance(d.get("id"), str):
            lr = local_root(cfg, d["id"]) if cfg.load_root_bytes(d["id"]) else None
            d["trusted_root_version"] = lr.version if lr else None
    if wants_json(json_out, output):
        print_json(docs)
        return
    table(["id", "name", "status", "your trusted root"],
          ([d.get("id"), d.get("name"), d.get("status"),
            f"v{d['trusted_root_version']}" if d.get("trusted_root_version") else "-"]
           for d in docs if isinstance(d, dict)), title="Tenants")


def _confirm_name(t: dict[str, Any], given: str | None, *, prompt: str, nothing: str) -> str:
    """The tenant's name as the operator typed it again (``--confirm`` or asked on a terminal);
    UsageProblem, with ``nothing`` said, if it does not match."""
    from . import prompts

    typed = given
    if typed is None and prompts.stdin_is_tty():
        typed = input(f"Type the tenant's name ({safe_line(str(t['name']))}) {prompt}: ").strip()
    if typed is None or typed != t["name"]:
        raise UsageProblem(f"the tenant's name was not confirmed (--confirm NAME): {nothing}")
    return typed


@tenant_app.command("archive")
def tenant_archive(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    confirm_name: Annotated[str | None, typer.Option(
        "--confirm", help="The tenant's name, typed again (asked for on a terminal).")] = None,
) -> None:
    """Archive a tenant (owners; asks for a fresh TOTP code): devices refused, no job accepted, all kept."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        _confirm_name(t, confirm_name, prompt="to archive it", nothing="nothing archived")
        client.post(f"/tenants/{t['id']}/archive")
    say(f"tenant {t['name']} archived: its devices are disconnected and refused, no job is accepted; "
        f"`rampart tenant unarchive {t['name']}` brings it back")


@tenant_app.command("unarchive")
def tenant_unarchive(tenant: Annotated[str, typer.Argument(help="Tenant name or id.")]) -> None:
    """Bring an archived tenant back (owners; asks for a fresh TOTP code)."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        client.post(f"/tenants/{t['id']}/unarchive")
    say(f"tenant {t['name']} unarchived: its agents reconnect within the hour (or at their restart)")


@tenant_app.command("delete")
def tenant_delete(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id (archived first).")],
    confirm_name: Annotated[str | None, typer.Option(
        "--confirm", help="The tenant's name, typed again (asked for on a terminal).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Delete an archived tenant for good (owners of every tenant; asks for a fresh TOTP code).

    Everything it holds is removed in one step; its audit log is kept, readable with
    `rampart audit verify|export`, until retention removes it (deleted_tenant_audit_days)."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        typed = _confirm_name(t, confirm_name, prompt="to delete it (this cannot be undone)",
                              nothing="nothing deleted")
        doc = expect_dict(client.post(f"/tenants/{t['id']}/delete", {"confirm": typed}), "deletion")
    if json_out:
        print_json(doc)
        return
    removed = doc.get("removed")
    count = sum(v for v in removed.values() if isinstance(v, int)) if isinstance(removed, dict) else 0
    say(f"tenant {t['name']} deleted ({count} records "
        f"removed); its audit log is kept until {fmt_time(doc.get('audit_until'))}")


@tenant_app.command("deleted")
def tenant_deleted(json_out: JsonOpt = False, output: OutputOpt = None) -> None:
    """List deleted tenants whose audit log is still kept (owners of every tenant)."""
    _, client, _ = api()
    with client:
        docs = expect_list(client.get("/deleted-tenants"), "deleted tenants")
    if wants_json(json_out, output):
        print_json(docs)
        return
    table(["id", "name", "deleted", "by", "audit log kept until"],
          ([d.get("id"), d.get("name"), fmt_time(d.get("deleted_at")), d.get("deleted_by"),
            fmt_time(d.get("audit_until"))] for d in docs if isinstance(d, dict)), title="Deleted tenants")


@enroll_app.command("new")
def enroll_new(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    ttl: Annotated[str, typer.Option("--ttl", help="Token lifetime, e.g. 1h.")] = "1h",
    state: Annotated[str, typer.Option("--state", help="Agent state directory in the command.")
                     ] = DEFAULT_AGENT_STATE,
    agent_server: Annotated[str | None, typer.Option(
        "--agent-server", help="Server URL as agents reach it (default: your login URL).")] = None,
    package: Annotated[Path | None, typer.Option(
        "--package", help="The agent .deb or bundle (`make deb`, `make agent-bundle`): print one "
        "line that checks its SHA-256, installs it and enrols.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Print the `rampart-agent enroll` command and a one-time token (never on its command line)."""
    from .agent_install import AgentPackage

    ttl_s = parse_duration(ttl, what="--ttl")
    pkg = AgentPackage.read(package) if package is not None else None  # before a token is made
    cfg, client, session = api()
    with client:
        t = resolve_tenant(client, tenant)
        out = enrollment_command(cfg, client, session, t["id"], ttl_s, state=state,
                                 agent_server=agent_server)
    line = pkg.install_line(out["command"], TOKEN_ENV) if pkg is not None else None
    if pkg is not None:
        out.update(install_line=line, package=pkg.name, package_sha256=pkg.sha256)
    if json_out:
        print_json(out)
        return
    if pkg is not None:
        say(f"install and enrol: in a root bash on the device, in the directory holding {pkg.name}, "
            f"before {fmt_time(out['expires_at'])}, run this line and paste the token at its silent prompt:")
        say(f"  {line}")
        say(f"package SHA-256 {pkg.sha256} (the line refuses any other file; compare with the build's)")
        say(f"one-time enrolment token: {out['token']}")
        say(f"then approve it: rampart device approve {t['name']} DEVICE")
        return
    say(f"run on the device in a root shell, before {fmt_time(out['expires_at'])} (the first line "
        f"reads the token without echo: paste it there, never on a command line):")
    say(f"  {out['token_step']}")
    say(f"  {out['command']}")
    say(f"one-time enrolment token: {out['token']}")
    say(f"then approve it: rampart device approve {t['name']} DEVICE")


def _devices(client: Client, tenant_id: str) -> list[Any]:
    return expect_list(client.get(f"/tenants/{tenant_id}/devices"), "devices")


@devices_app.command("list")
def devices_list(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    json_out: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """List a tenant's devices (pending devices receive no job until approved)."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        docs = _devices(client, t["id"])
    if wants_json(json_out, output):
        print_json(docs)
        return
    table(["id", "hostname", "status", "connected", "last seen", "enrolled", "groups"],
          ([d.get("id"), d.get("hostname"), d.get("status"),
            "yes" if d.get("connected") else "no", fmt_time(d.get("last_seen")),
            fmt_time(d.get("enrolled_at")), ", ".join(d.get("groups") or []) or "-"]
           for d in docs if isinstance(d, dict)),
          title="Devices")


@device_app.command("list")
def device_list(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    json_out: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """Same as `rampart devices list`."""
    devices_list(tenant, json_out, output)


@device_app.command("approve")
def device_approve(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    device: Annotated[str, typer.Argument(help="Device id (dev-…).")],
) -> None:
    """Approve an enrolled device so it may receive jobs."""
    t = _device_call(tenant, device, "approve")
    say(f"device {device} approved in {t['name']}")


def _device_call(tenant: str, device: str, action: str, body: dict[str, str] | None = None) -> dict[str, Any]:
    """POST (or, with ``body``, PUT) ``/tenants/T/devices/DEV/ACTION``; the tenant as resolved."""
    if not device.startswith("dev-"):
        raise UsageProblem("a device id looks like dev-<24 hex>")
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        path = f"/tenants/{t['id']}/devices/{device}/{action}"
        if body is None:
            client.post(path)
        else:
            client.put(path, body)
    return t


@device_app.command("reject")
def device_reject(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    device: Annotated[str, typer.Argument(help="Device id (dev-…) of a pending enrolment.")],
) -> None:
    """Refuse a pending enrolment: the device is told and refused from then on."""
    t = _device_call(tenant, device, "reject")
    say(f"device {device} rejected in {t['name']}")


@device_app.command("retire")
def device_retire(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    device: Annotated[str, typer.Argument(help="Device id (dev-…).")],
) -> None:
    """Retire a device (asks for a fresh TOTP code): disconnected, refused, no job may target it."""
    t = _device_call(tenant, device, "retire")
    say(f"device {device} retired in {t['name']}: its agent is told and stops connecting")


@device_app.command("rename")
def device_rename(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    device: Annotated[str, typer.Argument(help="Device id (dev-…).")],
    name: Annotated[str, typer.Argument(help="The name operators will see for it.")],
) -> None:
    """Name a device as your team knows it (lists show it instead of the hostname it reported)."""
    t = _device_call(tenant, device, "name", {"name": name})
    say(f"device {device} is now named {safe_line(name)} in {t['name']}")


def register(app: typer.Typer) -> None:
    app.add_typer(tenant_app, name="tenant")
    app.add_typer(enroll_app, name="enroll")
    app.add_typer(devices_app, name="devices")
    app.add_typer(device_app, name="device")

