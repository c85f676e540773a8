"""Simulated agents for the fleet benchmark: many real agents in one process.

Each simulated agent has its own device key, enrols with a one-time token
over pinned HTTPS, holds its own WebSocket connection, and verifies every
job with the real ``rampart.trust.authorize_job`` (pinned root, grant, job,
payload digests, inclusion and consistency proofs, nonces) before answering
with a receipt signed by its device key. It does not execute the script
(outcome ``ran``, detail ``simulated``): the benchmark measures the server.

    python bench/sim_agents.py --server URL --cert-sha256 FP --root-sha256 H \
        --tokens FILE --ready FILE
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import random
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from websockets.asyncio.client import connect

from rampart import tlspin, trust, wire
from rampart.agent.connection import backoff_delays, busy_delay
from rampart.trust import Checkpoint, DeviceKey, Receipt


class SimAgent:
    def __init__(self, key: DeviceKey, root: trust.TrustedRoot) -> None:
        self.key = key
        self.device_id = trust.device_id_for(key.public)  # type: ignore[arg-type]
        self.root = root
        self.nonces: set[str] = set()
        self.jobs: set[str] = set()
        self.checkpoint: Checkpoint | None = None
        self.receipts = 0
        self.refusals: list[str] = []
        #: Receipts made, by job; receipts sent again for a job delivered again.
        self.answered: dict[str, bytes] = {}
        self.resent = 0
        #: Handshakes completed, when the last one completed (time.time()), and 1013s received.
        self.connects = 0
        self.connected_at = 0.0
        self.told_busy = 0

    def handle(self, msg: wire.JobMessage) -> bytes:
        """The receipt for ``msg``: a job delivered again (its receipt was lost with a node) gets
        the receipt already made, as the real agent answers it; it does not run twice."""
        if msg.job_id in self.answered:
            self.resent += 1
            return self.answered[msg.job_id]
        self.answered[msg.job_id] = receipt = self._answer(msg)
        return receipt

    def _answer(self, msg: wire.JobMessage) -> bytes:
        lg = msg.log
        payloads = {k: base64.b64decode(v) for k, v in msg.payloads.items()}
        outcome, refusal, detail = "ran", "", "simulated"
        try:
            auth = trust.authorize_job(
                root=self.root, grant=msg.grant.encode(), job=msg.job.encode(),
                payloads=payloads,
                log=trust.LogEvidence(checkpoint=lg.checkpoint.encode(), index=lg.index,
                                      inclusion=tuple(bytes.fromhex(h) for h in lg.inclusion),
                                      consistency=tuple(bytes.fromhex(h) for h in lg.consistency)),
                last_checkpoint=self.checkpoint,
                device=trust.DevicePolicy(device_id=self.device_id, write_roots=("/srv",)),
                now=int(time.time()), seen_nonces=self.nonces, seen_jobs=self.jobs,
                proofs=msg.proofs if isinstance(msg.proofs, trust.DeviceProofs) else None,
            )
            self.nonces.add(auth.job.nonce)
            self.jobs.add(auth.job.id)
            self.checkpoint = auth.checkpoint
        except trust.TrustError as exc:
            outcome, refusal, detail = "refused", exc.reason, exc.message
            self.refusals.append(exc.reason)
        now = time.time()
        r = Receipt(tenant=self.root.tenant, job=msg.job_id, device=self.device_id,
                    outcome=outcome, refusal=refusal, detail=detail,  # type: ignore[arg-type]
                    exit_code=0 if outcome == "ran" else None,
                    stdout_sha256=hashlib.sha256(b"").hexdigest(), started_at=now, ended_at=now)
        return trust.sign_envelope(Receipt.PAYLOAD_TYPE, trust.encode_payload(r), [self.key]).to_bytes()

    async def session(self, urls: list[str], ctx: Any, connected: asyncio.Event, stop: asyncio.Event) -> None:
        """Connect and serve jobs; reconnect as the real agent does (the next gateway of its list,
        after its jittered back-off, or a busy node's 1013 delay in its place:
        rampart.agent.connection)."""
        delays = backoff_delays()
        turn = -1
        while not stop.is_set():
            turn += 1
            url = urls[turn % len(urls)]
            try:
                async with connect(url, ssl=ctx, max_size=wire.MAX_MESSAGE_BYTES, open_timeout=60,
                                   ping_interval=None) as ws:
                    ch = wire.decode_challenge(await ws.recv())
                    await ws.send(wire.encode_message(wire.sign_hello(
                        self.key, ch, self.device_id, agent_version="sim", root_version=self.root.version,
                        checkpoint_size=self.checkpoint.size if self.checkpoint else 0)))
                    wire.decode_welcome(await ws.recv())
                    self.connects += 1
                    self.connected_at = time.time()
                    connected.set()
                    delays = backoff_delays()
                    async for raw in ws:
                        msg = wire.decode_server_message(raw)
                        if isinstance(msg, wire.JobMessage):
                            receipt = self.handle(msg)
                            await ws.send(wire.encode_message(wire.ReceiptMessage(
                                job_id=msg.job_id, receipt=receipt.decode(),
                                checkpoint_size=self.checkpoint.size if self.checkpoint else 0)))
                            self.receipts += 1
            except (TimeoutError, OSError, Exception) as exc:  # noqa: BLE001 - reconnect on anything
                if stop.is_set():
                    return
                busy = busy_delay(exc)
                if busy is not None:
                    self.told_busy += 1
                await asyncio.sleep(busy * random.uniform(0.5, 1.5) if busy is not None else next(delays))


async def main_async(a: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    parts = urlsplit(a.server)
    cert = tlspin.fetch_pinned_certificate(parts.hostname or "127.0.0.1", parts.port or 443, a.cert_sha256)
    ctx = tlspin.pinned_context(cert)
    tokens = [t for t in Path(a.tokens).read_text().split() if t]
    keys = [DeviceKey.generate() for _ in tokens]
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(32)
    roots: list[str] = []
    gateway: list[str] = []
    async with httpx.AsyncClient(verify=ctx, timeout=120) as client:
        async def enrol(tok: str, key: DeviceKey) -> None:
            async with sem:
                for _ in range(10):  # 503 means "busy, retry": the transaction rolled back whole
                    r = await client.post(f"{a.server}/agent/v1/enroll", json={
                        "token": tok, "public_key": key.public.to_text(), "hostname": "sim",
                        "agent_version": "sim"})
                    if r.status_code != 503:
                        break
                    await asyncio.sleep(1)
                r.raise_for_status()
                if not roots:
                    roots.extend(r.json()["roots"])
                    if r.json().get("gateway_url"):
                        gateway.append(r.json()["gateway_url"])
        await asyncio.gather(*(enrol(t, k) for t, k in zip(tokens, keys, strict=True)))
    enrol_s = time.perf_counter() - t0
    Path(a.ready + ".enrolled").write_text(json.dumps({
        "devices": [trust.device_id_for(k.public) for k in keys], "enrol_s": enrol_s}))
    while not Path(a.ready + ".go").exists():  # the driver approves the devices meanwhile
        await asyncio.sleep(0.05)
    pinned = next(e for e in roots if trust.root_sha256(e.encode()) == a.root_sha256)
    root = trust.pin_root(pinned.encode(), expected_sha256=a.root_sha256, now=int(time.time()))
    agents = [SimAgent(k, root) for k in keys]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    urls = a.gateway or [gateway[0] if gateway else a.server.replace("https://", "wss://") + "/agent/v1/ws"]
    events = [asyncio.Event() for _ in agents]
    tasks = []

    async def connect_range(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            tasks.append(asyncio.create_task(agents[i].session(urls, ctx, events[i], stop)))
            if i % 50 == 49:
                await asyncio.sleep(0)
        await asyncio.gather(*(e.wait() for e in events[lo:hi]))

    # A first few connections warm the server's one-time caches, so the driver can
    # measure the marginal memory of each further agent.
    warm = min(a.warm, len(agents))
    t1 = time.perf_counter()
    await connect_range(0, warm)
    warm_s = time.perf_counter() - t1
    Path(a.ready + ".warm").write_text(json.dumps({"warm": warm}))
    while not Path(a.ready + ".go2").exists():
        await asyncio.sleep(0.05)
    t2 = time.perf_counter()
    await connect_range(warm, len(agents))
    connect_s = warm_s + (time.perf_counter() - t2)  # both phases, without the pause between them
    Path(a.ready).write_text(json.dumps({
        "devices": [ag.device_id for ag in agents], "enrol_s": enrol_s, "connect_s": connect_s}))
    # A reconnect storm (scale_bench.py): once every agent has connected a second time, say when
    # the last one did and how often a busy node turned one away.
    while not stop.is_set() and not Path(a.ready + ".storm").exists():
        await asyncio.sleep(0.05)
    while not stop.is_set() and any(ag.connects < 2 for ag in agents):
        await asyncio.sleep(0.1)
    if not stop.is_set():
        Path(a.ready + ".reconnected").write_text(json.dumps({
            "last_connected_at": max(ag.connected_at for ag in agents),
            "told_busy": sum(ag.told_busy for ag in agents)}))
    await stop.wait()
    Path(a.ready + ".final").write_text(json.dumps({
        "receipts": sum(ag.receipts for ag in agents),
        "jobs_answered": sum(len(ag.answered) for ag in agents),
        "receipts_resent": sum(ag.resent for ag in agents),
        "refusals": sorted({r for ag in agents for r in ag.refusals})}))
    for t in tasks:
        t.cancel()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--cert-sha256", required=True)
    p.add_argument("--root-sha256", required=True)
    p.add_argument("--tokens", required=True)
    p.add_argument("--ready", required=True)
    p.add_argument("--warm", type=int, default=50)
    p.add_argument("--gateway", action="append", default=[],
                   help="a gateway to try in turn (repeatable; default: the one enrolment names)")
    asyncio.run(main_async(p.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
