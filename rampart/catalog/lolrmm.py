"""Importer of the LOLRMM feed format (lolrmm.io ``api/rmm_tools.json``).

The feed is a JSON list with one object per tool::

    {"Name": "AnyDesk", "Category": "RAT" | "RMM",
     "Details": {"PEMetadata": {...} | [{...}], "SupportedOS": [...],
                 "InstallationPaths": [...], "Vulnerabilities": [...]},
     "Artifacts": {"Disk": [{"File": ...}], "EventLog": [{"ServiceName": ...}],
                   "Registry": [{"Path": ...}], "Network": [{"Domains": [...], "Ports": [...]}]}}

The feed is untrusted input, and untidy: install paths mix Windows paths
with environment variables, POSIX paths, globs and bare file names; network
fields mix host names, ``*.`` wildcards, regular expressions, ``host:port``,
IP addresses and placeholders such as ``user_managed``. Every fact goes
through the canonical forms of :mod:`rampart.catalog.model`; what cannot be
made canonical is skipped and counted, never guessed.

Rules kept here:

- The file is refused as a whole (:class:`CatalogError`) only when it cannot
  be read, exceeds :attr:`FeedLimits.max_bytes` or ``max_tools``, is not
  JSON, or is not a JSON list. Anything wrong inside one entry is skipped and
  counted: ``warnings`` for malformed input (wrong types, bad values),
  ``dropped`` for values refused by policy (placeholders, generic names,
  over-broad paths or domains, shared-suffix domains).
- Install paths come only from ``InstallationPaths``, never from ``Disk``
  artifacts (logs and configuration files do not say where a tool may run).
  An unanchored pattern (``*\\AteraAgent.exe``) names an executable, not a
  place; a file path names its directory, or the file itself when the
  directory is shared (``/usr/bin/tmate``).
- Entries with the same slug are merged; entries left with no usable fact
  are dropped.
- Ports in ``host:port`` entries are kept as facts; common ones (443) are
  not indexed for lookup (:data:`rampart.catalog.model.UNINDEXED_PORTS`).

No I/O except :func:`load_feed`, which only reads the file it is given.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import msgspec

from .model import (
    MAX_FACTS_PER_FIELD,
    MAX_NAME,
    UNINDEXED_PORTS,
    Catalog,
    CatalogError,
    Category,
    InvalidFact,
    Tool,
    canonical_address,
    canonical_domain,
    canonical_executable,
    canonical_install_path,
    canonical_platform,
    canonical_service,
    is_executable_name,
    make_tool,
    parse_ports,
    path_flavour,
    slugify,
)

__all__ = ["DEFAULT_FEED_LIMITS", "FeedLimits", "ImportResult", "load_feed", "parse_feed"]

SOURCE = "lolrmm"


@dataclass(frozen=True, slots=True)
class FeedLimits:
    """Bounds on what one feed may cost. The LOLRMM snapshot of 2026 is ~2 MB and 319 tools."""

    max_bytes: int = 8 << 20
    max_tools: int = 5000
    #: Entries read from one list field of one tool; the rest are skipped and counted.
    max_items: int = 1000
    #: Longest string value considered (paths, domains, names).
    max_string: int = 2048


DEFAULT_FEED_LIMITS = FeedLimits()


@dataclass(frozen=True)
class ImportResult:
    """A feed's catalog, and what was skipped on the way (reason slug -> count)."""

    catalog: Catalog
    entries: int
    warning_reasons: Mapping[str, int] = field(default_factory=dict)
    dropped: Mapping[str, int] = field(default_factory=dict)

    @property
    def warnings(self) -> int:
        """How many malformed values or entries were skipped."""
        return sum(self.warning_reasons.values())


#: Reasons that are policy, not malformed input: counted in ``dropped``.
_POLICY_REASONS = frozenset({
    "placeholder", "generic-executable", "executable-too-broad", "path-too-broad", "unanchored-path",
    "not-an-executable", "shared-suffix", "domain-too-broad", "non-global-address", "network-range",
    "unknown-platform", "advisory-not-cve", "tool-without-facts", "unknown-variable",
})

_PLACEHOLDERS = frozenset({"user_managed", "n/a", "na", "none", "unknown", "-", "various", "dynamic", "tbd"})

