"""Detections on the agent: what one inventory says about remote access tools, accounts and the OS.

:func:`evaluate` turns an :class:`~rampart.wire.inventory.Inventory` and a
:class:`~rampart.catalog.Catalog` into :class:`Finding` objects. It is pure:
no I/O, no clock, no environment; "now", the sanctioned tools and the agent's
own pids come from the caller. The agent runs it after every inventory
(threat T14: an unsanctioned tool is detected within one inventory interval);
the server may run it on a stored snapshot too, since a snapshot is untrusted
input and every string that reaches a finding is cleaned and bounded.

Detections (requirement in brackets)::

    kind                severity  trigger
    ------------------  --------  ---------------------------------------------------------------
    memory-only         critical  [H2] a process runs from a memfd or from a file on tmpfs/ramfs:
                                  its program never was on disk
                        high      [H2] a process's executable was deleted from disk after it started,
                                  outside the package-managed system trees (/usr, /bin, /sbin, /lib*,
                                  /snap, /nix/store, /gnu/store; not /opt, where hand-copied
                                  programs live)
    rat-portable        critical  [H3, CISA AA23-025A] a catalogued tool's process runs from a
                                  temporary, download, desktop, removable-media or home location,
                                  or from outside the tool's known install paths
    rat-behaviour       high      [H1, N2] a listener on this host answers a local probe with a
                                  remote desktop protocol (RFB banner, RDP X.224 confirm), or a
                                  program links a remote-desktop server library (libvncserver,
                                  FreeRDP server), and is not a sanctioned tool: whatever its name
    rat-unsanctioned    high      [H1, S1] a catalogued tool is running, installed as a package or
                                  present as a systemd service, and is not sanctioned
    inventory-truncated high      [T16] the inventory cut processes or sockets at its limits: a
                                  flood may hide a tool (nothing unreported is resolved then)
    vulnerable-tool     high      [S1, H5] an installed package of a catalogued tool has a version in
                                  one of the tool's listed vulnerable ranges (Linux ranges)
    rat-port            warning   [N2] a process listens on a catalogued remote access port, or
                                  connects out to a catalogued port or address
    dormant-local-user  warning   [S2] a local account with a login shell and a usable (or unknown)
                                  password has not logged in for ``dormant_days``, or never has
    eol-os              warning   [M6] the OS release is past its end of free security support

False positives, and how to silence each:

- memory-only: runc's short-lived re-exec from a sealed memfd (CVE-2019-5736 mitigation) and
  similar sandboxes; build tools that run freshly built programs from a tmpfs ``/tmp`` (``go
  run``); a developer rebuilding a program while it runs (deleted: severity high); a root-owned
  program outside the system trees replaced while running. Not silenced by sanctioning or by name:
  the memfd name, the file name and argv are all chosen by the program itself, and attackers
  bring sanctioned tools too (CISA AA23-025A). Restarting the process clears a deleted-file case.
- rat-portable: a tool unpacked and run by hand from a home or download folder by an
  administrator; a tool installed in a location the catalog does not list. Reported for
  sanctioned tools too (same reason as above); silence by installing the tool properly (or
  adding its install path to the catalog through a feed).
- rat-behaviour: a remote desktop server the MSP does use but has not catalogued or sanctioned (a
  sanctioned tool's listener is not reported); a program that links libvncserver without serving
  (a test tool). Silence by sanctioning the tool when it is catalogued, else by a suppression rule
  for the exact path (docs/monitoring.md).
- inventory-truncated: a host that really runs more processes or holds more sockets than the
  inventory limits (a busy proxy). Raise the limits, or accept it: while it stands, findings are
  not resolved by absence.
- rat-unsanctioned: a tool the MSP does use but has not listed; a program that shares a
  catalogued name. Silence by sanctioning the tool's slug (or an alias) for the device.
- vulnerable-tool: a distribution that backported the fix but kept the upstream version number
  (the finding gives the full package version to check against the distribution's tracker).
  Sanctioning does not silence it: upgrade or remove the package.
- rat-port: an unrelated program on a catalogued port (e.g. a development server on 4000).
  Silenced when the process is a sanctioned tool, or when every tool known for that port (or
  address) is sanctioned: the traffic is then explained by allowed software. Ports shared by
  ordinary services (22, 443, ...) are never catalogued lookups (:data:`rampart.catalog.model.
  UNINDEXED_PORTS`).
- dormant-local-user: a newly created account that has not logged in yet; an account used
  only through ``su``/``sudo``/SSH forced commands that leave no login record. Silence by
  locking the password (``usermod -L``), giving the account a no-login shell, or logging in.
- eol-os: none beyond the EOL table's own definition (end of *free* support; paid extended
  support is not counted). Silence by upgrading the OS.

Rules:

- Sanctioning (``sanctioned``: tool slugs or aliases) only ever removes rat-unsanctioned,
  rat-port and rat-behaviour findings (the latter only for a process identified as the
  sanctioned tool). It never hides memory-only, rat-portable or vulnerable-tool findings.
- A process is a catalogued tool when its executable's file name or its kernel process name
  (15 characters) is one of the tool's executable names, when its executable lies in one of the
  tool's install paths, or when its content names the tool (``Process.content``: a known build-id
  or SHA-256, or the tool's own text; :mod:`rampart.catalog.fingerprint`), so a renamed copy is
  recognised by content; a memfd program also by its memfd name and argv[0]. Packages by name or
  source package name equal to a tool's slug, alias, executable or service name; services by unit
  name.
- The agent's own processes (``agent_pids``), kernel threads and processes whose executable is
  unreadable are never memory-only findings.
- Established connections to a port the host listens on are inbound: their remote port is a
  client's ephemeral port and is not looked up. Loopback peers are not looked up either (the
  local listener is reported instead).

Keys: every finding has a stable ``key`` built from its kind, the tool's slug and what it is
about (an executable path, a port, an account name, a package), never a pid or a time, so a
restarted process or the next inventory yields the same key. Findings with the same key are
reported once, with the number of instances and their pids in the evidence.

Limits: at most :data:`MAX_FINDINGS` findings, most severe first; bounded text everywhere
(:data:`MAX_KEY`, :data:`MAX_SUBJECT`, :data:`MAX_EVIDENCE`, :data:`MAX_VALUE`). Detection sees
what the inventory sees: programs inside other mount namespaces (containers) show paths of that
namespace, interpreted tools (a Python or Java RAT) are seen as their interpreter, SSH
authorized keys are not inventoried (a password-locked account may still log in with a key),
and the catalog is not exhaustive (see :mod:`rampart.catalog.builtin`).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from rampart.catalog import (
    Catalog,
    Tool,
    canonical_path,
    is_portable_location,
    tools_for_address,
    tools_for_executable,
    tools_for_install_path,
    tools_for_port,
    vulnerable,
)
from rampart.catalog.fingerprint import PROTOCOLS, mark_slug
from rampart.wire.finding import (
    FINDING_KINDS,
    MAX_DORMANT_DAYS,
    MAX_EVIDENCE,
    MAX_FINDINGS,
    MAX_KEY,
    MAX_SUBJECT,
    MAX_VALUE,
    SEVERITIES,
    SEVERITY,
    Finding,
    FindingKind,
    Severity,
)
from rampart.wire.finding import UNSAFE as _UNSAFE
from rampart.wire.inventory import Inventory, Package, Process, Socket, User

# The Finding type, its kinds, severities and bounds are the wire contract: rampart.wire.finding.
__all__ = ["DAY_S", "ROOT_OWNED_TREES", "evaluate", "summarize"]

DAY_S: Final = 86400
#: Pids listed in the evidence of a finding seen in several processes.
_MAX_PIDS = 20

#: Trees only root can write, where a deleted executable means a package upgrade replaced it.
ROOT_OWNED_TREES: Final[tuple[str, ...]] = (
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/snap", "/nix/store", "/gnu/store",
)

_MEMFD = "/memfd:"
_PRESENT_PACKAGE_STATES = frozenset({"installed", "half-installed", "half-configured", "unpacked",
                                     "triggers-awaited", "triggers-pending"})


# --- text ----------------------------------------------------------------------------------


def _line(text: object, limit: int = MAX_VALUE) -> str:
    """``text`` as one safe line of at most ``limit`` characters, keeping its head and tail."""
    s = _UNSAFE.sub("?", str(text))
    if len(s) <= limit:
        return s
    head = (limit - 1) * 2 // 5
    return s[:head] + "\u2026" + s[len(s) - (limit - 1 - head):]


def _key(kind: FindingKind, tool: str, *parts: object) -> str:
    """A stable key; too long a one ends with a digest of the whole, so distinct keys stay distinct."""
    full = ":".join([kind, tool, *(_UNSAFE.sub("?", str(p)) for p in parts)])
    if len(full) <= MAX_KEY:
        return full
    digest = hashlib.sha256(full.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return full[: MAX_KEY - 33] + "#" + digest


def _cmdline(args: Sequence[str], truncated: bool) -> str:
    text = " ".join(args)
    return _line(text + (" \u2026" if truncated else ""))


def _names(tools: Sequence[Tool], most: int = 3) -> str:
    names = [t.name for t in tools[:most]]
    return ", ".join(names) + (f" and {len(tools) - most} more" if len(tools) > most else "")


def _basename(path: str) -> str:
    return re.split(r"[\\/]", path.rstrip("\\/"))[-1] if path else ""


def _within(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree + "/")


# --- accumulating findings -----------------------------------------------------------------


@dataclass
class _Draft:
    kind: FindingKind
    severity: Severity
    key: str
    tool: str
    subject: str
    evidence: dict[str, str]
    pids: list[int] = field(default_factory=list)
    instances: int = 1

    def finish(self) -> Finding:
        ev: dict[str, str] = {}
        if self.instances > 1:  # first, so the evidence limit never drops it
            ev["instances"] = str(self.instances)
            if len(self.pids) > 1:
                shown = self.pids[:_MAX_PIDS]
                ev["pids"] = ",".join(map(str, shown)) + (",\u2026" if len(self.pids) > len(shown) else "")
        for name, value in self.evidence.items():
            if value != "" and name not in ev and len(ev) < MAX_EVIDENCE:
                ev[name] = _line(value)
        return Finding(kind=self.kind, severity=self.severity, key=self.key, tool=self.tool,
                       subject=_line(self.subject, MAX_SUBJECT) or self.kind, evidence=ev)


class _Findings:
    """Drafts by key: the first of a key is kept, later ones only count as instances."""

    def __init__(self) -> None:
        self.drafts: dict[str, _Draft] = {}

    def add(self, kind: FindingKind, key: str, subject: str, evidence: Mapping[str, str], *, tool: str = "",
            pid: int | None = None, severity: Severity | None = None) -> None:
        draft = self.drafts.get(key)
        if draft is not None:
            draft.instances += 1
            if pid is not None and pid not in draft.pids:
                draft.pids.append(pid)
            return
        self.drafts[key] = _Draft(kind=kind, severity=severity or SEVERITY[kind], key=key, tool=tool,
                                  subject=subject, evidence=dict(evidence),
                                  pids=[pid] if pid is not None else [])

    def result(self) -> list[Finding]:
        rank = {s: i for i, s in enumerate(SEVERITIES)}
        order = {k: i for i, k in enumerate(FINDING_KINDS)}
        drafts = sorted(self.drafts.values(), key=lambda d: (rank[d.severity], order[d.kind], d.key))
        return [d.finish() for d in drafts[:MAX_FINDINGS]]


# --- identifying tools -----------------------------------------------------------------------


def _union(*groups: Iterable[Tool]) -> tuple[Tool, ...]:
    return tuple(sorted({t.slug: t for g in groups for t in g}.values(), key=lambda t: t.slug))


@dataclass(frozen=True)
class _Seen:
    """A process as a catalogued tool: which tools, and the path that locates each ("" = not judged)."""

    tools: tuple[Tool, ...]
    location: Mapping[str, str]


def _identify(catalog: Catalog, p: Process) -> _Seen:
    exe = p.exe or ""
    argv0 = p.cmdline[0] if p.cmdline else ""
    by_name = tools_for_executable(catalog, name=p.name)
    if exe.startswith(_MEMFD):
        # A memfd program has no location; its memfd name and argv[0] are all there is to go on.
        memfd_name = exe[len(_MEMFD):]
        tools = _union(by_name, tools_for_executable(catalog, path=memfd_name),
                       tools_for_executable(catalog, path=argv0), _content_tools(catalog, p))
        return _Seen(tools, {})
    by_exe = _union(tools_for_executable(catalog, path=exe), tools_for_install_path(catalog, exe),
                    _content_tools(catalog, p)) if exe else _content_tools(catalog, p)
    tools = _union(by_exe, by_name)
    if not tools:
        return _Seen((), {})
    by_argv0 = {t.slug for t in tools_for_executable(catalog, path=argv0)} if argv0 else set()
    exe_slugs = {t.slug for t in by_exe}
    location: dict[str, str] = {}
    for tool in tools:
        # The executable locates the tool when its own file name says which tool it is. Otherwise (a
        # name matched only through the kernel's process name, e.g. a Windows tool under Wine) an
        # absolute argv[0] naming the tool does; else the location is not judged.
        if tool.slug in exe_slugs:
            location[tool.slug] = exe
        elif tool.slug in by_argv0 and canonical_path(argv0):
            location[tool.slug] = argv0
    return _Seen(tools, location)


def _content_tools(catalog: Catalog, p: Process) -> tuple[Tool, ...]:
    """Catalogued tools that ``p``'s executable content names (library marks name no tool)."""
    found: list[Tool] = []
    for mark in p.content:
        slug, how = mark_slug(mark)
        if slug and how != "library":
            tool = catalog.get(slug)
            if tool is not None:
                found.append(tool)
    return _union(found)


