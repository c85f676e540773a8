"""ORM models: the server's whole persistent state (SQLAlchemy 2, typed).

Invariants held by the schema itself:

* One target per (job, device) and one receipt per (job, device): primary
  keys, so a retried request or a replayed receipt can never duplicate one.
* One audit entry per (log, index) and one checkpoint per (log, size).
* Secrets are stored only as hashes (sessions, tokens) or, for TOTP, as the
  shared secret the RFC requires; no private key is ever stored here.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


ID = String(80)
HASH = String(64)


class Setting(Base):
    """Server-wide values (the bootstrap token's hash while no owner exists)."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Tenant(Base):
    """A customer. The access settings are the server-side layer (issue 4), never a key."""

    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    #: Distinct devices one account may reach per rolling hour before step-up MFA (G5).
    mass_action_limit: Mapped[int] = mapped_column(Integer, default=10)
    #: Days without login after which an account of this tenant is disabled (S2).
    dormant_days: Mapped[int] = mapped_column(Integer, default=30)
    #: JSON list of CIDR networks operators may act from; empty: anywhere (N3).
    allowed_networks: Mapped[str] = mapped_column(Text, default="[]")
    #: When an owner archived the tenant (issue 16): its devices are refused and no job is accepted.
    archived_at: Mapped[float | None] = mapped_column(Float, nullable=True, default=None)


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    all_tenants: Mapped[bool] = mapped_column(Boolean)
    password_hash: Mapped[str | None] = mapped_column(String(256))
    #: Sealed with the data directory's key, bound to this id (never clear: .totp_store).
    totp_secret: Mapped[str | None] = mapped_column(String(128))
    totp_confirmed: Mapped[bool] = mapped_column(Boolean, default=False)
    totp_last_step: Mapped[int] = mapped_column(BigInteger, default=0)
    activation_token_hash: Mapped[str | None] = mapped_column(HASH, unique=True)
    enrolment_token_hash: Mapped[str | None] = mapped_column(HASH, unique=True)
    enrolment_expires_at: Mapped[float | None] = mapped_column(Float)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[float] = mapped_column(Float)
    last_login_at: Mapped[float | None] = mapped_column(Float)
    #: Set when the account was disabled (dormant, revoked, by an owner); login is refused.
    disabled_at: Mapped[float | None] = mapped_column(Float)
    disabled_reason: Mapped[str | None] = mapped_column(String(32))
    #: When an owner last re-enabled it: dormancy counts from the latest of this and logins.
    enabled_at: Mapped[float | None] = mapped_column(Float)


class AccountTenant(Base):
    __tablename__ = "account_tenants"
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)


class SessionRow(Base):
    __tablename__ = "sessions"
    token_hash: Mapped[str] = mapped_column(HASH, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"),
                                            index=True)
    created_at: Mapped[float] = mapped_column(Float)
    last_used_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    #: When this session last proved a fresh TOTP code (G5 step-up); None: never.
    step_up_at: Mapped[float | None] = mapped_column(Float)


class OperatorKeyRow(Base):
    """An operator's public key, registered so owners can put it in a root."""

    __tablename__ = "operator_keys"
    keyid: Mapped[str] = mapped_column(HASH, primary_key=True)
    public: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(128))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"),
                                            index=True)
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id"))
    created_at: Mapped[float] = mapped_column(Float)


class RootVersion(Base):
    """A published tenant root; versions are contiguous from 1."""

    __tablename__ = "roots"
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(HASH)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    published_at: Mapped[float] = mapped_column(Float)


class RootProposal(Base):
    __tablename__ = "root_proposals"
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[float] = mapped_column(Float)


class EnrolmentToken(Base):
    __tablename__ = "enrolment_tokens"
    token_hash: Mapped[str] = mapped_column(HASH, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float)


class Device(Base):
    __tablename__ = "devices"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    public_key: Mapped[str] = mapped_column(String(128))
    hostname: Mapped[str] = mapped_column(String(255))
    agent_version: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    enrolled_at: Mapped[float] = mapped_column(Float)
    approved_at: Mapped[float | None] = mapped_column(Float)
    approved_by: Mapped[str | None] = mapped_column(String(64))
    last_seen: Mapped[float | None] = mapped_column(Float)
    #: When an operator retired it (issue 16); retention removes its records a period later.
    retired_at: Mapped[float | None] = mapped_column(Float, nullable=True, default=None)


