"""analyze.py sanity and analyze.py label --metrics: outputs and bad input."""

import csv

import numpy as np
import pytest

import analyze
from lwtakit.evaluation.metrics import METRICS, score_pairs

COLUMNS = ["metric", "missing_decrease", "extra_decrease", "passes"]


def _cli(capsys, *argv):
    code = analyze.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _one_line_error(code, err, *fragments):
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in err[0], err


@pytest.fixture
def planted(tmp_path):
    """Four units that fire exactly on concepts 3, 0, 4, 1 (0/1 activations) among eight concepts."""
    rng = np.random.default_rng(0)
    concepts = rng.random((800, 8)) < np.array([0.1, 0.2, 0.15, 0.1, 0.25, 0.1, 0.3, 0.05])
    np.save(tmp_path / "A.npy", concepts[:, [3, 0, 4, 1]].astype(np.float32))
    np.save(tmp_path / "L.npy", concepts)
    (tmp_path / "names.txt").write_text("".join(f"concept{i}\n" for i in range(8)))
    return tmp_path


def _sanity_args(d, *extra):
    return ("sanity", "--activations", d / "A.npy", "--concept-labels", d / "L.npy", "--concept-names",
            d / "names.txt", "--out", d / "sanity.csv", *extra)


def test_sanity_writes_one_row_per_metric(planted, capsys):
    code, err = _cli(capsys, *_sanity_args(planted, "--protocol", "averaged", "--repeats", 2))
    assert code == 0, err
    with open(planted / "sanity.csv", newline="") as fh:
        assert next(csv.reader(fh)) == COLUMNS
    rows = {r["metric"]: r for r in _rows(planted / "sanity.csv")}
    assert list(rows) == list(METRICS)
    assert all(0 <= float(r["missing_decrease"]) <= 1 and 0 <= float(r["extra_decrease"]) <= 1 for r in rows.values())
    assert rows["f1"]["passes"] == "True" and float(rows["f1"]["missing_decrease"]) == 1.0
    assert rows["recall"]["passes"] == "False" and float(rows["recall"]["extra_decrease"]) == 0.0


def test_sanity_tests_the_labels_of_a_label_table(planted, capsys):
    code, err = _cli(capsys, "label", "--activations", planted / "A.npy", "--method", "invert", "--concept-labels",
                     planted / "L.npy", "--concept-names", planted / "names.txt", "--out", planted / "labels.csv")
    assert code == 0, err
    assert [r["label"] for r in _rows(planted / "labels.csv")] == ["concept3", "concept0", "concept4", "concept1"]
    code, err = _cli(capsys, *_sanity_args(planted, "--labels", planted / "labels.csv", "--metrics", "precision,iou",
                                           "--protocol", "averaged", "--repeats", 2, "--seed", 5))
    assert code == 0, err
    assert _rows(planted / "sanity.csv") == [
        {"metric": "precision", "missing_decrease": "0.0", "extra_decrease": "1.0", "passes": "False"},
        {"metric": "iou", "missing_decrease": "1.0", "extra_decrease": "1.0", "passes": "True"}]
    # NOT x is a label too: the unit fires off its label, so adding positives to the label raises (not lowers) f1
    (planted / "neg.csv").write_text("unit,label\n0,NOT concept3\n1,\n")
    code, err = _cli(capsys, *_sanity_args(planted, "--labels", planted / "neg.csv", "--metrics", "f1",
                                           "--protocol", "averaged", "--repeats", 2))
    assert code == 0, err
    assert _rows(planted / "sanity.csv")[0]["extra_decrease"] == "0.0"


def test_label_metrics_add_one_column_per_metric(planted, capsys):
    out = planted / "labels.csv"
    code, err = _cli(capsys, "label", "--activations", planted / "A.npy", "--method", "invert", "--concept-labels",
                     planted / "L.npy", "--concept-names", planted / "names.txt", "--out", out,
                     "--metrics", "f1,auc,inverse_auc,correlation", "--alpha", 0.05)
    assert code == 0, err
    rows = _rows(out)
    assert {"f1", "neuroneval_auc", "inverse_auc", "correlation", "auc"} <= rows[0].keys()
    acts, labels = np.load(planted / "A.npy"), np.load(planted / "L.npy")
    for name, column in (("f1", "f1"), ("auc", "neuroneval_auc"), ("correlation", "correlation")):
        want = score_pairs(name, acts, labels, range(4), [3, 0, 4, 1], alpha=0.05)
        np.testing.assert_allclose([float(r[column]) for r in rows], want.numpy(), atol=1e-12)
    np.testing.assert_allclose([float(r["inverse_auc"]) for r in rows], [float(r["auc"]) for r in rows], atol=1e-12)


def test_label_metrics_score_clip_labels_against_concept_labels(planted, capsys):
    scores = np.load(planted / "L.npy") * 0.1 + 0.2
    np.save(planted / "P.npy", scores.astype(np.float32))
    code, err = _cli(capsys, "label", "--activations", planted / "A.npy", "--method", "cos", "--concept-scores",
                     planted / "P.npy", "--concept-labels", planted / "L.npy", "--concept-names", planted / "names.txt",
                     "--out", planted / "labels.csv", "--metrics", "iou")
    assert code == 0, err
    assert [float(r["iou"]) for r in _rows(planted / "labels.csv")] == [1.0] * 4


@pytest.mark.parametrize("extra, fragments", [
    (("--alpha", 0), ["alpha must be in (0, 1)"]),
    (("--alpha", 1.5), ["alpha must be in (0, 1)"]),
    (("--metrics", "f1,bogus"), ["unknown metric 'bogus'", "known metrics: recall, precision, f1"]),
    (("--repeats", 0), ["repeats must be >= 1"]),
    (("--repeats", 3), ["'averaged' protocol", "NeuronEval's protocol scores one"]),
    (("--labels", "LABELS"), ["'concept9' is not a known concept"]),
    (("--labels", "missing.csv"), ["missing.csv", "does not exist"]),
])
def test_sanity_bad_input_is_one_line_and_writes_nothing(planted, capsys, extra, fragments):
    (planted / "LABELS").write_text("unit,label\n0,concept3\n1,concept9\n")
    extra = tuple(planted / e if e in ("LABELS", "missing.csv") else e for e in extra)
    code, err = _cli(capsys, *_sanity_args(planted, *extra))
    _one_line_error(code, err, *fragments)
    assert not (planted / "sanity.csv").exists()


@pytest.mark.parametrize("extra, fragments", [
    (("--metrics", "f1", "--alpha", 1), ["alpha must be in (0, 1)"]),
    (("--metrics", "nope"), ["unknown metric 'nope'", "known metrics"]),
    (("--method", "cos", "--concept-scores", "L.npy", "--metrics", "f1"), ["--metrics", "--concept-labels"]),
])
def test_label_metrics_bad_input_is_one_line_and_writes_nothing(planted, capsys, extra, fragments):
    base = ["label", "--activations", planted / "A.npy", "--concept-names", planted / "names.txt",
            "--out", planted / "labels.csv"]
    if "--method" not in extra:
        base += ["--method", "invert", "--concept-labels", planted / "L.npy"]
    extra = tuple(planted / e if e == "L.npy" else e for e in extra)
    code, err = _cli(capsys, *base, *extra)
    _one_line_error(code, err, *fragments)
    assert not (planted / "labels.csv").exists()