def _package_tools(catalog: Catalog, pkg: Package, services: _ServiceIndex) -> tuple[Tool, ...]:
    found: list[Tool] = []
    for name in (pkg.name, pkg.source):
        if not name:
            continue
        low = name.lower()
        found.extend(tools_for_executable(catalog, path=low))
        tool = catalog.get(low)
        if tool is not None:
            found.append(tool)
        found.extend(services.lookup(low))
    return _union(found)


class _ServiceIndex:
    """Tools by systemd service name (the catalog's service facts, ``*`` wildcards included)."""

    def __init__(self, catalog: Catalog) -> None:
        exact: dict[str, list[Tool]] = {}
        globs: list[tuple[re.Pattern[str], Tool]] = []
        for tool in catalog.tools:
            for name in tool.services:
                if "*" in name:
                    body = "".join(".*" if c == "*" else re.escape(c) for c in name)
                    globs.append((re.compile(body), tool))
                else:
                    exact.setdefault(name, []).append(tool)
        self.exact = exact
        self.globs = tuple(globs)

    def lookup(self, unit: str) -> tuple[Tool, ...]:
        name = unit.strip().lower().removesuffix(".service")
        if not name or len(name) > 255:
            return ()
        return _union(self.exact.get(name, ()), (t for rx, t in self.globs if rx.fullmatch(name)))


