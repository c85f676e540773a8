"""Request and response models of the REST API (docs/design/protocol.md).

Every request model forbids unknown fields and bounds every string and list,
so the OpenAPI document states the limits and hostile input fails validation
(422) before any handler runs (T13).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TENANT_ID = r"^tn-[0-9a-z]{16,64}$"
DEVICE_ID = r"^dev-[0-9a-f]{24}$"
GRANT_ID = r"^gr-[0-9a-z]{16,64}$"
JOB_ID = r"^job-[0-9a-z]{16,64}$"
USERNAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
TENANT_NAME = r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,127}$"

MAX_ENVELOPE_TEXT = 2 << 20

Username = Annotated[str, Field(pattern=USERNAME)]
Secret = Annotated[str, Field(min_length=1, max_length=1024)]
Envelope = Annotated[str, Field(min_length=2, max_length=MAX_ENVELOPE_TEXT)]
TenantRef = Annotated[str, Field(min_length=1, max_length=128)]
DeviceId = Annotated[str, Field(pattern=DEVICE_ID)]
Role = Literal["owner", "approver", "technician", "viewer", "customer-viewer"]
Capability = Literal["script", "file", "package", "patch", "inventory", "backup", "net", "root",
                     "shell"]
ActionKind = Literal["os-update", "inventory-refresh", "backup-run", "reboot"]


class In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OkOut(BaseModel):
    ok: bool = True


class HealthOut(BaseModel):
    status: str
    version: str


# --- auth ---------------------------------------------------------------------------

class BootstrapIn(In):
    token: Secret
    username: Username
    password: Secret


class StepUpIn(In):
    code: Annotated[str, Field(pattern=r"^[0-9]{6}$")]


class StepUpOut(BaseModel):
    step_up_at: float
    valid_until: float


class ActivateIn(In):
    username: Username
    activation_token: Secret
    password: Secret


class EnrolmentOut(BaseModel):
    enrolment_token: str
    otpauth_uri: str


class TotpConfirmIn(In):
    enrolment_token: Secret
    code: Annotated[str, Field(min_length=1, max_length=16)]


class LoginIn(In):
    username: Annotated[str, Field(min_length=1, max_length=128)]
    password: Secret
    totp: Annotated[str, Field(min_length=1, max_length=16)]


class SessionOut(BaseModel):
    token: str
    expires_at: float
    username: str
    role: str


class MeOut(BaseModel):
    username: str
    role: str
    tenants: list[str] | None


# --- accounts and keys --------------------------------------------------------------

class AccountIn(In):
    username: Username
    role: Role
    tenants: Annotated[list[TenantRef], Field(max_length=1000)] | None


class AccountCreatedOut(BaseModel):
    username: str
    role: str
    activation_token: str
    #: Until when the activation token (and the enrolment it starts) may be used.
    activation_expires_at: float | None = None


class AccountReissuedOut(AccountCreatedOut):
    """A re-issued activation: the old password, TOTP secret and sessions no longer work."""

    sessions_ended: int


class AccountOut(BaseModel):
    username: str
    role: str
    tenants: list[str] | None
    active: bool
    totp_confirmed: bool
    last_login: float | None
    status: Literal["pending", "active", "locked", "disabled"] = "active"
    disabled_reason: str | None = None
    disabled_at: float | None = None


class AccountRoleIn(In):
    role: Role


class AccountRevokeIn(In):
    reason: Annotated[str, Field(max_length=256)] = ""


class RevokedKeyOut(BaseModel):
    keyid: str
    tenant: str | None


class AccountRevokedOut(BaseModel):
    username: str
    sessions_ended: int
    #: Every operator key of the account: owners propose roots without them.
    keys: list[RevokedKeyOut]
    #: Tenants whose current root names one of those keys.
    tenants: list[str]


class KeyIn(In):
    public: Annotated[str, Field(min_length=1, max_length=200)]
    tenant: TenantRef | None = None
    name: Annotated[str, Field(min_length=1, max_length=128)]


class KeyIdOut(BaseModel):
    keyid: str


class KeyOut(BaseModel):
    keyid: str
    public: str
    name: str
    tenant: str | None


# --- tenants and roots --------------------------------------------------------------

class TenantIn(In):
    name: Annotated[str, Field(pattern=TENANT_NAME)]


class PublicKeyOut(BaseModel):
    keyid: str
    public: str


class TenantOut(BaseModel):
    id: str
    name: str
    status: Literal["pending-root", "active", "archived"]
    root_version: int | None
    log_keys: list[PublicKeyOut]


class TenantDeleteIn(In):
    #: The tenant's name, typed again: the deletion cannot be undone.
    confirm: str = Field(min_length=1, max_length=128)


class DeletedTenantOut(BaseModel):
    id: str
    name: str
    deleted_at: float
    deleted_by: str
    #: When retention removes the tenant's audit log, kept until then.
    audit_until: float
    #: Rows removed per table (only in the answer to the deletion itself).
    removed: dict[str, int] = {}


class TenantSettingsOut(BaseModel):
    mass_action_limit: int
    dormant_days: int
    allowed_networks: list[str]


class TenantSettingsIn(In):
    mass_action_limit: Annotated[int, Field(ge=1, le=100000)] | None = None
    dormant_days: Annotated[int, Field(ge=1, le=3650)] | None = None
    allowed_networks: Annotated[list[Annotated[str, Field(max_length=64)]],
                                Field(max_length=64)] | None = None


class MemberOut(BaseModel):
    username: str
    role: str
    keys: list[PublicKeyOut]


class EnvelopeIn(In):
    envelope: Envelope


class RootOut(BaseModel):
    version: int
    sha256: str
    envelope: str


class RootProposalOut(BaseModel):
    version: int
    envelope: str
    signed_by: list[str]
    threshold: int
    previous_signed_by: list[str] | None
    previous_threshold: int | None
    complete: bool


# --- enrolment and devices ----------------------------------------------------------

class EnrolmentTokenIn(In):
    ttl_s: Annotated[int, Field(ge=60, le=7 * 24 * 3600)] = 3600


class EnrolmentTokenOut(BaseModel):
    token: str
    expires_at: float
    root_sha256: str
    cert_sha256: str | None
    server_url: str


class EnrolIn(In):
    token: Secret
    public_key: Annotated[str, Field(min_length=1, max_length=200)]
    hostname: Annotated[str, Field(min_length=1, max_length=255)]
    agent_version: Annotated[str, Field(min_length=1, max_length=64)]


class EnrolOut(BaseModel):
    device_id: str
    tenant: str
    roots: list[str]
    #: The dedicated agent gateway (same certificate); None: use /agent/v1/ws on this port.
    gateway_url: str | None = None
    #: Every gateway the agent may try in turn (the deployment's nodes); the first is gateway_url.
    gateway_urls: list[str] | None = None


class DeviceOut(BaseModel):
    id: str
    hostname: str
    status: Literal["pending", "approved", "rejected", "retired"]
    connected: bool
    last_seen: float | None
    enrolled_at: float
    groups: list[str] = []


# --- grants -------------------------------------------------------------------------

class GrantIn(In):
    devices: Annotated[list[DeviceId], Field(min_length=1, max_length=10_000)]
    capabilities: Annotated[list[Capability], Field(min_length=1, max_length=9)]
    duration_s: Annotated[int, Field(ge=60, le=366 * 24 * 3600)]
    reason: Annotated[str, Field(min_length=1, max_length=2048)]
    actions: Annotated[list[ActionKind], Field(max_length=4)] = []
    #: A standing grant for the server's automation key of this tenant (docs/patching.md).
    for_automation: bool = False
    #: Commit the devices as a set (true) or list them (false); unset: a set beyond 64 devices.
    device_set: bool | None = None


class GrantCreatedOut(BaseModel):
    id: str
    envelope: str
    status: str


class GrantOut(BaseModel):
    id: str
    tenant: str
    grantee: str
    grantee_name: str
    requested_by: str
    devices: list[str]
    capabilities: list[str]
    not_before: int
    not_after: int
    reason: str
    status: Literal["requested", "approved", "expired", "revoked"]
    approvals: list[str]
    required: int
    envelope: str


# --- jobs ---------------------------------------------------------------------------

class JobIn(In):
    envelope: Envelope
    payloads: Annotated[dict[Annotated[str, Field(max_length=64)],
                             Annotated[str, Field(max_length=6 << 20)]],
                        Field(max_length=16)] = {}
    #: The devices of a job that commits a device set (they must recompute to its signed root);
    #: empty for a job that lists them.
    devices: Annotated[list[DeviceId], Field(max_length=100_000)] = []


class JobCreatedOut(BaseModel):
    id: str
    targets: list[str]


class ReceiptOut(BaseModel):
    outcome: str
    refusal: str
    detail: str
    exit_code: int | None
    signal: int | None
    timed_out: bool
    stdout: str
    stderr: str
    started_at: float
    ended_at: float
    containment: dict[str, Any] | None


class TargetOut(BaseModel):
    device: str
    state: Literal["pending", "sent", "done", "cancelled"]
    receipt: ReceiptOut | None


class JobOut(BaseModel):
    id: str
    tenant: str
    kind: str
    signer: str
    grant: str
    created_at: float
    devices: list[str]
    targets: list[TargetOut]


class JobSummaryOut(BaseModel):
    """A job's progress in counts (one aggregate query, whatever the fleet's size)."""

    id: str
    tenant: str
    kind: str
    created_at: float
    targets: int
    #: Targets per state: pending, sent, done, cancelled.
    states: dict[str, int]
    #: Receipts per outcome (ran, failed, refused, ...).
    outcomes: dict[str, int]


# --- audit --------------------------------------------------------------------------

class AuditEntryOut(BaseModel):
    index: int
    kind: str
    time: float
    data: str


class CheckpointOut(BaseModel):
    size: int
    root: str
    envelope: str


class CosignIn(BaseModel):
    #: The stored checkpoint envelope with the witness's co-signature added.
    envelope: Envelope


class CosignOut(BaseModel):
    size: int
    #: Key ids of the root's witnesses whose co-signatures the checkpoint now carries.
    witnesses: list[str]
    #: Of those, the ones this request added.
    added: list[str]


class ProofOut(BaseModel):
    proof: list[str]


# --- alerts -------------------------------------------------------------------------

ALERT_ID = r"^al-[0-9a-z]{16,64}$"


class AlertOut(BaseModel):
    id: str
    tenant: str | None
    #: The one device the alert is about, if any (listings cap how many alerts one device shows).
    device: str | None = None
    kind: str
    severity: str
    subject: str
    detail: str
    status: Literal["open", "acknowledged", "resolved"]
    count: int
    first_seen: float
    last_seen: float
    acked_by: str | None
    acked_at: float | None
    resolved_by: str | None
    resolved_at: float | None


# --- alert delivery and SIEM export -----------------------------------------------------

TARGET_ID = r"^nt-[0-9a-z]{16,64}$"
SeverityName = Literal["info", "warning", "critical"]


class NotifyTargetIn(In):
    """A webhook (``url``), e-mail (``recipients``) or syslog forwarder (``host``, ``port``)."""

    kind: Literal["webhook", "email", "syslog"]
    name: Annotated[str, Field(min_length=1, max_length=128)]
    min_severity: SeverityName = "warning"
    url: Annotated[str, Field(max_length=2048)] | None = None
    recipients: Annotated[list[Annotated[str, Field(max_length=254)]], Field(max_length=20)] | None = None
    host: Annotated[str, Field(max_length=253)] | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    format: Literal["syslog", "cef", "jsonl"] = "syslog"
    tls: bool = False
    #: syslog: ``tcp`` (RFC 6587 octet counting; RFC 5425 with tls) or ``relp`` (acknowledged).
    transport: Literal["tcp", "relp"] = "tcp"
    #: syslog over TLS: paths on the server and a fingerprint, never key material (tlsconfig.py).
    ca_file: Annotated[str, Field(max_length=4096)] | None = None
    pin_sha256: Annotated[str, Field(max_length=128)] | None = None
    verify_hostname: bool | None = None
    server_name: Annotated[str, Field(max_length=253)] | None = None
    client_cert: Annotated[str, Field(max_length=4096)] | None = None
    client_key: Annotated[str, Field(max_length=4096)] | None = None


class NotifyTargetOut(BaseModel):
    id: str
    tenant: str | None
    kind: str
    name: str
    min_severity: str
    config: dict[str, Any]
    created_by: str
    created_at: float
    delivered: int
    pending: int
    failed: int
    last_detail: str | None
    #: syslog: audit entries the receiver took, and those waiting for it (the cursor's position).
    forwarded: int | None = None
    waiting: int | None = None


class NotifyTargetCreatedOut(NotifyTargetOut):
    #: The webhook's HMAC secret, shown this once (None for other kinds).
    secret: str | None = None


class DeliveryResultOut(BaseModel):
    ok: bool
    detail: str


# --- telemetry: inventory, findings, tools, catalog (docs/monitoring.md) --------------------

TOOL_SLUG = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
InventorySection = Literal["agent", "os", "hardware", "patching", "disks", "packages", "updates",
                           "processes", "services", "sockets", "users", "metrics"]


class InventoryOut(BaseModel):
    """The device's inventory: these fields, then the snapshot's own (``rampart.agent.inventory.Inventory``:
    schema, collected_at, agent, os, hardware, patching, disks, packages, updates, processes, services,
    sockets, users, metrics, errors, notes), limited to the sections asked for."""

    model_config = ConfigDict(extra="allow")
    device: str
    hostname: str
    #: SHA-256 of the snapshot shown (the agent's digest of it).
    digest: str
    #: When the server last received a report from the device.
    updated_at: float
    collected_at: int
    sections: list[str]


class FindingOut(BaseModel):
    device: str
    hostname: str
    key: str
    kind: str
    severity: str
    tool: str
    subject: str
    evidence: dict[str, str]
    status: Literal["open", "resolved"]
    first_seen: float
    last_seen: float
    resolved_at: float | None
    #: The suppression rule that silences it ("<rule id> until <time>: <reason>"), or "".
    suppressed: str = ""


class ToolFoundOut(BaseModel):
    device: str
    hostname: str
    tool: str
    name: str
    sanctioned: bool
    #: process, package, service (inventory), or network (a port or address finding only).
    found_by: list[str]
    portable: bool
    evidence: dict[str, str]
    reported_at: float


class SanctionedToolOut(BaseModel):
    slug: str
    name: str
    added_by: str
    added_at: float


class SuppressionIn(In):
    """A suppression rule (rampart.server.suppression): exactly one of ``path`` and ``sha256``."""

    kind: str = Field(max_length=32)
    path: str = Field(default="", max_length=256)
    sha256: str = Field(default="", max_length=64)
    device: str = Field(default="", max_length=32)
    reason: str = Field(max_length=200)
    days: int = Field(ge=1, le=365)


class SuppressionOut(BaseModel):
    id: str
    kind: str
    path: str
    sha256: str
    device: str
    reason: str
    expires_at: float
    expired: bool
    created_by: str
    created_at: float


class InventoryRequestIn(In):
    #: Ask for a full report instead of a delta.
    full: bool = False


class InventoryRequestOut(BaseModel):
    device: str
    #: False: the device is not connected to this server process; it reports when it reconnects.
    connected: bool
    full: bool


class CatalogIn(In):
    #: A normalised catalog document (``rampart.catalog.v1``, as `rampart catalog import` builds from a
    #: LOLRMM feed); the server re-validates every tool.
    catalog: Annotated[str, Field(min_length=2, max_length=2 << 20)]
    source: Annotated[str, Field(max_length=256)] = ""
    feed_entries: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    feed_warnings: Annotated[int, Field(ge=0, le=100_000_000)] = 0


class CatalogToolOut(BaseModel):
    slug: str
    name: str
    category: str
    platforms: list[str]
    linux: bool
    sources: list[str]
    executables: list[str]
    ports: list[int]
    advisories: int
    vulnerable_ranges: int


class CatalogOut(BaseModel):
    builtin: int
    imported: int
    merged: int
    sha256: str | None
    imported_at: float | None
    imported_by: str | None
    source: str | None
    tools: list[CatalogToolOut]


# --- monitoring checks ----------------------------------------------------------------------

CHECK_ID = r"^ck-[0-9a-z]{16,64}$"


class CheckIn(In):
    kind: Literal["disk", "memory", "cpu", "service", "port"]
    device: DeviceId | None = None
    params: Annotated[dict[Annotated[str, Field(max_length=32)],
                           str | int | float | bool], Field(max_length=8)] = {}


class CheckOut(BaseModel):
    id: str
    tenant: str
    device: str | None
    kind: str
    params: dict[str, Any]
    created_by: str
    created_at: float
    #: Devices where the check currently fails (open alerts).
    failing: list[str]
    #: Devices where the check cannot be evaluated (e.g. a service check without systemd).
    unknown: list[str] = []
