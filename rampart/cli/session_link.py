"""The technician's end of a remote session: the relay socket, the device's accept, sealed frames.

Invariants (docs/design/remote-sessions.md):

* The session key pair is made here and its public half signed in the job;
  the private half never leaves this process.
* The device's accept is checked against the device the signed job targets
  (:func:`rampart.wire.session.check_accept`) before any keystroke is sent;
  a relay that poses as the device, or splices another session in, is refused.
* Every frame is sealed and opened in order; the first frame that fails to
  open ends the session, with the reason recorded in the local session log.
  A stream that ends without the device's final frame is ``stream-truncated``.
* What the relay says by itself (``relay-notice``) is shown as information,
  never trusted. It may end a wait (``device-lost``, ``device-ended``: the
  relay could as well close the socket), never a frame's meaning.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import ClientConnection, connect

from rampart import tlspin
from rampart.textsafe import safe_line
from rampart.wire import WireError
from rampart.wire.limits import MAX_MESSAGE_BYTES
from rampart.wire.messages import encode_message
from rampart.wire.session import (
    AcceptError,
    ClientKeys,
    Frame,
    FrameError,
    RelayNotice,
    SessionAcceptMessage,
    SessionCloseMessage,
    SessionEndMessage,
    SessionFrameMessage,
    SessionOpener,
    SessionSealer,
    b64,
    check_accept,
    client_session_keys,
    decode_relay_message,
    unb64,
)

from .client import Client
from .errors import CliError, NetworkProblem, Refused

__all__ = ["ENDING_NOTICES", "SessionLink", "log_session"]

#: Relay notices after which no frame of the session can come: the device's connection that carried
#: it closed, or the device's receipt for it is stored.
ENDING_NOTICES = frozenset({"device-lost", "device-ended"})


def log_session(cfg_dir: Path, event: dict[str, Any]) -> None:
    """Append one line to this operator's own session log (``sessions.log`` in the config directory)."""
    path = cfg_dir / "sessions.log"
    line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **event},
                      ensure_ascii=True, sort_keys=True)
    with open(path, "a", encoding="ascii") as f:
        f.write(line + "\n")


