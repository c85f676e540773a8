"""Remote sessions on the wire: relay messages, the end-to-end frames inside them, and their crypto.

docs/design/remote-sessions.md. Two layers:

* **Relay messages** (JSON text, like every agent-link message): what the
  server routes between the technician's CLI and the agent. The server reads
  only the job id and the sequence number; ``data`` is ciphertext.
* **Frames** (msgpack, tagged by ``t``): what the two ends say to each other,
  each sealed in one libsodium ``secretstream_xchacha20poly1305`` message whose
  additional data is the job id. A stream ratchets after every message, so a
  frame the relay injects, alters, reorders, replays or drops fails to open,
  and the last frame carries ``TAG_FINAL``, so a cut stream is seen as cut.

Keys: the technician's ephemeral ``crypto_kx`` key is signed inside the shell
job; the agent answers with its own, signed by its device key together with
the job id, the client key and its stream header (:func:`accept_transcript`).
Both derive the same two session keys (``crypto_kx_*_session_keys``). The relay
holds neither private half, so it can neither read nor forge a frame, nor pose
as the device. Pure: no I/O.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta
from nacl import bindings as sodium
from nacl.exceptions import CryptoError

from rampart.trust import DevicePublicKey, b64decode_strict, device_id_for

from .base import Count, Message, WireError
from .limits import JOB_ID_PATTERN, MAX_DETAIL_CHARS, MAX_MESSAGE_BYTES

__all__ = [
    "ACCEPT_CONTEXT", "FRAME_PLAINTEXT_MAX", "AcceptError", "ClientKeys", "Close", "Data", "Exit",
    "FileChunk", "FileDone", "FileGet", "FilePut", "FileResult", "Frame", "FrameError", "Notice",
    "OperatorMessage", "RelayMessage", "RelayNotice", "Resize", "SessionAcceptMessage",
    "RecordingAckMessage", "SessionCloseMessage", "SessionEndMessage", "SessionFrameMessage",
    "SessionOpener", "SessionRecordingMessage",
    "SessionSealer", "accept_transcript", "check_accept", "client_keys", "decode_frame",
    "decode_operator_message", "decode_relay_message", "encode_frame", "server_keys",
]

JobId = Annotated[str, Meta(pattern=JOB_ID_PATTERN)]
B64 = Annotated[str, Meta(max_length=MAX_MESSAGE_BYTES)]
Reason = Annotated[str, Meta(max_length=32, pattern=r"^[a-z-]*$")]

#: Domain separation for the device's signature over a session's keys.
ACCEPT_CONTEXT: Final = b"rampart-session-accept-v1\n"
#: Largest plaintext frame (a data chunk or a file chunk plus framing).
FRAME_PLAINTEXT_MAX: Final = 256 * 1024
#: Largest file chunk in one frame.
FILE_CHUNK_BYTES: Final = 192 * 1024

_ABYTES = sodium.crypto_secretstream_xchacha20poly1305_ABYTES
_HEADER = sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES
_TAG_MESSAGE = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
_TAG_FINAL = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL


# --- relay messages (JSON, routed by the server) ---------------------------------------------------


class SessionAcceptMessage(Message, frozen=True, kw_only=True, tag="session-accept"):
    """Agent → client: its ephemeral key and stream header, signed by the device key."""

    job_id: JobId
    device_key: Annotated[str, Meta(min_length=44, max_length=44)]
    agent_key: Annotated[str, Meta(min_length=44, max_length=44)]
    header: Annotated[str, Meta(min_length=32, max_length=32)]
    sig: Annotated[str, Meta(max_length=128)]


class SessionFrameMessage(Message, frozen=True, kw_only=True, tag="session-frame"):
    """Either way: one sealed frame (base64). ``seq`` only helps the relay count; the seal orders."""

    job_id: JobId
    seq: Count
    data: B64


class SessionEndMessage(Message, frozen=True, kw_only=True, tag="session-end"):
    """Agent → server (and relayed): the session is over on the device, and why (unauthenticated)."""

    job_id: JobId
    reason: Reason


class SessionCloseMessage(Message, frozen=True, kw_only=True, tag="session-close"):
    """Server → agent: the technician's side of the relay is gone (the agent ends the session)."""

    job_id: JobId
    reason: Reason


