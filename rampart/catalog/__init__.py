"""Catalog of remote access and RMM tools, for detection (requirements H1, H3, N2, S1).

- :func:`builtin_catalog`: facts compiled by the project for the common tools,
  Linux ones included (see :mod:`rampart.catalog.builtin` for what they are
  and their limits).
- :func:`load_feed` / :func:`parse_feed`: import a LOLRMM-format feed
  (untrusted input; everything normalised, malformed values skipped and
  counted, the file refused as a whole with :class:`CatalogError` only when
  unusable).
- :meth:`Catalog.merged`: a feed extends the built-in entries of the same
  slug (facts are added, never removed).
- :mod:`rampart.catalog.match`: pure lookups by executable, install location,
  port, domain, address and version.
- :func:`load_catalog` / :func:`save_catalog`: keep a catalog on disk.

Errors::

    CatalogError    a feed or stored catalog was refused as a whole
    InvalidFact     one value cannot be made canonical (a ValueError; importers count it)
    ValueError      misuse: a Tool or Catalog built from non-canonical data
"""

from __future__ import annotations

from .builtin import builtin_catalog
from .lolrmm import DEFAULT_FEED_LIMITS, FeedLimits, ImportResult, load_feed, parse_feed
from .match import (
    is_portable_location,
    tools_for_address,
    tools_for_domain,
    tools_for_executable,
    tools_for_install_path,
    tools_for_port,
    vulnerable,
)
from .model import (
    Catalog,
    CatalogError,
    InvalidFact,
    Tool,
    VulnerableRange,
    canonical_path,
    make_tool,
    version_key,
)
from .store import decode_catalog, encode_catalog, load_catalog, save_catalog

__all__ = [
    "DEFAULT_FEED_LIMITS",
    "Catalog",
    "CatalogError",
    "FeedLimits",
    "ImportResult",
    "InvalidFact",
    "Tool",
    "VulnerableRange",
    "builtin_catalog",
    "canonical_path",
    "decode_catalog",
    "encode_catalog",
    "is_portable_location",
    "load_catalog",
    "load_feed",
    "make_tool",
    "parse_feed",
    "save_catalog",
    "tools_for_address",
    "tools_for_domain",
    "tools_for_executable",
    "tools_for_install_path",
    "tools_for_port",
    "version_key",
    "vulnerable",
]
