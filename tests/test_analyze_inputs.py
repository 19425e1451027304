"""analyze.py on a run's own data and on inputs that used to be taken silently (issue 23): the images a report
names are the images it used, comparisons that mean nothing are refused, bad input is one line before any work."""

import errno
import json
import os
import re
import shutil
import signal
import time

import numpy as np
import pytest
import torch
from PIL import Image

import analyze
import train as train_script
from lwtakit.analysis import take_images
from lwtakit.checkpoint import CONFIG_KEY, load_model
from lwtakit.compare import accuracy_by_mode
from lwtakit.config import load_config
from lwtakit.io import staged_dir
from tests.test_analyze import assert_one_line_error, run_cli

# Non-default split sizes (the generator's own are 10,000 / 2,000 / 2,000): what compare and dissect must use.
VAL, TEST = 96, 80
TINY = ["data.train_size=256", f"data.val_size={VAL}", f"data.test_size={TEST}", "data.batch_size=64",
        "model.width=0.125", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "logger=none",
        "dissection.enabled=false", "sparsity.enabled=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny LWTA run and its dense twin (one epoch each, a few seconds)."""
    root = tmp_path_factory.mktemp("runs")
    return {name: train_script.train(load_config(experiment, [f"run_dir={root}", f"run_name={name}", *TINY])).run_dir
            for name, experiment in (("lwta", "default"), ("dense", "default_dense"))}


def nothing_beside(path):
    """No output and no staging folder of ``path``."""
    return not path.exists() and not list(path.parent.glob(f".{path.name}.*"))


def _with_config(run_dir, dest, **data):
    """A copy of ``run_dir`` (named ``dest``) whose checkpoint's stored config has ``data`` changed: the same
    weights, said to come from other data."""
    shutil.copytree(run_dir, dest)
    ckpt_path = dest / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path.resolve(), weights_only=True)
    ckpt[CONFIG_KEY]["data"].update(data)
    ckpt_path.unlink()  # the run folder links last.ckpt to an epoch file: write a plain file in its place
    torch.save(ckpt, ckpt_path)
    return dest


# --- item 3: the run's own splits, named truthfully ------------------------------------------------------------
def test_accuracy_on_the_runs_own_test_split_is_the_figure_train_measured(runs):
    """What compare measures accuracy on (each run's test split from its stored config, all of it by default) is
    the split train.py tested on: argmax and a dense net are deterministic, so the figures agree exactly (the
    split used to be rebuilt at the generator's 2,000 images and gave another figure)."""
    for name, mode in (("lwta", "argmax"), ("dense", "dense")):
        loaded = load_model(str(runs[name]))
        test = take_images(loaded.dataset("test"), None, 0, "--eval-size")
        assert len(test) == TEST
        measured = accuracy_by_mode(loaded.model, test, ["argmax"])["argmax"]
        trained = json.loads((runs[name] / "results.json").read_text())[f"test/acc_{mode}"]
        assert measured == pytest.approx(trained, abs=1e-6)
    assert len(take_images(loaded.dataset("val"), None, 0, "--probe-size")) == VAL


@pytest.mark.slow  # two whole comparisons: ~20 s on an idle 2-core machine, minutes on a shared one
def test_compare_measures_each_run_on_its_own_test_split(runs, tmp_path, capsys):
    """argmax is deterministic: on the run's own test split compare must reproduce the accuracy train.py measured
    on it (it used to rebuild 2,000 synthetic images and report another figure side by side)."""
    out = tmp_path / "compare"
    code, _, err = run_cli(capsys, "compare", runs["lwta"], runs["dense"], "--out", out)
    assert code == 0, err
    values = {(r["run"], r["metric"]): float(r["value"]) for r in _csv(out / "compare.csv")}
    trained = {n: json.loads((runs[n] / "results.json").read_text()) for n in runs}
    assert values["lwta", "accuracy/argmax"] == pytest.approx(trained["lwta"]["test/acc_argmax"], abs=1e-6)
    assert values["dense", "accuracy/dense"] == pytest.approx(trained["dense"]["test/acc_dense"], abs=1e-6)
    text = (out / "report.html").read_text()
    assert f"the run’s test split (generator seed 0), all its {TEST} images" in text
    assert f"the run’s validation split (generator seed 0), all its {VAL} images" in text
    assert "<title>LWTA U=2 vs dense: lwta vs dense</title>" in text and "Sparse vs dense" not in text


def test_dissect_probes_the_runs_own_validation_split_and_explains_its_evaluation(runs, tmp_path, capsys):
    out = tmp_path / "dissect"
    code, _, err = run_cli(capsys, "dissect", "--ckpt", runs["lwta"], "--layers", "fc", "--probe-size", 40,
                           "--top-images", 2, "--grid-units", 2, "--out", out)
    assert code == 0, err
    text = (out / "report.html").read_text()
    assert f"the run’s (synthetic) validation split (generator seed 0), 40 of its {VAL} images (subset seed 0)" in text
    # every Evaluation row carries its meaning as hover text, and a glossary follows the block
    section = text[text.index('<section id="evaluation">'):]
    section = section[:section.index("</section>")]
    rows = re.findall(r"<th( title=\"[^\"]+\")?>([^<]+)</th>", section)
    assert rows and all(title for title, _ in rows), rows
    assert '<dl class="glossary">' in section and "final-layer label top1" in section


