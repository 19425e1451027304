"""The one composition root of a dissection: from the ``dissection`` config group to what :func:`dissect` runs.

Both entry points build their dissection here, so they cannot drift apart: the training callback
(:meth:`callbacks.dissection.DissectionCallback.from_config`) hands over its config group, ``analyze.py dissect``
builds a :class:`~lwtakit.config.DissectionConfig` from its flags (their defaults are the schema's), and
``compare`` calls :func:`dissect_options` with its few settings. :func:`dissection_from_config`

1. creates the configured labelers from the registry (:mod:`lwtakit.labelers.base`; unknown names and bad
   settings fail here, one line);
2. lets each labeler prepare what it needs beyond the probe set (:meth:`Labeler.prepare`): the labelers that
   need CLIP get the CLIP model and its concept set, built once by :class:`Supply`; the captions labeler its
   captioning model. CLIP weights that cannot be had make ``dissection.clip.fallback`` 's labeler take the place
   of those that need them, when the config allows it (:mod:`lwtakit.clip.fallback`);
3. checks that every labeler has its inputs (:func:`lwtakit.dissect.check_labelers`), before any step of
   training or any pass over the probe set;
4. returns them with the run options (:class:`~lwtakit.dissect.DissectOptions`) the config and the entry
   point's :class:`SetupOptions` give.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lwtakit.dissect import ConceptSource, DissectOptions, check_labelers
from lwtakit.labelers.base import Labeler, create_labelers, labelers_with_clip

# Whose words an error about missing weights uses: the flags or config keys that supply them.
ENTRY_POINTS = ("train", "analyze")


@dataclass(frozen=True)
class SetupOptions:
    """What an entry point adds to the ``dissection`` config: the ``device`` the passes (and CLIP, the captioner)
    run on, the ``seed`` of every dissection, the ``collective`` of several processes (:mod:`lwtakit.shard`), a
    progress bar, the ``precision`` (bits) CLIP's floats are put in (None: as loaded), the ``entry`` point whose
    flags or config keys an error names (:data:`ENTRY_POINTS`), whether configured CLIP weights bring the labelers
    that use them along (``add_clip_labelers``, training: ``dissection.clip.pretrained`` alone asks for
    CLIP-based labels) and ``say``, which shows one-line notes (the concept set's size)."""

    device: Any = "cpu"
    seed: int = 0
    collective: Any = None
    progress: bool = False
    precision: int | None = None
    entry: str = "train"
    add_clip_labelers: bool = False
    say: Callable[[str], None] = print


@dataclass
class Dissection:
    """A dissection ready to run: validated ``labelers``, the ``concepts`` they compare units with, the run
    ``options`` and ``choice`` (the methods requested and used, the CLIP model, any fallback line: a training run's
    ``dissection.json``)."""

    labelers: list[Labeler]
    concepts: ConceptSource
    options: DissectOptions
    choice: dict[str, Any] = field(default_factory=dict)


def dissection_from_config(cfg: Any, probe, setup: SetupOptions = SetupOptions()) -> Dissection:
    """The labelers, concepts and run options that the ``dissection`` config ``cfg`` (a
    :class:`~lwtakit.config.DissectionConfig` or its OmegaConf node) gives on ``probe`` (a map-style dataset of
    ``(image, label)``); see the module docstring for the steps. A labeler that cannot run here is a
    :class:`~lwtakit.errors.UserError` of one line, raised before any pass over the probe set."""
    cfg = _as_config(cfg)
    requested = list(cfg.methods)
    if setup.add_clip_labelers and clip_configured(cfg.clip):
        requested += [name for name in labelers_with_clip() if name not in requested]
    concepts = ConceptSource.from_dataset(probe, clip_cache_dir=cfg.clip.cache_dir, hierarchy=_hierarchy(cfg))
    supply = Supply(cfg, probe, setup)
    labelers, concepts, fallback = _prepared(requested, cfg, concepts, supply)
    check_labelers(labelers, concepts, probe)
    choice = {"methods_requested": requested, "methods_used": [labeler.name for labeler in labelers],
              "clip": concepts.clip.source if concepts.clip is not None else None, "fallback": fallback}
    return Dissection(labelers, concepts, dissect_options(cfg, setup), choice)


def dissect_options(cfg: Any, setup: SetupOptions = SetupOptions()) -> DissectOptions:
    """The run options of the ``dissection`` config ``cfg`` for one entry point (``setup``): batch size, top
    images, LWTA mode and passes, held-out split (and the units' split-half reliability with it), memory budget and
    principal directions from the config; device,
    seed, processes and progress bar from ``setup``. ``compare`` calls it with its own few settings."""
    from lwtakit.recording import budget_bytes

    cfg = _as_config(cfg)
    heldout = cfg.heldout if cfg.heldout.enabled else None
    return DissectOptions(pca_components=cfg.pca_components, batch_size=cfg.batch_size, topk=cfg.top_images,
                          device=setup.device, progress=setup.progress, mode=cfg.mode, passes=cfg.passes,
                          heldout=heldout, seed=setup.seed, collective=setup.collective,
                          memory_budget=budget_bytes(cfg.memory_budget_gb),
                          reliability=cfg.reliability and heldout is not None)


class Supply:
    """Builds the inputs labelers need beyond the probe set, each once for all of them: CLIP with its concept set
    (:meth:`with_clip`) and models of their own (:meth:`weights`), naming the entry point's flags or config keys
    when weights cannot be had."""

    def __init__(self, cfg: Any, probe, setup: SetupOptions) -> None:
        if setup.entry not in ENTRY_POINTS:
            raise ValueError(f"entry must be one of {ENTRY_POINTS}, got {setup.entry!r}")
        self.cfg, self.probe, self.setup = cfg, probe, setup
        self._clip: Any = None
        self._clip_concepts: list[str] | None = None

    @property
    def device(self) -> str:
        return str(self.setup.device)

    def with_clip(self, concepts: ConceptSource) -> ConceptSource:
        """``concepts`` with the configured CLIP model and concept set (``dissection.clip``, ``.concepts``,
        ``.drop_class_words``); unchanged when no CLIP weights are configured (the labeler's check then says what
        is missing: CLIP without weights would label with random ones)."""
        if concepts.clip is not None or not clip_configured(self.cfg.clip):
            return concepts
        if self._clip is None:
            from lwtakit.clip import load_clip
            from lwtakit.concept_sets import concepts_for

            c = self.cfg.clip
            clip = self.weights(lambda: load_clip(c.model, c.pretrained, device=self.device, cache_dir=c.cache_dir,
                                                  batch_size=c.batch_size), "clip")
            if self.setup.precision is not None:
                from lwtakit.models.precision import at_precision

                at_precision(clip.model, self.setup.precision)
            names, note = concepts_for(self.cfg.concepts, getattr(self.probe, "class_names", None),
                                       self.cfg.drop_class_words)
            self.setup.say(note)  # a filtered set is never mistaken for the full one
            self._clip, self._clip_concepts = clip, names
        return dataclasses.replace(concepts, clip=self._clip, clip_concepts=list(self._clip_concepts))

    def weights(self, build: Callable[[], Any], what: str) -> Any:
        """``build()``, its missing weights an error naming this entry point's way to supply ``what`` (``clip`` or
        ``captioner``: :data:`lwtakit.clip.load.ANALYZE_CLIP` and friends)."""
        from lwtakit.clip import ClipWeightsUnavailable
        from lwtakit.clip.load import ANALYZE_CAPTIONS, ANALYZE_CLIP, TRAIN_CLIP

        words = {("analyze", "clip"): ANALYZE_CLIP, ("analyze", "captioner"): ANALYZE_CAPTIONS,
                 ("train", "clip"): TRAIN_CLIP}
        try:
            return build()
        except ClipWeightsUnavailable as exc:
            raise exc.told(words.get((self.setup.entry, what))) from None


def _prepared(names: list[str], cfg: Any, concepts: ConceptSource,
              supply: Supply) -> tuple[list[Labeler], ConceptSource, str | None]:
    """The labelers of ``names`` and ``concepts`` with what each prepared; CLIP weights that cannot be had give
    their labelers' place to ``cfg.clip.fallback`` 's (:func:`lwtakit.clip.fallback.fall_back`: one warning line,
    returned third) when the config allows it, else the error stands."""
    from lwtakit.clip import ClipWeightsUnavailable
    from lwtakit.clip.fallback import fall_back

    labelers = create_labelers(names, cfg)  # unknown names and bad settings fail here
    prepared = concepts
    try:
        for labeler in labelers:
            prepared = labeler.prepare(prepared, supply)
        return labelers, prepared, None
    except ClipWeightsUnavailable as exc:
        choice = fall_back(names, exc, cfg.clip, label_kind(concepts))
    labelers = create_labelers(choice.methods, cfg)
    for labeler in labelers:
        concepts = labeler.prepare(concepts, supply)
    return labelers, concepts, choice.fallback


def clip_configured(clip_cfg: Any) -> bool:
    """Whether the ``dissection.clip`` config names CLIP weights: a ``pretrained`` tag or file, or a model that
    brings its own weights (``local-dir:FOLDER``, ``hf-hub:NAME``)."""
    model = str(getattr(clip_cfg, "model", None) or "")
    return bool(getattr(clip_cfg, "pretrained", None)) or model.startswith(("local-dir:", "hf-hub:"))


def label_kind(concepts: ConceptSource) -> str | None:
    """Which labels a labeler of concept labels reads on this probe (what a CLIP fallback would use), None when it
    has none."""
    if not concepts.has_labels:
        return None
    return "class labels" if concepts.labels_from_classes else "concept labels"


def _hierarchy(cfg: Any):
    if not cfg.hierarchy:
        return None
    from lwtakit.hierarchy import read_hierarchy

    return read_hierarchy(cfg.hierarchy)


def _as_config(cfg: Any) -> Any:
    """``cfg`` as a plain :class:`~lwtakit.config.DissectionConfig` (an OmegaConf node is converted; a copy, so
    that the caller's config is never changed)."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(cfg):
        return OmegaConf.to_object(cfg)
    return dataclasses.replace(cfg) if dataclasses.is_dataclass(cfg) else cfg