@functools.lru_cache(maxsize=4)
def _service_index(catalog: Catalog) -> _ServiceIndex:
    return _ServiceIndex(catalog)


def _resolve(catalog: Catalog, sanctioned: Iterable[str]) -> frozenset[str]:
    """Sanctioned slugs, aliases resolved; names the catalog does not know can silence nothing."""
    slugs: set[str] = set()
    for name in sanctioned:
        tool = catalog.get(name.strip().lower()) if isinstance(name, str) else None
        if tool is not None:
            slugs.add(tool.slug)
    return frozenset(slugs)


# --- evidence helpers ------------------------------------------------------------------------


def _process_evidence(p: Process | None, by_pid: Mapping[int, Process], *,
                      full: bool = True) -> dict[str, str]:
    """What identifies a process: pid, exe, user, command line; with ``full`` its parent and start too."""
    if p is None:
        return {}
    ev = {"pid": str(p.pid), "exe": p.exe or "", "name": p.name,
          "user": p.user if p.user is not None else str(p.euid),
          "cmdline": _cmdline(p.cmdline, p.cmdline_truncated)}
    sha = next((m[7:] for m in p.content if m.startswith("sha256:")), "")
    if re.fullmatch(r"[0-9a-f]{64}", sha):
        ev["sha256"] = sha  # the executable's exact fingerprint (detection-relevant processes only)
    if full:
        parent = by_pid.get(p.ppid)
        ev.update(ppid=str(p.ppid), parent_exe=(parent.exe or parent.name) if parent is not None else "",
                  started=_iso(p.start_time))
    return ev


