"""Network-Dissection IoU labels for conv units where concept segmentation masks exist.

Bau et al., "Network Dissection: Quantifying Interpretability of Deep Visual Representations", CVPR 2017,
sec. 2.2: for unit k, the threshold ``T_k`` is the top ``quantile`` (0.005, i.e. the 99.5th percentile)
of all its activation values over the probe set (every image x position); each activation map is
upsampled (bilinear) to the mask resolution and binarised at ``T_k``; the dataset-level score is
``IoU_{k,c} = sum_x |M_k(x) ∩ L_c(x)| / sum_x |M_k(x) ∪ L_c(x)|`` (their eq. 1), and a unit's label is
the concept with the highest IoU (they call a unit a detector when IoU > 0.04).

Two streaming passes over the probe set, never keeping the maps:

1. Threshold: per unit, the exact ``m = max(1, round(quantile * N * h * w))`` largest raw activations
   (at the layer's own resolution) are kept with a running ``topk``; ``T_k`` is the smallest of them.
   This is exact (no histogram approximation); memory is ``C x m``, i.e. ``quantile`` times the size of
   all maps (0.5%), independent of the upsampled resolution.
2. Intersections and unions: upsample a batch of maps (chunked over units), binarise, and add
   ``|M ∩ L|`` for all units x concepts with one matmul per chunk.

Binarisation uses ``act >= T_k`` (with ties at the threshold included, so a unit whose top activations
are all equal still covers them) but never marks the unit's minimum value (a unit that is mostly zero,
e.g. an LWTA loser, does not light up everywhere).

Directions as units (Dey et al. 2020, with PCA directions): given ``directions = (mean [C], V [k, C])``, each
position's channel vector y is replaced by its scores ``V (y - mean)`` before both passes, so the k
directions are dissected exactly like k units.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lwtakit.models.precision import widened

from ..errors import UserError
from ..labels import LabelRow
from ..recording import analysis_mode, capture, resolve_module, split_batch
from ..shard import Shard, batch_bounds, batch_seed
from .base import MASKS, SPATIAL, Context, Labeler, Target, register_labeler, rows_from_dicts
from .configs import IoUConfig
from .run_options import RunOptions


def _maps(model, layer: str, images: torch.Tensor, device, directions=None) -> torch.Tensor:
    with capture(model, [layer], reduce="none") as out:
        model(images.to(device))
    maps = out[layer][-1]
    if maps.dim() != 4:
        raise UserError(f"IoU needs a conv layer with [B, C, H, W] output; {layer!r} gives {tuple(maps.shape)}")
    maps = widened(maps)  # float64 until rounded in _probe_maps
    if directions is not None:  # per-position scores on the directions: [B, k, H, W]
        mean, V = (t.to(maps.device, maps.dtype) for t in directions)
        maps = torch.einsum("bchw,kc->bkhw", maps - mean.view(1, -1, 1, 1), V)
    return maps


def _images(dataset, idx: Sequence[int]) -> torch.Tensor:
    items = [dataset[i] for i in idx]
    images, _ = split_batch(torch.utils.data.default_collate(items))
    return images


def _settings(config: IoUConfig | None, run: RunOptions | None, overrides: dict) -> tuple[IoUConfig, RunOptions]:
    """``config`` and ``run`` (defaults :class:`IoUConfig`, :class:`RunOptions`) with ``overrides`` applied, each
    keyword to the one of the two that has such a field (``quantile=...``, ``batch_size=...``)."""
    names = {f.name for f in dataclasses.fields(IoUConfig)}
    config = dataclasses.replace(config or IoUConfig(), **{k: v for k, v in overrides.items() if k in names})
    run = dataclasses.replace(run or RunOptions(), **{k: v for k, v in overrides.items() if k not in names})
    return config, run


def _check_probe(model: torch.nn.Module, dataset, layer: str) -> None:
    if not hasattr(dataset, "concept_masks"):
        raise UserError("IoU labels need a probe set with segmentation masks (dataset.concept_masks(i)), "
                        "e.g. the synthetic ConceptShapes dataset")
    resolve_module(model, layer)
    if len(dataset) == 0:
        raise UserError("the probe set is empty")


def _probe_maps(model: torch.nn.Module, dataset, layer: str, run: RunOptions, directions, desc: str):
    """``(indices, maps [B, C, h, w])`` per batch of this process's share of the probe set (all of it without
    ``run.collective``, :mod:`lwtakit.shard`), each batch's draws seeded by ``(run.seed, batch index)``, so that both
    passes, and every process, see the maps of a stochastic model that one process sees. With ``run.passes`` > 1
    a batch's maps are the mean of that many passes: the mc function, drawn as the recording draws it."""
    from tqdm.auto import tqdm

    device = torch.device(run.device)
    bounds = batch_bounds(len(dataset), run.batch_size)
    shard = run.collective.shard if run.collective is not None else Shard()
    for b in tqdm(list(shard.batches(len(bounds))), desc=desc, disable=not run.progress, leave=False):
        torch.manual_seed(batch_seed(run.seed, b))
        idx = list(range(*bounds[b]))
        images = _images(dataset, idx)
        maps = _maps(model, layer, images, device, directions)
        for _ in range(run.passes - 1):
            maps += _maps(model, layer, images, device, directions)
        # thresholds and pixels are compared in float32, rounded once from the network's dtype: under
        # --precision 64 a pixel within float64 rounding of its threshold would otherwise differ between CPUs
        yield idx, (maps / run.passes if run.passes > 1 else maps).float()


