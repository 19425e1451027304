"""The few lines ``train.py`` prints when a run ends (issue 11): what the run reached, where its files are and
what to run next, read from its final metrics and its run folder."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from lwtakit.io import read_csv

_MODES = ("sample", "argmax", "mc")


def final_accuracy(metrics: dict[str, float], stage: str = "test") -> dict[str, float]:
    """A run's accuracy per evaluation mode from its final metrics (``results.json``): ``{"dense": acc}`` for a
    dense network, logged as ``<stage>/acc_dense`` (or ``<stage>/acc_argmax`` by runs before issue 11, when the
    run has no other mode), else ``{mode: acc}`` for the LWTA modes it was evaluated in."""
    if f"{stage}/acc_dense" in metrics:
        return {"dense": metrics[f"{stage}/acc_dense"]}
    modes = {m: metrics[f"{stage}/acc_{m}"] for m in _MODES if f"{stage}/acc_{m}" in metrics}
    if set(modes) == {"argmax"}:  # an old dense run: its one deterministic function, named argmax
        return {"dense": modes["argmax"]}
    return modes


def _accuracy(metrics: dict[str, float]) -> str | None:
    modes = final_accuracy(metrics)
    if not modes:
        return None
    if set(modes) == {"dense"}:
        return f"test accuracy: {modes['dense']:.1%}"
    return "test accuracy: " + " · ".join(f"{m} {v:.1%}" for m, v in modes.items())


def _active(metrics: dict[str, float]) -> str | None:
    fractions = [v for k, v in metrics.items() if k.startswith("sparsity/") and k.endswith("/active_fraction")]
    if not fractions:
        return None
    return (f"active fraction: {sum(fractions) / len(fractions):.3f} (mean over {len(fractions)} activation "
            "layers)")


def _labels(run_dir: Path) -> str | None:
    """The last training-time dissection: its layers and the mean held-out F1 of their labels."""
    path = run_dir / "labels.csv"
    if not path.is_file():
        return None
    rows = read_csv(path)
    if not rows:
        return None
    last = max(int(r["epoch"]) for r in rows)
    rows = [r for r in rows if int(r["epoch"]) == last]
    f1 = [float(r["heldout_f1"]) for r in rows if r.get("heldout_f1") not in (None, "")]
    quality = f", mean held-out F1 {sum(f1) / len(f1):.3f}" if f1 else ""
    layers = len({r["layer"] for r in rows})
    return f"labels: {len(rows)} units in {layers} layers at epoch {last}{quality} ({path})"


def _fallback(run_dir: Path) -> str | None:
    """A line when the run's dissection fell back from CLIP-Dissect to INVERT (recorded in dissection.json)."""
    path = run_dir / "dissection.json"
    if not path.is_file():
        return None
    choice = json.loads(path.read_text())
    if not choice.get("fallback"):
        return None
    used = ", ".join(choice.get("methods_used", []))
    return f"dissection: CLIP weights unavailable, labelled with {used} instead of CLIP-Dissect ({path})"


def summary_lines(metrics: dict[str, float], run_dir: Path) -> list[str]:
    """``run: ...``, then test accuracy per inference mode, the mean active fraction of the activation layers, the last
    dissection's labels (and its CLIP fallback, if it fell back), the offline W&B run to sync and the next
    commands; lines without data are left out."""
    lines = [f"run: {run_dir}"]
    lines += [line for line in (_accuracy(metrics), _active(metrics), _labels(run_dir), _fallback(run_dir)) if line]
    # Commands are shell-quoted, so that they paste as they are (a run folder with a space, say).
    if any((run_dir / "wandb").glob("offline-run-*")):
        lines.append(f"W&B (offline): upload with  wandb sync {shlex.quote(str(run_dir / 'wandb'))}/offline-run-*")
    run, out = shlex.quote(str(run_dir)), shlex.quote(f"reports/{run_dir.name}")
    lines.append(f"next: analyze.py dissect --ckpt {run} --out {out}   |   "
                 f"analyze.py compare {run} OTHER_RUN --out reports/compare")
    return lines
