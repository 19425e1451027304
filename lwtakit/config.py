"""One structured config for training and monitoring.

The schema is a tree of dataclasses turned into an OmegaConf structured config in struct mode, so an
unknown key or a value of the wrong type is an error that names the key. Configs are built in layers:

1. the schema defaults below;
2. an experiment YAML (``--config NAME`` looks in ``configs/experiment/``, or give a path); its
   ``defaults:`` list pulls group files, e.g. ``- model: resnet18_lwta`` merges
   ``configs/model/resnet18_lwta.yaml`` under ``model``;
3. ``key=value`` overrides from the command line (Hydra's override grammar); ``group=name`` for a config group
   (``model=resnet18_dense``) replaces the experiment's choice of that group (its own keys still come last).

Hydra does the composition (:mod:`lwtakit.compose`, issue 19); this module holds the schema and its checks.
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from lwtakit.errors import UserError
from lwtakit.evaluation.options import HeldOutOptions
from lwtakit.fast_path import check_compile
from lwtakit.labelers.configs import ALTERNATIVES, RENAMED, CaptionsConfig, ClipDissectConfig, InvertConfig, IoUConfig
from lwtakit.labelers.run_options import BATCH_SIZE

# The repository's configs/, reached through the link lwtakit/configs in a checkout and installed as package data.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
GROUPS = ("model", "data", "optim", "trainer", "dissection")


@dataclass
class TemperatureConfig:
    """LWTA temperature T and its schedule over epochs (see :mod:`lwtakit.lwta.temperature`)."""

    t0: float = 1.0
    schedule: str = "constant"  # constant | step | exponential | cosine | discover (T/1.5 every 5 epochs while T>=0.3)
    gamma: float = 0.5  # step / exponential factor
    step_size: int = 5  # epochs between steps
    t_min: float = 0.05  # floor of step / exponential / cosine
    on: str = "logits"  # logits: winners ~ softmax(h/T) | relaxation: DISCOVER's code, winners ~ softmax(h)


@dataclass
class ModelConfig:
    name: str = "resnet18"  # a registered model: resnet18 | resnet34 | resnet50 | vit_tiny | vit_small
    act: str = "lwta"  # relu | gelu | lwta
    U: int = 2  # competitors per LWTA block; 1 = the dense activation
    width: float = 0.25  # channel multiplier of ResNets
    stem: str = "cifar"  # cifar (3x3, no max-pool) | imagenet (7x7/2 + max-pool)
    patch_size: int = 4  # ViT
    depth: int | None = None  # ViT depth override
    inference: str = "sample"  # LWTA at evaluation: sample | argmax
    kl: bool = False  # add KL(q || Uniform(1/U)) with optim.kl_weight
    temperature: TemperatureConfig = field(default_factory=TemperatureConfig)


@dataclass
class DataConfig:
    name: str = "synthetic"  # a registered dataset: synthetic | mnist | cifar10 | cifar100 | imagefolder
    root: str | None = None  # folder or file of the data set (mnist: the .npz or a torchvision folder)
    download: bool = False  # let torchvision download the data set into root
    img_size: int = 32
    batch_size: int = 128
    num_workers: int = 0
    augment: bool = True
    train_size: int = 8000  # synthetic data only
    val_size: int = 1000
    test_size: int = 1000
    target: str = "shape"  # synthetic: the attribute that is the class
    second_object: bool = False  # synthetic: draw a second, smaller object


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"  # none | step | cosine
    warmup_epochs: float = 0.0  # linear warm-up (cosine), in epochs
    step_size: int = 30  # step schedule: epochs between decays
    gamma: float = 0.1
    label_smoothing: float = 0.0
    kl_weight: float = 0.0  # weight of the LWTA KL term (used when model.kl)


@dataclass
class TrainerConfig:
    max_epochs: int = 6
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"  # 16-mixed / bf16-mixed for AMP
    compile: bool | str = "auto"  # auto (torch.compile on CUDA, eager elsewhere) | true | false: lwtakit.fast_path
    fast_dev_run: bool = False
    limit_train_batches: float = 1.0
    limit_val_batches: float = 1.0
    log_every_n_steps: int = 10
    gradient_clip_val: float | None = None
    deterministic: bool = False
    enable_progress_bar: bool = True


@dataclass
class EvalConfig:
    modes: list[str] = field(default_factory=lambda: ["sample", "argmax"])  # sample | argmax | mc
    mc_samples: int = 4  # passes averaged by the mc mode
    mc_average: str = "probs"  # mc averages: probs (mean of the passes' softmax) | logits (softmax of mean logits)


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "lwtakit"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)
    init_timeout: float = 30.0  # seconds an online run may take to start before falling back to offline


@dataclass
class SparsityConfig:
    enabled: bool = True
    every_n_steps: int = 20  # measure on one training batch out of n


@dataclass
class ClipConfig:
    model: str = "ViT-B-16"
    pretrained: str | None = None  # tag (online), weights file, or local-dir:FOLDER; None = no CLIP
    cache_dir: str | None = None
    batch_size: int = 64
    # weights of a pretrained tag unavailable (offline, download failed): error | invert (INVERT on the probe's
    # labels instead, one warning line, recorded in the run's dissection.json; lwtakit/clip/fallback.py)
    fallback: str = "error"


@dataclass
class DissectionConfig:
    enabled: bool = True
    every_n_epochs: int = 1
    on_checkpoint: bool = False
    at_fit_end: bool = True
    layers: list[str] = field(default_factory=list)  # empty = last stage + classifier
    # registered labelers (lwtakit.labelers.base.labeler_names(): invert clip_dissect iou captions ...)
    methods: list[str] = field(default_factory=lambda: ["invert"])
    probe_size: int = 512
    batch_size: int = BATCH_SIZE  # probe images per forward pass; with N processes each records every N-th batch
    memory_budget_gb: float | None = None  # host memory the recording may take before it spills to a mapped file
    # CLIP's concepts: a text file (one a line), a built-in (concept_sets.py: words20k ...), or classes (the probe's)
    concepts: str = "synthetic"
    drop_class_words: bool = False  # remove the concepts too close to a class name (final-layer evaluation)
    hierarchy: str | None = None  # parent map file (CSV child,parent,... or JSON): ancestors become concepts (INVERT)
    top_images: int = 8  # images per unit in grids
    grid_units: int = 12  # best-scoring units shown per layer in image grids (0: every unit)
    pca_components: int = 0  # also label both poles of this many principal directions per layer (Dey et al. 2020)
    clip: ClipConfig = field(default_factory=ClipConfig)
    mode: str = "mc"  # LWTA network dissected as: mc (mean of `passes` seeded samples) | sample | argmax
    passes: int = 4
    heldout: HeldOutOptions = field(default_factory=HeldOutOptions)  # labels chosen on one part, scored on the rest
    # also record two halves of the passes (one more recording): each unit's split-half reliability and its held-out
    # correlation corrected for the mc noise (labels.csv: reliability, heldout_correlation_disattenuated)
    reliability: bool = False
    # Settings of each built-in labeler (lwtakit/labelers/configs.py), e.g. dissection.invert.max_length=3.
    invert: InvertConfig = field(default_factory=InvertConfig)
    clip_dissect: ClipDissectConfig = field(default_factory=ClipDissectConfig)
    iou: IoUConfig = field(default_factory=IoUConfig)
    captions: CaptionsConfig = field(default_factory=CaptionsConfig)


@dataclass
class Config:
    seed: int = 0
    experiment: str = "default"
    run_dir: str = "runs"  # each run gets a folder below this
    run_name: str | None = None  # default: <experiment>-<timestamp>
    ckpt_path: str | None = None  # resume: "last", or a checkpoint path
    overwrite: bool = False  # start clean in a run folder that already holds a run (removes its files first)
    run_id: str | None = None  # set by train.py: the id of the run folder's run (its run-id file), also the W&B id
    arm_id: str | None = None  # set by train.py: lwtakit.arm.arm_id of this config (seeds of one arm share it)
    logger: str = "wandb"  # wandb (also writes CSV) | csv | none
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    dissection: DissectionConfig = field(default_factory=DissectionConfig)


class _Registered:
    """The names registered (models, or datasets one can train on) at the moment a config is checked, so that a
    model or dataset registered from outside the package is a valid choice (imported only when asked: --help stays
    light)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def names(self) -> list[str]:
        if self.kind == "model":
            from lwtakit.models.registry import model_names

            return model_names()
        from lwtakit.data.registry import dataset_names

        return dataset_names(trainable=True)

    def __contains__(self, value: object) -> bool:
        return value in self.names()

    def __iter__(self):
        return iter(self.names())


