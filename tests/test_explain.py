"""Active neurons: the LWTA winners of one input, even when a winner's value is negative."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import analyze
from lwtakit.explain import active_neurons


class ArgmaxLWTA(nn.Module):
    """Deterministic LWTA per the interface (blocks of U consecutive units on dim 1; winner passes its raw
    value, losers 0; ``winner_mask()``), built here so the test does not depend on the sampler."""

    def __init__(self, U=2):
        super().__init__()
        self.U = U
        self.mask = None

    def forward(self, x):
        B, C = x.shape[:2]
        xv = x.reshape(B, C // self.U, self.U, *x.shape[2:])
        mask = torch.zeros_like(xv, dtype=torch.bool).scatter_(2, xv.argmax(2, keepdim=True), True)
        self.mask = mask.reshape(x.shape)
        return x * self.mask

    def winner_mask(self):
        return self.mask


def _linear_model(U=2):
    lin = nn.Linear(3, 6, bias=True)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.copy_(torch.tensor([-2.0, -1.0, 0.5, 3.0, -4.0, 1.0]))
    return nn.Sequential(nn.Flatten(), lin, ArgmaxLWTA(U))


def test_negative_winner_is_picked_not_the_zero_loser():
    model = _linear_model()
    rows = active_neurons(model, torch.rand(3, 1, 1), "2",
                          labels={1: "negative winner", 3: "big"})
    # blocks: (-2, -1) -> unit 1 wins with -1; (0.5, 3) -> 3; (-4, 1) -> 5
    assert [r["unit"] for r in rows] == [3, 5, 1]  # sorted by activation
    assert rows[2]["activation"] == pytest.approx(-1.0) and rows[2]["label"] == "negative winner"
    assert rows[1]["label"] is None
    # The reference's argmax over stored outputs would pick unit 0 (a loser, output 0) in block 0.
    out = model(torch.zeros(1, 3, 1, 1))[0].view(3, 2)
    assert int(out[0].argmax()) == 0


def test_conv_winners_match_direct_per_position_count():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    model = nn.Sequential(conv, ArgmaxLWTA(U=4))
    x = torch.rand(3, 6, 6)
    rows = active_neurons(model, x, "1", top=None)
    with torch.no_grad():
        pre = conv(x[None])[0].view(2, 4, 6, 6)
        win_frac = torch.stack([torch.nn.functional.one_hot(pre[b].argmax(0), 4).float().mean(dim=(0, 1))
                                for b in range(2)])
    expected = {b * 4 + int(win_frac[b].argmax()) for b in range(2)}
    assert {r["unit"] for r in rows} == expected and len(rows) == 2
    for r in rows:
        assert r["win_fraction"] == pytest.approx(float(win_frac.flatten()[r["unit"]]))
    acts = [r["activation"] for r in rows]
    assert acts == sorted(acts, reverse=True)


def test_dense_layer_falls_back_to_positive_units_and_top():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3, 6), nn.ReLU())
    x = torch.rand(3, 1, 1)
    with torch.no_grad():
        h = model(x[None])[0]
    rows = active_neurons(model, x, "2", top=2)
    positive = sorted(range(6), key=lambda u: -float(h[u]))
    positive = [u for u in positive if h[u] > 0][:2]
    assert [r["unit"] for r in rows] == positive


def test_real_lwta_layer_if_present():
    lwta = pytest.importorskip("lwtakit.lwta")
    model = nn.Sequential(nn.Flatten(), nn.Linear(3, 6), lwta.LWTA(U=2, inference="argmax"))
    x = torch.rand(3, 1, 1)
    model.train()
    rows = active_neurons(model, x, "2", top=None)
    assert model.training  # mode restored
    with torch.no_grad():
        pre = model[1](x.flatten()[None])[0].view(3, 2)
    assert sorted(r["unit"] for r in rows) == [2 * b + int(pre[b].argmax()) for b in range(3)]


# ------------------------------------------------------------------ analyze.py explain on tiny trained runs
GOLDEN = Path(__file__).parent / "golden" / "runs"  # read-only: copied before any change


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """A synthetic test image (a circle, class 0) as a PNG file."""
    from lwtakit.data.synthetic import ConceptShapes

    img, _ = ConceptShapes(size=4, split="test")[0]
    path = tmp_path_factory.mktemp("img") / "img.png"
    Image.fromarray((img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(path)
    return path


def _explain(capsys, *argv):
    code = analyze.main(["explain", *map(str, argv)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.strip().splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:2] == ["unit", "activation"])
    notes = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in lines[:head]}
    rows = [line.split(None, 2) for line in lines[head + 1:] if not line.startswith("(")]
    return notes, [(int(r[0]), float(r[1]), r[2] if len(r) > 2 else "") for r in rows], lines[head + 1:]


def _input(path, size):
    x = np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    return torch.from_numpy(x).permute(2, 0, 1)[None]


def test_labels_come_from_the_runs_latest_dissection_and_it_is_said(tmp_path, image, capsys):
    run = tmp_path / "run"
    shutil.copytree(GOLDEN / "default", run)
    with open(run / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["epoch"] for r in rows} == {"0", "1"}
    for r in rows:  # plant labels that tell the dissections apart; the latest one first in the file
        r["label"] = f"{'new' if r['epoch'] == '1' else 'old'}{r['unit']}"
    rows.sort(key=lambda r: -int(r["epoch"]))
    with open(run / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    notes, table, _ = _explain(capsys, "--ckpt", run / "checkpoints" / "last.ckpt", "--image", image, "--top", 5)
    assert len(table) == 5
    assert all(label == f"new{unit}" for unit, _, label in table)
    assert notes["labels"].startswith("invert labels of layer4.1.act2 from the run's latest dissection (epoch 1, "
                                      "step 126) in ")
    assert str(run / "labels.csv") in notes["labels"]


def test_prediction_and_layer_are_printed_from_the_same_pass(image, capsys):
    from lwtakit.checkpoint import load_model
    from lwtakit.lwta import LWTA
    from lwtakit.recording import analysis_mode

    notes, _, _ = _explain(capsys, "--ckpt", GOLDEN / "default", "--image", image)
    loaded = load_model(str(GOLDEN / "default"))
    with analysis_mode(loaded.model, seed=0):
        probs = torch.softmax(loaded.model(_input(image, loaded.img_size)), 1)[0]
    k = int(probs.argmax())
    assert notes["prediction"] == f"{loaded.class_names[k]} (probability {float(probs[k]):.3f})"
    last_lwta = [n for n, m in loaded.model.named_modules() if isinstance(m, LWTA)][-1]
    assert notes["layer"].startswith(f"{last_lwta} (the last LWTA layer")


def test_fewer_rows_than_top_say_why(image, capsys):
    from lwtakit.checkpoint import load_model

    _, table, lines = _explain(capsys, "--ckpt", GOLDEN / "default", "--image", image, "--top", 1000)
    model = load_model(str(GOLDEN / "default")).model
    module = model.get_submodule("layer4.1.act2")
    shapes = []
    hook = module.register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    with torch.no_grad():
        model.eval()(_input(image, 32))
    hook.remove()
    channels = shapes[-1][1]
    assert len(table) == channels // module.U  # one winner per block
    assert lines[-1] == (f"({len(table)} rows, not --top 1000: only {len(table)} of the layer's {channels} units are "
                         f"active on this image: one winner in each block of {module.U})")
    _, table, lines = _explain(capsys, "--ckpt", GOLDEN / "default", "--image", image, "--top", 3)
    assert len(table) == 3 and not lines[-1].startswith("(")


def test_a_dense_network_is_explained_at_its_last_activation(tmp_path, image, capsys):
    from lwtakit.checkpoint import load_model
    from lwtakit.recording import analysis_mode

    run = tmp_path / "dense"
    shutil.copytree(GOLDEN / "default_dense", run)
    (run / "labels.csv").unlink()
    notes, table, _ = _explain(capsys, "--ckpt", run, "--image", image, "--top", 6)
    model = load_model(str(run)).model
    last = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)][-1]
    seen = []
    hook = model.get_submodule(last).register_forward_hook(lambda m, i, o: seen.append(o[0].mean(dim=(1, 2))))
    with analysis_mode(model, seed=0):
        model(_input(image, 32))
    hook.remove()
    mean = seen[-1]
    positive = sorted((u for u in range(mean.numel()) if mean[u] > 0), key=lambda u: -float(mean[u]))
    assert [unit for unit, _, _ in table] == positive[:6]
    assert notes["layer"].startswith(f"{last} (the network has no LWTA layer: its last activation layer")
    assert notes["layer"].endswith(f"{len(positive)} of {mean.numel()} units active")
    assert notes["labels"].startswith(f"none (the run folder {run} has no labels.csv); label the units with  "
                                      f"analyze.py dissect --ckpt {run} --out DIR")
    assert all(label == "" for _, _, label in table)


def test_a_dissect_labels_file_or_its_folder_gives_the_first_methods_labels(tmp_path, image, capsys):
    report = tmp_path / "report"
    report.mkdir()
    with open(report / "labels.csv", "w") as fh:
        fh.write("layer,unit,method,label\n")
        for u in range(128):
            fh.write(f"layer4.1.act2,{u},invert,inv{u}\nlayer4.1.act2,{u},clip_dissect,clip{u}\nfc,{u % 6},invert,x\n")
    for given in (report, report / "labels.csv"):
        notes, table, _ = _explain(capsys, "--ckpt", GOLDEN / "default", "--image", image, "--labels", given,
                                   "--top", 4)
        assert [label for _, _, label in table] == [f"inv{unit}" for unit, _, _ in table]
        assert notes["labels"] == (f"invert labels of layer4.1.act2 in {report / 'labels.csv'}; the file also has "
                                   "clip_dissect labels")
    notes, table, _ = _explain(capsys, "--ckpt", GOLDEN / "default", "--image", image, "--labels", report,
                               "--layer", "layer4.0.act1", "--top", 2)
    assert notes["labels"] == (f"none: {report / 'labels.csv'} has no labels of layer layer4.0.act1 (its layers: fc, "
                               "layer4.1.act2)")
