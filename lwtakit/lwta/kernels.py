"""Autograd Functions of the stochastic LWTA competition (DISCOVER, Panousis et al., NeurIPS 2023): the
arithmetic behind :class:`lwtakit.lwta.LWTA` (:mod:`lwtakit.lwta.layer`), for U = 2 and any U.

Inputs are viewed as ``[P, G, U, Q]``: P = leading dims, G = blocks of U competing units, Q = trailing dims.

Sampling (Gumbel-max / Gumbel-softmax, Jang et al. ICLR 2017 eqs. 1-2, as used by DISCOVER's
stochastic LWTA): with standard Gumbel noise g and two scales a, b with a b = 1/T,
    winner = argmax_u (a h_u + g_u),    soft = softmax(b (a h + g))          (1)
``temperature_on="logits"`` (default): a = 1/T, b = 1, so the winner is drawn from ``softmax(h / T)``
and the temperature sharpens the competition (T -> 0: deterministic argmax), and a temperature schedule
changes what is sampled. ``temperature_on="relaxation"``: a = 1, b = 1/T, DISCOVER's code
(``F.gumbel_softmax(h, tau=T, hard=True)``): the winner is drawn from ``softmax(h)`` for every T, which
only shapes the gradient through softmax((h + g)/T). At T=1 both are the same.

Forward value ``y = h * onehot(winner)``; gradient straight-through the relaxation (1):
``y = h * (hard + soft - soft.detach())``, hence for one block, in both cases
    dL/dh_j = g_j hard_j + soft_j (g_j h_j - sum_i g_i h_i soft_i) / T                      (2)
(the Jacobian of softmax(b (a h + g)) w.r.t. h is (diag(s) - s s^T) a b).
``_LWTAPair`` (U = 2, eager), ``_LWTAPairFused`` (U = 2, the same arithmetic in one pass each way:
``torch.compile`` on the CPU, hand-written Triton kernels on CUDA) and ``_LWTABlock`` (any U) implement
(1)-(2) as autograd Functions, without the reshape + one-hot + multiply graph of the straightforward
formulation.

U = 2 fast path: softmax over two units depends on their difference only, and the difference of two
Gumbels is Logistic = logit(Uniform), so with ONE uniform u per block
    z = a (h0 - h1) - logit(u),   unit 1 wins iff z < 0,   soft_0 = sigmoid(b z),
which is exactly the Gumbel-softmax of (1) (P(unit 1 wins) = sigmoid(a (h1 - h0))), and eq. (2)
reduces per block to grad0 = g0 hard0 + k q, grad1 = g1 hard1 - k q, q = g0 h0 - g1 h1,
k = soft_0 (1 - soft_0) / T.

The autograd Functions below take ``scales = (a, b)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _pair_logits(h0: Tensor, h1: Tensor, a: float, u: Tensor | None) -> Tensor:
    """z = a (h0 - h1) - logit(u): the Gumbel-perturbed logit difference of eq. (1) for a pair (a
    difference of two Gumbels is Logistic = logit(Uniform)). Unit 1 wins iff signbit(z)."""
    z = torch.sub(h0, h1)
    if a != 1.0:
        z.mul_(a)
    if u is None:
        u = torch.rand_like(z)
    return z.sub_(torch.logit(u))


class _LWTAPair(torch.autograd.Function):
    """U = 2 LWTA (eqs. 1-2), written with float masks and fused multiply-adds (``where`` on bool
    masks is several times slower than a multiply on CPU).

    Saved for backward: the output (also saved by the next layer, so no extra memory), the loser's
    pre-activation and ``ks = +-k``, k = s0 (1 - s0) / T with s0 = sigmoid(b z) the relaxed probability
    of unit 0, negative iff unit 1 won; so no separate mask is kept. k is floored at 2**-24 (the
    smallest float16 subnormal) so that its sign survives float16. Both are stored in ``save_dtype``
    (float16 halves their memory; they only enter the relaxed part of eq. 2)."""

    @staticmethod
    def forward(ctx, x: Tensor, scales: tuple[float, float], save_dtype, u: Tensor | None):
        a, b = scales
        h0, h1 = x[:, :, 0], x[:, :, 1]
        z = _pair_logits(h0, h1, a, u)
        wf = torch.lt(z, 0, out=torch.empty_like(z))  # 1.0 where unit 1 wins
        out = torch.empty_like(x)
        torch.addcmul(h0, h0, wf, value=-1, out=out[:, :, 0])  # h0 (1 - w)
        torch.mul(h1, wf, out=out[:, :, 1])
        if not ctx.needs_input_grad[0]:
            wf.neg_()  # like ks: negative iff unit 1 won
            ctx.mark_non_differentiable(wf)
            return out, wf
        s = (z.mul_(b) if b != 1.0 else z).sigmoid_()
        k = torch.addcmul(s, s, s, value=-1)  # s (1 - s)
        if a * b != 1.0:
            k.mul_(a * b)
        ks = k.clamp_min_(2.0**-24).addcmul_(k, wf, value=-2).to(save_dtype)  # k (1 - 2 w)
        loser = torch.lerp(h1, h0, wf).to(save_dtype)
        ctx.save_for_backward(out, loser, ks)
        ctx.mark_non_differentiable(ks)
        return out, ks

    @staticmethod
    def backward(ctx, g: Tensor, _gw):
        out, loser, ks = ctx.saved_tensors
        g = g.contiguous()
        g0, g1 = g[:, :, 0], g[:, :, 1]
        wf = torch.lt(ks, 0, out=torch.empty(ks.shape, dtype=g.dtype, device=g.device))
        hw = torch.add(out[:, :, 0], out[:, :, 1])  # losers are exactly 0
        gw = torch.lerp(g0, g1, wf)
        gl = torch.lerp(g1, g0, wf)
        # eq. (2): q = g0 h0 - g1 h1 = +-(g_w h_w - g_l h_l), so k q = ks (g_w h_w - g_l h_l);
        # grad0 = g0 (1 - w) + k q, grad1 = g1 w - k q.
        kq = hw.mul_(gw).addcmul_(gl, loser.to(g.dtype), value=-1).mul_(ks.to(g.dtype))
        grad = torch.empty_like(g)
        torch.addcmul(g0, g0, wf, value=-1, out=grad[:, :, 0]).add_(kq)
        torch.mul(g1, wf, out=grad[:, :, 1]).sub_(kq)
        return grad, None, None, None


# Fused kernels (torch.compile / Inductor): the same arithmetic as _LWTAPair's eager code in one
# pass over memory each way. Compiled lazily on first use with dynamic shapes; if compilation is
# impossible we warn once and stay eager.
_M32 = 0xFFFFFFFF


def _mul32(x: Tensor, c: int) -> Tensor:
    """x c mod 2**32 for 32-bit x held in int64, without int64 overflow: c's bit 31 is added as a shift of
    x's lowest bit (the only bit of x that survives a shift by 31 mod 2**32)."""
    return (x * (c & 0x7FFFFFFF) + ((x & 1) << 31) * (c >> 31)) & _M32


