"""Catalog model: one canonical form for every fact about a remote access tool.

A :class:`Tool` holds only canonical facts; its ``__post_init__`` re-derives
each fact's canonical form and refuses the object if any differs, so a Tool
decoded from a stored file obeys the same invariants as one built by the
importer or the built-in table. The canonical forms:

- executables: lowercase basenames (``anydesk.exe``, ``teamviewerd``); ``*`` and
  ``?`` are wildcards inside one name. Names that any program may carry
  (``agent.exe``, ``svchost.exe``, ``python3``) are refused: they would tie
  every such process to one tool.
- install paths: absolute path patterns with ``/`` separators. Windows ones
  are lowercase and drive-agnostic (``?:/program files/anydesk``); macOS ones
  are lowercase (``/applications/anydesk.app``); other POSIX ones keep their
  case (``/opt/teamviewer``). ``*`` matches within one path component. A
  pattern names a directory (an executable is inside when the pattern matches
  the executable or one of its ancestor directories) or one file. The first
  component after the root is literal, and broad shared directories
  (``/usr/bin``, ``?:/program files``, ``/home/*``) are refused.
- services: lowercase names without a ``.service`` suffix; ``*`` allowed.
- ports: ints 1..65535.
- domains: lowercase ASCII (IDNA) names. ``name.example`` matches that host only;
  ``*.example.com`` matches every name strictly below ``example.com`` (on
  label boundaries: ``evil-example.com`` is not below it); other ``*`` match
  inside one label (``plus*.site24x7.com``) or one whole label. A rule must end
  in two literal labels that are not a shared suffix (``*.com``,
  ``*.co.uk``, ``*.amazonaws.com`` are refused).
- addresses: globally routable IP addresses in ``ipaddress`` text form.
- every tuple is sorted and free of duplicates.

Errors::

    CatalogError        an untrusted catalog or feed file was refused (unreadable,
                        oversized, malformed, wrong shape)
    InvalidFact         one value could not be made canonical (ValueError; ``reason``
                        is a stable slug). Importers count these and go on.
    ValueError          misuse: building a Tool or Catalog from non-canonical data

This module does no I/O.
"""

from __future__ import annotations

import functools
import ipaddress
import posixpath
import re
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Literal, get_args

import msgspec

Platform = Literal["windows", "linux", "macos", "android", "ios", "bsd", "chromeos"]
Category = Literal["rmm", "remote_access", "tunnel", "mesh_vpn"]
Flavour = Literal["windows", "macos", "posix"]

PLATFORMS: tuple[str, ...] = get_args(Platform)
CATEGORIES: tuple[str, ...] = get_args(Category)

#: Upper bound on the entries of one Tool field (keeps a hostile feed's cost bounded).
MAX_FACTS_PER_FIELD = 1024
MAX_NAME = 128
MAX_PATH = 1024
MAX_DOMAIN = 253
#: Widest port range accepted from text such as ``21115-21119``.
MAX_PORT_RANGE = 64


class CatalogError(Exception):
    """An untrusted catalog or feed file was refused as a whole."""


class InvalidFact(ValueError):  # noqa: N818 - a ValueError by design: msgspec and callers treat it as one
    """One value cannot be made canonical. ``reason`` is a stable slug for counting."""

    def __init__(self, reason: str, value: object = None) -> None:
        text = repr(value)
        super().__init__(f"{reason}: {text[:80]}" if value is not None else reason)
        self.reason = reason


# --- shared vocabularies ---------------------------------------------------------------

