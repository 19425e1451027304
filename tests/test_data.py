"""Datasets: synthetic concepts checked against measurements of the drawn pixels, MNIST against the raw
arrays, the image-folder loader against a folder written here (with one corrupt file)."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lwtakit.data import build_dataset, dataset_info, dataset_names, probe_subset
from lwtakit.data.folders import ProbeFolder, SafeImageFolder
from lwtakit.data.mnist import MNIST
from lwtakit.data.synthetic import ATTRIBUTES, PALETTE, ConceptShapes
from lwtakit.data.transforms import RandomCropFlip, TransformedDataset
from lwtakit.errors import UserError

# ---------------------------------------------------------------- independent measurements


def measure_foreground(img: np.ndarray) -> np.ndarray:
    """Object pixels found from the image alone: far (L1 over channels) from the median border colour."""
    border = np.concatenate([img[:, 0], img[:, -1], img[:, :, 0], img[:, :, -1]], axis=1)
    bg = np.median(border, axis=1)
    return np.abs(img - bg[:, None, None]).sum(0) > 0.2


def nearest_palette_colour(img: np.ndarray, mask: np.ndarray) -> str:
    """Palette colour whose direction (hue, brightness-free) is closest to the mean colour in mask."""
    names = list(PALETTE)
    pal = np.array([PALETTE[n] for n in names])
    pal /= np.linalg.norm(pal, axis=1, keepdims=True)
    c = img[:, mask].mean(1)
    return names[int(np.argmax(pal @ (c / np.linalg.norm(c))))]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


# ---------------------------------------------------------------- synthetic


def test_synthetic_item_format_and_vocabulary():
    ds = ConceptShapes(size=20)
    x, y = ds[3]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert isinstance(y, int) and 0 <= y < len(ds.class_names)
    assert ds.class_names == ATTRIBUTES["shape"]
    assert len(set(ds.concept_names)) == len(ds.concept_names)  # unique across attributes
    assert ds.concept_names == [v for vals in ds.concept_groups.values() for v in vals]
    assert "dark background" in ds.concept_names and "striped" in ds.concept_names
    with pytest.raises(IndexError):
        ds[20]


def test_synthetic_deterministic_across_calls_instances_and_workers():
    a = ConceptShapes(size=16, seed=7)
    b = ConceptShapes(size=16, seed=7)
    direct = torch.stack([a[i][0] for i in range(16)])
    assert torch.equal(a[5][0], a[5][0])
    assert torch.equal(direct, torch.stack([b[i][0] for i in range(16)]))
    # Out of order and from two worker processes: the same pixels.
    assert torch.equal(b[11][0], direct[11])
    loaded = torch.cat([xb for xb, _ in DataLoader(b, batch_size=3, num_workers=2)])
    assert torch.equal(loaded, direct)
    # Other seed / other split: other images.
    assert not torch.equal(ConceptShapes(size=16, seed=8)[0][0], direct[0])
    assert not torch.equal(ConceptShapes(size=16, seed=7, split="val")[0][0], direct[0])


def test_synthetic_labels_and_concept_vectors_follow_attributes():
    ds = ConceptShapes(size=300, seed=1, target="colour")
    cm = ds.concept_matrix()
    assert cm.dtype == bool and cm.shape == (300, len(ds.concept_names))
    assert ds.concept_matrix() is cm  # cached
    for i in range(0, 300, 37):
        a = ds.attributes(i)
        assert ds[i][1] == ds.class_names.index(a["colour"])
        assert sorted(np.array(ds.concept_names)[cm[i]]) == sorted(a.values())
    # Exactly one value per attribute group.
    start = 0
    for vals in ds.concept_groups.values():
        assert (cm[:, start:start + len(vals)].sum(1) == 1).all()
        start += len(vals)


def test_synthetic_concepts_match_measured_pixels():
    """Colour, size, position and object mask measured from the image agree with the concept labels."""
    ds = ConceptShapes(size=150, seed=3, split="test")
    names = ds.concept_names
    grid = np.array([0.3, 0.5, 0.7]) * ds.img_size
    ious = []
    for i in range(len(ds)):
        img = ds[i][0].numpy()
        a = ds.attributes(i)
        masks = ds.concept_masks(i)
        fg = measure_foreground(img)
        # Every object concept's mask is where the object is; the background concept is the rest.
        for key in ("shape", "colour", "pattern", "size", "position"):
            assert np.array_equal(masks[names.index(a[key])], masks[names.index(a["shape"])])
        assert np.array_equal(masks[names.index(a["background"])], ~masks[names.index(a["shape"])])
        present = ds.concept_matrix()[i]
        assert not masks[~present].any()
        ious.append(iou(fg, masks[names.index(a["shape"])]))
        # Colour: nearest palette hue of the measured object pixels.
        assert nearest_palette_colour(img, fg) == a["colour"]
        # Size: bounding-box extent (small <= 0.3 of the side, large >= 0.4 by construction).
        ys, xs = np.nonzero(fg)
        extent = max(np.ptp(ys), np.ptp(xs)) + 1
        assert (extent < 0.35 * ds.img_size) == (a["size"] == "small"), (i, a, extent)
        # Position: centroid snapped to the 3x3 grid.
        row = int(np.argmin(np.abs(grid - (ys.mean() + 0.5))))
        col = int(np.argmin(np.abs(grid - (xs.mean() + 0.5))))
        assert ATTRIBUTES["position"][3 * row + col] == a["position"], (i, a)
    assert np.mean(ious) > 0.98 and np.min(ious) > 0.85


def test_synthetic_background_colour_and_pattern_visible():
    ds = ConceptShapes(size=60, seed=4)
    levels = {"dark background": 0.1, "gray background": 0.45, "light background": 0.84}
    for i in range(len(ds)):
        img = ds[i][0].numpy()
        a = ds.attributes(i)
        m = ds.concept_masks(i)
        bg_mean = img[:, m[ds.concept_names.index(a["background"])]].mean()
        assert min(levels, key=lambda k: abs(levels[k] - bg_mean)) == a["background"]
        # Patterned objects contain dark "off" pixels: their brightness spread is large.
        obj = img[:, m[ds.concept_names.index(a["shape"])]].sum(0)
        spread = np.percentile(obj, 95) - np.percentile(obj, 5)
        assert (spread > 0.5) == (a["pattern"] != "plain"), (i, a, spread)


def test_synthetic_second_object_concepts_are_union_with_masks():
    ds = ConceptShapes(size=80, seed=2, second_object=True)
    names = ds.concept_names
    for i in range(len(ds)):
        a = ds.attributes(i)
        assert a["second_position"] != a["position"] and a["second_size"] == "small"
        present = ds.concept_matrix()[i]
        expect = {a[k] for k in ATTRIBUTES} | {a["second_" + k] for k in ("shape", "colour", "pattern",
                                                                         "size", "position")}
        assert set(np.array(names)[present]) == expect
        masks = ds.concept_masks(i)
        assert masks[present].reshape(present.sum(), -1).any(1).all()  # every present concept is visible
        assert not masks[~present].any()
        objects = masks[names.index(a["shape"])] | masks[names.index(a["second_shape"])]
        assert np.array_equal(masks[names.index(a["background"])], ~objects)
        img = ds[i][0].numpy()
        assert iou(measure_foreground(img), objects) > 0.8
        if a["colour"] != a["second_colour"]:
            assert nearest_palette_colour(img, masks[names.index(a["second_colour"])]) == a["second_colour"]
            assert nearest_palette_colour(img, masks[names.index(a["colour"])]) == a["colour"]


def test_synthetic_class_and_attribute_balance():
    ds = ConceptShapes(size=6000, seed=0)
    labels = np.array([ds.class_names.index(ds.attributes(i)["shape"]) for i in range(len(ds))])
    counts = np.bincount(labels, minlength=len(ds.class_names))
    assert np.all(np.abs(counts / len(ds) - 1 / len(counts)) < 0.15 / len(counts)), counts
    freq = ds.concept_matrix().mean(0)
    start = 0
    for vals in ds.concept_groups.values():
        f = freq[start:start + len(vals)]
        assert np.all(np.abs(f - 1 / len(vals)) < 0.2 / len(vals)), (vals, f)
        start += len(vals)


def test_synthetic_restricted_attributes_and_bad_options():
    ds = ConceptShapes(size=200, attributes={"shape": ["circle", "square"], "background": ["dark background"]})
    assert ds.class_names == ["circle", "square"]
    assert ds.concept_groups["background"] == ["dark background"]
    assert {ds.attributes(i)["shape"] for i in range(200)} == {"circle", "square"}
    assert ds.concept_matrix()[:, ds.concept_names.index("dark background")].all()
    with pytest.raises(UserError, match="colour"):
        ConceptShapes(attributes={"colour": ["magenta"]})
    with pytest.raises(UserError, match="target"):
        ConceptShapes(target="texture")
    with pytest.raises(UserError, match="split"):
        ConceptShapes(split="training")


def test_synthetic_img_size_scales_geometry():
    small, big = ConceptShapes(size=4, img_size=32), ConceptShapes(size=4, img_size=64)
    x = big[0][0]
    assert x.shape == (3, 64, 64)
    assert small.attributes(0) == big.attributes(0)
    m32 = small.concept_masks(0)[0:6].any(0).mean()
    m64 = big.concept_masks(0)[0:6].any(0).mean()
    assert abs(m32 - m64) < 0.02  # same object area as a fraction of the image


# ---------------------------------------------------------------- build_dataset / info / probe subsets


def test_build_dataset_unknown_name_lists_names():
    with pytest.raises(UserError) as e:
        build_dataset("imagenet21k", "train")
    for name in dataset_names():
        assert name in str(e.value)
    with pytest.raises(UserError, match="second_objects"):
        build_dataset("synthetic", "train", second_objects=True)


def test_dataset_info_synthetic_matches_measured_stats():
    info = dataset_info("synthetic")
    assert info.num_classes == 6 and info.in_chans == 3 and info.img_size == 32
    ds = build_dataset("synthetic", "train", size=1024, seed=11)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    assert torch.allclose(x.mean((0, 2, 3)), torch.tensor(info.mean), atol=0.03)
    assert torch.allclose(x.std((0, 2, 3)), torch.tensor(info.std), atol=0.03)
    assert dataset_info("synthetic", target="colour").class_names == ATTRIBUTES["colour"]
    assert dataset_info("mnist", channels=3).in_chans == 3


def test_probe_subset_is_fixed_and_keeps_concepts():
    ds = build_dataset("synthetic", "val", size=300)
    p = probe_subset(ds, 40, seed=5)
    q = probe_subset(ds, 40, seed=5)
    assert np.array_equal(p.indices, q.indices) and len(p) == 40
    assert np.all(np.diff(p.indices) > 0)
    assert not np.array_equal(p.indices, probe_subset(ds, 40, seed=6).indices)
    assert p.class_names == ds.class_names and p.concept_names == ds.concept_names
    assert np.array_equal(p.concept_matrix(), ds.concept_matrix()[p.indices])
    j = int(p.indices[7])
    assert torch.equal(p[7][0], ds[j][0])
    assert np.array_equal(p.concept_masks(7), ds.concept_masks(j))
    assert len(probe_subset(ds, 10_000)) == 300


def test_augmentation_only_on_train_and_never_on_synthetic(mnist_path):
    syn = build_dataset("synthetic", "train", size=10, augment=True)
    assert isinstance(syn, ConceptShapes)
    tr = build_dataset("mnist", "train", root=mnist_path, augment=True)
    va = build_dataset("mnist", "val", root=mnist_path, augment=True)
    assert isinstance(tr, TransformedDataset) and isinstance(va, MNIST)
    assert tr.class_names == va.class_names  # metadata forwarded through the wrapper
    assert tr.transform.flip is False  # no mirrored digits


def test_random_crop_flip_is_a_shifted_window_of_the_padded_image():
    torch.manual_seed(0)
    img = torch.rand(3, 12, 12)
    aug = RandomCropFlip(padding=2, flip=True)
    padded = torch.nn.functional.pad(img, (2, 2, 2, 2))
    windows = [padded[:, dy:dy + 12, dx:dx + 12] for dy in range(5) for dx in range(5)]
    seen_flip = seen_plain = False
    for _ in range(30):
        out = aug(img)
        plain = any(torch.equal(out, w) for w in windows)
        flipped = any(torch.equal(out, w.flip(-1)) for w in windows)
        assert plain or flipped
        seen_plain |= plain
        seen_flip |= flipped and not plain
    assert seen_flip and seen_plain


# ---------------------------------------------------------------- MNIST


def test_mnist_npz_splits_shapes_and_pixels(mnist_path):
    raw = np.load(mnist_path, allow_pickle=False)
    sizes = {"train": 50000, "val": 10000, "test": 10000}
    for split, key in (("train", "train"), ("val", "valid"), ("test", "test")):
        ds = MNIST(mnist_path, split=split)
        assert len(ds) == sizes[split]
        for i in (0, 1234, len(ds) - 1):
            x, y = ds[i]
            assert x.shape == (1, 28, 28) and x.dtype == torch.float32
            assert y == int(raw[f"{key}_labels"][i])
            assert torch.allclose(x[0], torch.from_numpy(raw[f"{key}_images"][i]).float() / 255.0)
    ds = MNIST(mnist_path, split="test", channels=3, img_size=32)
    x, _ = ds[0]
    assert x.shape == (3, 32, 32) and torch.equal(x[0], x[2])
    assert ds.class_names[0] == "zero" and ds.class_names[9] == "nine"
    labels = np.bincount(MNIST(mnist_path, split="val").labels, minlength=10)
    assert labels.min() > 800  # all ten digits present


def test_mnist_missing_path_says_how_to_fix(tmp_path):
    missing = str(tmp_path / "nowhere" / "mnist.npz")
    with pytest.raises(UserError) as e:
        build_dataset("mnist", "train", root=missing)
    msg = str(e.value)
    assert missing in msg and "data.root" in msg and "data.download=true" in msg and "\n" not in msg
    with pytest.raises(UserError) as e:
        MNIST(str(tmp_path / "empty_dir"))
    assert "empty_dir" in str(e.value) and "data.download=true" in str(e.value)


def test_cifar_missing_root_says_how_to_fix(tmp_path):
    with pytest.raises(UserError) as e:
        build_dataset("cifar10", "train", root=str(tmp_path))
    assert str(tmp_path) in str(e.value) and "data.download=true" in str(e.value)


# ---------------------------------------------------------------- image folders


def _write_folder(root, n_per_class=3):
    from PIL import Image

    colours = {"cat": (200, 30, 30), "dog": (30, 30, 200)}
    for split in ("train", "val"):
        for cls, rgb in colours.items():
            d = root / split / cls
            d.mkdir(parents=True)
            for k in range(n_per_class):
                arr = np.zeros((20 + k, 30, 3), np.uint8)
                arr[:] = rgb
                arr[:, : 5 * (k + 1)] = 255  # a white band whose width tells the images apart
                Image.fromarray(arr).save(d / f"{k}.png")
    (root / "train" / "cat" / "1.png").write_bytes(b"this is not a png at all")  # corrupt, index 1


def test_imagefolder_skips_and_counts_corrupt_images(tmp_path):
    _write_folder(tmp_path)
    ds = build_dataset("imagefolder", "train", root=str(tmp_path), img_size=16)
    assert isinstance(ds, SafeImageFolder) and len(ds) == 6 and ds.class_names == ["cat", "dog"]
    with pytest.warns(UserWarning, match="1.png"):
        x1, y1 = ds[1]
    x2, y2 = ds[2]
    assert torch.equal(x1, x2) and y1 == y2 == 0  # replaced by the next readable sample
    assert x1.shape == (3, 16, 16) and 0.0 <= float(x1.min()) and float(x1.max()) <= 1.0
    assert ds.num_skipped == 1
    # A whole epoch through two worker processes: no crash, labels right, skips counted across workers.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(DataLoader(ds, batch_size=2, num_workers=2))
    assert torch.cat([y for _, y in batches]).tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.num_skipped == 2
    assert ds.reset_skipped() == 2 and ds.num_skipped == 0
    # The dog images are blue: class folders map to the right labels.
    xd, yd = ds[4]
    assert yd == 1 and xd[2].mean() > xd[0].mean()


def test_imagefolder_missing_folder_names_path(tmp_path):
    _write_folder(tmp_path)
    with pytest.raises(UserError) as e:
        build_dataset("imagefolder", "test", root=str(tmp_path))
    assert os.path.join(str(tmp_path), "test") in str(e.value)
    info = dataset_info("imagefolder", root=str(tmp_path), img_size=64)
    assert info.class_names == ["cat", "dog"] and info.num_classes == 2 and info.img_size == 64


def test_probe_folder_reads_all_images_without_labels(tmp_path):
    _write_folder(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = ProbeFolder(str(tmp_path / "val"), img_size=8)
        assert len(ds) == 6 and all(ds[i][1] == -1 for i in range(len(ds)))
    assert ds.paths == sorted(ds.paths)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        ProbeFolder(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="nothing_here"):
        ProbeFolder(str(tmp_path / "nothing_here"))


@pytest.mark.parametrize("side", [40, 50], ids=["bomb warning", "bomb error"])
def test_imagefolder_skips_and_counts_a_decompression_bomb(tmp_path, monkeypatch, side):
    """Over PIL's pixel limit (1000 here): 40x40 only warns in PIL, 50x50 (over twice the limit) raises; both
    are skipped and counted like a corrupt file instead of being decoded or stopping the epoch."""
    from PIL import Image

    _write_folder(tmp_path)
    Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(tmp_path / "train" / "dog" / "0.png")  # index 3
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    ds = build_dataset("imagefolder", "train", root=str(tmp_path), img_size=16)
    with pytest.warns(UserWarning, match="0.png.*too large"):
        x, y = ds[3]
        assert y == 1 and torch.equal(x, ds[4][0])  # the next readable dog image stands in
    assert ds.num_skipped == 1


def test_a_size_of_zero_is_an_error_not_the_default_size():
    with pytest.raises(UserError, match="size must be >= 1"):
        build_dataset("synthetic", "train", size=0)
    assert len(build_dataset("synthetic", "val", size=3)) == 3
