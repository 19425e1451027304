"""The dissection engine: one activation pass over a probe set feeds every labeler.

:func:`dissect` records the chosen layers once (:func:`lwtakit.recording.record_activations`), then hands every
layer's units, and optionally its principal directions (Dey et al. 2020), to each labeler it is given
(:mod:`lwtakit.labelers.base`: a registry of labelers by name). The built-in labelers:

- ``invert``: AUC against binary concept labels, compositional formulas, p-values (Bykov et al. 2023);
- ``clip_dissect``: similarity to CLIP's image-concept matrix (Oikarinen & Weng 2023);
- ``iou``: Network-Dissection IoU against per-pixel concept masks (Bau et al. 2017). IoU needs the spatial
  maps, which the recording never keeps, so it makes its own two streaming passes;
- ``captions``: captions of each unit's top images (an open_clip CoCa model) turned into candidate phrases and
  rescored with the CLIP-Dissect score (not Describe-and-Dissect, 2024: no crops, summaries or generated images).

Principal directions (``options.pca_components``) are fitted per position on conv layers, as Dey et al. do: the
covariance of the channel vectors over every (image, position) pair of the explanation images, accumulated in a
streaming pass (:class:`lwtakit.stats.Moments`). Both poles of a direction are labelled, as the rows of two
pseudo-layers ``<layer>#pca+`` (the projection) and ``<layer>#pca-`` (the projection negated), so a direction
whose concept lies on its negative side is found too.

The result is a :class:`~lwtakit.labels.LabelTable` of typed rows. Framework-free: Lightning wires this into
training, it does not reimplement it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lwtakit.data import ProbeSubset
from lwtakit.errors import UserError
from lwtakit.evaluation.assess import assess
from lwtakit.evaluation.options import HeldOutOptions
from lwtakit.evaluation.split import ProbeSplit, split_probe
from lwtakit.labelers.base import CAPTIONER, CLIP, Context, Labeler, Target, create_labelers
from lwtakit.labelers.run_options import BATCH_SIZE, RunOptions
from lwtakit.labels import PCA_SUFFIX, POLES, LabelTable, pca_pole
from lwtakit.lwta import lwta_inference, lwta_layers
from lwtakit.recording import Recording, RecordOptions, record_activations
from lwtakit.shard import Collective
from lwtakit.stats import Moments


@dataclass
class ConceptSource:
    """What the labelers compare units with.

    ``names`` K concept names; ``labels`` bool [N, K] per probe image (INVERT; e.g. the synthetic data's
    concept matrix or one-hot classes); ``clip`` a :class:`lwtakit.clip.Clip` with ``clip_concepts`` the
    texts to embed (CLIP-Dissect); ``captioner`` images -> captions (captions). ``class_concepts`` bool
    [classes, K]: the concepts each class carries when class labels stand in for concepts (a hierarchy,
    :mod:`lwtakit.hierarchy`; None: each class is its own concept).
    """

    names: list[str] | None = None
    labels: np.ndarray | None = None
    labels_from_classes: bool = False  # labels = one-hot of the probe's class labels (known after recording)
    clip: Any = None
    clip_concepts: list[str] | None = None
    clip_cache_dir: str | None = None
    captioner: Any = None  # images [B, 3, H, W] -> captions, e.g. labelers.captions.CocaCaptioner
    class_concepts: np.ndarray | None = None

    @property
    def has_labels(self) -> bool:
        """Whether every probe image has concept labels: given, or its class (MNIST, CIFAR) once recorded."""
        return self.labels is not None or self.labels_from_classes

    @classmethod
    def from_dataset(cls, dataset, clip=None, clip_concepts: Sequence[str] | None = None,
                     clip_cache_dir: str | None = None, hierarchy: Any = None) -> ConceptSource:
        """Concept names and labels of a dataset that annotates them (e.g. the synthetic concept data);
        for other datasets the class names, each image labelled with its class. A ``hierarchy``
        (:class:`lwtakit.hierarchy.Hierarchy`) adds the ancestors of those names as concepts (INVERT's WordNet
        hypernyms, Bykov et al. 2023): an image is positive for each ancestor of its classes or concepts."""
        names = list(getattr(dataset, "concept_names", []) or []) or None
        labels = dataset.concept_matrix() if names and hasattr(dataset, "concept_matrix") else None
        from_classes = labels is None and bool(getattr(dataset, "class_names", None))
        if from_classes:
            names = list(dataset.class_names)
        class_concepts = None
        if hierarchy is not None:
            if not names:
                raise UserError("a concept hierarchy expands the probe set's class or concept names, but this probe "
                                "set has none; use a labelled probe set")
            names, membership = hierarchy.bind(names)
            if labels is not None:
                from lwtakit.hierarchy import expand

                labels = expand(labels, membership)
            else:
                class_concepts = membership
        return cls(names=names, labels=labels, labels_from_classes=from_classes, clip=clip,
                   clip_concepts=list(clip_concepts) if clip_concepts is not None else names,
                   clip_cache_dir=clip_cache_dir, class_concepts=class_concepts)

    def resolved(self, recording: Recording) -> ConceptSource:
        """With class labels standing in for concept labels, the labels of the recorded probe: one-hot classes,
        or each class's concepts (:attr:`class_concepts`)."""
        if not self.labels_from_classes:
            return self
        if recording.labels is None:
            raise UserError("the probe set gives no class labels to use as concepts; give concept labels")
        table = self.class_concepts if self.class_concepts is not None else np.eye(len(self.names), dtype=bool)
        labels = table[recording.labels.numpy()]
        return ConceptSource(**{**self.__dict__, "labels_from_classes": False, "labels": labels})


