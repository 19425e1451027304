"""INVERT: vectorised AUC vs torchmetrics, p-values vs scipy, formula search, parsimony."""

import numpy as np
import pytest
import scipy.stats
import torch
from torchmetrics.classification import BinaryAUROC

from lwtakit.errors import UserError
from lwtakit.evaluation.ranks import auc_matrix, mann_whitney_pvalues, rank_data
from lwtakit.labelers.invert import Formula, label_units


def _tied_data(seed=0, N=240, C=5, K=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, generator=g).round()  # few distinct values: many ties
    x[:, :2] = x[:, :2].clamp_min(0)  # LWTA/ReLU-style exact zeros
    x[:, 4] = 0.0  # a constant (dead) unit
    labels = torch.rand(N, K, generator=g) < torch.linspace(0.05, 0.6, K)
    labels[:, 0] = labels[:, 0] | (x[:, 0] > 0)  # a concept related to a unit
    return x, labels


def test_auc_matrix_equals_torchmetrics_with_ties():
    x, labels = _tied_data()
    got = auc_matrix(x, labels)
    metric = BinaryAUROC()
    for c in range(x.shape[1]):
        for k in range(labels.shape[1]):
            metric.reset()
            metric.update(x[:, c], labels[:, k].long())
            assert abs(float(got[c, k]) - float(metric.compute())) <= 1e-6, (c, k)


def test_auc_nan_for_degenerate_concepts_and_ranks_vs_scipy():
    x, labels = _tied_data()
    labels[:, 1] = False
    labels[:, 2] = True
    got = auc_matrix(x, labels)
    assert torch.isnan(got[:, 1:3]).all() and not torch.isnan(got[:, [0, 3]]).any()
    ranks, _ = rank_data(x)
    np.testing.assert_array_equal(ranks.numpy(), scipy.stats.rankdata(x.numpy(), axis=0))
    with pytest.raises(UserError):
        auc_matrix(x, labels[:10])


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_pvalues_match_scipy(alternative):
    x, labels = _tied_data(seed=1)
    got = mann_whitney_pvalues(x[:, :4], labels, alternative=alternative).numpy()
    for c in range(4):
        for k in range(labels.shape[1]):
            pos, neg = x[labels[:, k], c].double().numpy(), x[~labels[:, k], c].double().numpy()
            ref = scipy.stats.mannwhitneyu(pos, neg, alternative=alternative, method="asymptotic").pvalue
            assert got[c, k] == pytest.approx(ref, rel=1e-6, abs=1e-300), (c, k)


def test_tiny_pvalues_do_not_underflow_in_log_space():
    x = torch.cat([torch.zeros(3000), torch.ones(3000)]).unsqueeze(1) + torch.linspace(0, 1e-3, 6000)[:, None]
    labels = (torch.arange(6000) >= 3000).unsqueeze(1)
    logp = mann_whitney_pvalues(x, labels, log=True)
    z = scipy.stats.mannwhitneyu(x[3000:, 0].numpy(), x[:3000, 0].numpy(), alternative="greater",
                                 method="asymptotic").statistic
    assert z > 0 and float(logp) < -1000  # p ~ 1e-900: zero in float64, finite in log space


def test_formula_printing():
    names = ["red", "blue", "striped", "circle"]
    f = Formula.atom(0, False, names).extend("AND", 3, True)
    assert str(f) == "red AND NOT circle"
    g = Formula.atom(0, False, names).extend("OR", 1, False).extend("AND", 2, False)
    assert str(g) == "(red OR blue) AND striped" and g.length == 3 and g.first_concept == "red"
    h = Formula.atom(0, False, names).extend("AND", 1, False).extend("AND", 2, False)
    assert str(h) == "red AND blue AND striped"


def _concepts(N=600, seed=0):
    """Six common concepts (35%) and fourteen rare ones (3%), independent."""
    g = torch.Generator().manual_seed(seed)
    p = torch.tensor([0.35] * 6 + [0.03] * 14)
    return torch.rand(N, 20, generator=g) < p, [f"c{k}" for k in range(20)]


