"""PNG plots for the dissection and comparison reports (matplotlib, Agg backend, never shown).

Every plotting function returns a :class:`matplotlib.figure.Figure` built with the object API (no
``pyplot`` global state, so figures never leak between calls or threads); :func:`save_png` writes one
atomically and closes it. Inputs are plain dicts / arrays so the functions work on anything the
dissection engine, the callbacks or a user's own script produce.

Completeness curves follow Dey et al., "Neuron explanations sacrifice completeness" (2020):
cumulative explained variance of the top-k principal components vs the top-k neurons (their
"completeness 1"), and top-1 accuracy when the top-k directions of each basis are ablated
("completeness 2").
"""

from __future__ import annotations

import io as _io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from lwtakit.errors import UserError  # noqa: E402
from lwtakit.io import atomic_write  # noqa: E402

__all__ = [
    "score_histograms",
    "completeness_curves",
    "label_agreement",
    "firing_rates",
    "active_counts",
    "bar_compare",
    "unit_distributions",
    "save_png",
    "png_bytes",
    "DPI",
]

DPI = 110
_PANEL_W, _PANEL_H = 4.2, 3.0  # inches per panel


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = max(1, min(max_cols, n))
    return int(math.ceil(n / cols)), cols


def _new_figure(n_panels: int, max_cols: int = 3, panel=(_PANEL_W, _PANEL_H)):
    rows, cols = _grid(max(1, n_panels), max_cols)
    fig = Figure(figsize=(panel[0] * cols, panel[1] * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, list(axes[:max(1, n_panels)])


def _empty(message: str) -> Figure:
    fig = Figure(figsize=(_PANEL_W, 1.2), layout="constrained")
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", color="0.4")
    return fig


def _finite(values: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError) as exc:
        raise UserError(f"{what}: expected numbers, got {type(values).__name__}") from exc
    return arr[np.isfinite(arr)]


def _series(d: Mapping[str, Any], key: str, name: str, n: int | None = None) -> np.ndarray | None:
    if d.get(key) is None:
        return None
    arr = np.asarray(d[key], dtype=np.float64).ravel()
    if n is not None and arr.size != n:
        raise UserError(f"completeness curve {name!r}: {key!r} has {arr.size} values but its k axis has {n}")
    return arr


# --------------------------------------------------------------------------------------------------
def score_histograms(rows: Sequence[Mapping[str, Any]], bins: int | None = None) -> Figure:
    """One histogram of the label ``score`` per (layer, method); NaN / missing scores are skipped.
    ``bins`` defaults to ``2 sqrt(n)`` clipped to [5, 30], so small layers do not look like barcodes."""
    groups: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        key = (str(r.get("layer", "")), str(r.get("method", "")))
        s = r.get("score")
        groups.setdefault(key, [])
        if s is not None and s != "":
            groups[key].append(float(s))
    if not groups:
        return _empty("no label rows")
    fig, axes = _new_figure(len(groups))
    for ax, ((layer, method), scores) in zip(axes, groups.items(), strict=True):
        vals = _finite(scores, f"scores of {layer}/{method}")
        if vals.size:
            nb = bins or int(np.clip(2 * math.sqrt(vals.size), 5, 30))
            ax.hist(vals, bins=nb, color="#4C72B0", edgecolor="white", linewidth=0.4)
            ax.axvline(float(np.median(vals)), color="#C44E52", linestyle="--", linewidth=1,
                       label=f"median {np.median(vals):.3g}")
            ax.legend(fontsize=8, frameon=False)
        else:
            ax.text(0.5, 0.5, "no finite scores", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{layer} · {method} (n={len(scores)})", fontsize=9)
        ax.set_xlabel("score", fontsize=8)
        ax.set_ylabel("units", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("Label scores", fontsize=10)
    return fig


def completeness_curves(curves: Mapping[str, Mapping[str, Any]], split_runs: bool = False) -> Figure:
    """Completeness of the PCA basis vs the neuron basis (Dey et al. 2020, completeness 1 and 2).

    ``curves[name]`` holds ``k``, ``pca_variance`` and ``neuron_variance`` (cumulative fraction of the
    layer's variance explained by the top-k principal components / top-k neurons) and optionally
    ``k_ablation``, ``pca_ablation_acc``, ``neuron_ablation_acc`` (top-1 accuracy after ablating the
    top-k directions of each basis). Panels: variance, and accuracy if any curve has it. Solid = PCA,
    dashed = neurons. With ``split_runs`` names ``"run/layer"`` are split into one column of panels per
    run (runs side by side, shared y axes, the same colour for a layer in every run); otherwise all
    curves share the panels, one colour per name.
    """
    if not curves:
        return _empty("no completeness curves")
    for name, c in curves.items():
        if "k" not in c:
            raise UserError(f"completeness curve {name!r} has no 'k' axis")
    has_abl = any(c.get("pca_ablation_acc") is not None or c.get("neuron_ablation_acc") is not None
                  for c in curves.values())
    groups: dict[str, dict[str, Mapping[str, Any]]] = {}
    if split_runs:
        for name, c in curves.items():
            run, _, layer = name.partition("/")
            groups.setdefault(run, {})[layer or run] = c
    else:
        groups[""] = dict(curves)
    n_rows = 2 if has_abl else 1
    if split_runs:
        fig = Figure(figsize=(4.6 * len(groups), 3.2 * n_rows), layout="constrained")
        axes = fig.subplots(n_rows, len(groups), squeeze=False, sharey="row", sharex="row")
    else:
        fig = Figure(figsize=(5.2 * n_rows, 3.4), layout="constrained")
        axes = fig.subplots(1, n_rows, squeeze=False).T  # [panel, 0]
    palette = matplotlib.colormaps["tab10"]
    layer_names: list[str] = []
    for col, (run, items) in enumerate(groups.items()):
        ax_var, ax_abl = axes[0, col], (axes[1, col] if has_abl else None)
        for name, c in items.items():
            if name not in layer_names:
                layer_names.append(name)
            color = palette(layer_names.index(name) % 10)
            _plot_bases(ax_var, c, name, c["k"], ("pca_variance", "neuron_variance"), color)
            if ax_abl is not None:
                _plot_bases(ax_abl, c, name, c.get("k_ablation", c["k"]), ("pca_ablation_acc", "neuron_ablation_acc"),
                            color)
        prefix = f"{run}\n" if run else ""  # run names can be long: on a line of their own
        ax_var.set_title(f"{prefix}explained variance of top-k directions", fontsize=9)
        ax_var.set_ylim(-0.02, 1.02)
        if ax_abl is not None:
            ax_abl.set_title(f"{prefix}accuracy after ablating top-k", fontsize=9)
        if col == 0 or not split_runs:
            ax_var.set_ylabel("cumulative fraction of variance", fontsize=8)
            if ax_abl is not None:
                ax_abl.set_ylabel("top-1 accuracy", fontsize=8)
    for ax in axes.ravel():
        _finish_k_axis(ax)
    return fig


_ZERO_AT = 0.5  # where k = 0 (nothing ablated) sits on a log2 k axis: one octave left of k = 1
_BASES = (("PCA", "-", "o", None), ("neurons", "--", "s", "none"))  # basis, line style, marker, marker face


def _log_k(k: np.ndarray) -> bool:
    """A log2 k axis when k reaches past 64 (wide layers), else a linear one."""
    return k.size > 0 and float(np.nanmax(k)) > 64


def _plot_bases(ax, curve: Mapping[str, Any], name: str, k, keys: tuple[str, str], color) -> None:
    """The PCA (solid, filled circles) and neuron (dashed, hollow squares) series ``keys`` of one curve against
    ``k``; on a log2 axis k = 0 (the unablated model) is drawn at :data:`_ZERO_AT` as a separate point, not joined
    to the line."""
    k = np.asarray(k, dtype=np.float64).ravel()
    log = _log_k(k)
    marker_size = 4 if k.size <= 40 else 0
    for basis, style, marker, face in _BASES:
        y = _series(curve, keys[0] if basis == "PCA" else keys[1], name, k.size)
        if y is None:
            continue
        line = k > 0 if log else np.ones(k.size, bool)
        face_kw = {} if face is None else {"markerfacecolor": face}
        ax.plot(k[line], y[line], style, color=color, marker=marker, markersize=marker_size, label=f"{name} {basis}",
                **face_kw)
        if log and (~line).any():
            ax.plot(np.full(int((~line).sum()), _ZERO_AT), y[~line], linestyle="none", color=color, marker=marker,
                    markersize=5, **face_kw)


def _finish_k_axis(ax) -> None:
    """Axis labels, grid and legend; a log2 k axis when k reaches past 64, with k = 0 (when drawn) as its own tick
    left of a dotted break."""
    ax.set_xlabel("k (directions)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    lines = [line for line in ax.get_lines() if len(line.get_xdata())]
    if not lines:
        return
    ax.legend(fontsize=7, frameon=False)
    xs = np.concatenate([np.asarray(line.get_xdata(), dtype=np.float64) for line in lines])
    if not _log_k(xs):
        return
    ax.set_xscale("log", base=2)
    if (xs == _ZERO_AT).any():
        ax.axvline(_ZERO_AT * 2 ** 0.5, color="0.5", linestyle=":", linewidth=0.8)
        ticks = [t for t in ax.get_xticks() if 1 <= t <= xs.max()]
        ax.set_xticks([_ZERO_AT, *ticks], ["0", *[f"{t:g}" for t in ticks]])
        ax.set_xlim(_ZERO_AT / 1.4, xs.max() * 1.4)


def label_agreement(agreement: Mapping[str, Sequence[tuple[int, float]]], split_runs: bool = False) -> Figure:
    """Label stability over training: per series, the fraction of units whose label at the dissection of epoch e
    equals their label at the previous dissection (e - 1), at each e. With ``split_runs`` names ``"run/layer"``
    get one colour per layer and one line style (and marker) per run; otherwise one colour per name. The legend
    sits outside the axes, so it never covers a line."""
    series = {k: v for k, v in agreement.items() if v}
    if not series:
        return _empty("no label history (fewer than two dissections)")
    fig = Figure(figsize=(7.6, 3.4), layout="constrained")
    ax = fig.add_subplot()
    palette = matplotlib.colormaps["tab10"]
    styles = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))
    colours: dict[str, int] = {}
    runs: dict[str, int] = {}
    for name, pts in series.items():
        run, _, layer = name.partition("/") if split_runs else ("", "", name)
        colour = colours.setdefault(layer or run, len(colours))
        style, marker = styles[runs.setdefault(run, len(runs)) % len(styles)]
        pts = sorted((float(e), float(f)) for e, f in pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle=style, marker=marker, markersize=3.5,
                color=palette(colour % 10), label=f"{layer} · {run}" if split_runs else name)
    ax.set_ylim(-0.02, 1.05)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch e (labels at e compared with labels at e − 1)", fontsize=8)
    ax.set_ylabel("units with unchanged label", fontsize=8)
    ax.set_title("Label agreement with the previous dissection", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def firing_rates(firing: Mapping[str, Any], dead_below: float = 0.0) -> Figure:
    """Per layer, per-unit firing (LWTA: win) rates sorted in decreasing order against the unit's
    relative rank, so layers of different widths share an axis; units at or below ``dead_below`` are
    counted as dead in the legend."""
    if not firing:
        return _empty("no firing rates")
    fig = Figure(figsize=(6.4, 3.4), layout="constrained")
    ax = fig.add_subplot()
    for name, rates in firing.items():
        r = np.sort(_finite(_to_numpy(rates), f"firing rates of {name}"))[::-1]
        if r.size == 0:
            continue
        x = (np.arange(r.size) + 0.5) / r.size
        dead = int((r <= dead_below).sum())
        ax.plot(x, r, linewidth=1.3, label=f"{name} ({r.size} units, {dead} dead)")
    ax.set_xlabel("unit rank (fraction of layer)", fontsize=8)
    ax.set_ylabel("firing rate", fontsize=8)
    ax.set_title("Per-unit firing rates, sorted", fontsize=9)
    ax.set_ylim(bottom=0)
    ax.set_xlim(0, 1)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize=7, frameon=False)
    return fig


def active_counts(counts: Mapping[str, Any]) -> Figure:
    """Per run, histogram over probe images of their active (winning / non-zero) units per position, on
    shared bins so runs are comparable."""
    data = {k: _finite(_to_numpy(v), f"active counts of {k}") for k, v in counts.items() if v is not None}
    data = {k: v for k, v in data.items() if v.size}
    if not data:
        return _empty("no active-neuron counts")
    lo = min(float(v.min()) for v in data.values())
    hi = max(float(v.max()) for v in data.values())
    if hi - lo < 1:
        edges = np.array([lo - 0.5, lo + 0.5])
    elif hi - lo <= 60 and all(np.allclose(v, np.round(v)) for v in data.values()):
        edges = np.arange(math.floor(lo), math.ceil(hi) + 2) - 0.5  # one bin per integer count
    else:
        edges = np.linspace(lo, hi, 41)
    fig = Figure(figsize=(6.4, 3.4), layout="constrained")
    ax = fig.add_subplot()
    palette = matplotlib.colormaps["tab10"]
    for i, (name, v) in enumerate(data.items()):
        color = palette(i % 10)
        ax.hist(v, bins=edges, histtype="stepfilled", alpha=0.3, color=color,
                label=f"{name} (median {np.median(v):.3g})")
        ax.hist(v, bins=edges, histtype="step", linewidth=1.3, color=color)
    ax.set_xlabel("active units per position", fontsize=8)
    ax.set_ylabel("images", fontsize=8)
    ax.set_title("Active neurons per image", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False)
    return fig


def bar_compare(values: Mapping[str, Mapping[str, float]], title: str, ylabel: str) -> Figure:
    """Grouped bars: one group per metric, one bar per run (``values[run][metric]``); missing or NaN
    values leave a gap. Bars are annotated with their value (3 significant digits)."""
    runs = list(values)
    metrics: list[str] = []
    for r in runs:
        for m in values[r]:
            if m not in metrics:
                metrics.append(m)
    if not runs or not metrics:
        return _empty(f"{title}: no values")
    width = 0.8 / len(runs)
    horizontal = len(metrics) > 8  # many groups (e.g. every layer): one row each, readable at page width
    if horizontal:
        fig = Figure(figsize=(6.4, 1.0 + 0.2 * len(metrics) * len(runs)), layout="constrained")
    else:
        fig = Figure(figsize=(max(4.5, 1.0 + 0.55 * len(metrics) * len(runs)), 3.4), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(metrics), dtype=np.float64)
    for i, run in enumerate(runs):
        ys = np.array([_float_or_nan(values[run].get(m)) for m in metrics])
        pos = x - 0.4 + width * (i + 0.5)
        ok = np.isfinite(ys)
        draw = ax.barh if horizontal else ax.bar
        bars = draw(pos[ok], ys[ok], width * 0.92, label=run)
        ax.bar_label(bars, labels=[f"{y:.3g}" for y in ys[ok]], fontsize=6, padding=1)
    labels = [_short(m) for m in metrics]
    if horizontal:
        ax.set_yticks(x, labels, fontsize=7)
        ax.invert_yaxis()  # first metric on top
        ax.set_xlabel(ylabel, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.margins(x=0.12)
        ax.grid(axis="x", alpha=0.3)
    else:
        ax.set_xticks(x, labels, fontsize=7, rotation=30 if len(metrics) > 3 else 0,
                      ha="right" if len(metrics) > 3 else "center")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.margins(y=0.12)
        ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def unit_distributions(values: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]],
                       metrics: Mapping[str, str]) -> Figure:
    """Per-unit distributions side by side: one panel per metric (``metrics``: key -> title), one group of
    boxes per layer and one box per run within it (``values[run][layer][metric]`` = one value per unit).
    Boxes span the quartiles, whiskers 1.5 IQR, the white dot is the mean; runs lacking a layer leave a gap."""
    runs = list(values)
    layers = list(dict.fromkeys(layer for r in runs for layer in values[r]))
    panels = [(k, t) for k, t in metrics.items() if any(k in values[r].get(la, {}) for r in runs for la in layers)]
    if not panels:
        return _empty("no per-unit values")
    fig, axes = _new_figure(len(panels), max_cols=2, panel=(max(_PANEL_W, 1.2 + 0.9 * len(layers) * len(runs)),
                                                             _PANEL_H))
    palette = matplotlib.colormaps["tab10"]
    width = 0.8 / len(runs)
    for ax, (key, title) in zip(axes, panels, strict=True):
        for i, run in enumerate(runs):
            pos, data = [], []
            for j, layer in enumerate(layers):
                v = _finite(values[run].get(layer, {}).get(key, []), f"{run}/{layer}/{key}")
                if v.size:
                    pos.append(j - 0.4 + width * (i + 0.5))
                    data.append(v)
            if not data:
                continue
            color = palette(i % 10)
            ax.boxplot(data, positions=pos, widths=width * 0.85, patch_artist=True, showfliers=False,
                       showmeans=True, boxprops={"facecolor": color, "alpha": 0.45, "edgecolor": color},
                       medianprops={"color": color}, whiskerprops={"color": color}, capprops={"color": color},
                       meanprops={"marker": "o", "markerfacecolor": "white", "markeredgecolor": color,
                                  "markersize": 4})
            ax.plot([], [], color=color, linewidth=6, alpha=0.45, label=run)  # legend entry per run
        ax.set_xticks(range(len(layers)), [_short(la, 18) for la in layers], fontsize=7,
                      rotation=20 if len(layers) > 2 else 0, ha="right" if len(layers) > 2 else "center")
        ax.set_xlim(-0.6, len(layers) - 0.4)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7, frameon=False)
    return fig


# --------------------------------------------------------------------------------------------------
def png_bytes(fig: Figure, dpi: int = DPI) -> bytes:
    """Render ``fig`` to PNG bytes (the figure is left open)."""
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()


def save_png(fig: Figure, path: str | os.PathLike, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically (never a half-written file) and close it."""
    path = Path(path)
    try:
        data = png_bytes(fig, dpi=dpi)
        with atomic_write(path, "wb") as fh:
            fh.write(data)
    finally:
        _close(fig)
    return path


def _close(fig: Figure) -> None:
    # Figures built with the object API are not registered with pyplot; one a caller made with pyplot
    # is, so close it there too (a no-op otherwise) to stop figures accumulating.
    import matplotlib.pyplot as plt

    plt.close(fig)
    fig.clear()


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _float_or_nan(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _short(s: str, n: int = 28) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"
