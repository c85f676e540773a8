"""Rampart server: stores and relays signed objects; never holds an operator key.

Public surface for the CLI (``rampart server``, ``rampart up``): see
docs/design/server.md.
"""

from .app import create_app
from .commands import run_server, server_app
from .setup import InitResult, init_data_dir

__all__ = ["InitResult", "create_app", "init_data_dir", "run_server", "server_app"]
