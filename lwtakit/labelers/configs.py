"""Settings of the built-in labelers: one dataclass each, the single place their defaults live.

They are plain dataclasses of plain types, so the training config schema (:mod:`lwtakit.config`, group
``dissection``) embeds them as they are (``dissection.invert.max_length=3`` on the command line) and the CLI
builds them from its flags. Torch-free on purpose: the config schema imports this module before any argument
is parsed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from lwtakit.errors import UserError

SIMILARITIES = ("soft_wpmi", "wpmi", "rank_reorder", "cos", "cos_cubed")
# Mann-Whitney alternatives of an INVERT label's p-value: "greater" asks whether the unit detects the concept
# (ours); "two-sided" is the reference implementation's default (twice the one-sided p when AUC > 0.5).
ALTERNATIVES = ("greater", "two-sided")
# Labelers that were renamed: the old name is an error that says the new one and why.
RENAMED = {"describe": "method 'describe' is now 'captions': it labels units with phrases from captions of their "
                       "top images, which is not Describe-and-Dissect (no crops, no summaries, no generated images); "
                       "use --methods captions (config: dissection.methods=[captions], dissection.captions)"}


@dataclass
class InvertConfig:
    """INVERT (Bykov et al. 2023, Alg. 1) with parsimony; see :func:`lwtakit.labelers.invert.label_units`.

    ``max_length`` terms per formula, ``beam`` formulas kept per length, admissible positive fraction of a
    label in ``[min_fraction, max_fraction]`` (the reference's 0 and 0.5); a longer formula must gain
    ``min_gain`` AUC and, unless ``term_alpha`` is None, pass a significance test for each term.
    ``min_gain=0, term_alpha=None`` is the reference behaviour (the highest AUC wins; :meth:`without_parsimony`).
    ``alternative`` (:data:`ALTERNATIVES`) is the Mann-Whitney alternative of each label's p-value.
    """

    max_length: int = 1
    beam: int = 5
    min_fraction: float = 0.0
    max_fraction: float = 0.5
    min_gain: float = 0.01
    term_alpha: float | None = 0.01
    alternative: str = "greater"

    def __post_init__(self) -> None:
        if self.max_length < 1 or self.beam < 1:
            raise UserError(f"max_length and beam must be >= 1, got {self.max_length}, {self.beam}")
        if not 0 <= self.min_fraction <= self.max_fraction <= 1:
            raise UserError(f"need 0 <= min_fraction <= max_fraction <= 1, got {self.min_fraction}, "
                            f"{self.max_fraction}")
        if self.min_gain < 0:
            raise UserError(f"min_gain must be >= 0, got {self.min_gain}")
        if self.term_alpha is not None and not 0 < self.term_alpha < 1:
            raise UserError(f"term_alpha must lie in (0, 1) or be null, got {self.term_alpha}")
        if self.alternative not in ALTERNATIVES:
            raise UserError(f"INVERT alternative must be one of {', '.join(ALTERNATIVES)}, got {self.alternative!r}")

    @property
    def parsimony(self) -> bool:
        """Whether a longer formula must earn its place (a gain or a term test) beyond a higher AUC."""
        return self.min_gain > 0 or self.term_alpha is not None

    def without_parsimony(self) -> InvertConfig:
        """These settings with parsimony off: the reference beam search of Bykov et al. 2023 (Alg. 1), where
        the admissible formula of highest AUC wins whatever its length."""
        return dataclasses.replace(self, min_gain=0.0, term_alpha=None)

    def describe(self) -> str:
        """One line for a report: length, beam, fraction bounds, parsimony and the p-value's alternative."""
        if not self.parsimony:
            parsimony = "off (reference beam search)"
        else:
            term = f"term test alpha {self.term_alpha:g}" if self.term_alpha is not None else "no term test"
            parsimony = f"on (min gain {self.min_gain:g}, {term})"
        side = "one-sided (greater)" if self.alternative == "greater" else "two-sided"
        return (f"max length {self.max_length}, beam {self.beam}, positive fraction in [{self.min_fraction:g}, "
                f"{self.max_fraction:g}], parsimony {parsimony}, Mann-Whitney p {side}")

    def admissible(self, n, N: int):
        """Whether formulas with ``n`` positives of ``N`` may become labels (within the fraction bounds and
        neither empty nor everything); ``n`` a number or a tensor of counts."""
        return (n >= max(self.min_fraction * N, 1)) & (n <= min(self.max_fraction * N, N - 1))


@dataclass
class ClipDissectConfig:
    """CLIP-Dissect (Oikarinen & Weng 2023): ``similarity`` is the function that scores a unit against a
    concept (:data:`SIMILARITIES`, soft-WPMI by default, the paper's best)."""

    similarity: str = "soft_wpmi"

    def __post_init__(self) -> None:
        _check_similarity(self.similarity)


@dataclass
class IoUConfig:
    """Network-Dissection IoU (Bau et al. 2017): a unit is "on" above the ``quantile`` top fraction of its
    activations over every position of the probe set (0.005 in the paper)."""

    quantile: float = 0.005

    def __post_init__(self) -> None:
        if not 0 < self.quantile < 1:
            raise UserError(f"iou quantile must lie in (0, 1), got {self.quantile}")


@dataclass
class CaptionsConfig:
    """Captions of each unit's ``n_images`` top images (captioned ``caption_batch`` at a time) turned into up to
    ``max_candidates`` phrases of at most ``max_words`` words, rescored by the CLIP-Dissect ``similarity``; the
    captions come from the open_clip CoCa ``model`` with weights ``pretrained`` (a tag, a file or local-dir:)."""

    similarity: str = "soft_wpmi"
    model: str = "coca_ViT-B-32"
    pretrained: str | None = "mscoco_finetuned_laion2b_s13b_b90k"
    n_images: int = 10
    max_candidates: int = 20
    max_words: int = 3
    caption_batch: int = 16

    def __post_init__(self) -> None:
        _check_similarity(self.similarity)
        if min(self.n_images, self.max_candidates, self.max_words, self.caption_batch) < 1:
            raise UserError("captions needs n_images, max_candidates, max_words and caption_batch >= 1")


def _check_similarity(name: str) -> None:
    if name not in SIMILARITIES:
        raise UserError(f"unknown CLIP-Dissect similarity {name!r}; choose from {', '.join(SIMILARITIES)}")


def as_config(cls: type, section: Any) -> Any:
    """``section`` (an OmegaConf node, a mapping or already a ``cls``) as a ``cls`` instance."""
    if isinstance(section, cls):
        return section
    if hasattr(section, "items"):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in section.items() if k in names})
    raise UserError(f"settings for {cls.__name__} must be a mapping, got {type(section).__name__}")
