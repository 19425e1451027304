"""DissectionCallback: label the network's units with concepts while it trains."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import WandbLogger

from lightning_modules.classifier import network_of
from lwtakit.dissect import METHODS, ConceptSource, DissectionResult, dissect
from lwtakit.drift import agreement, dissection_key, stability
from lwtakit.io import append_csv, write_csv
from lwtakit.lwta import lwta_inference
from lwtakit.recording import analysis_mode

HISTORY_COLUMNS = ("epoch", "step", "layer", "unit", "method", "label", "score", "firing_rate", "auc", "p_value",
                   "length", "top5")
STABILITY_COLUMNS = ("layer", "method", "dissections", "stable_fraction", "mean_settle_epoch")


class DissectionCallback(pl.Callback):
    """Runs :func:`lwtakit.dissect.dissect` on a fixed probe set during training and logs the labels.

    When: every ``every_n_epochs`` epochs (at the epoch's end, before its checkpoint), on each checkpoint save
    (``on_checkpoint``) and at the end of fit (``at_fit_end``); never in the sanity check or a ``fast_dev_run``,
    and at most once per global step.

    What stays untouched: the model is analysed in eval mode under ``inference_mode`` and the global RNG
    states are restored afterwards, so a run with the callback follows exactly the trajectory of a run
    without it. LWTA layers are dissected in ``inference`` mode (``argmax`` by default: deterministic labels,
    so drift measures learning rather than sampling noise; ``sample`` uses a fixed seed).

    Distributed: every rank dissects the whole (small, fixed) probe set with the same weights and seed, so
    results are identical on 1 and N processes and no collective is needed; only global rank 0 writes
    ``labels.csv`` and logs.

    At the end of fit, label stability per layer and method (:func:`lwtakit.drift.stability`: the stable
    fraction and the mean settle epoch) goes to the loggers and to ``label_stability.csv``.

    State: the label history (the rows of every dissection so far) is in :meth:`state_dict`, so it survives
    a resume; at fit start ``labels.csv`` is rewritten from that history, which drops rows of a dissection
    that ran after the checkpoint a crashed run resumed from (no lost and no duplicated rows).
    """

    def __init__(
        self,
        probe: torch.utils.data.Dataset,
        concepts: ConceptSource,
        *,
        layers: Sequence[str] | None = None,
        methods: Sequence[str] = ("invert",),
        every_n_epochs: int = 1,
        on_checkpoint: bool = False,
        at_fit_end: bool = True,
        run_dir: str | Path | None = None,
        inference: str = "argmax",
        seed: int = 0,
        max_length: int = 1,
        beam: int = 5,
        clip_method: str = "soft_wpmi",
        top_images: int = 8,
        grid_units: int = 8,
        batch_size: int = 128,
    ) -> None:
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown dissection method(s) {unknown}; choose from {METHODS}")
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0 (0 = never by epoch), got {every_n_epochs}")
        if inference not in ("argmax", "sample"):
            raise ValueError(f"inference must be 'argmax' or 'sample', got {inference!r}")
        if len(probe) < top_images:
            raise ValueError(f"probe set has {len(probe)} images, fewer than top_images={top_images}")
        self.probe, self.concepts = probe, concepts
        self.layers = list(layers) if layers else None
        self.methods = list(methods)
        self.every_n_epochs, self.on_checkpoint, self.at_fit_end = every_n_epochs, on_checkpoint, at_fit_end
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.inference, self.seed = inference, seed
        self.kwargs = dict(max_length=max_length, beam=beam, clip_method=clip_method, batch_size=batch_size,
                           topk=top_images)
        self.top_images, self.grid_units = top_images, grid_units
        self.history: list[dict] = []
        self.done: list[int] = []  # global steps already dissected
        self._last_epoch_end: tuple[int, int] | None = None
        self.seconds = 0.0
        self._wandb_table: Any = None  # the INCREMENTAL label table of the current W&B run
        self._wandb_table_run: Any = None

    @classmethod
    def from_config(cls, cfg, datamodule, run_dir: Path, seed: int = 0) -> DissectionCallback:
        """Build from the ``dissection`` config group; the probe set comes from the validation split."""
        probe = datamodule.probe_dataset(cfg.probe_size, seed=seed)
        methods = list(cfg.methods)
        if clip_configured(cfg.clip) and "clip_dissect" not in methods:
            methods.append("clip_dissect")  # CLIP weights given: CLIP-Dissect labels come along
        clip = clip_concepts = None
        if "clip_dissect" in methods:
            from lwtakit.clip import load_clip
            from lwtakit.concept_sets import load_concepts

            clip = load_clip(cfg.clip.model, cfg.clip.pretrained, cache_dir=cfg.clip.cache_dir,
                             batch_size=cfg.clip.batch_size)
            clip_concepts = load_concepts(cfg.concepts)
        concepts = ConceptSource.from_dataset(probe, clip=clip, clip_concepts=clip_concepts,
                                              clip_cache_dir=cfg.clip.cache_dir)
        return cls(probe, concepts, layers=list(cfg.layers) or None, methods=methods,
                   every_n_epochs=cfg.every_n_epochs, on_checkpoint=cfg.on_checkpoint, at_fit_end=cfg.at_fit_end,
                   run_dir=run_dir, seed=seed, max_length=cfg.max_length, beam=cfg.beam,
                   clip_method=cfg.clip_method, top_images=cfg.top_images, grid_units=cfg.grid_units)

    # --- when --------------------------------------------------------------------------------------
    def _enabled(self, trainer: pl.Trainer) -> bool:
        return not trainer.sanity_checking and not trainer.fast_dev_run

    def _due_by_epoch(self, trainer: pl.Trainer) -> bool:
        return self.every_n_epochs > 0 and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _epoch(self, trainer: pl.Trainer) -> int:
        """The epoch the current weights finished: after the last epoch Lightning has already counted on."""
        if self._last_epoch_end is not None and self._last_epoch_end[1] == trainer.global_step:
            return self._last_epoch_end[0]
        return trainer.current_epoch

    # --- hooks -------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = None if self.run_dir is None else self.run_dir / "labels.csv"
        if trainer.is_global_zero and path is not None and (self.history or path.exists()):
            # The file mirrors the history restored from the checkpoint: rows of a dissection that ran
            # after that checkpoint (before a crash) are dropped, as they will be redone.
            write_csv(path, self.history, HISTORY_COLUMNS)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # ModelCheckpoint saves here (it runs after the other callbacks) when validation runs at the epoch's
        # end: dissecting first puts this epoch's labels into that checkpoint's history.
        if trainer.state.fn == "fit":
            self._epoch_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_end(trainer, pl_module)  # epochs without validation (a no-op if already done)

    def _epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_epoch_end = (trainer.current_epoch, trainer.global_step)
        if self._enabled(trainer) and self._due_by_epoch(trainer):
            self.run(trainer, pl_module)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self.on_checkpoint and self._enabled(trainer) and trainer.global_step not in self.done:
            self.run(trainer, pl_module)
            # Callback states were collected before this hook: store the history that includes this run.
            checkpoint.setdefault("callbacks", {})[self.state_key] = self.state_dict()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_fit_end and self._enabled(trainer):
            self.run(trainer, pl_module)
        if trainer.is_global_zero and self._enabled(trainer) and self.history:
            self._log_drift(trainer)
            self._log_stability(trainer)

    def label_stability(self) -> list[dict]:
        """Per (layer, method) of the history: dissections, stable fraction and mean settle epoch."""
        return [{"layer": layer, "method": m, **values} for m in self.methods
                for layer, values in stability(self.history, m).items()]

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
        from lwtakit.plots import label_agreement, save_png

        curves = {f"{layer} ({m})": points for m in self.methods
                  for layer, points in agreement(self.history, m).items()}
        if not any(curves.values()):
            return
        if self.run_dir is not None:
            save_png(label_agreement(curves), self.run_dir / "label_drift.png")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                from lwtakit.plots import png_bytes

                logger.experiment.log({"dissection/label_drift": wandb.Image(
                    _png_to_array(png_bytes(label_agreement(curves)))), "trainer/global_step": trainer.global_step})

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
        # the same seed: the same noise on every rank and at every dissection (sample mode)
        with analysis_mode(model, seed=self.seed), lwta_inference(model, self.inference):
            result = dissect(model, self.probe, layers, self.methods, self.concepts, device=pl_module.device,
                             progress=False, **self.kwargs)
        rows = [{"epoch": self._epoch(trainer), "step": step, **r} for r in result.rows]
        previous = list(self.history)
        self.history.extend(rows)
        self.done.append(step)
        self.seconds += time.perf_counter() - started
        if trainer.is_global_zero:
            if self.run_dir is not None:
                append_csv(self.run_dir / "labels.csv", rows, HISTORY_COLUMNS)
            self._log(trainer, rows, previous, result)
        return rows

    def _log(self, trainer: pl.Trainer, rows: list[dict], previous: list[dict], result: DissectionResult) -> None:
        step = trainer.global_step
        metrics = {"dissection/seconds_total": self.seconds}
        for (layer, method), summary in layer_summaries(rows, previous).items():
            for name, value in summary.items():
                metrics[f"dissection/{layer}/{method}/{name}"] = value
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, rows, result, step)

    def _label_table(self, logger: WandbLogger, rows: list[dict], step: int) -> tuple[str, Any] | None:
        """The W&B label table to log: one INCREMENTAL table per run, kept here and grown by ``add_data``
        (each log sends only the new rows as the next increment); for a wandb without ``log_mode``, a fresh
        table per dissection under its own key."""
        import wandb

        columns = list(HISTORY_COLUMNS)
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
        payload: dict[str, Any] = {"trainer/global_step": step}
        table = self._label_table(logger, rows, step)
        if table is not None:
            payload[table[0]] = table[1]
        payload.update(_top_image_grids(rows, result, self.probe, self.grid_units, self.top_images))
        logger.experiment.log(payload)


def layer_summaries(rows: list[dict], previous: list[dict]) -> dict[tuple[str, str], dict[str, float]]:
    """Per (layer, method): mean score, number of distinct labels and (when there is a previous dissection)
    the fraction of units whose label changed since it."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["layer"], r["method"]), []).append(r)
    for key, group in groups.items():
        scores = [r["score"] for r in group if r["score"] is not None]
        out[key] = {"mean_score": sum(scores) / len(scores) if scores else float("nan"),
                    "distinct_labels": float(len({r["label"] for r in group}))}
    if previous:
        last = max(dissection_key(r) for r in previous)  # the previous dissection: (epoch, step)
        for method in {r["method"] for r in rows}:
            window = [r for r in previous if dissection_key(r) == last] + rows
            for layer, points in agreement(window, method).items():
                if (layer, method) in out and points:
                    out[(layer, method)]["label_changed"] = 1.0 - points[-1][1]
    return out


def clip_configured(clip_cfg) -> bool:
    """Whether the ``dissection.clip`` config names CLIP weights: a ``pretrained`` tag or file, or a model that
    brings its own weights (``local-dir:FOLDER``, ``hf-hub:NAME``)."""
    model = str(clip_cfg.get("model") or "")
    return bool(clip_cfg.get("pretrained")) or model.startswith(("local-dir:", "hf-hub:"))


def _top_image_grids(rows: list[dict], result: DissectionResult, probe, grid_units: int,
                     top_images: int) -> dict[str, Any]:
    """Per layer, W&B images of the top-activating probe images of its best-scoring units."""
    import wandb

    from lwtakit.report import image_grid

    out: dict[str, Any] = {}
    for layer in result.recording.layers:
        best = sorted((r for r in rows if r["layer"] == layer and r["score"] is not None),
                      key=lambda r: -r["score"])
        seen, images = set(), []
        for r in best:
            if r["unit"] in seen:
                continue
            seen.add(r["unit"])
            idx = result.top_images(layer, r["unit"], top_images)
            grid = torch.stack([probe[i][0] for i in idx])
            images.append(wandb.Image(_png_to_array(image_grid(grid)),
                                      caption=f"unit {r['unit']}: {r['label']} ({r['method']} {r['score']:.3f})"))
            if len(images) == grid_units:
                break
        out[f"dissection/{layer}/top_images"] = images
    return out


def _png_to_array(png: bytes):
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _default_layers(model: torch.nn.Module) -> list[str]:
    from lwtakit.models import default_layers

    return default_layers(model)
