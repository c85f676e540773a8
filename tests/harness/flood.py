"""A hostile device's floods for tests and benchmarks (T16): reports, findings and honest-job timing.

The flooder is a :class:`harness.wsagent.WireAgent`: a real device key speaking the real protocol,
which is what an attacker with root on one managed endpoint holds.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from websockets.exceptions import ConnectionClosed

from rampart.wire import InventoryMessage
from rampart.wire.finding import MAX_FINDINGS, Finding
from rampart.wire.inventory import AgentInfo, EolStatus, Inventory, OsInfo, Process
from rampart.wire.inventory_delta import digest
from rampart.wire.telemetry import Report, encode_report

from .fleet import Fleet
from .operators import approved_grant, ok
from .wsagent import WireAgent

RECORD = b'echo "$RAMPART_DEVICE_ID $RAMPART_JOB_ID" >> %s/runs.log\n'


def inventory(n: int, *, os_name: str = "Debian GNU/Linux 12", host: str = "flood") -> Inventory:
    procs = [Process(pid=100 + i, ppid=1, start_ticks=i, start_time=1_800_000_000, name=f"p{i}", uid=0,
                     euid=0) for i in range(n)]
    os_info = OsInfo(id="debian", name=os_name, kernel_release="6.1.0", kernel_version="#1 SMP",
                     arch="x86_64", hostname=host, boot_time=1_800_000_000, eol=EolStatus(status="current"))
    return Inventory(collected_at=1_800_000_000, agent=AgentInfo(version="wire", containment="none"),
                     os=os_info, processes=procs)


def flood_findings(tag: str, n: int = MAX_FINDINGS) -> list[Finding]:
    return [Finding(kind="rat-port", severity="critical", key=f"flood:{tag}:{i}",
                    subject=f"listener {i} of a flood") for i in range(n)]


def full_report(inv: Inventory, findings: list[Finding]) -> InventoryMessage:
    return InventoryMessage(report=encode_report(Report(full=inv, findings=findings)), result=digest(inv))


def answer(agent: WireAgent, timeout: float = 60.0) -> dict[str, Any]:
    while True:
        doc = agent.recv(timeout=timeout)
        if doc["type"] in ("inventory-ack", "inventory-full", "error"):
            return doc


def timed(fn: Callable[[], object]) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def flooder(f: Fleet, hostname: str = "flooder") -> WireAgent:
    """A second device of the fleet's tenant, enrolled and approved, whose key the attacker holds."""
    tok = ok(f.tenant.owner.http.post(f"/tenants/{f.tenant.id}/enrollment-tokens", json={"ttl_s": 600}))
    agent = WireAgent.enrol(f.server, tok["token"], tok["root_sha256"], hostname=hostname)
    ok(f.tenant.owner.http.post(f"/tenants/{f.tenant.id}/devices/{agent.device_id}/approve"))
    assert agent.connect()["type"] == "welcome"
    return agent


class Honest:
    """Runs one signed job on the fleet's honest agents and times it (post to every receipt stored)."""

    def __init__(self, f: Fleet) -> None:
        self.f = f
        self.grant = approved_grant(f.tenant, f.devices)

    def job(self) -> float:
        return timed(lambda: self.f.wait_done([self.f.post_job(self.grant, self.f.devices,
                                                               RECORD % str(self.f.scratch).encode())],
                                              timeout=180))

    def read(self) -> float:
        return timed(lambda: ok(self.f.tenant.tech.http.get(f"/tenants/{self.f.tenant.id}/devices")))


def churn(f: Fleet, key_holder: WireAgent, *, threads: int, seconds: float) -> dict[str, int]:
    """``threads`` connections with one device key, reconnecting and reporting as fast as they can.

    Counts reports acknowledged (only the acks of the reports sent: every connection also gets the
    stored head as an ``inventory-ack``), refused, connection attempts and closes for abuse (4429).
    """
    counts = {"accepted": 0, "refused": 0, "closed_4429": 0, "connects": 0}
    lock = threading.Lock()

    def attacker(n: int) -> None:
        clone = WireAgent(f.server, key_holder.key, key_holder.device_id, key_holder.tenant, key_holder.root)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                with lock:
                    counts["connects"] += 1
                clone.connect()
                for i in range(10):
                    inv = inventory(n * 1000 + i)
                    clone.send(full_report(inv, []))
                    doc = answer(clone, timeout=10)
                    while doc["type"] == "inventory-ack" and doc["result"] != digest(inv):
                        doc = answer(clone, timeout=10)
                    with lock:
                        counts["accepted" if doc["type"] == "inventory-ack" else "refused"] += 1
            except ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code == 4429:
                    with lock:
                        counts["closed_4429"] += 1
            except (TimeoutError, OSError, AssertionError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    clone.close()

    workers = [threading.Thread(target=attacker, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=seconds + 120)
    return counts
