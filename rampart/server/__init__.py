"""Rampart server: stores and relays signed objects; never holds an operator key.

Public surface for the CLI (``rampart server``, ``rampart up``): see
docs/design/server.md. Names load on first use (PEP 562), so ``server init``
and the CLI's server commands do not pay for the web application's imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
    from .commands import run_server, server_app
    from .setup import InitResult, init_data_dir

__all__ = ["InitResult", "create_app", "init_data_dir", "run_server", "server_app"]

_HOME = {"create_app": ".app", "run_server": ".commands", "server_app": ".commands",
         "InitResult": ".setup", "init_data_dir": ".setup"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name], __name__), name)