def _describe(p: Process | None) -> str:
    if p is None:
        return "Unknown process"
    return f"{p.exe or p.name} (pid {p.pid}, user {p.user if p.user is not None else p.euid})"


def _iso(t: int) -> str:
    try:
        return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        return str(t)  # past year 9999: only a crafted snapshot says so


def _is_local(address: str) -> bool:
    try:
        addr = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback or addr.is_unspecified


def _family(proto: str) -> str:
    return "udp" if proto.startswith("udp") else "tcp"


# --- detections ------------------------------------------------------------------------------


def _memory_only(p: Process, agent_pids: frozenset[int]) -> str:
    """Why ``p`` is a memory-only finding ("memfd", "memory-filesystem", "deleted"), or ""."""
    if p.pid in agent_pids or p.exe is None or p.pid == 2 or p.ppid == 2:
        return ""  # the agent itself, an unreadable executable, kthreadd and kernel threads
    if p.exe.startswith(_MEMFD):
        return "memfd"
    if p.memory_only:
        return "memory-filesystem"
    if p.exe_deleted:
        path = canonical_path(p.exe)
        if path and any(_within(path, tree) for tree in ROOT_OWNED_TREES):
            return ""  # replaced by a package upgrade while running: see the module docstring
        return "deleted"
    return ""