MODES = ("mc", "sample", "argmax")


@dataclass
class DissectOptions:
    """How one dissection runs: ``pca_components`` principal directions (fitted per position, both poles labelled)
    per layer besides its units,
    ``topk`` top images kept per unit, the probe ``batch_size``, the ``device`` and a progress bar.

    ``mode``: which function of an LWTA network is dissected. ``mc`` (default) records the activation averaged
    over ``passes`` seeded stochastic passes, its expected output, the function it is evaluated as (Monte-Carlo,
    the network's mc mode); ``sample`` one seeded stochastic pass; ``argmax`` the deterministic most-likely winner
    (a different function: its accuracy lags); None keeps the layers' own mode. Networks without LWTA layers
    ignore it. ``heldout``: labels are chosen on one part of the probe set and assessed on the other
    (:class:`~lwtakit.evaluation.assess.HeldOutOptions`); None labels and scores on the whole probe set.

    ``seed``: the stochastic passes of batch b draw from a seed derived from ``(seed, b)``
    (:func:`lwtakit.shard.batch_seed`). ``collective``: the processes share the recording, each its shard of the
    probe set, and rank 0 labels (:mod:`lwtakit.shard`). ``memory_budget``: host bytes the recording may take
    before it spills to a memory-mapped file (:class:`lwtakit.recording.RecordOptions`). ``reliability``: with a
    held-out split, also record the probe set as two halves of ``passes / 2`` passes from independent seeds and add
    each unit's split-half reliability and its disattenuated held-out correlation
    (:mod:`lwtakit.evaluation.reliability`, which also says why activations, not softmax, are averaged; one more
    recording, on the labelling process alone).
    """

    pca_components: int = 0
    batch_size: int = BATCH_SIZE
    topk: int = 16
    device: str | torch.device = "cpu"
    progress: bool = True
    mode: str | None = "mc"
    passes: int = 4
    heldout: HeldOutOptions | None = field(default_factory=HeldOutOptions)
    seed: int = 0
    collective: Collective | None = None
    memory_budget: int | None = None
    reliability: bool = False

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in MODES:
            raise UserError(f"unknown dissection mode {self.mode!r}; choose from {', '.join(MODES)}")
        if self.passes < 1:
            raise UserError(f"mc passes must be >= 1, got {self.passes}")

    def run_options(self, passes: int) -> RunOptions:
        """How a labeler that runs the network itself (IoU) streams the probe set: this dissection's batch size,
        device, processes and seed, with ``passes`` stochastic passes per batch (the mc function; 1 otherwise)."""
        return RunOptions(batch_size=self.batch_size, device=self.device, seed=self.seed, collective=self.collective,
                          passes=passes)


