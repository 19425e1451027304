"""Save the global RNG states in checkpoints so a resumed run continues the same random stream."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from lwtakit.rng import collect_rng_states, restore_rng_states


class RNGStateCheckpoint(pl.Callback):
    """Stores the RNG states of the moment a checkpoint is written and restores them when training
    resumes from it, after the sanity check, so the resumed run draws the same Gumbel noise and
    augmentations as an uninterrupted one (Lightning itself does not save them)."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": collect_rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("rng")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is not None:
            restore_rng_states(self._pending)
            self._pending = None