class RelayNotice(Message, frozen=True, kw_only=True, tag="relay-notice"):
    """Server → client: relay status for people (``waiting``, ``device-offline``). Never trusted."""

    job_id: JobId
    status: Reason
    detail: Annotated[str, Meta(max_length=MAX_DETAIL_CHARS)] = ""


class SessionRecordingMessage(Message, frozen=True, kw_only=True, tag="session-recording"):
    """Agent → server: a chunk of a session's recording (its digest is in the signed receipt)."""

    job_id: JobId
    offset: Count
    data: B64
    last: bool = False


class RecordingAckMessage(Message, frozen=True, kw_only=True, omit_defaults=True, tag="recording-ack"):
    """Server → agent: the recording is stored (or refused for good): the agent may delete its copy."""

    job_id: JobId
    refused: Annotated[str, Meta(max_length=MAX_DETAIL_CHARS)] = ""


#: What the server sends a client on its relay socket.
RelayMessage = SessionAcceptMessage | SessionFrameMessage | SessionEndMessage | RelayNotice
#: What a client sends the server on its relay socket.
OperatorMessage = SessionFrameMessage | SessionCloseMessage

_RELAY_DEC = msgspec.json.Decoder(RelayMessage)
_OPERATOR_DEC = msgspec.json.Decoder(OperatorMessage)


def _decode_json(dec: msgspec.json.Decoder[Any], text: str | bytes, max_bytes: int) -> object:
    if len(text) > max_bytes:
        raise WireError("too-large", f"a message over {max_bytes} bytes")
    try:
        return dec.decode(text)
    except msgspec.ValidationError as exc:
        raise WireError("malformed", str(exc)[:MAX_DETAIL_CHARS]) from None
    except msgspec.DecodeError as exc:
        raise WireError("not-json", str(exc)[:MAX_DETAIL_CHARS]) from None


