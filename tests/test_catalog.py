"""The remote access tool catalog: built-in facts, the LOLRMM importer, matching, storage.

Security tests are named after the requirement they protect (H1 unsanctioned
tools, H3 portable use, N2 remote access ports and domains) and the attack a
hostile or sloppy feed would make; each asserts the refusal and that the
catalog did not change.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rampart.catalog
from rampart.catalog import (
    Catalog,
    CatalogError,
    FeedLimits,
    ImportResult,
    InvalidFact,
    Tool,
    VulnerableRange,
    builtin_catalog,
    decode_catalog,
    encode_catalog,
    is_portable_location,
    load_catalog,
    load_feed,
    make_tool,
    parse_feed,
    save_catalog,
    tools_for_address,
    tools_for_domain,
    tools_for_executable,
    tools_for_port,
    version_key,
    vulnerable,
)
from rampart.catalog import builtin as builtin_module
from rampart.catalog.model import (
    UNINDEXED_PORTS,
    canonical_domain,
    canonical_executable,
    canonical_install_path,
    canonical_path,
    parse_ports,
    path_flavour,
)

REPO = Path(__file__).resolve().parent.parent
FEED = REPO.parent / "shared" / "data" / "lolrmm" / "rmm_tools.json"


def _feed(*entries: Any) -> bytes:
    return json.dumps(list(entries)).encode()


def _import(*entries: Any) -> ImportResult:
    return parse_feed(_feed(*entries))


@pytest.fixture(scope="module")
def real_feed() -> ImportResult:
    if not FEED.is_file():
        pytest.skip(f"LOLRMM feed snapshot {FEED} absent")
    return load_feed(FEED)


# --- public surface ----------------------------------------------------------------------


def test_public_surface_is_locked() -> None:
    """Adding or removing a public name of the catalog is a deliberate change: update this list."""
    assert sorted(rampart.catalog.__all__) == sorted([
        "DEFAULT_FEED_LIMITS", "Catalog", "CatalogError", "FeedLimits", "ImportResult", "InvalidFact",
        "Tool", "VulnerableRange", "builtin_catalog", "canonical_path", "decode_catalog",
        "encode_catalog", "is_portable_location", "load_catalog", "load_feed", "make_tool", "parse_feed",
        "save_catalog", "tools_for_address", "tools_for_domain", "tools_for_executable", "tools_for_port",
        "tools_for_install_path", "version_key", "vulnerable",
    ])
    for name in rampart.catalog.__all__:
        assert hasattr(rampart.catalog, name), name


def test_match_and_model_do_no_io() -> None:
    """Matching and the model are pure: they import nothing that touches files, sockets or processes."""
    import ast
    forbidden = ("os", "io", "pathlib", "socket", "subprocess", "shutil", "tempfile", "rampart.server",
                 "rampart.agent", "rampart.cli")
    for name in ("match.py", "model.py", "builtin.py"):
        tree = ast.parse((REPO / "rampart" / "catalog" / name).read_text())
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for mod in mods:
                bad = any(mod == f or mod.startswith(f + ".") for f in forbidden)
                assert not bad, f"{name} imports {mod}"


# --- built-in catalog --------------------------------------------------------------------


def test_builtin_has_at_least_60_tools_and_10_linux_ones() -> None:
    cat = builtin_catalog()
    assert len(cat) >= 60
    assert sum(t.linux for t in cat) >= 10


def test_every_builtin_tool_has_an_executable_and_a_place_port_or_domain() -> None:
    for tool in builtin_catalog():
        assert tool.executables, tool.slug
        assert tool.ports or tool.domains or tool.install_paths, tool.slug
        assert tool.sources == ("builtin",), tool.slug


def test_every_builtin_linux_tool_has_linux_facts() -> None:
    """A tool marked linux names a POSIX executable (no .exe) or a POSIX install path."""
    for tool in builtin_catalog():
        if not tool.linux:
            continue
        posix_exes = [e for e in tool.executables if not e.endswith(".exe")]
        posix_paths = [p for p in tool.install_paths if path_flavour(p) == "posix"]
        assert posix_exes or posix_paths, tool.slug


@pytest.mark.parametrize("slug", [
    "teamviewer", "anydesk", "screenconnect", "splashtop", "rustdesk", "atera", "ninjaone", "kaseya-vsa",
    "n-able-n-sight", "n-able-take-control", "logmein", "goto-resolve", "chrome-remote-desktop", "realvnc",
    "tightvnc", "tigervnc", "x11vnc", "ultravnc", "remote-utilities", "ammyy-admin", "supremo",
    "meshcentral", "dwservice", "zoho-assist", "beyondtrust-remote-support", "netsupport-manager", "radmin",
    "ngrok", "tailscale", "zerotier", "parsec", "nomachine", "xrdp", "action1", "syncro", "level",
    "tactical-rmm", "pulseway", "datto-rmm", "manageengine-endpoint-central", "simplehelp", "fleetdeck",
    "netbird",
])
def test_builtin_names_the_common_tools(slug: str) -> None:
    assert slug in builtin_catalog()


def test_builtin_linux_facts() -> None:
    cat = builtin_catalog()
    tv, ad, rd = cat.get("teamviewer"), cat.get("anydesk"), cat.get("rustdesk")
    assert tv is not None and ad is not None and rd is not None
    assert "/opt/teamviewer" in tv.install_paths and "teamviewerd" in tv.services
    assert "/usr/bin/anydesk" in ad.install_paths and "anydesk" in ad.services
    assert "/usr/bin/rustdesk" in rd.install_paths
    assert {t.slug for t in tools_for_port(cat, 5938)} == {"teamviewer"}
    assert "anydesk" in {t.slug for t in tools_for_port(cat, 7070)}
    for port in range(21115, 21120):
        assert "rustdesk" in {t.slug for t in tools_for_port(cat, port)}
    assert {"x11vnc", "tigervnc", "realvnc"} <= {t.slug for t in tools_for_port(cat, 5900)}
    assert "nomachine" in {t.slug for t in tools_for_port(cat, 4000)}
    assert "xrdp" in {t.slug for t in tools_for_port(cat, 3389)}


def test_builtin_module_docstring_states_what_the_data_is_and_its_limits() -> None:
    doc = builtin_module.__doc__ or ""
    assert "facts compiled" in doc and "for detection" in doc
    assert "limits" in doc and "not exhaustive" in doc


def test_builtin_round_trips_through_the_store_unchanged() -> None:
    cat = builtin_catalog()
    back = decode_catalog(encode_catalog(cat))
    assert back.tools == cat.tools


# --- canonical forms ----------------------------------------------------------------------


@pytest.mark.parametrize("raw, canonical", [
    ("C:\\Program Files (x86)\\AnyDesk\\", "?:/program files (x86)/anydesk"),
    ("D:\\Tools\\X\\*", "?:/tools/x/*"),
    ("?:/program files/teamviewer", "?:/program files/teamviewer"),
    ("/opt/NinjaRMMAgent/", "/opt/NinjaRMMAgent"),
    ("/Applications/AnyDesk.app", "/applications/anydesk.app"),
    ("//usr//local/bin/tmate", "/usr/local/bin/tmate"),
])
def test_install_path_canonical_form(raw: str, canonical: str) -> None:
    assert canonical_install_path(raw) == canonical


@pytest.mark.parametrize("raw, reason", [
    ("*\\TightVNC\\*", "unanchored-path"),
    ("anydesk.exe", "unanchored-path"),
    ("C:\\*\\kitty.exe", "path-too-broad"),
    ("C:\\Program Files\\*", "path-too-broad"),
    ("/usr/bin", "path-too-broad"),
    ("/tmp", "path-too-broad"),
    ("/home/*", "path-too-broad"),
    ("/opt/../tmp/x", "bad-path"),
    ("/opt/x\\y", "unanchored-path"),
])
def test_install_path_refusals(raw: str, reason: str) -> None:
    with pytest.raises(InvalidFact) as err:
        canonical_install_path(raw)
    assert err.value.reason == reason


@pytest.mark.parametrize("raw, reason", [
    ("svchost.exe", "generic-executable"),
    ("python3", "generic-executable"),
    ("agent.exe", "generic-executable"),
    ("*agent.exe", "executable-too-broad"),
    ("agent*.exe", "executable-too-broad"),
    ("*.exe", "executable-too-broad"),
    ("", "bad-executable"),
    ("a|b.exe", "bad-executable"),
])
def test_executable_refusals(raw: str, reason: str) -> None:
    with pytest.raises(InvalidFact) as err:
        canonical_executable(raw)
    assert err.value.reason == reason


def test_executable_canonical_form() -> None:
    assert canonical_executable("C:\\Program Files\\AnyDesk\\AnyDesk.exe") == "anydesk.exe"
    assert canonical_executable("  TeamViewer_Service.EXE ") == "teamviewer_service.exe"
    assert canonical_executable("tigervnc**.exe") == "tigervnc*.exe"


@pytest.mark.parametrize("raw, canonical", [
    ("TeamViewer.com.", "teamviewer.com"),
    ("*.AnyDesk.com", "*.anydesk.com"),
    ("plus*.site24x7.com", "plus*.site24x7.com"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("gorelo-rmm.azurewebsites.net", "gorelo-rmm.azurewebsites.net"),
])
def test_domain_canonical_form(raw: str, canonical: str) -> None:
    assert canonical_domain(raw) == canonical


@pytest.mark.parametrize("raw, reason", [
    ("*.com", "domain-too-broad"),
    ("*", "domain-too-broad"),
    ("*.co.uk", "shared-suffix"),
    ("*.amazonaws.com", "shared-suffix"),
    ("*.*.blob.core.windows.net", "shared-suffix"),
    ("github.com", "shared-suffix"),
    ("exa mple.com", "bad-domain"),
    ("-bad.example.com", "bad-domain"),
    ("host.example.com:443", "bad-domain"),
])
def test_domain_refusals(raw: str, reason: str) -> None:
    with pytest.raises(InvalidFact) as err:
        canonical_domain(raw)
    assert err.value.reason == reason


@pytest.mark.parametrize("value, ports", [
    (5938, (5938,)),
    ("5938", (5938,)),
    ("5938/tcp", (5938,)),
    ("UDP 3478", (3478,)),
    ("21115-21119", (21115, 21116, 21117, 21118, 21119)),
    ("80, 443", (80, 443)),
])
def test_parse_ports(value: object, ports: tuple[int, ...]) -> None:
    assert parse_ports(value) == ports


@pytest.mark.parametrize("value, reason", [
    (0, "bad-port"), (65536, "bad-port"), (True, "wrong-type"), ("1000-65535", "port-range-too-wide"),
    ("http", "bad-port"), (5.0, "wrong-type"), (None, "wrong-type"), ("", "bad-port"),
])
def test_parse_ports_refusals(value: object, reason: str) -> None:
    with pytest.raises(InvalidFact) as err:
        parse_ports(value)
    assert err.value.reason == reason


@pytest.mark.parametrize("text, key", [
    ("23.9.7.8804", (23, 9, 7, 8804)),
    ("v1.2.0", (1, 2)),
    ("1:0.9.17-1ubuntu1", (0, 9, 17)),
    ("15.58.4 (build 1)", (15, 58, 4)),
    ("beta", None),
    ("", None),
])
def test_version_key(text: str, key: tuple[int, ...] | None) -> None:
    assert version_key(text) == key


def test_canonical_path_of_process_executables() -> None:
    assert canonical_path("C:\\Users\\Bob\\Downloads\\AnyDesk.exe") == "c:/users/bob/downloads/anydesk.exe"
    assert canonical_path("\\\\?\\C:\\Program Files\\X\\x.exe") == "c:/program files/x/x.exe"
    assert canonical_path("/opt/teamviewer/../../tmp/TeamViewer (deleted)") == "/tmp/TeamViewer"
    assert canonical_path("/Applications/AnyDesk.app/Contents/MacOS/AnyDesk") == (
        "/applications/anydesk.app/contents/macos/anydesk")
    assert canonical_path("anydesk") == ""
    assert canonical_path("/x\x00y") == ""


def test_tool_refuses_non_canonical_facts() -> None:
    ok = make_tool("Example", category="rmm", executables=["example.exe"], platforms=["linux"])
    assert ok.linux
    for bad in (
        {"executables": ("Example.exe",)},
        {"executables": ("b.exe", "a.exe")},
        {"install_paths": ("C:\\Program Files\\Example",)},
        {"domains": ("*.com",)},
        {"ports": (0,)},
        {"addresses": ("10.0.0.1",)},
        {"platforms": ("linux",), "linux": False},
        {"category": "malware"},
        {"slug": "Not A Slug"},
        {"advisories": ("not-a-cve",)},
    ):
        fields = {"name": "Example", "slug": "example", "category": "rmm", **bad}
        with pytest.raises(ValueError):
            Tool(**fields)


def test_vulnerable_range_refuses_inverted_and_malformed_bounds() -> None:
    with pytest.raises(ValueError):
        VulnerableRange(cve="CVE-2024-1709", below="1.0", introduced="2.0")
    with pytest.raises(ValueError):
        VulnerableRange(cve="CVE-2024-1709", below="latest")
    with pytest.raises(ValueError):
        VulnerableRange(cve="cve 2024", below="1.0")


def test_catalog_refuses_a_slug_or_alias_naming_two_tools() -> None:
    a = make_tool("Alpha", category="rmm", executables=["alpha.exe"], aliases=["shared"])
    b = make_tool("Beta", category="rmm", executables=["beta.exe"], aliases=["shared"])
    with pytest.raises(ValueError, match="shared"):
        Catalog([a, b])


# --- matching ----------------------------------------------------------------------------


@pytest.mark.parametrize("path, portable", [
    ("/usr/bin/anydesk", False),
    ("/usr/libexec/anydesk/helper", False),
    ("/tmp/anydesk", True),
    ("/var/tmp/.x/anydesk", True),
    ("/dev/shm/anydesk", True),
    ("/home/alice/Downloads/anydesk", True),
    ("/home/alice/anydesk", True),
    ("/root/anydesk", True),
    ("/opt/unknown/anydesk", True),
    ("/usr/bin/../../tmp/anydesk", True),
    ("C:\\Program Files (x86)\\AnyDesk\\AnyDesk.exe", False),
    ("D:\\Program Files\\AnyDesk\\AnyDesk.exe", False),
    ("C:\\Users\\bob\\Downloads\\AnyDesk.exe", True),
    ("C:\\Users\\bob\\AppData\\Local\\Temp\\AnyDesk.exe", True),
    ("C:\\Windows\\Temp\\AnyDesk.exe", True),
    ("/Applications/AnyDesk.app/Contents/MacOS/AnyDesk", False),
    ("/Users/bob/Downloads/AnyDesk.app/Contents/MacOS/AnyDesk", True),
    ("anydesk", False),
    ("", False),
])
def test_h3_portable_anydesk(path: str, portable: bool) -> None:
    anydesk = builtin_catalog().get("anydesk")
    assert anydesk is not None
    assert is_portable_location(anydesk, path) is portable


def test_h3_install_path_of_one_os_does_not_judge_another() -> None:
    """A tool known only by Windows install paths is judged on Linux by temporary and home locations."""
    tool = make_tool("Winonly", category="remote_access", executables=["winonly", "winonly.exe"],
                     install_paths=["?:/program files/winonly"])
    assert not is_portable_location(tool, "/usr/lib/winonly/winonly")
    assert is_portable_location(tool, "/tmp/winonly")
    assert is_portable_location(tool, "C:\\Tools\\winonly.exe")


def test_h3_per_user_install_path_is_respected_but_temp_never_is() -> None:
    parsec = builtin_catalog().get("parsec")
    supremo_like = make_tool("Tempish", category="remote_access", executables=["tempish.exe"],
                             install_paths=["?:/users/*/appdata/local/temp/tempish"])
    assert parsec is not None
    assert not is_portable_location(parsec, "C:\\Users\\bob\\AppData\\Roaming\\Parsec\\parsecd.exe")
    assert is_portable_location(parsec, "C:\\Users\\bob\\AppData\\Roaming\\Other\\parsecd.exe")
    assert is_portable_location(supremo_like, "C:\\Users\\bob\\AppData\\Local\\Temp\\Tempish\\tempish.exe")


def test_h1_tools_for_executable() -> None:
    cat = builtin_catalog()
    assert [t.slug for t in tools_for_executable(cat, "/opt/teamviewer/tv_bin/teamviewerd")] == ["teamviewer"]
    assert [t.slug for t in tools_for_executable(cat, "C:\\X\\AnyDesk.exe")] == ["anydesk"]
    assert [t.slug for t in tools_for_executable(cat, name="AnyDesk.exe")] == ["anydesk"]
    assert {"realvnc", "tigervnc"} <= {t.slug for t in tools_for_executable(cat, "/usr/bin/vncviewer")}
    assert [t.slug for t in tools_for_executable(cat, "C:\\x\\AgentPackageTaskScheduler.exe")] == ["atera"]
    assert tools_for_executable(cat, "/usr/bin/bash", "bash") == ()
    assert tools_for_executable(cat) == ()


def test_h1_truncated_linux_process_name_matches_the_long_name() -> None:
    cat = builtin_catalog()
    comm = "gnome-remote-desktop-daemon"[:15]
    assert [t.slug for t in tools_for_executable(cat, name=comm)] == ["gnome-remote-desktop"]
    # a path is never truncated: its basename must match in full
    assert tools_for_executable(cat, path="/usr/bin/" + comm) == ()


@pytest.mark.parametrize("host, slugs", [
    ("teamviewer.com", {"teamviewer"}),
    ("router12.teamviewer.com", {"teamviewer"}),
    ("ROUTER12.TeamViewer.com.", {"teamviewer"}),
    ("evil-teamviewer.com", set()),
    ("teamviewer.com.evil.example", set()),
    ("xteamviewer.com", set()),
    ("screenconnect.com", {"screenconnect"}),
    ("instance-abc-relay.screenconnect.com", {"screenconnect"}),
    ("myscreenconnect.com", set()),
    ("node.ts.net", {"tailscale"}),
    ("ts.net", set()),
    ("", set()),
    ("not a host", set()),
])
def test_n2_tools_for_domain_on_label_boundaries(host: str, slugs: set[str]) -> None:
    assert {t.slug for t in tools_for_domain(builtin_catalog(), host)} == slugs


def test_n2_glob_domain_rule_stays_within_its_labels() -> None:
    tool = make_tool("Globby", category="rmm", executables=["globby.exe"],
                     domains=["relay-*.net.globby.com", "rescue.*.globby-gw.com"])
    cat = Catalog([tool])
    assert tools_for_domain(cat, "relay-0a1b2c3d.net.globby.com") == (tool,)
    assert tools_for_domain(cat, "rescue.eu.globby-gw.com") == (tool,)
    assert tools_for_domain(cat, "relay-x.evil.net.globby.com") == ()
    assert tools_for_domain(cat, "rescue.a.b.globby-gw.com") == ()
    assert tools_for_domain(cat, "relay-x.net.globby.com.evil.com") == ()


def test_n2_port_lookup_ignores_ports_every_server_uses() -> None:
    cat = builtin_catalog()
    assert [t.slug for t in tools_for_port(cat, 5938)] == ["teamviewer"]
    for port in (22, 80, 443, 7000):
        assert port in UNINDEXED_PORTS
        assert tools_for_port(cat, port) == ()
    frp = cat.get("frp")
    assert frp is not None and 7000 in frp.ports  # kept as a fact
    assert tools_for_port(cat, True) == ()


def test_n2_tools_for_address() -> None:
    tool = make_tool("Addr", category="rmm", executables=["addr.exe"], addresses=["8.8.4.4", "2001:4860::1"])
    cat = Catalog([tool])
    assert tools_for_address(cat, "8.8.4.4") == (tool,)
    assert tools_for_address(cat, "[2001:4860:0::1]") == (tool,)
    assert tools_for_address(cat, "8.8.8.8") == ()
    assert tools_for_address(cat, "not-an-ip") == ()


def test_s1_vulnerable_version_compare() -> None:
    cat = builtin_catalog()
    sc, salt, tv = cat.get("screenconnect"), cat.get("salt"), cat.get("teamviewer")
    assert sc is not None and salt is not None and tv is not None
    assert {r.cve for r in vulnerable(sc, "23.9.7.8804")} == {"CVE-2024-1708", "CVE-2024-1709"}
    assert vulnerable(sc, "23.9.8") == ()
    assert vulnerable(sc, "23.9.10") == ()
    assert vulnerable(sc, "24.1") == ()
    assert vulnerable(sc, "unknown") == ()
    # a range with a lower bound
    assert {r.below for r in vulnerable(salt, "3000.1")} == {"3000.2"}
    assert {r.below for r in vulnerable(salt, "2019.2.3")} == {"2019.2.4"}
    assert vulnerable(salt, "2019.2.4") == ()
    assert vulnerable(salt, "3001") == ()
    # a platform-specific range
    assert vulnerable(tv, "15.8.2", platform="linux") == ()
    assert {r.cve for r in vulnerable(tv, "15.8.2", platform="windows")} >= {"CVE-2020-13699"}


# --- the LOLRMM feed ----------------------------------------------------------------------


def test_real_feed_imports_at_least_250_tools(real_feed: ImportResult) -> None:
    assert real_feed.entries >= 300
    assert len(real_feed.catalog) >= 250
    assert sum(t.linux for t in real_feed.catalog) >= 20
    print(f"LOLRMM: {len(real_feed.catalog)} tools, {real_feed.warnings} warnings "
          f"{dict(real_feed.warning_reasons)}, dropped {dict(real_feed.dropped)}")


def test_real_feed_fields_are_normalised(real_feed: ImportResult) -> None:
    for tool in real_feed.catalog:
        assert tool.sources == ("lolrmm",)
        for path in tool.install_paths:
            assert "\\" not in path and "%" not in path and "<" not in path, path
            assert canonical_install_path(path) == path
            if path_flavour(path) == "windows":
                assert path.startswith("?:/") and path == path.lower(), path
        for exe in tool.executables:
            assert exe == exe.lower() and "/" not in exe and "\\" not in exe, exe
        for domain in tool.domains:
            assert ":" not in domain and "/" not in domain and " " not in domain, domain
            assert domain != "user_managed" and canonical_domain(domain) == domain
            assert not re.search(r"[\[\]{}()\\^$+|]", domain), domain
        for port in tool.ports:
            assert type(port) is int and 1 <= port <= 65535


def test_real_feed_specific_normalisations(real_feed: ImportResult) -> None:
    cat = real_feed.catalog
    anydesk, supremo, tmate = cat.get("anydesk"), cat.get("supremo"), cat.get("tmate")
    assert anydesk is not None and supremo is not None and tmate is not None
    # regex with host:port -> label glob, the port kept as a fact
    assert "relay-*.net.anydesk.com" in anydesk.domains and 443 in anydesk.ports
    assert tools_for_domain(cat, "relay-0a1b2c3d.net.anydesk.com") == (anydesk,)
    # %USERPROFILE%\\AppData\\... with doubled separators and a trailing one
    assert "?:/users/*/appdata/local/temp/supremoremotedesktop" in supremo.install_paths
    # a binary in a shared bin directory is kept as the file itself
    assert "/usr/bin/tmate" in tmate.install_paths and "tmate" in tmate.executables and tmate.linux
    # "1000-65535" is counted, not expanded into 64536 ports
    assert real_feed.warning_reasons.get("port-range-too-wide") == 1
    assert real_feed.dropped.get("placeholder", 0) >= 10  # user_managed and <operator-...> entries


def test_real_feed_extends_the_builtin_catalog(real_feed: ImportResult) -> None:
    builtin = builtin_catalog()
    merged = builtin.merged(real_feed.catalog)
    new = [t for t in real_feed.catalog if builtin.get(t.slug) is None]
    assert len(merged) == len(builtin) + len(new)  # feed entries of a built-in tool (or alias) join it
    for tool in builtin:
        extended = merged.get(tool.slug)
        assert extended is not None
        for field in ("executables", "install_paths", "services", "ports", "domains"):
            assert set(getattr(tool, field)) <= set(getattr(extended, field)), (tool.slug, field)
    kaseya = merged.get("kaseya-vsa")
    assert kaseya is not None and "builtin" in kaseya.sources and "lolrmm" in kaseya.sources
    assert merged.get("kaseya-vsa") is kaseya and "kaseya-vsa" not in kaseya.aliases
    assert decode_catalog(encode_catalog(merged)).tools == merged.tools


def test_feed_entries_merge_by_slug_and_empty_entries_are_dropped() -> None:
    result = _import(
        {"Name": "Foo Remote", "Details": {"PEMetadata": {"Filename": "FooRemote.exe"}}},
        {"Name": "foo-remote",
         "Artifacts": {"Network": [{"Domains": ["*.fooremote.example"], "Ports": [4567]}]}},
        {"Name": "Nothing Useful", "Details": {"InstallationPaths": ["*\\Nothing\\*"]}},
    )
    foo = result.catalog.get("foo-remote")
    assert foo is not None and len(result.catalog) == 1
    assert foo.executables == ("fooremote.exe",) and foo.domains == ("*.fooremote.example",)
    assert foo.ports == (4567,)
    assert result.dropped["tool-without-facts"] == 1


def test_feed_paths_are_normalised() -> None:
    result = _import({"Name": "Pathy", "Details": {"InstallationPaths": [
        "%ProgramFiles%\\Pathy\\pathy.exe",
        "%ProgramFiles(x86)%\\Pathy Old\\*",
        "C:\\Program Files (x86)\\Pathy Client (<string ID>)\\*",
        "*Users\\*\\AppData\\Roaming\\Pathy\\*",
        "*\\*\\PathyHelper.exe",
        "pathy-tray.exe",
        "~/Library/Application Support/Pathy/*",
        "/usr/local/bin/pathyd",
        "/opt/pathy/",
        "/etc/systemd/system/pathy-agent.service",
        "%WEIRD%\\Pathy\\*",
        "C:\\Program Files\\Pathy\\conf.json",
    ]}})
    tool = result.catalog.get("pathy")
    assert tool is not None
    assert set(tool.install_paths) == {
        "?:/program files/pathy", "?:/program files (x86)/pathy old",
        "?:/program files (x86)/pathy client (*)", "?:/users/*/appdata/roaming/pathy",
        "/users/*/library/application support/pathy", "/usr/local/bin/pathyd", "/opt/pathy",
    }
    assert set(tool.executables) == {"pathy.exe", "pathyhelper.exe", "pathy-tray.exe", "pathyd"}
    assert tool.services == ("pathy-agent",)
    assert result.dropped["unknown-variable"] == 1


def test_feed_network_values_are_normalised() -> None:
    result = _import({"Name": "Netty", "Artifacts": {"Network": [{"Domains": [
        "https://Portal.Netty.example/login?x=1", "relay-[a-f0-9]{8}.netty.example:8443",
        "^agent\\.netty\\.example$",
        ".netty-cdn.example", "user_managed", "<operator-controlled VPS hostname or IP>", "203.0.113.7",
        "8.8.8.8:9000", "[2606:4700::1111]:443", "10.0.0.0/8", "*.com", "*.amazonaws.com", 42,
    ], "Ports": [4321, "5000-5002", "tcp/6000", "x", None, True]}]}})
    tool = result.catalog.get("netty")
    assert tool is not None
    assert set(tool.domains) == {"portal.netty.example", "relay-*.netty.example", "agent.netty.example",
                                 "*.netty-cdn.example"}
    assert set(tool.addresses) == {"8.8.8.8", "2606:4700::1111"}
    assert set(tool.ports) == {443, 4321, 5000, 5001, 5002, 6000, 8443, 9000}
    assert result.dropped["placeholder"] == 2
    assert result.dropped["non-global-address"] == 1  # 203.0.113.7 is documentation space
    assert result.dropped["network-range"] == 1
    assert result.dropped["domain-too-broad"] == 1 and result.dropped["shared-suffix"] == 1
    assert result.warning_reasons["wrong-type"] == 3  # 42, None, True
    assert result.warning_reasons["bad-port"] == 1


def test_feed_services_from_event_logs_and_registry() -> None:
    result = _import({"Name": "Svc", "Details": {"PEMetadata": [{"Filename": "svc-agent.exe"}]},
                      "Artifacts": {
        "EventLog": [{"ServiceName": "Svc Agent Service"}, {"ServiceName": 7}],
        "Registry": [{"Path": "HKLM\\SYSTEM\\CurrentControlSet\\Services\\SvcAgent\\Parameters"},
                     {"Path": "HKLM\\SOFTWARE\\Svc"}],
    }})
    tool = result.catalog.get("svc")
    assert tool is not None and set(tool.services) == {"svc agent service", "svcagent"}
    assert result.warning_reasons["wrong-type"] == 1


# --- hostile feeds --------------------------------------------------------------------------


@pytest.mark.parametrize("doc, message", [
    (b"", "not valid JSON"),
    (b'[{"Name": "AnyDesk", "Details": {', "not valid JSON"),
    (b'{"Name": "AnyDesk"}', "JSON list"),
    (b'"tools"', "JSON list"),
    (b"null", "JSON list"),
    (b"42", "JSON list"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    (b"\xff\xfe[\x00]\x00", "not valid JSON"),
    (b'[{"Name": "a"}] trailing', "not valid JSON"),
])
def test_unusable_feed_is_refused_as_a_whole(doc: bytes, message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        parse_feed(doc)


def test_feed_larger_than_the_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    with path.open("wb") as fh:
        fh.write(b"[" + b'{"Name": "x"},' * 200_000 + b'{"Name": "x"}]')
    limits = FeedLimits(max_bytes=1 << 20)
    with pytest.raises(CatalogError, match="larger than"):
        load_feed(path, limits=limits)
    with pytest.raises(CatalogError, match="larger than"):
        parse_feed(path.read_bytes(), limits=limits)


def test_feed_with_too_many_tools_is_refused() -> None:
    with pytest.raises(CatalogError, match="more than 10 tools"):
        parse_feed(_feed(*({"Name": f"t{i}"} for i in range(11))), limits=FeedLimits(max_tools=10))


def test_feed_file_that_is_absent_a_directory_or_a_fifo_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read"):
        load_feed(tmp_path / "absent.json")
    with pytest.raises(CatalogError, match="not a regular file"):
        load_feed(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(CatalogError, match="not a regular file"):
        load_feed(fifo)  # refused without blocking on open()


def test_wrong_types_inside_entries_are_counted_never_raised() -> None:
    result = _import(
        "a string", 7, None, [], {"Name": 5}, {"Name": ""}, {"Name": "!!!"},
        {"Name": "Typed", "Category": ["RMM"], "Details": "x", "Artifacts": {"Network": {"Domains": 1}}},
        {"Name": "Typed2", "Details": {"SupportedOS": "Linux", "PEMetadata": [1, {"Filename": ["x"]}],
                                       "InstallationPaths": [None, 3, {"a": 1}, "/opt/typed2"]},
         "Artifacts": {"Disk": [{"File": 1}], "Network": [{"Domains": "typed2.example", "Ports": "4444"}],
                       "EventLog": "x", "Registry": [1]}},
    )
    assert [t.slug for t in result.catalog] == ["typed2"]
    assert result.warning_reasons["entry-not-an-object"] == 4
    assert result.warning_reasons["missing-name"] == 2
    assert result.warning_reasons["bad-name"] == 1
    assert result.warnings >= 15


def test_oversized_lists_and_strings_are_cut_and_counted() -> None:
    limits = FeedLimits(max_items=5, max_string=64)
    doc = _feed({"Name": "Big", "Details": {
        "PEMetadata": [{"Filename": f"big{i}.exe"} for i in range(20)],
        "InstallationPaths": ["/opt/" + "b" * 100, "/opt/big"],
    }})
    result = parse_feed(doc, limits=limits)
    big = result.catalog.get("big")
    assert big is not None and len(big.executables) == 5 and big.install_paths == ("/opt/big",)
    assert result.warning_reasons["too-many-items"] == 1
    assert result.warning_reasons["string-too-long"] == 1


def test_one_bad_number_skips_one_entry_not_the_feed() -> None:
    doc = (b'[{"Name": "Ok", "Details": {"PEMetadata": {"Filename": "ok-tool.exe"}}},'
           b' {"Name": "Bad", "x": 1e999}]')
    result = parse_feed(doc)
    assert [t.slug for t in result.catalog] == ["ok"]
    assert result.warning_reasons["malformed-entry"] == 1


def test_h1_feed_cannot_tie_system_programs_to_a_tool() -> None:
    """A feed listing svchost.exe, python3 or ``*agent.exe`` would flag every machine: refused."""
    result = _import({"Name": "Greedy", "Details": {
        "PEMetadata": [{"Filename": "svchost.exe"}, {"Filename": "python3"}, {"Filename": "*agent.exe"}],
        "InstallationPaths": ["C:\\Windows\\System32\\cmd.exe", "*\\*.exe"],
    }, "Artifacts": {"Network": [{"Domains": ["greedy.example"]}]}})
    greedy = result.catalog.get("greedy")
    assert greedy is not None and greedy.executables == () and greedy.install_paths == ()
    assert tools_for_executable(result.catalog, "C:\\Windows\\System32\\svchost.exe") == ()


def test_h3_feed_cannot_make_temporary_directories_install_locations() -> None:
    """A feed declaring /tmp or a Downloads folder as AnyDesk's home must not hide portable use."""
    feed = _import({"Name": "AnyDesk", "Details": {"InstallationPaths": [
        "/tmp/*", "/tmp/anydesk", "/dev/shm/", "%USERPROFILE%\\Downloads\\*",
        "C:\\Users\\*\\Downloads\\AnyDesk.exe",
        "%TEMP%\\*", "/home/*",
    ]}, "Artifacts": {"Network": [{"Domains": ["anydesk.com"]}]}})
    merged = builtin_catalog().merged(feed.catalog)
    anydesk = merged.get("anydesk")
    assert anydesk is not None
    for path in ("/tmp/anydesk", "/dev/shm/anydesk", "C:\\Users\\bob\\Downloads\\AnyDesk.exe",
                 "C:\\Users\\bob\\AppData\\Local\\Temp\\AnyDesk.exe", "/home/bob/anydesk"):
        assert is_portable_location(anydesk, path), path


