"""The labeler protocol and registry (the way timm registers models: ``@register_labeler`` + ``create_labeler``).

A labeler turns what one dissection shares — the recording of a probe set, the concepts, CLIP embeddings —
into :class:`~lwtakit.labels.LabelRow` objects for one :class:`Target` (a layer's units, or its principal
directions). It declares what it :attr:`~Labeler.needs`, so :func:`lwtakit.dissect.dissect` can refuse a
dissection that lacks something before any work, and compute shared inputs (CLIP embeddings) once for every
labeler that needs them. Its settings are one config dataclass (:attr:`~Labeler.config_class`, defaults in
:mod:`lwtakit.labelers.configs`), given whole.

Adding a labeler is one file and one registration::

    @register_labeler
    class MaxActivation(Labeler):
        name = "max_concept"
        needs = frozenset({CONCEPT_LABELS})

        def label(self, target, ctx):
            ...  # -> list[LabelRow]

after which ``dissect(..., labelers=["max_concept"])``, ``analyze.py dissect --methods max_concept`` and the
training callback's ``dissection.methods`` use it (tests/test_labelers.py registers one outside the package).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from lwtakit.errors import UserError
from lwtakit.labelers.configs import RENAMED
from lwtakit.labelers.run_options import RunOptions
from lwtakit.labels import LabelRow, optional_float
from lwtakit.models.precision import widened

# What a labeler can need (Labeler.needs).
CONCEPT_LABELS = "concept_labels"  # binary concept labels [N, K] of the probe images
CLIP = "clip"                      # a CLIP model and a concept set (image and text embeddings)
MASKS = "masks"                    # per-pixel concept masks (probe.concept_masks)
CAPTIONER = "captioner"            # an image captioning model
SPATIAL = "spatial"                # spatial maps: layers without them are skipped (they have no labels)


@dataclass
class Target:
    """What one labeler call labels: the units of ``layer`` or, with ``directions = (mean, components)``, its
    principal directions; ``name`` is the row's layer name (``layer`` or ``layer#pca``); ``acts`` [N, C] on the
    images the labels are chosen on (``ctx.probe``)."""

    name: str
    layer: str
    acts: torch.Tensor
    firing: torch.Tensor | None = None
    directions: tuple[torch.Tensor, torch.Tensor] | None = None
    spatial: bool = True
    holdout: torch.Tensor | None = None  # the evaluation part's activations (held-out assessment), not for labeling


@dataclass
class Context:
    """What every labeler of one dissection reads: the model (for labelers that need a second pass), the probe
    set and its recording, the concepts, and how the network is run (``run``: batch size, device, processes, and
    the function dissected: the mean of ``run.passes`` stochastic passes per batch in mc mode, 1 otherwise, each
    batch drawing from ``(run.seed, batch index)``), for labelers that run the network themselves (IoU). CLIP
    embeddings are computed on first use."""

    model: torch.nn.Module
    probe: Any
    recording: Any  # lwtakit.recording.Recording
    concepts: Any  # lwtakit.dissect.ConceptSource
    run: RunOptions = field(default_factory=RunOptions)
    image_embeddings: torch.Tensor | None = None  # the probe's CLIP image embeddings when already computed
    _clip: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def clip_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image embeddings [N, D], concept text embeddings [M, D])`` of the probe set, cached on disk by
        content (:mod:`lwtakit.clip`) and here for the other labelers of this dissection."""
        if self._clip is None:
            from lwtakit.clip import embed_dataset_cached, embed_texts_cached

            c = self.concepts
            images = self.image_embeddings
            if images is None:
                images = embed_dataset_cached(c.clip, self.probe, c.clip_cache_dir)
            texts = embed_texts_cached(c.clip, c.clip_concepts, c.clip_cache_dir)
            images = widened(images)  # float64 stays (--precision 64)
            self._clip = (images, texts.to(images.dtype))
        return self._clip


