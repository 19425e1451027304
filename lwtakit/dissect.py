"""The dissection engine: one activation pass over a probe set feeds every labeler.

:func:`dissect` records the chosen layers once (:func:`lwtakit.recording.record_activations`), then labels
every unit of every layer, and optionally the principal directions of each layer (Dey et al. 2020), with
every chosen method:

- ``invert``: AUC against binary concept labels, compositional formulas, p-values (Bykov et al. 2023);
- ``clip_dissect``: similarity to CLIP's image-concept matrix (Oikarinen & Weng 2023);
- ``iou``: Network-Dissection IoU against per-pixel concept masks (Bau et al. 2017). IoU needs the spatial
  maps, which the recording never keeps, so it makes its own two streaming passes;
- ``describe``: captions of each unit's top images (an open_clip CoCa model) turned into candidate phrases and
  rescored with the CLIP-Dissect score (after Describe-and-Dissect, 2024, without external services).

Rows are plain dicts (``layer, unit, method, label, score, firing_rate`` + the method's fields), ready for
CSV, W&B tables and reports. Framework-free: Lightning wires this into training, it does not reimplement it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lwtakit.errors import UserError
from lwtakit.recording import Recording, record_activations

METHODS = ("invert", "clip_dissect", "iou", "describe")
PCA_SUFFIX = "#pca"
COLUMNS = ("layer", "unit", "method", "label", "score", "firing_rate", "auc", "p_value", "length", "top5")


@dataclass
class ConceptSource:
    """What the labelers compare units with.

    ``names`` K concept names; ``labels`` bool [N, K] per probe image (INVERT; e.g. the synthetic data's
    concept matrix or one-hot classes); ``clip`` a :class:`lwtakit.clip.Clip` with ``clip_concepts`` the
    texts to embed (CLIP-Dissect); ``masks`` whether the probe dataset has ``concept_masks(i)`` (IoU).
    """

    names: list[str] | None = None
    labels: np.ndarray | None = None
    labels_from_classes: bool = False  # labels = one-hot of the probe's class labels (known after recording)
    clip: Any = None
    clip_concepts: list[str] | None = None
    clip_cache_dir: str | None = None
    captioner: Any = None  # images [B, 3, H, W] -> captions (describe), e.g. labelers.describe.CocaCaptioner

    @classmethod
    def from_dataset(cls, dataset, clip=None, clip_concepts: Sequence[str] | None = None,
                     clip_cache_dir: str | None = None) -> ConceptSource:
        """Concept names and labels of a dataset that annotates them (e.g. the synthetic concept data);
        for other datasets the class names, each image labelled with its class."""
        names = list(getattr(dataset, "concept_names", []) or []) or None
        labels = dataset.concept_matrix() if names and hasattr(dataset, "concept_matrix") else None
        from_classes = labels is None and bool(getattr(dataset, "class_names", None))
        if from_classes:
            names = list(dataset.class_names)
        return cls(names=names, labels=labels, labels_from_classes=from_classes, clip=clip,
                   clip_concepts=list(clip_concepts) if clip_concepts is not None else names,
                   clip_cache_dir=clip_cache_dir)


@dataclass
class DissectionResult:
    rows: list[dict]
    recording: Recording
    seconds: dict[str, float] = field(default_factory=dict)

    def top_images(self, layer: str, unit: int, k: int = 8) -> list[int]:
        """Probe indices of the unit's ``k`` most activating images (from the streaming top-k)."""
        stats = self.recording.stats[layer].compute()
        return [int(i) for i in stats["top_indices"][unit][:k] if int(i) >= 0]


def check_methods(methods: Sequence[str], concepts: ConceptSource, probe) -> None:
    """Fail early, with one line, when a method lacks what it needs."""
    for m in methods:
        if m not in METHODS:
            raise UserError(f"unknown dissection method '{m}'; choose from {', '.join(METHODS)}")
    if "invert" in methods and (concepts.labels is None and not concepts.labels_from_classes or not concepts.names):
        raise UserError("method invert needs binary concept labels for the probe set; use a probe set that "
                        "annotates concepts (the synthetic data) or give --concept-labels")
    if "clip_dissect" in methods and (concepts.clip is None or not concepts.clip_concepts):
        raise UserError("method clip_dissect needs CLIP weights and a concept set; set clip.pretrained "
                        "(a tag, a weights file, or local-dir:FOLDER) and concepts")
    if "describe" in methods and (concepts.clip is None or concepts.captioner is None):
        raise UserError("method describe needs CLIP weights and a captioning model; set clip.pretrained and "
                        "the CoCa model (pip install -e '.[describe]')")
    if "iou" in methods and not hasattr(probe, "concept_masks"):
        raise UserError("method iou needs per-pixel concept masks; use the synthetic probe set")


