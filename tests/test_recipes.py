"""The real-data recipes (DISCOVER's settings): they compose, carry DISCOVER's sampler, T, evaluation and
dissection, and each trains for 2 steps on CPU offline, where CLIP-Dissect falls back to INVERT with one warning."""

import json
import logging

import numpy as np
import pytest
from PIL import Image

import train as train_script
from callbacks.dissection import DissectionCallback
from lwtakit.config import load_config
from lwtakit.io import read_csv
from lwtakit.lwta import lwta_layers

RECIPES = ["cifar10_resnet18_u2", "cifar10_resnet18_u4", "imagenet_resnet18_u4", "places365_resnet18_u4",
           "vit_tiny_u8"]
# DISCOVER's T (../shared/REFERENCES.md: "T=1.67 ResNet, 0.01 DeiT"), always on the relaxation.
DISCOVER_T = {"cifar10_resnet18_u2": 1.67, "cifar10_resnet18_u4": 1.67, "imagenet_resnet18_u4": 1.67,
              "places365_resnet18_u4": 1.67, "vit_tiny_u8": 0.01}
CLASSES = ["airfield", "bamboo_forest", "beach"]
COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]
FALLBACK_LOGGER = "lwtakit.clip.fallback"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny ImageFolder (train / val / test, 3 classes, one colour each plus noise): 36 / 12 / 12 images."""
    root = tmp_path_factory.mktemp("tinyfolder")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        for name, colour in zip(CLASSES, COLOURS, strict=True):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def tiny(recipe, folder, tmp_path, *overrides):
    """The recipe at smoke-test size: CPU, the tiny folder, 2 training steps, a 12-image probe."""
    size = ["model.depth=1"] if recipe.startswith("vit") else ["model.width=0.125"]
    return load_config(recipe, [
        f"run_dir={tmp_path}", "run_name=run", "logger=none", "trainer=cpu", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", "data.name=imagefolder", f"data.root={folder}", "data.img_size=32",
        "data.batch_size=18", "data.num_workers=0", "dissection.probe_size=12", "dissection.top_images=4",
        "sparsity.every_n_steps=1", *size, *overrides])


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_composes_with_discovers_settings(recipe):
    cfg = load_config(recipe)
    t = cfg.model.temperature
    assert (t.on, t.t0, t.schedule) == ("relaxation", DISCOVER_T[recipe], "constant")
    assert (cfg.eval.mc_samples, cfg.eval.mc_average) == (6, "logits") and "mc" in cfg.eval.modes
    d = cfg.dissection
    assert d.enabled and list(d.methods) == ["clip_dissect"] and d.clip_dissect.similarity == "soft_wpmi"
    assert (d.clip.model, d.clip.pretrained, d.clip.fallback) == ("ViT-B-16", "openai", "invert")


def test_places365_clip_concepts_are_the_probes_class_names(folder, tmp_path):
    import open_clip
    import torch

    from lwtakit.clip import save_local_dir
    from tests.test_clip import TINY_CFG

    torch.manual_seed(0)
    clip = save_local_dir(open_clip.CLIP(**TINY_CFG), TINY_CFG, tmp_path / "tinyclip")
    cfg = tiny("places365_resnet18_u4", folder, tmp_path, f"dissection.clip.model=local-dir:{clip}",
               "dissection.clip.pretrained=null")
    callback = DissectionCallback.from_config(cfg.dissection, train_script.build_datamodule(cfg), tmp_path)
    assert callback.methods == ["clip_dissect"] and callback.choice["fallback"] is None
    assert callback.concepts.clip_concepts == ["airfield", "bamboo forest", "beach"]


def _smoke(recipe, folder, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=FALLBACK_LOGGER)
    result = train_script.train(tiny(recipe, folder, tmp_path))
    run = result.run_dir
    warnings = [r for r in caplog.records if r.name == FALLBACK_LOGGER]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    line = warnings[0].getMessage()
    # what was tried, why it failed, what is used instead, how to get the weights; one line
    assert "\n" not in line
    for part in ("tried CLIP ViT-B-16 pretrained=openai", "offline", "INVERT on the probe's class labels",
                 "local-dir:", "dissection.clip.pretrained="):
        assert part in line, part
    rows = read_csv(run / "labels.csv")
    assert rows and {r["method"] for r in rows} == {"invert"}
    # INVERT on the class labels: every label is one of the probe's classes (or its negation)
    assert {r["label"].removeprefix("NOT ") for r in rows} <= set(CLASSES)
    choice = json.loads((run / "dissection.json").read_text())
    assert choice["methods_requested"] == ["clip_dissect"] and choice["methods_used"] == ["invert"]
    assert choice["fallback"] == line and choice["clip"] is None
    assert any(s.startswith("dissection: CLIP weights unavailable, labelled with invert")
               for s in train_script.summary_lines(result.metrics, run))
    layers = lwta_layers(result.module.model).values()
    assert layers and all(m.temperature_on == "relaxation" and m.temperature == DISCOVER_T[recipe] for m in layers)
    assert {"test/acc_sample", "test/acc_argmax", "test/acc_mc"} <= set(result.metrics)


def test_vit_recipe_trains_offline_and_falls_back_to_invert(folder, tmp_path, caplog):
    # the quickest recipe (19 s on the shared 2-core CPU, the ResNet ones 45-65 s): the fallback in the default suite
    _smoke("vit_tiny_u8", folder, tmp_path, caplog)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [r for r in RECIPES if r != "vit_tiny_u8"])
def test_recipe_trains_offline_and_falls_back_to_invert(recipe, folder, tmp_path, caplog):
    _smoke(recipe, folder, tmp_path, caplog)
