"""The posture report's evidence and verdicts: the CISA remote access guide and the CPG goals it cites,
each mapped to its status in one tenant from Rampart's own records (issue 19; docs/compliance.md).

Invariants:

* Every verdict is computed here from rows read in one read snapshot (accounts, keys, devices,
  inventories, findings, pending updates, patch policies, backup results, notification targets,
  the audit log and its checkpoint, the service statement and incident notices); nothing is
  hard-coded to "met". A recommendation Rampart cannot see (the customer's network, say) is
  ``outside``, never ``met``.
* Values that a device reported (hostnames, tool evidence, finding subjects) are carried as plain
  strings; whoever renders them escapes them (:mod:`.report`). Nothing here is signed: the report is
  information for people, not something an agent obeys.
* The service statement (C1, M7) is a tenant's own row; the incident notices record, per critical
  alert, the deadline in force when it opened and when the contact target took it
  (:func:`.alerts.record_notices`, :func:`.alerts.notice_delivered`).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from rampart.catalog import Catalog
from rampart.trust import TrustError, merkle, verify_checkpoint

from .access import is_dormant
from .audit import AuditLog
from .backups import device_backups
from .directory import DirectoryFinding, DirectoryRow
from .errors import BadRequest
from .models import (
    Account,
    AccountTenant,
    AlertRow,
    AuditEntry,
    AuditLogRow,
    CheckpointRow,
    Device,
    DeviceInventory,
    FindingRow,
    GrantRow,
    IncidentNotice,
    NotifyTarget,
    OperatorKeyRow,
    PatchPolicy,
    PendingUpdateRow,
    SanctionedTool,
    ServiceStatement,
    SessionRecording,
    Tenant,
)
from .tenant_roots import current_root, trusted_from_store

Status = Literal["met", "partial", "not-met", "outside"]
STATUSES: Final[tuple[Status, ...]] = ("met", "partial", "not-met", "outside")
DAY: Final = 86400.0
#: Security updates pending longer than this fail 1.E / H5 (CISA: "regular patch cadence").
PATCH_LATE_DAYS: Final = 30
#: Security updates pending longer than this make 1.E / H5 partial.
PATCH_DUE_DAYS: Final = 14
#: A device without an inventory this recent is missing from the asset inventory (1.A).
INVENTORY_FRESH_DAYS: Final = 7
PASSKEY_PREFIX: Final = "rampart-passkey-id:"
_PRIVILEGED: Final = ("owner", "approver", "technician")
#: Limits of the service statement's fields.
MAX_SERVICES: Final = 30
MAX_LINE: Final = 200
MAX_TEXT: Final = 4000
MIN_DEADLINE_S: Final = 60
MAX_DEADLINE_S: Final = 30 * 86400


@dataclass(frozen=True, slots=True)
class Control:
    """One recommendation or goal, its status in the tenant and the records that say so."""

    id: str
    source: str
    title: str
    status: Status
    evidence: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    value: int
    status: Status


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    bars: tuple[Bar, ...]


@dataclass(frozen=True, slots=True)
class ToolSeen:
    hostname: str
    device: str
    tool: str
    sanctioned: bool


@dataclass(frozen=True, slots=True)
class Notice:
    alert_id: str
    kind: str
    subject: str
    opened_at: float
    deadline_s: int
    notified_at: float | None
    #: held, missed, or pending (not notified yet and the deadline not passed).
    verdict: str


@dataclass(slots=True)
class Posture:
    tenant_id: str
    tenant_name: str
    generated_at: float
    statement: dict[str, Any] | None
    controls: list[Control] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)
    tools: list[ToolSeen] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        c = Counter(x.status for x in self.controls)
        return {s: c.get(s, 0) for s in STATUSES}

    def to_doc(self) -> dict[str, Any]:
        return {"tenant": self.tenant_id, "name": self.tenant_name, "generated_at": self.generated_at,
                "summary": self.summary(), "statement": self.statement,
                "controls": [{"id": c.id, "source": c.source, "title": c.title, "status": c.status,
                              "evidence": list(c.evidence)} for c in self.controls],
                "notices": [{"alert": n.alert_id, "kind": n.kind, "subject": n.subject,
                             "opened_at": n.opened_at, "deadline_s": n.deadline_s,
                             "notified_at": n.notified_at, "verdict": n.verdict} for n in self.notices],
                "tools": [{"device": t.device, "hostname": t.hostname, "tool": t.tool,
                           "sanctioned": t.sanctioned} for t in self.tools]}


# --- the service statement -----------------------------------------------------------------------


def statement_doc(s: Session, tenant_id: str) -> dict[str, Any] | None:
    st = s.get(ServiceStatement, tenant_id)
    if st is None:
        return None
    target = s.get(NotifyTarget, st.contact_target) if st.contact_target else None
    return {"tenant": tenant_id, "services": json.loads(st.services), "contact": st.contact_name,
            "contact_target": st.contact_target,
            "contact_target_name": target.name if target else None,
            "contact_target_kind": target.kind if target else None,
            "deadline_s": st.deadline_s, "incident_response": st.incident_response,
            "recovery": st.recovery, "updated_by": st.updated_by, "updated_at": st.updated_at}


def _line(text: str, what: str, limit: int) -> str:
    if len(text) > limit:
        raise BadRequest(f"{what} is longer than {limit} characters")
    if any(ord(ch) < 32 and ch not in "\n\t" for ch in text):
        raise BadRequest(f"{what} holds control characters")
    return text.strip()


def set_statement(s: Session, tenant_id: str, *, services: list[str] | None, contact: str | None,
                  contact_target: str | None, deadline_s: int | None, incident_response: str | None,
                  recovery: str | None, actor: str, now: float) -> dict[str, Any]:
    """Create or change the tenant's statement; a field given as None keeps its value.

    The contact target must be a webhook or e-mail target of this same tenant (an MSP-wide target or
    another tenant's is refused: the customer's contact is the customer's). ``contact_target`` ""
    clears it.
    """
    st = s.get(ServiceStatement, tenant_id)
    if st is None:
        if deadline_s is None:
            raise BadRequest("a new statement needs a notification deadline (deadline_s)")
        st = ServiceStatement(tenant_id=tenant_id, services="[]", contact_name="", contact_target=None,
                              deadline_s=deadline_s, incident_response="", recovery="",
                              updated_by=actor, updated_at=now)
        s.add(st)
    if services is not None:
        if len(services) > MAX_SERVICES:
            raise BadRequest(f"at most {MAX_SERVICES} services")
        clean = [_line(x, "a service", MAX_LINE) for x in services]
        if any("\n" in x for x in clean):
            raise BadRequest("a service is one line")
        st.services = json.dumps([x for x in clean if x])
    if contact is not None:
        st.contact_name = _line(contact, "the contact", MAX_LINE).replace("\n", " ")
    if contact_target is not None:
        if contact_target == "":
            st.contact_target = None
        else:
            t = s.get(NotifyTarget, contact_target)
            if t is None or t.tenant_id != tenant_id or t.kind not in ("webhook", "email"):
                raise BadRequest("the contact target must be one of this tenant's webhook or e-mail "
                                 "notification targets")
            st.contact_target = t.id
    if deadline_s is not None:
        if not MIN_DEADLINE_S <= deadline_s <= MAX_DEADLINE_S:
            raise BadRequest(f"the deadline must be between {MIN_DEADLINE_S} s and 30 days")
        st.deadline_s = deadline_s
    if incident_response is not None:
        st.incident_response = _line(incident_response, "the incident response text", MAX_TEXT)
    if recovery is not None:
        st.recovery = _line(recovery, "the recovery text", MAX_TEXT)
    st.updated_by, st.updated_at = actor, now
    s.flush()
    doc = statement_doc(s, tenant_id)
    assert doc is not None
    return doc


def notice_verdict(n: IncidentNotice, now: float) -> str:
    due = n.opened_at + n.deadline_s
    if n.notified_at is not None:
        return "held" if n.notified_at <= due else "missed"
    return "missed" if now > due else "pending"


# --- evidence ------------------------------------------------------------------------------------


def _accounts(s: Session, tenant_id: str) -> list[Account]:
    members = select(AccountTenant.account_id).where(AccountTenant.tenant_id == tenant_id)
    return list(s.scalars(select(Account).where(or_(Account.all_tenants.is_(True), Account.id.in_(members)))
                          .order_by(Account.username)))


def _verify_log(s: Session, tenant_id: str, now: float) -> tuple[bool | None, str]:
    """(verified, why): the latest checkpoint's signature under the tenant's current root and its Merkle
    root recomputed from the stored entries; None when there is no checkpoint yet."""
    cp = AuditLog.latest_checkpoint(s, tenant_id)
    if cp is None:
        return None, "no signed checkpoint yet"
    root_row = current_root(s, tenant_id)
    if root_row is None:
        return False, "no tenant root to check the checkpoint's signature against"
    try:
        verify_checkpoint(trusted_from_store(root_row.envelope), cp.envelope, now=int(now), witnessed=False)
    except TrustError as exc:
        return False, f"the checkpoint's signature does not verify: {exc}"
    leaves = list(s.scalars(select(AuditEntry.leaf_hash).where(
        AuditEntry.log_id == tenant_id, AuditEntry.idx < cp.size).order_by(AuditEntry.idx)))
    if len(leaves) != cp.size or merkle.root_from_leaf_hashes(leaves).hex() != cp.root:
        return False, f"the stored entries do not hash to the checkpoint of size {cp.size}"
    return True, f"checkpoint of {cp.size} entries: signature valid under root v{root_row.version}, " \
                 f"Merkle root recomputed from the stored entries matches"


def _directory_status(s: Session, tenant_id: str, now: float) -> tuple[Any, ...]:
    """G3 from the tenant's directory audits: (status, evidence...). Not met with no directory
    audited, with an audit that failed or is overdue (twice its interval), or with open critical
    findings (disabled or stale accounts still privileged); partly met with open warnings."""
    dirs = list(s.scalars(select(DirectoryRow).where(DirectoryRow.tenant_id == tenant_id)
                          .order_by(DirectoryRow.name)))
    if not dirs:
        return ("not-met", "no directory is audited: `rampart directory add` audits an Active "
                "Directory or LDAP directory for inactive, stale and privileged accounts")
    open_ = list(s.scalars(select(DirectoryFinding).where(DirectoryFinding.tenant_id == tenant_id,
                                                          DirectoryFinding.resolved_at.is_(None))))
    by_severity = Counter(f.severity for f in open_)
    by_kind = Counter(f.kind for f in open_)
    late = [d for d in dirs if d.last_status != "ok" or d.last_run_at is None
            or d.last_run_at < now - 2 * d.every_s]
    status: Status = "not-met" if late or by_severity.get("critical") else \
        ("partial" if by_severity.get("warning") else "met")
    runs = "; ".join(f"{d.name}: " + (f"audited {_day(d.last_run_at)} ({d.last_status})"
                                      if d.last_run_at else "never audited") for d in dirs)
    return (status, f"{len(dirs)} directory(ies) audited every "
            f"{', '.join(sorted({_dur(d.every_s) for d in dirs}))}: {runs}",
            f"open findings: {by_severity.get('critical', 0)} critical, {by_severity.get('warning', 0)} "
            f"warning, {by_severity.get('info', 0)} info"
            + ("" if not by_kind else " (" + ", ".join(f"{k} {n}" for k, n in sorted(by_kind.items())) + ")"),
            "details: `rampart directory findings`")


def _witness_line(s: Session, tenant_id: str, root: Any) -> str:
    """What the tenant's outside witnesses vouch for (docs/design/witness.md)."""
    trusted = trusted_from_store(root.envelope) if root is not None else None
    if trusted is None or not trusted.witnesses:
        return "no outside witness co-signs the log (`rampart witness run`, named in the root)"
    need = trusted.root.policy.witnesses_required
    newest = s.scalars(select(CheckpointRow).where(CheckpointRow.log_id == tenant_id)
                       .order_by(CheckpointRow.size.desc()).limit(64)).all()
    cosigned = next((c for c in newest if AuditLog.witnessed(c.envelope, frozenset(trusted.witnesses))), None)
    seen = f"newest co-signed checkpoint: {cosigned.size} entries" if cosigned is not None else \
        "no recent checkpoint co-signed yet"
    return (f"{len(trusted.witnesses)} outside witness(es) in the root; agents require {need} "
            f"co-signature(s) per job; {seen}")


def _worst(*statuses: Status) -> Status:
    order = {"not-met": 0, "partial": 1, "met": 2, "outside": 3}
    return min(statuses, key=lambda x: order[x])


def collect(s: Session, tenant: Tenant, now: float, *, catalog: Catalog | None = None,
            overdue_after_s: float = INVENTORY_FRESH_DAYS * DAY) -> Posture:
    """Read the tenant's records (one snapshot) and map every control to its status."""
    t = tenant.id
    p = Posture(t, tenant.name, now, statement_doc(s, t))

    # accounts, MFA, passkeys, dormancy, roles
    accounts = _accounts(s, t)
    enabled = [a for a in accounts if a.disabled_at is None]
    no_mfa = [a for a in enabled if not a.totp_confirmed]
    dormant_live = [a for a in enabled if is_dormant(s, a, now)]
    revoked = [a for a in accounts if a.disabled_reason == "revoked"]
    dormant_off = [a for a in accounts if a.disabled_reason == "dormant"]
    roles = Counter(a.role for a in enabled)
    keys = list(s.scalars(select(OperatorKeyRow).where(
        OperatorKeyRow.account_id.in_([a.id for a in enabled] or [-1]))))
    passkey_accounts = {k.account_id for k in keys if k.public.startswith(PASSKEY_PREFIX)
                        and k.tenant_id in (None, t)}
    signers = [a for a in enabled if a.role in _PRIVILEGED]
    signers_without_passkey = [a for a in signers if a.id not in passkey_accounts]
    shared_keys = [k for k in keys if k.tenant_id is None and not k.public.startswith(PASSKEY_PREFIX)]
    locked = [a for a in enabled if a.locked_until > now]
    lockout_alerts = int(s.scalar(select(func.count()).select_from(AlertRow).where(
        AlertRow.tenant_id == t, AlertRow.kind == "account-locked",
        AlertRow.first_seen > now - 90 * DAY)) or 0)

    # devices and inventory
    devices = list(s.scalars(select(Device).where(Device.tenant_id == t, Device.retired_at.is_(None))))
    approved = [d for d in devices if d.status == "approved"]
    inv = dict(s.execute(select(DeviceInventory.device_id, DeviceInventory.updated_at).where(
        DeviceInventory.device_id.in_([d.id for d in devices] or ["-"]))).tuples().all())
    fresh_since = now - max(overdue_after_s, INVENTORY_FRESH_DAYS * DAY)
    fresh = [d for d in approved if inv.get(d.id, 0) >= fresh_since]
    pending = [d for d in devices if d.status == "pending"]

    # tools: sanctioned and found
    sanctioned = set(s.scalars(select(SanctionedTool.slug).where(SanctionedTool.tenant_id == t)))

    def is_sanctioned(slug: str) -> bool:
        tool = catalog.get(slug) if catalog is not None else None
        return slug in sanctioned or (tool is not None and bool({tool.slug, *tool.aliases} & sanctioned))

    hosts = {d.id: d.hostname for d in devices}
    for dev, tools_text in s.execute(select(DeviceInventory.device_id, DeviceInventory.tools).where(
            DeviceInventory.device_id.in_(list(hosts) or ["-"]))).tuples():
        try:
            found = json.loads(tools_text)
        except ValueError:
            found = []
        for doc in found if isinstance(found, list) else []:
            if isinstance(doc, dict) and isinstance(doc.get("slug"), str):
                p.tools.append(ToolSeen(hosts.get(dev, dev), dev, doc["slug"], is_sanctioned(doc["slug"])))
    p.tools.sort(key=lambda x: (x.sanctioned, x.hostname, x.tool))
    unsanctioned = [x for x in p.tools if not x.sanctioned]

    findings = list(s.scalars(select(FindingRow).where(
        FindingRow.tenant_id == t, FindingRow.resolved_at.is_(None))
        .order_by(FindingRow.severity, FindingRow.device_id).limit(200)))
    by_kind = Counter(f.kind for f in findings)
    p.findings = [{"hostname": hosts.get(f.device_id, f.device_id), "kind": f.kind, "severity": f.severity,
                   "tool": f.tool, "subject": f.subject} for f in findings[:50]]

    # patches
    sec = list(s.execute(select(PendingUpdateRow.device_id, func.min(PendingUpdateRow.security_since)).where(
        PendingUpdateRow.device_id.in_([d.id for d in approved] or ["-"]),
        PendingUpdateRow.security_since.is_not(None)).group_by(PendingUpdateRow.device_id)).tuples())
    sec_age = {dev: (now - since) / DAY for dev, since in sec if since is not None}
    late = [d for d, age in sec_age.items() if age > PATCH_LATE_DAYS]
    due = [d for d, age in sec_age.items() if PATCH_DUE_DAYS < age <= PATCH_LATE_DAYS]
    policies = int(s.scalar(select(func.count()).select_from(PatchPolicy).where(
        PatchPolicy.tenant_id == t, PatchPolicy.enabled.is_(True))) or 0)

    # backups
    backups = device_backups(s, t, now)
    b_state = Counter(b.state(now)[0] for b in backups)
    without_backup = len(approved) - len({b.device_id for b in backups if b.policy is not None})

    # notification targets, log export, the audit log
    targets = list(s.scalars(select(NotifyTarget).where(
        or_(NotifyTarget.tenant_id == t, NotifyTarget.tenant_id.is_(None)))))
    syslog = [x for x in targets if x.kind == "syslog"]
    alerting = [x for x in targets if x.kind in ("webhook", "email") and x.min_severity != "critical"]
    log_size = int(s.scalar(select(AuditLogRow.size).where(AuditLogRow.id == t)) or 0)
    verified, why_log = _verify_log(s, t, now)
    grants_live = int(s.scalar(select(func.count()).select_from(GrantRow).where(
        GrantRow.tenant_id == t, GrantRow.revoked_at.is_(None), GrantRow.not_after > int(now))) or 0)
    recordings = int(s.scalar(select(func.count()).select_from(SessionRecording).where(
        SessionRecording.tenant_id == t)) or 0)
    networks = json.loads(tenant.allowed_networks or "[]")
    customers = roles.get("customer-viewer", 0)

    # notices
    for n in s.scalars(select(IncidentNotice).where(IncidentNotice.tenant_id == t)
                       .order_by(IncidentNotice.opened_at.desc()).limit(100)):
        p.notices.append(Notice(n.alert_id, n.kind, n.subject, n.opened_at, n.deadline_s, n.notified_at,
                                notice_verdict(n, now)))
    missed = [n for n in p.notices if n.verdict == "missed"]
    held = [n for n in p.notices if n.verdict == "held"]

    # --- verdicts -------------------------------------------------------------------------------
    def add(cid: str, source: str, title: str, status: Status, *evidence: str) -> None:
        p.controls.append(Control(cid, source, title, status, tuple(evidence)))

    role_text = ", ".join(f"{n} {r}" for r, n in sorted(roles.items())) or "none"
    acc_line = f"{len(enabled)} enabled account(s) reach this tenant ({role_text})"
    mfa_status: Status = "not-met" if no_mfa else "met"
    mfa_ev = [acc_line, f"{len(enabled) - len(no_mfa)} with TOTP confirmed; without MFA: "
              + (", ".join(a.username for a in no_mfa) or "none"),
              "Rampart refuses a login without a TOTP code; every device action also needs a signature by a "
              "key the person holds"]
    phish_status: Status = "not-met" if no_mfa else ("partial" if signers_without_passkey else "met")
    phish_ev = [*mfa_ev, f"{len(signers) - len(signers_without_passkey)} of {len(signers)} signing staff "
                "account(s) hold a passkey (phishing-resistant); without: "
                + (", ".join(a.username for a in signers_without_passkey) or "none")]
    inv_status: Status = "not-met" if not approved else ("met" if len(fresh) == len(approved) and not pending
                                                         else "partial")
    inv_ev = [f"{len(approved)} approved device(s), {len(fresh)} with an inventory from the last "
              f"{INVENTORY_FRESH_DAYS} days; {len(pending)} waiting for approval"]
    patch_status: Status = "not-met" if late or by_kind.get("vulnerable-tool") else \
        ("partial" if due or not policies or not approved else "met")
    patch_ev = [f"{len(sec_age)} device(s) with security updates pending; {len(late)} for more than "
                f"{PATCH_LATE_DAYS} days, {len(due)} for {PATCH_DUE_DAYS}-{PATCH_LATE_DAYS} days",
                f"{policies} enabled patch policy(ies)",
                f"{by_kind.get('vulnerable-tool', 0)} open vulnerable-tool finding(s)"]
    unique_status: Status = "partial" if shared_keys else "met"
    unique_ev = [acc_line, "each account is one person's: a unique name, its own password and TOTP",
                 f"{len(keys)} signing key(s) registered, each bound to one account; "
                 f"{len(shared_keys)} not bound to one tenant (used across customers)"]
    leave_status: Status = "not-met" if dormant_live else "met"
    leave_ev = [f"dormant after {tenant.dormant_days} days without login: disabled automatically",
                f"{len(revoked)} account(s) revoked, {len(dormant_off)} disabled as dormant",
                "enabled but dormant now: " + (", ".join(a.username for a in dormant_live) or "none")]
    owners = roles.get("owner", 0)
    priv_status: Status = "partial" if owners > 3 else "met"
    priv_ev = [acc_line, "roles are separate accounts: a technician signs jobs but never approves, an "
               "approver never approves their own request; read-only roles sign nothing",
               f"{owners} owner account(s)" + (" (more than 3)" if owners > 3 else "")]
    login_status: Status = "met" if alerting else "partial"
    login_ev = ["failed logins are throttled per name and address; an account is locked and an "
                "'account-locked' alert opened",
                f"{lockout_alerts} lockout alert(s) in the last 90 days; {len(locked)} account(s) locked now",
                f"{len(alerting)} webhook/e-mail target(s) receive warning alerts"
                + ("" if alerting else ": nobody is told of a lockout")]
    tool_status: Status = "not-met" if unsanctioned else "met"
    tool_ev = [f"sanctioned tools: {', '.join(sorted(sanctioned)) or 'none'}",
               f"{len(p.tools)} catalogued remote access tool(s) found on devices, "
               f"{len(unsanctioned)} not sanctioned",
               "jobs run only when signed under an approver-signed grant (allow-list by signature)"]
    logc_status: Status = "met" if syslog else "partial"
    logc_ev = [f"audit log: {log_size} entries (every job, receipt, grant, login refusal)",
               f"{len(syslog)} syslog forwarder(s) stream it to a SIEM" if syslog
               else "no syslog forwarder: the log is kept in Rampart only"]
    logs_status: Status = "not-met" if verified is False else ("met" if syslog and verified else "partial")
    logs_ev = [f"audit log verification: {why_log}",
               "forwarded off the server (the RMM cannot alter what the SIEM holds)" if syslog
               else "not forwarded off the server"]
    stmt = p.statement
    stmt_status: Status = "not-met" if stmt is None or not stmt["contact_target"] else \
        ("partial" if missed or not stmt["services"] else "met")
    stmt_ev = ["no service statement" if stmt is None else
               f"statement: {len(stmt['services'])} service(s); contact {stmt['contact'] or '(no name)'} via "
               f"{stmt['contact_target_kind'] or 'no target'}; deadline {_dur(stmt['deadline_s'])}",
               f"critical alerts notified: {len(held)} within the deadline, {len(missed)} missed"]
    bk_status: Status = "not-met" if b_state.get("failed") or b_state.get("stale") or b_state.get("never") \
        else ("partial" if b_state.get("unverified") or without_backup > 0 else "met")
    bk_ev = [f"backups: {b_state.get('ok', 0)} verified, {b_state.get('unverified', 0)} not verified lately, "
             f"{b_state.get('failed', 0)} failed, {b_state.get('stale', 0) + b_state.get('never', 0)} stale "
             f"or never; {max(without_backup, 0)} approved device(s) without a backup policy"]
    stated = stmt is not None and bool(stmt["incident_response"] and stmt["recovery"])
    ir_status: Status = _worst("met" if stated else "not-met", bk_status)
    ir_ev = ["incident response and recovery: " + ("stated" if stated else "not stated"), *bk_ev]
    outside = "outside Rampart's records: the customer's network and device hardening"

    # CPG goals cited by the guide
    add("1.A", "CPG", "Asset inventory", inv_status, *inv_ev)
    add("1.E", "CPG", "Mitigating known vulnerabilities", patch_status, *patch_ev)
    add("2.C", "CPG", "Unique credentials", unique_status, *unique_ev)
    add("2.D", "CPG", "Revoking credentials for departing staff", leave_status, *leave_ev)
    add("2.E", "CPG", "Separating user and privileged accounts", priv_status, *priv_ev)
    add("2.G", "CPG", "Detecting unsuccessful login attempts", login_status, *login_ev)
    add("2.H", "CPG", "Phishing-resistant MFA", phish_status, *phish_ev)
    add("2.Q", "CPG", "Software approval process", tool_status, *tool_ev)
    add("2.T", "CPG", "Log collection", logc_status, *logc_ev)
    add("2.U", "CPG", "Secure log storage", logs_status, *logs_ev)
    # the guide's recommendations (docs/compliance.md; IDs of MISSION.md)
    root = current_root(s, t)
    add("G1", "CISA", "Zero trust, least privilege", "met" if root is not None else "not-met",
        f"tenant root v{root.version} names who may sign what" if root else "no tenant root published",
        f"{grants_live} live time-boxed grant(s); every job names its devices and needs a signature",
        f"a new device is trusted only once approved ({len(pending)} waiting)")
    add("G2", "CISA", "Work with a SOC: events to SIEM", "met" if syslog else "not-met", *logc_ev[1:])
    add("G3", "CISA", "Audit directory accounts", *_directory_status(s, t, now))
    add("G4", "CISA", "Just-in-time access and two-factor authentication", _worst(mfa_status, "met"),
        f"{grants_live} live grant(s), each with an expiry", *mfa_ev[1:2])
    add("G5", "CISA", "Mass-scripting safeguards", "met" if tenant.mass_action_limit <= 10 else "partial",
        f"step-up MFA after {tenant.mass_action_limit} distinct devices per account per hour")
    add("G6", "CISA", "Software bill of materials", "met" if fresh else "not-met",
        f"{len(fresh)} device(s) with a current inventory, exportable as CycloneDX (`rampart sbom`)")
    add("G7", "CISA", "Visibility of the whole system", inv_status, *inv_ev)
    add("H1", "CISA", "Audit remote access software on devices", tool_status, *tool_ev[:2])
    add("H2", "CISA", "Detect RMM software loaded only in memory",
        "not-met" if by_kind.get("memory-only") else "met",
        f"{by_kind.get('memory-only', 0)} open memory-only finding(s)")
    add("H3", "CISA", "Keep logs of remote access use", "met" if log_size else "partial",
        f"{log_size} audit entries; {recordings} remote session recording(s) checked against signed receipts")
    add("H4", "CISA", "Application control for RMM", "met",
        "agents run only jobs signed under the tenant root; containment limits each job "
        "(docs/containment.md)")
    add("H5", "CISA", "Regular patch cadence", patch_status, *patch_ev[:2])
    add("N1", "CISA", "Network segmentation", "outside", outside)
    add("N2", "CISA", "Block unused RMM ports and protocols",
        "not-met" if by_kind.get("rat-port") else "outside",
        f"{by_kind.get('rat-port', 0)} device(s) listening on a remote access tool's port", outside)
    add("N3", "CISA", "RMM only through approved paths", "met" if networks else "partial",
        "operators may act from: " + (", ".join(str(n) for n in networks) if networks else "any address"))
    add("N4", "CISA", "Web application firewall", "outside", outside)
    add("C1", "CISA", "Statement of services and incident notification", stmt_status, *stmt_ev)
    add("C2", "CISA", "Customers see the provider's activity", "met" if customers else "partial",
        f"{customers} customer-viewer account(s): the portal shows every job, session and audit entry")
    add("C3", "CISA", "Incidents go to a SOC", "met" if targets else "not-met",
        f"{len(targets)} notification target(s) (tenant and MSP-wide)")
    add("C4", "CISA", "Logs out of the RMM's reach", logs_status, *logs_ev, _witness_line(s, t, root))
    add("M1", "CISA", "Hardened devices", "outside", outside)
    add("M2", "CISA", "MFA on every customer service", mfa_status, *mfa_ev)
    add("M3", "CISA", "Reduced-privilege roles", "met",
        "roles: " + (", ".join(f"{n} {r}" for r, n in sorted(roles.items())) or "none"))
    add("M4", "CISA", "Internal architecture risk", "outside", outside)
    add("M5", "CISA", "Customers isolated; no credential reused", unique_status, *unique_ev[2:])
    add("M6", "CISA", "No end-of-life software", "not-met" if by_kind.get("eol-os") else "met",
        f"{by_kind.get('eol-os', 0)} device(s) with an end-of-life OS")
    add("M7", "CISA", "Incident response and recovery statement", ir_status, *ir_ev)

    # --- charts -----------------------------------------------------------------------------------
    summary = p.summary()
    names: tuple[tuple[Status, str], ...] = (
        ("met", "met"), ("partial", "partly met"), ("not-met", "not met"), ("outside", "outside Rampart"))
    p.charts.append(Chart("Controls by status", tuple(Bar(lbl, summary[st], st) for st, lbl in names)))
    p.charts.append(Chart("Accounts", (Bar("with MFA", len(enabled) - len(no_mfa), "met"),
                                       Bar("without MFA", len(no_mfa), "not-met"),
                                       Bar("dormant, still enabled", len(dormant_live), "not-met"),
                                       Bar("signing staff with passkey",
                                           len(signers) - len(signers_without_passkey), "met"))))
    current = len([d for d in approved if d.id not in sec_age])
    p.charts.append(Chart("Security updates pending, by age", (
        Bar("none pending", current, "met"),
        Bar(f"up to {PATCH_DUE_DAYS} days", len(sec_age) - len(late) - len(due), "partial"),
        Bar(f"{PATCH_DUE_DAYS}-{PATCH_LATE_DAYS} days", len(due), "partial"),
        Bar(f"over {PATCH_LATE_DAYS} days", len(late), "not-met"))))
    p.charts.append(Chart("Backups", (
        Bar("verified", b_state.get("ok", 0), "met"), Bar("not verified lately", b_state.get("unverified", 0),
                                                         "partial"),
        Bar("failed or stale", b_state.get("failed", 0) + b_state.get("stale", 0) + b_state.get("never", 0),
            "not-met"),
        Bar("no policy", max(without_backup, 0), "partial"))))
    tools_by = Counter((x.tool, x.sanctioned) for x in p.tools)
    p.charts.append(Chart("Remote access tools found (devices)", tuple(
        Bar(f"{tool} ({'sanctioned' if ok else 'NOT sanctioned'})", n, "met" if ok else "not-met")
        for (tool, ok), n in sorted(tools_by.items(), key=lambda kv: (kv[0][1], kv[0][0])))[:12]))
    return p


def _day(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(when))


def _dur(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
