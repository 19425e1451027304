"""Activation recording with forward hooks: reduce inside the hook, never keep spatial maps.

:func:`capture` registers forward hooks by module name and always removes them; :func:`record_activations`
runs a probe set through a model and returns a :class:`Recording` with per-layer ``[N, C]`` activations
(spatial mean and max for conv maps, CLS or mean token for ``[B, T, D]`` outputs), the per-unit firing
rate over (image x position) and streaming :class:`~lwtakit.stats.UnitStats`. Memory is O(N x C) per
layer, independent of the spatial size of the maps (CLIP-Dissect, Oikarinen & Weng ICLR 2023, sec. 3,
records the spatial mean of conv channels and the CLS token of ViTs in the same way). Above a host-memory budget the
rows are kept in a memory-mapped temporary file (:mod:`lwtakit.rows`); with several processes each records its
shard of the probe set and rank 0 gathers them (:mod:`lwtakit.shard`).

The model is analysed in eval mode under ``torch.inference_mode()``; its training flags and the global
RNG states (python, numpy, torch CPU and CUDA) are restored afterwards, so recording during training
never changes the training trajectory.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import UserError
from .models.precision import widened
from .rng import fork_rng
from .rows import Rows
from .shard import Collective, Shard, batch_bounds, batch_seed, gather_in_order
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
        # Pieces keep the network's dtype until flush(): a float64 network's passes are averaged in float64 and
        # rounded to float32 once (exact IEEE rounding, the same on any machine; --precision 64).
        self.cpu = (lambda t: t) if extras else (lambda t: t.float().cpu())
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
            wide = widened(out)  # float64 stays (--precision 64)
            self.pending.append(wide if out.dim() == 4 else self.outputs[-1])

    def flush(self, passes: int = 1) -> None:
        """Move the pieces of a batch's forward passes to the CPU; with ``passes`` > 1 they are the same batch's
        passes, replaced by their mean."""
        for pieces in (self.outputs, self.maxes, self.per_image):
            if passes > 1 and pieces:
                mean = torch.stack(pieces).mean(0)
                pieces.clear()
                pieces.append(mean)
            for i in range(len(pieces)):
                pieces[i] = pieces[i].float().cpu()
        if self.pending:
            x = torch.stack(self.pending).mean(0) if len(self.pending) > 1 else self.pending[0]
            self.pending.clear()
            rows = x.movedim(1, -1).reshape(-1, x.shape[1]) if x.dim() == 4 else x  # [B*H*W, C]
            if self.moments is None:
                self.moments = Moments(rows.shape[1])
            self.moments.update(rows)


@contextmanager
def _hooks(model: nn.Module, layers: Sequence[str], reduce: str, tokens: str, extras: bool,
           moments: bool = False, must_fire: bool = True) -> Iterator[dict[str, _LayerHook]]:
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
    if silent and must_fire:
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
    per-position PCA. ``shard_sizes``: the images each process recorded, rank by rank (:mod:`lwtakit.shard`)."""

    acts: dict[str, torch.Tensor] = field(default_factory=dict)
    acts_max: dict[str, torch.Tensor] = field(default_factory=dict)
    firing: dict[str, torch.Tensor] = field(default_factory=dict)
    firing_per_image: dict[str, torch.Tensor] = field(default_factory=dict)
    active_per_image: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, UnitStats] = field(default_factory=dict)
    labels: torch.Tensor | None = None
    spatial: dict[str, bool] = field(default_factory=dict)  # layer gave [B, C, H, W] maps
    moments: dict[str, Moments] = field(default_factory=dict)
    shard_sizes: list[int] = field(default_factory=list)  # images each process recorded (one process: [N])

    @property
    def layers(self) -> list[str]:
        return list(self.acts)

    def __len__(self) -> int:
        return next(iter(self.acts.values())).shape[0] if self.acts else 0




GIB = 2**30  # bytes in a GiB: the unit of the memory budget on the command line and in the config


def budget_bytes(gib: float | None) -> int | None:
    """The memory budget ``gib`` (GiB, as ``--memory-budget`` and ``dissection.memory_budget_gb`` give it) in bytes,
    as :class:`RecordOptions` takes it; None (no limit) stays None."""
    return None if gib is None else int(gib * GIB)


