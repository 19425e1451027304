"""The stochastic local winner-takes-all (LWTA) layer (DISCOVER, Panousis et al., NeurIPS 2023) and its options.

Units are grouped in blocks of ``U`` consecutive units along the competing dimension (conv maps
``[B, C, H, W]``: ``U`` consecutive channels at every position; tokens / linear ``[..., D]``: the last
dimension). The competition logits are the pre-activations ``h`` themselves. One winner per block is
sampled, the winner passes its raw value (it may be negative) and the losers output exactly 0. The
sampling and its straight-through gradient (eqs. 1-2) are in :mod:`lwtakit.lwta.kernels`.

:class:`LWTAOptions` is the one object that carries a layer's options from the config through the model
builders (:func:`lwtakit.models.build_model`, :func:`lwtakit.models.convert_activations`) to every layer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lwtakit.errors import UserError
from lwtakit.lwta.kernels import (
    _FUSE_MIN_NUMEL,
    _argmax_competition,
    _LWTABlock,
    _LWTAPair,
    _LWTAPairFused,
    _LWTAPairTraced,
)

INFERENCE_MODES = ("sample", "argmax")
TEMPERATURE_ON = ("logits", "relaxation")
DENSE = ("relu", "gelu")


def check_inference(mode: str) -> None:
    """Raise :class:`UserError` unless ``mode`` is an LWTA inference mode."""
    if mode not in INFERENCE_MODES:
        raise UserError(f"unknown LWTA inference mode {mode!r}; use one of {', '.join(INFERENCE_MODES)}")


def check_temperature(temperature: float) -> None:
    """Raise :class:`UserError` unless ``temperature`` is a usable T of eq. (1): positive and finite."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise UserError(f"LWTA temperature must be a positive number, got {temperature!r}")


@dataclass(frozen=True)
class LWTAOptions:
    """Options of an LWTA layer (DISCOVER, Panousis et al. 2023; eqs. 1-2 of :mod:`lwtakit.lwta.kernels`).

    The defaults of :class:`LWTA` live here; :meth:`build` makes the layer.

    Attributes:
        U: block size (units competing); ``U == 1`` is the plain dense activation ``dense``.
        temperature: T of eq. (1) (> 0).
        temperature_on: ``"logits"`` (default: winners drawn from softmax(h / T)) or ``"relaxation"``
            (DISCOVER's code: winners from softmax(h), T only in the relaxation's gradient); see the kernels.
        inference: eval-time behaviour: ``"sample"`` (stochastic in eval too, as DISCOVER
            evaluates) or ``"argmax"`` (deterministic winner = largest pre-activation per block).
            Training forwards always sample.
        kl: compute ``KL(q || Uniform(1/U))`` on each training forward with grad, with
            ``q = softmax(a h)`` per block (softmax(h / T) or softmax(h)): the distribution winners are drawn
            from (eq. 1), so the term pulls the sampler itself towards uniform competition (DISCOVER's prior).
        dense: activation used when ``U == 1`` (``"relu"`` | ``"gelu"``); None: the one the network had
            (the model builders: ReLU in ResNets, GELU in ViTs, the replaced module's in a conversion; a layer
            built on its own: ReLU).
        dim: competing dimension; ``None`` -> 1 for 4-D input (conv), -1 otherwise (tokens).
        save_dtype: dtype of the tensors saved for backward besides the output (U=2): ``"half"``
            (default, float16 for float32 input) or ``"same"`` (the input dtype, exact).
        record: keep the last winner index per block (``LWTA.last_winners``).
        fused: U=2 only: run the same arithmetic as fused kernels (one pass each way: ``torch.compile``
            on the CPU, ~8x faster than the eager ops; Triton on CUDA). ``"auto"``: always on CUDA, on the
            CPU for inputs of at least 2**18 elements (no compile latency for small tensors); True / False.
    """

    U: int = 2
    temperature: float = 1.0
    temperature_on: str = "logits"
    inference: str = "sample"
    kl: bool = False
    dense: str | None = None
    dim: int | None = None
    save_dtype: str = "half"
    record: bool = True
    fused: str | bool = "auto"

    def __post_init__(self) -> None:
        if self.temperature_on not in TEMPERATURE_ON:
            raise UserError(f"LWTA temperature_on must be one of {', '.join(TEMPERATURE_ON)}, "
                            f"got {self.temperature_on!r}")
        if int(self.U) != self.U or self.U < 1 or self.U > 255:
            raise UserError(f"LWTA block size U must be an integer in [1, 255], got {self.U!r}")
        if self.dense is not None and self.dense not in DENSE:
            raise UserError(f"unknown dense activation {self.dense!r}; use one of {', '.join(DENSE)}")
        if self.save_dtype not in ("half", "same"):
            raise UserError(f"save_dtype must be 'half' or 'same', got {self.save_dtype!r}")
        if self.fused not in ("auto", True, False):
            raise UserError(f"fused must be 'auto', True or False, got {self.fused!r}")
        check_inference(self.inference)
        check_temperature(float(self.temperature))
        # frozen: normalise the numbers the way the layer stores them
        object.__setattr__(self, "U", int(self.U))
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "kl", bool(self.kl))

    def build(self) -> LWTA:
        """The LWTA layer with these options."""
        return LWTA(**asdict(self))


