"""The generic label row: a labeler with typed values of its own brings its row type, and the table, labels.csv,
the summaries and the report carry it without a core file naming the labeler; the core imports no labeler's
internals."""

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from lwtakit.data import probe_subset
from lwtakit.data.synthetic import ConceptShapes
from lwtakit.dissect import ConceptSource, DissectOptions, dissect
from lwtakit.labelers.base import CONCEPT_LABELS, Labeler, Target, register_labeler, row_class, rows_from_dicts
from lwtakit.labelers.invert import InvertRow, label_units
from lwtakit.labels import COLUMNS, INTERPRETABLE_IOU, LabelRow, LabelTable, optional_float
from lwtakit.report import dissection_report
from tests.test_interpretable_units import _overview
from tests.test_labelers import ColourNet

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["red", "blue", "round", "striped"]
CORE = ["labels.py", "evaluation/metrics.py", "evaluation/heldout.py", "evaluation/assess.py", "evaluation/ranks.py",
        "analysis.py", "report/glossary.py",
        *(f"report/dissect/{p.name}" for p in sorted((ROOT / "lwtakit/report/dissect").glob("*.py")))]


@pytest.fixture(scope="module")
def probe():
    return probe_subset(ConceptShapes(size=400, split="val"), 200, seed=0)


@dataclass
class GapRow(LabelRow):
    """A row with a typed value of its own, ``gap``, whose column goes right after ``score``."""

    gap: float | None = None

    columns: ClassVar[tuple[str, ...]] = (*COLUMNS[:COLUMNS.index("score") + 1], "gap",
                                          *COLUMNS[COLUMNS.index("score") + 1:])
    numbers: ClassVar[tuple[str, ...]] = ("gap", "p_value")

    @classmethod
    def own_fields(cls, values, concept_names=None):
        return {"gap": optional_float(values.get("gap"))}


@register_labeler
class GapLabeler(Labeler):
    """Label = the concept whose positives' mean activation exceeds its negatives' the most; ``gap`` is that
    difference of means, and the score the gap over the unit's standard deviation."""

    name = "gap_rows"
    needs = frozenset({CONCEPT_LABELS})
    row_class = GapRow

    def label(self, target, ctx):
        acts = target.acts.double()
        labels = torch.as_tensor(ctx.concepts.labels).double()
        gap = (labels.T @ acts) / labels.sum(0)[:, None] - ((1 - labels).T @ acts) / (1 - labels).sum(0)[:, None]
        best, sd = gap.argmax(0), acts.std(0)
        return rows_from_dicts([{"unit": u, "label": ctx.concepts.names[int(best[u])], "gap": float(gap[best[u], u]),
                                 "score": float(gap[best[u], u] / sd[u])} for u in range(acts.shape[1])],
                               target, self.name, self.row_class)

    def report_meta(self):
        return {"gap labeler": "mean gap"}


def test_a_labelers_own_row_type_runs_in_dissect_and_round_trips_through_labels_csv(tmp_path, probe):
    result = dissect(ColourNet().eval(), probe, ["act"], ["gap_rows", "invert"], ConceptSource.from_dataset(probe),
                     DissectOptions(progress=False))
    table = result.table
    gap = table.select(method="gap_rows").rows
    assert [type(r) for r in table] == [GapRow] * 3 + [InvertRow] * 3 and row_class("nobody") is LabelRow
    assert [r.label for r in gap] == ["red", "green", "blue"]  # ColourNet's units detect their colours
    acts = result.recording.acts["act"].double()
    acts = acts if result.split is None else torch.as_tensor(result.split.parts(acts)[0])  # labels' own images
    assert [r.score for r in gap] == pytest.approx([r.gap / float(acts[:, r.unit].std()) for r in gap])
    assert all(r.gap > 0 and "gap" not in r.extra for r in gap)  # a typed field, not an extra
    # each type's own column goes where its type puts it, whichever type comes first
    expected = ["layer", "unit", "method", "label", "score", "gap", "firing_rate", "auc", "p_value", "length", "top5"]
    assert table.columns()[:len(expected)] == expected
    assert LabelTable(table.select(method="invert").rows + gap).columns()[:len(expected)] == expected
    names = ConceptSource.from_dataset(probe).names
    back = LabelTable.read_csv(table.write_csv(tmp_path / "labels.csv"), concept_names=names)
    assert [type(r) for r in back] == [type(r) for r in table]
    assert [r.gap for r in back.select(method="gap_rows")] == pytest.approx([r.gap for r in gap])
    assert [r.formula for r in back.select(method="invert")] == [r.formula for r in table.select(method="invert")]
    assert [{k: str(v) for k, v in r.record().items()} for r in back] == \
        [{k: str(v) for k, v in r.record().items()} for r in table]


