"""Ingest benchmark: inventory deltas from 1,000 simulated agents into one real server process.

Each simulated agent (the ``--sim`` child process) has its own device key,
enrols with a one-time token over pinned HTTPS, holds its own WebSocket
connection to the real gateway over TLS, and speaks the real protocol
(``hello`` signed with its key, ``detection`` and acks from the server). The
reports are real: this machine's own inventory collected once
(``collect_full``), then a chain of snapshots where each step changes what a
steady-state agent changes in 5 minutes (metrics, CPU counters, one process
started and one ended) and carries one open finding. Every report is encoded
exactly as the agent does (``encode_report``: strict JSON, zlib, base64) and
every delta chains on the digest the server acknowledged.

Measured:

* ``full_reports_per_s``: every agent sends its first, full report at once;
* ``deltas_per_s``: then every agent sends its deltas one after another,
  each waiting for the server's ack (which comes only after the commit), all
  agents concurrently; the rate is acknowledged deltas / wall time, checked
  against the rows in the store afterwards;
* server CPU seconds per 1,000 deltas;
* a real ``rampart-agent`` process's resident memory, idle after its first
  inventory (target: at most 60 MB).

Target on the reference 2-core machine: at least 2,000 deltas per second.

    PYTHONPATH=.:tests python bench/ingest_bench.py [n_agents] [out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet_bench import wait_file as wait_json  # noqa: E402  (the simulator's ready file)

DELTAS_TARGET_PER_S = 2000.0
RSS_TARGET_MB = 60.0
#: Reports per agent connection fit the gateway's burst (20): one full, then the deltas.
DELTAS_PER_AGENT = 19


# --- the simulator (child process) ---------------------------------------------------------------


def build_messages(n_deltas: int) -> tuple[str, list[str], list[str]]:
    """The full report and a chain of delta reports; returns (full, deltas, result digests)."""
    from rampart.agent.inventory import collect_full
    from rampart.wire import Finding, InventoryMessage, Report, diff, digest, encode_message, encode_report
    from rampart.wire.inventory import CpuTicks, Metrics, Process

    now = int(time.time())
    inv = collect_full(now, "0.1.0", "full")
    finding = Finding(kind="dormant-local-user", severity="warning", key="dormant-local-user::olduser",
                      subject="Local account olduser (uid 1001) has not logged in for 90 days",
                      evidence={"user": "olduser", "uid": "1001", "days_idle": "90"})
    msgs: list[str] = []
    results = [digest(inv)]
    full = encode_message(InventoryMessage(report=encode_report(Report(full=inv, findings=[finding])),
                                           result=results[0]))
    cur = inv
    base_pid = 4_000_000
    for k in range(n_deltas):
        procs = [p for p in cur.processes if p.pid != base_pid + k - 1]
        procs.append(Process(pid=base_pid + k, ppid=1, start_ticks=k, start_time=now + k, name="cron-job",
                             exe="/usr/bin/true", uid=0, euid=0, user="root", cmdline=["/usr/bin/true"]))
        procs.sort(key=lambda p: (p.pid, p.start_ticks))
        cpu = CpuTicks(user=cur.metrics.cpu.user + 3000 + k, system=cur.metrics.cpu.system + 900,
                       idle=cur.metrics.cpu.idle + 55_000)
        metrics = Metrics(uptime_s=cur.metrics.uptime_s + 300, load1=0.1 * (k % 7), load5=0.2,
                          load15=0.3, mem_available_bytes=cur.metrics.mem_available_bytes - 4096 * k,
                          cpu=cpu, disks=cur.metrics.disks, clk_tck=cur.metrics.clk_tck)
        nxt = type(cur)(**{**{f: getattr(cur, f) for f in cur.__struct_fields__},
                           "collected_at": now + 300 * (k + 1), "processes": procs, "metrics": metrics})
        report = Report(delta=diff(cur, nxt), findings=[finding])
        results.append(digest(nxt))
        msgs.append(encode_message(InventoryMessage(report=encode_report(report), result=results[-1],
                                                    base=results[-2])))
        cur = nxt
    return full, msgs, results


class Sim:
    def __init__(self, key: Any, device_id: str) -> None:
        self.key = key
        self.device_id = device_id
        self.ws: Any = None
        self.answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.acks = 0
        self.errors: list[str] = []

    async def connect(self, url: str, ctx: Any) -> None:
        from websockets.asyncio.client import connect

        for attempt in range(20):
            try:
                self.ws = await connect(url, ssl=ctx, max_size=8 << 20, open_timeout=120, ping_interval=None,
                                        compression=None)
                break
            except (OSError, TimeoutError):
                await asyncio.sleep(0.5 + attempt)
        from rampart import wire

        ch = wire.decode_challenge(await self.ws.recv())
        await self.ws.send(wire.encode_message(wire.sign_hello(self.key, ch, self.device_id,
                                                               agent_version="sim", root_version=1)))
        wire.decode_welcome(await self.ws.recv())
        asyncio.get_running_loop().create_task(self.read())

    async def read(self) -> None:
        async for raw in self.ws:
            doc = json.loads(raw)
            if doc.get("type") in ("inventory-ack", "inventory-full", "error"):
                await self.answers.put(doc)

    async def report(self, text: str, result: str) -> bool:
        await self.ws.send(text)
        doc = await self.answers.get()
        if doc.get("type") == "inventory-ack" and doc.get("result") == result:
            self.acks += 1
            return True
        self.errors.append(str(doc.get("detail") or doc.get("type")))
        return False


async def wait_file(path: Path) -> None:
    while not path.exists():
        await asyncio.sleep(0.05)


async def sim_main(a: argparse.Namespace) -> None:
    import httpx

    from rampart import tlspin, trust
    from rampart.trust import DeviceKey

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ready = Path(a.ready)
    parts = urlsplit(a.server)
    cert = tlspin.fetch_pinned_certificate(parts.hostname or "127.0.0.1", parts.port or 443, a.cert_sha256)
    ctx = tlspin.pinned_context(cert)
    tokens = [t for t in Path(a.tokens).read_text().split() if t]
    keys = [DeviceKey.generate() for _ in tokens]
    full, deltas, results = build_messages(a.deltas)
    sem = asyncio.Semaphore(32)
    gateway: list[str] = []
    async with httpx.AsyncClient(verify=ctx, timeout=120) as client:
        async def enrol(tok: str, key: Any) -> None:
            async with sem:
                for _ in range(10):
                    r = await client.post(f"{a.server}/agent/v1/enroll", json={
                        "token": tok, "public_key": key.public.to_text(), "hostname": "sim",
                        "agent_version": "sim"})
                    if r.status_code != 503:
                        break
                    await asyncio.sleep(1)
                r.raise_for_status()
                if r.json().get("gateway_url") and not gateway:
                    gateway.append(r.json()["gateway_url"])
        await asyncio.gather(*(enrol(t, k) for t, k in zip(tokens, keys, strict=True)))
    sims = [Sim(k, trust.device_id_for(k.public)) for k in keys]
    Path(str(ready) + ".enrolled").write_text(json.dumps({"devices": [s.device_id for s in sims]}))
    await wait_file(Path(str(ready) + ".go"))
    url = gateway[0] if gateway else a.server.replace("https://", "wss://") + "/agent/v1/ws"
    t0 = time.perf_counter()
    for i in range(0, len(sims), 50):
        await asyncio.gather(*(s.connect(url, ctx) for s in sims[i:i + 50]))
    Path(str(ready) + ".connected").write_text(json.dumps({"connect_s": time.perf_counter() - t0}))

    await wait_file(Path(str(ready) + ".full"))
    t1 = time.perf_counter()
    await asyncio.gather(*(s.report(full, results[0]) for s in sims))
    full_s = time.perf_counter() - t1
    Path(str(ready) + ".full-done").write_text(json.dumps({
        "full_s": full_s, "acks": sum(s.acks for s in sims), "report_bytes": len(full)}))

    await wait_file(Path(str(ready) + ".deltas"))

    async def chain(s: Sim) -> None:
        for text, result in zip(deltas, results[1:], strict=True):
            if not await s.report(text, result):
                return

    before = sum(s.acks for s in sims)
    t2 = time.perf_counter()
    await asyncio.gather(*(chain(s) for s in sims))
    deltas_s = time.perf_counter() - t2
    errors = sorted({e for s in sims for e in s.errors})
    Path(str(ready) + ".deltas-done").write_text(json.dumps({
        "deltas_s": deltas_s, "acks": sum(s.acks for s in sims) - before, "errors": errors[:5],
        "delta_bytes": round(sum(len(d) for d in deltas) / len(deltas)), "final": results[-1]}))
    await wait_file(Path(str(ready) + ".stop"))
    for s in sims:
        await s.ws.close()


# --- the driver ----------------------------------------------------------------------------------


def proc_status(pid: int, name: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {name}")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def store_counts(server: Any, devices: list[str], final: str) -> dict[str, int]:
    from sqlalchemy import func, select

    from rampart.server.config import load_config
    from rampart.server.db import Store
    from rampart.server.models import DeviceInventory, InventoryDelta

    store = Store(load_config(server.data_dir).db_url)
    try:
        with store.read() as s:
            deltas = s.scalar(select(func.count()).select_from(InventoryDelta)) or 0
            at_final = s.scalar(select(func.count()).select_from(DeviceInventory).where(
                DeviceInventory.head == final, DeviceInventory.device_id.in_(devices))) or 0
    finally:
        store.dispose()
    return {"delta_rows": int(deltas), "devices_at_final_head": int(at_final)}


def agent_idle_rss(server: Any, owner: Any, tenant_id: str, root_sha256: str, base: Path) -> dict[str, float]:
    """A real rampart-agent: enrolled, approved, first inventory reported, then idle."""
    from harness.agent import AgentProcess, agent_cmd
    from harness.operators import ok

    tok = ok(owner.http.post(f"/tenants/{tenant_id}/enrollment-tokens", json={"ttl_s": 600}))["token"]
    agent = AgentProcess(base / "real-agent")
    r = agent.enroll(server.url, tok, root_sha256, server.cert_sha256)
    assert r.returncode == 0, r.stderr
    ok(owner.http.post(f"/tenants/{tenant_id}/devices/{agent.device_id}/approve"))
    with open(agent.log, "ab") as logf:
        agent.proc = subprocess.Popen(agent_cmd("run", "--state", str(agent.state)),
                                      stdout=subprocess.DEVNULL, stderr=logf)
    try:
        deadline = time.time() + 60
        while owner.http.get(f"/tenants/{tenant_id}/devices/{agent.device_id}/inventory").status_code != 200:
            if time.time() > deadline:
                raise TimeoutError(agent.log_text()[-2000:])
            time.sleep(0.2)
        time.sleep(10)  # idle: connected, first inventory reported, waiting for the next interval
        pid = agent.proc.pid
        return {"agent_idle_rss_mb": round(proc_status(pid, "VmRSS"), 1),
                "agent_peak_rss_mb": round(proc_status(pid, "VmHWM"), 1)}
    finally:
        agent.stop()


def run(n: int) -> dict[str, Any]:
    from harness.operators import bootstrap_owner, make_root, ok, sign_root
    from harness.server import start_server

    from rampart import trust

    base = Path(tempfile.mkdtemp(prefix="rampart-ingest-bench-"))
    base.chmod(0o755)
    server = start_server(base)
    assert server.proc is not None
    sim = None
    try:
        owner = bootstrap_owner(server)
        tenant = ok(owner.http.post("/tenants", json={"name": "ingest"}))
        tid = tenant["id"]
        okey = owner.add_key(tid)
        root = sign_root(make_root(tenant, 1, owners=[okey]), [okey])
        ok(owner.http.post(f"/tenants/{tid}/roots", json={"envelope": root}))
        root_sha = trust.root_sha256(root.encode())
        tokens = [ok(owner.http.post(f"/tenants/{tid}/enrollment-tokens", json={"ttl_s": 3600}))["token"]
                  for _ in range(n)]
        (base / "tokens").write_text("\n".join(tokens))
        ready = base / "ready"
        sim = subprocess.Popen(
            [sys.executable, __file__, "--sim", "--server", server.url, "--cert-sha256", server.cert_sha256,
             "--tokens", str(base / "tokens"), "--ready", str(ready), "--deltas", str(DELTAS_PER_AGENT)],
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                              os.environ.get("PYTHONPATH", "")])})
        devices = wait_json(Path(str(ready) + ".enrolled"), sim, 900)["devices"]
        for d in devices:
            ok(owner.http.post(f"/tenants/{tid}/devices/{d}/approve"))
        Path(str(ready) + ".go").touch()
        connected = wait_json(Path(str(ready) + ".connected"), sim, 900)
        time.sleep(1.0)
        cpu0 = cpu_s(server.proc.pid)
        Path(str(ready) + ".full").touch()
        full = wait_json(Path(str(ready) + ".full-done"), sim, 900)
        cpu1 = cpu_s(server.proc.pid)
        Path(str(ready) + ".deltas").touch()
        done = wait_json(Path(str(ready) + ".deltas-done"), sim, 900)
        cpu2 = cpu_s(server.proc.pid)
        Path(str(ready) + ".stop").touch()
        sim.wait(timeout=120)
        sim = None
        counts = store_counts(server, devices, done["final"])
        findings = len(ok(owner.http.get(f"/tenants/{tid}/findings", params={"limit": 5000})))
        rss = agent_idle_rss(server, owner, tid, root_sha, base)
        rate = done["acks"] / done["deltas_s"]
        result: dict[str, Any] = {
            "benchmark": "ingest",
            "agents": n,
            "cpus": os.cpu_count(),
            "connect_all_s": round(connected["connect_s"], 2),
            "full_reports": full["acks"],
            "full_report_bytes": full["report_bytes"],
            "full_reports_per_s": round(full["acks"] / full["full_s"], 1),
            "deltas_acked": done["acks"],
            "delta_message_bytes": done["delta_bytes"],
            "deltas_s": round(done["deltas_s"], 2),
            "deltas_per_s": round(rate, 1),
            "server_cpu_s_per_1000_deltas": round((cpu2 - cpu1) / max(done["acks"], 1) * 1000, 3),
            "server_cpu_s_full_phase": round(cpu1 - cpu0, 2),
            "errors": done["errors"],
            **counts,
            "open_findings": findings,
            **rss,
            "target_deltas_per_s": DELTAS_TARGET_PER_S,
            "target_agent_rss_mb": RSS_TARGET_MB,
        }
        result["meets_targets"] = (rate >= DELTAS_TARGET_PER_S and rss["agent_idle_rss_mb"] <= RSS_TARGET_MB
                                   and done["acks"] == n * DELTAS_PER_AGENT
                                   and counts["delta_rows"] == done["acks"]
                                   and counts["devices_at_final_head"] == n)
        return result
    finally:
        if sim is not None:
            sim.send_signal(signal.SIGTERM)
            try:
                sim.wait(timeout=30)
            except subprocess.TimeoutExpired:
                sim.kill()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str]) -> int:
    if len(argv) > 1 and argv[1] == "--sim":
        p = argparse.ArgumentParser()
        p.add_argument("--sim", action="store_true")
        p.add_argument("--server", required=True)
        p.add_argument("--cert-sha256", required=True)
        p.add_argument("--tokens", required=True)
        p.add_argument("--ready", required=True)
        p.add_argument("--deltas", type=int, default=DELTAS_PER_AGENT)
        asyncio.run(sim_main(p.parse_args(argv[1:])))
        return 0
    n = int(argv[1]) if len(argv) > 1 else 1000
    out = Path(argv[2]) if len(argv) > 2 else Path(__file__).resolve().parent / "results" / "ingest.json"
    result = run(n)
    print(json.dumps(result))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
