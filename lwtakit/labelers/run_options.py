"""How an analysis streams the probe set through the network: one small options object for every pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Probe images per forward pass: the one default of every dissection pass (the schema's dissection.batch_size,
# analyze.py --batch-size, DissectOptions and RunOptions all read it).
BATCH_SIZE = 128


@dataclass(frozen=True)
class RunOptions:
    """``batch_size`` probe images per forward pass on ``device``; ``seed`` is the torch seed set before each
    pass (IoU: before each batch, with the batch's index, :func:`lwtakit.shard.batch_seed`), so a stochastic network
    (LWTA sampling) makes the same draws in every pass that must agree (the two passes of IoU, every k of an
    ablation curve); ``progress`` shows a progress bar."""

    batch_size: int = BATCH_SIZE
    device: Any = "cpu"
    seed: int = 0
    progress: bool = False
    collective: Any = None  # a lwtakit.shard.Collective: the processes share the passes, rank 0 gets the result
    passes: int = 1  # stochastic forward passes averaged per batch (the mc function of an LWTA network)
