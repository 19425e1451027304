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

:func:`explain` also returns the class probabilities of the same forward pass and how many units were active,
:func:`default_layer` picks the layer (the last LWTA layer; in a dense network the last activation), and
:func:`read_unit_labels` takes a layer's labels from a labels.csv: of a training run (its latest dissection) or
of ``analyze.py dissect`` / ``label``, saying where they came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import UserError
from .lwta import LWTA
from .recording import analysis_mode, capture, resolve_module


@dataclass
class Explanation:
    """One image through the network: ``rows`` (at most ``top``) of the active units of ``layer``, sorted by
    activation; ``active`` of its ``units`` units were active in all; ``probs``: the class probabilities of the same
    forward pass (softmax of the network's output; None when the output is not one logit vector)."""

    layer: str
    rows: list[dict]
    active: int
    units: int
    probs: torch.Tensor | None


def default_layer(model: nn.Module) -> str:
    """The layer to explain when none is named: the last LWTA layer, else (a dense network) the last ReLU/GELU."""
    lwta = [n for n, m in model.named_modules() if isinstance(m, LWTA)]
    acts = lwta or [n for n, m in model.named_modules() if isinstance(m, nn.ReLU | nn.GELU)]
    if not acts:
        raise UserError(f"{type(model).__name__} has no LWTA, ReLU or GELU layer to explain; name one with --layer")
    return acts[-1]


def active_neurons(model: nn.Module, image: torch.Tensor, layer: str, labels: Mapping[int, str] | None = None,
                   top: int | None = 20, *, tokens: str = "cls", device="cpu", seed: int = 0) -> list[dict]:
    """Rows ``unit, activation, label, win_fraction`` for the units of ``layer`` active on ``image``
    ([3, H, W] or [1, 3, H, W], in [0, 1]), sorted by activation (spatial mean for conv maps),
    largest first, at most ``top`` rows (None: all). ``labels`` maps unit -> label (missing: None).
    The forward pass runs in eval mode with ``seed`` (a stochastic LWTA samples its winners), and
    leaves the model's mode and the global RNG unchanged."""
    return explain(model, image, layer, labels, top, tokens=tokens, device=device, seed=seed).rows


def explain(model: nn.Module, image: torch.Tensor, layer: str, labels: Mapping[int, str] | None = None,
            top: int | None = 20, *, tokens: str = "cls", device="cpu", seed: int = 0) -> Explanation:
    """:func:`active_neurons`' rows, with the count of active units and the class probabilities of the pass."""
    module = resolve_module(model, layer)
    image = torch.as_tensor(image)
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[0] != 1:
        raise UserError(f"explain takes one image [C, H, W], got shape {tuple(image.shape)}")
    if tokens not in ("cls", "mean"):
        raise UserError(f"tokens must be 'cls' or 'mean', got {tokens!r}")
    with analysis_mode(model, seed=seed), capture(model, [layer], reduce="none") as out:
        output = model(image.to(device))
        mask_fn = getattr(module, "winner_mask", None)
        mask = mask_fn() if callable(mask_fn) and getattr(module, "U", 2) != 1 else None
    act, win = _per_unit(out[layer][-1][0].float().cpu(), mask, tokens, layer)
    active = _active(act, win, int(getattr(module, "U", 1)), layer)
    win = active.float() if win is None else win  # a dense unit "wins" where it is active
    units = torch.nonzero(active).flatten()
    order = torch.argsort(act[units], descending=True, stable=True)
    rows = [{"unit": u, "activation": float(act[u]), "label": (labels or {}).get(u), "win_fraction": float(win[u])}
            for u in units[order].tolist()]
    probs = None
    if isinstance(output, torch.Tensor) and output.dim() == 2:
        probs = torch.softmax(output.float(), dim=1)[0].cpu()
    return Explanation(layer, rows if top is None else rows[: int(top)], len(rows), act.numel(), probs)


