"""How many concepts a unit encodes, independent of its signal-to-noise ratio (issue 20, item 5).

``concepts_per_unit`` (:mod:`.heldout`) counts every concept with a significant correlation: a monosemantic unit
that fires on "dog" also correlates significantly with "animal", "fur" and every other concept that overlaps dog
images, and the count grows as noise falls (more mc passes, more images). Here a unit's concepts are chosen by
forward stepwise regression of its activation on the concept indicators (Efroymson 1960, "Multiple regression
analysis"): at each step the concept that most reduces the residual sum of squares, *given the concepts already
chosen*, enters, so a concept that only overlaps a chosen one adds nothing. A concept enters only while

1. its partial one-sided t-test (positive coefficient, ``N - s - 2`` degrees of freedom with ``s`` concepts
   already in) has ``p <= q / m`` (Bonferroni over the ``m`` candidates left): noise can stop the count early,
   never raise it; and
2. in the joint least-squares fit with it, every chosen concept's coefficient is at least ``relative`` times
   the largest (parsimony: a concept that moves the activation by a small fraction of the unit's main concept is
   not a second meaning of the unit). Coefficients, not explained variance, are compared, so a rare concept
   weighs as much as a frequent one that moves the activation as far.

Both criteria are scale-free, so the count does not move with the noise of the activation once the unit's
concepts are detectable (the planted-unit test: activation = sum of ``k`` indicators + noise at several levels
and pass counts gives ``k``). A live unit that no concept explains counts 0 (no concept found, not "perfectly
monosemantic"); a dead unit (constant on the images) has no count (NaN) and is counted on its own
(:func:`~lwtakit.evaluation.reliability.dead_units`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import special

from ..errors import UserError

__all__ = ["PolysemanticityOptions", "unit_concepts", "concept_counts"]


@dataclass(frozen=True)
class PolysemanticityOptions:
    """``q``: family-wise level of each step's test (Bonferroni over the candidates); ``relative``: the smallest
    coefficient a concept may have, as a fraction of the largest in the joint fit; ``max_concepts``: the count's
    cap (and the most steps tried)."""

    q: float = 0.05
    relative: float = 1 / 3
    max_concepts: int = 8

    def __post_init__(self) -> None:
        if not 0 < self.q < 1:
            raise UserError(f"the test level q must be in (0, 1), got {self.q}")
        if not 0 < self.relative <= 1:
            raise UserError(f"the relative coefficient threshold must be in (0, 1], got {self.relative}")
        if self.max_concepts < 1:
            raise UserError(f"max_concepts must be >= 1, got {self.max_concepts}")


def _inputs(acts, concepts) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.as_tensor(acts if isinstance(acts, torch.Tensor) else np.asarray(acts)).to(torch.float64)
    c = torch.as_tensor(concepts if isinstance(concepts, torch.Tensor) else np.asarray(concepts))
    if a.dim() != 2 or c.dim() != 2 or a.shape[0] != c.shape[0]:
        raise UserError(f"activations [N, C] and concepts [N, K] need the same N, got {tuple(a.shape)} and "
                        f"{tuple(c.shape)}")
    if not torch.isfinite(a).all():
        raise UserError("activations contain NaN or inf")
    if c.dtype != torch.bool and not torch.all((c == 0) | (c == 1)):
        raise UserError("concept vectors must be boolean (0/1)")
    return a, c.to(torch.float64)


def _step(e, Z, zz, free, df, q):
    """The best candidate of one forward step: ``(j, coefficient)`` or None when none passes the test."""
    num = Z.t() @ e
    ok = free & (zz > 1e-9) & (num > 0)
    if not ok.any() or df < 1:
        return None
    gain = torch.where(ok, num * num / zz.clamp_min(1e-300), torch.full_like(num, -1.0))
    j = int(torch.argmax(gain))
    rss = float(e @ e - gain[j])
    t = float(num[j]) / math.sqrt(float(zz[j])) / math.sqrt(max(rss, 1e-300) / df)
    p = float(special.stdtr(df, -t))
    return j if p <= q / int(ok.sum()) else None


def _coefficients(y: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Least-squares coefficients of centred ``y`` on centred columns ``X`` (the intercept is the centring)."""
    return torch.linalg.lstsq(X, y.unsqueeze(1), driver="gelsd").solution[:, 0]


def unit_concepts(y, concepts, options: PolysemanticityOptions | None = None) -> list[int]:
    """The concepts (column indices of ``concepts [N, K]``, in order of entry) that forward selection (module
    docstring) chooses for one unit's activation ``y [N]``; empty for a constant ``y``."""
    options = options or PolysemanticityOptions()
    a, c = _inputs(torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).reshape(-1, 1), concepts)
    if not bool(a[:, 0].max() > a[:, 0].min()):
        return []
    X = c - c.mean(0)
    return _select(a[:, 0] - a[:, 0].mean(), X, (X * X).sum(0), options)


def _select(y: torch.Tensor, X: torch.Tensor, xx: torch.Tensor, options: PolysemanticityOptions) -> list[int]:
    """Forward selection on centred ``y [N]`` and centred concepts ``X [N, K]`` (``xx``: their squared norms)."""
    N = X.shape[0]
    Z, e, zz = X.clone(), y.clone(), xx.clone()
    free = zz > 1e-9 * N
    chosen: list[int] = []
    while len(chosen) < options.max_concepts:
        j = _step(e, Z, zz, free, N - len(chosen) - 2, options.q)
        if j is None:
            break
        beta = _coefficients(y, X[:, chosen + [j]])
        if float(beta.min()) < options.relative * float(beta.max()):
            break
        chosen.append(j)
        free[j] = False
        u = Z[:, j] / Z[:, j].norm()
        e = e - (u @ e) * u          # residual and candidates, orthogonal to every chosen concept
        Z = Z - torch.outer(u, u @ Z)
        zz = (Z * Z).sum(0)
    return chosen


def concept_counts(acts, concepts, options: PolysemanticityOptions | None = None) -> torch.Tensor:
    """Per unit of ``acts [N, C]``: how many of the concepts ``[N, K]`` it encodes (:func:`unit_concepts`),
    float64 ``[C]``; NaN for a dead unit (constant on these images). Use the evaluation part of the probe split:
    the count is then free of the images labels were chosen on. Cost: ``O(N K)`` per step and unit."""
    options = options or PolysemanticityOptions()
    a, c = _inputs(acts, concepts)
    X = c - c.mean(0)
    xx = (X * X).sum(0)
    live = a.amax(0) > a.amin(0)
    out = torch.full((a.shape[1],), math.nan, dtype=torch.float64)
    for i in torch.nonzero(live).flatten().tolist():
        out[i] = len(_select(a[:, i] - a[:, i].mean(), X, xx, options))
    return out
