"""analyze.py end to end on checkpoints that train.py writes, and its bad-input behaviour."""

import csv
import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

import analyze
import train as train_script
from lwtakit.config import load_config

# ~250 AdamW steps: enough for the final layer of the small LWTA net to learn the six shapes.
SMALL = ["data.train_size=4000", "data.val_size=256", "data.test_size=256", "data.batch_size=64",
         "model.width=0.125", "trainer.max_epochs=4", "trainer.enable_progress_bar=false", "logger=none",
         "dissection.probe_size=64", "dissection.top_images=4"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A small LWTA run and its dense twin, trained once for the whole module."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, experiment in (("lwta", "default"), ("dense", "default_dense")):
        cfg = load_config(experiment, [f"run_dir={root}", f"run_name={name}", *SMALL])
        out[name] = train_script.train(cfg).run_dir
    return out


def run_cli(capsys, *argv):
    code = analyze.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in err[0], err


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_dissect_in_argmax_mode_labels_held_out_and_says_how_it_was_made(runs, tmp_path, capsys):
    out = tmp_path / "dissect"
    code, _, err = run_cli(capsys, "dissect", "--ckpt", runs["lwta"] / "checkpoints" / "last.ckpt",
                           "--probe-size", 256, "--top-images", 4, "--grid-units", 3, "--mode", "argmax", "--out", out)
    assert code == 0, err
    rows = read_rows(out / "labels.csv")
    assert {r["mode"] for r in rows} == {"argmax"} and all(r["heldout_f1"] for r in rows if r["layer"] == "fc")
    html = (out / "report.html").read_text()
    assert "layer4.1.act2" in html and html.count("data:image/png;base64") >= 3
    # titled by the run folder, and says how it was made: the mode it dissected, the probe, the seed
    assert "<title>Dissection of lwta</title>" in html and "How this report was made" in html
    ckpt = runs["lwta"] / "checkpoints" / "last.ckpt"
    for row in ("<th>LWTA inference mode</th><td>argmax: ",
                "<th>probe set</th><td>the run’s (synthetic) validation split (generator seed 0), all its 256 images",
                "<th>seed</th><td>0</td>", f"<th>checkpoint</th><td>{ckpt}</td>"):
        assert row in html, row
    assert "n/a — linear layer" in html  # fc has no activity to show
    assert html.count('class="topimg"') == 4 * 3 + 3  # --grid-units 3 in each of the 5 layers


@pytest.mark.numerics
def test_final_layer_labels_of_a_competent_model_are_its_class_names(tmp_path, capsys):
    """The committed dense golden run (2 epochs of default_dense, 98.5% test accuracy) has its six class logits
    labelled by their class names, all six, held out.

    Why this holds on any machine: the weights are committed, so only the dissection's arithmetic can differ
    (float32 sums in another order, ~1e-6). A logit of a classifier this accurate ranks its class's images above
    the others (held-out AUC 0.975-1.0 here), while every other concept of the synthetic data (colour, size, texture,
    position, background) is drawn independently of the shape (lwtakit/data/synthetic.py), so its AUC for the unit
    stays far below: a margin of tenths against rounding of millionths. (A weak network is another matter: a 4-epoch
    LWTA net near 50% accuracy labels its circle and square logits "large", and which of its units get their class
    name moves with the training trajectory, i.e. with the machine.)"""
    from tests.golden.cases import RUNS

    out = tmp_path / "dissect"
    code, _, err = run_cli(capsys, "dissect", "--ckpt", RUNS / "default_dense", "--layers", "fc", "--max-length", 1,
                           "--probe-size", 512, "--top-images", 2, "--grid-units", 1, "--device", "cpu", "--out", out)
    assert code == 0, err
    fc = {int(r["unit"]): r["label"] for r in read_rows(out / "labels.csv")}
    assert fc == dict(enumerate(["circle", "square", "triangle", "cross", "diamond", "ring"]))


def test_grid_units_zero_shows_every_unit(runs, tmp_path, capsys):
    out = tmp_path / "dissect"
    code, _, err = run_cli(capsys, "dissect", "--ckpt", runs["lwta"] / "checkpoints" / "last.ckpt", "--layers",
                           "layer4.1.act2", "fc", "--probe-size", 64, "--top-images", 4, "--grid-units", 0,
                           "--out", out)
    assert code == 0, err
    units = {(r["layer"], r["unit"]) for r in read_rows(out / "labels.csv")}
    assert len(units) > 6 and (out / "report.html").read_text().count('class="topimg"') == len(units)


def test_dissect_with_clip_dissect_reports_clip_cos_of_final_layer_labels(runs, tmp_path, capsys):
    """--methods invert clip_dissect with a tiny local open_clip: both methods label every unit, and the report
    gives CLIP-Dissect's "CLIP cos" (label vs class name in CLIP's text space) for the final layer."""
    import open_clip

    from lwtakit.clip import save_local_dir
    from tests.test_clip import TINY_CFG

    torch.manual_seed(0)
    folder = save_local_dir(open_clip.CLIP(**TINY_CFG), TINY_CFG, tmp_path / "clip")
    out = tmp_path / "dissect"
    code, _, err = run_cli(capsys, "dissect", "--ckpt", runs["lwta"] / "checkpoints" / "last.ckpt",
                           "--methods", "invert", "clip_dissect", "--clip-model", f"local-dir:{folder}",
                           "--probe-size", 128, "--top-images", 4, "--grid-units", 2, "--out", out)
    assert code == 0, err
    rows = read_rows(out / "labels.csv")
    for method in ("invert", "clip_dissect"):
        assert len([r for r in rows if r["layer"] == "fc" and r["method"] == method]) == 6
    html = (out / "report.html").read_text()
    assert "final-layer label CLIP cos (clip_dissect)" in html and "final-layer label CLIP cos (invert)" in html


def test_dissect_a_torchvision_model_from_its_cached_weights(tmp_path, capsys, monkeypatch):
    """--model torchvision:NAME goes through torchvision's own weight loading: a weights file in
    $TORCH_HOME/hub/checkpoints is used as it is (no download), the classifier gets the ImageNet class names."""
    import torchvision

    weights = torchvision.models.ResNet18_Weights.DEFAULT
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), cache / os.path.basename(weights.url))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    out = tmp_path / "dissect"
    code, _, err = run_cli(capsys, "dissect", "--model", "torchvision:resnet18", "--layers", "net.layer4", "net.fc",
                           "--probe-size", 48, "--top-images", 4, "--grid-units", 2, "--batch-size", 16,
                           "--out", out)
    assert code == 0, err
    rows = read_rows(out / "labels.csv")
    assert len([r for r in rows if r["layer"] == "net.fc"]) == 1000
    assert len([r for r in rows if r["layer"] == "net.layer4"]) == 512
    assert "torchvision:resnet18" in (out / "report.html").read_text()


