"""Tenant roots: show, propose, sign, publish (the TUF root-rotation rule, signed locally).

Security invariants:

* ``root sign`` verifies the proposal locally before signing: it must name this
  tenant and be exactly the next version after the root this operator trusts;
  what changes (keys, roles, thresholds, log keys, policy, expiry) is shown
  from the decoded payload, never from a server summary.
* ``root publish`` checks with :func:`rampart.trust.update_root` that the
  proposal is signed by the owner thresholds of the current and of the new
  version before it asks the server to publish, and stores the new root as
  trusted only after that check.
* A key enters a root only with a public key whose SHA-256 equals its key id.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Annotated, Any

import msgspec
import typer

from rampart import trust
from rampart.trust import Envelope, KeyEntry, Policy, Roles, RoleSpec, TenantRoot, TrustedRoot
from rampart.trust.envelope import SignerResult
from rampart.trust.keys import LogPublicKey, OperatorPublicKey
from rampart.trust.payloads import ROOT_TYPE
from rampart.trust.roots import check_root_signatures

from . import prompts
from .client import Client, expect_dict, expect_list
from .common import (
    api,
    envelope_bytes,
    local_root,
    now,
    refusing,
    resolve_tenant,
    trusted_root,
    unlock_key,
)
from .config import Config, Session
from .errors import Refused, ServerProblem, UsageProblem
from .output import fmt_duration, fmt_time, parse_duration, print_json, say, table

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ROLE_NAMES = ("owner", "approver", "technician", "automation")
#: Which root roles an account role gives its keys (docs/design/protocol.md).
ACCOUNT_ROLE_TO_ROOT_ROLES: dict[str, tuple[str, ...]] = {
    "owner": ("owner", "approver"),
    "approver": ("approver",),
    "technician": ("technician",),
}
DEFAULT_ROOT_LIFETIME = 365 * 86400

root_app = typer.Typer(help="Tenant roots: the signed list of who may do what.",
                       no_args_is_help=True)


# --- building roots ---------------------------------------------------------------------------


def _b64_of(text: Any, cls: type[OperatorPublicKey] | type[LogPublicKey]) -> str:
    """Accept ``rampart-<kind>-pub:<b64>`` or raw base64; return the validated base64."""
    if not isinstance(text, str):
        raise ServerProblem("the server sent a key without a public key")
    try:
        key = cls.from_text(text) if text.startswith("rampart-") else cls.from_b64(text)
    except trust.TrustError as exc:
        raise Refused(f"the server sent an invalid public key: {exc}") from exc
    return key.to_b64()


def checked_key(entry: Any, cls: type[OperatorPublicKey] | type[LogPublicKey]) -> tuple[str, str]:
    """(keyid, base64 public key) from a server entry; the key id must hash from the key."""
    d = expect_dict(entry, "key")
    pub = _b64_of(d.get("public"), cls)
    kid = hashlib.sha256(base64.b64decode(pub)).hexdigest()
    if d.get("keyid") not in (None, kid):
        raise Refused(f"the server sent key id {str(d.get('keyid'))[:16]}… for a key whose id is "
                      f"{kid[:16]}…")
    return kid, pub


def members_keys(members: list[Any]) -> tuple[dict[str, KeyEntry], dict[str, list[str]]]:
    """Keys and root roles from ``GET /tenants/{t}/members``."""
    keys: dict[str, KeyEntry] = {}
    roles: dict[str, list[str]] = {r: [] for r in ROLE_NAMES}
    for m in members:
        m = expect_dict(m, "member")
        username = m.get("username")
        root_roles = ACCOUNT_ROLE_TO_ROOT_ROLES.get(str(m.get("role")), ())
        if not isinstance(username, str) or not root_roles:
            continue
        for k in expect_list(m.get("keys") or [], "member keys"):
            kid, pub = checked_key(k, OperatorPublicKey)
            keys[kid] = KeyEntry(public=pub, name=username[:128])
            for r in root_roles:
                if kid not in roles[r]:
                    roles[r].append(kid)
    return keys, roles


def log_keys_of(entries: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for e in expect_list(entries or [], "log keys"):
        kid, pub = checked_key(e, LogPublicKey)
        out[kid] = pub
    if not out:
        raise ServerProblem("the tenant has no log key")
    return out


def make_root(*, tenant: str, name: str, version: int, expires: int, keys: dict[str, KeyEntry],
              roles: dict[str, list[str]], thresholds: dict[str, int], log_keys: dict[str, str],
              policy: Policy) -> TenantRoot:
    """Build a root and validate it exactly as a verifier would decode it."""
    try:
        root = TenantRoot(
            tenant=tenant, name=name[:128], version=version, expires=expires, keys=keys,
            roles=Roles(**{r: RoleSpec(keyids=sorted(roles.get(r, [])),
                                       threshold=thresholds.get(r, 1)) for r in ROLE_NAMES}),
            log_keys=log_keys, policy=policy,
        )
        return trust.decode_payload(trust.encode_payload(root), TenantRoot)
    except (ValueError, msgspec.ValidationError) as exc:
        raise UsageProblem(f"this root would be invalid: {exc}") from None
    except trust.DecodeError as exc:
        raise UsageProblem(f"this root would be invalid: {exc.message}") from None


def unsigned(root: TenantRoot) -> Envelope:
    return Envelope(ROOT_TYPE, trust.encode_payload(root), ())


def decode_root_payload(data: bytes) -> tuple[Envelope, TenantRoot]:
    with refusing("root envelope"):
        env = trust.decode_envelope(data, expect_type=ROOT_TYPE)
        return env, trust.decode_payload(env.payload, TenantRoot)


# --- showing ---------------------------------------------------------------------------------


def root_doc(root: TenantRoot, sha256: str | None = None) -> dict[str, Any]:
    roles = {}
    for r in ROLE_NAMES:
        spec = root.roles.get(r)
        roles[r] = {"threshold": spec.threshold,
                    "keys": [{"keyid": k, "name": root.key_name(k)} for k in spec.keyids]}
    return {"tenant": root.tenant, "name": root.name, "version": root.version,
            "expires": root.expires, "sha256": sha256, "roles": roles,
            "log_keys": sorted(root.log_keys), "policy": msgspec.to_builtins(root.policy)}


def print_root(root: TenantRoot, sha256: str | None) -> None:
    say(f"tenant {root.name} ({root.tenant}), root v{root.version}")
    say(f"expires {fmt_time(root.expires)}")
    if sha256:
        say(f"sha256  {sha256}")
    rows = []
    for r in ROLE_NAMES:
        spec = root.roles.get(r)
        for k in spec.keyids:
            rows.append([r, f"{spec.threshold}", root.key_name(k), k])
    table(["role", "threshold", "name", "key id"], rows, title="Keys")
    p = root.policy
    say(f"policy: capabilities {', '.join(p.capabilities)}; high-risk "
        f"{', '.join(p.high_risk_capabilities) or '-'}; one approver up to "
        f"{p.approver_device_limit} device(s), else {p.approvers_beyond_limit}; longest grant "
        f"{fmt_duration(p.max_grant_seconds)}")
    say(f"log keys: {', '.join(k[:16] + '…' for k in sorted(root.log_keys))}")


def diff_roots(old: TenantRoot, new: TenantRoot) -> list[str]:
    """Human lines describing what ``new`` changes relative to ``old``."""
    lines: list[str] = []
    for kid in sorted(set(new.keys) - set(old.keys)):
        lines.append(f"+ key {new.key_name(kid)} {kid[:16]}… as {', '.join(new.roles_of(kid))}")
    for kid in sorted(set(old.keys) - set(new.keys)):
        lines.append(f"- key {old.key_name(kid)} {kid[:16]}… (was {', '.join(old.roles_of(kid))})")
    for kid in sorted(set(old.keys) & set(new.keys)):
        a, b = set(old.roles_of(kid)), set(new.roles_of(kid))
        if a != b:
            lines.append(f"~ key {new.key_name(kid)} {kid[:16]}…: roles "
                         f"{', '.join(sorted(a)) or '-'} -> {', '.join(sorted(b)) or '-'}")
        if old.keys[kid].name != new.keys[kid].name:
            lines.append(f"~ key {kid[:16]}… renamed {old.keys[kid].name} -> {new.keys[kid].name}")
    for r in ROLE_NAMES:
        ta, tb = old.roles.get(r).threshold, new.roles.get(r).threshold
        if ta != tb:
            lines.append(f"~ {r} threshold {ta} -> {tb}")
    if set(old.log_keys) != set(new.log_keys):
        lines.append(f"~ log keys {sorted(k[:16] for k in old.log_keys)} -> "
                     f"{sorted(k[:16] for k in new.log_keys)}")
    if old.policy != new.policy:
        a, b = msgspec.to_builtins(old.policy), msgspec.to_builtins(new.policy)
        for k in sorted(b):
            if a.get(k) != b.get(k):
                lines.append(f"~ policy {k}: {a.get(k)} -> {b.get(k)}")
    if old.name != new.name:
        lines.append(f"~ name {old.name} -> {new.name}")
    lines.append(f"~ expires {fmt_time(old.expires)} -> {fmt_time(new.expires)}")
    return lines


# --- proposal flows (reused by `rampart up`) ---------------------------------------------------


def get_proposal(client: Client, tenant_id: str, current: TrustedRoot) -> tuple[bytes, TenantRoot]:
    """Fetch the proposal and check it is the next version of this tenant's trusted root."""
    doc = client.get(f"/tenants/{tenant_id}/root-proposal")
    data = envelope_bytes(doc, "root proposal")
    _, root = decode_root_payload(data)
    if root.tenant != tenant_id:
        raise Refused("the proposal names another tenant")
    if root.version != current.version + 1:
        raise Refused(f"the proposal is v{root.version}, but the next version after the root you "
                      f"trust is v{current.version + 1}")
    return data, root


