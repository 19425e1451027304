"""A run's arm: what seeds share, what tells arms apart."""

from lwtakit.arm import arm_id, arm_names, arm_of
from lwtakit.config import load_config, to_dict


def _cfg(*overrides):
    return to_dict(load_config("default", list(overrides)))


def test_runs_that_differ_only_in_seed_and_place_share_an_arm():
    a = _cfg("seed=0", "run_name=a", "logger=csv", "data.num_workers=2")
    b = _cfg("seed=3", "run_name=b", "logger=none", "dissection.passes=16")
    assert arm_of(a) == arm_of(b) and arm_id(a) == arm_id(b)
    assert "seed" not in arm_of(a) and "run_name" not in arm_of(a)


def test_a_training_setting_makes_another_arm_named_by_what_differs():
    u2, u4, dense = _cfg("model.U=2"), _cfg("model.U=4"), _cfg("model.act=relu", "model.U=1")
    assert len({arm_id(u2), arm_id(u4), arm_id(dense)}) == 3
    assert arm_names([u2, u4]) == ["model.U=2", "model.U=4"]
    assert arm_names([dense, u2, u4]) == ["dense", "model.U=2", "model.U=4"]
    assert arm_names([u2]) == [arm_id(u2)]