_WINDOWS_VARIABLES = {
    "programfiles": "?:/program files",
    "programfiles(x86)": "?:/program files (x86)",
    "programw6432": "?:/program files",
    "commonprogramfiles": "?:/program files/common files",
    "commonprogramfiles(x86)": "?:/program files (x86)/common files",
    "programdata": "?:/programdata",
    "allusersprofile": "?:/programdata",
    "appdata": "?:/users/*/appdata/roaming",
    "localappdata": "?:/users/*/appdata/local",
    "userprofile": "?:/users/*",
    "temp": "?:/users/*/appdata/local/temp",
    "tmp": "?:/users/*/appdata/local/temp",
    "windir": "?:/windows",
    "systemroot": "?:/windows",
    "systemdrive": "?:",
    "homedrive": "?:",
    "public": "?:/users/public",
}
#: ``*Users\...``: a leading ``*`` standing for the drive before these directories.
_WINDOWS_ROOT_DIRS = frozenset({"users", "programdata", "program files", "program files (x86)", "windows"})
_SERVICE_KEY_RE = re.compile(r"(?i)\\(?:currentcontrolset|controlset\d{3})\\services\\([^\\]+)")
_CVE_IN_TEXT_RE = re.compile(r"(?i)\bCVE-\d{4}-\d{4,7}\b")
_EXTENSION_RE = re.compile(r"\.[A-Za-z0-9]{1,8}$")
_REGEX_CHARS_RE = re.compile(r"[\\\[\](){}+^$|]")
_UNIT_FILE_RE = re.compile(
    r"(?i)^(?:/etc/systemd/system|/lib/systemd/system|/usr/lib/systemd/system|/etc/init\.d"
    r"|/library/launchdaemons|/library/launchagents)/([^/]+?)(?:\.service|\.plist)?$")


class _Tally:
    """Counts what was skipped, split into malformed input and policy drops."""

    def __init__(self) -> None:
        self.warnings: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()

    def skip(self, reason: str) -> None:
        (self.dropped if reason in _POLICY_REASONS else self.warnings)[reason] += 1


class _Facts:
    """The facts gathered for one slug across the feed's entries."""

    def __init__(self, name: str, category: Category) -> None:
        self.name = name
        self.category: Category = category
        self.platforms: set[str] = set()
        self.executables: set[str] = set()
        self.install_paths: set[str] = set()
        self.services: set[str] = set()
        self.ports: set[int] = set()
        self.domains: set[str] = set()
        self.addresses: set[str] = set()
        self.advisories: set[str] = set()

    def useful(self) -> bool:
        return bool(self.executables or self.install_paths or self.services or self.domains
                    or self.addresses or (self.ports - UNINDEXED_PORTS))


# --- defensive access ------------------------------------------------------------------


def _list(value: object, tally: _Tally, limits: FeedLimits) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        tally.skip("wrong-type")
        return []
    if len(value) > limits.max_items:
        tally.skip("too-many-items")
        return value[: limits.max_items]
    return value


def _dict(value: object, tally: _Tally) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        tally.skip("wrong-type")
        return {}
    return value


def _str(value: object, tally: _Tally, limits: FeedLimits) -> str | None:
    """A non-empty string within limits, or None (counted unless empty)."""
    if value is None:
        return None
    if not isinstance(value, str):
        tally.skip("wrong-type")
        return None
    if len(value) > limits.max_string:
        tally.skip("string-too-long")
        return None
    return value.strip() or None


# --- normalisation of feed values --------------------------------------------------------


def _expand_variables(text: str) -> str:
    def windows(m: re.Match[str]) -> str:
        key = m.group(1).lower()
        if key not in _WINDOWS_VARIABLES:
            raise InvalidFact("unknown-variable", text)
        return _WINDOWS_VARIABLES[key]

    t = re.sub(r"%([A-Za-z0-9_() ]{1,40})%", windows, text)
    if "%" in t:
        raise InvalidFact("unknown-variable", text)
    m = re.match(r"^(?:~|\$HOME|\$\{HOME\})(?=/|\\|$)", t)
    if m:
        rest = t[m.end():].lstrip("/\\")
        t = ("/Users/*/" if rest.lower().startswith("library") else "/home/*/") + rest
    if t.startswith("/") and "$" in t:
        raise InvalidFact("unknown-variable", text)
    return t


