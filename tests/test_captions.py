"""Captions labeler: phrase extraction, captioning once per image, CLIP-Dissect rescoring, CoCa wiring."""

import open_clip
import pytest
import torch

from lwtakit import clip as lclip
from lwtakit.errors import UserError
from lwtakit.labelers import captions, clip_dissect

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY_COCA = {  # CoCa needs embed_dim == text width == multimodal width (image tokens feed the decoder)
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16,
                   "attentional_pool": True, "attn_pooler_heads": 2, "output_tokens": True},
    "text_cfg": {"context_length": 76, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                 "embed_cls": True, "output_tokens": True},
    "multimodal_cfg": {"context_length": 76, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                       "attn_pooler_heads": 2},
    "custom_text": True,
}

COLOURS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.1), "blue": (0.1, 0.2, 0.9)}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    torch.manual_seed(0)
    folder = lclip.save_local_dir(open_clip.CLIP(**TINY_CLIP), TINY_CLIP, tmp_path_factory.mktemp("clip") / "m")
    return lclip.load_clip(f"local-dir:{folder}")


def _probe(n=60, seed=0):
    """Images of one colour each (+ noise) and the colour index of each image."""
    g = torch.Generator().manual_seed(seed)
    colour = torch.randint(0, 3, (n,), generator=g)
    rgb = torch.tensor(list(COLOURS.values()))[colour]
    images = (rgb[:, :, None, None] + 0.05 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 1)
    return images, colour


class ColourCaptioner:
    """Deterministic caption function: names the dominant colour of each image; counts its calls."""

    def __init__(self):
        self.seen = []

    def __call__(self, images):
        self.seen.extend(images.shape[0] * [None])
        names = list(COLOURS)
        means = images.mean(dim=(2, 3))
        out = []
        for m in means:
            name = names[int(torch.argmax(torch.stack([-(m - torch.tensor(c)).norm() for c in COLOURS.values()])))]
            out.append(f"<start_of_text>a close up photo of a {name} square on a table <end_of_text> xx")
        return out


def test_phrases_of_drops_stop_and_template_words():
    caption = "<start_of_text>A close-up photo of a red car parked on the street, at night.<end_of_text>junk"
    assert captions.clean_caption(caption) == "a close-up photo of a red car parked on the street, at night."
    assert captions.phrases_of(caption) == [
        "red", "car", "parked", "red car", "car parked", "red car parked", "street", "night"]
    assert captions.phrases_of(caption, max_words=1) == ["red", "car", "parked", "street", "night"]


def test_candidate_phrases_counts_once_per_caption():
    caps = ["a dog on a dog bed", "a dog in the grass", "green grass"]
    cands = dict(captions.candidate_phrases(caps))
    assert cands["dog"] == 2 and cands["grass"] == 2 and cands["dog bed"] == 1 and cands["green grass"] == 1
    ranked = captions.candidate_phrases(caps, max_candidates=2)
    assert [p for p, _ in ranked] == ["dog", "grass"]


