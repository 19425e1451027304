"""Stochastic local winner-takes-all (LWTA) activation (DISCOVER, Panousis et al., NeurIPS 2023).

Units are grouped in blocks of ``U`` consecutive units along the competing dimension (conv maps
``[B, C, H, W]``: ``U`` consecutive channels at every position; tokens / linear ``[..., D]``: the last
dimension). The competition logits are the pre-activations ``h`` themselves. One winner per block is
sampled, the winner passes its raw value (it may be negative) and the losers output exactly 0.

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

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lwtakit.errors import UserError

INFERENCE_MODES = ("sample", "argmax")
TEMPERATURE_ON = ("logits", "relaxation")
DENSE = ("relu", "gelu")


# --------------------------------------------------------------------------------------------------
# autograd Functions. Inputs are viewed as [P, G, U, Q]: P = leading dims, G = blocks, Q = trailing.
# --------------------------------------------------------------------------------------------------
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
# pass over memory each way (~8x faster than the eager ops on CPU). Compiled lazily on first use with
# dynamic shapes; if compilation is impossible we warn once and stay eager.
def _pair_fwd_math(x: Tensor, u: Tensor, inv_t: Tensor, save_dtype: torch.dtype, on_logits: bool):
    # (a, b) = (1/T, 1) or (1, 1/T); the flag specialises the compiled graph, so neither has a dead multiply
    h0, h1 = x[:, :, 0], x[:, :, 1]
    z = (h0 - h1) * inv_t - torch.logit(u) if on_logits else (h0 - h1) - torch.logit(u)
    w = (z < 0).to(x.dtype)
    out = torch.stack((h0 * (1 - w), h1 * w), dim=2)
    s = torch.sigmoid(z if on_logits else z * inv_t)
    ks = torch.clamp_min(s * (1 - s) * inv_t, 2.0**-24) * (1 - 2 * w)
    loser = h1 + w * (h0 - h1)
    return out, loser.to(save_dtype), ks.to(save_dtype)


def _pair_fwd_rand_math(x: Tensor, inv_t: Tensor, save_dtype: torch.dtype, on_logits: bool):
    return _pair_fwd_math(x, torch.rand_like(x[:, :, 0]), inv_t, save_dtype, on_logits)


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
        _KERNELS[name] = torch.compile(fn, dynamic=True)
    return _KERNELS[name]


def _triton():
    """``lwtakit.lwta_triton`` (hand-written kernels for CUDA), or None where Triton is not installed."""
    if "triton" not in _KERNELS:
        try:
            from lwtakit import lwta_triton
        except ImportError:
            lwta_triton = None
        _KERNELS["triton"] = lwta_triton
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
    CUDA: hand-written Triton kernels (:mod:`lwtakit.lwta_triton`); elsewhere: ``torch.compile``."""

    @staticmethod
    def forward(ctx, x: Tensor, scales: tuple[float, float], save_dtype, u: Tensor | None):
        triton_kernels = _triton() if x.is_cuda else None
        if triton_kernels is not None:
            res = _fused_call(triton_kernels.pair_fwd, x, scales, save_dtype, u)
        else:
            a, b = scales
            it = torch.full((), a * b, dtype=x.dtype, device=x.device)
            res = _fused_call(_kernel("fwd"), x, u, it, save_dtype, b == 1.0) if u is not None else \
                _fused_call(_kernel("fwd_rand"), x, it, save_dtype, b == 1.0)
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


# --------------------------------------------------------------------------------------------------
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


