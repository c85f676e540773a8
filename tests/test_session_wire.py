"""The session layer's own guarantees, offline: keys, seals, the device's accept, the terminal filter.

What tests/test_T1_session_relay.py shows against a live relay, checked here exhaustively on the
primitives: every alteration, injection, reordering, replay or drop of a sealed frame fails to open,
and an accept that is not the targeted device's own is refused.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rampart import trust
from rampart.cli.termfilter import TerminalFilter
from rampart.trust import DeviceKey
from rampart.wire import session as ws

JOB = "job-" + "s" * 20


def _pair() -> tuple[ws.SessionSealer, ws.SessionOpener, ws.ClientKeys, bytes, bytes]:
    """A technician's sealer towards a device's opener, keyed as a real session is."""
    client = ws.client_keys()
    public, secret = ws.server_keys()
    c_rx, c_tx = ws.client_session_keys(client, public)
    d_rx, d_tx = ws.server_session_keys(public, secret, client.public)
    assert c_tx == d_rx and c_rx == d_tx and c_tx != c_rx
    sealer = ws.SessionSealer(c_tx, JOB)
    return sealer, ws.SessionOpener(d_rx, sealer.header, JOB), client, public, secret


def _frames(n: int) -> list[ws.Frame]:
    return [ws.Data(data=f"echo {i}\r".encode()) for i in range(n)]


def test_frames_open_in_order_and_the_final_one_ends_the_stream() -> None:
    sealer, opener, *_ = _pair()
    sealed = [sealer.seal(f) for f in _frames(3)] + [sealer.seal(ws.Close(), final=True)]
    assert [opener.open(s) for s in sealed] == [*_frames(3), ws.Close()]
    assert opener.final
    with pytest.raises(ws.FrameError):
        opener.open(sealed[0])


@pytest.mark.parametrize("attack", ["alter", "inject", "reorder", "replay", "drop", "other-session"])
def test_T1_every_tampering_of_the_stream_fails_to_open(attack: str) -> None:
    sealer, opener, *_ = _pair()
    sealed = [sealer.seal(f) for f in _frames(4)]
    assert opener.open(sealed[0]) == _frames(1)[0]
    rest = sealed[1:]
    if attack == "alter":
        rest[0] = rest[0][:10] + bytes([rest[0][10] ^ 1]) + rest[0][11:]
    elif attack == "inject":
        other, _, *_ = _pair()
        rest.insert(0, other.seal(ws.Data(data=b"rm -rf /\r")))
    elif attack == "reorder":
        rest[0], rest[1] = rest[1], rest[0]
    elif attack == "replay":
        rest.insert(0, sealed[0])
    elif attack == "drop":
        rest.pop(0)
    else:  # a frame sealed for another session (same keys, other job id) does not open here
        stray = ws.SessionSealer(b"\x00" * 32, "job-" + "o" * 20)
        rest.insert(0, stray.seal(ws.Data(data=b"id\r")))
    with pytest.raises(ws.FrameError) as e:
        opener.open(rest[0])
    assert e.value.reason == "frame-auth-failed"


def test_T1_an_accept_is_taken_only_from_the_targeted_device_for_these_keys() -> None:
    device, impostor = DeviceKey.generate(), DeviceKey.generate()
    device_id = trust.device_id_for(device.public)
    client = ws.client_keys()
    public, _ = ws.server_keys()
    header = ws.SessionSealer(b"\x01" * 32, JOB).header

    def accept(key: DeviceKey, *, job: str = JOB, client_key: bytes = client.public,
               agent_key: bytes = public) -> ws.SessionAcceptMessage:
        sig = key.sign(ws.accept_transcript(job, client_key, agent_key, header))
        return ws.SessionAcceptMessage(job_id=JOB, device_key=key.public.to_b64(),
                                       agent_key=ws.b64(agent_key), header=ws.b64(header), sig=ws.b64(sig))

    assert ws.check_accept(accept(device), job_id=JOB, device_id=device_id, client_key=client.public) == (
        public, header)
    bad = {
        "another device's key": accept(impostor),
        "signed for another session": accept(device, job="job-" + "x" * 20),
        "signed over another client key": accept(device, client_key=ws.client_keys().public),
    }
    relay_swapped_key = accept(device)
    bad["agent key swapped by the relay"] = ws.SessionAcceptMessage(
        job_id=JOB, device_key=relay_swapped_key.device_key, agent_key=ws.b64(ws.server_keys()[0]),
        header=relay_swapped_key.header, sig=relay_swapped_key.sig)
    for why, msg in bad.items():
        with pytest.raises(ws.AcceptError):
            ws.check_accept(msg, job_id=JOB, device_id=device_id, client_key=client.public)
        assert why


HOSTILE = [
    b"\x1b]52;c;cm0gLXJmIH4K\x07",  # OSC 52: write the technician's clipboard
    b"\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\",  # OSC 8 hyperlink
    b"\x1bP$q\"p\x1b\\",  # DCS: DECRQSS (the terminal answers into the session)
    b"\x1b[21t",  # report the window title
    b"\x1b_tmux passthrough\x1b\\",  # APC
    b"\xc2\x9d52;c;x\x07",  # a C1 OSC in UTF-8
]


@pytest.mark.parametrize("seq", HOSTILE)
def test_T16_the_terminal_filter_drops_what_acts_beyond_drawing_in_any_split(seq: bytes) -> None:
    text = b"before " + seq + b" after"
    for cut in range(len(text) + 1):
        f = TerminalFilter()
        out = f.feed(text[:cut]) + f.feed(text[cut:])
        assert b"before " in out and b" after" in out
        for marker in (b"]52", b"]8;", b"P$q", b"[21t", b"_tmux", b"\xc2\x9d"):
            assert marker not in out


def test_the_terminal_filter_keeps_what_a_shell_draws() -> None:
    ok = (b"\x1b[1;31mred\x1b[0m \x1b[2J\x1b[H\x1b[?1049h\x1b[?25l\x1b]0;my title\x07"
          b"\x1b[10;20H\xc3\xa9t\xc3\xa9 \xe2\x9c\x93\r\n")
    f = TerminalFilter()
    assert f.feed(ok) == ok and f.dropped == 0
    for cut in range(len(ok) + 1):
        g = TerminalFilter()
        assert g.feed(ok[:cut]) + g.feed(ok[cut:]) == ok


def test_T16_with_drop_queries_no_sequence_a_terminal_answers_survives_in_any_split() -> None:
    """The local console's browser terminal (xterm.js) answers queries by emitting input."""
    queries = (b"\x1b[c", b"\x1b[0c", b"\x1b[>c", b"\x1b[=c", b"\x1b[5n", b"\x1b[6n", b"\x1b[?6n",
               b"\x1b[x", b"\x1b[18t", b"\x1b[14;2t", b"\x1b[?2004$p", b"\x1b[4$p", b"\x1bP$qm\x1b\\",
               b"\x1b]11;?\x07", b"\x1b]52;c;?\x07")
    for q in queries:
        text = b"\x1b[1mbefore " + q + b" after\x1b[0m"
        for cut in range(len(text) + 1):
            f = TerminalFilter(drop_queries=True)
            out = f.feed(text[:cut]) + f.feed(text[cut:])
            assert out == b"\x1b[1mbefore  after\x1b[0m", (q, cut)
    # Without the option (a real terminal: `rampart shell`), CSI queries pass as before.
    assert TerminalFilter().feed(b"\x1b[c\x1b[6n") == b"\x1b[c\x1b[6n"


@given(st.binary(max_size=400), st.integers(min_value=0, max_value=400))
def test_the_terminal_filter_is_chunking_independent(data: bytes, cut: int) -> None:
    whole = TerminalFilter().feed(data)
    f = TerminalFilter()
    assert f.feed(data[:cut]) + f.feed(data[cut:]) == whole