class Labeler(ABC):
    """Base class of every labeler: a registered ``name``, a ``config_class`` and the inputs it ``needs``."""

    name: ClassVar[str]
    config_class: ClassVar[type | None] = None
    needs: ClassVar[frozenset[str]] = frozenset()
    # With several processes (ctx.run.collective) a sharded labeler's label() runs in every process, each streaming its
    # share of the probe set; rank 0 returns the rows. Other labelers run on rank 0 alone.
    sharded: ClassVar[bool] = False
    # The type of its rows: a LabelRow subclass holds a labeler's own typed values (INVERT's formula).
    row_class: ClassVar[type[LabelRow]] = LabelRow
    title: ClassVar[str] = ""  # the method's name in prose (messages, reports); default: its registered name
    # Whether a training run adds this labeler by itself once CLIP weights are configured (dissection.clip.pretrained).
    with_clip: ClassVar[bool] = False
    # analyze.py label: the --method names under which this labeler labels activations given as arrays (empty: it
    # needs the network or the images) and the columns of its rows there.
    array_methods: ClassVar[tuple[str, ...]] = ()
    array_columns: ClassVar[tuple[str, ...]] = ("unit", "label", "score")

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        if config is None and self.config_class is not None:
            config = self.config_class()
        self.config = dataclasses.replace(config, **overrides) if overrides else config

    def prepare(self, concepts: Any, supply: Any) -> Any:
        """``concepts`` (a :class:`lwtakit.dissect.ConceptSource`) with what this labeler needs beyond the probe set,
        built by ``supply`` (:class:`lwtakit.dissection_setup.Supply`, which builds each shared input once): the CLIP
        model and its concept set for a labeler that needs CLIP. A labeler with a model of its own (captions) adds it
        here. Raises :class:`lwtakit.clip.ClipWeightsUnavailable` when weights cannot be had."""
        if CLIP in self.needs or CAPTIONER in self.needs:
            concepts = supply.with_clip(concepts)
        return concepts

    @classmethod
    def for_array_method(cls, method: str, settings: Any = None) -> Labeler:
        """The labeler that ``analyze.py label --method method`` runs (``method`` one of :attr:`array_methods`), with
        its config from ``settings.<name>`` as :func:`create_labelers` gives it."""
        return create_labelers([cls.name], settings)[0]

    def label_arrays(self, acts: Any, arrays: ConceptArrays) -> list[dict]:
        """``analyze.py label``: one plain row per unit of ``acts`` (numpy [N, C]) from the concept arrays."""
        raise NotImplementedError(f"labeler {self.name} cannot label activations given as arrays")

    def check(self, concepts: Any, probe: Any) -> None:
        """Raise :class:`UserError` (one line: what is missing and how to supply it) when an input is missing."""
        missing = {
            CONCEPT_LABELS: not concepts.has_labels or not concepts.names,
            CLIP: concepts.clip is None or not concepts.clip_concepts,
            CAPTIONER: concepts.clip is None or concepts.captioner is None,
            MASKS: not hasattr(probe, "concept_masks"),
        }
        for need in sorted(self.needs):
            if missing.get(need):
                raise UserError(f"method {self.name} needs {_HOW[need]}")

    def applies_to(self, target: Target) -> bool:
        """Whether this labeler labels ``target`` at all (e.g. IoU needs spatial maps)."""
        return SPATIAL not in self.needs or target.spatial

    @abstractmethod
    def label(self, target: Target, ctx: Context) -> list[LabelRow]:
        """One row per unit (or direction) of ``target``."""

    def report_meta(self) -> dict[str, str]:
        """The settings a dissection report's header names (setting -> words); none by default."""
        return {}

@dataclass
class ConceptArrays:
    """What ``analyze.py label`` gives a labeler besides the activations: the ``names`` of K concepts, their binary
    ``labels`` bool [N, K] per image (a labeler that needs :data:`CONCEPT_LABELS`) or the image-concept ``scores``
    float [N, K] (one that needs :data:`CLIP`; e.g. CLIP similarities), and the ``method`` asked for."""

    names: list[str]
    method: str
    labels: Any = None
    scores: Any = None


def rows_from_dicts(dicts: list[dict], target: Target, method: str,
                    row_class: type[LabelRow] = LabelRow) -> list[LabelRow]:
    """Rows of ``row_class`` from the plain rows of a labeling function (``unit, label, score``, ``p_value``, the
    row type's own fields (:meth:`~lwtakit.labels.LabelRow.own_fields`); ``top5`` a list or a ``|``-joined
    string); other scalar fields go to ``extra``."""
    known = {"unit", *row_class.columns, *(f.name for f in dataclasses.fields(row_class))}
    rows = []
    for d in dicts:
        unit = int(d["unit"])
        top = d.get("top5")
        if top is not None:
            top = tuple(t for t in top.split("|") if t) if isinstance(top, str) else tuple(str(t) for t in top)
        rows.append(row_class(
            layer=target.name, unit=unit, method=method, label="" if d.get("label") is None else str(d["label"]),
            score=optional_float(d.get("score")),
            firing_rate=None if target.firing is None else optional_float(target.firing[unit]),
            p_value=optional_float(d.get("p_value")), top5=top, **row_class.own_fields(d),
            extra={k: v for k, v in d.items() if k not in known and isinstance(v, (int, float, str))}))
    return rows


