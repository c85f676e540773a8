"""``python -m rampart.server init|run ...``."""

from rampart.diagnostics import stacks_on_request

from .commands import server_app

stacks_on_request()
server_app(prog_name="rampart-server")