#: Process names too common to identify a tool (system programs, interpreters, generic words).
GENERIC_EXECUTABLES: frozenset[str] = frozenset({
    # Windows system programs and common hosts
    "cmd.exe", "powershell.exe", "pwsh.exe", "conhost.exe", "svchost.exe", "rundll32.exe",
    "regsvr32.exe", "msiexec.exe", "explorer.exe", "dllhost.exe", "taskhost.exe", "taskhostw.exe",
    "wscript.exe", "cscript.exe", "mshta.exe", "winlogon.exe", "lsass.exe", "services.exe",
    "wininit.exe", "csrss.exe", "smss.exe", "spoolsv.exe", "notepad.exe", "mstsc.exe", "werfault.exe",
    "java.exe", "javaw.exe", "python.exe", "pythonw.exe", "node.exe", "perl.exe", "ruby.exe",
    "chrome.exe", "msedge.exe", "firefox.exe", "iexplore.exe", "curl.exe", "wget.exe", "ssh.exe",
    "sshd.exe", "scp.exe", "sftp.exe", "7z.exe", "setup.exe", "install.exe", "installer.exe",
    "uninstall.exe", "uninst.exe", "unins000.exe", "update.exe", "updater.exe", "launcher.exe",
    "agent.exe", "client.exe", "server.exe", "service.exe", "helper.exe", "tunnel.exe", "app.exe",
    "main.exe", "run.exe", "start.exe", "svc.exe", "host.exe", "gui.exe", "tray.exe", "core.exe",
    "installcore.exe", "installshield setup.exe", "bootstrapper.exe", "stub.exe",
    # POSIX system programs, shells, interpreters and generic words
    "sh", "bash", "dash", "zsh", "ksh", "fish", "python", "python2", "python3", "perl", "ruby", "node",
    "java", "php", "ssh", "sshd", "sudo", "su", "systemd", "init", "curl", "wget", "nc", "ncat",
    "socat", "screen", "tmux", "xterm", "agent", "client", "server", "service", "daemon", "update",
    "updater", "install", "installer", "main", "app", "run", "start", "helper", "launcher",
})

#: Words too common to start a wildcard executable name (``agent*.exe``).
_GENERIC_PREFIXES: frozenset[str] = frozenset({
    "agent", "setup", "install", "installer", "update", "updater", "client", "server", "service",
    "remote", "support", "helper", "launcher", "app", "win", "windows",
})

#: File suffixes of programs that run as a process under their own name.
_EXECUTABLE_SUFFIXES = (".exe", ".com", ".scr")

#: Shared directories: never a tool's install location on their own.
GENERIC_DIRECTORIES: frozenset[str] = frozenset({
    "?:", "?:/program files", "?:/program files (x86)", "?:/programdata", "?:/windows",
    "?:/windows/system32", "?:/windows/syswow64", "?:/windows/temp", "?:/users", "?:/users/*",
    "?:/users/public", "?:/users/*/appdata", "?:/users/*/appdata/local", "?:/users/*/appdata/roaming",
    "?:/users/*/appdata/local/temp", "?:/users/*/downloads", "?:/users/*/desktop", "?:/temp", "?:/tmp",
    "?:/program files/common files", "?:/program files (x86)/common files", "?:/bin",
    "/", "/bin", "/sbin", "/usr", "/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib64", "/usr/libexec",
    "/usr/share", "/usr/local", "/usr/local/bin", "/usr/local/sbin", "/usr/local/lib", "/usr/local/share",
    "/opt", "/etc", "/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system",
    "/etc/init.d", "/var", "/var/lib", "/home", "/home/*", "/root",
    "/tmp", "/var/tmp", "/dev/shm",  # noqa: S108 - directory names compared, not temporary files
    "/run", "/srv", "/snap", "/snap/bin", "/lib", "/lib64", "/mnt", "/media",
    "/applications", "/library", "/library/application support", "/library/launchdaemons",
    "/library/launchagents", "/system", "/users", "/users/*", "/users/shared", "/private",
    "/private/tmp", "/volumes",
})