class LWTA(nn.Module):
    """Stochastic LWTA activation (DISCOVER, Panousis et al. 2023; eqs. 1-2 of :mod:`lwtakit.lwta.kernels`).

    ``LWTA(U, **options)``: the keywords are the fields of :class:`LWTAOptions` (which holds their defaults
    and meaning); ``LWTAOptions(...).build()`` is the same layer. ``temperature`` and ``inference`` stay
    attributes that may change between forwards (:func:`lwtakit.lwta.set_temperature`,
    :func:`lwtakit.lwta.lwta_inference`).

    With ``record`` (default True) the last winner index per block is kept as ``uint8`` in ``last_winners``
    (shape = input shape with the competing dim replaced by the number of blocks).
    """

    def __init__(self, U: int = LWTAOptions.U, **options):
        super().__init__()
        o = LWTAOptions(U=U, **options)
        self.U = o.U
        self.temperature = o.temperature
        self.inference = o.inference
        self.dense = o.dense or "relu"
        self.kl = o.kl
        self.dim = o.dim
        self.save_dtype = o.save_dtype
        self.record = o.record
        self.fused = o.fused
        self.temperature_on = o.temperature_on
        self._winners: tuple[Tensor, tuple[int, ...]] | None = None
        self._last_shape: tuple[int, ...] | None = None
        self._last_dim: int = 1
        self._kl: Tensor | None = None

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
        check_inference(self.inference)
        check_temperature(self.temperature)
        d = self._competing_dim(x)
        C = x.shape[d]
        if C % self.U:
            raise UserError(
                f"LWTA block size U={self.U} does not divide the layer width {C} (dim {d} of input "
                f"{tuple(x.shape)}); choose a U that divides {C} or change the width"
            )
        xv = x.contiguous().view(math.prod(x.shape[:d]), C // self.U, self.U, math.prod(x.shape[d + 1 :]))
        inv_t = 1.0 / self.temperature
        scales = (inv_t, 1.0) if self.temperature_on == "logits" else (1.0, inv_t)  # (a, b) of eq. (1)
        out, win = self._compete(xv, scales, _noise)
        self._keep_winners(win, x.shape, d)
        if self.kl and self.training and torch.is_grad_enabled():
            q = torch.softmax(xv * scales[0], dim=2)
            # KL(q || 1/U) = sum_u q log q + log U, averaged over blocks.
            self._kl = (torch.xlogy(q, q).sum(dim=2) + math.log(self.U)).mean()
        elif self.training and torch.is_grad_enabled():
            self._kl = None
        return out.view(x.shape)

    def _compete(self, xv: Tensor, scales: tuple[float, float], noise: Tensor | None) -> tuple[Tensor, Tensor]:
        """(output [P, G, U, Q], winners) of the competition on ``xv``: argmax in eval ``"argmax"`` mode,
        else sampled by the kernel for this U (winners: U=2 the saved ``ks``, negative iff unit 1 won;
        otherwise the index [P, G, Q])."""
        if self.inference == "argmax" and not self.training:
            return _argmax_competition(xv)
        if self.U == 2:
            sd = torch.float16 if (self.save_dtype == "half" and xv.dtype == torch.float32) else xv.dtype
            if torch.compiler.is_compiling():  # the network is compiled: one traceable graph, whatever ``fused``
                return _LWTAPairTraced.apply(xv, scales, sd, noise)
            # CUDA: always (a Triton launch costs less host time than the eager ops); CPU: large inputs only
            fuse = self.fused is True or (self.fused == "auto" and (xv.is_cuda or xv.numel() >= _FUSE_MIN_NUMEL))
            return (_LWTAPairFused if fuse else _LWTAPair).apply(xv, scales, sd, noise)
        out, win = _LWTABlock.apply(xv, scales, noise)
        return out, win.squeeze(2)

    def _keep_winners(self, win: Tensor, shape: torch.Size, d: int) -> None:
        """Keep what :attr:`last_winners` needs (when ``record``): the winners as ``_compete`` gave them."""
        if not self.record:
            self._winners = None
            return
        blocks = list(shape)
        blocks[d] = shape[d] // self.U
        # kept as is (no copy): for U=2 the bool winner, or the saved ks whose sign bit is the winner
        win = win.detach()
        if not win.is_floating_point():
            win = win.to(torch.uint8)  # argmax indices: 1 byte per block instead of 8
        self._winners = (win, tuple(blocks))  # U=2: a float tensor, negative iff unit 1 won
        self._last_shape = tuple(shape)
        self._last_dim = d

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
