"""Record the golden outputs that tests/test_golden.py compares against.

    python tests/golden/make_golden.py [--runs DIR] [--cases NAME ...]

The golden runs (`tests/golden/runs/{default,default_dense}`) are the README's `default` and `default_dense`
experiments trained for 2 epochs (`trainer.max_epochs=2 logger=csv`), their checkpoints stripped to what
`analyze.py` reads (weights, config, hyper-parameters: no optimiser state). With `--runs DIR` they are copied
from DIR (a `run_dir` holding both runs); without it the committed ones are used.

Re-record only when a change is *meant* to change what a user sees, and say so in the commit: the point of the
goldens is that a refactor leaves every label, score and report figure exactly as it was. History: recorded at
37cbab8 (before the labeler redesign, which left them unchanged); dissect and compare re-recorded when LWTA
networks came to be dissected in mc mode with held-out assessment by default (issue 8). Issue 22 made them hold on
any CPU: dissect and compare run with --precision 64, label reads float64 arrays (cases.py says why); recorded
again in the same stop for each run's own splits (issue 23: the subsets are now drawn from the run's 1,000
validation / test images, not 2,000), the held-out metrics of issue 20 (new label columns, one-perturbation sanity
tests) and IoU measuring the mc function (issue 21). Compare re-recorded when it came to measure every run's
split-half reliability, test the verdict's metrics for sanity (sanity.csv) and write every per-unit metric to
unit_scores.csv (issue 20). Dissect re-recorded when the tiny CLIP's weights came to be drawn by numpy (torch's
initialisers differ by instruction set: one CLIP-Dissect score moved 1.2e-6 under the portable kernels), with one
IoU row whose overlap now counts in float64 (0.00215233 -> 0.00215227).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from tests.golden import cases  # noqa: E402

KEEP = ("state_dict", "lwtakit_config", "hyper_parameters")


def copy_run(src: Path, dst: Path) -> None:
    ckpt = torch.load(src / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    (dst / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save({k: ckpt[k] for k in KEEP}, dst / "checkpoints" / "last.ckpt")
    shutil.copy(src / "labels.csv", dst / "labels.csv")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, help="run_dir holding freshly trained default and default_dense runs")
    names = [c.name for c in cases.CASES]
    p.add_argument("--cases", nargs="+", choices=names, default=names, help="the cases to record (default: all)")
    args = p.parse_args()
    if args.runs:
        for name in ("default", "default_dense"):
            copy_run(args.runs / name, cases.RUNS / name)
    for case in (c for c in cases.CASES if c.name in args.cases):
        out = cases.EXPECTED / case.name
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        produced = case.run(out.parent / (case.name + ".tmp"))
        for name, text in produced.items():
            (out / name).write_text(text)
        shutil.rmtree(out.parent / (case.name + ".tmp"), ignore_errors=True)
        print(f"recorded {case.name}: {', '.join(produced)}")


if __name__ == "__main__":
    main()