def test_label_units_rescoring_matches_independent_clip_dissect(clip):
    images, colour = _probe()
    g = torch.Generator().manual_seed(1)
    # Unit c fires on images of colour c; unit 3 on everything a bit.
    acts = torch.stack([(colour == c).float() for c in range(3)] + [torch.ones(len(colour))], 1)
    acts = acts + 0.1 * torch.rand(acts.shape, generator=g)
    captioner = ColourCaptioner()
    rows = captions.label_units(acts, images, clip, captioner, n_images=8, top_k=10, caption_batch=5)

    # Each distinct top image captioned exactly once.
    top = torch.topk(acts, 8, dim=0).indices
    assert len(captioner.seen) == len(set(top.reshape(-1).tolist()))

    # Independent recomputation: candidates of each unit from its own captions, P from the real CLIP.
    caps = dict(enumerate(captioner(images)))
    per_unit = [captions.candidate_phrases([captions.clean_caption(caps[i]) for i in top[:, u].tolist()], 3, 20)
                for u in range(4)]
    vocab = list(dict.fromkeys(p for cands in per_unit for p, _ in cands))
    P = clip.encode_images(images) @ clip.encode_texts(vocab).T
    sim = clip_dissect.similarity(acts, P, "soft_wpmi", top_k=10)
    names = list(COLOURS)
    for u, row in enumerate(rows):
        own = [p for p, _ in per_unit[u]]
        scores = torch.tensor([float(sim[u, vocab.index(p)]) for p in own])
        assert row["label"] == own[int(scores.argmax())]
        assert abs(row["score"] - float(scores.max())) < 1e-5
        assert row["caption"] == captions.clean_caption(caps[int(top[0, u])])
        assert row["count"] == sum(row["label"] in captions.phrases_of(caps[i]) for i in top[:, u].tolist())
        if u < 3:  # colour units: every candidate comes from captions of their own colour
            assert all(names[u] in p or p in ("square", "table") for p in own)
            assert set(row["top5"].split("|")) <= set(own)


def test_bad_caption_function_is_user_error(clip):
    images, colour = _probe(10)
    with pytest.raises(UserError, match="one string per image"):
        captions.label_units(torch.rand(10, 2), images, clip, lambda x: ["only one"], n_images=3)
    with pytest.raises(UserError, match="same probe set"):
        captions.label_units(torch.rand(9, 2), images, clip, ColourCaptioner(), n_images=3)


def test_coca_captioner_generate_or_clear_error(tmp_path):
    torch.manual_seed(0)
    model = open_clip.CoCa(**{k: v for k, v in TINY_COCA.items() if k != "custom_text"})
    folder = lclip.save_local_dir(model, TINY_COCA, tmp_path / "coca")
    coca = lclip.load_clip(f"local-dir:{folder}")
    assert isinstance(coca.model, open_clip.CoCa)
    emb = coca.encode_images(torch.rand(2, 3, 32, 32))
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    captioner = captions.CocaCaptioner(clip=coca, seq_len=8, generation_type="top_k")
    images = torch.rand(2, 3, 32, 32)
    if not open_clip.coca_model._has_transformers:
        with pytest.raises(UserError, match=r"pip install -e \.\[captions\]"):
            captioner(images)
    else:
        texts = captioner(images)
        assert len(texts) == 2 and all(isinstance(c, str) for c in texts)
        assert not any("end_of_text" in c for c in texts)


def test_captioner_rejects_non_coca(clip):
    with pytest.raises(UserError, match="CoCa"):
        captions.CocaCaptioner(clip=clip)


def test_describe_is_now_captions_everywhere_a_user_writes_it():
    from lwtakit.config import from_dict, load_config, to_dict
    from lwtakit.labelers.base import create_labelers

    with pytest.raises(UserError, match="method 'describe' is now 'captions'.*not Describe-and-Dissect"):
        create_labelers(["invert", "describe"])
    assert [lab.name for lab in create_labelers(["captions"])] == ["captions"]
    with pytest.raises(UserError) as info:
        load_config("default", ["dissection.describe.n_images=3"])
    message = str(info.value)
    assert "'dissection.describe' is now 'dissection.captions'" in message
    assert "not Describe-and-Dissect" in message and "\n" not in message
    # A config stored by an earlier version (a checkpoint's) reads with the method and its section renamed.
    old = to_dict(load_config("default"))
    old["dissection"].pop("captions")
    old["dissection"]["methods"] = ["invert", "describe"]
    old["dissection"]["describe"] = {"n_images": 3, "similarity": "cos"}
    cfg = from_dict(old)
    assert list(cfg.dissection.methods) == ["invert", "captions"]
    assert cfg.dissection.captions.n_images == 3 and cfg.dissection.captions.similarity == "cos"
    assert cfg.dissection.captions.max_words == captions.CaptionsConfig().max_words
