"""Put trained runs side by side (typically an LWTA network and its dense twin).

For each run (a ``train.py`` run folder or a checkpoint) :func:`summarize_run` measures, on the run's own
data: test accuracy under every inference mode, the active fraction of every activation layer, INVERT label
quality of the default layers (final-layer label accuracy, planted-concept coverage, mean score, distinct
labels), label stability over training (from the run's ``labels.csv``), PCA
completeness of the last activation layer (Dey et al. 2020) and per-image counts of active units.
:func:`compare` writes ``report.html`` and ``compare.csv`` (run, metric, value).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from lwtakit.analysis import describe_images, run_history, take_images
from lwtakit.checkpoint import load_run
from lwtakit.config import DissectionConfig
from lwtakit.dissect import ConceptSource, DissectOptions, dissect, record
from lwtakit.errors import UserError
from lwtakit.evaluation.metrics import METRICS
from lwtakit.evaluation.options import HeldOutOptions
from lwtakit.evaluation.verdict import SIGNIFICANT, VERDICT_METRICS
from lwtakit.lwta import lwta_inference, lwta_layers, mc_predict
from lwtakit.models import activation_layers
from lwtakit.models.precision import at_precision, precision_text
from lwtakit.recording import analysis_mode, make_loader, resolve_module, split_batch
from lwtakit.rng import fork_rng


def accuracy_by_mode(model: nn.Module, dataset, modes: list[str], mc_samples: int = 4, seed: int = 0,
                     batch_size: int = 256, device="cpu", mc_average: str = "probs") -> dict[str, float]:
    """Top-1 accuracy of ``model`` on ``dataset`` under each LWTA inference mode (sample, argmax, mc: ``mc_samples``
    passes averaged as ``mc_average`` says, see :func:`~lwtakit.lwta.mc_predict`), each from the same seed; the
    model's training flag, LWTA modes and the global RNGs are left as they were."""
    has_lwta = bool(lwta_layers(model))
    out = {}
    with analysis_mode(model):
        for mode in modes:
            # mc_predict samples on its own; without LWTA layers the mode names the dense evaluation
            fixed = mode if has_lwta and mode != "mc" else None
            with fork_rng(seed), lwta_inference(model, fixed):
                correct = total = 0
                for batch in make_loader(dataset, batch_size):
                    x, y = split_batch(batch)
                    x = x.to(device)
                    probs = mc_predict(model, x, mc_samples, mc_average) if mode == "mc" else model(x)
                    correct += int((probs.argmax(-1).cpu() == y).sum())
                    total += len(y)
            out[mode] = correct / max(total, 1)
    return out


@dataclass
class CompareOptions:
    """How every run of a comparison is measured: ``probe_size`` validation images for sparsity and labels,
    ``eval_size`` test images for accuracy (None: all of a split, up to 1000), the ``seed`` of subsets and passes,
    the ``device``, the ``layers`` labelled in every run (None: each run's last stage and classifier,
    :func:`lwtakit.models.default_layers`), the mc ``passes`` an LWTA network is dissected with (labels, sparsity and
    the split-half reliability that corrects its correlations), the float ``precision`` of the networks
    (:mod:`lwtakit.models.precision`),
    ``force`` (compare runs on different data) and ``progress``. Arms (:mod:`lwtakit.arms_compare`): ``arms`` named
    explicitly as ``(name, runs)``, the ``reference`` arm of the differences (None: the first dense arm) and
    ``at_accuracy``, the validation accuracy whose first epoch gives each run's per-unit table (None: compare's own
    dissection of the final checkpoint)."""

    probe_size: int | None = None  # None: the whole split, up to lwtakit.analysis.DEFAULT_IMAGES
    eval_size: int | None = None
    seed: int = 0
    device: Any = "cpu"
    layers: list[str] | None = None
    passes: int = DissectionConfig.passes  # the schema's default, as dissect and training use
    precision: int = 32
    force: bool = False  # compare runs whose data differ (lwtakit.comparable), the report saying so first
    progress: bool = True  # a bar per run and stage on stderr (tqdm: off when stderr is not a terminal)
    arms: list[tuple[str, list[str]]] = field(default_factory=list)
    reference: str | None = None
    at_accuracy: float | None = None


