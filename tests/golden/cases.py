"""The golden cases: fixed inputs, the commands a user runs on them, and how their outputs are normalised.

Each case runs real entry points (`analyze.py dissect | label | compare`) on committed runs or on data made
here from fixed seeds, and returns ``{file name: text}``: CSV files as written, and each HTML report reduced
to its visible text (tags, embedded images and the generation time removed), which holds every figure a
reader sees. :func:`compare_outputs` compares CSV cells exactly for text and to :data:`REL_TOL` for numbers.

Why the goldens hold on any CPU. In float32 they cannot: sums come out in an order that depends on the
instruction set (AVX2, AVX-512, NEON) and the thread count, ~1e-7 relative, and some of that becomes discrete: an
LWTA winner decided by logits that close flips, two images that close swap ranks and move an AUC by a whole
``1 / (n_pos * n_neg)``. So the cases compute where the arithmetic is reproducible: ``dissect`` and ``compare`` run
the networks and the tiny CLIP in float64 (``--precision 64``, :mod:`lwtakit.models.precision`), and ``label``
is given float64 arrays. Float64 sums in another order differ by at most ``n * 2**-53`` relative for ``n``
terms (Higham, "Accuracy and Stability of Numerical Algorithms", 2002, eq. 4.4): with the longest sums here
(3 x 3 x 512 products in a convolution, ~20 layers deep) that stays below ~1e-11. Recorded activations are stored
as float32: rounding a float64 is exact IEEE arithmetic, but a value within ~1e-14 of a float32 rounding boundary
may round to the neighbouring float32 on another machine, a change of one part in ``2**24`` (6e-8) in one input.
A statistic of such inputs moves by at most about that much relative, hence :data:`REL_TOL` = 1e-6. Near zero a
relative bound means nothing (a correlation of 0.0017 is a sum that nearly cancels), so numbers also pass within
:data:`ABS_TOL` = 1e-6 absolute: the statistics here live on a scale of one (correlations, AUCs, IoUs, F1, p-values)
and some of their inputs are float32 sums over a layer's channels (a PCA pole's projection: 128 products), whose
rounding is about sqrt(128) * 2**-24 = 7e-7 at that scale. Labels, formulas and every text cell are compared
exactly: a label that changes is a change, not rounding.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"
EXPECTED = HERE / "expected"
REL_TOL = 1e-6  # why: the module docstring
ABS_TOL = 1e-6  # why: the module docstring
TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC")


class _Text(HTMLParser):
    """Visible text of a page, one line per text node; script and style bodies skipped."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        self._skip += tag in ("script", "style")
        for key, value in attrs:  # captions and titles a reader sees on hover
            if key in ("title", "alt") and value:
                self.lines.append(f"[{key}] {value}")

    def handle_endtag(self, tag):
        self._skip -= tag in ("script", "style")

    def handle_data(self, data):
        text = " ".join(data.split())
        if text and not self._skip:
            self.lines.append(text)


def report_text(path: Path, drop: tuple[str, ...] = ()) -> str:
    parser = _Text()
    parser.feed(path.read_text(encoding="utf-8"))
    lines = [TIME.sub("<time>", line).replace(str(HERE), "<golden>") for line in parser.lines]
    out, skip_next = [], False
    for line in lines:
        if skip_next:  # the value cell after a dropped key (wall-clock seconds)
            skip_next = False
            continue
        if line in drop:
            skip_next = True
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def _cli(*argv) -> None:
    import analyze

    code = analyze.main([str(a) for a in argv])
    if code != 0:
        raise AssertionError(f"analyze.py {' '.join(map(str, argv))} exited {code}")


@dataclass
class Case:
    name: str
    run: Callable[[Path], dict[str, str]]


# ------------------------------------------------------------------------------------------------ dissect
def tiny_clip(folder: Path) -> Path:
    """A tiny open_clip model with seeded random weights in open_clip's local-dir layout, the same on every CPU.

    torch's own initialisers are not: ``normal_`` draws through vectorised kernels chosen by instruction set, so the
    same seed gave float32 weights an ulp apart under ATEN_CPU_CAPABILITY=default and AVX-512 (a golden CLIP-Dissect
    score moved by 1.2e-6). Every parameter torch initialised at random is therefore drawn again from numpy's
    seeded PCG64 (normal, sd 0.02; stream-compatible on every platform); constant ones (layer-norm scales and biases,
    the logit scale) stay as they are."""
    import numpy as np
    import open_clip
    import torch

    from lwtakit.clip import save_local_dir
    from tests.test_clip import TINY_CFG

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CFG)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.numel() > 1 and not bool((p == p.flatten()[0]).all()):
                p.copy_(torch.from_numpy(rng.normal(0.0, 0.02, tuple(p.shape))).to(p.dtype))
    return save_local_dir(model, TINY_CFG, folder)