class SessionEnd(Exception):
    """The session is over: ``reason`` (as the receipt says it) and, when the device said so, its exit."""

    def __init__(self, reason: str, detail: str = "", status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        self.status = status


class SessionLink:
    """One end-to-end session over the server's relay socket."""

    def __init__(self, client: Client, job_id: str, device_id: str, keys: ClientKeys) -> None:
        self.client = client
        self.job_id = job_id
        self.device_id = device_id
        self.keys = keys
        self.ws: ClientConnection | None = None
        self.sealer: SessionSealer | None = None
        self.opener: SessionOpener | None = None
        self._send_lock = threading.Lock()
        self._seq = 0
        self.notices: list[str] = []

    def connect(self, *, timeout: float = 60.0, on_notice: Any = None) -> None:
        """Open the relay socket and complete the key exchange with the device (or raise)."""
        url = self.client.server.replace("https://", "wss://", 1) + f"/api/v1/sessions/{self.job_id}/relay"
        token = self.client._token or ""
        try:
            self.ws = connect(url, ssl=tlspin.pinned_context(self.client.cert_der), compression=None,
                              proxy=None, additional_headers={"Authorization": f"Bearer {token}"},
                              max_size=MAX_MESSAGE_BYTES, open_timeout=15, ping_interval=20,
                              ping_timeout=60, user_agent_header="rampart-cli")
        except (OSError, WebSocketException, TimeoutError) as exc:
            raise NetworkProblem(
                f"cannot open the session relay: {type(exc).__name__}: {exc}"[:300]) from None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CliError(f"the device did not answer the session within {int(timeout)} s "
                               "(is its agent connected?)")
            try:
                msg = self._recv(left)
            except TimeoutError:
                continue
            if isinstance(msg, RelayNotice):
                text = safe_line(f"{msg.status}: {msg.detail}")
                self.notices.append(text)
                if msg.status == "refused":
                    raise Refused(f"the relay refused the session: {safe_line(msg.detail)}")
                if msg.status == "device-refused":
                    raise Refused(f"the device refused the session job: {safe_line(msg.detail)}")
                if msg.status in ENDING_NOTICES:
                    raise SessionEnd(msg.status, f"the relay says: {safe_line(msg.detail)}")
                if on_notice is not None:
                    on_notice(text)
                continue
            if isinstance(msg, SessionEndMessage):
                raise SessionEnd(msg.reason, "the device ended the session before it opened")
            if not isinstance(msg, SessionAcceptMessage):
                raise SessionEnd("frame-auth-failed", "a frame arrived before the device's accept")
            try:
                agent_key, header = check_accept(msg, job_id=self.job_id, device_id=self.device_id,
                                                 client_key=self.keys.public)
            except AcceptError as exc:
                raise Refused(f"session refused: {exc} (the relay is not speaking for the device)") from None
            rx, tx = client_session_keys(self.keys, agent_key)
            self.opener = SessionOpener(rx, header, self.job_id)
            self.sealer = SessionSealer(tx, self.job_id)
            self._send_raw(self.sealer.header)
            return

    def _recv(self, timeout: float | None) -> Any:
        assert self.ws is not None
        try:
            text = self.ws.recv(timeout=timeout)
        except TimeoutError:
            raise
        except ConnectionClosed:
            raise SessionEnd("stream-truncated", "the relay closed before the device's last frame") from None
        try:
            return decode_relay_message(text)
        except WireError as exc:
            raise SessionEnd("frame-auth-failed", f"the relay sent a bad message: {exc.detail}") from None

    def _send_raw(self, sealed: bytes) -> None:
        assert self.ws is not None
        self._seq += 1
        self.ws.send(encode_message(SessionFrameMessage(job_id=self.job_id, seq=self._seq, data=b64(sealed))))

    def send(self, frame: Frame, *, final: bool = False) -> None:
        """Seal and send one frame (thread-safe: sealing order is sending order)."""
        assert self.sealer is not None
        with self._send_lock:
            if self.sealer.final:
                return
            try:
                self._send_raw(self.sealer.seal(frame, final=final))
            except (ConnectionClosed, OSError) as exc:
                raise SessionEnd("relay-lost", f"the relay connection broke: {type(exc).__name__}") from None

    def receive(self, timeout: float | None = None) -> Frame | RelayNotice | None:
        """The next frame from the device (or a relay notice); None on timeout. Raises :class:`SessionEnd`
        when the stream ends, cleanly or not; a frame that fails to open raises ``frame-auth-failed``."""
        assert self.opener is not None
        while True:
            if self.opener.final:
                raise SessionEnd("exit")
            try:
                msg = self._recv(timeout)
            except TimeoutError:
                return None
            if isinstance(msg, RelayNotice):
                if msg.status in ENDING_NOTICES:
                    raise SessionEnd(msg.status, f"the relay says: {safe_line(msg.detail)}")
                return msg
            if isinstance(msg, SessionEndMessage):
                if self.opener.final:
                    raise SessionEnd(msg.reason)
                continue  # the device's own final frame says how it ended; the relay's word is not enough
            if isinstance(msg, SessionAcceptMessage):
                raise SessionEnd("frame-auth-failed", "a second accept arrived in a running session")
            try:
                return self.opener.open(unb64(msg.data))
            except FrameError as exc:
                raise SessionEnd(exc.reason, exc.detail) from None

    def close(self, reason: str = "closed") -> None:
        """Tell the device we are leaving (sealed ``Close``), then close the socket."""
        from rampart.wire.session import Close

        if self.sealer is not None and not self.sealer.final and self.ws is not None:
            with contextlib.suppress(SessionEnd):
                self.send(Close(reason=reason), final=True)
        if self.ws is not None:
            with contextlib.suppress(Exception):  # closing is best effort
                self.ws.close()

    def abandon(self) -> None:
        """Drop the socket without a word (the relay tells the device)."""
        if self.ws is not None:
            with contextlib.suppress(Exception):  # the relay tells the device either way
                self.ws.send(encode_message(SessionCloseMessage(job_id=self.job_id, reason="closed")))
                self.ws.close()
