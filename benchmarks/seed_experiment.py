"""The README's seed-level experiment (issue 20, item 9): is an LWTA network more interpretable than its dense twin?

Trains four arms of the synthetic `default` recipe at equal width, dense, U=2, U=4 and U=8, each with ``--seeds``
seeds (two ``train.py -m`` sweeps; a sweep run again skips its complete points and resumes the others), then
compares them with ``analyze.py compare`` twice, the LWTA networks dissected with ``--passes`` 4 and 16 (and, with
``--at-accuracy X``, once more at each run's first epoch reaching validation accuracy X, from the runs' own
training-time dissections), and prints

* per arm: accuracy (mean +- sd over seeds), mean active fraction, the primary metric with its 95% t interval over
  seeds, and the difference from dense with its Welch interval, p-value and equivalence (``verdict.csv``);
* the primary endpoint's verdict at 4 and at 16 passes side by side, and whether its decision moved (sign,
  significance at 0.05, equivalence at the margin).

Every figure comes from the files ``compare`` wrote (``arms.csv``, ``unit_scores.csv``, ``verdict.csv``); this
script adds no statistics of its own beyond the t interval of an arm's seed means.

    python benchmarks/seed_experiment.py --out runs/seed_experiment [--seeds 5] [--at-accuracy 0.9] \\
        [--device cuda] [TRAIN OVERRIDES ...]

On a 2-core CPU the 20 default runs take about two hours (6 epochs each); a GPU makes them minutes
(``trainer=gpu``). Overrides after the options go to every training run (e.g. ``trainer.max_epochs=4``).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lwtakit.arm_plots import t_interval  # noqa: E402


def _run(argv: list[str]) -> None:
    print("+", " ".join(argv), flush=True)
    subprocess.run(argv, check=True, cwd=ROOT)


def train(out: Path, seeds: int, us: str, overrides: list[str]) -> None:
    """The two sweeps, ``out/sweeps/dense`` and ``out/sweeps/lwta`` over ``us`` (train.py -m resumes what is not
    complete)."""
    seed_list = ",".join(str(s) for s in range(seeds))
    arms = {"dense": ["--config", "default_dense"], "lwta": ["--config", "default", f"model.U={us}"]}
    for name, config in arms.items():
        _run([sys.executable, "train.py", "-m", *config, f"seed={seed_list}", "dissection.reliability=true",
              f"run_dir={out / 'sweeps'}", f"run_name={name}", *overrides])


def compare(out: Path, name: str, device: str, extra: list[str]) -> Path:
    folder = out / name
    if not (folder / "arms.csv").is_file():
        _run([sys.executable, "analyze.py", "compare", str(out / "sweeps" / "dense"), str(out / "sweeps" / "lwta"),
              "--device", device, "--out", str(folder), *extra])
    return folder


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _seed_means(folder: Path, layer: str, metric: str) -> dict[str, list[float]]:
    """arm -> the run means of ``metric`` in ``layer`` (one per seed), from unit_scores.csv."""
    runs: dict[tuple[str, str], list[float]] = {}
    for r in _rows(folder / "unit_scores.csv"):
        if r["layer"] == layer and r["metric"] == metric:
            runs.setdefault((r["arm"], r["run"]), []).append(float(r["value"]))
    out: dict[str, list[float]] = {}
    for (arm, _), values in runs.items():
        out.setdefault(arm, []).append(float(np.mean(values)))
    return out


def _fmt(x: str | float, digits: int = 3) -> str:
    return "" if x in ("", None) else f"{float(x):.{digits}g}"


def table(folder: Path) -> tuple[str, dict | None]:
    """The per-arm table of one comparison (markdown) and its primary verdict rows by arm."""
    verdict_path = folder / "verdict.csv"
    verdict = _rows(verdict_path) if verdict_path.is_file() else []
    primary = {r["arm"]: r for r in verdict if r["family"] == "primary"}
    arms = {(r["arm"], r["metric"]): r for r in _rows(folder / "arms.csv")}
    names = list(dict.fromkeys(a for a, _ in arms))
    if not primary:
        return f"(no seed-level verdict in {folder}: see its report.html)", None
    first = next(iter(primary.values()))
    layer, metric = first["layer"], first["metric"]
    means = _seed_means(folder, layer, metric)
    lines = [f"primary endpoint: {metric} of {layer}", "",
             "| arm | accuracy (mean ± sd) | active fraction | primary [95% CI over seeds] | minus dense [95% CI] "
             "| p | equivalent |", "|---|---|---|---|---|---|---|"]
    for arm in names:
        acc = arms.get((arm, "accuracy/mc")) or arms.get((arm, "accuracy/dense"))
        active = arms.get((arm, "active fraction/mean over layers"))
        m, lo, hi = t_interval(means.get(arm, []))
        v = primary.get(arm)
        diff = f"{_fmt(v['difference'])} [{_fmt(v['ci_low'])}, {_fmt(v['ci_high'])}]" if v else "reference"
        lines.append(f"| {arm} | {_fmt(acc['mean'], 4)} ± {_fmt(acc['sd'], 2)} | {_fmt(active['mean'])} "
                     f"| {m:.3g} [{lo:.3g}, {hi:.3g}] | {diff} | {_fmt(v['p_value']) if v else ''} "
                     f"| {v['equivalent'] if v else ''} |")
    return "\n".join(lines), primary


def decision(row: dict) -> tuple[int, bool, str]:
    """What a verdict row decides: the sign of the difference, significance at 0.05, equivalence."""
    return int(np.sign(float(row["difference"]))), float(row["p_value"]) <= 0.05, row["equivalent"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of the sweeps and the comparisons")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per arm (default 5)")
    parser.add_argument("--lwta-u", default="2,4,8", help="the LWTA arms' U, comma-separated (default 2,4,8)")
    parser.add_argument("--at-accuracy", type=float, help="also compare at each run's first epoch reaching it")
    parser.add_argument("--device", default="auto", help="device of the comparisons")
    args, overrides = parser.parse_known_args()
    train(args.out, args.seeds, args.lwta_u, overrides)
    results = {}
    for passes in (4, 16):
        folder = compare(args.out, f"compare_p{passes}", args.device, ["--passes", str(passes)])
        text, results[passes] = table(folder)
        print(f"\n## {passes} mc passes ({folder})\n\n{text}")
    if args.at_accuracy is not None:
        folder = compare(args.out, "compare_matched", args.device, ["--at-accuracy", str(args.at_accuracy)])
        print(f"\n## at validation accuracy {args.at_accuracy:g} ({folder})\n\n{table(folder)[0]}")
    if results[4] and results[16]:
        print("\n## does the verdict move from 4 to 16 passes?\n")
        for arm, row in results[4].items():
            other = results[16].get(arm)
            moved = other is None or decision(row) != decision(other)
            print(f"- {arm}: {_fmt(row['difference'])} (p {_fmt(row['p_value'])}) at 4, "
                  f"{_fmt(other['difference']) if other else '-'} (p {_fmt(other['p_value']) if other else '-'}) "
                  f"at 16: {'MOVED' if moved else 'same decision'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
