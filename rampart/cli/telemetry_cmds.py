"""Monitoring commands: inventory, remote access tools found, sanctioned tools, findings, the catalog.

    rampart inventory T DEVICE [--section S]... [--json]     (same as `inventory show`)
    rampart inventory refresh T DEVICE [--full]
    rampart tools list T [--json]
    rampart tools sanctioned T [--json]
    rampart tools allow T NAME
    rampart tools disallow T NAME
    rampart findings T [--status open|resolved|all] [--device D] [--kind K] [--json]
    rampart catalog import FILE [--json]
    rampart catalog show [--json]
    rampart suppressions add T --kind K (--path P | --sha256 H) [--device D] --reason R --days N
    rampart suppressions list T [--json]
    rampart suppressions remove T RULE

``catalog import`` reads a LOLRMM feed (untrusted input) on this machine with
:func:`rampart.catalog.load_feed`, shows what it skipped, and uploads the
normalised catalog; the server re-validates every tool before agents get it.
None of these commands signs anything: telemetry never makes an agent act.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core

from .client import Client, expect_dict, expect_list
from .common import api, resolve_tenant
from .errors import CliError, UsageProblem
from .output import fmt_time, note, print_json, say, table

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
TenantArg = Annotated[str, typer.Argument(help="Tenant name or id.")]
DeviceArg = Annotated[str, typer.Argument(help="Device id (dev-…) or hostname.")]

SECTIONS = ("agent", "os", "hardware", "patching", "disks", "packages", "updates", "processes",
            "services", "sockets", "users", "metrics")
_LISTS = ("disks", "packages", "updates", "processes", "services", "sockets", "users")
FINDING_STATUS = ("open", "resolved", "all")


class _ShowByDefault(typer.core.TyperGroup):
    """``rampart inventory T DEVICE`` means ``rampart inventory show T DEVICE``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["show", *args]
        return super().parse_args(ctx, args)


inventory_app = typer.Typer(cls=_ShowByDefault, no_args_is_help=True,
                            help="A device's inventory: `rampart inventory T DEVICE [--section S]`.")
tools_app = typer.Typer(help="Remote access tools found on devices, and the ones a tenant sanctions.",
                        no_args_is_help=True)
catalog_app = typer.Typer(help="The remote access tool catalog agents detect with.", no_args_is_help=True)
suppressions_app = typer.Typer(help="Suppression rules: silence one known false positive (exact path or "
                                    "SHA-256), with a reason and an expiry.", no_args_is_help=True)


def resolve_device(client: Client, tenant_id: str, text: str) -> dict[str, Any]:
    """A tenant's device by id or by exact hostname; one line error if none or ambiguous."""
    devices = [d for d in expect_list(client.get(f"/tenants/{tenant_id}/devices"), "devices")
               if isinstance(d, dict)]
    by_id = [d for d in devices if d.get("id") == text]
    if by_id:
        return by_id[0]
    by_name = [d for d in devices if d.get("hostname") == text]
    if len(by_name) == 1:
        return by_name[0]
    if len(by_name) > 1:
        raise UsageProblem(f"several devices are named {text!r}: use the device id")
    raise UsageProblem(f"no device {text!r} in this tenant")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _get(doc: Any, *path: str) -> Any:
    for name in path:
        doc = doc.get(name) if isinstance(doc, dict) else None
    return doc


def _size(n: object) -> str:
    if not isinstance(n, int | float) or isinstance(n, bool):
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return "-"


# --- inventory ---------------------------------------------------------------------------------------


