"""fork_rng: the global RNGs come back after the block (also after an exception, also nested); a seed makes
the block draw what torch.manual_seed(seed) would; checkpointed states round-trip."""

import random

import numpy as np
import pytest
import torch

from lwtakit.rng import collect_rng_states, fork_rng, restore_rng_states


def _draw():
    return torch.rand(3), np.random.rand(3), random.random()


def _same(a, b):
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def _reseed():
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)


def test_states_come_back_after_an_exception_and_nested_blocks():
    _reseed()
    expected = _draw()
    _reseed()
    with pytest.raises(RuntimeError):
        with fork_rng(5):
            _draw()
            raise RuntimeError("inside")
    with fork_rng():
        _draw()
        with fork_rng(7):
            _draw()
        _draw()
    _same(_draw(), expected)


def test_seed_draws_what_manual_seed_draws_and_nested_forks_do_not_disturb_it():
    torch.manual_seed(3)
    plain = torch.rand(4), torch.rand(4)
    torch.manual_seed(99)
    with fork_rng(3):
        first = torch.rand(4)
        with fork_rng(11):
            torch.rand(10)
        second = torch.rand(4)
    assert torch.equal(first, plain[0]) and torch.equal(second, plain[1])


def test_collected_states_round_trip():
    _reseed()
    states = collect_rng_states()
    expected = _draw()
    _draw()
    restore_rng_states(states)
    _same(_draw(), expected)
