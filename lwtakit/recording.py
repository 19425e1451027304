"""Activation recording with forward hooks: reduce inside the hook, never keep spatial maps.

:func:`capture` registers forward hooks by module name and always removes them; :func:`record_activations`
runs a probe set through a model and returns a :class:`Recording` with per-layer ``[N, C]`` activations
(spatial mean and max for conv maps, CLS or mean token for ``[B, T, D]`` outputs), the per-unit firing
rate over (image x position) and streaming :class:`~lwtakit.stats.UnitStats`. Memory is O(N x C) per
layer, independent of the spatial size of the maps (CLIP-Dissect, Oikarinen & Weng ICLR 2023, sec. 3,
records the spatial mean of conv channels and the CLS token of ViTs in the same way).

The model is analysed in eval mode under ``torch.inference_mode()``; its training flags and the global
RNG states (python, numpy, torch CPU and CUDA) are restored afterwards, so recording during training
never changes the training trajectory.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import UserError
from .rng import fork_rng
from .stats import Moments, UnitStats

REDUCE_MODES = ("mean", "max", "none")
TOKEN_MODES = ("cls", "mean")


def resolve_module(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)`` with a :class:`UserError` listing close matches on a bad name."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        hint = f"close matches: {', '.join(close)}" if close else f"some layers: {', '.join(names[:8])}"
        raise UserError(f"model has no layer named {name!r}; {hint}") from None


def _first_tensor(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    raise RuntimeError(f"layer output of type {type(output).__name__} holds no tensor")


def active_mask(module: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """Where units fire: the LWTA winner mask when the module has one; positive outputs of a GELU (it is
    never exactly 0, and its negative dip, at least -0.17, is the "off" side of the gate); else non-zero
    outputs (a ReLU's positive ones)."""
    winner_mask = getattr(module, "winner_mask", None)
    if callable(winner_mask) and getattr(module, "U", 2) != 1:  # U == 1: plain dense activation
        mask = winner_mask()
        if isinstance(mask, torch.Tensor) and mask.shape == out.shape:
            return mask.bool()
    if isinstance(module, nn.GELU):
        return out > 0
    return out != 0


class _LayerHook:
    """Forward hook that reduces one layer's output per batch and keeps only [B, C] pieces."""

    def __init__(self, name: str, module: nn.Module, reduce: str, tokens: str, extras: bool, moments: bool = False):
        self.name, self.module, self.reduce, self.tokens, self.extras = name, module, reduce, tokens, extras
        # With extras (record_activations) pieces stay on the device until flush() after the forward pass:
        # a .cpu() inside the hook would stall an accelerator mid-forward once per layer.
        self.cpu = (lambda t: t.float()) if extras else (lambda t: t.float().cpu())
        self.outputs: list[torch.Tensor] = []   # reduced (or raw for reduce="none") per batch
        self.maxes: list[torch.Tensor] = []      # spatial max per batch (extras, conv only)
        self.per_image: list[torch.Tensor] = []  # [B, C] fraction of each image's positions where a unit fires
        # with moments: this batch's maps (one per pass) until flush() adds their mean to ``moments``
        self.pending: list[torch.Tensor] | None = [] if moments else None
        self.moments: Moments | None = None
        self.calls = 0
        self.is_spatial = False

    def __call__(self, module, inputs, output) -> None:
        out = _first_tensor(output).detach()
        self.calls += 1
        if self.reduce == "none":
            self.outputs.append(out)
            return
        if out.dim() == 4:  # [B, C, H, W]
            self.is_spatial = True
            mean = out.mean(dim=(2, 3))
            mx = out.amax(dim=(2, 3))
            self.outputs.append(self.cpu(mx if self.reduce == "max" else mean))
            if self.extras:
                self.maxes.append(self.cpu(mx))
            positions = (2, 3)
        elif out.dim() == 3:  # [B, T, D] tokens
            red = out[:, 0] if self.tokens == "cls" else out.mean(dim=1)
            self.outputs.append(self.cpu(red))
            positions = (1,)
        elif out.dim() == 2:
            self.outputs.append(self.cpu(out))
            positions = ()
        else:
            raise RuntimeError(f"layer {self.name!r}: cannot reduce an output of shape {tuple(out.shape)}")
        if self.extras:
            mask = active_mask(module, out).float()
            self.per_image.append(mask.mean(dim=positions) if positions else mask)
        if self.pending is not None:  # conv maps whole (moments over positions), other outputs as recorded
            self.pending.append(out.float() if out.dim() == 4 else self.outputs[-1])

    def flush(self, start: int, passes: int = 1) -> None:
        """Move the pieces recorded since index ``start`` to the CPU (after the forward passes of a batch); with
        ``passes`` > 1 those pieces are the same batch's passes, replaced by their mean."""
        for pieces in (self.outputs, self.maxes, self.per_image):
            if passes > 1 and len(pieces) > start:
                mean = torch.stack(pieces[start:]).mean(0)
                del pieces[start:]
                pieces.append(mean)
            for i in range(start, len(pieces)):
                pieces[i] = pieces[i].cpu()
        if self.pending:
            x = torch.stack(self.pending).mean(0) if len(self.pending) > 1 else self.pending[0]
            self.pending.clear()
            rows = x.movedim(1, -1).reshape(-1, x.shape[1]) if x.dim() == 4 else x  # [B*H*W, C]
            if self.moments is None:
                self.moments = Moments(rows.shape[1])
            self.moments.update(rows)


@contextmanager
def _hooks(model: nn.Module, layers: Sequence[str], reduce: str, tokens: str, extras: bool,
           moments: bool = False) -> Iterator[dict[str, _LayerHook]]:
    if isinstance(layers, str):
        layers = [layers]
    if reduce not in REDUCE_MODES:
        raise UserError(f"reduce must be one of {', '.join(REDUCE_MODES)}, got {reduce!r}")
    if tokens not in TOKEN_MODES:
        raise UserError(f"tokens must be one of {', '.join(TOKEN_MODES)}, got {tokens!r}")
    if not layers:
        raise UserError("no layers given to record; name at least one module (see model.named_modules())")
    modules = {name: resolve_module(model, name) for name in layers}
    hooks = {name: _LayerHook(name, mod, reduce, tokens, extras, moments) for name, mod in modules.items()}
    handles = []
    try:
        for name, mod in modules.items():
            handles.append(mod.register_forward_hook(hooks[name]))
        yield hooks
    finally:
        for handle in handles:
            handle.remove()
    silent = [name for name, hook in hooks.items() if hook.calls == 0]
    if silent:
        raise RuntimeError(f"forward hook of layer(s) {', '.join(silent)} never fired: the forward pass "
                           "does not use them")


@contextmanager
def capture(model: nn.Module, layers: Sequence[str], reduce: str = "mean",
            tokens: str = "cls") -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record the outputs of ``layers`` (module names) during the block.

    Yields ``{name: [tensor per forward call]}``: ``[B, C]`` float32 CPU tensors reduced inside the hook
    (4-D conv maps: spatial ``mean`` or ``max``; ``[B, T, D]`` tokens: CLS token or mean over tokens;
    2-D: as is), or with ``reduce="none"`` the raw detached outputs (for streaming consumers that empty
    the lists as they go). Unknown names raise :class:`UserError` with close matches; hooks are removed
    even when the block raises; a hook that never fired raises ``RuntimeError`` at exit.
    """
    with _hooks(model, layers, reduce, tokens, extras=False) as hooks:
        yield {name: hook.outputs for name, hook in hooks.items()}


@contextmanager
def analysis_mode(model: nn.Module, seed: int | None = None) -> Iterator[None]:
    """Eval mode + ``torch.inference_mode()`` on a fork of the global RNGs (:func:`lwtakit.rng.fork_rng`,
    ``torch.manual_seed(seed)`` at entry when a seed is given); restores every submodule's training flag and
    the RNG states (python ``random``, numpy, torch CPU, torch CUDA when initialised) on exit."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        with fork_rng(seed):
            model.eval()
            with torch.inference_mode():
                yield
    finally:
        for module, flag in flags:
            module.training = flag


def make_loader(dataset_or_loader, batch_size: int) -> torch.utils.data.DataLoader | object:
    """A DataLoader as given, or a sequential, single-process one over a dataset."""
    if isinstance(dataset_or_loader, torch.utils.data.DataLoader):
        return dataset_or_loader
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    if not hasattr(dataset_or_loader, "__getitem__") or not hasattr(dataset_or_loader, "__len__"):
        raise UserError("probe set must be a map-style dataset (with __len__ and __getitem__) or a DataLoader")
    return torch.utils.data.DataLoader(dataset_or_loader, batch_size=batch_size, shuffle=False, num_workers=0)


def split_batch(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(images, labels)`` from a batch that is a tensor, or a tuple/list whose first item is the images."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        labels = batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
        return batch[0], labels
    if isinstance(batch, dict) and "image" in batch:
        return batch["image"], batch.get("label")
    raise UserError("cannot find the images in a batch: items must be image tensors or (image, label) pairs")


@dataclass
class Recording:
    """Activations of a probe set: per layer ``acts`` [N, C] float32 CPU (spatial mean for conv maps, or
    max with ``reduce="max"``), ``acts_max`` [N, C] (spatial max; same as ``acts`` for non-conv layers),
    ``firing`` [C] (fraction of image x position where the unit fires: LWTA winner or non-zero),
    ``firing_per_image`` [N, C] (fraction of each image's positions where the unit fires: for an LWTA layer,
    where it wins), ``active_per_image`` [N] (its row sums: units firing per position, C/U for LWTA),
    ``stats`` (streaming :class:`UnitStats` of ``acts``), ``labels`` [N] (class labels, if given) and, when
    recorded with ``moments``, the streaming :class:`~lwtakit.stats.Moments` of each layer's channel vectors over
    every image x position (conv maps; other layers: over the recorded rows), the covariance of Dey et al.'s
    per-position PCA."""

    acts: dict[str, torch.Tensor] = field(default_factory=dict)
    acts_max: dict[str, torch.Tensor] = field(default_factory=dict)
    firing: dict[str, torch.Tensor] = field(default_factory=dict)
    firing_per_image: dict[str, torch.Tensor] = field(default_factory=dict)
    active_per_image: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, UnitStats] = field(default_factory=dict)
    labels: torch.Tensor | None = None
    spatial: dict[str, bool] = field(default_factory=dict)  # layer gave [B, C, H, W] maps
    moments: dict[str, Moments] = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        return list(self.acts)

    def __len__(self) -> int:
        return next(iter(self.acts.values())).shape[0] if self.acts else 0


@dataclass
class RecordOptions:
    """How :func:`record_activations` runs: probe ``batch_size``, the reduction of conv maps (``reduce``: spatial
    mean or max) and of tokens (``tokens``: CLS or mean), ``topk`` image indices kept per unit, the ``device``, a
    progress bar, and ``passes`` forward passes per batch whose recordings are averaged (with a stochastic
    network, e.g. LWTA in ``sample`` mode: the Monte-Carlo estimate of its expected activation); ``moments``
    also accumulates :attr:`Recording.moments` (one ``C x C`` float64 state per layer; the maps are never kept)."""

    batch_size: int = 256
    reduce: str = "mean"
    tokens: str = "cls"
    topk: int = 16
    device: str | torch.device = "cpu"
    progress: bool = True
    passes: int = 1
    moments: bool = False

    def __post_init__(self) -> None:
        if self.reduce == "none":
            raise UserError("record_activations keeps [N, C] per layer; use reduce='mean' or 'max'")
        if self.passes < 1:
            raise UserError(f"passes must be >= 1, got {self.passes}")


def record_activations(model: nn.Module, dataset_or_loader, layers: Sequence[str],
                       options: RecordOptions | None = None, **overrides) -> Recording:
    """Run the probe set through ``model`` once and record the reduced activations of ``layers``.

    See :class:`Recording` for what is kept and :class:`RecordOptions` for how (``overrides`` are its fields,
    e.g. ``batch_size=64``). Model in eval mode and ``torch.inference_mode()`` inside; training flags and RNG
    states restored afterwards (:func:`analysis_mode`).
    """
    from tqdm.auto import tqdm

    opts = dataclasses.replace(options or RecordOptions(), **overrides)
    if isinstance(layers, str):
        layers = [layers]
    loader = make_loader(dataset_or_loader, opts.batch_size)
    device = torch.device(opts.device)
    labels: list[torch.Tensor] = []
    stats: dict[str, UnitStats] = {}
    seen = 0
    with analysis_mode(model), _hooks(model, layers, opts.reduce, opts.tokens, True, opts.moments) as hooks:
        for batch in tqdm(loader, desc="recording", disable=not opts.progress, leave=False):
            images, batch_labels = split_batch(batch)
            starts = {name: len(hook.outputs) for name, hook in hooks.items()}
            x = images.to(device, non_blocking=True)
            for _ in range(opts.passes):
                model(x)
            B = images.shape[0]
            index = torch.arange(seen, seen + B)
            for name, hook in hooks.items():
                hook.flush(starts[name], opts.passes)
                if not hook.outputs:
                    continue
                if name not in stats:
                    stats[name] = UnitStats(hook.outputs[-1].shape[1], opts.topk)
                stats[name].update(hook.outputs[-1], index)
            if batch_labels is not None:
                labels.append(torch.as_tensor(batch_labels).reshape(-1).cpu())
            seen += B
    if seen == 0:
        raise UserError("the probe set is empty")
    return _recording(hooks, stats, labels, seen)


def _recording(hooks: dict[str, _LayerHook], stats: dict[str, UnitStats], labels: list[torch.Tensor],
               seen: int) -> Recording:
    rec = Recording(stats=stats)
    # torch.cat outside inference_mode turns inference tensors into ordinary ones.
    for name, hook in hooks.items():
        rec.acts[name] = torch.cat(hook.outputs).float()
        rec.acts_max[name] = torch.cat(hook.maxes).float() if hook.maxes else rec.acts[name]
        rec.firing_per_image[name] = torch.cat(hook.per_image)
        # every image has the same number of positions: the probe-set firing rate is the mean over images
        rec.firing[name] = rec.firing_per_image[name].double().mean(0).float()
        rec.active_per_image[name] = rec.firing_per_image[name].sum(1)
        rec.spatial[name] = hook.is_spatial
        if hook.moments is not None:
            rec.moments[name] = hook.moments
    if labels and sum(x.numel() for x in labels) == seen:
        rec.labels = torch.cat(labels).clone()
    return rec
