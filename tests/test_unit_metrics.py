"""Frequency-matched label metrics (a perfect unit scores ~1 at every label frequency, a random one chance), the
per-unit table with dead units apart, and the sanity gate of the verdict metrics across arms."""

import math

import numpy as np
import pytest
import torch

from lwtakit.errors import UserError
from lwtakit.evaluation.metrics import score_columns
from lwtakit.evaluation.reliability import split_half_reliability
from lwtakit.evaluation.sanity import SanityConfig, SanityRow, metrics_passing_every_arm, sanity_check, scorer_row
from lwtakit.evaluation.unit_metrics import (
    CONCEPTS,
    CORRELATION,
    CORRELATION_DISATTENUATED,
    DEAD,
    F1_MATCHED,
    KAPPA_MATCHED,
    LABEL_FREQUENCY,
    RELIABILITY,
    UNIT_METRICS,
    VERDICT_METRICS,
    frequency_histogram,
    layer_unit_metrics,
    matched_sanity_scorer,
    matched_scores,
    tidy_rows,
)

N = 2000
FREQS = (0.05, 0.2, 0.4)


def _labels(rng, freqs=FREQS):
    return rng.random((N, len(freqs))) < np.array(freqs)


def _cohen_kappa(pred: np.ndarray, truth: np.ndarray) -> float:
    """Cohen (1960) from the 2 x 2 table, written out independently."""
    table = np.array([[np.sum(pred & truth), np.sum(pred & ~truth)], [np.sum(~pred & truth), np.sum(~pred & ~truth)]])
    p_o = np.trace(table) / N
    p_e = (table.sum(1) * table.sum(0)).sum() / N ** 2
    return (p_o - p_e) / (1 - p_e)


def test_perfect_units_score_one_at_every_frequency_where_fixed_alpha_is_capped():
    rng = np.random.default_rng(0)
    labels = _labels(rng)
    dense_perfect = labels + rng.normal(0, 0.1, labels.shape)           # continuous, concept images on top
    sparse_perfect = labels * (1 + rng.random(labels.shape))             # zero off the concept (ties)
    for acts in (dense_perfect, sparse_perfect):
        got = matched_scores(acts, labels)
        assert (got[F1_MATCHED] >= 0.95).all() and (got[KAPPA_MATCHED] >= 0.95).all(), got
        np.testing.assert_allclose(got[LABEL_FREQUENCY], labels.mean(0))
        fixed = score_columns("f1", acts, labels, alpha=0.05)
        ceiling = 2 * 0.05 / (0.05 + labels.mean(0))                       # tp <= n_A = 0.05 N
        assert (fixed <= torch.from_numpy(ceiling) + 1e-3).all() and fixed[2] < 0.25


def test_random_units_score_chance_and_kappa_is_cohens():
    rng = np.random.default_rng(1)
    labels = np.repeat(_labels(rng), 40, axis=1)                            # 40 random units per frequency
    acts = rng.normal(size=labels.shape)
    got = matched_scores(acts, labels)
    for j, f in enumerate(FREQS):
        cols = slice(40 * j, 40 * (j + 1))
        assert abs(float(got[KAPPA_MATCHED][cols].mean())) < 0.02
        assert abs(float(got[F1_MATCHED][cols].mean()) - f) < 0.02         # F1 matched at chance is f
    for u in (0, 50, 119):
        n_c = int(labels[:, u].sum())
        top = np.zeros(N, bool)
        top[np.argsort(-acts[:, u], kind="stable")[:n_c]] = True
        assert float(got[KAPPA_MATCHED][u]) == pytest.approx(_cohen_kappa(top, labels[:, u]), abs=1e-12)
        assert float(got[F1_MATCHED][u]) == pytest.approx(np.sum(top & labels[:, u]) / n_c, abs=1e-12)