#: Suffixes under which many unrelated parties have names: ``*.<suffix>`` rules are refused.
SHARED_SUFFIXES: frozenset[str] = frozenset({
    # multi-label public suffixes
    "co.uk", "org.uk", "ac.uk", "gov.uk", "me.uk", "com.au", "net.au", "org.au", "co.nz", "co.jp",
    "ne.jp", "or.jp", "co.kr", "com.br", "com.cn", "net.cn", "com.tw", "com.hk", "co.in", "co.za",
    "com.mx", "com.tr", "com.ar", "com.sg", "com.my", "eu.com", "us.com", "co.il", "com.ru",
    # shared hosting, clouds, CDNs and big platforms
    "amazonaws.com", "cloudfront.net", "awsglobalaccelerator.com", "elasticbeanstalk.com",
    "azurewebsites.net", "windows.net", "blob.core.windows.net", "servicebus.windows.net",
    "cloudapp.net", "azure.com", "azureedge.net", "azurefd.net", "trafficmanager.net",
    "microsoft.com", "live.com", "office.com", "office365.com", "msedge.net",
    "googleapis.com", "google.com", "googleusercontent.com", "gstatic.com", "appspot.com",
    "firebaseapp.com", "firebaseio.com", "web.app", "run.app", "cloudfunctions.net",
    "github.io", "github.com", "githubusercontent.com", "gitlab.io", "herokuapp.com",
    "cloudflare.com", "cloudflare.net", "cloudflarestorage.com", "r2.cloudflarestorage.com", "r2.dev",
    "workers.dev", "pages.dev", "vercel.app", "netlify.app", "fly.dev", "onrender.com",
    "akamai.net", "akamaized.net", "akamaiedge.net", "akamaihd.net", "edgekey.net", "edgesuite.net",
    "fastly.net", "fastlylb.net", "digitaloceanspaces.com", "ondigitalocean.app", "apple.com",
    "icloud.com", "pubnub.com", "pubnubapi.com", "duckdns.org", "no-ip.com", "ddns.net",
    "s3.amazonaws.com", "compute.amazonaws.com", "elb.amazonaws.com", "core.windows.net",
    # vendors whose one domain serves many unrelated products
    "zoho.com", "zoho.eu", "zoho.in", "zoho.com.au", "zoho.com.cn", "zoho.jp", "sophos.com",
})

_SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_CVE_RE = re.compile(r"^CVE-\d{4}-\d{4,7}$")
_BAD_NAME_CHARS = re.compile(r'[\x00-\x1f\x7f/\\:<>|"]')
_LABEL_RE = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_GLOB_LABEL_RE = re.compile(r"^[a-z0-9_*](?:[a-z0-9_*-]{0,61}[a-z0-9_*])?$")
_TLD_RE = re.compile(r"^(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})$")
_WIN_DRIVE_RE = re.compile(r"^[A-Za-z?]:(?:[\\/]|$)")
_MAC_ROOTS = ("/applications", "/library", "/system", "/users", "/volumes", "/private")
_VERSION_RE = re.compile(r"^(\d{1,9}(?:\.\d{1,9}){0,9})")


def _sorted_unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(values)))


# --- canonical forms -------------------------------------------------------------------


