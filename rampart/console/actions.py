"""What the local console does, through the CLI's own flows: read, verify locally, then sign.

Every function here is synchronous and runs in a worker thread under :data:`LOCK` (one
operation at a time, so the key passphrase handed to :func:`rampart.cli.common.key_passphrase`
reaches only the operation it was typed for). They use the operator's CLI state exactly as
``rampart`` does: the session and pinned certificate of ``rampart login``
(:meth:`rampart.cli.client.Client.for_config`), the encrypted key files, the locally trusted
and pinned roots (:func:`rampart.cli.common.trusted_root`).

Security invariants (docs/design/web-console.md, "Part 3"):

* What a page shows of a grant is what :func:`rampart.cli.grant_cmds.review_grant` decoded
  from the signed payload and counted against the operator's own trusted root: names of
  keys come from that root, never from the server's summary (which is only compared).
* An approval signs only the payload whose SHA-256 the approver reviewed
  (:func:`rampart.cli.grant_cmds.approve_grant` with ``reviewed_sha256``), after every check
  ``rampart grant approve`` makes.
* A job is built here from what the operator typed and selected, and signed by
  :func:`rampart.cli.job_cmds.sign_script_job` after the grant verified locally; the page
  that follows it shows the job as signed here (kept in memory), and the receipts as the
  server reports them.
* The passphrase is used for one operation and dropped; it is never logged or shown. An
  empty one is refused before any key file is read (the CLI would prompt on the terminal).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final, cast

from rampart import trust
from rampart.cli.client import STEP_UP_PATH, Client, expect_dict, expect_list, field
from rampart.cli.common import (
    envelope_bytes,
    key_passphrase,
    refusing,
    require_pin,
    trusted_root,
)
from rampart.cli.config import Config, Session
from rampart.cli.errors import CliError, Refused, ServerProblem, UsageProblem
from rampart.cli.grant_cmds import (
    approval_key,
    approve_grant,
    check_summary,
    decode_grant,
    grant_doc,
    request_grant,
    review_grant,
)
from rampart.cli.job_cmds import MAX_SCRIPT_BYTES, sign_script_job, submit_job
from rampart.cli.output import parse_duration
from rampart.cli.root_cmds import (
    confirm_added_keys,
    get_proposal,
    publish_proposal,
    review_lines,
    sign_proposal,
    unsupported_changes,
)
from rampart.trust import ALL_CAPABILITIES, Job, TrustedRoot, default_key_name, key_fingerprint_b64, root_diff

#: One operation at a time (the passphrase override of the CLI is process-wide).
LOCK: Final = threading.Lock()
#: Most devices a page lists (a tenant page, the devices of a grant).
MAX_DEVICES_SHOWN: Final = 500
MAX_REASON_CHARS: Final = 500


class ConsoleClient(Client):
    """The CLI's pinned client; a step-up uses the TOTP code typed into the form, if any."""

    step_up_code: str | None = None

    def step_up(self, why: str) -> None:
        code = (self.step_up_code or "").strip().replace(" ", "")
        self.step_up_code = None
        if not (code.isdigit() and len(code) == 6):
            raise UsageProblem(f"{why}: type a fresh TOTP code into the step-up field and try again")
        self.request("POST", STEP_UP_PATH, json={"code": code}, _retried=True)


@contextmanager
def connected(cfg: Config, step_up_code: str | None = None) -> Iterator[tuple[ConsoleClient, Session]]:
    """The operator's logged-in client (from the CLI's session file, read again each time)."""
    client, session = ConsoleClient.for_config(cfg)
    console_client = cast(ConsoleClient, client)
    console_client.step_up_code = step_up_code or None
    try:
        yield console_client, session
    finally:
        client.close()


@contextmanager
def passphrase(value: str) -> Iterator[None]:
    """The typed key passphrase, for the keys unlocked inside the block only."""
    if not value:
        raise UsageProblem("type your key passphrase to sign")
    with key_passphrase(value):
        yield


def _can_sign(cfg: Config, tenant_id: str, root: TrustedRoot) -> str | None:
    """None if this operator may sign for the tenant (a pinned root), else why not."""
    try:
        require_pin(cfg, tenant_id, root)
    except Refused as exc:
        return exc.message
    return None


