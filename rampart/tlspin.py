"""TLS certificate pinning shared by the agent and the operator CLI.

The server makes a self-signed certificate at ``server init``. Clients pin its
SHA-256 (given out of band, e.g. in the enrolment command) and from then on
trust exactly that certificate and nothing else: :func:`pinned_context` makes
it the only trust anchor, so a different certificate, even one signed by a
public CA, fails the handshake. Hostname checks are off because the pin is
stronger than a name.
"""

from __future__ import annotations

import hashlib
import socket
import ssl


class PinError(Exception):
    """The server's certificate does not match the pinned fingerprint."""


def fingerprint(cert_der: bytes) -> str:
    """Hex SHA-256 of a DER certificate (the pin format)."""
    return hashlib.sha256(cert_der).hexdigest()


def normalise_fingerprint(text: str) -> str:
    """Accept ``AB:CD:..`` or plain hex, return lowercase hex; raise ValueError otherwise."""
    fp = text.replace(":", "").strip().lower()
    if len(fp) != 64 or any(c not in "0123456789abcdef" for c in fp):
        raise ValueError("a certificate fingerprint is 64 hex characters (SHA-256)")
    return fp


def fetch_certificate(host: str, port: int, *, timeout: float = 10.0) -> bytes:
    """Fetch the server's certificate (unverified: the caller compares it to the pin)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    if not der:
        raise PinError("the server presented no certificate")
    return der


def fetch_pinned_certificate(host: str, port: int, expected_sha256: str, *,
                             timeout: float = 10.0) -> bytes:
    """Fetch the certificate and return it only if it matches ``expected_sha256``."""
    der = fetch_certificate(host, port, timeout=timeout)
    if fingerprint(der) != normalise_fingerprint(expected_sha256):
        raise PinError("the server's TLS certificate does not match the pinned fingerprint")
    return der


def pinned_context(cert_der: bytes) -> ssl.SSLContext:
    """A client context that trusts exactly this one certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=cert_der)
    return ctx