@dataclass
class RecordOptions:
    """How :func:`record_activations` runs: probe ``batch_size``, the reduction of conv maps (``reduce``: spatial
    mean or max) and of tokens (``tokens``: CLS or mean), ``topk`` image indices kept per unit, the ``device``, a
    progress bar, and ``passes`` forward passes per batch whose recordings are averaged (with a stochastic
    network, e.g. LWTA in ``sample`` mode: the Monte-Carlo estimate of its expected activation); ``moments``
    also accumulates :attr:`Recording.moments` (one ``C x C`` float64 state per layer; the maps are never kept).

    ``seed``: batch b's passes draw from ``torch.manual_seed(batch_seed(seed, b))`` (:func:`lwtakit.shard.batch_seed`),
    so its draws do not depend on the batches before it or on the process that records it (None: the global RNG as
    it stands). ``collective``: record only this process's shard of a map-style probe set and gather it on rank 0
    (:mod:`lwtakit.shard`). ``memory_budget``: bytes of host memory the recorded rows may take; above it they are
    spilled to a memory-mapped temporary file in ``spill_dir`` (:mod:`lwtakit.rows`; None: no limit)."""

    batch_size: int = 256
    reduce: str = "mean"
    tokens: str = "cls"
    topk: int = 16
    device: str | torch.device = "cpu"
    progress: bool = True
    passes: int = 1
    moments: bool = False
    seed: int | None = None
    collective: Collective | None = None
    memory_budget: int | None = None
    spill_dir: str | None = None

    def __post_init__(self) -> None:
        if self.reduce == "none":
            raise UserError("record_activations keeps [N, C] per layer; use reduce='mean' or 'max'")
        if self.passes < 1:
            raise UserError(f"passes must be >= 1, got {self.passes}")
        if self.memory_budget is not None and self.memory_budget < 0:
            raise UserError(f"memory_budget must be >= 0 bytes, got {self.memory_budget}")

    @property
    def shard(self) -> Shard:
        return self.collective.shard if self.collective is not None else Shard()


@dataclass
class _Plan:
    """The batches one process records: a loader over them, their global indices, and the ``(start, stop)`` of
    every batch of the probe set (filled while iterating when a DataLoader is given)."""

    loader: Any
    batches: Iterable[int]
    bounds: list[tuple[int, int]]
    n: int | None  # probe images (None: a DataLoader)

    @property
    def images(self) -> int | None:
        """Images this process will record (a DataLoader: its dataset's length, if it has one)."""
        if self.n is None:
            return len(self.loader.dataset) if hasattr(self.loader.dataset, "__len__") else None
        return sum(self.bounds[b][1] - self.bounds[b][0] for b in self.batches)


def _plan(dataset_or_loader, opts: RecordOptions) -> _Plan:
    if isinstance(dataset_or_loader, torch.utils.data.DataLoader):
        if opts.shard.world > 1:
            raise UserError("a sharded recording needs the probe set as a map-style dataset, not a DataLoader")
        return _Plan(dataset_or_loader, itertools.count(), [], None)
    make_loader(dataset_or_loader, opts.batch_size)  # checks the dataset and batch size
    n = len(dataset_or_loader)
    bounds = batch_bounds(n, opts.batch_size)
    mine = opts.shard.batches(len(bounds))
    sampler = [list(range(*bounds[b])) for b in mine]
    loader = torch.utils.data.DataLoader(dataset_or_loader, batch_sampler=sampler, num_workers=0)
    return _Plan(loader, mine, bounds, n)


class _Store:
    """One process's recorded rows: per layer the reduced outputs, spatial maxes (conv layers) and per-image firing
    fractions, and the class labels, each a :class:`~lwtakit.rows.Rows`."""

    def __init__(self, layers: Sequence[str], images: int | None) -> None:
        self.acts = {name: Rows(images) for name in layers}
        self.maxes = {name: Rows(images) for name in layers}
        self.per_image = {name: Rows(images) for name in layers}
        self.labels = Rows(images)

    def all(self) -> list[Rows]:
        return [*self.acts.values(), *self.maxes.values(), *self.per_image.values(), self.labels]

    def add(self, hooks: dict[str, _LayerHook], labels: torch.Tensor | None) -> None:
        for name, hook in hooks.items():
            for pieces, rows in ((hook.outputs, self.acts[name]), (hook.maxes, self.maxes[name]),
                                 (hook.per_image, self.per_image[name])):
                if pieces:
                    rows.append(pieces[-1])
                    pieces.clear()
        if labels is not None:
            self.labels.append(torch.as_tensor(labels).reshape(-1))

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.all())

    def budget(self, image_bytes: float, n_images: int | None, opts: RecordOptions) -> None:
        """Spill every row store to disk when ``n_images`` of ``image_bytes`` each exceed ``opts.memory_budget``."""
        if opts.memory_budget is not None and n_images is not None and image_bytes * n_images > opts.memory_budget:
            for rows in self.all():
                rows.spill(opts.spill_dir)


