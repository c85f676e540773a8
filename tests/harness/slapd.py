"""A real OpenLDAP ``slapd`` on loopback for the directory audit tests (docs/directory-audit.md).

:func:`start_slapd` writes a throwaway configuration (``slapd -f``), loads a
seed LDIF offline with ``slapadd`` and starts Debian's slapd bound to
127.0.0.1 only: LDAPS on one free port, plain LDAP (for StartTLS) on another.
The certificate is made by the test (:func:`harness.tls.make_cert`, SAN
127.0.0.1); its SHA-256 is the pin. The schema adds an AD-like overlay
(``lastLogonTimestamp``, ``userAccountControl``, ``pwdLastSet``,
``sAMAccountName``, ``servicePrincipalName``, ``whenCreated``, in the
auxiliary class ``rampartADUser``) on top of core, cosine, inetOrgPerson and
nis; the ppolicy overlay is loaded so OpenLDAP's own ``pwdAccountLockedTime``
exists. The auditor binds as ``cn=auditor``, which may read everything and
write nothing.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .server import free_port
from .tls import make_cert

SUFFIX = "dc=example,dc=test"
AUDITOR_DN = f"cn=auditor,{SUFFIX}"
AUDITOR_PASSWORD = "auditor bind secret 7f3a"
ROOT_PASSWORD = "root secret 91c2"
SLAPD = shutil.which("slapd") or "/usr/sbin/slapd"
SLAPADD = shutil.which("slapadd") or "/usr/sbin/slapadd"

AD_SCHEMA = """\
# AD-like attributes for tests (OpenLDAP's experimental arc 1.3.6.1.4.1.4203.666).
attributetype ( 1.3.6.1.4.1.4203.666.71.1 NAME 'lastLogonTimestamp'
  EQUALITY integerMatch ORDERING integerOrderingMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.4203.666.71.2 NAME 'userAccountControl'
  EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.4203.666.71.3 NAME 'pwdLastSet'
  EQUALITY integerMatch ORDERING integerOrderingMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.4203.666.71.4 NAME 'sAMAccountName'
  EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.4203.666.71.5 NAME 'servicePrincipalName'
  EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )
attributetype ( 1.3.6.1.4.1.4203.666.71.6 NAME 'whenCreated'
  EQUALITY generalizedTimeMatch ORDERING generalizedTimeOrderingMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.24 SINGLE-VALUE )
objectclass ( 1.3.6.1.4.1.4203.666.72.1 NAME 'rampartADUser' SUP top AUXILIARY
  MAY ( lastLogonTimestamp $ userAccountControl $ pwdLastSet $ sAMAccountName $
        servicePrincipalName $ whenCreated ) )
"""

CONFIG = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
include {dir}/rampart-ad.schema
pidfile {dir}/slapd.pid
argsfile {dir}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload ppolicy
TLSCertificateFile {cert}
TLSCertificateKeyFile {key}
TLSVerifyClient never
database mdb
maxsize 10485760
suffix "{suffix}"
rootdn "cn=admin,{suffix}"
rootpw "{rootpw}"
directory {dir}/db
overlay ppolicy
access to attrs=userPassword by anonymous auth by * none
access to * by dn.exact="{auditor}" read by * none
"""


def filetime(unix: float) -> int:
    """A Unix time as an AD FILETIME (100 ns since 1601-01-01)."""
    return int((unix + 11644473600) * 10_000_000)


def gentime(unix: float) -> str:
    return time.strftime("%Y%m%d%H%M%SZ", time.gmtime(unix))


@dataclass
class Slapd:
    """A running slapd: its ports, certificate pin and files."""

    base: Path
    ldaps_port: int
    ldap_port: int
    cert_path: Path
    cert_sha256: str
    proc: subprocess.Popen[bytes] | None = None
    log: list[str] = field(default_factory=list)

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    @property
    def starttls_url(self) -> str:
        return f"ldap://127.0.0.1:{self.ldap_port}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"slapd exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"slapd did not listen on 127.0.0.1:{port}")


def start_slapd(base: Path, seed_ldif: str) -> Slapd:
    """Configure, seed (slapadd) and start a slapd on 127.0.0.1; the caller stops it."""
    base.mkdir(parents=True, exist_ok=True)
    (base / "db").mkdir()
    cert, key, sha = make_cert(base / "tls")
    (base / "rampart-ad.schema").write_text(AD_SCHEMA)
    conf = base / "slapd.conf"
    conf.write_text(CONFIG.format(dir=base, cert=cert, key=key, suffix=SUFFIX, rootpw=ROOT_PASSWORD,
                                  auditor=AUDITOR_DN))
    base_ldif = (f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: Example\n"
                 f"dc: example\n\n"
                 f"dn: {AUDITOR_DN}\nobjectClass: person\ncn: auditor\nsn: auditor\n"
                 f"userPassword: {AUDITOR_PASSWORD}\n\n")
    (base / "seed.ldif").write_text(base_ldif + seed_ldif)
    subprocess.run([SLAPADD, "-f", str(conf), "-l", str(base / "seed.ldif")], check=True,
                   capture_output=True, timeout=60)
    ldaps, ldap = free_port(), free_port()
    out = open(base / "slapd.log", "wb")  # noqa: SIM115 - kept open for the process's life
    proc = subprocess.Popen([SLAPD, "-f", str(conf), "-d", "0",
                             "-h", f"ldaps://127.0.0.1:{ldaps}/ ldap://127.0.0.1:{ldap}/"],
                            stdout=out, stderr=subprocess.STDOUT)
    out.close()
    server = Slapd(base=base, ldaps_port=ldaps, ldap_port=ldap, cert_path=cert, cert_sha256=sha,
                   proc=proc)
    try:
        _wait_port(ldaps, proc)
        _wait_port(ldap, proc)
    except Exception:
        server.stop()
        raise
    return server
