"""Tenant roots: show, pin, propose, sign, publish (the TUF root-rotation rule, signed locally).

Security invariants (docs/trust-chain.md, "The signing ceremony"; issue 11):

* Root changes are decided on the signer's machine. ``root propose`` builds the
  next version from the root this operator trusts plus the changes it names;
  ``root sign`` compares the server's proposal with the root it trusts
  (:func:`rampart.trust.root_diff`) and signs the exact bytes it
  checked, and only if they change nothing but what the signer named: on the
  command line (``--add-key/--role/--fingerprint``, ``--remove-key``,
  ``--owner-threshold``, ``--policy``, ``--expires``), or interactively, where
  the fingerprint of every added key is typed in and every change is shown.
  ``--yes`` never implies approval of a change.
* Every added key's fingerprint (SHA-256 of its public key, six groups of five
  digits) is confirmed by the owner, read out of band from the key holder.
* Key labels shown to a signer come from the signer's own records
  (``labels.json``, its own key files) or the trusted root, never the server;
  the name a proposal gives an added key must be the signer's label for it (or
  ``--name``), else the fingerprint-derived default name.
* Nothing is signed for a tenant whose root this operator has not pinned
  (``root pin``; :func:`rampart.cli.common.require_pin`).
* ``root publish`` checks with :func:`rampart.trust.update_root` that the
  proposal is signed by the owner thresholds of the current and of the new
  version before it asks the server to publish, and stores the new root as
  trusted only after that check.
* A key enters a root only with a public key whose SHA-256 equals its key id.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer

from rampart import trust
from rampart.trust import (
    ROOT_TYPE,
    Envelope,
    KeyEntry,
    LogPublicKey,
    OperatorKey,
    OperatorPublicKey,
    Policy,
    Roles,
    RoleSpec,
    RootDiff,
    SignerResult,
    TenantRoot,
    TrustedRoot,
    check_root_signatures,
    default_key_name,
    key_fingerprint_b64,
    normalise_fingerprint,
    root_diff,
)

from . import prompts
from .client import Client, expect_dict, expect_list
from .common import (
    PIN_HINT,
    api,
    envelope_bytes,
    now,
    pin_tenant_root,
    refusing,
    require_pin,
    resolve_tenant,
    trusted_root,
    unlock_key,
)
from .config import Config, Session
from .errors import Refused, ServerProblem, UsageProblem
from .output import fmt_duration, fmt_time, parse_duration, print_json, say, table
from .recovery import is_recovery, load_recovery_key, recovery_entry, save_sheet, sheet
from .root_witness import (
    parse_witness_keys,
    witness_changes,
    witness_flags,
    witness_lines,
    witness_mismatches,
)

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


def passkey_entry(path: Path) -> tuple[str, KeyEntry]:
    """(key id, root entry) of a passkey file the local console wrote (docs/design/passkeys.md).

    Only ``public`` (the canonical blob, checked as a verifier checks it) and ``name`` are
    used; the key id is computed from the key, never read.
    """
    try:
        doc = json.loads(path.read_text())
        key = trust.PasskeyPublicKey.from_b64(doc["public"])
        name = str(doc.get("name") or default_key_name(doc["public"]))[:128]
    except OSError as exc:
        raise UsageProblem(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError):
        raise UsageProblem(f"{path} is not a passkey file of `rampart console`") from None
    except trust.TrustError as exc:
        raise UsageProblem(f"{path}: {exc.message}") from None
    return key.key_id, KeyEntry(public=key.to_b64(), name=name, type=trust.PASSKEY_KEY_TYPE)


def members_keys(members: list[Any]) -> tuple[dict[str, KeyEntry], dict[str, list[str]]]:
    """Keys and root roles from ``GET /tenants/{t}/members``.

    The server's account names are not used as key names (they are its word):
    each key is named from its fingerprint; :func:`propose` applies the
    proposer's own labels.
    """
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
            keys[kid] = KeyEntry(public=pub, name=default_key_name(pub))
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
              policy: Policy, witness_keys: dict[str, str] | None = None) -> TenantRoot:
    """Build a root and validate it exactly as a verifier would decode it (no witness keys: the
    field is absent, as in every root made before witnesses)."""
    try:
        root = TenantRoot(
            tenant=tenant, name=name[:128], version=version, expires=expires, keys=keys,
            roles=Roles(**{r: RoleSpec(keyids=sorted(roles.get(r, [])),
                                       threshold=thresholds.get(r, 1)) for r in ROLE_NAMES}),
            log_keys=log_keys, policy=policy,
            **({"witness_keys": dict(sorted(witness_keys.items()))} if witness_keys else {}),  # type: ignore[arg-type]
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


#: Days before a root's expiry at which the CLI and the server's alerts warn (root_expiry.py).
EXPIRY_WARN_DAYS = (7, 30, 90)


def expiry_stage(expires: int, when: int) -> str | None:
    """``expired``, ``7d``, ``30d`` or ``90d`` (the nearest stage reached), else None."""
    if expires <= when:
        return "expired"
    return next((f"{d}d" for d in EXPIRY_WARN_DAYS if expires - when <= d * 86400), None)


def expiry_warning(root: TenantRoot, when: int) -> str | None:
    """One line for a root within 90 days of expiry (or past it), naming the fix."""
    stage = expiry_stage(root.expires, when)
    if stage is None:
        return None
    if stage == "expired":
        return (f"EXPIRED: agents refuse every job until an owner renews it: "
                f"rampart root renew {root.name}")
    days = (root.expires - when) // 86400
    return (f"warning: root v{root.version} expires in {days} day(s); renew it before then: "
            f"rampart root renew {root.name}")


def root_doc(root: TenantRoot, sha256: str | None = None) -> dict[str, Any]:
    roles = {}
    for r in ROLE_NAMES:
        spec = root.roles.get(r)
        roles[r] = {"threshold": spec.threshold,
                    "keys": [{"keyid": k, "name": root.key_name(k),
                              "recovery": is_recovery(root.keys[k])} for k in spec.keyids]}
    return {"tenant": root.tenant, "name": root.name, "version": root.version,
            "expires": root.expires, "expiry_stage": expiry_stage(root.expires, now()),
            "sha256": sha256, "roles": roles,
            "log_keys": sorted(root.log_keys), "policy": msgspec.to_builtins(root.policy)}


def print_root(root: TenantRoot, sha256: str | None) -> None:
    say(f"tenant {root.name} ({root.tenant}), root v{root.version}")
    say(f"expires {fmt_time(root.expires)}")
    warning = expiry_warning(root, now())
    if warning:
        say(warning)
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
        f"{fmt_duration(p.max_grant_seconds)}"
        + "".join(f", {c} {fmt_duration(s)}" for c, s in sorted(
            (p.max_grant_seconds_by_capability or {}).items()))
        + f"; standing (automation) grant {fmt_duration(p.max_automation_grant_seconds)}")
    say(f"log keys: {', '.join(k[:16] + '…' for k in sorted(root.log_keys))}")


def diff_roots(old: TenantRoot, new: TenantRoot) -> list[str]:
    """Human lines describing what ``new`` changes relative to ``old`` (a root this CLI built)."""
    lines: list[str] = []
    for kid in sorted(set(new.keys) - set(old.keys)):
        lines.append(f"+ key {new.key_name(kid)} {kid[:16]}… as {', '.join(new.roles_of(kid))}, "
                     f"fingerprint {key_fingerprint_b64(new.keys[kid].public)}")
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
    lines += witness_lines(root_diff(old, new))
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
            lifetime_s: int, sync: bool, extra_keys: dict[str, KeyEntry] | None = None,
            names: dict[str, str] | None = None, cfg: Config | None = None,
            policy: dict[str, object] | None = None, add_witnesses: dict[str, str] | None = None,
            remove_witnesses: list[str] | None = None) -> TenantRoot:
    """Build the next root version from the trusted one and upload it unsigned.

    ``extra_keys`` are keys that are not a member's (the server's automation
    key, checked by the caller against its key id). An added key is named by
    ``names``, else by the proposer's records (``cfg`` labels), else from its
    fingerprint; never by the server. Names given here are recorded in ``cfg``.
    """
    old = current.root
    labels = cfg.load_labels() if cfg is not None else {}
    keys = dict(old.keys)
    roles = {r: list(old.roles.get(r).keyids) for r in ROLE_NAMES}
    thresholds = {r: old.roles.get(r).threshold for r in ROLE_NAMES}
    members = expect_list(client.get(f"/tenants/{tenant_id}/members"), "members")
    member_keys, member_roles = members_keys(members)
    if sync:
        keys = {k: old.keys.get(k, e) for k, e in member_keys.items()}
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
    chosen = dict(names or {})
    for kid in set(keys) - set(old.keys):  # new keys: the proposer's names, never the server's
        name = chosen.get(kid) or labels.get(kid)
        if name:
            keys[kid] = msgspec.structs.replace(keys[kid], name=name[:128])  # its type kept
    new = make_root(tenant=old.tenant, name=old.name, version=old.version + 1,
                    expires=now() + lifetime_s, keys=keys, roles=roles, thresholds=thresholds,
                    log_keys=dict(old.log_keys),
                    policy=with_changes(old.policy, policy) if policy else old.policy,
                    witness_keys=witness_changes(old.witnesses(), add_witnesses, remove_witnesses))
    client.put(f"/tenants/{tenant_id}/root-proposal",
               {"envelope": unsigned(new).to_bytes().decode()})
    if cfg is not None:
        for kid in set(new.keys) - set(old.keys):
            if kid in chosen or (extra_keys and kid in extra_keys):
                cfg.save_label(kid, new.keys[kid].name)
    return new


# --- reviewing a proposal (the signer's side) --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expected:
    """The changes an owner names on the command line; a proposal must match them exactly."""

    adds: dict[str, tuple[frozenset[str], str, str | None]]  # keyid -> (roles, fingerprint, name)
    removes: frozenset[str]
    owner_threshold: int | None
    lifetime_s: int
    policy: dict[str, object] = field(default_factory=dict)  # field -> new value (builtins)
    witness_adds: frozenset[str] = frozenset()  # key ids of --add-witness
    witness_removes: frozenset[str] = frozenset()

    @property
    def stated(self) -> bool:
        return bool(self.adds or self.removes or self.owner_threshold is not None or self.policy
                    or self.witness_adds or self.witness_removes)


#: How far a proposal's expiry may be from now + the expected lifetime (co-owners sign later).
EXPIRY_SLACK_BEFORE = 7 * 86400
EXPIRY_SLACK_AFTER = 86400


#: Policy fields a rotation may change, with how a --policy value is read.
_POLICY_LISTS = ("capabilities", "high_risk_capabilities")
_POLICY_DURATIONS = ("max_grant_seconds", "max_automation_grant_seconds")
_POLICY_INTS = ("approver_device_limit", "approvers_beyond_limit", "witness_quorum")
_POLICY_BOOLS = ("record_session_input",)
_POLICY_MAPS = ("max_grant_seconds_by_capability",)  # CAPABILITY:DURATION,...


def policy_changes(items: list[str], base: Policy | None) -> dict[str, object]:
    """``NAME=VALUE`` flags as policy changes against ``base``; UsageProblem if any is invalid.

    Lists are comma-separated capability names; durations take 8h, 30d or
    seconds; the resulting policy is validated as a verifier decodes it.
    """
    out: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        names = (*_POLICY_INTS, *_POLICY_DURATIONS, *_POLICY_LISTS, *_POLICY_BOOLS, *_POLICY_MAPS)
        if not sep or key not in names:
            raise UsageProblem(
                f"--policy {item!r}: give NAME=VALUE with NAME one of {', '.join(names)}")
        value: object
        if key in _POLICY_MAPS:
            value = _capability_durations(raw, key)
        elif key in _POLICY_BOOLS:
            if raw.strip().lower() not in ("true", "false"):
                raise UsageProblem(f"--policy {key}: {raw!r} is not true or false")
            value = raw.strip().lower() == "true"
        elif key in _POLICY_LISTS:
            value = sorted({c.strip() for c in raw.split(",") if c.strip()})  # a set, canonical
        elif key in _POLICY_DURATIONS:
            value = parse_duration(raw.strip(), what=f"--policy {key}")
        else:
            try:
                value = int(raw.strip())
            except ValueError:
                raise UsageProblem(f"--policy {key}: {raw!r} is not a whole number") from None
        if key in out and out[key] != value:
            raise UsageProblem(f"two different --policy values for {key}")
        out[key] = value
    if base is not None:
        with_changes(base, out)  # validates
    return out


def _capability_durations(raw: str, key: str) -> dict[str, int]:
    """``script:30d,shell:1h`` -> ``{"script": 2592000, "shell": 3600}`` (empty: no limits)."""
    out: dict[str, int] = {}
    for part in (p.strip() for p in raw.split(",") if p.strip()):
        cap, sep, dur = part.partition(":")
        if not sep:
            raise UsageProblem(f"--policy {key}: {part!r} is not CAPABILITY:DURATION (e.g. script:30d)")
        if cap.strip() in out:
            raise UsageProblem(f"--policy {key}: {cap.strip()} is named twice")
        out[cap.strip()] = parse_duration(dur.strip(), what=f"--policy {key} {cap.strip()}")
    return out


def with_changes(base: Policy, changes: dict[str, object]) -> Policy:
    """``base`` with ``changes`` applied, validated exactly as a verifier decodes a policy."""
    doc = {**msgspec.to_builtins(base), **changes}
    try:
        return msgspec.convert(doc, Policy)
    except (ValueError, msgspec.ValidationError) as exc:
        raise UsageProblem(f"this policy would be invalid: {exc}") from None


def _canonical(value: object) -> object:
    return sorted(value) if isinstance(value, list) else value


def policy_flag(key: str, value: object) -> str:
    """The ``--policy`` flag that states one change (for the line `propose` prints)."""
    if isinstance(value, dict):
        text = ",".join(f"{c}:{fmt_duration(int(s))}" for c, s in sorted(value.items()))
    else:
        text = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
    return f"--policy {key}={text}"


def expected_from_flags(add_key: list[str], role: list[str], fingerprint: list[str],
                        name: list[str], remove_key: list[str], owner_threshold: int | None,
                        lifetime_s: int, policy: dict[str, object] | None = None) -> Expected:
    if len(role) != len(add_key):
        raise UsageProblem("give exactly one --role for each --add-key")
    if len(fingerprint) != len(add_key):
        raise UsageProblem("give exactly one --fingerprint for each --add-key: the key's "
                           "fingerprint as its holder read it to you (`rampart key new` shows it)")
    if name and len(name) != len(add_key):
        raise UsageProblem("give --name for every --add-key, or for none")
    adds: dict[str, tuple[frozenset[str], str, str | None]] = {}
    for i, kid in enumerate(add_key):
        if role[i] not in ROLE_NAMES:
            raise UsageProblem(f"--role must be one of {', '.join(ROLE_NAMES)}")
        try:
            fp = normalise_fingerprint(fingerprint[i])
        except trust.UsageError as exc:
            raise UsageProblem(f"--fingerprint {fingerprint[i]!r}: {exc}") from None
        roles, fp0, name0 = adds.get(kid, (frozenset(), fp, None))
        if fp0 != fp:
            raise UsageProblem(f"two different --fingerprint values for key {kid[:16]}…")
        adds[kid] = (roles | {role[i]}, fp, name[i] if name else name0)
    return Expected(adds=adds, removes=frozenset(remove_key), owner_threshold=owner_threshold,
                    lifetime_s=lifetime_s, policy=dict(policy or {}))


def review_lines(d: RootDiff, old: TenantRoot, new: TenantRoot,
                 labels: dict[str, str]) -> list[str]:
    """What the signer is shown: labels from its own records or the trusted root only."""
    def label(kid: str) -> str:
        if kid in labels:
            return labels[kid]
        if kid in old.keys:
            return old.key_name(kid)
        return "(not in your records)"

    lines: list[str] = []
    for kid, roles in d.added.items():
        lines.append(f"+ key {label(kid)} {kid[:16]}… as {', '.join(roles) or '-'}; fingerprint "
                     f"to confirm with its holder: {key_fingerprint_b64(new.keys[kid].public)}")
    for kid, roles in d.removed.items():
        lines.append(f"- key {label(kid)} {kid[:16]}… (was {', '.join(roles) or '-'})")
    for kid, (was, now_) in d.roles_changed.items():
        lines.append(f"~ key {label(kid)} {kid[:16]}…: roles {', '.join(was) or '-'} -> "
                     f"{', '.join(now_) or '-'}")
    for kid in d.renamed:
        lines.append(f"! key {label(kid)} {kid[:16]}…: the proposal renames it")
    for r, (ta, tb) in d.thresholds.items():
        lines.append(f"~ {r} threshold {ta} -> {tb}")
    for k, (pa, pb) in d.policy.items():
        lines.append(f"! policy {k}: {pa} -> {pb}")
    if d.log_keys_changed:
        lines.append("! the proposal changes the audit log keys")
    lines += witness_lines(d)
    if d.name is not None:
        lines.append("! the proposal renames the tenant")
    if d.tenant_changed:
        lines.append("! the proposal names another tenant")
    lines.append(f"~ expires {fmt_time(d.expires[0])} -> {fmt_time(d.expires[1])}")
    return lines


def _expected_name(kid: str, new: TenantRoot, stated: str | None, labels: dict[str, str]) -> str:
    return stated or labels.get(kid) or default_key_name(new.keys[kid].public)


def unsupported_changes(d: RootDiff) -> list[str]:
    """Changes no CLI flow proposes: refused even at a terminal."""
    out: list[str] = []
    if d.tenant_changed:
        out.append("it names another tenant")
    if d.name is not None:
        out.append("it renames the tenant")
    if d.log_keys_changed:
        out.append("it changes the audit log keys")
    for kid in d.renamed:
        out.append(f"it renames key {kid[:16]}…")
    for r in d.thresholds:
        if r != "owner":
            out.append(f"it changes the {r} threshold")
    return out


def mismatches(d: RootDiff, new: TenantRoot, exp: Expected, labels: dict[str, str],
               when: int) -> list[str]:
    """Every way the proposal differs from what the owner named (empty: sign)."""
    out = unsupported_changes(d) + witness_mismatches(d, exp.witness_adds, exp.witness_removes)
    for k, (was, becomes) in d.policy.items():
        if k not in exp.policy:
            out.append(f"it changes policy {k} {was} -> {becomes}, which you did not name "
                       "(--policy)")
        elif _canonical(exp.policy[k]) != _canonical(becomes):
            out.append(f"it sets policy {k} to {becomes}, not {exp.policy[k]}")
    for k, want in exp.policy.items():
        if k not in d.policy:
            out.append(f"it does not set policy {k} to {want}")
    for kid, roles in d.added.items():
        if kid not in exp.adds:
            out.append(f"it adds key {kid[:16]}… as {', '.join(roles) or '-'}, which you did not "
                       "name (--add-key)")
    for kid, (was, now_) in d.roles_changed.items():
        if kid not in exp.adds and kid not in exp.removes:
            out.append(f"it changes the roles of key {kid[:16]}… ({', '.join(was)} -> "
                       f"{', '.join(now_) or '-'})")
    for kid, (want_roles, fp, name) in exp.adds.items():
        if kid in d.added:
            got = set(d.added[kid])
        elif kid in d.roles_changed:
            got = set(d.roles_changed[kid][1]) - set(d.roles_changed[kid][0])
        else:
            out.append(f"it does not add key {kid[:16]}… as {', '.join(sorted(want_roles))}")
            continue
        if got != set(want_roles):
            out.append(f"it gives key {kid[:16]}… the roles {', '.join(sorted(got)) or '-'}, not "
                       f"{', '.join(sorted(want_roles))}")
        actual_fp = key_fingerprint_b64(new.keys[kid].public)
        if actual_fp != fp:
            out.append(f"the fingerprint of key {kid[:16]}… is not the one you gave: do not "
                       "sign; the key is not the one its holder read to you")
        if kid in d.added and new.keys[kid].name != _expected_name(kid, new, name, labels):
            out.append(f"it names key {kid[:16]}… differently from your records (give "
                       "--name if you agree with the proposer's name)")
    for kid in d.removed:
        if kid not in exp.removes:
            out.append(f"it removes key {kid[:16]}…, which you did not name (--remove-key)")
    for kid in exp.removes:
        if kid not in d.removed:
            out.append(f"it does not remove key {kid[:16]}…")
    if "owner" in d.thresholds and exp.owner_threshold != d.thresholds["owner"][1]:
        out.append(f"it changes the owner threshold {d.thresholds['owner'][0]} -> "
                   f"{d.thresholds['owner'][1]}")
    if exp.owner_threshold is not None and new.roles.owner.threshold != exp.owner_threshold:
        out.append(f"its owner threshold is {new.roles.owner.threshold}, not "
                   f"{exp.owner_threshold}")
    lo = when + exp.lifetime_s - EXPIRY_SLACK_BEFORE
    hi = when + exp.lifetime_s + EXPIRY_SLACK_AFTER
    if not lo <= new.expires <= hi:
        out.append(f"it expires {fmt_time(new.expires)}, not about "
                   f"{fmt_time(when + exp.lifetime_s)} (--expires)")
    return out


def confirm_added_keys(d: RootDiff, new: TenantRoot, cfg: Config, labels: dict[str, str], *,
                       fingerprint_of: Callable[[str], str], holder_of: Callable[[str], str]) -> None:
    """Each added key's fingerprint, as the owner typed it (``fingerprint_of``), must be the key's;
    a key unknown to the owner's records must carry the name the owner expects (``holder_of``).
    Names confirmed here are recorded. Used at a terminal and by the local console."""
    for kid in d.added:
        actual = key_fingerprint_b64(new.keys[kid].public)
        typed = fingerprint_of(kid)
        try:
            ok = normalise_fingerprint(typed) == actual
        except trust.UsageError:
            ok = False
        if not ok:
            raise Refused(f"the fingerprint you typed is not that of key {kid[:16]}…: not "
                          "signed; the key in the proposal is not the one its holder has")
        want = labels.get(kid)
        if want is None and new.keys[kid].name != default_key_name(new.keys[kid].public):
            want = holder_of(kid).strip()
        if want is not None and new.keys[kid].name != want:
            raise Refused(f"the proposal names key {kid[:16]}… differently from your records: "
                          "not signed")
        if want is not None:
            cfg.save_label(kid, want)


def confirm_interactively(d: RootDiff, new: TenantRoot, cfg: Config,
                          labels: dict[str, str]) -> None:
    """At a terminal: the owner types each added key's fingerprint, then names unknown keys."""
    confirm_added_keys(
        d, new, cfg, labels,
        fingerprint_of=lambda kid: prompts.ask(
            f"Fingerprint of key {kid[:16]}… as its holder reads it to you: "),
        holder_of=lambda kid: prompts.ask(
            f"Who holds key {kid[:16]}… (the name you expect in the root)? "))


