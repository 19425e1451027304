"""compare over arms of seeded runs (issue 20): arms found from the configs or named, sweep folders, the per-arm
figures, unit_scores.csv, matched accuracy and the plots; checked against the runs' own files."""

import csv
import json
import shutil
import time

import numpy as np
import pytest
from scipy import stats

import analyze
import train as train_script
from lwtakit.arm_plots import t_interval, welch_interval
from lwtakit.arms_compare import expand_sweeps, parse_arm, unit_scores
from lwtakit.config import load_config
from lwtakit.errors import UserError
from lwtakit.labels import LabelRow

# The cheapest runs that still dissect every epoch with held-out labels: 2 steps per epoch, 2 epochs.
TINY = ["data.train_size=64", "data.val_size=32", "data.test_size=32", "data.batch_size=32", "model.width=0.0625",
        "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "dissection.probe_size=32",
        "dissection.top_images=4", "logger=csv", "sparsity.enabled=false"]
SEEDS = (0, 1, 2)
FAST = ["--probe-size", 32, "--eval-size", 32, "--device", "cpu"]


@pytest.fixture(scope="session")
def sweep(tmp_path_factory):
    """Two arms (LWTA U=2 and its dense twin) x 3 seeds, in two sweep folders: ``root/lwta/s<seed>``."""
    root = tmp_path_factory.mktemp("sweep")
    for experiment, arm in (("default", "lwta"), ("default_dense", "dense")):
        for seed in SEEDS:
            cfg = load_config(experiment, [f"run_dir={root / arm}", f"run_name=s{seed}", f"seed={seed}", *TINY])
            train_script.train(cfg)
    return root


def run_cli(capsys, *argv):
    code = analyze.main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip().splitlines()


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def arm_table(out):
    return {(r["arm"], r["metric"]): r for r in read_rows(out / "arms.csv")}


def val_accuracy(run_dir):
    """{epoch: val accuracy} read here from logs/metrics.csv (dense runs log acc_dense, these LWTA runs acc_argmax
    and acc_sample: compare reads acc_argmax, the most likely winners, before one sampled pass)."""
    out = {}
    for r in read_rows(run_dir / "logs" / "metrics.csv"):
        key = "val/acc_dense" if r.get("val/acc_dense") else "val/acc_argmax"
        if r.get(key):
            out[int(r["epoch"])] = float(r[key])
    return out


