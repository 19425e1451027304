"""Per-unit metrics a verdict can rest on, their names in one place, and rows for the tidy unit table (issue 20).

Every value is computed on the evaluation part of the probe split, for one layer, unit by unit:

* ``heldout_f1_matched``: F1 of the unit's label with the unit binarised at its top ``f`` fraction of images,
  ``f`` the label's frequency on these images. With ``n_A = n_c`` it equals precision and recall there, i.e.
  R-precision (Manning, Raghavan & Schuetze, "Introduction to Information Retrieval", 2008, sec. 8.4): a perfect
  unit scores 1 whatever ``f``, where F1 at a fixed ``alpha = 0.05`` is capped at ``2 alpha / (alpha + f)``
  (0.22 for ``f = 0.4``). ``f`` is the label's own base rate, not fitted to the unit's activations, so taking it
  on the evaluation images adds no selection bias; taking it on the explanation images instead would cap a rare
  label by the binomial difference of its frequency between the halves (about 0.9 for ``f = 0.05`` on 500
  images).
* ``heldout_kappa_matched``: Cohen's kappa (Cohen 1960) of the same binarisation against the label,
  ``(p_o - p_e) / (1 - p_e)``; with ``n_A = n_c`` it is ``(R-precision - f) / (1 - f)``: 1 for a perfect unit and
  0 for a random one at every frequency (F1 matched is ``f`` at chance, so arms whose labels differ in frequency
  would differ at chance). **The verdict's label-quality metric.**
* ``heldout_correlation`` (attenuated by the mc noise) and ``heldout_correlation_disattenuated`` =
  r / sqrt(unit's split-half reliability) (:mod:`.reliability`; Spearman 1904): **the verdict's** correlation,
  computed only where the reliability was measured (a dense network's is measured too, and is 1).
* ``concepts_stepwise``: concepts the unit encodes (:mod:`.polysemanticity`): **the verdict's**
  polysemanticity.
* ``label_frequency``: the label's frequency (histogram data per arm: :func:`frequency_histogram`);
  ``reliability``: the unit's split-half reliability; ``dead``: 1 for a unit constant on the images.

Dropped from the verdict: ``heldout_f1`` and ``heldout_auprc`` at fixed alpha (capped by the label's frequency;
and AUPRC ranks units as F1 does, Spearman 0.98 on the golden runs: at matched alpha it is
``R^2 + (1 - R) f`` of the R-precision ``R``, a function of F1 matched for a given frequency, so it adds
nothing; F1 is kept because its matched form is the R-precision read above). Dead units have no value in any
metric (NaN; left out of every statistic) and are counted by ``dead``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import UserError
from .heldout import _acts, _label_columns, simulation
from .metrics import _Units
from .polysemanticity import PolysemanticityOptions, concept_counts
from .reliability import dead_units, disattenuate

__all__ = ["CONCEPTS", "CORRELATION", "CORRELATION_DISATTENUATED", "DEAD", "DROPPED_METRICS", "F1_MATCHED",
           "KAPPA_MATCHED", "LABEL_FREQUENCY", "RELIABILITY", "SANITY_TESTED_AS", "UNIT_METRICS", "VERDICT_METRICS",
           "frequency_histogram", "layer_unit_metrics", "matched_alpha", "matched_sanity_scorer", "matched_scores",
           "tidy_rows"]

F1_MATCHED = "heldout_f1_matched"
KAPPA_MATCHED = "heldout_kappa_matched"
CORRELATION = "heldout_correlation"
CORRELATION_DISATTENUATED = "heldout_correlation_disattenuated"
CONCEPTS = "concepts_stepwise"
LABEL_FREQUENCY = "label_frequency"
RELIABILITY = "reliability"
DEAD = "dead"

UNIT_METRICS = {
    F1_MATCHED: "held-out F1 at the label's frequency (R-precision)",
    KAPPA_MATCHED: "held-out Cohen's kappa at the label's frequency",
    CORRELATION: "held-out correlation",
    CORRELATION_DISATTENUATED: "held-out correlation corrected for mc noise",
    CONCEPTS: "concepts per unit (stepwise)",
    LABEL_FREQUENCY: "label frequency",
    RELIABILITY: "split-half reliability",
    DEAD: "dead unit",
}
VERDICT_METRICS = (KAPPA_MATCHED, CORRELATION_DISATTENUATED, CONCEPTS)
"""What a verdict compares: label quality free of the frequency ceiling, correlation free of mc noise, and
polysemanticity free of signal-to-noise."""
DROPPED_METRICS = {
    "heldout_f1": "capped by the label's frequency at a fixed alpha; replaced by heldout_kappa_matched",
    "heldout_auprc": "ranks units as F1 does (Spearman 0.98); at matched alpha a function of F1 for a given "
                     "frequency",
    "concepts": "counts significant correlations: grows with passes and images (signal-to-noise, not "
                "polysemanticity); replaced by concepts_stepwise",
}
SANITY_TESTED_AS = {KAPPA_MATCHED: KAPPA_MATCHED, CORRELATION_DISATTENUATED: "correlation",
                    CORRELATION: "correlation", CONCEPTS: None}
"""The sanity test each verdict metric must pass on every arm: kappa matched by :func:`matched_sanity_scorer`
(through :func:`~lwtakit.evaluation.sanity.scorer_row`), the correlation (and the disattenuated one: a fixed
positive factor per unit changes no sign of a score change) as NeuronEval's ``correlation``, and
``concepts_stepwise`` none: it scores no label, the planted-unit tests validate it."""


def matched_alpha(vectors: torch.Tensor) -> torch.Tensor:
    """Per column of bool ``[N, U]``, the alpha at which NeuronEval's rule ``k = ceil(alpha N)`` binarises exactly
    ``n_c`` images (``(n_c - 1/2) / N``: exact in floating point, where ``n_c / N`` may round up to ``n_c + 1``);
    NaN for a label true on none or all images (no frequency to match)."""
    N = vectors.shape[0]
    n_c = vectors.to(torch.float64).sum(0)
    alpha = (n_c - 0.5) / N
    return torch.where((n_c > 0) & (n_c < N), alpha, torch.full_like(alpha, math.nan))


def _matched(a: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f1, kappa)`` of units ``a [N, U]`` binarised at per-unit ``alpha`` against labels ``v [N, U]``."""
    N = a.shape[0]
    A = _Units(a, alpha).active
    c = v.to(torch.float64)
    tp, n_a, n_c = (A * c).sum(0), A.sum(0), c.sum(0)
    f1 = 2 * tp / (n_a + n_c).clamp_min(1)
    p_o = (N - n_a - n_c + 2 * tp) / N
    p_e = (n_a * n_c + (N - n_a) * (N - n_c)) / N ** 2
    kappa = (p_o - p_e) / (1 - p_e).clamp_min(1e-12)
    return f1, kappa


