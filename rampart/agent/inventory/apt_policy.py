"""``apt-cache policy`` read as data: release fields, version tables, pending and security versions.

Pure parsing (no I/O): the inventory's pending updates and the patching
engine read apt through these same functions, so the two agree on what is
pending and which version is the security fix. Lines it does not understand
are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .debversion import compare_deb_versions

_POLICY_FILE = re.compile(r"^ *(-?\d+) (\S.*)$")
_POLICY_RELEASE = re.compile(r"^ +release (.*)$")
_POLICY_VERSION = re.compile(r"^ (?:\*\*\*| {3}) (\S+) (-?\d+)$")
_POLICY_SOURCE = re.compile(r"^ {8}(-?\d+) (\S.*)$")
_SECURITY_LABEL = re.compile(r"(?:^|[\s_\-])security(?:$|[\s_\-])", re.IGNORECASE)

def _release_fields(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in re.split(r",(?=[a-z]=)", text):
        key, sep, value = part.partition("=")
        if sep and len(key) == 1:
            out[key] = value
    return out


def parse_apt_release_map(text: str) -> dict[str, dict[str, str]]:
    """``apt-cache policy``: index line ("URI dist/comp arch Packages") -> release fields (o, a, n, l)."""
    out: dict[str, dict[str, str]] = {}
    current: str | None = None
    for line in text.splitlines():
        if m := _POLICY_RELEASE.match(line):
            if current is not None:
                out[current] = _release_fields(m.group(1))
            continue
        if line.startswith("Pinned packages"):
            break
        m = _POLICY_FILE.match(line)
        current = m.group(2).strip() if m else None
        if current is not None:
            out.setdefault(current, {})
    return out


def is_security_source(index: str, release: Mapping[str, str]) -> bool:
    """A security archive: a ``*-security`` suite or codename, or a label with the word "security".

    Without release fields (lists not yet indexed) the dist in the index line
    decides (``bookworm-security/main``), or a ``security.*`` host.
    """
    for key in ("a", "n"):
        if release.get(key, "").endswith("-security"):
            return True
    if _SECURITY_LABEL.search(release.get("l", "")):
        return True
    parts = index.split()
    dist = parts[1].split("/", 1)[0] if len(parts) >= 2 else ""
    host = parts[0].split("/")[2] if parts and parts[0].count("/") >= 2 else ""
    return dist.endswith("-security") or host.startswith("security.")


@dataclass
class PolicyEntry:
    name: str
    arch: str
    installed: str = ""
    candidate: str = ""
    versions: list[tuple[str, list[str]]] = field(default_factory=list)


def parse_apt_policy_packages(text: str, native_arch: str) -> list[PolicyEntry]:
    """Per package: installed, candidate and the version table with each version's index lines."""
    out: list[PolicyEntry] = []
    cur: PolicyEntry | None = None
    for line in text.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            name, _, arch = line[:-1].partition(":")
            cur = PolicyEntry(name, arch or native_arch)
            out.append(cur)
            continue
        if cur is None:
            continue
        stripped = line.strip()
        if stripped.startswith("Installed:"):
            cur.installed = stripped.partition(":")[2].strip()
        elif stripped.startswith("Candidate:"):
            cur.candidate = stripped.partition(":")[2].strip()
        elif m := _POLICY_VERSION.match(line):
            cur.versions.append((m.group(1), []))
        elif (m := _POLICY_SOURCE.match(line)) and cur.versions:
            cur.versions[-1][1].append(m.group(2).strip())
    return out


def is_pending(e: PolicyEntry) -> bool:
    """An installed package whose candidate is newer (a pinned downgrade is not an update)."""
    return e.installed not in ("", "(none)") and e.candidate not in ("", "(none)", e.installed) \
        and compare_deb_versions(e.candidate, e.installed) > 0


def apt_security_and_origin(e: PolicyEntry, releases: Mapping[str, Mapping[str, str]]) -> tuple[str, str]:
    """(the newest version newer than the installed one that a security archive offers, or "";
    the archive or suite offering the candidate, or "")."""
    best = origin = ""
    for version, sources in e.versions:
        remote = [s for s in sources if "://" in s or s.startswith("file:") or s.startswith("copy:")]
        if version == e.candidate and remote and not origin:
            rel = releases.get(remote[0], {})
            index = remote[0].split()
            origin = rel.get("a") or rel.get("n") or (index[1].split("/", 1)[0] if len(index) > 1 else "")
        if compare_deb_versions(version, e.installed) > 0 and any(
                is_security_source(s, releases.get(s, {})) for s in remote) \
                and (not best or compare_deb_versions(version, best) > 0):
            best = version
    return best, origin