def propose(client: Client, tenant_id: str, current: TrustedRoot, *,
            add: list[tuple[str, str]], remove: list[str], owner_threshold: int | None,
            lifetime_s: int, sync: bool, extra_keys: dict[str, KeyEntry] | None = None) -> TenantRoot:
    """Build the next root version from the trusted one and upload it unsigned.

    ``extra_keys`` are keys that are not a member's (the server's automation
    key, checked by the caller against its key id).
    """
    old = current.root
    keys = dict(old.keys)
    roles = {r: list(old.roles.get(r).keyids) for r in ROLE_NAMES}
    thresholds = {r: old.roles.get(r).threshold for r in ROLE_NAMES}
    members = expect_list(client.get(f"/tenants/{tenant_id}/members"), "members")
    member_keys, member_roles = members_keys(members)
    if sync:
        keys = dict(member_keys)
        automation = [k for k in roles["automation"] if k in old.keys]
        roles = {r: list(member_roles[r]) for r in ROLE_NAMES}
        for k in automation:  # automation keys are not accounts: keep them
            keys[k] = old.keys[k]
            roles["automation"].append(k)
    for kid, role in add:
        if role not in ROLE_NAMES:
            raise UsageProblem(f"--role must be one of {', '.join(ROLE_NAMES)}")
        if kid not in keys and extra_keys and kid in extra_keys:
            keys[kid] = extra_keys[kid]
        if kid not in keys:
            if kid not in member_keys:
                raise UsageProblem(f"key {kid[:16]}… is not registered by a member of this tenant")
            keys[kid] = member_keys[kid]
        if kid not in roles[role]:
            roles[role].append(kid)
    for kid in remove:
        if kid not in keys:
            raise UsageProblem(f"key {kid[:16]}… is not in root v{old.version}")
        del keys[kid]
        for r in ROLE_NAMES:
            roles[r] = [k for k in roles[r] if k != kid]
    if owner_threshold is not None:
        thresholds["owner"] = owner_threshold
    new = make_root(tenant=old.tenant, name=old.name, version=old.version + 1,
                    expires=now() + lifetime_s, keys=keys, roles=roles, thresholds=thresholds,
                    log_keys=dict(old.log_keys), policy=old.policy)
    client.put(f"/tenants/{tenant_id}/root-proposal",
               {"envelope": unsigned(new).to_bytes().decode()})
    return new


