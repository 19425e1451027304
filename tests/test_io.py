"""Writes that never leave half a file or half a report behind."""

import os

import pytest

from lwtakit.errors import UserError
from lwtakit.io import append_csv, atomic_write, read_csv, staged_dir, write_csv


def test_atomic_write_keeps_old_content_when_the_block_fails(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path) as fh:
        fh.write("new, half")
        raise RuntimeError("crash mid-write")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]  # no temporary file left


def test_append_csv_adds_rows_under_one_header(tmp_path):
    path = tmp_path / "labels.csv"
    append_csv(path, [{"a": 1, "b": "x"}], ["a", "b"])
    append_csv(path, [{"a": 2, "b": "y"}], ["a", "b"])
    assert read_csv(path) == [{"a": "1", "b": "x"}, {"a": "2", "b": "y"}]
    write_csv(path, [], ["a", "b"])
    assert read_csv(path) == [] and path.read_text().strip() == "a,b"


def test_staged_dir_publishes_only_on_success(tmp_path):
    out = tmp_path / "report"
    with staged_dir(out) as stage:
        (stage / "plots").mkdir()
        (stage / "plots" / "a.png").write_bytes(b"png")
        (stage / "report.html").write_text("ok")
    assert (out / "report.html").read_text() == "ok" and (out / "plots" / "a.png").exists()
    with pytest.raises(ValueError), staged_dir(out) as stage:
        (stage / "report.html").write_text("half")
        raise ValueError("failed half-way")
    assert (out / "report.html").read_text() == "ok"
    assert sorted(os.listdir(tmp_path)) == ["report"]  # the staging folder is gone


def test_unwritable_output_folder_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot create output folder"):
        write_csv(blocker / "sub" / "x.csv", [{"a": 1}])


def test_csv_cells_that_a_spreadsheet_would_run_are_escaped_and_read_back(tmp_path):
    path = tmp_path / "labels.csv"
    values = ["=HYPERLINK(\"http://x\")", "+1+2", "-cmd", "@SUM(A1)", "'=already quoted", "NOT red", "-0.5", "1e-3"]
    write_csv(path, [{"label": v, "score": -0.25} for v in values])
    cells = [line.split(",", 1)[0] for line in path.read_text().splitlines()[1:]]
    assert cells[:5] == ["\"'=HYPERLINK(\"\"http://x\"\")\"", "'+1+2", "'-cmd", "'@SUM(A1)", "''=already quoted"]
    assert cells[5:] == ["NOT red", "-0.5", "1e-3"]  # plain text and numbers (also negative) stay as they are
    assert all(line.endswith(",-0.25") for line in path.read_text().splitlines()[1:])
    assert [r["label"] for r in read_csv(path)] == values
    append_csv(path, [{"label": "=1", "score": 1}], ["label", "score"])
    assert read_csv(path)[-1] == {"label": "=1", "score": "1"}


def test_read_csv_drops_a_byte_order_mark(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes("unit,label\n0,red\n".encode("utf-8-sig"))
    assert read_csv(path) == [{"unit": "0", "label": "red"}]


def test_staged_dir_replaces_our_stale_files_and_keeps_others(tmp_path):
    out = tmp_path / "report"
    with staged_dir(out) as stage:
        (stage / "plots").mkdir()
        (stage / "plots" / "layer3.png").write_bytes(b"old")
        (stage / "grids").mkdir()
        (stage / "grids" / "a.png").write_bytes(b"old")
        (stage / "report.html").write_text("first")
    (out / "notes.txt").write_text("the user's")
    with pytest.warns(UserWarning, match="plots/mine.png"):
        (out / "plots" / "mine.png").write_bytes(b"user")
        with staged_dir(out) as stage:
            (stage / "plots").mkdir()
            (stage / "plots" / "layer4.png").write_bytes(b"new")
            (stage / "report.html").write_text("second")
    assert (out / "report.html").read_text() == "second"
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["layer4.png", "mine.png"]
    assert not (out / "grids").exists()  # emptied by dropping our stale file
    assert (out / "notes.txt").read_text() == "the user's"
