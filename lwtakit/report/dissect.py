"""The report of ``analyze.py dissect``: every labelled unit of every layer, with plots and image cards."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lwtakit import plots
from lwtakit.evaluation.verdict import DISTRIBUTION_PANELS, VERDICT_METRICS
from lwtakit.io import ensure_writable_dir
from lwtakit.labels import INTERPRETABLE_IOU, SIGNIFICANT_P, Interpretable, interpretable_units, pca_pole
from lwtakit.report.formatting import as_float, slug
from lwtakit.report.glossary import evaluation_glossary, explain_evaluation
from lwtakit.report.images import data_uri, image_grid, png_width
from lwtakit.report.page import PendingPlots, write_report

Row = Mapping[str, Any]


@dataclass
class LayerInfo:
    """What the report shows for one layer besides its label rows."""

    name: str
    units: int
    active_fraction: float | None = None  # measured: fraction of non-zero outputs over the probe set
    firing: np.ndarray | None = None  # [C] per-unit firing (LWTA: win) rate
    top_images: dict[int, Any] = field(default_factory=dict)  # unit -> [k, 3, H, W] top-activating images
    activation: bool = True  # an activation layer (LWTA, ReLU, GELU); False: linear, where activity means nothing


@dataclass
class HeldOut:
    """The held-out assessment a dissection report shows: how the probe set was split (``split``), per (layer,
    method) the means over units of each of :data:`~lwtakit.evaluation.verdict.VERDICT_METRICS` (``means``,
    from :meth:`lwtakit.labels.LabelTable.summaries`) and the NeuronEval sanity tests of the metrics on the
    evaluation images (``sanity``: :class:`lwtakit.evaluation.sanity.SanityRow`)."""

    split: str
    means: dict[tuple[str, str], dict[str, float]]
    sanity: Sequence[Any] = ()


HELDOUT_NOTE = ("Means over the labelled units; a significant label has held-out p < 0.001; concepts per unit counts "
                "the concepts a unit detects significantly on the held-out images (Benjamini-Hochberg): fewer is "
                "more focused.")
WEAK_P_NOTE = ("† marks a label whose p-value is above {threshold:g}, the threshold a label must pass to count as "
               "significant in this report: with hundreds of units and concepts tested, such a label can be chance; "
               "read it as a hint, not a finding.")
SANITY_NOTE = ("NeuronEval's sanity tests (Oikarinen et al. 2025) on the held-out images with each unit's INVERT "
               "label: the share of units whose score drops, after one perturbation per unit (NeuronEval's "
               "protocol), when half of the label's positive images are removed (missing labels) and when random "
               "positives double them (extra labels). A metric passes at 90% or "
               "more on both; only a passing metric can show that a unit answers to one concept and not more.")

# per-unit held-out columns of the units table, and the header they get
_UNIT_HELDOUT = {"heldout_f1": "F1", "heldout_correlation": "corr", "concepts": "concepts"}


@dataclass
class _Method:
    """One labelling method's rows in one layer."""

    name: str
    rows: list[Row]  # every row, in order: the overview counts these
    by_unit: dict[tuple, Row]  # unit key -> its (last) row: the layer section shows these
    show_auc: bool  # an AUC column, when some AUC differs from the score
    show_p: bool  # a p-value column, when some row has one
    heldout: list[tuple[str, str]]  # (key, header) of the held-out columns some row has
    overview: dict[str, Any]  # _method_summary of ``rows``
    summary: dict[str, Any]  # _method_summary of ``by_unit``
    interpretable: Interpretable | None  # NetDissect's interpretable units of ``rows`` (IoU labels only)


@dataclass
class _UnitRow:
    unit: Any  # as shown: an int, or the unit's name when it is not one
    sort: float | None
    firing: float  # NaN where the layer has no rate for this unit
    labels: list[tuple[_Method, Row | None]]  # per method, None where it did not label this unit
    has_card: bool


@dataclass
class _Card:
    unit: Any
    k: int  # number of images
    width: int  # card width in pixels: its image row, at least room for the labels
    uri: str
    firing: float | None
    labels: list[tuple[_Method, Row]]


