"""Server configuration and limits, read from ``DIR/config.json``.

Data directory layout (docs/design/protocol.md, "Server data directory")::

    DIR/config.json     {"db_url": ..., "public_url": null, "shared_operator_keys": false,
                         "inventory_interval_s": 300 (optional; the agents' interval),
                         "scheduler_interval_s": 60 (optional; patch and backup scheduling),
                         "finding_retention_days": 90, "alert_retention_days": 180,
                         "retired_device_retention_days": 90, "deleted_tenant_audit_days": 365
                         (optional; how long resolved findings and alerts, a retired
                         device's records and a deleted tenant's audit log are kept),
                         "agent_gateways": ["wss://node-1:8444/agent/v1/ws", ...] (optional;
                         the nodes' gateways enrolling agents try in turn)}
    DIR/tls/cert.pem    self-signed ECDSA P-256 certificate
    DIR/tls/key.pem     0600
    DIR/keys/           0700; log-<log id>.key, 0600 each
    DIR/rampart.db      SQLite (default store)

The config file holds no secret: the database URL of a PostgreSQL store
should authenticate by peer/socket or a password file, not inline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rampart.wire.gateways import check_gateway_urls
from rampart.wire.limits import MAX_MESSAGE_BYTES

from .admission import AdmissionLimits
from .device_budget import BudgetLimits
from .errors import SetupError

CONFIG_FILE = "config.json"
MAX_CONFIG_BYTES = 64 * 1024
DEFAULT_INVENTORY_INTERVAL_S = 300.0


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Every size, count and duration a client controls, bounded."""

    #: The HTTP listener (rampart.server.http_guard): a request's headers must be complete this long
    #: after its first byte, its body this long after its headers; connections per source address.
    http_header_timeout_s: float = 10.0
    http_body_timeout_s: float = 60.0
    http_connections_per_address: int = 256
    max_body_bytes: int = 2 << 20
    max_job_body_bytes: int = 6 << 20
    max_job_payload_bytes: int = 4 << 20
    #: The agent link's frame limit (rampart.wire.limits); an agent accepts no larger frame.
    max_ws_message_bytes: int = MAX_MESSAGE_BYTES
    max_list: int = 1000
    hello_timeout_s: float = 15.0
    #: Admission (rampart.server.admission): agent handshakes past their hello at once, how many
    #: more may wait in line, and how long; the others are told to try again later (1013).
    handshake_slots: int = 64
    handshake_queue: int = 4096
    handshake_wait_s: float = 10.0
    #: How long the gateway waits for an agent to adopt a job's checkpoint before sending the next.
    delivery_progress_timeout_s: float = 10.0
    #: How long a job of a tenant whose root asks a witness quorum waits for a co-signed checkpoint
    #: before it goes out without one (the agent then refuses it: ``witness-quorum``).
    witness_wait_s: float = 30.0
    session_idle_s: int = 3600
    session_absolute_s: int = 12 * 3600
    enrolment_ttl_min_s: int = 60
    enrolment_ttl_max_s: int = 7 * 24 * 3600
    enrolment_account_ttl_s: int = 15 * 60
    #: How long an activation token (account create, account reissue) may be used; enrolment
    #: may be retried with it until then, and it is spent when TOTP enrolment is confirmed.
    activation_ttl_s: int = 7 * 24 * 3600
    lockout_after_failures: int = 10
    lockout_s: int = 15 * 60
    checkpoint_interval_s: float = 60.0
    #: A node of a deployment (``--nats``) looks again for every connection this often: what a lost
    #: doorbell left waiting goes out at the latest then (docs/design/scale-out.md).
    redelivery_interval_s: float = 30.0
    #: Dormant-account sweep and pacing cleanup (also run once at start).
    housekeeping_interval_s: float = 600.0
    #: How often tenant roots are checked for coming expiry (also once at start; root_expiry.py).
    root_expiry_interval_s: float = 3600.0
    #: How often queued alerts are delivered and events forwarded to SIEM targets.
    notify_interval_s: float = 2.0
    #: How often monitoring checks look at new inventories.
    checks_interval_s: float = 5.0
    min_password_chars: int = 12
    max_password_chars: int = 1024
    # --- telemetry (docs/design/telemetry.md) ---
    #: The agents' inventory interval; an agent is overdue or offline after ``overdue_intervals`` of them.
    inventory_interval_s: float = DEFAULT_INVENTORY_INTERVAL_S
    overdue_intervals: float = 2.0
    #: How often overdue/offline agents are looked for and detection configurations re-checked.
    telemetry_sweep_interval_s: float = 60.0
    #: Largest decompressed inventory report (zlib output is cut here, while inflating, before any
    #: decoding). A real inventory is a few MiB at most; this bounds what one report may cost.
    max_inventory_bytes: int = 16 << 20
    #: Inventory reports per device (all its connections together, docs/monitoring.md "Budgets"):
    #: a burst, then one more per ``inventory_refill_s`` (or half the inventory interval, when shorter).
    inventory_burst: int = 20
    inventory_refill_s: float = 15.0
    #: Bytes a device may send (every message, before it is parsed): a burst, then this many per second.
    device_bytes_burst: int = 32 << 20
    device_bytes_per_s: float = 64 << 10
    #: Script check results per device: a burst, then this many per second.
    check_result_burst: int = 200
    check_result_per_s: float = 2.0
    #: Open findings kept per device; beyond it the most severe are kept and one alert says so.
    max_findings_per_device: int = 100
    #: Findings written in one ingest transaction (reports beyond it go in the next transaction).
    findings_per_transaction: int = 1000
    #: Refusals within ``abuse_window_s`` after which a device is disconnected and refused for
    #: ``abuse_block_s`` (doubling with each repeat, at most ``abuse_block_max_s``).
    abuse_refusals: int = 20
    abuse_window_s: float = 60.0
    abuse_block_s: float = 60.0
    abuse_block_max_s: float = 3600.0
    #: At most one alert per device and kind of abuse in this period.
    abuse_alert_interval_s: float = 600.0
    #: Pending deltas after which a device's snapshot is materialised in the background.
    inventory_compact_after: int = 64
    #: How often the scheduler advances patch cycles and triggers due backups (docs/patching.md).
    scheduler_interval_s: float = 60.0
    # --- retention (rampart/server/retention.py, docs/alerts.md "Retention") ---
    #: Resolved findings older than this many days are deleted (open ones never are).
    finding_retention_days: int = 90
    #: Resolved alerts older than this many days are deleted (open, acknowledged or with a notification
    #: still queued: never).
    alert_retention_days: int = 180
    #: Days after retirement at which every record of a retired device is removed (its audit entries stay).
    retired_device_retention_days: int = 90
    #: Days a deleted tenant's audit log is kept (``rampart tenant delete``), then removed whole.
    deleted_tenant_audit_days: int = 365
    #: How often the retention sweep runs, and how many rows one of its transactions deletes at most.
    retention_interval_s: float = 3600.0
    retention_batch: int = 1000

    @property
    def overdue_after_s(self) -> float:
        return self.inventory_interval_s * self.overdue_intervals

    def admission_limits(self) -> AdmissionLimits:
        """The handshake admission (:mod:`.admission`) these limits configure."""
        return AdmissionLimits(slots=self.handshake_slots, queue=self.handshake_queue,
                               wait_s=self.handshake_wait_s)

    def budget_limits(self) -> BudgetLimits:
        """The per-device budgets (:mod:`.device_budget`) these limits configure."""
        return BudgetLimits(
            bytes_burst=self.device_bytes_burst, bytes_per_s=self.device_bytes_per_s,
            report_burst=self.inventory_burst,
            report_period_s=min(self.inventory_refill_s, self.inventory_interval_s / 2),
            check_burst=self.check_result_burst, check_per_s=self.check_result_per_s,
            abuse_refusals=self.abuse_refusals, abuse_window_s=self.abuse_window_s,
            abuse_block_s=self.abuse_block_s, abuse_block_max_s=self.abuse_block_max_s,
            abuse_alert_interval_s=self.abuse_alert_interval_s)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    data_dir: Path
    db_url: str
    public_url: str | None = None
    limits: ServerLimits = field(default_factory=ServerLimits)
    #: M5: allow one operator key in several tenants' roots (off: one key per tenant).
    shared_operator_keys: bool = False
    #: SMTP relay for alert e-mail: host, port, from, starttls, implicit_tls, username,
    #: password_env (the name of an environment variable; never the password itself).
    smtp: dict[str, Any] | None = None
    #: Agent gateway URLs enrolling agents are told to try in turn (docs/scale-out.md); empty: the
    #: gateway on the host they enrolled with.
    agent_gateways: tuple[str, ...] = ()

    @property
    def cert_path(self) -> Path:
        return self.data_dir / "tls" / "cert.pem"

    @property
    def key_path(self) -> Path:
        return self.data_dir / "tls" / "key.pem"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"