CHOICES = {
    "model.name": _Registered("model"),  # lwtakit.models.registry: the registered models
    "model.act": ("relu", "gelu", "lwta"),
    "model.stem": ("cifar", "imagenet"),
    "model.inference": ("sample", "argmax"),
    "dissection.mode": ("mc", "sample", "argmax"),
    "eval.mc_average": ("probs", "logits"),
    "dissection.clip.fallback": ("error", "invert"),
    "dissection.invert.alternative": ALTERNATIVES,
    "model.temperature.schedule": ("constant", "step", "exponential", "cosine", "discover"),
    "model.temperature.on": ("logits", "relaxation"),
    "data.name": _Registered("data"),  # lwtakit.data.registry: the registered datasets one can train on
    "optim.name": ("sgd", "adamw"),
    "optim.schedule": ("none", "step", "cosine"),
    "logger": ("wandb", "csv", "none"),
    "wandb.mode": ("offline", "online", "disabled"),
    # Lightning's accepted precisions (lightning.fabric.connector._PRECISION_INPUT, as strings: the key is a str);
    # checked here so that a typo fails before a run folder is made, not inside pl.Trainer with a traceback.
    "trainer.precision": ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "32", "16",
                          "bf16", "64", "transformer-engine", "transformer-engine-float16"),
}
# Keys that must be at least 1 (a size of 0 used to fall back silently to the data set's default size).
AT_LEAST_ONE = ("data.batch_size", "data.train_size", "data.val_size", "data.test_size", "data.img_size",
                "trainer.max_epochs", "trainer.num_nodes", "eval.mc_samples", "dissection.passes",
                "dissection.batch_size")