def test_beam_search_finds_planted_formulas():
    C, names = _concepts()
    g = torch.Generator().manual_seed(1)
    planted = [C[:, 0] & C[:, 1] & ~C[:, 2], (C[:, 0] | C[:, 1]) & ~C[:, 2], C[:, 3] & ~C[:, 4]]
    acts = torch.stack([f.float() for f in planted], 1) + 0.05 * torch.randn(C.shape[0], 3, generator=g)
    rows = label_units(acts, C, names, max_length=3, beam=5)
    for row, truth in zip(rows, planted, strict=True):
        assert torch.equal(row["formula"].evaluate(C), truth), row["label"]
        assert row["auc"] == pytest.approx(float(auc_matrix(acts[:, row["unit"]:row["unit"] + 1],
                                                            truth[:, None])), abs=1e-12)
        # p-value of the final label equals the direct test on its label vector
        direct = mann_whitney_pvalues(acts[:, row["unit"]:row["unit"] + 1], truth[:, None], log=True)
        assert np.log(row["p_value"]) == pytest.approx(float(direct), rel=1e-9)
    assert [r["length"] for r in rows] == [3, 3, 2]
    assert rows[1]["label"] in ("(c0 OR c1) AND NOT c2", "(c1 OR c0) AND NOT c2")


def test_parsimony_keeps_one_concept_label_at_length_three():
    C, names = _concepts()
    g = torch.Generator().manual_seed(2)
    acts = C[:, 5].float().unsqueeze(1) + 0.8 * torch.randn(C.shape[0], 1, generator=g)  # follows c5
    greedy = label_units(acts, C, names, max_length=3, min_gain=0.0, term_alpha=None)[0]
    gain_only = label_units(acts, C, names, max_length=3, term_alpha=None)[0]
    default = label_units(acts, C, names, max_length=3)[0]
    # Reference behaviour: a longer formula (small-sample AUC noise of rare concepts) wins.
    assert greedy["length"] == 3 and greedy["auc"] > default["auc"]
    assert gain_only["length"] > 1  # a margin alone does not stop noise from tiny positive sets
    assert default["label"] == "c5" and default["length"] == 1
    assert default["top5"][0] == "c5"


def test_fraction_bounds_and_bad_input():
    C, names = _concepts(N=300)
    C[:, 0] = torch.arange(300) < 200  # 67% positives: not admissible with max_fraction=0.5
    acts = -C[:, :1].float()
    assert label_units(acts, C, names)[0]["label"] == "NOT c0"  # its negation is (33%)
    assert label_units(-acts, C, names, max_fraction=1.0)[0]["label"] == "c0"
    with pytest.raises(UserError):
        label_units(acts, C, names[:3])


def test_vectorised_term_test_equals_scipy_per_candidate():
    from lwtakit.labelers.invert import _extension_logp

    g = torch.Generator().manual_seed(5)
    N, K = 150, 4
    x = torch.randn(N, generator=g).round(decimals=1).double()  # ties
    C = torch.rand(N, K, generator=g) < 0.4
    F = torch.rand(2, N, generator=g) < 0.5
    got = _extension_logp(x, F, C)
    for b in range(2):
        f = F[b]
        for kind in range(4):
            for k in range(K):
                col = ~C[:, k] if kind in (1, 3) else C[:, k]
                # AND: flipped positives f & ~col must be lower than f & col; OR: ~f & col higher than the rest
                high, low = (f & col, f & ~col) if kind < 2 else (~f & col, ~f & ~col)
                ref = scipy.stats.mannwhitneyu(x[high].numpy(), x[low].numpy(), alternative="greater",
                                               method="asymptotic").pvalue
                assert float(got[b, kind, k].exp()) == pytest.approx(ref, rel=1e-6), (b, kind, k)


def test_invert_finds_hand_wired_colour_detectors_on_concept_shapes():
    from lwtakit.data.synthetic import ConceptShapes
    from lwtakit.recording import record_activations

    class Detectors(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1, bias=False)
            with torch.no_grad():
                w = torch.tensor([[1., -1, -1], [-1, 1, -1], [-1, -1, 1]])  # red, green, blue
                self.conv.weight.copy_(w.view(3, 3, 1, 1))
            self.act = torch.nn.ReLU()

        def forward(self, x):
            return self.act(self.conv(x))

    probe = ConceptShapes(size=200, seed=1, split="val", img_size=32)
    rec = record_activations(Detectors(), probe, ["act"], reduce="max", batch_size=50, progress=False)
    rows = label_units(rec.acts["act"], probe.concept_matrix(), probe.concept_names, max_length=3)
    assert [r["label"] for r in rows] == ["red", "green", "blue"]
    assert all(r["auc"] > 0.9 and r["p_value"] < 1e-10 for r in rows)


