"""CLIP models (open_clip): offline-friendly loading, image/text embeddings and an on-disk cache.

CLIP-Dissect (Oikarinen & Weng, ICLR 2023, Sec. 3) needs the normalised image embeddings ``I_i`` of the
probe set and the normalised text embeddings ``T_m`` of the concept set; their inner products form the
concept-activation matrix ``P_im = I_i . T_m``. This module computes both and caches them on disk keyed by
the *content* (model weights, preprocessing, image tensors / concept strings), never by names alone: the
reference implementation keyed its cache by dataset and model names and silently reused stale files.

Where the weights come from (``load_clip``):

* ``load_clip("ViT-B-32", "laion2b_s34b_b79k")``: an open_clip model name and pretrained tag (downloads
  through open_clip / Hugging Face; offline this fails with one :class:`UserError` saying how to supply
  weights).
* ``load_clip("ViT-B-32", "/path/weights.bin")``: a local weights file for a built-in architecture.
* ``load_clip("local-dir:/folder")``: open_clip's own schema, a folder with ``open_clip_config.json``
  (``{"model_cfg": ..., "preprocess_cfg": ...}``) and a weights file; ``pretrained`` may name a weights file
  that replaces the folder's.
* ``load_clip("/path/config.json", "/path/weights.bin")``: an architecture config file (open_clip's
  ``model_configs/*.json`` format, or an ``open_clip_config.json``) plus a weights file.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import pickle
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lwtakit.errors import UserError
from lwtakit.io import atomic_write, ensure_writable_dir

log = logging.getLogger(__name__)

LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"
_HOW_TO_SUPPLY = (
    "supply the weights locally: clip.pretrained=/path/to/weights.bin (with a built-in model name) "
    "or clip.model=local-dir:/folder (a folder with open_clip_config.json + weights)"
)


def _open_clip():
    import open_clip

    return open_clip


# --------------------------------------------------------------------------------------------- loading
def _read_config_json(path: Path) -> tuple[dict, dict]:
    """Return (model_cfg, preprocess_cfg) from an open_clip model config or an ``open_clip_config.json``."""
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read CLIP config {path}: {exc}; give a valid open_clip config json") from exc
    model_cfg = raw.get("model_cfg", raw)
    if not all(k in model_cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise UserError(
            f"CLIP config {path} lacks embed_dim/vision_cfg/text_cfg; give an open_clip model config json"
        )
    return model_cfg, raw.get("preprocess_cfg", {})


def _model_class(model_cfg: dict):
    oc = _open_clip()
    custom = model_cfg.get("custom_text", False) or "hf_model_name" in model_cfg.get("text_cfg", {})
    if "multimodal_cfg" in model_cfg:
        return oc.CoCa
    return oc.CustomTextCLIP if custom else oc.CLIP


def _build_from_config(model_cfg: dict, preprocess_cfg: dict, weights: str | None, device: str):
    """Instantiate an open_clip model from an explicit config and load ``weights`` (strict)."""
    oc = _open_clip()
    from open_clip.model import set_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = dict(model_cfg)
    cls = _model_class(cfg)
    cfg.pop("custom_text", None)
    model = cls(**cfg)
    if weights is not None:
        try:
            oc.load_checkpoint(model, weights, strict=True, weights_only=True)
        except (RuntimeError, KeyError, OSError, ValueError, AssertionError) as exc:
            raise UserError(f"CLIP weights {weights} do not fit the config: {str(exc)[:300]}") from exc
    else:
        log.warning("no CLIP weights given: the model is randomly initialised")
    from dataclasses import asdict

    pp = merge_preprocess_dict(asdict(PreprocessCfg()), preprocess_cfg)
    pp["size"] = model.visual.image_size
    set_model_preprocess_cfg(model, pp)
    return model.to(device)


def _find_weights(folder: Path) -> str | None:
    for pattern in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "*.safetensors", "*.bin", "*.pth",
                    "*.pt"):
        found = sorted(folder.glob(pattern))
        if found:
            return str(found[0])
    return None


def _create_open_clip(model_name: str, pretrained: str | None, device: str, cache_dir: str | None):
    """Create an open_clip model; every failure the user can fix becomes one :class:`UserError`."""
    oc = _open_clip()
    if pretrained and os.path.sep in pretrained and not os.path.isfile(pretrained):
        raise UserError(f"CLIP weights file {pretrained} does not exist; give an existing file or a pretrained tag")

    if model_name.startswith(LOCAL_DIR):
        folder = Path(model_name[len(LOCAL_DIR):]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise UserError(f"{model_name}: no open_clip_config.json in {folder}; give a folder saved by open_clip")
        model_cfg, pp_cfg = _read_config_json(folder / "open_clip_config.json")
        weights = pretrained if pretrained else _find_weights(folder)
        if weights is None:
            raise UserError(f"{model_name}: no weights file (*.safetensors, *.bin, *.pth) in {folder}")
        return _build_from_config(model_cfg, pp_cfg, weights, device)

    if model_name.endswith(".json"):
        path = Path(model_name).expanduser()
        if not path.is_file():
            raise UserError(f"CLIP config file {path} does not exist")
        model_cfg, pp_cfg = _read_config_json(path)
        if pretrained and not os.path.isfile(pretrained):
            raise UserError(f"with a config file, clip.pretrained must be a weights file; {pretrained} is not one")
        return _build_from_config(model_cfg, pp_cfg, pretrained or None, device)

    if not model_name.startswith(HF_HUB) and model_name.replace("/", "-") not in oc.list_models():
        close = difflib.get_close_matches(model_name, oc.list_models(), n=5)
        raise UserError(f"unknown CLIP model {model_name!r}; close matches: {close or oc.list_models()[:10]}")
    is_tag = bool(pretrained) and not os.path.isfile(pretrained)
    if is_tag and not model_name.startswith(HF_HUB):
        tags = oc.list_pretrained_tags_by_model(model_name.replace("/", "-"))
        if pretrained not in tags:
            raise UserError(
                f"unknown pretrained tag {pretrained!r} for CLIP model {model_name}; known tags: {tags}; "
                "or give a weights file"
            )
    previous = logging.root.manager.disable
    try:
        # open_clip logs its own ERROR line before raising; the UserError below is the one message to show.
        logging.disable(logging.ERROR)
        model = oc.create_model(model_name, pretrained=pretrained or None, device=device, cache_dir=cache_dir)
    except (RuntimeError, OSError, ValueError, KeyError, AssertionError) as exc:
        # open_clip reports a state dict that does not fit with RuntimeError or a bare assert.
        if pretrained and not is_tag:
            raise UserError(f"CLIP weights {pretrained} do not fit model {model_name}: {str(exc)[:300]}") from exc
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        why = ("offline (HF_HUB_OFFLINE=1) and the weights are not in the local cache" if offline
               else f"download failed: {str(exc).splitlines()[0][:160]}")
        raise UserError(
            f"could not load CLIP model {model_name} (pretrained={pretrained!r}): {why}; {_HOW_TO_SUPPLY}"
        ) from exc
    finally:
        logging.disable(previous)
    if not pretrained and not model_name.startswith(HF_HUB):
        log.warning("CLIP model %s has no pretrained weights: its embeddings are random", model_name)
    return model


def state_dict_sha256(model: torch.nn.Module) -> str:
    """sha256 over parameter names, shapes, dtypes and bytes: identifies the weights whatever file they came from."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


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
        x = images.to(self.device, torch.float32)
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
        """L2-normalised image embeddings [N, D] (float32, CPU) of a tensor [N, C, H, W] or a dataset of
        ``(image, label)`` items."""
        bs = batch_size or self.batch_size
        self.model.eval()
        out = []
        for batch in _iter_image_batches(images, bs):
            self.calls["images"] += 1
            emb = self.model.encode_image(self.preprocess(batch))
            out.append(F.normalize(emb.float(), dim=-1).cpu())
        if not out:
            raise UserError("no images to embed: the probe set is empty")
        return torch.cat(out)

    # -- texts
    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], template: str = "{}", batch_size: int | None = None) -> Tensor:
        """L2-normalised text embeddings [M, D] (float32, CPU) of ``template.format(text)`` for each text."""
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
            out.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu())
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