def sign_proposal(client: Client, cfg: Config, session: Session, tenant_id: str,
                  current: TrustedRoot, data: bytes
                  ) -> tuple[TenantRoot, SignerResult, SignerResult]:
    """Sign the proposal with this operator's owner key (of the current or new root); upload."""
    new_root, _, _ = check_root_signatures(data, previous=current.root)
    owners = set(current.root.roles.owner.keyids) | set(new_root.roles.owner.keyids)
    candidates = cfg.key_candidates(session.username, tenant_id)
    info = next((k for k in candidates if k.keyid in owners), None)
    if info is None:
        raise Refused(f"none of your keys is an owner of v{current.version} or "
                      f"v{new_root.version}: your signature would not count")
    key = unlock_key(info)
    env, _ = decode_root_payload(data)
    signed = trust.add_signature(env, key)
    client.post(f"/tenants/{tenant_id}/root-proposal/signatures",
                {"envelope": signed.to_bytes().decode()})
    with refusing("signed proposal"):
        _, own, prev = check_root_signatures(signed.to_bytes(), previous=current.root)
    if prev is None:  # pragma: no cover - a previous root was given
        raise Refused("no previous root to count signatures against")
    return new_root, own, prev


def publish_proposal(client: Client, cfg: Config, tenant_id: str,
                     current: TrustedRoot) -> TrustedRoot:
    """Check the thresholds locally with ``update_root``; publish; then trust the new root."""
    data, _ = get_proposal(client, tenant_id, current)
    with refusing("root proposal not publishable"):
        new = trust.update_root(current, [data], now=now())
    client.post(f"/tenants/{tenant_id}/roots", {"envelope": data.decode()})
    cfg.save_root(tenant_id, new.version, new.envelope, newest=True)
    return new


# --- commands --------------------------------------------------------------------------------