@inventory_app.command("show")
def inventory_show(
    tenant: TenantArg,
    device: DeviceArg,
    section: Annotated[list[str] | None, typer.Option(
        "--section", "-s", help=f"Show this section as a table (repeatable): {', '.join(SECTIONS)}.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Show a device's inventory: a summary, or the sections asked for."""
    wanted = list(dict.fromkeys(section or []))
    bad = [x for x in wanted if x not in SECTIONS]
    if bad:
        raise UsageProblem(f"unknown section {bad[0]!r}: use one of {', '.join(SECTIONS)}")
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        dev = resolve_device(client, t["id"], device)
        doc = expect_dict(client.get(f"/tenants/{t['id']}/devices/{dev['id']}/inventory",
                                     section=wanted or None), "inventory")
    if json_out:
        print_json(doc)
        return
    if not wanted:
        _summary(doc)
        return
    for name in wanted:
        _section(name, doc.get(name))


def _summary(doc: dict[str, Any]) -> None:
    os_info = _dict(doc.get("os"))
    eol = _dict(os_info.get("eol"))
    hw = _dict(doc.get("hardware"))
    patching = _dict(doc.get("patching"))
    raw_updates = doc.get("updates")
    updates: list[Any] = raw_updates if isinstance(raw_updates, list) else []
    security = sum(1 for u in updates if isinstance(u, dict) and u.get("security"))
    support = eol.get("status", "unknown")
    if eol.get("eol_date"):
        support += f" (end of support {eol['eol_date']})"
    rows = [
        ("device", f"{doc.get('device')} ({doc.get('hostname')})"),
        ("collected", fmt_time(doc.get("collected_at"))),
        ("reported", fmt_time(doc.get("updated_at"))),
        ("os", f"{os_info.get('name', '-')} {os_info.get('arch', '')}".strip()),
        ("kernel", os_info.get("kernel_release", "-")),
        ("support", support),
        ("hardware", f"{hw.get('cpu_model') or '-'}; {hw.get('logical_cpus', '-')} CPUs; "
                     f"{_size(hw.get('mem_total_bytes'))} memory"),
        ("agent", f"{_get(doc, 'agent', 'version') or '-'}, containment "
                  f"{_get(doc, 'agent', 'containment') or '-'}"),
        ("patching", f"{patching.get('manager', '-')}; {len(updates)} pending update(s), {security} "
                     f"security; reboot required: {'yes' if patching.get('reboot_required') else 'no'}"),
        ("sections", ", ".join(f"{k} {len(doc[k])}" for k in _LISTS if isinstance(doc.get(k), list))),
    ]
    for kind in ("errors", "notes"):
        for name, text in (doc.get(kind) or {}).items():
            rows.append((kind[:-1], f"{name}: {text}"))
    table(["item", "value"], rows, title="Inventory")


_COLUMNS: dict[str, tuple[tuple[str, ...], Any]] = {
    "disks": (("mountpoint", "device", "fstype", "size", "read-only"),
              lambda d: (d.get("mountpoint"), d.get("device"), d.get("fstype"), _size(d.get("total_bytes")),
                         "yes" if d.get("read_only") else "no")),
    "packages": (("manager", "name", "version", "arch"),
                 lambda p: (p.get("manager"), p.get("name"), p.get("version"), p.get("arch"))),
    "updates": (("name", "installed", "candidate", "security", "origin"),
                lambda u: (u.get("name"), u.get("installed"), u.get("candidate"),
                           "yes" if u.get("security") else "no", u.get("origin"))),
    "processes": (("pid", "user", "name", "exe", "command line"),
                  lambda p: (p.get("pid"), p.get("user") or p.get("euid"), p.get("name"),
                             (p.get("exe") or "-") + (" (deleted)" if p.get("exe_deleted") else ""),
                             " ".join(p.get("cmdline") or [])[:120])),
    "services": (("unit", "active", "sub", "enabled", "description"),
                 lambda v: (v.get("unit"), v.get("active"), v.get("sub"), v.get("enabled"),
                            v.get("description"))),
    "sockets": (("proto", "state", "local", "remote", "pid"),
                lambda k: (k.get("proto"), k.get("state"), f"{k.get('local_addr')}:{k.get('local_port')}",
                           f"{k.get('remote_addr')}:{k.get('remote_port')}", k.get("pid"))),
    "users": (("name", "uid", "shell", "password", "last login"),
              lambda u: (u.get("name"), u.get("uid"), u.get("shell"), u.get("password_state"),
                         fmt_time(u.get("last_login")))),
}


def _section(name: str, value: Any) -> None:
    if name in _COLUMNS and isinstance(value, list):
        columns, row = _COLUMNS[name]
        table(list(columns), (row(x) for x in value if isinstance(x, dict)), title=name.capitalize(),
              plain_title=True)
    elif isinstance(value, dict):
        table(["field", "value"], ((k, v if not isinstance(v, dict | list) else str(v)[:200])
                                   for k, v in value.items()), title=name.capitalize(), plain_title=True)
    else:
        say(f"{name}: not reported")


@inventory_app.command("refresh")
def inventory_refresh(
    tenant: TenantArg,
    device: DeviceArg,
    full: Annotated[bool, typer.Option("--full", help="Ask for a full report, not a delta.")] = False,
) -> None:
    """Ask a device for an inventory now (it reports within its pacing of 30 s)."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        dev = resolve_device(client, t["id"], device)
        doc = expect_dict(client.post(f"/tenants/{t['id']}/devices/{dev['id']}/inventory-request",
                                      {"full": full}), "inventory request")
    if doc.get("connected"):
        say(f"asked {dev.get('hostname')} ({dev['id']}) for {'a full' if full else 'an'} inventory")
    else:
        note(f"{dev.get('hostname')} ({dev['id']}) is not connected: it reports when it reconnects")


# --- tools ---------------------------------------------------------------------------------------------


@tools_app.command("list")
def tools_list(tenant: TenantArg, json_out: JsonOpt = False) -> None:
    """Every remote access tool found on the tenant's devices, sanctioned or not."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        docs = expect_list(client.get(f"/tenants/{t['id']}/tools"), "tools")
    if json_out:
        print_json(docs)
        return

    def detail(ev: dict[str, Any]) -> str:
        if ev.get("exe"):
            return str(ev["exe"])
        if ev.get("package"):
            return f"package {ev['package']} {ev.get('version', '')}".strip()
        if ev.get("service"):
            return f"service {ev['service']}"
        return str(ev.get("remote") or ev.get("port") or "-")

    table(["host", "tool", "sanctioned", "found by", "portable", "where", "reported"],
          ([d.get("hostname"), f"{d.get('name')} ({d.get('tool')})", "yes" if d.get("sanctioned") else "NO",
            ",".join(d.get("found_by") or []), "YES" if d.get("portable") else "no",
            detail(d.get("evidence") or {}), fmt_time(d.get("reported_at"))]
           for d in docs if isinstance(d, dict)), title="Remote access tools")


@tools_app.command("sanctioned")
def tools_sanctioned(tenant: TenantArg, json_out: JsonOpt = False) -> None:
    """The tools a tenant uses on purpose (not reported as unsanctioned)."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        docs = expect_list(client.get(f"/tenants/{t['id']}/sanctioned-tools"), "sanctioned tools")
    if json_out:
        print_json(docs)
        return
    table(["tool", "name", "added by", "added"],
          ([d.get("slug"), d.get("name"), d.get("added_by"), fmt_time(d.get("added_at"))]
           for d in docs if isinstance(d, dict)), title="Sanctioned tools")


def _slug(name: str) -> str:
    from rampart.catalog.model import slugify  # the catalog only when a command needs it

    slug = slugify(name)
    if not slug or len(slug) > 64:
        raise UsageProblem(f"{name!r} is not a tool name: see `rampart catalog show`")
    return slug


@tools_app.command("allow")
def tools_allow(tenant: TenantArg,
                name: Annotated[str, typer.Argument(help="Tool slug, alias or name (anydesk).")]) -> None:
    """Sanction a tool in a tenant: it is no longer reported as unsanctioned (portable or memory-only
    use, and vulnerable versions, still are)."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        doc = expect_dict(client.request("PUT", f"/tenants/{t['id']}/sanctioned-tools/{_slug(name)}"),
                          "sanctioned tool")
    say(f"{doc.get('name')} ({doc.get('slug')}) is sanctioned in {t.get('name')}; agents are told now")


@tools_app.command("disallow")
def tools_disallow(tenant: TenantArg,
                   name: Annotated[str, typer.Argument(help="Tool slug, alias or name.")]) -> None:
    """Stop sanctioning a tool in a tenant."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        doc = expect_dict(client.request("DELETE", f"/tenants/{t['id']}/sanctioned-tools/{_slug(name)}"),
                          "sanctioned tool")
    say(f"{doc.get('name')} ({doc.get('slug')}) is no longer sanctioned in {t.get('name')}")


# --- findings -------------------------------------------------------------------------------------------


def findings(
    tenant: TenantArg,
    status: Annotated[str, typer.Option("--status", help="open, resolved or all.")] = "open",
    device: Annotated[str | None, typer.Option("--device", help="Only this device (id or hostname).")
                      ] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="Only this kind (e.g. rat-portable).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Detections on a tenant's devices (open ones by default), most severe first."""
    if status not in FINDING_STATUS:
        raise UsageProblem("--status must be open, resolved or all")
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        dev = resolve_device(client, t["id"], device)["id"] if device else None
        docs = expect_list(client.get(f"/tenants/{t['id']}/findings", status=status, device=dev, kind=kind),
                           "findings")
    if json_out:
        print_json(docs)
        return
    table(["severity", "kind", "host", "status", "subject", "first seen", "last seen"],
          ([d.get("severity"), d.get("kind"), d.get("hostname"),
            f"{d.get('status')} (suppressed)" if d.get("suppressed") else d.get("status"), d.get("subject"),
            fmt_time(d.get("first_seen")), fmt_time(d.get("last_seen"))]
           for d in docs if isinstance(d, dict)), title="Findings")


# --- suppression rules ----------------------------------------------------------------------------------


@suppressions_app.command("add")
def suppressions_add(
    tenant: TenantArg,
    kind: Annotated[str, typer.Option("--kind", help="Finding kind (e.g. memory-only).")],
    reason: Annotated[str, typer.Option("--reason", help="Why it is a false positive (audited).")],
    days: Annotated[int, typer.Option("--days", help="Expiry in days (1-365).")],
    path: Annotated[str, typer.Option("--path", help="Exact executable path.")] = "",
    sha256: Annotated[str, typer.Option("--sha256", help="Exact SHA-256 of the executable.")] = "",
    device: Annotated[str | None, typer.Option("--device", help="Only this device (id or hostname).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Silence one known false positive: matching findings stay listed as suppressed, without alerts."""
    if bool(path) == bool(sha256):
        raise UsageProblem("give exactly one of --path and --sha256")
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        dev = resolve_device(client, t["id"], device)["id"] if device else ""
        doc = expect_dict(client.post(f"/tenants/{t['id']}/suppressions",
                                      {"kind": kind, "path": path, "sha256": sha256.lower(), "device": dev,
                                       "reason": reason, "days": days}), "suppression rule")
    if json_out:
        print_json(doc)
        return
    say(f"rule {doc.get('id')}: {kind} findings for {path or sha256} are suppressed in {t.get('name')} "
        f"until {fmt_time(doc.get('expires_at'))} (from each device's next report)")


@suppressions_app.command("list")
def suppressions_list(tenant: TenantArg, json_out: JsonOpt = False) -> None:
    """The tenant's suppression rules (expired ones too, until removed)."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        docs = expect_list(client.get(f"/tenants/{t['id']}/suppressions"), "suppression rules")
    if json_out:
        print_json(docs)
        return
    table(["rule", "kind", "path or sha256", "device", "expires", "by", "reason"],
          ([d.get("id"), d.get("kind"), d.get("path") or d.get("sha256"), d.get("device") or "all",
            ("expired " if d.get("expired") else "") + fmt_time(d.get("expires_at")), d.get("created_by"),
            d.get("reason")] for d in docs if isinstance(d, dict)), title="Suppression rules")


@suppressions_app.command("remove")
def suppressions_remove(tenant: TenantArg,
                        rule: Annotated[str, typer.Argument(help="Rule id (sp-…).")]) -> None:
    """Remove a rule: its findings raise alerts again from each device's next report."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        doc = expect_dict(client.request("DELETE", f"/tenants/{t['id']}/suppressions/{rule}"),
                          "suppression rule")
    say(f"rule {doc.get('id')} removed from {t.get('name')}")


# --- catalog --------------------------------------------------------------------------------------------


@catalog_app.command("import")
def catalog_import(
    file: Annotated[Path, typer.Argument(
        help="A LOLRMM feed file: download https://lolrmm.io/api/rmm_tools.json (or use a copy "
             "you vetted).")],
    json_out: JsonOpt = False,
) -> None:
    """Import a LOLRMM feed: parsed here, re-validated by the server, sent to every agent (owner)."""
    from rampart.catalog import CatalogError, encode_catalog, load_feed

    try:
        result = load_feed(file)
    except CatalogError as exc:
        raise CliError(f"cannot import {file}: {exc}") from exc
    if len(result.catalog) == 0:
        raise CliError(f"{file} holds no usable tool")
    body = {"catalog": encode_catalog(result.catalog).decode(), "source": file.name[:256],
            "feed_entries": result.entries, "feed_warnings": result.warnings}
    _, client, _ = api()
    with client:
        doc = expect_dict(client.post("/catalog", body), "catalog")
    if json_out:
        print_json({"imported": doc.get("imported"), "merged": doc.get("merged"), "sha256": doc.get("sha256"),
                    "entries": result.entries, "warnings": dict(result.warning_reasons),
                    "dropped": dict(result.dropped)})
        return
    say(f"imported {doc.get('imported')} tools from {result.entries} feed entries "
        f"(catalog {str(doc.get('sha256'))[:16]}…); agents now detect with {doc.get('merged')} tools")
    skipped = {**result.warning_reasons, **result.dropped}
    if skipped:
        note("skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())))


@catalog_app.command("show")
def catalog_show(json_out: JsonOpt = False) -> None:
    """The catalog agents detect with: built-in facts merged with the imported feed."""
    _, client, _ = api()
    with client:
        doc = expect_dict(client.get("/catalog"), "catalog")
    if json_out:
        print_json(doc)
        return
    if doc.get("sha256"):
        say(f"{doc.get('merged')} tools: {doc.get('builtin')} built-in, {doc.get('imported')} imported "
            f"from {doc.get('source') or 'a feed'} by {doc.get('imported_by')} at "
            f"{fmt_time(doc.get('imported_at'))}")
    else:
        say(f"{doc.get('merged')} built-in tools; no feed imported (`rampart catalog import FILE`)")
    table(["tool", "name", "linux", "ports", "sources"],
          ([d.get("slug"), d.get("name"), "yes" if d.get("linux") else "no",
            ",".join(str(p) for p in (d.get("ports") or [])[:6]), ",".join(d.get("sources") or [])]
           for d in doc.get("tools") or [] if isinstance(d, dict)), title="Catalog")


def register(app: typer.Typer) -> None:
    app.add_typer(inventory_app, name="inventory")
    app.add_typer(tools_app, name="tools")
    app.add_typer(catalog_app, name="catalog")
    app.add_typer(suppressions_app, name="suppressions")
    app.command("findings")(findings)