@dataclass
class _Layer:
    name: str
    anchor: str
    info: LayerInfo | None
    firing: np.ndarray | None
    methods: list[_Method]
    units: list[_UnitRow]
    cards: list[_Card]
    pole: str  # "+" / "-" for a "<layer>#pca+" / "<layer>#pca-" pseudo-layer (principal directions), else ""
    dead: int | None = None  # units that never fire
    median_firing: float | None = None
    note: str = ""  # a pole of directions: what directions are, and the labels they find that no unit gets

    @property
    def is_pca(self) -> bool:
        return bool(self.pole)

    @property
    def unit_word(self) -> str:
        return "component" if self.is_pca else "unit"


def _unit_key(u: Any) -> tuple[int, Any]:
    # Units sort numerically, names (e.g. attention heads) after them.
    try:
        return (0, int(u))
    except (TypeError, ValueError):
        return (1, str(u))


def _method_summary(rows: Sequence[Row]) -> dict[str, Any]:
    """Labelled units, mean / median finite score, distinct labels, share with p < 0.001 (None without p-values)."""
    scores = np.array([v for v in (as_float(r.get("score")) for r in rows) if v is not None], dtype=float)
    scores = scores[np.isfinite(scores)]
    ps = [p for p in (as_float(r.get("p_value")) for r in rows) if p is not None and not math.isnan(p)]
    return {
        "n": len(rows),
        "mean": float(scores.mean()) if scores.size else float("nan"),
        "median": float(np.median(scores)) if scores.size else float("nan"),
        "distinct": len({str(r.get("label", "")) for r in rows}),
        "sig": (sum(p < 1e-3 for p in ps) / len(ps)) if ps else None,
    }


def _interpretable(method: str, rows: Sequence[Row]) -> Interpretable | None:
    """Network Dissection's headline numbers (Bau et al. 2017) of an IoU method's rows: units whose label has IoU
    above :data:`~lwtakit.labels.INTERPRETABLE_IOU` and the concepts they cover; None for other methods."""
    if method != "iou":
        return None
    return interpretable_units([(str(r.get("label", "")), as_float(r.get("iou"))) for r in rows])


def _methods(rows: Sequence[Row]) -> list[_Method]:
    grouped: dict[str, list[Row]] = {}
    for r in rows:
        grouped.setdefault(str(r.get("method", "")), []).append(r)
    out = []
    for name, mrows in grouped.items():
        by_unit = {_unit_key(r.get("unit")): r for r in mrows}
        shown = list(by_unit.values())
        out.append(_Method(
            name, mrows, by_unit,
            show_auc=any(as_float(r.get("auc")) is not None and as_float(r.get("auc")) != as_float(r.get("score"))
                         for r in shown),
            show_p=any(as_float(r.get("p_value")) is not None for r in shown),
            heldout=[(k, h) for k, h in _UNIT_HELDOUT.items() if any(as_float(r.get(k)) is not None for r in shown)],
            overview=_method_summary(mrows), summary=_method_summary(shown),
            interpretable=_interpretable(name, mrows)))
    return out


def _cards(top: Mapping[Any, Any], methods: Sequence[_Method], firing: np.ndarray | None) -> list[_Card]:
    cards = []
    for u, imgs in top.items():
        labels = [(m, r) for m in methods if (r := m.by_unit.get(_unit_key(u))) is not None]
        k = int(np.shape(plots._to_numpy(imgs))[0]) if np.ndim(plots._to_numpy(imgs)) else 0
        rate = None
        if firing is not None and isinstance(u, (int, np.integer)) and 0 <= u < firing.size:
            rate = float(firing[u])
        png = image_grid(imgs)
        # Card as wide as its image row (at least room for the labels), so images keep their size.
        cards.append(_Card(u, k, max(300, png_width(png)) + 22, data_uri(png), rate, labels))
    return cards