def sign_proposal(client: Client, cfg: Config, session: Session, tenant_id: str,
                  current: TrustedRoot, data: bytes, *, keys: Sequence[OperatorKey] = ()
                  ) -> tuple[TenantRoot, SignerResult, SignerResult]:
    """Sign exactly ``data`` with owner keys (of the current or new root); upload once.

    ``keys`` are the signers (the offline recovery key, a key just made); by
    default this operator's own owner key. The caller has checked ``data``
    against the root it trusts (:func:`mismatches`, :func:`confirm_interactively`,
    or built it itself). The counts returned are of these signatures alone.
    """
    require_pin(cfg, tenant_id, current)
    new_root, _, _ = check_root_signatures(data, previous=current.root)
    owners = set(current.root.roles.owner.keyids) | set(new_root.roles.owner.keyids)
    signers = list(keys)
    if not signers:
        candidates = cfg.key_candidates(session.username, tenant_id)
        info = next((k for k in candidates if k.keyid in owners), None)
        if info is None:
            raise Refused(f"none of your keys is an owner of v{current.version} or "
                          f"v{new_root.version}: your signature would not count")
        signers = [unlock_key(info)]
    for key in signers:
        if key.key_id not in owners:
            raise Refused(f"key {key.key_id[:16]}… is not an owner of v{current.version} or "
                          f"v{new_root.version}: its signature would not count")
    signed, _ = decode_root_payload(data)
    for key in signers:
        signed = trust.add_signature(signed, key)
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
    if cfg.load_pin(t["id"]) is None:
        # Never suggest pinning what the server just sent: that would be trust on first use.
        say("not pinned: this is the root as the server sent it; you cannot sign for this "
            f"tenant until you pin it: {PIN_HINT}")
    else:
        say(f"operators pin this root with: rampart root pin {tr.root.name} {tr.sha256} "
            "(give them the SHA-256 out of band, e.g. read it over the phone)")


