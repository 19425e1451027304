"""The plots of a dissection report: label-score histograms, held-out quality per unit, firing rates,
completeness curves and label drift, each drawn only when the report has its data."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from lwtakit import plots
from lwtakit.evaluation.verdict import DISTRIBUTION_PANELS
from lwtakit.report.formatting import as_float
from lwtakit.report.page import PendingPlots

from .inputs import LayerInfo

Row = Mapping[str, Any]


def heldout_values(rows: Sequence[Row]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """``method -> layer -> metric -> per-unit values`` of the held-out metrics the rows carry."""
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for r in rows:
        for key in DISTRIBUTION_PANELS:
            v = as_float(r.get(key))
            if v is not None and not math.isnan(v):
                layers = out.setdefault(str(r.get("method", "")), {})
                layers.setdefault(str(r.get("layer", "")), {}).setdefault(key, []).append(v)
    return out


def report_plots(rows: Sequence[Row], layers: Sequence[LayerInfo],
                 completeness: Mapping[str, Mapping[str, Any]] | None,
                 drift: Mapping[str, Sequence[tuple[int, float]]] | None) -> PendingPlots:
    """Every plot the report has data for, rendered in memory (:class:`~lwtakit.report.page.PendingPlots`)."""
    figs = PendingPlots()
    if rows:
        figs.add("score_histograms", lambda: plots.score_histograms(rows), "label score histograms",
                 "Distribution of the best label's score per layer and method.")
    heldout = heldout_values(rows)
    if heldout:
        figs.add("heldout", lambda: plots.unit_distributions(heldout, DISTRIBUTION_PANELS),
                 "held-out label quality per unit",
                 "Each unit's label scored on the held-out images, per layer (boxes: quartiles; whiskers: 1.5 IQR; "
                 "white dot: mean). Concepts per unit counts the concepts a unit detects significantly there.")
    firing = {li.name: li.firing for li in layers if li.firing is not None and li.activation}
    if firing:
        figs.add("firing_rates", lambda: plots.firing_rates(firing), "firing rates",
                 "Per-unit firing rates sorted from most to least active; a tail at zero means dead units.", 720)
    if completeness:
        figs.add("completeness", lambda: plots.completeness_curves(completeness), "completeness curves",
                 "Completeness (Dey et al. 2020): variance explained by, and accuracy after ablating, the top-k "
                 "principal components (solid, filled circles) vs the top-k neurons (dashed, hollow squares). Wide "
                 "layers get a log2 k axis, on which k = 0 (nothing ablated) is the separate point left of the "
                 "dotted break.")
    if drift:
        figs.add("label_agreement", lambda: plots.label_agreement(drift), "label agreement",
                 "Fraction of units whose label at the training-time dissection of epoch e equals their label at "
                 "epoch e − 1, so the axis starts at the second dissection.", 720)
    return figs
