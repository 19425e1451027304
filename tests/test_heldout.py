"""Held-out scores, simulation and concepts per unit, each against an independent computation."""

import numpy as np
import pytest
import torch
from scipy import stats

from lwtakit.errors import UserError
from lwtakit.evaluation import heldout as H
from lwtakit.evaluation import metrics as M
from lwtakit.labelers.invert import Formula, InvertRow
from lwtakit.labels import LabelRow

METRICS = ["f1", "iou", "auprc", "correlation", "inverse_auc", "inverse_auprc", "mad"]


def _data(seed=0, n=80, c=6):
    """Integer activations (ties) and one label column per unit, some related to the unit, some not."""
    rng = np.random.default_rng(seed)
    acts = rng.integers(0, 6, size=(n, c)).astype(np.float64)
    labels = (acts + rng.normal(0, 2, size=(n, c))) > 3
    labels[:, 1] = rng.random(n) < 0.3  # unrelated
    return acts, labels


def test_scores_equal_metrics_score_on_the_same_columns():
    acts, labels = _data()
    out = H.heldout_scores(acts, labels, METRICS, alpha=0.1)
    assert set(out) == set(METRICS) | {"p_value"}
    for name in METRICS:
        full = M.score(name, acts, labels, alpha=0.1).diagonal()
        np.testing.assert_allclose(out[name].numpy(), full.numpy(), rtol=0, atol=1e-12)


def test_pvalue_equals_scipy_mann_whitney_per_unit():
    acts, labels = _data(1)
    p = H.heldout_pvalues(acts, labels)
    for i in range(acts.shape[1]):
        ref = stats.mannwhitneyu(acts[labels[:, i], i], acts[~labels[:, i], i], alternative="greater",
                                 method="asymptotic").pvalue
        assert p[i].item() == pytest.approx(ref, rel=1e-9, abs=1e-300)


def test_unlabelled_units_nan_by_mask_or_nan_column():
    acts, labels = _data(2)
    mask = np.array([True, False, True, True, False, True])
    by_mask = H.heldout_scores(acts, labels, ["f1", "correlation"], alpha=0.1, labelled=mask)
    float_labels = labels.astype(np.float64)
    float_labels[:, ~mask] = np.nan
    by_nan = H.heldout_scores(acts, float_labels, ["f1", "correlation"], alpha=0.1)
    full = H.heldout_scores(acts, labels, ["f1", "correlation"], alpha=0.1)
    for key in ("f1", "correlation", "p_value"):
        for got in (by_mask[key], by_nan[key]):
            assert torch.isnan(got[~torch.from_numpy(mask)]).all()
            assert torch.equal(got[torch.from_numpy(mask)], full[key][torch.from_numpy(mask)])
    partly = float_labels.copy()
    partly[0, 0] = np.nan
    with pytest.raises(UserError, match="NaN on some images"):
        H.heldout_scores(acts, partly, ["f1"])


def test_degenerate_label_has_nan_pvalue_and_simulation():
    acts, labels = _data(3)
    labels[:, 2] = False
    acts[:, 4] = 1.0
    p, sim = H.heldout_pvalues(acts, labels), H.simulation(acts, labels)
    assert torch.isnan(p[[2, 4]]).all() and torch.isnan(sim[[2, 4]]).all()
    assert torch.isfinite(p[[0, 1, 3, 5]]).all() and torch.isfinite(sim[[0, 1, 3, 5]]).all()


def test_simulation_equals_numpy_corrcoef():
    acts, labels = _data(4)
    acts = acts + np.random.default_rng(0).normal(size=acts.shape)
    sim = H.simulation(acts, labels).numpy()
    for i in range(acts.shape[1]):
        assert sim[i] == pytest.approx(np.corrcoef(acts[:, i], labels[:, i])[0, 1], abs=1e-12)


def _bh_loop(p):
    """Benjamini-Hochberg written out for one family (NaN = no test)."""
    idx = [i for i in range(len(p)) if not np.isnan(p[i])]
    m = len(idx)
    ordered = sorted(idx, key=lambda i: p[i])
    out = np.full(len(p), np.nan)
    running = 1.0
    for rank in range(m, 0, -1):
        i = ordered[rank - 1]
        running = min(running, p[i] * m / rank)
        out[i] = running
    return out