_HOW = {
    CONCEPT_LABELS: "concept labels for the probe images: use a probe set that annotates concepts (the synthetic data) "
                    "or has classes (mnist, cifar10, a folder with one subfolder per class)",
    CLIP: "CLIP weights and a concept set: analyze.py --clip-pretrained (a tag, a weights file, or local-dir:FOLDER) "
          "and --concepts; train.py dissection.clip.pretrained=... and dissection.concepts=...",
    CAPTIONER: "CLIP weights and a captioning model: --clip-pretrained (train.py: dissection.clip.pretrained) and the "
               "CoCa model (pip install -e '.[captions]')",
    MASKS: "per-pixel concept masks; use the synthetic probe set",
}

_REGISTRY: dict[str, type[Labeler]] = {}


def register_labeler(cls: type[Labeler]) -> type[Labeler]:
    """Class decorator: make ``cls`` available by ``cls.name`` to :func:`create_labeler` and every entry point."""
    if not getattr(cls, "name", None):
        raise TypeError(f"labeler {cls.__qualname__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"a labeler named {cls.name!r} is already registered ({_REGISTRY[cls.name].__qualname__})")
    if not cls.title:
        cls.title = cls.name
    _REGISTRY[cls.name] = cls
    return cls


def row_class(method: str) -> type[LabelRow]:
    """The row type of the labels of ``method`` (:attr:`Labeler.row_class`; :class:`LabelRow` for a method that is
    not registered)."""
    _load_builtins()
    cls = _REGISTRY.get(method)
    return LabelRow if cls is None else cls.row_class


def labeler_names() -> list[str]:
    """Registered labeler names (the built-in ones first)."""
    _load_builtins()
    return list(_REGISTRY)


def create_labeler(name: str, config: Any = None, **overrides: Any) -> Labeler:
    """The labeler registered as ``name`` with ``config`` (its config dataclass; default: its defaults)."""
    _load_builtins()
    if name in RENAMED:
        raise UserError(RENAMED[name])
    if name not in _REGISTRY:
        raise UserError(f"unknown dissection method '{name}'; choose from {', '.join(_REGISTRY)}")
    return _REGISTRY[name](config, **overrides)


def create_labelers(names, settings: Any = None) -> list[Labeler]:
    """Labelers by name, each with its config from ``settings.<name>`` when there is one (e.g. the
    ``dissection`` config group, whose ``invert``, ``clip_dissect``, ``iou`` and ``captions`` entries hold the
    built-in labelers' settings); a :class:`Labeler` instance is taken as it is."""
    from lwtakit.labelers.configs import as_config

    out = []
    for item in names:
        if isinstance(item, Labeler):
            out.append(item)
            continue
        _load_builtins()
        cls = _REGISTRY.get(item)
        section = getattr(settings, item, None) if settings is not None and cls is not None else None
        config = as_config(cls.config_class, section) if section is not None and cls.config_class else None
        out.append(create_labeler(item, config))
    return out


def array_methods() -> dict[str, type[Labeler]]:
    """``analyze.py label``'s methods: each ``--method`` name and the registered labeler class that labels with it."""
    _load_builtins()
    return {method: cls for cls in _REGISTRY.values() for method in cls.array_methods}


def labeler_class(name: str) -> type[Labeler] | None:
    """The labeler class registered as ``name`` (None: no such labeler)."""
    _load_builtins()
    return _REGISTRY.get(name)


def labelers_with_clip() -> list[str]:
    """The registered labelers a training run adds by itself once CLIP weights are configured."""
    _load_builtins()
    return [name for name, cls in _REGISTRY.items() if cls.with_clip]


def _load_builtins() -> None:
    # Importing the modules registers the built-in labelers; lazily, so that the registry costs no import time.
    from lwtakit.labelers import captions, clip_dissect, invert, iou  # noqa: F401
