"""Chunked CLIP-Dissect similarities vs dense, loop-based transcriptions of the published formulas.

The oracles below follow the equations of Oikarinen & Weng (ICLR 2023) as implemented in the authors'
reference code, one unit / image / concept at a time, without sharing any code with the module.
"""

import math

import pytest
import torch
from torch import nn

from lwtakit.data import probe_subset
from lwtakit.data.synthetic import PALETTE, ConceptShapes
from lwtakit.errors import UserError
from lwtakit.labelers import clip_dissect as cd


# ------------------------------------------------------------------ dense oracles (written separately)
def _top_images(column, k):
    return torch.argsort(column, descending=True, stable=True)[:k].tolist()


def _log_mean_exp(values):
    mx = max(values)
    return mx + math.log(sum(math.exp(v - mx) for v in values) / len(values))


def oracle_wpmi(A, P, top_k, a, lam, min_prob, p_start=None, p_end=None):
    """E4 (p_start None) / E5: L[k, m] = sum_r log(...), sim = L - lam * log mean_k exp(L[k, m])."""
    N, C = A.shape
    M = P.shape[1]
    S = torch.softmax(a * P, dim=1)  # p(t_m | x_i), softmax over the concepts of each image
    L = torch.zeros(C, M, dtype=P.dtype)
    for k in range(C):
        for r, i in enumerate(_top_images(A[:, k], top_k)):
            for m in range(M):
                if p_start is None:
                    L[k, m] += math.log(S[i, m] + min_prob)
                else:
                    p_r = p_start - r / top_k * (p_start - p_end)
                    L[k, m] += math.log(1 + p_r * (S[i, m] - 1) + min_prob)
    out = torch.empty(C, M, dtype=P.dtype)
    for m in range(M):
        log_pt = _log_mean_exp(L[:, m].tolist())  # the marginal over the C units
        for k in range(C):
            out[k, m] = L[k, m] - lam * log_pt
    return out


def oracle_cos(A, P):
    out = torch.empty(A.shape[1], P.shape[1], dtype=P.dtype)
    for k in range(A.shape[1]):
        for m in range(P.shape[1]):
            q, c = A[:, k], P[:, m]
            out[k, m] = (q * c).sum() / (q.norm() * c.norm())
    return out


def oracle_cos_cubed(A, P, min_norm):
    def prep(x):
        y = (x - x.mean()) ** 3
        return y / max(float(y.norm()), min_norm)

    out = torch.empty(A.shape[1], P.shape[1], dtype=P.dtype)
    for k in range(A.shape[1]):
        for m in range(P.shape[1]):
            out[k, m] = (prep(A[:, k]) * prep(P[:, m])).sum()
    return out


def oracle_rank_reorder(A, P, top_fraction, p, scale_p, n_perm, seed):
    N, C = A.shape
    n = max(1, int(N * top_fraction))
    gen = torch.Generator().manual_seed(seed)  # the documented protocol: n_perm randperm(n) per unit, in order
    out = torch.empty(C, P.shape[1], dtype=P.dtype)
    for k in range(C):
        top = _top_images(A[:, k], n)
        v = [float(A[i, k]) for i in top]  # descending
        w = v[::-1]  # ascending
        diffs = []
        for _ in range(n_perm):
            perm = torch.randperm(n, generator=gen).tolist()
            diffs += [abs(w[r] - w[perm[r]]) ** p for r in range(n)]
        baseline = sum(diffs) / len(diffs)
        for m in range(P.shape[1]):
            c = [float(P[i, m]) for i in top]
            rho = [sum(c[j] < c[r] or (c[j] == c[r] and j < r) for j in range(n)) for r in range(n)]
            err = 1.0 if baseline == 0 else sum(abs(v[r] - v[n - 1 - rho[r]]) ** p for r in range(n)) / n / baseline
            mean_c = sum(c) / n
            if scale_p == 0:
                out[k, m] = -err
            else:
                out[k, m] = -err / mean_c ** scale_p if mean_c > 0 else -math.inf
    return out


def oracle(method, A, P, **params):
    cfg = {**cd.DEFAULTS[method], **params}
    if method == "soft_wpmi":
        return oracle_wpmi(A, P, cfg["top_k"], cfg["a"], cfg["lam"], cfg["min_prob"], cfg["p_start"], cfg["p_end"])
    if method == "wpmi":
        return oracle_wpmi(A, P, cfg["top_k"], cfg["a"], cfg["lam"], cfg["min_prob"])
    if method == "cos":
        return oracle_cos(A, P)
    if method == "cos_cubed":
        return oracle_cos_cubed(A, P, cfg["min_norm"])
    return oracle_rank_reorder(A, P, cfg["top_fraction"], cfg["p"], cfg["scale_p"], cfg["n_perm"], cfg["seed"])


