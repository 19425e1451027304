"""CLIP-Dissect similarity functions, computed in chunks (Oikarinen & Weng, ICLR 2023).

Notation: probe images x_1..x_N, concepts t_1..t_M, and the units 1..C of one layer that are being labelled.
``P[i, m] = I_i . T_m`` is the concept-activation matrix (cosine of the L2-normalised CLIP image and text
embeddings; the reference code calls it ``clip_feats``) and ``q_k = A[:, k]`` the activations of unit k
over the probe set. A similarity function scores every (unit, concept) pair; the label of unit k is
``argmax_m sim[k, m]``.

The formulas are those of the paper and of its reference implementation (``similarity.py`` of
Trustworthy-ML-Lab/CLIP-dissect), with the reference's defaults (:data:`DEFAULTS`). The equations are
numbered E1-E5 here (not the paper's numbering). Indices r count ranks from 0 (most activating first).

* E1 ``cos``: ``sim = <q_k, P[:, m]> / (||q_k|| ||P[:, m]||)``, the plain cosine over the N images (no
  centring; a zero column gets 0 where the reference gets NaN).
* E2 ``cos_cubed``: centre q_k and P[:, m] over the images, cube elementwise, divide each by its L2 norm
  clipped below at ``min_norm`` (1e-3), then take the dot product. Cubing lets the extremes dominate.
* E3 ``rank_reorder`` (top_fraction 0.05, p 3, scale_p 0.5): with ``n = int(top_fraction * N)``, let
  ``v_0 >= .. >= v_{n-1}`` be the n largest activations of unit k, on images ``i_0..i_{n-1}``. For concept m
  let ``c_r = P[i_r, m]``, ``rho_r`` the rank of c_r among c_0..c_{n-1} (0 = smallest; of equal values the
  one with the smaller r ranks lower) and ``u_r = v_{n-1-rho_r}`` (the activation image i_r would have if
  the unit ordered its top images as the concept does). Then ``err = mean_r |v_r - u_r|^p / b_k`` and
  ``sim = -err / (mean_r c_r)^scale_p``, where the per-unit baseline ``b_k = mean_{pi, r} |w_r - w_{pi(r)}|^p``
  (w = v in ascending order) averages over ``n_perm`` (5) random permutations pi. The permutations come
  from ``torch.Generator().manual_seed(seed)`` (seed 0): ``n_perm`` draws of ``torch.randperm(n)`` per
  unit, units in order (the reference uses the global RNG). b_k scales a unit's whole row, so it never
  changes a label, only the scores.
  Outside the formula's domain (where the reference gives NaN): if ``b_k == 0`` (the n top activations
  are all equal, so err's numerator is 0 too) err is taken as 1 (no ordering beats a random one), and a
  concept with ``mean_r c_r <= 0`` scores -inf when scale_p > 0 (the limit as the mean tends to 0+).
* E4 ``wpmi`` (top_k 28, a 2, lam 0.6, min_prob 1e-7): ``S = softmax(a P)`` over the concepts of each
  image (``S[i, m]`` is p(t_m | x_i)); with ``i_0..i_{K-1}`` the top_k most activating images of unit k,
  ``L[k, m] = log p(t_m | q_k) = sum_r log(S[i_r, m] + min_prob)``;
  ``log p(t_m) = logsumexp_k L[k, m] - log C`` (the mean of p(t_m | q_k) over the C labelled units);
  ``sim = L[k, m] - lam * log p(t_m)``.
* E5 ``soft_wpmi``, the published default (top_k 100, a 10, lam 1, p_start 0.998, p_end 0.97,
  min_prob 1e-7): as E4, but the r-th top image belongs to the unit's example set only with probability
  ``p_r = p_start - (r / top_k) (p_start - p_end)``:
  ``L[k, m] = sum_r log(1 + p_r (S[i_r, m] - 1) + min_prob)``, same marginal and same ``sim``.

The marginal p(t_m) of E4/E5 is, as published, the average over the units passed in (the units of the
layer being labelled). Labelling a subset of the units therefore changes the scores (and can change
labels); with a single unit and lam = 1 every score is 0. Pass all the units of a layer together.

If N < top_k, E4/E5 use all N images (the first N weights p_r of the top_k schedule); if
``int(top_fraction * N) < 1``, E3 uses the top image (the reference fails in both cases).

Memory: P never has to exist as a dense N x M matrix. P is given either as a tensor or as its factors
``(image_emb [N, D], text_emb [M, D])``; the latter lets every chunk ``P[:, s:e]`` be computed on the fly.
Concepts are processed in chunks of ``chunk_size`` (default: as many as fit ``max_bytes``). The softmax
over *all* M concepts needs one row-wise logsumexp, computed in a first streaming pass over the concept
chunks. Units are processed in chunks that keep the gathered [units, top images, chunk] blocks within the
budget; the unit marginal of a concept chunk needs the L of all C units for that chunk ([C, chunk], part
of the [C, M] output). cos needs no chunk of P at all with factors: ``A^T P = (A^T I) T^T`` and
``||P[:, m]||^2 = T_m (I^T I) T_m^T``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lwtakit.errors import UserError
from lwtakit.labelers.base import CLIP, ConceptArrays, Context, Labeler, Target, register_labeler, rows_from_dicts
from lwtakit.labelers.configs import SIMILARITIES, ClipDissectConfig
from lwtakit.labels import LabelRow

# The reference implementation's defaults; n_perm and seed fix its random baseline (E3).
DEFAULTS: dict[str, dict[str, Any]] = {
    "soft_wpmi": {"top_k": 100, "a": 10.0, "lam": 1.0, "p_start": 0.998, "p_end": 0.97, "min_prob": 1e-7},
    "wpmi": {"top_k": 28, "a": 2.0, "lam": 0.6, "min_prob": 1e-7},
    "rank_reorder": {"top_fraction": 0.05, "p": 3.0, "scale_p": 0.5, "n_perm": 5, "seed": 0},
    "cos": {},
    "cos_cubed": {"min_norm": 1e-3},
}
METHODS = SIMILARITIES
assert tuple(DEFAULTS) == SIMILARITIES, "every similarity function needs its defaults here"
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


@dataclass
class _Chunks:
    """How the similarity is streamed: ``concepts`` per chunk, and units per chunk (``units``, or what fits
    ``max_bytes``) inside a concept chunk."""

    concepts: int
    units: int | None
    max_bytes: int

    def unit_chunk(self, per_unit: int, elsize: int, copies: int = 3) -> int:
        return _unit_chunk(per_unit, elsize, self.units, self.max_bytes, copies)


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


# ------------------------------------------------------------------------------------ similarity kinds
def _log_softmax_normaliser(P: ConceptActivations, a: float, chunk: int) -> Tensor:
    """Row-wise ``logsumexp_m(a P[i, m])`` over ALL concepts, streamed over concept chunks: [N]."""
    lse = torch.full((P.n,), -math.inf, dtype=P.dtype)
    for s, e in _chunks(P.m, chunk):
        lse = torch.logaddexp(lse, torch.logsumexp(P.columns(s, e).mul_(a), dim=1))
    return lse


def _wpmi(A: Tensor, P: ConceptActivations, K: int, member: Tensor | None, cfg: dict, chunks: _Chunks) -> Tensor:
    """E4 (``member`` None) / E5 (``member`` = p_r, [K]) of the module docstring; K top images per unit;
    ``cfg`` holds ``a``, ``lam`` and ``min_prob``."""
    a, lam, min_prob = float(cfg["a"]), float(cfg["lam"]), float(cfg["min_prob"])
    chunk = chunks.concepts
    C = A.shape[1]
    dt = P.dtype
    # [C, K], most activating first; a stable sort puts tied images in index order on every machine (topk leaves
    # their order to the kernel, and a tie's order moves p_r between the images)
    top_idx = torch.sort(A, dim=0, descending=True, stable=True).indices[:K].T.contiguous()
    if member is not None:
        # 1 + p_r (S - 1) + min_prob = p_r S + (1 - p_r + min_prob)
        scale = member.to(dt).view(1, K, 1)
        offset = (1 - member + min_prob).to(dt).view(1, K, 1)
    lse = _log_softmax_normaliser(P, a, chunk)
    log_c = math.log(C)

    out = torch.empty((C, P.m), dtype=dt)
    for s, e in _chunks(P.m, chunk):
        probs = P.columns(s, e).mul_(a).sub_(lse[:, None]).exp_()  # S[:, s:e]
        uc = chunks.unit_chunk(K * (e - s), probs.element_size())
        for us, ue in _chunks(C, uc):
            g = probs.index_select(0, top_idx[us:ue].reshape(-1)).view(ue - us, K, e - s)
            if member is None:
                g.add_(min_prob)
            else:
                g.mul_(scale).add_(offset)
            out[us:ue, s:e] = g.log_().sum(dim=1)  # L[k, m]
            del g
        del probs
        block = out[:, s:e]
        log_marginal = torch.logsumexp(block, dim=0) - log_c  # over the C units
        block.sub_(lam * log_marginal)
    return out


def _cos(A: Tensor, P: ConceptActivations, chunk: int) -> Tensor:
    """E1: cos(q_k, P[:, m])."""
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


def _centre_cube_normalise(x: Tensor, min_norm: float) -> Tensor:
    x = x.sub_(x.mean(0, keepdim=True)).pow_(3)
    return x.div_(x.norm(dim=0, keepdim=True).clamp_min(min_norm))


def _cos_cubed(A: Tensor, P: ConceptActivations, min_norm: float, chunk: int) -> Tensor:
    """E2: centred, cubed, norm-clipped columns; dot product."""
    a3 = _centre_cube_normalise(A.clone(), min_norm)
    out = torch.empty((A.shape[1], P.m), dtype=P.dtype)
    for s, e in _chunks(P.m, chunk):
        out[:, s:e] = a3.T @ _centre_cube_normalise(P.columns(s, e), min_norm)
    return out


def _rank_reorder_baseline(values: Tensor, p: float, n_perm: int, seed: int) -> Tensor:
    """b_k of E3: mean |w_r - w_pi(r)|^p over n_perm seeded permutations per unit; values [C, n] descending."""
    C, n = values.shape
    asc = values.flip(1)
    gen = torch.Generator().manual_seed(seed)
    base = torch.empty(C, dtype=values.dtype)
    for k in range(C):
        perms = torch.stack([torch.randperm(n, generator=gen) for _ in range(n_perm)])  # [n_perm, n]
        base[k] = (asc[k][None, :] - asc[k][perms]).abs().pow(p).mean()
    return base


def _rank_reorder(A: Tensor, P: ConceptActivations, cfg: dict, chunks: _Chunks) -> Tensor:
    """E3 of the module docstring; ``cfg`` holds ``top_fraction, p, scale_p, n_perm, seed``."""
    top_fraction, p, scale_p = float(cfg["top_fraction"]), float(cfg["p"]), float(cfg["scale_p"])
    N, C = A.shape
    n = max(1, min(N, int(N * top_fraction)))
    values, top_idx = torch.topk(A, n, dim=0)
    values, top_idx = values.T.contiguous(), top_idx.T.contiguous()  # [C, n], descending
    asc = values.flip(1)
    base = _rank_reorder_baseline(values, p, int(cfg["n_perm"]), int(cfg["seed"]))
    flat = base == 0  # all n top activations equal: err := 1 (see the module docstring)
    base = torch.where(flat, torch.ones_like(base), base)
    positions = torch.arange(n).view(1, n, 1)
    out = torch.empty((C, P.m), dtype=P.dtype)
    for s, e in _chunks(P.m, chunks.concepts):
        block = P.columns(s, e)
        mc = e - s
        uc = chunks.unit_chunk(n * mc, 8, copies=5)  # int64 ranks dominate
        for us, ue in _chunks(C, uc):
            u = ue - us
            c = block.index_select(0, top_idx[us:ue].reshape(-1)).view(u, n, mc)  # c_r
            mean_c = c.mean(dim=1)  # [u, mc]
            order = torch.argsort(c, dim=1, stable=True)  # ascending; equal values by position r
            del c
            rank = torch.empty_like(order).scatter_(1, order, positions.expand(u, n, mc))  # rho_r
            del order
            reordered = torch.gather(asc[us:ue, :, None].expand(u, n, mc), 1, rank)  # u_r
            del rank
            err = reordered.sub_(values[us:ue, :, None]).abs_().pow_(p).mean(dim=1)
            del reordered
            err = err.div_(base[us:ue, None])
            err[flat[us:ue]] = 1.0
            if scale_p != 0:
                positive = mean_c > 0
                err = torch.where(positive, err / mean_c.clamp_min(torch.finfo(mean_c.dtype).tiny).pow(scale_p),
                                  torch.full_like(err, math.inf))
            out[us:ue, s:e] = err.neg_()
        del block
    return out


def similarity(acts, P_or_factors, method: str = "soft_wpmi", chunk_size: int | None = None,
               unit_chunk: int | None = None, max_bytes: int = DEFAULT_MAX_BYTES, **params) -> Tensor:
    """Similarity [C units, M concepts] between unit activations ``acts`` [N, C] and concepts.

    ``P_or_factors`` is P [N, M] or the pair (image_emb [N, D], text_emb [M, D]) of L2-normalised CLIP
    embeddings. ``chunk_size``: concepts per chunk (default: what fits ``max_bytes``); ``unit_chunk``: units
    per chunk (default likewise). ``params`` override the published defaults of ``method``
    (:data:`DEFAULTS`). Computes in float32, or float64 when an input is float64. The WPMI marginal is
    over the C units given (module docstring): pass all the units of a layer at once.
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
    chunks = _Chunks(chunk, unit_chunk, max_bytes)
    if A.shape[1] == 0:
        return torch.empty((0, P.m), dtype=P.dtype)
    with torch.inference_mode():
        if method in ("soft_wpmi", "wpmi"):
            top_k = int(cfg["top_k"])
            if top_k < 1:
                raise UserError(f"{method}.top_k must be >= 1, got {cfg['top_k']}")
            if cfg["min_prob"] < 0:
                raise UserError(f"{method}.min_prob must be >= 0, got {cfg['min_prob']}")
            K = min(top_k, N)
            member = None
            if method == "soft_wpmi":
                if not (0 <= cfg["p_end"] <= 1 and 0 <= cfg["p_start"] <= 1):
                    raise UserError("soft_wpmi p_start and p_end must lie in [0, 1]")
                r = torch.arange(K, dtype=torch.float64)
                member = cfg["p_start"] - r / top_k * (cfg["p_start"] - cfg["p_end"])
            return _wpmi(A, P, K, member, cfg, chunks)
        if method == "cos":
            return _cos(A, P, chunk)
        if method == "cos_cubed":
            if not cfg["min_norm"] > 0:
                raise UserError(f"cos_cubed.min_norm must be > 0, got {cfg['min_norm']}")
            return _cos_cubed(A, P, float(cfg["min_norm"]), chunk)
        if not 0 < cfg["top_fraction"] <= 1:
            raise UserError(f"rank_reorder.top_fraction must lie in (0, 1], got {cfg['top_fraction']}")
        if int(cfg["n_perm"]) < 1:
            raise UserError(f"rank_reorder.n_perm must be >= 1, got {cfg['n_perm']}")
        return _rank_reorder(A, P, cfg, chunks)


