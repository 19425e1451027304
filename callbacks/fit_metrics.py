"""The metrics a fit ended with, kept in the run folder until the run's final test is done.

The final test runs after training, from the last checkpoint; a run killed during the test resumes with
``ckpt_path=last``, where Lightning restores the finished fit without running it again, so the fit's metrics
(train, validation, sparsity, learning rate) are no longer in memory. :class:`FitMetrics` writes them to
``fit-metrics.json`` when training ends (before ``last.ckpt`` moves to the final checkpoint, so the file exists
whenever that checkpoint is the last one); ``train.py`` merges them with the test's into ``results.json`` and then
removes the file (issue 23).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_only

from lwtakit.io import atomic_write

FIT_METRICS_NAME = "fit-metrics.json"


def scalar_metrics(trainer: pl.Trainer) -> dict[str, float]:
    """The trainer's current one-number metrics, as floats."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def read_fit_metrics(run_dir: Path) -> dict[str, float] | None:
    """The metrics :class:`FitMetrics` kept in ``run_dir``, or None when there are none."""
    path = Path(run_dir) / FIT_METRICS_NAME
    if not path.is_file():
        return None
    return {k: float(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}


class FitMetrics(pl.Callback):
    """Writes the metrics at the end of training, with ``fit_seconds`` (the fit's wall time in this process), to
    ``run_dir/fit-metrics.json`` (global rank 0)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._started = time.perf_counter()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Checkpoint callbacks run after the others: this file is on disk before last.ckpt names the final epoch.
        _write(self.run_dir, {**scalar_metrics(trainer), "fit_seconds": time.perf_counter() - self._started})


@rank_zero_only
def _write(run_dir: Path, metrics: dict[str, float]) -> None:
    with atomic_write(run_dir / FIT_METRICS_NAME, encoding="utf-8") as fh:
        json.dump(metrics, fh, indent=2, sort_keys=True)
