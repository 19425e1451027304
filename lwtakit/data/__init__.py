"""Datasets: one entry point (:func:`build_dataset`), their metadata (:func:`dataset_info`) and fixed
probe subsets for dissection (:func:`probe_subset`).

Names: ``synthetic`` (:class:`~lwtakit.data.synthetic.ConceptShapes`, the embedded default),
``mnist``, ``cifar10``, ``cifar100``, ``imagefolder`` (``root/<split>/<class>/<image>``) and
``probe_folder`` (unlabelled images under ``root``). Items are ``(image float32 [C, H, W] in [0, 1],
label int)``; models normalise internally with ``DatasetInfo.mean/std``.

Training augmentation (``augment=True``, train split only; :class:`~lwtakit.data.transforms.RandomCropFlip`):

* cifar10/100, imagefolder: pad img_size/8, random crop, horizontal flip;
* mnist: pad img_size/14, random crop, no flip (mirrored digits are other glyphs);
* synthetic: none. Shifts move objects across the position grid and flips swap left/right, so the
  position concepts (and the label when ``target="position"``) would become wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset

from lwtakit.data import synthetic
from lwtakit.data.transforms import RandomCropFlip, TransformedDataset
from lwtakit.errors import UserError

DATASETS = ("synthetic", "mnist", "cifar10", "cifar100", "imagefolder", "probe_folder")
DEFAULT_IMG_SIZE = {"synthetic": 32, "mnist": 28, "cifar10": 32, "cifar100": 32, "imagefolder": 224,
                    "probe_folder": 224}
SYNTHETIC_SIZES = {"train": 10000, "val": 2000, "test": 2000}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_SYNTHETIC_KW = {"target", "second_object", "attributes"}


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


def _check_name(name: str) -> str:
    key = str(name).lower()
    if key not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return key


def _check_kw(name: str, kw: dict, allowed: set[str]) -> None:
    extra = sorted(set(kw) - allowed)
    if extra:
        raise UserError(f"dataset {name!r} does not take option(s) {extra}; "
                        f"it takes {sorted(allowed) or 'no extra options'}")


def augmentation(name: str, img_size: int) -> RandomCropFlip | None:
    """The train-time augmentation of dataset ``name`` (None for synthetic; see module docstring)."""
    name = _check_name(name)
    if name == "synthetic" or name == "probe_folder":
        return None
    if name == "mnist":
        return RandomCropFlip(padding=max(1, round(img_size / 14)), flip=False)
    return RandomCropFlip(padding=max(1, round(img_size / 8)), flip=True)


def build_dataset(name: str, split: str = "train", root: str | None = None, download: bool = False,
                  img_size: int | None = None, augment: bool = False, **kw) -> Dataset:
    """Build dataset ``name`` for ``split`` ("train" | "val" | "test").

    Args:
        root: file or folder of the data (mnist: ``.npz`` or torchvision folder; cifar: torchvision
            folder; imagefolder: folder with ``<split>/<class>/`` sub-folders; probe_folder: any folder).
        download: allow torchvision to download mnist / cifar into ``root``.
        img_size: output side (default per dataset: synthetic/cifar 32, mnist 28, folders 224).
        augment: apply the dataset's training augmentation (only to the train split).
        kw: synthetic: seed (0), size (10k / 2k / 2k for train / val / test), target, second_object,
            attributes; mnist: channels. Other datasets accept ``seed`` and ``size`` and ignore them.
    """
    name = _check_name(name)
    if split not in ("train", "val", "test"):
        raise UserError(f"unknown split {split!r}; use train, val or test")
    img_size = int(img_size or DEFAULT_IMG_SIZE[name])
    seed, size = kw.pop("seed", 0), kw.pop("size", None)
    if size is not None and int(size) < 1:  # 0 used to mean the default size, silently
        raise UserError(f"data set size must be >= 1 (or None for the default), got {size}")
    if name == "synthetic":
        _check_kw(name, kw, _SYNTHETIC_KW)
        ds = synthetic.ConceptShapes(size=int(SYNTHETIC_SIZES[split] if size is None else size), seed=seed, split=split,
                                     img_size=img_size, **kw)
    elif name == "mnist":
        from lwtakit.data.mnist import MNIST

        _check_kw(name, kw, {"channels"})
        ds = MNIST(root, split=split, download=download, img_size=img_size, **kw)
    elif name in ("cifar10", "cifar100"):
        from lwtakit.data.folders import CIFAR

        _check_kw(name, kw, set())
        ds = CIFAR(root, split=split, download=download, img_size=img_size, num_classes=int(name[5:]))
    elif name == "imagefolder":
        from lwtakit.data.folders import SafeImageFolder

        _check_kw(name, kw, set())
        ds = SafeImageFolder(root, split=split, img_size=img_size)
    else:
        from lwtakit.data.folders import ProbeFolder

        _check_kw(name, kw, set())
        ds = ProbeFolder(root, img_size=img_size)
    aug = augmentation(name, img_size) if augment and split == "train" else None
    return TransformedDataset(ds, aug) if aug is not None else ds


def dataset_info(name: str, root: str | None = None, img_size: int | None = None, **kw) -> DatasetInfo:
    """Classes, channels, normalisation and size of dataset ``name``.

    synthetic, mnist and cifar10 need no disk; cifar100 and imagefolder read their class names from
    ``root``. ``kw`` are the dataset options of :func:`build_dataset` (download/seed/size/augment are
    accepted and ignored).
    """
    name = _check_name(name)
    img_size = int(img_size or DEFAULT_IMG_SIZE[name])
    kw = {k: v for k, v in kw.items() if k not in ("download", "seed", "size", "augment", "split")}
    if name == "synthetic":
        _check_kw(name, kw, _SYNTHETIC_KW)
        ds = synthetic.ConceptShapes(size=1, img_size=img_size, **kw)
        return DatasetInfo(len(ds.class_names), list(ds.class_names), 3, synthetic.MEAN, synthetic.STD,
                           img_size, name)
    if name == "mnist":
        from lwtakit.data import mnist

        _check_kw(name, kw, {"channels"})
        ch = int(kw.get("channels", 1))
        if ch not in (1, 3):
            raise UserError(f"MNIST channels must be 1 or 3, got {ch}")
        return DatasetInfo(10, list(mnist.CLASS_NAMES), ch, (mnist.MEAN,) * ch, (mnist.STD,) * ch, img_size, name)
    if name in ("cifar10", "cifar100"):
        from lwtakit.data.folders import CIFAR, CIFAR_STATS

        _check_kw(name, kw, set())
        if name == "cifar10":
            classes = list(CIFAR10_CLASSES)
        else:
            classes = CIFAR(root, split="test", num_classes=100).class_names
        mean, std = CIFAR_STATS[name]
        return DatasetInfo(len(classes), classes, 3, mean, std, img_size, name)
    from lwtakit.data.folders import IMAGENET_MEAN, IMAGENET_STD, ProbeFolder, SafeImageFolder

    _check_kw(name, kw, set())
    if name == "probe_folder":
        ProbeFolder(root, img_size)  # validates the path
        classes = []
    else:
        classes = SafeImageFolder(root, split="train", img_size=img_size).class_names
    return DatasetInfo(len(classes), classes, 3, IMAGENET_MEAN, IMAGENET_STD, img_size, name)


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


__all__ = ["DATASETS", "DatasetInfo", "ProbeSubset", "augmentation", "build_dataset", "dataset_info",
           "probe_subset"]
