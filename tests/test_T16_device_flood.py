"""T16: a hostile device's floods cost its own budget, and what it says of itself is flagged.

A real server, an honest real agent process running signed jobs, and a
flooder that holds a real device key and speaks the real protocol at full
speed (:class:`harness.wsagent.WireAgent`): exactly what an attacker with
root on one managed endpoint has. Each test measures the honest device in
the same run before and during the flood, and asserts a small multiple of
that baseline (these machines are noisy), that the flooder was refused by
*device*, that the operator was told, and that storage stayed bounded.
Sizes are modest for CI; ``make bench-flood`` reports the same at full speed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.fleet import Fleet, make_fleet
from harness.flood import Honest, answer, churn, flood_findings, full_report, inventory
from harness.flood import flooder as enrol_flooder
from harness.operators import ok
from harness.server import RunningServer
from websockets.exceptions import ConnectionClosed

from rampart.server.config import ServerLimits
from rampart.wire import Finding

pytestmark = pytest.mark.store

LIMITS = ServerLimits()


# --- helpers -------------------------------------------------------------------------------------

def _alerts(f: Fleet, **params: Any) -> list[dict[str, Any]]:
    return list(ok(f.tenant.owner.http.get(f"/tenants/{f.tenant.id}/alerts", params=params)))


def _wait(what: str, fn: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def _rss_mib(server: RunningServer) -> float:
    pid = server.proc.pid  # type: ignore[union-attr]
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def fleet1(server: RunningServer) -> Iterator[Fleet]:
    """One honest real agent process, enrolled, approved and connected."""
    yield from make_fleet(server, 1)


@pytest.fixture
def honest(fleet1: Fleet) -> Fleet:
    """The honest agent with an open warning alert of its own (a failing port check)."""
    dev = fleet1.devices[0]
    ok(fleet1.tenant.owner.http.post(f"/tenants/{fleet1.tenant.id}/checks", json={
        "kind": "port", "device": dev, "params": {"port": 9, "proto": "tcp"}}))
    _wait("the honest device's check alert",
          lambda: [a for a in _alerts(fleet1) if a["kind"] == "check-failed" and a.get("device") == dev])
    return fleet1


def _bound(baseline: float, floor: float = 3.0) -> float:
    """A small multiple of the baseline measured in the same test, with a floor for a noisy machine."""
    return max(5 * baseline, baseline + floor)


# --- the tests -----------------------------------------------------------------------------------

def test_T16_findings_flood_costs_only_the_flooding_device(honest: Fleet) -> None:
    f = honest
    h = Honest(f)
    base_job = max(h.job(), h.job())
    base_read = max(h.read() for _ in range(5))
    flooder = enrol_flooder(f)
    acks: list[dict[str, Any]] = []

    def flood() -> None:
        # Every report carries the most findings an agent may send, all new, all critical.
        for i in range(LIMITS.inventory_burst):
            flooder.send(full_report(inventory(3 + i % 2), flood_findings(str(i))))
        for _ in range(LIMITS.inventory_burst):
            acks.append(answer(flooder))

    flooding = threading.Thread(target=flood)
    flooding.start()
    time.sleep(0.5)
    during_job = h.job()
    during_read = max(h.read() for _ in range(5))
    flooding.join(timeout=300)
    assert not flooding.is_alive()
    print(f"honest job {base_job:.2f}s -> {during_job:.2f}s during the flood; "
          f"API read {base_read * 1000:.0f}ms -> {during_read * 1000:.0f}ms")
    assert during_job <= _bound(base_job), (base_job, during_job)
    assert during_read <= _bound(base_read, floor=2.0), (base_read, during_read)
    # The flood was taken within budget: stored, but bounded per device.
    assert sum(a["type"] == "inventory-ack" for a in acks) >= 1
    t = f.tenant
    findings = list(ok(t.owner.http.get(f"/tenants/{t.id}/findings", params={"status": "open"})))
    mine = [x for x in findings if x["device"] == flooder.device_id]
    assert 0 < len(mine) <= LIMITS.max_findings_per_device
    # One aggregate alert says so, instead of thousands.
    over = [a for a in _alerts(f) if a["kind"] == "findings-over-budget"]
    assert len(over) == 1 and over[0]["device"] == flooder.device_id and "budget" in over[0]["subject"]
    every = _alerts(f, status="live", per_device=0, limit=1000)
    mine_alerts = [a for a in every if a.get("device") == flooder.device_id]
    assert len(mine_alerts) <= LIMITS.max_findings_per_device + 3
    # The honest device's alert is still in the default view (severity first, per-device cap).
    view = _alerts(f)
    assert any(a["kind"] == "check-failed" and a.get("device") == f.devices[0] for a in view)
    flooder.close()


def test_T16_parallel_connections_with_one_device_key_share_one_budget(fleet1: Fleet) -> None:
    f = fleet1
    first = enrol_flooder(f, hostname="cloned")
    counts = churn(f, first, threads=8, seconds=6.0)
    # One device, one budget: the burst (plus at most one refill) whatever the connections.
    print(f"over 8 parallel connections: {counts}")
    assert counts["accepted"] <= LIMITS.inventory_burst + 1
    assert counts["closed_4429"], "the device was never disconnected for its churn"
    alerts = _alerts(f, per_device=0)
    kinds = {a["kind"] for a in alerts if a.get("device") == first.device_id}
    assert "device-throttled" in kinds or "device-blocked" in kinds, kinds
    assert "device-connections" in kinds, kinds
    # The operator is told once, not once per refusal.
    assert len([a for a in alerts if a["kind"] == "device-throttled"]) <= 1


def test_T16_oversized_and_refused_frames_disconnect_the_device_for_a_backoff(honest: Fleet) -> None:
    f = honest
    h = Honest(f)
    base_job = max(h.job(), h.job())
    rss_before = _rss_mib(f.server)
    flooder = enrol_flooder(f)
    near_limit = "A" * (LIMITS.max_ws_message_bytes - 1024)
    closed_with: list[int] = []

    def flood() -> None:
        try:
            for _ in range(LIMITS.abuse_refusals + 10):
                flooder.send({"type": "inventory", "report": near_limit, "result": "0" * 64})
        except ConnectionClosed as exc:
            closed_with.append(exc.rcvd.code if exc.rcvd else 0)
            return
        with contextlib.suppress(Exception):
            while True:
                flooder.recv(timeout=30)

    flooding = threading.Thread(target=flood)
    flooding.start()
    during_job = h.job()
    flooding.join(timeout=120)
    print(f"honest job {base_job:.2f}s -> {during_job:.2f}s during near-limit frames; "
          f"server RSS {rss_before:.0f} -> {_rss_mib(f.server):.0f} MiB")
    assert during_job <= _bound(base_job), (base_job, during_job)
    # The device was disconnected for abuse and its reconnection is refused during the back-off.
    with pytest.raises(ConnectionClosed) as refused:
        flooder.connect()
    assert refused.value.rcvd is not None and refused.value.rcvd.code == 4429
    blocked = [a for a in _alerts(f) if a["kind"] == "device-blocked"]
    assert len(blocked) == 1 and blocked[0]["device"] == flooder.device_id
    assert blocked[0]["severity"] == "critical" and "refused for" in blocked[0]["detail"]
    # Refused frames were never decoded into anything that stays: memory stays bounded.
    assert _rss_mib(f.server) - rss_before < 300
    # The honest device is untouched by its neighbour's block.
    assert h.job() <= _bound(base_job)


def test_T16_hostile_identity_raises_a_finding_the_device_cannot_clear(honest: Fleet) -> None:
    f = honest
    t = f.tenant
    hostile_host = "db-01\x1b]52;c;cm0gLXJmIH4=\x07\u202eexe.ssh"
    agent = enrol_flooder(f, hostname=hostile_host)
    inv = inventory(2, os_name="Debian\x1b[2J\u2066 12")
    agent.send(full_report(inv, [Finding(kind="eol-os", severity="warning", key="server:identity",
                                   subject="all clear")]))
    assert answer(agent)["type"] == "inventory-ack"

    def identity() -> dict[str, Any] | None:
        rows = ok(t.owner.http.get(f"/tenants/{t.id}/findings", params={"status": "open"}))
        return next((x for x in rows if x["device"] == agent.device_id and x["key"] == "server:identity"),
                    None)

    found = _wait("the identity finding", identity)
    assert found["kind"] == "suspicious-identity"
    ev = found["evidence"]
    assert ev["enrolled-hostname"] == "db-01\\x1b]52;c;cm0gLXJmIH4=\\x07\\u202eexe.ssh"
    assert ev["os.name"] == "Debian\\x1b[2J\\u2066 12"
    assert not any(c in str(found) for c in "\x1b\x07\u202e\u2066")
    # The device reported a finding under the server's key: ignored, it cannot overwrite or clear it.
    assert found["subject"] != "all clear"
    agent.send(full_report(inventory(3), []))  # a clean OS name; the enrolled hostname is still hostile
    assert answer(agent)["type"] == "inventory-ack"
    still = identity()
    assert still is not None and "os.name" not in still["evidence"]
    assert "enrolled-hostname" in still["evidence"]
    alerts = [a for a in _alerts(f) if a["kind"] == "suspicious-identity"]
    assert len(alerts) == 1 and alerts[0]["device"] == agent.device_id
    assert not any(c in alerts[0]["subject"] + alerts[0]["detail"] for c in "\x1b\x07\u202e\u2066")
    # The honest device has no such finding.
    rows = ok(t.owner.http.get(f"/tenants/{t.id}/findings", params={"status": "all"}))
    assert not [x for x in rows if x["device"] == f.devices[0] and x["kind"] == "suspicious-identity"]
    agent.close()


def test_T16_frames_over_the_limit_count_against_the_device_and_end_in_a_block(fleet1: Fleet) -> None:
    f = fleet1
    agent = enrol_flooder(f, hostname="oversized")
    too_big = "A" * (LIMITS.max_ws_message_bytes + 16)
    codes: list[int] = []
    for _ in range(2 * LIMITS.abuse_refusals + 5):  # a loaded machine may let a few age out of the window
        try:
            if agent.ws is None:
                agent.connect()
            agent.send({"type": "inventory", "report": too_big, "result": "0" * 64})
            while True:
                agent.recv(timeout=10)
        except ConnectionClosed as exc:
            codes.append(exc.rcvd.code if exc.rcvd else 0)
            agent.ws = None
            if codes[-1] == 4429:
                break
    # The transport closes each over-limit frame's connection (1009); each counts, and the device ends
    # blocked: its next connection is refused (4429) and the operator is told.
    assert 1009 in codes and codes[-1] == 4429, codes
    # The transport has closed before the server counts the frame, so the block (refused at once) can be
    # ahead of its alert (written after): the alert is waited for.
    blocked = _wait("the device-blocked alert",
                    lambda: [a for a in _alerts(f) if a["kind"] == "device-blocked"])
    assert len(blocked) == 1 and blocked[0]["device"] == agent.device_id
