"""Bootstrap intervals over units, p-value text and Holm's correction, against independent computations."""

import math

import numpy as np
import pytest
import torch

from lwtakit.errors import UserError
from lwtakit.evaluation import verdict as V


def _loop_ci(x, n_boot, level, seed, reduce):
    """The percentile bootstrap written out: one resample per draw from the same generator."""
    rng = np.random.default_rng(seed)
    boot = [reduce(x[rng.integers(0, len(x), size=len(x))]) for _ in range(n_boot)]
    return tuple(np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]))


@pytest.mark.parametrize("stat,reduce", [("mean", np.mean), ("median", np.median)])
def test_bootstrap_equals_per_draw_loop(stat, reduce, monkeypatch):
    x = np.random.default_rng(0).beta(2, 5, size=150)
    est, lo, hi = V.bootstrap_ci(x, n_boot=500, level=0.9, seed=3, stat=stat)
    assert est == pytest.approx(reduce(x), abs=1e-15)
    assert lo < est < hi
    assert (lo, hi) == pytest.approx(_loop_ci(x, 500, 0.9, 3, reduce), abs=1e-15)
    monkeypatch.setattr(V, "_BUDGET", 1000)  # blocks of 6 resamples: the same stream, the same interval
    assert V.bootstrap_ci(x, n_boot=500, level=0.9, seed=3, stat=stat) == (est, lo, hi)


def test_bootstrap_drops_nan_and_accepts_tensors():
    x = np.random.default_rng(1).normal(size=40)
    with_nan = np.concatenate([x[:20], [np.nan] * 5, x[20:]])
    assert V.bootstrap_ci(torch.from_numpy(with_nan)) == V.bootstrap_ci(x)
    assert V.bootstrap_ci([0.3]) == (0.3, pytest.approx(math.nan, nan_ok=True), pytest.approx(math.nan, nan_ok=True))
    est, lo, hi = V.bootstrap_ci([np.nan])
    assert math.isnan(est) and math.isnan(lo) and math.isnan(hi)


def test_bootstrap_width_shrinks_like_one_over_sqrt_n():
    rng = np.random.default_rng(2)
    widths = {}
    for n in (100, 400, 1600):
        _, lo, hi = V.bootstrap_ci(rng.normal(size=n), n_boot=2000)
        widths[n] = hi - lo
    assert widths[100] / widths[400] == pytest.approx(2, rel=0.2)
    assert widths[400] / widths[1600] == pytest.approx(2, rel=0.2)
    # and its scale is the normal interval's: 2 * 1.96 / sqrt(n) for unit variance
    assert widths[1600] == pytest.approx(2 * 1.96 / 40, rel=0.15)


def test_bootstrap_bad_options():
    for kwargs, match in (({"stat": "mode"}, "mean or median"), ({"level": 1}, "level"), ({"n_boot": 0}, "n_boot")):
        with pytest.raises(UserError, match=match):
            V.bootstrap_ci([1.0, 2.0], **kwargs)


def test_format_p():
    assert V.format_p(0.41) == "p = 0.41"
    assert V.format_p(0.0012345) == "p = 0.00123"
    assert V.format_p(3e-5) == "p = 3e-5"
    assert V.format_p(3.24e-12) == "p = 3.2e-12"
    assert V.format_p(0.0) == "p < 1e-300"
    assert V.format_p(0.000999) == "p = 0.001"  # rounds up to 1e-3: printed plainly, not split at an "e"


def _holm_rejects(ps, alpha):
    """Holm's procedure as he states it: walk the p-values up from the smallest, rejecting while
    p_(j) <= alpha / (m - j + 1); stop at the first that is not."""
    order = sorted((p, i) for i, p in enumerate(ps) if not math.isnan(p))
    m, rejected = len(order), set()
    for j, (p, i) in enumerate(order):
        if p > alpha / (m - j):
            break
        rejected.add(i)
    return rejected


def test_holm_adjusted_p_rejects_exactly_what_the_sequential_procedure_rejects():
    rng = np.random.default_rng(7)
    for trial in range(50):
        ps = list(rng.uniform(0, 0.2, 12) ** 2)
        if trial % 5 == 0:
            ps[3] = math.nan  # a test that could not be run is not part of the family
        ps[5] = ps[6]  # ties
        adjusted = V.holm(ps)
        assert math.isnan(adjusted[3]) == math.isnan(ps[3])
        assert all(q >= p for p, q in zip(ps, adjusted, strict=True) if not math.isnan(p))
        for alpha in (0.001, 0.01, 0.05, 0.1):
            assert {i for i, q in enumerate(adjusted) if q <= alpha} == _holm_rejects(ps, alpha)
    assert V.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