def default_sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir.resolve() / 'rampart.db'}"


def normalise_db_url(url: str) -> str:
    """Accept ``sqlite:///…`` and ``postgresql://…``; use psycopg 3 for PostgreSQL."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("postgresql+psycopg://") or url.startswith("sqlite:///"):
        return url
    raise SetupError("database URL must start with sqlite:/// or postgresql://")


def load_config(data_dir: Path) -> ServerConfig:
    """Read ``DIR/config.json``; refuse an uninitialised directory."""
    path = data_dir / CONFIG_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SetupError(f"{data_dir} is not initialised: run `rampart server init`") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise SetupError(f"{path} is too large")
    try:
        doc = json.loads(raw)
    except ValueError:
        raise SetupError(f"{path} is not valid JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("db_url"), str):
        raise SetupError(f"{path} must hold a db_url")
    public = doc.get("public_url")
    if public is not None and not isinstance(public, str):
        raise SetupError(f"{path}: public_url must be a string or null")
    shared = doc.get("shared_operator_keys", False)
    if not isinstance(shared, bool):
        raise SetupError(f"{path}: shared_operator_keys must be true or false")
    interval = doc.get("inventory_interval_s", DEFAULT_INVENTORY_INTERVAL_S)
    if (isinstance(interval, bool) or not isinstance(interval, int | float)
            or not 1 <= interval <= 86400):
        raise SetupError(f"{path}: inventory_interval_s must be a number of seconds in 1..86400")
    tick = doc.get("scheduler_interval_s", 60.0)
    if isinstance(tick, bool) or not isinstance(tick, int | float) or not 0.5 <= tick <= 3600:
        raise SetupError(f"{path}: scheduler_interval_s must be a number of seconds in 0.5..3600")
    http: dict[str, Any] = {}
    for key, lo, hi in (("http_header_timeout_s", 1, 600), ("http_body_timeout_s", 1, 3600),
                        ("http_connections_per_address", 1, 100_000), ("witness_wait_s", 1, 3600),
                        ("redelivery_interval_s", 1, 3600), ("handshake_slots", 1, 10_000),
                        ("handshake_queue", 0, 1_000_000), ("handshake_wait_s", 0.1, 600)):
        if key in doc:
            value = doc[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
                raise SetupError(f"{path}: {key} must be a number in {lo}..{hi}")
            whole = key.endswith(("address", "slots", "queue"))
            if whole and value != int(value):
                raise SetupError(f"{path}: {key} must be a whole number in {lo}..{hi}")
            http[key] = int(value) if whole else float(value)
    gateways: tuple[str, ...] = ()
    if doc.get("agent_gateways") is not None:
        try:
            gateways = tuple(check_gateway_urls(doc["agent_gateways"]))
        except ValueError as exc:
            raise SetupError(f"{path}: agent_gateways: {exc}") from None
    findings_days = _retention_days(doc, "finding_retention_days", 90, path)
    alerts_days = _retention_days(doc, "alert_retention_days", 180, path)
    retired_days = _retention_days(doc, "retired_device_retention_days", 90, path)
    audit_days = _retention_days(doc, "deleted_tenant_audit_days", 365, path)
    return ServerConfig(data_dir=data_dir, db_url=normalise_db_url(doc["db_url"]),
                        public_url=public, shared_operator_keys=shared,
                        smtp=_smtp(doc.get("smtp"), path), agent_gateways=gateways,
                        limits=ServerLimits(inventory_interval_s=float(interval),
                                            scheduler_interval_s=float(tick),
                                            finding_retention_days=findings_days,
                                            alert_retention_days=alerts_days,
                                            retired_device_retention_days=retired_days,
                                            deleted_tenant_audit_days=audit_days, **http))


#: Retention may be set from one day to ten years; "forever" is not offered (storage stays bounded).
MAX_RETENTION_DAYS = 3650


def _retention_days(doc: dict[str, Any], key: str, default: int, path: Path) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RETENTION_DAYS:
        raise SetupError(f"{path}: {key} must be a whole number of days in 1..{MAX_RETENTION_DAYS}")
    return value


SMTP_KEYS = {"host": str, "port": int, "from": str, "starttls": bool, "implicit_tls": bool,
             "username": str, "password_env": str}


def _smtp(doc: object, path: Path) -> dict[str, Any] | None:
    """Validate the ``smtp`` section (checked again, fully, when a message is sent)."""
    if doc is None:
        return None
    if isinstance(doc, dict) and "password" in doc:
        raise SetupError(f"{path}: put the SMTP password in an environment variable (password_env)")
    if not isinstance(doc, dict) or set(doc) - set(SMTP_KEYS) or not {"host", "from"} <= set(doc):
        raise SetupError(f"{path}: smtp must be an object with host and from (and optionally "
                         "port, starttls, implicit_tls, username, password_env)")
    for key, typ in SMTP_KEYS.items():
        if key in doc and doc[key] is not None and not isinstance(doc[key], typ):
            raise SetupError(f"{path}: smtp.{key} must be a {typ.__name__}")
    return dict(doc)


def write_config(data_dir: Path, db_url: str) -> None:
    doc = {"db_url": db_url, "public_url": None}
    (data_dir / CONFIG_FILE).write_text(json.dumps(doc, indent=1) + "\n")
