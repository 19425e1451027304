"""CLIP models (open_clip): offline-friendly loading, image/text embeddings and an on-disk cache.

CLIP-Dissect (Oikarinen & Weng, ICLR 2023, Sec. 3) needs the normalised image embeddings ``I_i`` of the
probe set and the normalised text embeddings ``T_m`` of the concept set; their inner products form the
concept-activation matrix ``P_im = I_i . T_m``.

* :mod:`.load`: :func:`load_clip` from an open_clip tag, a weights file, a config json or ``local-dir:``;
  :func:`save_local_dir`;
* :mod:`.fallback`: :func:`clip_or_fallback`, CLIP-Dissect in a training run, or INVERT when the weights cannot be
  had;
* :mod:`.encode`: :class:`Clip`, preprocessing and batched embeddings;
* :mod:`.cache`: :func:`embed_dataset_cached` / :func:`embed_texts_cached`, keyed by content (model weights,
  preprocessing, image tensors / concept strings), never by names alone.
"""

from .cache import content_hash_images, default_cache_dir, embed_dataset_cached, embed_texts_cached
from .encode import Clip
from .load import HF_HUB, LOCAL_DIR, ClipWeightsUnavailable, load_clip, save_local_dir, state_dict_sha256

__all__ = ["Clip", "ClipWeightsUnavailable", "HF_HUB", "LOCAL_DIR", "content_hash_images", "default_cache_dir",
           "embed_dataset_cached", "embed_texts_cached", "load_clip", "save_local_dir", "state_dict_sha256"]
