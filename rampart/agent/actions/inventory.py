"""The ``inventory-refresh`` handler."""

from __future__ import annotations

import time
from collections.abc import Mapping

from rampart import trust

from .host import JobHost
from .results import Done, _finished

# --- inventory -------------------------------------------------------------------------------------------


def _inventory_refresh(agent: JobHost, auth: trust.Authorization, payloads: Mapping[str, bytes]) -> Done:
    started = time.time()
    trigger = agent.inventory_trigger
    if trigger is None:
        return _finished(ok=False, doc={"schema": 1, "action": "inventory-refresh", "status": "unavailable"},
                         error="inventory reporting is not running in this agent process",
                         summary="inventory reporting is not running", started=started, applied=None)
    connected = trigger()
    status = "requested" if connected else "queued"
    summary = ("an inventory report was requested" if connected else
               "the server is not connected: an inventory is reported when the connection is back")
    return _finished(ok=True, doc={"schema": 1, "action": "inventory-refresh", "status": status},
                     error="", summary=summary, started=started, applied=None)
