"""Network-level control of LWTA layers: find them, set their temperature or inference mode (for good, or for
a block with :func:`lwta_inference`), sum their KL terms, Monte-Carlo prediction (DISCOVER, Panousis et al. 2023).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from lwtakit.errors import UserError
from lwtakit.lwta.layer import LWTA, check_inference, check_temperature


def lwta_layers(model: nn.Module) -> dict[str, LWTA]:
    """All LWTA modules of ``model`` by qualified name, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LWTA)}


def set_temperature(model: nn.Module, T: float) -> None:
    """Set T of eq. (1) in every LWTA layer (a temperature schedule's step)."""
    check_temperature(float(T))
    for m in lwta_layers(model).values():
        m.temperature = float(T)


def set_inference(model: nn.Module, mode: str) -> None:
    """Set the eval-time mode (``"sample"`` | ``"argmax"``) of every LWTA layer for good; for a block of code,
    use :func:`lwta_inference`, which restores the previous modes."""
    check_inference(mode)
    for m in lwta_layers(model).values():
        m.inference = mode


@contextmanager
def lwta_inference(model: nn.Module, mode: str | None) -> Iterator[None]:
    """Run the block with every LWTA layer of ``model`` in inference ``mode`` (``"sample"`` | ``"argmax"``);
    on exit, also through an exception, each layer gets back the mode it had (layers may differ). ``None``
    leaves the modes as they are (an optional ``--inference``). Nested blocks restore in turn."""
    if mode is None:
        yield
        return
    check_inference(mode)
    previous = [(m, m.inference) for m in lwta_layers(model).values()]
    try:
        for m, _ in previous:
            m.inference = mode
        yield
    finally:
        for m, old in previous:
            m.inference = old


def total_kl(model: nn.Module) -> Tensor:
    """Sum over LWTA layers of their KL term (0 when none was computed)."""
    terms = [m.kl_divergence() for m in lwta_layers(model).values()]
    if not terms:
        return torch.zeros(())
    dev = next((t.device for t in terms if t.requires_grad), terms[0].device)
    return torch.stack([t.to(dev) for t in terms]).sum()


MC_AVERAGES = ("probs", "logits")


@torch.no_grad()
def mc_predict(model: nn.Module, x: Tensor, n: int, average: str = "probs") -> Tensor:
    """Monte-Carlo class probabilities from ``n`` stochastic passes (LWTA in "sample" mode, model in eval).

    ``average="probs"``: the mean of the passes' softmax, (1/n) sum_i softmax(z_i), the predictive mean;
    ``average="logits"``: the softmax of the mean logits, softmax((1/n) sum_i z_i), as DISCOVER (Panousis et al.
    2023) averages its stochastic evaluations. Restores the model's modes afterwards."""
    if int(n) < 1:
        raise UserError(f"mc_predict needs n >= 1 passes, got {n!r}")
    if average not in MC_AVERAGES:
        raise UserError(f"mc_predict averages {', '.join(MC_AVERAGES)}, not {average!r}")
    was_training = model.training
    try:
        model.eval()
        with lwta_inference(model, "sample"):
            total = None
            for _ in range(int(n)):
                z = model(x).float()
                z = torch.softmax(z, dim=-1) if average == "probs" else z
                total = z if total is None else total.add_(z)
            mean = total / int(n)
            return mean if average == "probs" else torch.softmax(mean, dim=-1)
    finally:
        model.train(was_training)
