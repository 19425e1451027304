"""Bootstrap intervals, the two-run test and the verdict sentence, against independent computations."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

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


def test_compare_samples_equals_scipy():
    rng = np.random.default_rng(4)
    a, b = rng.integers(0, 5, 60).astype(float), rng.integers(1, 6, 45).astype(float)  # ties
    ref = stats.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic").pvalue
    assert V.compare_samples(a, b) == pytest.approx(ref, rel=1e-12)
    assert V.compare_samples(np.append(a, np.nan), b) == pytest.approx(ref, rel=1e-12)
    assert math.isnan(V.compare_samples([1.0], b)) and math.isnan(V.compare_samples(a, [np.nan, 2.0]))


def test_format_p():
    assert V.format_p(0.41) == "p = 0.41"
    assert V.format_p(0.0012345) == "p = 0.00123"
    assert V.format_p(3e-5) == "p = 3e-5"
    assert V.format_p(3.24e-12) == "p = 3.2e-12"
    assert V.format_p(0.0) == "p < 1e-300"
    assert V.format_p(0.000999) == "p = 0.001"  # rounds up to 1e-3: printed plainly, not split at an "e"


def test_sentence_significant_either_way():
    rng = np.random.default_rng(5)
    high, low = rng.normal(0.6, 0.1, 200), rng.normal(0.5, 0.1, 200)
    v = V.verdict("layer4", "f1", ("default", high), ("default_dense", low))
    assert v.higher == "default" and v.p < 1e-5
    a, b = V.bootstrap_ci(high), V.bootstrap_ci(low)
    fmt = "{:.3g} [{:.3g}, {:.3g}]"
    assert v.sentence() == (f"layer4: default higher held-out f1 than default_dense, {fmt.format(*a)} vs "
                            f"{fmt.format(*b)}, {V.format_p(V.compare_samples(high, low))}")
    w = V.verdict("layer4", "f1", ("default", low), ("default_dense", high), heldout=False)
    assert w.higher == "default_dense"
    assert w.sentence().startswith(f"layer4: default_dense higher f1 than default, {fmt.format(*a)} vs")
    assert w.records() == [{"run": "default vs default_dense", "metric": "verdict/layer4/f1", "value": w.p,
                            "ci_low": None, "ci_high": None}]


def test_sentence_not_significant_and_too_few():
    rng = np.random.default_rng(6)
    a, b = rng.normal(0.6, 0.1, 50), rng.normal(0.6, 0.1, 50)
    v = V.verdict("layer4", "correlation", ("A", a), ("B", b))
    assert v.p > 0.05 and v.higher is None
    ia, ib = V.bootstrap_ci(a), V.bootstrap_ci(b)
    assert v.sentence() == (f"layer4: no significant difference in held-out correlation between A "
                            f"({ia[0]:.3g} [{ia[1]:.3g}, {ia[2]:.3g}]) and B ({ib[0]:.3g} [{ib[1]:.3g}, {ib[2]:.3g}]), "
                            f"p = {v.p:.3g}")
    few = V.verdict("fc", "f1", ("A", [0.5, np.nan]), ("B", b))
    assert math.isnan(few.p) and few.higher is None
    assert few.sentence() == ("fc: held-out f1 cannot be compared between A (1 unit) and B (50 units): each run "
                              "needs at least 2 units with a value")
    with pytest.raises(UserError, match="alpha"):
        V.verdict("fc", "f1", ("A", a), ("B", b), alpha=0)


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


def test_a_family_decides_on_the_adjusted_p():
    """One difference that is significant alone (p ~ 0.01) is not once it is one of 25 tests; a strong one stays."""
    rng = np.random.default_rng(8)
    a = rng.normal(0.5, 0.1, 128)
    weak = next(v for seed in range(200)
                if 0.005 < (v := V.verdict("l", "f1", ("A", a + np.random.default_rng(seed).normal(0.035, 0.1, 128)),
                                           ("B", a))).p < 0.02)
    strong = V.verdict("l", "auprc", ("A", a + 0.1), ("B", a))
    nulls = [V.verdict(f"l{i}", "f1", ("A", rng.normal(0.5, 0.1, 128)), ("B", rng.normal(0.5, 0.1, 128)))
             for i in range(23)]
    family = V.holm_adjust([weak, strong, *nulls])
    assert weak.higher == "A" and family[0].higher is None and family[0].p_adjusted == pytest.approx(
        V.holm([v.p for v in [weak, strong, *nulls]])[0])
    assert family[1].higher == "A" and family[1].family == 25
    assert family[0].sentence().endswith(f"{V.format_p(weak.p)} (Holm-adjusted over 25 tests: "
                                         f"{V.format_p(family[0].p_adjusted)[4:]})")
    assert [r["metric"] for r in family[0].records()] == ["verdict/l/f1", "verdict_holm/l/f1"]
