"""The agent's message handling, in process and without a socket (rampart.agent.connection.Link).

Like python-tuf's updater tests against an in-memory repository, a
:class:`SeamServer` plays the server: it builds :mod:`rampart.wire` messages
from a test tenant (real keys, a real Merkle log) and feeds them to
:meth:`Link.receive`, and it decodes everything the agent sends back with the
server's own decoder. Nothing here opens a socket or runs a job: the jobs
below are refused by the trust core or stopped at the wire, which is the point.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
from pathlib import Path

import pytest
from harness.localagent import local_agent
from harness.tenant import Tenant

from rampart import trust, wire
from rampart.agent.connection import Link


class SeamServer:
    """An in-memory server for one in-process agent: it builds what it sends, and decodes what it gets."""

    def __init__(self, tenant: Tenant, link: Link) -> None:
        self.tenant = tenant
        self.link = link
        self.received: list[wire.AgentMessage] = []

    async def _collect(self, text: str) -> None:
        self.received.append(wire.decode_agent_message(text))  # exactly what the gateway would accept

    async def connect(self) -> None:
        await self.link.start(None, self._collect)

    async def send(self, msg: wire.Message | str) -> None:
        await self.link.receive(msg if isinstance(msg, str) else wire.encode_message(msg))

    def job(self, job: bytes, grant: bytes, payloads: dict[str, bytes], *,
            logged: bool = True) -> wire.JobMessage:
        """A job message with honest proofs; ``logged=False`` proves inclusion of another entry instead."""
        t = self.tenant
        index = t.append(job if logged else b"some other entry")
        cp = t.checkpoint()
        size = trust.decode_payload(trust.decode_envelope(cp).payload, trust.Checkpoint).size
        job_id = trust.decode_payload(trust.decode_envelope(job).payload, trust.Job).id
        return wire.JobMessage(
            job_id=job_id, job=job.decode(), grant=grant.decode(),
            payloads={k: base64.b64encode(v).decode() for k, v in payloads.items()},
            log=wire.JobLog(checkpoint=cp.decode(), index=index,
                            inclusion=[h.hex() for h in t.tree.inclusion_proof(index, size)]))

    def receipts(self) -> list[trust.Receipt]:
        key = self.link.agent.key.public
        return [trust.verify_receipt(m.receipt.encode(), key)  # type: ignore[arg-type]
                for m in self.received if isinstance(m, wire.ReceiptMessage)]


@pytest.fixture
def seam(tmp_path: Path) -> SeamServer:
    tenant = Tenant()
    agent = local_agent(tmp_path / "state", tenant)
    link = Link(agent, "https://127.0.0.1:9", ssl.create_default_context())
    server = SeamServer(tenant, link)
    asyncio.run(server.connect())
    return server


def test_unknown_message_types_are_refused_with_a_stable_reason(seam: SeamServer,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rampart.agent")
    for text in ['{"type":"nonsense"}', '{"type":"run-now","script":"rm -rf /"}', '{"no":"type"}', "[1,2]"]:
        asyncio.run(seam.send(text))
    assert seam.link.refused == {"unknown-type": 4}
    assert seam.link.jobs.empty() and seam.received == []
    assert "refused a server message (unknown type): unknown-type" in caplog.text


def test_a_known_message_that_breaks_its_type_is_refused_as_malformed(seam: SeamServer) -> None:
    """As strict as the gateway: a bad field, a missing one or an extra one refuses the whole message."""
    for text in ['{"type":"ack","job_id":"../../etc/passwd"}',
                 '{"type":"inventory-request","please":"run this"}',
                 '{"type":"roots"}',
                 '{"type":"check-ack","seq":"1"}',
                 "{not json"]:
        asyncio.run(seam.send(text))
    assert seam.link.refused == {"malformed": 4, "not-json": 1}
    assert seam.link.jobs.empty() and seam.received == []


def test_a_valid_job_message_reaches_the_job_handler_typed(seam: SeamServer,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    t, agent = seam.tenant, seam.link.agent
    grant = t.grant([agent.device_id])
    msg = seam.job(t.job(grant, [agent.device_id], b"true\n"), grant, {"script": b"true\n"})
    asyncio.run(seam.send(msg))
    assert seam.link.refused == {} and seam.link.jobs.qsize() == 1
    queued = seam.link.jobs.get_nowait()
    assert queued == msg

    seen: list[object] = []
    monkeypatch.setattr(agent, "handle_job", lambda m, started=None: seen.append(m))
    asyncio.run(seam.link.work_one(queued))
    assert seen == [msg]  # the typed job itself, nothing lost or loosened


def test_a_job_is_verified_by_the_trust_core_and_answered_with_a_signed_receipt(seam: SeamServer) -> None:
    t, agent = seam.tenant, seam.link.agent
    grant = t.grant([agent.device_id])
    marker = agent.state_dir.parent / "ran"
    script = f"touch {marker}\n".encode()
    msg = seam.job(t.job(grant, [agent.device_id], script), grant, {"script": script}, logged=False)

    async def deliver() -> None:
        await seam.send(msg)
        await seam.link.work_one(seam.link.jobs.get_nowait())

    asyncio.run(deliver())
    [r] = seam.receipts()
    assert (r.job, r.outcome, r.refusal) == (msg.job_id, "refused", "inconsistent-log")
    assert not marker.exists()


def test_a_malformed_job_with_a_readable_id_gets_a_signed_malformed_refusal(seam: SeamServer) -> None:
    job_id = trust.new_job_id()

    async def deliver() -> None:
        await seam.send(json.dumps({"type": "job", "job_id": job_id, "job": 5, "grant": None}))
        assert seam.link.refused == {"malformed": 1}
        await seam.link.work_one(seam.link.jobs.get_nowait())

    asyncio.run(deliver())
    [r] = seam.receipts()
    assert (r.job, r.outcome, r.refusal) == (job_id, "refused", "malformed")
    assert "$.job" in r.detail


def test_roots_and_acks_change_agent_state_only_through_verification(seam: SeamServer) -> None:
    t, link = seam.tenant, seam.link
    forged = t.make_root(2, trust.OperatorKey.generate())
    asyncio.run(seam.send(wire.RootsMessage(envelopes=[forged.decode()])))
    assert link.agent.root_version() == 1  # refused by the rotation rule, logged, still serving
    asyncio.run(seam.send(wire.RootsMessage(envelopes=[t.make_root(2).decode()])))
    assert link.agent.root_version() == 2
    states = [m for m in seam.received if isinstance(m, wire.StateMessage)]
    assert [s.root_version for s in states] == [1, 2]


def test_detection_reaches_telemetry_and_a_bad_one_keeps_the_configuration(tmp_path: Path) -> None:
    from rampart.agent.telemetry import Telemetry

    tenant = Tenant()
    agent = local_agent(tmp_path / "state", tenant)
    telemetry = Telemetry(agent)
    link = Link(agent, "https://127.0.0.1:9", ssl.create_default_context(), telemetry=telemetry)
    server = SeamServer(tenant, link)

    async def session() -> None:
        await server.connect()
        await server.send(wire.DetectionMessage(sanctioned=["anydesk"], dormant_days=45))
        await server.send('{"type":"detection","sanctioned":[],"dormant_days":0,"catalog_sha256":""}')

    asyncio.run(session())
    assert (telemetry.config.sanctioned, telemetry.config.dormant_days) == (frozenset({"anydesk"}), 45)
    assert link.refused == {"malformed": 1}
