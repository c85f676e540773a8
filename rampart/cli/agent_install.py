"""The one line that installs the agent on a device and enrols it (``rampart enroll new --package``).

Invariants (docs/design/agent-packaging.md):

* The line never holds the enrolment token: bash reads it without echo into
  ``RAMPART_ENROLL_TOKEN``, which ``rampart-agent enroll`` reads (no flag, nothing in ``ps``
  or shell history).
* It checks the package file's SHA-256, computed here from the operator's own copy, before
  anything is installed (``sha256sum -c`` stops the line on a mismatch).
* It carries the enrol command as given, with the server pins the operator verified.
* File names are shell-quoted; only the file's base name appears (the line runs in the
  directory the operator copied it to).
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageProblem

BUNDLE_PREFIX = "/opt/rampart-agent"
_BUNDLE_SUFFIX = ".tar.gz"


@dataclass(frozen=True)
class AgentPackage:
    """The operator's copy of an agent package: its base name and SHA-256."""

    name: str
    sha256: str

    @classmethod
    def read(cls, path: Path) -> AgentPackage:
        """The .deb or the bundle (``rampart-agent-VERSION-linux-MACHINE.tar.gz``) the build made."""
        name = path.name
        if not name.startswith("rampart-agent") or not name.endswith((".deb", _BUNDLE_SUFFIX)):
            raise UsageProblem(f"--package {path}: not an agent package (rampart-agent_*.deb or "
                               f"rampart-agent-*{_BUNDLE_SUFFIX}, as `make deb` and `make agent-bundle` "
                               "name them)")
        h = hashlib.sha256()
        try:
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        except OSError as exc:
            raise UsageProblem(f"--package {path}: {exc.strerror or exc}") from None
        return cls(name, h.hexdigest())

    def install_line(self, enroll_command: str, token_env: str) -> str:
        """``enroll_command`` starts with ``rampart-agent enroll`` and reads the token from
        ``token_env``; the line reads the token, checks the file, installs, enrols, starts."""
        q = shlex.quote(self.name)
        check = f"echo {shlex.quote(f'{self.sha256}  {self.name}')} | sha256sum -c -"
        if self.name.endswith(".deb"):
            install = f"apt-get install -y ./{q}"
            enroll = enroll_command
        else:
            top = shlex.quote(self.name[: -len(_BUNDLE_SUFFIX)])
            install = f"tar -xzf {q} && ./{top}/install.sh"
            enroll = enroll_command.replace("rampart-agent ", f"{BUNDLE_PREFIX}/bin/rampart-agent ", 1)
        read = f"read -rsp 'enrolment token: ' {token_env} && export {token_env} && echo"
        return (f"{read} && {check} && {install} && {enroll} && unset {token_env} "
                f"&& systemctl enable --now rampart-agent")
