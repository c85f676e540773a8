"""The posture report as a document: HTML (Jinja2, autoescaped, charts as inline SVG) and PDF
(WeasyPrint renders that same HTML; no browser, no script) (issue 19; docs/design/posture-report.md).

Security invariants:

* Every value reaches the page through the shared ``text`` filter (:func:`rampart.webui.text`):
  device-reported strings (hostnames, tool names, finding subjects) become inert text, control,
  bidi and invisible characters shown as visible escapes, then HTML-escaped. Chart labels go
  through the same filter inside the SVG.
* The document holds no script and loads nothing: WeasyPrint is given a URL fetcher that refuses
  every URL, and the HTML is served with :data:`REPORT_CSP` (no script, the one style block by
  its hash, images only from ``data:``).
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import Any, Final, NoReturn

from rampart.webui import environment

from .posture import Posture

_env = environment(Path(__file__).parent / "report_templates")
_TEMPLATE: Final = "posture_report.html"
_STYLE = re.compile(r"<style>(.*?)</style>", re.S)


def _style_hash() -> str:
    source = (Path(__file__).parent / "report_templates" / _TEMPLATE).read_text()
    m = _STYLE.search(source)
    assert m is not None
    return base64.b64encode(hashlib.sha256(m.group(1).encode()).digest()).decode()


#: The report page's Content-Security-Policy: no script at all, its one style block by hash.
REPORT_CSP: Final = (f"default-src 'none'; style-src 'sha256-{_style_hash()}'; img-src data:; "
                     "form-action 'none'; frame-ancestors 'none'; base-uri 'none'")

COLOURS: Final = {"met": "#2e7d32", "partial": "#f9a825", "not-met": "#c62828", "outside": "#9e9e9e"}
LABELS: Final = {"met": "met", "partial": "partly met", "not-met": "NOT MET", "outside": "outside Rampart"}


def render_html(p: Posture) -> str:
    """The report as one self-contained HTML page."""
    return _env.get_template(_TEMPLATE).render(p=p, colours=COLOURS, labels=LABELS,
                                               summary=p.summary(), dur=duration)


def _refuse(url: str, *args: Any, **kwargs: Any) -> NoReturn:
    raise ValueError("the posture report loads no external resource")


def render_pdf(p: Posture) -> bytes:
    """The same HTML laid out by WeasyPrint (A4), with every resource fetch refused."""
    from weasyprint import HTML  # type: ignore[import-untyped]  # imported for a PDF only: it loads Pango

    pdf = HTML(string=render_html(p), url_fetcher=_refuse).write_pdf()
    assert isinstance(pdf, bytes)
    return pdf


def duration(seconds: float) -> str:
    s = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size and s % size == 0:
            return f"{s // size} {unit}"
    return f"{s} s"
