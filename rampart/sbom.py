"""Software bills of materials in CycloneDX (G6): of a device's packages, and of Rampart itself.

:func:`device_sbom` turns the packages of a device inventory (dpkg and rpm)
into a CycloneDX 1.6 JSON document whose root component is the device;
:func:`rampart_sbom` lists Rampart and every Python distribution it depends
on, as installed. Both are built with cyclonedx-python-lib and carry package
URLs (``pkg:deb``, ``pkg:rpm``, ``pkg:pypi``) so scanners can match them.

The input is data the server received from an agent: every string is bounded
by the inventory model already; here names and versions become purl parts
(percent-encoded by packageurl), never markup.
"""

from __future__ import annotations

import importlib.metadata as md
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

from . import __version__

_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


@dataclass(frozen=True, slots=True)
class PackageInfo:
    manager: str  # "dpkg" or "rpm"
    name: str
    version: str
    arch: str = ""


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    device_id: str
    hostname: str
    os_id: str = ""
    os_version: str = ""


def _purl(pkg: PackageInfo, dev: DeviceInfo) -> PackageURL:
    qualifiers = {}
    if pkg.arch:
        qualifiers["arch"] = pkg.arch
    if dev.os_id:
        qualifiers["distro"] = f"{dev.os_id}-{dev.os_version}" if dev.os_version else dev.os_id
    kind = "deb" if pkg.manager == "dpkg" else "rpm"
    return PackageURL(type=kind, namespace=dev.os_id or None, name=pkg.name, version=pkg.version,
                      qualifiers=qualifiers or None)


def _document(root: Component, components: Iterable[Component]) -> str:
    bom = Bom()
    bom.metadata.component = root
    parts = list(components)
    for c in parts:
        bom.components.add(c)
    bom.register_dependency(root, parts)
    return JsonV1Dot6(bom).output_as_string(indent=2)


def device_sbom(device: DeviceInfo, packages: Iterable[PackageInfo]) -> str:
    """A CycloneDX 1.6 JSON document of the device's installed packages (duplicates dropped)."""
    root = Component(type=ComponentType.DEVICE, name=device.hostname or device.device_id,
                     bom_ref=device.device_id,
                     description=f"Rampart device {device.device_id}"
                                 + (f" ({device.os_id} {device.os_version})" if device.os_id else ""))
    seen: dict[str, Component] = {}
    for pkg in packages:
        purl = _purl(pkg, device)
        ref = purl.to_string()
        if ref not in seen:
            seen[ref] = Component(type=ComponentType.LIBRARY if pkg.name.startswith("lib")
                                  else ComponentType.APPLICATION,
                                  name=pkg.name, version=pkg.version, purl=purl, bom_ref=ref)
    return _document(root, [seen[k] for k in sorted(seen)])


def _requirements(dist: md.Distribution) -> list[str]:
    out = []
    for req in dist.requires or []:
        if "extra ==" in req:
            continue
        m = _REQ_NAME.match(req)
        if m:
            out.append(m.group(1))
    return out


def _source_tree_requirements() -> list[str]:
    import tomllib
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        deps = tomllib.loads(path.read_text())["project"]["dependencies"]
    except (OSError, KeyError, ValueError):
        return []
    return [m.group(1) for d in deps if isinstance(d, str) and (m := _REQ_NAME.match(d))]


def rampart_sbom() -> str:
    """Rampart and every installed distribution it needs, transitively (CycloneDX 1.6 JSON)."""
    root = Component(type=ComponentType.APPLICATION, name="rampart", version=__version__,
                     bom_ref="pkg:pypi/rampart@" + __version__,
                     purl=PackageURL(type="pypi", name="rampart", version=__version__))
    try:
        todo = _requirements(md.distribution("rampart"))
    except md.PackageNotFoundError:  # running from a source tree: its pyproject.toml says
        todo = _source_tree_requirements()
    found: dict[str, Component] = {}
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in found:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # an optional or platform-specific requirement that is not installed
        purl = PackageURL(type="pypi", name=key, version=dist.version)
        found[key] = Component(type=ComponentType.LIBRARY, name=key, version=dist.version,
                               purl=purl, bom_ref=purl.to_string())
        todo.extend(_requirements(dist))
    return _document(root, [found[k] for k in sorted(found)])
