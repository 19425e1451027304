"""The tidy per-unit table the seed-level verdict reads (issue 20): ``unit_scores.csv``.

One row per arm, seed, run, layer, unit and metric, columns ``arm,seed,run,layer,unit,metric,value`` (an optional
``u`` column gives an arm's number of competitors per LWTA block, dense = 1, for the trend test over U). ``compare``
writes it; users can re-analyse it in pandas or R.

The contract, checked by :func:`read_unit_scores` (each break is one :class:`~lwtakit.errors.UserError` naming the
file and the fix, before any statistics run):

* every value is a finite number. Dead units are *left out* of the score metrics (a dead unit has no label, and a
  score of 0 would count it as perfectly focused); each run counts them as its own metric ``dead_fraction``, one
  row with an empty ``unit``. NaN is therefore an input error, never a silent drop.
* a run belongs to one arm and has one seed; a unit appears once per run, layer and metric.
* every run of the table carries every (layer, metric) of the table, so each arm is compared on the same footing.
* an arm's ``u`` (when given) is one whole number >= 1.

Framework-free: the standard library and numpy.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

__all__ = ["COLUMNS", "DEAD_FRACTION", "UnitScores", "read_unit_scores"]

COLUMNS = ("arm", "seed", "run", "layer", "unit", "metric", "value")
DEAD_FRACTION = "dead_fraction"  # a run's share of dead units per layer: one row with an empty unit
_NAMES = ("arm", "seed", "run", "layer", "metric")  # must not be empty


@dataclass(frozen=True)
class UnitScores:
    """The table as equal-length columns (numpy arrays of str, ``value`` float64); ``u`` maps an arm to its U
    (arms without one are absent); ``source`` names where it came from, for error messages."""

    arm: np.ndarray
    seed: np.ndarray
    run: np.ndarray
    layer: np.ndarray
    unit: np.ndarray
    metric: np.ndarray
    value: np.ndarray
    u: dict[str, int]
    source: str = "unit scores"

    @property
    def arms(self) -> list[str]:
        """The arms in first-seen order."""
        return list(dict.fromkeys(self.arm.tolist()))

    def endpoints(self) -> list[tuple[str, str]]:
        """Every ``(layer, metric)`` in first-seen order (compare writes layers in network order)."""
        return list(dict.fromkeys(zip(self.layer.tolist(), self.metric.tolist(), strict=True)))

    def only(self, metrics: Sequence[str]) -> UnitScores:
        """The rows of ``metrics`` alone (a :class:`UserError` naming the table for a metric it does not have)."""
        have = dict.fromkeys(self.metric.tolist())
        missing = [m for m in metrics if m not in have]
        if missing:
            raise UserError(f"{self.source} has no metric {missing[0]!r}; its metrics are {', '.join(have)}")
        keep = np.isin(self.metric, list(metrics))
        columns = {c: getattr(self, c)[keep] for c in (*COLUMNS,)}
        return UnitScores(**columns, u=self.u, source=self.source)


def _value(text: str, where: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise UserError(f"{where}: value {text!r} is not a number") from None
    if not math.isfinite(v):
        raise UserError(f"{where}: value {text!r} is not a finite number; leave dead or unlabelled units out of "
                        "the table (each run counts its dead units as the metric dead_fraction)") from None
    return v


def _arm_u(rows: list[dict], source: str) -> dict[str, int]:
    """Each arm's U from the optional ``u`` column: one whole number >= 1 per arm (blank: no U)."""
    found: dict[str, set[str]] = {}
    for r in rows:
        if (r.get("u") or "").strip():
            found.setdefault(r["arm"], set()).add(r["u"].strip())
    out = {}
    for arm, texts in found.items():
        if len(texts) > 1:
            raise UserError(f"{source}: arm {arm!r} has several values of u ({', '.join(sorted(texts))}); "
                            "an arm is one configuration, give it one U")
        text = texts.pop()
        try:
            u = float(text)
        except ValueError:
            u = math.nan
        if not (math.isfinite(u) and u >= 1 and u == int(u)):
            raise UserError(f"{source}: arm {arm!r} has u = {text!r}; U is a whole number >= 1 (dense = 1)")
        out[arm] = int(u)
    return out


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"unit scores {path} not found; give the unit_scores.csv that analyze.py compare wrote")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise UserError(f"{path} lacks the column(s) {', '.join(missing)}; a unit scores table has the columns "
                            f"{','.join(COLUMNS)} (and optionally u)")
        rows = list(reader)
    if not rows:
        raise UserError(f"{path} has a header but no rows; it needs the units' scores of at least two arms")
    return rows


def read_unit_scores(path: str | os.PathLike) -> UnitScores:
    """Read and check ``unit_scores.csv`` (the contract in the module docstring); a :class:`UserError` naming the
    file, the line and what to fix on the first break."""
    path = Path(path)
    rows = _read_rows(path)
    values = np.empty(len(rows))
    for i, r in enumerate(rows):
        where = f"{path} line {i + 2}"
        empty = [c for c in _NAMES if not (r.get(c) or "").strip()]
        if empty:
            raise UserError(f"{where}: empty {', '.join(empty)}; every row names its arm, seed, run, layer and "
                            "metric")
        values[i] = _value(r["value"] or "", f"{where} (run {r['run']}, {r['layer']} {r['metric']})")
    cols = {c: np.array([(r[c] or "").strip() for r in rows], dtype=str) for c in COLUMNS if c != "value"}
    scores = UnitScores(**cols, value=values, u=_arm_u(rows, str(path)), source=str(path))
    check_table(scores)
    return scores


def _one_each(keys: np.ndarray, values: np.ndarray, what: str, source: str) -> None:
    """Each key has one value: a run's one arm, a run's one seed."""
    pairs = dict.fromkeys(zip(keys.tolist(), values.tolist(), strict=True))
    seen: dict[str, str] = {}
    for k, v in pairs:
        if k in seen:
            raise UserError(f"{source}: run {k!r} has two {what}s ({seen[k]!r} and {v!r}); a run is one trained "
                            f"network with one {what}")
        seen[k] = v


def check_table(scores: UnitScores) -> None:
    """The structural contract: one arm and seed per run, no repeated unit, every run with every (layer, metric)."""
    src = scores.source
    _one_each(scores.run, scores.arm, "arm", src)
    _one_each(scores.run, scores.seed, "seed", src)
    keys = np.char.add(np.char.add(np.char.add(np.char.add(scores.run, "\x1f"), scores.layer), "\x1f"),
                       np.char.add(np.char.add(scores.metric, "\x1f"), scores.unit))
    unique, counts = np.unique(keys, return_counts=True)
    if (counts > 1).any():
        run, layer, metric, unit = unique[np.argmax(counts > 1)].split("\x1f")
        raise UserError(f"{src}: unit {unit!r} of run {run!r} has {counts.max()} rows for {layer} {metric}; give "
                        "each unit one value per layer and metric")
    have = set(zip(scores.run.tolist(), scores.layer.tolist(), scores.metric.tolist(), strict=True))
    for layer, metric in scores.endpoints():
        for run in dict.fromkeys(scores.run.tolist()):
            if (run, layer, metric) not in have:
                raise UserError(f"{src}: run {run!r} has no {metric} in layer {layer}, which other runs have; "
                                "every run must carry the same layers and metrics (drop the metric from every arm "
                                "or score it in this run)")
