"""``compare`` over arms of seeded runs (issue 20): which runs form an arm, and what compare writes per arm.

An *arm* is a set of runs that differ only in their seed (:func:`lwtakit.arm.arm_of`: grouped automatically from
the runs' stored configs) or a set named on the command line (``--arm NAME=RUN,RUN``). A sweep folder (a folder
whose children are run folders) stands for its runs. Per arm, :func:`write_arm_outputs` writes

- ``arms.csv``: every figure as mean and sample sd over the arm's runs (``arm,metric,mean,sd,n``): accuracy per
  inference mode (measured by compare, and as the run's own ``results.json`` says), active fraction per layer,
  and per layer each held-out label metric as the mean over seeds of the run's mean over its live units;
- ``unit_scores.csv``: the tidy per-unit table ``arm,seed,run,layer,unit,metric,value`` (every held-out metric of
  every live unit); dead units (never active on the probe images, :func:`is_dead`) are left out of the metrics and
  counted per run and layer as metric ``dead_fraction`` with an empty unit; the ``u`` column carries each arm's U
  (dense = 1) for the trend test. This is the input of the seed-level
  verdict (``analyze.py verdict --scores unit_scores.csv``), which never sees NaN;
- the plots of :mod:`lwtakit.arm_plots`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lwtakit.errors import UserError
from lwtakit.evaluation.unit_scores import DEAD_FRACTION
from lwtakit.labels import HELDOUT_KEYS, HELDOUT_P, HELDOUT_PREFIX, HELDOUT_SIGNIFICANT, LabelRow, value

UNIT_COLUMNS = ("arm", "seed", "run", "layer", "unit", "metric", "value", "u")
ARM_COLUMNS = ("arm", "metric", "mean", "sd", "n")
SANITY_COLUMNS = ("arm", "run", "metric", "missing_decrease", "extra_decrease", "passes")
PRIMARY_METRIC = "heldout_correlation"  # the pre-declared primary endpoint (issue 20): with the last LWTA layer


@dataclass
class ArmRun:
    """One run of an arm: the ``spec`` given (run folder or checkpoint), its ``name`` in the outputs, its
    ``seed`` and plain ``config`` (``config.yaml`` or the checkpoint's), and its run folder (None: a loose
    checkpoint)."""

    spec: str
    name: str
    seed: int | None
    config: dict
    run_dir: Path | None


@dataclass
class Arm:
    """A named set of runs; ``u`` is the LWTA competition size of its first run (1 for a dense network)."""

    name: str
    runs: list[ArmRun]

    @property
    def u(self) -> int:
        model = self.runs[0].config.get("model", {})
        return int(model.get("U", 1)) if model.get("act") == "lwta" else 1


def parse_arm(text: str) -> tuple[str, list[str]]:
    """``NAME=RUN,RUN,...`` of ``--arm`` as ``(name, runs)``; a malformed value is one error line."""
    name, sep, runs = text.partition("=")
    specs = [r for r in runs.split(",") if r]
    if not sep or not name.strip() or not specs:
        raise UserError(f"--arm {text!r} is not NAME=RUN,RUN,...; give a name, '=' and comma-separated run folders")
    return name.strip(), specs


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and (path / "checkpoints").is_dir()


def expand_sweeps(specs: list[str]) -> list[str]:
    """The runs ``specs`` stand for: a sweep folder (no ``checkpoints/`` of its own) becomes its child run folders
    in name order; run folders and checkpoints stay as they are."""
    out = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir() and not is_run_folder(path):
            children = sorted(str(c) for c in path.iterdir() if is_run_folder(c))
            if not children:
                raise UserError(f"{spec} is neither a run folder (no checkpoints/) nor a sweep folder (no child run "
                                "folders); give train.py run folders, their checkpoints or a folder of runs")
            out += children
        else:
            out.append(spec)
    return out


def run_config(spec: str) -> tuple[Path | None, dict]:
    """``(run folder, plain config)`` of a run: its folder's ``config.yaml``, else the config in its checkpoint."""
    from omegaconf import OmegaConf

    from lwtakit.checkpoint import load_checkpoint, resolve_run
    from lwtakit.config import to_dict

    run_dir, ckpt = resolve_run(spec, say=False)
    path = (run_dir or ckpt.resolve().parent.parent) / "config.yaml"
    if path.is_file():
        return run_dir, OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    cfg = load_checkpoint(ckpt).cfg
    if cfg is None:
        raise UserError(f"{spec} carries no train.py config, so its arm and seed are unknown; compare train.py runs")
    return run_dir, to_dict(cfg)


