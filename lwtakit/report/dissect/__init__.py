"""The report of ``analyze.py dissect``: every labelled unit of every layer, with plots and image cards.

:mod:`.inputs` (what the report is given: :class:`LayerInfo`, :class:`Sections`, :class:`HeldOut`),
:mod:`.layers` (per layer: methods, units, cards), :mod:`.figures` (the plots), :mod:`.directions` (the text above
a pole of principal directions), :mod:`.notes` (the sentences above tables); :func:`dissection_report` puts them
on the page (``templates/dissect.html``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lwtakit.evaluation.verdict import VERDICT_METRICS
from lwtakit.io import ensure_writable_dir
from lwtakit.labels import INTERPRETABLE_IOU, SIGNIFICANT_P, LabelRow, LabelTable, pca_pole
from lwtakit.report.formatting import slug
from lwtakit.report.glossary import evaluation_glossary, explain_evaluation
from lwtakit.report.page import write_report

from .directions import directions_note
from .figures import report_plots
from .inputs import HeldOut, LayerInfo, Sections
from .layers import Labelled, layer_view
from .notes import HELDOUT_NOTE, SANITY_NOTE, WEAK_P_NOTE

__all__ = ["HeldOut", "LayerInfo", "Sections", "dissection_report"]


def _labelled(rows: LabelTable | Sequence[Mapping[str, Any]]) -> list[Labelled]:
    """Each row as a record (what the page prints) beside its typed row (what the table summarises)."""
    if isinstance(rows, LabelTable):
        return [(row.record(), row) for row in rows]
    return [(r, LabelRow.from_record(r)) for r in rows]


def dissection_report(out_dir: str | os.PathLike, *, title: str, rows: LabelTable | Sequence[Mapping[str, Any]],
                      layers: Sequence[LayerInfo], sections: Sections | None = None) -> Path:
    """Write ``out_dir/report.html`` (plots also as ``out_dir/plots/*.png``) and return its path.

    ``rows``: the dissection's :class:`~lwtakit.labels.LabelTable`, or its records (e.g. read from labels.csv).
    Sections (:class:`Sections`): meta (how the report was made); evaluation summary; the held-out assessment
    (:class:`HeldOut`: means per layer and method, the metrics' sanity tests); layer overview (units, measured
    active fraction and dead units, n/a for a linear layer; per method the table's summary: mean score / distinct
    labels / share significant, NetDissect's interpretable units where rows carry an IoU); plots (label-score
    histograms, sorted firing rates, PCA-vs-neuron completeness after Dey et al. 2020, label drift over training);
    then one section per layer: a sortable table of every labelled unit (label and score per method, p-value where
    a method has one, marked † above :data:`~lwtakit.labels.SIGNIFICANT_P`) and, for the units given in
    ``LayerInfo.top_images``, a card with the unit's labels next to its top-activating images. Layers present
    only in ``rows`` get a section too. A pole of principal directions (``"<layer>#pca+"`` / ``"-"``) says what
    directions are and lists the labels they find that no unit of the layer gets.
    """
    out_dir = ensure_writable_dir(out_dir)
    labelled, sec = _labelled(rows), sections or Sections()
    records = [r for r, _ in labelled]
    infos = {li.name: li for li in layers}
    by_layer: dict[str, list[Labelled]] = {}
    for pair in labelled:
        by_layer.setdefault(pair[1].layer, []).append(pair)
    order = list(infos) + [n for n in by_layer if n not in infos]
    used: set[str] = {"meta", "evaluation", "heldout", "overview", "plots"}
    anchors = {n: slug("layer-" + n, used) for n in order}

    figs = report_plots(records, layers, sec.completeness, sec.drift)
    views = [layer_view(n, infos.get(n), by_layer.get(n, []), anchors[n]) for n in order]
    for view in views:
        if (pole := pca_pole(view.name)) is not None:
            view.note = directions_note(pole[0], view.pole, [r for r, _ in by_layer.get(view.name, [])],
                                        [r for r, _ in by_layer.get(pole[0], [])])
    nav = [("meta", "how it was made")] * bool(sec.meta) + [("evaluation", "evaluation")] * bool(sec.evaluation)
    nav += [("heldout", "held-out")] * bool(sec.heldout)
    nav += [("overview", "layers")] + [("plots", "plots")] * bool(figs.figures)
    nav += [(v.anchor, v.name) for v in views]
    return write_report(out_dir, "dissect.html", figs, title=title, nav=nav, meta=sec.meta,
                        evaluation=sec.evaluation, explain_evaluation=explain_evaluation,
                        evaluation_glossary=evaluation_glossary(sec.evaluation or {}), heldout=sec.heldout,
                        heldout_columns=VERDICT_METRICS,
                        heldout_note=HELDOUT_NOTE, sanity_note=SANITY_NOTE, layers=views,
                        interpretable_iou=INTERPRETABLE_IOU, weak_p=SIGNIFICANT_P, weak_p_note=WEAK_P_NOTE,
                        show_interpretable=any(m.overview.interpretable is not None for v in views for m in v.methods),
                        n_units=len({(r.layer, r.unit) for _, r in labelled}),
                        methods=sorted({r.method for _, r in labelled}))