def test_layer_table_leaves_dead_units_out_and_counts_them():
    rng = np.random.default_rng(2)
    concepts = _labels(rng, (0.1, 0.2, 0.3, 0.25))
    acts = np.stack([concepts[:, 0] + rng.normal(0, 0.3, N), np.zeros(N), concepts[:, 1] + concepts[:, 3] * 1.0
                     + rng.normal(0, 0.3, N), np.full(N, 4.0)], 1)
    vectors = concepts[:, [0, 0, 1, 2]]
    half_a = acts + rng.normal(0, 0.2, acts.shape) * (acts.std(0) > 0)
    half_b = acts + rng.normal(0, 0.2, acts.shape) * (acts.std(0) > 0)
    rel = split_half_reliability(half_a, half_b, passes=4)
    table = layer_unit_metrics(acts, concepts, vectors, reliability=rel)
    assert table[DEAD].tolist() == [0.0, 1.0, 0.0, 1.0]
    for name in (F1_MATCHED, KAPPA_MATCHED, CORRELATION, CORRELATION_DISATTENUATED, CONCEPTS, LABEL_FREQUENCY,
                 RELIABILITY):
        assert math.isnan(table[name][1]) and math.isnan(table[name][3]), name
    assert table[CONCEPTS][0] == 1 and table[CONCEPTS][2] == 2
    r0 = np.corrcoef(acts[:, 0], concepts[:, 0])[0, 1]
    assert float(table[CORRELATION_DISATTENUATED][0]) == pytest.approx(r0 / math.sqrt(float(rel[0])), rel=1e-9)
    assert CORRELATION_DISATTENUATED not in layer_unit_metrics(acts, concepts, vectors)  # not assumed
    rows = tidy_rows(table, arm="lwta", seed=3, run="runs/a", layer="fc")
    assert sum(r["value"] for r in rows if r["metric"] == DEAD) == 2
    assert {r["unit"] for r in rows if r["metric"] == KAPPA_MATCHED} == {0, 2}
    assert set(rows[0]) == {"arm", "seed", "run", "layer", "unit", "metric", "value"}
    assert set(VERDICT_METRICS) <= set(UNIT_METRICS)
    with pytest.raises(UserError, match="one value per unit"):
        layer_unit_metrics(acts, concepts, vectors, reliability=rel[:2])


def test_frequency_histogram_counts_labels():
    hist = frequency_histogram(torch.tensor([0.05, 0.06, 0.45, float("nan"), 1.0]), bins=4)
    assert [h["units"] for h in hist] == [2, 1, 0, 1] and hist[1]["low"] == 0.25


def test_matched_kappa_passes_neuroeval_sanity_with_one_perturbation_and_a_blind_score_fails():
    rng = np.random.default_rng(4)
    labels = _labels(rng, (0.05, 0.1, 0.2, 0.3, 0.4) * 4)
    acts = labels + rng.normal(0, 0.3, labels.shape)
    row = scorer_row(KAPPA_MATCHED, matched_sanity_scorer(), (-1.0, 1.0), acts, labels)
    assert row.passes and row.missing_decrease == row.extra_decrease == 1.0
    blind = scorer_row("blind", lambda a, cols, ref: a.mean(0), (0.0, 1.0), acts, labels)  # ignores the label
    assert not blind.passes and blind.missing_decrease == blind.extra_decrease == 0.0


def test_one_perturbation_protocol_matches_a_hand_computed_share():
    """NeuronEval's protocol: the unit's score after ONE perturbation, compared with its score before; redone
    here with the same generator stream and numpy F1."""
    from lwtakit.evaluation.sanity import missing_labels

    rng = np.random.default_rng(5)
    labels = _labels(rng, (0.3,) * 30)
    acts = labels * 0.2 + rng.normal(0, 1, labels.shape)     # weak units: one perturbation is noisy
    config = SanityConfig(metrics=("f1",), alpha=0.05)
    got = sanity_check(acts, labels, config, units=range(30), label_vectors=labels).rows[0]
    missing = missing_labels(torch.from_numpy(labels), torch.Generator().manual_seed(0)).numpy()
    k = math.ceil(0.05 * N)
    top = acts >= np.sort(acts, 0)[::-1][k - 1]
    f1 = lambda c: 2 * (top & c).sum(0) / (top.sum(0) + c.sum(0))  # noqa: E731
    assert got.missing_decrease == pytest.approx(np.mean((f1(missing) - f1(labels)) < -1e-3))
    averaged = sanity_check(acts, labels, SanityConfig(metrics=("f1",), alpha=0.05, protocol="averaged"),
                            units=range(30), label_vectors=labels).rows[0]
    assert averaged != got


def test_a_metric_enters_the_verdict_only_if_it_passes_on_every_arm():
    ok, bad = SanityRow("f1", 1.0, 0.95, True), SanityRow("f1", 0.97, 0.4, False)
    corr = SanityRow("correlation", 1.0, 1.0, True)
    kept, dropped = metrics_passing_every_arm({"dense": [ok, corr], "U4": [bad, corr]},
                                              ["f1", "correlation", "heldout_kappa_matched"])
    assert kept == ["correlation"]
    assert "arm U4" in dropped["f1"] and "40%" in dropped["f1"] and "dense" not in dropped["f1"]
    assert "not tested on arm dense" in dropped["heldout_kappa_matched"]
    with pytest.raises(UserError, match="no arm"):
        metrics_passing_every_arm({}, ["f1"])
