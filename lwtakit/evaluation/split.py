"""A seeded split of the probe images into an explanation part and an evaluation part (held-out scoring).

A unit's label is the best of many candidate concepts on the probe images; scoring that label, or testing it,
on the same images is optimistic (selection bias, larger for longer formulas: the winner of ~2K candidates
fits the noise of the images it was chosen on). The probe set is therefore split once, at random: labels are
chosen on the *explanation* part and every reported score and p-value is computed on the *evaluation* part,
as in the held-out evaluation of neuron explanations (Oikarinen, Yan & Weng, ICML 2025, sec. 3; Oikarinen &
Weng, "Linear Explanations for Individual Neurons", ICML 2024, which simulate activations on held-out images).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError

__all__ = ["DEFAULT_FRACTION", "ProbeSplit", "split_probe"]

DEFAULT_FRACTION = 0.5
"""Share of the probe images in the explanation part: half and half, so that labels and their scores rest on
samples of the same size."""


@dataclass(frozen=True)
class ProbeSplit:
    """Indices into the probe images, each part in increasing order (the images keep their order).

    ``explain``: where labels are chosen; ``evaluate``: where they are scored and tested; ``fraction`` and
    ``seed``: what :func:`split_probe` was called with (so the split can be recorded and redone).
    """

    explain: np.ndarray
    evaluate: np.ndarray
    fraction: float
    seed: int

    @property
    def n(self) -> int:
        return len(self.explain) + len(self.evaluate)

    def parts(self, x):
        """``(x[explain], x[evaluate])``: the two parts of an array or tensor whose first axis is the probe
        images (activations ``[N, C]``, concept labels ``[N, K]``, ...)."""
        if len(x) != self.n:
            raise UserError(f"the probe split covers {self.n} images but the array has {len(x)} rows; "
                            "split the probe set that the array was recorded on")
        if isinstance(x, np.ndarray):
            return x[self.explain], x[self.evaluate]
        if isinstance(x, torch.Tensor):
            return x[torch.as_tensor(self.explain, device=x.device)], x[torch.as_tensor(self.evaluate, device=x.device)]
        return [x[i] for i in self.explain], [x[i] for i in self.evaluate]


def split_probe(n: int, fraction: float = DEFAULT_FRACTION, seed: int = 0, min_part: int = 1) -> ProbeSplit:
    """Split ``n`` probe images at random into ``floor(fraction n)`` explanation images and the remaining
    ``n - floor(fraction n)`` (= ``ceil((1 - fraction) n)``) evaluation images, so an odd image goes to the
    evaluation part. The permutation is ``numpy.random.default_rng(seed).permutation(n)`` (its first part
    explains): the same ``(n, fraction, seed)`` always gives the same split, on every machine.

    ``min_part``: the fewest images either part may hold (the caller passes the number of top images a
    labeler or metric needs). Raises :class:`UserError` when ``fraction`` is outside (0, 1) or a part would
    be smaller than ``min_part``.
    """
    if not 0 < fraction < 1:
        raise UserError(f"probe split fraction must be in (0, 1), got {fraction}")
    # 1e-9: 0.29 * 100 is 28.999999999999996 in floating point; the explanation part should hold 29 images
    n_explain = math.floor(fraction * n + 1e-9)
    n_evaluate = n - n_explain
    if min(n_explain, n_evaluate) < min_part:
        raise UserError(f"splitting {n} probe images at fraction {fraction} leaves {n_explain} explanation and "
                        f"{n_evaluate} evaluation images, but each part needs at least {min_part}: use more probe "
                        "images, a fraction nearer 0.5 or fewer top images")
    order = np.random.default_rng(seed).permutation(n)
    return ProbeSplit(explain=np.sort(order[:n_explain]), evaluate=np.sort(order[n_explain:]),
                      fraction=float(fraction), seed=int(seed))
