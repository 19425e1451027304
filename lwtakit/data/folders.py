"""Real image datasets on disk: CIFAR-10/100 (torchvision), ImageFolder layouts, probe folders.

* :class:`CIFAR` wraps ``torchvision.datasets.CIFAR10/100`` (Krizhevsky, 2009). Splits: train = first
  45,000 training images, val = last 5,000 training images, test = the 10,000 test images. Class names
  are torchvision's with underscores replaced by spaces ("aquarium fish"), so CLIP can embed them.
* :class:`SafeImageFolder` reads ``root/<split>/<class>/<image>`` (ImageNet train/val, Places365
  layouts). An unreadable image never stops an epoch: it is replaced by the next readable sample
  (index i+1, i+2, ... wrapping; deterministic) with a warning, and counted in ``num_skipped``, a
  counter in shared memory so that DataLoader workers add to the same number.
* :class:`ProbeFolder` reads every image under a folder, recursively, without labels (label -1):
  a Broden-style probe set for dissection.

Images are resized so that the shorter side is ``img_size / 0.875`` and centre-cropped to
``img_size`` (the usual ImageNet evaluation crop), returned as float32 [3, H, W] in [0, 1].
"""

from __future__ import annotations

import os
import struct
import warnings

import numpy as np
import torch
from torch.utils.data import Dataset

from lwtakit.data.registry import DataRequest, DatasetInfo, DatasetSource, register_dataset
from lwtakit.data.transforms import RandomCropFlip, resize_square
from lwtakit.errors import UserError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
# ImageNet's per-channel statistics, the normalisation of ImageNet-trained models (torchvision's and folder data)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_TRAIN = 45000
# What PIL raises on unreadable files: UnidentifiedImageError/truncation are OSError; broken headers of
# some formats raise SyntaxError/ValueError/EOFError/IndexError/struct.error.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, struct.error)


class CIFAR(Dataset):
    """CIFAR-10 / CIFAR-100 as ``(image float32 [3, img_size, img_size] in [0, 1], label)``."""

    def __init__(self, root: str, split: str = "train", download: bool = False, img_size: int = 32,
                 num_classes: int = 10):
        import torchvision

        if split not in ("train", "val", "test"):
            raise UserError(f"unknown CIFAR split {split!r}; use train, val or test")
        if num_classes not in (10, 100):
            raise UserError(f"CIFAR has 10 or 100 classes, not {num_classes}")
        name = f"cifar{num_classes}"
        if not root:
            raise UserError(f"{name} needs data.root=<folder>; add data.download=true to download it there")
        root = os.path.expanduser(str(root))
        cls = torchvision.datasets.CIFAR10 if num_classes == 10 else torchvision.datasets.CIFAR100
        try:
            tv = cls(root, train=split != "test", download=download)
        except RuntimeError as e:
            raise UserError(f"{name} not found under {root} ({e}); set data.root=<folder with the "
                            f"extracted {name} batches> or data.download=true") from None
        data, targets = tv.data, np.asarray(tv.targets, dtype=np.int64)
        if split == "train":
            data, targets = data[:CIFAR_TRAIN], targets[:CIFAR_TRAIN]
        elif split == "val":
            data, targets = data[CIFAR_TRAIN:], targets[CIFAR_TRAIN:]
        self.data = np.ascontiguousarray(data)  # uint8 [n, 32, 32, 3]
        self.targets = targets
        self.split = split
        self.img_size = int(img_size)
        self.class_names = [c.replace("_", " ") for c in tv.classes]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = torch.from_numpy(self.data[index]).permute(2, 0, 1).float().div_(255.0)
        return resize_square(img, self.img_size), int(self.targets[index])


class ImageTooLarge(OSError):
    """An image over PIL's pixel limit (``Image.MAX_IMAGE_PIXELS``): a possible decompression bomb, not decoded.

    An OSError, so that image folders skip and count it like any other unreadable file."""


def open_image(path: str, mode: str = "RGB"):
    """The image at ``path``, decoded and converted to ``mode`` (a PIL image).

    Over PIL's pixel limit it raises :class:`ImageTooLarge` without decoding: PIL only warns
    (``DecompressionBombWarning``) up to twice the limit and would decode such a file into memory.
    """
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                return im.convert(mode)  # forces decoding: a truncated/corrupt file raises here
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageTooLarge(f"{path} is too large to decode safely ({exc})") from None


def _load_image(path: str, img_size: int) -> torch.Tensor:
    """Decode an image file, resize the shorter side to img_size/0.875, centre-crop to img_size."""
    from PIL import Image

    with open_image(path) as im:
        w, h = im.size
        short = max(img_size, round(img_size / 0.875))
        scale = short / min(w, h)
        nw, nh = max(img_size, round(w * scale)), max(img_size, round(h * scale))
        im = im.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - img_size) // 2, (nh - img_size) // 2
        im = im.crop((left, top, left + img_size, top + img_size))
        arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def _list_images(folder: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMG_EXTENSIONS))
    return out


