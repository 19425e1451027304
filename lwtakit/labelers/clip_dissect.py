"""CLIP-Dissect similarity functions, computed in chunks (Oikarinen & Weng, ICLR 2023).

Notation (paper Sec. 3, "Step 1-3"): probe images x_1..x_N, concepts t_1..t_M, the concept-activation
matrix ``P_im = I_i . T_m`` (normalised CLIP image and text embeddings, Step 1), and the activation
vector ``q_k = A[:, k]`` of unit k over the probe set (Step 2). A similarity function ``sim(t_m, q_k; P)``
scores every (unit, concept) pair and the label of unit k is ``argmax_m sim`` (Step 3).

What is implemented (paper Sec. 3, "similarity functions"; the equations below are numbered E1-E5 here
because the paper's own equation numbers could not be checked offline):

* E1 ``cos``: ``cos(q_k, P_:m)`` (plain cosine over the N probe images).
* E2 ``cos_cubed``: centre q_k and P_:m over the images, cube elementwise, then cosine. Cubing emphasises
  the extremes (the most activating images).
* E3 ``rank_reorder``: compare where the unit's top images sit in the concept's own ranking. With
  ``z_m`` = P_:m centred and L2-normalised, S_k = the ``n = floor(top_fraction * N)`` images with the largest
  q_k (in descending order), ``ideal_m`` = the n largest values of z_m (descending):
  ``sim = -sum_r w_kr |ideal_m[r] - z_m[S_k[r]]|^p``, weights ``w_kr = max(qhat_k[S_k[r]], 0)^scale_p`` from
  the centred, normalised activations (a unit's strongest images count most). This is the paper's
  "rank reorder" (-||q'_k - P_:m||_p with q'_k = P_:m reordered by the ranks of q_k) restricted to the
  top images, as the published defaults (top_fraction 0.05, p 3, scale_p 0.5) imply; the weighting is our
  reading of scale_p.
* E4 ``wpmi``: ``sim = log p(t_m | q_k) - lam * log p(t_m)`` with ``p(t_m | x_i) = softmax_m(a * P_i:)``,
  the top-k images B_k of unit k and ``p(t_m | q_k) = 1 - prod_{x_i in B_k} (1 - p(t_m | x_i))`` (the
  probability that at least one top image shows t_m). Defaults top_k 28, a 2, lam 0.6.
* E5 ``soft_wpmi`` (the published default): as WPMI but each top image is only a soft member of B_k:
  ``p(t_m | q_k) = 1 - prod_{r=1..top_k} (1 - p_r p(t_m | x_{S_k[r]}))`` with membership probabilities
  ``p_r`` decreasing linearly from ``p_start`` (rank 1) to ``p_end`` (rank top_k).
  Defaults top_k 100, a 10, lam 1, p_start 0.998, p_end 0.97. The product is accumulated as a sum of
  ``log1p(-p_r p)`` and ``log p(t_m|q_k) = log(-expm1(sum))`` so neither 0 nor 1 loses precision.

Marginal ``p(t_m)``: here ``p(t_m) = (1/N) sum_i p(t_m | x_i)``, the average over **all probe images**; it
does not depend on the unit or on which other units are labelled. (The reference code averages
``p(t_m | q_k)`` over the units of the layer, so labelling a subset of units changed the scores.)

Memory: P never has to exist as a dense N x M matrix. P is given either as a tensor or as its factors
``(image_emb [N, D], text_emb [M, D])``; the latter lets every chunk ``P[:, s:e]`` be computed on the fly.
Concepts are processed in chunks of ``chunk_size`` (default: as many as fit ``max_bytes``); the
softmax over *all* M concepts needs one row-wise logsumexp, computed in a first streaming pass over the
concept chunks. Units are processed in chunks that keep the gathered [units, top_k, chunk] block within
the budget. cos needs no chunk of P at all with factors: ``A^T P = (A^T I) T^T`` and
``||P_:m||^2 = T_m (I^T I) T_m^T``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lwtakit.errors import UserError

DEFAULTS: dict[str, dict[str, Any]] = {
    "soft_wpmi": {"top_k": 100, "a": 10.0, "lam": 1.0, "p_start": 0.998, "p_end": 0.97},
    "wpmi": {"top_k": 28, "a": 2.0, "lam": 0.6},
    "rank_reorder": {"top_fraction": 0.05, "p": 3.0, "scale_p": 0.5},
    "cos": {},
    "cos_cubed": {},
}
METHODS = tuple(DEFAULTS)
DEFAULT_MAX_BYTES = 512 * 2**20


def _as_tensor(x, what: str) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise UserError(f"{what} must be a tensor or numpy array, got {type(x).__name__}")
    x = x.detach().cpu()
    if not torch.is_floating_point(x):
        x = x.float()
    return x


class ConceptActivations:
    """The N x M matrix P, held densely or as factors ``image_emb @ text_emb.T`` (chunks made on demand)."""

    def __init__(self, P_or_factors, dtype: torch.dtype | None = None):
        if isinstance(P_or_factors, (tuple, list)):
            if len(P_or_factors) != 2:
                raise UserError("P factors must be a pair (image_emb [N, D], text_emb [M, D])")
            img, txt = (_as_tensor(t, "P factor") for t in P_or_factors)
            if img.ndim != 2 or txt.ndim != 2 or img.shape[1] != txt.shape[1]:
                raise UserError(
                    f"P factors must be [N, D] and [M, D] with the same D; got {tuple(img.shape)}, {tuple(txt.shape)}"
                )
            self.dense = None
            self.img, self.txt = img, txt
            self.n, self.m = img.shape[0], txt.shape[0]
            base = torch.promote_types(img.dtype, txt.dtype)
        else:
            P = _as_tensor(P_or_factors, "P")
            if P.ndim != 2:
                raise UserError(f"P must be a matrix [N images, M concepts]; got shape {tuple(P.shape)}")
            self.dense, self.img, self.txt = P, None, None
            self.n, self.m = P.shape
            base = P.dtype
        self.dtype = dtype or torch.promote_types(base, torch.float32)
        if self.img is not None:
            self.img, self.txt = self.img.to(self.dtype), self.txt.to(self.dtype)

    @property
    def factored(self) -> bool:
        return self.dense is None

    def columns(self, s: int, e: int) -> Tensor:
        """A fresh (writable) copy of P[:, s:e]."""
        if self.dense is not None:
            return self.dense[:, s:e].to(self.dtype, copy=True)
        return self.img @ self.txt[s:e].T

    def column_mean(self, s: int, e: int) -> Tensor:
        if self.dense is not None:
            return self.dense[:, s:e].to(self.dtype).mean(0)
        return self.txt[s:e] @ self.img.mean(0)


def _check_inputs(acts, P_or_factors, dtype=None) -> tuple[Tensor, ConceptActivations]:
    A = _as_tensor(acts, "activations")
    if A.ndim != 2:
        raise UserError(f"activations must be [N images, C units]; got shape {tuple(A.shape)}")
    P = ConceptActivations(P_or_factors, dtype=dtype)
    if A.shape[0] != P.n:
        raise UserError(f"activations have {A.shape[0]} images but P has {P.n}; record both on the same probe set")
    if A.shape[0] == 0 or P.m == 0:
        raise UserError("empty probe set or concept set")
    if not torch.isfinite(A).all():
        raise UserError("activations contain NaN or inf; check the model / recording")
    dtype = torch.promote_types(P.dtype, A.dtype)
    if dtype != P.dtype:
        P = ConceptActivations(P_or_factors, dtype=dtype)
    return A.to(dtype), P


def _chunks(total: int, size: int):
    for s in range(0, total, size):
        yield s, min(s + size, total)


def _concept_chunk(n: int, elsize: int, chunk_size: int | None, max_bytes: int, copies: int = 3) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise UserError(f"chunk_size must be >= 1, got {chunk_size}")
        return chunk_size
    return max(1, max_bytes // max(1, n * elsize * copies))


def _unit_chunk(per_unit: int, elsize: int, unit_chunk: int | None, max_bytes: int, copies: int = 3) -> int:
    if unit_chunk is not None:
        if unit_chunk < 1:
            raise UserError(f"unit_chunk must be >= 1, got {unit_chunk}")
        return unit_chunk
    return max(1, max_bytes // max(1, per_unit * elsize * copies))


def _normalise_columns(x: Tensor, eps: float = 1e-12) -> Tensor:
    return x / x.norm(dim=0, keepdim=True).clamp_min(eps)


# ------------------------------------------------------------------------------------ similarity kinds
def _wpmi(A: Tensor, P: ConceptActivations, weights: Tensor, a: float, lam: float,
          chunk: int, unit_chunk: int | None, max_bytes: int) -> Tensor:
    """(soft-)WPMI (E4/E5 of the module docstring): log(1 - prod_r (1 - w_r p(t|x_r))) - lam log p(t)."""
    N, C = A.shape
    K = weights.numel()
    dt = P.dtype
    top_idx = torch.topk(A, K, dim=0).indices.T.contiguous()  # [C, K], rank order
    w = weights.to(dt).view(1, K, 1)
    tiny = torch.finfo(dt).tiny

    # Pass 1: row-wise logsumexp over ALL concepts of a*P (the softmax normaliser), streamed.
    lse = torch.full((N,), -math.inf, dtype=dt)
    for s, e in _chunks(P.m, chunk):
        block = P.columns(s, e).mul_(a)
        lse = torch.logaddexp(lse, torch.logsumexp(block, dim=1))
        del block

    out = torch.empty((C, P.m), dtype=dt)
    for s, e in _chunks(P.m, chunk):
        # log p(t_m | x_i) for this concept chunk, in place.
        logp = P.columns(s, e).mul_(a).sub_(lse[:, None])
        log_marginal = torch.logsumexp(logp, dim=0) - math.log(N)  # log mean_i p(t_m | x_i)
        uc = _unit_chunk(K * (e - s), logp.element_size(), unit_chunk, max_bytes)
        for us, ue in _chunks(C, uc):
            idx = top_idx[us:ue].reshape(-1)
            p = logp.index_select(0, idx).view(ue - us, K, e - s).exp_()
            log_prod = torch.log1p(p.mul_(w).neg_()).sum(dim=1)  # log prod_r (1 - w_r p)
            log_cond = torch.log(-torch.expm1(log_prod.clamp_(max=-tiny)))
            out[us:ue, s:e] = log_cond - lam * log_marginal
        del logp
    return out


def _cos(A: Tensor, P: ConceptActivations, chunk: int) -> Tensor:
    """E1: cos(q_k, P_:m)."""
    an = A.norm(dim=0).clamp_min(1e-12)  # [C]
    out = torch.empty((A.shape[1], P.m), dtype=P.dtype)
    if P.factored:
        at_i = A.T @ P.img  # [C, D]
        gram = P.img.T @ P.img  # [D, D]
        for s, e in _chunks(P.m, chunk):
            t = P.txt[s:e]
            pn = ((t @ gram) * t).sum(1).clamp_min(0).sqrt().clamp_min(1e-12)
            out[:, s:e] = (at_i @ t.T) / an[:, None] / pn[None, :]
        return out
    for s, e in _chunks(P.m, chunk):
        block = P.columns(s, e)
        out[:, s:e] = (A.T @ block) / an[:, None] / block.norm(dim=0).clamp_min(1e-12)[None, :]
    return out


def _cos_cubed(A: Tensor, P: ConceptActivations, chunk: int) -> Tensor:
    """E2: cos((q_k - mean)^3, (P_:m - mean)^3)."""
    a3 = _normalise_columns((A - A.mean(0, keepdim=True)) ** 3)
    out = torch.empty((A.shape[1], P.m), dtype=P.dtype)
    for s, e in _chunks(P.m, chunk):
        block = P.columns(s, e)
        block.sub_(block.mean(0, keepdim=True)).pow_(3)
        out[:, s:e] = a3.T @ _normalise_columns(block)
    return out


def _rank_reorder(A: Tensor, P: ConceptActivations, top_fraction: float, p: float, scale_p: float,
                  chunk: int, unit_chunk: int | None, max_bytes: int) -> Tensor:
    """E3: -sum_r w_kr |ideal_m[r] - z_m[S_k[r]]|^p over the unit's top images."""
    N, C = A.shape
    n = max(1, min(N, int(top_fraction * N)))
    top = torch.topk(A, n, dim=0).indices.T.contiguous()  # [C, n]
    ahat = _normalise_columns(A - A.mean(0, keepdim=True))
    weights = torch.gather(ahat.T, 1, top).clamp_min(0).pow(scale_p)  # [C, n]
    out = torch.empty((C, P.m), dtype=P.dtype)
    for s, e in _chunks(P.m, chunk):
        z = P.columns(s, e)
        z = _normalise_columns(z.sub_(z.mean(0, keepdim=True)))
        ideal = torch.topk(z, n, dim=0).values  # [n, mc], descending
        uc = _unit_chunk(n * (e - s), z.element_size(), unit_chunk, max_bytes)
        for us, ue in _chunks(C, uc):
            actual = z.index_select(0, top[us:ue].reshape(-1)).view(ue - us, n, e - s)
            err = actual.sub_(ideal[None]).abs_().pow_(p).mul_(weights[us:ue, :, None]).sum(1)
            out[us:ue, s:e] = -err
        del z
    return out