class DeletedTenant(Base):
    """What is left of a deleted tenant: its name and its audit log (kept until ``audit_until``)."""

    __tablename__ = "deleted_tenants"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    deleted_at: Mapped[float] = mapped_column(Float)
    deleted_by: Mapped[str] = mapped_column(String(64))
    audit_until: Mapped[float] = mapped_column(Float)


class GrantRow(Base):
    """A grant: its unsigned payload bytes and the merged envelope of valid approvals."""

    __tablename__ = "grants"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    grantee: Mapped[str] = mapped_column(HASH)
    requested_by: Mapped[str] = mapped_column(String(64))
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)
    not_after: Mapped[int] = mapped_column(BigInteger)
    #: The signed revocation (approver or owner of the root), once the grant is ended early.
    revocation: Mapped[bytes | None] = mapped_column(LargeBinary)
    revoked_at: Mapped[float | None] = mapped_column(Float)
    revoked_by: Mapped[str | None] = mapped_column(String(64))
    #: A grant that commits a device set (``Grant.device_set``): its device ids, sorted, one per
    #: line; they recompute to the signed root (checked when stored). None for a listed grant.
    device_list: Mapped[bytes | None] = mapped_column(LargeBinary)


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("tenant_id", "nonce"),)
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    grant_id: Mapped[str] = mapped_column(ForeignKey("grants.id"))
    signer: Mapped[str] = mapped_column(HASH)
    kind: Mapped[str] = mapped_column(String(32))
    nonce: Mapped[str] = mapped_column(String(128))
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    log_index: Mapped[int] = mapped_column(BigInteger)
    #: The account that submitted it (the G5 rolling-hour count); None for scheduler jobs.
    account_id: Mapped[int | None] = mapped_column(Integer, index=True)


class JobPayload(Base):
    __tablename__ = "job_payloads"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class JobTarget(Base):
    """One per (job, device); ``done`` only once the device's receipt is committed."""

    __tablename__ = "job_targets"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True, index=True)
    state: Mapped[str] = mapped_column(String(16))
    sent_at: Mapped[float | None] = mapped_column(Float)
    done_at: Mapped[float | None] = mapped_column(Float)


class JobCancellation(Base):
    """The signed cancellation of a job (one per job: the first that verified), pushed to agents until
    the job expires."""

    __tablename__ = "job_cancellations"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    #: The job's own expiry: after it no agent would run the job anyway.
    expires_at: Mapped[int] = mapped_column(BigInteger)


class ReceiptRow(Base):
    __tablename__ = "receipts"
    __table_args__ = (
        ForeignKeyConstraint(["job_id", "device_id"],
                             ["job_targets.job_id", "job_targets.device_id"]),
    )
    job_id: Mapped[str] = mapped_column(ID, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    outcome: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[float] = mapped_column(Float)
    log_index: Mapped[int] = mapped_column(BigInteger)


class AuditLogRow(Base):
    """One Merkle log per tenant (plus the server log); ``size`` is locked to append."""

    __tablename__ = "audit_logs"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    log_keyid: Mapped[str] = mapped_column(HASH)
    log_public: Mapped[str] = mapped_column(String(64))


class AuditEntry(Base):
    __tablename__ = "audit_entries"
    log_id: Mapped[str] = mapped_column(ForeignKey("audit_logs.id"), primary_key=True)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    time: Mapped[float] = mapped_column(Float)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary)


class CheckpointRow(Base):
    __tablename__ = "checkpoints"
    log_id: Mapped[str] = mapped_column(ForeignKey("audit_logs.id"), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    root: Mapped[str] = mapped_column(HASH)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)


