"""The one composition root (lwtakit/dissection_setup.py): analyze.py's flags and the training config give the same
dissection settings, labelers prepare their own inputs, a method that cannot run fails before any training step,
IoU under mc measures the mc function through the run context, and analyze.py label dispatches through the
labeler registry."""

import dataclasses

import numpy as np
import open_clip
import pytest
import torch

import analyze
import train as train_script
from lwtakit import clip as lclip
from lwtakit.concept_sets import concepts_for
from lwtakit.config import ClipConfig, DissectionConfig
from lwtakit.data import probe_subset
from lwtakit.data.synthetic import ConceptShapes
from lwtakit.dissect import ConceptSource, DissectOptions, dissect
from lwtakit.dissection_setup import SetupOptions, dissection_from_config
from lwtakit.errors import UserError
from lwtakit.io import read_csv
from lwtakit.labelers.base import CONCEPT_LABELS, Labeler, register_labeler
from lwtakit.labelers.iou import iou_matrix
from lwtakit.labelers.run_options import RunOptions
from lwtakit.lwta import lwta_inference
from tests.test_clip import TINY_CFG
from tests.test_dissect_modes import LWTANet
from tests.test_train import TINY


@pytest.fixture(scope="module")
def probe():
    return probe_subset(ConceptShapes(size=200, split="val"), 64, seed=0)


def test_analyze_flag_defaults_are_the_schema_defaults():
    """Defaults live once: dissect's flags left out give the schema's DissectionConfig (--batch-size is also CLIP's
    batch, as it always was on the command line)."""
    args = analyze.build_parser().parse_args(["dissect", "--ckpt", "RUN", "--out", "OUT"])
    schema = DissectionConfig()
    expected = dataclasses.replace(schema, clip=dataclasses.replace(schema.clip, batch_size=schema.batch_size))
    assert analyze._dissection_config(args) == expected
    off = analyze._dissection_config(analyze.build_parser().parse_args(
        ["dissect", "--ckpt", "RUN", "--out", "OUT", "--heldout", "0", "--seed", "7", "--pca", "3"]))
    assert not off.heldout.enabled and off.heldout.seed == 7 and off.pca_components == 3


def test_a_training_run_whose_method_cannot_run_fails_before_its_first_step(tmp_path, capsys):
    """CLIP-Dissect without CLIP weights: one line when the callback is built (it used to load a CLIP with random
    weights, or fail at the first epoch's end), and no checkpoint or metric written."""
    code = train_script.main([f"run_dir={tmp_path}", "run_name=r", *TINY, "logger=csv",
                              "dissection.methods=[clip_dissect]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: method clip_dissect needs CLIP weights"), err
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("metrics.csv"))


def test_labelers_that_read_clip_get_it_once_from_the_config(probe, tmp_path):
    """The CLIP model and the configured concept set are built for the labelers that need them (and said in one
    note); training adds CLIP-Dissect once weights are configured; without weights the check names what is
    missing instead of labelling with a randomly initialised CLIP."""
    torch.manual_seed(0)
    folder = lclip.save_local_dir(open_clip.CLIP(**TINY_CFG), TINY_CFG, tmp_path / "tiny")
    notes = []
    cfg = DissectionConfig(methods=["invert"], concepts="classes", clip=ClipConfig(model=f"local-dir:{folder}"))
    made = dissection_from_config(cfg, probe, SetupOptions(add_clip_labelers=True, say=notes.append))
    assert [lab.name for lab in made.labelers] == ["invert", "clip_dissect"]
    assert made.choice["methods_requested"] == ["invert", "clip_dissect"] and made.choice["fallback"] is None
    names, note = concepts_for("classes", probe.class_names)
    assert made.concepts.clip is not None and made.concepts.clip_concepts == names and notes == [note]
    assert made.concepts.clip.source.startswith(f"local-dir:{folder}")
    # analyze.py asks for exactly the methods it names
    only = dissection_from_config(cfg, probe, SetupOptions(entry="analyze", say=notes.append))
    assert [lab.name for lab in only.labelers] == ["invert"] and only.concepts.clip is None
    with pytest.raises(UserError, match="method clip_dissect needs CLIP weights"):
        dissection_from_config(DissectionConfig(methods=["clip_dissect"]), probe)