def _problem(N=150, C=7, M=23, D=12, seed=0):
    """Unit-norm embeddings with a shared direction, so that cosines are mostly positive (as with CLIP)."""
    g = torch.Generator().manual_seed(seed)
    common = torch.zeros(D, dtype=torch.float64)
    common[0] = 1.5
    img = torch.nn.functional.normalize(torch.randn(N, D, generator=g, dtype=torch.float64) + common, dim=1)
    txt = torch.nn.functional.normalize(torch.randn(M, D, generator=g, dtype=torch.float64) + common, dim=1)
    A = torch.randn(N, C, generator=g, dtype=torch.float64).relu() + 0.01 * torch.rand(N, C, generator=g,
                                                                                        dtype=torch.float64)
    return A, img, txt


def _close(got, ref, atol=1e-5):
    finite = torch.isfinite(ref)
    assert torch.equal(finite, torch.isfinite(got))
    assert torch.equal(got[~finite], ref[~finite])
    assert (got[finite] - ref[finite]).abs().max() <= atol, (got[finite] - ref[finite]).abs().max()


# Small top sets so that they are a real subset of N=150.
SMALL = {"soft_wpmi": {"top_k": 40}, "wpmi": {"top_k": 12}, "rank_reorder": {"top_fraction": 0.1},
         "cos": {}, "cos_cubed": {}}
_ORACLES: dict = {}


def _oracle_small(method):
    if method not in _ORACLES:
        A, img, txt = _problem()
        _ORACLES[method] = oracle(method, A, img @ txt.T, **SMALL[method])
    return _ORACLES[method]


@pytest.mark.parametrize("method", cd.METHODS)
@pytest.mark.parametrize("chunk_size,unit_chunk", [(None, None), (1, 1), (5, 3), (23, 7), (100, 2)])
def test_chunked_equals_oracle(method, chunk_size, unit_chunk):
    A, img, txt = _problem()
    P = img @ txt.T
    ref = _oracle_small(method)
    assert torch.isfinite(ref).float().mean() > 0.8  # the comparison is mostly about finite values
    for source in (P, (img, txt)):
        got = cd.similarity(A, source, method, chunk_size=chunk_size, unit_chunk=unit_chunk, **SMALL[method])
        assert got.shape == ref.shape
        _close(got, ref)
        assert torch.equal(got.argmax(1), ref.argmax(1))


@pytest.mark.parametrize("method", cd.METHODS)
def test_published_defaults_float32(method):
    # The defaults themselves (top_k=100 etc.) in float32 against the float64 oracle.
    A, img, txt = _problem(N=220, C=5, M=31, seed=1)
    ref = oracle(method, A, img @ txt.T)
    got = cd.similarity(A.float(), (img.float(), txt.float()), method, chunk_size=8, unit_chunk=2)
    assert got.dtype == torch.float32
    finite = torch.isfinite(ref)
    assert torch.equal(finite, torch.isfinite(got))
    tol = 1e-3 * max(1.0, ref[finite].abs().max().item())
    assert (got.double()[finite] - ref[finite]).abs().max() < tol
    assert torch.equal(got.argmax(1), ref.argmax(1))


def test_soft_wpmi_membership_schedule_and_min_prob():
    # p_r = p_start - r / top_k (p_start - p_end): with p_start = p_end = 1 soft-WPMI is WPMI exactly.
    A, img, txt = _problem(N=60, C=4, M=9)
    soft = cd.similarity(A, (img, txt), "soft_wpmi", top_k=10, a=2.0, lam=0.6, p_start=1.0, p_end=1.0)
    hard = cd.similarity(A, (img, txt), "wpmi", top_k=10)
    assert torch.allclose(soft, hard, atol=1e-10)
    # A different schedule and min_prob still match the oracle.
    params = {"top_k": 7, "p_start": 0.9, "p_end": 0.5, "min_prob": 1e-3, "lam": 0.3}
    _close(cd.similarity(A, (img, txt), "soft_wpmi", chunk_size=4, unit_chunk=3, **params),
           oracle("soft_wpmi", A, img @ txt.T, **params))


