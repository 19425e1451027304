"""Self-contained HTML reports for ``analyze.py dissect`` and ``analyze.py compare``.

One HTML file with inline CSS, every image embedded as a base64 ``data:`` URI (so the report can be
mailed or archived alone), the plots also written as PNG files in ``plots/`` beside it for reuse.
Everything user-supplied (labels come from concept files, layer names from models) is HTML-escaped.
A tiny optional inline script sorts tables when a header is clicked; the report reads fine without it.

Writes are all-or-nothing: every plot and image is rendered in memory first, and only then are the
PNGs and ``report.html`` written (each atomically), so a failure while rendering leaves no new
``report.html`` behind.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io as _io
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lwtakit import plots
from lwtakit.errors import UserError
from lwtakit.io import atomic_write, ensure_writable_dir

__all__ = [
    "image_grid",
    "LayerInfo",
    "dissection_report",
    "RunSummary",
    "compare_report",
    "fmt_num",
    "fmt_p",
]

GRID_MIN_PX = 64  # tiny images (MNIST 28 px, CIFAR 32 px) are upscaled to at least this size
GRID_GAP_PX = 3


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------
def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, (list, tuple)):  # a list of [3, H, W] images
        if not x:
            raise UserError("image grid got an empty list of images")
        return np.stack([_to_numpy(i) for i in x])
    if hasattr(x, "detach"):
        x = x.detach().to("cpu")
        if not x.is_floating_point():
            x = x.float() / 255.0 if str(x.dtype) == "torch.uint8" else x.float()
        x = x.numpy()
    arr = np.asarray(x)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return arr.astype(np.float32, copy=False)


def image_grid(images: Any, min_px: int = GRID_MIN_PX, gap: int = GRID_GAP_PX) -> bytes:
    """Lay ``k`` images out in one row and return them as PNG bytes.

    ``images``: ``[k, 3, H, W]`` or ``[k, 1, H, W]`` or ``[k, H, W]`` (grey), float in [0, 1] (values
    outside are clipped; ``uint8`` is read as 0..255), torch tensor or numpy array. Images whose
    shorter side is below ``min_px`` are upscaled by the integer factor ``s = ceil(min_px / min(H, W))``
    with nearest-neighbour (pixels stay crisp); images are separated by ``gap`` white pixels, so the
    width is ``k * W * s + (k - 1) * gap``.
    """
    from PIL import Image

    arr = _to_numpy(images)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1] not in (1, 3) or arr.shape[0] == 0 or min(arr.shape[2:]) == 0:
        raise UserError(f"image grid expects images shaped [k, 3, H, W] or [k, H, W] with k >= 1, "
                        f"got shape {tuple(np.shape(images))}")
    k, c, h, w = arr.shape
    s = max(1, math.ceil(min_px / min(h, w)))
    arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0).clip(0.0, 1.0)
    arr = (arr * 255.0 + 0.5).astype(np.uint8)
    if c == 1:
        arr = np.repeat(arr, 3, axis=1)
    arr = arr.transpose(0, 2, 3, 1)  # k, H, W, 3
    if s > 1:
        arr = arr.repeat(s, axis=1).repeat(s, axis=2)
    H, W = h * s, w * s
    canvas = np.full((H, k * W + (k - 1) * gap, 3), 255, dtype=np.uint8)
    for i in range(k):
        x0 = i * (W + gap)
        canvas[:, x0:x0 + W] = arr[i]
    buf = _io.BytesIO()
    Image.fromarray(canvas, "RGB").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _png_width(png: bytes) -> int:
    # PNG IHDR: the width is the big-endian uint32 at byte 16.
    return int.from_bytes(png[16:20], "big")


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# --------------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------------
def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _as_float(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None if x is None else float(x)
    if hasattr(x, "item") and getattr(x, "ndim", 0) == 0:
        x = x.item()
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v


def fmt_num(x: Any, sig: int = 3) -> str:
    """Numbers with ``sig`` significant digits (integers as they are); missing / NaN -> an en dash."""
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    v = _as_float(x)
    if v is None:
        return "" if x is None or x == "" else str(x)
    if math.isnan(v):
        return "–"
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    if isinstance(x, str) and re.fullmatch(r"\s*[-+]?\d+\s*", x):  # an integer read back from CSV
        return str(int(x))
    return f"{v:.{sig}g}"


def fmt_p(x: Any) -> str:
    """p-values in scientific notation with two significant digits (``3.2e-12``); 0 (underflow) -> ``<1e-300``."""
    v = _as_float(x)
    if v is None or math.isnan(v):
        return "–"
    if v == 0.0:
        return "<1e-300"
    return f"{v:.1e}"


def _fmt_pct(x: Any) -> str:
    v = _as_float(x)
    if v is None or math.isnan(v):
        return "–"
    return f"{100 * v:.3g}%"


def _fmt_value(v: Any) -> str:
    """Render a meta / evaluation value: numbers 3 significant digits, containers flattened, text escaped."""
    if v is None:
        return "–"
    if isinstance(v, Mapping):
        return "; ".join(f"{_e(k)}={_fmt_value(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt_value(x) for x in v)
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        return _e(fmt_num(v))
    return _e(v)


def _num_td(text: str, sort_value: float | None = None, cls: str = "num") -> str:
    sv = "" if sort_value is None or math.isnan(sort_value) else f' data-v="{sort_value!r}"'
    return f'<td class="{cls}"{sv}>{text}</td>'


def _slug(name: str, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "x"
    slug, i = base, 2
    while slug in used:
        slug, i = f"{base}-{i}", i + 1
    used.add(slug)
    return slug


# --------------------------------------------------------------------------------------------------
# Page skeleton
# --------------------------------------------------------------------------------------------------
_CSS = """
:root{--fg:#1d2330;--muted:#5b6475;--line:#d9dee7;--zebra:#f5f7fb;--head:#e9edf5;--accent:#2f5fb3}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 color:var(--fg);margin:0;background:#fff}
main{max-width:1240px;margin:0 auto;padding:18px 26px 60px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:34px 0 10px;padding-bottom:4px;
 border-bottom:2px solid var(--line)} h3{font-size:15px;margin:22px 0 8px}
.sub{color:var(--muted);margin:0 0 14px;font-size:12.5px}
nav{font-size:13px;margin:6px 0 4px;color:var(--muted)} nav a{margin-right:12px}
a{color:var(--accent);text-decoration:none} a:hover{text-decoration:underline}
table{border-collapse:separate;border-spacing:0;font-size:13px}
th,td{padding:4px 10px;border-bottom:1px solid var(--line);vertical-align:top;text-align:left}
thead th{position:sticky;top:0;background:var(--head);z-index:1;font-weight:600;white-space:nowrap;
 border-bottom:1px solid #c5ccd8}
thead th small{display:block;font-weight:400;color:var(--muted);font-size:11px}
tbody tr:nth-child(even) td,table.kv tbody tr:nth-child(even) th{background:var(--zebra)}
tbody tr:hover td{background:#eaf1ff}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.lab{max-width:340px;overflow-wrap:anywhere}
tr.group th{background:#fff;color:var(--accent);font-size:12.5px;text-transform:uppercase;
 letter-spacing:.03em;padding-top:12px;position:static}
table.kv th{background:none;position:static;color:var(--muted);font-weight:500;white-space:nowrap}
.tablewrap{max-height:34em;overflow:auto;border:1px solid var(--line);border-radius:4px;display:inline-block;
 max-width:100%}
.tablewrap table{min-width:100%}
.stats{display:flex;flex-wrap:wrap;gap:10px;margin:6px 0 12px}
.stat{border:1px solid var(--line);border-radius:6px;padding:6px 12px;background:var(--zebra)}
.stat b{display:block;font-size:17px} .stat span{color:var(--muted);font-size:12px}
.plots{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
figure{margin:0;border:1px solid var(--line);border-radius:6px;padding:6px;background:#fff;max-width:100%}
figure img{display:block;max-width:100%;height:auto}
figcaption{font-size:12px;color:var(--muted);margin-top:4px;max-width:620px}
.cards{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
.card{border:1px solid var(--line);border-radius:6px;padding:8px 10px;background:#fff;overflow:hidden;
 max-width:100%;flex:0 0 auto}
.card h4{margin:0 0 4px;font-size:13.5px}
.card ul{margin:0 0 6px;padding:0;list-style:none;font-size:12.5px}
.card li{overflow-wrap:anywhere} .card li .m{color:var(--muted);display:inline-block;min-width:88px}
.card img{image-rendering:pixelated;max-width:100%;height:auto;display:block}
.muted{color:var(--muted)} .tag{font-size:11px;color:var(--muted);margin-left:4px}
th[data-sort]{cursor:pointer} th[data-sort]:hover{background:#dce3f0}
.tablewrap.full{max-height:none}
@media print{.tablewrap{max-height:none;overflow:visible}}
"""

# Click a header to sort by it (numbers by data-v, text otherwise). An optional nicety.
_JS = """
document.querySelectorAll("table.sortable thead th").forEach(function (th, i) {
  th.dataset.sort = 1; th.title = "click to sort";
  th.onclick = function () {
    var tb = th.closest("table").tBodies[0], rows = [].slice.call(tb.rows);
    var d = th.dataset.d = -(th.dataset.d || -1);
    var key = function (r) {
      var c = r.cells[i]; if (!c) return "";
      return c.dataset.v !== undefined ? parseFloat(c.dataset.v) : c.textContent.trim().toLowerCase();
    };
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === "" || y === "") return (x === "") - (y === "");
      return (x > y ? 1 : x < y ? -1 : 0) * d;
    });
    rows.forEach(function (r) { tb.appendChild(r); });
  };
});
"""


def _page(title: str, subtitle: str, nav: Sequence[tuple[str, str]], body: Iterable[str]) -> str:
    links = "".join(f'<a href="#{_e(a)}">{_e(t)}</a>' for a, t in nav)
    return "".join([
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_e(title)}</h1><p class=\"sub\">{subtitle}</p>",
        f"<nav>{links}</nav>" if links else "",
        *body,
        f"</main><script>{_JS}</script></body></html>\n",
    ])


def _kv_table(items: Mapping[str, Any], pct_keys: Sequence[str] = ()) -> str:
    if not items:
        return '<p class="muted">none</p>'
    rows = []
    for k, v in items.items():
        num = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
        cell = _num_td(_fmt_value(v), _as_float(v)) if num else f"<td>{_fmt_value(v)}</td>"
        rows.append(f"<tr><th>{_e(k)}</th>{cell}</tr>")
    return f'<table class="kv"><tbody>{"".join(rows)}</tbody></table>'


def _figure(uri: str, alt: str, caption: str, width: int | None = None) -> str:
    w = f' style="max-width:{width}px"' if width else ""
    return (f'<figure{w}><img class="plot" src="{uri}" alt="{_e(alt)}">'
            f"<figcaption>{caption}</figcaption></figure>")


class _Plots:
    """Render figures in memory (each closed right after), write them all only on :meth:`commit`."""

    def __init__(self) -> None:
        self.pngs: dict[str, bytes] = {}

    def add(self, name: str, make: Callable[[], Any]) -> str:
        fig = make()
        try:
            png = plots.png_bytes(fig)
        finally:
            plots._close(fig)
        self.pngs[name] = png
        return _data_uri(png)

    def commit(self, out_dir: Path) -> None:
        for name, png in self.pngs.items():
            with atomic_write(out_dir / "plots" / f"{name}.png", "wb") as fh:
                fh.write(png)


def _write_html(out_dir: Path, page: str, figs: _Plots) -> Path:
    figs.commit(out_dir)
    path = out_dir / "report.html"
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return path


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# --------------------------------------------------------------------------------------------------
# Dissection report
# --------------------------------------------------------------------------------------------------
@dataclass
class LayerInfo:
    """What the report shows for one layer besides its label rows."""

    name: str
    units: int
    active_fraction: float | None = None  # measured: fraction of non-zero outputs over the probe set
    firing: np.ndarray | None = None  # [C] per-unit firing (LWTA: win) rate
    top_images: dict[int, Any] = field(default_factory=dict)  # unit -> [k, 3, H, W] top-activating images


def _method_columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, bool]:
    return {"p_value": any(_as_float(r.get("p_value")) is not None for r in rows),
            "auc": any(_as_float(r.get("auc")) is not None and
                       _as_float(r.get("auc")) != _as_float(r.get("score")) for r in rows)}


def _top5_title(r: Mapping[str, Any]) -> str:
    t5 = r.get("top5")
    if t5 is None or t5 == "":
        return ""
    if isinstance(t5, (list, tuple)):
        t5 = ", ".join(str(x) for x in t5)
    return f' title="{_e("top-5: " + str(t5))}"'


def _method_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    scores = np.array([v for v in (_as_float(r.get("score")) for r in rows) if v is not None], dtype=float)
    scores = scores[np.isfinite(scores)]
    ps = [p for p in (_as_float(r.get("p_value")) for r in rows) if p is not None and not math.isnan(p)]
    return {
        "n": len(rows),
        "mean": float(scores.mean()) if scores.size else float("nan"),
        "median": float(np.median(scores)) if scores.size else float("nan"),
        "distinct": len({str(r.get("label", "")) for r in rows}),
        "sig": (sum(p < 1e-3 for p in ps) / len(ps)) if ps else None,
    }


def _unit_key(u: Any) -> Any:
    try:
        return (0, int(u))
    except (TypeError, ValueError):
        return (1, str(u))


def _layer_section(layer: str, info: LayerInfo | None, rows: Sequence[Mapping[str, Any]], anchor: str) -> str:
    by_method: dict[str, dict[Any, Mapping[str, Any]]] = {}
    for r in rows:
        by_method.setdefault(str(r.get("method", "")), {})[_unit_key(r.get("unit"))] = r
    methods = list(by_method)
    cols = {m: _method_columns(list(by_method[m].values())) for m in methods}
    firing = None if info is None or info.firing is None else np.asarray(plots._to_numpy(info.firing)).ravel()
    top = {} if info is None else {_unit_key(u)[1]: v for u, v in (info.top_images or {}).items()}
    units = {k for d in by_method.values() for k in d} | {_unit_key(u) for u in top}
    if not units and firing is not None:
        units = {(0, i) for i in range(firing.size)}
    units = sorted(units)
    is_pca = layer.endswith("#pca")
    unit_word = "component" if is_pca else "unit"

    out = [f'<section id="{anchor}"><h2>{_e(layer)}'
           f'{"<span class=tag>PCA directions</span>" if is_pca else ""}</h2>']
    stats = []
    if info is not None:
        stats.append(("units", fmt_num(info.units)))
        if info.active_fraction is not None:
            stats.append(("measured active fraction (non-zero outputs)", _fmt_pct(info.active_fraction)))
        if firing is not None and firing.size:
            dead = int((firing <= 0).sum())
            stats.append(("dead units (never fire)", f"{dead} of {firing.size}"))
            stats.append(("median firing rate", fmt_num(float(np.median(firing)))))
    for m in methods:
        s = _method_summary(list(by_method[m].values()))
        detail = f"{m}: mean score · {s['distinct']} distinct labels in {s['n']}"
        if s["sig"] is not None:
            detail += f" · {_fmt_pct(s['sig'])} with p<0.001"
        stats.append((detail, fmt_num(s["mean"])))
    if stats:
        out.append('<div class="stats">' + "".join(
            f'<div class="stat"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for k, v in stats) + "</div>")

    if units:
        head = [f'<th class="num">{unit_word}</th>']
        if firing is not None:
            head.append('<th class="num">firing</th>')
        for m in methods:
            head.append(f"<th>label<small>{_e(m)}</small></th>")
            head.append(f'<th class="num">score<small>{_e(m)}</small></th>')
            if cols[m]["auc"]:
                head.append(f'<th class="num">AUC<small>{_e(m)}</small></th>')
            if cols[m]["p_value"]:
                head.append(f'<th class="num">p-value<small>{_e(m)}</small></th>')
        if top:
            head.append("<th>images</th>")
        body = []
        for uk in units:
            u = uk[1]
            cells = [_num_td(_e(u), float(u) if uk[0] == 0 else None)]
            if firing is not None:
                f = float(firing[u]) if uk[0] == 0 and 0 <= u < firing.size else float("nan")
                cells.append(_num_td(fmt_num(f), f))
            for m in methods:
                r = by_method[m].get(uk)
                if r is None:
                    cells.append('<td class="muted">–</td>' + '<td class="num muted">–</td>' * (
                        1 + cols[m]["auc"] + cols[m]["p_value"]))
                    continue
                cells.append(f'<td class="lab"{_top5_title(r)}>{_e(r.get("label", ""))}</td>')
                sc = _as_float(r.get("score"))
                cells.append(_num_td(_e(fmt_num(r.get("score"))), sc))
                if cols[m]["auc"]:
                    cells.append(_num_td(_e(fmt_num(r.get("auc"))), _as_float(r.get("auc"))))
                if cols[m]["p_value"]:
                    p = _as_float(r.get("p_value"))
                    cells.append(_num_td(fmt_p(p), p))
            if top:
                has = u in top
                cells.append(f'<td><a href="#{anchor}-u{_e(u)}">view</a></td>' if has else "<td></td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        out.append(f'<div class="tablewrap"><table class="units sortable"><thead><tr>{"".join(head)}'
                   f'</tr></thead><tbody>{"".join(body)}</tbody></table></div>')
    else:
        out.append('<p class="muted">no labelled units</p>')

    if top:
        out.append(f"<h3>Top-activating images ({len(top)} {unit_word}s)</h3><div class=\"cards\">")
        for u, imgs in top.items():
            labels = []
            for m in methods:
                r = by_method[m].get(_unit_key(u))
                if r is not None:
                    extra = f' · p {fmt_p(r.get("p_value"))}' if cols[m]["p_value"] else ""
                    labels.append(f'<li{_top5_title(r)}><span class="m">{_e(m)}</span>'
                                  f'<b>{_e(r.get("label", ""))}</b> '
                                  f'<span class="muted">({_e(fmt_num(r.get("score")))}{extra})</span></li>')
            k = int(np.shape(plots._to_numpy(imgs))[0]) if np.ndim(plots._to_numpy(imgs)) else 0
            if firing is not None and isinstance(u, (int, np.integer)) and 0 <= u < firing.size:
                labels.append(f'<li><span class="m">firing</span>{fmt_num(float(firing[u]))}</li>')
            png = image_grid(imgs)
            # Card as wide as its image row (at least room for the labels), so images keep their size.
            width = max(300, _png_width(png)) + 22
            uri = _data_uri(png)
            out.append(f'<div class="card" style="width:{width}px" id="{anchor}-u{_e(u)}"><h4>{unit_word} {_e(u)}</h4>'
                       f'<ul>{"".join(labels)}</ul>'
                       f'<img class="topimg" src="{uri}" alt="top {k} images of {unit_word} {_e(u)}"></div>')
        out.append("</div>")
    out.append("</section>")
    return "".join(out)


def dissection_report(out_dir: str | os.PathLike, *, title: str, rows: Sequence[Mapping[str, Any]],
                      layers: Sequence[LayerInfo], evaluation: Mapping[str, Any] | None = None,
                      completeness: Mapping[str, Mapping[str, Any]] | None = None,
                      drift: Mapping[str, Sequence[tuple[int, float]]] | None = None,
                      meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``out_dir/report.html`` (plots also as ``out_dir/plots/*.png``) and return its path.

    Sections: meta; evaluation summary; layer overview (units, measured active fraction, dead units,
    per method mean score / distinct labels / share significant); plots (label-score histograms, sorted
    firing rates, PCA-vs-neuron completeness after Dey et al. 2020, label drift over training); then
    one section per layer: a sortable table of every labelled unit (label and score per method,
    INVERT Mann-Whitney p-value) and, for the units given in ``LayerInfo.top_images``, a card with the
    unit's labels next to its top-activating images. Layers present only in ``rows`` (e.g.
    ``"<layer>#pca"``) get a section too.
    """
    out_dir = ensure_writable_dir(out_dir)
    rows = list(rows)
    infos = {li.name: li for li in layers}
    rows_by_layer: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        rows_by_layer.setdefault(str(r.get("layer", "")), []).append(r)
    order = list(infos) + [n for n in rows_by_layer if n not in infos]
    used: set[str] = {"meta", "evaluation", "overview", "plots"}
    anchors = {n: _slug("layer-" + n, used) for n in order}

    figs = _Plots()
    plot_html = []
    if rows:
        plot_html.append(_figure(figs.add("score_histograms", lambda: plots.score_histograms(rows)),
                                 "label score histograms",
                                 "Distribution of the best label's score per layer and method."))
    firing = {li.name: li.firing for li in layers if li.firing is not None}
    if firing:
        plot_html.append(_figure(figs.add("firing_rates", lambda: plots.firing_rates(firing)),
                                 "firing rates", "Per-unit firing rates sorted from most to least active; "
                                 "a tail at zero means dead units.", 720))
    if completeness:
        plot_html.append(_figure(figs.add("completeness", lambda: plots.completeness_curves(completeness)),
                                 "completeness curves",
                                 "Completeness (Dey et al. 2020): variance explained by, and accuracy after "
                                 "ablating, the top-k principal components (solid) vs the top-k neurons "
                                 "(dashed)."))
    if drift:
        plot_html.append(_figure(figs.add("label_agreement", lambda: plots.label_agreement(drift)),
                                 "label agreement", "Fraction of units whose label is unchanged since the "
                                 "previous dissection during training.", 720))

    body = []
    nav = []
    if meta:
        nav.append(("meta", "run"))
        body.append(f'<section id="meta"><h2>Run</h2>{_kv_table(meta)}</section>')
    if evaluation:
        nav.append(("evaluation", "evaluation"))
        body.append(f'<section id="evaluation"><h2>Evaluation</h2>{_kv_table(evaluation)}</section>')
    nav.append(("overview", "layers"))
    body.append(_overview(order, infos, rows_by_layer, anchors))
    if plot_html:
        nav.append(("plots", "plots"))
        body.append(f'<section id="plots"><h2>Plots</h2><div class="plots">{"".join(plot_html)}</div></section>')
    for n in order:
        body.append(_layer_section(n, infos.get(n), rows_by_layer.get(n, []), anchors[n]))
        nav.append((anchors[n], n))
    n_units = len({(str(r.get("layer")), str(r.get("unit"))) for r in rows})
    methods = sorted({str(r.get("method", "")) for r in rows})
    subtitle = (f"{len(order)} layers · {n_units} labelled units · methods: {_e(', '.join(methods) or '–')}"
                f" · generated {_now()}")
    return _write_html(out_dir, _page(title, subtitle, nav, body), figs)


def _overview(order, infos, rows_by_layer, anchors) -> str:
    head = ("<tr><th>layer</th><th class=\"num\">units</th><th class=\"num\">active fraction</th>"
            "<th class=\"num\">dead units</th><th>method</th><th class=\"num\">labelled</th>"
            "<th class=\"num\">mean score</th><th class=\"num\">median score</th>"
            "<th class=\"num\">distinct labels</th><th class=\"num\">p&lt;0.001</th></tr>")
    body = []
    for n in order:
        info = infos.get(n)
        by_m: dict[str, list] = {}
        for r in rows_by_layer.get(n, []):
            by_m.setdefault(str(r.get("method", "")), []).append(r)
        fr = None if info is None or info.firing is None else np.asarray(plots._to_numpy(info.firing)).ravel()
        base = [f'<td><a href="#{anchors[n]}">{_e(n)}</a></td>',
                _num_td(fmt_num(info.units) if info else "–"),
                _num_td(_fmt_pct(info.active_fraction) if info else "–"),
                _num_td(f"{int((fr <= 0).sum())}" if fr is not None else "–")]
        for m, mrows in (by_m.items() if by_m else [("–", [])]):
            s = _method_summary(mrows) if mrows else None
            cells = [f"<td>{_e(m)}</td>"]
            if s is None:
                cells += ['<td class="num">–</td>'] * 5
            else:
                cells += [_num_td(str(s["n"])), _num_td(fmt_num(s["mean"])), _num_td(fmt_num(s["median"])),
                          _num_td(str(s["distinct"])), _num_td(_fmt_pct(s["sig"]) if s["sig"] is not None else "–")]
            body.append("<tr>" + "".join(base + cells) + "</tr>")
    return (f'<section id="overview"><h2>Layers</h2><div class="tablewrap"><table class="sortable">'
            f'<thead>{head}</thead><tbody>{"".join(body)}</tbody></table></div></section>')


# --------------------------------------------------------------------------------------------------
# Compare report
# --------------------------------------------------------------------------------------------------
@dataclass
class RunSummary:
    """Everything the comparison report shows for one run (one checkpoint)."""

    name: str
    meta: dict  # checkpoint path, model, U, dataset
    accuracy: dict[str, float]  # inference mode -> top-1 accuracy
    sparsity: dict[str, float]  # layer -> measured active fraction
    label_quality: dict[str, float]  # e.g. final-layer label accuracy, planted recovery, mean score
    layer_stats: dict[str, dict[str, float]]  # layer -> {"mean score": ..., "distinct labels": ..., ...}
    stability: dict[str, list[tuple[int, float]]] | None = None  # layer -> [(epoch, label agreement)]
    completeness: dict[str, dict] | None = None  # layer -> completeness curves (see plots.completeness_curves)
    active_counts: np.ndarray | None = None  # per probe image: active units per position in the explained layer


def _metric_rows(runs: Sequence[RunSummary]) -> list[tuple[str, list[tuple[str, list[Any]]]]]:
    """Groups of (metric, value per run), the union of metrics over runs in first-seen order."""

    def union(get: Callable[[RunSummary], Mapping[str, Any]]) -> list[tuple[str, list[Any]]]:
        keys: list[str] = []
        for r in runs:
            for k in get(r) or {}:
                if k not in keys:
                    keys.append(k)
        return [(k, [(get(r) or {}).get(k) for r in runs]) for k in keys]

    groups = [
        ("Accuracy (top-1) per inference mode", union(lambda r: r.accuracy)),
        ("Measured active fraction per layer", union(lambda r: r.sparsity)),
        ("Label quality", union(lambda r: r.label_quality)),
    ]
    layer_keys: list[str] = []
    for r in runs:
        for layer, st in (r.layer_stats or {}).items():
            for s in st:
                if (layer, s) not in layer_keys:
                    layer_keys.append((layer, s))
    groups.append(("Label statistics per layer", [
        (f"{layer} · {s}", [((r.layer_stats or {}).get(layer) or {}).get(s) for r in runs])
        for layer, s in layer_keys]))
    return [(g, items) for g, items in groups if items]


def compare_report(out_dir: str | os.PathLike, runs: Sequence[RunSummary], *, title: str = "Sparse vs dense") -> Path:
    """Write ``out_dir/report.html`` comparing runs side by side (plots also in ``out_dir/plots/``).

    Sections: runs (meta as a table, one column per run); all metrics (accuracy per inference mode,
    measured active fraction per layer, label quality, per-layer label statistics; one column per run,
    plus the difference when there are exactly two); bar charts of those; label stability over training
    when histories exist; completeness curves (Dey et al. 2020) of every run and layer; histograms of
    the number of active neurons per image.
    """
    runs = list(runs)
    if not runs:
        raise UserError("compare needs at least one run; give two checkpoints to compare")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise UserError(f"run names must be unique to compare them, got {names}")
    out_dir = ensure_writable_dir(out_dir)

    figs = _Plots()
    plot_html = []
    if any(r.accuracy for r in runs):
        plot_html.append(_figure(figs.add("accuracy", lambda: plots.bar_compare(
            {r.name: r.accuracy for r in runs}, "Top-1 accuracy per inference mode", "accuracy")),
            "accuracy", "Top-1 accuracy of each run per inference mode."))
    if any(r.sparsity for r in runs):
        plot_html.append(_figure(figs.add("sparsity", lambda: plots.bar_compare(
            {r.name: r.sparsity for r in runs}, "Measured active fraction", "fraction of outputs non-zero")),
            "sparsity", "Measured fraction of non-zero outputs per layer (LWTA with U competitors: about 1/U)."))
    if any(r.label_quality for r in runs):
        plot_html.append(_figure(figs.add("label_quality", lambda: plots.bar_compare(
            {r.name: r.label_quality for r in runs}, "Label quality", "value")),
            "label quality", "Label-quality metrics of each run."))
    mean_scores = {r.name: {layer: st["mean score"] for layer, st in (r.layer_stats or {}).items()
                            if "mean score" in st} for r in runs}
    if any(mean_scores.values()):
        plot_html.append(_figure(figs.add("mean_score", lambda: plots.bar_compare(
            mean_scores, "Mean label score per layer", "mean score")),
            "mean score", "Mean best-label score over the units of each layer."))
    stab = {f"{r.name}/{layer}": pts for r in runs for layer, pts in (r.stability or {}).items() if pts}
    if stab:
        plot_html.append(_figure(figs.add("stability", lambda: plots.label_agreement(stab)),
                                 "label stability", "Label stability over training: fraction of units whose "
                                 "label equals the previous dissection's."))
    comp = {f"{r.name}/{layer}": c for r in runs for layer, c in (r.completeness or {}).items()}
    if comp:
        plot_html.append(_figure(figs.add("completeness", lambda: plots.completeness_curves(comp, split_runs=True)),
                                 "completeness", "Completeness (Dey et al. 2020), runs side by side: variance "
                                 "explained by the top-k PCA directions (solid) vs the top-k neurons (dashed); "
                                 "analyze.py dissect --pca K adds the accuracy after ablating them."))
    counts = {r.name: r.active_counts for r in runs if r.active_counts is not None}
    if counts:
        plot_html.append(_figure(figs.add("active_counts", lambda: plots.active_counts(counts)),
                                 "active neurons per image", "Active neurons per probe image in the explained "
                                 "layer: the units that fire (LWTA winners / non-zero), averaged over the "
                                 "positions of the feature map (C/U for an LWTA layer)."))

    diff = len(runs) == 2
    run_th = "".join(f'<th class="num run">{_e(n)}</th>' for n in names)
    diff_th = f'<th class="num">{_e(names[1])} − {_e(names[0])}</th>' if diff else ""
    ncol = 1 + len(runs) + diff
    body_rows = []
    for group, items in _metric_rows(runs):
        body_rows.append(f'<tr class="group"><th colspan="{ncol}">{_e(group)}</th></tr>')
        for metric, vals in items:
            cells = [f"<td>{_e(metric)}</td>"]
            cells += [_num_td(_e(fmt_num(v)) if v is not None else "–", _as_float(v)) for v in vals]
            if diff:
                a, b = _as_float(vals[0]), _as_float(vals[1])
                d = b - a if a is not None and b is not None else None
                cells.append(_num_td(("+" if d is not None and d > 0 else "") + fmt_num(d) if d is not None
                                     else "–", d))
            body_rows.append("<tr>" + "".join(cells) + "</tr>")
    metrics_html = (f'<section id="metrics"><h2>All metrics</h2><div class="tablewrap full"><table class="metrics">'
                    f'<thead><tr><th>metric</th>{run_th}{diff_th}</tr></thead><tbody>{"".join(body_rows)}'
                    f"</tbody></table></div></section>")

    meta_keys: list[str] = []
    for r in runs:
        for k in r.meta or {}:
            if k not in meta_keys:
                meta_keys.append(k)
    meta_rows = "".join(
        f"<tr><th>{_e(k)}</th>" + "".join(
            f"<td>{_fmt_value((r.meta or {}).get(k)) if k in (r.meta or {}) else '–'}</td>" for r in runs)
        + "</tr>" for k in meta_keys)
    runs_html = (f'<section id="runs"><h2>Runs</h2><div class="tablewrap full"><table class="kv runs">'
                 f'<thead><tr><th></th>{"".join(f"<th>{_e(n)}</th>" for n in names)}</tr></thead>'
                 f"<tbody>{meta_rows}</tbody></table></div></section>")

    body = [runs_html, metrics_html]
    nav = [("runs", "runs"), ("metrics", "metrics")]
    if plot_html:
        body.append(f'<section id="plots"><h2>Plots</h2><div class="plots">{"".join(plot_html)}</div></section>')
        nav.append(("plots", "plots"))
    subtitle = f"{len(runs)} runs: {_e(', '.join(names))} · generated {_now()}"
    return _write_html(out_dir, _page(title, subtitle, nav, body), figs)