@root_app.command("trust")
def root_trust(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    sha256: Annotated[str, typer.Option("--sha256", help="SHA-256 of a root version, "
                                        "obtained from an owner out of band.")],
) -> None:
    """Pin a tenant's root by its SHA-256 (same as `rampart root pin TENANT SHA256`)."""
    _pin(tenant, sha256)


@root_app.command("pin")
def root_pin(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    sha256: Annotated[str, typer.Argument(help="SHA-256 of a root version, from an owner out "
                                          "of band (their `rampart root show` prints it).")],
) -> None:
    """Pin a tenant's root: nothing is signed for a tenant until its root is pinned."""
    _pin(tenant, sha256)


def _pin(tenant: str, sha256: str) -> None:
    cfg, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        tr = pin_tenant_root(cfg, client, t["id"], sha256)
    say(f"pinned {t['name']} at sha256 {sha256.strip().lower()}; trusting root v{tr.version} "
        f"(sha256 {tr.sha256})")


def _names_opt(values: list[str] | None, adds: list[str]) -> dict[str, str]:
    if not values:
        return {}
    if len(values) != len(adds):
        raise UsageProblem("give --name for every --add-key, or for none")
    return dict(zip(adds, values, strict=True))


@root_app.command("propose")
def root_propose(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    add_key: Annotated[list[str] | None, typer.Option(
        "--add-key", help="Key id to add (pair each with --role; repeatable).")] = None,
    role: Annotated[list[str] | None, typer.Option(
        "--role", help="Role for the --add-key at the same position.")] = None,
    name: Annotated[list[str] | None, typer.Option(
        "--name", help="Your name for the --add-key at the same position (kept in your "
        "records; default: your records, else from its fingerprint).")] = None,
    remove_key: Annotated[list[str] | None, typer.Option(
        "--remove-key", help="Key id to remove from every role (repeatable).")] = None,
    owner_threshold: Annotated[int | None, typer.Option(
        "--owner-threshold", help="Owner signatures needed for the next rotation.")] = None,
    expires: Annotated[str, typer.Option("--expires", help="Lifetime, e.g. 365d.")] = "365d",
    sync: Annotated[bool, typer.Option(
        "--sync", help="Rebuild key roles from the tenant's current members (a proposal only: "
        "each new key's fingerprint is still confirmed when signing).")] = False,
    policy: Annotated[list[str] | None, typer.Option(
        "--policy", help="A policy change NAME=VALUE (repeatable): approver_device_limit, "
        "approvers_beyond_limit, max_grant_seconds (8h, 2d...), max_automation_grant_seconds, "
        "max_grant_seconds_by_capability (script:30d,...: replaces max_grant_seconds for those "
        "capabilities), capabilities and high_risk_capabilities (comma-separated), "
        "witness_quorum (outside witness co-signatures a checkpoint needs).")] = None,
    add_witness: Annotated[list[str] | None, typer.Option(
        "--add-witness", help="An outside witness's public key (rampart-witness-pub:…, from "
        "`rampart witness key new`; repeatable): it co-signs the tenant's checkpoints.")] = None,
    remove_witness: Annotated[list[str] | None, typer.Option(
        "--remove-witness", help="Key id of an outside witness to remove (repeatable).")] = None,
    add_passkey: Annotated[list[Path] | None, typer.Option(
        "--add-passkey", help="A passkey file `rampart console` wrote (public key only; pair each with "
        "--passkey-role; repeatable).")] = None,
    passkey_role: Annotated[list[str] | None, typer.Option(
        "--passkey-role", help="Role for the --add-passkey at the same position.")] = None,
) -> None:
    """Propose the next root version (unsigned) on the server for owners to sign."""
    adds = add_key or []
    roles = role or []
    if len(adds) != len(roles):
        raise UsageProblem("give exactly one --role for each --add-key")
    names = _names_opt(name, adds)
    passkeys = [passkey_entry(p) for p in add_passkey or []]
    if len(passkeys) != len(passkey_role or []):
        raise UsageProblem("give exactly one --passkey-role for each --add-passkey")
    extra = {kid: entry for kid, entry in passkeys}
    adds = [*adds, *(kid for kid, _ in passkeys)]
    roles = [*roles, *(passkey_role or [])]
    names.update({kid: entry.name for kid, entry in passkeys})
    lifetime = parse_duration(expires, what="--expires")
    cfg, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        current = trusted_root(cfg, client, t["id"], allow_expired=True)
        changes = policy_changes(list(policy or []), current.root.policy)
        new = propose(client, t["id"], current, add=list(zip(adds, roles, strict=True)),
                      remove=list(remove_key or []), owner_threshold=owner_threshold,
                      lifetime_s=lifetime, sync=sync, names=names, cfg=cfg, policy=changes,
                      extra_keys=extra, add_witnesses=parse_witness_keys(list(add_witness or [])),
                      remove_witnesses=list(remove_witness or []))
    say(f"proposed root v{new.version} for {t['name']}:")
    for line in diff_roots(current.root, new):
        say(f"  {line}")
    d = root_diff(current.root, new)
    flags = []
    for kid in d.added:
        for r in new.roles_of(kid):
            flags.append(f"--add-key {kid} --role {r} --fingerprint "
                         f"'{key_fingerprint_b64(new.keys[kid].public)}'")
    flags += [f"--remove-key {kid}" for kid in d.removed]
    if "owner" in d.thresholds:
        flags.append(f"--owner-threshold {new.roles.owner.threshold}")
    flags += [f"'{policy_flag(k, b)}'" if isinstance(b, list) else policy_flag(k, b)
              for k, (_, b) in d.policy.items()]
    flags += witness_flags(d)
    if d.added:
        say("before signing, have each new key's holder read you its fingerprint "
            "(`rampart key new` showed it to them) and compare it with the one above")
    say(f"owners sign it with `rampart root sign {t['name']}` at a terminal, or non-interactively "
        f"with `rampart root sign {t['name']} {' '.join(flags + [f'--expires {expires}'])}`; "
        f"it needs {current.root.roles.owner.threshold} owner signature(s) of v{current.version} "
        f"and {new.roles.owner.threshold} of v{new.version}")


