"""Rebuild a trained network from a ``train.py`` checkpoint, or load a torchvision model, without Lightning.

Checkpoints are read with ``torch.load(weights_only=True)``: they hold tensors and plain Python values only
(the resolved config is stored as a dict), so nothing is unpickled.
"""

from __future__ import annotations

import os
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from lwtakit import config as config_lib
from lwtakit.errors import UserError
from lwtakit.lwta import LWTAOptions
from lwtakit.models import ArchOptions, build_model, model_names
from lwtakit.run_folder import check_same_run

CONFIG_KEY = "lwtakit_config"
_STEP = re.compile(r"step=(\d+)")  # in Lightning's checkpoint names, epoch=1-step=24.ckpt


@dataclass
class LoadedModel:
    model: nn.Module
    name: str
    class_names: list[str]
    cfg: DictConfig | None = None  # the training config (None for torchvision models)
    img_size: int = 224
    in_chans: int = 3
    path: Path | None = None  # the checkpoint file (None for torchvision models)

    def dataset(self, split: str):
        """The ``split`` of the data set the checkpoint was trained on, as its stored config made it (for synthetic
        data: its seed, generator settings and split size)."""
        from lwtakit.data import config_dataset

        if self.cfg is None:
            raise UserError(f"{self.name} has no training config; give a probe set (--probe)")
        # the run's own split, as the training data module built it (for synthetic data its generator settings and
        # data.<split>_size), so that analyses see the images the run was validated and tested on
        return config_dataset(self.cfg.data, split, self.cfg.seed)


def build_network(cfg: DictConfig, num_classes: int, in_chans: int, mean, std) -> nn.Module:
    """The network a training config describes."""
    m = cfg.model
    lwta = LWTAOptions(U=m.U, temperature=m.temperature.t0, temperature_on=m.temperature.on, inference=m.inference,
                       kl=m.kl)
    arch = ArchOptions(width=m.width, stem=m.stem, in_chans=in_chans, img_size=cfg.data.img_size,
                       patch_size=m.patch_size, depth=m.depth, mean=tuple(mean), std=tuple(std))
    return build_model(m.name, num_classes=num_classes, act=m.act, lwta=lwta, arch=arch)


# The model keys whose values fix the architecture (and so which weights a checkpoint holds and what they mean).
ARCH_KEYS = ("name", "act", "U", "width", "stem", "patch_size", "depth")


def read_checkpoint(path: str | Path, map_location: str = "cpu") -> dict:
    """The contents of a ``train.py`` checkpoint (``weights_only=True``); a missing, unreadable or foreign file is
    a :class:`UserError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise UserError(f"{path} is not a readable checkpoint ({type(exc).__name__}: truncated, corrupt or not a "
                        "checkpoint); give a .ckpt written by train.py") from None
    if not isinstance(ckpt, dict) or CONFIG_KEY not in ckpt or "state_dict" not in ckpt:
        raise UserError(f"{path} is not a train.py checkpoint (no stored config); give a .ckpt written by "
                        "train.py or use --model torchvision:NAME")
    return ckpt


@dataclass
class ResumePoint:
    """Where a checkpoint resumes: its global step, the epochs it completed (checkpoints are saved at the end of an
    epoch) and the config it stored (a plain nested dict)."""

    step: int
    epochs: int
    config: dict


def check_resume(path: str | Path, cfg: DictConfig, expected: dict[str, torch.Tensor], run_dir: Path) -> ResumePoint:
    """Check that the checkpoint at ``path`` can resume the run ``cfg`` describes in ``run_dir``, whose module has
    the state ``expected``: readable, of the same architecture and with weights of the same shapes (Lightning would
    load an LWTA checkpoint into a dense network of equal shapes without a word), and, when it lies in ``run_dir``,
    of that folder's run. Returns its :class:`ResumePoint`."""
    ckpt = read_checkpoint(path)
    stored_cfg = config_lib.from_dict(ckpt[CONFIG_KEY])
    if Path(run_dir).resolve() in Path(path).resolve().parents:
        check_same_run(Path(run_dir), Path(path), stored_cfg.run_id)
    stored = stored_cfg.model
    diff = [f"model.{k} {stored[k]} in the checkpoint, {cfg.model[k]} in the config" for k in ARCH_KEYS
            if stored[k] != cfg.model[k]]
    state = ckpt["state_dict"]
    diff += [f"weight {k} {tuple(v.shape)} in the checkpoint, {tuple(expected[k].shape)} in the config"
             for k, v in state.items() if k in expected and expected[k].shape != v.shape][:2]
    if diff:
        raise UserError(f"checkpoint {path} does not match the config: {'; '.join(diff)}; resume with the "
                        "checkpoint's settings (its run's config.yaml) or start a new run")
    return ResumePoint(int(ckpt.get("global_step", 0)), int(ckpt.get("epoch", -1)) + 1, dict(ckpt[CONFIG_KEY]))


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> LoadedModel:
    """The network of a ``train.py`` checkpoint, with the weights it was saved with, in eval mode."""
    path = Path(path)
    ckpt = read_checkpoint(path, map_location)
    cfg = config_lib.from_dict(ckpt[CONFIG_KEY])
    hp = ckpt.get("hyper_parameters", {})
    try:
        num_classes, in_chans = int(hp["num_classes"]), int(hp["in_chans"])
        mean, std = hp["mean"], hp["std"]
    except KeyError as exc:
        raise UserError(f"{path} lacks hyper-parameter {exc}; it was not written by this version of train.py") \
            from None
    if cfg.model.name not in model_names():
        raise UserError(f"{path} holds a {cfg.model.name!r} network, a model not registered here (registered: "
                        f"{', '.join(model_names())}); import the module that registers it (@register_model) first")
    model = build_network(cfg, num_classes, in_chans, mean, std)
    prefix = "model."
    state = {k[len(prefix):].replace("_orig_mod.", ""): v for k, v in ckpt["state_dict"].items()
             if k.startswith(prefix)}
    expected = model.state_dict()
    bad = sorted(set(expected) ^ set(state)) + [k for k, v in state.items()
                                                 if k in expected and expected[k].shape != v.shape]
    if bad:
        raise UserError(f"checkpoint {path} does not match the architecture of its config "
                        f"({cfg.model.name}, width {cfg.model.width}): mismatched weights {', '.join(bad[:3])}")
    model.load_state_dict(state)
    model.eval()
    class_names = list(hp.get("class_names") or [str(i) for i in range(num_classes)])
    return LoadedModel(model, f"{cfg.experiment}:{path.name}", class_names, cfg, cfg.data.img_size, in_chans, path)


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The global step in a Lightning checkpoint's file name (``epoch=1-step=24.ckpt`` -> 24), else None."""
    match = _STEP.search(Path(path).name)
    return int(match.group(1)) if match else None


