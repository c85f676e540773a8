"""``rampart-agent``: the endpoint agent's command line.

    rampart-agent enroll --server URL --token TOKEN --root-sha256 HASH --cert-sha256 FP --state DIR
                         [--write-root PATH]... [--allow-root] [--no-network]
                         [--job-user USER] [--require-containment full|filesystem|none]
                         [--min-check-interval SECONDS]
                         [--package-root PATH] [--package-manager auto|apt|dnf|none]
                         [--security-only-updates] [--backup-repo LOCATION --backup-path PATH...
                          [--backup-rsh COMMAND] [--backup-passphrase-file PATH]
                          [--backup-exclude PATH]... [--backup-restore-samples N]]
    rampart-agent run --state DIR [--inventory-interval SECONDS]
    rampart-agent status --state DIR [--json]

Secrets are never taken from the command line except the one-time enrolment
token, which is useless once used; ``RAMPART_ENROLL_TOKEN`` may replace it.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import logging
import os
import pwd
import signal
import sys
from pathlib import Path

from rampart import tlspin, trust
from rampart.diagnostics import stacks_on_request

from . import actions, containment, gateways
from .core import Agent
from .device_config import DeviceConfig
from .enroll import EnrollError, enroll, load_certificate
from .inventory._util import stop_commands
from .script_checks import describe
from .state import DB_FILE, AgentState, StateError
from .telemetry import DEFAULT_INTERVAL_S, Telemetry

DEFAULT_STATE = "/var/lib/rampart-agent"
#: Seconds the process may take to exit once the agent has stopped (then its stacks are logged
#: and it ends with status 1).
EXIT_GRACE_S = 10.0


def _default_job_user() -> str | None:
    """A root agent runs each job as a dynamic user of its own (docs/containment.md)."""
    return containment.DYNAMIC if os.geteuid() == 0 else None


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number of seconds") from None
    if not 1 <= value <= 86400:
        raise argparse.ArgumentTypeError("must be between 1 and 86400 seconds")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rampart-agent", description="Rampart endpoint agent")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("enroll", help="enrol this device with a one-time token")
    e.add_argument("--server", required=True)
    e.add_argument("--token", default=os.environ.get("RAMPART_ENROLL_TOKEN"))
    e.add_argument("--root-sha256", required=True)
    e.add_argument("--cert-sha256", required=True)
    e.add_argument("--state", default=DEFAULT_STATE)
    e.add_argument("--write-root", action="append", default=[],
                   help="a directory jobs may be granted writes under (repeatable)")
    e.add_argument("--allow-root", action="store_true", help="allow jobs granted 'root' to run as root")
    e.add_argument("--no-network", action="store_true", help="never let jobs open TCP connections")
    e.add_argument("--job-user", default=None,
                   help="unprivileged user jobs run as (default @dynamic: a uid of its own per job)")
    e.add_argument("--require-containment", choices=["full", "filesystem", "none"], default=None)
    e.add_argument("--max-timeout", type=int, default=3600)
    e.add_argument("--min-check-interval", type=_interval, default=60, metavar="SECONDS",
                   help="shortest interval a script check runs at on this device (default 60)")
    e.add_argument("--require-consent", action="store_true",
                   help="a remote session opens only after a local user accepts it")
    e.add_argument("--consent-timeout", type=_interval, default=120, metavar="SECONDS",
                   help="how long a session waits for local consent before it is refused (default 120)")
    e.add_argument("--session-log", default="/var/log/rampart-agent/sessions.log", metavar="PATH",
                   help="where remote session starts and ends are logged for this device's people")
    e.add_argument("--gateway", action="append", default=[], metavar="WSS_URL",
                   help="an agent gateway to try in turn (repeatable; replaces the list the server "
                        "names, e.g. each node of a deployment: docs/scale-out.md)")
    actions.add_enroll_options(e)
    r = sub.add_parser("run", help="run the agent")
    r.add_argument("--state", default=DEFAULT_STATE)
    r.add_argument("--inventory-interval", type=_interval, default=DEFAULT_INTERVAL_S, metavar="SECONDS",
                   help="seconds between inventories, jittered by ±20%% (default 300)")
    c = sub.add_parser("consent", help="accept or refuse a remote session waiting on this device")
    c.add_argument("answer", choices=["accept", "refuse"])
    c.add_argument("session", help="the session's job id, as the wall message shows it")
    g = sub.add_parser("gateways", help="show, or replace, the gateways the agent tries in turn")
    g.add_argument("--state", default=DEFAULT_STATE)
    g.add_argument("url", nargs="*", metavar="WSS_URL",
                   help="the new list, in order (restart the agent to use it); none: show the list")
    s = sub.add_parser("status", help="show the agent's enrolment and trust state")
    s.add_argument("--state", default=DEFAULT_STATE)
    s.add_argument("--json", action="store_true")
    return p


def _setup_logging(state_dir: Path | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if state_dir is not None and (state_dir / "logs").is_dir():
        handlers.append(logging.FileHandler(state_dir / "logs" / "agent.log"))
    logging.basicConfig(level=logging.INFO, handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_enroll(a: argparse.Namespace) -> int:
    if not a.token:
        raise EnrollError("an enrolment token is required (--token or RAMPART_ENROLL_TOKEN)")
    roots = []
    for w in a.write_root:
        path = Path(w).resolve()
        if not path.is_dir():
            raise EnrollError(f"--write-root {w}: not an existing directory")
        roots.append(str(path))
    job_user = a.job_user or _default_job_user()
    if job_user is not None and job_user != containment.DYNAMIC:
        try:
            pwd.getpwnam(job_user)
        except KeyError:
            raise EnrollError(f"--job-user {job_user}: no such user") from None
    require = a.require_containment or containment.kernel_level()
    if os.geteuid() != 0 and require == "full":
        require = "filesystem"  # an unprivileged agent cannot switch users
    try:
        action_policy = actions.policy_from_args(a, state_dir=Path(a.state), write_roots=roots)
    except actions.PolicyError as exc:
        raise EnrollError(str(exc)) from None
    config = DeviceConfig(write_roots=tuple(roots), allow_root=a.allow_root,
                          allow_network=not a.no_network, job_user=job_user,
                          require_containment=require, max_timeout_s=a.max_timeout,
                          actions=action_policy, min_check_interval_s=int(a.min_check_interval),
                          require_consent=a.require_consent, consent_timeout_s=int(a.consent_timeout),
                          session_log=str(Path(a.session_log).absolute()))
    device_id = enroll(server_url=a.server, token=a.token, root_sha256=a.root_sha256,
                       cert_sha256=a.cert_sha256, state_dir=Path(a.state), config=config,
                       gateways=a.gateway or None)
    print(f"enrolled; containment required: {require}; write roots: {', '.join(roots) or 'none'}")
    print(f"device: {device_id}")
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    from .connection import Link

    state_dir = Path(a.state)
    _setup_logging(state_dir)
    st = AgentState(state_dir)
    try:
        if not st.enrolled:
            raise StateError(f"{state_dir} holds no enrolled agent: run 'rampart-agent enroll' first")
        server = st.get_text("server_url") or ""
        urls = gateways.load(st)
    finally:
        st.close()
    agent = Agent(state_dir)
    telemetry = Telemetry(agent, interval_s=a.inventory_interval)
    link = Link(agent, server, tlspin.pinned_context(load_certificate(state_dir)),
                gateway_urls=urls, telemetry=telemetry)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            stop.set()
            stop_commands()  # an inventory command in a worker thread must not hold up the exit

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)

        def refresh_inventory() -> bool:  # called from the job worker thread
            loop.call_soon_threadsafe(telemetry.request)
            return link.ws is not None

        agent.inventory_trigger = refresh_inventory
        await link.run(stop)

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(main())
    logging.getLogger("rampart.agent").info("agent stopped")
    # The loop and its worker threads are done and every state change is committed. Should the
    # interpreter's own exit hang after this (seen once in CI, cause not known), end the process
    # after EXIT_GRACE_S with every thread's stack in the log instead of waiting for SIGKILL.
    faulthandler.dump_traceback_later(EXIT_GRACE_S, exit=True)
    return 0


def cmd_gateways(a: argparse.Namespace) -> int:
    """Show the gateways, or replace them (checked; the device's own choice, as at enrolment)."""
    if not (Path(a.state) / DB_FILE).is_file():  # not AgentState's: it would make the directory
        raise StateError(f"{a.state} holds no enrolled agent: run 'rampart-agent enroll' first")
    st = AgentState(Path(a.state))
    try:
        if not st.enrolled:
            raise StateError(f"{a.state} holds no enrolled agent: run 'rampart-agent enroll' first")
        if a.url:
            try:
                with st.transaction() as db:
                    gateways.save(st, db, a.url)
            except ValueError as exc:
                raise EnrollError(f"gateways: {exc}; nothing changed") from None
            print("gateways stored; restart the agent to use them")
        for url in gateways.load(st):
            print(url)
    finally:
        st.close()
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    agent = Agent(Path(a.state))
    root = agent.trusted_root()
    doc = {
        "device": agent.device_id, "tenant": root.tenant, "root_version": root.version,
        "root_sha256": root.sha256, "checkpoint_size": agent.checkpoint_size(),
        "policy": agent.config.to_dict(), "kernel_containment": containment.kernel_level(),
        "landlock_abi": containment.detect_abi(),
        "script_checks": [json.loads(describe(c)) for c in agent.state.script_checks()],
    }
    if a.json:
        print(json.dumps(doc, indent=1))
    else:
        for k, v in doc.items():
            print(f"{k}: {v}")
    return 0


def cmd_consent(a: argparse.Namespace) -> int:
    """A local user's answer to a session waiting for consent (no state directory needed)."""
    import re

    from .session.notice import CONSENT_DIR, write_consent

    if not re.fullmatch(r"job-[0-9a-z]{16,64}", a.session):
        print("rampart-agent: error: the session is a job id (job-…)", file=sys.stderr)
        return 2
    try:
        write_consent(a.session, a.answer == "accept")
    except FileExistsError:
        print("rampart-agent: error: this session was already answered", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"rampart-agent: error: cannot answer in {CONSENT_DIR}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"session {a.session} {'accepted' if a.answer == 'accept' else 'refused'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    stacks_on_request()
    a = _parser().parse_args(argv)
    try:
        if a.cmd == "consent":
            return cmd_consent(a)
        if a.cmd == "enroll":
            return cmd_enroll(a)
        if a.cmd == "run":
            return cmd_run(a)
        if a.cmd == "gateways":
            return cmd_gateways(a)
        return cmd_status(a)
    except (EnrollError, StateError, trust.TrustError) as exc:
        print(f"rampart-agent: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