@root_app.command("sign")
def root_sign(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (the "
                                      "changes must then be named in flags).")] = False,
    add_key: Annotated[list[str] | None, typer.Option(
        "--add-key", help="A key you expect to be added (repeatable; pair with --role and "
        "--fingerprint).")] = None,
    role: Annotated[list[str] | None, typer.Option(
        "--role", help="The role you expect for the --add-key at the same position.")] = None,
    fingerprint: Annotated[list[str] | None, typer.Option(
        "--fingerprint", help="The fingerprint its holder read to you, for the --add-key at the "
        "same position.")] = None,
    name: Annotated[list[str] | None, typer.Option(
        "--name", help="The name you expect for the --add-key at the same position (default: "
        "your records, else from its fingerprint).")] = None,
    remove_key: Annotated[list[str] | None, typer.Option(
        "--remove-key", help="A key you expect to be removed (repeatable).")] = None,
    owner_threshold: Annotated[int | None, typer.Option(
        "--owner-threshold", help="The owner threshold you expect.")] = None,
    expires: Annotated[str, typer.Option("--expires", help="The lifetime you expect.")] = "365d",
    policy: Annotated[list[str] | None, typer.Option(
        "--policy", help="A policy change NAME=VALUE you expect (repeatable).")] = None,
    add_witness: Annotated[list[str] | None, typer.Option(
        "--add-witness", help="An outside witness's public key you expect to be added (repeatable).")] = None,
    remove_witness: Annotated[list[str] | None, typer.Option(
        "--remove-witness", help="Key id of an outside witness you expect to be removed "
        "(repeatable).")] = None,
    recovery_key: Annotated[str | None, typer.Option(
        "--recovery-key", help="Sign with the tenant's offline recovery key instead of your own: "
        "the sheet's file, or - to type it at a hidden prompt.")] = None,
) -> None:
    """Check the proposed root against the root you trust and the changes you name; sign it.

    At a terminal without flags, you type the fingerprint of every added key.
    Otherwise the proposal must change exactly what the flags name (keys added
    with their roles and fingerprints, keys removed, owner threshold, policy
    changes, lifetime), or it is refused.
    """
    exp = expected_from_flags(list(add_key or []), list(role or []), list(fingerprint or []),
                              list(name or []), list(remove_key or []), owner_threshold,
                              parse_duration(expires, what="--expires"),
                              policy_changes(list(policy or []), None))
    exp = dataclasses.replace(exp, witness_adds=frozenset(parse_witness_keys(list(add_witness or []))),
                              witness_removes=frozenset(remove_witness or []))
    interactive = prompts.stdin_is_tty() and not yes and not exp.stated
    cfg, client, session = api()
    with client:
        t, current = pinned_root(cfg, client, tenant)
        data, new = get_proposal(client, t["id"], current)
        owners = set(current.root.roles.owner.keyids) | set(new.roles.owner.keyids)
        signer = load_recovery_key(recovery_key, t["id"]) if recovery_key else None
        if signer is not None and signer.key_id not in owners:
            raise Refused(f"this recovery key is not an owner of v{current.version} or "
                          f"v{new.version}: its signature would not count")
        if signer is None and not any(
                k.keyid in owners for k in cfg.key_candidates(session.username, t["id"])):
            raise Refused(f"none of your keys is an owner of v{current.version} or "
                          f"v{new.version}: your signature would not count")
        d = root_diff(current.root, new)
        labels = cfg.load_labels()
        say(f"root v{current.version} -> v{new.version} of {t['name']}:")
        for line in review_lines(d, current.root, new, labels):
            say(f"  {line}")
        if interactive:
            problems = unsupported_changes(d) + [
                f"{line[2:]}: name witness changes with --add-witness/--remove-witness"
                for line in witness_lines(d)]
            if problems:
                raise Refused(f"not signed: {'; '.join(problems)}")
            confirm_interactively(d, new, cfg, labels)
            if not prompts.confirm("Sign exactly this root?"):
                raise Refused("not signed")
        else:
            problems = mismatches(d, new, exp, labels, now())
            if problems:
                raise Refused("not signed: the proposal differs from the changes you named: "
                              + "; ".join(problems))
            if prompts.stdin_is_tty() and not yes and not prompts.confirm("Sign this root?"):
                raise Refused("not signed")
            for kid, (_, _, nm) in exp.adds.items():
                if nm:
                    cfg.save_label(kid, nm)
        with refusing("root proposal"):
            _, own, prev = sign_proposal(client, cfg, session, t["id"], current, data,
                                         keys=[signer] if signer else ())
    say(f"signed. owners of v{current.version}: {len(prev.signed)} of {prev.threshold}; "
        f"owners of v{new.version}: {len(own.signed)} of {own.threshold}")
    if own.met and prev.met:
        say(f"ready: publish with `rampart root publish {t['name']}`")