@pytest.mark.parametrize("command, flag, split", [("dissect", "--probe-size", VAL), ("compare", "--probe-size", VAL),
                                                   ("compare", "--eval-size", TEST)])  # dissect has no test split
def test_a_size_beyond_the_split_is_one_line_before_work(runs, tmp_path, capsys, command, flag, split):
    out = tmp_path / "out"
    source = ["--ckpt", runs["lwta"]] if command == "dissect" else [runs["lwta"], runs["dense"]]
    started = time.perf_counter()
    code, _, err = run_cli(capsys, command, *source, flag, 100000, "--out", out)
    assert time.perf_counter() - started < 10  # every run's sizes checked before the first is measured
    assert_one_line_error(code, err, f"{flag} 100000 exceeds the {split} images", f"{flag} {split} or less")
    assert nothing_beside(out)


# --- item 4: comparisons that mean nothing ---------------------------------------------------------------------
def test_compare_of_runs_on_different_data_is_refused_from_their_configs(runs, tmp_path, capsys):
    mnist = _with_config(runs["dense"], tmp_path / "mnist_run", name="mnist", img_size=28, root="/nowhere/mnist.npz")
    out = tmp_path / "compare"
    started = time.perf_counter()
    code, _, err = run_cli(capsys, "compare", runs["lwta"], mnist, "--out", out)
    assert time.perf_counter() - started < 10  # from the configs: no network run, no image made
    assert_one_line_error(code, err, "data.name synthetic in lwta, mnist in mnist_run",
                          "data.img_size 32 in lwta, 28 in mnist_run", "--force")
    assert nothing_beside(out)


@pytest.mark.slow  # a whole comparison
def test_compare_force_says_the_difference_first(runs, tmp_path, capsys):
    other = _with_config(runs["dense"], tmp_path / "two_objects", second_object=True)
    out = tmp_path / "compare"
    code, _, err = run_cli(capsys, "compare", runs["lwta"], other, "--probe-size", 32, "--eval-size", 16,
                           "--layers", "fc", "--force", "--out", out)
    assert code == 0, err
    difference = "data.second_object False in lwta, True in two_objects"
    assert err[0].startswith("warning: the runs' data differ") and difference in err[0]
    text = (out / "report.html").read_text()
    first = re.search(r"<main>\s*<p class=\"warning\" role=\"alert\">([^<]+)</p>\s*<h1>", text)
    assert first and difference in first.group(1)


def test_compare_of_a_run_with_itself_is_refused_at_once(runs, tmp_path, capsys):
    out = tmp_path / "compare"
    code, _, err = run_cli(capsys, "compare", runs["lwta"], runs["lwta"] / "checkpoints" / "last.ckpt",
                           "--out", out)
    assert_one_line_error(code, err, "is the run", "again", "give distinct runs")
    assert nothing_beside(out)
    # (two run folders of one name in different places are not refused: compare names them parent/name,
    # tests/test_arms_compare.py)


def test_compare_titles_two_lwta_runs_by_their_u(runs, tmp_path, capsys):
    """The title names what the runs are, from their configs (a U=4 config is enough: the title is decided before
    the networks are built)."""
    from lwtakit.comparable import check_runs

    u4 = tmp_path / "u4"
    shutil.copytree(runs["lwta"], u4)
    ckpt = torch.load((u4 / "checkpoints" / "last.ckpt").resolve(), weights_only=True)
    ckpt[CONFIG_KEY]["model"]["U"] = 4
    (u4 / "checkpoints" / "last.ckpt").unlink()
    torch.save(ckpt, u4 / "checkpoints" / "last.ckpt")
    assert check_runs([str(runs["lwta"]), str(u4)]).title() == "LWTA U=2 vs LWTA U=4: lwta vs u4"


# --- item 5: silent wrong inputs --------------------------------------------------------------------------------
def test_explain_reads_a_16_bit_image_by_its_bit_depth(runs, tmp_path):
    """The same picture as an 8-bit and as a 16-bit grey PNG is the same input (PIL's 8-bit conversion clipped every
    16-bit value above 255 to white)."""
    loaded = load_model(str(runs["lwta"]))
    grey = np.random.default_rng(0).integers(0, 256, size=(40, 40), dtype=np.uint16)
    Image.fromarray(grey.astype(np.uint8)).save(tmp_path / "g8.png")
    Image.fromarray(grey * 257).save(tmp_path / "g16.png")  # 8-bit value v is 16-bit v * 257
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    x8 = analyze._explain_image(str(tmp_path / "g8.png"), loaded)
    x16 = analyze._explain_image(str(tmp_path / "g16.png"), loaded)
    assert x16.shape == x8.shape == (3, 32, 32)
    assert (x16 - x8).abs().max() <= 1.5 / 255  # PIL resizes the 8-bit image in whole grey levels
    assert float(x16.mean()) == pytest.approx(float(x8.mean()), abs=1e-3) and float(x16.max()) < 1


