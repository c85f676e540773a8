"""Audit log: verify it end to end, export it for a SIEM.

``audit verify`` checks, without trusting the server (threat T7):

1. The latest checkpoint is signed by a log key of the *locally trusted* root
   (:func:`rampart.trust.verify_checkpoint`).
2. Every entry up to the checkpoint's size is downloaded and the RFC 9162 Merkle
   root recomputed from them equals the signed root.
3. The log only grew since the checkpoint this operator verified last
   (checkpoints/<t>.json): the first ``old size`` entries hash to the old root.
4. Every job entry is signed by a technician or automation key of a root
   version this operator verified.

The new checkpoint is saved only when all of this holds.
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from rampart import trust
from rampart.trust import (
    CHECKPOINT_TYPE,
    GRANT_TYPE,
    JOB_TYPE,
    RECEIPT_TYPE,
    ROOT_TYPE,
    Checkpoint,
    Job,
    TenantRoot,
    TrustError,
    merkle,
)

from .client import Client, expect_dict, expect_list
from .common import (
    api,
    envelope_bytes,
    local_root,
    now,
    refusing,
    resolve_tenant,
    trusted_root,
    verified_root_versions,
)
from .config import Config
from .errors import CliError, ServerProblem, UsageProblem
from .output import fmt_time, print_json, say

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
PAGE = 500

audit_app = typer.Typer(help="The tenant's verifiable audit log.", no_args_is_help=True)


def fetch_entries(client: Client, tenant_id: str, upto: int | None) -> list[dict[str, Any]]:
    """Entries 0..upto-1 (or all), in order; indices must be contiguous."""
    out: list[dict[str, Any]] = []
    while upto is None or len(out) < upto:
        limit = PAGE if upto is None else min(PAGE, upto - len(out))
        page = expect_list(client.get(f"/tenants/{tenant_id}/audit/entries", start=len(out),
                                      limit=limit), "audit entries")
        if not page:
            break
        for e in page:
            e = expect_dict(e, "audit entry")
            if e.get("index") != len(out):
                raise ServerProblem(f"the server sent audit entry {e.get('index')} where "
                                    f"{len(out)} was expected")
            raw = e.get("data")
            try:
                data = base64.b64decode(str(raw), validate=True)
            except (binascii.Error, ValueError):
                raise ServerProblem(f"audit entry {len(out)} has invalid base64 data") from None
            out.append({**e, "bytes": data})
            if upto is not None and len(out) >= upto:
                break
    return out


def _job_signer_ok(data: bytes, tenant_id: str, roots: list[TenantRoot]) -> str | None:
    """None: not a job; "": a job signed by a key of a trusted root; else the problem."""
    try:
        env = trust.decode_envelope(data)
    except TrustError:
        return None
    if env.payload_type != JOB_TYPE:
        return None
    try:
        job = trust.decode_payload(env.payload, Job)
    except TrustError as exc:
        return f"job entry does not decode: {exc}"
    if job.tenant != tenant_id:
        return f"job {job.id} names another tenant"
    for r in reversed(roots):
        keys = {**r.role_keys("technician"), **r.role_keys("automation")}
        if job.signer in keys:
            if trust.verified_signers(env, {job.signer: keys[job.signer]}, threshold=1).met:
                return ""
            return f"job {job.id} has no valid signature by its signer {job.signer[:16]}…"
    return (f"job {job.id} is signed by key {job.signer[:16]}…, which is not a technician or "
            "automation key of any root version you trust")


def kind_of(data: bytes, server_kind: Any) -> str:
    try:
        env = trust.decode_envelope(data)
        return {JOB_TYPE: "job", RECEIPT_TYPE: "receipt", GRANT_TYPE: "grant", ROOT_TYPE: "root",
                CHECKPOINT_TYPE: "checkpoint"}.get(env.payload_type, env.payload_type)
    except TrustError:
        pass
    try:
        doc = json.loads(data)
        if isinstance(doc, dict) and isinstance(doc.get("kind"), str):
            return str(doc["kind"])
    except ValueError:
        pass
    return str(server_kind or "unknown")


def verify_log(cfg: Config, client: Client, tenant_id: str, *, fresh: bool,
               deleted: bool = False) -> dict[str, Any]:
    """Run the four checks of the module docstring; return a report with ``problems``.

    A deleted tenant's roots are gone from the server: its log is checked against the root this
    machine trusted last, or not at all."""
    if deleted:
        root = local_root(cfg, tenant_id)
        if root is None:
            raise UsageProblem(f"this machine never trusted a root of the deleted tenant {tenant_id}, so "
                               "its audit log cannot be verified here (`rampart audit export` still "
                               "writes it out)")
    else:
        root = trusted_root(cfg, client, tenant_id)
    if fresh:
        try:
            client.post(f"/tenants/{tenant_id}/audit/checkpoint")
        except ServerProblem:
            pass  # not allowed or not needed: verify the latest one
    doc = expect_dict(client.get(f"/tenants/{tenant_id}/audit/checkpoint"), "checkpoint")
    cp_bytes = envelope_bytes(doc, "checkpoint")
    with refusing("audit checkpoint"):
        cp = trust.verify_checkpoint(root, cp_bytes, now=now(), witnessed=False)  # agents check witnesses
    problems: list[str] = []
    if doc.get("size") not in (None, cp.size) or doc.get("root") not in (None, cp.root):
        problems.append("the server's checkpoint summary differs from the signed checkpoint")
    entries = fetch_entries(client, tenant_id, cp.size)
    hashes = [merkle.leaf_hash(e["bytes"]) for e in entries]
    if len(entries) < cp.size:
        problems.append(f"the server returned {len(entries)} entries but the signed checkpoint "
                        f"covers {cp.size}")
    elif merkle.root_from_leaf_hashes(hashes).hex() != cp.root:
        problems.append(f"the {cp.size} entries do not hash to the signed root {cp.root[:16]}…: "
                        "entries were changed, removed or reordered")
    last_size: int | None = None
    last_bytes = cfg.load_checkpoint(tenant_id)
    if last_bytes is not None:
        try:
            env = trust.decode_envelope(last_bytes, expect_type=CHECKPOINT_TYPE)
            last = trust.decode_payload(env.payload, Checkpoint)
        except TrustError as exc:
            raise CliError(f"your saved checkpoint {cfg.checkpoint_path(tenant_id)} is damaged: "
                           f"{exc}") from exc
        last_size = last.size
        if last.size > cp.size:
            problems.append(f"the log shrank: you saw {last.size} entries, the server now signs "
                            f"{cp.size}")
        elif len(hashes) >= last.size and (
                merkle.root_from_leaf_hashes(hashes[:last.size]).hex() != last.root):
            problems.append(f"the first {last.size} entries (the log you verified on "
                            f"{fmt_time(last.time)}) have changed since: the log was rewritten")
    roots = verified_root_versions(cfg, tenant_id)
    kinds: dict[str, int] = {}
    jobs = 0
    for i, e in enumerate(entries):
        k = kind_of(e["bytes"], e.get("kind"))
        kinds[k] = kinds.get(k, 0) + 1
        problem = _job_signer_ok(e["bytes"], tenant_id, roots)
        if problem is None:
            continue
        if problem:
            problems.append(f"entry {i}: {problem}")
        else:
            jobs += 1
    report = {"tenant": tenant_id, "ok": not problems, "size": cp.size, "root": cp.root,
              "checkpoint_time": cp.time, "previous_size": last_size, "jobs_verified": jobs,
              "kinds": kinds, "root_version": root.version, "problems": problems}
    if not problems:
        cfg.save_checkpoint(tenant_id, cp_bytes)
    return report


def audited_tenant(client: Client, text: str) -> dict[str, Any]:
    """A tenant by id or name, or a deleted tenant whose audit log the server still keeps."""
    try:
        return resolve_tenant(client, text)
    except UsageProblem:
        gone = [d for d in expect_list(client.get("/deleted-tenants"), "deleted tenants")
                if isinstance(d, dict) and text in (d.get("id"), d.get("name"))]
        if len(gone) != 1:
            raise
        return {"id": str(gone[0]["id"]), "name": f"{gone[0].get('name')} (deleted)", "deleted": True}


@audit_app.command("verify")
def audit_verify(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    fresh: Annotated[bool, typer.Option("--fresh/--latest",
                                        help="Ask the server to sign a checkpoint now first.")
                     ] = True,
    json_out: JsonOpt = False,
) -> None:
    """Verify the tenant's audit log against your trusted root and last checkpoint."""
    cfg, client, _ = api()
    with client:
        t = audited_tenant(client, tenant)
        report = verify_log(cfg, client, t["id"], fresh=fresh, deleted=bool(t.get("deleted")))
    if json_out:
        print_json(report)
    elif report["ok"]:
        since = (f"; consistent with your last checkpoint (size {report['previous_size']})"
                 if report["previous_size"] is not None else "; first verification by you")
        say(f"OK: audit log of {t['name']}: {report['size']} entries, root {report['root']}")
        say(f"{report['jobs_verified']} job(s) signed by keys of your trusted root{since}")
    else:
        for p in report["problems"]:
            say(f"PROBLEM: {p}")
    if not report["ok"]:
        raise CliError(f"audit log of {t['name']} FAILED verification: {report['problems'][0]}"
                       + (f" (and {len(report['problems']) - 1} more)"
                          if len(report["problems"]) > 1 else ""))


