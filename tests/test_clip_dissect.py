"""Chunked CLIP-Dissect similarities vs a dense, loop-per-unit transcription of the published formulas."""

import math

import pytest
import torch

from lwtakit.errors import UserError
from lwtakit.labelers import clip_dissect as cd


# ------------------------------------------------------------------ dense reference (written separately)
def dense_wpmi(A, P, top_k, a, lam, p_start=1.0, p_end=1.0):
    N, C = A.shape
    K = min(top_k, N)
    probs = torch.softmax(a * P, dim=1)  # p(t_m | x_i)
    marginal = probs.mean(dim=0)  # p(t_m) over all images
    member = torch.linspace(p_start, p_end, K, dtype=P.dtype)
    out = torch.empty(C, P.shape[1], dtype=P.dtype)
    for k in range(C):
        order = torch.argsort(A[:, k], descending=True, stable=True)[:K]
        cond = 1 - torch.prod(1 - member[:, None] * probs[order], dim=0)
        out[k] = torch.log(cond) - lam * torch.log(marginal)
    return out


def dense_cos(A, P):
    out = torch.empty(A.shape[1], P.shape[1], dtype=P.dtype)
    for k in range(A.shape[1]):
        for m in range(P.shape[1]):
            out[k, m] = torch.nn.functional.cosine_similarity(A[:, k], P[:, m], dim=0)
    return out


def dense_cos_cubed(A, P):
    a3 = (A - A.mean(0)) ** 3
    p3 = (P - P.mean(0)) ** 3
    return dense_cos(a3, p3)


def dense_rank_reorder(A, P, top_fraction, p, scale_p):
    N, C = A.shape
    n = max(1, int(top_fraction * N))
    out = torch.empty(C, P.shape[1], dtype=P.dtype)
    for k in range(C):
        q = A[:, k] - A[:, k].mean()
        q = q / q.norm()
        order = torch.argsort(A[:, k], descending=True, stable=True)[:n]
        w = q[order].clamp_min(0) ** scale_p
        for m in range(P.shape[1]):
            z = P[:, m] - P[:, m].mean()
            z = z / z.norm()
            ideal = torch.sort(z, descending=True).values[:n]
            out[k, m] = -(w * (ideal - z[order]).abs() ** p).sum()
    return out


def dense(method, A, P, **params):
    cfg = {**cd.DEFAULTS[method], **params}
    if method == "soft_wpmi":
        return dense_wpmi(A, P, cfg["top_k"], cfg["a"], cfg["lam"], cfg["p_start"], cfg["p_end"])
    if method == "wpmi":
        return dense_wpmi(A, P, cfg["top_k"], cfg["a"], cfg["lam"])
    if method == "cos":
        return dense_cos(A, P)
    if method == "cos_cubed":
        return dense_cos_cubed(A, P)
    return dense_rank_reorder(A, P, cfg["top_fraction"], cfg["p"], cfg["scale_p"])


def _problem(N=150, C=7, M=23, D=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(N, D, generator=g, dtype=torch.float64), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(M, D, generator=g, dtype=torch.float64), dim=1)
    A = torch.randn(N, C, generator=g, dtype=torch.float64).relu() + 0.01 * torch.rand(N, C, generator=g,
                                                                                        dtype=torch.float64)
    return A, img, txt


# Small top_k so that the top sets are a real subset of N=150.
SMALL = {"soft_wpmi": {"top_k": 40}, "wpmi": {"top_k": 12}, "rank_reorder": {"top_fraction": 0.1},
         "cos": {}, "cos_cubed": {}}