def matched_scores(acts_eval, label_vectors_eval, labelled=None) -> dict[str, torch.Tensor]:
    """``{F1_MATCHED, KAPPA_MATCHED, LABEL_FREQUENCY: [C] float64}`` (module docstring); NaN for a unit without a
    label, a dead unit, or a label true on none or all of the images."""
    a = _acts(acts_eval)
    v, mask = _label_columns(label_vectors_eval, a, labelled)
    alpha = matched_alpha(v)
    ok = mask & ~dead_units(a) & ~torch.isnan(alpha)
    out = {name: torch.full((a.shape[1],), math.nan, dtype=torch.float64) for name in (F1_MATCHED, KAPPA_MATCHED)}
    if ok.any():
        f1, kappa = _matched(a[:, ok], v[:, ok], alpha[ok])
        out[F1_MATCHED][ok], out[KAPPA_MATCHED][ok] = f1, kappa
    freq = v.to(torch.float64).mean(0)
    out[LABEL_FREQUENCY] = torch.where(mask, freq, torch.full_like(freq, math.nan))
    return out


def matched_sanity_scorer(which: str = KAPPA_MATCHED):
    """A scorer for :func:`~lwtakit.evaluation.sanity.scorer_row`: F1 or kappa matched, the threshold of each unit
    fixed at its *original* label's frequency (a perturbed label must not move it)."""
    if which not in (F1_MATCHED, KAPPA_MATCHED):
        raise UserError(f"matched sanity scorer is for {F1_MATCHED} or {KAPPA_MATCHED}, got {which!r}")

    def scorer(a: torch.Tensor, cols: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        f1, kappa = _matched(a, cols, matched_alpha(reference).nan_to_num(0.5))
        return f1 if which == F1_MATCHED else kappa

    return scorer


def layer_unit_metrics(acts_eval, concepts_eval, label_vectors_eval, labelled=None, reliability=None,
                       options: PolysemanticityOptions | None = None) -> dict[str, torch.Tensor]:
    """Every per-unit value of the module docstring for one layer, ``{name: [C] float64}``, dead units NaN in
    all but ``dead``. ``reliability [C]``: the units' split-half reliability (:mod:`.reliability`); without it
    the reliability and the disattenuated correlation are left out (never assumed to be 1)."""
    a = _acts(acts_eval)
    dead = dead_units(a)
    out = matched_scores(a, label_vectors_eval, labelled)
    out[CORRELATION] = simulation(a, label_vectors_eval, labelled)
    out[CONCEPTS] = concept_counts(a, concepts_eval, options)
    if reliability is not None:
        rel = torch.as_tensor(np.asarray(reliability) if not isinstance(reliability, torch.Tensor) else reliability)
        if rel.shape != (a.shape[1],):
            raise UserError(f"reliability must have one value per unit ({a.shape[1]}), got shape {tuple(rel.shape)}")
        out[RELIABILITY] = rel.to(torch.float64)
        out[CORRELATION_DISATTENUATED] = disattenuate(out[CORRELATION], out[RELIABILITY])
    for name, values in out.items():
        out[name] = torch.where(dead, torch.full_like(values, math.nan), values)
    out[DEAD] = dead.to(torch.float64)
    return out


def frequency_histogram(frequencies, bins: int = 10) -> list[dict]:
    """Histogram data of label frequencies on ``[0, 1]`` (``bins`` equal bins, NaN dropped): one
    ``{"low", "high", "units"}`` per bin, for a per-arm plot of how frequent the concepts its units were given
    are (the chance level of F1 matched is the frequency)."""
    x = np.asarray(torch.as_tensor(frequencies).cpu(), dtype=np.float64).reshape(-1)
    counts, edges = np.histogram(x[~np.isnan(x)], bins=bins, range=(0.0, 1.0))
    return [{"low": float(edges[i]), "high": float(edges[i + 1]), "units": int(counts[i])} for i in range(bins)]


def tidy_rows(values: dict[str, torch.Tensor], *, arm: str, seed, run: str, layer: str) -> list[dict]:
    """Rows ``arm, seed, run, layer, unit, metric, value`` of the tidy unit table from
    :func:`layer_unit_metrics`: one per unit and metric with a value (NaN rows are left out: an absent row is a
    unit without a value), ``dead`` for every unit (its sum is the layer's dead count)."""
    rows = []
    for name, tensor in values.items():
        for unit, value in enumerate(tensor.tolist()):
            if not math.isnan(value):
                rows.append({"arm": arm, "seed": seed, "run": run, "layer": layer, "unit": unit, "metric": name,
                             "value": value})
    return rows
