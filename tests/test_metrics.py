"""NeuronEval metrics: every metric against a straightforward per-pair implementation, on data with ties."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryAveragePrecision,
    BinaryF1Score,
    BinaryJaccardIndex,
    BinaryPrecision,
    BinaryRecall,
)

from lwtakit.errors import UserError
from lwtakit.evaluation import metrics as M
from lwtakit.evaluation.ranks import auc_matrix

ALPHA = 0.1


def _data(seed=0, n=60, c=5, k=6):
    """Integer activations (many ties, including at the top-alpha threshold) and concepts of varied density."""
    rng = np.random.default_rng(seed)
    acts = rng.integers(0, 5, size=(n, c)).astype(np.float32)
    acts[:, 1] = rng.integers(0, 2, size=n)  # half the images tie at the threshold
    acts[:, 2] *= -1.5  # negative, non-integer steps
    concepts = rng.random((n, k)) < np.linspace(0.05, 0.6, k)
    concepts[:3, 0] = True  # never empty
    return acts, concepts


def _binarise(a, alpha):
    """NeuronEval's rule written out: active = activation >= the ceil(alpha N)-th largest value."""
    k = math.ceil(alpha * len(a))
    return (a >= np.sort(a)[::-1][k - 1]).astype(int)


def _t(x):
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _reference(name, a, c, alpha):
    """One (unit, concept) pair by the textbook definition (torchmetrics / scipy / a plain loop)."""
    A = _binarise(a, alpha)
    c = c.astype(int)
    n = len(a)
    tp = sum(int(x and y) for x, y in zip(A, c, strict=True))
    tn = sum(int(not x and not y) for x, y in zip(A, c, strict=True))
    if name == "recall":  # NeuronEval: share of the unit's active images with the concept
        return float(BinaryRecall()(_t(c), torch.as_tensor(A)))
    if name == "precision":  # share of the concept's images on which the unit is active
        return float(BinaryPrecision()(_t(c), torch.as_tensor(A)))
    if name == "f1":
        return float(BinaryF1Score()(_t(c), torch.as_tensor(A)))
    if name == "iou":
        return float(BinaryJaccardIndex()(_t(c), torch.as_tensor(A)))
    if name == "accuracy":
        return float(BinaryAccuracy()(_t(c), torch.as_tensor(A)))
    if name == "balanced_accuracy":
        return (tp / A.sum() + tn / (n - A.sum())) / 2
    if name == "auc":
        return float(BinaryAUROC()(_t(c), torch.as_tensor(A)))
    if name == "auprc":
        return float(BinaryAveragePrecision()(_t(c), torch.as_tensor(A)))
    if name == "inverse_auc":
        return float(BinaryAUROC()(_t(a), torch.as_tensor(c)))
    if name == "inverse_auprc":
        return float(BinaryAveragePrecision()(_t(a), torch.as_tensor(c)))
    if name == "correlation":
        return stats.pearsonr(a, c).statistic
    if name == "spearman":
        return stats.spearmanr(a, c).statistic
    if name == "cosine":
        return float(np.dot(a, c) / (np.linalg.norm(a) * np.linalg.norm(c)))
    if name == "mad":
        return float(np.mean(a[c == 1]) - np.mean(a[c == 0]))
    if name == "wpmi":
        log_c = [0.0 if ci else math.log(1e-8) for ci in c]
        return sum(lc for lc, x in zip(log_c, A, strict=True) if x) / A.sum() - math.log(c.mean())
    raise AssertionError(name)


def test_registry_lists_neuroneval_names():
    assert list(M.METRICS) == ["recall", "precision", "f1", "iou", "accuracy", "balanced_accuracy", "auc", "auprc",
                               "inverse_auc", "inverse_auprc", "correlation", "spearman", "cosine", "mad", "wpmi"]
    assert all(m.formula for m in M.METRICS.values())


@pytest.mark.parametrize("name", list(M.METRICS))
def test_every_metric_equals_the_per_pair_definition_with_ties(name):
    acts, concepts = _data()
    got = M.score(name, acts, concepts, alpha=ALPHA)
    assert got.shape == (acts.shape[1], concepts.shape[1]) and got.dtype == torch.float64
    want = np.array([[_reference(name, acts[:, i].astype(np.float64), concepts[:, j], ALPHA)
                      for j in range(concepts.shape[1])] for i in range(acts.shape[1])])
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)
    assert torch.equal(M.METRICS[name](acts, concepts, alpha=ALPHA), got)