def summarize_run(spec: str, options: CompareOptions, history: list[dict] | None = None, stage=lambda _: None):
    """Everything :func:`compare` shows about one run, as a :class:`lwtakit.report.RunSummary`; ``history`` is
    the run's label history (:func:`lwtakit.analysis.run_history`), for its stability over training; ``stage``
    is told each stage's name as it starts (the progress bar)."""
    from lwtakit.labelers.pca import variance_curves
    from lwtakit.models import default_layers
    from lwtakit.report import RunSummary

    run_dir, loaded = load_run(spec)
    ckpt = loaded.path
    seed, device = options.seed, options.device
    model, cfg = at_precision(loaded.model, options.precision).to(device), loaded.cfg
    labelled = options.layers or default_layers(model)
    for layer in labelled:  # a wrong name fails before any measurement
        resolve_module(model, layer)
    has_lwta = bool(lwta_layers(model))
    modes = ["sample", "argmax", "mc"] if has_lwta else ["dense"]
    test = take_images(loaded.dataset("test"), options.eval_size, seed, "--eval-size")
    probe = take_images(loaded.dataset("val"), options.probe_size, seed, "--probe-size")  # both checked up front
    stage("accuracy")
    # mc as the run's config evaluates it (eval.mc_samples passes, averaged as eval.mc_average says)
    accuracy = accuracy_by_mode(model, test, [m if m != "dense" else "argmax" for m in modes], seed=seed,
                                device=device, mc_samples=cfg.eval.mc_samples, mc_average=cfg.eval.mc_average)
    if not has_lwta:
        accuracy = {"dense": accuracy["argmax"]}

    stage("activations and labels")
    act_layers = activation_layers(model)
    opts, concepts = _dissect_options(options), ConceptSource.from_dataset(probe)
    with fork_rng(seed):  # sparsity and completeness need every activation layer, the labels only `labelled`
        rec = record(model, probe, list(dict.fromkeys(act_layers + labelled)), opts, moments=True)
        result = dissect(model, probe, labelled, ["invert"], concepts, opts, recording=rec)
    table = result.table
    quality, layer_stats = label_quality(table, loaded.class_names, probe)
    stage("IoU labels and completeness")
    if hasattr(probe, "concept_masks"):  # per-pixel concept masks (the synthetic data): NetDissect's count too
        with fork_rng(seed):
            iou = dissect(model, probe, labelled, ["iou"], concepts, replace(opts, heldout=None), recording=rec)
        add_interpretable_units(layer_stats, iou.table)
    interpretability, unit_values = interpretability_of(table, seed)
    stability = None if history is None else training_stability(history, layer_stats)
    explained = act_layers[-1]
    v = variance_curves(rec.moments[explained])  # per position, as Dey et al. (2020) fit conv layers
    completeness = {explained: {"k": v["k"].tolist(), "pca_variance": v["pca"].tolist(),
                                "neuron_variance": v["neurons"].tolist()}}
    active_counts = rec.active_per_image[explained].numpy()
    meta = {"checkpoint": str(ckpt), "model": f"{cfg.model.name} {cfg.model.act} U={cfg.model.U}",
            "data": cfg.data.name, "epochs": cfg.trainer.max_epochs, "layers labelled": ", ".join(labelled),
            "mc passes (accuracy)": cfg.eval.mc_samples if has_lwta else "–", **_trained(run_dir),
            "test images (accuracy)": describe_images(test, "test", "the run’s", seed),
            "probe images (sparsity, labels)": describe_images(probe, "val", "the run’s", seed)}
    return RunSummary(name=run_dir.name if run_dir else ckpt.stem, meta=meta, accuracy=accuracy,
                      sparsity={n: float(rec.firing[n].mean()) for n in act_layers}, label_quality=quality,
                      layer_stats=layer_stats, stability=stability, completeness=completeness,
                      active_counts=active_counts, interpretability=interpretability, unit_values=unit_values,
                      labels=table, sanity=_sanity(result, concepts, labelled, seed))


def _dissect_options(options: CompareOptions) -> DissectOptions:
    """How compare dissects every run (through the one composition root,
    :func:`lwtakit.dissection_setup.dissect_options`): the network as it is evaluated (mc: the mean of
    ``options.passes`` seeded stochastic passes), labels held out, and the split-half reliability of the passes that
    corrects the correlations for the noise only a stochastic network has."""
    from lwtakit.dissection_setup import SetupOptions, dissect_options

    cfg = DissectionConfig(batch_size=256, top_images=16, passes=options.passes, reliability=True,
                           heldout=HeldOutOptions(seed=options.seed))
    return dissect_options(cfg, SetupOptions(device=options.device, seed=options.seed))