def test_n2_feed_cannot_claim_shared_platforms_or_private_addresses() -> None:
    """``*.amazonaws.com`` or 10.0.0.1 would flag ordinary traffic as remote access: refused and counted."""
    result = _import({"Name": "Cloudy", "Details": {"PEMetadata": {"Filename": "cloudy.exe"}}, "Artifacts": {
        "Network": [{"Domains": ["*.amazonaws.com", "*.s3.amazonaws.com", "*.co.uk", "google.com",
                                 "10.0.0.1", "127.0.0.1:80", "192.168.1.10"]}]}})
    cloudy = result.catalog.get("cloudy")
    assert cloudy is not None and cloudy.domains == () and cloudy.addresses == ()
    assert result.dropped["shared-suffix"] == 4 and result.dropped["non-global-address"] == 3
    assert tools_for_domain(result.catalog, "bucket.s3.amazonaws.com") == ()


def test_feed_cannot_remove_builtin_facts() -> None:
    """Merging only adds: an entry with the same slug and no facts leaves the built-in entry whole."""
    feed = _import({"Name": "TeamViewer", "Details": {"PEMetadata": {"Filename": "TeamViewer_Extra.exe"}}})
    before = builtin_catalog().get("teamviewer")
    after = builtin_catalog().merged(feed.catalog).get("teamviewer")
    assert before is not None and after is not None
    assert set(before.executables) < set(after.executables)
    assert before.install_paths == after.install_paths and before.ports == after.ports
    assert before.vulnerable_versions == after.vulnerable_versions and after.category == before.category


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25,
)
_FEED_TEXT = st.sampled_from([
    "C:\\Program Files\\X\\x.exe", "%APPDATA%\\x\\*", "*\\y.exe", "/opt/x", "/usr/bin/x", "~/x", "x:1",
    "*.x.example", "relay-[a-f]{3}.x.example:99", "user_managed", "10.0.0.1", "8.8.8.8", "21115-21119",
    "Linux", "RMM", "", " ", "\x00", "ü.example", "..", "/", "\\\\server\\share", "%%", "<x>", "*",
]) | st.text(max_size=40)
_VALUE = _JSON | _FEED_TEXT | st.lists(_FEED_TEXT | _JSON, max_size=6)
_ENTRY = st.fixed_dictionaries({}, optional={
    "Name": st.text(max_size=30) | _VALUE,
    "Category": _VALUE,
    "Details": st.fixed_dictionaries({}, optional={
        k: _VALUE | st.lists(st.fixed_dictionaries({}, optional={"Filename": _VALUE}), max_size=3)
        for k in ("PEMetadata", "SupportedOS", "InstallationPaths", "Vulnerabilities")}) | _VALUE,
    "Artifacts": st.fixed_dictionaries({}, optional={
        "Disk": st.lists(st.fixed_dictionaries({}, optional={"File": _VALUE}), max_size=3) | _VALUE,
        "EventLog": st.lists(st.fixed_dictionaries({}, optional={"ServiceName": _VALUE}), max_size=3),
        "Registry": st.lists(st.fixed_dictionaries({}, optional={"Path": _VALUE}), max_size=3),
        "Network": st.lists(st.fixed_dictionaries({}, optional={"Domains": _VALUE, "Ports": _VALUE}),
                            max_size=3) | _VALUE,
    }) | _VALUE,
})


