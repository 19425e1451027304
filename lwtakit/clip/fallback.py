"""CLIP-Dissect in a training run, or INVERT when CLIP's weights cannot be had here.

DISCOVER (Panousis et al. 2023) labels its units with CLIP-Dissect (Oikarinen & Weng 2023: ViT-B/16, soft-WPMI).
A recipe that asks for it on a machine without the weights (offline and not cached, or the download failed) should
still train and dissect. With ``dissection.clip.fallback=invert``, :func:`clip_or_fallback` replaces CLIP-Dissect
by INVERT (Bykov et al. 2023) on the probe images' own labels (their classes for CIFAR / ImageFolder data) and
logs ONE warning line: what was tried, why it failed, what is used instead and how to supply the weights. The
callback records the choice in the run folder's ``dissection.json``. ``fallback=error`` (the default) keeps the
failure an error; a bad model name or weights file is an error either way (only
:class:`~lwtakit.clip.load.ClipWeightsUnavailable` is stepped around).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .load import TRAIN_CLIP, ClipWeightsUnavailable, load_clip

__all__ = ["FALLBACKS", "ClipChoice", "clip_or_fallback"]

log = logging.getLogger(__name__)

FALLBACKS = ("error", "invert")
_GET_WEIGHTS = ("to get CLIP weights, run once with network access (open_clip caches them under HF_HOME), or set "
                "dissection.clip.pretrained=/path/weights.bin or dissection.clip.model=local-dir:/folder")


@dataclass
class ClipChoice:
    """What a run dissects with: ``methods`` the labelers, ``clip`` the loaded CLIP model (None when no method
    needs it or it could not be had), ``fallback`` the warning line when CLIP-Dissect was replaced (else None)."""

    methods: list[str]
    clip: Any = None
    fallback: str | None = None


def clip_or_fallback(methods: list[str], clip_cfg: Any, labels: str | None) -> ClipChoice:
    """Load CLIP for ``methods`` (when they include ``clip_dissect``) as ``clip_cfg`` (the ``dissection.clip``
    group: model, pretrained, cache_dir, batch_size, fallback) says; when its weights cannot be had and
    ``clip_cfg.fallback`` is ``invert``, INVERT takes CLIP-Dissect's place (once, in its position). ``labels`` says
    which probe labels INVERT would use ("class labels", "concept labels"); None: the probe has none, so there is
    nothing to fall back on and the error stands."""
    methods = list(methods)
    if "clip_dissect" not in methods:
        return ClipChoice(methods)
    try:
        clip = load_clip(clip_cfg.model, clip_cfg.pretrained, cache_dir=clip_cfg.cache_dir,
                         batch_size=clip_cfg.batch_size)
    except ClipWeightsUnavailable as exc:
        if clip_cfg.fallback != "invert" or labels is None:
            raise exc.told(TRAIN_CLIP) from None
        used = list(dict.fromkeys("invert" if m == "clip_dissect" else m for m in methods))
        line = (f"CLIP-Dissect not run: tried CLIP {exc.model} pretrained={exc.pretrained}, {exc.why}; "
                f"used INVERT on the probe's {labels} instead (methods: {', '.join(used)}); {_GET_WEIGHTS}")
        log.warning(line)
        return ClipChoice(used, None, line)
    return ClipChoice(methods, clip)