class LoginThrottle(Base):
    """Failed-login pacing per ``sha256("user:" name)`` or ``sha256("addr:" ip)`` (T11).

    Keys are hashed so a password typed into the username field is never stored.
    """

    __tablename__ = "login_throttle"
    key: Mapped[str] = mapped_column(HASH, primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    last_failure_at: Mapped[float] = mapped_column(Float)
    next_allowed_at: Mapped[float] = mapped_column(Float)


class AlertRow(Base):
    """An alert: de-duplicated on (tenant, dedup key) while open or acknowledged.

    ``device_id`` names the one device the alert is about, when there is one
    (migration 0008): listings cap how many alerts one device contributes
    (docs/alerts.md). It is a plain column, not a foreign key: the alert
    outlives nothing it names, and retention deletes it on its own schedule.
    """

    __tablename__ = "alerts"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id"), index=True)
    device_id: Mapped[str | None] = mapped_column(String(32), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    dedup_key: Mapped[str] = mapped_column(String(256), index=True)
    subject: Mapped[str] = mapped_column(String(256))
    detail: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    count: Mapped[int] = mapped_column(Integer, default=1)
    first_seen: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)
    acked_by: Mapped[str | None] = mapped_column(String(64))
    acked_at: Mapped[float | None] = mapped_column(Float)
    resolved_by: Mapped[str | None] = mapped_column(String(64))
    #: Indexed for the retention sweep (rampart/server/retention.py).
    resolved_at: Mapped[float | None] = mapped_column(Float, index=True)


# --- monitoring, inventory and detection (issue 5) ----------------------------------------------

class DeviceInventory(Base):
    """The latest materialised inventory of a device (zlib-compressed msgspec ``Inventory``).

    ``digest`` is the SHA-256 of that snapshot; reports newer than it wait in
    ``inventory_deltas`` until they are folded in (rampart/server/telemetry.py).
    """

    __tablename__ = "device_inventory"
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    digest: Mapped[str] = mapped_column(HASH)
    snapshot: Mapped[bytes] = mapped_column(LargeBinary)
    snapshot_at: Mapped[float] = mapped_column(Float)
    #: Digest of the newest state received (snapshot plus pending deltas).
    head: Mapped[str] = mapped_column(HASH)
    updated_at: Mapped[float] = mapped_column(Float)
    #: JSON list of the catalogued tools present at the last report, sanctioned or not (migration 0004).
    tools: Mapped[str] = mapped_column(Text, default="[]")


class InventoryDelta(Base):
    """One acknowledged delta report (the agent's zlib-compressed report), kept until folded in."""

    __tablename__ = "inventory_deltas"
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    base: Mapped[str] = mapped_column(HASH)
    result: Mapped[str] = mapped_column(HASH)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[float] = mapped_column(Float)


class FindingRow(Base):
    """A detection on a device, open while the agent keeps reporting it."""

    __tablename__ = "findings"
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    tool: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(300))
    evidence: Mapped[str] = mapped_column(Text)
    first_seen: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)
    #: Indexed for the retention sweep (rampart/server/retention.py).
    resolved_at: Mapped[float | None] = mapped_column(Float, index=True)


class SanctionedTool(Base):
    """A remote access tool the tenant uses on purpose (H1): not reported as unsanctioned."""

    __tablename__ = "sanctioned_tools"
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), primary_key=True)
    added_by: Mapped[str] = mapped_column(String(64))
    added_at: Mapped[float] = mapped_column(Float)


class MonitorCheck(Base):
    """A classic RMM check (disk, cpu, memory, service, tcp port) on a tenant's devices."""

    __tablename__ = "checks"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    device_id: Mapped[str | None] = mapped_column(ForeignKey("devices.id"))
    kind: Mapped[str] = mapped_column(String(16))
    params: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)


class NotifyTarget(Base):
    """Where alerts go: a webhook, e-mail recipients or a syslog forwarder (no secret inline)."""

    __tablename__ = "notify_targets"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(128))
    config: Mapped[str] = mapped_column(Text)
    min_severity: Mapped[str] = mapped_column(String(16))
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)