@dataclass
class DissectionResult:
    """The labels, the recording they came from (whole probe set), seconds per stage, the LWTA ``mode`` the
    network was dissected in (None: no LWTA layers or their own mode), the held-out ``split`` (None: none) and,
    with principal directions, each layer's per-position ``moments`` (explanation images) and the ``directions``
    labelled (:class:`lwtakit.labelers.pca.PCA`, top ``pca_components``)."""

    table: LabelTable
    recording: Recording
    seconds: dict[str, float] = field(default_factory=dict)
    mode: str | None = None
    split: ProbeSplit | None = None
    moments: dict[str, Moments] = field(default_factory=dict)
    directions: dict[str, Any] = field(default_factory=dict)

    def top_images(self, layer: str, unit: int, k: int = 8) -> list[int]:
        """Probe indices of the unit's ``k`` most activating images (from the streaming top-k); for a direction
        pole (``<layer>#pca+`` / ``-``), of the ``k`` images with the largest (signed) projection."""
        pole = pca_pole(layer)
        if pole is not None:
            base, sign = pole
            scores = sign * self.directions[base].project(self.recording.acts[base])[:, unit]
            return [int(i) for i in torch.argsort(scores, descending=True, stable=True)[:k]]
        stats = self.recording.stats[layer].compute()
        return [int(i) for i in stats["top_indices"][unit][:k] if int(i) >= 0]


def check_labelers(labelers: Sequence[Labeler], concepts: ConceptSource, probe) -> None:
    """Fail early, with one line, when a labeler lacks what it needs."""
    for labeler in labelers:
        labeler.check(concepts, probe)
    if concepts.labels is not None and len(concepts.labels) != len(probe):
        raise UserError(f"concept labels have {len(concepts.labels)} rows for {len(probe)} probe images")


def dissect(model: nn.Module, probe, layers: Sequence[str], labelers: Sequence[str | Labeler],
            concepts: ConceptSource, options: DissectOptions | None = None, *, settings: Any = None,
            recording: Recording | None = None) -> DissectionResult | None:
    """Label every unit of ``layers`` (and ``options.pca_components`` principal directions per layer) with each
    labeler (a registered name or a :class:`Labeler`; names take their settings from ``settings.<name>``, e.g.
    the ``dissection`` config group), on the network in ``options.mode``.

    With ``options.heldout``, labels are chosen on the explanation part of the probe set and every label is then
    assessed on the evaluation part (:func:`lwtakit.evaluation.assess.assess`; needs concept labels). ``probe`` is
    a map-style dataset of ``(image, label)`` items, images in [0, 1]. A ``recording`` of the same probe set that
    already holds ``layers`` is reused instead of a new pass. With ``options.collective`` each process records its
    shard and rank 0 labels the whole probe set (the labels one process finds); the other ranks return None.
    """
    options = options or DissectOptions()
    labelers = create_labelers(labelers, settings)
    check_labelers(labelers, concepts, probe)
    mode = _mode(model, options)
    split = _split(len(probe), options)
    seconds: dict[str, float] = {}
    table = LabelTable()
    with lwta_inference(model, "sample" if mode == "mc" else mode):
        t = time.perf_counter()
        rec = recording or record(model, probe, layers, options)
        seconds["record"] = time.perf_counter() - t
        t = time.perf_counter()
        moments, directions = _fit_directions(model, probe, layers, options, split)
        if directions:
            seconds["pca_fit"] = time.perf_counter() - t
        t = time.perf_counter()
        image_embeddings = _sharded_clip_images(labelers, concepts, _labelled_part(probe, split), options)
        if rec is None:  # another process's shard, gathered on rank 0, which labels
            _join_sharded_labelers(model, _labelled_part(probe, split), labelers, concepts, options)
            return None
        missing = [name for name in layers if name not in rec.acts]
        if missing:
            raise ValueError(f"the given recording lacks layers {missing}")
        ctx = _context(model, probe, rec, concepts, options, split)
        ctx.image_embeddings = image_embeddings
        if _needs_clip(labelers):
            ctx.clip_embeddings()
            seconds["clip_embed"] = time.perf_counter() - t
        targets = [target for layer in layers for target in _targets(layer, rec, directions.get(layer), split)]
        _share_targets(targets, labelers, options)
        for target in targets:
            for labeler in labelers:
                if labeler.applies_to(target):
                    t = time.perf_counter()
                    table.rows += labeler.label(target, ctx)
                    seconds[labeler.name] = seconds.get(labeler.name, 0.0) + time.perf_counter() - t
    for r in table:
        r.mode = mode
    if split is not None and ctx.concepts.labels is not None:
        t = time.perf_counter()
        _assess(table, targets, concepts.resolved(rec), split, options.heldout,
                _reliability(model, probe, layers, options, split))
        seconds["heldout"] = time.perf_counter() - t
    return DissectionResult(table=table, recording=rec, seconds=seconds, mode=mode, split=split, moments=moments,
                            directions=directions)