def _mix32(x: Tensor) -> Tensor:
    """The "lowbias32" integer hash (C. Wellons, hash-prospector, 2018: xor-shift 16, multiply, xor-shift
    15, multiply, xor-shift 16): a bijection of 32-bit integers whose output bits flip ~independently when
    any input bit flips."""
    x = _mul32(x ^ (x >> 16), 0x7FEB352D)
    x = _mul32(x ^ (x >> 15), 0x846CA68B)
    return x ^ (x >> 16)


def _hash_uniform(seed: Tensor, like: Tensor) -> Tensor:
    """Counter-based uniforms of ``like``'s shape, u_i = (m_i + 1/2) / 2**23 in [2**-24, 1 - 2**-24] with
    m_i the top 23 bits of mix32(mix32(i ^ s0) ^ (s1 + i // 2**32)) (``seed = (s0, s1)``, drawn from torch's
    generator, so torch.manual_seed reproduces them). Why not ``torch.rand`` inside the compiled graph:
    Inductor's CPU code draws it with one scalar Philox call per element, which took ~2/3 of the fused
    forward; the hash vectorises. Neither 0 nor 1 is reachable, so no logit or ratio below is infinite."""
    i = torch.arange(like.numel(), dtype=torch.int64, device=like.device).view(like.shape)
    m = _mix32(_mix32((i & _M32) ^ seed[0]) ^ ((seed[1] + (i >> 32)) & _M32)) >> 9
    return (m.to(like.dtype) + 0.5) * 2.0**-23


