"""SparsityMonitor: measured activation sparsity of every activation layer (LWTA, ReLU, GELU) during training."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from torchmetrics import Metric

from lightning_modules.classifier import network_of
from lwtakit.lwta import LWTA
from lwtakit.models import activation_layers
from lwtakit.recording import capture


class ActivityCounts(Metric):
    """Active outputs of one activation layer: per unit (``wins``) and in all (``active`` of ``total``), with the
    number of outputs each unit had (``seen``). Every state is a count summed across processes
    (``dist_reduce_fx="sum"``), so :meth:`compute` gives, under DDP, the figures of one process that saw every
    process's batches."""

    full_state_update = False

    def __init__(self, units: int) -> None:
        super().__init__()
        self.add_state("wins", default=torch.zeros(units, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("seen", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("active", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, out: torch.Tensor, positive: bool) -> None:
        """Count one layer output: active = > 0 with ``positive`` (ReLU, GELU), else non-zero (LWTA winners)."""
        per_unit = _win_counts(out, positive)
        self.wins += per_unit
        self.seen += out.numel() // per_unit.numel()
        self.active += per_unit.sum()
        self.total += out.numel()

    def compute(self) -> dict[str, Any]:
        wins = self.wins.cpu()
        return {"active_fraction": float(self.active) / max(1, int(self.total)),
                "win_rate": wins.double() / max(1, int(self.seen)),
                "dead_units": int((wins == 0).sum())}


class SparsityMonitor(pl.Callback):
    """Logs, per activation layer, the measured fraction of active outputs and per-unit firing (win) rates.

    Every ``every_n_steps`` training batches the outputs of each activation layer are observed by a forward
    hook (the measurement looks at what the layer emitted, it does not assume 1/U). An output is active when
    it is non-zero for an LWTA layer (a winner; its value may be negative) and when it is > 0 for a ReLU or
    GELU (a GELU is never exactly 0: its small negative dip counts as off), so an LWTA network and its dense
    twin are measured alike. Per unit, active outputs are counted over the epoch (:class:`ActivityCounts`, summed
    over the processes of a distributed run: every rank logs the figures of all the batches observed); at the
    epoch's end it logs

    - ``sparsity/<layer>/active_fraction``: active outputs / all outputs (1/U for LWTA by construction);
    - ``sparsity/<layer>/dead_units``: units never active in the observed batches of the epoch;
    - ``sparsity/<layer>/win_rate_min`` / ``_max``: the extremes of the per-unit win rates (any logger), and
      a histogram of all of them when a W&B logger is attached (global rank 0).
    """

    def __init__(self, every_n_steps: int = 20, log_histograms: bool = True) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.log_histograms = log_histograms
        self._layers: dict[str, nn.Module] = {}
        self._counts: dict[str, ActivityCounts] = {}
        self._ctx = None
        self._outputs: dict[str, torch.Tensor] | None = None

    def _should_measure(self, trainer: pl.Trainer, batch_idx: int) -> bool:
        return bool(self._layers) and not trainer.sanity_checking and batch_idx % self.every_n_steps == 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._net = network_of(pl_module)
        modules = dict(self._net.named_modules())
        self._layers = {name: modules[name] for name in activation_layers(self._net)}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._counts = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._should_measure(trainer, batch_idx):
            self._ctx = capture(self._net, list(self._layers), reduce="none")
            self._outputs = self._ctx.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._ctx is None:
            return
        ctx, captured = self._ctx, self._outputs
        self._ctx = self._outputs = None
        ctx.__exit__(None, None, None)
        for name, layer_outputs in captured.items():
            layer = self._layers[name]
            positive = not isinstance(layer, LWTA) or layer.U == 1  # U = 1: the plain dense activation
            for out in layer_outputs:
                if name not in self._counts:  # every rank measures the same batch indices: the same states
                    self._counts[name] = ActivityCounts(out.shape[_unit_dim(out)]).to(out.device)
                self._counts[name].update(out, positive)

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(type(exception), exception, None)
            self._ctx = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        summary = self.summary()  # reduced across processes: the same figures on every rank
        for name, s in summary.items():
            # sync_dist: Lightning's mean of values already equal on every rank (it would warn without it)
            log = {"sync_dist": trainer.world_size > 1}
            pl_module.log(f"sparsity/{name}/active_fraction", s["active_fraction"], **log)
            pl_module.log(f"sparsity/{name}/dead_units", float(s["dead_units"]), **log)
            # the spread of the win rates for any logger; the whole histogram goes to W&B below
            pl_module.log(f"sparsity/{name}/win_rate_min", float(s["win_rate"].min()), **log)
            pl_module.log(f"sparsity/{name}/win_rate_max", float(s["win_rate"].max()), **log)
        if self.log_histograms:
            _log_histograms(trainer, {n: s["win_rate"] for n, s in summary.items()})

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per layer: active fraction, per-unit win rate and number of dead units so far this epoch, over every
        process's observed batches (a collective call under DDP: every rank calls it)."""
        return {name: counts.compute() for name, counts in self._counts.items()}


def _unit_dim(out: torch.Tensor) -> int:
    """The unit (channel) dimension of a layer output: 1 for [N, C, H, W] maps, else the last ([N, C], [N, T, C])."""
    return 1 if out.dim() == 4 else out.dim() - 1


def _win_counts(out: torch.Tensor, positive: bool) -> torch.Tensor:
    """Per-unit active counts of one layer output: active = > 0 with ``positive`` (ReLU, GELU), else non-zero
    (LWTA winners)."""
    nz = out.detach() > 0 if positive else out.detach() != 0
    unit_dim = _unit_dim(out)
    return nz.sum(dim=[d for d in range(out.dim()) if d != unit_dim])


@rank_zero_only
def _log_histograms(trainer: pl.Trainer, rates: dict[str, torch.Tensor]) -> None:
    """Per-unit win-rate histograms to W&B when a WandbLogger is attached (other loggers: scalars only)."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            logger.experiment.log(
                {f"sparsity/{n}/win_rate": wandb.Histogram(r.numpy()) for n, r in rates.items()}
                | {"trainer/global_step": trainer.global_step}
            )
