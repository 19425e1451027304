"""Tensor transforms shared by the datasets: resizing and train-time augmentation.

Augmentation is the standard CIFAR recipe (He et al., "Deep Residual Learning", CVPR 2016, Sec. 4.2:
pad 4 pixels, random 32x32 crop, random horizontal flip), written on tensors so that no PIL round trip
is needed. Randomness comes from torch's global generator, which Lightning's ``seed_everything`` and
the DataLoader's per-worker seeding make reproducible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset


def resize_square(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a [C, H, W] float image to [C, size, size] (bilinear, antialiased when shrinking)."""
    if img.shape[-2:] == (size, size):
        return img
    shrink = min(img.shape[-2:]) > size
    out = F.interpolate(img[None], size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return out[0].clamp_(0.0, 1.0)


class RandomCropFlip:
    """Zero-pad by ``padding`` pixels, crop back to the original size at a random offset, and flip
    horizontally with probability 0.5 when ``flip`` (He et al. 2016, Sec. 4.2)."""

    def __init__(self, padding: int = 4, flip: bool = True):
        self.padding = int(padding)
        self.flip = bool(flip)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        p = self.padding
        if p > 0:
            h, w = img.shape[-2:]
            padded = F.pad(img, (p, p, p, p))
            dy, dx = (int(v) for v in torch.randint(0, 2 * p + 1, (2,)))
            img = padded[..., dy:dy + h, dx:dx + w]
        if self.flip and bool(torch.rand(()) < 0.5):
            img = img.flip(-1)
        return img.contiguous()

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"


class TransformedDataset(Dataset):
    """Apply ``transform`` to the image of every item of ``base``; other attributes (class_names,
    concept_names, ...) are forwarded to ``base``."""

    def __init__(self, base: Dataset, transform):
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        img, label = self.base[index]
        return self.transform(img), label

    def __getattr__(self, name: str):
        # Only reached for attributes not found normally; guard against recursion during unpickling.
        if name in ("base", "transform") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)