def _arm_run(spec: str) -> ArmRun:
    run_dir, config = run_config(spec)
    seed = config.get("seed")
    name = run_dir.resolve().name if run_dir else Path(spec).stem
    return ArmRun(spec, name, None if seed is None else int(seed), config, run_dir)


def resolve_arms(specs: list[str], named: list[tuple[str, list[str]]]) -> list[Arm]:
    """The arms of a comparison: ``named`` ones (``--arm``) in the order given, then the positional runs grouped by
    :func:`lwtakit.arm.arm_id` (in order of first appearance) and named by :func:`lwtakit.arm.arm_names`. A run
    given twice, or two arms of one name, is an error before any run is loaded."""
    from lwtakit.arm import arm_id, arm_names

    arms = [Arm(name, [_arm_run(s) for s in expand_sweeps(runs)]) for name, runs in named]
    groups: dict[str, list[ArmRun]] = {}
    for run in (_arm_run(s) for s in expand_sweeps(specs)):
        groups.setdefault(arm_id(run.config), []).append(run)
    auto = list(groups.values())
    names = arm_names([g[0].config for g in auto]) if auto else []
    if len(set(names)) < len(names):  # e.g. a ReLU and a GELU twin, both "dense": tell them apart by their id
        names = [f"{n} ({arm_id(g[0].config)})" for n, g in zip(names, auto, strict=True)]
    arms += [Arm(n, g) for n, g in zip(names, auto, strict=True)]
    if not arms:
        raise UserError("give at least one run folder, checkpoint or sweep folder to compare (or --arm NAME=RUNS)")
    _check_unique(arms)
    return arms


def _check_unique(arms: list[Arm]) -> None:
    from lwtakit.checkpoint import resolve_run

    seen_arms: set[str] = set()
    seen: dict[Path, str] = {}
    for arm in arms:
        if arm.name in seen_arms:
            raise UserError(f"two arms are named {arm.name!r}; give each --arm its own name")
        seen_arms.add(arm.name)
        for run in arm.runs:
            key = Path(os.path.realpath(resolve_run(run.spec, say=False)[1]))  # a folder and its checkpoint: one run
            if key in seen:
                raise UserError(f"{run.spec} is the run {seen[key]} again; a run compared with itself shows "
                                "nothing: give distinct runs")
            seen[key] = run.spec
    names = [r.name for a in arms for r in a.runs]
    for arm in arms:  # equal folder names in two sweeps: name the runs by parent/name to keep them apart
        for run in arm.runs:
            if names.count(run.name) > 1:
                run.name = f"{Path(run.spec).resolve().parent.name}/{run.name}"


# ------------------------------------------------------------------------------------------------ per unit
def is_dead(row: LabelRow) -> bool:
    """A unit that was never active on the probe images (firing rate 0): its labels and scores say nothing."""
    return row.firing_rate is not None and row.firing_rate <= 0


def heldout_keys(row: LabelRow) -> list[str]:
    """The per-unit metrics a row carries: the held-out label metrics (``heldout_<metric>``, ``concepts`` and
    ``heldout_significant`` where it was assessed, as :meth:`lwtakit.labels.LabelTable.summaries` averages them)
    and the verdict's per-unit values (:data:`~lwtakit.evaluation.unit_metrics.UNIT_METRICS`: concepts per unit
    stepwise, the label's frequency, the unit's split-half reliability), ``dead`` aside (dead units are counted
    by ``dead_fraction``)."""
    from lwtakit.evaluation.unit_metrics import DEAD, UNIT_METRICS

    keys = [k for k in row.extra if k in HELDOUT_KEYS or (k.startswith(HELDOUT_PREFIX) and k != HELDOUT_P)
            or (k in UNIT_METRICS and k != DEAD)]
    return keys + ([HELDOUT_SIGNIFICANT] if "concepts" in row.extra else [])


