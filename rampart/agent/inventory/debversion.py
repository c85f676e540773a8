"""Debian version ordering, as dpkg sorts versions (lib/dpkg/version.c); pure, no I/O.

It lives with the inventory, the lowest layer that needs it (pending updates),
and the patching engine imports it from here.
"""

from __future__ import annotations


def _order(c: str) -> int:
    if c.isascii() and c.isalpha():
        return ord(c)
    if c == "~":
        return -1
    return ord(c) + 256 if c else 0


def _verrevcmp(a: str, b: str) -> int:
    """dpkg's ``verrevcmp``: compare one version part (lib/dpkg/version.c)."""
    i = j = 0
    digits = "0123456789"
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and a[i] not in digits) or (j < len(b) and b[j] not in digits):
            ac = _order(a[i]) if i < len(a) else 0
            bc = _order(b[j]) if j < len(b) else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i] in digits and j < len(b) and b[j] in digits:
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i] in digits:
            return 1
        if j < len(b) and b[j] in digits:
            return -1
        if first_diff:
            return first_diff
    return 0


def _split_deb(version: str) -> tuple[int, str, str]:
    epoch, sep, rest = version.partition(":")
    if not sep or not epoch.isdigit():
        epoch, rest = "0", version
    upstream, dash, revision = rest.rpartition("-")
    return (int(epoch), upstream, revision) if dash else (int(epoch), rest, "")


def compare_deb_versions(a: str, b: str) -> int:
    """<0, 0 or >0 as Debian version ``a`` sorts before, with or after ``b`` (dpkg's algorithm)."""
    ea, ua, ra = _split_deb(a)
    eb, ub, rb = _split_deb(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _verrevcmp(ua, ub) or _verrevcmp(ra, rb)
