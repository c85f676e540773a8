"""A minimal stand-in for the Rampart server, speaking the real agent protocol.

Used by the agent's own tests (issue: trust core and agent), so that every
attack can be played from the server's side: a compromised server is exactly
a server that sends whatever it likes. It serves HTTPS with a throwaway
certificate on 127.0.0.1 via uvicorn, in a thread of the test process;
the agents it talks to are real ``rampart-agent`` processes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from rampart import trust, wire
from rampart.trust import DevicePublicKey, Receipt

from .ports import free_port
from .tenant import Tenant
from .tls import make_cert


class MiniServer:
    def __init__(self, directory: Path, tenant: Tenant) -> None:
        self.tenant = tenant
        self.cert, self.key, self.cert_sha256 = make_cert(directory / "tls")
        self.port = free_port()
        self.tokens: set[str] = set()
        self.devices: dict[str, DevicePublicKey] = {}
        self.sockets: dict[str, WebSocket] = {}
        self.agent_view: dict[str, dict[str, int]] = {}
        self.receipts: dict[tuple[str, str], list[Receipt]] = defaultdict(list)
        self.ack = True
        self.messages: list[tuple[str, dict[str, Any]]] = []
        #: Merged into every enrolment answer (a compromised server's words: T1).
        self.enrol_extra: dict[str, Any] = {}
        #: The next this many hellos are answered with a close (code, reason): a busy node.
        self.turn_away: tuple[int, int, str] = (0, 0, "")
        #: When each WebSocket connection arrived (time.monotonic()).
        self.arrivals: list[float] = []
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        app = Starlette(routes=[
            Route("/agent/v1/enroll", self._enroll, methods=["POST"]),
            WebSocketRoute("/agent/v1/ws", self._ws),
        ])
        cfg = uvicorn.Config(app, host="127.0.0.1", port=self.port, ssl_certfile=str(self.cert),
                             ssl_keyfile=str(self.key), log_level="warning", ws="websockets-sansio",
                             lifespan="off")
        self._server = uvicorn.Server(cfg)
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._server.serve())
        finally:
            loop.close()

    def start(self) -> MiniServer:
        self._thread.start()
        deadline = time.time() + 20
        while not self._server.started:
            if time.time() > deadline:
                raise RuntimeError("mini server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def new_token(self) -> str:
        tok = secrets.token_hex(24)
        self.tokens.add(tok)
        return tok

    # --- HTTP ---------------------------------------------------------------------------

    async def _enroll(self, request: Request) -> JSONResponse:
        body = await request.json()
        if body.get("token") not in self.tokens:
            return JSONResponse({"detail": "invalid or used enrolment token"}, status_code=403)
        self.tokens.discard(body["token"])
        pub = DevicePublicKey.from_text(body["public_key"])
        device_id = trust.device_id_for(pub)
        self.devices[device_id] = pub
        return JSONResponse({"device_id": device_id, "tenant": self.tenant.id,
                             "roots": [r.decode() for r in self.tenant.roots], **self.enrol_extra})

    # --- WebSocket ----------------------------------------------------------------------

    async def _ws(self, ws: WebSocket) -> None:
        await ws.accept()
        self.arrivals.append(time.monotonic())
        challenge = wire.new_challenge()
        await ws.send_text(wire.encode_message(challenge))
        try:
            hello = wire.decode_hello(await ws.receive_text())
        except wire.WireError:
            await ws.close(code=4400)
            return
        left, code, reason = self.turn_away
        if left > 0:
            self.turn_away = (left - 1, code, reason)
            await ws.close(code=code, reason=reason)
            return
        device = hello.device
        pub = self.devices.get(device)
        if pub is None or not wire.check_hello(pub, challenge, hello):
            await ws.close(code=4401)
            return
        await ws.send_text(wire.encode_message(wire.Welcome(status="approved")))
        with self._cond:
            self.sockets[device] = ws
            self.agent_view[device] = {"root_version": hello.root_version,
                                       "checkpoint_size": hello.checkpoint_size}
            self._cond.notify_all()
        try:
            while True:
                text = await ws.receive_text()
                wire.decode_agent_message(text)  # the agent speaks the contract, or the test fails here
                await self._on_message(device, pub, json.loads(text))
        except WebSocketDisconnect:
            pass
        finally:
            with self._cond:
                if self.sockets.get(device) is ws:
                    del self.sockets[device]
                self._cond.notify_all()

    async def _on_message(self, device: str, pub: DevicePublicKey, m: dict[str, Any]) -> None:
        with self._cond:
            self.messages.append((device, dict(m)))
            if "checkpoint_size" in m:
                self.agent_view[device]["checkpoint_size"] = m["checkpoint_size"]
            if "root_version" in m:
                self.agent_view[device]["root_version"] = m["root_version"]
            if m.get("type") == "receipt":
                r = trust.verify_receipt(m["receipt"].encode(), pub)
                self.receipts[(r.job, device)].append(r)
            self._cond.notify_all()
        if m.get("type") == "receipt" and self.ack:
            await ws_send(self.sockets.get(device), wire.AckMessage(job_id=m["job_id"]))

    # --- test controls ------------------------------------------------------------------

    def send(self, device: str, msg: wire.Message | dict[str, Any]) -> None:
        """Send a wire message; a plain dict is what a compromised server may send (any bytes)."""
        ws = self.wait_connected(device)
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(ws_send(ws, msg), self._loop).result(10)

    def wait_connected(self, device: str, timeout: float = 30) -> WebSocket:
        with self._cond:
            if not self._cond.wait_for(lambda: device in self.sockets, timeout):
                raise TimeoutError(f"agent {device} did not connect")
            return self.sockets[device]

    def wait_disconnected(self, device: str, timeout: float = 30) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: device not in self.sockets, timeout):
                raise TimeoutError(f"agent {device} did not disconnect")

    def evidence(self, device: str, index: int, *, checkpoint: bytes | None = None) -> dict[str, Any]:
        """Inclusion and consistency proofs as an honest server computes them."""
        t = self.tenant
        cp = checkpoint or t.checkpoint()
        size = trust.decode_payload(trust.decode_envelope(cp).payload, trust.Checkpoint).size
        seen = self.agent_view.get(device, {}).get("checkpoint_size", 0)
        consistency = t.tree.consistency_proof(seen, size) if 0 < seen <= size else []
        return {"checkpoint": cp.decode(), "index": index,
                "inclusion": [h.hex() for h in t.tree.inclusion_proof(index, size)],
                "consistency": [h.hex() for h in consistency]}

    def job_message(self, device: str, job: bytes, grant: bytes, payloads: dict[str, bytes],
                    index: int, **evidence: Any) -> dict[str, Any]:
        job_id = trust.decode_payload(trust.decode_envelope(job).payload, trust.Job).id
        ev = self.evidence(device, index, **evidence)
        msg = wire.JobMessage(job_id=job_id, job=job.decode(), grant=grant.decode(),
                              payloads={k: base64.b64encode(v).decode() for k, v in payloads.items()},
                              log=wire.JobLog(checkpoint=ev["checkpoint"], index=ev["index"],
                                              inclusion=ev["inclusion"], consistency=ev["consistency"]))
        doc: dict[str, Any] = msgspec.to_builtins(msg)  # a mapping, so a test may tamper with it
        return doc

    def publish(self, job: bytes, grant: bytes, payloads: dict[str, bytes], devices: list[str]) -> str:
        """Log the job, sign a checkpoint, deliver it to each device: the honest path."""
        index = self.tenant.append(job)
        cp = self.tenant.checkpoint()
        for d in devices:
            self.send(d, self.job_message(d, job, grant, payloads, index, checkpoint=cp))
        return trust.decode_payload(trust.decode_envelope(job).payload, trust.Job).id

    def wait_receipt(self, job_id: str, device: str, timeout: float = 60) -> Receipt:
        with self._cond:
            if not self._cond.wait_for(lambda: self.receipts.get((job_id, device)), timeout):
                raise TimeoutError(f"no receipt for {job_id} from {device}")
            return self.receipts[(job_id, device)][0]

    def wait_view(self, device: str, key: str, value: int, timeout: float = 30) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.agent_view.get(device, {}).get(key) == value, timeout):
                raise TimeoutError(f"agent {device} did not report {key}={value}")


async def ws_send(ws: WebSocket | None, msg: wire.Message | dict[str, Any]) -> None:
    if ws is not None:
        await ws.send_text(wire.encode_message(msg) if isinstance(msg, wire.Message) else json.dumps(msg))