def _threshold_pass(batches, quantile: float, N: int) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
    """Pass 1: ``(top [C, <= m], min_k [C], m)``: each unit's exact top ``m = max(1, round(quantile * N * h * w))``
    activations over ``batches`` of maps (a running ``topk``, descending) and its minimum activation; Nones and 0
    for no batches."""
    top = unit_min = None
    m = 0
    for _, maps in batches:
        B, C, h, w = maps.shape
        if top is None:
            m = max(1, int(round(quantile * N * h * w)))
            top = torch.empty(C, 0, device=maps.device)
            unit_min = torch.full((C,), float("inf"), device=maps.device)
        flat = maps.transpose(0, 1).reshape(C, -1)
        unit_min = torch.minimum(unit_min, flat.amin(1))
        both = torch.cat([top, flat], 1)
        top = torch.topk(both, min(m, both.shape[1]), dim=1).values
    return top, unit_min, m


def _thresholds(top: torch.Tensor | None, unit_min: torch.Tensor | None, m: int,
                run: RunOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """``(T_k, min_k)``: the smallest of the top ``m`` and the minimum; with ``run.collective``, of the candidates
    every process kept (the top m of the union is the top m of the processes' top m), on every process."""
    if run.collective is None:
        return top[:, -1].clone(), unit_min
    c = run.collective
    tops = c.gather(None if top is None else top.t().contiguous())  # [m_r, C] a rank
    mins = c.gather(None if unit_min is None else unit_min[None])
    merged = None
    if c.is_root:  # rank 0 recorded batch 0: its m is the probe set's
        both = torch.cat([t for t in tops if t.numel()]).t()
        merged = torch.topk(both, min(m, both.shape[1]), dim=1).values[:, -1].clone(), torch.cat(mins).amin(0)
    return tuple(t.to(run.device) for t in c.broadcast_object(merged))


def _sums(parts: tuple, run: RunOptions) -> tuple | None:
    """Pass 2's sums added over the processes in rank order, on rank 0 (None elsewhere); as they are in one."""
    if run.collective is None:
        return parts
    gathered = [run.collective.gather(None if p is None else p[None]) for p in parts]
    return None if gathered[0] is None else tuple(torch.cat(g).sum(0) for g in gathered)


def _overlap_pass(batches, dataset, thresholds: torch.Tensor, unit_min: torch.Tensor,
                  max_elements: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pass 2: float64 ``(sum_x |M_k ∩ L_c| [C, K], sum_x |M_k| [C], sum_x |L_c| [K])`` with ``M_k`` the map
    upsampled (bilinear) to mask resolution and binarised at ``T_k`` (never at the unit's minimum); units are
    chunked so that at most about ``max_elements`` upsampled values exist at once."""
    inter = act_area = mask_area = None  # stay None for a process without batches
    for idx, maps in batches:
        masks = torch.from_numpy(np.stack([np.asarray(dataset.concept_masks(i), bool) for i in idx]))
        masks = masks.to(maps.device)
        B, C = maps.shape[:2]
        K, H, W = masks.shape[1:]
        if inter is None:
            inter = torch.zeros(C, K, dtype=torch.float64, device=maps.device)
            act_area = torch.zeros(C, dtype=torch.float64, device=maps.device)
            mask_area = torch.zeros(K, dtype=torch.float64, device=maps.device)
        L = masks.permute(1, 0, 2, 3).reshape(K, -1).t().float()  # [B*H*W, K]
        mask_area += L.sum(0).double()
        chunk = max(1, max_elements // (2 * B * H * W))  # float64: half the elements of float32's memory
        for lo in range(0, C, chunk):
            # Upsampled in float64 from the float32 maps: bilinear weights of power-of-two scales (1/4, 3/4, 1/16,
            # ...) make every product and sum exact there, so a pixel between equal neighbours equals them and a
            # pixel at a threshold is the same on every CPU (in float32 0.75 a + 0.25 a is a only with FMA).
            part = maps[:, lo:lo + chunk].double()
            if part.shape[2:] != (H, W):
                part = F.interpolate(part, size=(H, W), mode="bilinear", align_corners=False)
            t = thresholds[lo:lo + chunk].double().view(1, -1, 1, 1)
            lowest = unit_min[lo:lo + chunk].double().view(1, -1, 1, 1)
            on = (part >= t) & (part > lowest)
            on = on.transpose(0, 1).reshape(on.shape[1], -1).float()  # [chunk, B*H*W]
            act_area[lo:lo + chunk] += on.sum(1).double()
            inter[lo:lo + chunk] += (on @ L).double()
    return inter, act_area, mask_area


def iou_matrix(model: torch.nn.Module, dataset, layer: str, config: IoUConfig | None = None,
               run: RunOptions | None = None, *, directions: tuple[torch.Tensor, torch.Tensor] | None = None,
               max_elements: int = 1 << 26, **overrides) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Dataset-level IoU ``[C, K]`` (float64; NaN for concepts whose masks are empty on the whole probe
    set) and the thresholds ``T_k [C]`` of Network Dissection (Bau et al. 2017, eq. 1; see the module docstring).

    ``dataset[i]`` gives ``(image, label)`` and ``dataset.concept_masks(i)`` bool ``[K, H, W]``. ``config``: the
    quantile (:class:`IoUConfig`); ``run``: batch size, device, seed, progress (:class:`RunOptions`);
    ``overrides``: fields of either (``quantile=0.01, batch_size=16``). A stochastic model (LWTA sampling) is
    run with the same seed in both passes so they see the same maps. ``directions = (mean [C], V [k, C])``
    dissects the k directions instead of the C units (module docstring). With ``run.collective`` each process streams
    its batches and rank 0 gets the result (the other ranks None).
    """
    config, run = _settings(config, run, overrides)
    _check_probe(model, dataset, layer)
    with analysis_mode(model):
        thresholds, unit_min = _thresholds(*_threshold_pass(
            _probe_maps(model, dataset, layer, run, directions, "IoU thresholds"), config.quantile, len(dataset)), run)
        sums = _sums(_overlap_pass(_probe_maps(model, dataset, layer, run, directions, "IoU overlaps"), dataset,
                                   thresholds, unit_min, max_elements), run)
    if sums is None:  # not rank 0: its sums went there
        return None
    inter, act_area, mask_area = sums
    union = act_area[:, None] + mask_area[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))
    iou[:, mask_area == 0] = float("nan")
    return iou.cpu(), thresholds.cpu()


def label_units(model: torch.nn.Module, dataset, layer: str, concept_names: Sequence[str] | None = None,
                config: IoUConfig | None = None, run: RunOptions | None = None, *,
                directions: tuple[torch.Tensor, torch.Tensor] | None = None, **overrides) -> list[dict]:
    """One row per unit of ``layer``: ``unit, label, score (= iou), iou, threshold, top5`` with the
    concept of highest dataset-level IoU (Network Dissection, Bau et al. 2017); concepts whose masks are
    empty on the probe set are skipped. ``concept_names`` default to ``dataset.concept_names``; ``config``,
    ``run`` and ``overrides`` as in :func:`iou_matrix`. With ``directions`` the rows are those directions
    (e.g. PCA components) instead of the layer's units."""
    names = list(concept_names if concept_names is not None else getattr(dataset, "concept_names", []))
    result = iou_matrix(model, dataset, layer, config, run, directions=directions, **overrides)
    if result is None:  # another process's share (run.collective): rank 0 labels
        return []
    iou, thresholds = result
    if len(names) != iou.shape[1]:
        raise UserError(f"{len(names)} concept names for {iou.shape[1]} concept masks")
    valid = ~torch.isnan(iou[0]) if iou.shape[0] else torch.zeros(0, dtype=torch.bool)
    if not bool(valid.any()):
        raise UserError("every concept mask is empty on the probe set; nothing to label")
    scores = torch.where(valid, iou, torch.full_like(iou, -1.0))
    order = torch.argsort(scores, dim=1, descending=True)
    rows = []
    for unit in range(iou.shape[0]):
        best = int(order[unit, 0])
        top5 = [names[int(k)] for k in order[unit, :5] if valid[int(k)]]
        rows.append({"unit": unit, "label": names[best], "score": float(iou[unit, best]),
                     "iou": float(iou[unit, best]), "threshold": float(thresholds[unit]), "top5": top5})
    return rows


@register_labeler
class IoULabeler(Labeler):
    """Network-Dissection IoU of each unit's (or direction's) top-quantile maps with the probe's concept masks;
    a second, streaming pass over the probe set (the recording keeps no maps)."""

    name = "iou"
    config_class = IoUConfig
    needs = frozenset({MASKS, SPATIAL})

    sharded = True

    def label(self, target: Target, ctx: Context) -> list[LabelRow]:
        # ctx.run: the dissection's batch size, device, processes and function (mc: its passes and seed)
        dicts = label_units(ctx.model, ctx.probe, target.layer, list(ctx.probe.concept_names), self.config, ctx.run,
                            directions=target.directions)
        return rows_from_dicts(dicts, target, self.name)