def _pair_fwd_math(x: Tensor, u: Tensor, inv_t: Tensor, save_dtype: torch.dtype, on_logits: bool):
    # (a, b) = (1/T, 1) or (1, 1/T); the flag specialises the compiled graph, so neither has a dead multiply
    h0, h1 = x[:, :, 0], x[:, :, 1]
    d = h0 - h1
    if on_logits:
        # b = 1: with v = 1 - u and r = u exp(-a d), z = a d - logit(u) < 0 iff v < r, and
        # sigmoid(z) = v / (v + r): one exp instead of a log and an exp (the clamp keeps r finite and
        # changes no decision: exp(80) u > 1 for every u the sampler draws).
        r = u * torch.exp(torch.clamp(d * -inv_t, max=80.0))
        v = 1 - u
        w = (v < r).to(x.dtype)
        s = v / (v + r)
    else:
        z = d - torch.logit(u)
        w = (z < 0).to(x.dtype)
        s = torch.sigmoid(z * inv_t)
    out = torch.stack((h0 * (1 - w), h1 * w), dim=2)
    ks = torch.clamp_min(s * (1 - s) * inv_t, 2.0**-24) * (1 - 2 * w)
    loser = h1 + w * d
    return out, loser.to(save_dtype), ks.to(save_dtype)


def _pair_fwd_rand_math(x: Tensor, seed: Tensor, inv_t: Tensor, save_dtype: torch.dtype, on_logits: bool):
    return _pair_fwd_math(x, _hash_uniform(seed, x[:, :, 0]), inv_t, save_dtype, on_logits)


def _pair_bwd_math(g: Tensor, out: Tensor, loser: Tensor, ks: Tensor):
    g0, g1 = g[:, :, 0], g[:, :, 1]
    w = (ks < 0).to(g.dtype)
    hw = out[:, :, 0] + out[:, :, 1]
    gw = g0 + w * (g1 - g0)
    gl = g1 + w * (g0 - g1)
    kq = (hw * gw - gl * loser.to(g.dtype)) * ks.to(g.dtype)
    return torch.stack((g0 * (1 - w) + kq, g1 * w - kq), dim=2)


_KERNELS: dict[str, object] = {}
_FUSE_MIN_NUMEL = 1 << 18  # below this the compiled call's overhead is not worth it
_FUSE_BROKEN = False


def _kernel(name: str):
    """The fused kernel ``name`` (fwd, fwd_rand, bwd), compiled lazily with dynamic shapes."""
    if name not in _KERNELS:
        fn = {"fwd": _pair_fwd_math, "fwd_rand": _pair_fwd_rand_math, "bwd": _pair_bwd_math}[name]
        from lwtakit.fast_path import compile_per_isa

        _KERNELS[name] = compile_per_isa(fn, dynamic=True)
    return _KERNELS[name]


def _triton():
    """``lwtakit.lwta.triton`` (hand-written kernels for CUDA), or None where Triton is not installed."""
    if "triton" not in _KERNELS:
        try:
            from lwtakit.lwta import triton as triton_kernels
        except ImportError:
            triton_kernels = None
        _KERNELS["triton"] = triton_kernels
    return _KERNELS["triton"]


def _fused_call(fn, *args):
    """Run a fused kernel; on a compilation failure warn once and return None (caller goes eager)."""
    global _FUSE_BROKEN
    if _FUSE_BROKEN:
        return None
    try:
        return fn(*args)
    except Exception as exc:  # no C++ compiler, unsupported backend or GPU, ...
        _FUSE_BROKEN = True
        import warnings

        warnings.warn(f"LWTA: compiling the fused kernel failed ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0] if str(exc) else ''}); using the slower eager ops", stacklevel=2)
        return None