def _decoded(data: bytes) -> Any:
    try:
        env = trust.decode_envelope(data)
        try:
            payload: Any = json.loads(env.payload)
        except ValueError:
            payload = base64.b64encode(env.payload).decode()
        return {"payloadType": env.payload_type, "payload": payload,
                "signers": [s.keyid for s in env.signatures]}
    except TrustError:
        pass
    try:
        return json.loads(data)
    except ValueError:
        return None


def write_jsonl(entries: list[dict[str, Any]], out: IO[str]) -> None:
    for e in entries:
        data: bytes = e["bytes"]
        out.write(json.dumps({
            "index": e["index"], "kind": kind_of(data, e.get("kind")), "time": e.get("time"),
            "leaf_hash": merkle.leaf_hash(data).hex(), "data": base64.b64encode(data).decode(),
            "decoded": _decoded(data),
        }, sort_keys=True, separators=(",", ":")) + "\n")


@audit_app.command("export")
def audit_export(
    tenant: Annotated[str, typer.Argument(help="Tenant name or id.")],
    fmt: Annotated[str, typer.Option("--format", help="Only jsonl.")] = "jsonl",
    output: Annotated[Path | None, typer.Option("--output", "-o",
                                                help="File to write (default stdout).")] = None,
) -> None:
    """Export every audit entry as JSON lines (exact bytes in base64, plus a decoded view)."""
    if fmt != "jsonl":
        raise UsageProblem("--format must be jsonl")
    _, client, _ = api()
    with client:
        t = audited_tenant(client, tenant)
        entries = fetch_entries(client, t["id"], None)
    if output is None:
        write_jsonl(entries, sys.stdout)
        sys.stdout.flush()
        return
    try:
        with output.open("w", encoding="utf-8") as fh:
            write_jsonl(entries, fh)
    except OSError as exc:
        raise CliError(f"cannot write {output}: {exc.strerror}") from exc
    say(f"wrote {len(entries)} entries to {output}")


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")

