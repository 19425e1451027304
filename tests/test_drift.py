"""Label drift against hand-counted histories."""

from lwtakit.drift import agreement, settle_epochs, stability


def _rows(history):
    return [{"epoch": e, "layer": layer, "unit": u, "method": "invert", "label": lab}
            for (layer, u), seq in history.items() for e, lab in enumerate(seq)]


HISTORY = {
    ("fc", 0): ["red", "blue", "blue", "blue"],   # settles at epoch 1
    ("fc", 1): ["red", "red", "red", "red"],      # stable from the start
    ("fc", 2): ["red", "blue", "red", "green"],   # changes every time: settles at the last epoch
}


def test_agreement_counts_unchanged_units_per_dissection():
    assert agreement(_rows(HISTORY), "invert") == {"fc": [(1, 1 / 3), (2, 2 / 3), (3, 2 / 3)]}


def test_settle_epoch_is_first_epoch_of_the_final_run_of_labels():
    assert settle_epochs(_rows(HISTORY), "invert") == {("fc", 0): 1, ("fc", 1): 0, ("fc", 2): 3}


def test_stability_averages_units():
    s = stability(_rows(HISTORY), "invert")["fc"]
    assert s["stable_fraction"] == (3 / 4 + 4 / 4 + 1 / 4) / 3
    assert s["mean_settle_epoch"] == (1 + 0 + 3) / 3


def test_other_methods_are_ignored():
    rows = _rows(HISTORY) + [{"epoch": 0, "layer": "fc", "unit": 0, "method": "clip_dissect", "label": "x"}]
    assert agreement(rows, "invert") == agreement(_rows(HISTORY), "invert")
