"""`rampart report` (the posture report) and `rampart tenant statement` (the service statement).

The report is built by the server from its records (it is information for people, not
something a key signs: docs/design/posture-report.md); the CLI only fetches it and writes the
bytes to ``--out`` (a new file, 0600) or to stdout when redirected. It never writes HTML or a
PDF to a terminal. The statement is shown with every line made inert (:func:`.output.say`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from rampart.private_files import write_private_atomic

from .client import expect_dict
from .common import api, resolve_tenant
from .errors import UsageProblem
from .output import fmt_duration, fmt_time, note, parse_duration, print_json, say, say_lines
from .tenant_cmds import tenant_app

FORMATS = ("html", "pdf", "json")


def report(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    format: Annotated[str, typer.Option("--format", "-f", help="html, pdf or json.")] = "html",
    out: Annotated[Path | None, typer.Option(
        "--out", help="Write the report to this new file (default: rampart-posture-TENANT.FORMAT; "
        "'-' for stdout when it is not a terminal).")] = None,
) -> None:
    """A tenant's posture report (HTML or PDF) against the CISA remote access guide and the CPG.

    Built by the server from its records; written to a new file (0600), or to stdout with --out -.
    """
    if format not in FORMATS:
        raise UsageProblem(f"--format must be one of {', '.join(FORMATS)}")
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        data = client.request("GET", f"/tenants/{t['id']}/report", params={"format": format},
                              text="bytes")
    body = bytes(data) if isinstance(data, (bytes, bytearray)) else b""
    if out is not None and str(out) == "-":
        if sys.stdout.isatty():
            raise UsageProblem("refusing to write the report to a terminal: redirect it or give --out FILE")
        sys.stdout.buffer.write(body)
        sys.stdout.flush()
        return
    path = out or Path(f"rampart-posture-{t['id']}.{format}")
    if path.exists():
        raise UsageProblem(f"{path} exists: give a new file with --out")
    write_private_atomic(path, body)
    say(f"wrote {path} ({len(body)} bytes, {format})")


@tenant_app.command("statement")
def tenant_statement(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    services: Annotated[list[str] | None, typer.Option(
        "--services", help="A service delivered (repeatable; replaces the list).")] = None,
    contact: Annotated[str | None, typer.Option(
        "--set-contact", help="Who is told of an incident (a name, a role, an address).")] = None,
    target: Annotated[str | None, typer.Option(
        "--target", help="The tenant's webhook or e-mail notification target (id or name) that "
        "receives incident notifications; '' to clear.")] = None,
    deadline: Annotated[str | None, typer.Option(
        "--deadline", help="How soon after a critical alert opens the contact is told (e.g. 4h).")] = None,
    incident_response: Annotated[str | None, typer.Option(
        "--incident-response", help="What incident response the MSP provides.")] = None,
    recovery: Annotated[str | None, typer.Option(
        "--recovery", help="What recovery the MSP provides.")] = None,
    from_file: Annotated[Path | None, typer.Option(
        "--from-file", help="A JSON file with any of: services, contact, contact_target, deadline_s, "
        "incident_response, recovery.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show or set the tenant's service statement (C1, M7): services, incident contact and deadline,
    incident response and recovery. Setting needs the owner role."""
    import json

    body: dict[str, Any] = {}
    if from_file is not None:
        try:
            loaded = json.loads(from_file.read_text())
        except (OSError, ValueError) as exc:
            raise UsageProblem(f"cannot read {from_file}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise UsageProblem(f"{from_file} must hold a JSON object")
        body.update(loaded)
    for key, value in (("services", services), ("contact", contact),
                       ("incident_response", incident_response), ("recovery", recovery)):
        if value is not None:
            body[key] = value
    if deadline is not None:
        body["deadline_s"] = parse_duration(deadline, what="deadline")
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        path = f"/tenants/{t['id']}/statement"
        if target is not None:
            body["contact_target"] = _target_id(client, t["id"], target) if target else ""
        doc = expect_dict(client.put(path, body) if body else client.get(path), "statement")
    if json_out:
        print_json(doc)
        return
    st = doc.get("statement")
    if not isinstance(st, dict):
        note(f"no service statement for {t.get('name', tenant)} yet: set one with --services, "
             "--set-contact, --target and --deadline")
        return
    say(f"Service statement of {t.get('name', tenant)}")
    say("Services delivered:")
    for x in st.get("services") or []:
        say(f"  - {x}")
    kind = st.get("contact_target_kind") or "no notification target"
    name = st.get("contact_target_name")
    say(f"Incident contact: {st.get('contact') or '(no name)'} via {kind}"
        + (f" '{name}'" if name else "") + f", within {fmt_duration(int(st.get('deadline_s') or 0))} "
        "of a critical alert")
    say("Incident response:")
    say_lines(str(st.get("incident_response") or "not stated"), indent="  ")
    say("Recovery:")
    say_lines(str(st.get("recovery") or "not stated"), indent="  ")
    say(f"Last changed by {st.get('updated_by')} at {fmt_time(st.get('updated_at'))}")


def _target_id(client: Any, tenant_id: str, text: str) -> str:
    targets = client.get(f"/tenants/{tenant_id}/notify-targets")
    for x in targets if isinstance(targets, list) else []:
        if isinstance(x, dict) and text in (x.get("id"), x.get("name")):
            return str(x["id"])
    raise UsageProblem(f"no notification target {text!r} in this tenant (rampart alerts notify list)")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
