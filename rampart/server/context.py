"""The running server's shared objects, built once by :func:`rampart.server.app.create_app`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .audit import AuditLog
from .automation import AutomationKeyStore
from .chores_lease import ChoresLease
from .config import ServerConfig, ServerLimits
from .db import Store

if TYPE_CHECKING:
    from .gateway import Gateway


@dataclass(slots=True)
class ServerContext:
    config: ServerConfig
    store: Store
    audit: AuditLog
    cert_sha256: str | None
    gateway: Gateway
    #: The tenants' automation keys (scheduled payload-free jobs only; rampart/server/automation.py).
    automation: AutomationKeyStore
    #: Whether this node runs the deployment's periodic chores now (chores_lease.py).
    chores: ChoresLease
    #: Port of the dedicated agent gateway listener, when one runs.
    agent_port: int | None = None

    @property
    def limits(self) -> ServerLimits:
        return self.config.limits