def _sanity(result, concepts: ConceptSource, layers: list[str], seed: int) -> tuple:
    """NeuronEval's sanity tests (one perturbation per unit) of the label metrics the seed-level verdict may test,
    on this run's held-out images with each unit's label (:data:`~lwtakit.evaluation.unit_metrics.SANITY_TESTED_AS`);
    a metric enters the verdict only if it passes on every run of every arm."""
    from lwtakit.analysis import label_sanity
    from lwtakit.evaluation.sanity import SanityConfig
    from lwtakit.evaluation.unit_metrics import SANITY_TESTED_AS

    if not concepts.has_labels:
        return ()
    metrics = tuple(sorted({m for m in SANITY_TESTED_AS.values() if m} & set(METRICS)))
    return label_sanity(result, concepts, layers, SanityConfig(metrics=metrics, seed=seed,
                                                               alpha=HeldOutOptions().alpha))


def _trained(run_dir: Path | None) -> dict[str, str]:
    """What the run measured at the end of training (its results.json): test accuracy per mode, read under the
    metric names of every version (a dense run's ``acc_dense``, formerly ``acc_argmax``); empty without one."""
    import json

    from lwtakit.run_summary import final_accuracy

    path = None if run_dir is None else run_dir / "results.json"
    if path is None or not path.is_file():
        return {}
    accuracy = final_accuracy(json.loads(path.read_text()))
    return {"test accuracy at end of training": ", ".join(f"{m} {v:.4g}" for m, v in accuracy.items()) or "–"}


def label_quality(table, class_names: list[str], probe) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """INVERT label quality of a run: over all labelled layers (final-layer label accuracy, planted-concept
    coverage, mean AUC) and per layer (:meth:`LabelTable.summaries`). The in-sample share of labels with
    p < :data:`~lwtakit.labels.SIGNIFICANT_P` is left out: on a few hundred images nearly every INVERT label passes
    it (1.0 in every run), so it tells runs apart only in its held-out form (the interpretability table's share of
    significant labels)."""
    from lwtakit.evaluation import concept_coverage, final_layer_accuracy

    classifier = table.layers[-1]
    quality = {f"final-layer label {k}": v for k, v in
               final_layer_accuracy(table.select(classifier).rows, class_names).items() if k != "n"}
    if getattr(probe, "concept_groups", None):
        quality.update(concept_coverage(table.rows, probe.concept_groups))
    scores = [r.score for r in table if r.score is not None]
    quality["mean AUC"] = float(np.mean(scores)) if scores else float("nan")
    layer_stats = {layer: {"units": float(s.units), "mean score": s.mean_score,
                           "distinct labels": float(s.distinct_labels)}
                   for (layer, _), s in table.summaries().items()}
    return quality, layer_stats


def add_interpretable_units(layer_stats: dict[str, dict[str, float]], iou_table) -> None:
    """Add NetDissect's headline figure (Bau et al. 2017) to each conv layer's stats: the units whose IoU label has
    IoU > :data:`~lwtakit.labels.INTERPRETABLE_IOU` ("interpretable units"), their share and the distinct concepts
    they cover (:func:`lwtakit.labels.interpretable_units`)."""
    from lwtakit.report.glossary import INTERPRETABLE_CONCEPTS, INTERPRETABLE_SHARE, INTERPRETABLE_UNITS

    for (layer, _), summary in iou_table.summaries().items():
        if layer in layer_stats and summary.interpretable is not None:
            found = summary.interpretable
            layer_stats[layer].update({INTERPRETABLE_UNITS: float(found.units), INTERPRETABLE_SHARE: found.share,
                                       INTERPRETABLE_CONCEPTS: float(found.concepts)})


