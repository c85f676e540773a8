"""A real rsyslogd on 127.0.0.1 for the SIEM tests, and a throwaway PKI for its TLS.

:class:`Rsyslog` writes its own configuration, runs ``rsyslogd -n -f CONF -i
PIDFILE`` in the foreground with its own work directory, and writes what it
received to a JSON-lines file whose fields are rsyslog's own parse:

* ``f``: the RFC 5424 parser's fields (``pri``, ``version`` — 1 only when
  the RFC 5424 parser took the message, 0 for the legacy fallback —,
  ``facility``, ``severity``, ``timestamp``, ``hostname``, ``app``,
  ``procid``, ``msgid``, ``sd``, ``msg``, ``raw``) and the ``input`` that
  took it;
* ``rfc5424-sd``: the structured data as parsed by mmpstrucdata
  (``sd_name.lowercase="off"``), ``{SD-ID: {PARAM-NAME: value}}``.

Listeners: ``tcp`` (imtcp, RFC 6587), ``tls`` (imtcp with the gtls driver,
RFC 5425; ``auth`` is the driver's AuthMode: ``anon`` or
``x509/certvalid``, which requires a client certificate the CA signed),
``relp`` (imrelp) and ``relp-tls`` (imrelp with ``tls="on"``, librelp over
GnuTLS; ``auth`` is its ``tls.authMode``, ``certvalid`` or ``name``).

Only loopback addresses; every process started here is stopped by its pid.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
#: Where Debian puts rsyslog's modules (the multiarch directory), or the plain one.
MODULES = next((d for d in sorted(Path("/usr/lib").glob("*/rsyslog")) if (d / "imtcp.so").exists()),
               Path("/usr/lib/rsyslog"))
Listener = Literal["tcp", "tls", "relp", "relp-tls"]


def rsyslog_missing() -> str | None:
    """Why the rsyslog tests cannot run here (None when rsyslogd, gtls and imrelp are installed)."""
    if not Path(RSYSLOGD).exists():
        return "rsyslogd is not installed (apt-get install rsyslog rsyslog-gnutls rsyslog-relp)"
    for module in ("imrelp.so", "lmnsd_gtls.so", "mmpstrucdata.so"):
        if not (MODULES / module).exists():
            return f"rsyslog module {module} is missing (rsyslog-gnutls, rsyslog-relp)"
    return None


# -- a throwaway PKI -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A CA, the receiver's certificate (localhost, 127.0.0.1) and a client certificate, as PEM files."""

    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    #: SHA-256 of the receiver's certificate (DER): what a pin names.
    server_sha256: str


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_pki(directory: Path, *, ca_name: str = "Rampart test SIEM CA") -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca = (x509.CertificateBuilder().subject_name(issuer).issuer_name(issuer)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))

    def leaf(name: str, sans: list[x509.GeneralName],
             usage: x509.ObjectIdentifier) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(issuer).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=True, key_cert_sign=False, crl_sign=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        return cert, key

    server, server_key = leaf("localhost", [x509.DNSName("localhost"),
                                            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                              ExtendedKeyUsageOID.SERVER_AUTH)
    client, client_key = leaf("rampart.test", [x509.DNSName("rampart.test")],
                              ExtendedKeyUsageOID.CLIENT_AUTH)
    pem = serialization.Encoding.PEM
    pki = Pki(dir=directory, ca=directory / "ca.pem", server_cert=directory / "server.pem",
              server_key=directory / "server.key", client_cert=directory / "client.pem",
              client_key=directory / "client.key",
              server_sha256=hashlib.sha256(server.public_bytes(serialization.Encoding.DER)).hexdigest())
    pki.ca.write_bytes(ca.public_bytes(pem))
    pki.server_cert.write_bytes(server.public_bytes(pem))
    pki.client_cert.write_bytes(client.public_bytes(pem))
    for path, key in ((pki.server_key, server_key), (pki.client_key, client_key)):
        path.write_bytes(_key_pem(key))
        path.chmod(0o600)
    return pki


# -- rsyslogd ----------------------------------------------------------------------------------

_RULESET = """
template(name="rampart_json" type="string" string="%$!%\\n")
template(name="rampart_ts" type="string" string="%timereported:::date-rfc3339%")
ruleset(name="rampart") {
  action(type="mmpstrucdata" sd_name.lowercase="off")
  set $!f!pri = $pri;
  set $!f!version = $protocol-version;
  set $!f!facility = $syslogfacility;
  set $!f!severity = $syslogseverity;
  set $!f!timestamp = exec_template("rampart_ts");
  set $!f!hostname = $hostname;
  set $!f!app = $app-name;
  set $!f!procid = $procid;
  set $!f!msgid = $msgid;
  set $!f!sd = $structured-data;
  set $!f!msg = $msg;
  set $!f!raw = $rawmsg;
  set $!f!input = $inputname;
  action(type="omfile" file="OUT" template="rampart_json")
}
"""


class Rsyslog:
    """One rsyslogd with one listener on 127.0.0.1:``port`` (see the module docstring)."""

    def __init__(self, base: Path, listener: Listener, *, port: int, pki: Pki | None = None,
                 auth: str | None = None) -> None:
        if listener in ("tls", "relp-tls") and pki is None:
            raise ValueError("a TLS listener needs a PKI")
        self.base = base
        self.listener = listener
        self.port = port
        self.pki = pki
        self.auth = auth
        self.work = base / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.conf = base / "rsyslog.conf"
        self.out = base / "received.jsonl"
        self.pidfile = base / "rsyslogd.pid"
        self.log = base / "rsyslogd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf.write_text(self._config())

    def _config(self) -> str:
        lines = [f'global(workDirectory="{self.work}" maxMessageSize="64k"']
        if self.pki is not None:
            lines.append(f'  defaultNetstreamDriverCAFile="{self.pki.ca}"'
                         f' defaultNetstreamDriverCertFile="{self.pki.server_cert}"'
                         f' defaultNetstreamDriverKeyFile="{self.pki.server_key}"')
        lines[-1] += ")"
        lines.append('module(load="mmpstrucdata")')
        where = f'port="{self.port}" address="127.0.0.1" ruleset="rampart"'
        if self.listener == "tcp":
            lines += ['module(load="imtcp")', f'input(type="imtcp" {where})']
        elif self.listener == "tls":
            lines += [f'module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" '
                      f'streamDriver.authMode="{self.auth or "anon"}")', f'input(type="imtcp" {where})']
        else:
            lines.append('module(load="imrelp")')
            tls = ""
            if self.listener == "relp-tls":
                assert self.pki is not None
                tls = (f' tls="on" tls.caCert="{self.pki.ca}" tls.myCert="{self.pki.server_cert}"'
                       f' tls.myPrivKey="{self.pki.server_key}" tls.authMode="{self.auth or "certvalid"}"'
                       ' tls.permittedPeer=["rampart.test"]')
            lines.append(f'input(type="imrelp" {where}{tls})')
        return "\n".join(lines) + _RULESET.replace("OUT", str(self.out))

    def check_config(self) -> None:
        r = subprocess.run([RSYSLOGD, "-N1", "-f", str(self.conf)], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr + r.stdout

    def start(self, timeout: float = 15.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = self.log.open("ab")
        self.proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
                                     stdout=log, stderr=subprocess.STDOUT, cwd=self.base,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not self._listening():
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsyslogd exited: {self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rsyslogd did not listen: {self.log.read_text()[-3000:]}")
            time.sleep(0.02)

    def _listening(self) -> bool:
        """True once 127.0.0.1:port is in LISTEN state (read from /proc: no connection to confuse it)."""
        want = f"0100007F:{self.port:04X}"
        try:
            table = Path("/proc/net/tcp").read_text()
        except OSError:  # pragma: no cover - not Linux
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0
        return any(fields[1] == want and fields[3] == "0A"
                   for fields in (line.split() for line in table.splitlines()[1:]) if len(fields) > 3)

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (rsyslog writes out what it took) or SIGKILL; waits for the process."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def restart(self) -> None:
        self.stop()
        self.start()

    # -- what it received ----------------------------------------------------------------------

    def records(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        text = self.out.read_text(encoding="utf-8")
        complete = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def wait_for(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """The records once at least ``count`` arrived (AssertionError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.records()
            if len(got) >= count:
                return got
            assert time.monotonic() < deadline, f"rsyslog received {len(got)} of {count} records"
            time.sleep(0.02)

    def settle(self, quiet: float = 0.3, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The records once the output file stopped growing for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            size = self.out.stat().st_size if self.out.exists() else 0
            if size != last:
                last, since = size, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
            time.sleep(0.02)
        return self.records()

    def messages(self) -> str:
        """rsyslogd's own messages (its errors say why it refused a client)."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""