# Keys that moved (labeler settings now sit under their labeler): a stored config of an earlier version is read
# with them in their new place; in YAML files and on the command line the old key is an error naming the new one.
MOVED = {"dissection.max_length": ("dissection.invert.max_length",),
         "dissection.beam": ("dissection.invert.beam",),
         "dissection.clip_method": ("dissection.clip_dissect.similarity", "dissection.captions.similarity"),
         # the 'describe' labeler is now 'captions' (it is not Describe-and-Dissect; see labelers/captions.py)
         "dissection.describe": ("dissection.captions",)}
# Labelers that were renamed: in a stored config's dissection.methods the old name reads as the new one.
RENAMED_METHODS = {"describe": "captions"}


def _move_keys(data: dict) -> dict:
    """``data`` (a plain config dict) with the :data:`MOVED` keys in their new places."""
    data = OmegaConf.create(data)
    for old, new in MOVED.items():
        parent, _, leaf = old.rpartition(".")
        node = OmegaConf.select(data, parent)
        if node is not None and leaf in node:
            value = node.pop(leaf)
            for key in new:
                OmegaConf.update(data, key, value, force_add=True)
    methods = OmegaConf.select(data, "dissection.methods")
    if methods is not None:
        data.dissection.methods = [RENAMED_METHODS.get(m, m) for m in methods]
    return OmegaConf.to_container(data)