def unit_scores(rows: list[LabelRow], arm: str, seed: Any, run: str, u: int = 1,
                method: str = "invert") -> list[dict]:
    """The rows of ``unit_scores.csv`` for one run's labels (``method``'s only): a row per live unit and held-out
    metric, and per layer a ``dead_fraction`` row (empty unit) with the share of its units that are dead; ``u`` is
    the arm's U (dense = 1)."""
    out, layers = [], {}
    for r in rows:
        if r.method == method:
            layers.setdefault(r.layer, []).append(r)
    for layer, units in layers.items():
        fixed = {"arm": arm, "seed": "" if seed is None else seed, "run": run, "layer": layer, "u": u}
        dead = sum(is_dead(r) for r in units)
        out.append({**fixed, "unit": "", "metric": DEAD_FRACTION, "value": dead / len(units)})
        for r in units:
            if is_dead(r):
                continue
            for key in heldout_keys(r):
                v = value(r, key)
                if v is not None:
                    out.append({**fixed, "unit": r.unit, "metric": key, "value": v})
    return out


def run_means(scores: list[dict]) -> dict[tuple[str, str], float]:
    """``{(layer, metric): mean over units}`` of one run's ``unit_scores`` rows."""
    groups: dict[tuple[str, str], list[float]] = {}
    for s in scores:
        groups.setdefault((s["layer"], s["metric"]), []).append(float(s["value"]))
    return {k: float(np.mean(v)) for k, v in groups.items()}


def primary_layer(summary) -> str | None:
    """The primary endpoint's layer of a run: its last labelled activation layer (the last LWTA layer of an LWTA
    network, the same site in its dense twin); None when no labelled layer is an activation layer."""
    layers = [layer for layer in summary.unit_values if layer in summary.sparsity]
    return layers[-1] if layers else None


# ------------------------------------------------------------------------------------------------ the plan
@dataclass
class ArmPlan:
    """What a comparison over arms needs before the long work: the ``arms``, the ``reference`` arm of the
    differences, each run's training ``histories`` (by spec; runs without one are absent unless ``--at-accuracy``
    needs it) and, with ``--at-accuracy``, each run's ``matched`` epoch."""

    arms: list[Arm]
    reference: str
    histories: dict
    matched: dict[str, int]
    at_accuracy: float | None = None

    @property
    def seeded(self) -> bool:
        """Whether some arm has more than one run (the unit-level tests between runs no longer apply)."""
        return any(len(a.runs) > 1 for a in self.arms)


def plan_arms(specs: list[str], named: list[tuple[str, list[str]]], reference: str | None = None,
              at_accuracy: float | None = None) -> ArmPlan:
    """Resolve the arms, the reference arm (``reference``, else the first dense arm, else the first arm) and the
    histories, checking everything (run folders, configs, ``--at-accuracy`` reached by every run) before any
    network is loaded."""
    from lwtakit.matched import matched_epoch, read_history

    if at_accuracy is not None and not 0 <= at_accuracy <= 1:
        raise UserError(f"--at-accuracy {at_accuracy:g} is not an accuracy; give a fraction in [0, 1], e.g. 0.8")
    arms = resolve_arms(specs, named)
    names = [a.name for a in arms]
    if reference is not None and reference not in names:
        raise UserError(f"--reference {reference!r} is not an arm; the arms are: {', '.join(names)}")
    dense = [a.name for a in arms if a.u == 1]
    reference = reference or (dense[0] if dense else names[0])
    histories, matched = {}, {}
    for run in (r for a in arms for r in a.runs):
        try:
            histories[run.spec] = read_history(run.run_dir, run.name)
        except UserError:
            if at_accuracy is not None:  # needed: the error says what is missing
                raise
            continue  # only the plot over training goes without it
        if at_accuracy is not None:
            matched[run.spec] = matched_epoch(histories[run.spec], at_accuracy)
    return ArmPlan(arms, reference, histories, matched, at_accuracy)


# ------------------------------------------------------------------------------------------------ outputs
def run_figures(summary, scores: list[dict], run: ArmRun, plan: ArmPlan) -> dict[str, float]:
    """One run's figures for ``arms.csv``: measured and trained accuracy per mode, active fraction per layer (and
    their mean), each layer's held-out metrics as the mean over live units, its dead fraction, the matched epoch."""
    import json

    from lwtakit.run_summary import final_accuracy

    out = {f"accuracy/{m}": v for m, v in summary.accuracy.items()}
    results = None if run.run_dir is None else run.run_dir / "results.json"
    if results is not None and results.is_file():
        out.update({f"trained accuracy/{m}": v for m, v in final_accuracy(json.loads(results.read_text())).items()})
    out.update({f"active fraction/{layer}": v for layer, v in summary.sparsity.items()})
    if summary.sparsity:
        out["active fraction/mean over layers"] = float(np.mean(list(summary.sparsity.values())))
    out.update({f"{layer}/{metric}": v for (layer, metric), v in run_means(scores).items()})
    if run.spec in plan.matched:
        epoch = plan.matched[run.spec]
        out.update({"matched epoch": float(epoch), "val accuracy at matched epoch":
                    plan.histories[run.spec].accuracy[epoch]})
    return out