def _layer(name: str, info: LayerInfo | None, rows: Sequence[Row], anchor: str) -> _Layer:
    """Everything the overview row and the section of one layer show."""
    methods = _methods(rows)
    linear = info is not None and not info.activation  # every output non-zero: no firing to show
    firing = None if linear or info is None or info.firing is None else np.asarray(
        plots._to_numpy(info.firing)).ravel()
    top = {} if info is None else {_unit_key(u)[1]: v for u, v in (info.top_images or {}).items()}
    keys = {k for m in methods for k in m.by_unit} | {_unit_key(u) for u in top}
    if not keys and firing is not None:
        keys = {(0, i) for i in range(firing.size)}
    units = []
    for is_name, u in sorted(keys):
        numeric = is_name == 0
        rate = float(firing[u]) if firing is not None and numeric and 0 <= u < firing.size else float("nan")
        units.append(_UnitRow(u, float(u) if numeric else None, rate,
                              [(m, m.by_unit.get((is_name, u))) for m in methods], u in top))
    pole = pca_pole(name)
    layer = _Layer(name, anchor, info, firing, methods, units, _cards(top, methods, firing),
                   "" if pole is None else name[-1])
    if firing is not None:
        layer.dead = int((firing <= 0).sum())
        if firing.size:
            layer.median_firing = float(np.median(firing))
    return layer


