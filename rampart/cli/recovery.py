"""The tenant's offline recovery key (issue 11, finding 7; docs/trust-chain.md, "Recovery").

``rampart tenant create`` makes one more owner key for the new root and hands
its private half to the owner once, as a *paper key*, to keep off-line. With
the default owner threshold of 1, the owner's day-to-day key alone signs
rotations, and the recovery key alone can sign the next root when that key is
lost (``rampart root recover``).

Invariants:

* the private half never reaches the server, the operator's config
  directory, a log or a command-line flag: it is printed once, or written to a
  file the owner names, created 0600 and never over an existing file;
* a paper key carries a check over the tenant id and the seed, so a typo, a
  truncated copy or the sheet of another tenant is refused with a clear error
  before anything is signed;
* a root key is a recovery key only if the owner-signed root names it so
  (:data:`RECOVERY_NAME`): nothing the server says decides it.

Paper form: ``RRK1-`` then RFC 4648 base32 of ``seed || check`` in groups of
four, where ``check`` is the first 3 bytes of SHA-256(b"rampart recovery key
v1" 0 tenant 0 seed). Letters are case-insensitive; dashes and spaces are
ignored when it is typed back.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import os
from pathlib import Path

from rampart.trust import KeyEntry, OperatorKey, key_fingerprint

from . import prompts
from .errors import CliError, UsageProblem

PREFIX = "RRK1"
RECOVERY_NAME = "offline recovery key"
ENV_RECOVERY_KEY = "RAMPART_RECOVERY_KEY"
_CHECK_BYTES = 3
_SEED_BYTES = 32


def _check(tenant_id: str, seed: bytes) -> bytes:
    h = hashlib.sha256(b"rampart recovery key v1\0" + tenant_id.encode() + b"\0" + seed)
    return h.digest()[:_CHECK_BYTES]


def paper_key(tenant_id: str, key: OperatorKey) -> str:
    """The key as a person copies it onto paper: ``RRK1-XXXX-XXXX-…`` (14 groups of four)."""
    seed = key.seed()
    text = base64.b32encode(seed + _check(tenant_id, seed)).decode().rstrip("=")
    return "-".join([PREFIX] + [text[i:i + 4] for i in range(0, len(text), 4)])


def key_from_paper(tenant_id: str, text: str) -> OperatorKey:
    """Decode a typed or stored paper key of ``tenant_id``; UsageProblem if it does not check."""
    compact = "".join(text.split()).replace("-", "").upper()
    if not compact.startswith(PREFIX):
        raise UsageProblem(f"a recovery key starts with {PREFIX}- (it is on the sheet "
                           "`rampart tenant create` printed)")
    body = compact[len(PREFIX):]
    try:
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except (binascii.Error, ValueError):
        raise UsageProblem("the recovery key has characters a paper key never holds "
                           "(letters A-Z and digits 2-7 only)") from None
    if len(raw) != _SEED_BYTES + _CHECK_BYTES:
        raise UsageProblem("the recovery key is too short or too long: check every group")
    seed, check = raw[:_SEED_BYTES], raw[_SEED_BYTES:]
    if check != _check(tenant_id, seed):
        raise UsageProblem("the recovery key does not check: a group is mistyped, or it is the "
                           "recovery key of another tenant")
    return OperatorKey(seed)


def recovery_entry(key: OperatorKey, when: int) -> KeyEntry:
    """The root's entry for a recovery key: its name says what it is and when it was made."""
    day = dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%d")
    return KeyEntry(public=key.public.to_b64(), name=f"{RECOVERY_NAME} ({day})")


def is_recovery(entry: KeyEntry) -> bool:
    """Whether the owner-signed root names this key as an offline recovery key."""
    return entry.name.startswith(RECOVERY_NAME)


def sheet(tenant_id: str, tenant_name: str, key: OperatorKey, *, root_version: int,
          root_sha256: str) -> str:
    """The text to print or file away: the paper key, and what to do with it."""
    fp = key_fingerprint(key.public.raw)
    return "\n".join([
        "RAMPART OFFLINE RECOVERY KEY: keep this off-line (paper, a safe); never type it into",
        "a shared machine. Whoever holds it can sign this tenant's next root alone.",
        "",
        f"  tenant:       {tenant_name} ({tenant_id})",
        f"  key id:       {key.key_id}",
        f"  fingerprint:  {fp}",
        f"  pin:          root v{root_version} sha256 {root_sha256}",
        "",
        f"  {paper_key(tenant_id, key)}",
        "",
        "If the owner key is lost: on a new machine, `rampart login`, then",
        f"`rampart root pin {tenant_id} <the pin above>` and",
        f"`rampart root recover {tenant_id} --recovery-key -` (type the key when asked).",
        "docs/trust-chain.md, \"Recovery\", has the whole ceremony.",
        "",
    ])


def save_sheet(path: Path, text: str) -> None:
    """Write ``text`` to a new file, 0600 from the start; never over an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageProblem(f"{path} exists: give a new file for the recovery key") from None
    except OSError as exc:
        raise CliError(f"cannot create {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise CliError(f"cannot write {path}: {exc.strerror}") from exc


def load_recovery_key(source: str, tenant_id: str) -> OperatorKey:
    """The recovery key from a sheet file, or with ``-`` typed at a no-echo prompt (or stdin)."""
    if source == "-":
        text = prompts.secret(ENV_RECOVERY_KEY, f"Recovery key ({PREFIX}-…): ", "recovery key")
        return key_from_paper(tenant_id, text)
    try:
        lines = Path(source).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read the recovery key file {source}: "
                       f"{getattr(exc, 'strerror', None) or 'not text'}") from exc
    found = [ln for ln in lines if ln.strip().upper().startswith(PREFIX + "-")]
    if len(found) != 1:
        raise UsageProblem(f"{source} holds no recovery key line ({PREFIX}-…)")
    return key_from_paper(tenant_id, found[0])