def test_budget_sets_chunks_and_keeps_results():
    A, img, txt = _problem(N=150, C=6, M=40)
    for method in cd.METHODS:
        params = {"top_k": 30} if "wpmi" in method else {}
        full = cd.similarity(A, (img, txt), method, **params)
        tiny_budget = cd.similarity(A, (img, txt), method, max_bytes=150 * 8 * 3 * 3, **params)  # 3 concepts
        assert torch.equal(torch.isfinite(full), torch.isfinite(tiny_budget))
        assert torch.allclose(full[torch.isfinite(full)], tiny_budget[torch.isfinite(full)], atol=1e-10)


@pytest.mark.parametrize("method", cd.METHODS)
def test_recovers_planted_concepts(method):
    # Oracle P from the true concept indicators, with CLIP-like scale: cosines around 0.2, a concept present
    # in an image adds 0.04-0.08 by how strongly it is shown (real CLIP similarities differ by a few
    # hundredths; the temperature a=10 is tuned for that). Unit k fires for concept perm[k] in proportion to
    # the same strength (+ noise): rank_reorder needs that shared order within the top images.
    # Published defaults (top_k=100).
    g = torch.Generator().manual_seed(3)
    N, M, C = 1000, 200, 12
    present = torch.rand(N, M, generator=g) < 0.05
    strength = present.float() * (1 + torch.rand(N, M, generator=g))
    P = 0.2 + 0.04 * strength + 0.01 * torch.randn(N, M, generator=g)
    perm = torch.randperm(M, generator=g)[:C]
    A = strength[:, perm] + 0.3 * torch.randn(N, C, generator=g)
    names = [f"concept{m}" for m in range(M)]
    rows = cd.label_units(A, P, names, method=method, chunk_size=37, unit_chunk=5)
    assert [r["unit"] for r in rows] == list(range(C))
    assert [r["label"] for r in rows] == [names[m] for m in perm.tolist()]
    for r in rows:
        top = r["top5"].split("|")
        assert len(top) == 5 and top[0] == r["label"] and len(set(top)) == 5
        assert math.isfinite(r["score"])


class PaletteNet(nn.Module):
    """Hand-wired colour detectors: unit c fires on pixels within ``radius`` of palette colour c.

    ``relu(r^2 - ||x - p_c||^2) = relu(2 p_c . x - ||p_c||^2 + r^2 - ||x||^2)``: a 1x1 conv (weights 2 p_c,
    bias r^2 - ||p_c||^2) minus ||x||^2, then ReLU and average pooling (the area of the colour).
    """

    def __init__(self, radius: float = 0.2):
        super().__init__()
        p = torch.tensor(list(PALETTE.values()))
        self.conv = nn.Conv2d(3, len(p), 1)
        self.conv.weight.data.copy_(2 * p.view(len(p), 3, 1, 1))
        self.conv.bias.data.copy_(radius**2 - (p**2).sum(1))
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.act(self.conv(x) - (x**2).sum(1, keepdim=True))).flatten(1)


def test_soft_wpmi_recovers_hand_wired_detectors_on_synthetic_data():
    # The synthetic dataset's true concept vectors give an oracle P (what a perfect CLIP would see, on the
    # CLIP scale of the test above); soft-WPMI with the published defaults must name each wired unit.
    probe = probe_subset(ConceptShapes(size=600, split="val"), 300, seed=0)
    images = torch.stack([probe[i][0] for i in range(len(probe))])
    with torch.no_grad():
        acts = PaletteNet().eval()(images)  # [300, 7], one unit per palette colour
    names = list(probe.concept_names)
    P = 0.2 + 0.08 * torch.from_numpy(probe.concept_matrix()).float()
    rows = cd.label_units(acts, P, names, "soft_wpmi", chunk_size=5, unit_chunk=3)
    assert [r["label"] for r in rows] == list(PALETTE)
    # Same through the factors of P (a 1-dim "image embedding" per concept is not needed: any factorisation).
    ones = torch.ones(len(probe), 1)
    factors = (torch.cat([ones, torch.from_numpy(probe.concept_matrix()).float()], 1),
               torch.cat([0.2 * torch.ones(len(names), 1), 0.08 * torch.eye(len(names))], 1))
    assert [r["label"] for r in cd.label_units(acts, factors, names, "soft_wpmi")] == list(PALETTE)