def record(model: nn.Module, probe, layers: Sequence[str], options: DissectOptions, *,
           moments: bool = False) -> Recording | None:
    """One pass over the probe set recording ``layers`` of the network in ``options.mode`` (mc: each batch's
    ``options.passes`` sampled passes averaged); what :func:`dissect` labels, also for callers that record more
    layers than they label (``compare``). ``moments``: also the per-position :class:`Moments` of each layer."""
    mode = _mode(model, options)
    with lwta_inference(model, "sample" if mode == "mc" else mode):
        return record_activations(model, probe, list(layers), RecordOptions(
            batch_size=options.batch_size, topk=options.topk, device=options.device, progress=options.progress,
            passes=options.passes if mode == "mc" else 1, moments=moments, seed=options.seed,
            collective=options.collective, memory_budget=options.memory_budget))


def _fit_directions(model: nn.Module, probe, layers: Sequence[str], options: DissectOptions,
                    split: ProbeSplit | None) -> tuple[dict[str, Moments], dict[str, Any]]:
    """Per layer, the per-position moments of the explanation images (the whole probe set without a split; one
    more streaming pass, in the dissected mode) and the top ``options.pca_components`` principal directions fitted
    on them (Dey et al. 2020); empty without ``pca_components``."""
    if options.pca_components <= 0:
        return {}, {}
    from lwtakit.labelers.pca import fit_pca

    recorded = record(model, _labelled_part(probe, split), layers, options, moments=True)
    if recorded is None:  # not rank 0: the moments were gathered there
        return {}, {}
    moments = recorded.moments
    return moments, {layer: fit_pca(moments[layer], k=options.pca_components) for layer in layers}


def _labelled_part(probe, split: ProbeSplit | None):
    """The images labels are chosen on: the explanation part with a split, else the whole probe set."""
    return probe if split is None else ProbeSubset(probe, split.explain)


def _needs_clip(labelers: Sequence[Labeler]) -> bool:
    return any(CLIP in labeler.needs or CAPTIONER in labeler.needs for labeler in labelers)


def _sharded_clip_images(labelers: Sequence[Labeler], concepts: ConceptSource, part,
                         options: DissectOptions) -> torch.Tensor | None:
    """With several processes and a labeler that reads CLIP: the image embeddings of ``part``, each process
    embedding its batches (:func:`lwtakit.clip.cache.embed_dataset_sharded`); on rank 0, None elsewhere and with one
    process (the labelers' context embeds them on first use)."""
    if options.collective is None or not _needs_clip(labelers):
        return None
    from lwtakit.clip.cache import embed_dataset_sharded

    return embed_dataset_sharded(concepts.clip, part, options.collective, concepts.clip_cache_dir)


def _sharded(labelers: Sequence[Labeler], options: DissectOptions) -> list[Labeler]:
    """The labelers every process runs (each on its share of the probe set), when there are several processes."""
    return [labeler for labeler in labelers if labeler.sharded] if options.collective is not None else []


def _share_targets(targets: list[Target], labelers: Sequence[Labeler], options: DissectOptions) -> None:
    """Rank 0 tells the other processes what the sharded labelers label: each target without its activations."""
    if _sharded(labelers, options):
        options.collective.broadcast_object([dataclasses.replace(t, acts=t.acts[:0], firing=None, holdout=None)
                                             for t in targets])


