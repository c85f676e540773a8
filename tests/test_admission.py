"""Issue 18, admission under load (rampart/server/admission.py, rampart/wire/admission.py).

A node takes a bounded number of agent handshakes at once and a bounded line of waiters;
the others are closed with 1013 and a delay, which the agent waits (jittered) instead of its
growing back-off. Played for real: a flood of hellos against a real server's gateway, and a
real agent against a node that says it is busy.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from harness.agent import AgentProcess, stop_all
from harness.mini_server import MiniServer
from harness.operators import bootstrap_owner, ok, setup_tenant
from harness.server import RunningServer, start_server
from harness.tenant import Tenant
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from rampart import trust, wire
from rampart.trust import DeviceKey
from rampart.wire.admission import CLOSE_TRY_AGAIN, parse_try_again, try_again_reason

FLOOD = 60


@pytest.fixture
def base(open_base: Path) -> Path:
    return open_base


async def _flood(server: RunningServer, n: int) -> list[tuple[int, str]]:
    """``n`` connections that each read their challenge, then all send a hello at once (forged
    devices: each costs the node a lookup); the close code and reason each one gets."""
    ctx = server.ssl_context()
    conns = [await connect(server.ws_url, ssl=ctx, ping_interval=None) for _ in range(n)]
    challenges = [wire.decode_challenge(await c.recv()) for c in conns]
    keys = [DeviceKey.generate() for _ in range(n)]
    hellos = [wire.encode_message(wire.sign_hello(k, ch, trust.device_id_for(k.public)))  # type: ignore[arg-type]
              for k, ch in zip(keys, challenges, strict=True)]
    await asyncio.gather(*(c.send(h) for c, h in zip(conns, hellos, strict=True)))

    async def ending(c: object) -> tuple[int, str]:
        try:
            await c.recv()  # type: ignore[attr-defined]
        except ConnectionClosed as exc:
            return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (1006, "")
        return (0, "answered")

    return list(await asyncio.gather(*(ending(c) for c in conns)))


def test_T16_a_handshake_flood_is_told_to_try_again_and_an_agent_still_gets_in(
        base: Path, db_url: str | None) -> None:
    """One handshake at a time, two in line: of sixty hellos at once, the ones that find the line
    full are closed at once with 1013 and a delay to come back after; the rest are looked up
    (and refused: the devices are forged). Nothing is stored for them, the node stays responsive,
    and a real agent enrolled afterwards connects."""
    server = start_server(base / "server", db_url, handshake_slots=1, handshake_queue=2, handshake_wait_s=5)
    agent = AgentProcess(base / "agent")
    try:
        owner = bootstrap_owner(server)
        t = setup_tenant(owner, "acme")
        before = ok(owner.http.get(f"/tenants/{t.id}/devices"))
        ends = asyncio.run(_flood(server, FLOOD))
        busy = [reason for code, reason in ends if code == CLOSE_TRY_AGAIN]
        refused = [code for code, _ in ends if code == 4401]
        assert len(busy) + len(refused) == FLOOD, ends
        # How many get a lookup depends on how fast the node drains its line while the hellos
        # arrive; that some are turned away, and none waits beyond its turn, does not.
        assert busy and refused, ends
        assert all(parse_try_again(r) is not None and 5 <= (parse_try_again(r) or 0) <= 10 for r in busy)
        assert "busy:" in server.log_path.read_text()
        assert ok(owner.http.get(f"/tenants/{t.id}/devices")) == before  # nothing stored for them
        # Every slot was given back: the next forged hello is looked up (4401), not turned away.
        assert asyncio.run(_flood(server, 1)) == [(4401, "")]
        tok = ok(owner.http.post(f"/tenants/{t.id}/enrollment-tokens", json={"ttl_s": 600}))
        r = agent.enroll(server.url, tok["token"], tok["root_sha256"], server.cert_sha256)
        assert r.returncode == 0, r.stderr
        agent.start()
        agent.wait_log("connected to", timeout=60)
    finally:
        stop_all([agent])
        server.stop()


def test_an_agent_told_the_node_is_busy_waits_the_delay_it_names(base: Path) -> None:
    """A node closes the first two hellos with 1013 "try again in 3 s": the agent logs it and
    comes back after the named delay, jittered (1.5 to 4.5 s), not after its 1 s back-off."""
    tenant = Tenant()
    server = MiniServer(base / "server", tenant).start()
    agent = AgentProcess(base / "agent")
    try:
        r = agent.enroll(server.url, server.new_token(), tenant.root_sha256, server.cert_sha256)
        assert r.returncode == 0, r.stderr
        server.turn_away = (2, CLOSE_TRY_AGAIN, try_again_reason(3))
        agent.start()
        server.wait_connected(agent.device_id, timeout=60)
        assert agent.log_text().count("the server is busy: trying again in about 3 s") == 2
        gaps = [b - a for a, b in zip(server.arrivals, server.arrivals[1:], strict=False)]
        assert len(gaps) == 2 and all(1.4 <= g <= 6 for g in gaps), gaps
    finally:
        stop_all([agent])
        server.stop()


@pytest.mark.parametrize("reason, delay", [
    ("busy: try again in 7 s", 7), ("busy: try again in 0 s", 1), ("busy: try again in 99999 s", 300),
    ("busy: try again in -5 s", None), ("busy: try again in 7 s\x1b[2J", None), ("", None),
    ("busy: try again in 1234567 s", None),
])
def test_a_try_again_reason_is_read_within_bounds_whatever_it_says(reason: str, delay: int | None) -> None:
    assert parse_try_again(reason) == delay


def test_admission_keeps_its_bounds() -> None:
    """Many handshakes at once against two slots and three places in line: never more than two
    inside; the waiters get in in arrival order; the rest are turned away at once."""
    from rampart.server.admission import Admission, AdmissionLimits

    async def scenario() -> tuple[int, list[int], int]:
        adm = Admission(AdmissionLimits(slots=2, queue=3, wait_s=5))
        inside, most, order = 0, 0, []

        async def one(i: int) -> bool:
            nonlocal inside, most
            if not await adm.enter():
                return False
            inside += 1
            most = max(most, inside)
            order.append(i)
            await asyncio.sleep(0.05)
            inside -= 1
            adm.leave()
            return True

        results = await asyncio.gather(*(one(i) for i in range(20)))
        assert adm.admitted == sum(results) and adm.turned_away == 20 - sum(results)
        return most, order, sum(results)

    most, order, admitted = asyncio.run(scenario())
    assert most == 2 and admitted == 5 and order == [0, 1, 2, 3, 4]
    started = time.monotonic()

    async def timeout_case() -> bool:
        from rampart.server.admission import Admission, AdmissionLimits
        adm = Admission(AdmissionLimits(slots=1, queue=5, wait_s=0.3))
        assert await adm.enter()
        return await adm.enter()  # waits its 0.3 s in line, then is turned away

    assert asyncio.run(timeout_case()) is False
    assert 0.25 <= time.monotonic() - started < 3