def leftovers(ckpt_dir: Path, after_step: int) -> list[Path]:
    """Files of an interrupted run in ``ckpt_dir`` that a resume from global step ``after_step`` will write again:
    staged files of unfinished writes, and epoch checkpoints of later steps (saved but never linked as last)."""
    if not ckpt_dir.is_dir():
        return []
    staged = [p for p in ckpt_dir.iterdir() if p.name.startswith(".") and p.name.endswith((".tmp", ".link"))]
    later = [p for p in ckpt_dir.glob("*.ckpt")
             if not p.is_symlink() and (checkpoint_step(p) or -1) > after_step]
    return sorted(staged + later)


def last_checkpoint(ckpt_dir: str | Path) -> tuple[Path, str | None]:
    """The checkpoint a run folder resumes from and a note, or None: ``last.ckpt`` when it names a complete
    checkpoint file, else the newest complete epoch checkpoint (a run of an earlier version, or a folder edited by
    hand, may hold a dangling link or a truncated file), with a one-line note saying so."""
    ckpt_dir = Path(ckpt_dir)
    last = ckpt_dir / "last.ckpt"
    if _complete(last):
        return last, None
    epochs = [p for p in ckpt_dir.glob("*.ckpt") if p.name != last.name and not p.is_symlink() and _complete(p)]
    if not epochs:
        raise UserError(f"{ckpt_dir} holds no complete checkpoint (last.ckpt is missing, dangling or truncated); "
                        "train first, or give a checkpoint path")
    newest = max(epochs, key=lambda p: (checkpoint_step(p) or -1, p.stat().st_mtime))
    state = "dangling" if last.is_symlink() and not last.exists() else "missing" if not last.exists() else "truncated"
    return newest, f"note: {last} is {state}; using {newest.name}, the newest complete checkpoint"


def _complete(path: Path) -> bool:
    # torch.save writes a zip archive; a truncated one lacks the directory at its end.
    return path.is_file() and zipfile.is_zipfile(path)


def resolve_run(spec: str, say: bool = True) -> tuple[Path | None, Path]:
    """(run folder or None, checkpoint) for a run folder (its :func:`last_checkpoint`) or a checkpoint path; ``say``:
    print :func:`last_checkpoint`'s note (False where the same run is loaded, and the note printed, elsewhere)."""
    path = Path(spec)
    if path.is_dir():
        if not (path / "checkpoints").is_dir():
            raise UserError(f"run folder {path} has no checkpoints/; give a run folder of train.py")
        ckpt, note = last_checkpoint(path / "checkpoints")
        if note and say:
            print(note, file=sys.stderr)
        return path, ckpt
    if path.is_file():
        return None, path
    raise UserError(f"checkpoint {spec} does not exist; give a .ckpt written by train.py or its run folder")


def load_run(spec: str) -> tuple[Path | None, LoadedModel]:
    """(run folder or None, network) of a ``train.py`` run folder or checkpoint path (:func:`resolve_run`); a
    checkpoint inside a run folder must belong to that folder's run (:func:`check_same_run`)."""
    run_dir, ckpt = resolve_run(spec)
    loaded = load_checkpoint(ckpt)
    folder = run_dir or ckpt.resolve().parent.parent
    if (folder / "checkpoints").is_dir() and loaded.cfg is not None:
        check_same_run(folder, ckpt, loaded.cfg.run_id)
    return run_dir, loaded


def load_model(spec: str) -> LoadedModel:
    """``torchvision:NAME`` (ImageNet weights; torchvision downloads them when online), a checkpoint path or a
    ``train.py`` run folder (its ``checkpoints/last.ckpt``)."""
    if not spec.startswith("torchvision:"):
        return load_run(spec)[1]
    import torchvision

    name = spec.split(":", 1)[1]
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        raise UserError(f"torchvision has no model '{name}'; see torchvision.models.list_models()") from None
    try:
        net = torchvision.models.get_model(name, weights=weights)
    except Exception as exc:  # noqa: BLE001 - offline download failures come in many types
        raise UserError(f"could not load torchvision weights for {name} ({type(exc).__name__}): go online once "
                        "or put the file in $TORCH_HOME/hub/checkpoints") from None
    from lwtakit.data.folders import IMAGENET_MEAN, IMAGENET_STD
    from lwtakit.models.resnet import Normalize

    model = nn.Sequential()
    model.add_module("normalize", Normalize(IMAGENET_MEAN, IMAGENET_STD))  # torchvision models expect normalised input
    model.add_module("net", net)
    model.eval()
    return LoadedModel(model, spec, list(weights.meta["categories"]), None, 224, 3)