def arm_rows(arm: str, figures: list[dict[str, float]]) -> list[dict]:
    """``arms.csv`` rows of one arm: per figure the mean and sample sd (ddof 1; empty with one run) over its runs."""
    rows = []
    for metric in dict.fromkeys(k for f in figures for k in f):
        values = np.array([f[metric] for f in figures if metric in f], dtype=np.float64)
        sd = float(values.std(ddof=1)) if values.size > 1 else ""
        rows.append({"arm": arm, "metric": metric, "mean": float(values.mean()), "sd": sd, "n": int(values.size)})
    return rows


def write_arm_outputs(stage: Path, plan: ArmPlan, summaries: list, passes: int) -> ArmOutputs:
    """Write ``arms.csv``, ``unit_scores.csv`` and ``sanity.csv`` into ``stage`` (``summaries``: one per run, in the
    plan's run order; ``passes``: the mc passes of compare's dissection) and return the arm plots for the report.
    The per-unit table comes from compare's own dissection of each run, or with ``--at-accuracy`` from the run's
    training-time dissection at its matched epoch."""
    from lwtakit.io import write_csv

    runs = [r for a in plan.arms for r in a.runs]
    arm_of_run = {id(r): a for a in plan.arms for r in a.runs}
    scores, figures = {}, {}
    for run, summary in zip(runs, summaries, strict=True):
        rows = (plan.histories[run.spec].blocks[plan.matched[run.spec]] if run.spec in plan.matched
                else summary.labels.rows)
        arm = arm_of_run[id(run)]
        scores[id(run)] = unit_scores(rows, arm.name, run.seed, run.name, arm.u)
        figures[id(run)] = run_figures(summary, scores[id(run)], run, plan)
    write_csv(stage / "unit_scores.csv", [s for r in runs for s in scores[id(r)]], UNIT_COLUMNS)
    write_csv(stage / "arms.csv", [row for a in plan.arms for row in arm_rows(a.name, [figures[id(r)]
                                                                                      for r in a.runs])],
              ARM_COLUMNS)
    write_csv(stage / "sanity.csv", [{"arm": arm_of_run[id(r)].name, "run": r.name, **row.__dict__}
                                     for r, s in zip(runs, summaries, strict=True) for row in s.sanity],
              SANITY_COLUMNS)
    layer = next((p for p in map(primary_layer, summaries) if p), None)
    reliability = reliability_medians(plan, scores)
    return ArmOutputs(_plots(plan, scores, layer, passes, reliability), reliability)


def reliability_medians(plan: ArmPlan, scores: dict[int, list[dict]]) -> dict[str, dict[str, list[float]]]:
    """``arm -> layer -> [per run: the median split-half reliability of its live units]`` (layers where it was
    measured)."""
    from lwtakit.evaluation.unit_metrics import RELIABILITY

    out: dict[str, dict[str, list[float]]] = {}
    for arm in plan.arms:
        for run in arm.runs:
            per_layer: dict[str, list[float]] = {}
            for s in scores[id(run)]:
                if s["metric"] == RELIABILITY:
                    per_layer.setdefault(s["layer"], []).append(float(s["value"]))
            for layer, values in per_layer.items():
                out.setdefault(arm.name, {}).setdefault(layer, []).append(float(np.median(values)))
    return out


def reliability_lines(reliability: dict[str, dict[str, list[float]]], passes: int, target: float = 0.95,
                      ) -> list[str]:
    """One line per arm whose recorded activations are noisy (median reliability below ``target`` in some layer at
    ``passes`` passes, averaged over its runs): the lowest layer and the passes that would reach the target
    (Spearman-Brown, :func:`~lwtakit.evaluation.reliability.passes_for_reliability`)."""
    from lwtakit.evaluation.reliability import passes_for_reliability

    lines = []
    for arm, per_layer in reliability.items():
        layer, rel = min(((la, float(np.mean(v))) for la, v in per_layer.items()), key=lambda x: x[1])
        if rel >= target:
            continue
        need = (f"about {passes_for_reliability(rel, passes, target)} passes reach {target:g} (compare --passes)"
                if rel > 0 else "no number of passes helps (no signal repeats between passes)")
        lines.append(f"{arm}: median split-half reliability {rel:.3g} in {layer} at {passes} mc passes; {need}; "
                     "the verdict's disattenuated correlation corrects for it")
    return lines


