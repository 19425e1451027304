"""Settings of the held-out assessment of labels, and NeuronEval's default alpha (torch-free: the config schema
embeds them and the CLI shows them in its --help before torch is imported)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError

DEFAULT_ALPHA = 0.005
"""Top fraction of images counted as the unit firing. NeuronEval's fixed alpha for hidden-layer units (its
experimental sanity check, settings 2 and 4; other settings tune alpha per data set), which is also NetDissect's
top quantile and :mod:`lwtakit.labelers.iou`'s default."""


@dataclass
class HeldOutOptions:
    """How labels are assessed (:mod:`lwtakit.evaluation.assess`): ``fraction`` of the probe set (seeded by
    ``seed``) is the explanation part where labels are chosen, the rest the evaluation part where they are scored
    by ``metrics`` (NeuronEval names; the binary metrics binarise a unit at its top-``alpha`` fraction of images:
    0.05, because NeuronEval's 0.005, set for 50,000-image probe sets, leaves 1-3 active images of the few hundred
    held out here), and
    ``q`` is the false-discovery rate of the concepts-per-unit count. ``enabled=False`` labels and scores on the
    whole probe set (in-sample, optimistic)."""

    enabled: bool = True
    fraction: float = 0.5
    seed: int = 0
    metrics: list[str] = field(default_factory=lambda: ["f1", "auprc", "correlation"])
    alpha: float = 0.05
    q: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1:
            raise UserError(f"held-out fraction must lie in (0, 1), got {self.fraction}")
        if not 0 < self.alpha < 1:
            raise UserError(f"alpha must lie in (0, 1), got {self.alpha}")
        if not 0 < self.q < 1:
            raise UserError(f"q must lie in (0, 1), got {self.q}")
