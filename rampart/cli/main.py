"""`rampart`: the operator CLI (entry point and error boundary).

Every error ends here as ONE safe line on stderr and a non-zero exit status (see
:mod:`rampart.cli.errors` for the codes); tracebacks are shown only with
``RAMPART_DEBUG=1``. ``rampart server ...`` is forwarded to
:mod:`rampart.server.commands`, imported only when used so the operator
commands work without the server's dependencies.

Start-up time: the command modules (``*_cmds.py``) are imported only when one of
their commands is invoked. ``rampart --help`` and shell completion of a command
name list the commands from the static table :data:`COMMANDS`;
tests/test_cli_lazy.py checks it against the real modules so the two cannot drift.
Plain parameter values are converted without Pydantic (:mod:`rampart.cli.fastcoerce`).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from typer._click import Command, Context, HelpFormatter
from typer._click.shell_completion import CompletionItem
from typer.core import TyperCommand, TyperGroup

from . import fastcoerce
from .errors import CliError, one_line

fastcoerce.install()  # plain values without Pydantic (see the module)

# Every top-level command but `server`, in `rampart --help` order:
# name -> (its help as `rampart --help` shows it (the first paragraph),
#          the module whose register() adds it,
#          modules that add subcommands to it when imported).
COMMANDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "login": ("Pin the server certificate and log in (password + TOTP); save the session (0600).",
              "auth_cmds", ()),
    "logout": ("End the session on the server and forget its token locally.", "auth_cmds", ()),
    "whoami": ("Show the account of the current session.", "auth_cmds", ()),
    "run": ("Sign a script job locally with your technician key and send it; optionally wait.",
            "job_cmds", ()),
    "up": ("Start a complete local Rampart (server, two operators, a demo tenant and an agent).",
           "up", ()),
    "sbom": ("Write a CycloneDX 1.6 JSON SBOM of a device's installed packages (or of Rampart).",
             "sbom_cmds", ()),
    "findings": ("Detections on a tenant's devices (open ones by default), most severe first.",
                 "telemetry_cmds", ()),
    "console": ("Start the local signing console on 127.0.0.1 and print its one-time address.",
                "console_cmds", ()),
    "shell": ("Open an interactive shell on a device, end to end through the server (which cannot "
              "read it).", "session_cmds", ()),
    "cp": ("Copy one file to or from a device through a session: SHA-256 checked end to end.",
           "session_cmds", ()),
    "report": ("A tenant's posture report (HTML or PDF) against the CISA remote access guide and the CPG.",
               "report_cmds", ()),
    "account": ("Operator accounts (owners only).", "auth_cmds", ("access_cmds",)),
    "key": ("Operator signing keys.", "auth_cmds", ()),
    "tenant": ("Tenants (customers).", "tenant_cmds", ("access_cmds", "report_cmds")),
    "enroll": ("Enrol devices.", "tenant_cmds", ()),
    "devices": ("List devices.", "tenant_cmds", ()),
    "device": ("Manage one device.", "tenant_cmds", ()),
    "root": ("Tenant roots: the signed list of who may do what.", "root_cmds", ()),
    "grant": ("Just-in-time access grants.", "grant_cmds", ("access_cmds",)),
    "jobs": ("Jobs and their receipts.", "job_cmds", ()),
    "audit": ("The tenant's verifiable audit log.", "audit_cmds", ()),
    "alerts": ("Alerts: list, acknowledge, resolve.", "access_cmds", ("notify_cmds",)),
    "events": ("Audit events for SIEM and SOC tooling.", "notify_cmds", ()),
    "checks": ("Monitoring checks (evaluated from each device's inventory).", "checks_cmds", ()),
    "inventory": ("A device's inventory: `rampart inventory T DEVICE [--section S]`.",
                  "telemetry_cmds", ()),
    "tools": ("Remote access tools found on devices, and the ones a tenant sanctions.",
              "telemetry_cmds", ()),
    "catalog": ("The remote access tool catalog agents detect with.", "telemetry_cmds", ()),
    "suppressions": ("Suppression rules: silence one known false positive (exact path or SHA-256), "
                     "with a reason and an expiry.", "telemetry_cmds", ()),
    "package": ("Install and remove software packages (root jobs: grant 'package' and 'root').",
                "action_cmds", ()),
    "patch": ("Apply OS updates from each device's configured sources.", "action_cmds",
              ("schedule_cmds",)),
    "file": ("Deploy files whose SHA-256 you sign.", "action_cmds", ()),
    "backup": ("Run each device's backup policy.", "action_cmds", ("schedule_cmds",)),
    "automation": ("The server's automation key and standing grants for scheduled work.",
                   "schedule_cmds", ()),
    "group": ("Device groups: named sets of devices for patch rings and grants.", "group_cmds", ()),
    "sessions": ("Remote sessions: list, show, play, export and watch.", "session_cmds", ()),
    "directory": ("Directory audit: inactive, stale and privileged accounts in AD or LDAP.",
                  "directory_cmds", ()),
    "witness": ("An outside witness: co-sign tenants' audit log checkpoints it found consistent.",
                "witness_cmds", ()),
}

# The settings every part of the command tree is built with (typer passes them down).
_SETTINGS: dict[str, Any] = {"add_completion": False, "pretty_exceptions_enable": False,
                             "rich_markup_mode": None}


def register_module(app: typer.Typer, module: str) -> None:
    """Add the commands of ``rampart.cli.<module>`` to ``app``, as the CLI always has."""
    mod = importlib.import_module(f"{__package__}.{module}")
    if module == "root_cmds":  # root_cmds has no register(): its one group is added here
        app.add_typer(mod.root_app, name="root")
    else:
        mod.register(app)


class _Listed(TyperCommand):
    """What `rampart --help` and completion show for a command not imported yet."""


class LazyGroup(TyperGroup):
    """The top-level group: imports a command's module only when that command is invoked.

    `rampart --help` and the completion of a command name read :data:`COMMANDS`
    instead; everything else (running a command, `rampart GROUP --help`,
    completing inside a group) gets the real command.
    """

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self._listing = False
        for name, (help_text, _, _) in COMMANDS.items():
            self.commands.setdefault(name, _Listed(name=name, help=help_text))

    @contextmanager
    def _from_table(self) -> Iterator[None]:
        self._listing = True
        try:
            yield
        finally:
            self._listing = False

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        cmd = self.commands.get(cmd_name)
        if isinstance(cmd, _Listed) and not self._listing:
            cmd = self.commands[cmd_name] = load_command(cmd_name)
        return cmd

    def format_commands(self, ctx: Context, formatter: HelpFormatter) -> None:
        with self._from_table():
            super().format_commands(ctx, formatter)

    def shell_complete(self, ctx: Context, incomplete: str) -> list[CompletionItem]:
        with self._from_table():
            return super().shell_complete(ctx, incomplete)


def load_command(name: str) -> Command:
    """The real top-level command ``name``: imports the modules that define it."""
    _, owner, extra = COMMANDS[name]
    for module in extra:
        importlib.import_module(f"{__package__}.{module}")
    part = typer.Typer(**_SETTINGS)
    register_module(part, owner)
    # Build only this command (a module registers several); typer builds each alike.
    part.registered_commands = [c for c in part.registered_commands if c.name == name]
    part.registered_groups = [g for g in part.registered_groups if g.name == name]
    return typer.main.get_group(part).commands[name]


app = typer.Typer(
    name="rampart",
    help="Rampart operator CLI: endpoints run only what the responsible people signed.",
    no_args_is_help=True,
    cls=LazyGroup,
    **_SETTINGS,
)


@app.callback()
def _root(
    config_dir: Annotated[Path | None, typer.Option(
        "--config-dir", envvar="RAMPART_CONFIG_DIR", show_envvar=True,
        help="Operator state directory (default ~/.config/rampart).")] = None,
) -> None:
    from .common import set_config_dir

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


def _fail(message: str, code: int) -> int:
    text = one_line(message) or "failed"
    sys.stderr.write(f"rampart: error: {text}\n")
    sys.stderr.flush()
    return code


def _is_trust_error(exc: BaseException) -> bool:
    # rampart.trust is imported only by the commands that use it: an error of its kind
    # can only come from a command that has imported it.
    errors = sys.modules.get("rampart.trust.errors")
    return errors is not None and isinstance(exc, errors.TrustError)


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
        if _is_trust_error(exc):
            if debug:
                raise
            return _fail(f"refused: {exc}", 6)
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
    from rampart.diagnostics import stacks_on_request

    stacks_on_request()
    sys.exit(run_cli())


if __name__ == "__main__":
    main()
