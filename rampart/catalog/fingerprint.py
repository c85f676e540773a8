"""Recognising remote access tools by content and behaviour, not by name (pure; no I/O).

Two kinds of evidence survive renaming a program and moving it to an odd port:

- **Content** of its executable: the ELF build-id or SHA-256 of a known build
  (:data:`KNOWN_BUILDS`), text the program carries (:data:`CONTENT_MARKS`:
  version banners, source file names, its own messages) and the shared
  libraries it links (``libvncserver.so``: any program linking it serves VNC).
  :func:`scan` turns the bytes of one executable into *marks*,
  ``"<slug>:<how>"`` for a catalogued tool or ``"<label>:library"`` for a
  library that makes any program a remote access server
  (:data:`SERVER_LIBRARIES`).
- **Protocol** of a listening socket: what it answers on connect
  (:func:`classify_reply`): an RFB banner (``RFB 003.008\\n``, every VNC
  server sends it first) or an X.224 Connection Confirm to an RDP
  Connection Request (:data:`RDP_CONNECTION_REQUEST`).

The agent reads and probes (:mod:`rampart.agent.inventory.detect`); this
module only decides, so the same rules run on the server over a stored
snapshot. Marks and protocol names come from the device and are attacker
text wherever they are shown.

Limits: a packed or encrypted executable (UPX, a self-extracting archive)
shows no text marks; a tool rebuilt from source has a new build-id and
hash (its text marks remain); the known builds are those verified on Debian
12 (amd64) and listed here, not a feed; a server that speaks first with
something else, or only after a secret knock, is not recognised by protocol.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = [
    "CONTENT_MARKS", "KNOWN_BUILDS", "MAX_MARKS", "PROTOCOLS", "RDP_CONNECTION_REQUEST", "SERVER_LIBRARIES",
    "build_id", "classify_reply", "mark_slug", "scan",
]

#: Marks kept per executable.
MAX_MARKS: Final = 8

#: (tool slug, literal) pairs: text that only the tool's own program carries (verified on Debian 12
#: builds; messages and source file names rather than the bare tool name, which other programs quote).
CONTENT_MARKS: Final[tuple[tuple[str, bytes], ...]] = (
    ("x11vnc", b"x11vnc client disconnected"),
    ("x11vnc", b"karlrunge.com/x11vnc"),
    ("tigervnc", b"TigerVNC Team and many others"),
    ("tigervnc", b"Failed to initialize TigerVNC input devices"),
    ("tmate", b"tmate-ssh-client.c"),
    ("tmate", b"ssh.tmate.io"),
    ("xrdp", b"libxrdp_process_incoming"),
    ("xrdp", b"libxrdp.so."),
)

#: (label, literal) pairs: shared libraries that make any program linking them a remote access server.
SERVER_LIBRARIES: Final[tuple[tuple[str, bytes], ...]] = (
    ("vnc-server", b"libvncserver.so."),
    ("rdp-server", b"libfreerdp-server"),
    ("rdp-server", b"libfreerdp-shadow"),
)

#: ELF build-id (hex) or SHA-256 (hex) of known builds -> tool slug (Debian 12, amd64).
KNOWN_BUILDS: Final[Mapping[str, str]] = MappingProxyType({
    # x11vnc 0.9.16-9: /usr/bin/x11vnc
    "b16dc20339b47925697778a154bafb9a688828ca": "x11vnc",
    "84af9b01b1961384e4f6e3f9d41bee5adb54c304fe81da2b8db2e61b22ad0652": "x11vnc",
    # tigervnc-standalone-server 1.12.0+dfsg-8: /usr/bin/Xtigervnc (Xvnc)
    "def2572a6c51b49d56ccbce1439e295f9fc048b7": "tigervnc",
    "80a7655e462b181008815d40631b53315cdde76503ef06656e98c75cfa3fcb0d": "tigervnc",
    # tmate 2.4.0-2: /usr/bin/tmate
    "c1845d89e2746b93ec796040ad7eae552848d6a6": "tmate",
    "df6778c6a24bc89d8b9d0bdcfb6ff9c14e0bc41920c26c0c420c6da7aa6000b1": "tmate",
    # xrdp 0.9.21.1-1+deb12u3: /usr/sbin/xrdp, /usr/sbin/xrdp-sesman
    "a664c7d8cd9fc194743a438d050454b1f8a2f5e0": "xrdp",
    "2b8a37e76ec85dc35c4eddffb851f192bc9318e60cf2d0c8423f5640a61b3d6d": "xrdp",
    "0d4809c8d165251e033f8405f7be751bb7fbdb7b": "xrdp",
    "94a16d813e13c6cc7fe8c57118d776caba6a96a8d1a458dabf930164807239e2": "xrdp",
})

#: Protocol names a probe may report (the agent sends only these; anything else is ignored).
PROTOCOLS: Final = frozenset({"rfb", "rdp"})

#: TPKT + X.224 Connection Request with an RDP Negotiation Request (TLS | CredSSP), 19 bytes
#: ([MS-RDPBCGR] 2.2.1.1): what an RDP client sends first. No cookie, no user name.
RDP_CONNECTION_REQUEST: Final = bytes.fromhex("030000130ee000000000000100080003000000")

# NT_GNU_BUILD_ID note header (namesz 4, descsz 20, type 3, "GNU\0"), little-endian ELF.
_BUILD_ID_NOTE = b"\x04\x00\x00\x00\x14\x00\x00\x00\x03\x00\x00\x00GNU\x00"
_RFB = re.compile(rb"RFB (\d{3})\.(\d{3})\n")


def build_id(data: bytes) -> str:
    """The GNU build-id (40 hex digits) of a little-endian ELF image, or ""."""
    if not data.startswith(b"\x7fELF"):
        return ""
    at = data.find(_BUILD_ID_NOTE)
    if at < 0 or at + len(_BUILD_ID_NOTE) + 20 > len(data):
        return ""
    start = at + len(_BUILD_ID_NOTE)
    return data[start:start + 20].hex()


def scan(data: bytes, *, digest: str = "") -> tuple[str, ...]:
    """Marks of one executable's bytes, sorted, at most :data:`MAX_MARKS`.

    ``digest`` is the SHA-256 of the whole file when the caller computed it
    (the bytes may be only its head); otherwise it is computed over ``data``.
    """
    marks: set[str] = set()
    bid = build_id(data)
    if bid and bid in KNOWN_BUILDS:
        marks.add(f"{KNOWN_BUILDS[bid]}:build-id")
    sha = digest or hashlib.sha256(data).hexdigest()
    if sha in KNOWN_BUILDS:
        marks.add(f"{KNOWN_BUILDS[sha]}:sha256")
    for slug, text in CONTENT_MARKS:
        if text in data:
            marks.add(f"{slug}:strings")
    for label, text in SERVER_LIBRARIES:
        if text in data:
            marks.add(f"{label}:library")
    return tuple(sorted(marks))[:MAX_MARKS]


def mark_slug(mark: str) -> tuple[str, str]:
    """(slug or label, how) of one mark; ("", "") when malformed."""
    name, sep, how = mark.partition(":")
    if not sep or not re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", name) or how not in (
            "build-id", "sha256", "strings", "library"):
        return "", ""
    return name, how


def classify_reply(banner: bytes, reply: bytes) -> str:
    """The protocol a listener speaks: ``"rfb 003.008"``, ``"rdp"`` or "".

    ``banner`` is what the listener sent on its own after connect; ``reply``
    what it answered to :data:`RDP_CONNECTION_REQUEST` (sent only when the
    banner was empty).
    """
    m = _RFB.match(banner)
    if m:
        return f"rfb {m.group(1).decode()}.{m.group(2).decode()}"
    # TPKT version 3, then an X.224 header whose code (high nibble) is CC (0xD0).
    if not banner and len(reply) >= 6 and reply[0] == 3 and reply[1] == 0 and reply[5] & 0xF0 == 0xD0:
        return "rdp"
    return ""
