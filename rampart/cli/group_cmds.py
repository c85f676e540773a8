"""Device groups: named sets of a tenant's devices that patch rings and device lists may name.

    rampart group set T NAME [--devices D,D,...] [--description TEXT]   create, or replace the devices
    rampart group add T NAME DEVICE...        rampart group remove T NAME DEVICE...
    rampart group list T [--json]             rampart group show T NAME [--json]
    rampart group delete T NAME

Elsewhere ``group:NAME`` stands for a group's devices: in ``--ring`` of
``rampart patch policy set`` (expanded by the server whenever the scheduler
runs) and in ``--devices`` of ``rampart grant request``, ``rampart
automation grant``, ``rampart run`` and the action commands (expanded here,
before signing: a grant or job lists the devices themselves, so a later
change of the group never widens it).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .client import Client, expect_dict, expect_list
from .common import api, resolve_tenant
from .errors import UsageProblem
from .output import fmt_time, print_json, say, table

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
TenantArg = Annotated[str, typer.Argument(help="Tenant name or id.")]
NameArg = Annotated[str, typer.Argument(help="Group name (lower case).")]
GROUP_PREFIX = "group:"

group_app = typer.Typer(help="Device groups: named sets of devices for patch rings and grants.",
                        no_args_is_help=True)


def _group_path(tenant_id: str, name: str) -> str:
    return f"/tenants/{tenant_id}/device-groups/{name}"


def group_devices(client: Client, tenant_id: str, name: str) -> list[str]:
    doc = expect_dict(client.get(_group_path(tenant_id, name)), "device group")
    return [str(d) for d in expect_list(doc.get("devices"), "devices")]


def expand_devices(client: Client, tenant_id: str, items: list[str]) -> list[str]:
    """Device ids, with each ``group:NAME`` replaced by the group's devices now (order kept, no repeats)."""
    out: dict[str, None] = {}
    for item in items:
        if item.startswith(GROUP_PREFIX):
            members = group_devices(client, tenant_id, item.removeprefix(GROUP_PREFIX))
            if not members:
                raise UsageProblem(f"device group {item.removeprefix(GROUP_PREFIX)} is empty")
            out.update(dict.fromkeys(members))
        else:
            out[item] = None
    return list(out)


def _print_group(doc: dict[str, Any]) -> None:
    used = ", ".join(doc.get("used_by") or []) or "no patch policy"
    say(f"device group {doc.get('name')}: {len(doc.get('devices') or [])} device(s), named by {used}")
    if doc.get("description"):
        say(f"  {doc.get('description')}")
    for d in doc.get("devices") or []:
        say(f"  {d}")


def _check_ids(devices: list[str]) -> list[str]:
    bad = [d for d in devices if not d.startswith("dev-")]
    if bad:
        raise UsageProblem(f"a device id looks like dev-<24 hex>, not {bad[0][:40]!r}")
    return devices


@group_app.command("set")
def group_set(
    tenant: TenantArg,
    name: NameArg,
    devices: Annotated[str, typer.Option(
        "--devices", help="Comma-separated device ids (replaces the group's devices; none: empty).")] = "",
    description: Annotated[str, typer.Option("--description", help="What the group is for.")] = "",
    json_out: JsonOpt = False,
) -> None:
    """Create a device group, or replace its devices and description."""
    ids = _check_ids([d.strip() for d in devices.split(",") if d.strip()])
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        doc = expect_dict(client.put(_group_path(t["id"], name),
                                     {"devices": ids, "description": description}), "device group")
    if json_out:
        print_json(doc)
        return
    _print_group(doc)


def _change(tenant: str, name: str, add: list[str], remove: list[str], json_out: bool) -> None:
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        doc = expect_dict(client.post(f"{_group_path(t['id'], name)}/members",
                                      {"add": _check_ids(add), "remove": _check_ids(remove)}),
                          "device group")
    if json_out:
        print_json(doc)
        return
    _print_group(doc)


@group_app.command("add")
def group_add(tenant: TenantArg, name: NameArg,
              device: Annotated[list[str], typer.Argument(help="Device ids (dev-…).")],
              json_out: JsonOpt = False) -> None:
    """Add devices to a group (a patch policy naming it considers them from its next ring)."""
    _change(tenant, name, device, [], json_out)


@group_app.command("remove")
def group_remove(tenant: TenantArg, name: NameArg,
                 device: Annotated[list[str], typer.Argument(help="Device ids (dev-…).")],
                 json_out: JsonOpt = False) -> None:
    """Take devices out of a group."""
    _change(tenant, name, [], device, json_out)


@group_app.command("list")
def group_list(tenant: TenantArg, json_out: JsonOpt = False) -> None:
    """Every device group of the tenant, with its size and the patch policies naming it."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        docs = [expect_dict(d, "device group")
                for d in expect_list(client.get(f"/tenants/{t['id']}/device-groups"), "device groups")]
    if json_out:
        print_json(docs)
        return
    table(["group", "devices", "patch policies", "description", "updated"],
          ([d.get("name"), len(d.get("devices") or []), ", ".join(d.get("used_by") or []) or "-",
            d.get("description") or "-", fmt_time(d.get("updated_at"))] for d in docs),
          title="Device groups")


@group_app.command("show")
def group_show(tenant: TenantArg, name: NameArg, json_out: JsonOpt = False) -> None:
    """A group's devices and the patch policies naming it."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        doc = expect_dict(client.get(_group_path(t["id"], name)), "device group")
    if json_out:
        print_json(doc)
        return
    _print_group(doc)


@group_app.command("delete")
def group_delete(tenant: TenantArg, name: NameArg) -> None:
    """Remove a group no patch policy names (its devices are not touched)."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        client.request("DELETE", _group_path(t["id"], name))
    say(f"device group {name} removed from {t['name']}")


def register(app: typer.Typer) -> None:
    app.add_typer(group_app, name="group")