class LWTA(nn.Module):
    """Stochastic LWTA activation (DISCOVER, Panousis et al. 2023; module docstring, eqs. 1-2).

    Args:
        U: block size (units competing); ``U == 1`` is the plain dense activation ``dense``.
        temperature: T of eq. (1) (> 0).
        temperature_on: ``"logits"`` (default: winners drawn from softmax(h / T)) or ``"relaxation"``
            (DISCOVER's code: winners from softmax(h), T only in the relaxation's gradient); module docstring.
        inference: eval-time behaviour: ``"sample"`` (stochastic in eval too, as DISCOVER
            evaluates) or ``"argmax"`` (deterministic winner = largest pre-activation per block).
            Training forwards always sample.
        dense: activation used when ``U == 1`` (``"relu"`` | ``"gelu"``).
        kl: compute ``KL(q || Uniform(1/U))`` on each training forward with grad, with
            ``q = softmax(a h)`` per block (softmax(h / T) or softmax(h)): the distribution winners are drawn
            from (eq. 1), so the term pulls the sampler itself towards uniform competition (DISCOVER's prior).
        dim: competing dimension; ``None`` -> 1 for 4-D input (conv), -1 otherwise (tokens).
        save_dtype: dtype of the tensors saved for backward besides the output (U=2): ``"half"``
            (default, float16 for float32 input) or ``"same"`` (the input dtype, exact).
        fused: U=2 only: run the same arithmetic as fused kernels (one pass each way: ``torch.compile``
            on the CPU, ~8x faster than the eager ops; Triton on CUDA). ``"auto"``: always on CUDA, on the
            CPU for inputs of at least 2**18 elements (no compile latency for small tensors); True / False.

    Attributes ``record`` (default True) stores the last winner index per block as ``uint8`` in
    ``last_winners`` (shape = input shape with the competing dim replaced by the number of blocks).
    """

    def __init__(
        self,
        U: int = 2,
        temperature: float = 1.0,
        inference: str = "sample",
        dense: str = "relu",
        kl: bool = False,
        dim: int | None = None,
        save_dtype: str = "half",
        record: bool = True,
        fused: str | bool = "auto",
        temperature_on: str = "logits",
    ):
        super().__init__()
        if temperature_on not in TEMPERATURE_ON:
            raise UserError(f"LWTA temperature_on must be one of {', '.join(TEMPERATURE_ON)}, got {temperature_on!r}")
        if int(U) != U or U < 1 or U > 255:
            raise UserError(f"LWTA block size U must be an integer in [1, 255], got {U!r}")
        if dense not in DENSE:
            raise UserError(f"unknown dense activation {dense!r}; use one of {', '.join(DENSE)}")
        if save_dtype not in ("half", "same"):
            raise UserError(f"save_dtype must be 'half' or 'same', got {save_dtype!r}")
        self.U = int(U)
        self.temperature = float(temperature)
        self.inference = inference
        self.dense = dense
        self.kl = bool(kl)
        self.dim = dim
        self.save_dtype = save_dtype
        self.record = record
        if fused not in ("auto", True, False):
            raise UserError(f"fused must be 'auto', True or False, got {fused!r}")
        self.fused = fused
        self.temperature_on = temperature_on
        self._winners: tuple[Tensor, tuple[int, ...]] | None = None
        self._last_shape: tuple[int, ...] | None = None
        self._last_dim: int = 1
        self._kl: Tensor | None = None
        self._check(inference, self.temperature)

    @staticmethod
    def _check(inference: str, temperature: float) -> None:
        if inference not in INFERENCE_MODES:
            raise UserError(f"unknown LWTA inference mode {inference!r}; use one of {', '.join(INFERENCE_MODES)}")
        if not (temperature > 0 and math.isfinite(temperature)):
            raise UserError(f"LWTA temperature must be a positive number, got {temperature!r}")

    def extra_repr(self) -> str:
        on = "" if self.temperature_on == "logits" else f", temperature_on={self.temperature_on}"
        return f"U={self.U}, temperature={self.temperature:g}{on}, inference={self.inference}, kl={self.kl}"

    def _competing_dim(self, x: Tensor) -> int:
        d = self.dim if self.dim is not None else (1 if x.dim() == 4 else -1)
        return d % x.dim()

    def forward(self, x: Tensor, *, _noise: Tensor | None = None) -> Tensor:
        """``_noise`` (tests only): uniforms [P, G, Q] for U=2, Gumbels [P, G, U, Q] otherwise."""
        if self.U == 1:
            self._kl = None
            return F.relu(x) if self.dense == "relu" else F.gelu(x)
        self._check(self.inference, self.temperature)
        d = self._competing_dim(x)
        C = x.shape[d]
        if C % self.U:
            raise UserError(
                f"LWTA block size U={self.U} does not divide the layer width {C} (dim {d} of input "
                f"{tuple(x.shape)}); choose a U that divides {C} or change the width"
            )
        P = math.prod(x.shape[:d])
        Q = math.prod(x.shape[d + 1 :])
        G = C // self.U
        xv = x.contiguous().view(P, G, self.U, Q)
        inv_t = 1.0 / self.temperature
        scales = (inv_t, 1.0) if self.temperature_on == "logits" else (1.0, inv_t)  # (a, b) of eq. (1)
        if self.inference == "argmax" and not self.training:
            out, win = _argmax_competition(xv)
        elif self.U == 2:
            sd = torch.float16 if (self.save_dtype == "half" and x.dtype == torch.float32) else x.dtype
            # CUDA: always (a Triton launch costs less host time than the eager ops); CPU: large inputs only
            fuse = self.fused is True or (self.fused == "auto" and (x.is_cuda or x.numel() >= _FUSE_MIN_NUMEL))
            out, win = (_LWTAPairFused if fuse else _LWTAPair).apply(xv, scales, sd, _noise)
        else:
            out, win = _LWTABlock.apply(xv, scales, _noise)
            win = win.squeeze(2)
        if self.record:
            shape = list(x.shape)
            shape[d] = G
            # kept as is (no copy): for U=2 the bool winner, or the saved ks whose sign bit is the winner
            win = win.detach()
            if not win.is_floating_point():
                win = win.to(torch.uint8)  # argmax indices: 1 byte per block instead of 8
            self._winners = (win, tuple(shape))  # U=2: a float tensor, negative iff unit 1 won
            self._last_shape = tuple(x.shape)
            self._last_dim = d
        else:
            self._winners = None
        if self.kl and self.training and torch.is_grad_enabled():
            q = torch.softmax(xv * scales[0], dim=2)
            # KL(q || 1/U) = sum_u q log q + log U, averaged over blocks.
            self._kl = (torch.xlogy(q, q).sum(dim=2) + math.log(self.U)).mean()
        elif self.training and torch.is_grad_enabled():
            self._kl = None
        return out.view(x.shape)

    @property
    def last_winners(self) -> Tensor | None:
        """uint8 winner index per block of the last forward (shape: input shape with the competing
        dim replaced by the number of blocks); built on access from what forward kept."""
        if self._winners is None:
            return None
        w, shape = self._winners
        if w.is_floating_point():
            w = (w < 0).view(torch.uint8)
        elif w.dtype != torch.uint8:
            w = w.to(torch.uint8)
        return w.reshape(shape)

    @last_winners.setter
    def last_winners(self, value: Tensor | None) -> None:
        """Allow clearing (None) or setting indices directly, e.g. by code that frees memory."""
        self._winners = None if value is None else (value.detach().to(torch.uint8), tuple(value.shape))

    def winner_mask(self) -> Tensor | None:
        """Bool mask of the last forward's input shape, True at the winners (None before any forward)."""
        winners = self.last_winners
        if winners is None or self._last_shape is None:
            return None
        d = self._last_dim
        w = winners.long().movedim(d, -1)
        mask = F.one_hot(w, self.U).bool()  # [..., G, U]
        mask = mask.flatten(-2)  # [..., G*U]
        return mask.movedim(-1, d).reshape(self._last_shape)

    def kl_divergence(self) -> Tensor:
        """KL(q || Uniform(1/U)) of the last training forward with grad (mean over blocks), else 0."""
        if self._kl is None:
            return torch.zeros(())
        return self._kl


