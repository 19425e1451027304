"""Train an LWTA (or dense) vision network.

    python train.py                                   # the default experiment (synthetic concepts)
    python train.py --config mnist_lwta data.root=../shared/data/mnist.npz
    python train.py model=resnet18_dense trainer.max_epochs=3
    python train.py run_name=my-run ckpt_path=last   # resume runs/my-run from its last.ckpt
    python train.py run_name=my-run overwrite=true   # start runs/my-run again, removing what it holds
    python train.py -m model.U=1,2,4 seed=0,1,2       # a sweep: one run folder per point (lwtakit/sweep.py)
    python train.py --cfg job model.U=4               # print the resolved config, train nothing

A run ends with a summary that starts ``run: <folder>`` (lwtakit/run_summary.py); the folder holds config.yaml,
checkpoints/last.ckpt, metrics.csv, results.json, run-id, the offline W&B run (of the same id) and (with dissection
enabled) labels.csv.
A folder that already holds a run is refused unless the run resumes it or overwrite=true; .lock keeps a second
run out while one runs (lwtakit/run_folder.py). A finished run resumed does nothing, and a resume may not change
what is trained (lwtakit/resume.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

# Only light modules here: --help and argument errors answer before torch and Lightning are imported (issue 11);
# each function imports the heavy ones it needs.
from lwtakit.config import check_machine, load_config, save_config, to_dict
from lwtakit.config_help import config_epilog
from lwtakit.console import quiet_third_party, resuming_in
from lwtakit.errors import ArgumentParser, UserError
from lwtakit.io import atomic_write, ensure_writable_dir
from lwtakit.run_folder import claim, folder_run_id, launched_as_rank_zero, release, run_folder
from lwtakit.run_summary import summary_lines

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import Logger
    from omegaconf import DictConfig

    from lightning_modules.classifier import LitClassifier
    from lightning_modules.datamodules import VisionDataModule
    from lwtakit.checkpoint import ResumePoint

RUN_DIR_ENV = "LWTAKIT_RUN_DIR"  # shared with ranks that Lightning launches as new processes


@dataclass
class TrainResult:
    run_dir: Path
    last_ckpt: Path
    metrics: dict[str, float]
    trainer: pl.Trainer | None  # None when nothing ran (``finished``)
    module: LitClassifier | None
    finished: str | None = None  # the line of a resume of a run that had already finished: nothing was done


def resolve_run_dir(cfg: DictConfig) -> Path:
    """The run's folder: ``run_dir/run_name`` (a direct child of run_dir, :func:`~lwtakit.run_folder.run_folder`); a
    resume without a name continues the latest run."""
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    root = Path(cfg.run_dir)
    if cfg.run_name is not None:
        return run_folder(root, cfg.run_name)  # a plain name, confined to run_dir (issue 23)
    if cfg.ckpt_path == "last":
        runs = sorted(root.glob(f"{cfg.experiment}-*/checkpoints"), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise UserError(f"ckpt_path=last but no run of '{cfg.experiment}' under {root} has checkpoints; "
                            "give run_name=<folder> of the run to resume")
        return runs[-1].parent
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = root / f"{cfg.experiment}-{stamp}", 1
    while path.exists():
        n += 1
        path = root / f"{cfg.experiment}-{stamp}-{n}"
    return path


def build_datamodule(cfg: DictConfig) -> VisionDataModule:
    from lightning_modules.datamodules import VisionDataModule

    return VisionDataModule(cfg.data, seed=cfg.seed)


def build_loggers(cfg: DictConfig, run_dir: Path, resume_step: int | None = None) -> list[Logger]:
    """CSV metrics always (unless logger=none), continuing the rows before ``resume_step`` on a resume; W&B offline
    by default, never blocking training."""
    from callbacks.metrics_csv import ResumableCSVLogger

    if cfg.logger == "none":
        return []
    loggers: list[Logger] = [ResumableCSVLogger(run_dir, resume_step)]
    if cfg.logger == "wandb":
        wandb_logger = _wandb_logger(cfg, run_dir)
        if wandb_logger is not None:
            loggers.append(wandb_logger)
    return loggers


def _wandb_logger(cfg: DictConfig, run_dir: Path) -> Logger | None:
    """A started W&B run, offline by default. An online run that cannot start (no account, no network)
    falls back to offline with a warning; if even that fails, W&B is skipped: training never waits on it."""
    # An explicit WANDB_MODE in the environment wins over the config (tests and CI set it).
    mode = os.environ.get("WANDB_MODE") or cfg.wandb.mode
    if mode == "disabled":
        return None
    if mode == "online":
        logger = _start_wandb(cfg, run_dir, offline=False)
        if logger is not None:
            return logger
    return _start_wandb(cfg, run_dir, offline=True)


def _start_wandb(cfg: DictConfig, run_dir: Path, offline: bool) -> Logger | None:
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    try:
        # One W&B run per run folder: a resume continues the run its folder started.
        logger = WandbLogger(
            save_dir=str(run_dir), project=cfg.wandb.project, entity=cfg.wandb.entity, name=run_dir.name,
            id=cfg.run_id, resume="allow",
            tags=list(cfg.wandb.tags), config=to_dict(cfg), mode="offline" if offline else "online",
            settings=wandb.Settings(init_timeout=cfg.wandb.init_timeout, silent=True),
        )
        # Lightning passes anonymous=None, which W&B (>= 0.19) answers with "The anonymous setting has no effect"
        # on every run: a notice nobody can act on (issue 11). Without the key W&B uses its default, the same.
        if logger._wandb_init.get("anonymous", "unset") is None:
            del logger._wandb_init["anonymous"]
        _ = logger.experiment  # start the run now, so that a failure happens here and not mid-training
        return logger
    except Exception as exc:  # noqa: BLE001 - no account, no network, server down: never stop training
        what = "offline W&B logging disabled" if offline else "W&B online run could not start; logging offline"
        warnings.warn(f"{what} ({type(exc).__name__}: {str(exc).splitlines()[0]})", stacklevel=2)
        if not offline:
            # W&B's service still holds the run id of the online start that failed: the offline run of the same id
            # (the folder's one run) would be refused as "in use".
            wandb.teardown()
        return None


def build_callbacks(cfg: DictConfig, run_dir: Path, datamodule: VisionDataModule) -> list[pl.Callback]:
    from lightning.pytorch.callbacks import LearningRateMonitor

    from callbacks.dissection import DissectionCallback
    from callbacks.rng_state import RNGStateCheckpoint
    from callbacks.run_checkpoint import RunCheckpoint
    from callbacks.sparsity import SparsityMonitor

    callbacks: list[pl.Callback] = [
        # The latest epoch's checkpoint, with last.ckpt linking to it once the epoch's rows are on disk.
        RunCheckpoint(dirpath=str(run_dir / "checkpoints")),
        RNGStateCheckpoint(),
    ]
    if cfg.logger != "none":
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    if cfg.sparsity.enabled:  # dense nets too: their ReLU / GELU sparsity is what LWTA's is compared with
        callbacks.append(SparsityMonitor(every_n_steps=cfg.sparsity.every_n_steps))
    if cfg.dissection.enabled:
        callbacks.append(DissectionCallback.from_config(cfg.dissection, datamodule, run_dir, seed=cfg.seed))
    return callbacks


def train(cfg: DictConfig) -> TrainResult:
    """Fit (and test) the model a resolved config describes; returns the run folder and final metrics."""
    import lightning.pytorch as pl

    check_machine(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    # Ranks that Lightning launches as new processes find the folder in RUN_DIR_ENV, claimed by rank 0.
    owner = RUN_DIR_ENV not in os.environ and launched_as_rank_zero()
    run_dir = resolve_run_dir(cfg)
    new_folder = not run_dir.exists()
    ensure_writable_dir(run_dir)
    lock = claim(run_dir, cfg.ckpt_path, cfg.overwrite) if owner else None
    os.environ[RUN_DIR_ENV] = str(run_dir)
    finished = False
    try:
        _set_run_id(cfg, run_dir, owner)
        result = _fit(cfg, run_dir)
        finished = True
        return result
    finally:
        os.environ.pop(RUN_DIR_ENV, None)
        if lock is not None:
            release(lock)
            if new_folder and not finished and not any((run_dir / "checkpoints").glob("*.ckpt")):
                # Nothing to resume: the failed run's folder goes, so the same run_name can simply be run again.
                shutil.rmtree(run_dir, ignore_errors=True)


def _set_run_id(cfg: DictConfig, run_dir: Path, owner: bool) -> None:
    """``cfg.run_id``: the folder's run id (a new one for a new run, made by the folder's owner), which config.yaml,
    every checkpoint and the W&B run carry."""
    run_id = folder_run_id(run_dir, create=owner)
    if cfg.run_id and cfg.run_id != run_id:
        raise UserError(f"run_id={cfg.run_id} but the run in {run_dir} is {run_id}; run_id is set by train.py, drop it")
    cfg.run_id = run_id


def _resume_point(cfg: DictConfig, run_dir: Path, module: LitClassifier) -> tuple[str, ResumePoint] | None:
    """The checkpoint a resume starts from and its :class:`~lwtakit.checkpoint.ResumePoint`, checked before the
    Trainer exists (a bad file or another architecture fails as one line, not a traceback); None for a new run."""
    from lwtakit.checkpoint import check_resume, last_checkpoint

    ckpt_path = cfg.ckpt_path
    if not ckpt_path:
        return None
    if ckpt_path == "last":
        if not (run_dir / "checkpoints").is_dir():
            raise UserError(f"ckpt_path=last but {run_dir} has no checkpoints; train first or give a checkpoint path")
        last, note = last_checkpoint(run_dir / "checkpoints")
        if note and launched_as_rank_zero():
            print(note, file=sys.stderr)
        ckpt_path = str(last)
    elif Path(ckpt_path).is_dir():
        inside = Path(ckpt_path) / "checkpoints" / "last.ckpt"
        hint = f"ckpt_path={shlex.quote(str(inside))}" if inside.exists() else "a .ckpt file inside it"
        raise UserError(f"ckpt_path={ckpt_path} is a folder, not a checkpoint file; give {hint}, or resume a run "
                        "with run_name=NAME ckpt_path=last")
    elif not Path(ckpt_path).exists():
        raise UserError(f"checkpoint {ckpt_path} does not exist (config key ckpt_path)")
    return ckpt_path, check_resume(ckpt_path, cfg, module.state_dict(), run_dir)


def _build_trainer(cfg: DictConfig, run_dir: Path, datamodule: VisionDataModule,
                   resume_step: int | None) -> pl.Trainer:
    import lightning.pytorch as pl

    from callbacks.fit_metrics import FitMetrics
    from lwtakit.checkpoint_io import AtomicCheckpointIO

    t = cfg.trainer
    return pl.Trainer(
        default_root_dir=str(run_dir), max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices,
        num_nodes=t.num_nodes, strategy=t.strategy, precision=t.precision, fast_dev_run=t.fast_dev_run,
        # None is Lightning's "all batches" without its notice that 1.0 means all batches
        limit_train_batches=t.limit_train_batches if t.limit_train_batches != 1.0 else None,
        limit_val_batches=t.limit_val_batches if t.limit_val_batches != 1.0 else None,
        log_every_n_steps=t.log_every_n_steps, gradient_clip_val=t.gradient_clip_val,
        deterministic=t.deterministic, enable_progress_bar=t.enable_progress_bar,
        logger=build_loggers(cfg, run_dir, resume_step) or False,
        callbacks=[*build_callbacks(cfg, run_dir, datamodule), FitMetrics(run_dir)],
        enable_model_summary=False, plugins=[AtomicCheckpointIO()],
    )


@contextlib.contextmanager
def _lightning_call(progress_bar: bool) -> Iterator[None]:
    """Around Trainer.fit / Trainer.test: an error starts on a line of its own (the progress bar leaves its line
    open), and Ctrl-C stays a KeyboardInterrupt (Lightning turns it into ``sys.exit(1)`` after its shutdown)."""
    try:
        yield
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt) or (
            isinstance(exc, SystemExit) and isinstance(exc.__context__, KeyboardInterrupt))
        if interrupted:
            raise KeyboardInterrupt from None  # main() starts its line on a fresh one
        if progress_bar:
            print(flush=True)
        raise


def _fit(cfg: DictConfig, run_dir: Path) -> TrainResult:
    from lightning_modules.classifier import LitClassifier
    from lwtakit.checkpoint import leftovers

    datamodule = build_datamodule(cfg)
    info = datamodule.info
    module = LitClassifier(cfg, num_classes=info.num_classes, in_chans=info.in_chans, mean=info.mean,
                           std=info.std, class_names=info.class_names)
    resume = _resume_point(cfg, run_dir, module)
    ckpt_path, resume_step = (resume[0], resume[1].step) if resume else (None, None)
    if resume:
        finished = _finished_or_noted(cfg, run_dir, resume)
        if finished is not None:  # nothing to do: no file of the run is written again
            return finished
    trainer = _build_trainer(cfg, run_dir, datamodule, resume_step)
    if trainer.is_global_zero:
        save_config(cfg, run_dir / "config.yaml")
        if cfg.ckpt_path == "last":  # the interrupted run's unfinished files, which this run writes again
            for path in leftovers(run_dir / "checkpoints", resume_step):
                path.unlink()
    status = "failed"
    try:
        metrics = _fit_and_test(cfg, run_dir, trainer, module, datamodule, ckpt_path)
        status = "success"
    finally:
        _close_loggers(trainer.loggers, status)
    return TrainResult(run_dir, run_dir / "checkpoints" / "last.ckpt", metrics, trainer, module)


def _finished_or_noted(cfg: DictConfig, run_dir: Path, resume: tuple[str, ResumePoint]) -> TrainResult | None:
    """A resume of a run that already finished: its result as it stands (nothing is written again). Otherwise None,
    after telling (rank 0, stderr) which config keys differ from the checkpoint's."""
    from lwtakit.resume import config_changes, finished_line

    ckpt_path, point = resume
    line = finished_line(run_dir, Path(ckpt_path), point.epochs, cfg.trainer.max_epochs)
    if line:
        metrics = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
        return TrainResult(run_dir, Path(ckpt_path), metrics, None, None, finished=line)
    note = config_changes(point.config, to_dict(cfg), ckpt_path)
    if note and launched_as_rank_zero():
        print(note, file=sys.stderr)
    return None


