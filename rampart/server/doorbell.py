"""Doorbells between server nodes over NATS (issue 18, docs/design/scale-out.md).

Several ``rampart server run --nats URL`` processes share one PostgreSQL. What
must not be lost (jobs, targets, receipts, roots, revocations) is committed to
the database before a node rings; a doorbell only says "look again", and the
node that hears it reads the database. So a lost, delayed, forged or replayed
doorbell can delay work, never create or lose it: agents verify everything
exactly as from one node (T1), and :meth:`Gateway.redeliver_all` finds what a
lost doorbell left waiting.

Subjects (core NATS, no JetStream; a node never hears its own, ``no_echo``):

* ``rampart.wake``: ``{"devices": [...]}``, at most :data:`MAX_IDS` ids per
  message; each node wakes the targets it holds.
* ``rampart.tenant.<tenant>``: ``{"what": "roots" | "revocations" |
  "cancellations" | "checkpoint"}``; each node forgets its cached copy and
  pushes the change to that tenant's connections.
* ``rampart.detection``: ``{}``; sanctioned tools, dormant days or the catalog
  changed somewhere.
* ``rampart.presence.<node>``: ``{"epoch", "part", "parts", "devices"}``, every
  :data:`PRESENCE_INTERVAL_S`: the connections a node holds, in full, in parts
  of :data:`MAX_IDS`. Another node counts them as connected (device lists,
  the status page, the overdue sweeps) until :data:`PRESENCE_TTL_S` after the
  last complete snapshot: a node that dies drops out on its own.

Credentials come from a creds file or ``RAMPART_NATS_USER`` /
``RAMPART_NATS_PASSWORD``, never from the URL (it is logged and shown).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("rampart.server.doorbell")

PREFIX = "rampart"
#: Device ids per wake message (a fan-out to 10,000 targets is ten messages).
MAX_IDS = 1000
#: A doorbell larger than this is not ours: dropped unread.
MAX_BODY_BYTES = 128 * 1024
TENANT_CHANGES = frozenset({"roots", "revocations", "cancellations", "checkpoint"})
#: How often a node says which connections it holds, and how long another node believes it.
PRESENCE_INTERVAL_S = 5.0
PRESENCE_TTL_S = 3 * PRESENCE_INTERVAL_S
#: At most this many parts to one snapshot (100,000 connections on one node).
MAX_PARTS = 100
#: Doorbells heard within this window are acted on together: one wake for all the ids, one push
#: per tenant and change (a flood of doorbells costs one database read per window, not one each).
COALESCE_S = 0.05
USER_ENV = "RAMPART_NATS_USER"
PASSWORD_ENV = "RAMPART_NATS_PASSWORD"  # noqa: S105 - the name of a variable, not a secret
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class DoorbellError(ValueError):
    """A NATS option that cannot work (said before the server starts)."""


class Listener(Protocol):
    """What a node does when another node rings (the gateway; called on the event loop)."""

    def wake_local(self, device_ids: list[str]) -> None: ...

    def tenant_changed_local(self, tenant_id: str, what: str) -> None: ...

    def detection_changed_local(self) -> None: ...

    def inventory_local(self, device_ids: list[str], full: bool) -> None: ...

    def redeliver_all(self) -> None: ...

    def local_ids(self) -> list[str]: ...

    def presence(self, node: str, device_ids: frozenset[str], until: float) -> None: ...


@dataclass(frozen=True)
class NatsOptions:
    """Where NATS is and how to log in (the password never in ``url``)."""

    url: str
    creds_file: Path | None = None
    user: str | None = None
    password: str | None = None

    @classmethod
    def resolve(cls, url: str, creds_file: Path | None = None,
                env: dict[str, str] | None = None) -> NatsOptions:
        """Check ``url`` (nats:// or tls://, no user info) and read credentials from ``env``."""
        env = dict(os.environ) if env is None else env
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            raise DoorbellError("--nats must be a URL such as nats://127.0.0.1:4222")
        if parts.username or parts.password:
            raise DoorbellError("--nats must not hold credentials: use --nats-creds FILE or "
                                f"{USER_ENV} and {PASSWORD_ENV}")
        if creds_file is not None and not creds_file.is_file():
            raise DoorbellError(f"--nats-creds: {creds_file} is not a readable file")
        user, password = env.get(USER_ENV) or None, env.get(PASSWORD_ENV) or None
        if (user is None) != (password is None):
            raise DoorbellError(f"set both {USER_ENV} and {PASSWORD_ENV}, or neither")
        return cls(url=url, creds_file=creds_file, user=user, password=password)

    def __repr__(self) -> str:  # the password never reaches a log line through repr
        return f"NatsOptions(url={self.url!r}, creds_file={self.creds_file!r}, user={self.user!r})"


def wake_messages(device_ids: Iterable[str]) -> list[tuple[str, bytes]]:
    """The (subject, body) pairs that wake ``device_ids`` on other nodes."""
    return _device_messages("wake", device_ids, {})


def _device_messages(kind: str, device_ids: Iterable[str], extra: dict[str, Any]) -> list[tuple[str, bytes]]:
    """``rampart.<kind>`` messages naming ``device_ids``, MAX_IDS per message, each with ``extra``."""
    ids = list(device_ids)
    return [(f"{PREFIX}.{kind}", json.dumps({"devices": ids[i:i + MAX_IDS], **extra}).encode())
            for i in range(0, len(ids), MAX_IDS)]


def parse(subject: str, body: bytes) -> tuple[str, str | None, Any] | None:
    """``(kind, tenant, detail)`` of a doorbell, or None for anything that is not a valid one."""
    if len(body) > MAX_BODY_BYTES:
        return None
    parts = subject.split(".")
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    if parts == [PREFIX, "detection"]:
        return ("detection", None, None)
    if len(parts) == 3 and parts[:2] == [PREFIX, "presence"] and _ID.fullmatch(parts[2]):
        ids = doc.get("devices")
        numbers = [v for v in (doc.get(k) for k in ("epoch", "part", "parts")) if type(v) is int]
        if (not isinstance(ids, list) or len(ids) > MAX_IDS or len(numbers) != 3
                or not all(isinstance(d, str) and _ID.fullmatch(d) for d in ids)):
            return None
        epoch, part, total = numbers
        if not 0 <= part < total <= MAX_PARTS:
            return None
        return ("presence", parts[2], (epoch, part, total, ids))
    if parts == [PREFIX, "wake"] or parts == [PREFIX, "inventory"]:
        ids = doc.get("devices")
        if (not isinstance(ids, list) or len(ids) > MAX_IDS
                or not all(isinstance(d, str) and _ID.fullmatch(d) for d in ids)):
            return None
        if parts[1] == "wake":
            return ("wake", None, ids)
        full = doc.get("full", False)
        return ("inventory", None, (ids, full)) if isinstance(full, bool) else None
    if (len(parts) == 3 and parts[:2] == [PREFIX, "tenant"] and _ID.fullmatch(parts[2])
            and doc.get("what") in TENANT_CHANGES):
        return ("tenant", parts[2], doc["what"])
    return None


class Doorbell:
    """One node's NATS connection: rings others after a commit, hears them (event-loop bound)."""

    def __init__(self, options: NatsOptions, listener: Listener, *, node: str) -> None:
        self.options = options
        self._listener = listener
        self._node = node
        self._nc: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._starting: asyncio.Task[None] | None = None
        #: Doorbells heard and refused since start (for tests and the health of a deployment).
        self.heard = 0
        self.dropped = 0
        self._waking: set[str] = set()
        self._changes: set[tuple[str, str | None]] = set()  # (tenant, what); ("", None): detection
        #: This node's name on NATS subjects (random per process: a restarted node is a new one).
        self.node_id = secrets.token_hex(8)
        self._epoch = 0
        self._presence_task: asyncio.Task[None] | None = None
        #: Snapshots being assembled: node -> (epoch, parts, ids so far, parts seen).
        self._assembling: dict[str, tuple[int, int, set[str], set[int]]] = {}
        self._applied: dict[str, int] = {}  # node -> the epoch of its snapshot in use

    async def start(self) -> None:
        """Connect in the background (retrying until NATS is up): the node serves meanwhile."""
        self._loop = asyncio.get_running_loop()
        self._starting = asyncio.create_task(self._connect_until_up())
        self._presence_task = asyncio.create_task(self._say_presence())

    async def _connect_until_up(self) -> None:
        import nats  # loaded only on a node that joins a deployment

        kwargs: dict[str, Any] = {
            "servers": [self.options.url], "name": f"rampart-{self._node}", "no_echo": True,
            "allow_reconnect": True, "max_reconnect_attempts": -1, "reconnect_time_wait": 1,
            "connect_timeout": 5, "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected, "reconnected_cb": self._on_reconnected,
        }
        if self.options.creds_file is not None:
            kwargs["user_credentials"] = str(self.options.creds_file)
        if self.options.user is not None:
            kwargs["user"], kwargs["password"] = self.options.user, self.options.password
        delay = 0.5
        while True:
            try:
                nc = await nats.connect(**kwargs)
                break
            except Exception as exc:  # noqa: BLE001 - NATS down at start: keep serving, retry
                log.warning("NATS at %s not reachable (%s); retrying in %.0f s",
                            self.options.url, type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        await nc.subscribe(f"{PREFIX}.>", cb=self._on_message)
        self._nc = nc
        log.warning("joined the deployment through NATS at %s", self.options.url)  # shown by default
        self._listener.redeliver_all()  # anything rung before this node listened

    async def stop(self) -> None:
        if self._presence_task is not None:
            self._presence_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._presence_task
        if self._starting is not None:
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._starting
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()

    # -- ringing (thread-safe: request threads call these after their commit) --------

    def ring_wake(self, device_ids: Iterable[str]) -> None:
        for subject, body in wake_messages(device_ids):
            self._publish(subject, body)

    def ring_tenant(self, tenant_id: str, what: str) -> None:
        assert what in TENANT_CHANGES, what
        self._publish(f"{PREFIX}.tenant.{tenant_id}", json.dumps({"what": what}).encode())

    def ring_inventory(self, device_ids: list[str], full: bool) -> None:
        """Ask the node that holds these devices for an inventory now (an operator asked here)."""
        for subject, body in _device_messages("inventory", device_ids, {"full": full}):
            self._publish(subject, body)

    def ring_detection(self) -> None:
        self._publish(f"{PREFIX}.detection", b"{}")

    def _publish(self, subject: str, body: bytes) -> None:
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed (shutting down): the sweep covers it
            self._loop.call_soon_threadsafe(self._publish_now, subject, body)

    def _publish_now(self, subject: str, body: bytes) -> None:
        if self._nc is None:
            return  # not joined yet: the other nodes' redelivery sweep finds the work
        task = asyncio.ensure_future(self._send(subject, body))
        task.add_done_callback(_quiet)

    async def _send(self, subject: str, body: bytes) -> None:
        try:
            await self._nc.publish(subject, body)
        except Exception as exc:  # noqa: BLE001 - a lost doorbell only delays; the sweep finds it
            log.warning("doorbell %s not sent (%s)", subject.split(".")[1], type(exc).__name__)

    # -- hearing ---------------------------------------------------------------------

    async def _on_message(self, msg: Any) -> None:
        got = parse(msg.subject, msg.data)
        if got is None:
            self.dropped += 1
            return
        self.heard += 1
        kind, tenant, detail = got
        loop = asyncio.get_running_loop()
        if kind == "presence" and tenant is not None:
            self._heard_presence(tenant, *detail)
            return
        if kind == "wake":
            if not self._waking:
                loop.call_later(COALESCE_S, self._wake_pending)
            self._waking.update(detail)
            return
        if kind == "inventory":
            # Only for devices connected here; the agent paces inventories itself, and each
            # device's report budget bounds what a flood of these could make it send.
            self._listener.inventory_local(*detail)
            return
        change = (tenant or "", detail if kind == "tenant" else None)
        if change not in self._changes:
            self._changes.add(change)
            loop.call_later(COALESCE_S, self._change, change)

    async def _say_presence(self) -> None:
        """Every :data:`PRESENCE_INTERVAL_S`, publish the connections this node holds, in full."""
        while True:
            await asyncio.sleep(PRESENCE_INTERVAL_S)
            if self._nc is None:
                continue
            self._epoch += 1
            ids = self._listener.local_ids()
            chunks = [ids[i:i + MAX_IDS] for i in range(0, len(ids), MAX_IDS)][:MAX_PARTS] or [[]]
            for part, chunk in enumerate(chunks):
                await self._send(f"{PREFIX}.presence.{self.node_id}", json.dumps({
                    "epoch": self._epoch, "part": part, "parts": len(chunks), "devices": chunk}).encode())

    def _heard_presence(self, node: str, epoch: int, part: int, total: int, ids: list[str]) -> None:
        """Assemble a node's snapshot; only a complete one replaces what it said before."""
        if epoch <= self._applied.get(node, -1):
            return  # a late part of a snapshot already replaced
        got = self._assembling.get(node)
        if got is None or got[0] != epoch:
            if got is not None and got[0] > epoch:
                return  # an older snapshot's part, late
            got = (epoch, total, set(), set())
            self._assembling[node] = got
        _, parts, found, seen = got
        if total != parts:
            return
        found.update(ids)
        seen.add(part)
        if len(seen) == parts:
            del self._assembling[node]
            self._applied[node] = epoch
            self._listener.presence(node, frozenset(found), time.monotonic() + PRESENCE_TTL_S)

    def _wake_pending(self) -> None:
        ids, self._waking = list(self._waking), set()
        self._listener.wake_local(ids)

    def _change(self, change: tuple[str, str | None]) -> None:
        self._changes.discard(change)
        tenant, what = change
        if what is None:
            self._listener.detection_changed_local()
        else:
            self._listener.tenant_changed_local(tenant, what)

    async def _on_error(self, exc: Exception) -> None:
        log.warning("NATS: %s", type(exc).__name__)

    async def _on_disconnected(self) -> None:
        log.warning("lost NATS; doorbells wait, the redelivery sweep goes on")

    async def _on_reconnected(self) -> None:
        log.warning("NATS back; looking again for every connection")
        self._listener.redeliver_all()


def _quiet(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()


async def redelivery_cadence(interval_s: float, sweep: Callable[[], Awaitable[int]]) -> None:
    """Every ``interval_s``: look again for every connection (what a lost doorbell left waiting)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await sweep()
        except Exception:
            log.exception("redelivery sweep failed; retrying next interval")