# --------------------------------------------------------------------------------------------------
def lwta_layers(model: nn.Module) -> dict[str, LWTA]:
    """All LWTA modules of ``model`` by qualified name, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LWTA)}


def _iter(model: nn.Module) -> Iterator[LWTA]:
    return iter(lwta_layers(model).values())


def set_temperature(model: nn.Module, T: float) -> None:
    LWTA._check("sample", float(T))
    for m in _iter(model):
        m.temperature = float(T)


def set_inference(model: nn.Module, mode: str) -> None:
    LWTA._check(mode, 1.0)
    for m in _iter(model):
        m.inference = mode


@contextmanager
def lwta_inference(model: nn.Module, mode: str | None) -> Iterator[None]:
    """Every LWTA layer in inference ``mode`` inside the block (None: unchanged); each layer's own mode is
    restored on exit, also after an exception."""
    saved = {m: m.inference for m in _iter(model)}
    try:
        if mode is not None:
            set_inference(model, mode)
        yield
    finally:
        for m, previous in saved.items():
            m.inference = previous


def total_kl(model: nn.Module) -> Tensor:
    """Sum over LWTA layers of their KL term (0 when none was computed)."""
    terms = [m.kl_divergence() for m in _iter(model)]
    if not terms:
        return torch.zeros(())
    dev = next((t.device for t in terms if t.requires_grad), terms[0].device)
    return torch.stack([t.to(dev) for t in terms]).sum()


@torch.no_grad()
def mc_predict(model: nn.Module, x: Tensor, n: int) -> Tensor:
    """Monte-Carlo prediction: mean of softmax over ``n`` stochastic passes (LWTA in "sample" mode,
    model in eval), as DISCOVER averages its stochastic evaluations. Restores modes afterwards."""
    if int(n) < 1:
        raise UserError(f"mc_predict needs n >= 1 passes, got {n!r}")
    was_training = model.training
    modes = {name: m.inference for name, m in lwta_layers(model).items()}
    try:
        model.eval()
        set_inference(model, "sample")
        probs = None
        for _ in range(int(n)):
            p = torch.softmax(model(x).float(), dim=-1)
            probs = p if probs is None else probs.add_(p)
        return probs / int(n)
    finally:
        model.train(was_training)
        for name, m in lwta_layers(model).items():
            m.inference = modes[name]
