"""Plots of a comparison over arms of seeded runs (issue 20, items 7 and 8), in the style of :mod:`lwtakit.plots`.

Every figure carries a footnote that says how it was made. The intervals drawn are descriptive, over seeds (the seed
is the unit of analysis): a mean's 95% Student-t interval, and for a difference of arm means the Welch (1947)
interval with the Welch-Satterthwaite degrees of freedom. The tested verdict with its family of tests comes from
``analyze.py verdict`` on ``unit_scores.csv``, not from these plots.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from scipy import stats

from lwtakit.plots import _empty, _new_figure, _short

Interval = tuple[float, float, float]  # (estimate, low, high); low/high NaN with fewer than two seeds


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean of ``values`` with its Student-t interval (``mean ± t_{n-1} · sd / sqrt(n)``)."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean()) if x.size else float("nan")
    if x.size < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return mean, mean - half, mean + half


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Interval:
    """``mean(a) - mean(b)`` with Welch's interval (unequal variances; Welch-Satterthwaite df)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diff = float(x.mean() - y.mean()) if x.size and y.size else float("nan")
    if x.size < 2 or y.size < 2:
        return diff, float("nan"), float("nan")
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = np.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
    half = stats.t.ppf(0.5 + level / 2, df) * se
    return diff, diff - half, diff + half


def _note(fig: Figure, text: str) -> None:
    fig.supxlabel(text, fontsize=6, color="0.35", wrap=True)