def interpretability_of(table, seed: int = 0):
    """Per labelled layer, the held-out quality of its INVERT labels over units: each of :data:`VERDICT_METRICS`
    as ``(mean, ci_low, ci_high)`` (95% percentile bootstrap over units) and the per-unit values the verdicts
    test (:meth:`LabelTable.values`)."""
    from lwtakit.evaluation.verdict import bootstrap_ci

    summary, values = {}, {}
    for layer in table.layers:
        per_metric = {key: table.values(layer, "invert", key) for key in VERDICT_METRICS}
        values[layer] = {k: v for k, v in per_metric.items() if v}
        summary[layer] = {k: bootstrap_ci(v, seed=seed) for k, v in values[layer].items()}
        summary[layer].update({f"{k} median": bootstrap_ci(v, seed=seed, stat="median")
                               for k, v in values[layer].items() if k.startswith("heldout_") and k != SIGNIFICANT})
    return summary, values


def training_stability(history: list[dict], layer_stats: dict[str, dict[str, float]]):
    """Label agreement between the run's training-time INVERT dissections per layer (None without any); adds
    each labelled layer's stable fraction and mean settle epoch to ``layer_stats``."""
    from lwtakit.drift import agreement, stability

    for layer, values in stability(history, "invert").items():
        if layer in layer_stats:  # how settled the labels of the training-time dissections are
            layer_stats[layer]["stable fraction"] = values["stable_fraction"]
            layer_stats[layer]["mean settle epoch"] = values["mean_settle_epoch"]
    return agreement(history, "invert") or None


def compare(specs: list[str], out: str | Path, options: CompareOptions | None = None) -> Path:
    """Summarise every run (as ``options`` say) and write ``out/report.html`` and ``out/compare.csv``; returns the
    report path. The runs must be comparable (:func:`lwtakit.comparable.check_runs`, before any work)."""
    from lwtakit.arms_compare import plan_arms, reliability_lines, write_arm_outputs
    from lwtakit.comparable import check_runs
    from lwtakit.io import check_output_folder, staged_dir, write_csv
    from lwtakit.report import compare_report

    options = options or CompareOptions()
    check_output_folder(out)
    # arms, sweep folders, comparability and histories are checked before the long work starts
    plan = plan_arms(specs, options.arms, options.reference, options.at_accuracy)
    runs = [r for a in plan.arms for r in a.runs]
    specs = [r.spec for r in runs]
    checked = check_runs(specs, options.force, [r.name for r in runs])
    if checked.difference:
        print(checked.difference, file=sys.stderr)
    histories = [run_history(s) for s in specs]  # every run's labels.csv checked before the long work starts
    _check_sizes(specs, options)
    summaries = _summaries(specs, histories, options)
    for s, run in zip(summaries, runs, strict=True):
        s.name = run.name
    rows = []
    for s in summaries:
        for group, values in (("accuracy", s.accuracy), ("sparsity", s.sparsity), ("labels", s.label_quality)):
            rows += [{"run": s.name, "metric": f"{group}/{k}", "value": v} for k, v in values.items()]
        for layer, stats in s.layer_stats.items():
            rows += [{"run": s.name, "metric": f"layer/{layer}/{k}", "value": v} for k, v in stats.items()]
        for layer, points in (s.stability or {}).items():
            rows += [{"run": s.name, "metric": f"stability/{layer}/agreement@{e}", "value": a} for e, a in points]
        for layer, metrics in s.interpretability.items():
            rows += [{"run": s.name, "metric": f"interpretability/{layer}/{k}", "value": est, "ci_low": lo,
                      "ci_high": hi} for k, (est, lo, hi) in metrics.items()]
    with staged_dir(out) as stage:
        write_csv(stage / "compare.csv", rows, ["run", "metric", "value", "ci_low", "ci_high"])
        arms = write_arm_outputs(stage, plan, summaries, options.passes)
        lines = _seed_verdict(stage, plan, summaries) + reliability_lines(arms.reliability, options.passes)
        compare_report(stage, summaries, title=checked.title(), how=how_made(options), warning=checked.difference,
                       seed_verdict=lines, arm_figures=arms.figures, verdict_page=(stage / "verdict.html").is_file())
    return Path(out) / "report.html"


