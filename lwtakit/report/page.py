"""The page machinery shared by every report: jinja environment, plot collector, all-or-nothing write.

Templates live in ``templates/`` beside this file (shipped as package data). ``.html`` templates are
autoescaped: everything user-supplied (labels from concept files, layer and run names) is escaped
wherever a template prints it. They are written one element per line for reading; :class:`_JoinLines`
drops each line break and the indentation after it, so the page comes out as one line of markup
(``{{ "\\n" }}`` writes a real newline, and a jinja tag must not be split across lines).
"""

from __future__ import annotations

import datetime as _dt
import html
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from jinja2.ext import Extension
from markupsafe import Markup

from lwtakit import plots
from lwtakit.io import atomic_write
from lwtakit.report import formatting
from lwtakit.report.images import data_uri


@dataclass(frozen=True)
class Figure:
    """One embedded plot: its ``data:`` URI, alt text, caption, and an optional maximum width in pixels."""

    uri: str
    alt: str
    caption: Markup  # trusted HTML: captions are written by this package, never taken from input
    width: int | None = None


class PendingPlots:
    """Render figures in memory (each closed right after), write them all only on :meth:`commit`."""

    def __init__(self) -> None:
        self.pngs: dict[str, bytes] = {}
        self.figures: list[Figure] = []

    def add(self, name: str, make: Callable[[], Any], alt: str, caption: str, width: int | None = None) -> None:
        """Draw ``make()`` now; it becomes ``plots/<name>.png`` and the next figure on the page.

        ``caption`` is HTML (a constant of the calling report, so it is not escaped).
        """
        fig = make()
        try:
            png = plots.png_bytes(fig)
        finally:
            plots._close(fig)
        self.pngs[name] = png
        self.figures.append(Figure(data_uri(png), alt, Markup(caption), width))

    def commit(self, out_dir: Path) -> None:
        """Write every rendered plot to ``out_dir/plots/<name>.png``, each atomically."""
        for name, png in self.pngs.items():
            with atomic_write(out_dir / "plots" / f"{name}.png", "wb") as fh:
                fh.write(png)


class _JoinLines(Extension):
    """In ``.html`` templates remove every line break together with the indentation after it."""

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        if name is not None and name.endswith(".html"):
            return re.sub(r"\n[ \t]*", "", source)
        return source


def _escape(value: Any) -> Any:
    # Autoescape would spell " and ' as &#34; / &#39;; escaping here first (with the stdlib, as these
    # reports always have: &quot; / &#x27;) keeps the pages byte-identical to earlier ones. Markup
    # (macro output) passes through; autoescape leaves the returned Markup alone.
    if hasattr(value, "__html__"):
        return value
    return Markup(html.escape(str(value), quote=True))


@cache
def environment() -> Environment:
    """The jinja environment of the report templates, with the number formats as filters."""
    # keep_trailing_newline: report.css and report.js end with a newline that the page keeps.
    env = Environment(loader=PackageLoader("lwtakit.report", "templates"), autoescape=select_autoescape(["html"]),
                      extensions=[_JoinLines], finalize=_escape, keep_trailing_newline=True,
                      undefined=StrictUndefined)
    env.filters.update(fmt_num=formatting.fmt_num, fmt_p=formatting.fmt_p, pct=formatting.fmt_pct,
                       value=formatting.fmt_value, as_float=formatting.as_float, sort_key=formatting.sort_key,
                       top5=formatting.top5_text)
    env.tests["numeric"] = formatting.is_number
    return env


def _now() -> str:
    """The generation time shown in a report's subtitle."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def write_report(out_dir: Path, template: str, figs: PendingPlots, **context: Any) -> Path:
    """Render ``template`` with ``context`` in memory, then write ``plots/*.png`` and ``report.html``.

    Each file is written atomically and only after the whole page rendered, so a failure anywhere
    before leaves no new ``report.html`` behind.
    """
    page = environment().get_template(template).render(figures=figs.figures, generated=_now(), **context)
    figs.commit(out_dir)
    path = out_dir / "report.html"
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return path