def _unit_name(text: str) -> str | None:
    """The service a systemd unit file or launchd plist path declares, if it is one."""
    m = _UNIT_FILE_RE.match(text.replace("\\", "/"))
    return m.group(1) if m else None


def _tool_words(slug: str) -> tuple[str, ...]:
    """The words of a slug long enough to say a file is the tool's own (``nezha``, ``remotely``)."""
    return tuple(w for w in slug.split("-") if len(w) >= 4)


def _feed_path(text: str, tally: _Tally, *, want_install: bool,
               tool_words: tuple[str, ...] = ()) -> tuple[str | None, str | None]:
    """(install path, executable) named by one feed path; either may be None.

    A POSIX program rarely has an extension: an anchored POSIX file path with
    none names an executable when it sits in a ``bin``/``sbin`` folder or
    when its file name contains one of ``tool_words`` (``/opt/nezha/agent/
    nezha-agent``), never a bare folder name such as ``/opt/nezha/agent``.
    """
    try:
        t = _expand_variables(re.sub(r"<[^<>]*>", "*", text.strip().strip('"').strip()))
    except InvalidFact as exc:
        tally.skip(exc.reason)
        return None, None
    t = re.sub(r"/+", "/", t.replace("\\", "/"))
    m = re.match(r"^\*([^/*]+)(?=/|$)", t)
    if m and m.group(1).lower() in _WINDOWS_ROOT_DIRS:
        t = "?:/" + t[1:]
    anchored = bool(re.match(r"^[A-Za-z?]:/", t)) or t.startswith("/")
    windows = bool(re.match(r"^[A-Za-z?]:", t))
    is_dir = t.endswith("/")
    body = t.rstrip("/")
    while body.endswith("/*"):
        body, is_dir = body[:-2].rstrip("/"), True
    if not body or body == "*":
        tally.skip("bad-path")
        return None, None
    base = body.rsplit("/", 1)[-1]
    parent = body.rsplit("/", 1)[0] if "/" in body else ""
    low = base.lower()
    has_ext = not is_dir and bool(_EXTENSION_RE.search(base)) and not low.endswith(".app")
    in_bin = not windows and parent.rsplit("/", 1)[-1] in ("bin", "sbin")
    exe: str | None = None
    named = (not windows and anchored and not has_ext and "*" not in low
             and any(w in re.sub(r"[^a-z0-9]", "", low) for w in tool_words))
    if not is_dir and (is_executable_name(low) or (in_bin and not has_ext) or named):
        try:
            exe = canonical_executable(base)
        except InvalidFact as exc:
            tally.skip(exc.reason)
    if not want_install:
        return None, exe
    if not anchored:
        if exe is None:
            tally.skip("unanchored-path")
        return None, exe
    options = ([parent] + ([body] if exe else [])) if has_ext else [body]
    reason = "bad-path"
    for option in options:
        try:
            return canonical_install_path(option), exe
        except InvalidFact as exc:
            reason = exc.reason
    tally.skip(reason)
    return None, exe


def _regex_to_glob(text: str) -> str:
    """A glob for the simple regular expressions seen in feeds (``relay-[a-f0-9]{8}.x.com``)."""
    t = text.removeprefix("^").removesuffix("$")
    t = re.sub(r"\[[^\]]*\](?:\{\d+(?:,\d*)?\}|[+*?])?", "*", t)
    t = re.sub(r"\\?\.[*+]", "*", t).replace("\\.", ".").replace("\\-", "-")
    if _REGEX_CHARS_RE.search(t):
        raise InvalidFact("bad-domain", text)
    return t