def dissect(
    model: nn.Module,
    probe,
    layers: Sequence[str],
    methods: Sequence[str],
    concepts: ConceptSource,
    *,
    pca_components: int = 0,
    max_length: int = 1,
    beam: int = 5,
    min_gain: float = 0.01,
    clip_method: str = "soft_wpmi",
    iou_quantile: float = 0.005,
    batch_size: int = 128,
    topk: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = True,
    recording: Recording | None = None,
) -> DissectionResult:
    """Label every unit of ``layers`` (and ``pca_components`` principal directions per layer) with ``methods``.

    ``probe`` is a map-style dataset of ``(image, label)`` items, images in [0, 1]. A ``recording`` of the
    same probe set that already holds ``layers`` is reused instead of a new pass.
    """
    check_methods(methods, concepts, probe)
    if concepts.labels is not None and len(concepts.labels) != len(probe):
        raise UserError(f"concept labels have {len(concepts.labels)} rows for {len(probe)} probe images")
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    rec = recording or record_activations(model, probe, list(layers), batch_size=batch_size, topk=topk,
                                          device=device, progress=progress)
    missing = [name for name in layers if name not in rec.acts]
    if missing:
        raise ValueError(f"the given recording lacks layers {missing}")
    seconds["record"] = time.perf_counter() - t
    if concepts.labels_from_classes:
        if rec.labels is None:
            raise UserError("the probe set gives no class labels to use as concepts; give concept labels")
        concepts = ConceptSource(**{**concepts.__dict__, "labels_from_classes": False,
                                    "labels": np.eye(len(concepts.names), dtype=bool)[rec.labels.numpy()]})

    clip_factors = None
    if "clip_dissect" in methods or "describe" in methods:
        from lwtakit.clip import embed_dataset_cached, embed_texts_cached

        t = time.perf_counter()
        image_emb = embed_dataset_cached(concepts.clip, probe, concepts.clip_cache_dir)
        text_emb = embed_texts_cached(concepts.clip, concepts.clip_concepts, concepts.clip_cache_dir)
        clip_factors = (image_emb.float(), text_emb.float())
        seconds["clip_embed"] = time.perf_counter() - t

    rows: list[dict] = []
    for layer in layers:
        targets = [(layer, rec.acts[layer], rec.firing[layer], None)]
        if pca_components > 0:
            from lwtakit.labelers.pca import fit_pca

            pca = fit_pca(rec.acts[layer], k=pca_components)
            targets.append((layer + PCA_SUFFIX, pca.project(rec.acts[layer]), None, (pca.mean, pca.components)))
        for name, acts, firing, directions in targets:
            for method in methods:
                if method == "iou" and not rec.spatial.get(layer):
                    continue  # IoU thresholds spatial maps: linear layers have none
                t = time.perf_counter()
                new = _label(method, model, probe, layer, acts, concepts, clip_factors, max_length=max_length,
                             beam=beam, min_gain=min_gain, clip_method=clip_method, iou_quantile=iou_quantile,
                             batch_size=batch_size, device=device, directions=directions)
                seconds[method] = seconds.get(method, 0.0) + time.perf_counter() - t
                for row in new:
                    rows.append(normalise_row(row, layer=name, method=method,
                                              firing=None if firing is None else float(firing[row["unit"]])))
    return DissectionResult(rows=rows, recording=rec, seconds=seconds)


def _label(method, model, probe, layer, acts, concepts, clip_factors, *, max_length, beam, min_gain, clip_method,
           iou_quantile, batch_size, device, directions=None) -> list[dict]:
    if method == "invert":
        from lwtakit.labelers.invert import label_units

        return label_units(acts, concepts.labels, concepts.names, max_length=max_length, beam=beam,
                           min_gain=min_gain)
    if method == "clip_dissect":
        from lwtakit.labelers.clip_dissect import label_units

        return label_units(acts, clip_factors, concepts.clip_concepts, method=clip_method)
    if method == "describe":
        from lwtakit.labelers.describe import label_units

        return label_units(acts, probe, concepts.clip, concepts.captioner, image_emb=clip_factors[0],
                           method=clip_method, cache_dir=concepts.clip_cache_dir)
    from lwtakit.labelers.iou import label_units

    return label_units(model, probe, layer, list(probe.concept_names), quantile=iou_quantile,
                       batch_size=batch_size, device=device, directions=directions)


def normalise_row(row: dict, *, layer: str, method: str, firing: float | None) -> dict:
    """A labeler's row as plain Python values under the standard columns (formula objects become text)."""
    out = {"layer": layer, "unit": int(row["unit"]), "method": method,
           "label": "" if row.get("label") is None else str(row["label"]),
           "score": _num(row.get("score")), "firing_rate": _num(firing)}
    for key in ("auc", "p_value"):
        if key in row:
            out[key] = _num(row[key])
    if "length" in row:
        out["length"] = int(row["length"])
    top = row.get("top5")
    if top is not None:
        out["top5"] = top if isinstance(top, str) else "|".join(str(t) for t in top)
    for key, value in row.items():  # method-specific extras (iou, caption, ...)
        if key not in out and key not in ("formula", "top5") and isinstance(value, (int, float, str)):
            out[key] = value
    return out


def _num(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def best_labels(rows: Sequence[dict], method: str | None = None) -> dict[tuple[str, int], str]:
    """``{(layer, unit): label}`` of the rows of one method."""
    return {(r["layer"], int(r["unit"])): r["label"] for r in rows if method is None or r["method"] == method}
