"""A run's *arm*: the training procedure it samples, i.e. its configuration without what only picks one sample.

Runs that differ only in their seed (and in where they were written, how they were logged, or which hardware ran
them) are draws from one training procedure; comparisons of procedures take the seed as the unit of analysis
(issue 20). :func:`arm_of` is the one definition of that grouping: a sweep records it in every run's config,
``compare`` groups runs by it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["NOT_ARM", "arm_id", "arm_names", "arm_of", "flatten"]

# Keys (dotted) that do not change what is trained: the sample (seed), where and how the run is written and
# logged, the hardware that ran it, and the analysis the run performs on itself (the dissection callback does not
# change the trajectory; tests/test_dissection_callback.py checks it).
NOT_ARM = ("seed", "experiment", "run_dir", "run_name", "ckpt_path", "overwrite", "run_id", "logger", "arm",
           "arm_id", "wandb", "dissection", "sparsity", "data.root", "data.download", "data.num_workers",
           "trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy", "trainer.compile",
           "trainer.enable_progress_bar", "trainer.log_every_n_steps", "trainer.deterministic")


def _drop(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if path in NOT_ARM:
            continue
        out[key] = _drop(value, path + ".") if isinstance(value, Mapping) else value
    return out


def arm_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """The run's configuration (a plain nested mapping, e.g. ``config.to_dict(cfg)``) without the keys in
    :data:`NOT_ARM`: two runs belong to one arm exactly when these are equal."""
    return _drop(config)


def arm_id(config: Mapping[str, Any]) -> str:
    """A short stable name of the arm: the first 10 hex digits of the SHA-256 of its canonical JSON."""
    text = json.dumps(arm_of(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{dotted.key: value}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def arm_names(configs: list[Mapping[str, Any]]) -> list[str]:
    """A readable name for each config's arm: the keys whose values differ between the arms given, as
    ``key=value`` joined by commas (``model.U=2``); a ReLU/GELU network among LWTA ones reads ``dense`` and an LWTA
    one by its U (``model.U=2``). One arm alone, or arms with no differing key, are named by :func:`arm_id`."""
    flats = [flatten(arm_of(c)) for c in configs]
    keys = sorted({k for f in flats for k in f if len({json.dumps(g.get(k), default=str) for g in flats}) > 1})
    names = []
    for config, flat in zip(configs, flats, strict=True):
        rest = [f"{k}={flat.get(k)}" for k in keys if k not in ("model.act", "model.U")]
        if "model.act" in keys and flat.get("model.act") != "lwta":
            head = ["dense"]  # its U is meaningless
        elif "model.act" in keys or "model.U" in keys:
            head = [f"model.U={flat.get('model.U')}"]
        else:
            head = []
        names.append(",".join(head + rest) if head + rest else arm_id(config))
    return names