def _schema_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Every leaf key of the schema, dotted (``trainer.max_epochs``)."""
    keys = []
    for name in node.keys():
        child = node.get(name)
        full = f"{prefix}{name}"
        keys += _schema_keys(child, full + ".") if isinstance(child, DictConfig) else [full]
    return keys


def _one_line_omegaconf_error(exc: OmegaConfBaseException, where: str) -> UserError:
    """Turn an OmegaConf error into one line naming the key (and close matches for unknown keys)."""
    key = getattr(exc, "full_key", None) or "?"
    old = next((k for k in MOVED if key == k or key.startswith(k + ".")), None)
    if old is not None:
        why = f": {RENAMED['describe']}" if old == "dissection.describe" else ""
        return UserError(f"config key '{key}' is now '{MOVED[old][0]}{key[len(old):]}' ({where}){why}")
    if isinstance(exc, ConfigKeyError) or "not in" in str(exc):
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.structured(Config)
        for part in parent.split(".") if parent else []:
            node = node.get(part) if isinstance(node, DictConfig) else None
        known = list(node.keys()) if isinstance(node, DictConfig) else []
        close = [(parent + "." if parent else "") + c for c in difflib.get_close_matches(leaf, known, n=3)]
        if not close:  # the right name in the wrong group (max_epochs for trainer.max_epochs)
            everywhere = _schema_keys(OmegaConf.structured(Config))
            close = [k for k in everywhere if k.rpartition(".")[2] == leaf][:3]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return UserError(f"unknown config key '{key}' ({where}){hint}")
    if isinstance(exc, ValidationError):
        first = str(exc).splitlines()[0]
        return UserError(f"config key '{key}' has the wrong type ({where}): {first}")
    return UserError(f"bad config ({where}): {str(exc).splitlines()[0]}")


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of config keys")
    return data


def group_file(group: str, name: str) -> Path:
    """configs/GROUP/NAME.yaml, or one line listing the group's choices."""
    path = CONFIG_DIR / group / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        raise UserError(f"no config '{name}' in group '{group}'; choose one of: {', '.join(options)}")
    return path


