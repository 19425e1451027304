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
