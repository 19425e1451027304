"""open_clip loading (local-dir, weights file, offline failure), embeddings and the content-keyed cache."""

import json
import os

import open_clip
import pytest
import torch

from lwtakit import clip as lclip
from lwtakit.errors import UserError

TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random open_clip model saved in open_clip's local-dir layout + a plain config json."""
    root = tmp_path_factory.mktemp("tinyclip")
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CFG)
    folder = lclip.save_local_dir(model, TINY_CFG, root / "model")
    (root / "tiny_clip.json").write_text(json.dumps(TINY_CFG))
    return {"folder": folder, "weights": folder / "open_clip_pytorch_model.bin", "config": root / "tiny_clip.json",
            "model": model}


@pytest.fixture(scope="module")
def clip(tiny):
    return lclip.load_clip(f"local-dir:{tiny['folder']}")


def _images(n=6, seed=0, size=(40, 48)):
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed))


class ImageDataset(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], i % 2


def test_local_dir_and_weights_file_give_same_embeddings(tiny, clip):
    other = lclip.load_clip(str(tiny["config"]), str(tiny["weights"]))
    via_dir_plus_file = lclip.load_clip(f"local-dir:{tiny['folder']}", str(tiny["weights"]))
    x = _images()
    e1, e2, e3 = clip.encode_images(x), other.encode_images(x), via_dir_plus_file.encode_images(x)
    assert e1.shape == (6, 16)
    assert torch.allclose(e1.norm(dim=1), torch.ones(6), atol=1e-5)
    assert torch.equal(e1, e2) and torch.equal(e1, e3)
    assert clip.name == other.name  # identity = weights content, not the path they came from
    t1, t2 = clip.encode_texts(["dog", "red square"]), other.encode_texts(["dog", "red square"])
    assert torch.equal(t1, t2) and torch.allclose(t1.norm(dim=1), torch.ones(2), atol=1e-5)


def test_embeddings_match_open_clip_forward(tiny, clip):
    # Independent path: open_clip's own model + tokenizer, preprocessing written out by hand.
    model = tiny["model"].eval()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))  # already model size: no resize
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        ref_img = torch.nn.functional.normalize(model.encode_image((x - mean) / std), dim=-1)
        tokens = open_clip.get_tokenizer("ViT-B-32")(["a photo of a cat", "a photo of a car"])
        ref_txt = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
    assert torch.allclose(clip.encode_images(x), ref_img, atol=1e-5)
    assert torch.allclose(clip.encode_texts(["cat", "car"], template="a photo of a {}"), ref_txt, atol=1e-5)


def test_deterministic_batches_and_datasets(clip):
    x = _images(7)
    full = clip.encode_images(x, batch_size=7)
    assert torch.allclose(clip.encode_images(x, batch_size=3), full, atol=1e-5)
    assert torch.allclose(clip.encode_images(ImageDataset(x), batch_size=2), full, atol=1e-5)
    gray = torch.rand(2, 1, 32, 32)
    assert torch.allclose(clip.encode_images(gray), clip.encode_images(gray.expand(-1, 3, -1, -1)))
    texts = [f"concept {i}" for i in range(5)]
    assert torch.allclose(clip.encode_texts(texts, batch_size=2), clip.encode_texts(texts), atol=1e-5)


def test_preprocess_resizes_shortest_side_and_centre_crops(clip):
    x = torch.zeros(1, 3, 64, 96)
    x[..., :, 16:80] = 1.0  # the centre crop of the resized image is all ones
    y = clip.preprocess(x)
    assert y.shape == (1, 3, 32, 32)
    expected = (1 - torch.tensor(clip.mean)) / torch.tensor(clip.std)
    assert torch.allclose(y[0, :, :, 2:-2].mean(dim=(1, 2)), expected, atol=1e-4)


def test_offline_download_is_one_user_error(tmp_path):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(UserError) as err:
        lclip.load_clip("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path))
    msg = str(err.value)
    assert "offline" in msg and "clip.pretrained=" in msg and "local-dir:" in msg and "\n" not in msg


def test_bad_specs_are_user_errors(tmp_path, tiny):
    with pytest.raises(UserError, match="unknown CLIP model"):
        lclip.load_clip("ViT-B-3")
    with pytest.raises(UserError, match="unknown pretrained tag"):
        lclip.load_clip("ViT-B-32", "no_such_tag")
    with pytest.raises(UserError, match="open_clip_config.json"):
        lclip.load_clip(f"local-dir:{tmp_path}")
    with pytest.raises(UserError, match="does not exist"):
        lclip.load_clip("ViT-B-32", str(tmp_path / "missing.bin"))
    wrong = tmp_path / "wrong.json"
    cfg = json.loads(json.dumps(TINY_CFG))
    cfg["embed_dim"] = 8
    wrong.write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="do not fit"):
        lclip.load_clip(str(wrong), str(tiny["weights"]))
    with pytest.raises(UserError, match="do not fit model RN50"):
        lclip.load_clip("RN50", str(tiny["weights"]))


