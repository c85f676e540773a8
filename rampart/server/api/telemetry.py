"""Inventory, findings, remote access tools found, sanctioned tools and the tool catalog.

Reads need only that the caller reaches the tenant (T12: the tenant is
resolved first, 404 otherwise; then the device within it). Changes name one
permission (:mod:`rampart.server.roles`): ``tools.manage`` to sanction or
unsanction a tool, ``inventory.request`` to ask a device for an inventory,
``catalog.import`` (an MSP-wide owner) to import a catalog, ``tools.manage``
to add or remove a suppression rule. Every change is an
audit entry. Sanctioning and importing push the new detection configuration
to connected agents at once (docs/design/telemetry.md).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, get_args

import msgspec
from fastapi import APIRouter, Path, Query, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from rampart.catalog import Catalog, CatalogError, decode_catalog
from rampart.catalog.model import slugify

from .. import clock, suppression
from ..audit import SERVER_LOG
from ..errors import BadRequest, Forbidden, NotFound
from ..models import Device, DeviceInventory, FindingRow, SanctionedTool, Tenant
from ..telemetry import TelemetryStore
from .deps import CallerDep, Ctx, DevicePath, TenantPath
from .schemas import (
    TOOL_SLUG,
    CatalogIn,
    CatalogOut,
    CatalogToolOut,
    FindingOut,
    InventoryOut,
    InventoryRequestIn,
    InventoryRequestOut,
    InventorySection,
    SanctionedToolOut,
    SuppressionIn,
    SuppressionOut,
    ToolFoundOut,
)

router = APIRouter(tags=["telemetry"])

SlugPath = Annotated[str, Path(pattern=TOOL_SLUG, max_length=64, description="tool slug or alias")]
FindingStatus = Literal["open", "resolved", "all"]
#: Always part of an inventory answer, whatever sections were asked for.
_ALWAYS = ("schema", "collected_at", "errors", "notes")
_RANK = {"critical": 0, "high": 1, "warning": 2}


def _telemetry(ctx: Ctx) -> TelemetryStore:
    store = ctx.gateway.telemetry
    if store is None:  # pragma: no cover - always built by create_app
        raise NotFound("telemetry is not enabled on this server")
    return store


def _device(s: Session, tenant_id: str, device_id: str) -> Device:
    device = s.get(Device, device_id)
    if device is None or device.tenant_id != tenant_id:
        raise NotFound("device not found")
    return device


# --- inventory -------------------------------------------------------------------------------------


@router.get("/tenants/{t}/devices/{d}/inventory", response_model=InventoryOut)
def get_inventory(t: TenantPath, d: DevicePath, caller: CallerDep, ctx: Ctx,
                  section: Annotated[list[InventorySection] | None, Query(
                      max_length=12, description="sections to include (default: all)")] = None) -> Response:
    """A device's current inventory (its last snapshot with every later delta applied)."""
    with ctx.store.read() as s:
        caller.tenant(s, t)
        device = _device(s, t, d)
        hostname = device.hostname
    got = _telemetry(ctx).inventory(d, clock.now())
    if got is None:
        raise NotFound("this device has not reported an inventory yet")
    if got.refetch:
        ctx.gateway.request_inventory(d, full=True)
    doc: dict[str, Any] = msgspec.to_builtins(got.inventory)
    wanted = list(dict.fromkeys(section)) if section else list(get_args(InventorySection))
    out = {"device": d, "hostname": hostname, "digest": got.digest, "updated_at": got.updated_at,
           "sections": wanted, **{k: v for k, v in doc.items() if k in _ALWAYS or k in wanted}}
    return Response(msgspec.json.encode(out), media_type="application/json")


@router.post("/tenants/{t}/devices/{d}/inventory-request", response_model=InventoryRequestOut)
def request_inventory(t: TenantPath, d: DevicePath, body: InventoryRequestIn, caller: CallerDep,
                      ctx: Ctx) -> InventoryRequestOut:
    """Ask the device for an inventory now (collection only reads; the agent paces it)."""
    now = clock.now()
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        _device(s, t, d)
        caller.require_perm("inventory.request")
        ctx.audit.record(s, [t], "inventory.requested", caller.username, {"device": d, "full": body.full},
                         now)
    connected = ctx.gateway.request_inventory(d, full=body.full)
    return InventoryRequestOut(device=d, connected=connected, full=body.full)


# --- findings --------------------------------------------------------------------------------------


