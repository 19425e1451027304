"""Built-in open-vocabulary and class-name concept sets: sizes, frequency order, stop words, the class filter."""

import re

import pytest

from lwtakit.concept_sets import (
    CIFAR100,
    STOP_WORDS,
    concepts_for,
    drop_class_words,
    load_concepts,
    places365,
)
from lwtakit.errors import UserError

wordfreq = pytest.importorskip("wordfreq")

# Written here independently of the package's list: words no concept set may hold.
FUNCTION_WORDS = {"the", "and", "of", "to", "a", "in", "is", "it", "you", "that", "he", "was", "for", "on", "are",
                  "with", "as", "they", "be", "at", "this", "have", "from", "or", "by", "but", "not", "what", "all",
                  "were", "we", "when", "your", "can", "there", "which", "their", "if", "do", "will", "would"}


@pytest.mark.parametrize("name,size", [("words20k", 20_000), ("words10k", 10_000), ("words3k", 3_000)])
def test_word_sets_are_the_most_frequent_content_words_in_frequency_order(name, size):
    words = load_concepts(name)
    assert len(words) == size == len(set(words))
    assert not FUNCTION_WORDS & set(words)
    # Independent: walk wordfreq's ranking, keep lower-case letter words of 2+ letters outside the stop list.
    expected = []
    for w in wordfreq.top_n_list("en", 4 * size):
        if re.fullmatch(r"[a-z]+(-[a-z]+)*", w) and len(w.replace("-", "")) >= 2 and w not in STOP_WORDS \
                and w not in expected:
            expected.append(w)
        if len(expected) == size:
            break
    assert words == expected
    freq = [wordfreq.word_frequency(w, "en") for w in words[:500]]
    assert all(a >= b for a, b in zip(freq, freq[1:], strict=False))


def test_smaller_word_sets_are_prefixes_of_the_larger():
    assert load_concepts("words20k")[:3000] == load_concepts("words3k")


def test_a_missing_wordfreq_is_one_line_naming_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wordfreq", None)  # import wordfreq now raises ImportError
    with pytest.raises(UserError, match=r'pip install "lwtakit\[words\]"'):
        load_concepts("words3k")


def test_class_filter_removes_planted_near_duplicates_and_says_how_many():
    classes = ["dog", "aquarium_fish", "Box", "strawberry"]
    planted = ["dog", "dogs", "fish", "fishes", "box", "boxes", "Strawberries", "aquarium fish"]
    unrelated = ["puppy", "aquarium", "water", "red", "doge", "boxer", "straw"]
    kept, removed = drop_class_words(unrelated[:3] + planted + unrelated[3:], classes)
    assert kept == unrelated and sorted(removed) == sorted(planted)
    concepts, note = concepts_for("words3k", classes, drop_classes=True)
    base = load_concepts("words3k")
    gone = [w for w in base if w in {"dog", "dogs", "fish", "fishes", "box", "boxes", "strawberry", "strawberries"}]
    assert concepts == [w for w in base if w not in gone]
    assert f"{len(gone)} removed as too close to a class name" in note and len(gone) >= 4
    assert concepts_for("words3k", classes)[0] == base  # the filter only on request


def test_classes_builtin_is_the_probe_sets_class_names():
    assert load_concepts("classes", ["maple_tree", "dog"]) == ["maple tree", "dog"]
    with pytest.raises(UserError, match="has none"):
        load_concepts("classes", None)
    assert load_concepts("cifar100") == CIFAR100


def test_places365_names_come_from_the_datasets_categories_file(tmp_path):
    with pytest.raises(UserError, match="categories_places365.txt"):
        load_concepts(f"places365:{tmp_path}")
    rows = ["/a/airfield 0", "/a/apartment_building/outdoor 1", "/b/bakery/shop 2"]
    (tmp_path / "categories_places365.txt").write_text("\n".join(rows) + "\n")
    assert load_concepts(f"places365:{tmp_path}") == ["airfield", "apartment building outdoor", "bakery shop"]
    bad = tmp_path / "bad.txt"
    bad.write_text("/a/airfield 0\n/a/arch 5\n")
    with pytest.raises(UserError, match="bad.txt line 2"):
        places365(bad)
