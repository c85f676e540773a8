"""Every message of the agent link (docs/design/protocol.md), as msgspec tagged unions.

Invariant: each side builds what it sends from these structs and decodes what
it receives into exactly one of them (:func:`decode_agent_message`,
:func:`decode_server_message`), refusing anything else with a
:class:`~rampart.wire.base.WireError` of a stable reason. Both directions are
equally strict. A message is only a carrier: a job still has to pass
:func:`rampart.trust.authorize_job` on the agent before anything runs.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from rampart.trust import DeviceProofs, ProofHash, check_proof_hashes

from .base import Count, Hex64, Message, Short, WireError
from .check_result import CheckResult
from .finding import MAX_DORMANT_DAYS
from .limits import (
    JOB_ID_PATTERN,
    MAX_DETAIL_CHARS,
    MAX_ENVELOPES,
    MAX_MESSAGE_BYTES,
    MAX_PAYLOADS,
    MAX_PROOF_HASHES,
    MAX_SEQ,
)
from .session import (
    RecordingAckMessage,
    SessionAcceptMessage,
    SessionCloseMessage,
    SessionEndMessage,
    SessionFrameMessage,
    SessionRecordingMessage,
)
from .telemetry import MAX_SANCTIONED

__all__ = [
    "AGENT_MESSAGE_TYPES", "SERVER_MESSAGE_TYPES", "AckMessage", "AgentMessage", "Challenge",
    "CheckAckMessage", "CheckResultMessage", "DetectionMessage", "ErrorMessage", "Hello",
    "InventoryAckMessage", "InventoryFullMessage", "InventoryMessage", "InventoryRequestMessage", "JobLog",
    "JobMessage", "ReceiptMessage", "RevocationsMessage", "RootsMessage", "ServerMessage", "StateMessage",
    "Welcome", "CancellationsMessage", "decode_agent_message", "decode_challenge", "decode_hello",
    "decode_server_message", "decode_welcome", "encode_message",
]

JobId = Annotated[str, Meta(pattern=JOB_ID_PATTERN)]
Detail = Annotated[str, Meta(max_length=MAX_DETAIL_CHARS)]
Envelopes = Annotated[list[str], Meta(max_length=MAX_ENVELOPES)]
#: Hex hashes; JobLog checks them in one pass (see :data:`rampart.trust.devset.ProofHash`).
Proof = Annotated[list[ProofHash], Meta(max_length=MAX_PROOF_HASHES)]
Seq = Annotated[int, Meta(ge=1, le=MAX_SEQ)]
CatalogSha = Annotated[str, Meta(pattern=r"^(?:[0-9a-f]{64})?$")]


# --- the handshake (rampart.wire.handshake builds and checks it) ---------------------------------


class Challenge(Message, frozen=True, kw_only=True, tag="challenge"):
    """Server, first: a fresh nonce the agent signs (hex, 16 to 64 bytes)."""

    nonce: Annotated[str, Meta(pattern=r"^[0-9a-f]{32,128}$")]


class Hello(Message, frozen=True, kw_only=True, tag="hello"):
    """Agent, first: its device id, the signature over the challenge, and what it holds."""

    device: Annotated[str, Meta(pattern=r"^dev-[0-9a-f]{24}$")]
    sig: Annotated[str, Meta(max_length=128)]
    agent_version: Short = ""
    root_version: Count = 0
    checkpoint_size: Count = 0
    #: The imported tool catalog the agent holds ("" none), so it is resent only when it changed.
    catalog_sha256: CatalogSha = ""


class Welcome(Message, frozen=True, kw_only=True, tag="welcome"):
    """Server, after a verified hello: the device's status. ``rejected``, ``retired`` and ``archived``
    (its tenant is) are the last message of the connection: the server closes it and refuses the
    device from then on."""

    status: Literal["approved", "pending", "rejected", "retired", "archived"]


# --- server to agent ------------------------------------------------------------------------------


class JobLog(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The log evidence of a job: a checkpoint envelope and hex Merkle proofs against it."""

    checkpoint: str
    index: Annotated[int, Meta(ge=0)]
    inclusion: Proof
    consistency: Proof = []

    def __post_init__(self) -> None:
        check_proof_hashes(self.inclusion, self.consistency)


