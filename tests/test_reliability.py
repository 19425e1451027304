"""Reliability of the whole loop: W&B never blocks, DDP, bad inputs (kills and full disks: test_crash_windows.py)."""

import json
import os
import struct
import time
import zlib

import numpy as np
import pytest
import torch

import analyze
import train as train_script
from lwtakit.config import load_config
from lwtakit.io import read_csv

# Batches of 16 images keep the LWTA layers on their eager path (no kernel compilation in subprocesses).
TINY = ["data.train_size=192", "data.val_size=32", "data.test_size=32", "data.batch_size=16",
        "model.width=0.125", "trainer.enable_progress_bar=false", "dissection.probe_size=32",
        "dissection.top_images=4", "logger=csv"]


def final_weights(run_dir):
    state = torch.load(os.path.join(run_dir, "checkpoints", "last.ckpt"), weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("model.")}


def label_blocks(run_dir):
    rows = read_csv(os.path.join(run_dir, "labels.csv"))
    return sorted({(int(r["epoch"]), int(r["step"])) for r in rows}), len(rows)


def test_wandb_without_account_falls_back_to_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))  # no stored login
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    cfg = load_config("default", [f"run_dir={tmp_path}", "run_name=r", *TINY, "trainer.max_epochs=1",
                                  "logger=wandb", "wandb.mode=online", "dissection.enabled=false"])
    with pytest.warns(UserWarning, match="W&B"):
        result = train_script.train(cfg)
    assert (result.run_dir / "checkpoints" / "last.ckpt").exists()
    assert list((result.run_dir / "wandb").glob("offline-run-*")), "no offline run after the fallback"


