"""Interpretability against accuracy from a run's own training history (issue 20, item 7).

A run dissected during training (``dissection.every_n_epochs``) holds one block of held-out labels per dissection
in ``labels.csv`` and its validation accuracy per epoch in ``logs/metrics.csv``. :func:`matched_block` picks, for
``compare --at-accuracy X``, the first epoch whose validation accuracy reaches X and that epoch's labels (its last
dissection); :func:`accuracy_curve` pairs every dissected epoch's validation accuracy with a label metric, for the
plot of interpretability against accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lwtakit.errors import UserError
from lwtakit.labels import LabelRow

# Validation accuracy of a run, in this order: a dense network's one function, else the LWTA function as evaluated
# (mc), else its most likely winners (argmax), else one sampled pass.
VAL_KEYS = ("val/acc_dense", "val/acc_mc", "val/acc_argmax", "val/acc_sample")


@dataclass
class History:
    """A run's training history: validation accuracy per epoch (under ``key``) and the label rows of each
    dissected epoch (its last dissection when an epoch has several)."""

    run: str
    key: str
    accuracy: dict[int, float]
    blocks: dict[int, list[LabelRow]]


def val_accuracy(path: Path, run: str) -> tuple[str, dict[int, float]]:
    """``(key, {epoch: validation accuracy})`` from a run's ``logs/metrics.csv`` (the first of :data:`VAL_KEYS`
    it logs; an epoch's last value)."""
    from lwtakit.io import read_csv

    if not path.is_file():
        raise UserError(f"run {run} has no {path} (validation accuracy per epoch); train it with logger=csv")
    rows = read_csv(path)
    key = next((k for k in VAL_KEYS if any(r.get(k) for r in rows)), None)
    if key is None:
        raise UserError(f"{path} logs no validation accuracy ({', '.join(VAL_KEYS)}); train the run with validation")
    out = {}
    for r in rows:
        if r.get(key) and r.get("epoch"):
            out[int(float(r["epoch"]))] = float(r[key])
    return key, out


def label_blocks(path: Path, run: str, method: str = "invert") -> dict[int, list[LabelRow]]:
    """``{epoch: rows}`` of a run's ``labels.csv`` (one method), each epoch's last dissection (largest step)."""
    from lwtakit.drift import dissection_key, read_history

    if not path.is_file():
        raise UserError(f"run {run} has no {path} (labels per epoch); train it with dissection.every_n_epochs=1")
    by_key: dict[tuple[int, int], list[LabelRow]] = {}
    for r in read_history(path):
        if r["method"] == method:
            by_key.setdefault(dissection_key(r), []).append(LabelRow.from_record(r))
    out: dict[int, list[LabelRow]] = {}
    for (epoch, _), rows in sorted(by_key.items()):
        out[epoch] = rows  # sorted: the epoch's last dissection wins
    return out


def read_history(run_dir: Path | None, run: str) -> History:
    """The :class:`History` of a run folder (checked: both files exist and say something)."""
    if run_dir is None:
        raise UserError(f"{run} is a checkpoint without its run folder: give the run folder for its history")
    key, accuracy = val_accuracy(run_dir / "logs" / "metrics.csv", run)
    return History(run, key, accuracy, label_blocks(run_dir / "labels.csv", run))


def matched_epoch(history: History, target: float) -> int:
    """The first epoch with a dissection whose validation accuracy reaches ``target``; one error line naming the run
    and its best accuracy when none does."""
    reached = [e for e in sorted(history.accuracy) if history.accuracy[e] >= target and e in history.blocks]
    if not reached:
        best = max(history.accuracy.items(), key=lambda kv: kv[1], default=(None, float("nan")))
        raise UserError(f"run {history.run} never reaches validation accuracy {target:g} at a dissected epoch "
                        f"(best {best[1]:.4g} at epoch {best[0]}, {history.key}); give a lower --at-accuracy")
    return reached[0]


def accuracy_curve(history: History, layer: str, metric: str) -> list[tuple[int, float, float]]:
    """``(epoch, validation accuracy, mean of metric over the layer's live units)`` per dissected epoch."""
    from lwtakit.arms_compare import is_dead
    from lwtakit.labels import value

    out = []
    for epoch, rows in sorted(history.blocks.items()):
        values = [value(r, metric) for r in rows if r.layer == layer and not is_dead(r)]
        values = [v for v in values if v is not None]
        if epoch in history.accuracy and values:
            out.append((epoch, history.accuracy[epoch], float(np.mean(values))))
    return out
