"""Keeping a catalog on disk: one JSON document, written atomically.

The server keeps an imported feed in its data directory with
:func:`save_catalog` and reads it back with :func:`load_catalog`. The file is
treated as untrusted on reading: size-limited, strictly decoded (unknown
fields refused) and every Tool re-checks its canonical form, so a tampered
file is refused as a whole (:class:`CatalogError`) rather than half-loaded.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Literal

import msgspec

from ..private_files import write_private_atomic
from .model import Catalog, CatalogError, Tool

__all__ = ["CATALOG_FORMAT", "MAX_CATALOG_BYTES", "decode_catalog", "encode_catalog", "load_catalog",
           "save_catalog"]

CATALOG_FORMAT: Literal["rampart.catalog.v1"] = "rampart.catalog.v1"
#: A stored catalog of this size would hold tens of thousands of tools.
MAX_CATALOG_BYTES = 32 << 20
MAX_STORED_TOOLS = 20_000


class _CatalogFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    format: Literal["rampart.catalog.v1"]
    tools: tuple[Tool, ...]


def encode_catalog(catalog: Catalog) -> bytes:
    """The stored form of ``catalog`` (deterministic: tools sorted by slug)."""
    return msgspec.json.encode(_CatalogFile(format=CATALOG_FORMAT, tools=catalog.tools))


def decode_catalog(data: bytes) -> Catalog:
    """The catalog in a stored document; :class:`CatalogError` if anything in it is wrong."""
    if len(data) > MAX_CATALOG_BYTES:
        raise CatalogError(f"stored catalog is larger than {MAX_CATALOG_BYTES} bytes")
    try:
        doc = msgspec.json.decode(data, type=_CatalogFile)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise CatalogError(f"stored catalog is invalid: {str(exc)[:200]}") from None
    if len(doc.tools) > MAX_STORED_TOOLS:
        raise CatalogError(f"stored catalog has more than {MAX_STORED_TOOLS} tools")
    try:
        return Catalog(doc.tools)
    except ValueError as exc:
        raise CatalogError(f"stored catalog is inconsistent: {exc}") from None


def save_catalog(path: Path, catalog: Catalog) -> None:
    """Replace ``path`` with ``catalog`` atomically (readers see the old or the new file, never a mix)."""
    write_private_atomic(path, encode_catalog(catalog), mode=0o644)


def load_catalog(path: Path) -> Catalog:
    """The catalog stored at ``path`` by :func:`save_catalog`."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise CatalogError(f"{path} is not a regular file")
        with path.open("rb") as fh:
            data = fh.read(MAX_CATALOG_BYTES + 1)
    except OSError as exc:
        raise CatalogError(f"cannot read {path}: {exc.strerror or exc}") from None
    return decode_catalog(data)