def _processes(inv: Inventory, catalog: Catalog, allowed: frozenset[str], agent_pids: frozenset[int],
               seen: Mapping[int, _Seen], by_pid: Mapping[int, Process], out: _Findings,
               running: dict[str, list[tuple[str, dict[str, str]]]]) -> None:
    for p in inv.processes:
        ident = seen[p.pid]
        reason = _memory_only(p, agent_pids)
        if not reason and not ident.tools:
            continue
        ev = _process_evidence(p, by_pid)
        if reason:
            slug = ident.tools[0].slug if ident.tools else ""
            what = {"memfd": "from memory (memfd)", "memory-filesystem": "from a memory filesystem",
                    "deleted": "from an executable deleted from disk"}[reason]
            named = f" ({_names(ident.tools)})" if ident.tools else ""
            out.add("memory-only", _key("memory-only", slug, p.exe),
                    f"Program runs {what}{named}: {_describe(p)}",
                    {"reason": reason, **ev, "tools": ",".join(t.slug for t in ident.tools)}, tool=slug,
                    pid=p.pid, severity="high" if reason == "deleted" else "critical")
        for tool in ident.tools:
            where = ident.location.get(tool.slug, "")
            # Control characters in a directory name must not step around the location patterns
            # (``.`` in a pattern does not match a newline): judge the path with them made visible.
            if where and is_portable_location(tool, _UNSAFE.sub("?", where)):
                loc = canonical_path(where) or where
                extra = {"location": where} if where != p.exe else {}
                out.add("rat-portable", _key("rat-portable", tool.slug, loc),
                        f"{tool.name} runs from a portable location: {_describe(p)}",
                        {**ev, **extra, "sanctioned": "yes" if tool.slug in allowed else "no"},
                        tool=tool.slug, pid=p.pid)
            if tool.slug not in allowed:
                brief = _process_evidence(p, by_pid, full=False)
                running.setdefault(tool.slug, []).append(("process", brief))


