"""CLIP-Dissect in a training run, or INVERT when CLIP's weights cannot be had here.

DISCOVER (Panousis et al. 2023) labels its units with CLIP-Dissect (Oikarinen & Weng 2023: ViT-B/16, soft-WPMI).
A recipe that asks for it on a machine without the weights (offline and not cached, or the download failed) should
still train and dissect. With ``dissection.clip.fallback=invert``, :func:`fall_back` replaces the labelers that read
CLIP (CLIP-Dissect) by the labeler the config names, INVERT (Bykov et al. 2023), on the probe images' own labels
(their classes for CIFAR / ImageFolder data) and logs ONE warning line: what was tried, why it failed, what is used
instead and how to supply the weights. The callback records the choice in the run folder's ``dissection.json``.
``fallback=error`` (the default) keeps the failure an error; a bad model name or weights file is an error either
way (only :class:`~lwtakit.clip.load.ClipWeightsUnavailable` is stepped around).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .load import TRAIN_CLIP, ClipWeightsUnavailable, load_clip

__all__ = ["ClipChoice", "clip_or_fallback", "fall_back"]

log = logging.getLogger(__name__)

_GET_WEIGHTS = ("to get CLIP weights, run once with network access (open_clip caches them under HF_HOME), or set "
                "dissection.clip.pretrained=/path/weights.bin or dissection.clip.model=local-dir:/folder")


@dataclass
class ClipChoice:
    """What a run dissects with: ``methods`` the labelers, ``clip`` the loaded CLIP model (None when no method
    needs it or it could not be had), ``fallback`` the warning line when CLIP's labelers were replaced (else None)."""

    methods: list[str]
    clip: Any = None
    fallback: str | None = None


def _reads_clip(name: str) -> bool:
    from lwtakit.labelers.base import CAPTIONER, CLIP, labeler_class

    cls = labeler_class(name)
    return cls is not None and bool({CLIP, CAPTIONER} & cls.needs)


def clip_or_fallback(methods: list[str], clip_cfg: Any, labels: str | None) -> ClipChoice:
    """Load CLIP for ``methods`` (when one of them reads CLIP) as ``clip_cfg`` (the ``dissection.clip`` group:
    model, pretrained, cache_dir, batch_size, fallback) says; when its weights cannot be had, :func:`fall_back`."""
    methods = list(methods)
    if not any(_reads_clip(m) for m in methods):
        return ClipChoice(methods)
    try:
        clip = load_clip(clip_cfg.model, clip_cfg.pretrained, cache_dir=clip_cfg.cache_dir,
                         batch_size=clip_cfg.batch_size)
    except ClipWeightsUnavailable as exc:
        return fall_back(methods, exc.told(TRAIN_CLIP), clip_cfg, labels)
    return ClipChoice(methods, clip)


def fall_back(methods: list[str], exc: ClipWeightsUnavailable, clip_cfg: Any, labels: str | None) -> ClipChoice:
    """CLIP's weights could not be had (``exc``): with ``clip_cfg.fallback`` naming a labeler (not ``error``), it
    takes the place of every method that reads CLIP (once, in the first one's position) and one warning line says
    so; else ``exc`` is raised. ``labels`` says which probe labels the fallback would use ("class labels",
    "concept labels"); None: the probe has none, so there is nothing to fall back on and the error stands."""
    from lwtakit.labelers.base import labeler_class

    replacement = clip_cfg.fallback
    if replacement == "error" or labels is None:
        raise exc
    failed = [m for m in methods if _reads_clip(m)]
    used = list(dict.fromkeys(replacement if m in failed else m for m in methods))
    line = (f"{labeler_class(failed[0]).title} not run: tried CLIP {exc.model} pretrained={exc.pretrained}, {exc.why}; "
            f"used {labeler_class(replacement).title} on the probe's {labels} instead (methods: {', '.join(used)}); "
            f"{_GET_WEIGHTS}")
    log.warning(line)
    return ClipChoice(used, None, line)
