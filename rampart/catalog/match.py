"""Pure matching over a :class:`~rampart.catalog.model.Catalog` (no I/O).

What detection asks of the catalog:

- which tools a running or installed program is (by executable name, or by an
  executable inside one of a tool's install paths, whatever its name; H1);
- whether a known tool runs from outside its install locations: portable use
  from a temporary, download or home directory (H3, CISA AA23-025A);
- which tools listen on a port or talk to a domain or address (N2);
- whether a tool's version has a known vulnerability (S1, H5).

Portable use is decided, for one executable path, in this order:

1. in a temporary, download, desktop or removable-media location: portable,
   whatever the catalog says (an imported feed cannot make ``/tmp`` an
   install location);
2. inside one of the tool's install paths of the same operating system
   flavour (Windows, macOS, other POSIX): installed;
3. in a home directory: portable;
4. elsewhere: portable when the tool has install paths for that flavour (the
   path is outside all of them), unknown and so not flagged when it has none.

Every function returns tools sorted by slug, without duplicates, and treats
malformed input as matching nothing.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping

from .model import (
    COMM_LEN,
    Catalog,
    Tool,
    VulnerableRange,
    canonical_path,
    path_flavour,
    path_pattern_regex,
    path_within,
    version_key,
)

__all__ = [
    "PORTABLE_LOCATIONS",
    "USER_LOCATIONS",
    "is_portable_location",
    "tools_for_address",
    "tools_for_domain",
    "tools_for_executable",
    "tools_for_install_path",
    "tools_for_port",
    "vulnerable",
]

#: Locations where an executable is portable use whatever the catalog says (lowercase patterns).
PORTABLE_LOCATIONS: dict[str, tuple[str, ...]] = {
    "windows": (
        "?:/users/*/downloads", "?:/users/*/desktop", "?:/users/*/appdata/local/temp", "?:/windows/temp",
        "?:/temp", "?:/tmp", "?:/users/public", "?:/$recycle.bin", "?:/perflogs",
    ),
    "posix": (
        "/tmp", "/var/tmp", "/dev/shm",  # noqa: S108 - location patterns, not temporary files
        "/run/shm", "/run/user/*", "/home/*/downloads", "/home/*/desktop",
        "/root/downloads", "/root/desktop", "/media", "/run/media", "/mnt", "/var/folders",
    ),
    "macos": (
        "/private/tmp", "/private/var/tmp", "/private/var/folders", "/users/*/downloads", "/users/*/desktop",
        "/users/shared", "/volumes",
    ),
}

#: Home directories: portable use unless the tool's install paths name the place.
USER_LOCATIONS: dict[str, tuple[str, ...]] = {
    "windows": ("?:/users/*",),
    "posix": ("/home/*", "/root"),
    "macos": ("/users/*",),
}


def _sorted(tools: Iterable[Tool]) -> tuple[Tool, ...]:
    return tuple(sorted({t.slug: t for t in tools}.values(), key=lambda t: t.slug))


def _in_any(path: str, patterns: Iterable[str]) -> bool:
    low = path.lower()
    return any(path_pattern_regex(p).fullmatch(low) for p in patterns)


def _exe_key(text: str) -> str:
    name = text.strip().removesuffix(" (deleted)")
    return re.split(r"[\\/]", name)[-1].strip().lower()


def tools_for_executable(catalog: Catalog, path: str = "", name: str = "") -> tuple[Tool, ...]:
    """Tools whose executable names match the basename of ``path`` or the process ``name``.

    ``name`` may be a Linux process name cut to 15 characters: it then also
    matches the longer names it is the start of.
    """
    hits: list[Tool] = []
    for key, is_comm in ((_exe_key(path), False), (_exe_key(name), True)):
        if not key or len(key) > 255:
            continue
        hits.extend(catalog.by_executable.get(key, ()))
        hits.extend(tool for rx, tool in catalog.executable_globs if rx.fullmatch(key))
        if is_comm and len(key) == COMM_LEN:
            hits.extend(catalog.by_comm_prefix.get(key, ()))
    return _sorted(hits)


def _literal_head(pattern: str) -> str:
    """The components of ``pattern`` before its first wildcard one, joined (the index key)."""
    head: list[str] = []
    for i, part in enumerate(pattern.split("/")):
        if ("*" in part or "?" in part) and not (i == 0 and part == "?:"):
            break
        head.append(part)
    return "/".join(head)


@functools.lru_cache(maxsize=4)
def _install_index(catalog: Catalog) -> Mapping[str, tuple[tuple[str, Tool], ...]]:
    """(pattern, tool) pairs keyed by each install pattern's literal head: one dict lookup per path prefix."""
    index: dict[str, list[tuple[str, Tool]]] = {}
    for tool in catalog.tools:
        for pattern in tool.install_paths:
            index.setdefault(_literal_head(pattern), []).append((pattern, tool))
    return {k: tuple(v) for k, v in index.items()}


