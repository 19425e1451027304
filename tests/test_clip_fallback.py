"""CLIP-Dissect in a training run, or INVERT when the CLIP weights cannot be had (lwtakit/clip/fallback.py)."""

import logging
import os

import open_clip
import pytest
import torch

from lwtakit import clip as lclip
from lwtakit.clip.fallback import clip_or_fallback
from lwtakit.config import ClipConfig, load_config
from lwtakit.errors import UserError
from tests.test_clip import TINY_CFG

LOGGER = "lwtakit.clip.fallback"
OPENAI = {"model": "ViT-B-16", "pretrained": "openai"}  # DISCOVER's CLIP; not cached in the tests' empty HF_HOME


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_offline_weights_fall_back_to_invert_with_one_line(caplog):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    caplog.set_level(logging.WARNING, logger=LOGGER)
    choice = clip_or_fallback(["clip_dissect"], ClipConfig(**OPENAI, fallback="invert"), "class labels")
    assert choice.methods == ["invert"] and choice.clip is None
    (line,) = _warnings(caplog)
    assert choice.fallback == line and "\n" not in line
    assert line.startswith("CLIP-Dissect not run: tried CLIP ViT-B-16 pretrained=openai, offline")
    assert "used INVERT on the probe's class labels instead (methods: invert)" in line
    assert "dissection.clip.pretrained=" in line and "local-dir:" in line


def test_invert_takes_clip_dissects_place_once():
    choice = clip_or_fallback(["invert", "clip_dissect", "iou"], ClipConfig(**OPENAI, fallback="invert"),
                              "concept labels")
    assert choice.methods == ["invert", "iou"]
    choice = clip_or_fallback(["iou", "clip_dissect"], ClipConfig(**OPENAI, fallback="invert"), "class labels")
    assert choice.methods == ["iou", "invert"]


def test_without_fallback_or_labels_the_missing_weights_stay_an_error(caplog):
    with pytest.raises(lclip.ClipWeightsUnavailable, match="could not load CLIP model ViT-B-16"):
        clip_or_fallback(["clip_dissect"], ClipConfig(**OPENAI), "class labels")  # fallback=error, the default
    with pytest.raises(lclip.ClipWeightsUnavailable):
        clip_or_fallback(["clip_dissect"], ClipConfig(**OPENAI, fallback="invert"), None)  # nothing to label with
    assert not _warnings(caplog)


def test_a_bad_clip_name_is_an_error_even_with_the_fallback():
    with pytest.raises(UserError, match="unknown CLIP model") as err:
        clip_or_fallback(["clip_dissect"], ClipConfig(model="ViT-B-17", pretrained="openai", fallback="invert"),
                         "class labels")
    assert not isinstance(err.value, lclip.ClipWeightsUnavailable)


def test_weights_that_load_are_used(tmp_path, caplog):
    torch.manual_seed(0)
    folder = lclip.save_local_dir(open_clip.CLIP(**TINY_CFG), TINY_CFG, tmp_path / "tiny")
    choice = clip_or_fallback(["clip_dissect"], ClipConfig(model=f"local-dir:{folder}", fallback="invert"),
                              "class labels")
    assert choice.methods == ["clip_dissect"] and choice.fallback is None and not _warnings(caplog)
    assert choice.clip is not None and choice.clip.source.startswith(f"local-dir:{folder}")


def test_no_clip_method_loads_nothing():
    choice = clip_or_fallback(["invert"], ClipConfig(model="ViT-B-17", fallback="error"), "class labels")
    assert choice.methods == ["invert"] and choice.clip is None and choice.fallback is None


def test_fallback_choices_are_checked():
    with pytest.raises(UserError, match="dissection.clip.fallback"):
        load_config("default", ["dissection.clip.fallback=skip"])
