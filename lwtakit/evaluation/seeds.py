"""Seed-level verdicts: is an arm (a configuration trained with several seeds) more interpretable than a reference
arm? (issue 20, item 2)

**The seed is the unit of analysis.** The units of one network share its weights and images; what varies between
two trainings of one configuration is the seed. A test over the ~128 units of one network per arm calls a
difference in about 57% of A/A comparisons when seeds differ (seed sd 0.05 over unit sd 0.15), so here every run
is first reduced to one value per (layer, metric): the mean of its units' scores (a per-run figure such as
``dead_fraction`` is its own one value). Then, per arm other than the reference, layer and metric:

* ``difference``: the arm's mean of seed means minus the reference's, with its 95% Welch interval (Welch 1947,
  "The generalization of 'Student's' problem when several different population variances are involved"):
  ``d +- t_{0.975, nu} * sqrt(s_a^2/n_a + s_r^2/n_r)`` over seed means, Welch-Satterthwaite ``nu``. With 3-5
  seeds a percentile bootstrap over seeds (or the hierarchical bootstrap over seeds then units, Saravanan et al.
  2020, "Application of the hierarchical bootstrap to multi-level data in neuroscience") uses normal tails and the
  plug-in variance (a factor (n-1)/n), so it covers less than it says; the t interval on seed means is exact for
  normal seed means, and a mean over 128 units is close to normal.
* ``p_value``: Welch's two-sided t test of the same seed means (the interval excludes 0 exactly when p < 0.05).
* ``equivalent``: Schuirmann's (1987) two one-sided tests at ``margin``: both ``d > -margin`` and ``d < margin``
  rejected at ``alpha`` (the 1 - 2 alpha Welch interval lies inside ``(-margin, margin)``). The default margin 0.05
  is five points on a metric in [0, 1] (held-out correlation, F1, AUPRC, the share of significant units): about the
  seed-to-seed sd measured in the golden runs (0.05) and a third of the spread of units within a layer (0.15), so a
  difference within it is smaller than retraining the same configuration moves the figure. For a metric on another
  scale (concepts per unit) the margin is in that metric's units.
* **trend over U** (where the arms carry U, dense = 1, at least 3 levels): the least-squares slope of the seed
  means on log2 U (the change per doubling of U), its 95% t interval (n - 2 degrees of freedom) and a two-sided
  permutation p-value: the seed means are shuffled over the arms ``n_resamples`` times and
  ``p = (1 + #{|slope*| >= |slope|}) / (1 + n_resamples)`` (Phipson & Smyth 2010), valid for any seed-mean
  distribution.
* **one test family**, stated in the output: the pre-declared primary endpoint (``primary``: a layer and metric;
  by default the held-out correlation corrected for the mc noise, ``heldout_correlation_disattenuated``, of the
  last layer that has it, else the plain ``heldout_correlation``: :data:`DEFAULT_PRIMARY_METRICS`) is tested at
  ``alpha`` alone (its comparisons Holm-corrected among themselves when several arms face the reference); every
  other comparison and trend is secondary, Holm-corrected together (Holm 1979) across every arm, layer and metric
  tested (``metrics``: the metrics tested, None for every metric of the table; ``compare`` passes the verdict
  metrics that passed the sanity tests on every arm).
* an arm (or reference) with one seed keeps its difference, but gets no interval, p-value or equivalence, and a
  note: a p-value from the units of one network would describe two checkpoints, not two configurations.

The table's contract (dead units, NaN) is in :mod:`.unit_scores`. Framework-free: numpy and scipy.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import stats

from ..errors import UserError
from .unit_scores import UnitScores
from .verdict import format_p, holm

__all__ = ["DEFAULT_MARGIN", "DEFAULT_PRIMARY_METRICS", "SeedVerdict", "SeedVerdictOptions", "VerdictRow", "untestable",
           "check_options", "seed_means", "seed_verdict", "welch"]

DEFAULT_MARGIN = 0.05
DEFAULT_PRIMARY_METRICS = ("heldout_correlation_disattenuated", "heldout_correlation")
"""The default primary endpoint's metric, the first of these the table has (in its last layer that has it): the
correlation free of the stochastic network's mc noise (:mod:`.reliability`), else the recorded one."""
TREND = "trend over U"
LEVEL = 0.95