def _planted() -> tuple[LabelTable, list[dict]]:
    """Gap rows of 6 units with planted values (gap, an IoU), then INVERT's rows of the same units."""
    g = torch.Generator().manual_seed(0)
    acts = torch.rand(80, 6, generator=g, dtype=torch.float64)
    concepts = torch.rand(80, len(NAMES), generator=g) < 0.3
    target = Target(name="l", layer="l", acts=acts, firing=torch.linspace(0.1, 0.6, 6))
    plain = [{"unit": u, "label": NAMES[u % 4], "score": 0.1 * u, "gap": 0.5 + u, "iou": 0.02 * u,
              "threshold": 1.5} for u in range(6)]
    invert = rows_from_dicts(label_units(acts, concepts, NAMES), target, "invert", InvertRow)
    return LabelTable(rows_from_dicts(plain, target, "gap_rows", GapRow) + invert), plain


def test_summaries_and_the_report_read_the_row_not_the_method_name(tmp_path):
    table, plain = _planted()
    assert [r.gap for r in table.select(method="gap_rows")] == [d["gap"] for d in plain]
    detected = [d["label"] for d in plain if d["iou"] > INTERPRETABLE_IOU]  # planted: units 3, 4, 5
    got = table.summaries()[("l", "gap_rows")].interpretable
    assert (got.units, got.concepts, got.share) == (len(detected), len(set(detected)), len(detected) / len(plain))
    assert table.summaries()[("l", "invert")].interpretable is None  # its rows carry no IoU
    overview = _overview(dissection_report(tmp_path, title="t", rows=table, layers=[]))
    cells = {row[overview[0].index("method")]: row[-1] for row in overview[1:]}
    assert cells == {"gap_rows": str(got), "invert": "–"}


def test_the_reports_share_significant_is_the_tables(tmp_path):
    """A unit without a label (no p-value) is not significant: the report's share is over all the method's units,
    the same figure as the label table's summary (the report used to count only the units with a p-value)."""
    rows = [InvertRow("l", 0, "invert", "red", 0.9, p_value=1e-5, auc=0.9, length=1),
            InvertRow("l", 1, "invert", "blue", 0.8, p_value=1e-4, auc=0.8, length=1),
            InvertRow("l", 2, "invert", "round", 0.6, p_value=0.2, auc=0.6, length=1),
            InvertRow("l", 3, "invert", "", None, length=0)]
    table = LabelTable(rows)
    assert table.summaries()[("l", "invert")].significant == 2 / 4  # planted: units 0 and 1 of 4
    overview = _overview(dissection_report(tmp_path, title="t", rows=table.records(), layers=[]))
    header, (row,) = overview[0], overview[1:]
    assert row[header.index("p<0.001")] == "50%" and row[header.index("labelled")] == "4"


def test_the_report_header_names_each_labelers_own_settings():
    from lwtakit.analysis import DissectRequest, _labeler_meta
    from lwtakit.labelers.base import create_labeler

    invert = create_labeler("invert")
    meta = _labeler_meta(DissectRequest(layers=["l"], labelers=[create_labeler("gap_rows"), invert]))
    assert meta == {"gap labeler": "mean gap", "INVERT": invert.config.describe()}
    assert _labeler_meta(DissectRequest(layers=["l"], labelers=[create_labeler("iou")])) == {}


def _imports(path: Path) -> list[str]:
    """The absolute module names ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            out += [module] + [f"{module}.{alias.name}" for alias in node.names]
    return out


@pytest.mark.parametrize("module", CORE)
def test_the_core_imports_no_labelers_internals(module):
    """Only the registry (lwtakit.labelers.base) and the shared run options; not a labeler's own modules."""
    allowed = ("lwtakit.labelers.base", "lwtakit.labelers.run_options", "lwtakit.labelers.pca")
    imported = [m for m in _imports(ROOT / "lwtakit" / module) if m.startswith("lwtakit.labelers.")]
    assert [m for m in imported if not m.startswith(allowed)] == []