def pinned_root(cfg: Config, client: Client, tenant: str) -> tuple[dict[str, Any], TrustedRoot]:
    """The tenant and the newest root this operator trusts (expired or not), refusing unless
    its root is pinned: the start of every command that signs a root."""
    t = resolve_tenant(client, tenant)
    current = trusted_root(cfg, client, t["id"], allow_expired=True)
    require_pin(cfg, t["id"], current)
    return t, current


def successor(current: TenantRoot, *, lifetime_s: int, keys: dict[str, KeyEntry] | None = None,
              roles: dict[str, list[str]] | None = None) -> TenantRoot:
    """The next version of ``current``: same policy, log keys and thresholds, a new expiry.

    ``keys`` and ``roles`` replace the current ones when given; an owner
    threshold above the number of owners left is lowered to that number.
    """
    keys = dict(current.keys) if keys is None else keys
    roles = {r: list(current.roles.get(r).keyids) for r in ROLE_NAMES} if roles is None else roles
    thresholds = {r: current.roles.get(r).threshold for r in ROLE_NAMES}
    thresholds["owner"] = max(1, min(thresholds["owner"], len(roles["owner"])))
    return make_root(tenant=current.tenant, name=current.name, version=current.version + 1,
                     expires=now() + lifetime_s, keys=keys, roles=roles, thresholds=thresholds,
                     log_keys=dict(current.log_keys), policy=current.policy,
                     witness_keys=current.witnesses())


