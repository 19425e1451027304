"""Label evaluation: final-layer accuracy, planted-concept recovery, text similarity."""

import math

import pytest
import torch

from lwtakit.errors import UserError
from lwtakit.evaluation import (
    class_name_similarity,
    final_layer_accuracy,
    label_similarity,
    planted_recovery,
)
from lwtakit.labelers.invert import Formula, InvertRow, label_units


def row(unit, label, score=None, top5=None):
    """A label row as a labeler makes it: an INVERT formula stays an object."""
    formula = Formula.parse(label) if any(w in label for w in (" AND ", " OR ", "NOT ")) else None
    return InvertRow("fc", unit, "invert", label, score, top5=None if top5 is None else tuple(top5), formula=formula)


def test_final_layer_accuracy_from_rows_and_scores():
    classes = ["cat", "dog", "golden_retriever", "car"]
    rows = [row(0, "Cat", top5=["Cat", "dog"]), row(1, "cat", top5=["cat", "dog"]),
            row(2, "golden retriever", top5=["golden retriever"]), row(3, "truck", top5=["truck", "bus"])]
    assert final_layer_accuracy(rows, classes) == {"top1": 0.5, "top5": 0.75, "n": 4}
    no_top = [row(r.unit, r.label) for r in rows]
    assert math.isnan(final_layer_accuracy(no_top, classes)["top5"])
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.7, 0.0], [0.1, 0.2, 0.3]])
    res = final_layer_accuracy(None, ["a", "b", "c"], scores=scores, concept_names=["a", "b", "c"], k=2)
    assert res == {"top1": 2 / 3, "top5": 1.0, "n": 3}
    with pytest.raises(UserError):
        final_layer_accuracy([row(9, "x")], classes)


def test_final_layer_accuracy_of_invert_on_one_hot_logits():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (400,), generator=g)
    onehot = torch.nn.functional.one_hot(y, 4).bool()
    logits = onehot.float() * 2 + torch.randn(400, 4, generator=g)
    logits[:, 3] = onehot[:, 0].float() * 2 + torch.randn(400, generator=g)  # unit 3 follows class a
    rows = label_units(logits, onehot, ["a", "b", "c", "d"])
    res = final_layer_accuracy([row(r["unit"], r["label"], top5=r["top5"]) for r in rows], ["a", "b", "c", "d"])
    assert res["top1"] == 0.75  # unit 3 is labelled "a"
    assert res["top5"] == 1.0  # only four concepts: every class is among the five best


def test_planted_recovery_reads_the_first_term_of_formulas():
    assert row(0, "(red OR blue) AND striped").concept == "red"
    assert row(0, "NOT red AND circle").concept == "NOT red"
    assert row(0, "large").concept == "large"
    rows = [row(0, "red AND NOT circle"), row(1, "NOT blue"), row(2, "(Striped OR dotted) AND large")]
    assert planted_recovery(rows, {0: "red", 1: "blue", 2: "striped", 3: "ring"}) == 0.5
    with pytest.raises(UserError):
        planted_recovery(rows, {})


def test_similarities():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    torch.testing.assert_close(label_similarity(a, b), torch.tensor([1.0, 2 ** -0.5], dtype=torch.float64))
    vocab = {"cat": [1.0, 0.0], "dog": [0.0, 1.0], "kitten": [0.8, 0.6]}

    def embed(texts):
        return torch.tensor([vocab[t] for t in texts])

    rows = [row(0, "kitten"), row(1, "dog")]
    assert class_name_similarity(rows, ["cat", "dog"], embed) == pytest.approx((0.8 + 1.0) / 2)


def test_concept_coverage_counts_concepts_with_a_confident_unit():
    from lwtakit.evaluation import concept_coverage

    groups = {"colour": ["red", "green"], "shape": ["circle", "square", "ring"]}
    rows = [
        row(0, "red AND NOT circle", 0.95),  # first term counts
        row(1, "NOT green", 0.99),           # a negated term is not the concept
        row(2, "square", 0.5),               # below the score threshold
        row(3, "ring", 0.91),
    ]
    got = concept_coverage(rows, groups)
    assert got == {"colour concepts found": 0.5, "shape concepts found": 1 / 3, "concepts found": 2 / 5}
