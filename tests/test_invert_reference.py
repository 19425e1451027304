"""INVERT's reference behaviour (Bykov et al. 2023) reachable from our implementation: parsimony off is the
plain beam search of Alg. 1, and the two-sided p-value is the reference implementation's Mann-Whitney test."""

import numpy as np
import pytest
import scipy.stats
import torch

from lwtakit.errors import UserError
from lwtakit.labelers.configs import InvertConfig
from lwtakit.labelers.invert import label_units


def _reference_search(x, C, max_length, beam, max_fraction=0.5):
    """Alg. 1 written out plainly: score every formula's label vector by AUC from the unit's ranks, keep the
    ``beam`` best formulas per length (any positive fraction), extend each by AND / OR (NOT) a concept it does
    not use yet, drop label vectors already seen at that length, and return the admissible formula of highest
    AUC over all lengths (a longer one wins a tie) as ``(label vector, auc, length)``."""
    N, K = C.shape
    ranks = scipy.stats.rankdata(x)

    def auc(lab):
        n = int(lab.sum())
        return float("nan") if n in (0, N) else (ranks[lab].sum() - n * (n + 1) / 2) / (n * (N - n))

    def admissible(lab):
        return 1 <= lab.sum() <= min(max_fraction * N, N - 1)

    atoms = [(C[:, k] if not neg else ~C[:, k], k) for neg in (False, True) for k in range(K)]
    scored = [(auc(lab), lab, {k}) for lab, k in atoms if not np.isnan(auc(lab))]
    current = sorted(scored, key=lambda t: -t[0])[:beam]  # sorted() is stable: concepts before negations
    best = max((t for t in scored if admissible(t[1])), key=lambda t: t[0])
    best = (best[1], best[0], 1)
    for length in range(2, max_length + 1):
        candidates, seen = [], set()
        for _, lab, used in current:
            for k in set(range(K)) - used:
                for col in (C[:, k], ~C[:, k]):
                    for new in (lab & col, lab | col):
                        if 0 < new.sum() < N:
                            candidates.append((auc(new), new, used | {k}))
        candidates.sort(key=lambda t: -t[0])
        unique = []
        for cand in candidates:
            if cand[1].tobytes() not in seen:
                seen.add(cand[1].tobytes())
                unique.append(cand)
        current = unique[:beam]
        top = next((t for t in unique if admissible(t[1])), None)
        if top is not None and top[0] >= best[1]:
            best = (top[1], top[0], length)
    return best


def _planted(N=500, units=8, seed=0):
    """Ten concepts (10-40% positives); unit 0 fires for c0 AND NOT c1, unit 1 for c2 OR c3, the rest are noisy
    mixtures of a few concepts."""
    rng = np.random.default_rng(seed)
    C = rng.random((N, 10)) < rng.uniform(0.1, 0.4, 10)
    acts = rng.normal(scale=0.3, size=(N, units))
    acts[:, 0] += C[:, 0] & ~C[:, 1]
    acts[:, 1] += C[:, 2] | C[:, 3]
    acts[:, 2:] += C @ (rng.normal(size=(10, units - 2)) * (rng.random((10, units - 2)) < 0.3))
    return acts, C, [f"c{k}" for k in range(10)]


@pytest.mark.parametrize("max_length, beam", [(2, 5), (3, 3)])
def test_parsimony_off_equals_the_reference_beam_search(max_length, beam):
    acts, C, names = _planted()
    config = InvertConfig(max_length=max_length, beam=beam).without_parsimony()
    rows = label_units(torch.from_numpy(acts), torch.from_numpy(C), names, config)
    for row in rows:
        lab, auc, length = _reference_search(acts[:, row["unit"]], C, max_length, beam)
        assert np.array_equal(row["formula"].evaluate(torch.from_numpy(C)).numpy(), lab), row["label"]
        assert row["auc"] == pytest.approx(auc, abs=1e-12)
        assert row["length"] == length
    planted = [C[:, 0] & ~C[:, 1], C[:, 2] | C[:, 3]]  # "c0 AND NOT c1" may print as "NOT c1 AND c0"
    for row, truth in zip(rows, planted, strict=False):
        assert np.array_equal(row["formula"].evaluate(torch.from_numpy(C)).numpy(), truth), row["label"]


def test_parsimony_off_lets_noise_lengthen_labels_that_parsimony_keeps_short():
    acts, C, names = _planted()
    acts, C = torch.from_numpy(acts), torch.from_numpy(C)
    on = label_units(acts, C, names, InvertConfig(max_length=3))
    off = label_units(acts, C, names, InvertConfig(max_length=3).without_parsimony())
    assert all(b["auc"] >= a["auc"] - 1e-12 for a, b in zip(on, off, strict=True))
    assert sum(b["length"] > a["length"] for a, b in zip(on, off, strict=True)) >= 1
    assert not InvertConfig().without_parsimony().parsimony and InvertConfig().parsimony