class JobMessage(Message, frozen=True, kw_only=True, tag="job"):
    """A signed job with its grant, payloads (base64) and log evidence. Carries no authority."""

    job_id: JobId
    job: str
    grant: str
    payloads: Annotated[dict[str, str], Meta(max_length=MAX_PAYLOADS)] = {}
    log: JobLog
    #: This device's inclusion proofs for the job's and the grant's committed device sets (only
    #: when they commit one; absent, never encoded, for listed devices).
    proofs: DeviceProofs | msgspec.UnsetType = msgspec.UNSET


class AckMessage(Message, frozen=True, kw_only=True, tag="ack"):
    """The receipt of ``job_id`` is stored: the agent may drop it from its outbox."""

    job_id: JobId


class RootsMessage(Message, frozen=True, kw_only=True, tag="roots"):
    """Tenant root envelopes newer than the agent's (verified by the rotation rule)."""

    envelopes: Envelopes


class RevocationsMessage(Message, frozen=True, kw_only=True, tag="revocations"):
    """Signed grant revocations (each verified against the pinned root)."""

    envelopes: Envelopes


class CancellationsMessage(Message, frozen=True, kw_only=True, tag="cancellations"):
    """Signed job cancellations of the tenant (each checked against the pinned root; a job is
    refused only when its own cancellation verifies for it)."""

    envelopes: Envelopes


class DetectionMessage(Message, frozen=True, kw_only=True, tag="detection"):
    """The tenant's detection configuration; ``catalog`` is base64 of zlib, sent when it changed."""

    sanctioned: Annotated[list[Annotated[str, Meta(min_length=1, max_length=64)]],
                          Meta(max_length=MAX_SANCTIONED)]
    dormant_days: Annotated[int, Meta(ge=1, le=MAX_DORMANT_DAYS)]
    catalog_sha256: CatalogSha = ""
    catalog: str | None = None


class InventoryAckMessage(Message, frozen=True, kw_only=True, tag="inventory-ack"):
    """The server holds the snapshot with this digest."""

    result: Hex64


class InventoryFullMessage(Message, frozen=True, kw_only=True, tag="inventory-full"):
    """The server cannot apply a delta: send the whole snapshot."""


class InventoryRequestMessage(Message, frozen=True, kw_only=True, tag="inventory-request"):
    """An operator asked for an inventory now."""


class CheckAckMessage(Message, frozen=True, kw_only=True, omit_defaults=True, tag="check-ack"):
    """Script check result ``seq`` is stored (or ``refused`` for good): drop it from the outbox.

    ``refused`` is present only when set."""

    seq: Seq
    refused: Detail = ""


class ErrorMessage(Message, frozen=True, kw_only=True, omit_defaults=True, tag="error"):
    """The server refused a message (``job_id`` present only when it was a receipt)."""

    detail: Detail
    job_id: JobId | None = None


ServerMessage = (JobMessage | AckMessage | RootsMessage | RevocationsMessage | CancellationsMessage
                 | DetectionMessage
                 | InventoryAckMessage | InventoryFullMessage | InventoryRequestMessage | CheckAckMessage
                 | ErrorMessage | SessionFrameMessage | SessionCloseMessage | RecordingAckMessage)


# --- agent to server ------------------------------------------------------------------------------


class ReceiptMessage(Message, frozen=True, kw_only=True, tag="receipt"):
    """A signed receipt envelope for ``job_id``, and the checkpoint the agent now holds."""

    job_id: JobId
    receipt: str
    checkpoint_size: Count | None = None


class StateMessage(Message, frozen=True, kw_only=True, tag="state"):
    """The root version and checkpoint size the agent holds now."""

    root_version: Count
    checkpoint_size: Count


