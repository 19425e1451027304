"""The run's checkpoints: the latest epoch's file, and ``last.ckpt`` (the link a resume reads) moved to it only once
everything that epoch logs is on disk.

Lightning's ``ModelCheckpoint(save_last="link", save_top_k=1)`` saves at the end of validation, then removes the
previous file and re-creates the link (remove, then create). A kill between those steps leaves ``last.ckpt``
dangling, and the epoch's training and sparsity metrics are logged after the save, so a run killed soon after it
resumed without them. :class:`RunCheckpoint` keeps Lightning's saving but defers the two steps that can lose
data: the link is replaced (by rename, :func:`~lwtakit.checkpoint_io.replace_link`) when the next epoch starts or
training ends, after the loggers have flushed the epoch's rows, and the previous file is removed only after that.
A kill at any point therefore resumes either from the previous epoch (whose rows are all on disk, the later ones
being dropped and logged again) or from the new one (whose rows are all on disk).
"""

from __future__ import annotations

import contextlib
import os

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from lwtakit.checkpoint_io import replace_link


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` of one run folder: the latest epoch's checkpoint, linked as ``last.ckpt``."""

    def __init__(self, dirpath: str) -> None:
        # No "-v1" names: a resumed run writes its epochs' checkpoints and last.ckpt again under the same names.
        super().__init__(dirpath=dirpath, save_last="link", save_top_k=1, enable_version_counter=False)
        self._pending_link: tuple[str, str] | None = None  # (checkpoint, link) saved but not yet linked
        self._pending_removal: list[str] = []  # earlier checkpoints, removed once the link has moved on

    # Lightning calls these two from _save_last_checkpoint / _save_none_monitor_checkpoint.
    def _link_checkpoint(self, trainer: pl.Trainer, filepath: str, linkpath: str) -> None:  # type: ignore[override]
        self._pending_link = (filepath, linkpath)

    def _remove_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        self._pending_removal.append(filepath)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._commit(trainer)  # the previous epoch's rows were logged at its very end, after its checkpoint

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._commit(trainer)

    def _commit(self, trainer: pl.Trainer) -> None:
        """Flush the loggers, then move ``last.ckpt`` to the newest checkpoint and remove the ones it replaced."""
        if self._pending_link is None:
            return
        target, link = self._pending_link
        _link_and_remove(trainer, target, link, self._pending_removal)
        self._pending_link, self._pending_removal = None, []
        trainer.strategy.barrier()


@rank_zero_only
def _link_and_remove(trainer: pl.Trainer, target: str, link: str, removals: list[str]) -> None:
    """Flush the loggers, point ``link`` at ``target`` and remove the checkpoints in ``removals`` but ``target``."""
    for logger in trainer.loggers:
        logger.save()
    replace_link(target, link)
    for path in removals:
        if os.path.abspath(path) != os.path.abspath(target):
            with contextlib.suppress(FileNotFoundError):
                trainer.strategy.checkpoint_io.remove_checkpoint(path)
