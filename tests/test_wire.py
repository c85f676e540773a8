"""The wire contract (rampart.wire): both unions round-trip, refusals are stable, one handshake rule."""

from __future__ import annotations

import json

import pytest

from rampart import trust, wire
from rampart.trust import DeviceKey
from rampart.wire import session as ws
from rampart.wire.check_result import CheckResult

JOB_ID = "job-" + "a" * 20
HEX = "ab" * 32

SERVER_SAMPLES: list[wire.Message] = [
    wire.JobMessage(job_id=JOB_ID, job="{}", grant="{}", payloads={"script": "dHJ1ZQo="},
                    log=wire.JobLog(checkpoint="{}", index=3, inclusion=[HEX], consistency=[HEX])),
    wire.AckMessage(job_id=JOB_ID),
    wire.RootsMessage(envelopes=["{}"]),
    wire.RevocationsMessage(envelopes=[]),
    wire.CancellationsMessage(envelopes=["{}"]),
    wire.DetectionMessage(sanctioned=["anydesk"], dormant_days=30, catalog_sha256=HEX, catalog="eJw="),
    wire.InventoryAckMessage(result=HEX),
    wire.InventoryFullMessage(),
    wire.InventoryRequestMessage(),
    wire.CheckAckMessage(seq=7, refused="too late"),
    wire.ErrorMessage(detail="no", job_id=JOB_ID),
    ws.SessionFrameMessage(job_id=JOB_ID, seq=3, data="AAAA"),
    ws.SessionCloseMessage(job_id=JOB_ID, reason="relay-lost"),
    ws.RecordingAckMessage(job_id=JOB_ID, refused="no such session"),
]
AGENT_SAMPLES: list[wire.Message] = [
    wire.ReceiptMessage(job_id=JOB_ID, receipt="{}", checkpoint_size=4),
    wire.StateMessage(root_version=2, checkpoint_size=9),
    wire.InventoryMessage(report="eJw=", result=HEX, base=HEX),
    wire.CheckResultMessage(seq=1, result=CheckResult(job=JOB_ID, run_at=1.0, duration_s=0.5, ok=True,
                                                      interval_s=60)),
    ws.SessionAcceptMessage(job_id=JOB_ID, device_key="A" * 43 + "=", agent_key="B" * 43 + "=",
                            header="C" * 32, sig="D" * 88),
    ws.SessionFrameMessage(job_id=JOB_ID, seq=4, data="AAAA"),
    ws.SessionEndMessage(job_id=JOB_ID, reason="exit"),
    ws.SessionRecordingMessage(job_id=JOB_ID, offset=0, data="AAAA", last=True),
]
#: Sealed session frames travel both ways (the relay routes them by job id).
BOTH_WAYS = {"session-frame"}


def test_every_message_type_has_a_sample_and_round_trips() -> None:
    assert {type(m).__struct_config__.tag for m in SERVER_SAMPLES} == wire.SERVER_MESSAGE_TYPES
    assert {type(m).__struct_config__.tag for m in AGENT_SAMPLES} == wire.AGENT_MESSAGE_TYPES
    for m in SERVER_SAMPLES:
        assert wire.decode_server_message(wire.encode_message(m)) == m
    for m in AGENT_SAMPLES:
        assert wire.decode_agent_message(wire.encode_message(m)) == m


def test_each_side_refuses_the_other_sides_messages() -> None:
    assert wire.SERVER_MESSAGE_TYPES & wire.AGENT_MESSAGE_TYPES == BOTH_WAYS
    for m in SERVER_SAMPLES:
        if type(m).__struct_config__.tag in BOTH_WAYS:
            continue
        with pytest.raises(wire.WireError) as e:
            wire.decode_agent_message(wire.encode_message(m))
        assert e.value.reason == "unknown-type"
    for m in AGENT_SAMPLES:
        if type(m).__struct_config__.tag in BOTH_WAYS:
            continue
        with pytest.raises(wire.WireError) as e:
            wire.decode_server_message(wire.encode_message(m))
        assert e.value.reason == "unknown-type"