@router.get("/tenants/{t}/findings", response_model=list[FindingOut])
def list_findings(t: TenantPath, caller: CallerDep, ctx: Ctx,
                  status: Annotated[FindingStatus, Query()] = "open",
                  device: Annotated[str | None, Query(pattern=r"^dev-[0-9a-f]{24}$")] = None,
                  kind: Annotated[str | None, Query(max_length=32)] = None,
                  limit: Annotated[int, Query(ge=1, le=5000)] = 1000) -> list[FindingOut]:
    """Findings on the tenant's devices: open by default, most severe first."""
    with ctx.store.read() as s:
        caller.tenant(s, t)
        q = (select(FindingRow, Device.hostname).join(Device, Device.id == FindingRow.device_id)
             .where(FindingRow.tenant_id == t))
        if status == "open":
            q = q.where(FindingRow.resolved_at.is_(None))
        elif status == "resolved":
            q = q.where(FindingRow.resolved_at.is_not(None))
        if device is not None:
            q = q.where(FindingRow.device_id == device)
        if kind is not None:
            q = q.where(FindingRow.kind == kind)
        rows = list(s.execute(q.order_by(FindingRow.last_seen.desc()).limit(limit)))
    out = [FindingOut(device=f.device_id, hostname=host, key=f.key, kind=f.kind, severity=f.severity,
                      tool=f.tool, subject=f.subject, evidence=(ev := _evidence(f.evidence)),
                      suppressed=ev.get("suppressed", ""),
                      status="open" if f.resolved_at is None else "resolved", first_seen=f.first_seen,
                      last_seen=f.last_seen, resolved_at=f.resolved_at) for f, host in rows]
    out.sort(key=lambda f: (f.status != "open", _RANK.get(f.severity, 9)))
    return out


def _evidence(text: str) -> dict[str, str]:
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}


# --- remote access tools found ---------------------------------------------------------------------


@router.get("/tenants/{t}/tools", response_model=list[ToolFoundOut])
def list_tools(t: TenantPath, caller: CallerDep, ctx: Ctx) -> list[ToolFoundOut]:
    """Every catalogued remote access tool found on each device, sanctioned or not (H1, S1)."""
    ts = _telemetry(ctx)
    with ctx.store.read() as s:
        caller.tenant(s, t)
        catalog = ts.merged_catalog(s)
        allowed = set(s.scalars(select(SanctionedTool.slug).where(SanctionedTool.tenant_id == t)))
        rows = list(s.execute(
            select(Device.id, Device.hostname, DeviceInventory.tools, DeviceInventory.updated_at)
            .join(DeviceInventory, DeviceInventory.device_id == Device.id).where(Device.tenant_id == t)
            .order_by(Device.hostname)))
        network = list(s.execute(
            select(FindingRow.device_id, FindingRow.tool, FindingRow.evidence, FindingRow.last_seen)
            .where(FindingRow.tenant_id == t, FindingRow.resolved_at.is_(None), FindingRow.tool != "",
                   FindingRow.kind == "rat-port")))
    hosts = {dev: host for dev, host, _, _ in rows}
    out: list[ToolFoundOut] = []
    seen: set[tuple[str, str]] = set()
    for dev, host, tools_text, at in rows:
        try:
            tools = json.loads(tools_text)
        except ValueError:
            tools = []
        for doc in tools if isinstance(tools, list) else []:
            if not isinstance(doc, dict) or not isinstance(doc.get("slug"), str):
                continue
            slug = doc["slug"]
            seen.add((dev, slug))
            out.append(ToolFoundOut(
                device=dev, hostname=host, tool=slug, name=_name(catalog, slug),
                sanctioned=_sanctioned(catalog, allowed, slug),
                found_by=[str(w) for w in doc.get("found_by", [])], portable=bool(doc.get("portable")),
                evidence={str(k): str(v) for k, v in (doc.get("evidence") or {}).items()}, reported_at=at))
    for dev, slug, evidence, at in network:
        if (dev, slug) in seen:
            continue
        seen.add((dev, slug))
        out.append(ToolFoundOut(device=dev, hostname=hosts.get(dev, dev), tool=slug,
                                name=_name(catalog, slug), sanctioned=_sanctioned(catalog, allowed, slug),
                                found_by=["network"], portable=False, evidence=_evidence(evidence),
                                reported_at=at))
    out.sort(key=lambda x: (x.hostname, x.device, x.tool))
    return out


def _name(catalog: Catalog, slug: str) -> str:
    tool = catalog.get(slug)
    return tool.name if tool is not None else slug


