"""Shared web assets: base template, stylesheet, vendored htmx and asciinema-player, the one text filter.

Both web front ends use this package: the server console (``rampart.server.api.console``,
served by ``rampart server run``, signs nothing) and, later, the local signing console
(``rampart.console``, issue 14 part 3). It is a shared helper: it imports only
:mod:`rampart.textsafe` and Jinja2, never the server or the CLI, so each console builds
its own :func:`environment` over these templates plus its own.

Security rules (docs/design/web-console.md, "Security"):

- Autoescaping is on for every template; :func:`text` is the only way a value reaches a
  page, and every device-reported string (hostname, OS, package, process, output) goes
  through it: control, bidi and invisible characters become visible escapes
  (:func:`rampart.textsafe.safe_line`), then the result is HTML-escaped (T16; MeshCentral
  GHSA-c7hr-448w-65px).
- No template holds inline script or inline style: the pages are served with
  ``script-src 'self'`` and ``style-src 'self'`` (:data:`CSP`). htmx is configured by a
  ``<meta>`` tag to evaluate nothing (``allowEval: false``, ``allowScriptTags: false``)
  and to request its own origin only.
- Static files are a fixed list (:data:`STATIC`), served by name only: no path from a
  request ever reaches the file system.
"""

from __future__ import annotations

import datetime
import html
from importlib import resources
from pathlib import Path
from typing import Final

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from rampart.textsafe import is_safe, safe_line, unsafe_char

__all__ = ["CSP", "PLAYER_CSP", "STATIC", "environment", "line", "static_file", "text", "when"]

#: Content-Security-Policy of every console page: no inline script or style, no eval, no
#: frames, forms post to this origin only.
CSP: Final = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
              "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

#: The CSP of the one page that plays a session recording: :data:`CSP` plus
#: ``'wasm-unsafe-eval'``, which the vendored asciinema-player needs to compile its terminal
#: emulator (WebAssembly, inside the vendored script). It allows WebAssembly compilation
#: only: JavaScript ``eval``/``Function`` stay refused, and scripts still come from this
#: origin only (docs/design/web-console.md, "Recordings").
PLAYER_CSP: Final = CSP.replace("script-src 'self';", "script-src 'self' 'wasm-unsafe-eval';")

#: The static files either console may serve, by name: (file, content type). The
#: asciinema-player files are vendored unmodified from its npm package (version and
#: SHA-256 in docs/design/web-console.md).
STATIC: Final[dict[str, str]] = {
    "htmx.min.js": "text/javascript; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "asciinema-player.min.js": "text/javascript; charset=utf-8",
    "asciinema-player.css": "text/css; charset=utf-8",
    "recording.js": "text/javascript; charset=utf-8",
}


def _package_dir(name: str) -> Path:
    return Path(str(resources.files(__name__).joinpath(name)))


def static_file(name: str) -> tuple[bytes, str] | None:
    """The bytes and content type of a file of :data:`STATIC`, or None for any other name."""
    kind = STATIC.get(name)
    if kind is None:
        return None
    return (_package_dir("static") / name).read_bytes(), kind


def text(value: object) -> Markup:
    """Any value as inert page text: one line, each unsafe character a visible escape.

    The text a reader sees is exactly ``safe_line(str(value))``; each escape is marked
    (``<span class="esc">\\u202e</span>``) so a hidden character stands out from the same
    letters typed.
    """
    s = "" if value is None else str(value)
    if is_safe(s):
        return Markup(html.escape(s))  # noqa: S704 - escaped on this line
    return Markup("".join(  # noqa: S704 - every piece is escaped
        f'<span class="esc">{html.escape(safe_line(ch))}</span>' if unsafe_char(ch)
        else html.escape(ch) for ch in s))


def line(value: object) -> str:
    """Any value as one inert line without markup (for ``<title>`` and attributes): ``safe_line``.

    Autoescape then HTML-escapes it like any string.
    """
    return safe_line("" if value is None else str(value))


def when(ts: float | None) -> str:
    """A UTC timestamp for a page, or ``never``."""
    if ts is None:
        return "never"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    d = max(0, int(now - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if d >= size:
            return f"{d // size} {unit} ago"
    return f"{d} s ago"


def environment(*template_dirs: Path) -> Environment:
    """A Jinja2 environment over ``template_dirs`` first, then the shared templates.

    Autoescape on, undefined names fail, and the filters ``text`` (every value shown),
    ``line`` (the same text without markup, for ``<title>``), ``when`` (a timestamp) and
    ``ago`` (with ``now``).
    """
    loader = ChoiceLoader([FileSystemLoader([str(d) for d in template_dirs]),
                           FileSystemLoader(str(_package_dir("templates")))])
    env = Environment(loader=loader, autoescape=select_autoescape(default=True, default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["text"] = text
    env.filters["line"] = line
    env.filters["when"] = when
    env.filters["ago"] = _ago
    return env