def _fit_and_test(cfg: DictConfig, run_dir: Path, trainer: pl.Trainer, module: LitClassifier,
                  datamodule: VisionDataModule, ckpt_path: str | None) -> dict[str, float]:
    """Fit, test and write ``results.json``: the metrics the fit ended with (kept in fit-metrics.json, so that a run
    killed during its final test resumes the test alone, callbacks/fit_metrics.py) and the test's."""
    import lightning.pytorch as pl

    from callbacks.dissection import DissectionCallback
    from callbacks.fit_metrics import FIT_METRICS_NAME, read_fit_metrics, scalar_metrics

    bar = cfg.trainer.enable_progress_bar
    with resuming_in(run_dir / "checkpoints") if ckpt_path else contextlib.nullcontext(), _lightning_call(bar):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = read_fit_metrics(run_dir) or scalar_metrics(trainer)
    if not cfg.trainer.fast_dev_run:
        # The test draws from a state fixed by the seed alone, so that the test of a resumed run (the fit restored,
        # not re-run) draws what an uninterrupted one did (issue 23).
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        with _lightning_call(bar):
            for row in trainer.test(module, datamodule=datamodule, verbose=False):
                metrics.update({k: float(v) for k, v in row.items()})
    for cb in trainer.callbacks:
        if isinstance(cb, DissectionCallback):
            metrics["dissection_seconds"] = cb.seconds
    if trainer.is_global_zero:
        with atomic_write(run_dir / "results.json") as fh:
            json.dump(metrics, fh, indent=2, sort_keys=True)
        (run_dir / FIT_METRICS_NAME).unlink(missing_ok=True)
    return metrics


