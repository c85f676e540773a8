"""Just-in-time grants: request, list, show, approve (signed locally by approvers).

Security invariants:

* ``grant approve`` signs only what it verified locally: the grant envelope is
  decoded against the locally trusted root (:func:`rampart.trust.grant_status`),
  every field the server's summary shows must equal the signed payload, the
  grantee must be a technician (or automation) key of that root, and what is
  displayed (technician name, devices, capabilities, window, reason) comes from
  the payload and the root, never from the server's summary. The one exception
  is each device's hostname, shown next to its signed id as a label the server
  provides (device-reported text, escaped like all output; the id is what is
  signed and verified).
* An approver never approves a grant for their own key or one they requested
  (the trust core also never counts the grantee's signature).
* A grant that the tenant policy would refuse (capability not allowed, too
  long, expired) is not signed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Annotated, Any

import typer

from rampart import trust
from rampart.trust import ALL_CAPABILITIES, GRANT_TYPE, Grant, TrustedRoot

from . import prompts
from .client import Client, expect_dict, expect_list, field
from .common import (
    api,
    envelope_bytes,
    now,
    pick_key,
    refusing,
    resolve_tenant,
    trusted_root,
    unlock_key,
)
from .config import Config, KeyInfo, Session
from .errors import Refused, ServerProblem, UsageProblem
from .group_cmds import expand_devices
from .output import (
    OutputOpt,
    fmt_duration,
    fmt_time,
    parse_duration,
    print_json,
    say,
    table,
    wants_json,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

grant_app = typer.Typer(help="Just-in-time access grants.", no_args_is_help=True)


def split_list(text: str, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise UsageProblem(f"{what} is empty")
    if len(set(items)) != len(items):
        raise UsageProblem(f"{what} lists an item twice")
    return items


def decode_grant(data: bytes) -> tuple[trust.Envelope, Grant]:
    with refusing("grant envelope"):
        env = trust.decode_envelope(data, expect_type=GRANT_TYPE)
        return env, trust.decode_payload(env.payload, Grant)


def check_summary(summary: dict[str, Any], grant: Grant) -> list[str]:
    """Every field the server's summary states must equal the signed payload; the signed devices.

    A grant that commits a device set lists no devices itself: the summary's list is taken
    only if it recomputes to the signed root and count (:func:`rampart.trust.expand`).
    """
    checks: dict[str, Any] = {
        "id": grant.id, "tenant": grant.tenant, "grantee": grant.grantee,
        "not_before": grant.not_before, "not_after": grant.not_after, "reason": grant.reason,
    }
    for name, want in checks.items():
        if name in summary and summary[name] != want:
            raise Refused(f"the server's summary of the grant does not match what would be signed "
                          f"({name}): refusing")
    try:
        devices = trust.expand(grant.devices, grant.device_set, _str_list(summary.get("devices")))
    except trust.TrustError as exc:
        raise Refused(f"the server's device list is not the grant's signed device set: {exc.message}: "
                      "refusing") from None
    for name, want_list in (("devices", devices), ("capabilities", grant.capabilities)):
        if name in summary and sorted(summary[name] or []) != sorted(want_list):
            raise Refused(f"the server's summary of the grant does not match what would be signed "
                          f"({name}): refusing")
    if "requested_by" in summary and grant.requested_by and summary["requested_by"] != \
            grant.requested_by:
        raise Refused("the server's summary of the grant does not match what would be signed "
                      "(requested_by): refusing")
    return devices


def _str_list(value: object) -> list[str]:
    return [x for x in value if isinstance(x, str)] if isinstance(value, list) else []


def grant_doc(grant: Grant, root: TrustedRoot, status: trust.GrantStatus | None,
              server_status: str | None = None, devices: list[str] | None = None) -> dict[str, Any]:
    """A grant as people read it. ``devices``: a committed grant's devices, as checked against its
    signed set by :func:`check_summary` (a listed grant's own list otherwise)."""
    return {
        "id": grant.id, "tenant": grant.tenant, "grantee": grant.grantee,
        "grantee_name": root.root.key_name(grant.grantee),
        "grantee_roles": root.root.roles_of(grant.grantee), "requested_by": grant.requested_by,
        "devices": devices if devices is not None else list(grant.devices),
        "device_set": (grant.device_set.root if isinstance(grant.device_set, trust.DeviceSet) else None),
        "capabilities": grant.capabilities, "actions": grant.actions,
        "not_before": grant.not_before, "not_after": grant.not_after, "reason": grant.reason,
        "approved_by": sorted(root.root.key_name(k)
                              for k in (status.approved_by if status else ())),
        "approvals": len(status.approved_by) if status else 0,
        "required": status.required if status else None,
        "complete": status.complete if status else False, "status": server_status,
    }


def print_grant(d: dict[str, Any]) -> None:
    say(f"grant {d['id']} in tenant {d['tenant']}")
    say(f"  technician:   {d['grantee_name']} ({d['grantee'][:16]}…, "
        f"{', '.join(d['grantee_roles']) or 'not in root'})")
    hostnames = d.get("server_hostnames")
    if not hostnames:
        say(f"  devices:      {', '.join(d['devices'])}")
    else:
        # The signed ids, each with the hostname the server reports (a label, not signed).
        say(f"  devices:      {len(d['devices'])} (signed ids; hostname as the server reports it)")
        for dev in d["devices"]:
            name = hostnames.get(dev)
            say(f"    {dev}  " + (f'hostname "{name}"' if name is not None else "(unknown to the server)"))
    say(f"  capabilities: {', '.join(d['capabilities'])}")
    say(f"  window:       {fmt_time(d['not_before'])} -> {fmt_time(d['not_after'])} "
        f"({fmt_duration(d['not_after'] - d['not_before'])})")
    say(f"  reason:       {d['reason']}")
    if d.get("requested_by"):
        say(f"  requested by: {d['requested_by']}")
    say(f"  approvals:    {d['approvals']} of {d['required']}"
        + (f" ({', '.join(d['approved_by'])})" if d["approved_by"] else ""))
    if d.get("status"):
        say(f"  status:       {d['status']}")


# --- flows (also used by `rampart up`) -----------------------------------------------------------


def request_grant(cfg: Config, client: Client, session: Session, tenant_id: str, *,
                  devices: list[str], capabilities: list[str], duration_s: int,
                  reason: str, passkeys: frozenset[str] = frozenset()) -> tuple[str, Grant]:
    """Ask the server for an unsigned grant and check it says exactly what was asked, for one of
    this operator's keys (its key files, or ``passkeys``: key ids of its passkeys)."""
    bad = [c for c in capabilities if c not in ALL_CAPABILITIES]
    if bad:
        raise UsageProblem(f"unknown capabilities {bad}: choose from {', '.join(ALL_CAPABILITIES)}")
    doc = expect_dict(client.post(f"/tenants/{tenant_id}/grants", {
        "devices": devices, "capabilities": capabilities, "duration_s": duration_s,
        "reason": reason, "actions": [],
    }), "grant")
    gid = field(doc, "id", str, "grant")
    _, grant = decode_grant(envelope_bytes(doc, "grant"))
    try:  # a committed set must be exactly the asked devices (recomputed here from our own list)
        named = trust.expand(grant.devices, grant.device_set, devices)
    except trust.TrustError:
        raise Refused("the grant the server made differs from the request (devices)") from None
    if (grant.id != gid or grant.tenant != tenant_id or sorted(named) != sorted(devices)
            or sorted(grant.capabilities) != sorted(capabilities) or grant.reason != reason
            or grant.not_after - grant.not_before != duration_s):
        raise Refused("the grant the server made differs from the request")
    mine = {k.keyid for k in cfg.list_keys(session.username)} | passkeys
    if grant.grantee not in mine:
        raise Refused(f"the server made the grant for key {grant.grantee[:16]}…, which is not one "
                      "of your keys")
    return gid, grant


@dataclass(frozen=True, slots=True)
class GrantReview:
    """A grant as the server sent it, decoded and counted against the locally trusted root.

    Every field here comes from the signed payload and the operator's own root, never from
    the server's summary (which :func:`review_grant` only compares with the payload).
    """

    envelope: trust.Envelope
    grant: Grant
    root: TrustedRoot
    status: trust.GrantStatus
    summary: dict[str, Any]
    #: SHA-256 of the exact payload bytes an approval signs (what a reviewer saw).
    payload_sha256: str
    #: Device id -> hostname as the server reports it: a label shown next to the signed ids,
    #: never verified and never signed (device-reported text).
    hostnames: dict[str, str] = dc_field(default_factory=dict)
    #: The signed devices: the grant's list, or the server's list once it recomputed to the signed set.
    devices: list[str] = dc_field(default_factory=list)

    def doc(self) -> dict[str, Any]:
        d = grant_doc(self.grant, self.root, self.status, self.summary.get("status"), self.devices)
        named = set(self.devices)
        d["server_hostnames"] = {k: v for k, v in self.hostnames.items() if k in named}
        return d


def server_hostnames(client: Client, tenant_id: str) -> dict[str, str]:
    """Device id -> hostname from the server's device list ({} if this account may not list it)."""
    try:
        docs = expect_list(client.get(f"/tenants/{tenant_id}/devices"), "devices")
    except ServerProblem:
        return {}
    return {d["id"]: d["hostname"] for d in docs if isinstance(d, dict)
            and isinstance(d.get("id"), str) and isinstance(d.get("hostname"), str)}


def review_grant(cfg: Config, client: Client, grant_id: str) -> GrantReview:
    """Fetch a grant, decode it and count its approvals against the locally trusted root."""
    summary = expect_dict(client.get(f"/grants/{grant_id}"), "grant")
    tenant_id = field(summary, "tenant", str, "grant")
    root = trusted_root(cfg, client, tenant_id)
    data = envelope_bytes(summary, "grant")
    env, grant = decode_grant(data)
    if grant.id != grant_id or grant.tenant != tenant_id:
        raise Refused("the server sent a different grant than the one asked for")
    with refusing("grant"):
        status = trust.grant_status(root, data)
    devices = check_summary(summary, grant)
    return GrantReview(env, grant, root, status, summary, hashlib.sha256(env.payload).hexdigest(),
                       server_hostnames(client, tenant_id), devices)


def approval_key(cfg: Config, session: Session, review: GrantReview) -> KeyInfo:
    """The approver key that may sign ``review``'s grant, or :class:`Refused` saying why not."""
    _grant_checks(review)
    info = pick_key(cfg, session, review.grant.tenant, review.root, roles=("approver",))
    if info.keyid == review.grant.grantee:
        raise Refused("you cannot approve a grant for your own key")
    _not_own_request(session, review)
    return info


def approval_checks(session: Session, review: GrantReview) -> None:
    """What ``rampart grant approve`` checks of the grant before any key signs it (whatever the
    key: a key file or a passkey): the grantee, the policy, the expiry, not one's own request."""
    _grant_checks(review)
    _not_own_request(session, review)


def _not_own_request(session: Session, review: GrantReview) -> None:
    if review.grant.requested_by and review.grant.requested_by == session.username:
        raise Refused("you cannot approve a grant you requested")


def _grant_checks(review: GrantReview) -> None:
    grant, root = review.grant, review.root
    if grant.grantee not in root.technicians and grant.grantee not in root.automation:
        raise Refused("the grant is for a key that is not a technician or automation key of the "
                      f"root v{root.version} you trust")
    policy = root.root.policy
    not_allowed = set(grant.capabilities) - set(policy.capabilities)
    if not_allowed:
        raise Refused(f"the tenant policy does not allow {sorted(not_allowed)}")
    automation = grant.grantee in root.automation
    longest = policy.longest_grant(grant.capabilities, automation=automation)
    if grant.not_after - grant.not_before > longest:
        raise Refused("the grant lasts longer than the policy allows: " + policy.grant_limit_text(
            grant.capabilities, automation=automation, tenant=root.root.name))
    if grant.not_after <= now():
        raise Refused("the grant has already expired")


def approve_grant(cfg: Config, client: Client, session: Session, grant_id: str, *,
                  confirm: bool, show: bool = True,
                  reviewed_sha256: str | None = None) -> dict[str, Any]:
    """Verify the grant locally against the trusted root, sign it as an approver, upload.

    With ``reviewed_sha256`` (the local console), the payload fetched now must be the one
    the approver reviewed earlier, byte for byte; otherwise nothing is signed.
    """
    review = review_grant(cfg, client, grant_id)
    if reviewed_sha256 is not None and review.payload_sha256 != reviewed_sha256:
        raise Refused("the grant the server sends now differs from the one you reviewed: "
                      "nothing was signed")
    info = approval_key(cfg, session, review)
    if show:
        print_grant(review.doc())
    if confirm and prompts.stdin_is_tty() and not prompts.confirm("Approve this grant?"):
        raise Refused("not approved")
    key = unlock_key(info)
    signed = trust.add_signature(review.envelope, key).to_bytes()
    client.post(f"/grants/{grant_id}/signatures", {"envelope": signed.decode()})
    with refusing("signed grant"):
        after = trust.grant_status(review.root, signed)
    return grant_doc(review.grant, review.root, after,
                     "approved" if after.complete else "requested", review.devices)


# --- commands --------------------------------------------------------------------------------


@grant_app.command("request")
def grant_request(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    devices: Annotated[str, typer.Option("--devices", help="Comma-separated device ids, or group:NAME for "
                                                           "a device group's devices now.")],
    capabilities: Annotated[str, typer.Option(
        "--capabilities", help=f"Comma-separated: {', '.join(ALL_CAPABILITIES)}.")],
    duration: Annotated[str, typer.Option("--for", help="How long, e.g. 2h.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (shown to approvers).")],
    json_out: JsonOpt = False,
) -> None:
    """Request a grant for your technician key; prints the grant id for approvers."""
    devs = split_list(devices, "--devices")
    caps = split_list(capabilities, "--capabilities")
    seconds = parse_duration(duration, what="--for")
    cfg, client, session = api()
    with client:
        t = resolve_tenant(client, tenant)
        devs = expand_devices(client, t["id"], devs)
        gid, grant = request_grant(cfg, client, session, t["id"], devices=devs, capabilities=caps,
                                   duration_s=seconds, reason=reason)
    if json_out:
        print_json({"id": gid, "tenant": t["id"], "devices": devs,
                    "capabilities": grant.capabilities, "not_before": grant.not_before,
                    "not_after": grant.not_after})
        return
    say(gid)
    say(f"an approver approves it with: rampart grant approve {gid}")


def _count(x: Any) -> Any:
    return len(x) if isinstance(x, list) else x


@grant_app.command("list")
def grant_list(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    json_out: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """List a tenant's grants (as the server reports them)."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        docs = expect_list(client.get(f"/tenants/{t['id']}/grants"), "grants")
    if wants_json(json_out, output):
        for d in docs:
            if isinstance(d, dict):
                d.pop("envelope", None)
        print_json(docs)
        return
    table(["id", "technician", "devices", "capabilities", "until", "status", "approvals"],
          ([d.get("id"), d.get("grantee_name"), len(d.get("devices") or []),
            ",".join(d.get("capabilities") or []), fmt_time(d.get("not_after")), d.get("status"),
            f"{_count(d.get('approvals'))}/{d.get('required')}"]
           for d in docs if isinstance(d, dict)), title="Grants")


@grant_app.command("show")
def grant_show(
    grant: Annotated[str, typer.Argument(help="Grant id (gr-…).")],
    json_out: JsonOpt = False,
) -> None:
    """Show a grant, decoded and counted against your trusted root."""
    cfg, client, _ = api()
    with client:
        d = review_grant(cfg, client, grant).doc()
    if json_out:
        print_json(d)
        return
    print_grant(d)


@grant_app.command("approve")
def grant_approve(
    grant: Annotated[str, typer.Argument(help="Grant id (gr-…).")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Verify a grant locally against your trusted root and sign it with your approver key."""
    if not grant.startswith("gr-"):
        raise UsageProblem("a grant id looks like gr-…")
    cfg, client, session = api()
    with client:
        d = approve_grant(cfg, client, session, grant, confirm=not yes, show=not json_out)
    if json_out:
        print_json(d)
        return
    say(f"approved: {d['approvals']} of {d['required']} approver signature(s)"
        + ("; the grant is complete" if d["complete"] else "; more approvers are needed"))


def register(app: typer.Typer) -> None:
    app.add_typer(grant_app, name="grant")

