"""The posture report and the service statement of a tenant (issue 19; docs/compliance.md).

* ``GET /tenants/{t}/report?format=html|pdf|json``: every role that reaches the tenant, the
  customer-viewer included (customers download their own; T12: another tenant is 404 like one
  that does not exist). Built by the server from its records, read in one snapshot.
* ``GET /tenants/{t}/statement``: every role that reaches the tenant.
* ``PUT /tenants/{t}/statement``: ``statement.manage`` (owners); audited.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import Field

from .. import clock
from ..context import ServerContext
from ..posture import MAX_LINE, MAX_SERVICES, MAX_TEXT, Posture, collect, set_statement, statement_doc
from ..report import REPORT_CSP, render_html, render_pdf
from .deps import Caller, CallerDep, Ctx, TenantPath
from .schemas import In

router = APIRouter(tags=["compliance"])
Doc = dict[str, Any]


class StatementIn(In):
    services: Annotated[list[Annotated[str, Field(max_length=MAX_LINE)]] | None,
                        Field(max_length=MAX_SERVICES)] = None
    contact: Annotated[str | None, Field(max_length=MAX_LINE)] = None
    #: One of the tenant's webhook or e-mail notification targets; "" clears it.
    contact_target: Annotated[str | None, Field(max_length=80)] = None
    deadline_s: Annotated[int | None, Field(ge=60, le=30 * 86400)] = None
    incident_response: Annotated[str | None, Field(max_length=MAX_TEXT)] = None
    recovery: Annotated[str | None, Field(max_length=MAX_TEXT)] = None


def build_posture(ctx: ServerContext, caller: Caller, t: str) -> Posture:
    """The tenant's posture, read in one snapshot after the caller's reach (404) is checked."""
    telemetry = ctx.gateway.telemetry
    now = clock.now()
    with ctx.store.read() as s:
        tenant = caller.tenant(s, t)
        catalog = telemetry.merged_catalog(s) if telemetry is not None else None
        return collect(s, tenant, now, catalog=catalog, overdue_after_s=ctx.limits.overdue_after_s)


def report_response(p: Posture, fmt: str, *, attachment: bool) -> Response:
    """The report as an HTTP answer: inert HTML under :data:`REPORT_CSP`, or the PDF."""
    name = f"rampart-posture-{p.tenant_id}"
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
               "Content-Security-Policy": REPORT_CSP, "Referrer-Policy": "no-referrer"}
    if fmt == "pdf":
        return Response(render_pdf(p), media_type="application/pdf",
                        headers={**headers, "Content-Disposition": f'attachment; filename="{name}.pdf"'})
    if attachment:
        headers["Content-Disposition"] = f'attachment; filename="{name}.html"'
    return Response(render_html(p), media_type="text/html; charset=utf-8", headers=headers)


@router.get("/tenants/{t}/report", response_model=None,
            responses={200: {"content": {"text/html": {}, "application/pdf": {}, "application/json": {}}}})
async def posture_report(t: TenantPath, caller: CallerDep, ctx: Ctx,
                         format: Literal["html", "pdf", "json"] = Query("html")) -> Response | Doc:
    """The posture report against the CISA remote access guide and the CPG goals it cites."""
    p = await run_in_threadpool(build_posture, ctx, caller, t)
    if format == "json":
        return p.to_doc()
    return await run_in_threadpool(report_response, p, format, attachment=True)


@router.get("/tenants/{t}/statement", response_model=Doc)
def get_statement(t: TenantPath, caller: CallerDep, ctx: Ctx) -> Doc:
    """The tenant's service statement (C1, M7); ``{"statement": null}`` when none is written."""
    with ctx.store.read() as s:
        caller.tenant(s, t)
        return {"statement": statement_doc(s, t)}


@router.put("/tenants/{t}/statement", response_model=Doc)
def put_statement(t: TenantPath, body: StatementIn, caller: CallerDep, ctx: Ctx) -> Doc:
    """Write or change the service statement; fields left out keep their value."""
    now = clock.now()
    with ctx.store.transaction() as s:
        caller.tenant(s, t)
        caller.require_perm("statement.manage")
        doc = set_statement(s, t, services=body.services, contact=body.contact,
                            contact_target=body.contact_target, deadline_s=body.deadline_s,
                            incident_response=body.incident_response, recovery=body.recovery,
                            actor=caller.username, now=now)
        ctx.audit.record(s, [t], "statement.changed", caller.username,
                         {k: v for k, v in body.model_dump(exclude_none=True).items()}, now)
        return {"statement": doc}
