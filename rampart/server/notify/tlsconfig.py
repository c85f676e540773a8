"""TLS settings of one SIEM target (RFC 5425), and the checks that keep them honest.

:class:`TlsSettings` says whom the server trusts as the receiver and how it
proves who it is itself:

* ``ca_file``: the CA bundle the receiver's certificate must chain to
  (default: the system trust store). ``pin_sha256``: the SHA-256 of the
  receiver's certificate (DER). With a pin alone, exactly that certificate is
  accepted, whoever signed it (RFC 5425 section 4.2.2, fingerprints); with a
  CA file too, both must hold.
* ``verify_hostname`` (on by default) checks the certificate against
  ``server_name`` (default: the target's host). Turning it off is refused
  unless a CA file or a pin narrows the trust: with the system store and no
  name check, any certificate any public CA issued would do.
* ``client_cert`` and ``client_key``: the certificate the server presents
  (RFC 5425 section 5.2, certificate-based authentication of the sender).

Security rules:

* The files a target names must lie in the directory the server gives for
  that target's scope (:meth:`TlsSettings.confined_to`; the server uses
  ``DATA/siem-tls/<tenant id>/``, ``DATA/siem-tls/msp/`` for MSP-wide
  targets), checked on the resolved path (no ``..``, no symlink out): an
  account that may add targets can neither probe the server's other files
  nor borrow another tenant's client certificate, nor the server's own key.
* Only paths are stored and shown; a key never travels in a request, a URL,
  a command line, a log line or an error message.
* The key file must be a regular file owned by the server's user with mode
  0600 or stricter (no group or other bit), checked when the target is
  added and again at every connection: :class:`KeyFileError` otherwise.
  Encrypted keys are refused (their passphrase would be one more secret to
  hold); OpenSSL is never allowed to prompt on a terminal.
* TLS 1.2 at least. The pin is compared after the handshake and before the
  first byte of a record is written.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

_PIN: Final = re.compile(r"[0-9a-f]{64}")
_DNS_LABEL: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
#: Files larger than this are not certificates or keys (a typo pointing at a database, say).
MAX_PEM_BYTES: Final = 1 << 20


class KeyFileError(ValueError):
    """The client key file is unsafe (readable by others, not the server's, not a file) or unusable."""


class PinMismatch(Exception):
    """The receiver's certificate is not the pinned one (a refusal by this side, not a misuse)."""


def normalise_pin(text: str) -> str:
    """``AB:CD:…``, ``sha256:abcd…`` or plain hex to 64 lowercase hex digits; ValueError otherwise."""
    pin = text.strip().lower().removeprefix("sha256:").replace(":", "")
    if not _PIN.fullmatch(pin):
        raise ValueError("a certificate pin is the SHA-256 of the certificate: 64 hex digits")
    return pin


def check_server_name(name: str) -> str:
    """A DNS name or an IP address to check the receiver's certificate against."""
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    labels = name.rstrip(".").split(".")
    if len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise ValueError("server name must be a DNS name or an IP address")
    return name


def _absolute_file(value: Any, what: str) -> Path:
    if not isinstance(value, str) or not value or len(value) > 4096 or "\x00" in value:
        raise ValueError(f"{what} must be a path")
    path = Path(value)
    if not path.is_absolute():
        raise ValueError(f"{what} must be an absolute path on the server")
    return path


def check_private_key_file(path: Path) -> None:
    """Refuse a key file others could read or replace (KeyFileError, naming the path, never the key)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise KeyFileError(f"client key {path}: {exc.strerror or 'cannot be read'}") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"client key file is not a regular file: {path}")
    if st.st_mode & 0o077:
        raise KeyFileError(f"client key file must be 0600, not {stat.S_IMODE(st.st_mode):04o} "
                           f"(group or others may read or change it): {path}")
    if st.st_uid != os.geteuid():
        raise KeyFileError(f"client key file must be owned by the server's user: {path}")
    if st.st_size > MAX_PEM_BYTES:
        raise KeyFileError(f"client key file is too large to be a key: {path}")


class _Encrypted(Exception):
    pass


def _no_passphrase() -> bytes:
    raise _Encrypted


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Whom to trust as the receiver, and the client certificate to present (see the module docstring)."""

    ca_file: Path | None = None
    pin_sha256: str | None = None
    verify_hostname: bool = True
    server_name: str | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    def __post_init__(self) -> None:
        if self.pin_sha256 is not None:
            object.__setattr__(self, "pin_sha256", normalise_pin(self.pin_sha256))
        if self.server_name is not None:
            check_server_name(self.server_name)
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")
        for what, path in (("CA file", self.ca_file), ("client certificate", self.client_cert),
                           ("client key", self.client_key)):
            if path is not None and not path.is_absolute():
                raise ValueError(f"{what} must be an absolute path on the server")
        if not self.verify_hostname and self.ca_file is None and self.pin_sha256 is None:
            raise ValueError("hostname verification can be turned off only with a CA file or a pin")

    # -- stored form -------------------------------------------------------------------------

    @classmethod
    def from_config(cls, doc: dict[str, Any]) -> TlsSettings:
        """From a target's stored or requested settings (keys of :meth:`to_config`); ValueError if bad."""
        def path(key: str, what: str) -> Path | None:
            value = doc.get(key)
            return None if value is None else _absolute_file(value, what)

        pin = doc.get("pin_sha256")
        if pin is not None and not isinstance(pin, str):
            raise ValueError("a certificate pin is 64 hex digits")
        name = doc.get("server_name")
        if name is not None and not isinstance(name, str):
            raise ValueError("server name must be a DNS name or an IP address")
        verify = doc.get("verify_hostname", True)
        if not isinstance(verify, bool):
            raise ValueError("verify_hostname must be true or false")
        return cls(ca_file=path("ca_file", "CA file"), pin_sha256=pin, verify_hostname=verify,
                   server_name=name, client_cert=path("client_cert", "client certificate"),
                   client_key=path("client_key", "client key"))

    def to_config(self) -> dict[str, Any]:
        """The settings as stored with the target: paths and a fingerprint, never key material."""
        doc: dict[str, Any] = {"verify_hostname": self.verify_hostname}
        for key, value in (("ca_file", self.ca_file), ("pin_sha256", self.pin_sha256),
                           ("server_name", self.server_name), ("client_cert", self.client_cert),
                           ("client_key", self.client_key)):
            if value is not None:
                doc[key] = str(value)
        return doc

    # -- use ---------------------------------------------------------------------------------

    def context(self) -> ssl.SSLContext:
        """A client context for these settings; ValueError (KeyFileError for the key) if a file is unusable.

        Reads the files now, so a changed key mode or a removed CA file is
        noticed at the next connection.
        """
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.ca_file is None and self.pin_sha256 is not None:
            # The pin is the trust anchor: OpenSSL accepts any chain, check_peer compares the pin.
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            try:
                if self.ca_file is not None:
                    _readable(self.ca_file, "CA file")
                    ctx.load_verify_locations(cafile=str(self.ca_file))
                else:
                    ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
            except ssl.SSLError:
                raise ValueError(f"CA file {self.ca_file} holds no usable certificate") from None
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.check_hostname = self.verify_hostname
        if self.client_cert is not None and self.client_key is not None:
            _readable(self.client_cert, "client certificate")
            check_private_key_file(self.client_key)
            try:
                ctx.load_cert_chain(str(self.client_cert), str(self.client_key), password=_no_passphrase)
            except _Encrypted:
                raise KeyFileError(f"client key {self.client_key} is encrypted; give an unencrypted "
                                   "key file readable by the server's user only (0600)") from None
            except ssl.SSLError:
                raise KeyFileError(f"client certificate {self.client_cert} and key {self.client_key} "
                                   "are not a matching PEM certificate and key") from None
            except OSError as exc:
                raise KeyFileError(f"client certificate or key: {exc.strerror or 'cannot be read'}"
                                   ) from None
        return ctx

    def confined_to(self, root: Path) -> TlsSettings:
        """These settings with every file resolved, if each lies under ``root``; ValueError otherwise."""
        base = Path(os.path.realpath(root))

        def inside(path: Path | None, what: str) -> Path | None:
            if path is None:
                return None
            real = Path(os.path.realpath(path))
            if not real.is_relative_to(base):
                raise ValueError(f"{what} must be a file under {root}")
            return real

        return TlsSettings(ca_file=inside(self.ca_file, "CA file"), pin_sha256=self.pin_sha256,
                           verify_hostname=self.verify_hostname, server_name=self.server_name,
                           client_cert=inside(self.client_cert, "client certificate"),
                           client_key=inside(self.client_key, "client key"))

    def hostname_for(self, host: str) -> str:
        """The name sent as SNI and checked in the certificate."""
        return self.server_name or host

    def check_peer(self, sock: ssl.SSLSocket) -> None:
        """After the handshake: the receiver's certificate is the pinned one (PinMismatch otherwise)."""
        if self.pin_sha256 is None:
            return
        der = sock.getpeercert(binary_form=True)
        if not der or hashlib.sha256(der).hexdigest() != self.pin_sha256:
            raise PinMismatch("the receiver's certificate does not match the pinned SHA-256")


def _readable(path: Path, what: str) -> None:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ValueError(f"{what} {path}: {exc.strerror or 'cannot be read'}") from None
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_PEM_BYTES:
        raise ValueError(f"{what} {path} is not a PEM file")
