"""The :class:`Clip` wrapper: image preprocessing as tensor operations and batched, L2-normalised embeddings.

CLIP-Dissect (Oikarinen & Weng, ICLR 2023, Sec. 3) needs the normalised image embeddings ``I_i`` of the
probe set and the normalised text embeddings ``T_m`` of the concept set; their inner products form the
concept-activation matrix ``P_im = I_i . T_m``. :meth:`Clip.encode_images` and :meth:`Clip.encode_texts`
compute them, batch by batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from lwtakit.errors import UserError
from lwtakit.models.precision import widened

__all__ = ["Clip"]


@dataclass
class Clip:
    """A loaded open_clip model with its tokenizer and image preprocessing as tensor operations.

    ``name`` identifies the weights by content (module structure + sha256 of the state dict), so cache keys
    change whenever the weights do and not when only their path does; ``source`` says where they came from.
    ``calls`` counts encoder batches (to see cache hits).
    """

    model: torch.nn.Module
    tokenizer: Callable
    name: str
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    device: str = "cpu"
    batch_size: int = 128
    source: str = ""
    calls: dict = field(default_factory=lambda: {"images": 0, "texts": 0})

    @property
    def dtype(self) -> torch.dtype:
        """The floats the model computes in (float64 after ``at_precision(model, 64)``)."""
        return next((p.dtype for p in self.model.parameters() if p.is_floating_point()), torch.float32)

    @property
    def preprocess_params(self) -> dict:
        """Everything that changes the pixels the model sees (part of the image cache key)."""
        return {"size": list(self.image_size), "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "resize_mode": self.resize_mode}

    # -- images
    def preprocess(self, images: Tensor) -> Tensor:
        """[B, C, H, W] in [0, 1] -> model input: 1 channel repeated to 3, resize (shortest side, then
        centre crop, as open_clip's default transform), normalise with the model's mean/std."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise UserError(f"CLIP needs images [B, 1|3, H, W]; got shape {tuple(images.shape)}")
        x = images.to(self.device, self.dtype)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        th, tw = self.image_size
        h, w = x.shape[-2:]
        if (h, w) != (th, tw):
            mode = "bicubic" if self.interpolation == "bicubic" else "bilinear"
            if self.resize_mode == "squash":
                x = F.interpolate(x, size=(th, tw), mode=mode, antialias=True, align_corners=False)
            else:
                scale = max(th / h, tw / w) if self.resize_mode == "shortest" else min(th / h, tw / w)
                nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
                x = F.interpolate(x, size=(nh, nw), mode=mode, antialias=True, align_corners=False)
                top, left = (nh - th) // 2, (nw - tw) // 2
                x = x[..., top:top + th, left:left + tw]
            x = x.clamp(0.0, 1.0)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    @torch.inference_mode()
    def encode_images(self, images: Tensor | torch.utils.data.Dataset, batch_size: int | None = None) -> Tensor:
        """L2-normalised image embeddings [N, D] (float32, or float64 for a float64 model; CPU) of a tensor
        [N, C, H, W] or a dataset of ``(image, label)`` items."""
        bs = batch_size or self.batch_size
        self.model.eval()
        out = []
        for batch in _iter_image_batches(images, bs):
            self.calls["images"] += 1
            emb = self.model.encode_image(self.preprocess(batch))
            out.append(F.normalize(widened(emb), dim=-1).cpu())
        if not out:
            raise UserError("no images to embed: the probe set is empty")
        return torch.cat(out)

    # -- texts
    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], template: str = "{}", batch_size: int | None = None) -> Tensor:
        """L2-normalised text embeddings [M, D] (float32, or float64 for a float64 model; CPU) of
        ``template.format(text)`` for each text."""
        if isinstance(texts, str):
            raise UserError("encode_texts needs a list of strings, got one string")
        if "{}" not in template:
            raise UserError(f"text template {template!r} has no '{{}}' placeholder")
        texts = [template.format(t) for t in texts]
        if not texts:
            raise UserError("no concepts to embed: the concept set is empty")
        bs = batch_size or self.batch_size
        self.model.eval()
        out = []
        for i in range(0, len(texts), bs):
            self.calls["texts"] += 1
            tokens = self.tokenizer(texts[i:i + bs]).to(self.device)
            out.append(F.normalize(widened(self.model.encode_text(tokens)), dim=-1).cpu())
        return torch.cat(out)


def _iter_image_batches(images, batch_size: int):
    """Yield image batches [B, C, H, W] from a tensor or a dataset whose items are ``(image, ...)`` or images."""
    if isinstance(images, Tensor):
        if images.ndim == 3:
            images = images.unsqueeze(0)
        for i in range(0, images.shape[0], batch_size):
            yield images[i:i + batch_size]
        return
    if not hasattr(images, "__len__") or not hasattr(images, "__getitem__"):
        raise UserError(f"CLIP needs a tensor or a map-style dataset of images; got {type(images).__name__}")
    buf: list[Tensor] = []
    for i in range(len(images)):
        item = images[i]
        img = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(img, Tensor):
            raise UserError(f"dataset item {i} is a {type(img).__name__}, not an image tensor [C, H, W] in [0, 1]")
        buf.append(img)
        if len(buf) == batch_size:
            yield torch.stack(buf)
            buf = []
    if buf:
        yield torch.stack(buf)
