"""Temperature schedules: each kind changes T as its formula says (the reference's never fired)."""

import math

import pytest

from lwtakit.errors import UserError
from lwtakit.lwta.temperature import make_schedule


def test_constant():
    f = make_schedule("constant", 1.5)
    assert [f(e) for e in (0, 3, 100)] == [1.5, 1.5, 1.5]


def test_step_changes_every_step_size_epochs():
    f = make_schedule("step", 2.0, step_size=5, gamma=0.5, t_min=0.1)
    assert [f(e) for e in (0, 4, 5, 9, 10)] == [2.0, 2.0, 1.0, 1.0, 0.5]
    assert f(1000) == 0.1  # floor


def test_exponential():
    f = make_schedule("exponential", 1.0, gamma=0.9, t_min=0.05)
    assert f(0) == 1.0
    assert f(3) == pytest.approx(0.9**3)
    assert f(1) < f(0) and f(200) == 0.05


def test_cosine_reaches_t_min_at_epochs():
    f = make_schedule("cosine", 1.0, epochs=10, t_min=0.2)
    assert f(0) == pytest.approx(1.0)
    assert f(5) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert f(10) == pytest.approx(0.2) and f(20) == pytest.approx(0.2)
    vals = [f(e) for e in range(11)]
    assert all(a > b for a, b in zip(vals, vals[1:], strict=False))


def test_bad_input():
    with pytest.raises(UserError, match="unknown temperature schedule"):
        make_schedule("linear", 1.0)
    with pytest.raises(UserError, match="epochs"):
        make_schedule("cosine", 1.0)
    with pytest.raises(UserError, match="not"):
        make_schedule("step", 1.0, epochs=3)
    with pytest.raises(UserError):
        make_schedule("constant", 0.0)
