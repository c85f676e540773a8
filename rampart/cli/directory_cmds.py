"""``rampart directory …``: audit a tenant's Active Directory or OpenLDAP (G3; docs/directory-audit.md).

The bind password comes from ``RAMPART_LDAP_PASSWORD`` or a no-echo prompt,
never from a flag; it is sent once, to the server, which seals it. The
directory's certificate is pinned with ``--ca-cert FILE`` (read here, sent as
PEM) or ``--pin-sha256 HEX``. Every string read from a directory (names,
descriptions, DNs) is attacker text: tables and lines go through the
output helpers, which escape it (rampart/textsafe.py); ``--json`` gives the
exact strings, JSON-escaped.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer

from . import prompts
from .client import expect_dict, expect_list
from .common import api, resolve_tenant
from .errors import CliError, UsageProblem
from .output import fmt_duration, fmt_time, parse_duration, print_json, say, table

ENV_PASSWORD = "RAMPART_LDAP_PASSWORD"  # noqa: S105 - the variable's name, not a password
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
TenantArg = Annotated[str, typer.Argument(help="Tenant name or id.")]

directory_app = typer.Typer(help="Directory audit: inactive, stale and privileged accounts in AD or LDAP.",
                            no_args_is_help=True)


def _default_name(url: str) -> str:
    host = (urlsplit(url).hostname or "directory").lower()
    name = re.sub(r"[^a-z0-9_.-]", "-", host).strip("-._")[:64]
    return name or "directory"


@directory_app.command("add")
def directory_add(
    tenant: TenantArg,
    ldap: Annotated[str, typer.Option("--ldap", help="ldaps://HOST[:PORT], or ldap://HOST[:PORT] with "
                                                      "--starttls.")],
    bind_dn: Annotated[str, typer.Option("--bind-dn", help="The (read-only) account the audit binds as.")],
    base: Annotated[str, typer.Option("--base", help="Search base, e.g. dc=example,dc=com.")],
    name: Annotated[str | None, typer.Option("--name", help="A name for it (default: the host).")] = None,
    starttls: Annotated[bool, typer.Option("--starttls", help="StartTLS on an ldap:// URL.")] = False,
    ca_cert: Annotated[Path | None, typer.Option(
        "--ca-cert", help="PEM CA certificate the directory's certificate must chain to.")] = None,
    pin_sha256: Annotated[str | None, typer.Option(
        "--pin-sha256", help="SHA-256 of the directory's certificate (instead of --ca-cert).")] = None,
    inactive_days: Annotated[int, typer.Option(
        "--inactive-days", help="An account without a logon for longer is inactive.")] = 90,
    privileged_group: Annotated[list[str] | None, typer.Option(
        "--privileged-group", help="A privileged group (name or DN; repeatable; replaces the default "
                                   "list of AD's built-in admin groups).")] = None,
    every: Annotated[str, typer.Option("--every", help="How often the audit runs (e.g. 24h, 7d).")] = "24h",
    json_out: JsonOpt = False,
) -> None:
    """Add a directory (owners); the server test-binds over pinned TLS before storing anything.

    The bind password is read from RAMPART_LDAP_PASSWORD or prompted for (never a flag).
    """
    if (ca_cert is None) == (pin_sha256 is None):
        raise UsageProblem("pin the directory's certificate: give --ca-cert FILE or --pin-sha256 HEX")
    every_s = parse_duration(every, what="--every")
    body: dict[str, Any] = {"name": name or _default_name(ldap), "url": ldap, "bind_dn": bind_dn,
                            "base": base, "starttls": starttls, "inactive_days": inactive_days,
                            "every_s": every_s}
    if ca_cert is not None:
        try:
            body["ca_cert"] = ca_cert.read_text("ascii")
        except (OSError, UnicodeError) as exc:
            raise UsageProblem(f"cannot read --ca-cert {ca_cert}: {type(exc).__name__}") from None
    if pin_sha256 is not None:
        body["pin_sha256"] = pin_sha256
    if privileged_group:
        body["privileged_groups"] = privileged_group
    body["password"] = prompts.secret(ENV_PASSWORD, "Bind password: ", "bind password")
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        doc = expect_dict(client.post(f"/tenants/{t['id']}/directories", body), "directory")
    if json_out:
        print_json(doc)
        return
    say(f"directory {doc.get('name')} added ({doc.get('url')}, certificate pinned by "
        f"{doc.get('pinning')}); audited every {fmt_duration(float(doc.get('every_s') or every_s))}, "
        f"the first audit runs within a minute (or now: rampart directory audit {tenant})")


@directory_app.command("list")
def directory_list(tenant: TenantArg, json_out: JsonOpt = False) -> None:
    """The tenant's directories, their last audit and open findings."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        docs = expect_list(client.get(f"/tenants/{t['id']}/directories"), "directories")
    if json_out:
        print_json(docs)
        return
    table(["name", "url", "base", "every", "last audit", "status", "open findings", "detail"],
          ([d.get("name"), d.get("url"), d.get("base"), fmt_duration(float(d.get("every_s") or 0)),
            fmt_time(d.get("last_run_at")) if d.get("last_run_at") else "never", d.get("last_status"),
            d.get("open_findings"), d.get("last_detail") or ""]
           for d in docs if isinstance(d, dict)), title="Directories")


@directory_app.command("remove")
def directory_remove(tenant: TenantArg,
                     name: Annotated[str, typer.Argument(help="The directory's name.")]) -> None:
    """Forget a directory: its sealed bind password and its findings are deleted (owners)."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        client.request("DELETE", f"/tenants/{t['id']}/directories/{name}")
    say(f"directory {name} removed")


@directory_app.command("audit")
def directory_audit(
    tenant: TenantArg,
    name: Annotated[str | None, typer.Argument(help="One directory (default: all of the tenant's).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Run the audit now; exits non-zero if an audit failed."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        if name is None:
            names = [str(d.get("name")) for d in expect_list(
                client.get(f"/tenants/{t['id']}/directories"), "directories") if isinstance(d, dict)]
            if not names:
                raise CliError(f"tenant {tenant} has no directory (rampart directory add)")
        else:
            names = [name]
        results = [expect_dict(client.post(f"/tenants/{t['id']}/directories/{n}/audit"), "audit")
                   for n in names]
    if json_out:
        print_json(results)
    else:
        for r in results:
            state = "audited" if r.get("ok") else "audit FAILED"
            say(f"{r.get('directory')}: {state}: {r.get('detail')}")
    failed = [str(r.get("directory")) for r in results if not r.get("ok")]
    if failed:
        raise CliError(f"the audit failed for {', '.join(failed)}")


@directory_app.command("findings")
def directory_findings(
    tenant: TenantArg,
    directory: Annotated[str | None, typer.Option("--directory", help="Only this directory.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Resolved findings too.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Findings of the tenant's directory audits, most severe first."""
    params: dict[str, Any] = {"status": "all" if all_ else "open"}
    if directory is not None:
        params["directory"] = directory
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        docs = expect_list(client.get(f"/tenants/{t['id']}/directory-findings", **params),
                           "directory findings")
    if json_out:
        print_json(docs)
        return
    table(["severity", "kind", "account", "finding", "directory", "since", "resolved"],
          ([d.get("severity"), d.get("kind"), d.get("account"), d.get("subject"), d.get("directory"),
            fmt_time(d.get("first_seen")), fmt_time(d.get("resolved_at")) if d.get("resolved_at") else "-"]
           for d in docs if isinstance(d, dict)), title="Directory findings")


def register(app: typer.Typer) -> None:
    app.add_typer(directory_app, name="directory")
