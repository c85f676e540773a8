"""A small protocol-speaking test agent with a real DeviceKey (not the product agent).

It enrols over HTTPS, answers the challenge, and verifies every job it is
sent with ``rampart.trust.authorize_job`` against the root it pinned, exactly
as the real agent must, so tests prove the server's proofs are right.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import ssl
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError

from rampart import wire
from rampart.trust import (
    RECEIPT_TYPE,
    Checkpoint,
    DeviceKey,
    DevicePolicy,
    LogEvidence,
    Receipt,
    TrustedRoot,
    authorize_job,
    decode_envelope,
    decode_payload,
    encode_payload,
    pin_root,
    root_sha256,
    sign_envelope,
    update_root,
)

from .operators import ok
from .server import RunningServer

T = TypeVar("T")


class _Loop:
    """One event loop on a daemon thread, shared by every test agent of the process.

    Why not the synchronous ``websockets`` client: it reads TLS on a
    background thread while the caller writes on the same ``SSLSocket``, which
    OpenSSL does not support; under a loaded suite that rarely lost the opening
    handshake (the client then waited forever in a thread join). Here every TLS
    read and write happens on this one thread, as in the real agent.
    """

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def run(cls, coro: Coroutine[Any, Any, T]) -> T:
        with cls._lock:
            if cls._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="wsagent-loop", daemon=True).start()
                cls._loop = loop
            loop = cls._loop
        return asyncio.run_coroutine_threadsafe(coro, loop).result()


class SyncSocket:
    """The blocking ``send``/``recv``/``close`` the tests use, over the asyncio client."""

    def __init__(self, conn: ClientConnection) -> None:
        self._conn = conn

    def send(self, text: str) -> None:
        _Loop.run(self._conn.send(text))

    def recv(self, timeout: float | None = None) -> str | bytes:
        """The next message; ``TimeoutError`` after ``timeout`` seconds (nothing is lost)."""
        return _Loop.run(asyncio.wait_for(self._conn.recv(), timeout))

    def close(self) -> None:
        _Loop.run(self._conn.close())


class WireAgent:
    def __init__(self, server: RunningServer, key: DeviceKey, device_id: str, tenant: str,
                 root: TrustedRoot) -> None:
        self.server = server
        self.key = key
        self.device_id = device_id
        self.tenant = tenant
        self.root = root
        self.checkpoint: Checkpoint | None = None
        self.seen_nonces: set[str] = set()
        self.seen_jobs: set[str] = set()
        self.ws: SyncSocket | None = None
        self.backlog: list[dict[str, Any]] = []

    @classmethod
    def enrol(cls, server: RunningServer, token: str, root_sha256_pin: str,
              hostname: str = "host-1") -> WireAgent:
        key = DeviceKey.generate()
        with server.client(api=False) as c:
            doc = ok(c.post("/agent/v1/enroll", json={
                "token": token, "public_key": key.public.to_text(), "hostname": hostname,
                "agent_version": "test"}))
        envs = [e.encode() for e in doc["roots"]]
        first = next(i for i, e in enumerate(envs) if root_sha256(e) == root_sha256_pin)
        now = int(time.time())
        root = pin_root(envs[first], expected_sha256=root_sha256_pin, now=now)
        if envs[first + 1:]:
            root = update_root(root, envs[first + 1:], now=now)
        return cls(server, key, doc["device_id"], doc["tenant"], root)

    # -- connection ----------------------------------------------------------------

    def connect(self, *, sign_with: DeviceKey | None = None) -> dict[str, Any]:
        """Connect and authenticate; return the welcome (or raise on close)."""
        self.ws = self._open()
        challenge = wire.decode_challenge(self.ws.recv(timeout=10.0))
        self.send(wire.sign_hello(sign_with or self.key, challenge, self.device_id, agent_version="test",
                                  root_version=self.root.version,
                                  checkpoint_size=self.checkpoint.size if self.checkpoint else 0))
        return self.recv()

    def send(self, msg: wire.Message | dict[str, Any]) -> None:
        """Send a wire message; a plain dict only for a test's deliberately hostile message."""
        assert self.ws is not None
        self.ws.send(wire.encode_message(msg) if isinstance(msg, wire.Message) else json.dumps(msg))

    def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        assert self.ws is not None
        doc: dict[str, Any] = json.loads(self.ws.recv(timeout=timeout))
        if doc.get("type") == "roots":
            self.root = update_root(self.root, [e.encode() for e in doc["envelopes"]],
                                    now=int(time.time()))
        return doc

    def wait_for(self, kind: str, timeout: float = 10.0, job_id: str | None = None
                 ) -> dict[str, Any]:
        """The next message of ``kind`` (for ``job_id``); others are kept for later calls."""
        def wanted(doc: dict[str, Any]) -> bool:
            return doc.get("type") == kind and job_id in (None, doc.get("job_id"))

        for i, doc in enumerate(self.backlog):
            if wanted(doc):
                return self.backlog.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            doc = self.recv(timeout=max(0.05, deadline - time.monotonic()))
            if wanted(doc):
                return doc
            self.backlog.append(doc)

    def _open(self) -> SyncSocket:
        """Open the socket, retrying the opening handshake like a real agent's back-off."""
        for attempt in range(3):
            try:
                return SyncSocket(_Loop.run(self._connect()))
            except (ssl.SSLError, ConnectionClosedError, TimeoutError):
                if attempt == 2:
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")

    async def _connect(self) -> ClientConnection:
        return await connect(self.server.ws_url, ssl=self.server.ssl_context(), max_size=8 << 20,
                             open_timeout=10, ping_interval=None)

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None
        self.backlog.clear()

    # -- jobs and receipts ---------------------------------------------------------

    def verify_job(self, doc: dict[str, Any]) -> Any:
        """Decode the job as the real agent does, authorise it; adopt its checkpoint; report state."""
        msg = wire.decode_server_message(json.dumps(doc))
        assert isinstance(msg, wire.JobMessage), msg
        payloads = {k: base64.b64decode(v) for k, v in msg.payloads.items()}
        log = msg.log
        auth = authorize_job(
            root=self.root, grant=msg.grant.encode(), job=msg.job.encode(),
            payloads=payloads,
            log=LogEvidence(checkpoint=log.checkpoint.encode(), index=log.index,
                            inclusion=tuple(bytes.fromhex(h) for h in log.inclusion),
                            consistency=tuple(bytes.fromhex(h) for h in log.consistency)),
            last_checkpoint=self.checkpoint,
            device=DevicePolicy(device_id=self.device_id, write_roots=("/tmp",)),
            now=int(time.time()), seen_nonces=self.seen_nonces, seen_jobs=self.seen_jobs)
        self.seen_nonces.add(auth.job.nonce)
        self.seen_jobs.add(auth.job.id)
        self.checkpoint = auth.checkpoint
        self.send(wire.StateMessage(root_version=self.root.version, checkpoint_size=self.checkpoint.size))
        return auth

    def receipt(self, job_id: str, *, outcome: str = "ran", stdout: bytes = b"hi\n",
                key: DeviceKey | None = None) -> str:
        """A signed receipt; output travels as base64 of the raw bytes with their SHA-256."""
        r = Receipt(tenant=self.tenant, job=job_id, device=self.device_id, outcome=outcome,
                    exit_code=0, stdout=base64.b64encode(stdout).decode(),
                    stdout_sha256=hashlib.sha256(stdout).hexdigest(),
                    started_at=time.time(), ended_at=time.time())
        return sign_envelope(RECEIPT_TYPE, encode_payload(r),
                             [key or self.key]).to_bytes().decode()

    def send_receipt(self, job_id: str, envelope: str) -> dict[str, Any]:
        """Send a receipt and return the server's answer (ack or error)."""
        self.send(wire.ReceiptMessage(job_id=job_id, receipt=envelope,
                                      checkpoint_size=self.checkpoint.size if self.checkpoint else 0))
        deadline = time.monotonic() + 10
        while True:
            for i, doc in enumerate(self.backlog):
                if doc.get("type") in ("ack", "error") and doc.get("job_id") == job_id:
                    return self.backlog.pop(i)
            self.backlog.append(self.recv(timeout=max(0.05, deadline - time.monotonic())))


def checkpoint_of(envelope: str) -> Checkpoint:
    return decode_payload(decode_envelope(envelope.encode()).payload, Checkpoint)