def _root_doc(cfg: Config, session: Session, root: TrustedRoot) -> dict[str, Any]:
    mine = cfg.key_candidates(session.username, root.tenant)
    return {
        "tenant": root.tenant, "name": root.root.name, "version": root.version,
        "sha256": root.sha256, "expires": root.root.expires,
        "cannot_sign": _can_sign(cfg, root.tenant, root),
        "keys": [{"keyid": k.keyid, "label": k.name, "roles": root.root.roles_of(k.keyid)} for k in mine],
    }


def home(cfg: Config) -> dict[str, Any]:
    """The session, and the tenants this account reaches (names: the server's, shown as text)."""
    with connected(cfg) as (client, session):
        tenants = [t for t in expect_list(client.get("/tenants"), "tenants") if isinstance(t, dict)]
    out = []
    for t in tenants:
        tid = t.get("id")
        if not isinstance(tid, str):
            continue
        local = cfg.load_root_bytes(tid) if _safe_id(tid) else None
        out.append({"id": tid, "name": t.get("name"), "pinned": cfg.load_pin(tid) is not None
                    if _safe_id(tid) else False, "local_root": local is not None})
    return {"session": session, "tenants": out}


def _safe_id(text: str) -> bool:
    return text.replace("-", "").replace("_", "").isalnum() and 0 < len(text) <= 64


def _devices(client: Client, tenant_id: str) -> list[dict[str, Any]]:
    docs = expect_list(client.get(f"/tenants/{tenant_id}/devices"), "devices")
    return [d for d in docs if isinstance(d, dict) and isinstance(d.get("id"), str)][:MAX_DEVICES_SHOWN]


def grant_row(root: TrustedRoot, summary: dict[str, Any], mine: set[str]) -> dict[str, Any]:
    """One grant of a list, decoded and counted against ``root``, or why it cannot be shown."""
    gid = summary.get("id")
    try:
        data = envelope_bytes(summary, "grant")
        _, g = decode_grant(data)
        if g.id != gid or g.tenant != root.tenant:
            raise Refused("the server lists this grant under another id or tenant")
        try:
            status = trust.grant_status(root, data)
        except trust.TrustError as exc:
            raise Refused(f"grant: {exc}") from exc
        devices = check_summary(summary, g)
    except CliError as exc:
        return {"id": gid, "error": exc.message}
    doc = grant_doc(g, root, status, summary.get("status"), devices)
    doc["mine"] = g.grantee in mine
    doc["usable"] = (doc["mine"] and status.complete and g.not_before <= time.time() < g.not_after
                     and summary.get("status") != "revoked")
    return doc


def tenant(cfg: Config, tenant_id: str, passkeys: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The trusted root, this operator's keys in it, the grants (decoded here), the devices.

    ``passkeys``: key ids of this operator's passkeys (their grants are this operator's too)."""
    with connected(cfg) as (client, session):
        root = trusted_root(cfg, client, tenant_id)
        summaries = [d for d in expect_list(client.get(f"/tenants/{tenant_id}/grants"), "grants")
                     if isinstance(d, dict)]
        devices = _devices(client, tenant_id)
    mine = {k.keyid for k in cfg.key_candidates(session.username, tenant_id)} | passkeys
    rows = [grant_row(root, s, mine) for s in summaries]
    for row in rows:
        row["passkey"] = row.get("grantee") in passkeys
    return {"session": session, "root": _root_doc(cfg, session, root),
            "grants": rows, "devices": devices,
            "capabilities": [c for c in ALL_CAPABILITIES if c in root.root.policy.capabilities]}


def review(cfg: Config, grant_id: str) -> dict[str, Any]:
    """A grant decoded against the trusted root, and whether (or why not) this operator may approve it."""
    with connected(cfg) as (client, session):
        r = review_grant(cfg, client, grant_id)
    try:
        approval_key(cfg, session, r)
        cannot = None
    except CliError as exc:
        cannot = exc.message
    doc = r.doc()
    doc["payload_sha256"] = r.payload_sha256
    return {"session": session, "grant": doc, "root": _root_doc(cfg, session, r.root),
            "cannot_approve": cannot}


def approve(cfg: Config, grant_id: str, *, reviewed_sha256: str, key_passphrase_text: str,
            step_up_code: str | None) -> dict[str, Any]:
    """Sign the reviewed grant with this operator's approver key (every CLI check first)."""
    if len(reviewed_sha256) != 64:
        raise UsageProblem("review the grant before approving it")
    with passphrase(key_passphrase_text), connected(cfg, step_up_code) as (client, session):
        doc = approve_grant(cfg, client, session, grant_id, confirm=False, show=False,
                            reviewed_sha256=reviewed_sha256)
    return {"session": session, "grant": doc}