def test_unavailable_clip_weights_fall_back_through_the_factory(probe):
    cfg = DissectionConfig(methods=["clip_dissect", "iou"],
                           clip=ClipConfig(model="ViT-B-16", pretrained="openai", fallback="invert"))
    made = dissection_from_config(cfg, probe)  # the tests run offline with an empty HF_HOME
    assert [lab.name for lab in made.labelers] == ["invert", "iou"]
    assert made.choice["fallback"].startswith("CLIP-Dissect not run: tried CLIP ViT-B-16 pretrained=openai")
    assert "used INVERT on the probe's concept labels instead (methods: invert, iou)" in made.choice["fallback"]
    with pytest.raises(lclip.ClipWeightsUnavailable, match="--clip-pretrained FILE"):
        dissection_from_config(dataclasses.replace(cfg, clip=ClipConfig(model="ViT-B-16", pretrained="openai")),
                               probe, SetupOptions(entry="analyze"))


def test_iou_in_a_mc_dissection_measures_the_mc_function(probe):
    """dissect(mode=mc) hands IoU its passes and seed through the run context: IoU's thresholds are those of the
    mean of `passes` seeded sampled passes per batch (iou_matrix, checked against maps averaged by hand in
    test_iou), not of one pass, and its rows say mc."""
    net, passes, seed, bs = LWTANet().eval(), 4, 3, 16
    result = dissect(net, probe, ["act"], ["iou"], ConceptSource.from_dataset(probe),
                     DissectOptions(mode="mc", passes=passes, seed=seed, batch_size=bs, progress=False, heldout=None))
    rows = result.table.select("act", "iou").rows
    assert {r.mode for r in rows} == {"mc"}
    got = torch.tensor([r.extra["threshold"] for r in rows])
    with lwta_inference(net, "sample"):
        _, mc = iou_matrix(net, probe, "act", run=RunOptions(batch_size=bs, seed=seed, passes=passes))
        _, one = iou_matrix(net, probe, "act", run=RunOptions(batch_size=bs, seed=seed))
    torch.testing.assert_close(got, mc.float())
    assert not torch.allclose(got, one.float())


@register_labeler
class TopMean(Labeler):
    """Outside the package: label = the concept whose positive images have the highest mean activation."""

    name = "test_top_mean"
    needs = frozenset({CONCEPT_LABELS})
    array_methods = ("top_mean",)

    def label(self, target, ctx):
        raise NotImplementedError

    def label_arrays(self, acts, arrays):
        labels = arrays.labels.astype(float)
        means = labels.T @ acts / labels.sum(0)[:, None]  # [K, C]
        return [{"unit": u, "label": arrays.names[int(means[:, u].argmax())], "score": float(means[:, u].max())}
                for u in range(acts.shape[1])]


def test_label_runs_a_registered_labeler_by_its_array_method(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.random((40, 3)) < 0.4
    acts = labels[:, [2, 0]] * 2.0 + rng.random((40, 2))  # unit 0 follows concept c, unit 1 concept a
    np.save(tmp_path / "A.npy", acts)
    np.save(tmp_path / "L.npy", labels)
    (tmp_path / "names.txt").write_text("a\nb\nc\n")
    out = tmp_path / "labels.csv"
    assert analyze.main(["label", "--activations", str(tmp_path / "A.npy"), "--method", "top_mean",
                         "--concept-labels", str(tmp_path / "L.npy"), "--concept-names", str(tmp_path / "names.txt"),
                         "--out", str(out)]) == 0
    rows = read_csv(out)
    assert [r["label"] for r in rows] == ["c", "a"]
    expected = acts[labels[:, 2], 0].mean()
    assert float(rows[0]["score"]) == pytest.approx(expected)