def _network_entry(text: str) -> tuple[str | None, str | None, int | None]:
    """(domain rule, address, port) named by one feed network value; raises InvalidFact."""
    t = text.strip().lower()
    if not t or t in _PLACEHOLDERS or "<" in t or " " in t:
        raise InvalidFact("placeholder", text)
    if re.fullmatch(r"[0-9a-f:.]+/\d{1,3}", t):
        raise InvalidFact("network-range", text)
    t = re.sub(r"^[a-z][a-z0-9+.-]*://", "", t)
    t = re.split(r"[/?#]", t, maxsplit=1)[0].rsplit("@", 1)[-1]
    port: int | None = None
    m = re.fullmatch(r"\[([0-9a-f:.]+)\](?::(\d{1,5}))?", t)
    if m:
        t, port = m.group(1), int(m.group(2)) if m.group(2) else None
    elif t.count(":") == 1:
        host, _, digits = t.partition(":")
        if not digits.isdigit():
            raise InvalidFact("bad-domain", text)
        t, port = host, int(digits)
    if port is not None:
        port = parse_ports(port)[0]
    try:
        ipaddress.ip_address(t)
    except ValueError:
        pass
    else:
        return None, canonical_address(t), port
    if _REGEX_CHARS_RE.search(t):
        t = _regex_to_glob(t)
    if t.startswith(".") and not t.startswith(".."):
        t = "*" + t
    return canonical_domain(t), None, port


# --- one entry ---------------------------------------------------------------------------


def _category(value: object, tally: _Tally) -> Category:
    if isinstance(value, str):
        return "rmm" if value.strip().upper() == "RMM" else "remote_access"
    if value is not None:
        tally.skip("wrong-type")
    return "remote_access"


def _name(value: object, tally: _Tally, limits: FeedLimits) -> str | None:
    text = _str(value, tally, limits)
    if text is None:
        tally.skip("missing-name")
        return None
    return " ".join(re.sub(r"[\x00-\x1f\x7f]", " ", text).split())[:MAX_NAME].strip() or None


def _read_entry(obj: object, facts: dict[str, _Facts], tally: _Tally, limits: FeedLimits) -> None:
    if not isinstance(obj, dict):
        tally.skip("entry-not-an-object")
        return
    name = _name(obj.get("Name"), tally, limits)
    if name is None:
        return
    try:
        slug = slugify(name)
    except InvalidFact as exc:
        tally.skip(exc.reason)
        return
    f = facts.get(slug)
    if f is None:
        f = facts[slug] = _Facts(name, _category(obj.get("Category"), tally))
    details = _dict(obj.get("Details"), tally)
    artifacts = _dict(obj.get("Artifacts"), tally)

    for item in _list(details.get("SupportedOS"), tally, limits):
        text = _str(item, tally, limits)
        if text:
            try:
                f.platforms.add(canonical_platform(text))
            except InvalidFact as exc:
                tally.skip(exc.reason)

    pe = details.get("PEMetadata")
    for meta in ([pe] if isinstance(pe, dict) else _list(pe, tally, limits)):
        filename = _str(_dict(meta, tally).get("Filename"), tally, limits)
        if filename is None:
            continue
        low = filename.lower()
        if not (is_executable_name(low) or not _EXTENSION_RE.search(low)) or "/" in low or "\\" in low:
            tally.skip("not-an-executable")
            continue
        try:
            f.executables.add(canonical_executable(filename))
        except InvalidFact as exc:
            tally.skip(exc.reason)

    for source in (details.get("InstallationPaths"), artifacts.get("InstallationPaths"),
                   obj.get("InstallationPaths")):
        for item in _list(source, tally, limits):
            text = _str(item, tally, limits)
            unit = _unit_name(text) if text else None
            if unit:
                _add_service(unit, f, tally)
            elif text:
                install, exe = _feed_path(text, tally, want_install=True, tool_words=_tool_words(slug))
                if install:
                    f.install_paths.add(install)
                if exe:
                    f.executables.add(exe)

    for disk in _list(artifacts.get("Disk"), tally, limits):
        text = _str(_dict(disk, tally).get("File"), tally, limits)
        if text and (is_executable_name(text.lower()) or text.strip().startswith("/")):
            _, exe = _feed_path(text, tally, want_install=False, tool_words=_tool_words(slug))
            if exe:
                f.executables.add(exe)

    for event in _list(artifacts.get("EventLog"), tally, limits):
        text = _str(_dict(event, tally).get("ServiceName"), tally, limits)
        if text:
            _add_service(text, f, tally)
    for key in _list(artifacts.get("Registry"), tally, limits):
        text = _str(_dict(key, tally).get("Path"), tally, limits)
        m = _SERVICE_KEY_RE.search(text or "")
        if m:
            _add_service(m.group(1), f, tally)

    for net in _list(artifacts.get("Network"), tally, limits):
        net_obj = _dict(net, tally)
        for item in _list(net_obj.get("Domains"), tally, limits):
            text = _str(item, tally, limits)
            if text:
                _add_network(text, f, tally)
        for item in _list(net_obj.get("Ports"), tally, limits):
            try:
                f.ports.update(parse_ports(item))
            except InvalidFact as exc:
                tally.skip(exc.reason)

    for item in _list(details.get("Vulnerabilities"), tally, limits):
        text = _str(item, tally, limits)
        if text:
            cves = {c.upper() for c in _CVE_IN_TEXT_RE.findall(text)}
            f.advisories.update(cves)
            if not cves:
                tally.skip("advisory-not-cve")


