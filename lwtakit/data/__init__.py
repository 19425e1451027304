"""Datasets: one entry point (:func:`build_dataset`), their metadata (:func:`dataset_info`), the split a ``data``
config group describes (:func:`config_dataset`) and fixed probe subsets for dissection (:func:`probe_subset`).

Datasets are registered (:mod:`lwtakit.data.registry`: a :class:`DatasetSource` class and ``@register_dataset``).
Built in: ``synthetic`` (:class:`~lwtakit.data.synthetic.ConceptShapes`, the embedded default), ``mnist``,
``cifar10``, ``cifar100``, ``imagefolder`` (``root/<split>/<class>/<image>``) and ``probe_folder`` (unlabelled
images under ``root``). Items are ``(image float32 [C, H, W] in [0, 1], label int)``; models normalise internally
with ``DatasetInfo.mean/std``.

Training augmentation (``augment=True``, train split only; :class:`~lwtakit.data.transforms.RandomCropFlip`), each
dataset's own (:meth:`DatasetSource.augmentation`):

* cifar10/100, imagefolder: pad img_size/8, random crop, horizontal flip;
* mnist: pad img_size/14, random crop, no flip (mirrored digits are other glyphs);
* synthetic: none. Shifts move objects across the position grid and flips swap left/right, so the
  position concepts (and the label when ``target="position"``) would become wrong.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import Dataset

from lwtakit.data.registry import (
    DataRequest,
    DatasetInfo,
    DatasetSource,
    check_options,
    dataset_names,
    dataset_source,
    register_dataset,
)
from lwtakit.data.transforms import RandomCropFlip, TransformedDataset
from lwtakit.errors import UserError

SPLITS = ("train", "val", "test")
_IGNORED_BY_INFO = ("download", "seed", "size", "augment", "split")


def augmentation(name: str, img_size: int) -> RandomCropFlip | None:
    """The train-time augmentation of dataset ``name`` (None for synthetic; see module docstring)."""
    return dataset_source(name).augmentation(img_size)


def build_dataset(name: str, split: str = "train", root: str | None = None, download: bool = False,
                  img_size: int | None = None, augment: bool = False, **kw) -> Dataset:
    """Build the dataset registered as ``name`` for ``split`` ("train" | "val" | "test").

    Args:
        root: file or folder of the data (mnist: ``.npz`` or torchvision folder; cifar: torchvision
            folder; imagefolder: folder with ``<split>/<class>/`` sub-folders; probe_folder: any folder).
        download: allow torchvision to download mnist / cifar into ``root``.
        img_size: output side (default per dataset: synthetic/cifar 32, mnist 28, folders 224).
        augment: apply the dataset's training augmentation (only to the train split).
        kw: ``seed`` and ``size`` (synthetic: 10k / 2k / 2k for train / val / test; other datasets ignore both)
            and the dataset's own options (synthetic: target, second_object, attributes; mnist: channels).
    """
    source = dataset_source(name)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use train, val or test")
    seed, size = kw.pop("seed", 0), kw.pop("size", None)
    if size is not None and int(size) < 1:  # 0 used to mean the default size, silently
        raise UserError(f"data set size must be >= 1 (or None for the default), got {size}")
    check_options(source, kw)
    img_size = int(img_size or source.img_size)
    ds = source.build(DataRequest(split=split, root=root, download=bool(download), img_size=img_size, seed=seed,
                                  size=size, options=kw))
    aug = source.augmentation(img_size) if augment and split == "train" else None
    return TransformedDataset(ds, aug) if aug is not None else ds


def dataset_info(name: str, root: str | None = None, img_size: int | None = None, **kw) -> DatasetInfo:
    """Classes, channels, normalisation and size of dataset ``name``.

    synthetic, mnist and cifar10 need no disk; cifar100 and imagefolder read their class names from
    ``root``. ``kw`` are the dataset options of :func:`build_dataset` (download/seed/size/augment are
    accepted and ignored).
    """
    source = dataset_source(name)
    kw = {k: v for k, v in kw.items() if k not in _IGNORED_BY_INFO}
    check_options(source, kw)
    return source.info(DataRequest(root=root, img_size=int(img_size or source.img_size), options=kw))


def config_options(data: Any) -> dict[str, Any]:
    """The dataset's own options that the ``data`` config group holds (synthetic: target, second_object)."""
    return {key: _get(data, key) for key in dataset_source(_get(data, "name")).config_keys}


def config_dataset(data: Any, split: str, seed: int, *, training: bool = False) -> Dataset:
    """The ``split`` of the dataset the ``data`` config group (:class:`lwtakit.config.DataConfig` or its OmegaConf
    node) describes: its root, image side, split size and options, ``seed`` for generated data. ``training``: the
    run's own loading (torchvision may download, the train split is augmented when the config says so); otherwise
    (analyses of a stored run) neither."""
    return build_dataset(_get(data, "name"), split, root=_get(data, "root"),
                         download=training and bool(_get(data, "download")), img_size=_get(data, "img_size"),
                         augment=training and bool(_get(data, "augment")), seed=seed,
                         size=_get(data, f"{split}_size"), **config_options(data))


def _get(data: Any, key: str) -> Any:
    return data[key] if isinstance(data, dict) else getattr(data, key)


class ProbeSubset(Dataset):
    """A fixed subset of ``parent`` (``indices`` into it) keeping its concept metadata, restricted.

    ``concept_matrix()`` rows, ``concept_masks(i)`` and ``attributes(i)`` refer to the subset's i-th item.
    """

    def __init__(self, parent: Dataset, indices: np.ndarray):
        self.parent = parent
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.parent[int(self.indices[i])]

    def concept_matrix(self) -> np.ndarray:
        return self.parent.concept_matrix()[self.indices]

    def concept_masks(self, i: int) -> np.ndarray:
        return self.parent.concept_masks(int(self.indices[i]))

    def attributes(self, i: int) -> dict[str, str]:
        return self.parent.attributes(int(self.indices[i]))

    def __getattr__(self, name: str):
        # class_names, concept_names, concept_groups, img_size, ... come from the parent; methods the
        # parent lacks (e.g. concept_matrix of MNIST) raise AttributeError as usual.
        if name in ("parent", "indices") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.parent, name)

    def __getattribute__(self, name: str):
        # Hide the restricted concept methods when the parent has none, so hasattr() tells the truth.
        if name in ("concept_matrix", "concept_masks", "attributes"):
            parent = object.__getattribute__(self, "parent")
            if not hasattr(parent, name):
                raise AttributeError(name)
        return object.__getattribute__(self, name)


def probe_subset(dataset: Dataset, size: int, seed: int = 0) -> Dataset:
    """A deterministic subset of ``size`` items of ``dataset`` (all of it when ``size >= len``).

    Indices are drawn without replacement by ``numpy.random.default_rng(seed)`` and kept sorted.
    """
    n = len(dataset)
    if int(size) < 1:
        raise UserError(f"probe size must be >= 1, got {size}")
    if size >= n:
        idx = np.arange(n)
    else:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=int(size), replace=False))
    return ProbeSubset(dataset, idx)


__all__ = ["DataRequest", "DatasetInfo", "DatasetSource", "ProbeSubset", "augmentation", "build_dataset",
           "config_dataset", "config_options", "dataset_info", "dataset_names", "probe_subset", "register_dataset"]