def _seed_verdict(stage: Path, plan, summaries) -> list[str]:
    """The seed-level verdict (:mod:`lwtakit.evaluation.seeds`) of the arms in ``stage/unit_scores.csv``, written as
    ``verdict.csv`` / ``verdict.html`` beside the report; returns the lines the report opens with (the primary
    endpoint's sentences, the metrics the sanity tests dropped and the notes of arms that have one seed). It tests
    :data:`~lwtakit.evaluation.unit_metrics.VERDICT_METRICS` and ``dead_fraction``, each label metric only if it
    passes NeuronEval's sanity tests on every arm (:func:`sanity_gate`). The units of one network are never the
    sample: an arm of one run gets its figures and no test."""
    from lwtakit.arms_compare import primary_layer
    from lwtakit.evaluation.seeds import DEFAULT_PRIMARY_METRICS, SeedVerdictOptions, seed_verdict, untestable
    from lwtakit.evaluation.unit_metrics import VERDICT_METRICS
    from lwtakit.evaluation.unit_scores import DEAD_FRACTION, read_unit_scores
    from lwtakit.report.verdict import write_verdict_files

    if len(plan.arms) < 2:
        return []
    one_seed = [untestable(a.name, len(a.runs)) for a in plan.arms if len(a.runs) < 2]
    scores = read_unit_scores(stage / "unit_scores.csv")
    primary_metric = next((m for m in DEFAULT_PRIMARY_METRICS if m in scores.metric), None)
    if primary_metric is None:
        return [f"no seed-level verdict: no run has {' or '.join(DEFAULT_PRIMARY_METRICS)} (held-out labels of the "
                "probe's concepts), the primary endpoint", *one_seed]
    layer = next((p for p in map(primary_layer, summaries) if p), None)
    candidates = [m for m in dict.fromkeys((primary_metric, *VERDICT_METRICS)) if m in scores.metric]
    kept, dropped = sanity_gate(plan, summaries, candidates)
    if primary_metric not in kept:
        return [f"no seed-level verdict: the primary endpoint's metric fails the sanity tests "
                f"({dropped[primary_metric]})", *one_seed]
    options = SeedVerdictOptions(reference=plan.reference, primary=(layer, primary_metric) if layer else None,
                                 metrics=(*kept, DEAD_FRACTION))
    try:
        verdict = seed_verdict(scores, options)
    except UserError as exc:  # e.g. runs labelled in different layers: the figures stand, the test cannot run
        return [f"no seed-level verdict: {exc}"]
    notes = [f"left out of the verdict, fails NeuronEval's sanity tests: {line}" for line in dropped.values()]
    verdict = replace(verdict, notes=verdict.notes + notes)
    write_verdict_files(verdict, stage, source="unit_scores.csv")
    return [r.sentence(options.margin) for r in verdict.rows if r.family == "primary"] + verdict.notes


def sanity_gate(plan, summaries, metrics: list[str]) -> tuple[list[str], dict[str, str]]:
    """``(kept, dropped)``: which of ``metrics`` (verdict metrics) may enter the verdict. Each label metric's sanity
    test (:data:`~lwtakit.evaluation.unit_metrics.SANITY_TESTED_AS`: NeuronEval's missing- and extra-labels tests,
    one perturbation per unit, each run's units with their own labels) is taken per arm: the shares of units whose
    score decreased, averaged over the arm's runs (runs of one arm have the same units), must reach the pass share
    (90%) in both tests; the metric enters only if it passes on every arm
    (:func:`~lwtakit.evaluation.sanity.metrics_passing_every_arm`). A metric that scores no label (concepts per
    unit) has no such test and is kept. ``dropped`` maps a metric to the line saying why."""
    from lwtakit.evaluation.sanity import SanityConfig, SanityRow, metrics_passing_every_arm
    from lwtakit.evaluation.unit_metrics import SANITY_TESTED_AS

    share = SanityConfig().pass_share
    tested = {m: SANITY_TESTED_AS[m] for m in metrics if SANITY_TESTED_AS.get(m)}
    summary_of = {id(r): s for r, s in zip((r for a in plan.arms for r in a.runs), summaries, strict=True)}
    per_arm = {}
    for arm in plan.arms:
        rows = [{r.metric: r for r in summary_of[id(run)].sanity} for run in arm.runs]
        per_arm[arm.name] = []
        for name in dict.fromkeys(tested.values()):
            if all(name in r for r in rows):
                missing = float(np.mean([r[name].missing_decrease for r in rows]))
                extra = float(np.mean([r[name].extra_decrease for r in rows]))
                per_arm[arm.name].append(SanityRow(name, missing, extra, min(missing, extra) >= share))
    passing, why = metrics_passing_every_arm(per_arm, list(dict.fromkeys(tested.values())))
    kept = [m for m in metrics if m not in tested or tested[m] in passing]
    dropped = {m: f"{m} (tested as {why[tested[m]]})" for m in metrics if m in tested and tested[m] in why}
    return kept, dropped


