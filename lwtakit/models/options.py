"""The shape of a network apart from its activation: one options object shared by every model builder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lwtakit.errors import UserError


@dataclass(frozen=True)
class ArchOptions:
    """ResNets: channel ``width`` multiplier and ``stem`` (``"cifar"``: 3x3/1 conv, no max-pool; ``"imagenet"``:
    7x7/2 conv + 3x3/2 max-pool). ViTs: ``img_size``, ``patch_size`` and ``depth`` (blocks; None: the
    architecture's own, 12). Both: ``in_chans`` and the per-channel input normalisation ``mean``/``std`` applied
    inside the model (default 0.5 / 0.25 per channel, see :meth:`normalization`)."""

    width: float = 1.0
    stem: str = "cifar"
    in_chans: int = 3
    img_size: int = 32
    patch_size: int = 4
    depth: int | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise UserError(f"width multiplier must be > 0, got {self.width!r}")

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)``, one value per input channel each; raises when their lengths differ from ``in_chans``."""
        mean = tuple(self.mean) if self.mean is not None else (0.5,) * self.in_chans
        std = tuple(self.std) if self.std is not None else (0.25,) * self.in_chans
        if len(mean) != self.in_chans or len(std) != self.in_chans:
            raise UserError(f"mean/std need {self.in_chans} values (one per input channel), got "
                            f"{len(mean)}/{len(std)}")
        return mean, std