def tools_for_install_path(catalog: Catalog, exe_path: str) -> tuple[Tool, ...]:
    """Tools with an install path that ``exe_path`` is, or lies below: a program in a tool's own
    folder (``/opt/nezha/agent/x``) is that tool's whatever its file name.

    Over-broad install paths (``/usr/bin``, ``/opt``) are refused when the catalog is built
    (:func:`~rampart.catalog.model.canonical_install_path`), so this never matches a shared folder.
    """
    path = canonical_path(exe_path)
    if not path:
        return ()
    index = _install_index(catalog)
    parts = path.split("/")
    if re.fullmatch(r"[a-z]:", parts[0]):
        parts[0] = "?:"  # Windows patterns start with any drive
    hits: list[Tool] = []
    for n in range(1, len(parts) + 1):
        for pattern, tool in index.get("/".join(parts[:n]), ()):
            if path_within(path, pattern):
                hits.append(tool)
    return _sorted(hits)


def is_portable_location(tool: Tool, exe_path: str) -> bool:
    """True when ``exe_path`` is portable use of ``tool`` (the rules are in the module docstring).

    A relative or unusable path is not judged (False): the caller knows only
    that it could not tell.
    """
    path = canonical_path(exe_path)
    if not path:
        return False
    flavour = path_flavour(path)
    if _in_any(path, PORTABLE_LOCATIONS[flavour]):
        return True
    own = [p for p in tool.install_paths if path_flavour(p) == flavour]
    if any(path_within(path, p) for p in own):
        return False
    if _in_any(path, USER_LOCATIONS[flavour]):
        return True
    return bool(own)


def tools_for_port(catalog: Catalog, port: int) -> tuple[Tool, ...]:
    """Tools known to use ``port`` (ports shared by ordinary services match nothing)."""
    if isinstance(port, bool) or not isinstance(port, int):
        return ()
    return catalog.by_port.get(port, ())


def _host_key(hostname: str) -> str:
    host = hostname.strip().lower().rstrip(".")
    if not host or len(host) > 253:
        return ""
    if not host.isascii():
        try:
            host = ".".join(label.encode("idna").decode("ascii") if not label.isascii() else label
                            for label in host.split("."))
        except UnicodeError:
            return ""
    if not re.fullmatch(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*", host):
        return ""
    return host


def tools_for_domain(catalog: Catalog, hostname: str) -> tuple[Tool, ...]:
    """Tools whose domain rules match ``hostname``.

    Suffix rules match on label boundaries only: ``*.teamviewer.com`` matches
    ``router1.teamviewer.com`` but neither ``teamviewer.com`` nor
    ``evil-teamviewer.com``.
    """
    host = _host_key(hostname)
    if not host:
        return ()
    hits: list[Tool] = list(catalog.by_domain.get(host, ()))
    labels = host.split(".")
    for i in range(1, len(labels) - 1):
        hits.extend(catalog.by_domain_suffix.get(".".join(labels[i:]), ()))
    hits.extend(tool for rx, tool in catalog.domain_globs if rx.fullmatch(host))
    return _sorted(hits)


def tools_for_address(catalog: Catalog, address: str) -> tuple[Tool, ...]:
    """Tools known to use this IP address (as listed; no DNS is done here)."""
    try:
        key = str(ipaddress.ip_address(address.strip().strip("[]")))
    except ValueError:
        return ()
    return catalog.by_address.get(key, ())


def vulnerable(tool: Tool, version: str, platform: str | None = None) -> tuple[VulnerableRange, ...]:
    """The listed vulnerable ranges that contain ``version`` (on ``platform`` when given).

    Versions compare by their leading dotted numbers (:func:`~rampart.catalog.model.version_key`);
    a version that does not start with a number matches nothing, and a
    pre-release such as ``23.9.8-rc1`` compares as ``23.9.8``.
    """
    key = version_key(version)
    if key is None:
        return ()
    return tuple(r for r in tool.vulnerable_versions if r.affects(key, platform))
