"""The seed-level verdict (issue 20, item 2) against its own simulations: calibrated in A/A comparisons with a large
seed effect, powerful against a planted difference, intervals that hold it, equivalence only within the margin, a
trend test over U that finds a planted trend and stays calibrated without one; and ``analyze.py verdict`` end to end
with its bad-input errors.

Each simulation is one layer of one table: ``n_sims`` independent A/A (or A/B) comparisons go through
:func:`seed_verdict` at once. A run's unit scores are ``base + shift + seed effect + unit noise``, seed effect sd
0.05 and unit noise sd 0.15 (the figures measured in the issue), 128 units, 5 seeds per arm unless said.
"""

import csv
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

import analyze
from lwtakit.errors import UserError
from lwtakit.evaluation.seeds import TREND, SeedVerdictOptions, seed_verdict
from lwtakit.evaluation.unit_scores import UnitScores, read_unit_scores
from lwtakit.evaluation.verdict import holm

SEED_SD, UNIT_SD, UNITS, SEEDS = 0.05, 0.15, 128, 5
METRIC = "heldout_correlation"


def _band(n: int, p: float) -> tuple[float, float]:
    """The central 99.9% binomial range of a rate over ``n`` independent simulations at true rate ``p``: a
    correct test falls outside it once in a thousand runs of the suite (and the seeds are fixed)."""
    return stats.binom.ppf(0.0005, n, p) / n, stats.binom.ppf(0.9995, n, p) / n


def _simulate(rng, n_sims: int, arms: dict, seed_sd: float = SEED_SD, units: int = UNITS) -> tuple[UnitScores, dict]:
    """A table of ``n_sims`` layers ``sim0...``; ``arms``: name -> (shift per layer (scalar or [n_sims]), seeds).
    Also returns name -> unit values [seeds, n_sims, units], for independent computations."""
    cols = {k: [] for k in ("arm", "seed", "run", "layer", "unit", "metric", "value")}
    values = {}
    layers = np.array([f"sim{i}" for i in range(n_sims)])
    for arm, (shift, seeds) in arms.items():
        shift = np.broadcast_to(np.asarray(shift, dtype=float), (n_sims,))
        v = (0.3 + shift[None, :, None] + rng.normal(0, seed_sd, (seeds, n_sims, 1))
             + rng.normal(0, UNIT_SD, (seeds, n_sims, units)))
        values[arm] = v
        n = n_sims * units
        for s in range(seeds):
            cols["arm"].append(np.full(n, arm))
            cols["seed"].append(np.full(n, str(s)))
            cols["run"].append(np.full(n, f"{arm}-seed{s}"))
            cols["layer"].append(np.repeat(layers, units))
            cols["unit"].append(np.tile(np.arange(units).astype(str), n_sims))
            cols["metric"].append(np.full(n, METRIC))
            cols["value"].append(v[s].ravel())
    table = {k: np.concatenate(v) for k, v in cols.items()}
    return UnitScores(**table, u={}), values


def _figures(verdict, arm: str, field: str) -> np.ndarray:
    """``field`` of ``arm``'s comparison rows, in simulation order."""
    rows = sorted((r for r in verdict.rows if r.arm == arm), key=lambda r: int(r.layer[3:]))
    return np.array([getattr(r, field) for r in rows], dtype=float)


def test_a_a_false_alarms_stay_near_alpha_with_a_large_seed_effect():
    n = 400
    scores, values = _simulate(np.random.default_rng(0), n, {"dense": (0.0, SEEDS), "B": (0.0, SEEDS)})
    verdict = seed_verdict(scores, SeedVerdictOptions(reference="dense"))
    p = _figures(verdict, "B", "p_value")
    low, high = _band(n, 0.05)
    assert low <= np.mean(p <= 0.05) <= high, np.mean(p <= 0.05)
    # the same data through a unit-level test (Mann-Whitney over the units of the arms' networks, as compare once
    # tested): the seed effect makes it call most A/A pairs different
    units = {arm: v.transpose(1, 0, 2).reshape(n, -1) for arm, v in values.items()}
    unit_level = np.mean(stats.mannwhitneyu(units["B"], units["dense"], axis=1).pvalue <= 0.05)
    assert unit_level > 0.4, unit_level