def resolve_experiment(spec: str) -> Path:
    """An experiment name in configs/experiment/ or a path to a YAML file."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml"):
        if path.is_dir():
            raise UserError(f"--config {spec} is a folder; give an experiment YAML file or an experiment name")
        if not path.is_file():
            raise UserError(f"config file {spec} does not exist")
        return path
    return group_file("experiment", spec)


def load_config(config: str | None = "default", overrides: list[str] | None = None) -> DictConfig:
    """Build the resolved run config: schema <- experiment YAML (+ its groups) <- ``key=value`` overrides, composed
    by Hydra (:mod:`lwtakit.compose`).

    Raises :class:`UserError` with one line naming the offending key for unknown keys, wrong types and
    values outside a key's choices.
    """
    from lwtakit.compose import compose_config

    return compose_config(config, overrides)


def validate(cfg: DictConfig) -> None:
    """Check values that types alone cannot: choices and ranges."""
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise UserError(f"config key '{key}' is {value!r}; choose one of: {', '.join(choices)}")
    check_compile(cfg.trainer.compile)
    for mode in cfg.eval.modes:
        if mode not in ("sample", "argmax", "mc"):
            raise UserError(f"config key 'eval.modes' has {mode!r}; choose from sample, argmax, mc")
    if cfg.model.U < 1:
        raise UserError(f"config key 'model.U' must be >= 1, got {cfg.model.U}")
    if cfg.model.act != "lwta" and cfg.model.U != 1:
        cfg.model.U = 1  # a dense twin has no competition; keep the field honest in the saved config
    for key in AT_LEAST_ONE:
        if OmegaConf.select(cfg, key) < 1:
            raise UserError(f"config key '{key}' must be >= 1, got {OmegaConf.select(cfg, key)}")
    _validate_numbers(cfg)
    _validate_methods(cfg)
    budget = cfg.dissection.memory_budget_gb
    if budget is not None and not (math.isfinite(budget) and budget >= 0):
        raise UserError(f"config key 'dissection.memory_budget_gb' must be a number of GiB >= 0 or null, got {budget}")
    if cfg.dissection.pca_components < 0:
        raise UserError(f"config key 'dissection.pca_components' must be >= 0, got {cfg.dissection.pca_components}")
    if cfg.dissection.probe_size < max(2, cfg.dissection.top_images):
        raise UserError(f"config key 'dissection.probe_size' ({cfg.dissection.probe_size}) must be >= 2 and >= "
                        f"dissection.top_images ({cfg.dissection.top_images})")


def _validate_methods(cfg: DictConfig) -> None:
    """Every ``dissection.methods`` entry is a registered labeler that the training callback can feed, checked
    before a run folder exists (it used to fail at the first epoch's end)."""
    if not cfg.dissection.enabled:
        return
    from lwtakit.labelers.base import CAPTIONER, create_labelers

    for labeler in create_labelers(list(cfg.dissection.methods)):
        if CAPTIONER in labeler.needs:
            raise UserError(f"config key 'dissection.methods' has {labeler.name!r}, but training runs no captioning "
                            "model; caption a trained run with: analyze.py dissect --ckpt RUN --methods captions")


def _validate_numbers(cfg: DictConfig) -> None:
    """Ranges of the values handed to the optimiser, the RNGs and Lightning's device selection."""
    for key in ("optim.lr", "optim.weight_decay", "optim.momentum", "optim.warmup_epochs", "optim.label_smoothing",
                "optim.kl_weight"):
        value = OmegaConf.select(cfg, key)
        if not math.isfinite(value) or value < 0:
            raise UserError(f"config key '{key}' must be a finite number >= 0, got {value}")
    if cfg.optim.lr == 0:
        raise UserError("config key 'optim.lr' must be > 0, got 0")
    if not 0 <= cfg.seed < 2**32:  # numpy's and the data loaders' seeds are unsigned 32-bit
        raise UserError(f"config key 'seed' must be in [0, 2**32), got {cfg.seed}")
    devices = cfg.trainer.devices
    if not _devices_ok(devices):
        raise UserError(f"config key 'trainer.devices' is {devices!r}; give auto, a count >= 1, -1 (all) or a list "
                        "of device indices like [0,1]")


def _devices_ok(devices: Any) -> bool:
    """Whether ``devices`` is one of Lightning's forms: ``auto``, a count >= 1, -1, ``"0,1"`` or ``[0, 1]``."""
    if devices == "auto":
        return True
    if isinstance(devices, str):
        parts = [p.strip() for p in devices.split(",") if p.strip()]
        if len(parts) == 1:
            return parts[0].lstrip("-").isdigit() and (int(parts[0]) >= 1 or int(parts[0]) == -1)
        return bool(parts) and all(p.isdigit() for p in parts)
    if isinstance(devices, bool):
        return False
    if isinstance(devices, int):
        return devices >= 1 or devices == -1
    return len(devices) > 0 and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices)


def check_machine(cfg: DictConfig) -> None:
    """Check what depends on this machine rather than on the config (a config naming a GPU is valid, but it
    cannot run where none is visible)."""
    import torch

    if cfg.trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(f"config key 'trainer.accelerator' is {cfg.trainer.accelerator!r} but no GPU is visible; "
                        "use trainer.accelerator=cpu (or auto), or trainer=cpu")


def save_config(cfg: DictConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically)."""
    from lwtakit.io import atomic_write

    with atomic_write(path) as fh:
        fh.write(OmegaConf.to_yaml(cfg, resolve=True))


def to_dict(cfg: DictConfig) -> dict:
    """Plain-Python copy of the config (safe to store in a checkpoint loaded with weights_only=True)."""
    return OmegaConf.to_container(cfg, resolve=True)


def from_dict(data: dict) -> DictConfig:
    """Rebuild a validated config from :func:`to_dict` output (e.g. a checkpoint's stored config)."""
    cfg = OmegaConf.structured(Config)
    OmegaConf.set_struct(cfg, True)
    try:
        cfg = OmegaConf.merge(cfg, _move_keys(data))
    except OmegaConfBaseException as exc:
        raise _one_line_omegaconf_error(exc, "stored config") from None
    return cfg