@pytest.mark.parametrize("command", ["dissect", "compare"])
def test_unusable_device_is_refused(command, tmp_path, capsys):
    source = ["--ckpt", tmp_path / "missing.ckpt"] if command == "dissect" else [tmp_path / "missing"]
    code, _, err = run_cli(capsys, command, *source, "--device", "gpu0", "--out", tmp_path / "out")
    assert_one_line_error(code, err, "'gpu0' is not a device name")
    if not torch.cuda.is_available():
        code, _, err = run_cli(capsys, command, *source, "--device", "cuda", "--out", tmp_path / "out")
        assert_one_line_error(code, err, "no CUDA device is visible")
    assert not (tmp_path / "out").exists()


def test_unknown_layer_lists_close_matches_and_writes_nothing(runs, tmp_path, capsys):
    out = tmp_path / "dissect"
    code, _, err = run_cli(capsys, "dissect", "--ckpt", runs["lwta"] / "checkpoints" / "last.ckpt",
                           "--layers", "layer4.1.actt2", "--out", out)
    assert_one_line_error(code, err, "layer4.1.actt2", "layer4.1.act2")
    assert not any(out.iterdir()) if out.exists() else True


def test_probe_smaller_than_top_k_is_refused(runs, tmp_path, capsys):
    code, _, err = run_cli(capsys, "dissect", "--ckpt", runs["lwta"] / "checkpoints" / "last.ckpt",
                           "--probe-size", 4, "--top-images", 8, "--out", tmp_path / "o")
    assert_one_line_error(code, err, "--top-images")


def test_clip_weights_unavailable_offline_is_one_line(runs, tmp_path, capsys):
    code, _, err = run_cli(capsys, "dissect", "--ckpt", runs["lwta"] / "checkpoints" / "last.ckpt",
                           "--methods", "clip_dissect", "--clip-model", "ViT-B-32", "--clip-pretrained", "openai",
                           "--out", tmp_path / "o")
    assert_one_line_error(code, err)
    assert "pretrained" in err[0] or "weights" in err[0]