def _per_unit(y: torch.Tensor, mask: torch.Tensor | None, tokens: str, layer: str):
    """(activation, win fraction or None) per unit of one image's layer output ``y`` (batch dim dropped)."""
    if mask is not None:
        mask = mask[0].cpu()
        if mask.shape != y.shape:
            mask = None
    if y.dim() == 3:  # [C, H, W]
        return y.mean(dim=(1, 2)), (mask.float().mean(dim=(1, 2)) if mask is not None else None)
    if y.dim() == 2:  # [T, D]
        if tokens == "cls":
            return y[0], (mask[0].float() if mask is not None else None)
        return y.mean(0), (mask.float().mean(0) if mask is not None else None)
    if y.dim() == 1:
        return y, (mask.float() if mask is not None else None)
    raise UserError(f"cannot explain layer {layer!r} with output shape {tuple(y.shape)}")


def _active(act: torch.Tensor, win: torch.Tensor | None, U: int, layer: str) -> torch.Tensor:
    """Which units are active: per LWTA block the unit that won most positions (ties: the larger activation); a
    layer without winners (``win`` None): the units with a positive activation."""
    C = act.numel()
    if win is None:
        return act > 0
    if U < 1 or C % U:
        raise UserError(f"layer {layer!r}: block size U={U} does not divide its {C} units")
    wb, ab = win.view(-1, U), act.view(-1, U)
    best = wb == wb.amax(1, keepdim=True)
    score = torch.where(best, ab, torch.full_like(ab, -float("inf")))
    pick = score.argmax(1)
    active = torch.zeros(C // U, U, dtype=torch.bool)
    active[torch.arange(C // U), pick] = wb.amax(1) > 0
    return active.flatten()


@dataclass
class UnitLabels:
    """A layer's labels by unit, and ``origin``: which labels they are and where they came from."""

    labels: dict[int, str]
    origin: str


def read_unit_labels(path: str | Path, layer: str, layer_given: bool) -> UnitLabels:
    """The labels of ``layer`` in the labels.csv ``path`` (or in the folder ``path``: a run's or a report's).
    A file with a ``layer`` column (``analyze.py dissect``, a training run) gives that layer's rows; a run's file
    holds every dissection of the run, and the latest, by (epoch, step), is taken. A file without one
    (``analyze.py label``) holds one layer's rows, taken as ``layer`` only when the user named it (``layer_given``).
    When several methods labelled the layer, the first in the file is taken and the others are named."""
    from .drift import dissection_key
    from .io import read_table

    path = Path(path) / "labels.csv" if Path(path).is_dir() else Path(path)
    rows = read_table(path, "labels file", required=("unit", "label"), integers=("unit",),
                      optional_integers=("epoch", "step"))
    if rows and "layer" not in rows[0]:
        if not layer_given:
            raise UserError(f"labels file {path} has no layer column, so which layer its units belong to is "
                            "ambiguous; name it with --layer")
        rows = [{**r, "layer": layer} for r in rows]
    mine = [r for r in rows if r["layer"] == layer]
    if not mine:
        layers = ", ".join(sorted({r["layer"] for r in rows})) or "none"
        return UnitLabels({}, f"none: {path} has no labels of layer {layer} (its layers: {layers})")
    when = ""
    if mine[0].get("epoch"):
        latest = max(dissection_key(r) for r in mine)
        mine = [r for r in mine if dissection_key(r) == latest]
        when = f" from the run's latest dissection (epoch {latest[0]}" + (f", step {latest[1]})" if latest[1] >= 0
                                                                          else ")")
    methods = list(dict.fromkeys(r.get("method") or "" for r in mine))
    mine = [r for r in mine if (r.get("method") or "") == methods[0]]
    others = f"; the file also has {', '.join(methods[1:])} labels" if len(methods) > 1 else ""
    what = f"{methods[0]} labels" if methods[0] else "labels"
    return UnitLabels({int(r["unit"]): r["label"] for r in mine}, f"{what} of {layer}{when} in {path}{others}")