def load_clip(model_name: str, pretrained: str | None = None, device: str = "cpu",
              cache_dir: str | None = None, batch_size: int = 128) -> Clip:
    """Load an open_clip model (see the module docstring for the accepted ``model_name``/``pretrained`` forms)."""
    if not model_name:
        raise UserError("no CLIP model given; set clip.model (e.g. ViT-B-16) and clip.pretrained")
    pretrained = str(pretrained) if pretrained else None
    model = _create_open_clip(model_name, pretrained, device, cache_dir)
    model.eval()
    oc = _open_clip()
    if model_name.startswith(LOCAL_DIR) or not model_name.endswith(".json"):
        tokenizer = oc.get_tokenizer(model_name)
    else:
        model_cfg, _ = _read_config_json(Path(model_name))
        ctx = model_cfg["text_cfg"].get("context_length", 77)
        tokenizer = oc.SimpleTokenizer(context_length=ctx)
    pp = oc.get_model_preprocess_cfg(model)
    size = pp.get("size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    # Identity by content: weights + module structure (activation types etc. are not in the state dict).
    digest = hashlib.sha256((state_dict_sha256(model) + repr(model)).encode()).hexdigest()[:32]
    identity = f"{type(model).__name__}:{digest}"
    return Clip(model=model, tokenizer=tokenizer, name=identity, image_size=size,
                source=f"{model_name} pretrained={pretrained}",
                mean=tuple(float(v) for v in pp.get("mean")), std=tuple(float(v) for v in pp.get("std")),
                interpolation=pp.get("interpolation", "bicubic"), resize_mode=pp.get("resize_mode", "shortest"),
                device=device, batch_size=batch_size)


def save_local_dir(model: torch.nn.Module, model_cfg: dict, folder: str | os.PathLike,
                   preprocess_cfg: dict | None = None) -> Path:
    """Write ``model`` in open_clip's ``local-dir:`` layout (open_clip_config.json + open_clip_pytorch_model.bin)."""
    folder = ensure_writable_dir(folder)
    with atomic_write(folder / "open_clip_config.json") as fh:
        json.dump({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}, fh, indent=2)
    with atomic_write(folder / "open_clip_pytorch_model.bin", "wb") as fh:
        torch.save(model.state_dict(), fh)
    return folder


# ----------------------------------------------------------------------------------------------- cache
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
    cache_dir = ensure_writable_dir(cache_dir or default_cache_dir())
    key = _key("images", clip.name, clip.preprocess_params, content_hash_images(dataset))
    path = Path(cache_dir) / f"img_{key[:40]}.pt"
    emb = _load_cached(path, key)
    if emb is None:
        emb = clip.encode_images(dataset, batch_size=batch_size)
        _save_cached(path, key, emb)
    return emb


def embed_texts_cached(clip: Clip, texts: Sequence[str], cache_dir: str | os.PathLike | None = None,
                       template: str = "{}", batch_size: int | None = None) -> Tensor:
    """Text embeddings [M, D] of ``texts``; cache key sha256(clip identity, template, the strings in order)."""
    cache_dir = ensure_writable_dir(cache_dir or default_cache_dir())
    key = _key("texts", clip.name, template, list(texts))
    path = Path(cache_dir) / f"txt_{key[:40]}.pt"
    emb = _load_cached(path, key)
    if emb is None:
        emb = clip.encode_texts(list(texts), template=template, batch_size=batch_size)
        _save_cached(path, key, emb)
    return emb
