"""NeuronEval's missing/extra-labels sanity tests on planted and random data."""

import numpy as np
import pytest
import torch

from lwtakit.errors import UserError
from lwtakit.evaluation.sanity import SanityConfig, extra_labels, missing_labels, sanity_check

PASSING = ("f1", "iou", "correlation", "cosine", "auprc")


def _planted(n=1000, seed=0):
    """Six units that fire exactly on their concept (0/1 activations), six distractor concepts, one dead unit."""
    rng = np.random.default_rng(seed)
    freq = np.array([0.05, 0.08, 0.1, 0.15, 0.2, 0.3] * 2)
    concepts = rng.random((n, len(freq))) < freq
    acts = np.concatenate([concepts[:, :6].astype(np.float32), np.zeros((n, 1), np.float32)], axis=1)
    return acts, concepts


def _table(result):
    return {r.metric: (r.missing_decrease, r.extra_decrease, r.passes) for r in result.rows}


def test_planted_units_show_the_known_pass_fail_pattern():
    """A unit that fires exactly on its concept: the paper's passing metrics drop under both perturbations for every
    unit. NeuronEval's recall (tp / n_active) cannot drop when positives are added, its precision (tp / n_concept)
    cannot drop when positives are removed (the unit stays active on all that remain)."""
    acts, concepts = _planted()
    result = sanity_check(acts, concepts, SanityConfig(metrics=(*PASSING, "recall", "precision")))
    table = _table(result)
    assert result.n_units == 6  # the dead unit is left out
    for name in PASSING:
        assert table[name] == (1.0, 1.0, True), name
    assert table["recall"] == (1.0, 0.0, False)
    assert table["precision"] == (0.0, 1.0, False)


def test_given_labels_are_tested_for_every_metric():
    acts, concepts = _planted()
    config = SanityConfig(metrics=("f1", "recall", "mad", "wpmi"))
    best = sanity_check(acts, concepts, config, units=range(6))
    given = sanity_check(acts, concepts, config, units=range(6), label_vectors=concepts[:, :6])
    assert _table(given)["f1"] == _table(best)["f1"] == (1.0, 1.0, True)
    assert _table(given)["recall"] == (1.0, 0.0, False)
    # mad on a 0/1 unit: the dropped positives raise the off-concept mean, the extra ones lower the on-concept mean
    assert _table(given)["mad"] == (1.0, 1.0, True)
    with pytest.raises(UserError, match="one column per unit"):
        sanity_check(acts, concepts, config, units=range(6), label_vectors=concepts[:, :5])


def test_same_seed_same_table_other_seed_other_table():
    rng = np.random.default_rng(3)
    acts = rng.integers(0, 6, size=(300, 40)).astype(np.float32)  # ties
    concepts = rng.random((300, 10)) < 0.1
    config = SanityConfig(metrics=("correlation", "inverse_auc", "iou", "mad"), repeats=2, alpha=0.05,
                          protocol="averaged")
    first = sanity_check(acts, concepts, config)
    assert sanity_check(acts, concepts, config) == first
    other = sanity_check(acts, concepts, SanityConfig(**{**config.__dict__, "seed": 1}))
    assert other != first
    for r in first.rows:
        assert 0 <= r.missing_decrease <= 1 and 0 <= r.extra_decrease <= 1


def test_perturbations_halve_and_double_the_positives():
    gen = torch.Generator().manual_seed(0)
    cols = torch.zeros(20000, 3, dtype=torch.bool)
    cols[:2000, 0] = cols[:500, 1] = True
    cols[:, 2] = True  # no negative to add
    missing, extra = missing_labels(cols, gen), extra_labels(cols, gen)
    assert not (missing & ~cols).any() and (extra | ~cols).all()  # subsets / supersets
    assert missing[:, 0].sum().item() == pytest.approx(1000, abs=100)
    assert extra[:, 0].sum().item() == pytest.approx(4000, abs=150)
    assert extra[:, 1].sum().item() == pytest.approx(1000, abs=80)
    assert extra[:, 2].all()
    again = torch.Generator().manual_seed(0)
    assert torch.equal(missing_labels(cols, again), missing)


@pytest.mark.parametrize("kwargs, match", [({"repeats": 0}, "repeats must be >= 1"),
                                           ({"alpha": 1.0}, r"alpha must be in \(0, 1\)"),
                                           ({"metrics": ("f1", "nope")}, "unknown metric 'nope'; known metrics")])
def test_bad_config_is_a_user_error(kwargs, match):
    with pytest.raises(UserError, match=match):
        SanityConfig(**kwargs)


def test_no_varying_unit_is_a_user_error():
    with pytest.raises(UserError, match="no tested unit varies"):
        sanity_check(np.ones((10, 2)), np.eye(10, 3, dtype=bool))
