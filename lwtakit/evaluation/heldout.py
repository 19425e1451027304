"""Held-out label quality, simulation and polysemanticity of units (issue 8, items 4 and 5).

Every function here takes the *evaluation* part of the probe set (:mod:`.split`): activations ``[N, C]``
and, per unit, its label's binary concept vector on those images (``[N, C]``, column ``i`` for unit ``i``;
:func:`label_vectors_for` builds it from label rows). The label was chosen on the other part, so the scores
and p-values are free of the selection bias of scoring the best of many candidates on the images it was
picked on (Oikarinen, Yan & Weng, ICML 2025, "Evaluating Neuron Explanations").

A unit without a label (no row, an empty label) has a column of NaN in a float label matrix, or is
``False`` in the ``labelled`` mask; its scores and p-value are NaN, so that statistics over units
(:mod:`.verdict`) drop it rather than count it as a failure or a success.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from scipy import special

from ..errors import UserError
from .label_vectors import label_vectors
from .metrics import DEFAULT_ALPHA, check_alpha, get_metric, score, score_columns
from .ranks import mann_whitney_pvalues, mwu_logp, rank_data

__all__ = ["bh_adjust", "concept_pvalues", "concepts_per_unit", "heldout_pvalues", "heldout_scores",
           "label_vectors_for", "simulation"]

_BUDGET = 1 << 24  # float64 values per working array when ranking units


# ------------------------------------------------------------------------------------------- inputs
def _acts(acts) -> torch.Tensor:
    a = torch.as_tensor(acts if isinstance(acts, torch.Tensor) else np.asarray(acts)).to(torch.float64)
    if a.dim() != 2:
        raise UserError(f"activations must be [N, C], got shape {tuple(a.shape)}")
    if a.shape[0] < 2:
        raise UserError(f"the evaluation part holds {a.shape[0]} images; held-out scores need at least 2")
    if not torch.isfinite(a).all():
        raise UserError("activations contain NaN or inf")
    return a


def _label_columns(label_vectors, a: torch.Tensor, labelled=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(vectors bool [N, C], labelled bool [C])`` from a bool / 0-1 matrix (with an optional mask) or a float
    matrix whose all-NaN columns are the units without a label."""
    v = torch.as_tensor(label_vectors if isinstance(label_vectors, torch.Tensor) else np.asarray(label_vectors))
    v = v.to(a.device)
    if v.shape != a.shape:
        raise UserError(f"label vectors must be [N, C] like the activations {tuple(a.shape)}, got {tuple(v.shape)}")
    mask = torch.ones(v.shape[1], dtype=torch.bool, device=a.device)
    if v.is_floating_point():
        nan = torch.isnan(v)
        missing = nan.all(0)
        if (nan.any(0) & ~missing).any():
            raise UserError("a label vector is NaN on some images only; a unit without a label is a column of NaN")
        mask &= ~missing
        v = torch.where(nan, torch.zeros_like(v), v)
    if v.dtype != torch.bool and not torch.all((v == 0) | (v == 1)):
        raise UserError("label vectors must be boolean (0/1), or NaN for a unit without a label")
    if labelled is not None:
        given = labelled if isinstance(labelled, torch.Tensor) else torch.from_numpy(np.asarray(labelled, dtype=bool))
        given = given.to(a.device).bool()
        if given.shape != mask.shape:
            raise UserError(f"the labelled mask must have one entry per unit ({mask.shape[0]}), "
                            f"got shape {tuple(given.shape)}")
        mask &= given
    return v.bool(), mask