@pytest.mark.parametrize("method", cd.METHODS)
@pytest.mark.parametrize("chunk_size,unit_chunk", [(None, None), (1, 1), (5, 3), (23, 7), (100, 2)])
def test_chunked_equals_dense(method, chunk_size, unit_chunk):
    A, img, txt = _problem()
    P = img @ txt.T
    ref = dense(method, A, P, **SMALL[method])
    for source in (P, (img, txt)):
        got = cd.similarity(A, source, method, chunk_size=chunk_size, unit_chunk=unit_chunk, **SMALL[method])
        assert got.shape == ref.shape
        assert torch.allclose(got, ref, atol=1e-5, rtol=1e-6), (got - ref).abs().max()
        assert torch.equal(got.argmax(1), ref.argmax(1))


@pytest.mark.parametrize("method", cd.METHODS)
def test_published_defaults_float32(method):
    # The defaults themselves (top_k=100 etc.) in float32 against the float64 reference.
    A, img, txt = _problem(N=220, C=5, M=31, seed=1)
    ref = dense(method, A, img @ txt.T)
    got = cd.similarity(A.float(), (img.float(), txt.float()), method, chunk_size=8, unit_chunk=2)
    assert got.dtype == torch.float32
    tol = 1e-3 * max(1.0, ref.abs().max().item())
    assert (got.double() - ref).abs().max() < tol
    assert torch.equal(got.argmax(1), ref.argmax(1))


def test_budget_sets_chunks_and_keeps_results():
    A, img, txt = _problem(N=150, C=6, M=40)
    full = cd.similarity(A, (img, txt), "soft_wpmi", top_k=30)
    tiny_budget = cd.similarity(A, (img, txt), "soft_wpmi", top_k=30, max_bytes=150 * 8 * 3 * 3)  # 3 concepts
    assert torch.allclose(full, tiny_budget, atol=1e-10)


@pytest.mark.parametrize("method", cd.METHODS)
def test_recovers_planted_concepts(method):
    # Oracle P from the true concept indicators, with CLIP-like scale: cosines around 0.2, a concept present
    # in an image adds 0.08 (real CLIP similarities differ by a few hundredths; the temperature a=10 is
    # tuned for that). Unit k fires for concept perm[k] (+ noise). Published defaults (top_k=100).
    g = torch.Generator().manual_seed(3)
    N, M, C = 1000, 200, 12
    present = torch.rand(N, M, generator=g) < 0.05
    P = 0.2 + 0.08 * present.float() + 0.01 * torch.randn(N, M, generator=g)
    perm = torch.randperm(M, generator=g)[:C]
    A = present[:, perm].float() * (1 + torch.rand(N, C, generator=g)) + 0.3 * torch.randn(N, C, generator=g)
    names = [f"concept{m}" for m in range(M)]
    rows = cd.label_units(A, P, names, method=method, chunk_size=37, unit_chunk=5)
    assert [r["unit"] for r in rows] == list(range(C))
    assert [r["label"] for r in rows] == [names[m] for m in perm.tolist()]
    for r in rows:
        top = r["top5"].split("|")
        assert len(top) == 5 and top[0] == r["label"] and len(set(top)) == 5
        assert math.isfinite(r["score"])


def test_label_units_matches_similarity_argmax():
    A, img, txt = _problem()
    names = [f"c{i}" for i in range(txt.shape[0])]
    sim = cd.similarity(A, (img, txt), "wpmi")
    rows = cd.label_units(A, (img, txt), names, method="wpmi", top=3)
    for r in rows:
        assert r["label"] == names[int(sim[r["unit"]].argmax())]
        assert abs(r["score"] - float(sim[r["unit"]].max())) < 1e-9
        assert len(r["top5"].split("|")) == 3


def test_marginal_does_not_depend_on_unit_subset():
    A, img, txt = _problem()
    full = cd.similarity(A, (img, txt), "soft_wpmi", top_k=20)
    subset = cd.similarity(A[:, 2:4], (img, txt), "soft_wpmi", top_k=20)
    assert torch.allclose(full[2:4], subset)


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
    bad = A.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(UserError, match="NaN"):
        cd.similarity(bad, (img, txt), "cos")