@dataclass(frozen=True)
class SeedVerdictOptions:
    """``reference``: the arm every other is compared with; ``margin``: the equivalence margin (TOST); ``alpha``:
    the level of every test; ``primary``: ``(layer, metric)`` of the primary endpoint (None: the default, see the
    module docstring); ``metrics``: the metrics tested besides the primary endpoint's (None: every metric of the
    table); ``n_resamples``: permutations of the trend test; ``seed``: their generator's seed."""

    reference: str
    margin: float = DEFAULT_MARGIN
    alpha: float = 0.05
    primary: tuple[str, str] | None = None
    metrics: tuple[str, ...] | None = None
    n_resamples: int = 9999
    seed: int = 0

    def __post_init__(self):
        if not (math.isfinite(self.margin) and self.margin > 0):
            raise UserError(f"the equivalence margin must be a number > 0, got {self.margin}")
        if not 0 < self.alpha < 0.5:
            raise UserError(f"the significance level must be in (0, 0.5), got {self.alpha}")
        if self.n_resamples < 1:
            raise UserError(f"the trend test needs at least 1 permutation, got {self.n_resamples}")


@dataclass(frozen=True)
class VerdictRow:
    """One line of ``verdict.csv``: ``arm`` minus ``reference`` in ``layer`` / ``metric`` (or, when ``arm`` is
    ``trend over U``, the slope per doubling of U), with its 95% interval, p-value, Holm-adjusted p-value within
    its family, TOST equivalence at the margin (None: not tested) and the seeds of both arms (``5/5``)."""

    arm: str
    reference: str
    layer: str
    metric: str
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    p_holm: float
    equivalent: bool | None
    n_seeds: str
    arm_mean: float = math.nan
    reference_mean: float = math.nan
    family: str = "secondary"
    note: str = ""

    def sentence(self, margin: float) -> str:
        """The row in plain words, e.g. ``U=4 vs dense, layer4.1.act2 held-out correlation: -0.12 [-0.18, -0.06],
        p = 0.003 (Holm 0.02); not equivalent at ±0.05; 5/5 seeds``."""
        what = f"{self.layer} {readable(self.metric)}"
        if self.arm == TREND:
            head = f"trend over U ({self.reference}), {what}: {self.difference:+.3g} per doubling of U"
        else:
            head = f"{self.arm} vs {self.reference}, {what}: {self.difference:+.3g}"
        if math.isnan(self.p_value):
            return f"{head} ({self.arm_mean:.3g} vs {self.reference_mean:.3g}); {self.note}; {self.n_seeds} seeds"
        text = f"{head} [{self.ci_low:+.3g}, {self.ci_high:+.3g}], {format_p(self.p_value)}"
        holm_p = format_p(self.p_holm)[4:]
        if self.family == "secondary":
            text += f" (Holm {holm_p})"
        else:  # several arms against the reference: Holm over the primary endpoint's comparisons
            text += " (primary endpoint)" if self.p_holm == self.p_value else f" (primary endpoint; Holm {holm_p})"
        if self.equivalent is not None:
            text += f"; {'equivalent' if self.equivalent else 'not equivalent'} at ±{margin:g}"
        return f"{text}; {self.n_seeds} seeds"

    def record(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class SeedVerdict:
    """Every row, the options they were made with, the primary endpoint and one line per arm that cannot be
    tested."""

    rows: list[VerdictRow]
    options: SeedVerdictOptions
    primary: tuple[str, str]
    notes: list[str] = field(default_factory=list)

    def how(self) -> dict[str, str]:
        """How the verdict was made, in words, for the report's header."""
        o = self.options
        secondary = sum(r.family == "secondary" and not math.isnan(r.p_value) for r in self.rows)
        return {
            "unit of analysis": "the seed: each run's units averaged to one value per layer and metric",
            "difference": "arm minus reference, mean of seed means; 95% Welch t interval over seed means",
            "test": "Welch's two-sided t test of seed means (trend over U: slope of seed means on log2 U, "
                    f"{o.n_resamples} permutations of the seed means over arms, seed {o.seed})",
            "equivalence": f"two one-sided Welch tests (Schuirmann 1987) at margin ±{o.margin:g}, alpha {o.alpha:g}",
            "test family": f"primary endpoint {self.primary[0]} {readable(self.primary[1])} at alpha {o.alpha:g} "
                           f"(Holm over arms when several); {secondary} secondary tests Holm-corrected together",
        }


def readable(metric: str) -> str:
    """``heldout_correlation`` -> ``held-out correlation``."""
    return metric.replace("heldout_", "held-out ").replace("_", " ")


def seed_means(scores: UnitScores) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """``(layer, metric) -> arm -> seed means`` (one per run, runs in first-seen order): the mean of each run's
    units, the value the verdict analyses."""
    keys = np.char.add(np.char.add(np.char.add(scores.run, "\x1f"), scores.layer), np.char.add("\x1f", scores.metric))
    unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    means = np.bincount(inverse, weights=scores.value) / np.bincount(inverse)
    out: dict[tuple[str, str], dict[str, list[float]]] = {}
    for k in np.argsort(first, kind="stable"):
        i = first[k]
        out.setdefault((scores.layer[i], scores.metric[i]), {}).setdefault(scores.arm[i], []).append(means[k])
    return {key: {arm: np.asarray(v) for arm, v in arms.items()} for key, arms in out.items()}


def welch(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(difference, standard error, Welch-Satterthwaite degrees of freedom)`` of mean(a) - mean(b) along the
    last axis (Welch 1947); each side needs at least 2 values."""
    na, nb = a.shape[-1], b.shape[-1]
    va, vb = a.var(axis=-1, ddof=1) / na, b.var(axis=-1, ddof=1) / nb
    se2 = va + vb
    with np.errstate(invalid="ignore", divide="ignore"):
        df = se2 ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
    df = np.where(se2 > 0, df, na + nb - 2.0)  # no spread on either side: the df do not matter
    return a.mean(axis=-1) - b.mean(axis=-1), np.sqrt(se2), df


def welch_figures(a: np.ndarray, b: np.ndarray, margin: float, alpha: float) -> dict[str, np.ndarray]:
    """The Welch interval (95%), two-sided p-value and TOST equivalence at ``margin`` / ``alpha`` of
    mean(a) - mean(b), along the last axis (vectorised over leading axes for the calibration tests)."""
    d, se, df = welch(a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(se > 0, d / np.where(se > 0, se, 1), np.where(d == 0, 0.0, np.inf) * np.sign(d))
        half = stats.t.ppf((1 + LEVEL) / 2, df) * se
        p = 2 * stats.t.sf(np.abs(t), df)
        # TOST: H0 d <= -margin and H0 d >= margin both rejected at alpha
        lower = stats.t.sf(np.where(se > 0, (d + margin) / np.where(se > 0, se, 1), np.inf * np.sign(d + margin)),
                           df)
        upper = stats.t.cdf(np.where(se > 0, (d - margin) / np.where(se > 0, se, 1), np.inf * np.sign(d - margin)),
                            df)
    return {"difference": d, "ci_low": d - half, "ci_high": d + half, "p_value": p,
            "equivalent": np.maximum(lower, upper) <= alpha}


def trend(u: np.ndarray, y: np.ndarray, n_resamples: int, rng: np.random.Generator) -> tuple[float, float, float,
                                                                                                 float]:
    """``(slope, ci_low, ci_high, p)``: least-squares slope of seed means ``y`` on ``log2 u`` (change per doubling
    of U), its 95% t interval (n - 2 df) and the two-sided permutation p-value of the slope (seed means shuffled
    over the arms ``n_resamples`` times; Phipson & Smyth 2010)."""
    x = np.log2(u.astype(np.float64))
    xc = x - x.mean()
    sxx = float(xc @ xc)
    slope = float(xc @ (y - y.mean())) / sxx
    n = len(y)
    resid = y - y.mean() - slope * xc
    half = stats.t.ppf((1 + LEVEL) / 2, n - 2) * math.sqrt(float(resid @ resid) / (n - 2) / sxx) if n > 2 else math.nan
    shuffled = rng.permuted(np.broadcast_to(y, (n_resamples, n)), axis=1)
    slopes = shuffled @ xc / sxx
    # a tolerance so that a permutation equal to the observed one counts in floating point
    hits = int(np.count_nonzero(np.abs(slopes) >= abs(slope) - 1e-12 * max(1.0, abs(slope))))
    return slope, slope - half, slope + half, (1 + hits) / (1 + n_resamples)


def check_options(scores: UnitScores, options: SeedVerdictOptions) -> tuple[str, str]:
    """The primary endpoint, after checking ``options`` against the table (a :class:`UserError` naming the table
    when the reference arm or the primary endpoint is not in it, or there is nothing to compare)."""
    arms = scores.arms
    if options.reference not in arms:
        raise UserError(f"{scores.source} has no arm {options.reference!r} for the reference; its arms are "
                        f"{', '.join(arms)}")
    if len(arms) < 2:
        raise UserError(f"{scores.source} has only the arm {arms[0]!r}; a verdict compares at least two arms")
    endpoints = scores.endpoints()
    if options.primary is not None:
        if options.primary not in endpoints:
            layer, metric = options.primary
            raise UserError(f"{scores.source}: no arm has the metric {metric!r} in layer {layer!r} (the primary "
                            f"endpoint); it has {', '.join(f'{la}:{me}' for la, me in endpoints[:8])}"
                            f"{' ...' if len(endpoints) > 8 else ''}")
        return options.primary
    for default in DEFAULT_PRIMARY_METRICS:
        layers = [layer for layer, metric in endpoints if metric == default]
        if layers:
            return layers[-1], default
    raise UserError(f"{scores.source} has none of {', '.join(DEFAULT_PRIMARY_METRICS)}, the default primary "
                    "endpoint's metrics; name one with --primary LAYER:METRIC")


def arm_u(scores: UnitScores) -> dict[str, int]:
    """Each arm's U: the table's ``u`` column, else the arm's name when it reads ``dense`` (U = 1) or ``U=4`` /
    ``u4`` / ``lwta_u4`` (case ignored); arms without one take no part in the trend test."""
    out = {}
    for arm in scores.arms:
        if arm in scores.u:
            out[arm] = scores.u[arm]
        elif arm.strip().lower() == "dense":
            out[arm] = 1
        elif (m := re.fullmatch(r"(?:lwta[-_ ]?)?u\s*=?\s*(\d+)", arm.strip(), flags=re.IGNORECASE)) and int(m[1]):
            out[arm] = int(m[1])
    return out


def untestable(arm: str, n: int) -> str:
    return (f"{arm} has {n} seed{'s' * (n != 1)}: the verdict cannot test it without seeds (a p-value over the units "
            "of one network compares two checkpoints, not two configurations); train at least 2 seeds, 5 recommended")


def _comparison(arm: str, key: tuple[str, str], a: np.ndarray, r: np.ndarray, options: SeedVerdictOptions,
                ) -> VerdictRow:
    """``arm`` against the reference in one (layer, metric), from both arms' seed means."""
    common = dict(arm=arm, reference=options.reference, layer=key[0], metric=key[1], n_seeds=f"{len(a)}/{len(r)}",
                  arm_mean=float(a.mean()), reference_mean=float(r.mean()))
    if min(len(a), len(r)) < 2:
        few = arm if len(a) < 2 else options.reference
        return VerdictRow(**common, difference=float(a.mean() - r.mean()), ci_low=math.nan, ci_high=math.nan,
                          p_value=math.nan, p_holm=math.nan, equivalent=None,
                          note=f"not tested: {few} has {min(len(a), len(r))} seed")
    f = welch_figures(a, r, options.margin, options.alpha)
    return VerdictRow(**common, difference=float(f["difference"]), ci_low=float(f["ci_low"]),
                      ci_high=float(f["ci_high"]), p_value=float(f["p_value"]), p_holm=math.nan,
                      equivalent=bool(f["equivalent"]))


def _trends(means: dict[tuple[str, str], dict[str, np.ndarray]], u: dict[str, int], options: SeedVerdictOptions,
            ) -> list[VerdictRow]:
    """One trend row per (layer, metric) when the arms with a U span at least 3 levels of it."""
    arms = [arm for arm in u if arm in next(iter(means.values()))]
    if len({u[a] for a in arms}) < 3:
        return []
    arms.sort(key=lambda a: u[a])
    rows = []
    levels = ", ".join(a if a == f"U={u[a]}" else f"{a} (U={u[a]})" for a in arms)
    seeds = np.random.SeedSequence(options.seed).spawn(len(means))
    for ((layer, metric), per_arm), ss in zip(means.items(), seeds, strict=True):
        x = np.concatenate([np.full(len(per_arm[a]), u[a]) for a in arms])
        y = np.concatenate([per_arm[a] for a in arms])
        slope, low, high, p = trend(x, y, options.n_resamples, np.random.default_rng(ss))
        rows.append(VerdictRow(arm=TREND, reference=levels, layer=layer,
                               metric=metric, difference=slope, ci_low=low, ci_high=high, p_value=p,
                               p_holm=math.nan, equivalent=None, n_seeds="/".join(str(len(per_arm[a])) for a in arms)))
    return rows


def _family(rows: list[VerdictRow], primary: tuple[str, str]) -> list[VerdictRow]:
    """Mark the primary endpoint's comparisons and Holm-adjust each family (Holm 1979): the primary endpoint's
    comparisons among themselves (one arm: its p-value), every other test together."""
    is_primary = [r.arm != TREND and (r.layer, r.metric) == primary for r in rows]
    out = list(rows)
    for family in (True, False):
        index = [i for i, p in enumerate(is_primary) if p == family]
        adjusted = holm([rows[i].p_value for i in index])
        for i, q in zip(index, adjusted, strict=True):
            out[i] = replace(rows[i], p_holm=q, family="primary" if family else "secondary")
    return out


def seed_verdict(scores: UnitScores, options: SeedVerdictOptions) -> SeedVerdict:
    """Every arm other than ``options.reference`` against it, per layer and metric, with the seed as the unit of
    analysis, plus the trend over U where the arms carry U (methods and references in the module docstring)."""
    primary = check_options(scores, options)
    if options.metrics is not None:
        scores = scores.only(list(dict.fromkeys([primary[1], *options.metrics])))
    means = seed_means(scores)
    rows = [_comparison(arm, key, per_arm[arm], per_arm[options.reference], options)
            for arm in scores.arms if arm != options.reference for key, per_arm in means.items()]
    rows += _trends(means, arm_u(scores), options)
    first = next(iter(means.values()))
    notes = [untestable(arm, len(first[arm])) for arm in scores.arms if len(first[arm]) < 2]
    return SeedVerdict(rows=_family(rows, primary), options=options, primary=primary, notes=notes)
