"""Golden outputs: dissect, label and compare give exactly the labels, scores and report figures recorded in
tests/golden/expected (see tests/golden/make_golden.py for how they were made and when to re-record)."""

import csv
import io

import pytest

from tests.golden import cases


@pytest.mark.numerics
@pytest.mark.parametrize("case", cases.CASES, ids=[c.name for c in cases.CASES])
def test_outputs_equal_the_recorded_goldens(case, tmp_path):
    produced = case.run(tmp_path)
    expected_dir = cases.EXPECTED / case.name
    assert sorted(produced) == sorted(p.name for p in expected_dir.iterdir())
    diffs = []
    for name, text in produced.items():
        diffs += cases.compare_outputs(name, (expected_dir / name).read_text(), text)
    assert not diffs, "\n".join(diffs)


def test_the_comparison_sees_a_changed_score_and_label():
    """The golden comparison itself can fail: a number changed by more than float32 rounding of an input, or a
    changed label (whatever its score), is reported; a float64 rounding difference is not."""
    header = "unit,label,score\n"
    assert cases.compare_outputs("x.csv", header + "0,red,0.5\n", header + "0,red,0.50000000001\n") == []
    assert cases.compare_outputs("x.csv", header + "0,red,0.5\n", header + "0,red,0.50001\n")
    assert cases.compare_outputs("x.csv", header + "0,red,0.5\n", header + "0,blue,0.5\n")
    assert cases.compare_outputs("r.txt", "a\nb\n", "a\nc\n")


def test_a_deliberately_changed_label_fails_the_recorded_golden():
    """On a real golden file: relabelling one unit with the runner-up of its own top five (a plausible mistake,
    not a near tie: its score is kept) fails, and so does a score moved by 1e-4 relative."""
    expected = (cases.EXPECTED / "dissect" / "labels.csv").read_text()
    rows = list(csv.DictReader(io.StringIO(expected)))
    row = next(r for r in rows if r["method"] == "invert" and len(r["top5"].split("|")) > 1)
    changed_label = expected.replace(f"{row['label']},{row['score']}", f"{row['top5'].split('|')[1]},{row['score']}", 1)
    changed_score = expected.replace(row["score"], repr(float(row["score"]) * (1 + 1e-4)), 1)
    assert changed_label != expected and changed_score != expected
    assert cases.compare_outputs("labels.csv", expected, changed_label)
    assert cases.compare_outputs("labels.csv", expected, changed_score)