def request(cfg: Config, tenant_id: str, *, devices: list[str], capabilities: list[str],
            duration: str, reason: str, passkeys: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Ask for a grant for this operator's technician key; it must say exactly what was asked."""
    if not devices:
        raise UsageProblem("select at least one device")
    if not capabilities:
        raise UsageProblem("select at least one capability")
    if not reason.strip() or len(reason) > MAX_REASON_CHARS:
        raise UsageProblem(f"give a reason (at most {MAX_REASON_CHARS} characters) for the approvers")
    seconds = parse_duration(duration, what="duration")
    with connected(cfg) as (client, session):
        root = trusted_root(cfg, client, tenant_id)
        gid, grant = request_grant(cfg, client, session, tenant_id, devices=devices,
                                   capabilities=capabilities, duration_s=seconds, reason=reason,
                                   passkeys=passkeys)
    return {"session": session, "id": gid,
            "grant": grant_doc(grant, root, None, "requested", sorted(devices))}


def run_form(cfg: Config, tenant_id: str, grant_id: str | None,
             passkeys: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The grants this operator can run under now, and the devices the chosen one covers."""
    view = tenant(cfg, tenant_id, passkeys)
    usable = [g for g in view["grants"] if g.get("usable")]
    chosen = next((g for g in usable if g["id"] == grant_id), None) if grant_id else None
    names = {d["id"]: d.get("hostname") for d in view["devices"]}
    covered = [{"id": d, "hostname": names.get(d)} for d in (chosen["devices"] if chosen else [])]
    view.update(usable=usable, chosen=chosen, covered=covered[:MAX_DEVICES_SHOWN])
    return view


def run_script(cfg: Config, tenant_id: str, *, grant_id: str, devices: list[str], script: str,
               timeout_s: str, key_passphrase_text: str, step_up_code: str | None,
               signed: dict[str, dict[str, Any]]) -> str:
    """Sign a script job locally under ``grant_id`` for ``devices``, send it; its id.

    ``signed`` (this launch's memory) receives what was signed, for the job's page.
    """
    body, timeout = script_job_input(devices, script, timeout_s)
    with passphrase(key_passphrase_text), connected(cfg, step_up_code) as (client, session):
        envelope, job, targets = sign_script_job(cfg, client, session, tenant_id, grant_id=grant_id,
                                        devices=devices, script=body, writes=[], connect=[],
                                        as_root=False, timeout_s=timeout, lifetime_s=3600)
        doc = submit_job(client, tenant_id, envelope, {"script": body}, job, targets)
    if field(doc, "id", str, "job") != job.id:
        raise Refused("the server stored the job under another id")
    signed[job.id] = signed_doc(job, body, targets)
    return job.id


def script_job_input(devices: list[str], script: str, timeout_s: str) -> tuple[bytes, int]:
    """The script's bytes and the time limit from the form, checked (UsageProblem if not)."""
    if not devices:
        raise UsageProblem("select at least one device")
    body = script.replace("\r\n", "\n").encode()
    if not body.strip():
        raise UsageProblem("the script is empty")
    if len(body) > MAX_SCRIPT_BYTES:
        raise UsageProblem(f"the script is larger than {MAX_SCRIPT_BYTES // 1024} KiB")
    try:
        timeout = int(timeout_s)
    except ValueError:
        raise UsageProblem("the time limit is a number of seconds") from None
    if not 1 <= timeout <= 86400:
        raise UsageProblem("the time limit is between 1 and 86400 seconds")
    return body, timeout


def signed_doc(job: Job, script: bytes, targets: list[str]) -> dict[str, Any]:
    return {"id": job.id, "tenant": job.tenant, "grant": job.grant, "signer": job.signer,
            "devices": list(targets), "timeout_s": job.timeout_s, "issued_at": job.issued_at,
            "expires_at": job.expires_at, "script_sha256": hashlib.sha256(script).hexdigest(),
            "script_size": len(script), "script": script.decode("utf-8", "replace")}


def job(cfg: Config, job_id: str) -> dict[str, Any]:
    """A job and its receipts as the server reports them."""
    with connected(cfg) as (client, session):
        doc = expect_dict(client.get(f"/jobs/{job_id}"), "job")
    if doc.get("id") != job_id:
        raise ServerProblem("the server sent another job")
    targets = [t for t in doc.get("targets") or [] if isinstance(t, dict)]
    pending = [t for t in targets if not isinstance(t.get("receipt"), dict)]
    return {"session": session, "job": doc, "targets": targets, "pending": bool(pending or not targets)}


# --- root changes (owners) ---------------------------------------------------------------------


def _pinned(cfg: Config, client: Client, tenant_id: str) -> TrustedRoot:
    current = trusted_root(cfg, client, tenant_id, allow_expired=True)
    require_pin(cfg, tenant_id, current)
    return current


def root_review(cfg: Config, tenant_id: str) -> dict[str, Any]:
    """The server's root proposal compared with the root this owner trusts, as ``root sign`` shows it."""
    with connected(cfg) as (client, session):
        current = _pinned(cfg, client, tenant_id)
        data, new = get_proposal(client, tenant_id, current)
    d = root_diff(current.root, new)
    labels = cfg.load_labels()
    owners = set(current.root.roles.owner.keyids) | set(new.roles.owner.keyids)
    mine = [k for k in cfg.key_candidates(session.username, tenant_id) if k.keyid in owners]
    added = [{"keyid": kid, "roles": roles, "needs_name": kid not in labels
              and new.keys[kid].name != default_key_name(new.keys[kid].public)}
             for kid, roles in d.added.items()]
    return {"session": session, "root": _root_doc(cfg, session, current), "from_version": current.version,
            "to_version": new.version, "lines": review_lines(d, current.root, new, labels),
            "problems": unsupported_changes(d), "added": added,
            "sha256": hashlib.sha256(data).hexdigest(),
            "cannot_sign": None if mine else (f"none of your keys is an owner of v{current.version} or "
                                              f"v{new.version}: your signature would not count")}


def root_sign(cfg: Config, tenant_id: str, *, reviewed_sha256: str, fingerprints: dict[str, str],
              holders: dict[str, str], key_passphrase_text: str) -> dict[str, Any]:
    """Sign the reviewed proposal with this owner's key: the same checks as an interactive
    ``rampart root sign`` (the fingerprint of every added key typed by the owner)."""
    if len(reviewed_sha256) != 64:
        raise UsageProblem("review the proposal before signing it")
    with passphrase(key_passphrase_text), connected(cfg) as (client, session):
        current = _pinned(cfg, client, tenant_id)
        data, new = get_proposal(client, tenant_id, current)
        if hashlib.sha256(data).hexdigest() != reviewed_sha256:
            raise Refused("the proposal the server sends now differs from the one you reviewed: "
                          "nothing was signed")
        d = root_diff(current.root, new)
        problems = unsupported_changes(d)
        if problems:
            raise Refused(f"not signed: {'; '.join(problems)}")
        confirm_added_keys(d, new, cfg, cfg.load_labels(),
                           fingerprint_of=lambda kid: fingerprints.get(kid, ""),
                           holder_of=lambda kid: holders.get(kid, ""))
        with refusing("root proposal"):
            _, own, prev = sign_proposal(client, cfg, session, tenant_id, current, data)
    return {"session": session, "root": _root_doc(cfg, session, current), "from_version": current.version,
            "to_version": new.version, "prev": f"{len(prev.signed)} of {prev.threshold}",
            "own": f"{len(own.signed)} of {own.threshold}", "ready": own.met and prev.met,
            "fingerprints": {kid: key_fingerprint_b64(new.keys[kid].public) for kid in d.added}}


def root_publish(cfg: Config, tenant_id: str) -> dict[str, Any]:
    """Publish the proposal once ``update_root`` accepts it locally; trust the new version."""
    with connected(cfg) as (client, session):
        current = _pinned(cfg, client, tenant_id)
        new = publish_proposal(client, cfg, tenant_id, current)
    return {"session": session, "root": _root_doc(cfg, session, new), "published": new.version}
