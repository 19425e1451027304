"""The polysemanticity measure recovers a planted unit's number of concepts whatever its noise and mc passes,
where the significance count (concepts_per_unit) moves with them; dead units get no count."""

import math

import numpy as np
import pytest
import torch

from lwtakit.errors import UserError
from lwtakit.evaluation.heldout import concepts_per_unit
from lwtakit.evaluation.polysemanticity import PolysemanticityOptions, concept_counts, unit_concepts

N, K_PLANTED = 1200, 6
UNITS_PER_K = 8


def _concepts(rng):
    """Six independent concepts at frequencies 0.1-0.4, then distractors: a subset and a superset of concept 0
    (overlapping it, like "dog" / "animal"), and six unrelated ones."""
    freq = np.array([0.1, 0.15, 0.2, 0.25, 0.3, 0.4])
    base = rng.random((N, K_PLANTED)) < freq
    subset = base[:, :1] & (rng.random((N, 1)) < 0.6)
    superset = base[:, :1] | (rng.random((N, 1)) < 0.1)
    unrelated = rng.random((N, 6)) < 0.2
    return np.concatenate([base, subset, superset, unrelated], axis=1)


def _planted_units(rng, concepts, sigma, passes):
    """``UNITS_PER_K`` units for each k in 1, 2, 3: activation = the sum of k of the planted indicators, plus the
    mean of ``passes`` draws of N(0, sigma^2) noise (the mc average of noisy passes)."""
    cols, truth = [], []
    for k in (1, 2, 3):
        for u in range(UNITS_PER_K):
            chosen = [(u + i) % K_PLANTED for i in range(k)]
            signal = concepts[:, chosen].sum(1).astype(np.float64)
            cols.append(signal + rng.normal(0, sigma, size=(passes, N)).mean(0))
            truth.append(k)
    return np.stack(cols, 1), np.array(truth)


@pytest.mark.parametrize("sigma", [0.1, 0.7, 1.5])
@pytest.mark.parametrize("passes", [1, 4, 16])
def test_planted_units_give_their_number_of_concepts(sigma, passes):
    rng = np.random.default_rng(100 + int(10 * sigma) + passes)
    concepts = _concepts(rng)
    acts, truth = _planted_units(rng, concepts, sigma, passes)
    counts = concept_counts(acts, concepts).numpy()
    for k in (1, 2, 3):
        got = counts[truth == k]
        assert np.median(got) == k, (k, got)
        assert np.mean(got == k) >= 0.85, (k, got)  # Bonferroni at 0.05: a rare extra concept by chance


def test_the_chosen_concepts_are_the_planted_ones_not_their_overlaps():
    rng = np.random.default_rng(7)
    concepts = _concepts(rng)
    y = concepts[:, 0] + concepts[:, 3] + rng.normal(0, 0.5, N)
    assert sorted(unit_concepts(y, concepts)) == [0, 3]


def test_significance_count_moves_with_passes_the_measure_does_not():
    """The old count (BH-significant correlations) adds the overlapping distractors as noise falls; the measure
    stays at k = 1."""
    rng = np.random.default_rng(3)
    concepts = _concepts(rng)
    signal = concepts[:, :1].astype(np.float64).repeat(UNITS_PER_K, 1)
    noisy = signal + rng.normal(0, 3.0, size=signal.shape)
    clean = signal + rng.normal(0, 3.0, size=(16, *signal.shape)).mean(0)
    old_noisy = concepts_per_unit(torch.from_numpy(noisy), torch.from_numpy(concepts)).double().mean()
    old_clean = concepts_per_unit(torch.from_numpy(clean), torch.from_numpy(concepts)).double().mean()
    assert old_clean > old_noisy + 0.5
    assert float(concept_counts(noisy, concepts).median()) == float(concept_counts(clean, concepts).median()) == 1


def test_dead_units_have_no_count_and_unexplained_units_count_zero():
    rng = np.random.default_rng(1)
    concepts = _concepts(rng)
    acts = np.stack([np.zeros(N), np.full(N, 2.5), rng.normal(size=N), concepts[:, 2] * 1.0], 1)
    counts = concept_counts(acts, concepts)
    assert math.isnan(counts[0]) and math.isnan(counts[1])
    assert counts[2] == 0 and counts[3] == 1


def test_bad_input_is_one_clear_error():
    with pytest.raises(UserError, match="same N"):
        concept_counts(np.zeros((10, 2)), np.zeros((9, 3), bool))
    with pytest.raises(UserError, match="boolean"):
        concept_counts(np.zeros((10, 2)), np.full((10, 3), 0.5))
    with pytest.raises(UserError, match="relative"):
        PolysemanticityOptions(relative=0)
