"""``analyze.py dissect`` as a library call: dissect a loaded network, measure its labels, write the report.

:func:`dissect_to_report` runs :func:`lwtakit.dissect.dissect`, then adds what the report shows beyond the labels:
final-layer label accuracy and CLIP cos (CLIP-Dissect, Oikarinen & Weng 2023, sec. 4.2), planted-concept
coverage, completeness curves (Dey et al. 2020), top-image grids and, for a ``train.py`` run, the label drift of
its training-time dissections; ``labels.csv`` and ``report.html`` are staged and moved into place together.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lwtakit.dissect import ConceptSource, DissectionResult, DissectOptions, dissect
from lwtakit.labelers.base import Labeler
from lwtakit.models.precision import precision_of, precision_text
from lwtakit.rng import fork_rng


@dataclass
class DissectRequest:
    """What to dissect and show: ``layers``, ``labelers``, how (``options``), the ``grid_units`` best units per
    layer with top-image grids (0: all), the ``seed``, the run's label ``history`` (its labels.csv rows) for drift, and
    ``probe_name``, ``probe_text`` (the images in words) and ``source`` (checkpoint or run folder) for the report's
    header."""

    layers: list[str]
    labelers: list[Labeler]
    options: DissectOptions = field(default_factory=DissectOptions)
    grid_units: int = 12
    seed: int = 0
    history: list[dict] | None = None  # rows of lwtakit.drift.read_history
    probe_name: str = ""
    probe_text: str = ""  # the probe images in words (:func:`describe_images`): the report's header says them
    source: str = ""  # the checkpoint, run folder or torchvision:NAME given: the report's title and header name it


def dissect_to_report(loaded, probe, concepts: ConceptSource, request: DissectRequest,
                      out: str | Path) -> Path | None:
    """Dissect ``loaded.model`` (a :class:`lwtakit.checkpoint.LoadedModel`) on ``probe``, write ``out/labels.csv``
    and ``out/report.html``; returns the report's path. With ``request.options.collective`` every process records its
    shard and rank 0 alone goes on to measure and write; the other ranks return None."""
    from lwtakit import report
    from lwtakit.io import staged_dir

    model, opts = loaded.model, request.options
    started = time.perf_counter()
    with fork_rng(request.seed):  # every pass over the model from the request's seed, the caller's RNGs untouched
        result = dissect(model, probe, request.layers, request.labelers, concepts, opts)
        if result is None:  # another process's shard: rank 0 writes
            return None
        completeness = None
        if opts.pca_components:
            completeness = completeness_curves(model, probe, request.layers[:-1] or request.layers, result, request)
    evaluation = label_evaluation(result, loaded, probe, concepts.clip, request)
    heldout = heldout_evaluation(result, concepts, request)
    infos = layer_infos(model, result, probe, request)
    name, where = run_name(request.source, loaded)
    meta = {"run": name, "checkpoint": where, "model": _model_text(loaded),
            "LWTA inference mode": _mode_text(result, opts), "float precision": precision_text(precision_of(model)),
            "probe set": request.probe_text or f"{len(probe)} images",
            "labels chosen / scored on": _split_text(result, len(probe)), "seed": str(request.seed),
            "layers": ", ".join(request.layers), "methods": ", ".join(labeler.name for labeler in request.labelers),
            **_labeler_meta(request), **_shard_meta(result), "seconds": f"{time.perf_counter() - started:.1f}"}
    with staged_dir(out) as stage:
        result.table.write_csv(stage / "labels.csv")
        sections = report.Sections(meta=meta, evaluation=evaluation, completeness=completeness,
                                   drift=drift_curves(request.history), heldout=heldout)
        report.dissection_report(stage, title=f"Dissection of {name}", rows=result.table,
                                 layers=infos, sections=sections)
    return Path(out) / "report.html"


# Images an analysis takes from a split when no size is given: the whole split up to this many.
DEFAULT_IMAGES = 1000
SPLIT_WORDS = {"train": "training", "val": "validation", "test": "test"}


def take_images(dataset, size: int | None, seed: int, flag: str):
    """A seeded subset (:func:`lwtakit.data.probe_subset`) of ``size`` images of ``dataset``: None takes all of it up
    to :data:`DEFAULT_IMAGES`; a size larger than the split is a :class:`UserError` naming ``flag``, before any
    work (it used to fall back to the whole split without a word)."""
    from lwtakit.data import probe_subset
    from lwtakit.errors import UserError

    available = len(dataset)
    if size is not None and size > available:
        raise UserError(f"{flag} {size} exceeds the {available} images of the split it draws from; give "
                        f"{flag} {available} or less (or leave it out: all of them, up to {DEFAULT_IMAGES})")
    return probe_subset(dataset, min(available, DEFAULT_IMAGES) if size is None else size, seed)


def describe_images(subset, split: str, source: str, seed: int) -> str:
    """What images an analysis used, in words: the ``split`` of which data (``source``, e.g. "the run's", with a
    synthetic generator's seed), how many it holds and how many were used (all, or a subset drawn with ``seed``)."""
    parent = getattr(subset, "parent", subset)
    total, used = len(parent), len(subset)
    data_seed = getattr(parent, "seed", None) if type(parent).__name__ == "ConceptShapes" else None
    where = f"{source} {SPLIT_WORDS.get(split, split)} split" if split else source  # "": a folder, no splits
    where += f" (generator seed {data_seed})" if data_seed is not None else ""
    amount = f"all its {total} images" if used == total else f"{used} of its {total} images (subset seed {seed})"
    return f"{where}, {amount}"


def run_name(source: str, loaded) -> tuple[str, str]:
    """``(name, checkpoint)`` of what was dissected: a ``train.py`` run is named by its folder (``default``, not
    ``default:last.ckpt``), anything else by the loaded model's name; the checkpoint is the file that was read."""
    from lwtakit.checkpoint import last_checkpoint

    path = Path(source)
    if not source or source.startswith("torchvision:"):
        return loaded.name, source or loaded.name
    if path.is_dir():  # a run folder (load_model already checked it and printed any note)
        return path.resolve().name, str(last_checkpoint(path / "checkpoints")[0])
    in_run = path.resolve().parent.name == "checkpoints"  # runs/<name>/checkpoints/<file>.ckpt
    return (path.resolve().parent.parent.name if in_run else path.stem), str(path)


def _model_text(loaded) -> str:
    """Architecture, activation and U of a train.py checkpoint (its config), else the model's name."""
    cfg = getattr(loaded, "cfg", None)
    if cfg is None:
        return loaded.name
    return f"{cfg.model.name}, {cfg.model.act}" + (f", U={cfg.model.U}" if cfg.model.act == "lwta" else "")


def label_evaluation(result: DissectionResult, loaded, probe, clip, request: DissectRequest) -> dict[str, float]:
    """Final-layer label accuracy (and CLIP cos when a CLIP is loaded) of each method when the last layer is the
    classifier; planted-concept coverage per method on a probe set that plants concepts."""
    from lwtakit.evaluation import class_name_similarity, concept_coverage, final_layer_accuracy
    from lwtakit.models import default_layers

    table, out = result.table, {}
    methods = [labeler.name for labeler in request.labelers]
    classifier = request.layers[-1]
    if classifier in default_layers(loaded.model)[-1:]:
        for method in methods:
            final = table.select(classifier, method).rows
            if not final:
                continue  # e.g. IoU has no labels for a linear layer
            acc = final_layer_accuracy(final, loaded.class_names)
            out.update({f"final-layer label {k} ({method})": v for k, v in acc.items() if k != "n"})
            if clip is not None:  # CLIP-Dissect's "CLIP cos": label vs class name in CLIP's text space
                out[f"final-layer label CLIP cos ({method})"] = class_name_similarity(final, loaded.class_names,
                                                                                     clip.encode_texts)
    if getattr(probe, "concept_groups", None):
        for method in methods:
            coverage = concept_coverage(table.select(method=method).rows, probe.concept_groups)
            out.update({f"{k} ({method})": v for k, v in coverage.items()})
    return out


def _labeler_meta(request: DissectRequest) -> dict[str, str]:
    """The settings each labeler names in the report's header (:meth:`~lwtakit.labelers.base.Labeler.report_meta`:
    INVERT's parsimony and p-value), the first labeler's where two name the same setting."""
    out: dict[str, str] = {}
    for labeler in request.labelers:
        out = {**labeler.report_meta(), **out}
    return out


def _shard_meta(result: DissectionResult) -> dict[str, str]:
    """How many processes recorded the probe set, and how many images each (nothing for one process)."""
    sizes = result.recording.shard_sizes
    if len(sizes) < 2:
        return {}
    return {"processes": f"{len(sizes)}, each recorded its shard of the probe set (images: "
                         f"{', '.join(map(str, sizes))}); rank 0 labelled"}


def _mode_text(result: DissectionResult, opts: DissectOptions) -> str:
    """The function of the network that was dissected, in words (the LWTA mode and its passes)."""
    if result.mode is None:
        return "none: a dense network (one deterministic function), or the LWTA layers' own mode"
    if result.mode == "mc":
        return f"mc: the mean of {opts.passes} seeded stochastic passes (the function the network is evaluated as)"
    return {"sample": "sample: one seeded stochastic pass",
            "argmax": "argmax: the most likely winner of every block (deterministic)"}.get(result.mode, result.mode)


def _split_text(result: DissectionResult, n: int) -> str:
    if result.split is None:
        return f"all {n} images (in-sample: scores are optimistic)"
    return (f"{len(result.split.explain)} / {len(result.split.evaluate)} images (seeded split; every held-out "
            "score is on images the label was not chosen on)")


def heldout_evaluation(result: DissectionResult, concepts: ConceptSource, request: DissectRequest):
    """The report's :class:`lwtakit.report.dissect.HeldOut` (None for an in-sample dissection): per (layer,
    method) the held-out means of the labels (F1, AUPRC, correlation, share significant, concepts per unit); and
    the NeuronEval sanity tests of every metric on the evaluation part with each unit's formula label
    (:func:`_sanity`: share of units whose score drops when half the label's positives go missing / when random
    positives double them; a metric passes at >= 90% on both)."""
    from lwtakit.report.dissect import HeldOut

    if result.split is None:
        return None
    means = {key: s.heldout for key, s in result.table.summaries().items() if s.heldout}
    sanity = ()
    if concepts.has_labels:
        from lwtakit.evaluation.sanity import SanityConfig

        config = SanityConfig(seed=request.seed, alpha=request.options.heldout.alpha)
        sanity = label_sanity(result, concepts, request.layers, config)
    return HeldOut(split=_split_text(result, len(result.split.explain) + len(result.split.evaluate)), means=means,
                   sanity=sanity)


def label_sanity(result: DissectionResult, concepts: ConceptSource, layers: Sequence[str], config) -> tuple:
    """NeuronEval's sanity tests (:mod:`lwtakit.evaluation.sanity`, ``config`` a
    :class:`~lwtakit.evaluation.sanity.SanityConfig`) on the evaluation part of a held-out dissection, every
    labelled layer's units side by side, with the labels of the first method whose rows carry formulas over the
    probe's concepts (:meth:`~lwtakit.labels.LabelRow.concept_formula`: INVERT's): the rows of ``config.metrics`` and
    of the verdict's matched kappa; ``()`` without such a method or a unit labelled with the probe's concepts."""
    from lwtakit.evaluation.heldout import label_vectors_for
    from lwtakit.evaluation.sanity import sanity_check, scorer_row
    from lwtakit.evaluation.unit_metrics import KAPPA_MATCHED, matched_sanity_scorer

    resolved = concepts.resolved(result.recording)
    concepts_eval = torch.as_tensor(result.split.parts(resolved.labels)[1])
    method = next((r.method for r in result.table if r.concept_formula() is not None), None)
    acts, vectors = [], []
    for layer in layers if method else ():
        rows = result.table.select(layer, method).rows
        if not rows:
            continue
        v, labelled = label_vectors_for(rows, concepts_eval, list(resolved.names), skip_unknown=True)
        acts.append(result.split.parts(result.recording.acts[layer])[1][:, [r.unit for r in rows]][:, labelled])
        vectors.append(v[:, labelled])
    if not acts:
        return ()
    acts, vectors = torch.cat(acts, 1), torch.cat(vectors, 1)
    rows = sanity_check(acts, concepts_eval, config, units=range(acts.shape[1]), label_vectors=vectors).rows
    # the verdict's label metric is no NeuronEval metric: the same tests, its threshold fixed by the original label
    return (*rows, scorer_row(KAPPA_MATCHED, matched_sanity_scorer(), (-1.0, 1.0), acts, vectors, config))


def completeness_curves(model, probe, layers: list[str], result: DissectionResult,
                        request: DissectRequest) -> dict[str, dict[str, Any]]:
    """Dey et al. 2020: variance explained and accuracy under ablation, top-k PCs vs top-k neurons, both bases
    from the dissection's per-position moments (conv layers: every image x position of the explanation images);
    the ablation accuracy is measured on the whole probe set, with a progress bar over the k values."""
    from lwtakit.labelers.pca import ablation_curve, variance_curves
    from lwtakit.labelers.run_options import RunOptions

    run = RunOptions(batch_size=request.options.batch_size, device=request.options.device, seed=request.seed,
                     progress=request.options.progress)
    curves = {}
    for layer in layers:
        moments = result.moments[layer]
        v = variance_curves(moments)
        entry = {"k": v["k"].tolist(), "pca_variance": v["pca"].tolist(), "neuron_variance": v["neurons"].tolist()}
        if result.recording.labels is not None:
            C = moments.num_units
            ks = sorted({0, *[int(round(C * f)) for f in (0.05, 0.1, 0.25, 0.5, 0.75)], C})
            entry["k_ablation"] = ks
            for basis, key in (("pca", "pca_ablation_acc"), ("neurons", "neuron_ablation_acc")):
                entry[key] = ablation_curve(model, layer, probe, basis, ks, acts=moments, run=run)
        curves[layer] = entry
    return curves


def layer_infos(model, result: DissectionResult, probe, request: DissectRequest) -> list:
    """Per layer: units, the top images of its best units and, for an activation layer (LWTA, ReLU, GELU), its
    measured active fraction and firing rates (a linear layer's outputs are all non-zero, so it gets none); per pole
    of its principal directions (``<layer>#pca+`` / ``-``): the top images of its best directions."""
    from lwtakit.labels import PCA_SUFFIX, POLES, pca_pole
    from lwtakit.models import activation_layers
    from lwtakit.report import LayerInfo

    infos, activations = [], set(activation_layers(model))
    poles = [layer + PCA_SUFFIX + pole for layer in result.directions for pole in POLES]
    for layer in [*request.layers, *poles]:
        units = [u for u, _ in result.table.best_units(layer, request.grid_units or None)]
        top = {u: torch.stack([probe[i][0] for i in result.top_images(layer, u, request.options.topk)])
               for u in units}
        pole = pca_pole(layer)
        if pole is not None:  # a pole of directions: no firing rates
            infos.append(LayerInfo(name=layer, units=len(result.directions[pole[0]].components), top_images=top))
            continue
        firing = result.recording.firing[layer].numpy()
        active = layer in activations
        infos.append(LayerInfo(name=layer, units=len(firing), active_fraction=float(firing.mean()) if active else None,
                               firing=firing if active else None, top_images=top, activation=active))
    return infos


def drift_curves(history: list[dict] | None) -> dict[str, list] | None:
    """Label agreement between consecutive training-time dissections, per layer and method, from a run's
    label history (:func:`lwtakit.drift.read_history`; None without one)."""
    if not history:
        return None
    from lwtakit.drift import agreement

    return {f"{layer} ({m})": pts for m in dict.fromkeys(r["method"] for r in history)
            for layer, pts in agreement(history, m).items()} or None


def run_history(spec: str) -> list[dict] | None:
    """The label history (labels.csv rows, checked) of the run a checkpoint or run folder ``spec`` belongs to, or
    None when its folder has no labels.csv; read up front, so that a malformed file fails before any work."""
    from lwtakit.checkpoint import resolve_run
    from lwtakit.drift import read_history

    run_dir, ckpt = resolve_run(spec, say=False)  # the caller loads the run too, and says which checkpoint
    path = (run_dir or ckpt.resolve().parent.parent) / "labels.csv"
    return read_history(path) if path.is_file() else None
