"""Concept hierarchies (INVERT's hypernym concepts): file validation, label expansion, planted truth end to end."""

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import analyze
from lwtakit.dissect import ConceptSource
from lwtakit.errors import UserError
from lwtakit.hierarchy import read_hierarchy

CLASSES = ["beagle", "poodle", "tabby_cat", "siamese", "sedan", "pickup"]
PARENTS = """# child,parent
beagle,dog
poodle,dog
tabby cat,cat
siamese,cat
dog,animal
cat,animal

sedan,car
pickup,car
"""
# Written out by hand: every class's ancestors.
ANCESTORS = {"beagle": {"dog", "animal"}, "poodle": {"dog", "animal"}, "tabby_cat": {"cat", "animal"},
             "siamese": {"cat", "animal"}, "sedan": {"car"}, "pickup": {"car"}}


def write(path, text):
    path.write_text(text)
    return path


def test_class_labels_expand_to_every_ancestor(tmp_path):
    hierarchy = read_hierarchy(write(tmp_path / "parents.csv", PARENTS))
    concepts = ConceptSource.from_dataset(SimpleNamespace(class_names=CLASSES), hierarchy=hierarchy)
    assert concepts.names == CLASSES + ["dog", "cat", "animal", "car"]
    assert concepts.clip_concepts == concepts.names
    y = np.random.default_rng(0).integers(0, len(CLASSES), 50)
    labels = concepts.resolved(SimpleNamespace(labels=torch.from_numpy(y))).labels
    for i, c in enumerate(y):
        cls = CLASSES[c]
        expected = [name == cls or name in ANCESTORS[cls] for name in concepts.names]
        assert labels[i].tolist() == expected


def test_json_parent_map_reads_like_the_csv(tmp_path):
    data = {"beagle": "dog", "poodle": ["dog"], "tabby_cat": "cat", "siamese": "cat", "dog": "animal",
            "cat": ["animal"], "sedan": "car", "pickup": "car"}
    a = read_hierarchy(write(tmp_path / "p.json", json.dumps(data))).bind(CLASSES)
    b = read_hierarchy(write(tmp_path / "p.csv", PARENTS)).bind(CLASSES)
    assert a[0] == b[0] and (a[1] == b[1]).all()


@pytest.mark.parametrize("text,fragments", [
    ("beagle,dog\npoodle\n", ["line 2", "child,parent"]),
    ("beagle,dog\npoodle,,dog\n", ["line 2"]),
    ("beagle,dog\nwolfhound,dog\nbasenji,dog\n", ["2 children", "'wolfhound' (line 2)", "'basenji' (line 3)"]),
    ("beagle,dog\ndog,canine\ncanine,dog\n", ["cycle", "dog -> canine -> dog"]),
    ("husky,dog\n", ["'husky'"]),
])
def test_bad_hierarchy_is_one_line_naming_the_place(tmp_path, text, fragments):
    with pytest.raises(UserError) as info:
        read_hierarchy(write(tmp_path / "parents.csv", text)).bind(CLASSES)
    message = str(info.value)
    assert "\n" not in message and all(f in message for f in fragments), message


def test_bad_json_names_the_key(tmp_path):
    with pytest.raises(UserError, match="key 'beagle'"):
        read_hierarchy(write(tmp_path / "p.json", '{"beagle": 3}'))


def mann_whitney_auc(a, positive):
    """AUC by its definition: the share of (positive, negative) pairs ordered right, ties counting half."""
    pos, neg = a[positive][:, None], a[~positive][None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def test_a_unit_of_the_union_of_a_parents_classes_gets_the_parent(tmp_path, capsys):
    rng = np.random.default_rng(1)
    y = rng.integers(0, len(CLASSES), 600)
    planted = {0: {"beagle", "poodle"}, 1: {"tabby_cat", "siamese"}, 2: {"sedan"}}  # unit -> classes it fires for
    expected = {0: "dog", 1: "cat", 2: "sedan"}
    member = {u: np.isin(np.array(CLASSES)[y], sorted(cs)) for u, cs in planted.items()}
    acts = np.stack([member[u] + 0.6 * rng.standard_normal(len(y)) for u in range(3)], 1)
    np.save(tmp_path / "A.npy", acts)
    np.save(tmp_path / "L.npy", np.eye(len(CLASSES), dtype=bool)[y])
    write(tmp_path / "names.txt", "\n".join(CLASSES) + "\n")
    write(tmp_path / "parents.csv", PARENTS)
    out = tmp_path / "labels.csv"
    argv = ["label", "--activations", tmp_path / "A.npy", "--method", "invert", "--concept-labels",
            tmp_path / "L.npy", "--concept-names", tmp_path / "names.txt", "--out", out]
    assert analyze.main([str(a) for a in argv + ["--hierarchy", tmp_path / "parents.csv"]]) == 0
    with open(out, newline="") as fh:
        rows = {int(r["unit"]): r for r in csv.DictReader(fh)}
    for unit, label in expected.items():
        assert rows[unit]["label"] == label
        assert float(rows[unit]["auc"]) == pytest.approx(mann_whitney_auc(acts[:, unit], member[unit]), abs=1e-9)
    # Without the hierarchy the parent is not a concept: the union unit falls back to one of its classes.
    assert analyze.main([str(a) for a in argv]) == 0
    with open(out, newline="") as fh:
        assert next(csv.DictReader(fh))["label"] in {"beagle", "poodle"}
    capsys.readouterr()


def test_hierarchy_with_a_similarity_method_is_refused(tmp_path, capsys):
    np.save(tmp_path / "A.npy", np.zeros((4, 1)))
    write(tmp_path / "names.txt", "a\n")
    code = analyze.main(["label", "--activations", str(tmp_path / "A.npy"), "--method", "soft_wpmi",
                         "--concept-names", str(tmp_path / "names.txt"), "--out", str(tmp_path / "o.csv"),
                         "--hierarchy", str(write(tmp_path / "p.csv", "a,b\n"))])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--method invert" in err[0]


def test_config_takes_the_hierarchy_and_the_class_word_filter(tmp_path):
    from lwtakit.config import load_config

    cfg = load_config("default", [f"dissection.hierarchy={tmp_path / 'p.csv'}", "dissection.drop_class_words=true"])
    assert cfg.dissection.hierarchy == str(tmp_path / "p.csv") and cfg.dissection.drop_class_words is True
    assert load_config("default").dissection.hierarchy is None
