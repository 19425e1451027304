"""The dissection engine: one activation pass feeds every labeler; results equal each labeler run alone."""

import open_clip
import pytest
import torch
from torch import nn

import analyze
from lwtakit import clip as lclip
from lwtakit.data import probe_subset
from lwtakit.data.synthetic import ConceptShapes
from lwtakit.dissect import ConceptSource, DissectOptions, dissect
from lwtakit.errors import UserError
from lwtakit.labelers import clip_dissect, invert

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


class ColourNet(nn.Module):
    """Hand-wired: conv units detect red / green / blue (r - (g+b)/2 etc.), then a linear head."""

    def __init__(self):
        super().__init__()
        w = torch.tensor([[1.0, -0.5, -0.5], [-0.5, 1.0, -0.5], [-0.5, -0.5, 1.0]]).view(3, 3, 1, 1)
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        self.conv.weight.data.copy_(w)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 6)

    def forward(self, x):
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    torch.manual_seed(0)
    folder = lclip.save_local_dir(open_clip.CLIP(**TINY_CLIP), TINY_CLIP, tmp_path_factory.mktemp("clip") / "m")
    return folder


@pytest.fixture(scope="module")
def probe():
    return probe_subset(ConceptShapes(size=600, split="val"), 300, seed=0)


def test_one_pass_feeds_invert_clip_and_captions_like_each_labeler_alone(probe, tiny_clip, tmp_path):
    model = ColourNet().eval()
    clip = lclip.load_clip(f"local-dir:{tiny_clip}")
    concepts = ConceptSource.from_dataset(probe, clip=clip, clip_cache_dir=str(tmp_path))
    concepts.captioner = lambda images: ["a red shape" if img[0].mean() > img[1:].mean() else "a blue thing"
                                         for img in images]
    calls = []
    model.conv.register_forward_hook(lambda *a: calls.append(1))
    result = dissect(model, probe, ["act", "fc"], ["invert", "clip_dissect", "captions"], concepts,
                     DissectOptions(batch_size=100, progress=False, heldout=None))
    assert len(calls) == 3  # one pass of 300 images in batches of 100, whatever the number of methods
    by = {(r.layer, r.method): [] for r in result.table}
    for r in result.table:
        by[(r.layer, r.method)].append(r)
    assert set(by) == {(ly, m) for ly in ("act", "fc") for m in ("invert", "clip_dissect", "captions")}

    acts = result.recording.acts["act"]
    alone = invert.label_units(acts, torch.from_numpy(probe.concept_matrix()), probe.concept_names)
    assert [r.label for r in by[("act", "invert")]] == [r["label"] for r in alone]
    assert [r.label for r in by[("act", "invert")]] == ["red", "green", "blue"]  # the planted detectors

    image_emb = clip.encode_images(probe)
    text_emb = clip.encode_texts(probe.concept_names)
    dense = clip_dissect.label_units(acts, image_emb @ text_emb.T, probe.concept_names)
    got = by[("act", "clip_dissect")]
    assert [r.label for r in got] == [r["label"] for r in dense]
    assert [r.score for r in got] == pytest.approx([r["score"] for r in dense], abs=1e-5)
    assert all(r.label for r in by[("act", "captions")])


def test_pca_directions_and_iou_rows(probe):
    result = dissect(ColourNet().eval(), probe, ["act", "fc"], ["invert", "iou"], ConceptSource.from_dataset(probe),
                     DissectOptions(pca_components=2, progress=False))
    layers = {(r.layer, r.method) for r in result.table}
    assert {("act#pca+", "invert"), ("act#pca-", "invert"), ("act", "iou"), ("act#pca+", "iou"),
            ("act#pca-", "iou")} <= layers
    assert ("fc", "iou") not in layers  # no spatial maps there
    iou = {unit: label for (_, unit), label in result.table.select("act", "iou").labels().items()}
    assert iou == {0: "red", 1: "green", 2: "blue"}
    for pole in "+-":
        assert len(result.table.select("act#pca" + pole)) == 2 * 2  # 2 directions x 2 methods


def test_directions_are_fitted_per_position_and_both_poles_labelled(probe):
    """The directions are the per-position PCA of the explanation images (computed here on all their maps at
    once); the - pole's scores are the + pole's negated, and each pole's labels and top images are those of its
    own scores."""
    model = ColourNet().eval()
    result = dissect(model, probe, ["act"], ["invert", "iou"], ConceptSource.from_dataset(probe),
                     DissectOptions(pca_components=3, progress=False, batch_size=64))
    explain = result.split.explain
    images = torch.stack([probe[int(i)][0] for i in explain])
    with torch.no_grad():
        maps = model.act(model.conv(images))
    rows = maps.double().movedim(1, -1).reshape(-1, 3)
    evals, evecs = torch.linalg.eigh(torch.cov(rows.t()))
    pca = result.directions["act"]
    assert result.moments["act"].count == rows.shape[0]
    assert torch.allclose(pca.explained_variance, evals.flip(0), rtol=1e-6, atol=1e-12)
    assert torch.allclose((pca.components.double() @ evecs.flip(1)).abs(), torch.eye(3, dtype=torch.float64),
                          atol=1e-5)

    scores = pca.project(result.recording.acts["act"])  # every probe image's projection on the + pole
    labels = torch.from_numpy(probe.concept_matrix())
    for pole, sign in (("+", 1), ("-", -1)):
        rows = result.table.select("act#pca" + pole, "invert").rows
        alone = invert.label_units(sign * scores[explain], labels[explain], probe.concept_names)
        assert [(r.unit, r.label) for r in rows] == [(d["unit"], d["label"]) for d in alone]
        for unit in range(3):
            top = result.top_images("act#pca" + pole, unit, 5)
            assert top == torch.argsort(sign * scores[:, unit], descending=True, stable=True)[:5].tolist()
    assert {r.label for r in result.table.select("act#pca-", "invert")} != {
        r.label for r in result.table.select("act#pca+", "invert")}  # the negative sides detect other concepts