def _check_sizes(specs: list[str], options: CompareOptions) -> None:
    """``--probe-size`` and ``--eval-size`` fit every run's splits (:func:`lwtakit.analysis.take_images`), checked
    for all runs before the first is measured."""
    from lwtakit.checkpoint import load_checkpoint, resolve_run

    if options.probe_size is None and options.eval_size is None:
        return
    for spec in specs:
        loaded = load_checkpoint(resolve_run(spec, say=False)[1])
        take_images(loaded.dataset("test"), options.eval_size, options.seed, "--eval-size")
        take_images(loaded.dataset("val"), options.probe_size, options.seed, "--probe-size")


# What summarize_run does for each run, in order: the progress bar's steps.
STAGES = ("accuracy", "activations and labels", "IoU labels and completeness")


def _summaries(specs: list[str], histories: list, options: CompareOptions) -> list:
    """:func:`summarize_run` of every run, with a progress bar over runs and :data:`STAGES` on stderr (off when it
    is not a terminal, tqdm's ``disable=None``, or without ``options.progress``): compare runs for minutes."""
    from tqdm.auto import tqdm

    out = []
    with tqdm(total=len(specs) * len(STAGES), desc="compare", disable=None if options.progress else True,
              file=sys.stderr, leave=False) as bar:
        for spec, history in zip(specs, histories, strict=True):
            done = bar.n

            def stage(name: str, spec=spec, done=done) -> None:
                bar.n = done + STAGES.index(name)  # the stages done so far
                bar.set_postfix_str(f"{Path(spec).name}: {name}")

            out.append(summarize_run(spec, options, history, stage))
            bar.n = done + len(STAGES)
            bar.refresh()
    return out


def how_made(options: CompareOptions) -> dict[str, str]:
    """The settings every run of a comparison is measured with, in words, for the report's header."""
    seed, passes = options.seed, options.passes
    split = HeldOutOptions().fraction
    verdicts = ("seed-level (verdict.html, verdict.csv): per layer and metric the difference of the arms' means of "
                "seed means with a 95% Welch interval, Welch's test and TOST equivalence; the primary endpoint "
                "(held-out correlation corrected for the mc noise, of the last labelled activation layer) at alpha "
                "0.05; matched kappa, disattenuated correlation, concepts per unit (stepwise) and the dead fraction "
                "Holm-corrected together, a label metric only if NeuronEval's sanity tests (one perturbation per "
                "unit) pass on every run of every arm (sanity.csv). An arm of one run is not tested: its units are "
                "not independent samples of its training procedure (train more seeds: train.py -m seed=0,1,2,3,4)")
    return {
        "accuracy": f"each run's own test split (its config's data and sizes), {_amount(options.eval_size)}, in "
                    "every inference mode: LWTA sample (one seeded pass), argmax (most likely winners), mc (mean of "
                    "the run's eval.mc_samples passes); a dense run in its one function (images per run below)",
        "LWTA mode of labels and sparsity": f"mc: the mean of {passes} seeded stochastic passes (the function the "
                                            "network is evaluated as; --passes); dense runs as they are; every "
                                            "unit's split-half reliability from two recordings of half the passes "
                                            "each (plots/reliability.png)",
        "probe set": f"each run's own validation split, {_amount(options.probe_size)} (images per run below)",
        "labels": f"INVERT, chosen on {split:.0%} of the probe set and scored on the rest (held-out, seeded split)",
        "layers": ", ".join(options.layers) + " in every run" if options.layers else
                  "each run's default layers: the activations of its last stage and the classifier (per run below); "
                  "concept coverage counts only these (--layers to label earlier stages too)",
        "verdicts": verdicts,
        "seed": str(seed),
        "float precision": precision_text(options.precision),
    }


def _amount(size: int | None) -> str:
    """How many images of a split a comparison takes, in words."""
    from lwtakit.analysis import DEFAULT_IMAGES

    return f"all its images up to {DEFAULT_IMAGES}" if size is None else f"{size} images (seeded subset)"