class SafeImageFolder(Dataset):
    """``folder/<class>/<image>`` as ``(image [3, img_size, img_size] in [0, 1], class index)``.

    ``folder`` is ``root/split`` when ``split`` is given, else ``root``. Unreadable images are skipped:
    item i then returns the next readable sample (i+1, i+2, ..., wrapping), with a warning; the number
    of skips since construction (or :meth:`reset_skipped`) is ``num_skipped``, summed over DataLoader
    workers through a shared-memory counter.
    """

    def __init__(self, root: str, split: str | None = None, img_size: int = 224):
        if not root:
            raise UserError("imagefolder needs data.root=<folder with one sub-folder per class>")
        root = os.path.expanduser(str(root))
        folder = os.path.join(root, split) if split else root
        if not os.path.isdir(folder):
            raise UserError(f"image folder not found: {folder}; set data.root to a folder containing "
                            f"{split + '/' if split else ''}<class>/<image> files")
        self.root = folder
        self.split = split
        self.img_size = int(img_size)
        self.samples = self._scan(folder)
        if not self.samples:
            raise UserError(f"no images ({', '.join(IMG_EXTENSIONS)}) found under {folder}")
        # Shared memory: workers forked/spawned by a DataLoader increment the same counter.
        self._skipped = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._bad: set[int] = set()

    def _scan(self, folder: str) -> list[tuple[str, int]]:
        classes = sorted(d.name for d in os.scandir(folder) if d.is_dir())
        if not classes:
            raise UserError(f"no class sub-folders in {folder}; expected {folder}/<class>/<image>")
        self.class_names = classes
        return [(p, k) for k, c in enumerate(classes) for p in _list_images(os.path.join(folder, c))]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_skipped(self) -> int:
        """Unreadable images met since construction or the last :meth:`reset_skipped` (all workers)."""
        return int(self._skipped.item())

    def reset_skipped(self) -> int:
        """Return ``num_skipped`` and set it to zero (e.g. at the end of an epoch)."""
        n = self.num_skipped
        self._skipped.zero_()
        return n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self.samples)
        for step in range(n):
            j = (int(index) + step) % n
            path, label = self.samples[j]
            if j in self._bad:
                self._skipped.add_(1)
                continue
            try:
                return _load_image(path, self.img_size), label
            except _DECODE_ERRORS as e:
                self._bad.add(j)
                self._skipped.add_(1)
                warnings.warn(f"skipping unreadable image {path}: {type(e).__name__}: {e}", stacklevel=2)
        raise UserError(f"no readable image under {self.root}; check the files")


class ProbeFolder(SafeImageFolder):
    """Every image under ``root`` (recursively, sorted), without labels: items are ``(image, -1)``.

    A probe set for dissection (e.g. the images of a Broden-style folder)."""

    def __init__(self, root: str, img_size: int = 224):
        super().__init__(root, None, img_size)

    def _scan(self, folder: str) -> list[tuple[str, int]]:
        self.class_names = []
        return [(p, -1) for p in _list_images(folder)]

    @property
    def paths(self) -> list[str]:
        return [p for p, _ in self.samples]



def _crop_flip(img_size: int) -> RandomCropFlip:
    """Natural images: a random crop of a padding of img_size/8 and a horizontal flip."""
    return RandomCropFlip(padding=max(1, round(img_size / 8)), flip=True)


@register_dataset
class Cifar10(DatasetSource):
    """:class:`CIFAR` with 10 classes (their names need no disk)."""

    name = "cifar10"
    img_size = 32
    downloads = True
    num_classes = 10

    def build(self, request: DataRequest) -> Dataset:
        return CIFAR(request.root, split=request.split, download=request.download, img_size=request.img_size,
                     num_classes=self.num_classes)

    def info(self, request: DataRequest) -> DatasetInfo:
        classes = list(CIFAR10_CLASSES)
        mean, std = CIFAR_STATS[self.name]
        return DatasetInfo(len(classes), classes, 3, mean, std, request.img_size, self.name)

    def augmentation(self, img_size: int) -> RandomCropFlip:
        return _crop_flip(img_size)


@register_dataset
class Cifar100(Cifar10):
    """:class:`CIFAR` with 100 classes (their names are read from ``root``)."""

    name = "cifar100"
    num_classes = 100

    def info(self, request: DataRequest) -> DatasetInfo:
        classes = CIFAR(request.root, split="test", num_classes=100).class_names
        mean, std = CIFAR_STATS[self.name]
        return DatasetInfo(len(classes), classes, 3, mean, std, request.img_size, self.name)


@register_dataset
class ImageFolderSource(DatasetSource):
    """:class:`SafeImageFolder` of ``root/<split>/<class>/<image>``, normalised as ImageNet."""

    name = "imagefolder"
    img_size = 224

    def build(self, request: DataRequest) -> Dataset:
        return SafeImageFolder(request.root, split=request.split, img_size=request.img_size)

    def info(self, request: DataRequest) -> DatasetInfo:
        classes = SafeImageFolder(request.root, split="train", img_size=request.img_size).class_names
        return DatasetInfo(len(classes), classes, 3, IMAGENET_MEAN, IMAGENET_STD, request.img_size, self.name)

    def augmentation(self, img_size: int) -> RandomCropFlip:
        return _crop_flip(img_size)


@register_dataset
class ProbeFolderSource(DatasetSource):
    """:class:`ProbeFolder`: every image under ``root``, unlabelled (a probe set; nothing to train on)."""

    name = "probe_folder"
    img_size = 224
    trainable = False

    def build(self, request: DataRequest) -> Dataset:
        return ProbeFolder(request.root, img_size=request.img_size)

    def info(self, request: DataRequest) -> DatasetInfo:
        ProbeFolder(request.root, request.img_size)  # validates the path
        return DatasetInfo(0, [], 3, IMAGENET_MEAN, IMAGENET_STD, request.img_size, self.name)