def test_vectorised_single_concept_labels_equal_the_beam_search():
    """max_length=1 takes a vectorised path; the beam search with no admissible extension (min_gain > 1)
    must choose the same atom, AUC, p-value and top five for every unit."""
    g = torch.Generator().manual_seed(3)
    N, C, K = 300, 40, 12
    labels = torch.rand(N, K, generator=g) < torch.linspace(0.05, 0.7, K)
    acts = (labels[:, torch.randint(0, K, (C,), generator=g)].float() + torch.randn(N, C, generator=g)).round(
        decimals=1)  # rounding: ties
    acts[:, 0] = 0.0  # a dead unit
    names = [f"c{k}" for k in range(K)]
    fast = label_units(acts, labels, names, max_length=1, max_fraction=0.5)
    beam = label_units(acts, labels, names, max_length=2, min_gain=2.0, max_fraction=0.5)
    for f, b in zip(fast, beam, strict=True):
        assert f["label"] == b["label"] and f["top5"] == b["top5"], (f, b)
        assert f["auc"] == pytest.approx(b["auc"], nan_ok=True)
        assert f["p_value"] == pytest.approx(b["p_value"], rel=1e-9, nan_ok=True)


def _random_formula(rng, names):
    concepts = rng.permutation(len(names))[:rng.integers(1, 6)]
    f = Formula.atom(concepts[0], rng.random() < 0.5, names)
    for c in concepts[1:]:
        f = f.extend(str(rng.choice(["AND", "OR"])), c, rng.random() < 0.5)
    return f


def test_formula_parse_inverts_str_for_random_formulas():
    names = ("red", "dark blue", "striped_shirt", "a b_c d", "mouse (animal)", "(odd", "x", "sky blue_2")
    rng = np.random.default_rng(0)
    labels = torch.rand(64, len(names), generator=torch.Generator().manual_seed(0)) < 0.5
    for _ in range(300):
        f = _random_formula(rng, names)
        assert Formula.parse(str(f), f.names) == f, str(f)
        g = Formula.parse(str(f))  # names in order of appearance
        assert str(g) == str(f) and g.ops() == f.ops()
        assert [n for n in g.names] == list(dict.fromkeys(f.names[c] for c, _ in f.atoms()))
        columns = [names.index(n) for n in g.names]
        assert torch.equal(g.evaluate(labels[:, columns]), f.evaluate(labels))


def test_formula_parse_examples_and_errors():
    f = Formula.parse("((red OR NOT blue) AND striped) OR NOT dark green")
    assert f.names == ("red", "blue", "striped", "dark green")
    assert f.atoms() == [(0, False), (1, True), (2, False), (3, True)] and f.ops() == ["OR", "AND", "OR"]
    assert Formula.parse("NOT c1", ["c0", "c1"]) == Formula.atom(1, True, ["c0", "c1"])
    for bad in ["red AND (blue OR green)", "(red OR blue AND green", "red OR blue) AND green", "red AND NOT "]:
        with pytest.raises(UserError):
            Formula.parse(bad)
    with pytest.raises(UserError, match="unknown"):
        Formula.parse("red AND blue", ["red", "green"])


def test_invert_config_equals_keywords_and_validates():
    from lwtakit.labelers.invert import InvertConfig

    C, names = _concepts()
    g = torch.Generator().manual_seed(4)
    acts = C[:, :3].float() @ torch.rand(3, 4, generator=g) + torch.randn(C.shape[0], 4, generator=g)
    config = InvertConfig(max_length=3, beam=4, term_alpha=None)
    by_config = label_units(acts, C, names, config)
    by_keywords = label_units(acts, C, names, max_length=3, beam=4, term_alpha=None)
    overridden = label_units(acts, C, names, InvertConfig(max_length=2), max_length=3, beam=4, term_alpha=None)
    for rows in (by_keywords, overridden):
        assert [(r["label"], r["auc"], r["p_value"]) for r in rows] == \
            [(r["label"], r["auc"], r["p_value"]) for r in by_config]
    for bad in [dict(max_length=0), dict(beam=0), dict(min_fraction=0.6), dict(max_fraction=1.5),
                dict(min_gain=-0.1)]:
        with pytest.raises(UserError):
            InvertConfig(**bad)
        with pytest.raises(UserError):
            label_units(acts, C, names, **bad)
    with pytest.raises(TypeError):
        label_units(acts, C, names, no_such_setting=1)