@pytest.mark.parametrize("name", list(M.METRICS))
def test_pairs_match_the_matrix_and_chunking_changes_nothing(name, monkeypatch):
    acts, concepts = _data(seed=1, n=50, c=7, k=9)
    full = M.score(name, torch.from_numpy(acts), torch.from_numpy(concepts), alpha=ALPHA)
    units, cids = [0, 3, 3, 6, 1], [8, 0, 2, 5, 1]
    pairs = M.score_pairs(name, acts, concepts, units, cids, alpha=ALPHA)
    torch.testing.assert_close(pairs, full[units, cids], rtol=0, atol=1e-12)
    monkeypatch.setattr(M, "_BUDGET", 4 * 50 * 2)  # 2 columns per block (1 x 2 for the sorting metric)
    torch.testing.assert_close(M.score(name, acts, concepts, alpha=ALPHA), full, rtol=0, atol=1e-12)
    torch.testing.assert_close(M.score_pairs(name, acts, concepts, units, cids, alpha=ALPHA), pairs,
                               rtol=0, atol=1e-12)


def test_inverse_auc_is_inverts_auc():
    acts, concepts = _data(seed=2)
    torch.testing.assert_close(M.score("inverse_auc", acts, concepts), auc_matrix(acts, concepts), rtol=0, atol=1e-12)


def test_ties_at_the_threshold_are_all_active():
    """ceil(0.1 * 10) = 1 image asked for, but three tie at the top: all three count as active."""
    a = np.array([[5, 5, 5, 1, 1, 0, 0, 0, 0, 0]], dtype=float).T
    c = np.array([[1, 0, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=bool).T
    assert M.score("recall", a, c, alpha=0.1).item() == pytest.approx(1 / 3)
    assert M.score("precision", a, c, alpha=0.1).item() == 1.0
    assert M.score("iou", a, c, alpha=0.1).item() == pytest.approx(1 / 3)


def test_degenerate_vectors_score_finite_values():
    """A constant unit, an empty and a full concept: NeuronEval's values (correlation 0, AUC 0) and ours where its
    code is not finite (average precision 0 without a positive, wpmi's prior floored at 1e-8)."""
    a = np.array([[1.0] * 6, [0, 1, 2, 3, 4, 5]]).T
    c = np.array([[0] * 6, [1] * 6, [0, 0, 0, 1, 1, 1]], dtype=bool).T
    for name in M.METRICS:
        assert torch.isfinite(M.score(name, a, c, alpha=0.2)).all(), name
    assert M.score("correlation", a, c)[0].tolist() == [0.0, 0.0, 0.0]
    assert M.score("inverse_auc", a, c)[1, :2].tolist() == [0.0, 0.0]
    assert M.score("inverse_auprc", a, c)[1, 0].item() == 0.0
    assert M.score("wpmi", a, c, alpha=0.2)[1, 0].item() == pytest.approx(math.log(1e-8) - math.log(1e-8))


def test_bad_input_is_a_user_error():
    acts, concepts = _data()
    with pytest.raises(UserError, match="unknown metric 'bogus'; known metrics: recall, precision"):
        M.score("bogus", acts, concepts)
    for alpha in (0, 1, -0.1, 1.5):
        with pytest.raises(UserError, match=r"alpha must be in \(0, 1\)"):
            M.score("f1", acts, concepts, alpha=alpha)
    with pytest.raises(UserError, match="boolean"):
        M.score("f1", acts, concepts * 2)
    with pytest.raises(UserError, match="N = 60 rows"):
        M.score("f1", acts, concepts[:5])
    with pytest.raises(UserError, match="one concept per unit"):
        M.score_pairs("f1", acts, concepts, [0, 1], [0])
    with pytest.raises(UserError, match="unit ids must lie in"):
        M.score_pairs("f1", acts, concepts, [9], [0])
    assert M.parse_metrics(None) == list(M.METRICS) == M.parse_metrics("all")
    assert M.parse_metrics("f1, iou,f1") == ["f1", "iou"]
    with pytest.raises(UserError, match="known metrics"):
        M.parse_metrics("f1,nope")


@pytest.mark.parametrize("name", ["inverse_auprc", "spearman", "wpmi", "balanced_accuracy"])
def test_score_columns_with_repeats_equals_one_column_at_a_time(name, monkeypatch):
    acts, concepts = _data(seed=4, n=40, c=6, k=3)
    blocks = np.stack([concepts[:, [r % 3] * 6] ^ (np.arange(40)[:, None] % (r + 2) == 0) for r in range(4)], 1)
    monkeypatch.setattr(M, "_BUDGET", 4 * 40 * 4 * 2)  # 2 units x 4 repeats per block
    got = M.score_columns(name, acts, blocks, alpha=ALPHA)
    assert got.shape == (4, 6)
    for r in range(4):
        torch.testing.assert_close(got[r], M.score_columns(name, acts, blocks[:, r], alpha=ALPHA), rtol=0, atol=1e-12)
        torch.testing.assert_close(got[r], M.score_pairs(name, acts, blocks[:, r], range(6), range(6), alpha=ALPHA),
                                   rtol=0, atol=1e-12)
