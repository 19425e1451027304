"""The scale benchmark (``benchmarks/dissect_speed.py --part scale``): its synthetic inputs, and one tiny CPU run
(ResNet-50 at 64 px, a tiny open_clip config, a handful of images) checked against independent counts."""

import json
import re

import pytest
import torch

from benchmarks import dissect_speed
from benchmarks.scale_data import (
    ONSETS,
    VOWELS,
    SyntheticImages,
    class_concepts,
    planted_units,
    pronounceable_words,
    random_hierarchy,
)

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def test_words_are_distinct_pronounceable_and_seeded():
    words = pronounceable_words(20000, seed=3)
    assert len(set(words)) == 20000
    assert words == pronounceable_words(20000, seed=3) and words != pronounceable_words(20000, seed=4)
    syllable = f"(?:{'|'.join(sorted(ONSETS, key=len, reverse=True))})(?:{'|'.join(VOWELS)})[nrlsm]?"
    assert all(re.fullmatch(f"(?:{syllable}){{2,4}}", w) for w in words[:2000])


def test_hierarchy_has_the_groups_and_labels_follow_every_ancestor():
    classes = [f"class{c:04d}" for c in range(1000)]
    hierarchy = random_hierarchy(classes, 473, seed=1)
    names, labels, membership = class_concepts(500, hierarchy, classes, seed=2)
    assert len(names) == 1473 and membership.shape == (1000, 1473)
    assert bool(membership[:, 1000:].any(0).all())  # every group covers some class
    column = {n: j for j, n in enumerate(names)}
    for i in range(0, 500, 37):  # an image's concepts: its class and the chain of parents above it, by walking
        cls = int(torch.nonzero(labels[i, :1000]).flatten()[0])
        expected, node = {cls}, classes[cls]
        while node in hierarchy.parents:
            node = hierarchy.parents[node][0]
            expected.add(column[node])
        assert set(torch.nonzero(labels[i]).flatten().tolist()) == expected


def test_planted_units_follow_their_formula():
    classes = [f"class{c:04d}" for c in range(200)]
    _, labels, membership = class_concepts(4000, random_hierarchy(classes, 60), classes)
    acts, truth = planted_units(labels, membership, 6, noise=0.0)
    assert torch.equal(acts, truth.float())
    assert bool((truth.float().mean(0) > 0).all()) and bool((truth.float().mean(0) < 0.5).all())


def test_probe_is_deterministic_and_images_differ():
    a, b = SyntheticImages(70, side=16, classes=5, seed=0), SyntheticImages(70, side=16, classes=5, seed=0)
    assert all(torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1] for i in (0, 64, 69))
    assert not torch.equal(a[0][0], a[64][0])  # same bank image, other shift
    assert a[3][0].min() >= 0 and a[3][0].max() <= 1 and a[3][0].shape == (3, 16, 16)


def test_tiny_scale_run(tmp_path, capsys):
    config = tmp_path / "tiny_clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    n = 6
    dissect_speed.main(["--part", "scale", "--threads", "2", "--scale-n", str(n), "--scale-img", "64",
                        "--scale-batch", "4", "--scale-words", "30", "--scale-classes", "20", "--scale-groups", "9",
                        "--scale-clip", str(config), "--invert-n", "3000", "--invert-units", "4",
                        "--invert-noise", "0", "--scale-memory-budget", "0"])
    out = dict(line.strip().split(": ", 1) for line in capsys.readouterr().out.splitlines()[1:])
    conv = 256 + 512 + 1024 + 2048  # ResNet-50's layer1-4 channels: acts, acts_max, firing_per_image
    expected = n * (3 * conv + 2 * 1000) * 4 + 5 * n * 4  # + fc (acts_max is acts) + active_per_image
    assert float(out["recording MiB (kept)"]) == pytest.approx(expected / 2**20, rel=1e-3)
    assert out["recording in a mapped file (over --scale-memory-budget)"] == "True"  # budget 0: spilled, labelled
    assert int(out["rows labelled"]) == 2 * (conv + 1000) and int(out["INVERT concepts"]) == 29
    assert out["INVERT search reference planted formula found (same images), labels of length 3"].endswith("4/4")
    assert float(out["ratio everything / bare (ResNet-50 + CLIP image encoder), target <= 1.2"]) > 0
