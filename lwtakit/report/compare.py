"""The report of ``analyze.py compare``: runs (checkpoints) side by side, one column each."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lwtakit import plots
from lwtakit.errors import UserError
from lwtakit.evaluation.verdict import DISTRIBUTION_PANELS, VERDICT_METRICS
from lwtakit.io import ensure_writable_dir
from lwtakit.labels import SIGNIFICANT_P
from lwtakit.report.formatting import as_float
from lwtakit.report.glossary import EVALUATED, GLOSSARY, explain
from lwtakit.report.page import PendingPlots, write_report

INTERPRETABILITY_NOTE = (
    "Descriptive, per run: each run's INVERT labels are chosen on half of its probe set and scored on the other half "
    "(held-out), with the network dissected as it is evaluated (LWTA: the mean of seeded stochastic passes). Values "
    "are means over the units of one network with 95% bootstrap intervals over those units: they describe that "
    "checkpoint, not its training procedure, and are not tested against each other (the units of one network are "
    "not independent samples). The comparison of arms is the seed-level verdict (verdict.html). F1 binarises a unit "
    "at its top 5% of images; correlation is also how well the label predicts the activation; a significant label "
    f"has held-out p < {SIGNIFICANT_P:g}; concepts per unit counts the concepts a unit detects significantly on the "
    "held-out images (Benjamini-Hochberg, q = 0.05), which grows with the signal-to-noise of the recording.")


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
    # layer -> metric -> (mean, ci_low, ci_high) of the held-out label quality over units, and the per-unit values
    interpretability: dict[str, dict[str, tuple[float, float, float]]] = field(default_factory=dict)
    unit_values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    labels: Any = None  # the run's held-out LabelTable (lwtakit.labels), for compare's per-unit table
    sanity: tuple = ()  # NeuronEval's sanity rows of the verdict's label metrics (lwtakit.evaluation.sanity)


@dataclass
class _Metric:
    name: str
    values: list[Any]  # per run, None where a run lacks the metric
    diff: float | None  # second run minus first, when exactly two runs both have it
    help: str = ""  # hover text: what the metric means (see lwtakit.report.glossary)
    notes: list[str | None] = field(default_factory=list)  # per run, a hover note on its value (e.g. repeated)


def _union(runs: Sequence[RunSummary], get: Callable[[RunSummary], Mapping[str, Any] | None]) -> list[str]:
    """Keys of ``get(run)`` over all runs, in first-seen order."""
    keys: list[str] = []
    for r in runs:
        for k in get(r) or {}:
            if k not in keys:
                keys.append(k)
    return keys


def _metric(name: str, values: list[Any], two: bool, group: str | None = None) -> _Metric:
    a, b = (as_float(values[0]), as_float(values[1])) if two else (None, None)
    return _Metric(name, values, b - a if a is not None and b is not None else None, explain(name, group))


def evaluated_accuracy(run: RunSummary) -> float | None:
    """The accuracy of the function a run is evaluated as: an LWTA run's mc, a dense run's one function."""
    return run.accuracy.get("mc", run.accuracy.get("dense"))


def _accuracy_metrics(runs: Sequence[RunSummary]) -> list[_Metric]:
    """Accuracy rows aligned across runs: first each run as evaluated, then one row per LWTA mode, where a dense run
    (one function, the same in every mode) repeats its accuracy with a note, so every row has a difference."""
    two = len(runs) == 2
    dense_note = "dense network: one function, the same in every mode"
    rows = [_metric(f"{EVALUATED} (LWTA: mc · dense: its one function)", [evaluated_accuracy(r) for r in runs], two)]
    modes = [m for m in ("mc", "sample", "argmax") if any(m in r.accuracy for r in runs)]
    for mode in modes:
        values = [r.accuracy.get(mode, r.accuracy.get("dense")) for r in runs]
        row = _metric(mode, values, two)
        row.notes = [dense_note if mode not in r.accuracy and "dense" in r.accuracy else None for r in runs]
        rows.append(row)
    others = _union(runs, lambda r: {k: v for k, v in r.accuracy.items() if k not in modes and k != "dense"})
    return rows + [_metric(k, [r.accuracy.get(k) for r in runs], two) for k in others]


def _metric_groups(runs: Sequence[RunSummary]) -> list[tuple[str, list[_Metric]]]:
    """Groups of metrics with one value per run, the union of metrics over runs in first-seen order."""
    two = len(runs) == 2

    def group(get: Callable[[RunSummary], Mapping[str, Any] | None], name: str | None = None) -> list[_Metric]:
        return [_metric(k, [(get(r) or {}).get(k) for r in runs], two, name) for k in _union(runs, get)]

    layer_keys: list[tuple[str, str]] = []
    for r in runs:
        for layer, st in (r.layer_stats or {}).items():
            for s in st:
                if (layer, s) not in layer_keys:
                    layer_keys.append((layer, s))
    groups = [
        ("Accuracy (top-1): as evaluated, then per inference mode", _accuracy_metrics(runs)),
        ("Measured active fraction per layer", group(lambda r: r.sparsity, "sparsity")),
        ("Label quality", group(lambda r: r.label_quality)),
        ("Label statistics per layer", [
            _metric(f"{layer} · {s}", [((r.layer_stats or {}).get(layer) or {}).get(s) for r in runs], two)
            for layer, s in layer_keys]),
    ]
    return [(g, items) for g, items in groups if items]


def _plots(runs: Sequence[RunSummary], figs: PendingPlots) -> None:
    """Add the per-run figures to ``figs``."""
    if any(r.accuracy for r in runs):
        errors = {r.name: {m.name.split(" (")[0]: 1 - v for m, v in
                           ((m, as_float(m.values[i])) for m in _accuracy_metrics(runs)) if v is not None}
                  for i, r in enumerate(runs)}
        figs.add("accuracy", lambda: plots.bar_compare(errors, "Test error rate (1 − accuracy), lower is better",
                                                       "error rate"),
                 "error rate", "Test error rate (1 − top-1 accuracy) of each run, as evaluated and per inference "
                 "mode (a dense run repeats its one value), on an axis from 0: accuracies near 1 differ visibly.")
    if any(r.sparsity for r in runs):
        figs.add("sparsity", lambda: plots.bar_compare(
            {r.name: r.sparsity for r in runs}, "Measured active fraction", "fraction of outputs active"),
            "sparsity", "Measured fraction of active outputs per activation layer: LWTA winners, ReLU / GELU outputs "
            "> 0 (LWTA with U competitors: about 1/U).")
    if any(r.label_quality for r in runs):
        figs.add("label_quality", lambda: plots.bar_compare(
            {r.name: r.label_quality for r in runs}, "Label quality", "value"),
            "label quality", "Label-quality metrics of each run.")
    mean_scores = {r.name: {layer: st["mean score"] for layer, st in (r.layer_stats or {}).items()
                            if "mean score" in st} for r in runs}
    if any(mean_scores.values()):
        figs.add("mean_score", lambda: plots.bar_compare(mean_scores, "Mean label score per layer", "mean score"),
                 "mean score", "Mean best-label score over the units of each layer.")
    dist = {r.name: r.unit_values for r in runs if r.unit_values}
    if dist:
        figs.add("distributions", lambda: plots.unit_distributions(dist, DISTRIBUTION_PANELS), "per-unit distributions",
                 "Held-out label quality of every unit, per layer, runs side by side (boxes: quartiles; whiskers: "
                 "1.5 IQR; white dot: mean): the units of one network, descriptive (the seed-level verdict "
                 "averages each run's units to one value).")
    stab = {f"{r.name}/{layer}": pts for r in runs for layer, pts in (r.stability or {}).items() if pts}
    if stab:
        figs.add("stability", lambda: plots.label_agreement(stab, split_runs=True), "label stability",
                 "Label stability over training: the fraction of units whose label at the dissection of epoch e "
                 "equals their label at epoch e − 1 (so the axis starts at the second dissection); one colour per "
                 "layer, one line style per run.", 760)
    comp = {f"{r.name}/{layer}": c for r in runs for layer, c in (r.completeness or {}).items()}
    if comp:
        figs.add("completeness", lambda: plots.completeness_curves(comp, split_runs=True), "completeness",
                 "Completeness (Dey et al. 2020), runs side by side: variance explained by the top-k PCA "
                 "directions (solid) vs the top-k neurons (dashed); analyze.py dissect --pca K adds the accuracy "
                 "after ablating them.")
    counts = {r.name: r.active_counts for r in runs if r.active_counts is not None}
    if counts:
        figs.add("active_counts", lambda: plots.active_counts(counts), "active neurons per image",
                 "Active neurons per probe image in the explained layer: the units that fire (LWTA winners / "
                 "non-zero), averaged over the positions of the feature map (C/U for an LWTA layer).")


def compare_report(out_dir: str | os.PathLike, runs: Sequence[RunSummary], *, title: str = "Sparse vs dense",
                   how: Mapping[str, Any] | None = None, warning: str = "", seed_verdict: Sequence[str] = (),
                   arm_figures: Sequence[Any] = (), verdict_page: bool = False) -> Path:
    """Write ``out_dir/report.html`` comparing runs side by side (plots also in ``out_dir/plots/``).

    Sections: a summary (each run's accuracy as evaluated and mean active fraction; ``seed_verdict``: the
    seed-level verdict's opening lines, :func:`lwtakit.compare.compare` writes the verdict itself beside the
    report); how the report was made (``how``: settings shared by every run); the interpretability table
    (held-out label quality per run and layer, descriptive, with 95% bootstrap intervals over units); runs (meta as a
    table, one column per run); all metrics (accuracy per inference mode,
    measured active fraction per layer, label quality, per-layer label statistics; one column per run,
    plus the difference when there are exactly two; accuracy rows aligned: as evaluated, then per mode); a
    glossary of every metric (each metric's name also carries it as hover text); bar charts of those (accuracy
    as error rate); label stability over training when histories exist; completeness curves (Dey et al. 2020)
    of every run and layer; histograms of the number of active neurons per image; ``arm_figures`` first among the
    plots (:class:`lwtakit.arms_compare.ArmFigure`: the primary endpoint against U, the differences per layer,
    the split-half reliability, the metric against accuracy). A ``warning`` (e.g. that the runs' data differ,
    compared under --force) is the page's first line; ``verdict_page``: a ``verdict.html`` lies beside the report
    (linked from the summary).
    """
    runs = list(runs)
    if not runs:
        raise UserError("compare needs at least one run; give two checkpoints to compare")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise UserError(f"run names must be unique to compare them, got {names}")
    out_dir = ensure_writable_dir(out_dir)

    figs = PendingPlots()
    for f in arm_figures:
        figs.add(f.name, f.make, f.alt, f.caption)
    _plots(runs, figs)
    interp = _interpretability_rows(runs)
    nav = [("summary", "summary"), ("how", "how it was made")]
    nav += [("interpretability", "interpretability")] * bool(interp)
    nav += [("runs", "runs"), ("metrics", "metrics"), ("glossary", "glossary")] + [("plots", "plots")] * bool(
        figs.figures)
    return write_report(out_dir, "compare.html", figs, title=title, nav=nav, names=names,
                        metas=[r.meta or {} for r in runs], meta_keys=_union(runs, lambda r: r.meta),
                        groups=_metric_groups(runs), interpretability=interp,
                        interpretability_note=INTERPRETABILITY_NOTE, how=how or {}, summary=_summary(runs),
                        glossary=_glossary(), explain=explain, warning=warning, seed_verdict=list(seed_verdict),
                        verdict_page=verdict_page)


def _summary(runs: Sequence[RunSummary]) -> list[tuple[str, float | None, float | None]]:
    """Per run: its name, accuracy as evaluated and mean measured active fraction over its activation layers."""
    return [(r.name, evaluated_accuracy(r), float(np.mean(list(r.sparsity.values()))) if r.sparsity else None)
            for r in runs]


def _glossary() -> list[tuple[str, list[tuple[str, str]]]]:
    """The glossary's entries by group, in the order the report shows the metrics."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for name, (group, text) in GLOSSARY.items():
        groups.setdefault(group, []).append((name, text))
    return list(groups.items())


def _interpretability_rows(runs: Sequence[RunSummary]) -> list[tuple[str, str, list]]:
    """``(layer, metric name, [(estimate, low, high) per run or None])`` for every layer and metric any run has."""
    keys = dict.fromkeys((layer, metric) for r in runs for layer, ms in r.interpretability.items() for metric in ms)
    return [(layer, _readable(metric), [r.interpretability.get(layer, {}).get(metric) for r in runs])
            for layer, metric in keys]


def _readable(key: str) -> str:
    """``heldout_f1`` -> ``f1``, ``heldout_f1 median`` -> ``f1 median``: the names the verdicts use."""
    base, _, stat = key.partition(" ")
    return " ".join([VERDICT_METRICS.get(base, base)] + [stat] * bool(stat))
