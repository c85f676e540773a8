"""``python -m rampart.server init|run ...``."""

from .commands import server_app

server_app(prog_name="rampart-server")
