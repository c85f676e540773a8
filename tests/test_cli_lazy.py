"""The CLI imports a command's module only when it runs, and says exactly what it said before.

`rampart --help` and the completion of a command name come from the static table
``rampart.cli.main.COMMANDS``; these tests build the whole command tree the way
main.py used to (every module imported, every register() called in order) and
check that the lazy CLI lists the same commands with the same help, and that
every group's help, at every level, is the same text.
"""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer._click import Command, Context, HelpFormatter

import rampart.cli
from rampart.cli import main as cli_main

REPO = Path(__file__).resolve().parent.parent

# The order main.py registered the command modules in before registration became lazy.
REGISTRATION_ORDER = ["auth_cmds", "tenant_cmds", "root_cmds", "grant_cmds", "job_cmds", "audit_cmds",
                      "up", "access_cmds", "notify_cmds", "sbom_cmds", "checks_cmds", "telemetry_cmds",
                      "action_cmds", "schedule_cmds", "group_cmds", "console_cmds", "session_cmds",
                      "report_cmds", "directory_cmds", "witness_cmds"]


def eager_app() -> typer.Typer:
    """The whole command tree built eagerly, as main.py did before."""
    app = typer.Typer(name="rampart", help=cli_main.app.info.help, no_args_is_help=True,
                      **cli_main._SETTINGS)
    app.callback()(cli_main._root)
    app.registered_commands.append(cli_main.app.registered_commands[0])  # `server`
    for module in REGISTRATION_ORDER:
        __import__(f"rampart.cli.{module}")
    for module in REGISTRATION_ORDER:
        cli_main.register_module(app, module)
    return app


def help_text(cmd: Command, ctx: Context, width: int) -> str:
    formatter = HelpFormatter(width=width)
    cmd.format_help(ctx, formatter)
    return formatter.getvalue()


def walk(cmd: Command, ctx: Context, width: int) -> dict[str, str]:
    """Every command's --help text, by command path."""
    out = {ctx.command_path: help_text(cmd, ctx, width)}
    commands = getattr(cmd, "commands", None)
    if commands is not None:
        for name in cmd.list_commands(ctx):  # type: ignore[attr-defined]
            sub = cmd.get_command(ctx, name)  # type: ignore[attr-defined]
            if name == "server":
                continue
            out.update(walk(sub, Context(sub, info_name=name, parent=ctx), width))
    return out


def test_every_module_with_commands_is_in_the_table() -> None:
    modules = {m.name for m in pkgutil.iter_modules(rampart.cli.__path__)}
    with_register = {m for m in modules
                     if m.endswith("_cmds") or m == "up"}
    listed = {owner for _, owner, _ in cli_main.COMMANDS.values()} | {
        m for _, _, extra in cli_main.COMMANDS.values() for m in extra}
    assert with_register <= listed, f"modules not in COMMANDS: {sorted(with_register - listed)}"
    assert set(REGISTRATION_ORDER) == listed


def test_static_table_matches_the_real_commands() -> None:
    """Names, order and help in COMMANDS are the real modules' (so `--help` cannot drift)."""
    eager = typer.main.get_command(eager_app())
    real = eager.commands  # type: ignore[attr-defined]
    assert [n for n in real if n != "server"] == list(cli_main.COMMANDS)
    lazy = typer.main.get_command(cli_main.app)
    for name, cmd in real.items():
        assert not cmd.hidden and not cmd.deprecated, name
        loaded = lazy.get_command(Context(lazy), name)  # type: ignore[attr-defined]
        assert type(loaded) is type(cmd), name
        for limit in range(10, 200):
            assert lazy.commands[name].get_short_help_str(limit) == cmd.get_short_help_str(limit)  # type: ignore[attr-defined]


@pytest.mark.parametrize("width", [40, 80, 200])
def test_every_help_page_is_unchanged(width: int) -> None:
    eager = typer.main.get_command(eager_app())
    before = walk(eager, Context(eager, info_name="rampart"), width)
    lazy = typer.main.get_command(cli_main.app)
    lazy_ctx = Context(lazy, info_name="rampart")
    top = help_text(lazy, lazy_ctx, width)
    assert top == before["rampart"]
    after = walk(lazy, lazy_ctx, width)
    assert after == before


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rampart.cli.main", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "80", **(env or {})})