def _scatter(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Values of the labelled units back into a ``[C]`` vector, NaN for the others."""
    out = torch.full(mask.shape, float("nan"), dtype=torch.float64, device=mask.device)
    out[mask] = values.to(torch.float64)
    return out


# ------------------------------------------------------------------------------------------- held-out scores
def heldout_pvalues(acts_eval, label_vectors_eval, labelled=None) -> torch.Tensor:
    """One-sided Mann-Whitney U p-value ``[C]`` that unit ``i``'s activation is higher on the images where its
    label holds than where it does not, on the evaluation images: INVERT's significance test (Bykov et al.,
    NeurIPS 2023, sec. 3) of each unit with its own label. Tie-averaged ranks from
    :func:`~lwtakit.evaluation.ranks.rank_data`, ``U = sum_{c = 1} rank - n_c (n_c + 1) / 2``, normal approximation
    with tie and continuity corrections (``scipy.stats.mannwhitneyu(..., alternative="greater",
    method="asymptotic")``). NaN for an unlabelled unit, a constant unit, or a label true on all or none of the
    evaluation images."""
    a = _acts(acts_eval)
    v, mask = _label_columns(label_vectors_eval, a, labelled)
    N, C = a.shape
    U = torch.zeros(C, dtype=torch.float64, device=a.device)
    ties = torch.zeros(C, dtype=torch.float64, device=a.device)
    L = v.to(torch.float64)
    step = max(1, _BUDGET // max(N, 1))
    for lo in range(0, C, step):
        ranks, tie = rank_data(a[:, lo:lo + step])
        n_pos = L[:, lo:lo + step].sum(0)
        U[lo:lo + step] = (ranks * L[:, lo:lo + step]).sum(0) - n_pos * (n_pos + 1) / 2
        ties[lo:lo + step] = tie
    n_pos = L.sum(0)
    p = mwu_logp(U, n_pos, N - n_pos, ties, "greater").exp()
    return torch.where(mask, p, torch.full_like(p, float("nan")))


def heldout_scores(acts_eval, label_vectors_eval, metrics: Sequence[str], alpha: float = DEFAULT_ALPHA,
                   labelled=None) -> dict[str, torch.Tensor]:
    """Each unit's label scored on the evaluation images: ``{metric: [C] float64}`` for every NeuronEval metric
    named in ``metrics`` (:mod:`.metrics`; unit ``i`` against label column ``i``, as
    :func:`~lwtakit.evaluation.metrics.score_columns`), plus ``"p_value"``: :func:`heldout_pvalues`. ``alpha``:
    the top fraction a unit is binarised at. NaN for units without a label."""
    check_alpha(alpha)
    for name in metrics:
        get_metric(name)
    a = _acts(acts_eval)
    v, mask = _label_columns(label_vectors_eval, a, labelled)
    out = {name: _scatter(score_columns(name, a[:, mask], v[:, mask], alpha), mask) for name in metrics}
    out["p_value"] = heldout_pvalues(a, v, mask)
    return out


def simulation(acts_eval, label_vectors_eval, labelled=None) -> torch.Tensor:
    """How well each unit's label predicts its activation on the evaluation images: Pearson's r ``[C]`` of the
    activation with the label's binary concept vector. This is the correlation score of simulating a neuron
    from its explanation (Oikarinen & Weng, "Linear Explanations for Individual Neurons", ICML 2024, sec. 4:
    a simulated activation that is the concept's presence, scored by correlation with the real one). NaN where
    r is undefined: a constant unit, a label true on all or none of the images, or no label (the metric
    ``correlation`` scores these 0)."""
    a = _acts(acts_eval)
    v, mask = _label_columns(label_vectors_eval, a, labelled)
    r = _scatter(score_columns("correlation", a[:, mask], v[:, mask]), mask)
    n_pos = v.sum(0)
    defined = (a.amax(0) > a.amin(0)) & (n_pos > 0) & (n_pos < a.shape[0])
    return torch.where(defined, r, torch.full_like(r, float("nan")))


# ------------------------------------------------------------------------------------------- polysemanticity
def bh_adjust(pvalues) -> torch.Tensor:
    """Benjamini-Hochberg adjusted p-values along the last axis (Benjamini & Hochberg 1995): with the ``m``
    finite p-values of a row sorted ``p_(1) <= ... <= p_(m)``, ``p~_(i) = min_{j >= i} min(m p_(j) / j, 1)``; a
    row's concepts with ``p~ <= q`` are its discoveries at false discovery rate ``q``. NaN entries are no test:
    they stay NaN and do not count in ``m``."""
    p = torch.as_tensor(pvalues if isinstance(pvalues, torch.Tensor) else np.asarray(pvalues)).to(torch.float64)
    tested = ~torch.isnan(p)
    m = tested.sum(-1, keepdim=True).to(torch.float64)
    ordered, order = torch.sort(torch.where(tested, p, torch.full_like(p, float("inf"))), dim=-1)
    rank = torch.arange(1, p.shape[-1] + 1, dtype=torch.float64, device=p.device)
    scaled = torch.where(torch.isinf(ordered), ordered, ordered * m / rank)  # untested stay +inf, after the rest
    adjusted = scaled.flip(-1).cummin(-1).values.flip(-1).clamp_max(1.0)
    out = torch.empty_like(adjusted).scatter_(-1, order, adjusted)
    return torch.where(tested, out, torch.full_like(out, float("nan")))


def concept_pvalues(acts_eval, concepts_eval, metric: str = "correlation") -> torch.Tensor:
    """One-sided p-values ``[C, K]`` that unit ``i`` detects concept ``j`` (responds more where it is present):

    * ``metric="correlation"``: the t-test of Pearson's ``r > 0``, ``t = r sqrt((N - 2) / (1 - r^2))`` with
      ``N - 2`` degrees of freedom (Student 1908; Fisher 1915). For a binary concept, r is the point-biserial
      correlation and this test is exactly the pooled two-sample t-test of the activation between images with
      and without the concept; it uses the metric the sanity tests rank first (NeuronEval, Table 2).
    * ``metric="inverse_auc"``: the Mann-Whitney U test behind INVERT's AUC
      (:func:`~lwtakit.evaluation.ranks.mann_whitney_pvalues`): no normality assumption, for heavy-tailed or
      mostly-zero activations.

    NaN (no test) where a unit is constant or a concept is present on all or none of the images.
    """
    a = _acts(acts_eval)
    c = torch.as_tensor(concepts_eval if isinstance(concepts_eval, torch.Tensor) else np.asarray(concepts_eval))
    if metric == "inverse_auc":
        return mann_whitney_pvalues(a, c.to(a.device), alternative="greater")
    if metric != "correlation":
        raise UserError(f"concepts per unit counts significant concepts by correlation or inverse_auc, got {metric!r}")
    r = score("correlation", a, c)
    N = a.shape[0]
    df = N - 2
    if df < 1:
        return torch.full_like(r, float("nan"))
    t = r * torch.sqrt(df / (1 - r * r).clamp_min(0))  # r = 1 -> inf -> p = 0
    p = torch.from_numpy(special.stdtr(df, -t.cpu().numpy())).to(a.device)
    n_pos = c.to(torch.float64).sum(0).to(a.device)
    defined = (a.amax(0) > a.amin(0)).unsqueeze(1) & ((n_pos > 0) & (n_pos < N)).unsqueeze(0)
    return torch.where(defined, p, torch.full_like(p, float("nan")))


def concepts_per_unit(acts_eval, concepts_eval, q: float = 0.05, metric: str = "correlation") -> torch.Tensor:
    """Polysemanticity: how many of the K concepts each unit detects significantly on the evaluation images,
    ``[C]`` int64. A one-sided test per (unit, concept) (:func:`concept_pvalues`), Benjamini-Hochberg adjusted
    over each unit's K tests (:func:`bh_adjust`): the false discovery rate is controlled *per unit* at ``q``
    (among the concepts counted for a unit, the expected share of wrongly counted ones is at most ``q``), so a
    unit's count does not depend on how many other units the layer has. Concepts with adjusted ``p <= q`` are
    counted. Significance grows with N: compare counts measured on probe sets of the same size."""
    if not 0 < q < 1:
        raise UserError(f"the false discovery rate q must be in (0, 1), got {q}")
    adjusted = bh_adjust(concept_pvalues(acts_eval, concepts_eval, metric))
    return (adjusted <= q).sum(1)


# ------------------------------------------------------------------------------------------- label vectors
def label_vectors_for(rows: Iterable, concept_labels, names: Sequence[str], n_units: int | None = None,
                      skip_unknown: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Label rows (:class:`~lwtakit.labels.LabelRow` of one layer and method) evaluated on concept labels
    ``[N, K]`` (e.g. the evaluation part): ``(vectors bool [N, R], labelled bool [R])``, column ``r`` for
    ``rows[r]``. With ``n_units``, columns are units instead (``[N, n_units]``, column ``row.unit``; units
    without a row are unlabelled; a unit may have one row only).

    A row whose labeler kept the label as a formula (:meth:`~lwtakit.labels.LabelRow.concept_formula`: INVERT's)
    is evaluated by the formula; another row's ``label`` must be one
    of ``names`` or ``NOT`` one (:func:`~lwtakit.evaluation.label_vectors.label_vectors`); an empty label is
    unlabelled. ``skip_unknown``: a label that is not a concept name (a CLIP-Dissect label from another concept
    set, a caption) leaves its unit unlabelled instead of raising :class:`UserError`.
    """
    rows = list(rows)
    concepts = torch.as_tensor(concept_labels if isinstance(concept_labels, torch.Tensor)
                               else np.asarray(concept_labels)).bool()
    names = [str(n) for n in names]
    if concepts.dim() != 2 or concepts.shape[1] != len(names):
        raise UserError(f"concept labels must be [N, K] with one column per concept name ({len(names)}), "
                        f"got {tuple(concepts.shape)}")
    N = concepts.shape[0]
    columns = list(range(len(rows))) if n_units is None else [int(row.unit) for row in rows]
    width = len(rows) if n_units is None else n_units
    if n_units is not None and (len(set(columns)) < len(columns) or any(not 0 <= u < n_units for u in columns)):
        raise UserError(f"label rows must name distinct units in [0, {n_units}); select one layer and one method")
    vectors = torch.zeros(N, width, dtype=torch.bool)
    labelled = torch.zeros(width, dtype=torch.bool)
    for col, row in zip(columns, rows, strict=True):
        vector = _row_vector(row, concepts, names, skip_unknown)
        if vector is not None:
            vectors[:, col], labelled[col] = vector, True
    return vectors, labelled


def _row_vector(row, concepts: torch.Tensor, names: list[str], skip_unknown: bool) -> torch.Tensor | None:
    formula = row.concept_formula()
    if formula is not None:
        if list(formula.names) != names:
            raise UserError(f"unit {row.unit}'s formula {formula} was built on other concept names than the "
                            "concept labels given; pass the concept names the labels were found with")
        return formula.evaluate(concepts)
    if not row.label:
        return None
    try:
        return label_vectors([row.label], concepts, names)[:, 0]
    except UserError:
        if skip_unknown:
            return None
        raise
