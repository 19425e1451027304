"""Loading open_clip models offline-friendly, and saving them in open_clip's ``local-dir:`` layout.

Where the weights come from (``load_clip``):

* ``load_clip("ViT-B-32", "laion2b_s34b_b79k")``: an open_clip model name and pretrained tag (downloads
  through open_clip / Hugging Face, or loads from its cache; offline, detected in about a second by
  :mod:`.online`, weights not in the cache fail at once with one :class:`ClipWeightsUnavailable` saying how
  to supply them).
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
from pathlib import Path

import torch

from lwtakit.errors import UserError
from lwtakit.io import atomic_write, ensure_writable_dir

from .encode import Clip
from .online import hub_offline, offline_reason

__all__ = ["HF_HUB", "LOCAL_DIR", "ClipWeightsUnavailable", "load_clip", "save_local_dir", "state_dict_sha256"]

log = logging.getLogger(__name__)

LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"
# How each entry point takes local weights: (a weights file for the named model, an open_clip folder).
ANALYZE_CLIP = ("--clip-pretrained FILE", "--clip-model local-dir:FOLDER")
ANALYZE_CAPTIONS = ("--caption-pretrained FILE", "--caption-model local-dir:FOLDER")
TRAIN_CLIP = ("dissection.clip.pretrained=FILE", "dissection.clip.model=local-dir:FOLDER")


class ClipWeightsUnavailable(UserError):
    """A pretrained tag's weights could not be had here (offline and not cached, or the download failed): the one
    CLIP failure a training run may step around (:mod:`lwtakit.clip.fallback`); a bad name or file stays an error.
    ``model``, ``pretrained``: what was tried; ``why``: why it failed; ``supply``: the entry point's two ways to
    give local weights (:data:`ANALYZE_CLIP`, :data:`TRAIN_CLIP`, ...; by default both entry points')."""

    def __init__(self, model: str, pretrained: str | None, why: str, supply: tuple[str, str] | None = None):
        self.model, self.pretrained, self.why, self.supply = model, pretrained, why, supply
        if supply is None:
            how = (f"analyze.py: {ANALYZE_CLIP[0]} or {ANALYZE_CLIP[1]}; train.py: {TRAIN_CLIP[0]} or "
                   f"{TRAIN_CLIP[1]}")
        else:
            how = f"{supply[0]} or {supply[1]}"
        super().__init__(f"could not load CLIP model {model} (pretrained={pretrained!r}): {why}; give the weights "
                         f"locally: {how} (a folder with open_clip_config.json and a weights file), or run once "
                         "with network access so that open_clip caches them")

    def told(self, supply: tuple[str, str]) -> ClipWeightsUnavailable:
        """The same failure, its message naming ``supply``: the flags or config keys of the entry point at hand."""
        return ClipWeightsUnavailable(self.model, self.pretrained, self.why, supply)


def first_sentence(text: str, limit: int = 300) -> str:
    """The first sentence of ``text``'s first line, or its first ``limit`` characters cut at a word boundary
    with '...': never a word cut in two."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    end = line.find(". ")
    sentence = line[: end + 1] if end >= 0 else line
    if len(sentence) <= limit:
        return sentence
    return sentence[:limit].rsplit(" ", 1)[0] + " ..."


def _open_clip():
    import open_clip

    return open_clip


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
    if pretrained and os.path.sep in pretrained and not os.path.isfile(pretrained):
        raise UserError(f"CLIP weights file {pretrained} does not exist; give an existing file or a pretrained tag")
    if model_name.startswith(LOCAL_DIR):
        return _create_from_local_dir(model_name, pretrained, device)
    if model_name.endswith(".json"):
        return _create_from_config_file(model_name, pretrained, device)
    return _create_named(model_name, pretrained, device, cache_dir)


def _create_from_local_dir(model_name: str, pretrained: str | None, device: str):
    """``local-dir:/folder``: open_clip_config.json and the folder's weights (or the ``pretrained`` file)."""
    folder = Path(model_name[len(LOCAL_DIR):]).expanduser()
    if not (folder / "open_clip_config.json").is_file():
        raise UserError(f"{model_name}: no open_clip_config.json in {folder}; give a folder saved by open_clip")
    model_cfg, pp_cfg = _read_config_json(folder / "open_clip_config.json")
    weights = pretrained if pretrained else _find_weights(folder)
    if weights is None:
        raise UserError(f"{model_name}: no weights file (*.safetensors, *.bin, *.pth) in {folder}")
    return _build_from_config(model_cfg, pp_cfg, weights, device)


def _create_from_config_file(model_name: str, pretrained: str | None, device: str):
    """An architecture config json plus an optional weights file."""
    path = Path(model_name).expanduser()
    if not path.is_file():
        raise UserError(f"CLIP config file {path} does not exist")
    model_cfg, pp_cfg = _read_config_json(path)
    if pretrained and not os.path.isfile(pretrained):
        raise UserError(f"with a config file, clip.pretrained must be a weights file; {pretrained} is not one")
    return _build_from_config(model_cfg, pp_cfg, pretrained or None, device)


def _create_named(model_name: str, pretrained: str | None, device: str, cache_dir: str | None):
    """A built-in open_clip model (or ``hf-hub:``) with a pretrained tag or a weights file."""
    oc = _open_clip()
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
    # Decided before open_clip starts: without network its download retries for a minute before it fails.
    offline = offline_reason(model_name, pretrained) if is_tag or model_name.startswith(HF_HUB) else None
    previous = logging.root.manager.disable
    try:
        # open_clip logs its own ERROR line before raising; the UserError below is the one message to show.
        logging.disable(logging.ERROR)
        with hub_offline(offline is not None):
            model = oc.create_model(model_name, pretrained=pretrained or None, device=device, cache_dir=cache_dir)
    except (RuntimeError, OSError, ValueError, KeyError, AssertionError) as exc:
        # open_clip reports a state dict that does not fit with RuntimeError or a bare assert.
        if pretrained and not is_tag:
            raise UserError(f"CLIP weights {pretrained} do not fit model {model_name}: "
                            f"{first_sentence(str(exc))}") from exc
        why = (f"{offline} and the weights are not in the local cache" if offline
               else f"download failed: {first_sentence(str(exc))}")
        raise ClipWeightsUnavailable(model_name, pretrained, why) from exc
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
