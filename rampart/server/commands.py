"""``rampart server init`` and ``rampart server run`` (mounted by the CLI as ``server``).

``init`` prints the certificate SHA-256 and the one-time bootstrap token
exactly once; neither command takes a secret as a flag.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy import select
from sqlalchemy.orm import Session

from .audit import AuditLog
from .config import ServerConfig, load_config, normalise_db_url
from .doorbell import DoorbellError, NatsOptions
from .errors import SetupError
from .models import Account
from .setup import InitResult, init_data_dir

server_app = typer.Typer(help="Run the Rampart server.", no_args_is_help=True,
                         add_completion=False)

DataOpt = Annotated[Path, typer.Option("--data", help="Server data directory.")]


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise SetupError("--listen must be HOST:PORT")
    host = host.strip("[]")
    if not host:
        raise SetupError("--listen must name a host")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not all(c.isalnum() or c in ".-" for c in host):
            raise SetupError("--listen host is not a valid name or address") from None
    return host, int(port)


def parse_proxies(items: list[str]) -> list[str]:
    """Validate ``--trusted-proxy`` networks (CIDR); return them normalised."""
    out = []
    for item in items:
        try:
            out.append(str(ipaddress.ip_network(item.strip(), strict=True)))
        except ValueError:
            raise SetupError("--trusted-proxy must be a network such as 10.0.0.5/32") from None
    return out


def _is_shared_db(db_url: str | None, data_dir: Path) -> bool:
    """True when the store several nodes would share is PostgreSQL (SQLite serves one process)."""
    url = normalise_db_url(db_url) if db_url is not None else load_config(data_dir).db_url
    return url.startswith("postgresql")


def run_server(data_dir: Path | str, host: str, port: int, tls: bool = True,
               db_url: str | None = None, agent_listen: tuple[str, int] | None = None,
               trusted_proxies: list[str] | None = None, nats: NatsOptions | None = None) -> None:
    """Serve the API, status page and agent gateway until interrupted (blocking).

    ``agent_listen`` adds the dedicated agent gateway listener (default in
    ``rampart server run``: the API host, port + 1). ``trusted_proxies``: only
    requests from these networks may set the client address with
    ``X-Forwarded-For`` (pacing and approved networks use it); none by default.
    ``nats``: join a deployment of several nodes on one PostgreSQL (docs/scale-out.md).
    """
    config = load_config(Path(data_dir))
    if db_url is not None:
        config = dataclasses.replace(config, db_url=normalise_db_url(db_url))
    import uvicorn  # the web stack loads only to run the server, not for init or admin commands

    from .app import create_app
    from .gateway_listener import LISTEN_BACKLOG
    from .http_guard import guarded_protocol

    app = create_app(data_dir, config=config, agent_listen=agent_listen, tls=tls, nats=nats)
    ssl: dict[str, str] = {}
    if tls:
        ssl = {"ssl_certfile": str(config.cert_path), "ssl_keyfile": str(config.key_path)}
    uv = uvicorn.Config(
        app, host=host, port=port, loop="uvloop", ws="websockets-sansio",
        http=guarded_protocol(header_timeout_s=config.limits.http_header_timeout_s,
                              body_timeout_s=config.limits.http_body_timeout_s,
                              per_address=config.limits.http_connections_per_address,
                              exempt=list(trusted_proxies or [])),
        ws_max_size=config.limits.max_ws_message_bytes, ws_per_message_deflate=False,
        lifespan="on", proxy_headers=bool(trusted_proxies),
        forwarded_allow_ips=list(trusted_proxies or []) or None, server_header=False,
        log_level="info", backlog=LISTEN_BACKLOG,
        timeout_graceful_shutdown=5, **ssl,  # type: ignore[arg-type]
    )
    uvicorn.Server(uv).run()


@server_app.command("init")
def init_command(data: DataOpt,
                 db: Annotated[str | None, typer.Option(
                     "--db", help="Database URL (default: SQLite in the data directory).")] = None
                 ) -> None:
    """Create a data directory: TLS certificate, keys, database, bootstrap token."""
    try:
        result: InitResult = init_data_dir(data, db)
    except SetupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"Initialised {data}")
    typer.echo(f"TLS certificate SHA-256: {result.cert_sha256}")
    typer.echo(f"Bootstrap token (shown once, valid until the first owner exists): "
               f"{result.bootstrap_token}")


@contextmanager
def _admin_account(data: Path, db: str | None, username: str) -> Iterator[tuple[Session, AuditLog, Account,
                                                                                 ServerConfig]]:
    """One transaction on the server host's store with the named account, for the recovery commands.

    Exits with a one-line error for a bad data directory (2) or an unknown account (1).
    """
    from . import clock
    from .db import Store, migrate
    from .keystore import LogKeyStore

    try:
        config = load_config(Path(data))
        store = Store(normalise_db_url(db) if db else config.db_url)
    except SetupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    clock.configure_from_env()
    try:
        migrate(store.engine)
        audit = AuditLog(store, LogKeyStore(config.keys_dir))
        with store.transaction() as s:
            account = s.scalars(select(Account).where(Account.username == username)).first()
            if account is None:
                typer.echo(f"error: no account named {username}", err=True)
                raise typer.Exit(1)
            yield s, audit, account, config
    finally:
        store.dispose()


@server_app.command("enable-account")
def enable_account_command(
        data: DataOpt,
        username: Annotated[str, typer.Argument(help="Account to re-enable and unlock.")],
        db: Annotated[str | None, typer.Option(
            "--db", help="Database URL (default: the one in config.json).")] = None,
) -> None:
    """Recovery on the server host: re-enable and unlock an account (e.g. the last owner).

    Needs access to the data directory (root on the server), never the API;
    the change is an audit entry by ``server-admin``.
    """
    from . import clock
    from .access import enable_account

    with _admin_account(data, db, username) as (s, audit, account, _):
        enable_account(s, audit, account, actor="server-admin", now=clock.now())
    typer.echo(f"account {username} enabled and unlocked")


@server_app.command("reissue-account")
def reissue_account_command(
        data: DataOpt,
        username: Annotated[str, typer.Argument(help="Account to re-enrol (e.g. the only owner).")],
        db: Annotated[str | None, typer.Option(
            "--db", help="Database URL (default: the one in config.json).")] = None,
) -> None:
    """Recovery on the server host: a new activation for an account (e.g. the only owner lost
    their phone); its password, TOTP secret and sessions stop working.

    Needs access to the data directory (root on the server), never the API;
    the change is an audit entry by ``server-admin``. Prints the one-time
    activation token once.
    """
    from . import clock
    from .auth import reissue_activation

    with _admin_account(data, db, username) as (s, audit, account, config):
        if account.disabled_at is not None:
            typer.echo(f"error: {username} is disabled: run enable-account first", err=True)
            raise typer.Exit(1)
        token, _, ended = reissue_activation(s, audit, account, actor="server-admin",
                                             now=clock.now(), limits=config.limits)
    typer.echo(f"activation of {username} re-issued; {ended} session(s) ended")
    typer.echo(f"one-time activation token (shown once): {token}")
    typer.echo(f"{username} logs in with: rampart login --server URL --user {username} --activate")


@server_app.command("run")
def run_command(data: DataOpt,
                listen: Annotated[str, typer.Option(
                    "--listen", help="HOST:PORT")] = "127.0.0.1:8443",
                no_tls: Annotated[bool, typer.Option(
                    "--no-tls", help="Plain HTTP behind a TLS-terminating proxy.")] = False,
                db: Annotated[str | None, typer.Option(
                    "--db", help="Database URL (default: the one in config.json).")] = None,
                agent_listen: Annotated[str | None, typer.Option(
                    "--agent-listen",
                    help="HOST:PORT of the agent gateway (default: --listen port + 1; 'off' to "
                         "serve agents only at /agent/v1/ws on --listen).")] = None,
                trusted_proxy: Annotated[list[str] | None, typer.Option(
                    "--trusted-proxy",
                    help="Network (CIDR) of a reverse proxy whose X-Forwarded-For is believed "
                         "(repeatable; default: none).")] = None,
                nats: Annotated[str | None, typer.Option(
                    "--nats",
                    help="NATS URL (nats://HOST:PORT) joining this node to a deployment of several "
                         "on one PostgreSQL; credentials from --nats-creds or RAMPART_NATS_USER and "
                         "RAMPART_NATS_PASSWORD, never the URL.")] = None,
                nats_creds: Annotated[Path | None, typer.Option(
                    "--nats-creds", help="NATS credentials file (nkey .creds).")] = None,
                ) -> None:
    """Serve HTTPS: API under /api/v1, status page at /, agents on the gateway port."""
    try:
        host, port = parse_listen(listen)
        if agent_listen is None:
            agent: tuple[str, int] | None = (host, port + 1)
        elif agent_listen == "off":
            agent = None
        else:
            agent = parse_listen(agent_listen)
        proxies = parse_proxies(trusted_proxy or [])
        if nats_creds is not None and nats is None:
            raise SetupError("--nats-creds needs --nats")
        bus = NatsOptions.resolve(nats, nats_creds) if nats is not None else None
        if bus is not None and not _is_shared_db(db, data):
            raise SetupError("--nats joins nodes that share one PostgreSQL: give --db "
                             "postgresql://… (SQLite is one process)")
        run_server(data, host, port, tls=not no_tls, db_url=db, agent_listen=agent,
                   trusted_proxies=proxies, nats=bus)
    except (SetupError, DoorbellError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
