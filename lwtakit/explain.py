"""Active-neuron explanation of one input (DISCOVER, Panousis et al. NeurIPS 2023, sec. 4).

For one image, list the units of a layer that *won their LWTA block*, with their labels, sorted by
activation. Winners are read from the LWTA layer's own winner mask (``winner_mask()``), not from the
stored activations: a winner passes its raw pre-activation, which can be negative, while the losers are
exactly 0, so taking the argmax of the outputs (as the reference code did) picks a zero loser whenever the
winner is negative.

Conv layers compete at every spatial position; a unit's ``win_fraction`` is the fraction of positions it
won, and its block's active unit is the one that won most positions (ties: larger mean activation).
Token layers use the CLS token (or all tokens, ``tokens="mean"``). For a layer without a winner mask
(a dense ReLU/GELU) the active units are those with a positive (spatial-mean) activation.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .errors import UserError
from .recording import analysis_mode, capture, resolve_module


def active_neurons(model: nn.Module, image: torch.Tensor, layer: str, labels: Mapping[int, str] | None = None,
                   top: int | None = 20, *, tokens: str = "cls", device="cpu", seed: int = 0) -> list[dict]:
    """Rows ``unit, activation, label, win_fraction`` for the units of ``layer`` active on ``image``
    ([3, H, W] or [1, 3, H, W], in [0, 1]), sorted by activation (spatial mean for conv maps),
    largest first, at most ``top`` rows (None: all). ``labels`` maps unit -> label (missing: None).
    The forward pass runs in eval mode with ``seed`` (a stochastic LWTA samples its winners), and
    leaves the model's mode and the global RNG unchanged."""
    module = resolve_module(model, layer)
    image = torch.as_tensor(image)
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[0] != 1:
        raise UserError(f"explain takes one image [C, H, W], got shape {tuple(image.shape)}")
    if tokens not in ("cls", "mean"):
        raise UserError(f"tokens must be 'cls' or 'mean', got {tokens!r}")
    with analysis_mode(model, seed=seed), capture(model, [layer], reduce="none") as out:
        model(image.to(device))
        mask_fn = getattr(module, "winner_mask", None)
        mask = mask_fn() if callable(mask_fn) and getattr(module, "U", 2) != 1 else None
    y = out[layer][-1][0].float().cpu()  # drop the batch dim
    if mask is not None:
        mask = mask[0].cpu()
        if mask.shape != y.shape:
            mask = None
    # Reduce to per-unit activation and win fraction; units on dim 0 after reduction.
    if y.dim() == 3:  # [C, H, W]
        act, win = y.mean(dim=(1, 2)), (mask.float().mean(dim=(1, 2)) if mask is not None else None)
    elif y.dim() == 2:  # [T, D]
        if tokens == "cls":
            act, win = y[0], (mask[0].float() if mask is not None else None)
        else:
            act, win = y.mean(0), (mask.float().mean(0) if mask is not None else None)
    elif y.dim() == 1:
        act, win = y, (mask.float() if mask is not None else None)
    else:
        raise UserError(f"cannot explain layer {layer!r} with output shape {tuple(y.shape)}")
    C = act.numel()
    if win is None:
        active = act > 0
        win = active.float()
    else:
        U = int(getattr(module, "U", 1))
        if U < 1 or C % U:
            raise UserError(f"layer {layer!r}: block size U={U} does not divide its {C} units")
        # Per block, the unit that won most positions; ties broken by the larger activation.
        wb, ab = win.view(-1, U), act.view(-1, U)
        best = wb == wb.amax(1, keepdim=True)
        score = torch.where(best, ab, torch.full_like(ab, -float("inf")))
        pick = score.argmax(1)
        active = torch.zeros(C // U, U, dtype=torch.bool)
        active[torch.arange(C // U), pick] = wb.amax(1) > 0
        active = active.flatten()
    units = torch.nonzero(active).flatten()
    order = torch.argsort(act[units], descending=True, stable=True)
    rows = []
    for u in units[order].tolist():
        rows.append({"unit": u, "activation": float(act[u]), "label": (labels or {}).get(u),
                     "win_fraction": float(win[u])})
    return rows if top is None else rows[: int(top)]
