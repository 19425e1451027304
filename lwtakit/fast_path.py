"""Which path a training step takes (``trainer.compile``): ``torch.compile`` of the network on CUDA by default,
eager elsewhere, and eager with a one-line notice where compiling cannot apply.

Why compile by default on CUDA only: eager LWTA on a GPU is launch-bound (one autograd Function and two kernel
launches per layer: 1.5x ReLU's step at batch 128), and a compiled, CUDA-graph-captured step removes that host
time (1.04x with graphs in ``benchmarks/lwta_speed.py --cuda-graphs``). On the CPU the LWTA layers already run
fused compiled kernels and a whole-network compile buys little for a long first-step build.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from lwtakit.errors import UserError

COMPILE_CHOICES = ("auto", True, False)
AUTO_MODE = "reduce-overhead"  # Inductor kernels + CUDA graphs: removes the per-launch host time


@dataclass(frozen=True)
class CompilePlan:
    """What ``trainer.compile`` resolved to on this machine.

    Attributes:
        compile: whether the network runs under ``torch.compile``.
        mode: the ``torch.compile`` mode (None: torch's default).
        fallback: when the compiled step fails (Inductor cannot build it, or it fails to run), train eager with a
            notice instead of failing (``auto`` only: an explicit ``true`` fails loudly). A model error fails the
            eager step as well, so it is still raised.
        notice: one line for the user when ``auto`` could not apply, else None.
    """

    compile: bool
    mode: str | None = None
    fallback: bool = False
    notice: str | None = None


def compile_per_isa(fn, **options):
    """``torch.compile(fn, **options)`` with Inductor's cache kept apart per CPU instruction set: torch 2.14
    reuses a CPU kernel compiled under another ``ATEN_CPU_CAPABILITY`` from its cache, and the process aborts
    ("double free or corruption": compiled with avx2, loaded by an AVX-512 process). A cache folder the user chose
    (``TORCHINDUCTOR_CACHE_DIR``) is left as it is; Inductor's own default (which importing it writes into the
    environment) gets a sub-folder per instruction set."""
    import torch
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is None or os.path.abspath(chosen) == os.path.abspath(default_cache_dir()):
        capability = torch.backends.cpu.get_cpu_capability().lower()
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(default_cache_dir(), capability)
    return torch.compile(fn, **options)


def check_compile(setting) -> None:
    """Raise :class:`UserError` unless ``setting`` is a ``trainer.compile`` value: auto, true or false."""
    if isinstance(setting, bool) or setting == "auto":
        return
    raise UserError(f"config key 'trainer.compile' is {setting!r}; choose one of: auto, true, false")


def plan_compile(setting, device_type: str, has_triton: bool) -> CompilePlan:
    """Resolve ``trainer.compile`` for an accelerator of ``device_type`` ("cuda", "cpu", "mps", ...).

    ``true``: ``torch.compile`` the network (torch's default mode) on any device, as before ``auto`` existed.
    ``false``: eager. ``auto``: on CUDA with Triton, ``torch.compile(mode="reduce-overhead")``; on CUDA
    without Triton, eager with a notice; elsewhere eager, silently (the CPU has no launch overhead to remove).
    """
    check_compile(setting)
    if setting is True:
        return CompilePlan(compile=True)
    if setting is False or device_type != "cuda":
        return CompilePlan(compile=False)
    if not has_triton:
        return CompilePlan(compile=False, notice="trainer.compile=auto: Triton is not installed, so training runs "
                                                 "eager on CUDA (about 1.5x slower for LWTA); pip install triton")
    return CompilePlan(compile=True, mode=AUTO_MODE, fallback=True)


def triton_available() -> bool:
    """Whether Inductor can generate GPU kernels here (Triton importable with a usable CUDA device)."""
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return False
    return bool(has_triton())


def observed(model) -> bool:
    """Whether a forward hook watches any module of ``model`` (the sparsity monitor's or a recording's): such a
    step runs eager, since a hook's Python side effects would split the compiled graph, and tensors it keeps
    would be overwritten by the next CUDA-graph replay."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def fallback_notice(exc: BaseException) -> str:
    """The one line shown when ``auto``'s compiled step failed (could not be built, or failed to run: CUDA-graph
    replays have limits eager code does not) and training continues eager."""
    exc = getattr(exc, "inner_exception", None) or exc  # BackendCompilerFailed wraps the compiler's own error
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"trainer.compile=auto: the compiled step failed ({first[:160]}); training continues eager"
