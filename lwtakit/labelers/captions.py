"""Captions: open-vocabulary unit labels from captions of the unit's top images, rescored by CLIP-Dissect.

Not Describe-and-Dissect (Bai et al., 2024), though it borrows its first idea: DnD augments the probe set with
crops, captions attention crops of the top images, summarises the captions into candidates with a language
model and picks the candidate whose generated images the unit responds to most. None of those steps is here;
every step runs locally and deterministically:

1. take the ``n_images`` most activating probe images of each unit;
2. caption them with ``caption_fn`` (a callable ``images [B, 3, H, W] -> list[str]``; by default an
   open_clip CoCa model, :class:`CocaCaptioner`, Yu et al. 2022); each distinct image is captioned once;
3. turn the unit's captions into candidate phrases: lower-cased words, split at stop words and caption
   template words ("a photo of", "close up", ...); every 1..``max_words``-gram of the remaining runs is a
   candidate, counted once per caption; the ``max_candidates`` most frequent are kept;
4. rescore every candidate with the CLIP-Dissect similarity (default soft-WPMI, Oikarinen & Weng 2023,
   Sec. 3) between the unit's activations over the whole probe set and the candidate's CLIP text embedding
   (P = probe image embeddings x candidate text embeddings; the softmax runs over the union of all units'
   candidates);
5. the unit's label is its best-scoring candidate.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from lwtakit.errors import UserError
from lwtakit.labelers import clip_dissect
from lwtakit.labelers.base import CAPTIONER, Context, Labeler, Target, register_labeler, rows_from_dicts
from lwtakit.labelers.configs import CaptionsConfig
from lwtakit.labels import LabelRow

CaptionFn = Callable[[Tensor], Sequence[str]]

TOP = 5  # candidates listed per unit ("top5")

STOP_WORDS = frozenset("""
a an the this that these those there here it its it's is are was were be been being am of in on at to from
by with without into onto over under above below near next beside behind front and or but nor so as than then
for about against between through during before after up down out off some any each every all both few more
most other such no not only own same very can will just has have had having do does did doing he she they we
you i me him her them us my your his their our who whom which what when where why how while one two three
several many lots lot very much also
""".split())

TEMPLATE_WORDS = frozenset("""
photo photograph photos picture pictures image images pic snapshot closeup close-up close view shot
depicting showing shows shown featuring displays displayed stock illustration rendering drawing clipart
""".split())

_SPECIAL = re.compile(r"<\s*start_of_text\s*>|<\s*end_of_text\s*>.*$", re.S)
_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


def clean_caption(text: str) -> str:
    """Drop CoCa's start/end tokens (and anything after the end token), lower-case, collapse spaces."""
    return " ".join(_SPECIAL.sub(" ", text).lower().split())


def phrases_of(caption: str, max_words: int = 3, stop_words: frozenset[str] = STOP_WORDS | TEMPLATE_WORDS
               ) -> list[str]:
    """Candidate phrases of one caption: n-grams (n <= max_words) of runs of non-stop words, in order."""
    runs: list[list[str]] = [[]]
    for word in _WORD.findall(clean_caption(caption)):
        if word in stop_words or word.isdigit():
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append(word)
    out: dict[str, None] = {}
    for run in runs:
        for n in range(1, max_words + 1):
            for i in range(len(run) - n + 1):
                out[" ".join(run[i:i + n])] = None
    return list(out)


def candidate_phrases(captions: Sequence[str], max_words: int = 3, max_candidates: int | None = None
                      ) -> list[tuple[str, int]]:
    """(phrase, number of captions containing it), most frequent first; ties: longer phrase, then first seen."""
    counts: Counter[str] = Counter()
    first: dict[str, int] = {}
    for caption in captions:
        for phrase in phrases_of(caption, max_words):
            counts[phrase] += 1
            first.setdefault(phrase, len(first))
    ranked = sorted(counts, key=lambda p: (-counts[p], -len(p.split()), first[p]))
    if max_candidates is not None:
        ranked = ranked[:max_candidates]
    return [(p, counts[p]) for p in ranked]


