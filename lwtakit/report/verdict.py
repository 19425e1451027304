"""The output of ``analyze.py verdict``: ``verdict.csv`` and a readable ``verdict.html`` (issue 20)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from lwtakit.evaluation.seeds import SeedVerdict, VerdictRow
from lwtakit.io import staged_dir, write_csv
from lwtakit.report.page import _now, environment

# verdict.csv's columns: those the issue names first, then the figures behind them
COLUMNS = list(VerdictRow.__dataclass_fields__)
TEXT_COLUMNS = {"arm", "reference", "layer", "metric", "equivalent", "n_seeds", "family", "note"}


def _cell(value):
    """A CSV / table cell: NaN and an untested equivalence as empty, booleans as yes / no."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return value


def write_verdict(verdict: SeedVerdict, out_dir: str | os.PathLike, source: str = "") -> Path:
    """Write ``out_dir/verdict.csv`` and ``out_dir/verdict.html`` (:func:`write_verdict_files`), both rendered first
    and moved into place together (nothing half-written on failure); returns the page's path."""
    with staged_dir(out_dir) as stage:
        write_verdict_files(verdict, stage, source)
    return Path(out_dir) / "verdict.html"


def write_verdict_files(verdict: SeedVerdict, folder: Path, source: str = "") -> None:
    """``folder/verdict.csv`` (one row per :class:`~lwtakit.evaluation.seeds.VerdictRow`) and ``folder/verdict.html``
    (the primary endpoint's sentences, the one-seed notes, how it was made, the secondary sentences and every row)
    into a folder being staged (``compare`` writes them beside its report)."""
    records = [{k: _cell(v) for k, v in r.record().items()} for r in verdict.rows]
    margin = verdict.options.margin
    primary = [r.sentence(margin) for r in verdict.rows if r.family == "primary"]
    secondary = [r.sentence(margin) for r in verdict.rows if r.family == "secondary"]
    arms = list(dict.fromkeys([verdict.options.reference] + [r.arm for r in verdict.rows if r.family == "primary"]))
    page = environment().get_template("verdict.html").render(
        title="Seed-level verdict", nav=[("summary", "primary endpoint"), ("how", "how it was made"),
                                         ("secondary", "secondary"), ("table", "table")],
        arms=arms, reference=verdict.options.reference, source=source or "a unit scores table", generated=_now(),
        primary=primary, secondary=secondary, notes=verdict.notes, how=verdict.how(), rows=records,
        columns=COLUMNS, text_columns=TEXT_COLUMNS)
    write_csv(folder / "verdict.csv", records, COLUMNS)
    with open(folder / "verdict.html", "w", encoding="utf-8") as fh:
        fh.write(page)
