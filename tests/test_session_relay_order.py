"""The relay never loses a device's answer to a session job, whatever order the two sides arrive in.

A CI run hit this: the device refused a session job (a path outside its write roots) so fast that
its receipt was stored while the technician's socket was still reading whether one existed. The
read saw none, the refusal was told to no channel, and the technician waited 60 s for nothing.
These tests drive the relay through each interleaving of "the receipt is stored" and "the
technician attaches" with a refusal receipt signed by a real device key.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rampart import trust
from rampart.server.models import JobRow
from rampart.server.relay import RelayRefused, SessionRelay
from rampart.trust import RECEIPT_TYPE, DeviceKey, Receipt

JOB_ID = trust.new_job_id()
TENANT = "tn-" + "a" * 16


def _refusal(device: DeviceKey) -> tuple[Receipt, str]:
    r = Receipt(tenant=TENANT, job=JOB_ID, device=trust.device_id_for(device.public), outcome="refused",
                refusal="path-not-allowed", detail="outside the device's allowed write roots")
    return r, trust.sign_envelope(RECEIPT_TYPE, trust.encode_payload(r), [device]).to_bytes().decode()


class _Relay(SessionRelay):
    """The relay with its two database reads answered from memory, and a hook inside the receipt read."""

    def __init__(self, device_id: str) -> None:
        async def send(_device: str, _text: str) -> bool:
            return True

        super().__init__(store=None, audit=None, send_to_device=send)  # type: ignore[arg-type]
        self.device_id = device_id
        self.stored: Receipt | None = None
        self.during_read: Any = None

    def _session_job(self, job_id: str) -> Any:
        row = JobRow(id=job_id, tenant_id=TENANT, kind="shell", account_id=7)
        return (row, None, self.device_id) if job_id == JOB_ID else None

    def _receipt_of(self, job_id: str, device_id: str) -> Receipt | None:
        seen = self.stored  # the read's snapshot is taken first...
        if self.during_read is not None:
            self.during_read()  # ...and the gateway commits and announces a receipt meanwhile
        return seen


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_refusal_stored_while_the_technician_attaches_reaches_the_technician() -> None:
    key = DeviceKey.generate()
    relay = _Relay(trust.device_id_for(key.public))
    receipt, envelope = _refusal(key)

    def gateway_stores_the_refusal() -> None:
        relay.stored = receipt
        relay.receipt_stored(JOB_ID, envelope)

    relay.during_read = gateway_stores_the_refusal

    async def attach() -> None:
        with pytest.raises(RelayRefused, match="device refused the session job: path-not-allowed"):
            await relay.open_for_operator(JOB_ID, 7, None)

    _run(attach())
    assert JOB_ID not in relay.channels  # nothing left attached


def test_a_refusal_stored_before_the_technician_attaches_is_told_at_once() -> None:
    key = DeviceKey.generate()
    relay = _Relay(trust.device_id_for(key.public))
    receipt, envelope = _refusal(key)
    relay.receipt_stored(JOB_ID, envelope)  # no channel yet: nothing to tell
    relay.stored = receipt

    async def attach() -> None:
        with pytest.raises(RelayRefused, match="device refused the session job: path-not-allowed"):
            await relay.open_for_operator(JOB_ID, 7, None)

    _run(attach())
    assert JOB_ID not in relay.channels


def test_a_refusal_stored_after_the_technician_attached_ends_the_channel_with_a_notice() -> None:
    key = DeviceKey.generate()
    relay = _Relay(trust.device_id_for(key.public))
    _, envelope = _refusal(key)

    async def attach_then_refuse() -> str:
        ch = await relay.open_for_operator(JOB_ID, 7, None)
        relay.receipt_stored(JOB_ID, envelope)
        assert ch.closed.is_set() and ch.ended == "refused"
        return ch.to_operator.get_nowait()

    notice = _run(attach_then_refuse())
    assert '"device-refused"' in notice and "path-not-allowed" in notice


def test_a_second_socket_for_an_attached_session_is_refused_and_the_first_keeps_it() -> None:
    key = DeviceKey.generate()
    relay = _Relay(trust.device_id_for(key.public))

    async def twice() -> None:
        ch = await relay.open_for_operator(JOB_ID, 7, None)
        with pytest.raises(RelayRefused, match="already open elsewhere"):
            await relay.open_for_operator(JOB_ID, 7, None)
        assert relay.channels[JOB_ID] is ch and ch.attached

    _run(twice())


def _accept() -> Any:
    from rampart.wire.session import SessionAcceptMessage
    return SessionAcceptMessage(job_id=JOB_ID, device_key="k", agent_key="a", header="h", sig="s")


def _frame(seq: int) -> Any:
    from rampart.wire.session import SessionFrameMessage
    return SessionFrameMessage(job_id=JOB_ID, seq=seq, data="AAAA")


def test_the_device_connection_closing_ends_the_sessions_it_carried_and_no_other() -> None:
    """A CI run hung 120 s in `rampart cp`: nothing told a technician that the device's connection
    (and with it the session) was gone. The channel now ends with ``device-lost``, after what is queued."""
    key = DeviceKey.generate()
    device = trust.device_id_for(key.public)
    relay = _Relay(device)
    old_conn, new_conn = object(), object()

    async def run() -> list[str]:
        ch = await relay.open_for_operator(JOB_ID, 7, None)
        assert await relay.from_device(device, "accept-text", _accept(), via=old_conn)
        assert await relay.from_device(device, "frame-text", _frame(1), via=old_conn)
        relay.device_left(device, new_conn)  # another connection of the device closing: not this session's
        assert not ch.closed.is_set() and not ch.ended
        relay.device_left(device, old_conn)
        assert ch.closed.is_set() and ch.ended == "device-lost"
        assert relay.channels[JOB_ID] is ch  # still attached: the technician's socket drains, then leaves
        return [ch.to_operator.get_nowait() for _ in range(ch.to_operator.qsize())]

    queued = _run(run())
    assert queued[:2] == ["accept-text", "frame-text"]  # the device's frames first, then the notice
    assert '"device-lost"' in queued[2]


def test_a_session_answered_by_its_receipt_closes_the_channel_after_its_frames() -> None:
    key = DeviceKey.generate()
    device = trust.device_id_for(key.public)
    relay = _Relay(device)
    r = Receipt(tenant=TENANT, job=JOB_ID, device=device, outcome="failed", detail="no dynamic user")
    envelope = trust.sign_envelope(RECEIPT_TYPE, trust.encode_payload(r), [key]).to_bytes().decode()

    async def run() -> list[str]:
        ch = await relay.open_for_operator(JOB_ID, 7, None)
        assert await relay.from_device(device, "accept-text", _accept(), via=object())
        relay.receipt_stored(JOB_ID, envelope)
        assert ch.closed.is_set() and ch.ended == "failed"
        # A frame arriving after the end is not queued for a socket that is leaving.
        assert await relay.from_device(device, "late-frame", _frame(2))
        return [ch.to_operator.get_nowait() for _ in range(ch.to_operator.qsize())]

    queued = _run(run())
    assert queued[0] == "accept-text" and '"device-ended"' in queued[1] and len(queued) == 2


def test_late_frames_of_a_session_nobody_holds_are_dropped_not_kept() -> None:
    """After the technician left, the device's last frames find no channel: none is made for them
    (each would be a queue held for ever), while a frame for another device's job is still refused."""
    key = DeviceKey.generate()
    device = trust.device_id_for(key.public)
    relay = _Relay(device)

    async def run() -> None:
        assert await relay.from_device(device, "frame-text", _frame(5))
        assert JOB_ID not in relay.channels
        assert not await relay.from_device("dev-" + "b" * 24, "frame-text", _frame(5))
        # An accept with no technician yet makes the channel the technician will attach to...
        assert await relay.from_device(device, "accept-text", _accept(), via=object())
        assert JOB_ID in relay.channels
        # ...and the session's receipt, with nobody attached, removes it.
        r = Receipt(tenant=TENANT, job=JOB_ID, device=device, outcome="failed", detail="relay-lost")
        relay.receipt_stored(JOB_ID, trust.sign_envelope(RECEIPT_TYPE, trust.encode_payload(r),
                                                         [key]).to_bytes().decode())
        assert JOB_ID not in relay.channels

    _run(run())