def metric_vs_u(points: Mapping[str, tuple[int, Sequence[float]]], metric: str, how: str) -> Figure:
    """The primary metric against U (dense = U=1): ``points[arm] = (U, seed values)``; every seed a point, the arm
    mean with its 95% t-interval over seeds. Arms of one U are set side by side."""
    if not points:
        return _empty(f"{metric}: no arms")
    fig, (ax,) = _new_figure(1, panel=(5.2, 3.4))
    palette = matplotlib.colormaps["tab10"]
    us = sorted({u for u, _ in points.values()})
    slot: dict[int, int] = {}
    for i, (arm, (u, values)) in enumerate(points.items()):
        x = us.index(u) + 0.15 * slot.get(u, 0)
        slot[u] = slot.get(u, 0) + 1
        color = palette(i % 10)
        ax.scatter(np.full(len(values), x) - 0.06, values, s=14, color=color, alpha=0.6)
        mean, lo, hi = t_interval(values)
        err = None if np.isnan(lo) else [[mean - lo], [hi - mean]]
        ax.errorbar([x + 0.06], [mean], yerr=err, fmt="o", color=color, capsize=3, label=f"{arm} (n={len(values)})")
    ax.set_xticks(range(len(us)), [f"U={u}" + (" (dense)" if u == 1 else "") for u in us], fontsize=7)
    ax.set_ylabel(_short(metric.split(" of ")[0], 44), fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{_short(metric, 72)} against U", fontsize=9)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _note(fig, f"{how}; small dots: one seed each; big dot and bar: mean over seeds with its 95% t-interval")
    return fig


def difference_by_layer(diffs: Mapping[str, Mapping[str, Interval]], reference: str, metric: str,
                        how: str) -> Figure:
    """Per layer, each arm's difference from ``reference`` in ``metric`` (``diffs[layer][arm] = (difference, low,
    high)``): the difference of the arms' seed means with its Welch 95% interval."""
    layers = list(diffs)
    arms = list(dict.fromkeys(a for d in diffs.values() for a in d))
    if not layers or not arms:
        return _empty(f"no arm to set against {reference}")
    fig, (ax,) = _new_figure(1, panel=(max(4.6, 1.4 + 1.0 * len(layers)), 3.4))
    palette = matplotlib.colormaps["tab10"]
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        for j, layer in enumerate(layers):
            if arm not in diffs[layer]:
                continue
            d, lo, hi = diffs[layer][arm]
            err = None if np.isnan(lo) else [[d - lo], [hi - d]]
            ax.errorbar([j - 0.4 + width * (i + 0.5)], [d], yerr=err, fmt="o", color=palette(i % 10), capsize=3,
                        label=arm if j == 0 else None)
    ax.axhline(0, color="0.5", linewidth=0.8)
    ax.set_xticks(range(len(layers)), [_short(la, 18) for la in layers], fontsize=7)
    ax.set_ylabel(f"difference from {_short(reference, 20)}", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{_short(metric, 44)}: arm minus {_short(reference, 20)}, per layer", fontsize=9)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _note(fig, f"{how}; seed level: difference of the arms' means over seeds (each seed: mean over its live units) "
               "with the Welch 95% interval; no interval with one seed in an arm")
    return fig


def metric_vs_accuracy(curves: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]], metric: str,
                       how: str) -> Figure:
    """Interpretability against accuracy over training: ``curves[arm][run] = [(val accuracy, metric)]`` per
    dissected epoch; a line per seed (run), a colour per arm."""
    if not any(points for runs in curves.values() for points in runs.values()):
        return _empty("no run with a training history (labels.csv per epoch and logs/metrics.csv)")
    fig, (ax,) = _new_figure(1, panel=(5.2, 3.4))
    palette = matplotlib.colormaps["tab10"]
    for i, (arm, runs) in enumerate(curves.items()):
        for k, points in enumerate(runs.values()):
            if points:
                x, y = zip(*points, strict=True)
                ax.plot(x, y, "-o", markersize=3, linewidth=1, color=palette(i % 10), alpha=0.75,
                        label=arm if k == 0 else None)
    ax.set_xlabel("validation accuracy", fontsize=8)
    ax.set_ylabel(_short(metric.split(" of ")[0], 44), fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.set_title(f"{_short(metric, 60)} against accuracy over training", fontsize=9)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _note(fig, f"{how}; one line per seed, one point per training-time dissection (labels.csv), x its epoch's "
               "validation accuracy (logs/metrics.csv)")
    return fig


def reliability_by_layer(points: Mapping[str, Mapping[str, Sequence[float]]], target: float, how: str) -> Figure:
    """Per layer, each arm's split-half reliability of the recorded activations (``points[arm][layer]``: one value
    per seed, the median over the run's live units), every seed a point, the arm mean with its 95% t-interval; a
    line at ``target``. A dense network's halves agree (1); an LWTA network's mean of passes carries sampling noise."""
    layers = list(dict.fromkeys(la for per_layer in points.values() for la in per_layer))
    if not layers:
        return _empty("no reliability measured")
    fig, (ax,) = _new_figure(1, panel=(max(4.6, 1.4 + 1.0 * len(layers)), 3.4))
    palette = matplotlib.colormaps["tab10"]
    width = 0.8 / max(1, len(points))
    for i, (arm, per_layer) in enumerate(points.items()):
        for j, layer in enumerate(layers):
            values = per_layer.get(layer, [])
            if not values:
                continue
            x = j - 0.4 + width * (i + 0.5)
            ax.scatter(np.full(len(values), x) - 0.04, values, s=12, color=palette(i % 10), alpha=0.6)
            mean, lo, hi = t_interval(values)
            err = None if np.isnan(lo) else [[mean - lo], [hi - mean]]
            ax.errorbar([x + 0.04], [mean], yerr=err, fmt="o", color=palette(i % 10), capsize=3,
                        label=arm if j == 0 else None)
    ax.axhline(target, color="0.5", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(layers)), [_short(la, 18) for la in layers], fontsize=7)
    ax.set_ylabel("split-half reliability (median unit)", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("How much of each recorded activation repeats between passes", fontsize=9)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _note(fig, f"{how}; two recordings of the probe set with half the passes each from independent seeds, Pearson "
               f"r per unit over the evaluation images, Spearman-Brown to the full passes; dashed: {target:g}")
    return fig