@dataclass
class ArmOutputs:
    """What :func:`write_arm_outputs` hands the report: the arm plots and the per-run median reliabilities."""

    figures: list
    reliability: dict[str, dict[str, list[float]]]


@dataclass
class ArmFigure:
    """One arm plot for the report: ``plots/<name>.png``, drawn by ``make``, with its ``alt`` text and caption."""

    name: str
    make: Any
    alt: str
    caption: str


def shown_metric(means: list[dict]) -> str:
    """The metric the arm plots show: the verdict's default primary metric that every run has (the disattenuated
    held-out correlation where compare measured reliability, else the recorded one)."""
    from lwtakit.evaluation.seeds import DEFAULT_PRIMARY_METRICS

    have = [{metric for _, metric in m} for m in means]
    return next((m for m in DEFAULT_PRIMARY_METRICS if all(m in h for h in have)), PRIMARY_METRIC)


def _plots(plan: ArmPlan, scores: dict[int, list[dict]], layer: str | None, passes: int,
           rel: dict[str, dict[str, list[float]]]) -> list[ArmFigure]:
    from lwtakit.arm_plots import (
        difference_by_layer,
        metric_vs_accuracy,
        metric_vs_u,
        reliability_by_layer,
        welch_interval,
    )
    from lwtakit.evaluation.seeds import readable
    from lwtakit.matched import accuracy_curve

    means = {k: run_means(v) for k, v in scores.items()}
    metric = shown_metric(list(means.values()))
    name = readable(metric)
    source = (f"each run's training-time dissection at its first epoch with validation accuracy >= "
              f"{plan.at_accuracy:g}" if plan.at_accuracy is not None else "compare's dissection of each run")
    how = f"held-out INVERT {metric}, {source}"

    def seeds(arm: Arm, la: str, m: str = metric) -> list[float]:
        return [means[id(r)][(la, m)] for r in arm.runs if (la, m) in means[id(r)]]

    out = []
    if layer is not None:
        points = {a.name: (a.u, seeds(a, layer)) for a in plan.arms if seeds(a, layer)}
        out.append(ArmFigure("metric_vs_U", lambda: metric_vs_u(points, f"{name} of {layer}", how),
                             "metric against U", f"The primary endpoint ({metric} of {layer}) against U (dense = "
                             "U=1): every seed a small dot (the mean over its live units), each arm's mean over "
                             "seeds with its 95% t-interval."))
    ref = next(a for a in plan.arms if a.name == plan.reference)
    layers = list(dict.fromkeys(la for m in means.values() for (la, me) in m if me == metric))
    diffs = {la: {a.name: welch_interval(seeds(a, la), seeds(ref, la)) for a in plan.arms
                  if a is not ref and seeds(a, la) and seeds(ref, la)} for la in layers}
    out.append(ArmFigure("difference_by_layer", lambda: difference_by_layer(diffs, plan.reference, name, how),
                         "difference by layer", f"Each arm minus {plan.reference} in {metric}, per layer: the "
                         "difference of the arms' means over seeds with its Welch 95% interval."))
    if rel:
        out.append(ArmFigure("reliability", lambda: reliability_by_layer(
            rel, 0.95, f"compare's recording, {passes} mc passes (LWTA)"), "split-half reliability",
            f"Split-half reliability of the recorded activations per layer and arm ({passes} mc passes for an LWTA "
            "network; a dense network is deterministic): below 1 the stochastic network's labels are scored against "
            "noisy activations, which the disattenuated correlation corrects for."))
    if plan.histories and layer is not None:
        curves = {a.name: {r.name: [(acc, v) for _, acc, v in accuracy_curve(plan.histories[r.spec], layer,
                                                                             PRIMARY_METRIC)]
                           for r in a.runs if r.spec in plan.histories} for a in plan.arms}
        out.append(ArmFigure("metric_vs_accuracy", lambda: metric_vs_accuracy(
            curves, f"{PRIMARY_METRIC} of {layer}", "held-out INVERT labels of the run's own dissection callback"),
            "metric against accuracy", f"{PRIMARY_METRIC} of {layer} against validation accuracy over training, "
            "from each run's training-time dissections: a line per seed, a colour per arm."))
    return out