def _close_loggers(loggers: list[Logger], status: str) -> None:
    """Finalize every logger and end the W&B run: Lightning's finalize leaves it open, and the next run in
    the same process would then silently write into it."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        try:
            logger.finalize(status)
        except OSError:
            if status == "success":
                raise
            # A failed run (a full disk, say) reports its own error, not the logger's that followed it.
        if isinstance(logger, WandbLogger):  # started eagerly in _start_wandb; a no-op on ranks > 0
            logger.experiment.finish(exit_code=0 if status == "success" else 1)


def build_parser() -> ArgumentParser:
    """train.py's arguments; its help lists the experiment configs, the config groups' choices and the top-level
    keys."""
    parser = ArgumentParser(
        description="Train an LWTA (or dense) vision network. Hydra composes the config: overrides are key=value "
                    "pairs of the config schema (lwtakit/config.py), e.g. trainer.max_epochs=3; GROUP=NAME picks a "
                    "file of configs/GROUP/, e.g. model=resnet18_dense. With -m, key=a,b sweeps: every point is "
                    "its own run folder under one sweep folder, e.g. -m model.U=1,2,4 seed=0,1,2.",
        epilog=config_epilog(),
    )
    parser.add_argument("--config", default="default",
                        help="experiment name in configs/experiment/ (listed below) or a YAML path")
    parser.add_argument("-m", "--multirun", action="store_true",
                        help="run every point of the key=a,b sweeps (Hydra multirun; launcher: hydra/launcher=NAME)")
    parser.add_argument("--cfg", choices=["job"],
                        help="print the resolved config (every point's with -m) and exit without training")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. trainer.max_epochs=3 model=resnet18_dense")
    return parser


def _print_configs(args) -> int:
    """``--cfg job``: the resolved config as config.yaml would hold it (for -m, each point's)."""
    from omegaconf import OmegaConf

    if not args.multirun:
        print(OmegaConf.to_yaml(load_config(args.config, args.overrides)), end="")
        return 0
    from lwtakit.sweep import plan_sweep

    plan = plan_sweep(args.config, args.overrides, str(Path(__file__).resolve().parent))
    for point in plan.points:
        print(f"# point: {','.join(point)}")
        print(OmegaConf.to_yaml(load_config(args.config, point)), end="")
    return 0


def _sweep(args) -> int:
    """``-m``: every point of the sweep in its own run folder (lwtakit/sweep.py); 1 if any point failed."""
    from lwtakit.sweep import plan_sweep, run_sweep, sweep_table

    plan = plan_sweep(args.config, args.overrides, str(Path(__file__).resolve().parent))
    print(f"sweep: {len(plan.points)} points in {plan.sweep_dir}", file=sys.stderr)
    records = run_sweep(plan)
    print("\n".join(sweep_table(plan, records)))
    return 1 if any(r["status"] == "failed" for r in records) else 0


def main(argv: list[str] | None = None, *, fast_matmul: bool = False) -> int:
    """Parse ``argv``, train (or sweep), print the run's summary; ``fast_matmul``: TF32 matmuls on CUDA (the
    command line's setting), applied after parsing so that --help needs no torch. Ctrl-C is one line and exit
    status 130."""
    try:
        return _main(argv, fast_matmul)
    except KeyboardInterrupt:
        # train() released the lock on the way out; every file is written whole or not at all (atomic writes).
        print("\nerror: interrupted (Ctrl-C); a run with a checkpoint resumes with ckpt_path=last", file=sys.stderr)
        return 130


def _main(argv: list[str] | None, fast_matmul: bool) -> int:
    # intermixed: options may come after overrides (train.py -m seed=0,1 --config mnist_lwta ...)
    args = build_parser().parse_intermixed_args(argv)
    quiet_third_party()
    if fast_matmul:
        import torch

        torch.set_float32_matmul_precision("high")
    try:
        if args.cfg:
            return _print_configs(args)
        if args.multirun:
            return _sweep(args)
        cfg = load_config(args.config, args.overrides)
        result = train(cfg)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except FloatingPointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        from lwtakit.checkpoint_io import disk_full, is_disk_full

        if not is_disk_full(exc):
            raise
        print(f"error: {disk_full(exc.filename or 'the run folder')}", file=sys.stderr)
        return 1
    if result.finished:
        print(result.finished)
    elif result.trainer.is_global_zero:
        print("\n".join(summary_lines(result.metrics, result.run_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main(fast_matmul=True))
