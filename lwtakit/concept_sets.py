"""Concept sets for open-vocabulary labelers (CLIP-Dissect, Describe): text files or built-in sets.

A concept set is a list of short phrases. ``load_concepts(spec)`` accepts a path to a text file (one
concept a line) or the name of a built-in set (:data:`BUILTINS`). Built-in class-name sets keep the class
order (index i = class i), so final-layer labels can be scored against the class of each output unit;
multi-word names use spaces (``"aquarium fish"``), which is what a CLIP text encoder expects — compare
with dataset class names after replacing ``_`` by a space.
"""

from __future__ import annotations

import os
from pathlib import Path

from lwtakit.errors import UserError

MNIST = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

CIFAR100 = [
    "apple", "aquarium fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn mower", "leopard", "lion", "lizard", "lobster", "man", "maple tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak tree", "orange", "orchid", "otter", "palm tree", "pear", "pickup truck", "pine tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow tree", "wolf", "woman", "worm",
]


def _imagenet() -> list[str]:
    # The 1000 ImageNet-1k class names ship inside torchvision (weights metadata): no download needed.
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _synthetic() -> list[str]:
    # Lazy: the synthetic dataset module belongs to another part and may import heavier things.
    try:
        from lwtakit.data import synthetic
    except ImportError as exc:
        raise UserError(f"built-in concept set 'synthetic' needs lwtakit.data.synthetic ({exc})") from exc
    # The ConceptShapes vocabulary: attribute -> values; each value is a concept, in dataset order.
    attributes = getattr(synthetic, "ATTRIBUTES", None)
    if not isinstance(attributes, dict):
        raise UserError("lwtakit.data.synthetic exposes no ATTRIBUTES; cannot build the 'synthetic' concept set")
    return [str(v) for values in attributes.values() for v in values]


BUILTINS = {
    "synthetic": _synthetic,
    "mnist": lambda: list(MNIST),
    "cifar10": lambda: list(CIFAR10),
    "cifar100": lambda: list(CIFAR100),
    "imagenet": _imagenet,
}


def read_concept_file(path: str | os.PathLike) -> list[str]:
    """One concept a line: stripped, blank lines and repeats dropped (first occurrence kept); a UTF-8 BOM is dropped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # files saved by Windows editors start with a BOM
    except UnicodeDecodeError as exc:
        raise UserError(f"concept file {path} is not UTF-8 text; give one concept per line") from exc
    except OSError as exc:
        raise UserError(f"cannot read concept file {path}: {exc.strerror}") from exc
    seen: dict[str, None] = {}
    for line in text.splitlines():
        concept = line.strip()
        if concept and concept not in seen:
            seen[concept] = None
    if not seen:
        raise UserError(f"concept file {path} has no concepts; write one concept per line")
    return list(seen)


def load_concepts(spec: str | os.PathLike) -> list[str]:
    """Concepts from a text file path or a built-in name (``synthetic, mnist, cifar10, cifar100, imagenet``)."""
    spec_str = str(spec).strip()
    if spec_str.lower() in BUILTINS and not Path(spec_str).is_file():
        return BUILTINS[spec_str.lower()]()
    path = Path(spec_str).expanduser()
    if path.is_file():
        return read_concept_file(path)
    raise UserError(
        f"concept set {spec_str!r} is neither a file nor a built-in set; built-ins: {', '.join(BUILTINS)}; "
        "or give a text file with one concept per line"
    )
