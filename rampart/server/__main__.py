"""``python -m rampart.server init|run ...``."""

from rampart.diagnostics import stacks_on_request

stacks_on_request()  # before the application's imports: a start that stalls there shows where

from .commands import server_app  # noqa: E402

server_app(prog_name="rampart-server")
