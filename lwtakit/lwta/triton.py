"""U = 2 LWTA as two hand-written Triton kernels: the fused path of :mod:`lwtakit.lwta.kernels` on CUDA.

The arithmetic is :class:`lwtakit.lwta.kernels._LWTAPair`'s (module docstring of the kernels, eqs. 1-2 and the
U = 2 fast path): one uniform u per pair, ``z = (h0 - h1)/T - logit(u)``, unit 1 wins iff z < 0, and the
saved ``ks = +-s0 (1 - s0)/T`` whose sign is the winner. Why not ``torch.compile`` as on the CPU: on a GPU a
ResNet step is launch-bound, and a compiled region costs ~150 us of host time per call (guards, symbolic
shapes, wrapper), which made the step 1.9x ReLU's; a direct Triton launch costs a few us.

Uniforms come from Triton's Philox (``tl.rand``) keyed by a seed that torch's CUDA generator draws on the
device: ``torch.manual_seed`` and checkpointed CUDA RNG states reproduce training, and the layer can be
captured in a CUDA graph (the seed is not baked into the graph: every replay draws a new one).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

_BLOCK = 1024


@triton.jit
def _fwd_kernel(x_ptr, u_ptr, seed_ptr, out_ptr, loser_ptr, ks_ptr, n_pairs, Q, a, b,
                HAS_U: tl.constexpr, BLOCK: tl.constexpr):
    # pair i = (p*G + g)*Q + q of the [P, G, 2, Q] input: units at base and base + Q
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = i < n_pairs
    base = (i // Q) * (2 * Q) + i % Q
    h0 = tl.load(x_ptr + base, mask=valid, other=0.0).to(tl.float32)
    h1 = tl.load(x_ptr + base + Q, mask=valid, other=0.0).to(tl.float32)
    if HAS_U:
        u = tl.load(u_ptr + i, mask=valid, other=0.5).to(tl.float32)
    else:
        u = tl.rand(tl.load(seed_ptr), i)
    z = (h0 - h1) * a - tl.log(u / (1.0 - u))
    w = z < 0.0
    s = tl.sigmoid(z * b)
    k = tl.maximum(s * (1.0 - s) * (a * b), 5.960464477539063e-08)  # 2**-24: keeps its sign in float16
    tl.store(out_ptr + base, tl.where(w, 0.0, h0), mask=valid)
    tl.store(out_ptr + base + Q, tl.where(w, h1, 0.0), mask=valid)
    tl.store(loser_ptr + i, tl.where(w, h0, h1), mask=valid)
    tl.store(ks_ptr + i, tl.where(w, -k, k), mask=valid)


@triton.jit
def _bwd_kernel(g_ptr, out_ptr, loser_ptr, ks_ptr, grad_ptr, n_pairs, Q, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = i < n_pairs
    base = (i // Q) * (2 * Q) + i % Q
    g0 = tl.load(g_ptr + base, mask=valid, other=0.0).to(tl.float32)
    g1 = tl.load(g_ptr + base + Q, mask=valid, other=0.0).to(tl.float32)
    hw = tl.load(out_ptr + base, mask=valid, other=0.0).to(tl.float32) + \
        tl.load(out_ptr + base + Q, mask=valid, other=0.0).to(tl.float32)  # losers are exactly 0
    loser = tl.load(loser_ptr + i, mask=valid, other=0.0).to(tl.float32)
    ks = tl.load(ks_ptr + i, mask=valid, other=0.0).to(tl.float32)
    w = ks < 0.0
    # eq. (2): k q = ks (g_w h_w - g_l h_l); grad0 = g0 (1 - w) + k q, grad1 = g1 w - k q
    kq = (hw * tl.where(w, g1, g0) - tl.where(w, g0, g1) * loser) * ks
    tl.store(grad_ptr + base, tl.where(w, 0.0, g0) + kq, mask=valid)
    tl.store(grad_ptr + base + Q, tl.where(w, g1, 0.0) - kq, mask=valid)


def _grid(n_pairs: int) -> tuple[int]:
    return (triton.cdiv(n_pairs, _BLOCK),)


def pair_fwd(x: Tensor, scales: tuple[float, float], save_dtype: torch.dtype, u: Tensor | None):
    """Forward of eq. (1) on a contiguous CUDA ``x`` [P, G, 2, Q] with ``scales = (a, b)``: (out, loser, ks)
    as ``_LWTAPair`` saves them. ``u`` [P, G, Q]: given uniforms (tests), else drawn in the kernel."""
    P, G, _, Q = x.shape
    n = P * G * Q
    out = torch.empty_like(x)
    loser = torch.empty((P, G, Q), dtype=save_dtype, device=x.device)
    ks = torch.empty((P, G, Q), dtype=save_dtype, device=x.device)
    has_u = u is not None
    # the pointer the kernel does not read is given x
    seed = x if has_u else torch.randint(0, 2**31 - 1, (1,), device=x.device)
    a, b = scales
    _fwd_kernel[_grid(n)](x, u.contiguous() if has_u else x, seed, out, loser, ks, n, Q, a, b,
                          HAS_U=has_u, BLOCK=_BLOCK)
    return out, loser, ks


def pair_bwd(g: Tensor, out: Tensor, loser: Tensor, ks: Tensor) -> Tensor:
    """Gradient of eq. (2) from what :func:`pair_fwd` saved; ``g`` contiguous like ``out``."""
    grad = torch.empty_like(g)
    n = ks.numel()
    _bwd_kernel[_grid(n)](g, out, loser, ks, grad, n, out.shape[3], BLOCK=_BLOCK)
    return grad
