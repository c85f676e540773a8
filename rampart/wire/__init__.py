"""The wire contract between server and agent: one definition both sides build and decode from.

Pure: it imports only :mod:`rampart.trust`, msgspec and the standard library,
and does no I/O, so the server can speak the protocol without loading any
agent code and the agent can refuse a hostile server's messages as strictly
as the server refuses a device's (docs/design/protocol.md).

Modules: :mod:`.base` (the strict message base, :class:`WireError`),
:mod:`.limits`, :mod:`.handshake`, :mod:`.messages` (both tagged unions),
:mod:`.inventory` and :mod:`.inventory_delta` (snapshots and their changes),
:mod:`.finding`, :mod:`.telemetry` (inventory reports) and
:mod:`.check_result` (script check runs).
"""

from __future__ import annotations

from .base import Message, WireError
from .check_result import CheckResult, decode_result, encode_result
from .finding import Finding
from .handshake import AUTH_CONTEXT, auth_message, check_hello, new_challenge, sign_hello
from .inventory import Inventory
from .inventory_delta import Delta, DeltaError, apply, diff, digest
from .limits import MAX_DETAIL_CHARS, MAX_MESSAGE_BYTES
from .messages import (
    AGENT_MESSAGE_TYPES,
    SERVER_MESSAGE_TYPES,
    AckMessage,
    AgentMessage,
    CancellationsMessage,
    Challenge,
    CheckAckMessage,
    CheckResultMessage,
    DetectionMessage,
    ErrorMessage,
    Hello,
    InventoryAckMessage,
    InventoryFullMessage,
    InventoryMessage,
    InventoryRequestMessage,
    JobLog,
    JobMessage,
    ReceiptMessage,
    RevocationsMessage,
    RootsMessage,
    ServerMessage,
    StateMessage,
    Welcome,
    decode_agent_message,
    decode_challenge,
    decode_hello,
    decode_server_message,
    decode_welcome,
    encode_message,
)
from .telemetry import EarlierFinding, Report, ReportError, ToolSeen, decode_report, encode_report

__all__ = [
    "AGENT_MESSAGE_TYPES", "AUTH_CONTEXT", "MAX_DETAIL_CHARS", "MAX_MESSAGE_BYTES", "SERVER_MESSAGE_TYPES",
    "AckMessage", "AgentMessage", "Challenge", "CheckAckMessage", "CheckResult", "CheckResultMessage",
    "Delta", "DeltaError", "DetectionMessage", "EarlierFinding", "ErrorMessage", "Finding", "Hello",
    "Inventory", "InventoryAckMessage", "InventoryFullMessage", "InventoryMessage", "InventoryRequestMessage",
    "JobLog", "JobMessage", "Message", "ReceiptMessage", "Report", "ReportError", "RevocationsMessage",
    "RootsMessage", "ServerMessage", "StateMessage", "ToolSeen", "Welcome", "WireError", "apply",
    "auth_message", "check_hello", "decode_agent_message", "decode_challenge", "decode_hello",
    "decode_report", "decode_result", "decode_server_message", "decode_welcome", "diff", "digest",
    "encode_message", "encode_report", "encode_result", "new_challenge", "sign_hello",
    "CancellationsMessage",
]