def _add_service(text: str, f: _Facts, tally: _Tally) -> None:
    try:
        f.services.add(canonical_service(re.sub(r"<[^<>]*>", "*", text)))
    except InvalidFact as exc:
        tally.skip(exc.reason)


def _add_network(text: str, f: _Facts, tally: _Tally) -> None:
    try:
        domain, address, port = _network_entry(text)
    except InvalidFact as exc:
        tally.skip(exc.reason)
        return
    if domain:
        f.domains.add(domain)
    if address:
        f.addresses.add(address)
    if port is not None:
        f.ports.add(port)


def _capped(values: set[Any], tally: _Tally) -> list[Any]:
    ordered = sorted(values)
    if len(ordered) > MAX_FACTS_PER_FIELD:
        tally.skip("too-many-facts")
        return ordered[:MAX_FACTS_PER_FIELD]
    return ordered


def _build(slug: str, f: _Facts, tally: _Tally) -> Tool | None:
    if not f.useful():
        tally.skip("tool-without-facts")
        return None
    if not f.platforms and any(path_flavour(p) == "posix" for p in f.install_paths):
        f.platforms.add("linux")  # a POSIX install path and no stated platform
    try:
        return make_tool(
            f.name, slug=slug, category=f.category, platforms=f.platforms,
            executables=_capped(f.executables, tally), install_paths=_capped(f.install_paths, tally),
            services=_capped(f.services, tally), ports=_capped(f.ports, tally),
            domains=_capped(f.domains, tally), addresses=_capped(f.addresses, tally),
            advisories=_capped(f.advisories, tally), sources=(SOURCE,),
        )
    except ValueError:
        tally.skip("invalid-tool")
        return None


# --- entry points ------------------------------------------------------------------------


def parse_feed(data: bytes, *, limits: FeedLimits = DEFAULT_FEED_LIMITS) -> ImportResult:
    """The catalog in a LOLRMM feed document; raises :class:`CatalogError` for an unusable file."""
    if len(data) > limits.max_bytes:
        raise CatalogError(f"feed is larger than {limits.max_bytes} bytes")
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        raws = msgspec.json.decode(data, type=list[msgspec.Raw])
    except msgspec.ValidationError:
        raise CatalogError("a feed must be a JSON list of tools") from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise CatalogError(f"feed is not valid JSON: {str(exc)[:200]}") from None
    if len(raws) > limits.max_tools:
        raise CatalogError(f"feed lists more than {limits.max_tools} tools")
    tally = _Tally()
    facts: dict[str, _Facts] = {}
    for raw in raws:
        try:
            obj = msgspec.json.decode(raw)
        except (msgspec.DecodeError, RecursionError):
            tally.skip("malformed-entry")
            continue
        _read_entry(obj, facts, tally, limits)
    tools = [t for slug, f in facts.items() if (t := _build(slug, f, tally)) is not None]
    return ImportResult(
        catalog=Catalog(tools), entries=len(raws),
        warning_reasons=MappingProxyType(dict(sorted(tally.warnings.items()))),
        dropped=MappingProxyType(dict(sorted(tally.dropped.items()))),
    )


def load_feed(path: Path, *, limits: FeedLimits = DEFAULT_FEED_LIMITS) -> ImportResult:
    """Read and import the LOLRMM feed file at ``path`` (a regular file of at most ``max_bytes``)."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise CatalogError(f"{path} is not a regular file")
        with path.open("rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise CatalogError(f"{path} is not a regular file")
            data = fh.read(limits.max_bytes + 1)
    except OSError as exc:
        raise CatalogError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_feed(data, limits=limits)