class _LWTAPairFused(torch.autograd.Function):
    """_LWTAPair with fused kernels (one pass over memory each way); same saved tensors and eqs. (1)-(2).
    CUDA: hand-written Triton kernels (:mod:`lwtakit.lwta.triton`); elsewhere: ``torch.compile``."""

    @staticmethod
    def forward(ctx, x: Tensor, scales: tuple[float, float], save_dtype, u: Tensor | None):
        triton_kernels = _triton() if x.is_cuda else None
        if triton_kernels is not None:
            res = _fused_call(triton_kernels.pair_fwd, x, scales, save_dtype, u)
        else:
            a, b = scales
            it = torch.full((), a * b, dtype=x.dtype, device=x.device)
            if u is not None:
                res = _fused_call(_kernel("fwd"), x, u, it, save_dtype, b == 1.0)
            else:
                seed = torch.randint(0, 2**31, (2,), device=x.device)  # from torch's generator: reproducible
                res = _fused_call(_kernel("fwd_rand"), x, seed, it, save_dtype, b == 1.0)
        if res is None:
            ctx.eager = True
            return _LWTAPair.forward(ctx, x, scales, save_dtype, u)
        ctx.eager = False
        out, loser, ks = res
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(out, loser, ks)
        ctx.mark_non_differentiable(ks)
        return out, ks

    @staticmethod
    def backward(ctx, g: Tensor, _gw):
        if not ctx.eager:
            out, loser, ks = ctx.saved_tensors
            triton_kernels = _triton() if g.is_cuda else None
            bwd = triton_kernels.pair_bwd if triton_kernels is not None else _kernel("bwd")
            res = _fused_call(bwd, g.contiguous(), out, loser, ks)
            if res is not None:
                return res, None, None, None
        return _LWTAPair.backward(ctx, g, _gw)


class _LWTAPairTraced(torch.autograd.Function):
    """U = 2 LWTA (eqs. 1-2) inside a network under ``torch.compile`` (``trainer.compile``): the fused kernels'
    arithmetic as plain tensor ops, with no nested compiled call, Triton launch or Python fallback, so Dynamo
    traces it into the network's graph and Inductor fuses it with the neighbouring layers (and CUDA graphs
    capture it). Same saved tensors and uniforms (:func:`_hash_uniform`) as :class:`_LWTAPairFused`."""

    @staticmethod
    def forward(ctx, x: Tensor, scales: tuple[float, float], save_dtype, u: Tensor | None):
        a, b = scales
        it = torch.full((), a * b, dtype=x.dtype, device=x.device)
        if u is None:
            u = _hash_uniform(torch.randint(0, 2**31, (2,), device=x.device), x[:, :, 0])
        out, loser, ks = _pair_fwd_math(x, u, it, save_dtype, b == 1.0)
        ctx.save_for_backward(out, loser, ks)
        ctx.mark_non_differentiable(ks)
        return out, ks

    @staticmethod
    def backward(ctx, g: Tensor, _gw):
        return _pair_bwd_math(g.contiguous(), *ctx.saved_tensors), None, None, None


class _LWTABlock(torch.autograd.Function):
    """General-U LWTA (eqs. 1-2) with Gumbel noise g; saves h and the relaxed soft probabilities."""

    @staticmethod
    def forward(ctx, x: Tensor, scales: tuple[float, float], gumbel: Tensor | None):
        a, b = scales
        if gumbel is None:
            # Gumbel = -log(Exp(1)): the exponential race, one log per element fewer than -log(-log u).
            gumbel = torch.empty_like(x).exponential_().log_().neg_()
        z = torch.mul(x, a).add_(gumbel)
        idx = z.argmax(dim=2, keepdim=True)
        soft = torch.softmax(z.mul_(b) if b != 1.0 else z, dim=2)
        hard = torch.zeros_like(x).scatter_(2, idx, 1.0)
        out = x * hard
        ctx.save_for_backward(x, hard, soft)
        ctx.inv_t = a * b
        ctx.mark_non_differentiable(idx)
        return out, idx

    @staticmethod
    def backward(ctx, g: Tensor, _gi):
        x, hard, soft = ctx.saved_tensors
        gh = g * x
        dot = (gh * soft).sum(dim=2, keepdim=True)
        grad = g * hard + soft * (gh - dot) * ctx.inv_t
        return grad, None, None


def _argmax_competition(xv: Tensor) -> tuple[Tensor, Tensor]:
    """Deterministic competition on ``xv [P, G, U, Q]``: the largest unit of each block wins (the first on
    ties). Returns the masked values and the winner index [P, G, Q]. An argmax or scatter over the strided
    U dim is ~10x slower on CPU than these element-wise forms."""
    if xv.shape[2] == 2:
        second = xv[:, :, 1] > xv[:, :, 0]
        out = torch.stack((xv[:, :, 0] * ~second, xv[:, :, 1] * second), dim=2)
        return out, second
    idx = xv.movedim(2, 3).argmax(dim=3)  # U innermost: a contiguous reduction
    mask = F.one_hot(idx, xv.shape[2]).movedim(3, 2).to(xv.dtype)
    return xv * mask, idx
