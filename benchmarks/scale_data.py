"""Synthetic inputs of the scale benchmark (``dissect_speed.py --part scale``), all seeded, nothing downloaded.

* :func:`pronounceable_words`: a concept set of generated consonant-vowel words (CLIP-Dissect's 20k-word set
  stands in for the paper's 20,000 most common English words; timing does not depend on what the words mean);
* :func:`random_hierarchy`: classes under a random tree of hypernyms (INVERT's ImageNet classes + WordNet
  hypernyms, Bykov et al. 2023, Sec. 4: 1,000 classes + 473 groups = 1,473 concepts);
* :class:`SyntheticImages`: N images of a given side with class labels, made on the fly from a small bank
  (memory O(bank), not O(N): 50,000 224-px images would be 7.5 GB as uint8);
* :func:`planted_units`: activations whose units follow a planted length-3 formula, so INVERT's beam search
  runs every step (on pure noise parsimony stops it after length 1) and its result can be checked.
"""

from __future__ import annotations

import random

import torch

from lwtakit.hierarchy import Hierarchy

ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gl", "kr", "pl",
          "st", "tr", "sh", "ch"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]
CODAS = ["", "", "", "n", "r", "l", "s", "m"]


def pronounceable_words(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct words of 2-4 (onset, vowel, optional coda) syllables, the same for the same seed."""
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    while len(seen) < n:
        syllables = rng.randint(2, 4)
        word = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables))
        seen.setdefault(word)
    return list(seen)


def random_hierarchy(class_names: list[str], groups: int, seed: int = 0) -> Hierarchy:
    """A random tree of ``groups`` hypernyms over ``class_names``: four levels whose sizes shrink by about 4x
    (473 groups: 355, 88, 24, 6), every group with at least one child, so each ancestor covers some classes."""
    rng = random.Random(seed)
    sizes, left = [], groups
    for level in range(3):
        size = max(1, round(left * 3 / 4)) if level < 2 else max(1, left - max(1, left // 5))
        size = min(size, left - (3 - level))  # leave at least one group for each level above
        sizes.append(size)
        left -= size
    sizes.append(left)
    levels = [[f"group{lv}_{i:03d}" for i in range(size)] for lv, size in enumerate(sizes)]
    parents: dict[str, tuple[str, ...]] = {}
    for children, above in zip([class_names, *levels[:-1]], levels, strict=True):
        order = list(children)
        rng.shuffle(order)
        for i, child in enumerate(order):  # the first len(above) children give every group one child
            parents[child] = (above[i] if i < len(above) else rng.choice(above),)
    spelling = {name: name for name in [*class_names, *(g for lv in levels for g in lv)]}
    return Hierarchy("random hierarchy (seeded)", parents, spelling, {c: "generated" for c in parents})


class SyntheticImages(torch.utils.data.Dataset):
    """``n`` images [3, side, side] in [0, 1] with class labels in ``range(classes)``: image ``i`` is bank image
    ``i % bank`` circularly shifted by an offset drawn from ``i`` (distinct images at the cost of one copy)."""

    def __init__(self, n: int, side: int = 224, classes: int = 1000, seed: int = 0, bank: int = 64):
        g = torch.Generator().manual_seed(seed)
        self.n, self.side, self.seed = n, side, seed
        self.bank = torch.randint(0, 256, (bank, 3, side, side), dtype=torch.uint8, generator=g)
        self.labels = torch.randint(0, classes, (n,), generator=g)
        self.shifts = torch.randint(0, side, (n, 2), generator=g)
        self.class_names = [f"class{c:04d}" for c in range(classes)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        img = self.bank[i % len(self.bank)].roll(tuple(self.shifts[i].tolist()), dims=(1, 2))
        return img.float().div_(255), int(self.labels[i])

    def content_hash(self) -> str:
        """What determines every image (the CLIP embedding cache's key; saves hashing N images)."""
        return f"synthetic-images:{self.seed}:{self.n}:{self.side}:{len(self.bank)}:{len(self.class_names)}"


def class_concepts(n: int, hierarchy: Hierarchy, class_names: list[str], seed: int = 0):
    """``(names, labels bool [n, K + A], membership bool [K, K + A])``: ``n`` images with seeded random classes,
    positive for their class and each of its ancestors (:meth:`Hierarchy.bind`)."""
    names, membership = hierarchy.bind(class_names)
    classes = torch.randint(0, len(class_names), (n,), generator=torch.Generator().manual_seed(seed))
    return names, torch.from_numpy(membership[classes.numpy()]), torch.from_numpy(membership)


def planted_units(labels: torch.Tensor, membership: torch.Tensor, units: int, seed: int = 0, noise: float = 1.0):
    """``(acts [N, units] float32, truth bool [N, units])``: unit ``u`` is ``truth[:, u] + noise * randn``, its
    truth the length-3 formula ``(a OR b) AND NOT c`` over concept columns of ``labels`` (classes' concepts
    ``membership``), with ``c`` a strict sub-concept of ``a`` (in a tree of concepts, the only ``NOT`` that
    changes ``a``) and ``b`` disjoint from ``a``."""
    g = torch.Generator().manual_seed(seed)
    M = membership.float()
    size = M.sum(0)  # classes under each concept
    shared = M.t() @ M  # [K, K] classes under both
    inside = (shared == size[:, None]) & (size[:, None] < size[None, :])  # [c, a]: c strictly under a
    frac = labels.float().mean(0)
    parents = torch.nonzero((frac >= 0.01) & (frac <= 0.2) & inside.any(0)).flatten()
    truth = torch.empty(labels.shape[0], units, dtype=torch.bool)

    def pick(candidates: torch.Tensor) -> int:
        return int(candidates[torch.randint(len(candidates), (1,), generator=g)])

    for u in range(units):
        a = pick(parents)
        c = pick(torch.nonzero(inside[:, a]).flatten())
        b = pick(torch.nonzero((shared[a] == 0) & (frac >= 0.005) & (frac <= 0.2)).flatten())
        truth[:, u] = (labels[:, a] | labels[:, b]) & ~labels[:, c]
    acts = truth.float() + noise * torch.randn(truth.shape, generator=g)
    return acts, truth