def put_signed(client: Client, cfg: Config, session: Session, current: TrustedRoot,
               new: TenantRoot, signers: Sequence[OperatorKey] = ()) -> TrustedRoot | None:
    """Upload ``new`` (built here), sign it with ``signers`` (default: your own owner key),
    and publish it if the owner thresholds of both versions are met; else None."""
    tid = current.tenant
    data = unsigned(new).to_bytes()
    client.put(f"/tenants/{tid}/root-proposal", {"envelope": data.decode()})
    with refusing("root proposal"):
        _, own, prev = sign_proposal(client, cfg, session, tid, current, data, keys=signers)
    if own.met and prev.met:
        return publish_proposal(client, cfg, tid, current)
    return None


@root_app.command("renew")
def root_renew(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    expires: Annotated[str, typer.Option("--expires", help="The new lifetime, from now.")] = "365d",
) -> None:
    """Sign the root you trust again with a new expiry, and publish it, in one step.

    Nothing but the version and the expiry changes; the new root is built here
    from the root you trust, never from the server's copy. With an owner
    threshold above 1, co-owners then sign it with `rampart root sign`.
    """
    lifetime = parse_duration(expires, what="--expires")
    cfg, client, session = api()
    with client:
        t, current = pinned_root(cfg, client, tenant)
        new = successor(current.root, lifetime_s=lifetime)
        published = put_signed(client, cfg, session, current, new)
    if published is None:
        say(f"signed root v{new.version} of {t['name']} (expires {fmt_time(new.expires)}); "
            f"it needs {current.root.roles.owner.threshold} owner signatures: co-owners run "
            f"`rampart root sign {t['name']} --expires {expires}`, then "
            f"`rampart root publish {t['name']}`")
        return
    say(f"renewed {t['name']}: root v{published.version} expires {fmt_time(new.expires)} "
        f"(sha256 {published.sha256})")


