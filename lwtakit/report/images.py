"""Top-activating image rows as PNG bytes, and PNGs as ``data:`` URIs so a report embeds them."""

from __future__ import annotations

import base64
import io as _io
import math
from typing import Any

import numpy as np

from lwtakit.errors import UserError

GRID_MIN_PX = 64  # tiny images (MNIST 28 px, CIFAR 32 px) are upscaled to at least this size
GRID_GAP_PX = 3


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, (list, tuple)):  # a list of [3, H, W] images
        if not x:
            raise UserError("image grid got an empty list of images")
        return np.stack([_to_numpy(i) for i in x])
    if hasattr(x, "detach"):
        x = x.detach().to("cpu")
        if not x.is_floating_point():
            x = x.float() / 255.0 if str(x.dtype) == "torch.uint8" else x.float()
        x = x.numpy()
    arr = np.asarray(x)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return arr.astype(np.float32, copy=False)


def image_grid(images: Any, min_px: int = GRID_MIN_PX, gap: int = GRID_GAP_PX) -> bytes:
    """Lay ``k`` images out in one row and return them as PNG bytes.

    ``images``: ``[k, 3, H, W]`` or ``[k, 1, H, W]`` or ``[k, H, W]`` (grey), float in [0, 1] (values
    outside are clipped; ``uint8`` is read as 0..255), torch tensor or numpy array. Images whose
    shorter side is below ``min_px`` are upscaled by the integer factor ``s = ceil(min_px / min(H, W))``
    with nearest-neighbour (pixels stay crisp); images are separated by ``gap`` white pixels, so the
    width is ``k * W * s + (k - 1) * gap``.
    """
    from PIL import Image

    arr = _to_numpy(images)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1] not in (1, 3) or arr.shape[0] == 0 or min(arr.shape[2:]) == 0:
        raise UserError(f"image grid expects images shaped [k, 3, H, W] or [k, H, W] with k >= 1, "
                        f"got shape {tuple(np.shape(images))}")
    k, c, h, w = arr.shape
    s = max(1, math.ceil(min_px / min(h, w)))
    arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0).clip(0.0, 1.0)
    arr = (arr * 255.0 + 0.5).astype(np.uint8)
    if c == 1:
        arr = np.repeat(arr, 3, axis=1)
    arr = arr.transpose(0, 2, 3, 1)  # k, H, W, 3
    if s > 1:
        arr = arr.repeat(s, axis=1).repeat(s, axis=2)
    H, W = h * s, w * s
    canvas = np.full((H, k * W + (k - 1) * gap, 3), 255, dtype=np.uint8)
    for i in range(k):
        x0 = i * (W + gap)
        canvas[:, x0:x0 + W] = arr[i]
    buf = _io.BytesIO()
    Image.fromarray(canvas, "RGB").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def png_width(png: bytes) -> int:
    """Width in pixels of a PNG, read from its header."""
    # PNG IHDR: the width is the big-endian uint32 at byte 16.
    return int.from_bytes(png[16:20], "big")


def data_uri(png: bytes) -> str:
    """``png`` as a ``data:`` URI, so the page carries the image itself."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
