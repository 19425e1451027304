"""On-disk cache of CLIP embeddings keyed by *content*: model weights, preprocessing, image tensors / strings.

The reference CLIP-Dissect implementation keyed its cache by dataset and model names and silently reused
stale files; here a key is sha256 of the model identity (:attr:`Clip.name`, a hash of its weights), the
preprocessing parameters and the images' bytes (or the concept strings and template), so a changed input is
a miss and equal content is a hit under any name. Files: ``img_<key[:40]>.pt`` / ``txt_<key[:40]>.pt``
holding ``{"key": key, "emb": tensor}``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lwtakit.io import atomic_write, ensure_writable_dir

from .encode import Clip, _iter_image_batches

if TYPE_CHECKING:
    from lwtakit.shard import Collective

__all__ = ["content_hash_images", "default_cache_dir", "embed_dataset_cached", "embed_dataset_sharded",
           "embed_texts_cached"]

log = logging.getLogger(__name__)


def content_hash_images(images: Tensor | torch.utils.data.Dataset, batch_size: int = 256) -> str:
    """sha256 of the image tensors themselves (shape, dtype, bytes, in order): what CLIP would see.

    A dataset may instead provide ``content_hash() -> str`` (e.g. a folder dataset hashing its file bytes
    and its transform parameters) to avoid decoding every image twice on a cache miss; it must change
    whenever any image tensor it yields would change.
    """
    own = getattr(images, "content_hash", None)
    if callable(own):
        return "dataset:" + str(own())
    h = hashlib.sha256()
    n = 0
    for batch in _iter_image_batches(images, batch_size):
        b = batch.detach().to("cpu").contiguous()
        h.update(f"{tuple(b.shape)}|{b.dtype}".encode())
        h.update(b.reshape(-1).view(torch.uint8).numpy().tobytes())
        n += b.shape[0]
    h.update(f"n={n}".encode())
    return h.hexdigest()


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _load_cached(path: Path, key: str) -> Tensor | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        # A corrupt or foreign file: recompute rather than fail.
        log.warning("ignoring unreadable embedding cache %s (%s)", path, exc)
        return None
    if not isinstance(blob, dict) or blob.get("key") != key or not isinstance(blob.get("emb"), Tensor):
        return None
    return blob["emb"]


def _save_cached(path: Path, key: str, emb: Tensor) -> None:
    with atomic_write(path, "wb") as fh:
        torch.save({"key": key, "emb": emb.contiguous()}, fh)


def default_cache_dir() -> Path:
    return Path(os.environ.get("LWTAKIT_CACHE", Path(tempfile.gettempdir()) / "lwtakit_cache")) / "clip"


def embed_dataset_cached(clip: Clip, dataset: Tensor | torch.utils.data.Dataset,
                         cache_dir: str | os.PathLike | None = None, batch_size: int | None = None) -> Tensor:
    """Image embeddings [N, D] of ``dataset``, read from / written to ``cache_dir``.

    The cache key is sha256(clip identity, preprocessing parameters, sha256 of the image tensors), so a
    changed image, model or preprocessing is a miss; equal content is a hit even under another name.
    """
    path, key = _image_entry(clip, dataset, cache_dir)
    emb = _load_cached(path, key)
    if emb is None:
        emb = clip.encode_images(dataset, batch_size=batch_size)
        _save_cached(path, key, emb)
    return emb


def _image_entry(clip: Clip, dataset, cache_dir) -> tuple[Path, str]:
    cache_dir = ensure_writable_dir(cache_dir or default_cache_dir())
    key = _key("images", clip.name, str(clip.dtype), clip.preprocess_params, content_hash_images(dataset))
    return Path(cache_dir) / f"img_{key[:40]}.pt", key


def embed_dataset_sharded(clip: Clip, dataset: torch.utils.data.Dataset, collective: Collective,
                          cache_dir: str | os.PathLike | None = None) -> Tensor | None:
    """:func:`embed_dataset_cached` over processes: rank 0 looks the embeddings up; on a miss each process embeds its
    batches of ``clip.batch_size`` images (:mod:`lwtakit.shard`), rank 0 gathers them in order and caches them. Rank
    0 returns the embeddings [N, D] of the whole dataset, the others None."""
    from lwtakit.data import ProbeSubset
    from lwtakit.rows import Rows
    from lwtakit.shard import batch_bounds, gather_in_order

    entry = _image_entry(clip, dataset, cache_dir) if collective.is_root else None
    emb = _load_cached(*entry) if entry is not None else None
    if collective.broadcast_object(emb is not None):
        return emb
    bounds = batch_bounds(len(dataset), clip.batch_size)
    mine = [i for b in collective.shard.batches(len(bounds)) for i in range(*bounds[b])]
    local = clip.encode_images(ProbeSubset(dataset, mine), clip.batch_size) if mine else None
    rows = Rows() if collective.is_root else None
    gather_in_order(collective, local, bounds, None if rows is None else rows.append)
    if rows is None:
        return None
    emb = rows.finish()
    _save_cached(*entry, emb)
    return emb


def embed_texts_cached(clip: Clip, texts: Sequence[str], cache_dir: str | os.PathLike | None = None,
                       template: str = "{}", batch_size: int | None = None) -> Tensor:
    """Text embeddings [M, D] of ``texts``; cache key sha256(clip identity, template, the strings in order)."""
    cache_dir = ensure_writable_dir(cache_dir or default_cache_dir())
    key = _key("texts", clip.name, str(clip.dtype), template, list(texts))
    path = Path(cache_dir) / f"txt_{key[:40]}.pt"
    emb = _load_cached(path, key)
    if emb is None:
        emb = clip.encode_texts(list(texts), template=template, batch_size=batch_size)
        _save_cached(path, key, emb)
    return emb