def _installed(inv: Inventory, catalog: Catalog, allowed: frozenset[str], out: _Findings,
               present: dict[str, list[tuple[str, dict[str, str]]]]) -> None:
    services = _service_index(catalog)
    vulnerable_by_tool: dict[str, list[tuple[Package, tuple[str, ...], tuple[str, ...]]]] = {}
    tools_by_slug: dict[str, Tool] = {}
    for pkg in inv.packages:
        if pkg.status not in _PRESENT_PACKAGE_STATES:
            continue
        for tool in _package_tools(catalog, pkg, services):
            tools_by_slug[tool.slug] = tool
            ev = {"package": pkg.name, "version": pkg.version, "arch": pkg.arch, "manager": pkg.manager}
            if tool.slug not in allowed:
                present.setdefault(tool.slug, []).append(("package", ev))
            ranges = vulnerable(tool, pkg.version, "linux")
            if ranges:
                cves = tuple(sorted({r.cve for r in ranges}))
                fixed = tuple(sorted({r.below for r in ranges}))
                vulnerable_by_tool.setdefault(tool.slug, []).append((pkg, cves, fixed))
    for slug, hits in vulnerable_by_tool.items():
        tool = tools_by_slug[slug]
        # One finding per tool, naming the package called after the tool when there is one.
        direct = [h for h in hits if h[0].name in (slug, *tool.aliases, *tool.executables)]
        pkg, _, fixed = (direct or hits)[0]
        all_cves = sorted({c for h in hits for c in h[1]})
        out.add("vulnerable-tool", _key("vulnerable-tool", slug, pkg.name, pkg.arch),
                f"{tool.name} {pkg.version} (package {pkg.name}) has {', '.join(all_cves[:3])}"
                + (f" and {len(all_cves) - 3} more" if len(all_cves) > 3 else ""),
                {"package": pkg.name, "version": pkg.version, "arch": pkg.arch, "cves": ",".join(all_cves),
                 "fixed_in": ",".join(fixed), "packages": str(len(hits)),
                 "sanctioned": "yes" if slug in allowed else "no"}, tool=slug)
    for svc in inv.services:
        if svc.load == "not-found":
            continue
        for tool in services.lookup(svc.unit):
            if tool.slug not in allowed:
                present.setdefault(tool.slug, []).append(
                    ("service", {"service": svc.unit, "service_state": f"{svc.active}/{svc.sub}".strip("/"),
                                 "service_enabled": svc.enabled}))


def _unsanctioned(catalog: Catalog, found: Mapping[str, list[tuple[str, dict[str, str]]]],
                  out: _Findings) -> None:
    for slug, sightings in found.items():
        tool = catalog.get(slug)
        if tool is None:
            continue
        ways = [w for w in ("process", "package", "service") if any(s[0] == w for s in sightings)]
        ev: dict[str, str] = {"found_by": ",".join(ways)}
        pids = [e["pid"] for w, e in sightings if w == "process" and e.get("pid")]
        count = sum(1 for w, _ in sightings if w == "process")
        if count > 1:  # every instance named (first, so the evidence limit never drops them)
            ev["processes"] = str(count)
            shown = pids[:_MAX_PIDS]
            ev["pids"] = ",".join(shown) + (",\u2026" if len(pids) > len(shown) else "")
        for way in ways:
            first = next(e for w, e in sightings if w == way)
            for name, value in first.items():
                ev.setdefault(name, value)
        words = {"process": "running", "package": "installed", "service": "a service"}
        how = ", ".join(words[w] for w in ways)
        if "process" in ways:
            detail = f": {ev['exe'] or ev['name']}"
        elif "package" in ways:
            detail = f": package {ev['package']} {ev['version']}"
        else:
            detail = f": service {ev['service']}"
        out.add("rat-unsanctioned", _key("rat-unsanctioned", slug),
                f"Unsanctioned remote access tool {tool.name} ({how}){detail}", ev, tool=slug)