@pytest.mark.timeout(180)
def test_wandb_server_unreachable_with_an_account_falls_back_to_offline(tmp_path, monkeypatch):
    """An API key but a server that refuses connections (a closed port on this machine): the online start
    fails within wandb.init_timeout, training goes on logging offline."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    cfg = load_config("default", [f"run_dir={tmp_path}", "run_name=r", *TINY, "trainer.max_epochs=1",
                                  "logger=wandb", "wandb.mode=online", "wandb.init_timeout=8",
                                  "dissection.enabled=false"])
    started = time.monotonic()
    with pytest.warns(UserWarning, match="W&B online run could not start") as record:
        result = train_script.train(cfg)
    assert time.monotonic() - started < 150
    assert (result.run_dir / "checkpoints" / "last.ckpt").exists()
    assert list((result.run_dir / "wandb").glob("offline-run-*")), "no offline run after the fallback"
    # The offline run started (under the folder's W&B id, which the failed online start had held).
    assert not [w for w in record if "offline W&B logging disabled" in str(w.message)]


def test_wandb_disabled_trains_and_logs_csv(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = load_config("default", [f"run_dir={tmp_path}", "run_name=r", *TINY, "trainer.max_epochs=1",
                                  "logger=wandb", "dissection.enabled=false"])
    result = train_script.train(cfg)
    assert not (result.run_dir / "wandb").exists()
    assert (result.run_dir / "logs" / "metrics.csv").exists()


def train_ddp(tmp_path, run_name, *overrides):
    """``train.py`` with ddp_spawn, retried once (in a fresh folder) when a spawned process dies with SIGABRT
    ("terminate called without an active exception"): seen once in about ten runs of these tests on the 2-core
    machine, in rank 1 during trainer.test after the fit had written its labels; the cause (in torch's spawned
    processes or gloo) was not found. Anything else fails the test, and so does a second abort."""
    from torch.multiprocessing.spawn import ProcessExitedException

    ddp = ["trainer.strategy=ddp_spawn", "trainer.devices=2", *overrides]
    try:
        return train_script.train(load_config("default", [f"run_dir={tmp_path}", f"run_name={run_name}", *ddp]))
    except ProcessExitedException as exc:
        if "SIGABRT" not in str(exc):
            raise
    return train_script.train(load_config("default", [f"run_dir={tmp_path}", f"run_name={run_name}-retry", *ddp]))


def same_rows(a, b, tol=1e-6):
    """Rows equal column by column: numbers within ``tol``, everything else as written."""
    def close(x, y):
        try:
            return abs(float(x) - float(y)) <= tol or x == y
        except ValueError:
            return x == y
    if len(a) != len(b):
        return False
    return all(r.keys() == s.keys() and all(close(r[k], s[k]) for k in r) for r, s in zip(a, b, strict=True))


def test_two_process_ddp_fit_dissects_like_one_process(tmp_path):
    """ddp_spawn on CPU: the fit runs, each process records half the probe set's batches (mc mode: 4 stochastic
    passes, seeded per batch), rank 0 alone labels and writes labels.csv, and the dissection of the (untrained,
    identically initialised) weights equals the one-process result row for row, every score to 1e-6."""
    common = [*TINY, "trainer.accelerator=cpu", "trainer.limit_train_batches=0", "trainer.max_epochs=1",
              "dissection.every_n_epochs=0", "dissection.batch_size=8"]
    one = train_script.train(load_config("default", [f"run_dir={tmp_path}", "run_name=one", *common]))
    two = train_ddp(tmp_path, "two", *common)
    rows_one, rows_two = read_csv(one.run_dir / "labels.csv"), read_csv(two.run_dir / "labels.csv")
    assert rows_one and same_rows(rows_one, rows_two)
    assert json.loads((one.run_dir / "dissection.json").read_text())["images_per_process"] == [32]
    assert json.loads((two.run_dir / "dissection.json").read_text())["images_per_process"] == [16, 16]


@pytest.mark.timeout(300)
def test_two_process_ddp_training_steps_and_per_epoch_dissection(tmp_path):
    """ddp_spawn on CPU with real steps (forward, backward, gradient all-reduce): the weights move away from
    the common initialisation and stay finite, and each epoch's dissection is written once, by rank 0."""
    common = [*TINY, "trainer.accelerator=cpu", "trainer.max_epochs=2", "dissection.every_n_epochs=1",
              "optim.schedule=none"]
    init = train_script.train(load_config("default", [f"run_dir={tmp_path}", "run_name=init", *common,
                                                      "trainer.limit_train_batches=0", "trainer.max_epochs=1"]))
    ddp = train_ddp(tmp_path, "ddp", *common, "trainer.limit_train_batches=2")
    before = {f"model.{k}": v for k, v in init.module.model.state_dict().items()}  # no step taken: the init
    after = final_weights(ddp.run_dir)
    assert before.keys() == after.keys()
    assert all(torch.isfinite(v).all() for v in after.values())
    moved = [k for k in before if k.endswith(".weight") and not torch.equal(before[k], after[k])]
    assert len(moved) > len([k for k in before if k.endswith(".weight")]) // 2
    blocks, n_rows = label_blocks(ddp.run_dir)
    assert [epoch for epoch, _ in blocks] == [0, 1]
    keys = {(r["epoch"], r["layer"], r["unit"], r["method"]) for r in read_csv(ddp.run_dir / "labels.csv")}
    assert n_rows == len(keys)


# --- the table of bad inputs (also in the README) -----------------------------------------------
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    cfg = load_config("default", [f"run_dir={root}", "run_name=r", *TINY, "trainer.max_epochs=1",
                                  "logger=none", "dissection.enabled=false", "data.train_size=32"])
    return train_script.train(cfg).last_ckpt


