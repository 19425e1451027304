"""NeuronEval's missing-labels and extra-labels sanity tests of the label metrics, on the user's own data.

Oikarinen, Yan & Weng, "Evaluating Neuron Explanations: A Unified Framework with Sanity Checks", ICML 2025,
sec. 4. A metric that measures how well a concept explains a unit must give the unit's concept a *lower* score

* when half of the concept's positive images are dropped (missing labels: each positive is kept with
  probability 0.5), and
* when random negatives are made positive so that the expected positive count doubles (extra labels: each
  negative turns positive with probability ``n_c / (N - n_c)``),

because both perturbed concepts describe the unit worse. For each metric and each tested unit this module draws
perturbations of the unit's concept vector (seeded ``torch.Generator``: the same seed gives the same table) and
counts the unit as a decrease when

    ``(perturbed score - original score) / (hi - lo) < -epsilon``,  ``epsilon = 0.001``.

``protocol="neuroneval"`` (the default) is NeuronEval's: ONE perturbation per unit and test. ``"averaged"`` is a
different, gentler test kept under its own name: the unit's score averaged over ``repeats`` perturbations
(default 10) before the threshold, which lets a metric whose single-sample change is noisy pass.

The change is normalised as NeuronEval does: ``[lo, hi]`` is the metric's range (``[0, 1]``; ``[-1, 1]`` for
``correlation``, ``spearman``, ``cosine``), and for the unbounded ``mad`` and ``wpmi`` the smallest and largest
score observed: over the tested units x all concepts and over every perturbed score of the tested units
(NeuronEval also includes perturbed scores of concepts no unit is labelled with, which are not computed here).
A metric passes when at least 90% of the units decrease in both tests.

Units whose activation is constant on the probe set are left out (nothing to explain). Perturbations are drawn
per concept vector, not per unit: units labelled with the same concept see the same perturbed vector, as in
NeuronEval, and every metric sees the same random stream, so tables for different metrics are comparable.

A verdict uses a metric only if it passes on every arm compared (:func:`metrics_passing_every_arm`); scores that
are not NeuronEval metrics (e.g. F1 at each unit's label frequency) are tested the same way by :func:`scorer_row`.

Cost per metric: one ``[C, K]`` score matrix when the concept is each unit's best (otherwise only for ``mad``
and ``wpmi``), then ``2 x draws x units`` pair scores (``O(N)`` each; one chunked call per test, each unit
ranked and thresholded once).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import UserError
from .metrics import DEFAULT_ALPHA, METRICS, check_alpha, get_metric, score, score_columns, score_pairs

__all__ = ["PROTOCOLS", "SanityConfig", "SanityResult", "SanityRow", "extra_labels", "metrics_passing_every_arm",
           "missing_labels", "sanity_check", "scorer_row"]

PROTOCOLS = ("neuroneval", "averaged")
_AVERAGED_REPEATS = 10


@dataclass(frozen=True)
class SanityConfig:
    """Settings of the sanity tests (NeuronEval's: one perturbation per unit, ``epsilon = 0.001``, pass at 90%).
    ``repeats``: perturbations averaged per unit, only with ``protocol="averaged"`` (default 10 there)."""

    metrics: tuple[str, ...] = tuple(METRICS)
    alpha: float = DEFAULT_ALPHA
    repeats: int | None = None
    seed: int = 0
    epsilon: float = 1e-3
    pass_share: float = 0.9
    protocol: str = "neuroneval"

    def __post_init__(self):
        for name in self.metrics:
            get_metric(name)
        check_alpha(self.alpha)
        if self.protocol not in PROTOCOLS:
            raise UserError(f"unknown sanity protocol {self.protocol!r}; choose from {', '.join(PROTOCOLS)}")
        if self.repeats is not None and self.repeats < 1:
            raise UserError(f"repeats must be >= 1, got {self.repeats}")
        if self.protocol == "neuroneval" and self.repeats not in (None, 1):
            raise UserError(f"repeats = {self.repeats} averages perturbations, which is the 'averaged' protocol; "
                            "NeuronEval's protocol scores one: set protocol='averaged' or leave repeats out")

    @property
    def draws(self) -> int:
        """Perturbations scored per unit and test: 1 (NeuronEval), or ``repeats`` (averaged, default 10)."""
        return 1 if self.protocol == "neuroneval" else (self.repeats or _AVERAGED_REPEATS)


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
    """``[draws, U]`` scores of each unit for ``config.draws`` perturbations of its concept column, in one call
    (each unit's ranks and threshold computed once for all repeats)."""
    generator = torch.Generator().manual_seed(config.seed)
    stacked = torch.stack([perturb(cols, generator)[:, col_of_unit] for _ in range(config.draws)], dim=1)
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
    return _row(name, original, missing, extra, hi - lo, config)


def _row(name: str, original, missing, extra, span: float, config: SanityConfig) -> SanityRow:
    """The metric's row from the original ``[U]`` and perturbed ``[draws, U]`` scores, over a range ``span``."""

    def share(perturbed: torch.Tensor) -> float:
        if span <= 0:
            return 0.0
        diff = (perturbed.mean(0) - original) / span
        return float((diff < -config.epsilon).to(torch.float64).mean())

    m, e = share(missing), share(extra)
    return SanityRow(name, m, e, bool(m >= config.pass_share and e >= config.pass_share))


def scorer_row(name: str, scorer, bounds: tuple[float, float], acts, label_vectors,
               config: SanityConfig | None = None) -> SanityRow:
    """The missing- and extra-labels tests of a score that is not one of :data:`METRICS` (e.g. F1 at each unit's
    label frequency, :mod:`.unit_metrics`): ``scorer(acts [N, U], cols bool [N, U], reference bool [N, U]) -> [U]``
    scores unit ``i`` against column ``i`` of ``cols``; whatever it fixes per unit, such as a threshold, it takes
    from ``reference``, the original labels, so that a perturbation cannot move it. ``bounds``: its range. Same
    protocol, seeds and pass rule as :func:`sanity_check`; constant units are left out."""
    config = config or SanityConfig()
    a = _tensor(acts).to(torch.float64)
    v = _tensor(label_vectors).bool()
    if a.dim() != 2 or v.shape != a.shape:
        raise UserError(f"label vectors must be [N, U] like the activations {tuple(a.shape)}, got {tuple(v.shape)}")
    varies = a.amax(0) > a.amin(0)
    if not varies.any():
        raise UserError("no tested unit varies on the probe set; the sanity tests need an activation pattern")
    a, v = a[:, varies], v[:, varies]
    original = scorer(a, v, v)

    def perturbed(perturb) -> torch.Tensor:
        generator = torch.Generator().manual_seed(config.seed)
        return torch.stack([scorer(a, perturb(v, generator), v) for _ in range(config.draws)])

    return _row(name, original, perturbed(missing_labels), perturbed(extra_labels), bounds[1] - bounds[0], config)


def metrics_passing_every_arm(results: Mapping[str, SanityResult | Sequence[SanityRow]],
                              metrics: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Which of ``metrics`` may enter a verdict: those that pass the sanity tests on every arm (``results``: arm
    name -> its :class:`SanityResult` or rows). Returns ``(kept, dropped)``, ``dropped`` mapping each other metric
    to one line saying why (the arms and the shares of units that decreased), in ``metrics``' order. A metric
    with no sanity row on an arm is dropped too (not tested is not passed)."""
    if not results:
        raise UserError("no arm has sanity results; run the sanity tests on every arm before the verdict")
    kept, dropped = [], {}
    for metric in metrics:
        failures = []
        for arm, result in results.items():
            rows = {r.metric: r for r in (result.rows if isinstance(result, SanityResult) else result)}
            row = rows.get(metric)
            if row is None:
                failures.append(f"not tested on arm {arm}")
            elif not row.passes:
                failures.append(f"fails on arm {arm} (missing labels: {row.missing_decrease:.0%}, extra labels: "
                                f"{row.extra_decrease:.0%} of units decrease)")
        if failures:
            dropped[metric] = f"{metric}: " + "; ".join(failures)
        else:
            kept.append(metric)
    return kept, dropped


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
