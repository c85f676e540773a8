"""G6: CycloneDX bills of materials, validated against the CycloneDX 1.6 JSON schema.

A device's SBOM is built from this machine's real dpkg database (as an agent
reports it) and compared package by package with ``dpkg-query``; Rampart's
own SBOM lists the distributions it runs on.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from rampart.agent.inventory.packages import collect_dpkg
from rampart.sbom import DeviceInfo, PackageInfo, device_sbom, rampart_sbom


def valid(doc: str) -> dict:
    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(doc)
    assert errors is None, errors
    return json.loads(doc)


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="no dpkg on this machine")
def test_G6_device_sbom_lists_every_installed_package() -> None:
    packages, _ = collect_dpkg()
    doc = valid(device_sbom(DeviceInfo("dev-" + "a" * 24, "host-1", "debian", "12"),
                            [PackageInfo(p.manager, p.name, p.version, p.arch) for p in packages]))
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"] == "1.6"
    assert doc["metadata"]["component"]["type"] == "device"
    assert doc["metadata"]["component"]["name"] == "host-1"
    out = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}|${Package}|${Version}\\n"],
                         capture_output=True, text=True, check=True).stdout
    installed = {(n, v) for st, n, v in (ln.split("|") for ln in out.splitlines()) if st.startswith("ii")}
    listed = {(c["name"], c["version"]) for c in doc["components"]}
    assert installed <= listed
    bash = [c for c in doc["components"] if c["name"] == "bash"][0]
    assert bash["purl"].startswith(f"pkg:deb/debian/bash@{bash['version']}".replace("+", "%2B"))
    assert "distro=debian-12" in bash["purl"]
    # The root depends on every component: the dependency graph is complete.
    root = [d for d in doc["dependencies"] if d["ref"] == doc["metadata"]["component"]["bom-ref"]]
    assert len(root[0]["dependsOn"]) == len(doc["components"])


def test_G6_hostile_package_names_stay_inside_their_fields() -> None:
    evil = PackageInfo("rpm", 'x"}]</name><script>', "1.0&2?x=y#z", "x86_64")
    doc = valid(device_sbom(DeviceInfo("dev-" + "b" * 24, "h", "rocky", "9"),
                            [evil, evil, PackageInfo("rpm", "openssl-libs", "3.0.7", "x86_64")]))
    assert len(doc["components"]) == 2  # duplicates dropped
    comp = [c for c in doc["components"] if c["version"] == "1.0&2?x=y#z"][0]
    assert comp["name"] == evil.name
    assert "%22" in comp["purl"] and "#z" not in comp["purl"].split("?")[0]


def test_G6_rampart_publishes_its_own_sbom() -> None:
    doc = valid(rampart_sbom())
    assert doc["metadata"]["component"]["name"] == "rampart"
    names = {c["name"] for c in doc["components"]}
    assert {"pynacl", "fastapi", "sqlalchemy", "cryptography", "msgspec", "cyclonedx-python-lib"} <= names
    assert all(c["purl"].startswith("pkg:pypi/") for c in doc["components"])