def similarity(acts, P_or_factors, method: str = "soft_wpmi", chunk_size: int | None = None,
               unit_chunk: int | None = None, max_bytes: int = DEFAULT_MAX_BYTES, **params) -> Tensor:
    """Similarity [C units, M concepts] between unit activations ``acts`` [N, C] and concepts.

    ``P_or_factors`` is P [N, M] or the pair (image_emb [N, D], text_emb [M, D]). ``chunk_size``: concepts
    per chunk (default: what fits ``max_bytes``); ``unit_chunk``: units per chunk (default likewise).
    ``params`` override the published defaults of ``method`` (:data:`DEFAULTS`). Computes in float32, or
    float64 when an input is float64.
    """
    if method not in DEFAULTS:
        raise UserError(f"unknown CLIP-Dissect similarity {method!r}; choose one of {', '.join(METHODS)}")
    unknown = set(params) - set(DEFAULTS[method])
    if unknown:
        raise UserError(
            f"unknown parameter(s) {sorted(unknown)} for similarity {method}; known: {sorted(DEFAULTS[method])}"
        )
    cfg = {**DEFAULTS[method], **params}
    A, P = _check_inputs(acts, P_or_factors)
    N = A.shape[0]
    elsize = torch.finfo(P.dtype).bits // 8
    chunk = _concept_chunk(N, elsize, chunk_size, max_bytes)
    with torch.inference_mode():
        if method in ("soft_wpmi", "wpmi"):
            if cfg["top_k"] < 1:
                raise UserError(f"{method}.top_k must be >= 1, got {cfg['top_k']}")
            K = min(int(cfg["top_k"]), N)
            if method == "soft_wpmi":
                if not (0 < cfg["p_end"] <= 1 and 0 < cfg["p_start"] <= 1):
                    raise UserError("soft_wpmi p_start and p_end must lie in (0, 1]")
                weights = torch.linspace(cfg["p_start"], cfg["p_end"], K, dtype=torch.float64)
            else:
                weights = torch.ones(K, dtype=torch.float64)
            return _wpmi(A, P, weights, float(cfg["a"]), float(cfg["lam"]), chunk, unit_chunk, max_bytes)
        if method == "cos":
            return _cos(A, P, chunk)
        if method == "cos_cubed":
            return _cos_cubed(A, P, chunk)
        if not 0 < cfg["top_fraction"] <= 1:
            raise UserError(f"rank_reorder.top_fraction must lie in (0, 1], got {cfg['top_fraction']}")
        return _rank_reorder(A, P, float(cfg["top_fraction"]), float(cfg["p"]), float(cfg["scale_p"]),
                             chunk, unit_chunk, max_bytes)