def test_image_cache_keyed_by_content(tmp_path, clip):
    x = _images(5)
    calls = clip.calls["images"]
    e1 = lclip.embed_dataset_cached(clip, x, tmp_path, batch_size=2)
    assert clip.calls["images"] == calls + 3
    # Same content under another container (a dataset): hit, no encode call.
    e2 = lclip.embed_dataset_cached(clip, ImageDataset(x.clone()), tmp_path, batch_size=2)
    assert clip.calls["images"] == calls + 3 and torch.equal(e1, e2)
    # One pixel of one image changed: miss, and the new embedding differs for that image only.
    y = x.clone()
    y[3, :, 16:24, 20:28] = 1.0 - y[3, :, 16:24, 20:28]  # centre: survives resize + crop
    e3 = lclip.embed_dataset_cached(clip, y, tmp_path, batch_size=2)
    assert clip.calls["images"] == calls + 6
    assert torch.equal(e3[:3], e1[:3]) and not torch.equal(e3[3], e1[3])
    assert len(list(tmp_path.glob("img_*.pt"))) == 2


def test_image_cache_keyed_by_model_and_preprocessing(tmp_path, tiny, clip):
    x = _images(4)
    lclip.embed_dataset_cached(clip, x, tmp_path)
    torch.manual_seed(1)
    other_weights = lclip.save_local_dir(open_clip.CLIP(**TINY_CFG), TINY_CFG, tmp_path / "other")
    other = lclip.load_clip(f"local-dir:{other_weights}")
    assert other.name != clip.name
    calls = other.calls["images"]
    lclip.embed_dataset_cached(other, x, tmp_path / "cache")
    assert other.calls["images"] == calls + 1
    other.mean = (0.5, 0.5, 0.5)
    lclip.embed_dataset_cached(other, x, tmp_path / "cache")
    assert other.calls["images"] == calls + 2


def test_text_cache_keyed_by_content(tmp_path, clip):
    concepts = ["red", "square", "stripes"]
    calls = clip.calls["texts"]
    t1 = lclip.embed_texts_cached(clip, concepts, tmp_path)
    t2 = lclip.embed_texts_cached(clip, list(concepts), tmp_path)
    assert clip.calls["texts"] == calls + 1 and torch.equal(t1, t2)
    t3 = lclip.embed_texts_cached(clip, ["red", "circle", "stripes"], tmp_path)
    assert clip.calls["texts"] == calls + 2 and not torch.equal(t1[1], t3[1]) and torch.equal(t1[0], t3[0])
    lclip.embed_texts_cached(clip, concepts, tmp_path, template="a photo of {}")
    assert clip.calls["texts"] == calls + 3


def test_corrupt_cache_is_recomputed(tmp_path, clip):
    x = _images(2)
    e = lclip.embed_dataset_cached(clip, x, tmp_path)
    (path,) = tmp_path.glob("img_*.pt")
    path.write_bytes(b"not a torch file")
    assert torch.equal(lclip.embed_dataset_cached(clip, x, tmp_path), e)
    assert torch.load(path, weights_only=True)["emb"].shape == e.shape


def test_dataset_content_hash_hook_is_used(tmp_path, clip):
    class Hashed(ImageDataset):
        def __init__(self, images, digest):
            super().__init__(images)
            self.digest = digest

        def content_hash(self):
            return self.digest

    x = _images(3)
    calls = clip.calls["images"]
    e1 = lclip.embed_dataset_cached(clip, Hashed(x, "v1"), tmp_path)
    e2 = lclip.embed_dataset_cached(clip, Hashed(x, "v1"), tmp_path)
    assert clip.calls["images"] == calls + 1 and torch.equal(e1, e2)
    lclip.embed_dataset_cached(clip, Hashed(x, "v2"), tmp_path)
    assert clip.calls["images"] == calls + 2
