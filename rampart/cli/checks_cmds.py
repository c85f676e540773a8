"""``rampart checks``: disk, memory, CPU, service and port checks on a tenant's devices."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .client import expect_dict, expect_list
from .common import api, resolve_tenant
from .errors import UsageProblem
from .output import print_json, say, table

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
                json_out: JsonOpt = False) -> None:
    """List checks and the devices where each currently fails."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        docs = expect_list(client.get(f"/tenants/{t['id']}/checks"), "checks")
    if json_out:
        print_json(docs)
        return
    table(["id", "kind", "device", "parameters", "failing on"],
          ([d.get("id"), d.get("kind"), d.get("device") or "all",
            ", ".join(f"{k}={v}" for k, v in (d.get("params") or {}).items()),
            ", ".join(d.get("failing") or []) or "-"] for d in docs if isinstance(d, dict)),
          title="Checks")


@checks_app.command("remove")
def checks_remove(check: Annotated[str, typer.Argument(help="Check id (ck-…).")]) -> None:
    """Remove a check."""
    _, client, _ = api()
    with client:
        client.request("DELETE", f"/checks/{check}")
    say(f"check {check} removed")


def register(app: typer.Typer) -> None:
    app.add_typer(checks_app, name="checks")
