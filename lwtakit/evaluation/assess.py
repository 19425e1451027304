"""Held-out assessment of a dissection's labels: what every reported label-quality number is computed on.

Labels are chosen on the explanation part of the probe set (:mod:`~lwtakit.evaluation.split`); here each unit's
label is scored on the disjoint evaluation part, so a label that won among ~2K candidates by chance is not
rewarded for it (selection bias). Per unit, added to its row's ``extra``:

* ``heldout_<metric>`` for each metric of :class:`HeldOutOptions` (NeuronEval's metrics, default F1, AUPRC and
  Pearson correlation: the three the framework's verdicts use, which pass the missing- and extra-labels tests in
  the paper's settings; ``analyze.py sanity`` checks them on your data);
* ``heldout_p``: one-sided Mann-Whitney p-value of the label on the evaluation part;
  (``heldout_correlation``, the Pearson correlation of the activation with the label's concept vector, is also
  how well the label predicts the activation: the "simulation" score of Oikarinen & Weng 2024);
* ``concepts``: how many concepts the unit detects significantly on the evaluation part (one-sided correlation
  test per concept, Benjamini-Hochberg at ``q`` over the unit's concepts): signal-to-noise as much as
  polysemanticity, kept for comparison with earlier reports;
* ``concepts_stepwise``, ``heldout_f1_matched``, ``heldout_kappa_matched``, ``label_frequency`` and, with the
  units' split-half ``reliability``, ``heldout_correlation_disattenuated``: the verdict metrics of
  :mod:`.unit_metrics` (polysemanticity free of signal-to-noise, label quality free of the label's frequency,
  correlation free of mc noise);
* ``dead``: 1 for a unit constant on the evaluation part, which has none of the values above (it explains
  nothing: a dead unit is not "monosemantic"), else 0.

A label that is not a concept of the probe's annotations (a CLIP-Dissect word from another concept set, a caption)
has no held-out scores: it cannot be evaluated on concept labels the probe does not have.
"""

from __future__ import annotations

import torch

from ..labels import HELDOUT_P, HELDOUT_PREFIX, LabelRow
from .heldout import concepts_per_unit, heldout_scores, label_vectors_for, simulation
from .metrics import parse_metrics
from .options import HeldOutOptions
from .polysemanticity import concept_counts
from .reliability import dead_units, disattenuate
from .unit_metrics import CORRELATION_DISATTENUATED, RELIABILITY, matched_scores


def assess(rows: list[LabelRow], acts_eval: torch.Tensor, concepts_eval: torch.Tensor, names: list[str],
           options: HeldOutOptions, reliability: torch.Tensor | None = None) -> None:
    """Add the held-out values (module docstring) to the ``extra`` of ``rows``: the rows of one target, any
    methods; ``acts_eval [N_e, C]`` its activations and ``concepts_eval [N_e, K]`` the concept labels of the
    evaluation images; ``reliability [C]``: the units' split-half reliability on them, if measured."""
    concepts_eval = torch.as_tensor(concepts_eval).bool()
    dead = dead_units(acts_eval)
    counts = concepts_per_unit(acts_eval, concepts_eval, q=options.q)
    stepwise = concept_counts(acts_eval, concepts_eval)
    by_method: dict[str, list[LabelRow]] = {}
    for r in rows:
        by_method.setdefault(r.method, []).append(r)
    C = acts_eval.shape[1]
    for method_rows in by_method.values():
        vectors, labelled = label_vectors_for(method_rows, concepts_eval, names, n_units=C, skip_unknown=True)
        labelled = labelled & ~dead
        values = heldout_scores(acts_eval, vectors, parse_metrics(",".join(options.metrics)), options.alpha,
                                labelled=labelled)
        values = {f"{HELDOUT_PREFIX}{k}" if k != "p_value" else HELDOUT_P: v for k, v in values.items()}
        values.update(_verdict_values(acts_eval, vectors, labelled, reliability))
        for r in method_rows:
            r.extra["dead"] = int(dead[r.unit])
            if bool(dead[r.unit]):
                continue
            r.extra["concepts"] = int(counts[r.unit])
            r.extra["concepts_stepwise"] = int(stepwise[r.unit])
            if bool(labelled[r.unit]):
                r.extra.update({k: float(v[r.unit]) for k, v in values.items()})


def _verdict_values(acts_eval, vectors, labelled, reliability) -> dict[str, torch.Tensor]:
    """The label metrics of :mod:`.unit_metrics` (matched F1 and kappa, label frequency; with a reliability, the
    disattenuated correlation and the reliability itself)."""
    out = matched_scores(acts_eval, vectors, labelled)
    if reliability is not None:
        rel = torch.as_tensor(reliability, dtype=torch.float64)
        out[RELIABILITY] = rel
        out[CORRELATION_DISATTENUATED] = disattenuate(simulation(acts_eval, vectors, labelled), rel)
    return out
