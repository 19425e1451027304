"""NetDissect's headline numbers (Bau et al. 2017): per layer the units whose IoU label has IoU > 0.04, their share
and the distinct concepts they cover, in the label summaries and the dissect report's layer overview."""

import numpy as np
import pytest

from lwtakit.labelers.invert import InvertRow
from lwtakit.labels import INTERPRETABLE_IOU, LabelRow, LabelTable
from lwtakit.report import dissection_report
from tests.test_report import _parse

CONCEPTS = ["sky", "grass", "wood", "road", "car"]


def _planted(seed=0):
    """Two layers of IoU rows (IoUs around the threshold, one exactly at it, one unit without a label) and
    INVERT rows beside them."""
    rng = np.random.default_rng(seed)
    rows = []
    for layer, n in (("layer3", 30), ("layer4", 45)):
        ious = rng.uniform(0.0, 0.1, n)
        ious[0] = INTERPRETABLE_IOU  # not above it: NetDissect's test is strict
        for u in range(n):
            label = CONCEPTS[int(rng.integers(len(CONCEPTS)))]
            extra = {} if u == 1 else {"iou": float(ious[u]), "threshold": 1.0}
            rows.append(LabelRow(layer, u, "iou", "" if u == 1 else label, None if u == 1 else float(ious[u]),
                                 extra=extra))
            rows.append(InvertRow(layer, u, "invert", label, 0.7, p_value=1e-4, auc=0.7, length=1))
    return LabelTable(rows)


def _per_unit(table, layer):
    """The headline numbers by a plain loop over the layer's IoU units."""
    units, concepts = 0, set()
    total = 0
    for r in table.rows:
        if r.layer == layer and r.method == "iou":
            total += 1
            if "iou" in r.extra and float(r.extra["iou"]) > 0.04:
                units += 1
                concepts.add(r.label)
    return units, units / total, len(concepts)


def test_interpretable_units_equal_a_per_unit_loop(tmp_path):
    table = _planted()
    summaries = table.summaries()
    for layer in ("layer3", "layer4"):
        got = summaries[(layer, "iou")].interpretable
        units, share, concepts = _per_unit(table, layer)
        assert (got.units, got.concepts) == (units, concepts) and got.share == pytest.approx(share)
        assert 0 < units < summaries[(layer, "iou")].units
        assert summaries[(layer, "invert")].interpretable is None
        assert str(got) == f"{units} ({round(100 * share)}%) · {concepts} concepts"
    # read back from labels.csv (strings) the numbers are the same
    back = LabelTable.read_csv(table.write_csv(tmp_path / "labels.csv")).summaries()
    assert back[("layer4", "iou")].interpretable == summaries[("layer4", "iou")].interpretable


def _overview(path):
    """The layer overview's cell texts, header first (the one table headed "layer, units")."""
    (table,) = [t for t in _parse(path).tables if [c[2] for c in t["rows"][0]][:2] == ["layer", "units"]]
    return [[c[2] for c in row] for row in table["rows"]]


def test_dissect_report_overview_shows_them_only_with_iou_labels(tmp_path):
    table = _planted()
    overview = _overview(dissection_report(tmp_path / "a", title="t", rows=table.records(), layers=[]))
    header = overview[0]
    assert header[-1] == f"IoU > {INTERPRETABLE_IOU}"
    for row in overview[1:]:
        layer, method, cell = row[0], row[header.index("method")], row[-1]
        expected = table.summaries()[(layer, method)].interpretable
        assert cell == (str(expected) if method == "iou" else "–")
    invert_only = table.select(method="invert").records()
    overview = _overview(dissection_report(tmp_path / "b", title="t", rows=invert_only, layers=[]))
    assert not any("IoU" in cell for cell in overview[0])


def test_compare_adds_them_to_each_layers_stats_from_a_per_unit_loop():
    from lwtakit.compare import add_interpretable_units
    from lwtakit.report.glossary import GLOSSARY, INTERPRETABLE_CONCEPTS, INTERPRETABLE_SHARE, INTERPRETABLE_UNITS

    table = _planted(seed=1)
    stats = {"layer3": {"units": 30.0}, "layer4": {"units": 45.0}, "fc": {"units": 10.0}}
    add_interpretable_units(stats, table.select(method="iou"))
    for layer in ("layer3", "layer4"):
        units, share, concepts = _per_unit(table, layer)
        assert stats[layer][INTERPRETABLE_UNITS] == units and stats[layer][INTERPRETABLE_CONCEPTS] == concepts
        assert stats[layer][INTERPRETABLE_SHARE] == pytest.approx(share)
    assert stats["fc"] == {"units": 10.0}  # no IoU labels (a linear layer): nothing added
    assert all(name in GLOSSARY for name in (INTERPRETABLE_UNITS, INTERPRETABLE_SHARE, INTERPRETABLE_CONCEPTS))
