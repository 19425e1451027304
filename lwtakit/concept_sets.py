"""Concept sets for open-vocabulary labelers (CLIP-Dissect, captions): text files or built-in sets.

A concept set is a list of short phrases. ``load_concepts(spec)`` accepts a path to a text file (one
concept a line) or the name of a built-in set (:data:`BUILTINS`):

- class names, in class order (index i = class i), so final-layer labels can be scored against the class of
  each output unit: ``mnist``, ``cifar10``, ``cifar100``, ``imagenet`` (from torchvision's metadata),
  ``places365[:PATH]`` (read from the dataset's own ``categories_places365.txt``) and ``classes`` (the probe
  set's own class names); multi-word names use spaces (``"aquarium fish"``), which is what a CLIP text
  encoder expects;
- the open vocabularies of CLIP-Dissect and DISCOVER (Oikarinen & Weng 2023, Sec. 4): ``words20k``,
  ``words10k``, ``words3k``, the N most frequent English words by ``wordfreq`` (offline; ``pip install
  "lwtakit[words]"``) after :func:`is_content_word` (stop words, numbers, symbols, abbreviations and single
  letters out), most frequent first.

For final-layer evaluation against class names, :func:`drop_class_words` removes the words too close to a
class name (the name, the last word of a multi-word name, or their plural/singular), so that a label cannot
match a class by spelling alone; :func:`concepts_for` applies it on request and says how many it removed.
"""

from __future__ import annotations

import os
import re
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


# English function words (pronouns, determiners, prepositions, conjunctions, auxiliaries, common adverbs) and the
# pieces a tokenizer leaves of contractions ("ll", "ve"): they name nothing a unit could detect.
STOP_WORDS = frozenset("""
a about above across after again against all almost along already also although always am among an and another
any anybody anyone anything anyway anywhere are around as at away be became because become been before behind
being below beside besides between beyond both but by can cannot could did do does doing done down during each
either else enough etc even ever every everybody everyone everything everywhere few for from further had has have
having he her here hers herself him himself his how however if in indeed inside into is it its itself just least
less let like many may me might mine more most much must my myself near neither never nevertheless next no nobody
none nor not nothing now nowhere of off often on once one only onto or other others otherwise our ours ourselves
out outside over own per perhaps quite rather really same several shall she should since so some somebody someone
something sometimes somewhere still such than that the their theirs them themselves then there therefore these
they this those though through throughout thus to together too toward towards under unless until up upon us very
via was we well were what whatever when whenever where whereas wherever whether which while who whoever whom whose
why will with within without would yet you your yours yourself yourselves
ll ve re nt im st nd rd th oh ok yeah yes hey hi ah um
""".split())

WORD_SETS = {"words20k": 20_000, "words10k": 10_000, "words3k": 3_000}
_CONTENT_WORD = re.compile(r"[a-z]{2,}(?:-[a-z]+)*")
PLACES365_FILE = "categories_places365.txt"
PLACES365_ROOT = "data/places365"  # configs/data/places365.yaml's data.root


def is_content_word(word: str) -> bool:
    """Whether ``word`` may be a concept: ASCII letters (hyphens inside allowed), two or more, not a stop word."""
    return bool(_CONTENT_WORD.fullmatch(word)) and word not in STOP_WORDS


def common_words(n: int) -> list[str]:
    """The ``n`` most frequent English content words (:func:`is_content_word`), most frequent first, by
    ``wordfreq``'s ``top_n_list('en')`` (Speer 2022; data inside the package, no network)."""
    try:
        import wordfreq
    except ImportError:
        raise UserError('the word concept sets need the wordfreq package; pip install "lwtakit[words]"') from None
    words: list[str] = []
    pool = 2 * n
    while len(words) < n:
        ranked = wordfreq.top_n_list("en", pool)
        words = [w for w in dict.fromkeys(ranked) if is_content_word(w)][:n]
        if len(ranked) < pool:  # the word list is exhausted
            break
        pool *= 2
    if len(words) < n:
        raise UserError(f"wordfreq's English list has only {len(words)} content words, fewer than {n}")
    return words