@pytest.mark.parametrize(("text", "reason"), [
    ('{"type":"nonsense"}', "unknown-type"),
    ('{"job_id":"x"}', "unknown-type"),
    ('"job"', "unknown-type"),
    ("{", "not-json"),
    ('{"type":"ack","job_id":"job-SHORT"}', "malformed"),
    ('{"type":"ack","job_id":"' + JOB_ID + '","extra":1}', "malformed"),
    ('{"type":"check-ack","seq":0}', "malformed"),
    ('{"type":"error","detail":"' + "x" * 301 + '"}', "malformed"),
    ('{"type":"detection","sanctioned":[],"dormant_days":0}', "malformed"),
])
def test_refusals_have_a_stable_reason(text: str, reason: str) -> None:
    with pytest.raises(wire.WireError) as e:
        wire.decode_server_message(text)
    assert e.value.reason == reason and reason in wire.WireError.REASONS


def _job_with_proofs(log_hashes: list[str], device_hashes: list[str]) -> str:
    """A job message whose log inclusion and both device-set proofs carry the given hashes."""
    return json.dumps({
        "type": "job", "job_id": JOB_ID, "job": "{}", "grant": "{}",
        "log": {"checkpoint": "{}", "index": 3, "inclusion": log_hashes, "consistency": list(log_hashes)},
        "proofs": {"job": {"index": 0, "path": device_hashes}, "grant": {"index": 1, "path": [HEX]}},
    })


@pytest.mark.parametrize("bad", ["AB" * 32, "g" * 64, " " * 64, "\u00e9" * 64, "ab" * 31 + "a", "ab" * 33])
@pytest.mark.parametrize("where", ["log", "device-set"])
def test_T13_a_job_whose_proof_hash_is_not_lowercase_hex_is_malformed(bad: str, where: str) -> None:
    """Every hash of every proof a job carries is checked, wherever it sits in the proof."""
    good = [HEX, HEX, HEX]
    hashes = [HEX, bad, HEX]
    text = _job_with_proofs(hashes, good) if where == "log" else _job_with_proofs(good, hashes)
    with pytest.raises(wire.WireError) as e:
        wire.decode_server_message(text)
    assert (e.value.reason, e.value.message_type, e.value.job_id) == ("malformed", "job", JOB_ID)
    ok = wire.decode_server_message(_job_with_proofs(good, good))
    assert isinstance(ok, wire.JobMessage) and ok.log.inclusion == good
    assert isinstance(ok.proofs, trust.DeviceProofs) and ok.proofs.job.path == good  # type: ignore[union-attr]


def test_a_refused_job_names_its_id_only_when_the_id_is_well_formed() -> None:
    with pytest.raises(wire.WireError) as e:
        wire.decode_server_message(json.dumps({"type": "job", "job_id": JOB_ID, "job": 5}))
    assert (e.value.reason, e.value.message_type, e.value.job_id) == ("malformed", "job", JOB_ID)
    with pytest.raises(wire.WireError) as e:
        wire.decode_server_message(json.dumps({"type": "job", "job_id": "../x", "job": "{}"}))
    assert (e.value.message_type, e.value.job_id) == ("job", None)


def test_a_message_over_the_limit_is_refused_before_it_is_parsed() -> None:
    big = '{"type":"error","detail":"' + "x" * wire.MAX_MESSAGE_BYTES + '"}'
    with pytest.raises(wire.WireError) as e:
        wire.decode_server_message(big)
    assert e.value.reason == "too-large"
    with pytest.raises(wire.WireError) as e:
        wire.decode_agent_message('{"type":"state","root_version":1,"checkpoint_size":1}', max_bytes=10)
    assert e.value.reason == "too-large"


def test_the_handshake_is_one_rule_for_both_sides() -> None:
    key, other = DeviceKey.generate(), DeviceKey.generate()
    device_id = trust.device_id_for(key.public)  # type: ignore[arg-type]
    challenge = wire.new_challenge()
    assert wire.decode_challenge(wire.encode_message(challenge)) == challenge
    assert wire.auth_message("ab", "dev-1") == b"rampart-agent-auth-v1\nab\ndev-1"
    hello = wire.decode_hello(wire.encode_message(wire.sign_hello(key, challenge, device_id, root_version=3)))
    assert hello.root_version == 3 and wire.check_hello(key.public, challenge, hello)
    assert not wire.check_hello(other.public, challenge, hello)
    assert not wire.check_hello(key.public, wire.new_challenge(), hello)
    forged = wire.Hello(device=device_id, sig="not base64!")
    assert not wire.check_hello(key.public, challenge, forged)
    assert wire.decode_welcome('{"type":"welcome","status":"pending"}').status == "pending"
    with pytest.raises(wire.WireError):
        wire.decode_welcome('{"type":"welcome","status":"root"}')