class InventoryMessage(Message, frozen=True, kw_only=True, tag="inventory"):
    """An inventory report: base64 of zlib of a strict ``Report`` (:mod:`rampart.wire.telemetry`)."""

    report: Annotated[str, Meta(min_length=1)]
    result: Hex64
    base: Hex64 | None = None


class CheckResultMessage(Message, frozen=True, kw_only=True, tag="check-result"):
    """One script check run (:mod:`rampart.wire.check_result`); ``seq`` is the agent's outbox number."""

    seq: Seq
    result: CheckResult


AgentMessage = (ReceiptMessage | StateMessage | InventoryMessage | CheckResultMessage | SessionAcceptMessage
                | SessionFrameMessage | SessionEndMessage | SessionRecordingMessage)


def _tags(union: Any) -> frozenset[str]:
    return frozenset(t.__struct_config__.tag for t in union.__args__)


#: The ``type`` of every message each side sends after the handshake.
SERVER_MESSAGE_TYPES: frozenset[str] = _tags(ServerMessage)
AGENT_MESSAGE_TYPES: frozenset[str] = _tags(AgentMessage)

# --- encoding and decoding -----------------------------------------------------------------------

_ENC = msgspec.json.Encoder()
_JOB_ID = re.compile(JOB_ID_PATTERN)


def encode_message(msg: Message) -> str:
    """The JSON text frame of one message."""
    return _ENC.encode(msg).decode()


class _Peek(msgspec.Struct):
    """Only to name a refused message: its type, and a job's id."""

    type: Any = None
    job_id: Any = None


_DECODERS: dict[Any, msgspec.json.Decoder[Any]] = {}


def _decode(text: str | bytes, kind: Any, known: frozenset[str], max_bytes: int) -> Any:
    if len(text) > max_bytes:
        raise WireError("too-large", f"a message over {max_bytes} bytes")
    decoder = _DECODERS.get(kind)
    if decoder is None:
        decoder = _DECODERS[kind] = msgspec.json.Decoder(kind)
    try:
        return decoder.decode(text)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: first
        try:
            peek = msgspec.json.decode(text, type=_Peek)
        except (msgspec.DecodeError, msgspec.ValidationError):
            peek = _Peek()
        mtype = peek.type if isinstance(peek.type, str) and peek.type in known else None
        reason = "malformed" if mtype is not None else "unknown-type"
        job_id = peek.job_id if mtype == "job" and _is_job_id(peek.job_id) else None
        raise WireError(reason, str(exc)[:MAX_DETAIL_CHARS], message_type=mtype, job_id=job_id) from None
    except msgspec.DecodeError as exc:
        raise WireError("not-json", str(exc)[:MAX_DETAIL_CHARS]) from None
    except RecursionError:
        raise WireError("not-json", "nested too deeply") from None


def _is_job_id(value: object) -> bool:
    return isinstance(value, str) and _JOB_ID.match(value) is not None


def decode_server_message(text: str | bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> ServerMessage:
    """One message from the server after the handshake, or :class:`WireError`."""
    msg: ServerMessage = _decode(text, ServerMessage, SERVER_MESSAGE_TYPES, max_bytes)
    return msg


def decode_agent_message(text: str | bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> AgentMessage:
    """One message from an agent after the handshake, or :class:`WireError`."""
    msg: AgentMessage = _decode(text, AgentMessage, AGENT_MESSAGE_TYPES, max_bytes)
    return msg


def decode_challenge(text: str | bytes) -> Challenge:
    """The server's first message, or :class:`WireError`."""
    msg: Challenge = _decode(text, Challenge, frozenset({"challenge"}), MAX_MESSAGE_BYTES)
    return msg


def decode_hello(text: str | bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Hello:
    """The agent's first message, or :class:`WireError`."""
    msg: Hello = _decode(text, Hello, frozenset({"hello"}), max_bytes)
    return msg


def decode_welcome(text: str | bytes) -> Welcome:
    """The server's answer to a verified hello, or :class:`WireError`."""
    msg: Welcome = _decode(text, Welcome, frozenset({"welcome"}), MAX_MESSAGE_BYTES)
    return msg