def test_label_units_matches_similarity_argmax():
    A, img, txt = _problem()
    names = [f"c{i}" for i in range(txt.shape[0])]
    sim = cd.similarity(A, (img, txt), "wpmi")
    rows = cd.label_units(A, (img, txt), names, method="wpmi", top=3)
    for r in rows:
        assert r["label"] == names[int(sim[r["unit"]].argmax())]
        assert abs(r["score"] - float(sim[r["unit"]].max())) < 1e-9
        assert len(r["top5"].split("|")) == 3


def test_marginal_is_over_the_labelled_units():
    # As published, log p(t) is the log-mean-exp of log p(t | q_k) over the units passed in: a subset of
    # units gets other scores (the oracle on the subset), and lam=0 (no marginal) removes the dependence.
    A, img, txt = _problem()
    full = cd.similarity(A, (img, txt), "soft_wpmi", top_k=20)
    subset = cd.similarity(A[:, 2:4], (img, txt), "soft_wpmi", top_k=20)
    assert not torch.allclose(full[2:4], subset)
    _close(subset, oracle("soft_wpmi", A[:, 2:4], img @ txt.T, top_k=20))
    no_marginal = cd.similarity(A, (img, txt), "soft_wpmi", top_k=20, lam=0.0)
    assert torch.allclose(no_marginal[2:4], cd.similarity(A[:, 2:4], (img, txt), "soft_wpmi", top_k=20, lam=0.0))
    # One unit and lam=1: log p(t | q) - log p(t) = 0 for every concept.
    assert torch.equal(cd.similarity(A[:, :1], (img, txt), "soft_wpmi", top_k=20), torch.zeros(1, txt.shape[0],
                                                                                                dtype=A.dtype))


def test_rank_reorder_baseline_seed_and_edge_cases():
    A, img, txt = _problem()
    a = cd.similarity(A, (img, txt), "rank_reorder", top_fraction=0.1)
    b = cd.similarity(A, (img, txt), "rank_reorder", top_fraction=0.1, seed=1)
    assert torch.equal(a, cd.similarity(A, (img, txt), "rank_reorder", top_fraction=0.1))  # deterministic
    # The random baseline is one constant per unit: another seed rescales rows, labels stay.
    finite = torch.isfinite(a)
    assert torch.equal(finite, torch.isfinite(b)) and finite.any(1).all()
    assert not torch.allclose(a[finite], b[finite])
    for k in range(a.shape[0]):
        ratio = a[k, finite[k]] / b[k, finite[k]]
        assert torch.allclose(ratio, ratio[0].expand_as(ratio))
    assert torch.equal(a.argmax(1), b.argmax(1))
    # Constant top activations (baseline 0): err := 1, the score is -1 / mean(c)^scale_p; a concept whose
    # mean cosine over the top images is <= 0 scores -inf.
    P = img @ txt.T
    flat = torch.zeros(A.shape[0], 1, dtype=A.dtype)
    flat[torch.randperm(A.shape[0], generator=torch.Generator().manual_seed(0))[:15]] = 1.0  # the top n = 15
    got = cd.similarity(flat, P, "rank_reorder", top_fraction=0.1)
    _close(got, oracle("rank_reorder", flat, P, top_fraction=0.1))
    negative = cd.similarity(A, -P, "rank_reorder", top_fraction=0.1)
    assert torch.isneginf(negative[torch.isfinite(a)]).all()


def test_bad_inputs_are_user_errors():
    A, img, txt = _problem()
    with pytest.raises(UserError, match="unknown CLIP-Dissect similarity"):
        cd.similarity(A, (img, txt), "jaccard")
    with pytest.raises(UserError, match="unknown parameter"):
        cd.similarity(A, (img, txt), "cos", top_k=3)
    with pytest.raises(UserError, match="images"):
        cd.similarity(A[:10], (img, txt), "cos")
    with pytest.raises(UserError, match="concept names"):
        cd.label_units(A, (img, txt), ["only one"], "cos")
    with pytest.raises(UserError, match="same D"):
        cd.similarity(A, (img, txt[:, :5]), "cos")
    with pytest.raises(UserError, match="p_start"):
        cd.similarity(A, (img, txt), "soft_wpmi", p_start=1.5)
    with pytest.raises(UserError, match="n_perm"):
        cd.similarity(A, (img, txt), "rank_reorder", n_perm=0)
    bad = A.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(UserError, match="NaN"):
        cd.similarity(bad, (img, txt), "cos")