def test_checkpoint_of_another_architecture_is_refused(runs, tmp_path, capsys):
    ckpt = torch.load(runs["lwta"] / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["lwtakit_config"]["model"]["width"] = 0.25  # the weights are of width 0.125
    bad = tmp_path / "other.ckpt"
    torch.save(ckpt, bad)
    code, _, err = run_cli(capsys, "dissect", "--ckpt", bad, "--out", tmp_path / "o")
    assert_one_line_error(code, err, "does not match the architecture")


def test_not_a_checkpoint_is_refused(tmp_path, capsys):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    code, _, err = run_cli(capsys, "dissect", "--ckpt", junk, "--out", tmp_path / "o")
    assert_one_line_error(code, err, "not a readable checkpoint")


def test_explain_lists_winning_units_with_labels(runs, tmp_path, capsys):
    from lwtakit.data.synthetic import ConceptShapes

    image, _ = ConceptShapes(size=4, split="test")[0]
    path = tmp_path / "img.png"
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(path)
    labels = tmp_path / "labels.csv"
    with open(labels, "w") as fh:
        fh.write("layer,unit,label\n" + "".join(f"layer4.1.act2,{u},concept{u}\n" for u in range(64)))
    code, out, err = run_cli(capsys, "explain", "--ckpt", runs["lwta"] / "checkpoints" / "last.ckpt", "--image",
                             path, "--labels", labels, "--top", 5)
    assert code == 0, err
    lines = out.strip().splitlines()  # prediction, layer and labels lines, then the table
    assert lines[2] == f"labels: labels of layer4.1.act2 in {labels}"
    lines = lines[3:]
    assert len(lines) == 6 and lines[0].split() == ["unit", "activation", "label"] and "concept" in lines[1]
    acts = [float(line.split()[1]) for line in lines[1:]]
    assert acts == sorted(acts, reverse=True)


def test_compare_sparse_and_dense_writes_report_and_csv(runs, tmp_path, capsys):
    out = tmp_path / "compare"
    code, _, err = run_cli(capsys, "compare", runs["lwta"], runs["dense"], "--probe-size", 128, "--eval-size", 128,
                           "--out", out)
    assert code == 0, err
    rows = read_rows(out / "compare.csv")
    lwta = {r["metric"]: float(r["value"]) for r in rows if r["run"] == "lwta"}
    dense = {r["metric"]: float(r["value"]) for r in rows if r["run"] == "dense"}
    assert {"accuracy/sample", "accuracy/argmax", "accuracy/mc"} <= lwta.keys() and "accuracy/dense" in dense
    sparsity = [v for k, v in lwta.items() if k.startswith("sparsity/") and "act" in k]
    assert sparsity and all(abs(v - 0.5) < 0.01 for v in sparsity)  # U = 2 measured
    assert any(k.startswith("stability/") for k in lwta)  # the runs dissected every epoch
    for metric in ("layer/fc/stable fraction", "layer/fc/mean settle epoch"):
        assert metric in lwta and metric in dense
    assert 0 < lwta["layer/fc/stable fraction"] <= 1 and 0 <= lwta["layer/fc/mean settle epoch"] <= 3
    assert (runs["lwta"] / "label_drift.png").stat().st_size > 1000  # written by the callback at fit end
    assert "lwta" in (out / "report.html").read_text()
    assert (out / "plots" / "distributions.png").stat().st_size > 1000  # per-unit held-out values side by side
    # the dense twin logs acc_dense and the sparsity of its ReLUs, as the LWTA run logs its layers'
    results = {n: json.loads((runs[n] / "results.json").read_text()) for n in ("lwta", "dense")}
    assert "test/acc_dense" in results["dense"] and "test/acc_argmax" not in results["dense"]
    fractions = {n: sorted(k for k in r if k.endswith("/active_fraction")) for n, r in results.items()}
    assert fractions["dense"] and fractions["dense"] == fractions["lwta"]  # the same activation sites, measured alike
    trained = r"<th>test accuracy at end of training</th><td>sample 0\.\d+, argmax 0\.\d+</td><td>dense 0\.\d+</td>"
    assert re.search(trained, (out / "report.html").read_text())


def test_compare_labels_the_layers_it_is_given_in_every_run(runs, tmp_path, capsys):
    """--layers replaces the default (last stage + classifier) in every run, and the report says so; a wrong name
    fails before any measurement, naming close matches."""
    out = tmp_path / "compare"
    layers = ["layer1.0.act1", "layer2.0.act1", "fc"]
    code, _, err = run_cli(capsys, "compare", runs["lwta"], runs["dense"], "--probe-size", 64, "--eval-size", 32,
                           "--layers", *layers, "--out", out)
    assert code == 0, err
    for run in ("lwta", "dense"):
        labelled = {r["metric"].split("/")[1] for r in read_rows(out / "compare.csv")
                    if r["run"] == run and r["metric"].startswith("interpretability/")}
        assert labelled == set(layers)
    assert "layer1.0.act1, layer2.0.act1, fc in every run" in (out / "report.html").read_text()
    code, _, err = run_cli(capsys, "compare", runs["lwta"], "--layers", "layer1.0.act9", "--out", tmp_path / "x")
    (line,) = [line for line in err if line.startswith("error: ")]
    assert code == 2 and "no layer named 'layer1.0.act9'; close matches:" in line and "layer1.0.act1" in line
    assert not (tmp_path / "x").exists()


# --- analyze.py label ---------------------------------------------------------------------------
def _planted(tmp_path, n=1000, k=100, seed=0):
    """Units that follow concepts 3, 0 and 4 (+ noise); P is a CLIP-like oracle: many rare concepts, image-concept
    similarities near 0.2, higher where the concept is present and the more so the stronger it is there (few
    concepts saturate soft-WPMI; rank-reorder scores how the top images are ordered, so the strength that
    drives a unit also orders P)."""
    rng = np.random.default_rng(seed)
    labels = rng.random((n, k)) < 0.1
    strength = labels * (1 + rng.random((n, k)))
    truth = [3, 0, 4]
    acts = np.stack([strength[:, c] + 0.1 * rng.standard_normal(n) for c in truth], 1).astype(np.float32)
    names = [f"concept{i}" for i in range(k)]
    np.save(tmp_path / "A.npy", acts)
    np.save(tmp_path / "L.npy", labels)
    np.save(tmp_path / "P.npy", (0.2 + 0.05 * strength + 0.01 * rng.standard_normal((n, k))).astype(np.float32))
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    return [names[c] for c in truth]


@pytest.mark.parametrize("method, extra", [("invert", "--concept-labels"), ("soft_wpmi", "--concept-scores"),
                                           ("wpmi", "--concept-scores"), ("rank_reorder", "--concept-scores"),
                                           ("cos", "--concept-scores"), ("cos_cubed", "--concept-scores")])
def test_label_recovers_planted_concepts(tmp_path, capsys, method, extra):
    truth = _planted(tmp_path)
    matrix = tmp_path / ("L.npy" if extra == "--concept-labels" else "P.npy")
    code, _, err = run_cli(capsys, "label", "--activations", tmp_path / "A.npy", "--method", method, extra, matrix,
                           "--concept-names", tmp_path / "names.txt", "--out", tmp_path / "labels.csv")
    assert code == 0, err
    rows = read_rows(tmp_path / "labels.csv")
    assert [r["label"] for r in rows] == truth
    if method == "invert":
        assert {"unit", "label", "score", "auc", "p_value"} <= rows[0].keys()
        assert all(float(r["p_value"]) < 1e-20 for r in rows)


@pytest.mark.parametrize(
    "change, fragments",
    [
        ({"activations": "missing.npy"}, ["missing.npy", "does not exist"]),
        ({"labels": "short"}, ["L.npy", "one row per image"]),
        ({"names": ""}, ["names.txt"]),
        ({"method": "bogus"}, ["bogus"]),
        ({"names": "a\nb\n"}, ["2 distinct names", "repeated names are dropped"]),
    ],
)
def test_label_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, change, fragments):
    _planted(tmp_path)
    if change.get("labels") == "short":
        np.save(tmp_path / "L.npy", np.zeros((3, 100), bool))
    if "names" in change:
        (tmp_path / "names.txt").write_text(change["names"])
    acts = change.get("activations", "A.npy")
    code, _, err = run_cli(capsys, "label", "--activations", tmp_path / acts, "--method",
                           change.get("method", "invert"), "--concept-labels", tmp_path / "L.npy",
                           "--concept-names", tmp_path / "names.txt", "--out", tmp_path / "labels.csv")
    assert_one_line_error(code, err, *fragments)
    assert not os.path.exists(tmp_path / "labels.csv")


def test_a_run_folder_stands_for_its_last_checkpoint(tmp_path):
    """dissect and explain take a train.py run folder wherever they take a checkpoint, as compare does."""
    from pathlib import Path

    import torch

    from lwtakit.checkpoint import load_model
    from lwtakit.errors import UserError

    run = Path(__file__).parent / "golden" / "runs" / "default"
    by_folder, by_file = load_model(str(run)), load_model(str(run / "checkpoints" / "last.ckpt"))
    for (k, a), (_, b) in zip(by_folder.model.state_dict().items(), by_file.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    (tmp_path / "empty").mkdir()
    for spec, words in ((tmp_path / "empty", "has no checkpoints/; give a run folder"),
                        (tmp_path / "nope", "does not exist")):
        with pytest.raises(UserError, match=words):
            load_model(str(spec))