def _imagenet() -> list[str]:
    # The 1000 ImageNet-1k class names ship inside torchvision (weights metadata): no download needed.
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def places365(path: str | os.PathLike | None = None) -> list[str]:
    """The Places365 class names in class order, from the dataset's ``categories_places365.txt`` (torchvision's
    Places365 layout: lines ``/a/apartment_building/outdoor 8``) at ``path`` (the file or the folder holding
    it; default ``data/places365``). Names drop the ``/a/`` prefix and read ``apartment building outdoor``."""
    path = Path(path or PLACES365_ROOT).expanduser()
    file = path / PLACES365_FILE if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"concept set places365 reads the class names from Places365's {PLACES365_FILE}; none at "
                        f"{file}; give places365:PATH (the file, or the data folder that holds it)")
    names = []
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        match = re.fullmatch(r"/[a-z]/(\S+)\s+(\d+)", line.strip())
        if match is None or int(match.group(2)) != len(names):
            raise UserError(f"{file} line {n}: expected '/x/class_name {len(names)}' (class names in index order), "
                            f"got {line.strip()[:60]!r}")
        names.append(match.group(1).replace("/", " ").replace("_", " "))
    if not names:
        raise UserError(f"{file} names no class; it should be Places365's {PLACES365_FILE}")
    return names


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
    "places365": places365,
    **{name: (lambda n=n: common_words(n)) for name, n in WORD_SETS.items()},
}
CLASSES = "classes"  # the probe set's own class names


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


def load_concepts(spec: str | os.PathLike, class_names: list[str] | None = None) -> list[str]:
    """Concepts from a text file path or a built-in name (:data:`BUILTINS`, ``places365:PATH``, or ``classes``:
    ``class_names``, the probe set's own). A file named like a built-in wins."""
    spec_str = str(spec).strip()
    name, _, arg = spec_str.partition(":")
    if Path(spec_str).expanduser().is_file():
        return read_concept_file(Path(spec_str).expanduser())
    if name.lower() == CLASSES:
        if not class_names:
            raise UserError("concept set 'classes' takes the probe set's class names, but this probe set has none; "
                            "choose a built-in set or a concept file")
        return [str(c).replace("_", " ") for c in class_names]
    if name.lower() == "places365":
        return places365(arg or None)
    if spec_str.lower() in BUILTINS:
        return BUILTINS[spec_str.lower()]()
    raise UserError(
        f"concept set {spec_str!r} is neither a file nor a built-in set; built-ins: {', '.join(BUILTINS)}, "
        f"{CLASSES}; or give a text file with one concept per line"
    )


def _forms(word: str) -> set[str]:
    """``word`` and its regular singular/plural forms (``box``/``boxes``, ``berry``/``berries``, ``dog``/``dogs``)."""
    forms = {word, word + "s", word + "es"}
    if word.endswith("ies"):
        forms.add(word[:-3] + "y")
    if word.endswith("y"):
        forms.add(word[:-1] + "ies")
    if word.endswith("es"):
        forms.add(word[:-2])
    if word.endswith("s"):
        forms.add(word[:-1])
    return forms


def drop_class_words(concepts: list[str], class_names: list[str]) -> tuple[list[str], list[str]]:
    """``(kept, removed)``: a concept is removed when it is a class name, the last word (head noun) of a
    multi-word class name, or a regular plural/singular form of either (case, ``_`` and ``-`` ignored), e.g.
    ``dogs`` for class ``dog`` and ``fish`` for class ``aquarium fish``. Spelling only: synonyms (``puppy``)
    and modifiers (``aquarium``) stay."""
    taken: set[str] = set()
    for name in class_names:
        words = _key(str(name)).split()
        if words:
            taken |= _forms(" ".join(words)) | _forms(words[-1])
    kept, removed = [], []
    for concept in concepts:
        (removed if _key(concept) in taken else kept).append(concept)
    return kept, removed


def _key(text: str) -> str:
    return " ".join(text.lower().replace("_", " ").replace("-", " ").split())


def concepts_for(spec: str | os.PathLike, class_names: list[str] | None, drop_classes: bool = False
                 ) -> tuple[list[str], str]:
    """The concept set ``spec`` (:func:`load_concepts`) and a one-line note saying what it is; with
    ``drop_classes`` the concepts too close to a class name are removed (:func:`drop_class_words`) and the note
    says how many and which."""
    concepts = load_concepts(spec, class_names)
    note = f"concept set {spec}: {len(concepts)} concepts"
    if not drop_classes:
        return concepts, note
    if not class_names:
        raise UserError("removing the concepts close to class names needs class names, but the probe set has none")
    kept, removed = drop_class_words(concepts, class_names)
    if not kept:
        raise UserError(f"concept set {spec}: every concept is close to a class name; nothing is left to label with")
    shown = ", ".join(removed[:8]) + (", ..." if len(removed) > 8 else "")
    return kept, (f"concept set {spec}: {len(kept)} concepts; {len(removed)} removed as too close to a class name "
                  f"(the name, its last word, or their plural){': ' + shown if removed else ''}")