def _join_sharded_labelers(model: nn.Module, part, labelers: Sequence[Labeler], concepts: ConceptSource,
                           options: DissectOptions) -> None:
    """Not rank 0: run each sharded labeler on the targets rank 0 labels, in its order (its rows stay there)."""
    sharded = _sharded(labelers, options)
    if not sharded:
        return
    ctx = Context(model, part, None, concepts, options.run_options(_passes(model, options)))
    for target in options.collective.broadcast_object(None):
        for labeler in sharded:
            if labeler.applies_to(target):
                labeler.label(target, ctx)


def _mode(model: nn.Module, options: DissectOptions) -> str | None:
    return options.mode if lwta_layers(model) else None


def _split(n: int, options: DissectOptions) -> ProbeSplit | None:
    if options.heldout is None or not options.heldout.enabled:
        return None
    h = options.heldout
    return split_probe(n, h.fraction, h.seed, min_part=max(2, options.topk))


def _context(model, probe, rec: Recording, concepts: ConceptSource, options: DissectOptions,
             split: ProbeSplit | None) -> Context:
    """What the labelers read: the whole probe set, or its explanation part when labels are assessed held out."""
    concepts = concepts.resolved(rec)
    probe = _labelled_part(probe, split)
    if split is not None:
        if concepts.labels is not None:
            concepts = dataclasses.replace(concepts, labels=concepts.labels[split.explain])
    return Context(model, probe, rec, concepts, options.run_options(_passes(model, options)))


def _passes(model: nn.Module, options: DissectOptions) -> int:
    """Stochastic passes averaged per batch: ``options.passes`` in mc mode, else 1."""
    return options.passes if _mode(model, options) == "mc" else 1


def _targets(layer: str, rec: Recording, pca, split: ProbeSplit | None) -> list[Target]:
    """The layer's units and, with a fitted ``pca``, both poles of its principal directions (Dey et al. 2020): an
    image's score on the ``+`` pole is the projection of its recorded (spatial-mean) activations, on the ``-`` pole
    that score negated; IoU dissects the per-position projections (``directions``, negated for ``-``). With a
    split, ``acts`` are the explanation part's and ``holdout`` the evaluation's."""
    acts, holdout = (rec.acts[layer], None) if split is None else split.parts(rec.acts[layer])
    spatial = rec.spatial.get(layer, False)
    targets = [Target(layer, layer, acts, rec.firing[layer], spatial=spatial, holdout=holdout)]
    if pca is not None:
        scores, held = pca.project(acts), None if holdout is None else pca.project(holdout)
        for pole, sign in POLES.items():
            targets.append(Target(layer + PCA_SUFFIX + pole, layer, sign * scores, None,
                                  (pca.mean, sign * pca.components), spatial=spatial,
                                  holdout=None if held is None else sign * held))
    return targets


def _assess(table: LabelTable, targets: list[Target], concepts: ConceptSource, split: ProbeSplit,
            heldout: HeldOutOptions, reliability: dict[str, torch.Tensor]) -> None:
    """Each target's labels assessed on the evaluation part (:func:`lwtakit.evaluation.assess.assess`)."""
    concepts_eval = split.parts(concepts.labels)[1]
    for target in targets:
        rows = [r for r in table if r.layer == target.name]
        assess(rows, target.holdout, torch.as_tensor(concepts_eval), list(concepts.names), heldout,
               reliability.get(target.name))


def _reliability(model, probe, layers: Sequence[str], options: DissectOptions,
                 split: ProbeSplit) -> dict[str, torch.Tensor]:
    """Per layer, its units' split-half reliability on the evaluation images (``options.reliability``; else
    none)."""
    if not options.reliability:
        return {}
    from lwtakit.evaluation.reliability import split_half, split_half_reliability

    halves = split_half(model, probe, layers, options)
    return {layer: split_half_reliability(split.parts(halves.a[layer])[1], split.parts(halves.b[layer])[1],
                                          halves.passes, halves.passes_half) for layer in layers}
