"""Strictly typed, versioned payloads carried in DSSE envelopes.

Every payload is a frozen msgspec Struct that forbids unknown fields and
checks its own invariants when built or decoded (``__post_init__``). Decoding
goes through :func:`decode_payload` only, which turns every failure into a
:class:`~rampart.trust.errors.DecodeError`; nothing unverified becomes a domain
object elsewhere.

Payload types (DSSE ``payloadType``)::

    application/vnd.rampart.root.v1+json        TenantRoot
    application/vnd.rampart.grant.v1+json       Grant
    application/vnd.rampart.job.v1+json         Job
    application/vnd.rampart.receipt.v1+json     Receipt
    application/vnd.rampart.checkpoint.v1+json  Checkpoint
    application/vnd.rampart.revocation.v1+json  Revocation
    application/vnd.rampart.cancellation.v1+json  Cancellation

See docs/trust-chain.md for what each field means to a verifier.
"""

from __future__ import annotations

import builtins
import hashlib
import posixpath
from collections.abc import Iterable, Sequence
from typing import Annotated, ClassVar, Literal, TypeVar, cast

import msgspec
from msgspec import UNSET, Meta, UnsetType

from .errors import DecodeError, UsageError
from .keys import (
    AutomationPublicKey,
    LogPublicKey,
    OperatorPublicKey,
    PublicKey,
    WitnessPublicKey,
    b64decode_strict,
)
from .limits import DEFAULT_LIMITS
from .webauthn import PASSKEY_KEY_TYPE, PasskeyPublicKey

_L = DEFAULT_LIMITS

KeyId = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
Hex32 = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
TenantId = Annotated[str, Meta(pattern=r"^tn-[0-9a-z]{16,64}$")]
DeviceId = Annotated[str, Meta(pattern=r"^dev-[0-9a-f]{24}$")]
GrantId = Annotated[str, Meta(pattern=r"^gr-[0-9a-z]{16,64}$")]
JobId = Annotated[str, Meta(pattern=r"^job-[0-9a-z]{16,64}$")]
Nonce = Annotated[str, Meta(pattern=r"^[0-9a-f]{32,128}$")]
Time = Annotated[int, Meta(ge=0, le=1 << 40)]
Name = Annotated[str, Meta(min_length=1, max_length=128)]
B64Key = Annotated[str, Meta(min_length=44, max_length=44)]
#: A root key's public part: an Ed25519 key (44 characters) or a passkey's blob (trust/webauthn.py).
B64RootKey = Annotated[str, Meta(min_length=44, max_length=2732)]

Role = Literal["owner", "approver", "technician", "automation"]
HUMAN_ROLES: tuple[str, ...] = ("owner", "approver", "technician")

Capability = Literal["script", "file", "package", "patch", "inventory", "backup", "net", "root", "shell"]
ALL_CAPABILITIES: tuple[str, ...] = (
    "script", "file", "package", "patch", "inventory", "backup", "net", "root", "shell",
)

ActionKind = Literal["script", "file", "package", "os-update", "inventory-refresh", "backup-run", "reboot",
                     "shell", "backup-forget-state"]
#: The capability each action kind needs in the grant.
ACTION_CAPABILITY: dict[str, str] = {
    "script": "script",
    "file": "file",
    "package": "package",
    "os-update": "patch",
    "inventory-refresh": "inventory",
    "backup-run": "backup",
    "reboot": "patch",
    "shell": "shell",
    "backup-forget-state": "backup",
}
#: Actions with no operator-chosen content: the only ones an automation key may sign.
#: ``reboot`` restarts a device that enrolled with ``--allow-reboot`` (the device's own command).
PAYLOAD_FREE_ACTIONS: frozenset[str] = frozenset({"os-update", "inventory-refresh", "backup-run", "reboot"})
#: Actions that take no arguments and no payloads: the payload-free ones, and ``backup-forget-state``,
#: which only a person may sign (never an automation key): it drops the device's record of its backup
#: repository after a vault rollback (docs/backup-vault.md step 7), a decision, never a schedule.
NO_ARGUMENT_ACTIONS: frozenset[str] = PAYLOAD_FREE_ACTIONS | {"backup-forget-state"}

