"""systemd services: loaded units, unit files that are not loaded, their main pid and unit file.

Three read-only ``systemctl`` calls: ``list-units`` (state of loaded units),
``list-unit-files`` (enablement, and units not loaded at all) and one
``show`` for main pid and unit file path. When systemd is not the running
init (no /run/systemd/system), the section is empty with a note.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from rampart.wire.inventory import DEFAULT_LIMITS, InventoryLimits, Service, canonical, service_key

from ._util import clip, run

_UNIT = re.compile(r"^[A-Za-z0-9:_.\\@\-]{1,255}\.service$")
_SHOW_CHUNK = 500


def systemd_running(run_dir: str = "/run") -> bool:
    """sd_booted(): systemd is the running init."""
    return os.path.isdir(f"{run_dir}/systemd/system")


def parse_list_units(text: str) -> dict[str, tuple[str, str, str, str]]:
    """unit -> (load, active, sub, description) from ``list-units --all --no-legend --plain``."""
    out: dict[str, tuple[str, str, str, str]] = {}
    for line in text.splitlines():
        parts = line.strip().lstrip("●*").split(None, 4)
        if len(parts) >= 4 and _UNIT.match(parts[0]):
            description = parts[4][:4096] if len(parts) > 4 else ""
            out[parts[0]] = (clip(parts[1]), clip(parts[2]), clip(parts[3]), description)
    return out


def parse_unit_files(text: str) -> dict[str, str]:
    """unit -> unit file state from ``list-unit-files --no-legend``; templates (``foo@.service``) skipped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and _UNIT.match(parts[0]) and not parts[0].endswith("@.service"):
            out[parts[0]] = clip(parts[1])
    return out


def parse_show(text: str) -> dict[str, tuple[int | None, str]]:
    """unit -> (main pid or None, fragment path) from ``systemctl show -p Id,MainPID,FragmentPath``."""
    out: dict[str, tuple[int | None, str]] = {}
    block: dict[str, str] = {}
    for line in [*text.splitlines(), ""]:
        if line:
            key, _, value = line.partition("=")
            block[key] = value
            continue
        unit = block.get("Id", "")
        if _UNIT.match(unit):
            pid_text = block.get("MainPID", "")
            pid = int(pid_text) if pid_text.isdigit() and 0 < int(pid_text) < 1 << 31 else None
            out[unit] = (pid, block.get("FragmentPath", "")[:4096])
        block = {}
    return out


def merge_services(units: dict[str, tuple[str, str, str, str]], files: dict[str, str],
                   show: dict[str, tuple[int | None, str]]) -> list[Service]:
    """Loaded units plus unit files that are not loaded (shown as inactive)."""
    out = []
    for unit in sorted(set(units) | set(files)):
        load, active, sub, description = units.get(unit, ("not-loaded", "inactive", "dead", ""))
        pid, fragment = show.get(unit, (None, ""))
        out.append(Service(unit=unit, load=load, active=active, sub=sub, enabled=files.get(unit, ""),
                           description=description, main_pid=pid, fragment_path=fragment))
    return canonical(out, service_key)


def collect_services(limits: InventoryLimits = DEFAULT_LIMITS, run_dir: str = "/run",
                     ) -> tuple[list[Service], str]:
    """Services in canonical order and a note ("" when complete)."""
    if not systemd_running(run_dir):
        return [], "systemd is not the running init system; no services listed"

    def systemctl(args: Sequence[str]) -> str:
        return run(["systemctl", "--no-pager", *args], timeout=limits.command_timeout_s,
                   max_output=limits.max_command_output)

    units = parse_list_units(systemctl(["list-units", "--type=service", "--all", "--no-legend", "--plain"]))
    files = parse_unit_files(systemctl(["list-unit-files", "--type=service", "--no-legend"]))
    names = sorted(set(units) | set(files))
    note = ""
    if len(names) > limits.max_services:
        note = f"truncated to {limits.max_services} of {len(names)} services"
        names = names[: limits.max_services]
        keep = set(names)
        units = {k: v for k, v in units.items() if k in keep}
        files = {k: v for k, v in files.items() if k in keep}
    show: dict[str, tuple[int | None, str]] = {}
    loaded = [n for n in names if n in units]
    for i in range(0, len(loaded), _SHOW_CHUNK):
        chunk = loaded[i:i + _SHOW_CHUNK]
        show.update(parse_show(systemctl(["show", "-p", "Id,MainPID,FragmentPath", "--", *chunk])))
    return merge_services(units, files, show), note