def test_explain_refuses_tiny_images_and_folders_and_says_when_it_upscales(runs, tmp_path, capsys):
    Image.new("RGB", (1, 1), "red").save(tmp_path / "dot.png")
    code, _, err = run_cli(capsys, "explain", "--ckpt", runs["lwta"], "--image", tmp_path / "dot.png")
    assert_one_line_error(code, err, "is 1x1 pixels", "at least 8")
    code, _, err = run_cli(capsys, "explain", "--ckpt", runs["lwta"], "--image", tmp_path)
    assert_one_line_error(code, err, "is a folder; give one image file")
    Image.new("RGB", (16, 16), "red").save(tmp_path / "small.png")
    code, _, err = run_cli(capsys, "explain", "--ckpt", runs["lwta"], "--image", tmp_path / "small.png")
    assert code == 0 and any("is 16x16, upscaled to the network's 32x32" in line for line in err), err


def test_dissect_passes_are_bounded_with_the_reason(runs, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        analyze.main(["dissect", "--ckpt", str(runs["lwta"]), "--passes", "100000000", "--out", str(out)])
    assert_one_line_error(exit_.value.code, capsys.readouterr().err.strip().splitlines(), "--passes",
                          "at most 1000, got 100000000", "forward pass over the whole probe set")
    assert nothing_beside(out)


def test_dissect_repeated_layer_is_one_line_at_once(runs, tmp_path, capsys):
    out = tmp_path / "out"
    started = time.perf_counter()
    code, _, err = run_cli(capsys, "dissect", "--ckpt", runs["lwta"], "--layers", "fc", "fc", "--out", out)
    assert time.perf_counter() - started < 2  # before the checkpoint is even read
    assert_one_line_error(code, err, "--layers names fc more than once")
    assert nothing_beside(out)


def test_dissect_out_a_file_is_one_line_at_once(runs, tmp_path, capsys):
    target = tmp_path / "report.html"
    target.write_text("mine")
    started = time.perf_counter()
    code, _, err = run_cli(capsys, "dissect", "--ckpt", runs["lwta"], "--out", target)
    assert time.perf_counter() - started < 5
    assert_one_line_error(code, err, f"output {target} is a file, not a folder")
    assert target.read_text() == "mine"


# --- item 6: tracebacks and leftovers ---------------------------------------------------------------------------
def test_disk_full_is_one_line_and_nothing_half_written(tmp_path, capsys, monkeypatch):
    """A full disk cannot be had in a test: the write's fsync fails as it would on one (ENOSPC)."""
    import lwtakit.io

    rng = np.random.default_rng(0)
    np.save(tmp_path / "A.npy", rng.normal(size=(50, 3)))
    np.save(tmp_path / "L.npy", rng.random((50, 4)) < 0.5)
    (tmp_path / "names.txt").write_text("a\nb\nc\nd\n")

    def full(_fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(lwtakit.io.os, "fsync", full)
    out = tmp_path / "out" / "labels.csv"
    code, _, err = run_cli(capsys, "label", "--activations", tmp_path / "A.npy", "--method", "invert",
                           "--concept-labels", tmp_path / "L.npy", "--concept-names", tmp_path / "names.txt",
                           "--out", out)
    assert_one_line_error(code, err, "no space left on the device of --out")
    assert list((tmp_path / "out").iterdir()) == []  # no labels.csv, no temporary file


def test_ctrl_c_is_one_line_exit_130_and_nothing_written(runs, tmp_path, capsys):
    """A real SIGINT-like signal mid-work: SIGALRM handled as Ctrl-C (Python's own KeyboardInterrupt handler)."""
    out = tmp_path / "out"
    previous = signal.signal(signal.SIGALRM, signal.default_int_handler)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        code, _, err = run_cli(capsys, "compare", runs["lwta"], runs["dense"], "--out", out)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert code == 130 and err == ["error: interrupted; analyze.py compare wrote nothing"], err
    assert nothing_beside(out)


def test_a_killed_runs_staging_folder_is_removed_by_the_next(tmp_path, capsys):
    out = tmp_path / "report"
    dead = tmp_path / ".report.abc123.999999999.partial"  # no process has this id
    old_style = tmp_path / ".report.xyz.partial"  # an earlier version's, without a process id
    live = tmp_path / f".report.def456.{os.getppid()}.partial"  # a running process's: kept
    for folder in (dead, old_style, live):
        folder.mkdir()
        (folder / "report.html").write_text("half")
    with staged_dir(out) as stage:
        (stage / "report.html").write_text("whole")
    assert (out / "report.html").read_text() == "whole"
    assert not dead.exists() and not old_style.exists() and live.exists()
    assert "note: removed 2 unfinished output folder(s)" in capsys.readouterr().err


def _csv(path):
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
