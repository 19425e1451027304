"""The float precision an analysis runs a network in.

Float32 forward passes are not reproducible across machines: a convolution or matrix product sums in an order
that depends on the instruction set (AVX2, AVX-512, NEON) and the thread count, so activations differ in their
last bits (~1e-7 relative). Most of that vanishes in a label, but not all of it: an LWTA block whose two logits are
that close can pick the other winner, and two images whose activations are that close can swap ranks, which moves
a rank score (AUC) by a whole step of ``1 / (n_pos * n_neg)``. In float64 the same differences are ~1e-16, and a
winner or a rank decided that closely becomes vanishingly rare, so ``--precision 64`` gives the same labels and
figures on any CPU (to ~1e-12), at the cost of slower forward passes. Recorded activations stay float32: rounding
a float64 to float32 is exact IEEE arithmetic, the same everywhere.
"""

from __future__ import annotations

import torch
from torch import nn

from lwtakit.errors import UserError

PRECISIONS = {32: torch.float32, 64: torch.float64}

__all__ = ["PRECISIONS", "at_precision", "precision_of", "precision_text", "widened"]


def _cast_inputs(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.to(torch.float64) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def at_precision(model: nn.Module, bits: int) -> nn.Module:
    """``model`` itself, its parameters and buffers in ``bits``-bit floats; at 64 its floating inputs are cast
    to float64 on the way in (a forward pre-hook on ``model``), so callers feed images as they always do."""
    if bits not in PRECISIONS:
        raise UserError(f"precision must be 32 or 64 (bits of the network's floats), got {bits}")
    if bits == 32:
        return model
    model.to(torch.float64)
    model.register_forward_pre_hook(_cast_inputs)
    return model


def precision_of(model: nn.Module) -> int:
    """Bits of ``model``'s floating parameters (32 when it has none)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return torch.finfo(dtype).bits


def precision_text(bits: int) -> str:
    """How a report says which floats the networks ran in."""
    if bits == 64:
        return "float64 (the same figures on any CPU)"
    return f"float{bits} (the last digits may differ on another CPU; --precision 64 fixes them)"


def widened(x: torch.Tensor) -> torch.Tensor:
    """``x`` in at least float32: half-precision values (an AMP forward, a float16 CLIP) as float32, where sums and
    comparisons are made; float32 and float64 (``--precision 64``) as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
