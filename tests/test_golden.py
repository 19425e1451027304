"""Golden outputs: dissect, label and compare give exactly the labels, scores and report figures recorded in
tests/golden/expected (see tests/golden/make_golden.py for how they were made and when to re-record)."""

import pytest

from tests.golden import cases


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
    """The golden comparison itself can fail: a changed number beyond 1e-9, or a changed label, is reported."""
    header = "unit,label,score\n"
    assert cases.compare_outputs("x.csv", header + "0,red,0.5\n", header + "0,red,0.5000000000001\n") == []
    assert cases.compare_outputs("x.csv", header + "0,red,0.5\n", header + "0,red,0.50001\n")
    assert cases.compare_outputs("x.csv", header + "0,red,0.5\n", header + "0,blue,0.5\n")
    assert cases.compare_outputs("r.txt", "a\nb\n", "a\nc\n")