def _gather_images(images, indices: Sequence[int]) -> Tensor:
    if isinstance(images, Tensor):
        return images[list(indices)]
    out = []
    for i in indices:
        item = images[i]
        out.append(item[0] if isinstance(item, (tuple, list)) else item)
    return torch.stack(out)


def caption_images(images, indices: Sequence[int], caption_fn: CaptionFn, batch_size: int = 16) -> dict[int, str]:
    """Caption each distinct index once, in batches; returns index -> cleaned caption."""
    unique = list(dict.fromkeys(int(i) for i in indices))
    captions: dict[int, str] = {}
    for s in range(0, len(unique), batch_size):
        chunk = unique[s:s + batch_size]
        texts = caption_fn(_gather_images(images, chunk))
        if isinstance(texts, str) or len(texts) != len(chunk) or not all(isinstance(t, str) for t in texts):
            raise UserError(f"the caption function must return one string per image ({len(chunk)}), got {texts!r:.80}")
        captions.update({i: clean_caption(t) for i, t in zip(chunk, texts, strict=True)})
    return captions


def label_units(acts, images, clip, caption_fn: CaptionFn, config: CaptionsConfig | None = None, *,
                image_emb: Tensor | None = None, cache_dir: str | os.PathLike | None = None, **params) -> list[dict]:
    """Caption labels, one row per unit: ``unit, label, score`` (CLIP-Dissect score of the label by
    ``config.similarity``), ``caption`` (caption of the unit's most activating image), ``count`` (how many of the
    unit's ``config.n_images`` captions contain the label) and ``top5`` (best candidates by score, ``|``-joined).

    ``images``: the probe set (tensor [N, 3, H, W] in [0, 1] or dataset of ``(image, label)``) that
    ``acts`` [N, C] were recorded on; ``clip``: a :class:`lwtakit.clip.Clip` for the rescoring;
    ``image_emb``: its image embeddings of the probe set if already computed. ``params``: fields of
    :class:`CaptionsConfig` (``n_images=8``) override ``config``; the others go to the similarity function
    (:func:`lwtakit.labelers.clip_dissect.similarity`, e.g. ``top_k`` or ``chunk_size``).
    """
    fields = {f.name for f in dataclasses.fields(CaptionsConfig)}
    config = dataclasses.replace(config or CaptionsConfig(), **{k: v for k, v in params.items() if k in fields})
    sim_params = {k: v for k, v in params.items() if k not in fields}
    A = torch.as_tensor(acts).detach().float().cpu()
    if A.ndim != 2:
        raise UserError(f"activations must be [N images, C units]; got shape {tuple(A.shape)}")
    N, C = A.shape
    if len(images) != N:
        raise UserError(f"activations have {N} images but the probe set has {len(images)}; use the same probe set")
    top_idx = torch.topk(A, min(config.n_images, N), dim=0).indices.T  # [C, k], most activating first
    captions = caption_images(images, top_idx.reshape(-1).tolist(), caption_fn, config.caption_batch)
    per_unit = [candidate_phrases([captions[i] for i in top_idx[unit].tolist()], config.max_words,
                                  config.max_candidates) for unit in range(C)]
    vocabulary = {phrase: None for cands in per_unit for phrase, _ in cands}
    if not vocabulary:
        raise UserError("the captions gave no candidate phrases (only stop words?); check the caption function")
    phrases = list(vocabulary)
    sim = _phrase_similarity(A, images, clip, phrases, config.similarity, image_emb, cache_dir, sim_params)
    column = {p: j for j, p in enumerate(phrases)}
    return [_best_candidate(unit, per_unit[unit], sim[unit], column, captions[int(top_idx[unit, 0])])
            for unit in range(C)]


def _phrase_similarity(A: Tensor, images, clip, phrases: list[str], similarity: str, image_emb, cache_dir,
                       sim_params: dict) -> Tensor:
    """CLIP-Dissect similarity [C, len(phrases)] of the units to the candidate phrases."""
    from lwtakit import clip as lclip

    if image_emb is None:
        image_emb = (lclip.embed_dataset_cached(clip, images, cache_dir) if cache_dir is not None
                     else clip.encode_images(images))
    text_emb = (lclip.embed_texts_cached(clip, phrases, cache_dir) if cache_dir is not None
                else clip.encode_texts(phrases))
    return clip_dissect.similarity(A, (image_emb, text_emb), similarity, **sim_params)


