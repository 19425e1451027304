"""Is one run's layer more interpretable than another's? Intervals, a test and one sentence (issue 8, item 7).

The units of a layer are the sample: each has a held-out score (:mod:`.heldout`), and two runs (an LWTA
network and its dense twin) are compared through the distributions of their units' scores.

* :func:`bootstrap_ci`: the percentile bootstrap interval of the mean (or median) over units (Efron &
  Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13).
* :func:`compare_samples`: the two-sided Mann-Whitney U test of the two runs' per-unit values (Mann & Whitney
  1947): rank-based, so it needs no normality of scores bounded in [0, 1] and piled up at 0 or 1.
* :func:`verdict`: both, in one plain sentence.
* :func:`holm_adjust`: a pair of runs is compared on every layer and metric at once (25 tests for 5 layers x 5
  metrics); Holm's step-down correction (Holm 1979) keeps the chance of any false "higher" over the whole family
  at alpha, and the sentences decide on the adjusted p-value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

from ..errors import UserError

__all__ = ["DISTRIBUTION_PANELS", "SIGNIFICANT", "VERDICT_METRICS", "Verdict", "bootstrap_ci", "compare_samples",
           "format_p", "holm", "holm_adjust", "verdict"]

_BUDGET = 1 << 22  # resampled values held at once

SIGNIFICANT = "heldout_significant"
# What the verdicts compare: held-out label quality (correlation is also how well the label predicts the
# activation, "simulation"), significance, and concepts detected per unit (polysemanticity: fewer is more focused).
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


def _mann_whitney(a, b) -> tuple[float, float]:
    """``(p, superiority)``: two-sided Mann-Whitney p-value and ``U_a / (n_a n_b)``, the probability that a
    unit of ``a`` scores above one of ``b`` (ties one half). NaN both when a side has fewer than 2 values."""
    a, b = _values(a), _values(b)
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    result = stats.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic", use_continuity=True)
    return float(result.pvalue), float(result.statistic) / (len(a) * len(b))


def compare_samples(a, b) -> float:
    """Two-sided Mann-Whitney U test that two runs' per-unit values come from the same distribution
    (``scipy.stats.mannwhitneyu``, normal approximation with tie and continuity corrections): the p-value.
    NaN values are dropped; NaN when either side has fewer than 2 values."""
    return _mann_whitney(a, b)[0]


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


def _interval(t: tuple[float, float, float]) -> str:
    estimate, low, high = t
    text = f"{estimate:.3g}"
    return text if math.isnan(low) else f"{text} [{low:.3g}, {high:.3g}]"


def _units(n: int) -> str:
    return f"{n} unit" if n == 1 else f"{n} units"


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


@dataclass(frozen=True)
class Verdict:
    """Two runs' values of one metric in one layer: ``a`` and ``b`` are ``(mean, ci_low, ci_high)`` over units
    (:func:`bootstrap_ci`), ``n_a`` / ``n_b`` the units with a value, ``p`` the two-sided Mann-Whitney p-value
    (:func:`compare_samples`), ``superiority`` the probability that a unit of ``a`` scores above one of ``b``
    (ties one half), ``p_adjusted`` the family-wise adjusted p-value (:func:`holm_adjust`; None: not adjusted)
    out of ``family`` tests. :attr:`higher` is the run whose units score higher when the (adjusted) p <= alpha."""

    layer: str
    metric: str
    run_a: str
    run_b: str
    a: tuple[float, float, float]
    b: tuple[float, float, float]
    p: float
    superiority: float
    n_a: int
    n_b: int
    alpha: float = 0.05
    heldout: bool = True
    p_adjusted: float | None = None
    family: int = 1

    @property
    def decisive_p(self) -> float:
        return self.p if self.p_adjusted is None else self.p_adjusted

    @property
    def higher(self) -> str | None:
        if math.isnan(self.decisive_p) or self.decisive_p > self.alpha or self.superiority == 0.5:
            return None
        return self.run_a if self.superiority > 0.5 else self.run_b

    @property
    def quantity(self) -> str:
        return f"held-out {self.metric}" if self.heldout else self.metric

    def _p_text(self) -> str:
        if self.p_adjusted is None:
            return format_p(self.p)
        return f"{format_p(self.p)} (Holm-adjusted over {self.family} tests: {format_p(self.p_adjusted)[4:]})"

    def sentence(self) -> str:
        """One plain sentence: which run is higher, both means with 95% intervals, and the p-value (with its
        adjusted value when the verdict is one of a family)."""
        if math.isnan(self.p):
            return (f"{self.layer}: {self.quantity} cannot be compared between {self.run_a} ({_units(self.n_a)}) "
                    f"and {self.run_b} ({_units(self.n_b)}): each run needs at least 2 units with a value")
        if self.higher is None:
            return (f"{self.layer}: no significant difference in {self.quantity} between {self.run_a} "
                    f"({_interval(self.a)}) and {self.run_b} ({_interval(self.b)}), {self._p_text()}")
        first, second = (self.a, self.b) if self.higher == self.run_a else (self.b, self.a)
        lower = self.run_b if self.higher == self.run_a else self.run_a
        return (f"{self.layer}: {self.higher} higher {self.quantity} than {lower}, {_interval(first)} vs "
                f"{_interval(second)}, {self._p_text()}")

    def records(self) -> list[dict]:
        """compare.csv's rows for this pair (issue 8.7): metric ``verdict/<layer>/<metric>``, run ``A vs B``, value
        the p-value, no interval; when adjusted, also ``verdict_holm/<layer>/<metric>`` with the adjusted p."""
        rows = [{"run": f"{self.run_a} vs {self.run_b}", "metric": f"verdict/{self.layer}/{self.metric}",
                 "value": self.p, "ci_low": None, "ci_high": None}]
        if self.p_adjusted is not None:
            rows.append({**rows[0], "metric": f"verdict_holm/{self.layer}/{self.metric}", "value": self.p_adjusted})
        return rows


def holm_adjust(verdicts: Sequence[Verdict]) -> list[Verdict]:
    """The verdicts of one family (one pair of runs, every layer and metric) with :func:`holm` adjusted p-values:
    a run is called higher only where the adjusted p <= alpha."""
    adjusted = holm([v.p for v in verdicts])
    family = sum(not math.isnan(v.p) for v in verdicts)
    return [replace(v, p_adjusted=q if not math.isnan(q) else None, family=family)
            for v, q in zip(verdicts, adjusted, strict=True)]


def verdict(layer: str, metric: str, a: tuple[str, object], b: tuple[str, object], *, alpha: float = 0.05,
            seed: int = 0, heldout: bool = True) -> Verdict:
    """Compare two runs' per-unit values of ``metric`` in ``layer``, each run given as ``(name, values)`` (NaN =
    unit without a value): means with 95% percentile bootstrap intervals (:func:`bootstrap_ci`, 2000 resamples,
    ``seed``) and a two-sided Mann-Whitney test (:func:`compare_samples`) at level ``alpha``. ``heldout``: the
    values were computed on the evaluation part of the probe split (the sentence says "held-out")."""
    if not 0 < alpha < 1:
        raise UserError(f"significance level alpha must be in (0, 1), got {alpha}")
    (run_a, values_a), (run_b, values_b) = a, b
    p, superiority = _mann_whitney(values_a, values_b)
    return Verdict(layer=layer, metric=metric, run_a=run_a, run_b=run_b, a=bootstrap_ci(values_a, seed=seed),
                   b=bootstrap_ci(values_b, seed=seed), p=p, superiority=superiority, n_a=len(_values(values_a)),
                   n_b=len(_values(values_b)), alpha=alpha, heldout=heldout)
