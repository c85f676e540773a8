"""The server console (issue 14 parts 1 and 2): ``/console/``, for MSP staff and customer viewers.

Server-rendered pages (Jinja2, :mod:`rampart.webui` for the shared base template,
stylesheet and vendored htmx) over the same store and the same checks as the API:
tenants, a tenant dashboard, the device list and device pages, alerts (ack, resolve),
jobs with their signed receipts, grants and approvals (view only), the audit log with
its verification, and accounts for owners. A ``customer-viewer`` sees its one tenant
only (the customer portal). Nothing here signs or asks a key to sign.

Modules: :mod:`.web` (cookie session, CSRF, same-origin, headers, rendering),
:mod:`.queries` (SQL-side filters, paging and aggregates), :mod:`.pages` (the routes).
See docs/console.md and docs/design/web-console.md.
"""

from __future__ import annotations

from .pages import router

__all__ = ["router"]