def _sockets(inv: Inventory, catalog: Catalog, allowed: frozenset[str], seen: Mapping[int, _Seen],
             by_pid: Mapping[int, Process], out: _Findings) -> None:
    listening = {(_family(s.proto), s.local_port) for s in inv.sockets if s.state == "listen"}
    for s in inv.sockets:
        owner = by_pid.get(s.pid) if s.pid is not None else None
        owner_tools = seen[owner.pid].tools if owner is not None else ()
        if any(t.slug in allowed for t in owner_tools):
            continue  # a sanctioned tool's own traffic (N2: "except for legitimate tools")
        owner_id = (owner.exe or owner.name) if owner is not None else "?"
        if s.state == "listen":
            tools = tools_for_port(catalog, s.local_port)
            if not tools or all(t.slug in allowed for t in tools):
                continue
            tool = _pick(tools, owner_tools)
            ev = _socket_evidence(s, owner, by_pid)
            out.add("rat-port", _key("rat-port", tool, "listen", _family(s.proto), s.local_port, owner_id),
                    f"{_describe(owner)} listens on {s.local_port}/{s.proto}, a port of {_names(tools)}",
                    {"direction": "listen", **ev, "tools": ",".join(t.slug for t in tools)},
                    tool=tool, pid=s.pid)
            continue
        by_addr = tools_for_address(catalog, s.remote_addr)
        inbound = (_family(s.proto), s.local_port) in listening
        by_port = () if inbound or _is_local(s.remote_addr) else tools_for_port(catalog, s.remote_port)
        tools = _union(by_addr, by_port)
        if not tools or all(t.slug in allowed for t in tools):
            continue
        tool = _pick(tools, owner_tools)
        ev = _socket_evidence(s, owner, by_pid)
        target = f"address {s.remote_addr}" if by_addr else f"port {s.remote_port}"
        out.add("rat-port", _key("rat-port", tool, "connect", target, owner_id),
                f"{_describe(owner)} connects to {s.remote_addr}:{s.remote_port}, "
                f"the {target} of {_names(tools)}",
                {"direction": "inbound" if inbound else "outbound", **ev, "remote": s.remote_addr,
                 "remote_port": str(s.remote_port), "tools": ",".join(t.slug for t in tools)},
                tool=tool, pid=s.pid)


def _socket_evidence(s: Socket, owner: Process | None, by_pid: Mapping[int, Process]) -> dict[str, str]:
    return {"proto": s.proto, "local": s.local_addr, "port": str(s.local_port),
            **_process_evidence(owner, by_pid, full=False)}


def _pick(tools: Sequence[Tool], owner_tools: Sequence[Tool]) -> str:
    """The slug a network finding names: the owner's own tool, else the only candidate, else none."""
    mine = [t for t in tools if t.slug in {o.slug for o in owner_tools}]
    if mine:
        return mine[0].slug
    return tools[0].slug if len(tools) == 1 else ""


def _behaviour(inv: Inventory, allowed: frozenset[str], seen: Mapping[int, _Seen],
               by_pid: Mapping[int, Process], out: _Findings) -> None:
    """Listeners that speak a remote desktop protocol, programs linking a remote desktop server library."""
    for s in inv.sockets:
        proto = s.protocol.split(" ", 1)[0] if s.protocol else ""
        if s.state != "listen" or proto not in PROTOCOLS:
            continue
        owner = by_pid.get(s.pid) if s.pid is not None else None
        tools = seen[owner.pid].tools if owner is not None else ()
        if any(t.slug in allowed for t in tools):
            continue
        slug = tools[0].slug if tools else ""
        owner_id = (owner.exe or owner.name) if owner is not None else "?"
        name = {"rfb": "VNC (RFB)", "rdp": "RDP"}[proto]
        out.add("rat-behaviour", _key("rat-behaviour", slug, proto, owner_id),
                f"{_describe(owner)} serves {name} on {s.local_addr}:{s.local_port}"
                + (f" ({_names(tools)})" if tools else ""),
                {"by": "protocol", "protocol": s.protocol, **_socket_evidence(s, owner, by_pid),
                 "tools": ",".join(t.slug for t in tools)}, tool=slug, pid=s.pid)
    for p in inv.processes:
        libs = sorted({label for label, how in map(mark_slug, p.content) if how == "library" and label})
        tools = seen[p.pid].tools
        if not libs or any(t.slug in allowed for t in tools):
            continue
        slug = tools[0].slug if tools else ""
        out.add("rat-behaviour", _key("rat-behaviour", slug, "library", p.exe or p.name),
                f"{_describe(p)} links a remote desktop server library ({', '.join(libs)})"
                + (f" ({_names(tools)})" if tools else ""),
                {"by": "library", "libraries": ",".join(libs), "content": ",".join(p.content),
                 **_process_evidence(p, by_pid), "tools": ",".join(t.slug for t in tools)},
                tool=slug, pid=p.pid)


