"""Statistics over the units of one run, shared by the reports: intervals, p-value text, Holm's correction.

* :func:`bootstrap_ci`: the percentile bootstrap interval of the mean (or median) over units (Efron &
  Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13): a *descriptive* interval of one network's units
  (the reports' interpretability tables). Units of one network are not independent samples of its training
  procedure, so no test between runs is made from them: arms of seeded runs are compared by
  :mod:`.seeds` (seed-level verdict).
* :func:`holm`: Holm's step-down correction (Holm 1979), used by the seed-level verdict's family of tests.
* :func:`format_p`: a p-value in the reports' text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import UserError

__all__ = ["DISTRIBUTION_PANELS", "SIGNIFICANT", "VERDICT_METRICS", "bootstrap_ci", "format_p", "holm"]

_BUDGET = 1 << 22  # resampled values held at once

SIGNIFICANT = "heldout_significant"
# The held-out label metrics the reports' interpretability tables show, with their display names (correlation is
# also how well the label predicts the activation, "simulation"); what the seed-level verdict tests is
# lwtakit.evaluation.unit_metrics.VERDICT_METRICS.
VERDICT_METRICS = {"heldout_f1": "f1", "heldout_auprc": "auprc", "heldout_correlation": "correlation",
                   SIGNIFICANT: "share of units with a significant label", "concepts": "concepts per unit"}
# Their per-unit distributions as plot panels: whether a unit's label is significant is 0 or 1, its share says all.
DISTRIBUTION_PANELS = {k: f"{v} (held-out)" for k, v in VERDICT_METRICS.items() if k != SIGNIFICANT}


def _values(values) -> np.ndarray:
    """The finite entries of a 1-d array: NaN marks a unit without a value (no label, an undefined score)."""
    x = np.asarray(values.cpu() if hasattr(values, "cpu") else values, dtype=np.float64).reshape(-1)
    return x[~np.isnan(x)]


def bootstrap_ci(values, n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                 stat: str = "mean") -> tuple[float, float, float]:
    """``(estimate, low, high)``: the mean (or median) of ``values`` over units and its percentile bootstrap
    interval: ``n_boot`` resamples of the n units with replacement (indices from
    ``numpy.random.default_rng(seed).integers(0, n, size=n)``, one draw after another), the statistic of
    each, and the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of those (``numpy.quantile``, linear
    interpolation). NaN values are dropped first; with fewer than 2 values left the interval is
    ``(nan, nan)`` (the estimate is the one value, or NaN)."""
    if stat not in ("mean", "median"):
        raise UserError(f"bootstrap statistic must be mean or median, got {stat!r}")
    if not 0 < level < 1:
        raise UserError(f"confidence level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise UserError(f"the bootstrap needs at least 1 resample, got n_boot = {n_boot}")
    x = _values(values)
    reduce = np.mean if stat == "mean" else np.median
    estimate = float(reduce(x)) if len(x) else math.nan
    if len(x) < 2:
        return estimate, math.nan, math.nan
    rng = np.random.default_rng(seed)
    step = max(1, _BUDGET // len(x))
    # draws in blocks read the generator's stream in the same order as one draw per resample
    boot = np.concatenate([reduce(x[rng.integers(0, len(x), size=(min(step, n_boot - b0), len(x)))], axis=1)
                           for b0 in range(0, n_boot, step)])
    low, high = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return estimate, float(low), float(high)


def format_p(p: float) -> str:
    """``p = 0.41``, ``p = 0.0012`` (3 significant digits) or, below 1e-3, ``p = 3.2e-5`` (2 significant
    digits, exponent without padding); ``p < 1e-300`` when it underflowed to 0."""
    if math.isnan(p):
        return "p = nan"
    if p == 0:
        return "p < 1e-300"
    if p >= 1e-3:
        return f"p = {p:.3g}"
    text = f"{p:.2g}"
    if "e" not in text:  # just below 1e-3, rounded up to 0.001
        return f"p = {text}"
    mantissa, exponent = text.split("e")
    return f"p = {mantissa}e{int(exponent)}"


def holm(ps: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979, "A simple sequentially rejective multiple test procedure"):
    with the m finite p-values sorted, p_(1) <= ... <= p_(m), the adjusted value of p_(i) is
    ``min(1, max_{j <= i} (m - j + 1) p_(j))``; rejecting where it is <= alpha keeps the family-wise error at
    alpha under any dependence. NaN entries stay NaN and do not count in m."""
    finite = [i for i, p in enumerate(ps) if not math.isnan(p)]
    out = [math.nan] * len(ps)
    running, m = 0.0, len(finite)
    for rank, i in enumerate(sorted(finite, key=lambda i: ps[i])):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        out[i] = running
    return out