@pytest.mark.parametrize("max_length", [1, 2])
def test_two_sided_p_values_equal_scipy(max_length):
    acts, C, names = _planted()
    acts = np.round(acts, 1)  # ties: the tie correction must match too
    rows = label_units(torch.from_numpy(acts), torch.from_numpy(C), names, max_length=max_length,
                       alternative="two-sided")
    greater = label_units(torch.from_numpy(acts), torch.from_numpy(C), names, max_length=max_length)
    for row, one_sided in zip(rows, greater, strict=True):
        assert row["label"] == one_sided["label"]  # the alternative changes the p-value only
        lab = row["formula"].evaluate(torch.from_numpy(C)).numpy()
        x = acts[:, row["unit"]]
        expected = scipy.stats.mannwhitneyu(x[lab], x[~lab], alternative="two-sided", method="asymptotic").pvalue
        assert row["p_value"] == pytest.approx(expected, rel=1e-9, abs=1e-300)
        assert row["p_value"] == pytest.approx(min(1.0, 2 * one_sided["p_value"]), rel=1e-9)


def test_bad_alternative_is_a_one_line_error():
    with pytest.raises(UserError, match="alternative must be one of greater, two-sided") as info:
        InvertConfig(alternative="less")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------- the CLI
def _label_files(tmp_path):
    acts, C, names = _planted()
    np.save(tmp_path / "A.npy", acts)
    np.save(tmp_path / "L.npy", C)
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    return ["label", "--activations", tmp_path / "A.npy", "--method", "invert", "--concept-labels",
            tmp_path / "L.npy", "--concept-names", tmp_path / "names.txt", "--out", tmp_path / "out.csv"]


def _cli(capsys, *argv):
    import analyze

    try:
        code = analyze.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse rejects a flag's value before main's own error handling
        code = exc.code
    return code, capsys.readouterr().err.strip().splitlines()


def test_label_flags_reach_the_search(tmp_path, capsys):
    import csv

    args = _label_files(tmp_path)
    flags = ["--max-length", "3", "--parsimony", "off", "--alternative", "two-sided", "--max-fraction", "0.4"]
    assert _cli(capsys, *args, *flags) == (0, [])
    with open(tmp_path / "out.csv", newline="") as fh:
        written = list(csv.DictReader(fh))
    acts, C, names = _planted()
    config = InvertConfig(max_length=3, max_fraction=0.4, alternative="two-sided").without_parsimony()
    expected = label_units(torch.from_numpy(acts), torch.from_numpy(C), names, config)
    assert [(r["label"], float(r["p_value"])) for r in written] == [(r["label"], r["p_value"]) for r in expected]
    assert _cli(capsys, *args, "--max-length", "3") == (0, [])  # parsimony on: some label gets shorter
    with open(tmp_path / "out.csv", newline="") as fh:
        assert sum(int(r["length"]) for r in csv.DictReader(fh)) < sum(r["length"] for r in expected)


def test_dissect_flags_build_the_invert_labeler():
    import analyze
    from lwtakit.labelers.base import create_labelers

    def invert_of(argv):  # the labeler the flags' dissection config builds (lwtakit.dissection_setup does so)
        cfg = analyze._dissection_config(analyze.build_parser().parse_args(argv))
        return create_labelers(["invert"], cfg)[0].config

    argv = ["dissect", "--model", "x", "--out", "o", "--max-length", "2", "--min-fraction", "0.01",
            "--parsimony", "off", "--alternative", "two-sided"]
    config = invert_of(argv)
    assert config == InvertConfig(max_length=2, min_fraction=0.01, alternative="two-sided").without_parsimony()
    assert "parsimony off" in config.describe() and "two-sided" in config.describe()
    default = invert_of(argv[:5])
    assert default == InvertConfig(max_length=1) and "parsimony on" in default.describe()
    assert "one-sided (greater)" in default.describe()


@pytest.mark.parametrize("extra, fragment", [
    (["--alternative", "less"], "--alternative"),
    (["--parsimony", "maybe"], "--parsimony"),
    (["--min-fraction", "0.6"], "min_fraction"),
    (["--max-fraction", "1.5"], "max_fraction"),
])
def test_bad_invert_flags_are_one_line_errors(tmp_path, capsys, extra, fragment):
    code, err = _cli(capsys, *_label_files(tmp_path), *extra)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert not (tmp_path / "out.csv").exists()
