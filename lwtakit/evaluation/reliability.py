"""How much of a stochastic network's recorded activation is noise: split-half reliability over mc passes.

An LWTA network in ``mc`` mode is dissected through the mean of ``P`` seeded stochastic passes (:mod:`lwtakit.dissect`);
that mean is a Monte-Carlo estimate of the unit's expected activation and carries sampling noise that a dense
network does not have. The noise lowers every correlation-type score of the unit (a label cannot predict the
noise), so two arms compared at a fixed ``P`` differ partly by an analysis setting. This module measures it:

* :func:`split_half` records the probe set twice, each time with ``P / 2`` passes drawn from independent seeds,
  and :func:`split_half_reliability` correlates the two halves per unit across the probe images (Pearson's r) and
  corrects r to the reliability of the ``P``-pass mean with the Spearman-Brown formula
  ``rel_f = f r / (1 + (f - 1) r)``, ``f = P / (P / 2)`` (Spearman 1910; Brown 1910). A deterministic network
  gives two identical halves: r = 1, reliability 1, computed, not assumed.
* :func:`passes_for_reliability`: the Spearman-Brown prophecy turned around, the passes at which a unit of
  reliability ``rel`` at ``P`` passes reaches a target (default 0.95): ``P' = P t (1 - rel) / (rel (1 - t))``.
* :func:`disattenuate`: Spearman's (1904) correction for attenuation, ``r / sqrt(rel)``: the correlation of a
  label with the unit's *expected* activation, estimated from its correlation with the noisy ``P``-pass mean (the
  concept indicator is exact, so only the unit's reliability enters).

Which the verdict uses: the recorded figures stay the attenuated ones (``heldout_correlation``); the verdict's
correlation is ``heldout_correlation_disattenuated`` (:mod:`.unit_metrics`) so that the number of passes no
longer moves it, and :func:`passes_for_reliability` says how many passes make the correction small (at 0.95 it
divides by at most 1.026).

Why activations, not softmax, are averaged: ``eval.mc_average`` averages the passes' softmax (``probs``) or logits
of the *output*; an intermediate layer has no softmax, and the mean of its activations over passes is the
Monte-Carlo estimate of the unit's expected activation ``E[a(x)]``, which is what a label explains. The output
layer (``fc``) is dissected as its logits, before any softmax: their mean over passes is what ``mc_average =
"logits"`` feeds to its softmax; with ``"probs"`` (the default) the evaluated prediction is the mean of the passes'
softmax, which is not a function of the mean logits, so the dissected logit is the expected logit under either
setting, not the evaluated class probability. Both use the same passes when ``dissection.passes`` equals
``eval.mc_samples`` (4 and 4 by default); the passes of the dissection are an analysis setting, chosen with
:func:`passes_for_reliability`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import UserError

__all__ = ["HALF_SEED_OFFSET", "SplitHalves", "dead_units", "disattenuate", "layer_reliability",
           "passes_for_reliability", "spearman_brown", "split_half", "split_half_reliability"]

HALF_SEED_OFFSET = 7919
"""The second half's seed is the first's plus this (:func:`lwtakit.shard.batch_seed` hashes the seed, so the two
streams are unrelated; the offset only keeps the halves apart from the dissection's own seed + 1)."""


@dataclasses.dataclass(frozen=True)
class SplitHalves:
    """Two recordings of the same probe images, ``passes_half`` passes each, from independent seeds: per layer
    ``[N, C]`` activations ``a`` and ``b``; ``passes`` is the full count their reliability is corrected to."""

    a: dict[str, torch.Tensor]
    b: dict[str, torch.Tensor]
    passes: int
    passes_half: int


def _as64(x) -> torch.Tensor:
    t = torch.as_tensor(x if isinstance(x, torch.Tensor) else np.asarray(x)).to(torch.float64)
    if t.dim() != 2:
        raise UserError(f"activations must be [N, C], got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise UserError("activations contain NaN or inf")
    return t


def dead_units(acts) -> torch.Tensor:
    """Bool ``[C]``: units whose activation is the same on every probe image (never active, or constant). They
    explain nothing and are left out of every per-unit metric (counted on their own)."""
    a = _as64(acts)
    return ~(a.amax(0) > a.amin(0))


def spearman_brown(r, factor: float):
    """Reliability of a mean over ``factor`` times as many passes as the one of reliability ``r`` (Spearman 1910,
    Brown 1910): ``f r / (1 + (f - 1) r)``. Works on floats, arrays and tensors; NaN stays NaN."""
    if factor <= 0:
        raise UserError(f"the Spearman-Brown factor must be > 0, got {factor}")
    return factor * r / (1 + (factor - 1) * r)


def split_half_reliability(half_a, half_b, passes: int, passes_half: int | None = None) -> torch.Tensor:
    """Per-unit reliability ``[C]`` (float64) of a ``passes``-pass mean from two independent recordings of
    ``passes_half`` passes each (default ``max(1, passes // 2)``): Pearson's r of unit ``i`` between the halves
    across the probe images, Spearman-Brown corrected by ``f = passes / passes_half``. NaN for a unit constant in
    either half (dead: no reliability to speak of). A negative r stays negative (worse than no signal)."""
    a, b = _as64(half_a), _as64(half_b)
    if a.shape != b.shape:
        raise UserError(f"the two halves must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if passes < 1:
        raise UserError(f"passes must be >= 1, got {passes}")
    passes_half = max(1, passes // 2) if passes_half is None else passes_half
    da, db = a - a.mean(0), b - b.mean(0)
    live = (a.amax(0) > a.amin(0)) & (b.amax(0) > b.amin(0))
    denom = (da.norm(dim=0) * db.norm(dim=0)).clamp_min(1e-300)
    r = ((da * db).sum(0) / denom).clamp(-1.0, 1.0)
    rel = spearman_brown(r, passes / passes_half)
    return torch.where(live, rel, torch.full_like(rel, math.nan))


def layer_reliability(reliability) -> float:
    """The median over units of a layer's reliabilities, dead units (NaN) left out; NaN when all are dead."""
    x = np.asarray(torch.as_tensor(reliability).cpu(), dtype=np.float64)
    x = x[~np.isnan(x)]
    return float(np.median(x)) if len(x) else math.nan


def passes_for_reliability(reliability: float, passes: int, target: float = 0.95) -> int:
    """Passes at which a mean of reliability ``reliability`` at ``passes`` passes reaches ``target`` (the
    Spearman-Brown prophecy solved for the factor: ``f = t (1 - rel) / (rel (1 - t))``), rounded up, at least 1.
    A reliability of 1 (deterministic) needs 1 pass. Raises :class:`UserError` for a reliability <= 0 (no signal:
    no number of passes reaches the target) or a target outside (0, 1)."""
    if not 0 < target < 1:
        raise UserError(f"the target reliability must lie in (0, 1), got {target}")
    if math.isnan(reliability) or reliability <= 0:
        raise UserError(f"a reliability of {reliability} cannot reach {target} with more passes: the recorded "
                        "activations carry no signal that repeats between passes")
    if reliability >= 1:
        return 1
    factor = target * (1 - reliability) / (reliability * (1 - target))
    return max(1, math.ceil(factor * passes - 1e-9))


def disattenuate(r, reliability):
    """Spearman's (1904) correction for attenuation of a correlation ``r`` with a unit of reliability ``rel``:
    ``r / sqrt(rel)`` (the label side is an exact indicator, reliability 1). NaN where ``rel`` is NaN or <= 0.
    Not clipped: a value above 1 says that ``rel`` was underestimated; report it, do not hide it."""
    r_t = torch.as_tensor(r, dtype=torch.float64)
    rel = torch.as_tensor(reliability, dtype=torch.float64)
    ok = rel > 0
    return torch.where(ok, r_t / rel.clamp_min(1e-300).sqrt(), torch.full_like(r_t * rel, math.nan))


def split_half(model, probe, layers: Sequence[str], options) -> SplitHalves:
    """Record ``layers`` twice on ``probe``, each with ``max(1, options.passes // 2)`` passes of the dissected
    function (:func:`lwtakit.dissect.record`, ``options`` a :class:`~lwtakit.dissect.DissectOptions`), the first
    from ``options.seed``, the second from ``options.seed + HALF_SEED_OFFSET``: together as many forward passes as
    one dissection's recording (``sample`` / ``argmax`` mode: one pass each). A network without stochastic layers is
    recorded the same way (its halves agree)."""
    from lwtakit.dissect import record

    # sample / argmax record one pass whatever options.passes says
    passes = options.passes if options.mode == "mc" else 1
    half = max(1, passes // 2)
    quiet = dataclasses.replace(options, passes=half, progress=False, collective=None, topk=1)
    a = record(model, probe, list(layers), quiet)
    b = record(model, probe, list(layers), dataclasses.replace(quiet, seed=options.seed + HALF_SEED_OFFSET))
    return SplitHalves({k: a.acts[k] for k in layers}, {k: b.acts[k] for k in layers}, passes, half)
