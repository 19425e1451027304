"""Split-half reliability of mc-averaged activations, the Spearman-Brown prophecy and the attenuation correction,
against planted noise whose reliability is known in closed form, and on a real LWTA layer vs a dense one."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from lwtakit.data import probe_subset
from lwtakit.data.synthetic import ConceptShapes
from lwtakit.dissect import DissectOptions
from lwtakit.errors import UserError
from lwtakit.evaluation.reliability import (
    dead_units,
    disattenuate,
    layer_reliability,
    passes_for_reliability,
    spearman_brown,
    split_half,
    split_half_reliability,
)
from lwtakit.lwta import LWTA


def _noisy_passes(rng, signal, sigma, passes):
    """Mean of ``passes`` noisy passes of ``signal [N, C]``: each pass adds independent N(0, sigma^2)."""
    return signal + rng.normal(0, sigma, size=(passes, *signal.shape)).mean(0)


def test_planted_noise_gives_the_closed_form_reliability():
    """signal variance 1, pass noise sigma^2: a P-pass mean has reliability 1 / (1 + sigma^2 / P). Two halves of
    P/2 passes, corrected to P, must recover it (and the uncorrected r is the reliability of P/2)."""
    rng = np.random.default_rng(0)
    N, C, sigma, P = 4000, 30, 2.0, 8
    signal = rng.normal(size=(N, C))
    a = _noisy_passes(rng, signal, sigma, P // 2)
    b = _noisy_passes(rng, signal, sigma, P // 2)
    rel = split_half_reliability(a, b, passes=P)
    expected = 1 / (1 + sigma ** 2 / P)
    assert abs(layer_reliability(rel) - expected) < 0.02
    half = split_half_reliability(a, b, passes=P // 2, passes_half=P // 2)  # f = 1: plain r
    assert abs(layer_reliability(half) - 1 / (1 + sigma ** 2 / (P // 2))) < 0.02
    # the prophecy: passes for 0.95 = sigma^2 0.95 / 0.05 = 76 for sigma = 2
    needed = passes_for_reliability(layer_reliability(rel), P, target=0.95)
    assert 66 <= needed <= 88
    at_needed = split_half_reliability(_noisy_passes(rng, signal, sigma, needed // 2),
                                       _noisy_passes(rng, signal, sigma, needed // 2), passes=needed // 2 * 2)
    assert abs(layer_reliability(at_needed) - 0.95) < 0.01


def test_spearman_brown_and_prophecy_are_inverse():
    for rel, passes in ((0.3, 1), (0.6, 4), (0.88, 4)):
        needed = passes_for_reliability(rel, passes, target=0.95)
        assert spearman_brown(rel, needed / passes) >= 0.95 - 1e-12
        assert spearman_brown(rel, (needed - 1) / passes) < 0.95
    assert passes_for_reliability(1.0, 4) == 1
    with pytest.raises(UserError, match="no signal"):
        passes_for_reliability(0.0, 4)
    with pytest.raises(UserError, match="target"):
        passes_for_reliability(0.5, 4, target=1.0)


def test_disattenuated_correlation_recovers_the_noise_free_one():
    """A label correlated with the expected activation at r0: with the noisy mean the correlation drops to
    r0 sqrt(rel); dividing by sqrt(rel) (Spearman 1904) gives r0 back."""
    rng = np.random.default_rng(1)
    N, sigma, P = 20000, 1.5, 4
    concept = rng.random(N) < 0.3
    expected_act = concept + rng.normal(0, 0.8, N)          # the unit's expected activation
    r0 = np.corrcoef(expected_act, concept)[0, 1]
    noisy = expected_act + rng.normal(0, sigma / math.sqrt(P), N)
    r_noisy = np.corrcoef(noisy, concept)[0, 1]
    a = expected_act[:, None] + rng.normal(0, sigma / math.sqrt(P / 2), (N, 1))
    b = expected_act[:, None] + rng.normal(0, sigma / math.sqrt(P / 2), (N, 1))
    rel = split_half_reliability(a, b, passes=P)
    assert r_noisy < r0 - 0.05  # attenuation is real here
    assert abs(float(disattenuate(r_noisy, rel)[0]) - r0) < 0.02
    assert math.isnan(float(disattenuate(0.5, float("nan"))))


def test_dead_units_have_no_reliability():
    a = np.zeros((50, 3))
    a[:, 1] = np.arange(50)
    a[:, 2] = 7.0
    assert dead_units(a).tolist() == [True, False, True]
    rel = split_half_reliability(a, a, passes=4)
    assert math.isnan(rel[0]) and math.isnan(rel[2]) and rel[1] == 1.0
    assert math.isnan(layer_reliability(torch.full((3,), float("nan"))))


class _Net(nn.Module):
    def __init__(self, stochastic: bool):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3)
        self.act = LWTA(U=2, inference="sample", fused=False) if stochastic else nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x)).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def probe():
    return probe_subset(ConceptShapes(size=200, split="val"), 64, seed=0)


def test_recorded_halves_lwta_is_noisy_dense_is_exactly_reliable(probe):
    """The dense twin's halves are computed and come out identical (reliability exactly 1); the LWTA layer's
    halves differ (reliability < 1) and more passes raise it."""
    opts = DissectOptions(mode="mc", passes=4, progress=False, heldout=None, batch_size=64)
    dense = split_half(_Net(False).eval(), probe, ["act"], opts)
    assert torch.equal(dense.a["act"], dense.b["act"])
    rel_dense = split_half_reliability(dense.a["act"], dense.b["act"], dense.passes, dense.passes_half)
    assert layer_reliability(rel_dense) == 1.0
    lwta = _Net(True).eval()
    four = split_half(lwta, probe, ["act"], opts)
    assert (four.passes, four.passes_half) == (4, 2)
    assert not torch.equal(four.a["act"], four.b["act"])
    rel4 = layer_reliability(split_half_reliability(four.a["act"], four.b["act"], 4, 2))
    sixteen = split_half(lwta, probe, ["act"], DissectOptions(**{**opts.__dict__, "passes": 12}))
    rel16 = layer_reliability(split_half_reliability(sixteen.a["act"], sixteen.b["act"], 12, 6))
    assert 0 < rel4 < rel16 < 1
    assert lwta.act.inference == "sample"


def test_dissect_adds_each_units_reliability_and_disattenuated_correlation(probe):
    """dissect(reliability=True): every assessed unit carries its split-half reliability on the evaluation images
    (recomputed here from split_half) and its held-out correlation divided by sqrt(reliability)."""
    from lwtakit.dissect import ConceptSource, dissect
    from lwtakit.evaluation.options import HeldOutOptions

    net = _Net(True).eval()
    opts = DissectOptions(mode="mc", passes=4, progress=False, batch_size=64, reliability=True,
                          heldout=HeldOutOptions(fraction=0.5, seed=1))
    result = dissect(net, probe, ["act"], ["invert"], ConceptSource.from_dataset(probe), opts)
    halves = split_half(net, probe, ["act"], opts)
    ev = result.split.evaluate
    want = split_half_reliability(halves.a["act"][ev], halves.b["act"][ev], 4, 2)
    rows = [r for r in result.table if "heldout_correlation" in r.extra]
    assert rows and all(r.extra["dead"] == 0 for r in rows)
    for r in rows:
        assert r.extra["reliability"] == pytest.approx(float(want[r.unit]), abs=1e-12)
        assert r.extra["heldout_correlation_disattenuated"] == pytest.approx(
            r.extra["heldout_correlation"] / math.sqrt(r.extra["reliability"]), rel=1e-9)
        assert isinstance(r.extra["concepts_stepwise"], int)