def slugify(name: str) -> str:
    """Lowercase ASCII words joined by ``-``: the identity of a tool across catalogs."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:64].strip("-")
    if not slug:
        raise InvalidFact("bad-name", name)
    return slug


def _literal_chars(text: str) -> int:
    return sum(1 for c in text if c not in "*?")


def canonical_executable(text: str) -> str:
    """The lowercase basename of ``text``; refuses empty, odd and generic names."""
    name = text.strip().strip('"').strip()
    name = re.split(r"[\\/]", name)[-1].strip().lower()
    name = re.sub(r"\*+", "*", name)
    if not name or len(name) > MAX_NAME or name in (".", ".."):
        raise InvalidFact("bad-executable", text)
    if _BAD_NAME_CHARS.search(name) or "[" in name or "]" in name:
        raise InvalidFact("bad-executable", text)
    if _literal_chars(name) < 3 or _literal_chars(name.removesuffix(".exe")) < 2:
        raise InvalidFact("executable-too-broad", text)
    if "*" in name or "?" in name:
        prefix = re.split(r"[*?]", name, maxsplit=1)[0].rstrip("-_. ")
        if len(prefix) < 3 or prefix in _GENERIC_PREFIXES:
            raise InvalidFact("executable-too-broad", text)  # "*agent.exe" would match a thousand programs
    if name in GENERIC_EXECUTABLES:
        raise InvalidFact("generic-executable", text)
    return name


def is_executable_name(name: str) -> bool:
    """True when a (lowercase) file name is a program that runs under that name."""
    return name.endswith(_EXECUTABLE_SUFFIXES)


def canonical_service(text: str) -> str:
    """A lowercase service or unit name without ``.service``; ``*`` allowed."""
    name = text.strip().strip('"').strip().lower().removesuffix(".service").strip()
    name = re.sub(r"\*+", "*", name)
    if not name or len(name) > MAX_NAME or _BAD_NAME_CHARS.search(name) or _literal_chars(name) < 2:
        raise InvalidFact("bad-service", text)
    return name


def canonical_platform(text: str) -> str:
    """One of :data:`PLATFORMS` for the usual spellings of an operating system."""
    key = re.sub(r"[^a-z]", "", text.lower())
    table = {
        "windows": "windows", "win": "windows", "linux": "linux", "macos": "macos", "mac": "macos",
        "osx": "macos", "macosx": "macos", "darwin": "macos", "android": "android", "ios": "ios",
        "ipados": "ios", "freebsd": "bsd", "openbsd": "bsd", "netbsd": "bsd", "bsd": "bsd",
        "chromeos": "chromeos",
    }
    if key not in table:
        raise InvalidFact("unknown-platform", text)
    return table[key]


def canonical_port(value: int) -> int:
    """``value`` when it is a TCP/UDP port number (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidFact("bad-port", value)
    return value


def parse_ports(value: object) -> tuple[int, ...]:
    """Port numbers from an int or text: ``5938``, ``"5938/tcp"``, ``"21115-21119"``, ``"80, 443"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (canonical_port(value),)
    if not isinstance(value, str):
        raise InvalidFact("wrong-type", value)
    ports: set[int] = set()
    for part in re.split(r"[,;\s]+(?![-–])", value.strip()):
        item = re.sub(r"(?i)^(?:tcp|udp)[/:\s]*|[/\s]*(?:tcp|udp)$", "", part.strip())
        if not item:
            continue
        m = re.fullmatch(r"(\d{1,5})\s*[-–]\s*(\d{1,5})", item)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo or hi - lo + 1 > MAX_PORT_RANGE:
                raise InvalidFact("port-range-too-wide", value)
            ports.update(canonical_port(p) for p in range(lo, hi + 1))
        elif re.fullmatch(r"\d{1,5}", item):
            ports.add(canonical_port(int(item)))
        else:
            raise InvalidFact("bad-port", value)
    if not ports:
        raise InvalidFact("bad-port", value)
    return tuple(sorted(ports))


def canonical_address(text: str) -> str:
    """The ``ipaddress`` text of a globally routable address; others are refused."""
    try:
        addr = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        raise InvalidFact("bad-address", text) from None
    if not addr.is_global:
        raise InvalidFact("non-global-address", text)
    return str(addr)


def _idna(host: str) -> str:
    if host.isascii():
        return host
    try:
        return ".".join(label.encode("idna").decode("ascii") if not label.isascii() else label
                        for label in host.split("."))
    except UnicodeError:
        raise InvalidFact("bad-domain", host) from None


def domain_kind(rule: str) -> Literal["exact", "suffix", "glob"]:
    """How a canonical domain rule matches (see the module docstring)."""
    if "*" not in rule:
        return "exact"
    if rule.startswith("*.") and "*" not in rule[2:]:
        return "suffix"
    return "glob"


def canonical_domain(text: str) -> str:
    """A lowercase domain rule; refuses malformed, over-broad and shared-suffix rules."""
    host = _idna(text.strip().lower().rstrip("."))
    host = re.sub(r"\*+", "*", host)
    if not host or len(host) > MAX_DOMAIN:
        raise InvalidFact("bad-domain", text)
    labels = host.split(".")
    if any(not _GLOB_LABEL_RE.match(label) for label in labels):
        raise InvalidFact("bad-domain", text)
    last_glob = max((i for i, label in enumerate(labels) if "*" in label), default=-1)
    literal_tail = labels[last_glob + 1:]
    if len(literal_tail) < 2:
        raise InvalidFact("domain-too-broad", text)
    if not _TLD_RE.match(literal_tail[-1]) or any(not _LABEL_RE.match(label) for label in literal_tail):
        raise InvalidFact("bad-domain", text)
    tail = ".".join(literal_tail)
    if last_glob < 0 and host in SHARED_SUFFIXES:
        raise InvalidFact("shared-suffix", text)  # a platform's own name says nothing about a tool
    if last_glob >= 0 and tail in SHARED_SUFFIXES and all(label == "*" for label in labels[: last_glob + 1]):
        raise InvalidFact("shared-suffix", text)  # every name of a shared platform
    return host


def domain_regex(rule: str) -> re.Pattern[str]:
    """The full-match pattern of a canonical ``glob`` domain rule."""
    labels = rule.split(".")
    head = ""
    if labels[0] == "*":
        head, labels = r"(?:[a-z0-9_-]+\.)+", labels[1:]
    parts = ["[a-z0-9_-]+" if label == "*" else re.escape(label).replace(r"\*", "[a-z0-9_-]*")
             for label in labels]
    return re.compile(head + r"\.".join(parts))


def path_flavour(path: str) -> Flavour:
    """``windows`` for drive paths, ``macos`` for the macOS system roots, else ``posix``."""
    if _WIN_DRIVE_RE.match(path):
        return "windows"
    low = path.lower()
    if any(low == root or low.startswith(root + "/") for root in _MAC_ROOTS):
        return "macos"
    return "posix"


def _fold(path: str) -> str:
    """Case-fold a ``/``-separated absolute path where its file system ignores case."""
    return path if path_flavour(path) == "posix" else path.lower()


def canonical_path(text: str) -> str:
    """The canonical form of one concrete absolute path (e.g. a process's executable).

    Resolves ``.`` and ``..``, drops Windows ``\\\\?\\`` prefixes and the Linux
    ``" (deleted)"`` suffix. Returns ``""`` for relative or unusable input.
    """
    t = text.strip()
    if not t or len(t) > 4 * MAX_PATH or "\x00" in t:
        return ""
    t = t.removesuffix(" (deleted)")
    for prefix in ("\\\\?\\", "\\??\\", "\\\\.\\", "//?/"):
        if t.startswith(prefix):
            t = t[len(prefix):]
    if re.match(r"^[A-Za-z]:[\\/]", t):
        rest = posixpath.normpath(t[2:].replace("\\", "/"))
        rest = re.sub(r"/+", "/", rest)
        return (t[0] + ":" + rest).lower().rstrip("/")
    if t.startswith("/"):
        return _fold(re.sub(r"/+", "/", posixpath.normpath(t)))
    return ""


def canonical_install_path(text: str) -> str:
    """The canonical pattern of an absolute install location (see the module docstring).

    Accepts ``C:\\Program Files\\X``, ``?:/program files/x``, ``/opt/x`` and
    ``/Applications/X.app``; refuses relative, unanchored and over-broad patterns.
    """
    t = text.strip().strip('"').strip()
    if not t or len(t) > MAX_PATH or re.search(r"[\x00-\x1f]", t):
        raise InvalidFact("bad-path", text)
    windows = bool(_WIN_DRIVE_RE.match(t))
    if windows:
        t = "?:" + t[2:].replace("\\", "/")
    elif not t.startswith("/") or "\\" in t:
        raise InvalidFact("unanchored-path", text)
    t = re.sub(r"/+", "/", t).rstrip("/")
    t = re.sub(r"\*+", "*", t)
    parts = t.split("/")[1:]
    if any(p in (".", "..") for p in parts) or any(p != p.strip() or not p for p in parts):
        raise InvalidFact("bad-path", text)
    if windows and any(re.search(r'[:<>|"]', p) for p in parts):
        raise InvalidFact("bad-path", text)
    if not parts or "*" in parts[0] or "?" in parts[0]:
        raise InvalidFact("path-too-broad", text)
    t = t.lower() if windows else _fold(t)
    stripped = t
    while stripped.endswith("/*"):
        stripped = stripped[:-2]
    if stripped in GENERIC_DIRECTORIES or t in GENERIC_DIRECTORIES:
        raise InvalidFact("path-too-broad", text)
    return t


@functools.lru_cache(maxsize=8192)
def path_pattern_regex(pattern: str) -> re.Pattern[str]:
    """Matches a canonical path equal to ``pattern`` or below a directory it matches."""
    body = "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body + "(?:/.*)?")


def path_within(path: str, pattern: str) -> bool:
    """True when canonical ``path`` is ``pattern`` or lies below a directory it matches."""
    return path_flavour(path) == path_flavour(pattern) and bool(path_pattern_regex(pattern).fullmatch(path))


def version_key(text: str) -> tuple[int, ...] | None:
    """The leading dotted numbers of a version (``v``, a Debian epoch and suffixes ignored).

    ``"23.9.7.8804"`` -> (23, 9, 7, 8804); ``"1:0.9.17-1ubuntu1"`` -> (0, 9, 17);
    trailing zeros are dropped so ``1.2`` equals ``1.2.0``. None when ``text``
    does not start with a number.
    """
    t = text.strip().lower()
    t = re.sub(r"^\d+:(?=\d)", "", t.removeprefix("v"))
    m = _VERSION_RE.match(t)
    if not m:
        return None
    parts = [int(p) for p in m.group(1).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


# --- structs -------------------------------------------------------------------------


class VulnerableRange(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Versions ``introduced <= v < below`` of a tool have ``cve``.

    An empty ``introduced`` means every version before ``below``; empty
    ``platforms`` means every platform.
    """

    cve: str
    below: str
    introduced: str = ""
    platforms: tuple[Platform, ...] = ()

    def __post_init__(self) -> None:
        if not _CVE_RE.match(self.cve):
            raise ValueError(f"bad CVE id {self.cve!r}")
        high = version_key(self.below)
        if high is None:
            raise ValueError(f"bad version {self.below!r}")
        if self.introduced:
            low = version_key(self.introduced)
            if low is None or low >= high:
                raise ValueError(f"introduced {self.introduced!r} is not below {self.below!r}")
        unknown = any(p not in PLATFORMS for p in self.platforms)
        if unknown or self.platforms != _sorted_unique(self.platforms):
            raise ValueError("platforms must be known, sorted and unique")

    def affects(self, version: tuple[int, ...], platform: str | None = None) -> bool:
        if platform is not None and self.platforms and platform not in self.platforms:
            return False
        high = version_key(self.below)
        low = version_key(self.introduced) if self.introduced else None
        return high is not None and version < high and (low is None or version >= low)


def _check_field(field: str, values: tuple[str, ...], canonical: object) -> None:
    if len(values) > MAX_FACTS_PER_FIELD:
        raise ValueError(f"{field}: more than {MAX_FACTS_PER_FIELD} entries")
    if values != _sorted_unique(values):
        raise ValueError(f"{field} must be sorted and unique")
    assert callable(canonical)
    for value in values:
        if not isinstance(value, str) or canonical(value) != value:
            raise ValueError(f"{field}: {value!r} is not canonical")


class Tool(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What a catalog knows about one remote access or RMM tool (canonical facts only).

    ``linux`` is true exactly when ``"linux"`` is in ``platforms``. ``advisories``
    are CVE ids known for the tool without a version range (from a feed);
    ``vulnerable_versions`` are the ranges that :func:`rampart.catalog.vulnerable`
    compares. ``sources`` says where the facts came from (``builtin``, ``lolrmm``).
    """

    name: str
    slug: str
    category: Category
    platforms: tuple[Platform, ...] = ()
    executables: tuple[str, ...] = ()
    install_paths: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    domains: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()
    vulnerable_versions: tuple[VulnerableRange, ...] = ()
    advisories: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    linux: bool = False

    def __post_init__(self) -> None:
        if not self.name.strip() or len(self.name) > MAX_NAME or re.search(r"[\x00-\x1f\x7f]", self.name):
            raise ValueError("a tool needs a printable name of at most 128 characters")
        for slug in (self.slug, *self.aliases):
            if not _SLUG_RE.match(slug) or len(slug) > 64:
                raise ValueError(f"bad slug {slug!r}")
        if self.slug in self.aliases:
            raise ValueError("a slug cannot also be its own alias")
        if self.platforms != _sorted_unique(self.platforms):
            raise ValueError("platforms must be sorted and unique")
        if self.category not in CATEGORIES or any(p not in PLATFORMS for p in self.platforms):
            raise ValueError("unknown category or platform")
        if self.linux != ("linux" in self.platforms):
            raise ValueError("linux must be true exactly when linux is a platform")
        _check_field("executables", self.executables, canonical_executable)
        _check_field("install_paths", self.install_paths, canonical_install_path)
        _check_field("services", self.services, canonical_service)
        _check_field("domains", self.domains, canonical_domain)
        _check_field("addresses", self.addresses, canonical_address)
        _check_field("aliases", self.aliases, str)
        _check_field("sources", self.sources, str)
        _check_field("advisories", self.advisories, str)
        if any(not _CVE_RE.match(a) for a in self.advisories):
            raise ValueError("advisories must be CVE ids")
        if any(not _SLUG_RE.match(s) for s in self.sources):
            raise ValueError("bad source name")
        if len(self.ports) > MAX_FACTS_PER_FIELD or self.ports != tuple(sorted(set(self.ports))):
            raise ValueError("ports must be sorted and unique")
        for port in self.ports:
            canonical_port(port)
        if len(self.vulnerable_versions) > MAX_FACTS_PER_FIELD:
            raise ValueError("too many vulnerable version ranges")
        if len(set(self.vulnerable_versions)) != len(self.vulnerable_versions):
            raise ValueError("duplicate vulnerable version ranges")


def make_tool(
    name: str,
    *,
    slug: str | None = None,
    category: Category,
    platforms: Iterable[str] = (),
    executables: Iterable[str] = (),
    install_paths: Iterable[str] = (),
    services: Iterable[str] = (),
    ports: Iterable[int] = (),
    domains: Iterable[str] = (),
    addresses: Iterable[str] = (),
    vulnerable_versions: Iterable[VulnerableRange] = (),
    advisories: Iterable[str] = (),
    aliases: Iterable[str] = (),
    sources: Iterable[str] = (),
) -> Tool:
    """A Tool from already-canonical facts, sorted and deduplicated; ``linux`` derived."""
    plats = _sorted_unique(platforms)
    vulns = tuple(sorted(set(vulnerable_versions), key=lambda v: (v.cve, v.below, v.introduced)))
    return Tool(
        name=name, slug=slug or slugify(name), category=category,
        platforms=plats,  # type: ignore[arg-type]  # checked by Tool.__post_init__
        executables=_sorted_unique(executables), install_paths=_sorted_unique(install_paths),
        services=_sorted_unique(services), ports=tuple(sorted(set(ports))),
        domains=_sorted_unique(domains), addresses=_sorted_unique(addresses),
        vulnerable_versions=vulns, advisories=_sorted_unique(advisories),
        aliases=_sorted_unique(aliases), sources=_sorted_unique(sources), linux="linux" in plats,
    )


def merge_tools(base: Tool, extra: Tool) -> Tool:
    """``base`` extended with the facts of ``extra``; base keeps its name, slug and category.

    Facts are only ever added: an imported feed cannot remove what the
    built-in catalog knows.
    """
    return make_tool(
        base.name, slug=base.slug, category=base.category,
        platforms=base.platforms + extra.platforms,
        executables=base.executables + extra.executables,
        install_paths=base.install_paths + extra.install_paths,
        services=base.services + extra.services, ports=base.ports + extra.ports,
        domains=base.domains + extra.domains, addresses=base.addresses + extra.addresses,
        vulnerable_versions=base.vulnerable_versions + extra.vulnerable_versions,
        advisories=base.advisories + extra.advisories,
        aliases=tuple(a for a in base.aliases + extra.aliases + (extra.slug,) if a != base.slug),
        sources=base.sources + extra.sources,
    )


# --- catalog ---------------------------------------------------------------------------

#: Ports that ordinary services share: kept on a Tool as facts, never indexed for lookup
#: (a listener on 443 or 22 says nothing about remote access software).
UNINDEXED_PORTS: frozenset[int] = frozenset({
    20, 21, 22, 25, 53, 67, 68, 80, 88, 110, 123, 135, 137, 138, 139, 143, 161, 162, 389, 443, 445,
    465, 514, 587, 636, 993, 995, 1433, 3306, 3478, 3479, 5000, 5349, 5353, 5432, 7000, 8000, 8080,
    8443, 8888,
})

#: Linux truncates process names to 15 characters (TASK_COMM_LEN - 1).
COMM_LEN = 15


def _freeze(index: dict[str, list[Tool]]) -> Mapping[str, tuple[Tool, ...]]:
    return MappingProxyType({k: tuple(v) for k, v in index.items()})


class Catalog:
    """An immutable set of tools with lookup indexes; slugs and aliases are unique.

    Index attributes (read-only mappings to tuples of tools):
    ``by_executable`` (exact names), ``by_comm_prefix`` (first 15 characters of
    longer names), ``executable_globs``, ``by_port`` (minus
    :data:`UNINDEXED_PORTS`), ``by_domain`` (exact), ``by_domain_suffix`` (``*.x``
    rules keyed by ``x``), ``domain_globs`` and ``by_address``.
    """

    __slots__ = (
        "tools", "_by_slug", "by_executable", "by_comm_prefix", "executable_globs", "by_port",
        "by_domain", "by_domain_suffix", "domain_globs", "by_address",
    )

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        ordered = tuple(sorted(tools, key=lambda t: t.slug))
        by_slug: dict[str, Tool] = {}
        for tool in ordered:
            for key in (tool.slug, *tool.aliases):
                if key in by_slug:
                    raise ValueError(f"slug or alias {key!r} names two tools")
                by_slug[key] = tool
        exe: dict[str, list[Tool]] = {}
        comm: dict[str, list[Tool]] = {}
        port: dict[int, list[Tool]] = {}
        dom: dict[str, list[Tool]] = {}
        suffix: dict[str, list[Tool]] = {}
        addr: dict[str, list[Tool]] = {}
        exe_globs: list[tuple[re.Pattern[str], Tool]] = []
        dom_globs: list[tuple[re.Pattern[str], Tool]] = []
        for tool in ordered:
            for name in tool.executables:
                if "*" in name or "?" in name:
                    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in name)
                    exe_globs.append((re.compile(body), tool))
                else:
                    exe.setdefault(name, []).append(tool)
                    if len(name) > COMM_LEN:
                        comm.setdefault(name[:COMM_LEN], []).append(tool)
            for p in tool.ports:
                if p not in UNINDEXED_PORTS:
                    port.setdefault(p, []).append(tool)
            for rule in tool.domains:
                kind = domain_kind(rule)
                if kind == "exact":
                    dom.setdefault(rule, []).append(tool)
                elif kind == "suffix":
                    suffix.setdefault(rule[2:], []).append(tool)
                else:
                    dom_globs.append((domain_regex(rule), tool))
            for a in tool.addresses:
                addr.setdefault(a, []).append(tool)
        self.tools: tuple[Tool, ...] = ordered
        self._by_slug: Mapping[str, Tool] = MappingProxyType(by_slug)
        self.by_executable = _freeze(exe)
        self.by_comm_prefix = _freeze(comm)
        self.executable_globs: tuple[tuple[re.Pattern[str], Tool], ...] = tuple(exe_globs)
        self.by_port: Mapping[int, tuple[Tool, ...]] = MappingProxyType(
            {k: tuple(v) for k, v in port.items()})
        self.by_domain = _freeze(dom)
        self.by_domain_suffix = _freeze(suffix)
        self.domain_globs: tuple[tuple[re.Pattern[str], Tool], ...] = tuple(dom_globs)
        self.by_address = _freeze(addr)

    def __len__(self) -> int:
        return len(self.tools)

    def __iter__(self) -> Iterator[Tool]:
        return iter(self.tools)

    def __contains__(self, slug: object) -> bool:
        return isinstance(slug, str) and slug in self._by_slug

    def __repr__(self) -> str:
        return f"Catalog({len(self.tools)} tools)"

    def get(self, slug: str) -> Tool | None:
        """The tool with this slug or alias."""
        return self._by_slug.get(slug)

    def merged(self, other: Catalog) -> Catalog:
        """This catalog extended by ``other``.

        A tool of ``other`` whose slug is a slug or alias here extends that
        tool (:func:`merge_tools`: facts are added, never removed); the others
        are added as they are.
        """
        result = {t.slug: t for t in self.tools}
        for tool in other.tools:
            base = self.get(tool.slug)
            if base is None:
                for alias in tool.aliases:
                    base = self.get(alias)
                    if base is not None:
                        break
            if base is None:
                result[tool.slug] = merge_tools(result[tool.slug], tool) if tool.slug in result else tool
            else:
                result[base.slug] = merge_tools(result[base.slug], tool)
        return Catalog(result.values())