def record_activations(model: nn.Module, dataset_or_loader, layers: Sequence[str],
                       options: RecordOptions | None = None, **overrides) -> Recording | None:
    """Run the probe set through ``model`` once and record the reduced activations of ``layers``.

    See :class:`Recording` for what is kept and :class:`RecordOptions` for how (``overrides`` are its fields,
    e.g. ``batch_size=64``). Model in eval mode and ``torch.inference_mode()`` inside; training flags and RNG
    states restored afterwards (:func:`analysis_mode`). With ``options.collective`` every process records its shard
    and rank 0 returns the recording of the whole probe set, equal to one process's; the other ranks return None.
    """
    opts = dataclasses.replace(options or RecordOptions(), **overrides)
    if isinstance(layers, str):
        layers = [layers]
    plan = _plan(dataset_or_loader, opts)
    store = _Store(layers, plan.images if plan.n is not None else None)
    # a process whose shard is empty (more processes than batches) runs no forward pass: its hooks never fire
    must_fire = plan.images != 0
    with analysis_mode(model), _hooks(model, layers, opts.reduce, opts.tokens, True, opts.moments, must_fire) as hooks:
        recorded = _record_batches(model, plan, hooks, store, opts)
    moments = {name: hook.moments for name, hook in hooks.items() if hook.moments is not None}
    spatial = {name: hook.is_spatial for name, hook in hooks.items()}
    sizes = [recorded]
    if opts.collective is not None:
        store, moments, sizes = _gather(opts.collective, plan, store, moments, recorded, opts)
        if store is None:
            return None
    if sum(sizes) == 0:
        raise UserError("the probe set is empty")
    return _recording(store, plan.bounds, spatial, moments, sizes, opts.topk)


def _record_batches(model: nn.Module, plan: _Plan, hooks: dict[str, _LayerHook], store: _Store,
                    opts: RecordOptions) -> int:
    """Record this process's batches into ``store``; returns the number of images."""
    from tqdm.auto import tqdm

    device = torch.device(opts.device)
    recorded = 0
    bar = tqdm(plan.loader, desc="recording", disable=not opts.progress, leave=False)
    for b, batch in zip(plan.batches, bar, strict=False):
        images, labels = split_batch(batch)
        if plan.n is None:  # a DataLoader: its batches as they come
            start = plan.bounds[-1][1] if plan.bounds else 0
            plan.bounds.append((start, start + images.shape[0]))
        if opts.seed is not None:
            torch.manual_seed(batch_seed(opts.seed, b))
        x = images.to(device, non_blocking=True)
        for _ in range(opts.passes):
            model(x)
        for hook in hooks.values():
            hook.flush(opts.passes)
        store.add(hooks, labels)
        recorded += images.shape[0]
        store.budget(store.nbytes / recorded, plan.images, opts)
    return recorded


def _gather(collective: Collective, plan: _Plan, store: _Store, moments: dict[str, Moments], recorded: int,
            opts: RecordOptions):
    """On rank 0: the rows of every rank reassembled in the probe set's batch order, the moments merged in rank
    order and the images each rank recorded (``recorded``: counted here); ``(None, {}, None)`` elsewhere. The rows
    travel a few batches at a time (at most :data:`lwtakit.shard.CHUNK_BYTES` a rank per gather), so neither side
    holds a second full copy."""
    sizes = collective.gather_object(recorded)
    whole = _Store(list(store.acts), plan.n) if collective.is_root else None
    if whole is not None:  # rank 0 recorded batch 0: its rows tell the bytes an image takes
        whole.budget(store.nbytes / max(1, sizes[0]), plan.n, opts)
    targets = whole.all() if whole is not None else [None] * len(store.all())  # the same order on every rank
    for mine, rows in zip(store.all(), targets, strict=True):
        gather_in_order(collective, mine.finish() if mine.tail is not None else None, plan.bounds,
                        None if rows is None else rows.append)
    merged = {}
    for name in store.acts if opts.moments else ():  # one C x C state a rank and layer (a rank without images: None)
        states = collective.gather_object(moments.get(name))
        parts = [m for m in states or () if m is not None]
        if parts:
            merged[name] = Moments(parts[0].num_units)
            for part in parts:  # in rank order
                merged[name].merge(part)
    return whole, merged, sizes


def _recording(store: _Store, bounds: list[tuple[int, int]], spatial: dict[str, bool], moments: dict[str, Moments],
               sizes: list[int], topk: int) -> Recording:
    """The recording of the whole probe set from its rows in batch order; the streaming statistics are updated batch
    by batch in that order, as one process would while recording."""
    rec = Recording(spatial=spatial, moments=moments, shard_sizes=[int(n) for n in sizes])
    for name, rows in store.acts.items():
        acts = rows.finish()
        rec.acts[name] = acts
        rec.acts_max[name] = store.maxes[name].finish() if store.maxes[name].count else acts
        per_image = store.per_image[name].finish()
        rec.firing_per_image[name] = per_image
        # every image has the same number of positions: the probe-set firing rate is the mean over images (float64
        # sums batch by batch: a float64 copy of the whole [N, C] would double the recording's memory for a moment)
        total = sum(per_image[start:stop].double().sum(0) for start, stop in bounds)
        rec.firing[name] = (total / per_image.shape[0]).float()
        rec.active_per_image[name] = per_image.sum(1)
        rec.stats[name] = UnitStats(acts.shape[1], topk)
        for start, stop in bounds:
            rec.stats[name].update(acts[start:stop], torch.arange(start, stop))
    if store.labels.count == sum(sizes):
        rec.labels = store.labels.finish()
    return rec