@pytest.mark.slow  # 6 tiny trainings (session fixture) and a compare over them
def test_arms_found_from_configs_in_sweep_folders(sweep, tmp_path, capsys):
    out = tmp_path / "cmp"
    started = time.perf_counter()
    code, err = run_cli(capsys, "compare", sweep / "lwta", sweep / "dense", *FAST, "--out", out)
    assert code == 0, err
    print(f"compare over 6 tiny runs: {time.perf_counter() - started:.1f} s")
    table = arm_table(out)
    assert {a for a, _ in table} == {"model.U=2", "dense"}
    for arm, folder in (("model.U=2", "lwta"), ("dense", "dense")):
        # the per-arm accuracy is the mean and sd over seeds of each run's own results.json
        mode = "dense" if arm == "dense" else "argmax"
        own = [json.loads((sweep / folder / f"s{s}" / "results.json").read_text())[f"test/acc_{mode}"] for s in SEEDS]
        row = table[(arm, f"trained accuracy/{mode}")]
        assert int(row["n"]) == 3
        assert float(row["mean"]) == pytest.approx(np.mean(own), abs=1e-12)
        assert float(row["sd"]) == pytest.approx(np.std(own, ddof=1), abs=1e-12)
    scores = read_rows(out / "unit_scores.csv")
    assert list(scores[0]) == ["arm", "seed", "run", "layer", "unit", "metric", "value", "u"]
    assert {(r["arm"], r["u"]) for r in scores} == {("model.U=2", "2"), ("dense", "1")}
    # equal folder names in two sweeps are told apart by their sweep
    assert {(r["arm"], r["seed"], r["run"]) for r in scores} == {
        (a, str(s), f"{f}/s{s}") for a, f in (("model.U=2", "lwta"), ("dense", "dense")) for s in SEEDS}
    dead = [r for r in scores if r["metric"] == "dead_fraction"]
    assert dead and all(r["unit"] == "" and 0 <= float(r["value"]) <= 1 for r in dead)
    assert all(np.isfinite(float(r["value"])) for r in scores)
    # each arm's label figure: the mean over seeds of each run's mean over its units in unit_scores.csv
    layer = "layer4.1.act2"
    per_run = {}
    for r in scores:
        if r["layer"] == layer and r["metric"] == "heldout_correlation":
            per_run.setdefault((r["arm"], r["run"]), []).append(float(r["value"]))
    for arm in ("model.U=2", "dense"):
        means = [np.mean(v) for (a, _), v in per_run.items() if a == arm]
        assert float(table[(arm, f"{layer}/heldout_correlation")]["mean"]) == pytest.approx(np.mean(means))
    for name in ("metric_vs_U", "difference_by_layer", "metric_vs_accuracy", "reliability"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 5000, name
    # the split-half reliability of every live unit: a dense network's two halves agree exactly
    rel = [float(r["value"]) for r in scores if r["metric"] == "reliability" and r["arm"] == "dense"]
    assert rel and all(v == pytest.approx(1.0, abs=1e-9) for v in rel)
    # no test over the units of single networks (compare.csv); the sanity tests of the verdict's label metrics on
    # every run (sanity.csv), gated per arm: the shares of units that decreased, averaged over the arm's runs
    assert not any(r["metric"].startswith("verdict") for r in read_rows(out / "compare.csv"))
    sanity = read_rows(out / "sanity.csv")
    assert {(r["run"], r["metric"]) for r in sanity} == {(f"{f}/s{s}", m) for f in ("lwta", "dense") for s in SEEDS
                                                         for m in ("correlation", "heldout_kappa_matched")}
    passing = {m for m in ("correlation", "heldout_kappa_matched")
               if all(min(np.mean([float(r[k]) for r in sanity if r["arm"] == a and r["metric"] == m])
                          for k in ("missing_decrease", "extra_decrease")) >= 0.9 for a in ("model.U=2", "dense"))}
    metric = "heldout_correlation_disattenuated"
    html = (out / "report.html").read_text()
    if "correlation" not in passing:  # these barely trained nets' labels may explain little: no primary endpoint
        assert not (out / "verdict.csv").exists()
        assert "no seed-level verdict: the primary endpoint&#x27;s metric fails the sanity tests" in html
        return
    # the seed-level verdict beside the report, its primary endpoint the held-out correlation corrected for mc
    # noise of the last LWTA layer: the difference of the arms' means of seed means, from unit_scores.csv here
    verdict = read_rows(out / "verdict.csv")
    primary = [r for r in verdict if r["family"] == "primary"]
    assert [(r["arm"], r["reference"], r["layer"], r["metric"], r["n_seeds"]) for r in primary] == [
        ("model.U=2", "dense", layer, metric, "3/3")]
    runs = {}
    for r in scores:
        if r["layer"] == layer and r["metric"] == metric:
            runs.setdefault((r["arm"], r["run"]), []).append(float(r["value"]))
    arm_mean = {a: np.mean([np.mean(v) for (b, _), v in runs.items() if b == a]) for a in ("model.U=2", "dense")}
    assert float(primary[0]["difference"]) == pytest.approx(arm_mean["model.U=2"] - arm_mean["dense"], abs=1e-9)
    assert float(primary[0]["ci_low"]) <= float(primary[0]["difference"]) <= float(primary[0]["ci_high"])
    expected = {"concepts_stepwise", "dead_fraction", metric} | {"heldout_kappa_matched"} & passing
    assert {r["metric"] for r in verdict if r["family"] == "secondary"} == expected
    assert "Seed-level verdict" in html and 'href="verdict.html"' in html and (out / "verdict.html").exists()


@pytest.mark.slow  # 6 tiny trainings (session fixture) and a compare over them
def test_arms_named_explicitly_match_the_found_ones(sweep, tmp_path, capsys):
    lwta = ",".join(str(sweep / "lwta" / f"s{s}") for s in SEEDS)
    dense = ",".join(str(sweep / "dense" / f"s{s}") for s in SEEDS[:2])  # an arm of 2 seeds
    out = tmp_path / "named"
    code, err = run_cli(capsys, "compare", "--arm", f"sparse={lwta}", "--arm", f"relu={dense}", *FAST,
                        "--reference", "relu", "--out", out)
    assert code == 0, err
    table = arm_table(out)
    assert {a for a, _ in table} == {"sparse", "relu"}
    assert table[("relu", "trained accuracy/dense")]["n"] == "2"
    own = [json.loads((sweep / "dense" / f"s{s}" / "results.json").read_text())["test/acc_dense"] for s in SEEDS[:2]]
    assert float(table[("relu", "trained accuracy/dense")]["sd"]) == pytest.approx(np.std(own, ddof=1))
    assert {r["arm"] for r in read_rows(out / "unit_scores.csv")} == {"sparse", "relu"}


@pytest.mark.slow  # 6 tiny trainings (session fixture) and a compare over them
def test_at_accuracy_takes_each_runs_first_epoch_reaching_it(sweep, tmp_path, capsys):
    runs = [sweep / a / f"s{s}" for a in ("lwta", "dense") for s in SEEDS]
    curves = {r: val_accuracy(r) for r in runs}
    target = min(max(c.values()) for c in curves.values())  # every run reaches it
    out = tmp_path / "matched"
    code, err = run_cli(capsys, "compare", sweep / "lwta", sweep / "dense", *FAST, "--at-accuracy", target,
                        "--out", out)
    assert code == 0, err
    scores = read_rows(out / "unit_scores.csv")
    for run in runs:
        epoch = min(e for e, acc in curves[run].items() if acc >= target)
        labels = [r for r in read_rows(run / "labels.csv")
                  if int(r["epoch"]) == epoch and r["layer"] == "fc" and r["heldout_correlation"]]
        got = {int(r["unit"]): float(r["value"]) for r in scores if r["run"] == f"{run.parent.name}/{run.name}"
               and r["metric"] == "heldout_correlation" and r["layer"] == "fc"}
        assert got == {int(r["unit"]): float(r["heldout_correlation"]) for r in labels}, run
    table = arm_table(out)
    for arm, folder in (("model.U=2", "lwta"), ("dense", "dense")):
        picked = [curves[sweep / folder / f"s{s}"][min(e for e, a in curves[sweep / folder / f"s{s}"].items()
                                                       if a >= target)] for s in SEEDS]
        assert float(table[(arm, "val accuracy at matched epoch")]["mean"]) == pytest.approx(np.mean(picked))
    # a run that never gets there: one line naming it and its best accuracy, before any work, nothing written
    best = max(max(c.values()) for c in curves.values())
    if best < 1:
        started = time.perf_counter()
        code, err = run_cli(capsys, "compare", sweep / "lwta", "--at-accuracy", (best + 1) / 2,
                            "--out", tmp_path / "never")
        assert code == 2 and len(err) == 1 and "never reaches validation accuracy" in err[0], err
        assert "run s0 " in err[0] and "best" in err[0]
        assert time.perf_counter() - started < 5 and not (tmp_path / "never").exists()


@pytest.mark.slow  # 6 tiny trainings (session fixture) and a compare over them
def test_bad_arms_are_one_error_line(sweep, tmp_path, capsys):
    run = sweep / "lwta" / "s0"
    for argv, fragment in ((["--arm", "nameonly"], "is not NAME=RUN,RUN"),
                           (["--arm", f"a={run}", "--arm", f"b={run}"], "again; a run compared with itself"),
                           ([sweep / "lwta", "--arm", f"a={run}"], "again; a run compared with itself"),
                           ([tmp_path], "neither a run folder"),
                           ([run, "--reference", "nope"], "--reference 'nope' is not an arm"),
                           ([run, "--at-accuracy", 80], "give a fraction in [0, 1]")):
        code, err = run_cli(capsys, "compare", *argv, "--out", tmp_path / "x")
        assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], (argv, err)
        assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------ without training