def test_bh_adjust_equals_loop_and_scipy():
    rng = np.random.default_rng(5)
    p = rng.random((7, 12)) ** 3
    p[0, :4] = p[0, 4]  # ties
    p[1, [2, 5]] = np.nan
    p[2] = np.nan
    adjusted = H.bh_adjust(p).numpy()
    for row in range(len(p)):
        np.testing.assert_allclose(adjusted[row], _bh_loop(p[row]), rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(adjusted[3:], stats.false_discovery_control(p[3:], axis=1), rtol=1e-12)


def test_concept_pvalues_equal_scipy():
    rng = np.random.default_rng(6)
    acts = rng.normal(size=(50, 3))
    concepts = rng.random((50, 4)) < 0.4
    concepts[:, 3] = False
    p = H.concept_pvalues(acts, concepts, "correlation").numpy()
    q = H.concept_pvalues(acts, concepts, "inverse_auc").numpy()
    for i in range(3):
        for j in range(3):
            ref = stats.pearsonr(acts[:, i], concepts[:, j].astype(float), alternative="greater").pvalue
            assert p[i, j] == pytest.approx(ref, rel=1e-9)
            ref = stats.mannwhitneyu(acts[concepts[:, j], i], acts[~concepts[:, j], i], alternative="greater",
                                     method="asymptotic").pvalue
            assert q[i, j] == pytest.approx(ref, rel=1e-9)
    assert np.isnan(p[:, 3]).all() and np.isnan(q[:, 3]).all()
    with pytest.raises(UserError, match="correlation or inverse_auc"):
        H.concept_pvalues(acts, concepts, "f1")


@pytest.mark.parametrize("metric", ["correlation", "inverse_auc"])
def test_concepts_per_unit_on_planted_data(metric):
    counts = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        concepts = rng.random((400, 20)) < 0.3
        two = concepts[:, 0] * 1.0 + concepts[:, 1] * 1.0 + rng.normal(0, 0.5, 400)
        noise = rng.normal(size=400)
        counts.append(H.concepts_per_unit(np.stack([two, noise], 1), concepts, q=0.05, metric=metric).tolist())
    counts = np.array(counts)
    # both planted concepts always found; at FDR 0.05 per unit, a null concept sneaks in now and then
    assert (counts[:, 0] >= 2).all() and (counts[:, 0] == 2).sum() >= 7
    assert (counts[:, 1] == 0).sum() >= 8


def test_concepts_per_unit_counts_adjusted_pvalues():
    rng = np.random.default_rng(7)
    acts = rng.normal(size=(60, 4))
    concepts = rng.random((60, 15)) < 0.5
    acts[:, 0] += concepts[:, :5].sum(1)
    p = H.concept_pvalues(acts, concepts).numpy()
    expected = [int((_bh_loop(p[i]) <= 0.1).sum()) for i in range(4)]
    assert H.concepts_per_unit(acts, concepts, q=0.1).tolist() == expected
    with pytest.raises(UserError, match="q must be in"):
        H.concepts_per_unit(acts, concepts, q=0)


def test_label_vectors_for_rows():
    names = ["red", "blue", "round"]
    concepts = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    formula = Formula.atom(0, False, names).extend("AND", 2, True)  # red AND NOT round
    rows = [InvertRow("l", 3, "invert", label=str(formula), formula=formula, length=2),
            LabelRow("l", 0, "clip", label="NOT blue"),
            LabelRow("l", 1, "clip", label=""),
            LabelRow("l", 2, "clip", label="striped")]
    with pytest.raises(UserError, match="not a known concept"):
        H.label_vectors_for(rows, concepts, names)
    vectors, labelled = H.label_vectors_for(rows, concepts, names, skip_unknown=True)
    assert labelled.tolist() == [True, True, False, False]
    assert vectors[:, 0].tolist() == [False, False, True, False]
    assert vectors[:, 1].tolist() == [True, False, False, True]
    by_unit, labelled = H.label_vectors_for(rows, concepts, names, n_units=5, skip_unknown=True)
    assert labelled.tolist() == [True, False, False, True, False]
    assert torch.equal(by_unit[:, 3], vectors[:, 0]) and torch.equal(by_unit[:, 0], vectors[:, 1])
    with pytest.raises(UserError, match="distinct units"):
        H.label_vectors_for(rows + rows[:1], concepts, names, n_units=5, skip_unknown=True)
    with pytest.raises(UserError, match="other concept names"):
        H.label_vectors_for(rows[:1], concepts, ["a", "b", "c"])


def test_bad_inputs():
    acts, labels = _data()
    with pytest.raises(UserError, match="unknown metric"):
        H.heldout_scores(acts, labels, ["nope"])
    with pytest.raises(UserError, match="alpha"):
        H.heldout_scores(acts, labels, ["f1"], alpha=1.0)
    with pytest.raises(UserError, match=r"\[N, C\] like"):
        H.heldout_scores(acts, labels[:, :3], ["f1"])
    with pytest.raises(UserError, match="at least 2"):
        H.simulation(acts[:1], labels[:1])