def _lost_keys(root: TenantRoot, named: list[str], keep: set[str]) -> list[str]:
    """The owner keys a recovery removes: those named, else the one day-to-day owner key."""
    if named:
        unknown = [k for k in named if k not in root.keys]
        if unknown:
            raise UsageProblem(f"key {unknown[0][:16]}… is not in root v{root.version}")
        return named
    daily = [k for k in root.roles.owner.keyids if not is_recovery(root.keys[k]) and k not in keep]
    if len(daily) != 1:
        raise UsageProblem(f"root v{root.version} has {len(daily)} owner keys besides recovery "
                           "keys: name the lost one(s) with --remove-key")
    return daily


@root_app.command("recover")
def root_recover(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    recovery_key: Annotated[str, typer.Option(
        "--recovery-key", help="The recovery key sheet's file, or - to type the key at a "
        "hidden prompt.")],
    remove_key: Annotated[list[str] | None, typer.Option(
        "--remove-key", help="A lost key to remove (repeatable; default: the one owner key "
        "besides recovery keys).")] = None,
    new_recovery_key_file: Annotated[Path | None, typer.Option(
        "--new-recovery-key-file", help="Write the new recovery key sheet to this new file (or "
        "into this directory) instead of printing it.")] = None,
    expires: Annotated[str, typer.Option("--expires", help="Lifetime of the new root.")] = "365d",
) -> None:
    """Replace a lost owner key using the offline recovery key (docs/trust-chain.md, "Recovery").

    Makes you a new owner key, builds the next root from the root you trust
    with the lost key removed, your new key added as owner and approver, and
    the used recovery key replaced by a new one (it has now touched a
    networked machine); signs it with the recovery key and your new key, and
    publishes it when the owner thresholds are met.
    """
    from .auth_cmds import register_key
    from .common import key_passphrase, new_key_passphrase

    lifetime = parse_duration(expires, what="--expires")
    cfg, client, session = api()
    with client:
        t, current = pinned_root(cfg, client, tenant)
        old = current.root
        rk = load_recovery_key(recovery_key, t["id"])
        if rk.key_id not in old.roles.owner.keyids:
            raise Refused(f"this recovery key is not an owner of root v{old.version}: nothing "
                          "signed")
        mine = {k.keyid for k in cfg.key_candidates(session.username, t["id"])}
        lost = _lost_keys(old, list(remove_key or []), mine)
        if rk.key_id in lost:
            raise UsageProblem("the recovery key in use is replaced anyway; do not name it")
        passphrase = new_key_passphrase(cfg, session)  # before anything changes on the server
        fresh = OperatorKey.generate()
        spare = OperatorKey.generate()
        keys = {k: e for k, e in old.keys.items() if k not in lost and k != rk.key_id}
        roles = {r: [k for k in old.roles.get(r).keyids if k in keys] for r in ROLE_NAMES}
        keys[fresh.key_id] = KeyEntry(public=fresh.public.to_b64(), name=session.username[:128])
        keys[spare.key_id] = recovery_entry(spare, now())
        roles["owner"] += [fresh.key_id, spare.key_id]
        roles["approver"].append(fresh.key_id)
        new = successor(old, lifetime_s=lifetime, keys=keys, roles=roles)
        # The pin on the sheet is the root trusted now: every later version chains from it.
        text = sheet(old.tenant, old.name, spare, root_version=old.version,
                     root_sha256=current.sha256)
        path = None
        if new_recovery_key_file is not None:
            path = new_recovery_key_file / f"recovery-key-{old.tenant}.txt" \
                if new_recovery_key_file.is_dir() else new_recovery_key_file
            save_sheet(path, text)  # saved before the key can become an owner
        with key_passphrase(passphrase):
            register_key(cfg, client, session, fresh, passphrase, name=session.username,
                         tenant_id=old.tenant)
        cfg.save_label(fresh.key_id, session.username)
        published = put_signed(client, cfg, session, current, new, [rk, fresh])
    say(f"root v{new.version} of {t['name']}: removed {', '.join(k[:16] + '…' for k in lost)}; "
        f"your new owner key {fresh.key_id[:16]}… (fingerprint "
        f"{key_fingerprint_b64(fresh.public.to_b64())}); a new recovery key")
    if published is None:
        say(f"it needs more owner signatures: co-owners run `rampart root sign {t['name']}` "
            "(read them your new key's fingerprint), then `rampart root publish`")
    else:
        say(f"published root v{published.version} (sha256 {published.sha256}); agents follow it "
            "at their next connection")
    if path is not None:
        say(f"the new recovery key is in {path} (mode 0600): move it off-line; the old one "
            "no longer signs anything")
    else:
        for line in text.splitlines():
            say(line)
        say("write the new recovery key down now: it is not shown again; the old one no "
            "longer signs anything")


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