def _truncated(inv: Inventory, out: _Findings) -> None:
    cut = {name: inv.notes[name] for name in ("processes", "sockets")
           if "truncated" in inv.notes.get(name, "")}
    if cut:
        out.add("inventory-truncated", _key("inventory-truncated", "", *sorted(cut)),
                f"Inventory cut at its limits ({', '.join(sorted(cut))}): a flood may hide a remote access "
                "tool; findings it no longer reports stay open",
                {name: note for name, note in cut.items()})


def _users(users: Sequence[User], now: int, dormant_days: int, out: _Findings) -> None:
    for u in users:
        if not u.login_shell or u.password_state == "locked":  # noqa: S105 - a state name, no secret
            continue
        ev = {"user": u.name, "uid": str(u.uid), "shell": u.shell, "password": u.password_state}
        if u.last_login is None:
            subject = f"Local account {u.name} (uid {u.uid}) can log in and never has"
            ev["last_login"] = "never"
        else:
            idle = now - u.last_login
            if idle < dormant_days * DAY_S:
                continue
            subject = f"Local account {u.name} (uid {u.uid}) has not logged in for {idle // DAY_S} days"
            ev.update(last_login=_iso(u.last_login), days_idle=str(idle // DAY_S),
                      last_login_from=u.last_login_from)
        out.add("dormant-local-user", _key("dormant-local-user", "", u.name), subject, ev)


def _os(inv: Inventory, out: _Findings) -> None:
    os_info = inv.os
    if os_info is None or os_info.eol.status != "eol":
        return
    eol = os_info.eol
    product, release = eol.product or os_info.id, eol.release or os_info.version_id
    when = f" on {eol.eol_date}" if eol.eol_date else ""
    out.add("eol-os", _key("eol-os", "", product, release),
            f"{os_info.name or product} {release} reached end of life{when}",
            {"os": os_info.name, "product": product, "release": release, "eol_date": eol.eol_date or "",
             "source": eol.source, "kernel": os_info.kernel_release})


# --- public API ------------------------------------------------------------------------------


def evaluate(inv: Inventory, catalog: Catalog, *, sanctioned: frozenset[str], now: int,
             dormant_days: int = 30, agent_pids: frozenset[int] = frozenset()) -> list[Finding]:
    """Every finding in ``inv``, most severe first (then by kind and key); pure.

    ``sanctioned`` holds the slugs (or aliases) of the tools allowed on this
    device; ``now`` is unix time; ``agent_pids`` are the agent's own
    processes. Raises ``ValueError`` for misuse (a negative time, a dormancy
    period outside 1..:data:`MAX_DORMANT_DAYS`, a ``sanctioned`` that is not
    a frozenset of strings).
    """
    if isinstance(now, bool) or not isinstance(now, int) or now < 0:
        raise ValueError("now must be a non-negative unix time")
    if isinstance(dormant_days, bool) or not isinstance(dormant_days, int) or not (
            1 <= dormant_days <= MAX_DORMANT_DAYS):
        raise ValueError(f"dormant_days must be an int in 1..{MAX_DORMANT_DAYS}")
    if not isinstance(sanctioned, frozenset) or not all(isinstance(s, str) for s in sanctioned):
        raise ValueError("sanctioned must be a frozenset of tool slugs")
    if not isinstance(agent_pids, frozenset):
        raise ValueError("agent_pids must be a frozenset of pids")
    allowed = _resolve(catalog, sanctioned)
    by_pid = {p.pid: p for p in inv.processes}
    seen = {p.pid: _identify(catalog, p) for p in inv.processes}
    out = _Findings()
    present: dict[str, list[tuple[str, dict[str, str]]]] = {}
    _processes(inv, catalog, allowed, agent_pids, seen, by_pid, out, present)
    _installed(inv, catalog, allowed, out, present)
    _unsanctioned(catalog, present, out)
    _sockets(inv, catalog, allowed, seen, by_pid, out)
    _behaviour(inv, allowed, seen, by_pid, out)
    _truncated(inv, out)
    _users(inv.users, now, dormant_days, out)
    _os(inv, out)
    return out.result()


def summarize(findings: Iterable[Finding]) -> dict[str, int]:
    """The number of findings of each kind, every kind of :data:`FINDING_KINDS` present (0 when none)."""
    counts: dict[str, int] = dict.fromkeys(FINDING_KINDS, 0)
    for f in findings:
        counts[f.kind] += 1
    return counts
