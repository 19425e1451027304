"""The global random number generators: capture and restore their states, and :func:`fork_rng`, a block whose
random draws leave the outside stream untouched (an analysis during training, a seeded evaluation)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


def _include_cuda(cuda: str) -> bool:
    if cuda not in ("available", "initialized"):
        raise ValueError(f"cuda must be 'available' or 'initialized', got {cuda!r}")
    return torch.cuda.is_available() and (cuda == "available" or torch.cuda.is_initialized())


def collect_rng_states(cuda: str = "available") -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python RNG states as tensors and plain Python values.

    Plain types only, so a checkpoint holding them still loads with ``torch.load(weights_only=True)``.
    ``cuda``: ``"available"`` includes every CUDA device's state whenever CUDA exists (initialising it);
    ``"initialized"`` only once CUDA is in use (a process that never touched the GPU drew nothing from it).
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, inner, gauss = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": [int(version), list(inner), gauss],
    }
    if _include_cuda(cuda):
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`collect_rng_states`."""
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, inner, gauss = states["python"]
    random.setstate((version, tuple(inner), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@contextmanager
def fork_rng(seed: int | None = None) -> Iterator[None]:
    """Run the block on a fork of the global RNGs: python ``random``, numpy, torch CPU and torch CUDA (once
    initialised) get back their states on exit, also through an exception, so the code after the block draws
    what it would have drawn without it. ``seed``: ``torch.manual_seed(seed)`` at entry (torch's CPU and CUDA
    generators, as the analyses seed them; python and numpy keep their streams inside the block)."""
    states = collect_rng_states(cuda="initialized")
    try:
        if seed is not None:
            torch.manual_seed(seed)
        yield
    finally:
        restore_rng_states(states)
