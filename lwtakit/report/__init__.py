"""Self-contained HTML reports for ``analyze.py dissect`` and ``analyze.py compare``.

One HTML file with inline CSS, every image embedded as a base64 ``data:`` URI (so the report can be
mailed or archived alone), the plots also written as PNG files in ``plots/`` beside it for reuse.
Everything user-supplied (labels come from concept files, layer names from models) is HTML-escaped.
A tiny optional inline script sorts tables when a header is clicked; the report reads fine without it.

Writes are all-or-nothing: every plot and image is rendered in memory first, and only then are the
PNGs and ``report.html`` written (each atomically), so a failure while rendering leaves no new
``report.html`` behind.

Modules: :mod:`.images` (image rows, data URIs), :mod:`.formatting` (number formats, also jinja
filters), :mod:`.page` (jinja environment, plot collector, the write), :mod:`.dissect` and
:mod:`.compare` (the two reports), :mod:`.verdict` (``analyze.py verdict``'s ``verdict.csv`` and
``verdict.html``); the HTML itself is in ``templates/``.
"""

from lwtakit.report.compare import RunSummary, compare_report
from lwtakit.report.dissect import HeldOut, LayerInfo, Sections, dissection_report
from lwtakit.report.formatting import fmt_num, fmt_p
from lwtakit.report.images import image_grid

__all__ = [
    "image_grid",
    "LayerInfo",
    "Sections",
    "HeldOut",
    "dissection_report",
    "RunSummary",
    "compare_report",
    "fmt_num",
    "fmt_p",
]