def decode_relay_message(text: str | bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> RelayMessage:
    """One message from the relay to a client, or :class:`WireError`."""
    msg = _decode_json(_RELAY_DEC, text, max_bytes)
    return msg  # type: ignore[return-value]


def decode_operator_message(text: str | bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> OperatorMessage:
    """One message from a client to the relay, or :class:`WireError`."""
    msg = _decode_json(_OPERATOR_DEC, text, max_bytes)
    return msg  # type: ignore[return-value]


# --- frames (msgpack, sealed end to end) ------------------------------------------------------------


class _Frame(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, tag_field="t"):
    pass


class Data(_Frame, frozen=True, kw_only=True, tag="d"):
    """Terminal bytes: keystrokes from the client, pty output from the device."""

    data: Annotated[bytes, Meta(max_length=FRAME_PLAINTEXT_MAX)]


class Resize(_Frame, frozen=True, kw_only=True, tag="r"):
    cols: Annotated[int, Meta(ge=1, le=1000)]
    rows: Annotated[int, Meta(ge=1, le=1000)]


class Close(_Frame, frozen=True, kw_only=True, tag="c"):
    """Client → device: the technician ends the session."""

    reason: Reason = "closed"


class Exit(_Frame, frozen=True, kw_only=True, tag="x"):
    """Device → client, the final frame: how the session ended."""

    reason: Reason
    status: int | None = None
    signal: int | None = None
    detail: Annotated[str, Meta(max_length=MAX_DETAIL_CHARS)] = ""


class Notice(_Frame, frozen=True, kw_only=True, tag="n"):
    """Device → client: something the technician should know (a watcher joined)."""

    text: Annotated[str, Meta(max_length=MAX_DETAIL_CHARS)]


Path_ = Annotated[str, Meta(min_length=1, max_length=1024, pattern=r"^/")]
FileId = Annotated[int, Meta(ge=1, le=1 << 30)]
Sha = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]


class FilePut(_Frame, frozen=True, kw_only=True, tag="fp"):
    """Client → device: a file of ``size`` bytes with this SHA-256 follows for ``path``."""

    id: FileId
    path: Path_
    size: Annotated[int, Meta(ge=0, le=1 << 40)]
    sha256: Sha
    mode: Annotated[int, Meta(ge=0, le=0o777)] = 0o644


class FileGet(_Frame, frozen=True, kw_only=True, tag="fg"):
    """Client → device: send ``path``."""

    id: FileId
    path: Path_


class FileChunk(_Frame, frozen=True, kw_only=True, tag="fc"):
    id: FileId
    data: Annotated[bytes, Meta(max_length=FILE_CHUNK_BYTES)]


class FileDone(_Frame, frozen=True, kw_only=True, tag="fd"):
    """The sender's end of a file: its SHA-256 and size as sent."""

    id: FileId
    sha256: Sha
    size: Annotated[int, Meta(ge=0, le=1 << 40)]


class FileResult(_Frame, frozen=True, kw_only=True, tag="fr"):
    """Device → client: a transfer's outcome (a get begins with ok=True and the size it will send)."""

    id: FileId
    ok: bool
    detail: Annotated[str, Meta(max_length=MAX_DETAIL_CHARS)] = ""
    size: Annotated[int, Meta(ge=0, le=1 << 40)] = 0
    sha256: Annotated[str, Meta(pattern=r"^([0-9a-f]{64})?$")] = ""


Frame = Data | Resize | Close | Exit | Notice | FilePut | FileGet | FileChunk | FileDone | FileResult

_FRAME_ENC = msgspec.msgpack.Encoder()
_FRAME_DEC = msgspec.msgpack.Decoder(Frame)


class FrameError(ValueError):
    """A frame failed to open or decode. ``reason`` is recorded by both ends:
    ``frame-auth-failed`` (injected, altered, reordered, replayed or dropped) or ``stream-truncated``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def encode_frame(frame: Frame) -> bytes:
    return _FRAME_ENC.encode(frame)


def decode_frame(data: bytes) -> Frame:
    """A frame from opened plaintext; a malformed one is a :class:`FrameError` (``frame-auth-failed``:
    only the other end could have sealed it, so it is treated as hostile)."""
    try:
        frame: Frame = _FRAME_DEC.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise FrameError("frame-auth-failed", f"a sealed frame does not decode: {exc}"[:200]) from None
    return frame


# --- keys and streams ------------------------------------------------------------------------------


class ClientKeys(msgspec.Struct, frozen=True):
    """The technician's ephemeral key pair for one session (the public half goes in the job)."""

    public: bytes
    secret: bytes

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public).decode()


def client_keys() -> ClientKeys:
    pk, sk = sodium.crypto_kx_keypair()
    return ClientKeys(public=pk, secret=sk)


def server_keys() -> tuple[bytes, bytes]:
    """The device's ephemeral (public, secret) pair for one session."""
    pk, sk = sodium.crypto_kx_keypair()
    return pk, sk


def accept_transcript(job_id: str, client_key: bytes, agent_key: bytes, header: bytes) -> bytes:
    """The bytes a device signs to accept session ``job_id``: both ephemeral keys and its stream header."""
    return (ACCEPT_CONTEXT + job_id.encode() + b"\n" + hashlib.sha256(
        client_key + agent_key + header).digest())


class AcceptError(ValueError):
    """The accept is not from the device the job targets, or not for these keys."""