class Delivery(Base):
    """One alert to one target: the outbox with retries (exactly one row per pair)."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("target_id", "alert_id", "alert_count"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    target_id: Mapped[str] = mapped_column(ForeignKey("notify_targets.id", ondelete="CASCADE"),
                                           index=True)
    #: Indexed: retention deletes an alert's finished deliveries with it (and the foreign key is checked).
    alert_id: Mapped[str] = mapped_column(ForeignKey("alerts.id"), index=True)
    #: The alert's count when queued: a re-raised alert is delivered again.
    alert_count: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[float] = mapped_column(Float)
    last_detail: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[float] = mapped_column(Float)
    delivered_at: Mapped[float | None] = mapped_column(Float)


# --- patch policies, backup policies and the scheduler (issue 6) ---------------------------------

class PatchPolicy(Base):
    """Rings, window, deferral and reboot policy of a tenant's patching (rampart/server/patching.py).

    The policy only decides *when* the scheduler triggers payload-free
    ``os-update`` jobs; each job is signed with the tenant's automation key and
    is accepted by agents only under an approver-signed standing grant.
    """

    __tablename__ = "patch_policies"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    #: JSON list of {"name", "devices": [...], "delay_s"} in order: pilot first.
    rings: Mapped[str] = mapped_column(Text)
    #: JSON {"days": [0..6], "start_min", "duration_min"} (UTC), or "" for any time.
    window: Mapped[str] = mapped_column(Text, default="")
    defer_s: Mapped[int] = mapped_column(BigInteger, default=0)
    reboot: Mapped[str] = mapped_column(String(16), default="never")
    timeout_s: Mapped[int] = mapped_column(Integer, default=1800)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class PatchCycle(Base):
    """One pass of a policy through its rings; halted at the first ring with a failure."""

    __tablename__ = "patch_cycles"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    policy_id: Mapped[str] = mapped_column(ForeignKey("patch_policies.id", ondelete="CASCADE"),
                                           index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    #: Start of the window occurrence the cycle began in (at most one cycle per occurrence).
    window_start: Mapped[float] = mapped_column(Float)
    #: running, halted, done or cancelled.
    state: Mapped[str] = mapped_column(String(16))
    ring: Mapped[int] = mapped_column(Integer, default=0)
    #: When the previous ring finished without a failure (the next ring's delay counts from it).
    ring_done_at: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    detail: Mapped[str] = mapped_column(Text, default="")


class PatchRun(Base):
    """One device's part of a cycle's ring: the job, and what its receipt said."""

    __tablename__ = "patch_runs"
    cycle_id: Mapped[str] = mapped_column(ForeignKey("patch_cycles.id", ondelete="CASCADE"),
                                          primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    ring: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[str | None] = mapped_column(ID)
    #: waiting (no grant or offline), pending (job sent), ok, failed, up-to-date, left (the ring's group
    #: lost the device before its job was sent).
    state: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    updated: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    reboot_required: Mapped[bool] = mapped_column(Boolean, default=False)
    detail: Mapped[str] = mapped_column(Text, default="")


class PendingUpdateRow(Base):
    """A pending update as the device's inventories showed it, with when it was first seen."""

    __tablename__ = "pending_updates"
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    arch: Mapped[str] = mapped_column(String(64), primary_key=True)
    candidate: Mapped[str] = mapped_column(String(256))
    security: Mapped[bool] = mapped_column(Boolean)
    #: The newest version a security archive offers ("" if none reported): the fix to apply.
    security_candidate: Mapped[str] = mapped_column(String(256), default="", server_default="")
    first_seen: Mapped[float] = mapped_column(Float)
    #: When a security version was first seen pending (None: no security update pending).
    security_since: Mapped[float | None] = mapped_column(Float)


class DevicePatchState(Base):
    """The inventory digest the pending-update table was last refreshed from, per device."""

    __tablename__ = "device_patch_state"
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    digest: Mapped[str] = mapped_column(HASH)
    reboot_required: Mapped[bool] = mapped_column(Boolean, default=False)
    seen_at: Mapped[float] = mapped_column(Float)


class BackupPolicyRow(Base):
    """When a device's backups run, how old they may get, and the retention the vault holder applies.

    What is backed up and where it goes are the device's own settings (set at
    enrolment, ``rampart-agent enroll --backup-*``): the server cannot change them.
    """

    __tablename__ = "backup_policies"
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    every_s: Mapped[int] = mapped_column(BigInteger)
    window: Mapped[str] = mapped_column(Text, default="")
    max_age_s: Mapped[int] = mapped_column(BigInteger)
    verify_max_age_s: Mapped[int] = mapped_column(BigInteger)
    #: JSON {"daily", "weekly", "monthly"}: the vault holder's offline prune (docs/backup-vault.md).
    retention: Mapped[str] = mapped_column(Text)
    timeout_s: Mapped[int] = mapped_column(Integer, default=3600)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    last_job_id: Mapped[str | None] = mapped_column(ID)
    last_triggered_at: Mapped[float | None] = mapped_column(Float)
    #: Why the last trigger could not be sent (no standing grant, ...), "" when it was.
    trigger_error: Mapped[str] = mapped_column(Text, default="")


class BackupResult(Base):
    """What a device's signed receipt of a ``backup-run`` job says (one row per job and device)."""

    __tablename__ = "backup_results"
    job_id: Mapped[str] = mapped_column(ID, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    finished_at: Mapped[float] = mapped_column(Float, index=True)
    ok: Mapped[bool] = mapped_column(Boolean)
    archive: Mapped[str] = mapped_column(String(256), default="")
    archive_ok: Mapped[bool] = mapped_column(Boolean)
    nfiles: Mapped[int] = mapped_column(BigInteger, default=0)
    original_size: Mapped[int] = mapped_column(BigInteger, default=0)
    check_ok: Mapped[bool | None] = mapped_column(Boolean)
    restore_ok: Mapped[bool | None] = mapped_column(Boolean)
    error: Mapped[str] = mapped_column(Text, default="")


# --- script checks: results of signed, repeating script jobs the agents run (issue 5) ------------

class ScriptCheck(Base):
    """A repeating script job (``Job.repeat``): what its signed payload says, for listing.

    The job itself (envelope, payload, log entry, targets) is a ``jobs`` row like
    every job; the agents run it on their own schedule and report results.
    """

    __tablename__ = "script_checks"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    every_s: Mapped[int] = mapped_column(Integer)
    until: Mapped[int] = mapped_column(BigInteger)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)