def run_dissect(work: Path) -> dict[str, str]:
    clip = tiny_clip(work / "clip")
    out = work / "dissect"
    _cli("dissect", "--ckpt", RUNS / "default" / "checkpoints" / "last.ckpt", "--methods", "invert",
         "clip_dissect", "iou", "--layers", "layer4.1.act2", "fc", "--clip-model", f"local-dir:{clip}",
         "--clip-cache", work / "cache",
         "--concepts", "synthetic", "--pca", 4, "--max-length", 2, "--probe-size", 240, "--top-images", 4,
         "--grid-units", 2, "--device", "cpu", "--precision", 64, "--out", out)
    return {"labels.csv": (out / "labels.csv").read_text(),
            "report.txt": report_text(out / "report.html", drop=("seconds",))}


# -------------------------------------------------------------------------------------------------- label
def label_data(n: int = 300, units: int = 10, concepts: int = 8, seed: int = 0):
    """Activations with ties (rounded), planted concept detectors, concept labels and CLIP-like scores."""
    rng = np.random.default_rng(seed)
    labels = rng.random((n, concepts)) < rng.uniform(0.1, 0.45, concepts)
    weights = rng.normal(size=(concepts, units)) * (rng.random((concepts, units)) < 0.3)
    acts = np.round(labels @ weights * 2 + rng.normal(size=(n, units)), 1)
    scores = labels * 0.3 + rng.normal(scale=0.1, size=(n, concepts))
    names = [f"concept {i}" if i % 2 else f"concept_{i}" for i in range(concepts)]
    return acts, labels, scores, names


LABEL_METHODS = ("invert", "invert3", "soft_wpmi", "wpmi", "rank_reorder", "cos", "cos_cubed")


def run_label(work: Path) -> dict[str, str]:
    acts, labels, scores, names = label_data()
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "A.npy", acts)
    np.save(work / "L.npy", labels)
    np.save(work / "P.npy", scores)
    (work / "names.txt").write_text("\n".join(names) + "\n")
    out = {}
    for method in LABEL_METHODS:
        args = ["label", "--activations", work / "A.npy", "--concept-names", work / "names.txt",
                "--out", work / f"{method}.csv"]
        if method.startswith("invert"):
            args += ["--method", "invert", "--concept-labels", work / "L.npy"]
            if method == "invert3":
                args += ["--max-length", 3]
        else:
            args += ["--method", method, "--concept-scores", work / "P.npy"]
        _cli(*args)
        out[f"{method}.csv"] = (work / f"{method}.csv").read_text()
    return out


# ------------------------------------------------------------------------------------------------ compare
def run_compare(work: Path) -> dict[str, str]:
    out = work / "compare"
    _cli("compare", RUNS / "default", RUNS / "default_dense", "--probe-size", 200, "--eval-size", 200,
         "--device", "cpu", "--precision", 64, "--out", out)
    return {"compare.csv": (out / "compare.csv").read_text(), "report.txt": report_text(out / "report.html")}


CASES = [Case("dissect", run_dissect), Case("label", run_label), Case("compare", run_compare)]


# ------------------------------------------------------------------------------------------------ compare
def _cell_equal(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def compare_outputs(name: str, expected: str, actual: str) -> list[str]:
    """Differences between two outputs, as readable lines (empty when they agree)."""
    if not name.endswith(".csv"):
        if expected == actual:
            return []
        import difflib

        return list(difflib.unified_diff(expected.splitlines(), actual.splitlines(), "expected", "actual",
                                         lineterm="", n=1))[:40]
    exp = list(csv.reader(io.StringIO(expected)))
    act = list(csv.reader(io.StringIO(actual)))
    if exp[:1] != act[:1]:
        return [f"{name}: columns {act[:1]} != expected {exp[:1]}"]
    if len(exp) != len(act):
        return [f"{name}: {len(act) - 1} rows, expected {len(exp) - 1}"]
    diffs = []
    for i, (re_, ra) in enumerate(zip(exp, act, strict=True)):
        for col, a, b in zip(exp[0], re_, ra, strict=True):
            if not _cell_equal(a, b):
                diffs.append(f"{name} row {i} {col}: {b!r} != expected {a!r}")
    return diffs[:40]