def _check_result(result: ImportResult) -> None:
    assert isinstance(result.catalog, Catalog)
    assert result.warnings >= 0 and all(n > 0 for n in result.dropped.values())
    # everything that came out is canonical: it survives a strict store round trip
    assert decode_catalog(encode_catalog(result.catalog)).tools == result.catalog.tools
    merged = builtin_catalog().merged(result.catalog)
    assert len(merged) >= len(builtin_catalog())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ENTRY | _JSON, max_size=6))
def test_fuzz_feed_shaped_input_never_raises_anything_but_catalog_error(entries: list[Any]) -> None:
    try:
        doc = json.dumps(entries).encode()
    except (ValueError, OverflowError):
        return
    _check_result(parse_feed(doc))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400) | st.text(max_size=200).map(str.encode))
def test_fuzz_arbitrary_bytes_give_a_result_or_catalog_error(doc: bytes) -> None:
    try:
        result = parse_feed(doc)
    except CatalogError:
        return
    _check_result(result)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_fuzz_matching_never_raises(text: str) -> None:
    cat = builtin_catalog()
    anydesk = cat.get("anydesk")
    assert anydesk is not None
    tools_for_executable(cat, text, text)
    tools_for_domain(cat, text)
    tools_for_address(cat, text)
    is_portable_location(anydesk, text)
    vulnerable(anydesk, text)