def _best_candidate(unit: int, cands: list[tuple[str, int]], sims: Tensor, column: dict[str, int],
                    caption: str) -> dict:
    """The row of one unit: its best candidate phrase by similarity, the best five, and its top caption."""
    if not cands:
        return {"unit": unit, "label": "", "score": float("nan"), "caption": caption, "count": 0, "top5": ""}
    scores = sims[torch.tensor([column[p] for p, _ in cands])]
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    best = order[0]
    return {"unit": unit, "label": cands[best][0], "score": float(scores[best]), "caption": caption,
            "count": cands[best][1], "top5": "|".join(cands[j][0] for j in order[:TOP])}


class CocaCaptioner:
    """Caption images with an open_clip CoCa model (Yu et al., 2022, "CoCa: Contrastive Captioners").

    ``generate`` in open_clip needs ``transformers`` (< 4.56): install it with ``pip install -e .[captions]``.
    Weights load through :func:`lwtakit.clip.load_clip` (tag, local file or ``local-dir:``), so the same
    offline rules apply.
    """

    def __init__(self, model_name: str = "coca_ViT-B-32", pretrained: str | None = "mscoco_finetuned_laion2b_s13b_b90k",
                 device: str = "cpu", seq_len: int = 30, generation_type: str = "beam_search", clip=None,
                 cache_dir: str | None = None):
        from open_clip import CoCa

        from lwtakit import clip as lclip

        self.clip = clip if clip is not None else lclip.load_clip(model_name, pretrained, device, cache_dir)
        if not isinstance(self.clip.model, CoCa):
            raise UserError(f"captioning needs a CoCa model (e.g. coca_ViT-B-32); {model_name} is not one")
        self.seq_len = int(seq_len)
        self.generation_type = generation_type

    def __call__(self, images: Tensor) -> list[str]:
        from open_clip import coca_model, decode

        if not getattr(coca_model, "_has_transformers", False):
            raise UserError("CoCa captioning needs transformers<4.56, which is not installed; "
                            "run: pip install -e .[captions]")
        x = self.clip.preprocess(images)
        model = self.clip.model.eval()
        try:
            with torch.inference_mode():
                ids = model.generate(x, seq_len=self.seq_len, generation_type=self.generation_type)
        except (ImportError, AttributeError, TypeError) as exc:
            # Mismatched transformers versions break open_clip's generate with these errors.
            raise UserError(f"CoCa caption generation failed ({type(exc).__name__}: {str(exc)[:120]}); "
                            "install a compatible transformers: pip install -e .[captions]") from exc
        return [clean_caption(decode(row)) for row in ids.cpu()]


@register_labeler
class CaptionsLabeler(Labeler):
    """Captions of each unit's top images as candidate labels, rescored by a CLIP-Dissect similarity."""

    name = "captions"
    config_class = CaptionsConfig
    needs = frozenset({CAPTIONER})

    def prepare(self, concepts, supply):
        """CLIP for the rescoring (the base class), and the CoCa captioner of ``config.model`` /
        ``config.pretrained`` unless the concepts bring one."""
        concepts = super().prepare(concepts, supply)
        if concepts.captioner is not None:
            return concepts
        captioner = supply.weights(lambda: CocaCaptioner(self.config.model, self.config.pretrained,
                                                         device=supply.device), "captioner")
        return dataclasses.replace(concepts, captioner=captioner)

    def label(self, target: Target, ctx: Context) -> list[LabelRow]:
        dicts = label_units(target.acts, ctx.probe, ctx.concepts.clip, ctx.concepts.captioner, self.config,
                            image_emb=ctx.clip_embeddings()[0], cache_dir=ctx.concepts.clip_cache_dir)
        return rows_from_dicts(dicts, target, self.name)