def label_units(acts, P_or_factors, concept_names: Sequence[str], method: str = "soft_wpmi", top: int = 5,
                chunk_size: int | None = None, unit_chunk: int | None = None,
                max_bytes: int = DEFAULT_MAX_BYTES, **params) -> list[dict]:
    """One row per unit: ``unit, label, score`` (best concept by ``method``) and ``top5``: the ``top`` best
    concepts joined by ``|`` (best first)."""
    concept_names = list(concept_names)
    m = ConceptActivations(P_or_factors).m  # checked before the (long) similarity computation
    if len(concept_names) != m:
        raise UserError(f"{len(concept_names)} concept names for {m} concepts in P; give one name per concept")
    sim = similarity(acts, P_or_factors, method, chunk_size=chunk_size, unit_chunk=unit_chunk,
                     max_bytes=max_bytes, **params)
    values, index = sim.topk(min(top, sim.shape[1]), dim=1)
    rows = []
    for unit in range(sim.shape[0]):
        best = index[unit].tolist()
        rows.append({
            "unit": unit,
            "label": concept_names[best[0]],
            "score": float(values[unit, 0]),
            "top5": "|".join(concept_names[j] for j in best),
        })
    return rows


def label_with_clip(acts, clip, images, concept_names: Sequence[str], method: str = "soft_wpmi", *,
                    cache_dir=None, template: str = "{}", top: int = 5, **params) -> list[dict]:
    """CLIP-Dissect end to end: embed the probe ``images`` and ``concept_names`` with ``clip`` (a
    :class:`lwtakit.clip.Clip`; cached on disk by content when ``cache_dir`` is given) and label the units
    of ``acts`` [N, C] recorded on the same images. Rows as :func:`label_units`."""
    from lwtakit import clip as lclip

    concept_names = list(concept_names)
    if cache_dir is not None:
        image_emb = lclip.embed_dataset_cached(clip, images, cache_dir)
        text_emb = lclip.embed_texts_cached(clip, concept_names, cache_dir, template=template)
    else:
        image_emb = clip.encode_images(images)
        text_emb = clip.encode_texts(concept_names, template=template)
    return label_units(acts, (image_emb, text_emb), concept_names, method=method, top=top, **params)