# --- storage --------------------------------------------------------------------------------


def test_store_round_trip_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    save_catalog(path, builtin_catalog())
    assert load_catalog(path).tools == builtin_catalog().tools
    small = Catalog([make_tool("Only", category="rmm", executables=["only.exe"])])
    save_catalog(path, small)
    assert [t.slug for t in load_catalog(path)] == ["only"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.json"]


def _stored(tools: list[dict[str, Any]]) -> bytes:
    return json.dumps({"format": "rampart.catalog.v1", "tools": tools}).encode()


_GOOD = {"name": "Stored", "slug": "stored", "category": "rmm", "executables": ["stored.exe"]}


@pytest.mark.parametrize("doc", [
    _stored([{**_GOOD, "install_paths": ["C:\\Program Files\\Stored"]}]),  # not canonical
    _stored([{**_GOOD, "install_paths": ["/tmp"]}]),  # an over-broad location slipped in by hand
    _stored([{**_GOOD, "domains": ["*.com"]}]),
    _stored([{**_GOOD, "executables": ["svchost.exe"]}]),
    _stored([{**_GOOD, "unknown": 1}]),
    _stored([_GOOD, _GOOD]),  # the same slug twice
    _stored([{**_GOOD, "platforms": ["linux"]}]),  # linux flag inconsistent
    json.dumps({"format": "other", "tools": []}).encode(),
    json.dumps([_GOOD]).encode(),
    b"{",
])
def test_tampered_stored_catalog_is_refused_as_a_whole(doc: bytes) -> None:
    with pytest.raises(CatalogError):
        decode_catalog(doc)


def test_stored_catalog_file_problems_are_catalog_errors(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "absent.json")
    with pytest.raises(CatalogError, match="not a regular file"):
        load_catalog(tmp_path)
    assert isinstance(msgspec.json.decode(encode_catalog(Catalog())), dict)
