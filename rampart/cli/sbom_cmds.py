"""``rampart sbom``: CycloneDX bills of materials of a device, or of Rampart itself (G6)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from rampart.sbom import DeviceInfo, PackageInfo, device_sbom, rampart_sbom

from .client import expect_dict, expect_list
from .common import api
from .errors import CliError, UsageProblem
from .output import say, write_export


def _find_device(client: Any, device: str) -> tuple[str, dict[str, Any]]:
    """The tenant id and device record of ``device`` among the tenants the caller reaches."""
    for t in expect_list(client.get("/tenants"), "tenants"):
        if not isinstance(t, dict) or not isinstance(t.get("id"), str):
            continue
        for d in expect_list(client.get(f"/tenants/{t['id']}/devices"), "devices"):
            if isinstance(d, dict) and d.get("id") == device:
                return t["id"], d
    raise CliError(f"no device {device} in the tenants you can see")


def sbom(
    device: Annotated[str | None, typer.Argument(help="Device id (dev-…).")] = None,
    self_: Annotated[bool, typer.Option("--self", help="Rampart's own SBOM instead.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to a file.")] = None,
) -> None:
    """Write a CycloneDX 1.6 JSON SBOM of a device's installed packages (or of Rampart)."""
    if self_ == (device is not None):
        raise UsageProblem("give a DEVICE or --self")
    if self_:
        doc = rampart_sbom()
    else:
        assert device is not None
        _, client, _ = api()
        with client:
            tenant, _ = _find_device(client, device)
            inv = expect_dict(client.get(f"/tenants/{tenant}/devices/{device}/inventory"),
                              "inventory")
        raw_os = inv.get("os")
        os_info: dict[str, Any] = raw_os if isinstance(raw_os, dict) else {}
        pkgs = [PackageInfo(str(p.get("manager", "")), str(p.get("name", "")),
                            str(p.get("version", "")), str(p.get("arch", "")))
                for p in inv.get("packages") or [] if isinstance(p, dict) and p.get("name")]
        if not pkgs:
            raise CliError(f"the server has no package inventory for {device} yet")
        doc = device_sbom(DeviceInfo(device, str(os_info.get("hostname", "")),
                                     str(os_info.get("id", "")), str(os_info.get("version_id", ""))),
                          pkgs)
    if output is None:
        write_export(doc + "\n")
        return
    try:
        output.write_text(doc + "\n")
    except OSError as exc:
        raise CliError(f"cannot write {output}: {exc.strerror}") from exc
    say(f"SBOM written to {output}")


def register(app: typer.Typer) -> None:
    app.command("sbom")(sbom)