def _heldout_values(rows: Sequence[Row]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """``method -> layer -> metric -> per-unit values`` of the held-out metrics the rows carry."""
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for r in rows:
        for key in DISTRIBUTION_PANELS:
            v = as_float(r.get(key))
            if v is not None and not math.isnan(v):
                layers = out.setdefault(str(r.get("method", "")), {})
                layers.setdefault(str(r.get("layer", "")), {}).setdefault(key, []).append(v)
    return out


def _plots(rows: Sequence[Row], layers: Sequence[LayerInfo], completeness: Mapping[str, Mapping[str, Any]] | None,
           drift: Mapping[str, Sequence[tuple[int, float]]] | None) -> PendingPlots:
    figs = PendingPlots()
    if rows:
        figs.add("score_histograms", lambda: plots.score_histograms(rows), "label score histograms",
                 "Distribution of the best label's score per layer and method.")
    heldout = _heldout_values(rows)
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


def _credible(row: Row) -> bool:
    """A label worth reporting as found: INVERT's p < SIGNIFICANT_P, IoU above NetDissect's detector threshold;
    rows of other methods as they are."""
    p, iou = as_float(row.get("p_value")), as_float(row.get("iou"))
    return (p is None or p < SIGNIFICANT_P) and (iou is None or iou > INTERPRETABLE_IOU)


def _only_directions(rows: Sequence[Row], unit_rows: Sequence[Row]) -> list[tuple[str, list[str]]]:
    """Per method, the credible labels (:func:`_credible`) of these direction rows that no unit of the layer has as
    a credible label from the same method: what directions find and single units miss (Dey et al. 2020)."""
    unit_labels: dict[str, set[str]] = {}
    for r in unit_rows:
        if _credible(r):
            unit_labels.setdefault(str(r.get("method", "")), set()).add(str(r.get("label", "")))
    found: dict[str, set[str]] = {}
    for r in rows:
        method, label = str(r.get("method", "")), str(r.get("label", ""))
        if label and _credible(r) and label not in unit_labels.get(method, set()):
            found.setdefault(method, set()).add(label)
    return [(method, sorted(labels)) for method, labels in found.items()]


def _directions_note(base: str, pole: str, rows: Sequence[Row], unit_rows: Sequence[Row]) -> str:
    """The text above a pole of principal directions: what they are, and :func:`_only_directions`."""
    side = "the projection" if pole == "+" else "the projection negated"
    found = "; ".join(f"{method}: {', '.join(labels)}" for method, labels in _only_directions(rows, unit_rows))
    found = (f"Labels these directions find that no unit of {base} gets from the same method (INVERT: p < "
             f"{SIGNIFICANT_P:g}; IoU > {INTERPRETABLE_IOU:g}): {found}." if found else
             "Every credible label here is also some unit's label.")
    return (f"Principal directions of {base} (Dey et al. 2020): the eigenvectors of the covariance of its output "
            "vectors over the probe images (a conv layer's channel vector at every spatial position), by decreasing "
            "variance. Each direction has two "
            f"poles, labelled separately: this section is the {pole} pole, whose images score highest on {side}. "
            f"A direction mixes units, so it can detect what no single unit does. {found}")


@dataclass
class Sections:
    """What a dissection report shows besides its label rows and layers, each left out when None: the run's
    ``meta`` (model, probe, settings), the ``evaluation`` summary (name -> value), the ``heldout`` assessment,
    ``completeness`` curves per layer (see :func:`lwtakit.plots.completeness_curves`) and the label ``drift`` of
    the run's training-time dissections (name -> [(epoch, agreement)])."""

    meta: Mapping[str, Any] | None = None
    evaluation: Mapping[str, Any] | None = None
    heldout: HeldOut | None = None
    completeness: Mapping[str, Mapping[str, Any]] | None = None
    drift: Mapping[str, Sequence[tuple[int, float]]] | None = None


def dissection_report(out_dir: str | os.PathLike, *, title: str, rows: Sequence[Mapping[str, Any]],
                      layers: Sequence[LayerInfo], sections: Sections | None = None) -> Path:
    """Write ``out_dir/report.html`` (plots also as ``out_dir/plots/*.png``) and return its path.

    Sections (:class:`Sections`): meta (how the report was made); evaluation summary; the held-out assessment
    (:class:`HeldOut`: means per layer and method, the metrics' sanity tests); layer overview (units, measured
    active fraction and dead units, n/a for a linear layer; per method mean score / distinct labels / share
    significant); plots (label-score histograms, sorted firing rates, PCA-vs-neuron completeness after Dey et al.
    2020, label drift over training); then one section per layer: a sortable table of every labelled unit (label
    and score per method, INVERT Mann-Whitney p-value, marked † above :data:`~lwtakit.labels.SIGNIFICANT_P`)
    and, for the units given in ``LayerInfo.top_images``, a card with the unit's labels next to its top-activating
    images. Layers present only in ``rows`` get a section too. A pole of principal directions (``"<layer>#pca+"`` /
    ``"-"``) says what directions are and lists the labels they find that no unit of the layer gets.
    """
    out_dir = ensure_writable_dir(out_dir)
    rows, sec = list(rows), sections or Sections()
    infos = {li.name: li for li in layers}
    rows_by_layer: dict[str, list[Row]] = {}
    for r in rows:
        rows_by_layer.setdefault(str(r.get("layer", "")), []).append(r)
    order = list(infos) + [n for n in rows_by_layer if n not in infos]
    used: set[str] = {"meta", "evaluation", "heldout", "overview", "plots"}
    anchors = {n: slug("layer-" + n, used) for n in order}

    figs = _plots(rows, layers, sec.completeness, sec.drift)
    views = [_layer(n, infos.get(n), rows_by_layer.get(n, []), anchors[n]) for n in order]
    for view in views:
        if (pole := pca_pole(view.name)) is not None:
            view.note = _directions_note(pole[0], view.pole, rows_by_layer.get(view.name, []),
                                         rows_by_layer.get(pole[0], []))
    nav = [("meta", "how it was made")] * bool(sec.meta) + [("evaluation", "evaluation")] * bool(sec.evaluation)
    nav += [("heldout", "held-out")] * bool(sec.heldout)
    nav += [("overview", "layers")] + [("plots", "plots")] * bool(figs.figures)
    nav += [(v.anchor, v.name) for v in views]
    return write_report(out_dir, "dissect.html", figs, title=title, nav=nav, meta=sec.meta,
                        evaluation=sec.evaluation, explain_evaluation=explain_evaluation,
                        evaluation_glossary=evaluation_glossary(sec.evaluation or {}), heldout=sec.heldout,
                        heldout_columns=VERDICT_METRICS,
                        heldout_note=HELDOUT_NOTE, sanity_note=SANITY_NOTE, layers=views,
                        interpretable_iou=INTERPRETABLE_IOU, weak_p=SIGNIFICANT_P,
                        weak_p_note=WEAK_P_NOTE.format(threshold=SIGNIFICANT_P),
                        show_interpretable=any(m.interpretable is not None for v in views for m in v.methods),
                        n_units=len({(str(r.get("layer")), str(r.get("unit"))) for r in rows}),
                        methods=sorted({str(r.get("method", "")) for r in rows}))