def label_units(acts, P_or_factors, concept_names: Sequence[str], method: str = "soft_wpmi", top: int = 5,
                **params) -> list[dict]:
    """One row per unit: ``unit, label, score`` (best concept by ``method``) and ``top5``: the ``top`` best
    concepts joined by ``|`` (best first). ``params`` go to :func:`similarity` (chunking and the function's
    parameters)."""
    concept_names = list(concept_names)
    m = ConceptActivations(P_or_factors).m  # checked before the (long) similarity computation
    if len(concept_names) != m:
        raise UserError(f"{len(concept_names)} concept names for {m} concepts in P; give one name per concept")
    sim = similarity(acts, P_or_factors, method, **params)
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


@register_labeler
class ClipDissectLabeler(Labeler):
    """CLIP-Dissect: each unit's best concept by the configured similarity to CLIP's image-concept matrix."""

    name = "clip_dissect"
    title = "CLIP-Dissect"
    config_class = ClipDissectConfig
    needs = frozenset({CLIP})
    with_clip = True  # configured CLIP weights alone ask for CLIP-Dissect labels in a training run
    array_methods = SIMILARITIES  # analyze.py label --method <similarity>: a given image-concept matrix
    array_columns = ("unit", "label", "score", "top5")

    @classmethod
    def for_array_method(cls, method: str, settings: Any = None) -> Labeler:
        """CLIP-Dissect with the similarity function ``method``."""
        labeler = super().for_array_method(method, settings)
        labeler.config = dataclasses.replace(labeler.config, similarity=method)
        return labeler

    def label_arrays(self, acts, arrays: ConceptArrays) -> list[dict]:
        """``analyze.py label --method <similarity>``: the units of ``acts`` against the image-concept scores, in
        float32 as CLIP's are (float64 arrays stay float64: the same labels on any CPU)."""
        wide = np.promote_types(np.result_type(acts, arrays.scores), np.float32)
        return label_units(torch.from_numpy(acts.astype(wide)), torch.from_numpy(arrays.scores.astype(wide)),
                           arrays.names, method=self.config.similarity)

    def label(self, target: Target, ctx: Context) -> list[LabelRow]:
        dicts = label_units(target.acts, ctx.clip_embeddings(), ctx.concepts.clip_concepts,
                            method=self.config.similarity)
        return rows_from_dicts(dicts, target, self.name)
