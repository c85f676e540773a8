"""Where alerts go, and events for a SIEM: ``rampart alerts notify …``, ``rampart events export``.

A webhook's HMAC secret is printed once, when the target is added; give it to
the receiving system, which verifies ``X-Rampart-Signature`` (docs/monitoring.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .access_cmds import alerts_app
from .client import expect_dict, expect_list
from .common import api, resolve_tenant
from .errors import CliError, UsageProblem
from .output import print_json, say, table, write_export

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

notify_app = typer.Typer(help="Where alerts are delivered: webhook, e-mail, syslog.",
                         no_args_is_help=True)
events_app = typer.Typer(help="Audit events for SIEM and SOC tooling.", no_args_is_help=True)


@notify_app.command("add")
def notify_add(
    tenant: Annotated[str | None, typer.Argument(
        help="Tenant name or id; omit with --msp for every tenant.")] = None,
    msp: Annotated[bool, typer.Option("--msp", help="MSP-wide: every tenant (a SOC).")] = False,
    webhook: Annotated[str | None, typer.Option("--webhook", help="https URL to POST to.")] = None,
    email: Annotated[list[str] | None, typer.Option(
        "--email", help="Recipient address (repeatable).")] = None,
    syslog: Annotated[str | None, typer.Option(
        "--syslog", help="HOST:PORT of a syslog receiver (TCP, octet framing).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="syslog: syslog (RFC 5424), cef or jsonl.")
                   ] = "syslog",
    tls: Annotated[bool, typer.Option("--tls", help="syslog over TLS.")] = False,
    min_severity: Annotated[str, typer.Option(
        "--min-severity", help="info, warning or critical.")] = "warning",
    name: Annotated[str | None, typer.Option("--name", help="A name for the target.")] = None,
    json_out: JsonOpt = False,
    relp: Annotated[bool, typer.Option(
        "--relp", help="syslog: RELP (each record acknowledged; rsyslog imrelp), with --tls for TLS.")
    ] = False,
    ca_file: Annotated[str | None, typer.Option(
        "--ca-file", help="syslog TLS: CA bundle for the receiver (a path on the server).")] = None,
    pin_sha256: Annotated[str | None, typer.Option(
        "--pin-sha256", help="syslog TLS: SHA-256 of the receiver's certificate.")] = None,
    server_name: Annotated[str | None, typer.Option(
        "--server-name", help="syslog TLS: name to check in its certificate (default: HOST).")] = None,
    no_verify_hostname: Annotated[bool, typer.Option(
        "--no-verify-hostname", help="syslog TLS: do not check the name (needs --ca-file or --pin-sha256).")
    ] = False,
    client_cert: Annotated[str | None, typer.Option(
        "--client-cert", help="syslog TLS: client certificate (a path on the server).")] = None,
    client_key: Annotated[str | None, typer.Option(
        "--client-key", help="syslog TLS: its key file, mode 0600 (a path on the server; "
                             "the key itself never leaves it).")] = None,
) -> None:
    """Deliver alerts to a webhook, e-mail recipients or a syslog receiver (owners)."""
    chosen = [k for k, v in (("webhook", webhook), ("email", email), ("syslog", syslog)) if v]
    if len(chosen) != 1:
        raise UsageProblem("give exactly one of --webhook URL, --email ADDR or --syslog HOST:PORT")
    if (tenant is None) == (not msp):
        raise UsageProblem("give a TENANT or --msp")
    kind = chosen[0]
    body: dict[str, Any] = {"kind": kind, "name": name or kind, "min_severity": min_severity}
    if kind == "webhook":
        body["url"] = webhook
    elif kind == "email":
        body["recipients"] = email
    else:
        host, sep, port = (syslog or "").rpartition(":")
        if not sep or not port.isdigit():
            raise UsageProblem("--syslog must be HOST:PORT")
        body.update(host=host.strip("[]"), port=int(port), format=fmt, tls=tls,
                    transport="relp" if relp else "tcp")
        tls_opts = {"ca_file": ca_file, "pin_sha256": pin_sha256, "server_name": server_name,
                    "client_cert": client_cert, "client_key": client_key,
                    "verify_hostname": False if no_verify_hostname else None}
        body.update({k: v for k, v in tls_opts.items() if v is not None})
    _, client, _ = api()
    with client:
        if msp:
            doc = expect_dict(client.post("/notify-targets", body), "target")
        else:
            t = resolve_tenant(client, str(tenant))
            doc = expect_dict(client.post(f"/tenants/{t['id']}/notify-targets", body), "target")
    if json_out:
        print_json(doc)
        return
    say(f"target {doc.get('id')} added ({kind}, alerts of severity {min_severity} and above)")
    if doc.get("secret"):
        say(f"webhook signing secret (shown once; the receiver verifies X-Rampart-Signature): "
            f"{doc['secret']}")


@notify_app.command("list")
def notify_list(
    tenant: Annotated[str | None, typer.Argument(help="Tenant (default: MSP-wide targets).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List delivery targets with delivered, pending and failed counts."""
    _, client, _ = api()
    with client:
        if tenant is None:
            docs = expect_list(client.get("/notify-targets"), "targets")
        else:
            t = resolve_tenant(client, tenant)
            docs = expect_list(client.get(f"/tenants/{t['id']}/notify-targets"), "targets")
    if json_out:
        print_json(docs)
        return
    table(["id", "kind", "name", "min severity", "delivered", "pending", "failed", "last result"],
          ([d.get("id"), d.get("kind"), d.get("name"), d.get("min_severity"), d.get("delivered"),
            d.get("pending"), d.get("failed"), d.get("last_detail") or ""]
           for d in docs if isinstance(d, dict)), title="Alert delivery targets")


@notify_app.command("remove")
def notify_remove(target: Annotated[str, typer.Argument(help="Target id (nt-…).")]) -> None:
    """Stop delivering to a target (its webhook secret is deleted)."""
    _, client, _ = api()
    with client:
        client.request("DELETE", f"/notify-targets/{target}")
    say(f"target {target} removed")


@notify_app.command("test")
def notify_test(target: Annotated[str, typer.Argument(help="Target id (nt-…).")]) -> None:
    """Send one test message now and show the result."""
    _, client, _ = api()
    with client:
        doc = expect_dict(client.post(f"/notify-targets/{target}/test"), "test result")
    if not doc.get("ok"):
        raise CliError(f"test message not delivered: {doc.get('detail')}")
    say(f"test message delivered: {doc.get('detail')}")


@events_app.command("export")
def events_export(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    fmt: Annotated[str, typer.Option("--format", help="cef, syslog (RFC 5424) or jsonl.")] = "jsonl",
    start: Annotated[int, typer.Option("--start", help="First audit log index.")] = 0,
    limit: Annotated[int, typer.Option("--limit", help="At most this many events.")] = 10000,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to a file.")] = None,
) -> None:
    """Write the tenant's audit events, one record per line, for a SIEM."""
    if fmt not in ("cef", "syslog", "jsonl"):
        raise UsageProblem("--format must be cef, syslog or jsonl")
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        text = client.get_text(f"/tenants/{t['id']}/events", format=fmt, start=start, limit=limit)
    if output is None:
        write_export(text)
        return
    try:
        output.write_text(text)
    except OSError as exc:
        raise CliError(f"cannot write {output}: {exc.strerror}") from exc
    say(f"{len(text.splitlines())} events written to {output}")


alerts_app.add_typer(notify_app, name="notify")


def register(app: typer.Typer) -> None:
    app.add_typer(events_app, name="events")