def check_accept(msg: SessionAcceptMessage, *, job_id: str, device_id: str,
                 client_key: bytes) -> tuple[bytes, bytes]:
    """Verify a device's accept; return (agent key, agent stream header) or raise :class:`AcceptError`.

    The device key must be the one whose id is the device the technician signed the job for.
    """
    try:
        device_key = DevicePublicKey(b64decode_strict(msg.device_key, what="device key"))
        agent_key = b64decode_strict(msg.agent_key, what="agent key")
        header = b64decode_strict(msg.header, what="stream header")
        sig = b64decode_strict(msg.sig, what="accept signature")
    except Exception as exc:  # noqa: BLE001 - any bad encoding is a failed proof
        raise AcceptError(f"the accept does not decode: {exc}") from None
    if msg.job_id != job_id:
        raise AcceptError("the accept is for another session")
    if device_id_for(device_key) != device_id:
        raise AcceptError(f"the accept is signed by a key that is not {device_id}'s")
    if len(agent_key) != sodium.crypto_kx_PUBLIC_KEY_BYTES or len(header) != _HEADER:
        raise AcceptError("the accept's key or header has the wrong size")
    if not device_key.verify(sig, accept_transcript(job_id, client_key, agent_key, header)):
        raise AcceptError(f"the accept's signature does not verify against {device_id}'s key")
    return agent_key, header


class SessionSealer:
    """One direction's sending half: seals frames in order; the first thing sent is :attr:`header`."""

    def __init__(self, key: bytes, job_id: str) -> None:
        self._state = sodium.crypto_secretstream_xchacha20poly1305_state()
        self.header: bytes = sodium.crypto_secretstream_xchacha20poly1305_init_push(self._state, key)
        self._ad = job_id.encode()
        self.final = False

    def seal(self, frame: Frame, *, final: bool = False) -> bytes:
        if self.final:
            raise ValueError("this stream is finished")
        self.final = final
        return sodium.crypto_secretstream_xchacha20poly1305_push(
            self._state, encode_frame(frame), self._ad, _TAG_FINAL if final else _TAG_MESSAGE)


class SessionOpener:
    """One direction's receiving half: opens frames strictly in order, once each."""

    def __init__(self, key: bytes, header: bytes, job_id: str) -> None:
        if len(header) != _HEADER:
            raise FrameError("frame-auth-failed", "the stream header has the wrong size")
        self._state = sodium.crypto_secretstream_xchacha20poly1305_state()
        sodium.crypto_secretstream_xchacha20poly1305_init_pull(self._state, header, key)
        self._ad = job_id.encode()
        self.final = False

    def open(self, sealed: bytes) -> Frame:
        if self.final:
            raise FrameError("frame-auth-failed", "a frame after the end of the stream")
        if len(sealed) < _ABYTES:
            raise FrameError("frame-auth-failed", "a frame shorter than its authenticator")
        try:
            plain, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(self._state, sealed, self._ad)
        except (CryptoError, RuntimeError, ValueError):
            raise FrameError("frame-auth-failed", "a frame failed authentication (injected, altered, "
                             "reordered, replayed or dropped on the way)") from None
        self.final = tag == _TAG_FINAL
        return decode_frame(plain)


def client_session_keys(keys: ClientKeys, agent_key: bytes) -> tuple[bytes, bytes]:
    """(rx, tx) for the client."""
    rx, tx = sodium.crypto_kx_client_session_keys(keys.public, keys.secret, agent_key)
    return rx, tx


def server_session_keys(public: bytes, secret: bytes, client_key: bytes) -> tuple[bytes, bytes]:
    """(rx, tx) for the device."""
    rx, tx = sodium.crypto_kx_server_session_keys(public, secret, client_key)
    return rx, tx


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    """Strict base64, or :class:`FrameError` (a relay that mangles encoding fails like a bad seal)."""
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise FrameError("frame-auth-failed", "a frame is not base64") from None


StreamEnd = Literal["final", "cut"]
