"""The machine's own dpkg database is byte-identical around every test of a module that runs package managers.

Import both fixtures into the module's namespace (``host_dpkg = hostguard.host_dpkg`` ...).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .aptrepo import dpkg_status_bytes


@pytest.fixture(scope="module")
def host_dpkg() -> bytes:
    return dpkg_status_bytes()


@pytest.fixture(autouse=True)
def host_packages_untouched(host_dpkg: bytes) -> Iterator[None]:
    """The machine's own dpkg database is byte-identical around every test."""
    before = dpkg_status_bytes()
    yield
    assert dpkg_status_bytes() == before == host_dpkg, "the host's /var/lib/dpkg/status changed"
