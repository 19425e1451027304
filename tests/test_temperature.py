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


def _discover_by_the_rule(t0, epochs):
    """DISCOVER's intended annealing applied epoch by epoch: T of every epoch, with T <- T / 1.5 at the end of
    every 5th epoch while T >= 0.3 (the reference's `if (epoch + 1) % 5 == 0`, which its typo never ran)."""
    out, t = [], t0
    for epoch in range(epochs):
        out.append(t)
        if (epoch + 1) % 5 == 0 and t >= 0.3:
            t = t / 1.5
    return out


@pytest.mark.parametrize("t0", [1.67, 1.0, 0.675, 0.45, 0.31, 0.3, 0.29, 0.01, 5.0])
def test_discover_schedule_is_the_papers_rule_applied_epoch_by_epoch(t0):
    f = make_schedule("discover", t0)
    assert [f(e) for e in range(120)] == pytest.approx(_discover_by_the_rule(t0, 120), rel=1e-12)


def test_discover_schedule_from_the_resnet_temperature():
    f = make_schedule("discover", 1.67)
    assert [round(f(e), 3) for e in (0, 4, 5, 10, 15, 20, 24, 25, 90)] == [
        1.67, 1.67, 1.113, 0.742, 0.495, 0.33, 0.33, 0.22, 0.22]
    assert make_schedule("discover", 0.01)(300) == 0.01  # DeiT's T is below 0.3: never annealed


def test_constant_is_not_floored_at_t_min():
    assert make_schedule("constant", 0.01)(50) == 0.01


def test_bad_input():
    with pytest.raises(UserError, match="unknown temperature schedule"):
        make_schedule("linear", 1.0)
    with pytest.raises(UserError, match="epochs"):
        make_schedule("cosine", 1.0)
    with pytest.raises(UserError, match="not"):
        make_schedule("step", 1.0, epochs=3)
    with pytest.raises(UserError):
        make_schedule("constant", 0.0)
    with pytest.raises(UserError, match="discover"):
        make_schedule("discover", 1.67, gamma=0.5)