def _sanctioned(catalog: Catalog, allowed: set[str], slug: str) -> bool:
    tool = catalog.get(slug)
    return slug in allowed or (tool is not None and bool({tool.slug, *tool.aliases} & allowed))


# --- sanctioned tools ------------------------------------------------------------------------------


@router.get("/tenants/{t}/sanctioned-tools", response_model=list[SanctionedToolOut])
def list_sanctioned(t: TenantPath, caller: CallerDep, ctx: Ctx) -> list[SanctionedToolOut]:
    with ctx.store.read() as s:
        caller.tenant(s, t)
        catalog = _telemetry(ctx).merged_catalog(s)
        rows = list(s.scalars(select(SanctionedTool).where(SanctionedTool.tenant_id == t)
                              .order_by(SanctionedTool.slug)))
    return [SanctionedToolOut(slug=r.slug, name=_name(catalog, r.slug), added_by=r.added_by,
                              added_at=r.added_at) for r in rows]


def _resolve_tool(catalog: Catalog, name: str) -> str:
    tool = catalog.get(name) or catalog.get(slugify(name))
    if tool is None:
        raise BadRequest(f"no tool {name!r} in the catalog: see `rampart catalog show` for the names known")
    return tool.slug


@router.put("/tenants/{t}/sanctioned-tools/{slug}", response_model=SanctionedToolOut)
def sanction_tool(t: TenantPath, slug: SlugPath, caller: CallerDep, ctx: Ctx) -> SanctionedToolOut:
    """Mark a tool as used on purpose by this tenant: no ``rat-unsanctioned`` finding for it (H1)."""
    now = clock.now()
    ts = _telemetry(ctx)
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        caller.require_perm("tools.manage")
        catalog = ts.merged_catalog(s)
        canonical = _resolve_tool(catalog, slug)
        row = s.get(SanctionedTool, {"tenant_id": t, "slug": canonical})
        if row is None:
            row = SanctionedTool(tenant_id=t, slug=canonical, added_by=caller.username, added_at=now)
            s.add(row)
            ctx.audit.record(s, [t], "tool.sanctioned", caller.username,
                             {"tool": canonical, "name": _name(catalog, canonical)}, now)
        out = SanctionedToolOut(slug=row.slug, name=_name(catalog, row.slug), added_by=row.added_by,
                                added_at=row.added_at)
    ctx.gateway.detection_changed()
    return out


@router.delete("/tenants/{t}/sanctioned-tools/{slug}", response_model=SanctionedToolOut)
def unsanction_tool(t: TenantPath, slug: SlugPath, caller: CallerDep, ctx: Ctx) -> SanctionedToolOut:
    """Stop sanctioning a tool: agents report it as unsanctioned from their next inventory."""
    now = clock.now()
    ts = _telemetry(ctx)
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        caller.require_perm("tools.manage")
        catalog = ts.merged_catalog(s)
        tool = catalog.get(slug)
        canonical = tool.slug if tool is not None else slug
        row = s.get(SanctionedTool, {"tenant_id": t, "slug": canonical})
        if row is None:
            raise NotFound(f"{slug} is not sanctioned in this tenant")
        out = SanctionedToolOut(slug=row.slug, name=_name(catalog, row.slug), added_by=row.added_by,
                                added_at=row.added_at)
        s.delete(row)
        ctx.audit.record(s, [t], "tool.unsanctioned", caller.username, {"tool": canonical}, now)
    ctx.gateway.detection_changed()
    return out


# --- suppression rules -----------------------------------------------------------------------------


def _rule_out(r: suppression.Rule, now: float) -> SuppressionOut:
    return SuppressionOut(id=r.id, kind=r.kind, path=r.path, sha256=r.sha256, device=r.device,
                          reason=r.reason, expires_at=r.expires_at, expired=now >= r.expires_at,
                          created_by=r.created_by, created_at=r.created_at)


@router.get("/tenants/{t}/suppressions", response_model=list[SuppressionOut])
def list_suppressions(t: TenantPath, caller: CallerDep, ctx: Ctx) -> list[SuppressionOut]:
    """The tenant's suppression rules, expired ones included (until removed)."""
    now = clock.now()
    with ctx.store.read() as s:
        caller.tenant(s, t)
        return [_rule_out(r, now) for r in suppression.load(s, t)]