def test_parse_arm_and_sweep_expansion(tmp_path):
    assert parse_arm("U2=a,b,,c") == ("U2", ["a", "b", "c"])
    for bad in ("=a", "x=", "x"):
        with pytest.raises(UserError):
            parse_arm(bad)
    for name in ("b", "a", "c"):
        (tmp_path / "sweep" / name / "checkpoints").mkdir(parents=True)
    (tmp_path / "sweep" / "notes").mkdir()  # not a run folder: left out
    assert expand_sweeps([str(tmp_path / "sweep")]) == [str(tmp_path / "sweep" / n) for n in "abc"]
    assert expand_sweeps([str(tmp_path / "sweep" / "a")]) == [str(tmp_path / "sweep" / "a")]


def test_unit_scores_leave_dead_units_out_and_count_them():
    rows = [LabelRow("l", 0, "invert", firing_rate=0.3, extra={"heldout_f1": "0.5", "heldout_p": "0.0001",
                                                                "concepts": "2"}),
            LabelRow("l", 1, "invert", firing_rate=0.0, extra={"heldout_f1": "0.0", "concepts": "0"}),
            LabelRow("l", 2, "invert", firing_rate=0.1, extra={"heldout_f1": "0.25", "concepts": "1"}),
            LabelRow("l", 2, "iou", firing_rate=0.1, extra={"heldout_f1": "0.9"})]
    got = {(r["unit"], r["metric"]): r["value"] for r in unit_scores(rows, "A", 3, "r")}
    assert got == {("", "dead_fraction"): 1 / 3, (0, "heldout_f1"): 0.5, (0, "concepts"): 2.0,
                   (0, "heldout_significant"): 1.0, (2, "heldout_f1"): 0.25, (2, "concepts"): 1.0,
                   (2, "heldout_significant"): 0.0}