class ScriptCheckResult(Base):
    """One reported run of a script check on one device (a bounded history per job and device)."""

    __tablename__ = "script_check_results"
    __table_args__ = (UniqueConstraint("job_id", "device_id", "seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("script_checks.job_id"))
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    #: The agent's outbox sequence number: a result resent after a lost ack is stored once.
    seq: Mapped[int] = mapped_column(BigInteger)
    run_at: Mapped[float] = mapped_column(Float)
    duration_s: Mapped[float] = mapped_column(Float)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    timed_out: Mapped[bool] = mapped_column(Boolean, default=False)
    ok: Mapped[bool] = mapped_column(Boolean)
    stdout: Mapped[str] = mapped_column(Text, default="")
    stderr: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    received_at: Mapped[float] = mapped_column(Float)


class ScriptCheckStatus(Base):
    """The latest result of a script check on one device, and counts (one row per pair)."""

    __tablename__ = "script_check_status"
    job_id: Mapped[str] = mapped_column(ForeignKey("script_checks.job_id"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    last_run_at: Mapped[float] = mapped_column(Float)
    last_received_at: Mapped[float] = mapped_column(Float)
    ok: Mapped[bool] = mapped_column(Boolean)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str] = mapped_column(Text, default="")
    #: The interval the device reports it runs the check at (its floor may exceed ``every_s``).
    interval_s: Mapped[int] = mapped_column(Integer)
    runs: Mapped[int] = mapped_column(BigInteger, default=0)
    failures: Mapped[int] = mapped_column(BigInteger, default=0)


class DeviceGroup(Base):
    """A named set of a tenant's devices (rampart/server/groups.py): patch rings may name groups.

    A group only decides which devices the scheduler *considers*; what any job
    may touch is still the explicit device list of an approver-signed grant.
    """

    __tablename__ = "device_groups"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(256), default="")
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class DeviceGroupMember(Base):
    __tablename__ = "device_group_members"
    group_id: Mapped[str] = mapped_column(ForeignKey("device_groups.id", ondelete="CASCADE"),
                                          primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True, index=True)


class SessionRecording(Base):
    """The device's recording of one remote session (asciicast v2), stored only when its SHA-256 and
    size equal what the device signed in the session's receipt (docs/remote-support.md)."""

    __tablename__ = "session_recordings"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    device_id: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(HASH)
    size: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    stored_at: Mapped[float] = mapped_column(Float)


# --- the service statement and incident notification deadlines (issue 19: C1, M7) -------------------

class ServiceStatement(Base):
    """What the MSP delivers to one tenant, who is told of an incident and how fast (C1, M7).

    ``contact_target`` names one of the tenant's notification targets (webhook or e-mail):
    a critical alert opening in the tenant is sent there by the notifier like any alert, and
    an :class:`IncidentNotice` records when, against ``deadline_s``.
    """

    __tablename__ = "service_statements"
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    #: JSON list of the services delivered (short lines).
    services: Mapped[str] = mapped_column(Text, default="[]")
    contact_name: Mapped[str] = mapped_column(String(256), default="")
    contact_target: Mapped[str | None] = mapped_column(
        ForeignKey("notify_targets.id", ondelete="SET NULL"), nullable=True)
    deadline_s: Mapped[int] = mapped_column(Integer)
    incident_response: Mapped[str] = mapped_column(Text, default="")
    recovery: Mapped[str] = mapped_column(Text, default="")
    updated_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[float] = mapped_column(Float)


class IncidentNotice(Base):
    """One critical alert of a tenant with a statement: when it opened, when its contact had to be
    told by, and when the contact target took it (None: not yet).

    ``alert_id`` is a plain column, not a foreign key: the record of whether a deadline held
    outlives the alert, which retention deletes on its own schedule.
    """

    __tablename__ = "incident_notices"
    alert_id: Mapped[str] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    target_id: Mapped[str] = mapped_column(String(80))
    kind: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(256))
    opened_at: Mapped[float] = mapped_column(Float)
    deadline_s: Mapped[int] = mapped_column(Integer)
    notified_at: Mapped[float | None] = mapped_column(Float, nullable=True)
