"""The dataset registry (the way timm registers models): a :class:`DatasetSource` class and its registration.

Adding a dataset is one file and one registration::

    @register_dataset
    class Digits(DatasetSource):
        name = "digits"
        img_size = 28

        def build(self, request):  # -> a map-style Dataset of (image float32 [C, H, W] in [0, 1], label)
            ...

        def info(self, request):   # -> DatasetInfo (classes, channels, normalisation), without loading it all
            ...

after which :func:`lwtakit.data.build_dataset`, ``train.py data.name=digits`` (the config's choices are the
registered sources that are :attr:`~DatasetSource.trainable`), the training data module and the checkpoint loader
use it (tests/test_registries.py registers one outside the package).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch.utils.data import Dataset

from lwtakit.data.transforms import RandomCropFlip
from lwtakit.errors import UserError


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset."""

    num_classes: int
    class_names: list[str]
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    img_size: int
    name: str = ""


@dataclass(frozen=True)
class DataRequest:
    """What a registered dataset is asked for: a ``split`` (train | val | test) read from ``root`` (a file or
    folder; ``download``: torchvision may fetch it there) at ``img_size``; ``seed`` and ``size`` for generated data
    (None: the dataset's own size; other datasets ignore both); ``options``: the dataset's own options, checked
    against :attr:`DatasetSource.options` before it is called."""

    split: str = "train"
    root: str | None = None
    download: bool = False
    img_size: int = 32
    seed: int = 0
    size: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


class DatasetSource(ABC):
    """Base class of every dataset: a registered ``name``, its default image side, and how to build a split."""

    name: ClassVar[str]
    img_size: ClassVar[int]  # the image side when none is asked for
    options: ClassVar[frozenset[str]] = frozenset()  # the dataset's own options (build_dataset's keywords)
    config_keys: ClassVar[tuple[str, ...]] = ()  # keys of the ``data`` config group that are its options
    trainable: ClassVar[bool] = True  # labelled: a choice of ``data.name`` (an unlabelled probe folder is not)
    downloads: ClassVar[bool] = False  # torchvision can download it into ``root`` (the data module's prepare_data)

    @abstractmethod
    def build(self, request: DataRequest) -> Dataset:
        """The split ``request.split``: items ``(image float32 [C, H, W] in [0, 1], label int)``."""

    @abstractmethod
    def info(self, request: DataRequest) -> DatasetInfo:
        """Classes, channels, normalisation and image side (``request.split`` is not used)."""

    def augmentation(self, img_size: int) -> RandomCropFlip | None:
        """The train-time augmentation (None: the dataset is not augmented)."""
        return None


_REGISTRY: dict[str, type[DatasetSource]] = {}


def register_dataset(cls: type[DatasetSource]) -> type[DatasetSource]:
    """Class decorator: make ``cls`` available by ``cls.name`` to :func:`dataset_source` and every entry point."""
    if not getattr(cls, "name", None) or not getattr(cls, "img_size", None):
        raise TypeError(f"dataset {cls.__qualname__} needs a name and an img_size")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"a dataset named {cls.name!r} is already registered ({_REGISTRY[cls.name].__qualname__})")
    _REGISTRY[cls.name] = cls
    return cls


def dataset_names(trainable: bool = False) -> list[str]:
    """Registered dataset names (the built-in ones first); ``trainable``: only those a run can train on."""
    _load_builtins()
    return [name for name, cls in _REGISTRY.items() if cls.trainable or not trainable]


def dataset_source(name: str) -> DatasetSource:
    """The dataset registered as ``name`` (case-insensitive); an unknown name is one line listing the registered
    ones."""
    _load_builtins()
    key = str(name).lower()
    if key not in _REGISTRY:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(_REGISTRY)} (a dataset of your own: "
                        "@register_dataset in a module imported before the run)")
    return _REGISTRY[key]()


def check_options(source: DatasetSource, options: Mapping[str, Any]) -> None:
    """Refuse options the dataset does not take, naming those it does."""
    extra = sorted(set(options) - set(source.options))
    if extra:
        raise UserError(f"dataset {source.name!r} does not take option(s) {extra}; "
                        f"it takes {sorted(source.options) or 'no extra options'}")


def _load_builtins() -> None:
    # Importing the modules registers the built-in datasets (in this order: the default first); lazily, so that the
    # registry costs no import time.
    for module in ("synthetic", "mnist", "folders"):
        importlib.import_module(f"lwtakit.data.{module}")
