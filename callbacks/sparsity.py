"""SparsityMonitor: measured activation sparsity of every activation layer (LWTA, ReLU, GELU) during training."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_modules.classifier import network_of
from lwtakit.lwta import LWTA
from lwtakit.models import activation_layers
from lwtakit.recording import capture


class SparsityMonitor(pl.Callback):
    """Logs, per activation layer, the measured fraction of active outputs and per-unit firing (win) rates.

    Every ``every_n_steps`` training batches the outputs of each activation layer are observed by a forward
    hook (the measurement looks at what the layer emitted, it does not assume 1/U). An output is active when
    it is non-zero for an LWTA layer (a winner; its value may be negative) and when it is > 0 for a ReLU or
    GELU (a GELU is never exactly 0: its small negative dip counts as off), so an LWTA network and its dense
    twin are measured alike. Per unit, active outputs are counted over the epoch; at the epoch's end it logs

    - ``sparsity/<layer>/active_fraction``: active outputs / all outputs (1/U for LWTA by construction);
    - ``sparsity/<layer>/dead_units``: units never active in the observed batches of the epoch;
    - ``sparsity/<layer>/win_rate_min`` / ``_max``: the extremes of the per-unit win rates (any logger), and
      a histogram of all of them when a W&B logger is attached.
    """

    def __init__(self, every_n_steps: int = 20, log_histograms: bool = True) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.log_histograms = log_histograms
        self._layers: dict[str, nn.Module] = {}
        self._wins: dict[str, torch.Tensor] = {}
        self._seen: dict[str, int] = {}
        self._active: dict[str, list[float]] = {}
        self._ctx = None
        self._outputs: dict[str, torch.Tensor] | None = None

    def _should_measure(self, trainer: pl.Trainer, batch_idx: int) -> bool:
        return bool(self._layers) and not trainer.sanity_checking and batch_idx % self.every_n_steps == 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._net = network_of(pl_module)
        modules = dict(self._net.named_modules())
        self._layers = {name: modules[name] for name in activation_layers(self._net)}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._wins, self._seen, self._active = {}, {}, {}

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
        for name, outputs in captured.items():
            layer = self._layers[name]
            positive = not isinstance(layer, LWTA) or layer.U == 1  # U = 1: the plain dense activation
            for out in outputs:
                nonzero, total, per_unit = _win_counts(out, positive)
                self._active.setdefault(name, []).append(nonzero / total)
                self._wins[name] = self._wins.get(name, 0) + per_unit
                self._seen[name] = self._seen.get(name, 0) + total // per_unit.numel()

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(type(exception), exception, None)
            self._ctx = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        summary = self.summary()
        for name, s in summary.items():
            pl_module.log(f"sparsity/{name}/active_fraction", s["active_fraction"])
            pl_module.log(f"sparsity/{name}/dead_units", float(s["dead_units"]))
            # the spread of the win rates for any logger; the whole histogram goes to W&B below
            pl_module.log(f"sparsity/{name}/win_rate_min", float(s["win_rate"].min()))
            pl_module.log(f"sparsity/{name}/win_rate_max", float(s["win_rate"].max()))
        if self.log_histograms and trainer.is_global_zero:
            _log_histograms(trainer, {n: s["win_rate"] for n, s in summary.items()})

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per layer: mean active fraction, per-unit win rate and number of dead units so far this epoch."""
        out = {}
        for name, fractions in self._active.items():
            rate = self._wins[name].double() / max(1, self._seen[name])
            out[name] = {
                "active_fraction": sum(fractions) / len(fractions),
                "win_rate": rate,
                "dead_units": int((self._wins[name] == 0).sum()),
            }
        return out


def _win_counts(out: torch.Tensor, positive: bool) -> tuple[int, int, torch.Tensor]:
    """(active outputs, all outputs, per-unit active counts) of one layer output: active = > 0 with
    ``positive`` (ReLU, GELU), else non-zero (LWTA winners)."""
    nz = out.detach() > 0 if positive else out.detach() != 0
    unit_dim = 1 if out.dim() == 4 else out.dim() - 1
    dims = [d for d in range(out.dim()) if d != unit_dim]
    per_unit = nz.sum(dim=dims).cpu()
    return int(per_unit.sum()), out.numel(), per_unit


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
