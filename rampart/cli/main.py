"""`rampart`: the operator CLI (entry point and error boundary).

Every error ends here as ONE safe line on stderr and a non-zero exit status (see
:mod:`rampart.cli.errors` for the codes); tracebacks are shown only with
``RAMPART_DEBUG=1``. ``rampart server ...`` is forwarded to
:mod:`rampart.server.commands`, imported only when used so the operator
commands work without the server's dependencies.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from rampart.trust import TrustError

from . import (
    access_cmds,
    action_cmds,
    audit_cmds,
    auth_cmds,
    checks_cmds,
    grant_cmds,
    group_cmds,
    job_cmds,
    notify_cmds,
    root_cmds,
    sbom_cmds,
    schedule_cmds,
    telemetry_cmds,
    tenant_cmds,
    up,
)
from .common import set_config_dir
from .errors import CliError, one_line

app = typer.Typer(
    name="rampart",
    help="Rampart operator CLI: endpoints run only what the responsible people signed.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root(
    config_dir: Annotated[Path | None, typer.Option(
        "--config-dir", envvar="RAMPART_CONFIG_DIR", show_envvar=True,
        help="Operator state directory (default ~/.config/rampart).")] = None,
) -> None:
    set_config_dir(config_dir)


@app.command(
    "server",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                      "help_option_names": []},
    add_help_option=False,
)
def server(ctx: typer.Context) -> None:
    """Run the Rampart server: `rampart server init --data DIR`, `rampart server run ...`."""
    try:
        from rampart.server.commands import server_app
    except ImportError as exc:
        raise CliError(f"the server is not available in this installation ({exc})") from exc
    cmd = typer.main.get_command(server_app)
    rc = cmd.main(list(ctx.args), prog_name="rampart server", standalone_mode=False)
    if isinstance(rc, int) and rc:
        raise typer.Exit(rc)


auth_cmds.register(app)
tenant_cmds.register(app)
root_cmds_app = root_cmds.root_app
app.add_typer(root_cmds_app, name="root")
grant_cmds.register(app)
job_cmds.register(app)
audit_cmds.register(app)
up.register(app)
access_cmds.register(app)
notify_cmds.register(app)
sbom_cmds.register(app)
checks_cmds.register(app)
telemetry_cmds.register(app)
action_cmds.register(app)
schedule_cmds.register(app)
group_cmds.register(app)


def _fail(message: str, code: int) -> int:
    text = one_line(message) or "failed"
    sys.stderr.write(f"rampart: error: {text}\n")
    sys.stderr.flush()
    return code


def run_cli(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit status; never raises."""
    debug = os.environ.get("RAMPART_DEBUG") == "1"
    cmd = typer.main.get_command(app)
    try:
        rc = cmd.main(args=argv, prog_name="rampart", standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except CliError as exc:
        if debug:
            raise
        return _fail(exc.message, exc.exit_code)
    except TrustError as exc:
        if debug:
            raise
        return _fail(f"refused: {exc}", 6)
    except typer.Exit as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except typer.Abort:
        return _fail("aborted", 130)
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        except OSError:
            pass
        return 141
    except Exception as exc:
        # Usage errors (typer vendors its own click): anything with format_message/exit_code.
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            hint = ""
            ctx = getattr(exc, "ctx", None)
            if ctx is not None and getattr(ctx, "command_path", None):
                hint = f" (see `{ctx.command_path} --help`)"
            code = exc.exit_code if isinstance(exc.exit_code, int) and exc.exit_code else 2
            return _fail(str(exc.format_message()) + hint, code)
        if debug:
            raise
        return _fail(f"internal error ({type(exc).__name__}): {exc}; rerun with RAMPART_DEBUG=1 "
                     "for details", 70)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


def main() -> None:
    sys.exit(run_cli())


if __name__ == "__main__":
    main()