ROOT_TYPE = "application/vnd.rampart.root.v1+json"
GRANT_TYPE = "application/vnd.rampart.grant.v1+json"
JOB_TYPE = "application/vnd.rampart.job.v1+json"
RECEIPT_TYPE = "application/vnd.rampart.receipt.v1+json"
CHECKPOINT_TYPE = "application/vnd.rampart.checkpoint.v1+json"
REVOCATION_TYPE = "application/vnd.rampart.revocation.v1+json"
CANCELLATION_TYPE = "application/vnd.rampart.cancellation.v1+json"


class _Payload(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    PAYLOAD_TYPE: ClassVar[str] = ""


def _unique(items: Sequence[object], what: str) -> None:
    if len(set(items)) != len(items):
        raise ValueError(f"{what} contains duplicates")


# --- tenant root ---------------------------------------------------------------------


class KeyEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A key of a root. ``type`` absent: an Ed25519 key, ``public`` its 32 raw bytes (the bytes of
    every root made before passkeys are unchanged); ``"webauthn"``: a passkey, ``public`` its
    canonical blob binding algorithm, public key, credential id, RP ID and origin."""

    public: B64RootKey
    name: Name
    type: Literal["webauthn"] | UnsetType = UNSET

    def public_key(self, cls: builtins.type[PublicKey] = OperatorPublicKey) -> PublicKey:
        """The typed key (``cls`` for an Ed25519 entry, a :class:`PasskeyPublicKey` for a passkey)."""
        if self.type == PASSKEY_KEY_TYPE:
            return PasskeyPublicKey.from_b64(self.public)
        return cls.from_b64(self.public)


class RoleSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    keyids: Annotated[list[KeyId], Meta(max_length=_L.max_keys)] = []
    threshold: Annotated[int, Meta(ge=1, le=_L.max_keys)] = 1

    def __post_init__(self) -> None:
        _unique(self.keyids, "role keyids")


class Roles(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    owner: RoleSpec
    approver: RoleSpec = msgspec.field(default_factory=RoleSpec)
    technician: RoleSpec = msgspec.field(default_factory=RoleSpec)
    automation: RoleSpec = msgspec.field(default_factory=RoleSpec)

    def get(self, role: str) -> RoleSpec:
        if role not in ("owner", "approver", "technician", "automation"):
            raise UsageError(f"unknown role {role!r}")
        spec: RoleSpec = getattr(self, role)
        return spec


class Policy(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Tenant policy that agents enforce cryptographically."""

    #: Devices one approver alone may grant.
    approver_device_limit: Annotated[int, Meta(ge=1, le=_L.max_devices)] = 10
    #: Approvers needed beyond that reach, or for a high-risk capability.
    approvers_beyond_limit: Annotated[int, Meta(ge=1, le=16)] = 2
    capabilities: Annotated[list[Capability], Meta(max_length=_L.max_capabilities)] = (
        msgspec.field(default_factory=lambda: cast("list[Capability]", list(ALL_CAPABILITIES)))
    )
    high_risk_capabilities: Annotated[list[Capability], Meta(max_length=_L.max_capabilities)] = (
        msgspec.field(default_factory=lambda: ["root", "shell"])
    )
    max_grant_seconds: Annotated[int, Meta(ge=60, le=366 * 24 * 3600)] = 8 * 3600
    #: Longest standing grant for an automation key (payload-free actions only).
    max_automation_grant_seconds: Annotated[int, Meta(ge=60, le=366 * 24 * 3600)] = 90 * 24 * 3600
    #: Devices record the keystrokes of every remote session too (absent: only when a session asks).
    #: UNSET is never encoded, so a root that does not set it has the same bytes as before it existed.
    record_session_input: bool | UnsetType = UNSET
    #: Longest human grant per capability, replacing ``max_grant_seconds`` for the capabilities
    #: it names (longer or shorter): ``{"script": 30 days}`` lets script-only grants (for script
    #: checks) last a month while a grant that also holds ``shell`` stays within
    #: ``max_grant_seconds``. A grant may last the smallest limit of its capabilities
    #: (:meth:`longest_grant`). UNSET (absent) is never encoded: a root without it has the same
    #: bytes as before it existed.
    max_grant_seconds_by_capability: Annotated[
        dict[Capability, Annotated[int, Meta(ge=60, le=366 * 24 * 3600)]],
        Meta(max_length=_L.max_capabilities)] | UnsetType = UNSET
    #: Distinct outside witnesses (the root's ``witness_keys``) whose co-signature a checkpoint
    #: needs before an agent runs a job under it (docs/design/witness.md). UNSET (absent): none,
    #: and a root without it has the same bytes as before it existed.
    witness_quorum: Annotated[int, Meta(ge=1, le=8)] | UnsetType = UNSET

    def __post_init__(self) -> None:
        _unique(self.capabilities, "policy capabilities")

    @property
    def witnesses_required(self) -> int:
        """Witness co-signatures a checkpoint needs (0: none)."""
        return 0 if isinstance(self.witness_quorum, UnsetType) else self.witness_quorum

    def longest_grant(self, capabilities: Iterable[str], *, automation: bool = False) -> int:
        """Seconds a grant with ``capabilities`` may last: an automation key's standing grant
        ``max_automation_grant_seconds``; a human's the smallest per-capability limit of its
        capabilities, ``max_grant_seconds`` for each capability without one."""
        if automation:
            return self.max_automation_grant_seconds
        by = {} if isinstance(self.max_grant_seconds_by_capability, UnsetType) \
            else self.max_grant_seconds_by_capability
        limits = [by.get(c, self.max_grant_seconds) for c in capabilities]  # type: ignore[call-overload]
        return min(limits) if limits else self.max_grant_seconds

    def grant_limit_text(self, capabilities: Sequence[str], *, automation: bool = False,
                         tenant: str = "TENANT") -> str:
        """The limit :meth:`longest_grant` applies, in human units, and the owners' command that
        changes it (for refusals shown to people by the server and the CLI)."""
        longest = self.longest_grant(capabilities, automation=automation)
        if automation:
            return (f"standing grants may last at most {_human_seconds(longest)} ({longest} s); an "
                    f"owner changes it with: rampart root propose {tenant} --policy "
                    f"max_automation_grant_seconds=DURATION")
        caps = ",".join(sorted(set(capabilities)))
        return (f"grants with {caps} may last at most {_human_seconds(longest)} ({longest} s); an "
                f"owner changes it with: rampart root propose {tenant} --policy "
                f"max_grant_seconds_by_capability=" + ",".join(f"{c}:DURATION" for c in
                                                               sorted(set(capabilities)))
                + " (these capabilities only) or --policy max_grant_seconds=DURATION (every one)")


def _human_seconds(seconds: int) -> str:
    """``28800`` -> ``8h``, ``90000`` -> ``1d 1h``, ``90`` -> ``1m 30s``."""
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(parts) or "0s"


class TenantRoot(_Payload, frozen=True, forbid_unknown_fields=True, kw_only=True):
    PAYLOAD_TYPE: ClassVar[str] = ROOT_TYPE
    type: Literal["tenant-root"] = "tenant-root"
    schema: Literal[1] = 1
    tenant: TenantId
    name: Name
    version: Annotated[int, Meta(ge=1, le=1 << 31)]
    expires: Time
    keys: Annotated[dict[KeyId, KeyEntry], Meta(max_length=_L.max_keys)]
    roles: Roles
    log_keys: Annotated[dict[KeyId, B64Key], Meta(min_length=1, max_length=8)]
    policy: Policy = msgspec.field(default_factory=Policy)
    #: Outside witnesses that co-sign this tenant's checkpoints (key id -> raw Ed25519 key, base64).
    #: UNSET (absent) is never encoded: a root without witnesses has the same bytes as before.
    witness_keys: Annotated[dict[KeyId, B64Key], Meta(min_length=1, max_length=8)] | UnsetType = UNSET

    def __post_init__(self) -> None:
        for kid, entry in self.keys.items():
            raw = b64decode_strict(entry.public, what="root key")
            if hashlib.sha256(raw).hexdigest() != kid:
                raise ValueError(f"key id {kid[:16]}… does not match its public key")
            if entry.type == PASSKEY_KEY_TYPE:
                PasskeyPublicKey(raw)  # a DecodeError names the bad field
            elif len(raw) != 32:
                raise ValueError(f"key {kid[:16]}… is not a 32-byte Ed25519 key")
        for kid, pub in self.log_keys.items():
            raw = b64decode_strict(pub, what="log key")
            if hashlib.sha256(raw).hexdigest() != kid:
                raise ValueError(f"log key id {kid[:16]}… does not match its public key")
            if kid in self.keys:
                raise ValueError("a log key cannot also be an operator key")
        for kid, pub in self.witnesses().items():
            raw = b64decode_strict(pub, what="witness key")
            if hashlib.sha256(raw).hexdigest() != kid:
                raise ValueError(f"witness key id {kid[:16]}… does not match its public key")
            if kid in self.keys or kid in self.log_keys:
                raise ValueError("a witness key cannot also be an operator or log key")
        if self.policy.witnesses_required > len(self.witnesses()):
            raise ValueError(f"the policy asks {self.policy.witnesses_required} witness co-signatures "
                             f"but the root names {len(self.witnesses())} witness key(s)")
        human: set[str] = set()
        for role in ("owner", "approver", "technician", "automation"):
            spec = self.roles.get(role)
            for kid in spec.keyids:
                if kid not in self.keys:
                    raise ValueError(f"role {role} names key {kid[:16]}… absent from keys")
            if role != "automation":
                human.update(spec.keyids)
        if not self.roles.owner.keyids:
            raise ValueError("a root needs at least one owner key")
        if self.roles.owner.threshold > len(self.roles.owner.keyids):
            raise ValueError("owner threshold exceeds the number of owner keys")
        if human & set(self.roles.automation.keyids):
            raise ValueError("an automation key cannot hold a human role")
        if any(self.keys[k].type == PASSKEY_KEY_TYPE for k in self.roles.automation.keyids):
            raise ValueError("an automation key cannot be a passkey")

    def role_keys(self, role: str) -> dict[str, PublicKey]:
        """Public keys of ``role`` as typed keys (automation keys are their own type)."""
        cls: type[PublicKey] = AutomationPublicKey if role == "automation" else OperatorPublicKey
        return {kid: self.keys[kid].public_key(cls) for kid in self.roles.get(role).keyids}

    def log_public_keys(self) -> dict[str, PublicKey]:
        return {kid: LogPublicKey.from_b64(pub) for kid, pub in self.log_keys.items()}

    def witnesses(self) -> dict[str, str]:
        """The witness keys (key id -> base64), empty when the root names none."""
        return {} if isinstance(self.witness_keys, UnsetType) else dict(self.witness_keys)

    def witness_public_keys(self) -> dict[str, PublicKey]:
        return {kid: WitnessPublicKey.from_b64(pub) for kid, pub in self.witnesses().items()}

    def key_name(self, keyid: str) -> str:
        entry = self.keys.get(keyid)
        return entry.name if entry else keyid[:16]

    def roles_of(self, keyid: str) -> list[str]:
        return [r for r in ("owner", "approver", "technician", "automation")
                if keyid in self.roles.get(r).keyids]


# --- device sets -----------------------------------------------------------------------


class DeviceSet(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A signed commitment to a set of device ids, in place of listing them.

    ``root`` is the RFC 9162 Merkle root over the sorted, distinct ids (each leaf
    domain-separated, :func:`rampart.trust.devset.device_leaf`) and ``count`` the
    number of ids. The signer's own machine computes both from the list it showed
    its person (:func:`rampart.trust.devset.commit_devices`); a device checks an
    inclusion proof of its own id against them, so the payload stays the same
    size whatever the fleet.
    """

    root: Hex32
    count: Annotated[int, Meta(ge=1, le=_L.max_set_devices)]


def _check_targets(devices: Sequence[str], device_set: DeviceSet | UnsetType, what: str) -> None:
    """Exactly one of a non-empty device list and a committed device set; the list has no duplicate."""
    _unique(devices, f"{what} devices")
    if bool(devices) == isinstance(device_set, DeviceSet):
        raise ValueError(f"a {what} names its devices either as a list or as a committed set, exactly one")


def _count(devices: Sequence[str], device_set: DeviceSet | UnsetType) -> int:
    return device_set.count if isinstance(device_set, DeviceSet) else len(devices)


# --- grant ------------------------------------------------------------------------------


class Grant(_Payload, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Just-in-time access: which key may act on which devices, with what, and when."""

    PAYLOAD_TYPE: ClassVar[str] = GRANT_TYPE
    type: Literal["grant"] = "grant"
    schema: Literal[1] = 1
    id: GrantId
    tenant: TenantId
    grantee: KeyId
    #: The devices, listed; empty when ``device_set`` commits to them instead.
    devices: Annotated[list[DeviceId], Meta(max_length=_L.max_devices)] = []
    capabilities: Annotated[list[Capability], Meta(min_length=1, max_length=_L.max_capabilities)]
    #: For an automation grantee: the payload-free actions it may trigger.
    actions: Annotated[list[ActionKind], Meta(max_length=8)] = []
    not_before: Time
    not_after: Time
    reason: Annotated[str, Meta(min_length=1, max_length=_L.max_reason)]
    requested_by: Annotated[str, Meta(max_length=128)] = ""
    #: The devices as a committed set instead of a list. UNSET (never encoded) on a grant that
    #: lists them, whose bytes are exactly as before this field existed.
    device_set: DeviceSet | UnsetType = UNSET

    @property
    def device_count(self) -> int:
        """How many devices the grant names (listed or committed)."""
        return _count(self.devices, self.device_set)

    def __post_init__(self) -> None:
        _check_targets(self.devices, self.device_set, "grant")
        _unique(self.capabilities, "grant capabilities")
        _unique(self.actions, "grant actions")
        if self.not_after <= self.not_before:
            raise ValueError("grant not_after must be later than not_before")
        for a in self.actions:
            if a not in PAYLOAD_FREE_ACTIONS:
                raise ValueError(f"grant action {a!r} is not payload-free")


# --- job --------------------------------------------------------------------------------


class PayloadRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
    sha256: Hex32
    size: Annotated[int, Meta(ge=0, le=1 << 30)]


class Action(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    kind: ActionKind
    args: Annotated[
        list[Annotated[str, Meta(max_length=_L.max_arg_bytes)]], Meta(max_length=_L.max_args)
    ] = []
    payloads: Annotated[list[PayloadRef], Meta(max_length=_L.max_payloads)] = []

    def __post_init__(self) -> None:
        names = [p.name for p in self.payloads]
        _unique(names, "payload names")
        if self.kind in NO_ARGUMENT_ACTIONS and (self.args or self.payloads):
            raise ValueError(f"action {self.kind} takes no arguments and no payloads")
        if self.kind == "script" and names != ["script"]:
            raise ValueError("a script action carries exactly one payload named 'script'")
        if any("\x00" in a for a in self.args):
            raise ValueError("arguments may not contain NUL")


AbsPath = Annotated[str, Meta(min_length=1, max_length=1024, pattern=r"^/")]
Port = Annotated[int, Meta(ge=1, le=65535)]


class Declared(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What the job declares it needs; containment allows exactly this and no more."""

    writes: Annotated[list[AbsPath], Meta(max_length=_L.max_paths)] = []
    connect: Annotated[list[Port], Meta(max_length=_L.max_ports)] = []
    run_as: Literal["job", "root"] = "job"

    def __post_init__(self) -> None:
        _unique(self.writes, "declared writes")
        _unique(self.connect, "declared ports")
        for p in self.writes:
            if "\x00" in p or posixpath.normpath(p) != p or p.startswith("//"):
                raise ValueError(f"declared write path {p!r} is not a normalised absolute path")


class Repeat(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A script job the agent itself runs again every ``every_s`` seconds until ``until`` (a script check).

    Signed once, inside the job, by the technician; the agent also stops at the
    grant's ``not_after``, at a revocation, and when its pinned root no longer
    names the signer (:func:`rampart.trust.verify.authorize_repeat`). The device
    may run it less often than asked (its own floor), never more often.
    """

    every_s: Annotated[int, Meta(ge=_L.min_repeat_every_s, le=_L.max_repeat_every_s)]
    until: Time
    #: A label for people (``rampart checks list``); signed, so the server cannot rename a check.
    name: Annotated[str, Meta(max_length=128, pattern=r"^[^\x00-\x1f\x7f]*$")] = ""


class SessionSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What a ``shell`` job opens: an interactive session keyed to the technician's ephemeral key.

    ``client_key`` is the technician's X25519 ``crypto_kx`` public key (base64) made for this
    session only; the device answers with its own, signed by its device key, and both derive the
    session keys from the pair (docs/design/remote-sessions.md). Signed inside the job, so the
    relay can neither swap the key nor start a session nobody signed. ``watch`` names the live
    session a ``mode="watch"`` job observes read-only.
    """

    client_key: B64Key
    #: ``shell`` (a pty), ``files`` (``rampart cp``: no process until a transfer), ``watch`` (read-only).
    mode: Literal["shell", "files", "watch"] = "shell"
    watch: Annotated[str, Meta(max_length=80, pattern=r"^(job-[0-9a-z]{16,64})?$")] = ""
    cols: Annotated[int, Meta(ge=1, le=1000)] = 80
    rows: Annotated[int, Meta(ge=1, le=1000)] = 24
    term: Annotated[str, Meta(max_length=32, pattern=r"^[A-Za-z0-9._+-]*$")] = "xterm-256color"
    #: Seconds without input or output after which the device ends the session.
    idle_timeout_s: Annotated[int, Meta(ge=10, le=24 * 3600)] = 900
    #: Whether the device records keystrokes too (tenant policy); output is always recorded.
    record_input: bool = False

    def __post_init__(self) -> None:
        b64decode_strict(self.client_key, what="session client key")
        if (self.mode == "watch") != bool(self.watch):
            raise ValueError("a watch session names the session it watches, and only it does")


class Job(_Payload, frozen=True, forbid_unknown_fields=True, kw_only=True):
    PAYLOAD_TYPE: ClassVar[str] = JOB_TYPE
    type: Literal["job"] = "job"
    schema: Literal[1] = 1
    id: JobId
    tenant: TenantId
    grant: GrantId
    signer: KeyId
    #: The target devices, listed; empty when ``device_set`` commits to them instead.
    devices: Annotated[list[DeviceId], Meta(max_length=_L.max_devices)] = []
    action: Action
    declared: Declared = msgspec.field(default_factory=Declared)
    timeout_s: Annotated[int, Meta(ge=1, le=_L.max_job_timeout_s)] = 300
    nonce: Nonce
    issued_at: Time
    expires_at: Time
    #: Absent (UNSET, never encoded) for a one-off job, so a one-off job's bytes are exactly as before
    #: this field existed and agents that predate it still accept them.
    repeat: Repeat | UnsetType = UNSET
    #: Present exactly on a ``shell`` job (absent, never encoded, on every other one).
    session: SessionSpec | UnsetType = UNSET
    #: The targets as a committed set instead of a list (never a shell job's: it names its one
    #: device). UNSET (never encoded) on a job that lists them, whose bytes are as before.
    device_set: DeviceSet | UnsetType = UNSET

    @property
    def device_count(self) -> int:
        """How many devices the job targets (listed or committed)."""
        return _count(self.devices, self.device_set)

    def __post_init__(self) -> None:
        _check_targets(self.devices, self.device_set, "job")
        if (self.action.kind == "shell") != isinstance(self.session, SessionSpec):
            raise ValueError("a shell job carries a session spec, and only a shell job does")
        if self.action.kind == "shell":
            if self.action.args or self.action.payloads:
                raise ValueError("a shell job takes no arguments and no payloads")
            if len(self.devices) != 1:
                raise ValueError("a shell job opens a session on exactly one device")
            if self.declared.connect:
                raise ValueError("a shell job may not declare network ports")
        if self.expires_at <= self.issued_at:
            raise ValueError("job expires_at must be later than issued_at")
        if self.expires_at - self.issued_at > _L.max_job_lifetime_s:
            raise ValueError("job lifetime exceeds the limit")
        r = self.repeat
        if isinstance(r, Repeat):
            if self.action.kind != "script":
                raise ValueError("only a script job may repeat")
            if self.declared.run_as == "root":
                raise ValueError("a repeating job may not run as root")
            if r.until <= self.issued_at:
                raise ValueError("repeat until must be later than issued_at")
            if r.until - self.issued_at > _L.max_repeat_lifetime_s:
                raise ValueError(f"a job may repeat for at most {_L.max_repeat_lifetime_s // 86400} days")

    @property
    def session_spec(self) -> SessionSpec | None:
        """The session a shell job opens, or None for every other job."""
        return self.session if isinstance(self.session, SessionSpec) else None

    @property
    def repeating(self) -> Repeat | None:
        """The job's repeat rule, or None for a one-off job."""
        return self.repeat if isinstance(self.repeat, Repeat) else None

    def required_capabilities(self) -> frozenset[str]:
        """Capabilities the grant must hold for this job."""
        caps = {ACTION_CAPABILITY[self.action.kind]}
        if self.declared.connect:
            caps.add("net")
        if self.declared.run_as == "root":
            caps.add("root")
        return frozenset(caps)


# --- receipt ----------------------------------------------------------------------------


class ContainmentReport(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    level: Literal["full", "filesystem", "none"]
    landlock_abi: Annotated[int, Meta(ge=0, le=64)]
    filesystem: bool
    network: bool
    no_new_privs: bool
    user: Annotated[str, Meta(max_length=64)]
    uid: int
    timeout_s: float
    ipc_scoped: bool = False
    limits: dict[Annotated[str, Meta(max_length=32)], int] = {}
    #: How the job's processes were found and killed when it ended (docs/containment.md):
    #: "cgroup" (its own cgroup v2, cgroup.kill) or "uid" (its own dynamic uid) reach every
    #: process; "process-group" (the default, and all an agent before it could report) does
    #: not: a process that left the group (setsid, daemon) may have survived.
    reaper: Literal["cgroup", "uid", "process-group"] = "process-group"
    #: Processes of the job still alive when its main process ended (or was killed at the
    #: time limit), all killed then; 0 in receipts of agents that did not report it.
    killed: Annotated[int, Meta(ge=0, le=1 << 31)] = 0


class SessionSummary(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How a remote session ended and the digest of the recording the device made of it."""

    #: ``exit`` (the shell ended), ``closed`` (the technician left), ``idle-timeout``,
    #: ``max-duration``, ``grant-expired``, ``grant-revoked``, ``frame-auth-failed``,
    #: ``stream-truncated``, ``relay-lost``, ``consent-refused``, ``watched-session-ended``, ``error``.
    end: Annotated[str, Meta(max_length=32, pattern=r"^[a-z-]*$")]
    recording_sha256: Hex32
    recording_bytes: Annotated[int, Meta(ge=0, le=1 << 40)]
    recording_truncated: bool = False
    input_recorded: bool = False
    bytes_in: Annotated[int, Meta(ge=0, le=1 << 50)] = 0
    bytes_out: Annotated[int, Meta(ge=0, le=1 << 50)] = 0
    files_in: Annotated[int, Meta(ge=0, le=1 << 31)] = 0
    files_out: Annotated[int, Meta(ge=0, le=1 << 31)] = 0
    consent: Literal["not-required", "accepted", "refused"] = "not-required"


class Receipt(_Payload, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What a device did with a job, signed with its device key."""

    PAYLOAD_TYPE: ClassVar[str] = RECEIPT_TYPE
    type: Literal["receipt"] = "receipt"
    schema: Literal[1] = 1
    tenant: TenantId
    job: JobId
    device: DeviceId
    outcome: Literal["ran", "refused", "failed"]
    #: Refusal reason slug (see rampart.trust.errors) when outcome is "refused".
    refusal: Annotated[str, Meta(max_length=64)] = ""
    detail: Annotated[str, Meta(max_length=_L.max_string)] = ""
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    stdout: Annotated[str, Meta(max_length=_L.max_output_bytes * 2)] = ""
    stderr: Annotated[str, Meta(max_length=_L.max_output_bytes * 2)] = ""
    stdout_sha256: Hex32 = hashlib.sha256(b"").hexdigest()
    stderr_sha256: Hex32 = hashlib.sha256(b"").hexdigest()
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    started_at: float = 0.0
    ended_at: float = 0.0
    containment: ContainmentReport | None = None
    #: A shell job's session summary; absent (never encoded) in every other receipt.
    session: SessionSummary | UnsetType = UNSET


# --- log checkpoint ---------------------------------------------------------------------


class Checkpoint(_Payload, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A signed tree head of a tenant's audit log (RFC 9162 hashing)."""

    PAYLOAD_TYPE: ClassVar[str] = CHECKPOINT_TYPE
    type: Literal["checkpoint"] = "checkpoint"
    schema: Literal[1] = 1
    log: TenantId
    size: Annotated[int, Meta(ge=0, le=1 << 48)]
    root: Hex32
    time: Time


# --- grant revocation -------------------------------------------------------------------


class Revocation(_Payload, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """An approver ends a grant early; agents refuse it from then on."""

    PAYLOAD_TYPE: ClassVar[str] = REVOCATION_TYPE
    type: Literal["revocation"] = "revocation"
    schema: Literal[1] = 1
    tenant: TenantId
    grant: GrantId
    issued_at: Time
    reason: Annotated[str, Meta(max_length=_L.max_reason)] = ""


class Cancellation(_Payload, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A person withdraws a job that has not run: the job's own technician or an approver or owner.

    Agents refuse the job from then on (it names the job, not the grant: the rest of the grant
    stands). A job that already ran is not undone."""

    PAYLOAD_TYPE: ClassVar[str] = CANCELLATION_TYPE
    type: Literal["cancellation"] = "cancellation"
    schema: Literal[1] = 1
    tenant: TenantId
    job: JobId
    issued_at: Time
    reason: Annotated[str, Meta(max_length=_L.max_reason)] = ""


# --- encoding ---------------------------------------------------------------------------

#: The base of every signed payload type (public name of :class:`_Payload`).
Payload = _Payload

T = TypeVar("T", bound=_Payload)

_ENCODER = msgspec.json.Encoder()


def encode_payload(obj: _Payload) -> bytes:
    """Serialise a payload (the bytes that get signed)."""
    return _ENCODER.encode(obj)


def decode_payload(data: bytes, cls: type[T], *, max_bytes: int = DEFAULT_LIMITS.max_envelope_bytes) -> T:
    """Decode payload bytes into ``cls`` strictly, or raise DecodeError."""
    from .envelope import strict_json

    doc = strict_json(data, max_bytes=max_bytes, what=cls.__name__)
    try:
        return msgspec.convert(doc, cls, strict=True)
    except msgspec.ValidationError as exc:
        raise DecodeError(f"{cls.__name__}: {exc}") from None
    except (DecodeError, UsageError):
        raise
    except (ValueError, TypeError) as exc:  # pragma: no cover - msgspec wraps these
        raise DecodeError(f"{cls.__name__}: {exc}") from None
