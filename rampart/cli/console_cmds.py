"""`rampart console`: start the local signing console (rampart.console) on 127.0.0.1.

The console is served by this process from the installed package, never by the Rampart
server (issue 14: code the server serves never asks a key to sign). It is imported only
when the command runs.
"""

from __future__ import annotations

from typing import Annotated

import typer

from .common import config
from .errors import CliError, UsageProblem


def console(
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1 (default: a free one).")] = 0,
    localhost: Annotated[bool, typer.Option(
        "--localhost", help="Print the address as http://localhost:PORT: passkeys need it (with the "
                            "same --port every time: a passkey is pinned to its origin).")] = False,
) -> None:
    """Start the local signing console on 127.0.0.1 and print its one-time address.

    The web pages sign with your own keys on this machine, showing what they sign decoded
    against your own trusted root, as the CLI does. Only this machine can reach it.
    """
    if port != 0 and not 1024 <= port <= 65535:
        raise UsageProblem("--port is 0 (any free port) or between 1024 and 65535")
    cfg = config()
    cfg.require_session()
    from rampart.console.serve import serve

    try:
        serve(cfg, port, localhost=localhost)
    except OSError as exc:
        raise CliError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from exc
    except KeyboardInterrupt:
        pass


def register(app: typer.Typer) -> None:
    app.command("console")(console)
