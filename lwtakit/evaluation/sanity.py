"""NeuronEval's missing-labels and extra-labels sanity tests of the label metrics, on the user's own data.

Oikarinen, Yan & Weng, "Evaluating Neuron Explanations: A Unified Framework with Sanity Checks", ICML 2025,
sec. 4. A metric that measures how well a concept explains a unit must give the unit's concept a *lower* score

* when half of the concept's positive images are dropped (missing labels: each positive is kept with
  probability 0.5), and
* when random negatives are made positive so that the expected positive count doubles (extra labels: each
  negative turns positive with probability ``n_c / (N - n_c)``),

because both perturbed concepts describe the unit worse. For each metric and each tested unit this module draws
``repeats`` perturbations of the unit's concept vector (seeded ``torch.Generator``: the same seed gives the same
table), averages the unit's score over them, and counts the unit as a decrease when

    ``(mean perturbed score - original score) / (hi - lo) < -epsilon``,  ``epsilon = 0.001``,

with NeuronEval's normalisation: ``[lo, hi]`` is the metric's range (``[0, 1]``; ``[-1, 1]`` for ``correlation``,
``spearman``, ``cosine``), and for the unbounded ``mad`` and ``wpmi`` the smallest and largest score observed:
over the tested units x all concepts and over every perturbed score of the tested units (NeuronEval also
includes perturbed scores of concepts no unit is labelled with, which are not computed here). A metric passes
when at least 90% of the units decrease in both tests.

Units whose activation is constant on the probe set are left out (nothing to explain). Perturbations are drawn
per concept vector, not per unit: units labelled with the same concept see the same perturbed vector, as in
NeuronEval, and every metric sees the same random stream, so tables for different metrics are comparable.

Cost per metric: one ``[C, K]`` score matrix when the concept is each unit's best (otherwise only for ``mad``
and ``wpmi``), then ``2 x repeats x units`` pair scores (``O(N)`` each; one chunked call per test, each unit
ranked and thresholded once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import UserError
from .metrics import DEFAULT_ALPHA, METRICS, check_alpha, get_metric, score, score_columns, score_pairs

__all__ = ["SanityConfig", "SanityResult", "SanityRow", "extra_labels", "missing_labels", "sanity_check"]


@dataclass(frozen=True)
class SanityConfig:
    """Settings of the sanity tests (NeuronEval's: ``epsilon = 0.001``, pass at 90%)."""

    metrics: tuple[str, ...] = tuple(METRICS)
    alpha: float = DEFAULT_ALPHA
    repeats: int = 10
    seed: int = 0
    epsilon: float = 1e-3
    pass_share: float = 0.9

    def __post_init__(self):
        for name in self.metrics:
            get_metric(name)
        check_alpha(self.alpha)
        if self.repeats < 1:
            raise UserError(f"repeats must be >= 1, got {self.repeats}")


@dataclass(frozen=True)
class SanityRow:
    metric: str
    missing_decrease: float  # share of units whose normalised score drops by more than epsilon
    extra_decrease: float
    passes: bool


@dataclass(frozen=True)
class SanityResult:
    rows: tuple[SanityRow, ...]
    n_units: int
    config: SanityConfig = field(default_factory=SanityConfig)

    def as_dicts(self) -> list[dict]:
        return [{"metric": r.metric, "missing_decrease": r.missing_decrease, "extra_decrease": r.extra_decrease,
                 "passes": r.passes} for r in self.rows]


def missing_labels(cols: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Bool ``[N, D]``: every positive of ``cols`` kept with probability 0.5."""
    return cols & (torch.rand(cols.shape, generator=generator) > 0.5)


def extra_labels(cols: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Bool ``[N, D]``: every negative made positive with probability ``n_c / (N - n_c)`` (all of them when that
    exceeds 1), so the expected positive count doubles."""
    n_pos = cols.sum(0, dtype=torch.float64)
    rate = n_pos / (cols.shape[0] - n_pos).clamp_min(1)
    return cols | (torch.rand(cols.shape, generator=generator, dtype=torch.float64) < rate)


def _perturbed_scores(name, acts, cols, unit_ids, col_of_unit, perturb, config) -> torch.Tensor:
    """``[repeats, U]`` scores of each unit for ``repeats`` perturbations of its concept column, in one call
    (each unit's ranks and threshold computed once for all repeats)."""
    generator = torch.Generator().manual_seed(config.seed)
    stacked = torch.stack([perturb(cols, generator)[:, col_of_unit] for _ in range(config.repeats)], dim=1)
    return score_columns(name, acts[:, unit_ids], stacked, alpha=config.alpha)


def _metric_row(name, acts, cols, unit_ids, col_of_unit, base_matrix, config) -> SanityRow:
    metric = get_metric(name)
    original = score_pairs(name, acts, cols, unit_ids, col_of_unit, alpha=config.alpha)
    missing = _perturbed_scores(name, acts, cols, unit_ids, col_of_unit, missing_labels, config)
    extra = _perturbed_scores(name, acts, cols, unit_ids, col_of_unit, extra_labels, config)
    if metric.bounds is not None:
        lo, hi = metric.bounds
    else:  # NeuronEval: the observed range of the original and perturbed scores
        seen = torch.cat([base_matrix.reshape(-1), original, missing.reshape(-1), extra.reshape(-1)])
        lo, hi = float(seen.min()), float(seen.max())
    span = hi - lo

    def share(perturbed: torch.Tensor) -> float:
        if span <= 0:
            return 0.0
        diff = (perturbed.mean(0) - original) / span
        return float((diff < -config.epsilon).to(torch.float64).mean())

    m, e = share(missing), share(extra)
    return SanityRow(name, m, e, bool(m >= config.pass_share and e >= config.pass_share))


def _tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def _targets(name, a, c, keep, vectors, config):
    """``(cols, col_of_unit, matrix)``: the concept columns tested, the column of each unit, and the score matrix
    of the kept units x all concepts where it is needed (best concept, or the observed range of mad / wpmi)."""
    needs_matrix = vectors is None or get_metric(name).bounds is None
    matrix = score(name, a[:, keep], c, alpha=config.alpha) if needs_matrix else None
    if vectors is not None:
        return vectors, torch.arange(len(keep)), matrix
    best = torch.argmax(torch.nan_to_num(matrix, nan=-torch.inf), dim=1)
    used, col_of_unit = torch.unique(best, return_inverse=True)
    return c[:, used], col_of_unit, matrix


def sanity_check(acts, concepts, config: SanityConfig | None = None, units: Sequence[int] | None = None,
                 label_vectors=None) -> SanityResult:
    """Missing- and extra-labels tests of ``config.metrics`` on activations ``[N, C]`` and binary concepts
    ``[N, K]``.

    Without ``label_vectors`` each unit (all, or ``units``) is tested with its best concept by the metric under
    test (the argmax of that metric's score row, first on ties). With ``label_vectors`` (bool ``[N, U]``, the
    concept vector of each unit's label, e.g. an evaluated formula) and ``units`` (``U`` unit ids), unit
    ``units[i]`` is tested with column ``i`` for every metric. Constant units are left out.
    """
    config = config or SanityConfig()
    a = _tensor(acts).to(torch.float64)
    c = _tensor(concepts)
    if a.dim() != 2 or c.dim() != 2 or c.shape[0] != a.shape[0]:
        raise UserError(f"activations [N, C] and concepts [N, K] need the same N, got {tuple(a.shape)} and "
                        f"{tuple(c.shape)}")
    if c.dtype != torch.bool and not torch.all((c == 0) | (c == 1)):
        raise UserError("concept vectors must be boolean (0/1)")
    c = c.bool()
    ids = torch.arange(a.shape[1]) if units is None else torch.as_tensor(np.asarray(units, dtype=np.int64))
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= a.shape[1]):
        raise UserError(f"unit ids must lie in [0, {a.shape[1]}), got {int(ids.min())}..{int(ids.max())}")
    varies = a[:, ids].amax(0) > a[:, ids].amin(0)
    if not varies.any():
        raise UserError("no tested unit varies on the probe set; the sanity tests need an activation pattern")
    vectors = None
    if label_vectors is not None:
        vectors = _tensor(label_vectors).bool()
        if vectors.shape != (a.shape[0], len(ids)):
            raise UserError(f"label vectors must be [N, U] = [{a.shape[0]}, {len(ids)}] (one column per unit), "
                            f"got {tuple(vectors.shape)}")
        vectors = vectors[:, varies]
    keep = ids[varies]
    rows = []
    for name in config.metrics:
        cols, col_of_unit, matrix = _targets(name, a, c, keep, vectors, config)
        rows.append(_metric_row(name, a, cols, keep, col_of_unit, matrix, config))
    return SanityResult(tuple(rows), len(keep), config)
