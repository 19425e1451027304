"""DissectionCallback: label the network's units with concepts while it trains."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import OmegaConf

from lightning_modules.classifier import network_of
from lwtakit.dissect import ConceptSource, DissectionResult, dissect
from lwtakit.drift import agreement, dissection_key, stability
from lwtakit.evaluation.unit_metrics import (
    CONCEPTS,
    CORRELATION_DISATTENUATED,
    DEAD,
    F1_MATCHED,
    KAPPA_MATCHED,
    LABEL_FREQUENCY,
    RELIABILITY,
)
from lwtakit.io import append_csv, atomic_write, write_csv
from lwtakit.labelers.base import create_labelers
from lwtakit.labels import HELDOUT_PREFIX, LabelRow, LabelTable
from lwtakit.recording import analysis_mode
from lwtakit.shard import Collective

HISTORY_COLUMNS = ("epoch", "step", "layer", "unit", "method", "mode", "label", "score", "firing_rate", "auc",
                   "p_value", "length", "top5")  # + the held-out columns of the configured metrics
HELDOUT_COLUMNS = ("heldout_p", "concepts")
VERDICT_COLUMNS = (F1_MATCHED, KAPPA_MATCHED, CONCEPTS, LABEL_FREQUENCY, DEAD)
STABILITY_COLUMNS = ("layer", "method", "dissections", "stable_fraction", "mean_settle_epoch")


class DissectionCallback(pl.Callback):
    """Runs :func:`lwtakit.dissect.dissect` on a fixed probe set during training and logs the labels.

    When: every ``every_n_epochs`` epochs (at the epoch's end, before its checkpoint), on each checkpoint save
    (``on_checkpoint``) and at the end of fit (``at_fit_end``); never in the sanity check or a ``fast_dev_run``,
    and at most once per global step.

    What stays untouched: the model is analysed in eval mode under ``inference_mode`` and the global RNG
    states are restored afterwards, so a run with the callback follows exactly the trajectory of a run
    without it. LWTA layers are dissected in ``settings.mode`` (``mc`` by default: the mean of ``settings.passes``
    seeded stochastic passes, the function the network is evaluated as; the same seed at every dissection, so drift
    measures learning rather than sampling noise). With ``settings.heldout`` labels are chosen on half the probe
    set and their held-out F1 / AUPRC / correlation, significance and concepts per unit measured on the other half
    go to the loggers, labels.csv and the W&B table with every dissection.

    Distributed: each rank records only its shard of the probe set (whole batches, each seeded by its index), the
    shards are gathered on global rank 0 (:mod:`lwtakit.shard`), which labels, writes ``labels.csv`` and logs: the
    labels are those of one process. ``dissection.json`` lists the images each process recorded.

    At the end of fit, label stability per layer and method (:func:`lwtakit.drift.stability`: the stable
    fraction and the mean settle epoch) goes to the loggers and to ``label_stability.csv``.

    State: the label history (the rows of every dissection so far) is in :meth:`state_dict`, so it survives
    a resume; at fit start ``labels.csv`` is rewritten from that history, which drops rows of a dissection
    that ran after the checkpoint a crashed run resumed from (no lost and no duplicated rows).

    Args:
        probe: the probe images (a map-style dataset of ``(image, label)``).
        concepts: what the labelers compare units with.
        settings: the ``dissection`` config group (:class:`lwtakit.config.DissectionConfig`, or its OmegaConf
            node): cadence, layers, labelers and their settings, grid sizes.
        run_dir: where ``labels.csv`` and the stability / drift files go (None: loggers only).
        seed: the seed of every dissection (sampled winners in ``sample`` mode).
    """

    def __init__(self, probe: torch.utils.data.Dataset, concepts: ConceptSource, settings: Any = None, *,
                 run_dir: str | Path | None = None, seed: int = 0, labelers: list | None = None) -> None:
        from lwtakit.config import DissectionConfig
        from lwtakit.dissection_setup import SetupOptions, dissect_options

        s = settings if settings is not None else DissectionConfig()
        if s.every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0 (0 = never by epoch), got {s.every_n_epochs}")
        if len(probe) < s.top_images:
            raise ValueError(f"probe set has {len(probe)} images, fewer than top_images={s.top_images}")
        # unknown names and bad settings fail here (from_config gives the labelers its factory made)
        self.labelers = labelers if labelers is not None else create_labelers(list(s.methods), s)
        self.probe, self.concepts, self.settings = probe, concepts, s
        self.layers = list(s.layers) or None
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.seed = seed
        self.options = dissect_options(s, SetupOptions(seed=seed))  # device and processes: at each run
        heldout = self.options.heldout
        self.columns = list(HISTORY_COLUMNS)
        if heldout is not None:  # the per-unit metrics a seed-level verdict reads (compare --at-accuracy)
            self.columns += [HELDOUT_PREFIX + m for m in heldout.metrics] + [*HELDOUT_COLUMNS, *VERDICT_COLUMNS]
            if self.options.reliability:
                self.columns += [RELIABILITY, CORRELATION_DISATTENUATED]
        self.history: list[dict] = []  # labels.csv rows of every dissection so far (plain values: checkpointable)
        self.done: list[int] = []  # global steps already dissected
        self._last_epoch_end: tuple[int, int] | None = None
        self.seconds = 0.0
        self._wandb_table: Any = None  # the INCREMENTAL label table of the current W&B run
        self._wandb_table_run: Any = None
        self.shard_sizes: list[int] = []  # images each process recorded in the latest dissection
        # what the run dissects with, written to dissection.json (from_config adds the CLIP choice)
        self.choice: dict[str, Any] = {"methods_requested": self.methods, "methods_used": self.methods,
                                       "clip": None, "fallback": None}

    @property
    def methods(self) -> list[str]:
        return [labeler.name for labeler in self.labelers]

    @property
    def state_key(self) -> str:
        # Two dissection callbacks (other layers or methods) keep separate histories in a checkpoint.
        return self._generate_state_key(layers=self.layers, methods=self.methods)

    @classmethod
    def from_config(cls, cfg, datamodule, run_dir: Path, seed: int = 0) -> DissectionCallback:
        """Build from the ``dissection`` config group with :func:`lwtakit.dissection_setup.dissection_from_config`,
        the composition root ``analyze.py dissect`` shares: the probe set comes from the validation split, every
        labeler prepares its inputs and is checked before the first training step (one line when a method cannot
        run). Configured CLIP weights bring the labelers that read CLIP along; weights that cannot be had with
        ``clip.fallback=invert`` make INVERT take CLIP-Dissect's place (:func:`lwtakit.clip.fallback.fall_back`:
        one warning line; ``dissection.json`` records it)."""
        from lwtakit.dissection_setup import SetupOptions, dissection_from_config

        probe = datamodule.probe_dataset(cfg.probe_size, seed=seed)
        settings = OmegaConf.to_object(cfg) if OmegaConf.is_config(cfg) else cfg
        made = dissection_from_config(settings, probe, SetupOptions(seed=seed, add_clip_labelers=True,
                                                                    say=rank_zero_info))
        settings = dataclasses.replace(settings, methods=made.choice["methods_used"])
        callback = cls(probe, made.concepts, settings, run_dir=run_dir, seed=seed, labelers=made.labelers)
        callback.choice = made.choice
        return callback

    # --- when --------------------------------------------------------------------------------------
    def _enabled(self, trainer: pl.Trainer) -> bool:
        return not trainer.sanity_checking and not trainer.fast_dev_run

    def _should_run(self, trainer: pl.Trainer) -> bool:
        return self._enabled(trainer) and trainer.global_step not in self.done

    def _should_run_by_epoch(self, trainer: pl.Trainer) -> bool:
        n = self.settings.every_n_epochs
        return n > 0 and (trainer.current_epoch + 1) % n == 0 and self._should_run(trainer)

    def _epoch(self, trainer: pl.Trainer) -> int:
        """The epoch the current weights finished: after the last epoch Lightning has already counted on."""
        if self._last_epoch_end is not None and self._last_epoch_end[1] == trainer.global_step:
            return self._last_epoch_end[0]
        return trainer.current_epoch

    # --- hooks -------------------------------------------------------------------------------------
    def _write_choice(self) -> None:
        """dissection.json: the methods requested and used, the CLIP model, any fallback and the images each process
        recorded in the latest dissection."""
        with atomic_write(self.run_dir / "dissection.json") as fh:
            json.dump({**self.choice, "images_per_process": self.shard_sizes}, fh, indent=2)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_files()

    @rank_zero_only
    def _start_files(self) -> None:
        if self.run_dir is None:
            return
        self._write_choice()
        path = self.run_dir / "labels.csv"
        if self.history or path.exists():
            # The file mirrors the history restored from the checkpoint: rows of a dissection that ran
            # after that checkpoint (before a crash) are dropped, as they will be redone.
            write_csv(path, self.history, self.columns)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # ModelCheckpoint saves here (it runs after the other callbacks) when validation runs at the epoch's
        # end: dissecting first puts this epoch's labels into that checkpoint's history.
        if trainer.state.fn == "fit":
            self._epoch_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_end(trainer, pl_module)  # epochs without validation (a no-op if already done)

    def _epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_epoch_end = (trainer.current_epoch, trainer.global_step)
        if self._should_run_by_epoch(trainer):
            self.run(trainer, pl_module)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self.settings.on_checkpoint and self._should_run(trainer):
            self.run(trainer, pl_module)
            # Lightning collected the callback states before this hook: store the history that includes this run.
            checkpoint.setdefault("callbacks", {})[self.state_key] = self.state_dict()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.settings.at_fit_end and self._should_run(trainer):
            self.run(trainer, pl_module)
        if self._enabled(trainer) and self.history:
            self._log_summaries(trainer)

    @rank_zero_only
    def _log_summaries(self, trainer: pl.Trainer) -> None:
        self._log_drift(trainer)
        self._log_stability(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(r) for r in self.history], "done": list(self.done), "seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(r) for r in state_dict.get("history", [])]
        self.done = [int(k) for k in state_dict.get("done", [])]
        self.seconds = float(state_dict.get("seconds", 0.0))

    # --- work --------------------------------------------------------------------------------------
    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[dict] | None:
        """Dissect now (once per global step: the same weights are not labelled twice); returns the new rows."""
        step = trainer.global_step
        if step in self.done:
            return None
        started = time.perf_counter()
        model = network_of(pl_module)
        layers = self.layers or _default_layers(model)
        # several processes: each records its shard of the probe set, rank 0 labels (lwtakit.shard)
        collective = Collective.current(pl_module.device) if trainer.world_size > 1 else None
        options = dataclasses.replace(self.options, device=pl_module.device, collective=collective)
        # the same seed at every dissection: drift measures learning, not sampling noise
        with analysis_mode(model, seed=self.seed):
            result = dissect(model, self.probe, layers, self.labelers, self.concepts, options)
        self.done.append(step)
        self.seconds += time.perf_counter() - started
        if result is None:  # not rank 0: its shard went there (rank 0 sends back the figures it logs)
            self._publish(trainer, None)
            return []
        rows = result.table.records(epoch=self._epoch(trainer), step=step)
        previous = list(self.history)
        self.history.extend(rows)
        self.shard_sizes = result.recording.shard_sizes
        if self.run_dir is not None:
            append_csv(self.run_dir / "labels.csv", rows, self.columns)
            self._write_choice()
        self._log(trainer, rows, previous, result)
        return rows

    def label_stability(self) -> list[dict]:
        """Per (layer, method) of the history: dissections, stable fraction and mean settle epoch."""
        return [{"layer": layer, "method": m, **values} for m in self.methods
                for layer, values in stability(self.history, m).items()]

    # --- logging (global rank 0) -------------------------------------------------------------------
    def _log(self, trainer: pl.Trainer, rows: list[dict], previous: list[dict], result: DissectionResult) -> None:
        # At the step of the epoch's last batch, where Lightning logs the epoch's validation metrics: the dissection
        # belongs to that epoch and its checkpoint, so a resume from that checkpoint keeps the row in metrics.csv
        # (rows at the checkpoint's own step and later are dropped and logged again, and a dissection is not).
        step = max(trainer.global_step - 1, 0)
        metrics = {"dissection/seconds_total": self.seconds}
        for (layer, method), summary in layer_summaries(rows, previous).items():
            for name, value in summary.items():
                metrics[f"dissection/{layer}/{method}/{name}"] = value
        self._publish(trainer, metrics)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, rows, result, step)

    @staticmethod
    def _publish(trainer: pl.Trainer, metrics: dict[str, float] | None) -> None:
        """Put a dissection's figures (``dissection/<layer>/<method>/<name>``, e.g. ``.../heldout_correlation``)
        into ``trainer.callback_metrics`` on every rank, so that ``ModelCheckpoint(monitor=...)`` and
        ``EarlyStopping`` can use them: ModelCheckpoint runs after this callback; an EarlyStopping listed after it
        sees them at the same validation end. NaN figures (no unit assessed) are left out."""
        if trainer.world_size > 1:  # rank 0 measured them; every rank's callbacks must see the same values
            metrics = trainer.strategy.broadcast(metrics, src=0)
        for name, v in (metrics or {}).items():
            if v == v:  # not NaN
                trainer.callback_metrics[name] = torch.tensor(float(v))

    def _log_stability(self, trainer: pl.Trainer) -> None:
        rows = self.label_stability()
        if not rows:
            return
        if self.run_dir is not None:
            write_csv(self.run_dir / "label_stability.csv", rows, STABILITY_COLUMNS)
        metrics = {f"dissection/{r['layer']}/{r['method']}/{name}": float(r[name])
                   for r in rows for name in ("stable_fraction", "mean_settle_epoch")}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def _log_drift(self, trainer: pl.Trainer) -> None:
        """Label agreement between consecutive dissections per layer: a plot in the run folder and in W&B."""
        from lwtakit.plots import label_agreement, png_bytes, save_png

        curves = {f"{layer} ({m})": points for m in self.methods
                  for layer, points in agreement(self.history, m).items()}
        if not any(curves.values()):
            return
        if self.run_dir is not None:
            save_png(label_agreement(curves), self.run_dir / "label_drift.png")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("dissection/label_drift", [_png_to_array(png_bytes(label_agreement(curves)))],
                                 step=trainer.global_step)

    def _label_table(self, rows: list[dict], logger: WandbLogger, step: int) -> tuple[str, Any] | None:
        """The W&B label table to log: one INCREMENTAL table per run, kept here and grown by ``add_data`` (each
        log sends only the new rows as the next increment; ``WandbLogger.log_table`` would make a new table
        every time); for a wandb without ``log_mode``, a fresh table per dissection under its own key."""
        import wandb

        columns = self.columns
        data = [[r.get(c) for c in columns] for r in rows]
        if not data:
            return None
        run = logger.experiment
        if self._wandb_table is None or self._wandb_table_run is not run:
            try:
                self._wandb_table = wandb.Table(columns=columns, log_mode="INCREMENTAL")
            except TypeError:  # older wandb: no incremental tables, log a fresh table per dissection
                return f"dissection/labels_step{step}", wandb.Table(columns=columns, data=data)
            self._wandb_table_run = run
        for row in data:
            self._wandb_table.add_data(*row)
        return "dissection/labels", self._wandb_table

    def _log_wandb(self, logger: WandbLogger, rows: list[dict], result: DissectionResult, step: int) -> None:
        """The label table (INCREMENTAL where this wandb supports it) and image grids of the best units."""
        table = self._label_table(rows, logger, step)
        if table is not None:
            logger.log_metrics({table[0]: table[1]}, step=step)
        for layer in result.recording.layers:
            grids, captions = self._top_image_grids(result, layer)
            logger.log_image(f"dissection/{layer}/top_images", grids, step=step, caption=captions)

    def _top_image_grids(self, result: DissectionResult, layer: str) -> tuple[list, list[str]]:
        """Grids of the top-activating probe images of the layer's best-scoring units, and their captions."""
        from lwtakit.report import image_grid

        grids, captions = [], []
        for unit, r in result.table.best_units(layer, self.settings.grid_units):
            idx = result.top_images(layer, unit, self.settings.top_images)
            grids.append(_png_to_array(image_grid(torch.stack([self.probe[i][0] for i in idx]))))
            captions.append(f"unit {unit}: {r.label} ({r.method} {r.score:.3f})")
        return grids, captions


def layer_summaries(rows: list[dict], previous: list[dict]) -> dict[tuple[str, str], dict[str, float]]:
    """Per (layer, method) of one dissection's rows: mean score, number of distinct labels, the held-out means
    (``heldout_<metric>``, ``heldout_significant``, ``concepts`` per unit) and (when there is a
    previous dissection) the fraction of units whose label changed since it."""
    table = LabelTable(LabelRow.from_record(r) for r in rows)
    out = {key: {"mean_score": s.mean_score, "distinct_labels": float(s.distinct_labels), **s.heldout}
           for key, s in table.summaries().items()}
    if previous:
        last = max(dissection_key(r) for r in previous)  # the previous dissection: (epoch, step)
        for method in table.methods:
            window = [r for r in previous if dissection_key(r) == last] + rows
            for layer, points in agreement(window, method).items():
                if (layer, method) in out and points:
                    out[(layer, method)]["label_changed"] = 1.0 - points[-1][1]
    return out


def _png_to_array(png: bytes):
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _default_layers(model: torch.nn.Module) -> list[str]:
    from lwtakit.models import default_layers

    return default_layers(model)
