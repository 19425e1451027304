"""Concept sets: text files (cleaned) and built-in sets."""

import pytest

from lwtakit.concept_sets import BUILTINS, load_concepts, read_concept_file
from lwtakit.errors import UserError


def test_file_is_stripped_deduplicated_in_order(tmp_path):
    path = tmp_path / "concepts.txt"
    path.write_text("  dog\ncat\n\n   \ndog\nred car  \ncat\n")
    assert load_concepts(str(path)) == ["dog", "cat", "red car"]
    assert read_concept_file(path) == ["dog", "cat", "red car"]


def test_empty_or_missing_file_is_user_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(UserError, match="empty.txt"):
        load_concepts(str(empty))
    with pytest.raises(UserError, match="built-ins: synthetic, mnist, cifar10, cifar100, imagenet"):
        load_concepts(str(tmp_path / "nope.txt"))
    with pytest.raises(UserError, match="built-ins"):
        load_concepts("imagenet21k")


def test_builtin_sets():
    assert load_concepts("mnist") == ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    cifar10 = load_concepts("cifar10")
    assert len(cifar10) == 10 and cifar10[0] == "airplane" and cifar10[-1] == "truck"
    cifar100 = load_concepts("CIFAR100")
    # CIFAR-100 fine labels are numbered in alphabetical order of their (underscored) names.
    assert len(set(cifar100)) == 100
    underscored = [c.replace(" ", "_") for c in cifar100]
    assert underscored == sorted(underscored)
    imagenet = load_concepts("imagenet")
    assert len(imagenet) == 1000 and len(set(imagenet)) == 1000
    assert imagenet[0] == "tench" and imagenet[207] == "golden retriever"
    assert set(BUILTINS) == {"synthetic", "mnist", "cifar10", "cifar100", "imagenet", "places365", "words20k",
                             "words10k", "words3k"}


def test_synthetic_set_matches_dataset_concepts():
    synthetic = pytest.importorskip("lwtakit.data.synthetic")
    concepts = load_concepts("synthetic")
    assert concepts == synthetic.ConceptShapes(size=1).concept_names
    assert "red" in concepts and "circle" in concepts and len(set(concepts)) == len(concepts)


def test_a_file_named_like_a_builtin_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mnist").write_text("my concept\n")
    assert load_concepts("mnist") == ["my concept"]


def test_concept_file_saved_with_a_byte_order_mark_reads_the_first_concept_clean(tmp_path):
    path = tmp_path / "names.txt"
    path.write_bytes("red\ngreen\n".encode("utf-8-sig"))
    assert read_concept_file(path) == ["red", "green"]