def test_power_and_coverage_against_a_planted_difference():
    n, planted = 400, -0.1
    scores, _ = _simulate(np.random.default_rng(1), n, {"dense": (0.0, SEEDS), "U=4": (planted, SEEDS)})
    verdict = seed_verdict(scores, SeedVerdictOptions(reference="dense"))
    p, low, high = (_figures(verdict, "U=4", f) for f in ("p_value", "ci_low", "ci_high"))
    # independent power: the pooled two-sample t test of seed means (noncentral t, 8 df) is an upper bound of
    # Welch's; a seed mean's sd is sqrt(seed sd^2 + unit sd^2 / units)
    se = math.sqrt(2 * (SEED_SD ** 2 + UNIT_SD ** 2 / UNITS) / SEEDS)
    crit = stats.t.ppf(0.975, 2 * SEEDS - 2)
    power = stats.nct.sf(crit, 2 * SEEDS - 2, abs(planted) / se)
    assert _band(n, power - 0.08)[0] <= np.mean(p <= 0.05) <= _band(n, power)[1], (np.mean(p <= 0.05), power)
    covered = np.mean((low <= planted) & (planted <= high))
    assert _band(n, 0.95)[0] <= covered <= _band(n, 0.95)[1], covered


def test_equivalence_is_declared_only_within_the_margin():
    n, margin = 300, 0.05
    shifts = np.repeat([0.0, margin, 2 * margin], n // 3)  # well inside, on the margin, far outside
    scores, _ = _simulate(np.random.default_rng(2), n, {"dense": (0.0, SEEDS), "B": (shifts, SEEDS)}, seed_sd=0.01)
    verdict = seed_verdict(scores, SeedVerdictOptions(reference="dense", margin=margin))
    eq, d = _figures(verdict, "B", "equivalent"), _figures(verdict, "B", "difference")
    inside, edge, outside = eq[: n // 3], eq[n // 3: 2 * n // 3], eq[2 * n // 3:]
    assert inside.mean() >= 0.9, inside.mean()  # seed means within +-0.01: equivalence is found
    assert edge.mean() <= _band(n // 3, 0.05)[1], edge.mean()  # TOST's size at the margin is at most alpha
    assert outside.sum() == 0
    assert np.all(np.abs(d[eq == 1]) < margin)


def _trend_table(rng, n: int, slope: float):
    arms = {name: (slope * math.log2(u), SEEDS) for name, u in (("dense", 1), ("U=2", 2), ("U=4", 4), ("U=8", 8))}
    scores, _ = _simulate(rng, n, arms, units=32)
    return seed_verdict(scores, SeedVerdictOptions(reference="dense", n_resamples=999))


def test_trend_over_u_finds_a_planted_slope_and_stays_calibrated_without_one():
    n = 300
    null = _figures(_trend_table(np.random.default_rng(3), n, 0.0), TREND, "p_value")
    assert _band(n, 0.05)[0] <= np.mean(null <= 0.05) <= _band(n, 0.05)[1], np.mean(null <= 0.05)
    found = _trend_table(np.random.default_rng(4), n, -0.04)
    p, slope = _figures(found, TREND, "p_value"), _figures(found, TREND, "difference")
    # slope of 20 seed means (sd ~0.052) on log2 U in {0, 1, 2, 3}: se ~0.0104, so -0.04 is ~3.9 se
    assert np.mean(p <= 0.05) >= 0.9, np.mean(p <= 0.05)
    assert abs(np.mean(slope) + 0.04) < 0.003


def test_figures_match_an_independent_computation_and_the_family_is_stated():
    rng = np.random.default_rng(5)
    scores, values = _simulate(rng, 4, {"dense": (0.0, 4), "U=2": (-0.05, 3), "U=4": (-0.2, 5)}, units=16)
    verdict = seed_verdict(scores, SeedVerdictOptions(reference="dense", primary=("sim1", METRIC)))
    for row in verdict.rows:
        if row.arm == TREND:
            u = np.repeat([0.0, 1.0, 2.0], [4, 3, 5])
            y = np.concatenate([values[a][:, int(row.layer[3:])].mean(axis=-1) for a in ("dense", "U=2", "U=4")])
            assert row.difference == pytest.approx(np.polyfit(u, y, 1)[0])
            continue
        i = int(row.layer[3:])
        a, r = values[row.arm][:, i].mean(axis=-1), values["dense"][:, i].mean(axis=-1)
        welch = stats.ttest_ind(a, r, equal_var=False)
        ci = welch.confidence_interval(0.95)
        assert (row.difference, row.ci_low, row.ci_high, row.p_value) == pytest.approx(
            (a.mean() - r.mean(), ci.low, ci.high, welch.pvalue))
        tost = max(stats.ttest_ind(a + 0.05, r, equal_var=False, alternative="greater").pvalue,
                   stats.ttest_ind(a - 0.05, r, equal_var=False, alternative="less").pvalue)
        assert row.equivalent == (tost <= 0.05)
        assert row.n_seeds == f"{len(a)}/{len(r)}"
        assert row.family == ("primary" if row.layer == "sim1" else "secondary")
    for family in ("primary", "secondary"):
        rows = [r for r in verdict.rows if r.family == family]
        assert [r.p_holm for r in rows] == pytest.approx(holm([r.p_value for r in rows]))
    assert len([r for r in verdict.rows if r.family == "primary"]) == 2  # U=2 and U=4 at sim1


def test_an_arm_with_one_seed_keeps_its_difference_but_gets_no_test():
    scores, values = _simulate(np.random.default_rng(6), 2, {"dense": (0.0, 5), "U=8": (-0.1, 1)}, units=16)
    verdict = seed_verdict(scores, SeedVerdictOptions(reference="dense"))
    assert len(verdict.notes) == 1 and "U=8 has 1 seed" in verdict.notes[0] and "cannot test" in verdict.notes[0]
    for row in verdict.rows:
        i = int(row.layer[3:])
        assert row.difference == pytest.approx(values["U=8"][0, i].mean() - values["dense"][:, i].mean(axis=-1).mean())
        assert math.isnan(row.p_value) and math.isnan(row.ci_low) and row.equivalent is None
        assert "1/5 seeds" in row.sentence(0.05) and "p =" not in row.sentence(0.05)


def _write(path, rows, columns=("arm", "seed", "run", "layer", "unit", "metric", "value")):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        w.writerows(rows)
    return path


def _csv_rows(rng, arms=(("dense", 0.0), ("U=4", -0.15)), seeds=3, units=32):
    rows = []
    for arm, shift in arms:
        for s in range(seeds):
            effect = rng.normal(0, 0.02)
            for layer in ("layer4.0.act1", "layer4.1.act2"):
                rows += [[arm, s, f"{arm}-{s}", layer, u, METRIC, 0.3 + shift + effect + rng.normal(0, 0.1)]
                         for u in range(units)]
                rows.append([arm, s, f"{arm}-{s}", layer, "", "dead_fraction", 0.1])
    return rows


def test_analyze_verdict_writes_the_csv_and_page(tmp_path, capsys):
    rows = _csv_rows(np.random.default_rng(7))
    scores = _write(tmp_path / "unit_scores.csv", rows)
    assert analyze.main(["verdict", "--scores", str(scores), "--reference", "dense", "--out", str(tmp_path / "v")]) == 0
    out = capsys.readouterr().out
    with open(tmp_path / "v" / "verdict.csv", newline="") as fh:
        written = list(csv.DictReader(fh))
    assert list(written[0])[:11] == ["arm", "reference", "layer", "metric", "difference", "ci_low", "ci_high",
                                     "p_value", "p_holm", "equivalent", "n_seeds"]
    primary = [r for r in written if r["family"] == "primary"]
    assert [(r["layer"], r["metric"]) for r in primary] == [("layer4.1.act2", METRIC)]  # the default endpoint
    def mean(arm):  # the planted difference, computed from the rows: mean over seeds of the mean over units
        return np.mean([np.mean([float(x[6]) for x in rows if x[0] == arm and x[1] == s and x[3] == "layer4.1.act2"
                                 and x[5] == METRIC]) for s in range(3)])
    assert float(primary[0]["difference"]) == pytest.approx(mean("U=4") - mean("dense"))
    assert float(primary[0]["p_value"]) < 0.01 and primary[0]["n_seeds"] == "3/3"
    assert "U=4 vs dense, layer4.1.act2 held-out correlation: -0.1" in out
    page = (tmp_path / "v" / "verdict.html").read_text()
    assert "Welch" in page and "Schuirmann" in page and "primary endpoint" in page and "dead fraction" in page


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda rows, cols: ([r[:6] for r in rows], cols[:6]), "lacks the column(s) value"),
    (lambda rows, cols: ([r[:6] + ["nan"] if i == 5 else r for i, r in enumerate(rows)], cols), "line 7"),
    (lambda rows, cols: ([r for r in rows if not (r[0] == "U=4" and r[1] == 1 and r[5] == "dead_fraction")], cols),
     "run 'U=4-1' has no dead_fraction"),
    (lambda rows, cols: (rows + [rows[0]], cols), "has 2 rows"),
])
def test_bad_tables_are_one_error_line_naming_the_file_and_write_nothing(tmp_path, capsys, edit, expected):
    rows, cols = edit(_csv_rows(np.random.default_rng(8)), ["arm", "seed", "run", "layer", "unit", "metric", "value"])
    scores = _write(tmp_path / "unit_scores.csv", rows, cols)
    assert analyze.main(["verdict", "--scores", str(scores), "--reference", "dense", "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and str(scores) in err and expected in err, err
    assert not (tmp_path / "v").exists()


@pytest.mark.parametrize(("argv", "expected"), [
    (["--reference", "relu"], "no arm 'relu' for the reference; its arms are dense, U=4"),
    (["--reference", "dense", "--primary", "layer4.1.act2:concepts"], "no arm has the metric 'concepts'"),
    (["--reference", "dense", "--metrics", "dead_fraction,heldout_f1"],
     "has no metric 'heldout_f1'; its metrics are heldout_correlation, dead_fraction"),
])
def test_bad_options_name_the_table_and_what_it_has(tmp_path, capsys, argv, expected):
    scores = _write(tmp_path / "unit_scores.csv", _csv_rows(np.random.default_rng(9)))
    assert analyze.main(["verdict", "--scores", str(scores), *argv, "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and str(scores) in err and expected in err, err
    assert not (tmp_path / "v").exists()


def test_metrics_choose_the_secondary_family_and_the_primary_endpoint_stays(tmp_path, capsys):
    scores = _write(tmp_path / "unit_scores.csv", _csv_rows(np.random.default_rng(11)))
    for metrics, expected in (("dead_fraction", {METRIC, "dead_fraction"}), (METRIC, {METRIC})):
        out = tmp_path / metrics
        assert analyze.main(["verdict", "--scores", str(scores), "--reference", "dense", "--metrics", metrics,
                             "--out", str(out)]) == 0
        with open(out / "verdict.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert {r["metric"] for r in rows} == expected
        assert [(r["layer"], r["metric"]) for r in rows if r["family"] == "primary"] == [("layer4.1.act2", METRIC)]
        # Holm over the tested rows only: the secondary family's size is what --metrics left
        secondary = [r for r in rows if r["family"] == "secondary"]
        assert [float(r["p_holm"]) for r in secondary] == pytest.approx(holm([float(r["p_value"]) for r in secondary]))
    capsys.readouterr()


def test_a_table_read_from_csv_carries_u_and_rejects_two_for_one_arm(tmp_path):
    rows = [r + [{"dense": 1, "U=4": 4}[r[0]]] for r in _csv_rows(np.random.default_rng(10))]
    cols = ["arm", "seed", "run", "layer", "unit", "metric", "value", "u"]
    assert read_unit_scores(_write(tmp_path / "a.csv", rows, cols)).u == {"dense": 1, "U=4": 4}
    rows[-1][-1] = 8
    with pytest.raises(UserError, match="arm 'U=4' has several values of u"):
        read_unit_scores(_write(tmp_path / "b.csv", rows, cols))


def test_a_margin_or_level_out_of_range_is_one_error_line_before_reading(tmp_path, capsys):
    scores = tmp_path / "absent.csv"  # never read: the options are checked first
    for argv, expected in ((["--margin", "0"], "margin must be a number > 0"),
                           (["--alpha-level", "0.7"], "significance level must be in (0, 0.5)")):
        assert analyze.main(["verdict", "--scores", str(scores), "--reference", "dense", *argv,
                             "--out", str(tmp_path / "v")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and expected in err, err
    assert not (tmp_path / "v").exists()


def test_the_statistics_core_is_framework_free():
    code = ("import sys, lwtakit.evaluation.seeds, lwtakit.evaluation.unit_scores; "
            "print(','.join(m for m in ('torch', 'lightning', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == ""