def test_help_imports_no_command_module() -> None:
    code = ("import sys; from rampart.cli.main import run_cli; rc = run_cli(['--help']); "
            "print(sorted(m for m in sys.modules if m.startswith(('rampart.cli.', 'rampart.trust', "
            "'httpx', 'rich'))))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    loaded = r.stdout.strip().splitlines()[-1]
    assert loaded == "['rampart.cli.errors', 'rampart.cli.fastcoerce', 'rampart.cli.main']", loaded


def test_unknown_command_and_group_help() -> None:
    r = _run("devics")
    assert r.returncode == 2
    assert r.stderr == ("rampart: error: No such command 'devics'. Did you mean 'devices', 'device'? "
                        "(see `rampart --help`)\n")
    r = _run("devices", "--help")
    assert r.returncode == 0 and "List a tenant's devices" in r.stdout
    r = _run("devices", "lst")
    assert r.returncode == 2 and "No such command 'lst'" in r.stderr


def test_shell_completion_of_commands_and_subcommands() -> None:
    """Completion (as click's shell integrations ask for it) lists names without importing."""
    from typer._completion_classes import BashComplete as ShellComplete

    def complete(args: list[str], incomplete: str) -> list[tuple[str, str | None]]:
        cli = typer.main.get_command(cli_main.app)
        comp = ShellComplete(cli, {}, "rampart", "_RAMPART_COMPLETE")
        return [(c.value, c.help) for c in comp.get_completions(args, incomplete)]

    assert complete([], "dev") == [("devices", "List devices."), ("device", "Manage one device.")]
    assert complete(["devices"], "") == [("list", "List a tenant's devices (pending devices...")]
    eager = typer.main.get_command(eager_app())
    comp = ShellComplete(eager, {}, "rampart", "_RAMPART_COMPLETE")
    assert [(c.value, c.help) for c in comp.get_completions([], "")] == complete([], "")


SAMPLES: dict[str, list[object]] = {
    "str": ["T", "", " x ", "ü-é", "a\x00b", "-", "--json"],
    "list[str]": [["a", "b"], ("a",), (), ["", " z"]],
    "int": ["0", "007", "12", "-1", "+5", "1_000", " 5", "abc", "", "99999999999999999999", 5, 0, True],
    "Path": ["/tmp", "", "rel/x", "-", "/nonexistent/x", "~/x", "/tmp/", "."],
}


def test_fast_coercion_gives_what_typer_gives() -> None:
    """Every value the direct conversion accepts converts exactly as Typer's Pydantic adapter does."""
    from typer._coercion import build_runtime_param

    from rampart.cli import fastcoerce

    eager = typer.main.get_command(eager_app())
    ctx = Context(eager, info_name="rampart")
    checked = fast = 0

    def visit(cmd: Command) -> None:
        nonlocal checked, fast
        for p in cmd.params:
            desc = getattr(p, "type_descriptor", None)
            if desc is None:
                continue
            kind = {str: "str", int: "int", Path: "Path"}.get(desc.annotation) or (
                "list[str]" if desc.annotation == list[str] else None)
            for value in SAMPLES.get(kind or "", []):
                got = fastcoerce.quick_value(desc.annotation, desc.parameter_info, value, p, ctx)
                try:
                    want: object = build_runtime_param(desc)._coerce_value(value, param=p, ctx=ctx)
                except Exception as exc:  # Typer refuses it: the direct way must have declined
                    assert got is fastcoerce._SLOW, (cmd.name, p.name, value, exc)
                    continue
                checked += 1
                if got is not fastcoerce._SLOW:
                    fast += 1
                    assert type(got) is type(want) and got == want, (cmd.name, p.name, value, got, want)
        for sub in getattr(cmd, "commands", {}).values():
            visit(sub)

    visit(eager)
    assert checked > 500 and fast > 400, (checked, fast)


def test_fast_coercion_is_installed_and_read_commands_skip_pydantic() -> None:
    code = ("import sys; from rampart.cli import main; import typer; "
            "rc = main.run_cli(['devices', 'list', '--help']); "
            "rc2 = main.run_cli(['--config-dir', '/nonexistent/cfg', 'whoami']); "
            "print('pydantic' in sys.modules, rc, rc2)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=60, env={k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")})
    assert r.stdout.strip().splitlines()[-1] == "False 0 3", r.stdout + r.stderr