@root_app.command("show")
def root_show(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    json_out: JsonOpt = False,
) -> None:
    """Show the tenant root this operator trusts (updated from the server by the rotation rule)."""
    cfg, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        tr = trusted_root(cfg, client, t["id"], allow_expired=True)
    if json_out:
        print_json(root_doc(tr.root, tr.sha256))
        return
    print_root(tr.root, tr.sha256)


@root_app.command("trust")
def root_trust(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    sha256: Annotated[str, typer.Option("--sha256", help="SHA-256 of a root version, "
                                        "obtained from an owner out of band.")],
) -> None:
    """Trust a tenant's roots only if the server's verified chain contains this SHA-256."""
    cfg, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        if local_root(cfg, t["id"]) is not None:
            raise UsageProblem(f"you already trust a root of {t['name']}")
        tr = trusted_root(cfg, client, t["id"], pin_sha256=sha256)
    say(f"trusted {t['name']} root v{tr.version} (sha256 {tr.sha256})")


@root_app.command("propose")
def root_propose(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    add_key: Annotated[list[str] | None, typer.Option(
        "--add-key", help="Key id to add (pair each with --role; repeatable).")] = None,
    role: Annotated[list[str] | None, typer.Option(
        "--role", help="Role for the --add-key at the same position.")] = None,
    remove_key: Annotated[list[str] | None, typer.Option(
        "--remove-key", help="Key id to remove from every role (repeatable).")] = None,
    owner_threshold: Annotated[int | None, typer.Option(
        "--owner-threshold", help="Owner signatures needed for the next rotation.")] = None,
    expires: Annotated[str, typer.Option("--expires", help="Lifetime, e.g. 365d.")] = "365d",
    sync: Annotated[bool, typer.Option(
        "--sync", help="Rebuild key roles from the tenant's current members.")] = False,
) -> None:
    """Propose the next root version (unsigned) on the server for owners to sign."""
    adds = add_key or []
    roles = role or []
    if len(adds) != len(roles):
        raise UsageProblem("give exactly one --role for each --add-key")
    lifetime = parse_duration(expires, what="--expires")
    cfg, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        current = trusted_root(cfg, client, t["id"], allow_expired=True)
        new = propose(client, t["id"], current, add=list(zip(adds, roles, strict=True)),
                      remove=list(remove_key or []), owner_threshold=owner_threshold,
                      lifetime_s=lifetime, sync=sync)
    say(f"proposed root v{new.version} for {t['name']}:")
    for line in diff_roots(current.root, new):
        say(f"  {line}")
    say(f"owners sign it with `rampart root sign {t['name']}`; it needs "
        f"{current.root.roles.owner.threshold} owner signature(s) of v{current.version} and "
        f"{new.roles.owner.threshold} of v{new.version}")


@root_app.command("sign")
def root_sign(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Review the proposed root against the trusted one, then sign it with your owner key."""
    cfg, client, session = api()
    with client:
        t = resolve_tenant(client, tenant)
        current = trusted_root(cfg, client, t["id"], allow_expired=True)
        data, new = get_proposal(client, t["id"], current)
        say(f"root v{current.version} -> v{new.version} of {t['name']}:")
        for line in diff_roots(current.root, new):
            say(f"  {line}")
        if prompts.stdin_is_tty() and not yes and not prompts.confirm("Sign this root?"):
            raise Refused("not signed")
        with refusing("root proposal"):
            _, own, prev = sign_proposal(client, cfg, session, t["id"], current, data)
    say(f"signed. owners of v{current.version}: {len(prev.signed)} of {prev.threshold}; "
        f"owners of v{new.version}: {len(own.signed)} of {own.threshold}")
    if own.met and prev.met:
        say(f"ready: publish with `rampart root publish {t['name']}`")


@root_app.command("publish")
def root_publish(tenant: Annotated[str, typer.Argument(help="Tenant name or id.")]) -> None:
    """Publish the proposal once the owner thresholds of both versions are met (checked locally)."""
    cfg, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        current = trusted_root(cfg, client, t["id"], allow_expired=True)
        new = publish_proposal(client, cfg, t["id"], current)
    say(f"published root v{new.version} of {t['name']} (sha256 {new.sha256})")


@root_app.command("history")
def root_history(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    json_out: JsonOpt = False,
) -> None:
    """List the root versions this operator has verified."""
    cfg, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        trusted_root(cfg, client, t["id"], allow_expired=True)
    docs: list[dict[str, Any]] = []
    for data in cfg.root_history(t["id"]):
        _, r = decode_root_payload(data)
        docs.append({"version": r.version, "sha256": trust.root_sha256(data),
                     "expires": r.expires, "keys": len(r.keys)})
    if json_out:
        print_json(docs)
        return
    table(["version", "sha256", "expires", "keys"],
          ([d["version"], d["sha256"], fmt_time(d["expires"]), d["keys"]] for d in docs),
          title="Root versions")

