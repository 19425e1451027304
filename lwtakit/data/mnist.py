"""MNIST handwritten digits (LeCun et al., Proc. IEEE 1998) from a local ``.npz`` or torchvision.

Two sources:

* a ``.npz`` file with arrays ``{train,valid,test}_images`` (uint8 [n, 28, 28]) and
  ``{train,valid,test}_labels`` (the classic 50k / 10k / 10k split), loaded with
  ``numpy.load(allow_pickle=False)``;
* a directory: ``torchvision.datasets.MNIST(root, download=download)``; its 60k training images are
  split into the first 50k (train) and the last 10k (val), its 10k test images are the test split.

Pixels are scaled as v / 255 into [0, 1].
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from lwtakit.data.registry import DataRequest, DatasetInfo, DatasetSource, register_dataset
from lwtakit.data.transforms import RandomCropFlip, resize_square
from lwtakit.errors import UserError

CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
MEAN = 0.1307
STD = 0.3081
_NPZ_SPLIT = {"train": "train", "val": "valid", "test": "test"}


def _fix_hint(path: str) -> str:
    return (f"set data.root=<path to mnist.npz or a folder for torchvision> (now {path!r}) "
            f"or data.download=true to download it into a folder")


def load_mnist_arrays(root_or_npz: str, split: str, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [n, 28, 28] and labels int64 [n] of one split from a .npz or a torchvision folder."""
    if split not in _NPZ_SPLIT:
        raise UserError(f"unknown MNIST split {split!r}; use one of {list(_NPZ_SPLIT)}")
    if root_or_npz is None or str(root_or_npz) == "":
        raise UserError("MNIST needs a path: " + _fix_hint(""))
    path = os.path.expanduser(str(root_or_npz))
    if path.endswith(".npz") or os.path.isfile(path):
        if not os.path.isfile(path):
            raise UserError(f"MNIST file not found: {path}; " + _fix_hint(path))
        key = _NPZ_SPLIT[split]
        try:
            with np.load(path, allow_pickle=False) as z:
                images, labels = z[f"{key}_images"], z[f"{key}_labels"]
        except (KeyError, ValueError, OSError) as e:
            raise UserError(f"{path} is not an MNIST .npz with arrays {key}_images/{key}_labels ({e}); "
                            + _fix_hint(path)) from None
        return np.ascontiguousarray(images, dtype=np.uint8), labels.astype(np.int64)
    if not os.path.isdir(path) and not download:
        raise UserError(f"MNIST folder not found: {path}; " + _fix_hint(path))
    import torchvision

    try:
        tv = torchvision.datasets.MNIST(path, train=split != "test", download=download)
    except RuntimeError as e:
        raise UserError(f"MNIST not found under {path} ({e}); " + _fix_hint(path)) from None
    images = tv.data.numpy().astype(np.uint8)
    labels = tv.targets.numpy().astype(np.int64)
    if split == "train":
        images, labels = images[:50000], labels[:50000]
    elif split == "val":
        images, labels = images[50000:], labels[50000:]
    return np.ascontiguousarray(images), labels


class MNIST(Dataset):
    """MNIST digits as ``(image float32 [channels, img_size, img_size] in [0, 1], label)``.

    Args:
        root_or_npz: path of a ``.npz`` (see module docstring) or a torchvision MNIST folder.
        split: "train" | "val" | "test".
        download: let torchvision download into the folder when it is missing.
        channels: 1 (default) or 3 (the grey image replicated, for RGB models and CLIP).
        img_size: output side; 28 keeps the original resolution.
    """

    def __init__(self, root_or_npz: str, split: str = "train", download: bool = False, channels: int = 1,
                 img_size: int = 28):
        if int(channels) not in (1, 3):
            raise UserError(f"MNIST channels must be 1 or 3, got {channels}")
        self.images, self.labels = load_mnist_arrays(root_or_npz, split, download)
        self.split = split
        self.channels = int(channels)
        self.img_size = int(img_size)
        self.class_names = list(CLASS_NAMES)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = torch.from_numpy(self.images[index]).float().div_(255.0)[None]
        img = resize_square(img, self.img_size)
        if self.channels == 3:
            img = img.expand(3, -1, -1).contiguous()
        return img, int(self.labels[index])

    def __repr__(self) -> str:
        return f"MNIST(split={self.split!r}, n={len(self)}, channels={self.channels}, img_size={self.img_size})"


@register_dataset
class MNISTSource(DatasetSource):
    """:class:`MNIST`; option ``channels`` (1 or 3). Augmented by a random crop of a padding of img_size/14, not
    flipped (mirrored digits are other glyphs)."""

    name = "mnist"
    img_size = 28
    options = frozenset({"channels"})
    downloads = True

    def build(self, request: DataRequest) -> Dataset:
        return MNIST(request.root, split=request.split, download=request.download, img_size=request.img_size,
                     **request.options)

    def info(self, request: DataRequest) -> DatasetInfo:
        ch = int(request.options.get("channels", 1))
        if ch not in (1, 3):
            raise UserError(f"MNIST channels must be 1 or 3, got {ch}")
        return DatasetInfo(10, list(CLASS_NAMES), ch, (MEAN,) * ch, (STD,) * ch, request.img_size, self.name)

    def augmentation(self, img_size: int) -> RandomCropFlip:
        return RandomCropFlip(padding=max(1, round(img_size / 14)), flip=False)
