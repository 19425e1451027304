"""What a dissection report is given besides its label rows: per layer (:class:`LayerInfo`) and per section
(:class:`Sections`, the held-out assessment's :class:`HeldOut` among them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class LayerInfo:
    """What the report shows for one layer besides its label rows."""

    name: str
    units: int
    active_fraction: float | None = None  # measured: fraction of non-zero outputs over the probe set
    firing: np.ndarray | None = None  # [C] per-unit firing (LWTA: win) rate
    top_images: dict[int, Any] = field(default_factory=dict)  # unit -> [k, 3, H, W] top-activating images
    activation: bool = True  # an activation layer (LWTA, ReLU, GELU); False: linear, where activity means nothing


@dataclass
class HeldOut:
    """The held-out assessment a dissection report shows: how the probe set was split (``split``), per (layer,
    method) the means over units of each of :data:`~lwtakit.evaluation.verdict.VERDICT_METRICS` (``means``,
    from :meth:`lwtakit.labels.LabelTable.summaries`) and the NeuronEval sanity tests of the metrics on the
    evaluation images (``sanity``: :class:`lwtakit.evaluation.sanity.SanityRow`)."""

    split: str
    means: dict[tuple[str, str], dict[str, float]]
    sanity: Sequence[Any] = ()


@dataclass
class Sections:
    """What a dissection report shows besides its label rows and layers, each left out when None: the run's
    ``meta`` (model, probe, settings), the ``evaluation`` summary (name -> value), the ``heldout`` assessment,
    ``completeness`` curves per layer (see :func:`lwtakit.plots.completeness_curves`) and the label ``drift`` of
    the run's training-time dissections (name -> [(epoch, agreement)])."""

    meta: Mapping[str, Any] | None = None
    evaluation: Mapping[str, Any] | None = None
    heldout: HeldOut | None = None
    completeness: Mapping[str, Mapping[str, Any]] | None = None
    drift: Mapping[str, Sequence[tuple[int, float]]] | None = None