def test_plot_intervals_equal_scipys():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.3, 0.05, 5), rng.normal(0.2, 0.1, 4)
    mean, lo, hi = t_interval(a)
    assert (lo, hi) == pytest.approx(stats.t.interval(0.95, len(a) - 1, loc=a.mean(), scale=stats.sem(a)))
    d, lo, hi = welch_interval(a, b)
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert d == pytest.approx(a.mean() - b.mean()) and (lo, hi) == pytest.approx((ci.low, ci.high))
    assert np.isnan(welch_interval(a, b[:1])[1]) and np.isnan(t_interval(a[:1])[1])


# ------------------------------------------------------------------------------- arms from stored configs
GOLDEN = __import__("pathlib").Path(__file__).resolve().parent / "golden" / "runs"


def _fake_run(folder, experiment, seed, accuracy=None):
    """A run folder with the golden run's checkpoint, a config.yaml of ``experiment`` and ``seed`` and, given
    ``accuracy`` per epoch, a metrics.csv and a labels.csv with one held-out block per epoch."""
    from omegaconf import OmegaConf

    folder.mkdir(parents=True)
    source = "default" if experiment == "default" else "default_dense"
    shutil.copytree(GOLDEN / source / "checkpoints", folder / "checkpoints")  # a link would make them one run
    OmegaConf.save(load_config(experiment, [f"seed={seed}"]), folder / "config.yaml")
    if accuracy is not None:
        (folder / "logs").mkdir()
        lines = ["epoch,step,val/acc_argmax"] + [f"{e},{e + 1},{a}" for e, a in enumerate(accuracy)]
        (folder / "logs" / "metrics.csv").write_text("\n".join(lines) + "\n")
        rows = ["epoch,step,layer,unit,method,label,score,firing_rate,heldout_correlation,concepts"]
        rows += [f"{e},{e + 1},fc,{u},invert,c,0.5,0.5,{e + u / 10},1" for e in range(len(accuracy)) for u in range(2)]
        (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_plan_groups_runs_by_their_stored_configs(tmp_path):
    from lwtakit.arms_compare import plan_arms

    sweep = tmp_path / "sweep"
    for name, experiment, seed in (("a0", "default", 0), ("a1", "default", 1), ("d0", "default_dense", 0),
                                   ("d1", "default_dense", 7)):
        _fake_run(sweep / name, experiment, seed)
    plan = plan_arms([str(sweep)], [])
    assert [(a.name, a.u, [(r.name, r.seed) for r in a.runs]) for a in plan.arms] == [
        ("model.U=2", 2, [("a0", 0), ("a1", 1)]), ("dense", 1, [("d0", 0), ("d1", 7)])]
    assert plan.reference == "dense" and plan.seeded and plan.histories == {}
    named = plan_arms([], [("x", [str(sweep / "a0"), str(sweep / "d1")])], reference="x")
    assert [(a.name, [r.name for r in a.runs]) for a in named.arms] == [("x", ["a0", "d1"])]
    with pytest.raises(UserError, match="again; a run compared with itself"):
        plan_arms([str(sweep / "a0")], [("x", [str(sweep / "a0")])])
    with pytest.raises(UserError, match="has no .*metrics.csv"):
        plan_arms([str(sweep)], [], at_accuracy=0.5)


def test_matched_epoch_is_the_first_reaching_the_accuracy(tmp_path):
    from lwtakit.arms_compare import plan_arms

    runs = [_fake_run(tmp_path / "r0", "default", 0, [0.2, 0.5, 0.7]),
            _fake_run(tmp_path / "r1", "default", 1, [0.6, 0.4, 0.9])]
    plan = plan_arms([str(r) for r in runs], [], at_accuracy=0.5)
    assert plan.matched == {str(runs[0]): 1, str(runs[1]): 0}
    block = plan.histories[str(runs[0])].blocks[1]
    assert [(r.unit, float(r.extra["heldout_correlation"])) for r in block] == [(0, 1.0), (1, 1.1)]
    with pytest.raises(UserError, match=r"run r0 never reaches validation accuracy 0.8 .*best 0.7 at epoch 2"):
        plan_arms([str(r) for r in runs], [], at_accuracy=0.8)


# ------------------------------------------------------------------------------- the sanity gate of the verdict
def _gate_setup(tmp_path, kappa_shares):
    """Two arms x 3 seeds of planted per-unit scores (U=2 higher by 0.2 in the primary endpoint) and sanity rows
    whose matched-kappa shares on the U=2 arm's runs are ``kappa_shares``; correlation passes everywhere."""
    from lwtakit.arms_compare import UNIT_COLUMNS, Arm, ArmPlan, ArmRun
    from lwtakit.evaluation.sanity import SanityRow
    from lwtakit.io import write_csv
    from lwtakit.report import RunSummary

    rng = np.random.default_rng(0)
    arms, summaries, rows = [], [], []
    for name, u, shift in (("dense", 1, 0.0), ("U=2", 2, 0.2)):
        runs = [ArmRun(f"{name}/s{s}", f"{name}/s{s}", s, {}, None) for s in SEEDS]
        arms.append(Arm(name, runs))
        for run in runs:
            seed_effect = rng.normal(0, 0.02)
            for layer in ("l1", "l2"):
                rows.append({"arm": name, "seed": run.seed, "run": run.name, "layer": layer, "unit": "",
                             "metric": "dead_fraction", "value": 0.1, "u": u})
                for unit in range(8):
                    for metric, base in (("heldout_correlation_disattenuated", 0.5 + shift), ("heldout_f1", 0.3),
                                         ("heldout_kappa_matched", 0.4), ("concepts_stepwise", 2.0)):
                        rows.append({"arm": name, "seed": run.seed, "run": run.name, "layer": layer, "unit": unit,
                                     "metric": metric, "value": base + seed_effect + rng.normal(0, 0.05), "u": u})
            k = kappa_shares[run.seed] if name == "U=2" else 0.97
            sanity = (SanityRow("correlation", 0.95, 0.96, True), SanityRow("heldout_kappa_matched", k, 0.95, k >= 0.9))
            summaries.append(RunSummary(name=run.name, meta={}, accuracy={}, sparsity={"l1": 0.5, "l2": 0.5},
                                        label_quality={}, layer_stats={}, unit_values={"l1": {}, "l2": {}},
                                        sanity=sanity))
    write_csv(tmp_path / "unit_scores.csv", rows, UNIT_COLUMNS)
    return ArmPlan(arms, "dense", {}, {}), summaries, rows


def test_verdict_tests_only_the_metrics_that_pass_the_sanity_tests_on_every_arm(tmp_path):
    from lwtakit.compare import _seed_verdict

    # kappa decreases for 96%, 70%, 93% of the U=2 arm's units: 86% on average, below NeuronEval's 90%
    plan, summaries, rows = _gate_setup(tmp_path, {0: 0.96, 1: 0.70, 2: 0.93})
    lines = _seed_verdict(tmp_path, plan, summaries)
    verdict = read_rows(tmp_path / "verdict.csv")
    primary = [r for r in verdict if r["family"] == "primary"]
    assert [(r["layer"], r["metric"]) for r in primary] == [("l2", "heldout_correlation_disattenuated")]
    means = {a: np.mean([np.mean([r["value"] for r in rows if r["run"] == run and r["layer"] == "l2"
                                  and r["metric"] == "heldout_correlation_disattenuated"])
                         for run in {r["run"] for r in rows if r["arm"] == a}]) for a in ("dense", "U=2")}
    assert float(primary[0]["difference"]) == pytest.approx(means["U=2"] - means["dense"], abs=1e-9)
    # kappa fails on one arm: left out, and said; F1 is no verdict metric; concepts has no label to test
    tested = {(r["layer"], r["metric"]) for r in verdict}
    assert tested == {(la, m) for la in ("l1", "l2") for m in ("heldout_correlation_disattenuated",
                                                                "concepts_stepwise", "dead_fraction")}
    dropped = [line for line in lines if "fails NeuronEval's sanity tests" in line]
    assert len(dropped) == 1 and "heldout_kappa_matched" in dropped[0] and "fails on arm U=2" in dropped[0]
    assert "86%" in dropped[0]
    # the same shares averaging 90%: kappa passes on every arm and is tested
    plan, summaries, _ = _gate_setup(tmp_path, {0: 0.96, 1: 0.81, 2: 0.93})
    _seed_verdict(tmp_path, plan, summaries)
    assert {r["metric"] for r in read_rows(tmp_path / "verdict.csv")} >= {"heldout_kappa_matched"}


def test_no_verdict_when_the_primary_endpoints_metric_fails_the_sanity_tests(tmp_path):
    from lwtakit.compare import _seed_verdict
    from lwtakit.evaluation.sanity import SanityRow

    plan, summaries, _ = _gate_setup(tmp_path, {0: 0.96, 1: 0.96, 2: 0.96})
    summaries[0].sanity = (SanityRow("correlation", 0.5, 0.6, False), *summaries[0].sanity[1:])
    lines = _seed_verdict(tmp_path, plan, summaries)
    assert not (tmp_path / "verdict.csv").exists()
    assert len(lines) == 1 and lines[0].startswith("no seed-level verdict: the primary endpoint's metric fails")
    assert "fails on arm dense" in lines[0]