def test_missing_requirements_are_user_errors(probe):
    with pytest.raises(UserError, match="clip_dissect needs CLIP"):
        dissect(ColourNet(), probe, ["act"], ["clip_dissect"], ConceptSource.from_dataset(probe))
    with pytest.raises(UserError, match="unknown dissection method 'netdissect'"):
        dissect(ColourNet(), probe, ["act"], ["netdissect"], ConceptSource.from_dataset(probe))


def test_classes_stand_in_for_concepts_when_the_probe_has_none():
    class Plain(torch.utils.data.Dataset):  # labelled images without concept annotations (like MNIST)
        class_names = ["dark", "bright"]

        def __len__(self):
            return 64

        def __getitem__(self, i):
            return torch.full((3, 8, 8), 0.9 if i % 2 else 0.1), i % 2

    class Brightness(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(1, 2)
            self.fc.weight.data = torch.tensor([[-1.0], [1.0]])

        def forward(self, x):
            return self.fc(x.mean(dim=(1, 2, 3)).unsqueeze(1))

    table = dissect(Brightness(), Plain(), ["fc"], ["invert"], ConceptSource.from_dataset(Plain()),
                    DissectOptions(progress=False, heldout=None)).table
    assert [r.label for r in table] == ["dark", "bright"]


def test_analyze_dissect_with_local_clip(tmp_path, tiny_clip, capsys, monkeypatch):
    """--model accepts a checkpoint; here the CLI runs CLIP-Dissect end to end with a local-dir CLIP."""
    import train as train_script
    from lwtakit.config import load_config

    cfg = load_config("default", [f"run_dir={tmp_path}", "run_name=r", "data.train_size=32", "data.val_size=64",
                                  "data.test_size=32", "data.batch_size=32", "model.width=0.125",
                                  "trainer.max_epochs=1", "logger=none", "dissection.enabled=false",
                                  "trainer.enable_progress_bar=false"])
    ckpt = train_script.train(cfg).last_ckpt
    out = tmp_path / "report"
    code = analyze.main(["dissect", "--ckpt", str(ckpt), "--methods", "invert", "clip_dissect", "--clip-model",
                         f"local-dir:{tiny_clip}", "--clip-cache", str(tmp_path / "cache"), "--probe-size", "48",
                         "--top-images", "4", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    text = (out / "labels.csv").read_text()
    assert ",clip_dissect," in text and ",invert," in text


def test_dissect_report_shows_both_poles_with_grids_and_per_position_completeness(probe, tmp_path, capsys):
    """analyze.py dissect --pca as a library call: the completeness curves are those of the per-position fit (the
    ablation curve with a progress bar per basis), and each pole of the directions has its rows and image cards."""
    from types import SimpleNamespace

    from lwtakit.analysis import DissectRequest, completeness_curves, dissect_to_report
    from lwtakit.labelers.base import create_labelers
    from lwtakit.labelers.pca import ablation_curve, variance_curves
    from lwtakit.labelers.run_options import RunOptions

    model, probe = ColourNet().eval(), probe_subset(probe, 120, seed=0)
    concepts = ConceptSource.from_dataset(probe)
    options = DissectOptions(pca_components=2, batch_size=100, topk=4)
    request = DissectRequest(layers=["act", "fc"], labelers=create_labelers(["invert"], None), options=options,
                             grid_units=2)
    result = dissect(model, probe, ["act", "fc"], request.labelers, concepts, options)
    capsys.readouterr()
    curves = completeness_curves(model, probe, ["act"], result, request)["act"]
    assert "ablation (pca of act)" in capsys.readouterr().err
    direct = variance_curves(result.moments["act"])
    assert curves["pca_variance"] == direct["pca"].tolist()
    ks = curves["k_ablation"]
    assert curves["pca_ablation_acc"] == ablation_curve(model, "act", probe, "pca", ks, acts=result.moments["act"],
                                                        run=RunOptions(batch_size=100))

    loaded = SimpleNamespace(model=model, name="colour", class_names=list(probe.class_names))
    report = dissect_to_report(loaded, probe, concepts, request, tmp_path / "out")
    with open(tmp_path / "out" / "labels.csv") as fh:
        layers = {line.split(",")[0] for line in fh.readlines()[1:]}
    assert layers == {"act", "fc", "act#pca+", "act#pca-", "fc#pca+", "fc#pca-"}
    html = report.read_text()
    for pole in "+-":
        assert html.count(f'alt="top 4 images of component 0{pole}"') + html.count(
            f'alt="top 4 images of component 1{pole}"') == 2 * 2  # 2 directions in act#pca and in fc#pca
    assert "Principal directions of act (Dey et al. 2020)" in html