def _png_header(path, width, height):
    """A PNG whose header claims ``width`` x ``height`` pixels (one byte of image data): PIL checks its pixel limit
    on the header, so this stands for a decompression bomb without writing one."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))


def _bad_files(tmp, ckpt):
    """Broken inputs of the label, explain and resume cases."""
    from PIL import Image

    (tmp / "names.txt").write_text("red\ngreen\n")
    np.save(tmp / "A0.npy", np.zeros((0, 3), np.float32))
    np.save(tmp / "A1.npy", np.ones((1, 3), np.float32))
    np.save(tmp / "L1.npy", np.ones((1, 2), bool))
    np.save(tmp / "L0.npy", np.zeros((8, 2), bool))
    scores = np.ones((8, 2), np.float32)
    scores[3, 1] = np.nan
    np.save(tmp / "P.npy", scores)
    (tmp / "E.npy").write_bytes(b"")
    np.savez(tmp / "Z.npz", a=np.zeros(3))
    os.replace(tmp / "Z.npz", tmp / "Z.npy")
    (tmp / "outdir").mkdir()
    (tmp / "unit_labels.csv").write_text("unit,label,score\n0,red,0.5\n")  # as analyze.py label writes it
    (tmp / "no_unit.csv").write_text("neuron,label\n0,red\n")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp / "ok.png")
    _png_header(tmp / "bomb.png", 20000, 20000)  # over twice PIL's limit: PIL raises
    _png_header(tmp / "big.png", 10000, 10000)  # over the limit, under twice: PIL only warns, then decodes
    data = ckpt.read_bytes()
    (tmp / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (tmp / "random.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save({"weight": torch.zeros(3)}, tmp / "tensors.ckpt")
    # a run folder whose labels.csv has a non-integer unit on its line 3
    (tmp / "run" / "checkpoints").mkdir(parents=True)
    (tmp / "run" / "checkpoints" / "last.ckpt").write_bytes(ckpt.read_bytes())
    (tmp / "run" / "labels.csv").write_text("epoch,step,layer,unit,method,label\n0,4,fc,0,invert,red\n"
                                            "0,4,fc,x,invert,green\n")


def _setup(case, tmp, ckpt):
    """Files a case needs; returns (program, argv)."""
    (tmp / "empty.txt").write_text("\n  \n")
    (tmp / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    np.save(tmp / "A.npy", np.zeros((8, 3), np.float32))
    np.save(tmp / "L.npy", np.zeros((8, 2), bool))
    blocker = tmp / "a_file"
    blocker.write_text("")
    other = torch.load(ckpt, weights_only=True)
    other["lwtakit_config"]["model"]["name"] = "resnet34"
    torch.save(other, tmp / "other.ckpt")
    _bad_files(tmp, ckpt)
    t = [f"run_dir={tmp}", "run_name=bad", *TINY, "logger=none"]
    def label(acts, labels="L.npy"):
        return ["label", "--method", "invert", "--concept-labels", tmp / labels, "--concept-names", tmp / "names.txt",
                "--activations", tmp / acts, "--out", tmp / "o.csv"]

    explain = ["explain", "--ckpt", ckpt, "--image", tmp / "ok.png"]
    dissect = ["dissect", "--ckpt", ckpt, "--out", tmp / "out"]
    return {
        "negative learning rate": ("train", [*t, "optim.lr=-1"]),
        "NaN learning rate": ("train", [*t, "optim.lr=nan"]),
        "unknown precision": ("train", [*t, "trainer.precision=bogus"]),
        "GPU accelerator without a GPU": ("train", [*t, "trainer.accelerator=gpu"]),
        "zero devices": ("train", [*t, "trainer.devices=0"]),
        "negative seed": ("train", [*t, "seed=-1"]),
        "empty training set": ("train", [*t, "data.train_size=0"]),
        "unknown group file": ("train", [*t, "model=resnet999"]),
        "truncated checkpoint": ("train", [*t, f"ckpt_path={tmp / 'truncated.ckpt'}"]),
        "random bytes as checkpoint": ("train", [*t, f"ckpt_path={tmp / 'random.ckpt'}"]),
        "not a checkpoint": ("train", [*t, f"ckpt_path={tmp / 'tensors.ckpt'}"]),
        "checkpoint of another width": ("train", [*t, "model.width=0.25", f"ckpt_path={ckpt}"]),
        "LWTA checkpoint into a dense config": ("train", [*t, "model=resnet18_dense", f"ckpt_path={ckpt}"]),
        "empty .npy": ("analyze", label("E.npy")),
        ".npz renamed .npy": ("analyze", label("Z.npy")),
        "--out is a folder": ("analyze", [*label("A.npy"), "--out", tmp / "outdir"]),  # the last --out wins
        "activations with 0 rows": ("analyze", label("A0.npy")),
        "activations with 1 row": ("analyze", label("A1.npy", "L1.npy")),
        "all-false concept labels": ("analyze", label("A.npy", "L0.npy")),
        "NaN concept scores": ("analyze", ["label", "--method", "soft_wpmi", "--concept-scores", tmp / "P.npy",
                                           "--concept-names", tmp / "names.txt", "--activations", tmp / "A.npy",
                                           "--out", tmp / "o.csv"]),
        "labels without a layer column": ("analyze", [*explain, "--labels", tmp / "unit_labels.csv"]),
        "labels without a unit column": ("analyze", [*explain, "--labels", tmp / "no_unit.csv"]),
        "decompression bomb": ("analyze", ["explain", "--ckpt", ckpt, "--image", tmp / "bomb.png"]),
        "decompression bomb (warning size)": ("analyze", ["explain", "--ckpt", ckpt, "--image", tmp / "big.png"]),
        "unknown layer": ("analyze", [*dissect, "--layers", "layer9"]),
        "malformed labels.csv (dissect)": ("analyze", ["dissect", "--ckpt", tmp / "run", "--out", tmp / "out"]),
        "malformed labels.csv (compare)": ("analyze", ["compare", tmp / "run", ckpt, "--out", tmp / "out"]),
        "unknown config key": ("train", [*t, "model.colour=red"]),
        "wrong type": ("train", [*t, "data.batch_size=big"]),
        "missing data path": ("train", [*t, "data.name=mnist", f"data.root={tmp}/nope.npz"]),
        "U does not divide the width": ("train", [*t, "model.name=vit_tiny", "model.U=5", "model.depth=1"]),
        "NaN loss": ("train", [*t, "optim.lr=1e30", "optim.schedule=none", "trainer.max_epochs=1"]),
        "corrupt image file": ("analyze", ["explain", "--ckpt", ckpt, "--image", tmp / "corrupt.png"]),
        "empty concept file": ("analyze", ["label", "--activations", tmp / "A.npy", "--method", "invert",
                                           "--concept-labels", tmp / "L.npy", "--concept-names", tmp / "empty.txt",
                                           "--out", tmp / "out" / "labels.csv"]),
        "CLIP weights offline": ("analyze", ["dissect", "--ckpt", ckpt, "--methods", "clip_dissect",
                                             "--clip-model", "ViT-B-32", "--clip-pretrained", "laion2b_s34b_b79k",
                                             "--out", tmp / "out"]),
        "checkpoint of another architecture": ("analyze", ["dissect", "--ckpt", tmp / "other.ckpt",
                                                           "--out", tmp / "out"]),
        "missing checkpoint": ("analyze", ["dissect", "--ckpt", tmp / "none.ckpt", "--out", tmp / "out"]),
        "unwritable output folder": ("analyze", ["dissect", "--ckpt", ckpt, "--probe-size", 16, "--top-images", 2,
                                                 "--out", blocker / "report"]),
        "probe set smaller than top-k": ("analyze", ["dissect", "--ckpt", ckpt, "--probe-size", 4,
                                                     "--top-images", 8, "--out", tmp / "out"]),
    }[case]


BAD_INPUTS = [
    ("unknown config key", "model.colour"),
    ("wrong type", "data.batch_size"),
    ("missing data path", "nope.npz"),
    ("U does not divide the width", "U=5"),
    ("NaN loss", "loss is nan"),
    ("corrupt image file", "corrupt.png"),
    ("empty concept file", "empty.txt"),
    ("unknown layer", "layer9"),
    ("malformed labels.csv (dissect)", "labels.csv, line 3: unit is 'x', not an integer"),
    ("malformed labels.csv (compare)", "labels.csv, line 3: unit is 'x', not an integer"),
    ("negative learning rate", "'optim.lr' must be a finite number >= 0"),
    ("NaN learning rate", "'optim.lr' must be a finite number >= 0, got nan"),
    ("unknown precision", "'trainer.precision' is 'bogus'; choose one of: 32-true"),
    pytest.param("GPU accelerator without a GPU", "no GPU is visible",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")),
    ("zero devices", "'trainer.devices' is 0"),
    ("negative seed", "'seed' must be in [0, 2**32)"),
    ("empty training set", "'data.train_size' must be >= 1, got 0"),
    ("unknown group file", "no config 'resnet999' in group 'model'; choose one of: resnet18_dense"),
    ("truncated checkpoint", "truncated.ckpt is not a readable checkpoint"),
    ("random bytes as checkpoint", "random.ckpt is not a readable checkpoint"),
    ("not a checkpoint", "tensors.ckpt is not a train.py checkpoint"),
    ("checkpoint of another width", "model.width 0.125 in the checkpoint, 0.25 in the config"),
    ("LWTA checkpoint into a dense config", "model.act lwta in the checkpoint, relu in the config"),
    ("empty .npy", "E.npy is not a plain .npy array (it is empty)"),
    (".npz renamed .npy", "Z.npy is an .npz archive"),
    ("--out is a folder", "outdir is a folder"),
    ("activations with 0 rows", "needs at least 2 images"),
    ("activations with 1 row", "needs at least 2 images"),
    ("all-false concept labels", "L0.npy are all false"),
    ("NaN concept scores", "P.npy hold NaN or infinite values (first at row 3, column 1)"),
    ("labels without a layer column", "no layer column"),
    ("labels without a unit column", "lacks column(s) unit"),
    ("decompression bomb", "bomb.png is too large to decode safely"),
    ("decompression bomb (warning size)", "big.png is too large to decode safely"),
    ("CLIP weights offline", "pretrained"),
    ("checkpoint of another architecture", "does not match"),
    ("missing checkpoint", "none.ckpt"),
    ("unwritable output folder", "a_file"),
    ("probe set smaller than top-k", "--top-images"),
]


@pytest.mark.parametrize("case, fragment", BAD_INPUTS, ids=[getattr(c, "values", c)[0] for c in BAD_INPUTS])
def test_bad_input_is_one_clear_line_and_nothing_half_written(case, fragment, tmp_path, ckpt, capsys):
    program, argv = _setup(case, tmp_path, ckpt)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    main = train_script.main if program == "train" else analyze.main
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and fragment.lower() in errors[0].lower(), err
    created = [p for p in tmp_path.rglob("*") if p.relative_to(tmp_path) not in before]
    # Nothing half-written: no outputs, no checkpoint, no results (a failed run may keep its config).
    assert not [p for p in created if p.suffix in (".csv", ".html", ".ckpt", ".json", ".png")], created


@pytest.mark.parametrize("entry,argv", [
    (analyze.main, ["label", "--activations", "a.npy", "--method", "cos"]),
    (analyze.main, ["dissect", "--ckpt", "x.ckpt", "--probe-size", "abc", "--out", "out"]),
    (analyze.main, []),
    (train_script.main, ["--config"]),
])
def test_command_line_mistakes_are_one_line(entry, argv, capsys):
    """argparse's own errors (missing or malformed arguments) follow the entry points' one-line format."""
    with pytest.raises(SystemExit) as exit_info:
        entry(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and "--help" in err[0], err


@pytest.mark.parametrize("argv, message", [
    (["dissect", "--ckpt", "x.ckpt", "--top-images", "0", "--out", "out"], "--top-images: must be an integer >= 1"),
    (["dissect", "--ckpt", "x.ckpt", "--top-images", "-1", "--out", "out"], "--top-images: must be an integer >= 1"),
    (["dissect", "--ckpt", "x.ckpt", "--pca", "-2", "--out", "out"], "--pca: must be an integer >= 0, got -2"),
    (["dissect", "--ckpt", "x.ckpt", "--grid-units", "-1", "--out", "out"], "--grid-units: must be an integer >= 0"),
    (["explain", "--ckpt", "x.ckpt", "--image", "x.png", "--top", "-2"], "--top: must be an integer >= 1, got -2"),
])
def test_counts_out_of_range_are_rejected_before_any_work(argv, message, capsys):
    """Checked by argparse, before a checkpoint is read: the checkpoint here does not even exist."""
    with pytest.raises(SystemExit) as exit_info:
        analyze.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert len(err) == 1 and message in err[0], err


def test_explain_takes_the_labels_of_analyze_label_for_the_layer_it_is_told(tmp_path, ckpt, capsys):
    """A labels.csv of ``analyze.py label`` has no layer column: with --layer its units are that layer's."""
    from PIL import Image

    from lwtakit.io import write_csv

    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(tmp_path / "ok.png")
    rows = [{"unit": u, "label": f"concept {u}", "score": 0.5} for u in range(64)]
    write_csv(tmp_path / "labels.csv", rows)
    code = analyze.main(["explain", "--ckpt", str(ckpt), "--image", str(tmp_path / "ok.png"), "--layer",
                         "layer4.1.act2", "--labels", str(tmp_path / "labels.csv"), "--top", "5", "--device", "cpu"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and out[2] == f"labels: labels of layer4.1.act2 in {tmp_path / 'labels.csv'}"
    out = out[3:]  # after the prediction, layer and labels lines: the table
    assert len(out) == 6
    assert all(line.split()[2:] == ["concept", line.split()[0]] for line in out[1:]), out


def test_resume_from_a_checkpoint_of_the_same_architecture_passes_the_checks(tmp_path, ckpt):
    """The resume checks accept the run's own settings (other keys, like the epochs, may change)."""
    cfg = load_config("default", [f"run_dir={tmp_path}", "run_name=resumed", *TINY, "trainer.max_epochs=2",
                                  "logger=none", "dissection.enabled=false", "data.train_size=32",
                                  f"ckpt_path={ckpt}"])
    result = train_script.train(cfg)
    assert result.trainer.current_epoch == 2 and result.last_ckpt.exists()


def test_a_run_folder_with_a_dangling_last_ckpt_is_read_from_its_newest_complete_checkpoint(tmp_path, ckpt, capsys):
    """A folder of an earlier version (or edited by hand): last.ckpt dangles, a truncated later checkpoint sits
    beside a complete one. explain and dissect use the complete one, and say so in one note line (dissect reads the
    run's labels.csv and loads its network: the note was printed twice)."""
    from PIL import Image

    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "epoch=0-step=2.ckpt").write_bytes(ckpt.read_bytes())
    (folder / "epoch=1-step=4.ckpt").write_bytes(ckpt.read_bytes()[:1000])
    os.symlink("epoch=2-step=6.ckpt", folder / "last.ckpt")
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(tmp_path / "ok.png")
    code = analyze.main(["explain", "--ckpt", str(tmp_path / "run"), "--image", str(tmp_path / "ok.png"),
                         "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 0
    note = f"note: {folder / 'last.ckpt'} is dangling; using epoch=0-step=2.ckpt, the newest complete checkpoint"
    assert [line for line in err if line.startswith("note: ")] == [note]
    code = analyze.main(["dissect", "--ckpt", str(tmp_path / "run"), "--probe-size", "16", "--top-images", "2",
                         "--device", "cpu", "--out", str(tmp_path / "report")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 0 and [line for line in err if line.startswith("note: ")] == [note]
