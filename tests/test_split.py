"""Probe split for held-out scoring: deterministic, disjoint, covering, seeded, sized as documented."""

import numpy as np
import pytest
import torch

from lwtakit.errors import UserError
from lwtakit.evaluation.split import ProbeSplit, split_probe


@pytest.mark.parametrize("n,fraction", [(10, 0.5), (11, 0.5), (100, 0.29), (7, 0.9), (2, 0.5)])
def test_disjoint_covering_sized(n, fraction):
    s = split_probe(n, fraction, seed=3)
    assert isinstance(s, ProbeSplit)
    both = np.concatenate([s.explain, s.evaluate])
    assert sorted(both.tolist()) == list(range(n))  # covering and disjoint
    assert len(set(s.explain.tolist()) & set(s.evaluate.tolist())) == 0
    # floor(fraction n) explain, written with integer arithmetic (fraction given to two decimals)
    assert len(s.explain) == (round(fraction * 100) * n) // 100
    assert len(s.evaluate) == n - len(s.explain)
    assert np.all(np.diff(s.explain) > 0) and np.all(np.diff(s.evaluate) > 0)
    assert (s.fraction, s.seed, s.n) == (fraction, 3, n)


def test_odd_image_goes_to_evaluation():
    s = split_probe(11)
    assert (len(s.explain), len(s.evaluate)) == (5, 6)


def test_deterministic_and_seeded():
    a, b, c = split_probe(200, seed=0), split_probe(200, seed=0), split_probe(200, seed=1)
    assert np.array_equal(a.explain, b.explain) and np.array_equal(a.evaluate, b.evaluate)
    assert not np.array_equal(a.explain, c.explain)
    # the documented permutation, independently
    order = np.random.default_rng(0).permutation(200)
    assert np.array_equal(a.explain, np.sort(order[:100]))


def test_parts_numpy_torch_list():
    s = split_probe(9, seed=2)
    x = np.arange(18).reshape(9, 2)
    e, v = s.parts(x)
    assert np.array_equal(e, x[s.explain]) and np.array_equal(v, x[s.evaluate])
    te, tv = s.parts(torch.from_numpy(x))
    assert torch.equal(te, torch.from_numpy(x[s.explain])) and torch.equal(tv, torch.from_numpy(x[s.evaluate]))
    le, lv = s.parts(list("abcdefghi"))
    assert le == [list("abcdefghi")[i] for i in s.explain] and len(lv) == len(s.evaluate)
    with pytest.raises(UserError, match="covers 9 images"):
        s.parts(np.zeros((8, 2)))


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_bad_fraction(fraction):
    with pytest.raises(UserError, match=r"fraction must be in \(0, 1\)"):
        split_probe(10, fraction)


def test_part_below_min_part():
    split_probe(20, 0.5, min_part=10)
    with pytest.raises(UserError, match="at least 11") as err:
        split_probe(20, 0.5, min_part=11)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="0 explanation"):
        split_probe(3, 0.2)
