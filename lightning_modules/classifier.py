"""LightningModule that trains an LWTA (or dense) classifier: wiring only, the network lives in lwtakit."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig
from torchmetrics.classification import MulticlassAccuracy

from lwtakit import config as config_lib
from lwtakit.checkpoint import CONFIG_KEY, build_network
from lwtakit.fast_path import compile_per_isa, fallback_notice, observed, plan_compile, triton_available
from lwtakit.lwta import lwta_inference, lwta_layers, mc_predict, set_temperature, total_kl
from lwtakit.lwta.temperature import SCHEDULE_ARGS, make_schedule


class LitClassifier(pl.LightningModule):
    """Cross-entropy (+ weighted KL of the LWTA competitions), accuracy for every evaluation mode.

    The whole resolved config is stored in every checkpoint (``checkpoint["lwtakit_config"]`` and the
    hyper-parameters), as plain Python types, so checkpoints load with ``weights_only=True``.
    """

    def __init__(self, cfg: DictConfig | dict, num_classes: int, in_chans: int, mean, std, class_names=None):
        super().__init__()
        cfg = config_lib.from_dict(cfg) if isinstance(cfg, dict) else cfg
        self.cfg = cfg
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        # Kept in the checkpoint (load_checkpoint reads them) but not logged: train.py gives W&B the resolved config
        # once, when the run starts; logged here too, it appeared twice (and with every class name).
        self.save_hyperparameters(
            {"cfg": config_lib.to_dict(cfg), "num_classes": num_classes, "in_chans": in_chans,
             "mean": list(mean), "std": list(std), "class_names": self.class_names}, logger=False,
        )
        self.model = build_network(cfg, num_classes, in_chans, mean, std)
        self.temperature_at(0)  # validate the schedule now, not at the first epoch
        self.has_lwta = bool(lwta_layers(self.model))
        # Modes other than the network's own make sense only with competition in the network; a dense net has
        # one deterministic function, logged as acc_dense (runs before issue 11 logged it as acc_argmax).
        modes = list(cfg.eval.modes) if self.has_lwta else ["dense"]
        self.eval_modes = list(dict.fromkeys(modes))

        def accuracy(k: int) -> MulticlassAccuracy:  # plain (micro) accuracy, not torchmetrics' default macro
            return MulticlassAccuracy(num_classes, top_k=min(k, num_classes), average="micro")

        self.val_top1 = torch.nn.ModuleDict({m: accuracy(1) for m in self.eval_modes})
        self.val_top5 = torch.nn.ModuleDict({m: accuracy(5) for m in self.eval_modes})
        self.test_top1 = torch.nn.ModuleDict({m: accuracy(1) for m in self.eval_modes})
        self.test_top5 = torch.nn.ModuleDict({m: accuracy(5) for m in self.eval_modes})

    def temperature_at(self, epoch: int) -> float:
        """LWTA temperature of an epoch under the configured schedule (built on demand: a closure attribute
        would make the module unpicklable for ddp_spawn)."""
        t = self.cfg.model.temperature
        options = {"gamma": t.gamma, "step_size": t.step_size, "t_min": t.t_min, "epochs": self.cfg.trainer.max_epochs}
        kwargs = {k: v for k, v in options.items() if k in SCHEDULE_ARGS[t.schedule]}
        return make_schedule(t.schedule, t.t0, **kwargs)(epoch)

    def configure_model(self) -> None:
        """Resolve ``trainer.compile`` (:mod:`lwtakit.fast_path`) for this run's device. The compiled network is
        kept outside the module tree (``__dict__``), so checkpoints hold the bare network's keys; it runs the
        training forward only (evaluation switches LWTA modes, each a new graph, for a small share of the time)."""
        if "_compiled" in self.__dict__:
            return
        device = self.trainer.strategy.root_device.type if self._trainer is not None else self.device.type
        plan = plan_compile(self.cfg.trainer.compile, device, device == "cuda" and triton_available())
        if plan.notice:
            rank_zero_info(plan.notice)
        self.__dict__["_compile_fallback"] = plan.fallback
        self.__dict__["_compiled"] = compile_per_isa(self.model, mode=plan.mode) if plan.compile else None

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's training forward on the path ``configure_model`` chose; under ``auto``, a failing compiled
        step (not built, or failing to run) switches to eager for the rest of the run, with one notice; an error of
        the model then fails the eager step too. Steps a hook watches run eager."""
        compiled = self.__dict__.get("_compiled")
        if compiled is None or observed(self.model):
            return self.model(x)
        try:
            return compiled(x)
        except Exception as exc:
            if not self.__dict__.get("_compile_fallback"):
                raise
            rank_zero_info(fallback_notice(exc))
            self.__dict__["_compiled"] = None
            return self.model(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # --- training -----------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        if self.has_lwta:
            t = self.temperature_at(self.current_epoch)
            set_temperature(self.model, t)
            self.log("lwta/temperature", t, on_step=False, on_epoch=True)

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        logits = self._train_forward(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.optim.label_smoothing)
        if self.cfg.model.kl and self.cfg.optim.kl_weight > 0:
            kl = total_kl(self.model)
            self.log("train/ce", loss, on_step=True, on_epoch=True)
            loss = loss + self.cfg.optim.kl_weight * kl
            self.log("train/kl", kl, on_step=True, on_epoch=True)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at epoch {self.current_epoch} step {self.global_step}; "
                "lower optim.lr or set trainer.gradient_clip_val"
            )
        acc = (logits.argmax(-1) == y).float().mean()
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc", acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    # --- evaluation ---------------------------------------------------------------------------------
    def _predict(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        """Class probabilities under one evaluation mode (sample, argmax, or mc: n samples averaged as
        ``eval.mc_average`` says)."""
        if not self.has_lwta:
            return self.model(x).softmax(-1)
        if mode == "mc":
            return mc_predict(self.model, x, self.cfg.eval.mc_samples, self.cfg.eval.mc_average)
        with lwta_inference(self.model, mode):
            return self.model(x).softmax(-1)

    def _eval_step(self, batch, stage: str, top1, top5) -> None:
        x, y = batch[0], batch[1]
        for mode in self.eval_modes:
            probs = self._predict(x, mode)
            top1[mode].update(probs, y)
            top5[mode].update(probs, y)
            if mode == self.eval_modes[0]:
                loss = F.nll_loss(probs.clamp_min(1e-12).log(), y)
                self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        for mode in self.eval_modes:
            self.log(f"{stage}/acc_{mode}", top1[mode], on_step=False, on_epoch=True, prog_bar=stage == "val")
            self.log(f"{stage}/top5_{mode}", top5[mode], on_step=False, on_epoch=True)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val", self.val_top1, self.val_top5)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test", self.test_top1, self.test_top5)

    # --- optimisation -------------------------------------------------------------------------------
    def configure_optimizers(self):
        o = self.cfg.optim
        if o.name == "sgd":
            opt = torch.optim.SGD(self.parameters(), lr=o.lr, momentum=o.momentum,
                                  weight_decay=o.weight_decay, nesterov=o.nesterov and o.momentum > 0)
        else:
            opt = torch.optim.AdamW(self.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        if o.schedule == "none":
            return opt
        if o.schedule == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=o.step_size, gamma=o.gamma)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(o.warmup_epochs * total / max(1, self.trainer.max_epochs))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine_with_warmup(warmup, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- checkpoints --------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CONFIG_KEY] = config_lib.to_dict(self.cfg)


class _cosine_with_warmup:
    """LR factor: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total`` steps.

    A class rather than a closure: LambdaLR then stores its numbers in the scheduler's state_dict.
    """

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def network_of(module: torch.nn.Module) -> torch.nn.Module:
    """The bare network a LightningModule trains (unwrapping torch.compile), or the module itself."""
    net = getattr(module, "model", module)
    return getattr(net, "_orig_mod", net)