@router.post("/tenants/{t}/suppressions", response_model=SuppressionOut)
def add_suppression(t: TenantPath, body: SuppressionIn, caller: CallerDep, ctx: Ctx) -> SuppressionOut:
    """Silence one known false positive: a finding kind with an exact path or SHA-256, on one device or
    all, with a reason and an expiry. Matching findings stay listed, marked ``suppressed``; from the
    device's next report they raise no alert."""
    now = clock.now()
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        caller.require_perm("tools.manage")
        if body.device:
            _device(s, t, body.device)
        try:
            rule = suppression.new_rule(kind=body.kind, path=body.path, sha256=body.sha256,
                                        device=body.device, reason=body.reason, days=body.days,
                                        who=caller.username, now=now)
            rules = suppression.load(s, t)
            suppression.save(s, t, [*rules, rule])
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        ctx.audit.record(s, [t], "finding.suppressed", caller.username,
                         {"rule": rule.id, "kind": rule.kind, "path": rule.path, "sha256": rule.sha256,
                          "device": rule.device, "reason": rule.reason, "expires_at": rule.expires_at}, now)
    return _rule_out(rule, now)


@router.delete("/tenants/{t}/suppressions/{rule_id}", response_model=SuppressionOut)
def remove_suppression(t: TenantPath, rule_id: Annotated[str, Path(pattern=r"^sp-[a-z2-7]{26}$")],
                       caller: CallerDep, ctx: Ctx) -> SuppressionOut:
    """Remove a rule: the findings it matched raise their alerts again from the device's next report."""
    now = clock.now()
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        caller.require_perm("tools.manage")
        rules = suppression.load(s, t)
        rule = next((r for r in rules if r.id == rule_id), None)
        if rule is None:
            raise NotFound("no such suppression rule in this tenant")
        suppression.save(s, t, [r for r in rules if r.id != rule_id])
        ctx.audit.record(s, [t], "finding.unsuppressed", caller.username,
                         {"rule": rule.id, "kind": rule.kind}, now)
    return _rule_out(rule, now)


# --- the catalog -----------------------------------------------------------------------------------


def _catalog_out(ts: TelemetryStore, s: Session) -> CatalogOut:
    info = ts.catalog_info(s)
    merged = ts.merged_catalog(s)
    meta = dict(info.meta) if info is not None else {}
    tools = [CatalogToolOut(slug=x.slug, name=x.name, category=x.category, platforms=list(x.platforms),
                            linux=x.linux, sources=list(x.sources), executables=list(x.executables),
                            ports=list(x.ports), advisories=len(x.advisories),
                            vulnerable_ranges=len(x.vulnerable_versions)) for x in merged.tools]
    return CatalogOut(builtin=len(ts.builtin), imported=len(info.catalog) if info is not None else 0,
                      merged=len(merged), sha256=info.sha256 if info is not None else None,
                      imported_at=meta.get("imported_at"), imported_by=meta.get("imported_by"),
                      source=meta.get("source"), tools=tools)


@router.get("/catalog", response_model=CatalogOut)
def get_catalog(caller: CallerDep, ctx: Ctx) -> CatalogOut:
    """The remote access tool catalog agents use: built-in facts merged with the imported feed."""
    with ctx.store.read() as s:
        return _catalog_out(_telemetry(ctx), s)


@router.post("/catalog", response_model=CatalogOut)
def import_catalog(body: CatalogIn, caller: CallerDep, ctx: Ctx) -> CatalogOut:
    """Replace the imported catalog (a normalised LOLRMM feed); agents get it at once (H1, S1)."""
    caller.require_perm("catalog.import")
    if caller.tenants is not None:
        raise Forbidden("importing the catalog changes detection in every tenant: it needs an MSP-wide owner")
    try:
        catalog = decode_catalog(body.catalog.encode())
    except CatalogError as exc:
        raise BadRequest(str(exc)[:300]) from None
    now = clock.now()
    ts = _telemetry(ctx)
    with ctx.store.transaction() as s:
        meta = {"imported_at": now, "imported_by": caller.username, "source": body.source,
                "feed_entries": body.feed_entries, "feed_warnings": body.feed_warnings}
        try:
            sha = ts.store_catalog(s, catalog, meta)
        except (CatalogError, ValueError) as exc:
            raise BadRequest(f"the catalog cannot be used: {str(exc)[:300]}") from None
        logs = list(s.scalars(select(Tenant.id))) or [SERVER_LOG]
        ctx.audit.record(s, logs, "catalog.imported", caller.username,
                         {"sha256": sha, "tools": len(catalog), "source": body.source,
                          "feed_entries": body.feed_entries, "feed_warnings": body.feed_warnings}, now)
        out = _catalog_out(ts, s)
    ctx.gateway.detection_changed()
    return out
