"""End-of-life status of the OS release (requirement M6: no end-of-life software).

"End of life" here means the end of *free public security support* from the
distribution itself:

* Debian: the end of Debian LTS (part of the regular security archive).
  Freexian's paid ELTS is not counted.
* Ubuntu: the end of standard support (the server date where it differs).
  ESM under an Ubuntu Pro subscription is not counted.
* RHEL: the end of the Maintenance Support phase (ELS is a paid add-on).
  Rocky Linux and AlmaLinux follow their own announced dates; CentOS Linux
  and CentOS Stream share the ``centos`` id, so the later date is used.
* Fedora: the announced EOL date (four weeks after release N+2).

A release is "eol" from the day after its EOL date (UTC), "current" up to and
including that day, and "unknown" when the distribution or release is not in
the table (including rolling releases such as Debian testing).

The built-in table was taken from distro-info-data 0.58+deb12u6 (Debian,
Ubuntu) and the vendors' published life cycles (RHEL, Rocky, Alma, CentOS,
Fedora), as of 2026. On Debian and Ubuntu hosts the OS's own distro-info CSV
files, updated by the OS's package manager, take precedence for the releases
they list, so a newer host knows newer releases.

:func:`eol_status` is pure: it takes the table and "now" from the caller.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Mapping

from rampart.wire.inventory import EolStatus

from ._util import try_read_text

#: (distribution id, release) -> last day of support, ISO date.
BUILTIN: dict[tuple[str, str], str] = {
    # Debian (eol-lts column of distro-info-data debian.csv)
    ("debian", "7"): "2018-05-31",
    ("debian", "8"): "2020-06-30",
    ("debian", "9"): "2022-06-30",
    ("debian", "10"): "2024-06-30",
    ("debian", "11"): "2026-08-31",
    ("debian", "12"): "2028-06-30",
    ("debian", "13"): "2030-06-30",
    # Ubuntu (standard support; the server date where it differs)
    ("ubuntu", "14.04"): "2019-04-25",
    ("ubuntu", "16.04"): "2021-04-30",
    ("ubuntu", "18.04"): "2023-05-31",
    ("ubuntu", "18.10"): "2019-07-18",
    ("ubuntu", "19.04"): "2020-01-23",
    ("ubuntu", "19.10"): "2020-07-17",
    ("ubuntu", "20.04"): "2025-05-29",
    ("ubuntu", "20.10"): "2021-07-22",
    ("ubuntu", "21.04"): "2022-01-20",
    ("ubuntu", "21.10"): "2022-07-14",
    ("ubuntu", "22.04"): "2027-06-01",
    ("ubuntu", "22.10"): "2023-07-20",
    ("ubuntu", "23.04"): "2024-01-25",
    ("ubuntu", "23.10"): "2024-07-11",
    ("ubuntu", "24.04"): "2029-05-31",
    ("ubuntu", "24.10"): "2025-07-10",
    ("ubuntu", "25.04"): "2026-01-15",
    ("ubuntu", "25.10"): "2026-07-09",
    ("ubuntu", "26.04"): "2031-05-29",
    # Red Hat Enterprise Linux (end of Maintenance Support)
    ("rhel", "6"): "2020-11-30",
    ("rhel", "7"): "2024-06-30",
    ("rhel", "8"): "2029-05-31",
    ("rhel", "9"): "2032-05-31",
    ("rhel", "10"): "2035-05-31",
    # Rocky Linux
    ("rocky", "8"): "2029-05-31",
    ("rocky", "9"): "2032-05-31",
    ("rocky", "10"): "2035-05-31",
    # AlmaLinux
    ("almalinux", "8"): "2029-03-01",
    ("almalinux", "9"): "2032-05-31",
    ("almalinux", "10"): "2035-05-31",
    # CentOS Linux / CentOS Stream (same os-release id; the later date)
    ("centos", "6"): "2020-11-30",
    ("centos", "7"): "2024-06-30",
    ("centos", "8"): "2024-05-31",
    ("centos", "9"): "2027-05-31",
    # Fedora
    ("fedora", "36"): "2023-05-16",
    ("fedora", "37"): "2023-12-05",
    ("fedora", "38"): "2024-05-21",
    ("fedora", "39"): "2024-11-26",
    ("fedora", "40"): "2025-05-13",
    ("fedora", "41"): "2025-12-15",
    ("fedora", "42"): "2026-05-13",
    ("fedora", "43"): "2026-12-09",
}

#: Distributions whose os-release id maps onto another's release numbers.
ALIASES = {"raspbian": "debian", "rocky-linux": "rocky", "redhat": "rhel"}
#: Distributions whose support follows the major version only.
MAJOR_ONLY = frozenset({"rhel", "rocky", "almalinux", "centos", "debian", "fedora"})

DISTRO_INFO_DIR = "/usr/share/distro-info"


def release_key(os_id: str, version_id: str) -> tuple[str, str]:
    """Table key for an os-release ``ID`` and ``VERSION_ID`` ("9.4" -> "9" where support is per major)."""
    dist = ALIASES.get(os_id.lower(), os_id.lower())
    version = version_id.strip()
    if dist in MAJOR_ONLY:
        version = version.split(".", 1)[0]
    return dist, version


EolTable = Mapping[tuple[str, str], tuple[str, str]]


def eol_status(os_id: str, version_id: str, *, now: int, table: EolTable) -> EolStatus:
    """Status of a release at unix time ``now`` given ``table`` ((dist, release) -> (date, source))."""
    dist, release = release_key(os_id, version_id)
    entry = table.get((dist, release)) if release else None
    if entry is None:
        return EolStatus(status="unknown", product=dist[:256], release=release[:256])
    date, source = entry
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    ended = today > dt.date.fromisoformat(date)
    return EolStatus(status="eol" if ended else "current", product=dist, release=release, eol_date=date,
                     source=source)


def _valid_date(text: str) -> str | None:
    try:
        return dt.date.fromisoformat(text.strip()).isoformat()
    except ValueError:
        return None


def parse_distro_info(dist: str, text: str) -> dict[tuple[str, str], str]:
    """(dist, release) -> last day of free support, from a distro-info-data CSV; bad rows skipped.

    Debian rows use ``eol-lts`` (else ``eol``); Ubuntu rows the later of
    ``eol`` and ``eol-server``. Releases without a date yet are left out.
    """
    out: dict[tuple[str, str], str] = {}
    try:
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error:
        return out
    for row in rows:
        version = (row.get("version") or "").split(" ", 1)[0].strip()
        if not version or not all(part.isdigit() for part in version.split(".")):
            continue
        if dist == "debian":
            candidates = [row.get("eol-lts") or "", row.get("eol") or ""]
            date = next((d for d in map(_valid_date, candidates) if d), None)
        else:
            dates = [d for d in (_valid_date(row.get("eol") or ""), _valid_date(row.get("eol-server") or ""))
                     if d]
            date = max(dates) if dates else None
        if date is not None:
            out[(dist, version)] = date
    return out


def load_table(distro_info_dir: str | None = DISTRO_INFO_DIR) -> dict[tuple[str, str], tuple[str, str]]:
    """The built-in table, overridden by the host's distro-info CSVs where present and parseable."""
    table = {k: (v, "built-in") for k, v in BUILTIN.items()}
    if distro_info_dir:
        for dist in ("debian", "ubuntu"):
            text = try_read_text(f"{distro_info_dir}/{dist}.csv", 1 << 20)
            if text:
                for k, v in parse_distro_info(dist, text).items():
                    table[k] = (v, "distro-info")
    return table
