"""HTML reports and PNG plots: self-contained, escaped, atomic, and showing what they were given."""

from __future__ import annotations

import base64
import html
import io
import math
import re
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image

from lwtakit import plots
from lwtakit.errors import UserError
from lwtakit.report import (
    LayerInfo,
    RunSummary,
    Sections,
    compare_report,
    dissection_report,
    fmt_num,
    fmt_p,
    image_grid,
)

DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
NASTY = "<b>&x"  # a concept name straight from a user's concept file


# --------------------------------------------------------------------------------------------------
# A small HTML reader (stdlib), so tests check the document structure and not substrings of our own code
# --------------------------------------------------------------------------------------------------
class _Tables(HTMLParser):
    """Collect every <table> as rows of (tag, attrs, text) cells; also every <img> and all text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables, self.imgs, self.text = [], [], []
        self._stack, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._stack.append({"attrs": attrs, "rows": []})
        elif tag == "tr" and self._stack:
            self._stack[-1]["rows"].append([])
        elif tag in ("td", "th") and self._stack:
            self._cell = [tag, attrs, ""]
        elif tag == "img":
            self.imgs.append(attrs)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._stack:
            self._stack[-1]["rows"][-1].append(tuple(self._cell))
            self._cell = None
        elif tag == "table" and self._stack:
            self.tables.append(self._stack.pop())

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell[2] += data


def _parse(path) -> _Tables:
    p = _Tables()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def _table(doc: _Tables, cls: str):
    found = [t for t in doc.tables if cls in t["attrs"].get("class", "").split()]
    assert found, f"no table of class {cls}"
    return found


# --------------------------------------------------------------------------------------------------
# Synthetic inputs
# --------------------------------------------------------------------------------------------------
CONCEPTS = ["red", "blue", "circle", NASTY, "stripes"]


def _rows(layer: str, n_units: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_units):
        rows.append({"layer": layer, "unit": u, "method": "clip_dissect",
                     "label": CONCEPTS[u % len(CONCEPTS)], "score": float(rng.uniform(0, 1))})
        auc = float(rng.uniform(0.5, 1))
        rows.append({"layer": layer, "unit": u, "method": "invert", "label": f"{CONCEPTS[(u + 1) % 5]} AND NOT red",
                     "score": auc, "auc": auc, "p_value": float(10.0 ** -rng.uniform(1, 40))})
    return rows


def _curves(n: int = 8) -> dict:
    k = list(range(1, n + 1))
    return {"k": k, "pca_variance": [1 - math.exp(-i / 2) for i in k], "neuron_variance": [i / n for i in k],
            "k_ablation": [0, 2, 4, 8], "pca_ablation_acc": [0.9, 0.5, 0.3, 0.1],
            "neuron_ablation_acc": [0.9, 0.8, 0.6, 0.1]}


def _images(k: int, seed: int, size: int = 8) -> torch.Tensor:
    return torch.rand(k, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------
# image_grid
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k,h,expected_scale", [(1, 28, 3), (4, 28, 3), (3, 64, 1), (2, 80, 1), (5, 10, 7)])
def test_image_grid_width_upscale_and_pixels(k, h, expected_scale):
    levels = [30, 90, 150, 210, 240][:k]  # exact 8-bit levels, so the expected bytes are not a rounding question
    colours = np.array(levels) / 255.0
    imgs = np.zeros((k, 3, h, h), dtype=np.float32)
    for i, c in enumerate(colours):
        imgs[i, 0], imgs[i, 1], imgs[i, 2] = c, 1 - c, 0.5
    img = Image.open(io.BytesIO(image_grid(torch.from_numpy(imgs), gap=3)))
    s = expected_scale
    assert img.size == (k * h * s + (k - 1) * 3, h * s)
    a = np.asarray(img.convert("RGB"))
    for i, level in enumerate(levels):
        x0 = i * (h * s + 3)
        tile = a[:, x0:x0 + h * s]
        np.testing.assert_array_equal(tile[..., 0], level)  # whole tile: nearest upscale, no blur
        np.testing.assert_array_equal(tile[..., 1], 255 - level)
        if i < k - 1:
            assert (a[:, x0 + h * s:x0 + h * s + 3] == 255).all()  # white gap between images


def test_image_grid_grey_clips_and_rejects_bad_shapes():
    grey = np.full((2, 40, 50), 2.0)  # out of range: clipped to white
    img = Image.open(io.BytesIO(image_grid(grey, gap=2)))
    assert img.size == (2 * 50 * 2 + 2, 40 * 2)
    assert (np.asarray(img.convert("L")) == 255).all()
    as_list = [torch.full((3, 8, 8), 0.2), torch.full((3, 8, 8), 0.6)]  # a list of [3, H, W] tensors
    assert image_grid(as_list) == image_grid(torch.stack(as_list))
    with pytest.raises(UserError):
        image_grid(np.zeros((2, 5, 8, 8)))
    with pytest.raises(UserError):
        image_grid(np.zeros((0, 3, 8, 8)))


def test_number_formats():
    assert fmt_p(3.2e-12) == "3.2e-12"
    assert fmt_p(0.0) == "<1e-300"
    assert fmt_num(0.123456) == "0.123"
    assert fmt_num(1234.5) == "1.23e+03"
    assert fmt_num(7) == "7"
    assert fmt_num("12") == "12"
    assert fmt_num(float("nan")) == "–"


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------
def test_plot_functions_write_valid_pngs(tmp_path):
    rng = np.random.default_rng(1)
    figs = {
        "hist": plots.score_histograms(_rows("a", 20)),
        "comp": plots.completeness_curves({"a": _curves(), "run/b": {k: v for k, v in _curves().items()
                                                                       if "ablation" not in k}}),
        "agree": plots.label_agreement({"a": [(1, 0.2), (2, 0.6)], "b": [(2, 0.9), (1, 0.5)]}),
        "firing": plots.firing_rates({"a": rng.uniform(0, 1, 30), "b": torch.zeros(4)}),
        "counts": plots.active_counts({"lwta": rng.integers(5, 15, 50), "dense": rng.normal(30, 4, 50)}),
        "bars": plots.bar_compare({"x": {"m1": 0.5, "m2": 0.7}, "y": {"m1": 0.6}}, "t", "acc"),
        "empty": plots.completeness_curves({}),
    }
    for name, fig in figs.items():
        w_in, h_in = fig.get_size_inches()
        path = plots.save_png(fig, tmp_path / f"{name}.png")
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG"
            assert abs(im.size[0] - w_in * plots.DPI) <= 2 and abs(im.size[1] - h_in * plots.DPI) <= 2
            assert 200 <= im.size[0] <= 3000 and 100 <= im.size[1] <= 3000
            assert len(set(np.asarray(im.convert("L")).ravel().tolist())) > 2  # something was drawn
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.png" for n in figs)  # no temp files


def test_completeness_runs_side_by_side():
    curves = {"sparse/l4": _curves(), "sparse/fc": _curves(4), "dense/l4": _curves()}
    fig = plots.completeness_curves(curves, split_runs=True)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 4  # 2 runs x (variance, ablation)
    titles = sorted(ax.get_title().split("\n")[0] for ax in axes)
    assert titles == ["dense", "dense", "sparse", "sparse"]
    # each layer's PCA and neuron curve in its run's variance panel: sparse has 2 layers, dense 1
    n_lines = {ax.get_title(): len(ax.get_lines()) for ax in axes if "variance" in ax.get_title()}
    assert n_lines == {"sparse\nexplained variance of top-k directions": 4,
                       "dense\nexplained variance of top-k directions": 2}
    plots._close(fig)


def test_completeness_length_mismatch_is_a_user_error():
    with pytest.raises(UserError, match="pca_variance"):
        plots.completeness_curves({"a": {"k": [1, 2, 3], "pca_variance": [0.5]}})


# --------------------------------------------------------------------------------------------------
# Dissection report
# --------------------------------------------------------------------------------------------------
def _dissection(tmp_path, **kw):
    rows = _rows("layer4", 40) + _rows("fc", 5, seed=2)
    rows += [{"layer": "layer4#pca+", "unit": i, "method": "invert", "label": "circle", "score": 0.7,
              "auc": 0.7, "p_value": 1e-5} for i in range(3)]
    firing = np.linspace(0, 0.5, 40)
    layers = [
        LayerInfo("layer4", 40, active_fraction=0.25, firing=firing,
                  top_images={3: _images(4, 3), 17: _images(4, 17, size=32), 39: _images(2, 39)}),
        LayerInfo("fc", 5, top_images={np.int64(0): _images(3, 0)}, activation=False),
    ]
    args = dict(title="Dissection <of> resnet", rows=rows, layers=layers)
    sections = dict(evaluation={"final-layer top-1": 0.9, "planted recovery (invert)": 0.8125},
                    completeness={"layer4": _curves()}, drift={"layer4": [(1, 0.3), (2, 0.7)]},
                    meta={"model": "resnet18", "methods": ["invert", "clip_dissect"], "timings": {"record": 1.5}})
    for key, value in kw.items():
        (sections if key in sections or key == "heldout" else args)[key] = value
    return dissection_report(tmp_path / "out", sections=Sections(**sections), **args), rows, layers


def test_dissection_report_content(tmp_path):
    path, rows, layers = _dissection(tmp_path)
    assert path == tmp_path / "out" / "report.html"
    raw = path.read_text(encoding="utf-8")
    doc = _parse(path)

    # Escaped: the raw concept never appears as markup, its escaped form does, and the parsed text has it.
    assert NASTY not in raw and "&lt;b&gt;&amp;x" in raw
    assert "<of>" not in raw and "Dissection &lt;of&gt; resnet" in raw
    text = "".join(doc.text)
    for r in rows:
        assert r["label"] in text

    # One row per labelled unit in each layer's unit table (all units, not only those with images).
    units_tables = _table(doc, "units")
    assert [len(t["rows"]) - 1 for t in units_tables] == [40, 5, 3]
    # Each label appears in its unit's row; INVERT p-values are formatted like 3.2e-12.
    layer4 = units_tables[0]["rows"]
    header = [c[2] for c in layer4[0]]
    assert header[:2] == ["unit", "firing"]
    for r in (r for r in rows if r["layer"] == "layer4"):
        cells = [c[2] for c in layer4[1 + r["unit"]]]
        assert cells[0] == str(r["unit"])
        assert r["label"] in cells
        if r["method"] == "invert":  # a p-value above 1e-3 is flagged: not significant in the report
            weak = r["p_value"] > 1e-3
            assert f"{r['p_value']:.1e}" + (" †" if weak else "") in cells
            assert f"{r['score']:.3g}" in cells
    assert [c[2] for c in layer4[1]][1] == "0" and [c[2] for c in layer4[40]][1] == "0.5"  # firing column

    # Images: one embedded grid per unit with top images, each decoding to the grid of its images.
    grids = [i for i in doc.imgs if i.get("class") == "topimg"]
    given = [imgs for li in layers for imgs in li.top_images.values()]
    assert len(grids) == len(given) == 4
    for attrs, imgs in zip(grids, given, strict=True):
        png = base64.b64decode(attrs["src"].split(",", 1)[1])
        assert png == image_grid(imgs)

    # Plots: embedded and also written beside the report, byte-identical; nothing else in plots/.
    written = {p.name: p.read_bytes() for p in (tmp_path / "out" / "plots").iterdir()}
    assert set(written) == {"score_histograms.png", "firing_rates.png", "completeness.png", "label_agreement.png"}
    embedded = {base64.b64decode(i["src"].split(",", 1)[1]) for i in doc.imgs if i.get("class") == "plot"}
    assert embedded == set(written.values())
    assert len(DATA_URI.findall(raw)) == len(grids) + len(written)
    assert "src=\"http" not in raw and "<link" not in raw  # self-contained
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["plots", "report.html"]

    # Weak p-values: flagged in the table with a hover text, and the mark is explained above the table
    flagged = [c for row in layer4[1:] for c in row if "weak" in c[1].get("class", "")]
    expected = [r for r in rows if r["layer"] == "layer4" and r.get("p_value", 0) > 1e-3]
    assert 0 < len(flagged) == len(expected) < 40
    assert all("not significant" in c[1]["title"] for c in flagged)
    assert "† marks a label whose p-value is above 0.001" in text

    # A linear layer has no activity to show: n/a in the overview, no firing column in its units table
    overview = next(t for t in doc.tables if [c[2] for c in t["rows"][0]][:3] == ["layer", "units", "active fraction"])
    fc_row = next(r for r in overview["rows"][1:] if r[0][2] == "fc")
    assert [c[2] for c in fc_row[2:4]] == ["n/a — linear layer", "n/a"]
    assert [c[2] for c in units_tables[1]["rows"][0]][1] != "firing"

    # Evaluation summary table
    kv = {r[0][2]: r[1][2] for t in _table(doc, "kv") for r in t["rows"] if len(r) == 2}
    assert kv["planted recovery (invert)"] == "0.812" and kv["final-layer top-1"] == "0.9"


def test_direction_poles_get_cards_and_a_note_with_the_labels_no_unit_gets(tmp_path):
    def row(layer, unit, label, p=1e-6, method="invert", **extra):
        return {"layer": layer, "unit": unit, "method": method, "label": label, "score": 0.8, "p_value": p, **extra}

    rows = [row("conv", 0, "red"), row("conv", 1, "large", p=0.2), row("conv", 0, "red", p=None, method="iou",
                                                                         iou=0.1)]
    rows += [row("conv#pca+", 0, "red"), row("conv#pca+", 1, "large"), row("conv#pca+", 2, "small", p=0.5),
             row("conv#pca+", 0, "left", p=None, method="iou", iou=0.2),
             row("conv#pca+", 1, "top", p=None, method="iou", iou=0.01)]
    rows += [row("conv#pca-", 0, "dark background"), row("conv#pca-", 1, "red")]
    layers = [LayerInfo("conv", 2, top_images={0: _images(2, 0)}),
              LayerInfo("conv#pca+", 3, top_images={1: _images(3, 1)}),
              LayerInfo("conv#pca-", 3, top_images={0: _images(3, 2)})]
    path = dissection_report(tmp_path / "out", title="t", rows=rows, layers=layers)
    doc = _parse(path)
    text = " ".join("".join(doc.text).split())
    # "large" is a unit's label, but not a significant one, so it counts as one no unit gets; "small" is not
    # significant, "top" is no IoU detector, "red" is a unit's label (INVERT and IoU): none of those is listed
    assert ("Labels these directions find that no unit of conv gets from the same method (INVERT: p < 0.001; "
            "IoU > 0.04): invert: large; iou: left.") in text
    assert "this section is the - pole, whose images score highest on the projection negated" in text
    assert "invert: dark background." in text
    assert [i["alt"] for i in doc.imgs if i.get("class") == "topimg"] == [
        "top 2 images of unit 0", "top 3 images of component 1+", "top 3 images of component 0-"]
    units = _table(doc, "units")
    assert [[r[0][2] for r in t["rows"][1:]] for t in units] == [["0", "1"], ["0+", "1+", "2+"], ["0-", "1-"]]


def test_dissection_report_is_atomic(tmp_path):
    out = tmp_path / "out"
    rows = [r for r in _rows("layer4", 4) if r["method"] == "invert"]  # one small histogram: fast
    # A plot that cannot be drawn (completeness curve with 3 k's but 1 value) fails the whole report,
    # although the score histogram before it rendered fine...
    bad = {"layer4": {"k": [1, 2, 3], "pca_variance": [0.5], "neuron_variance": [0.1, 0.2, 0.3]}}
    with pytest.raises(UserError, match="pca_variance"):
        dissection_report(out, title="t", rows=rows, layers=[], sections=Sections(completeness=bad))
    assert not (out / "report.html").exists() and not (out / "plots").exists()
    # ... and leaves an earlier report and its plots untouched, with no temporary files beside them.
    path = dissection_report(out, title="t", rows=rows, layers=[])
    before = path.read_bytes(), (out / "plots" / "score_histograms.png").read_bytes()
    with pytest.raises(UserError):
        dissection_report(out, title="t2", rows=rows, layers=[], sections=Sections(completeness=bad))
    assert (path.read_bytes(), (out / "plots" / "score_histograms.png").read_bytes()) == before
    assert sorted(p.name for p in out.iterdir()) == ["plots", "report.html"]
    assert [p.name for p in (out / "plots").iterdir()] == ["score_histograms.png"]
    # A broken image for one unit fails it too, before anything is written.
    li = LayerInfo("layer4", 40, top_images={1: np.zeros((2, 5, 8, 8))})
    with pytest.raises(UserError):
        dissection_report(tmp_path / "fresh", title="t", rows=_rows("layer4", 4), layers=[li])
    assert not (tmp_path / "fresh" / "report.html").exists()


def test_dissection_report_from_csv_strings(tmp_path):
    # Rows read back with lwtakit.io.read_csv are all strings; the report must render them the same way.
    rows = [{k: str(v) for k, v in r.items()} for r in _rows("layer4", 6)]
    path = dissection_report(tmp_path, title="csv", rows=rows, layers=[])
    doc = _parse(path)
    (table,) = _table(doc, "units")
    assert [r[0][2] for r in table["rows"][1:]] == [str(u) for u in range(6)]
    p0 = float(rows[1]["p_value"])  # 2.5e-3, read back as text: still compared as a number, and flagged
    assert p0 > 1e-3 and f"{p0:.1e} †" in [c[2] for c in table["rows"][1]]


def test_underflowed_p_value_is_escaped_text(tmp_path):
    # fmt_p(0) is "<1e-300": text like any other, so the page must carry it escaped, not as raw markup.
    rows = [{"layer": "l", "unit": 0, "method": "invert", "label": "red", "score": 0.9, "auc": 0.9, "p_value": 0.0}]
    li = LayerInfo("l", 1, top_images={0: _images(1, 0)})
    path = dissection_report(tmp_path, title="p0", rows=rows, layers=[li])
    raw = path.read_text(encoding="utf-8")
    assert "<1e-300" not in raw and raw.count("&lt;1e-300") == 2  # the unit table and the unit's card
    (table,) = _table(_parse(path), "units")
    assert "<1e-300" in [c[2] for c in table["rows"][1]]


# --------------------------------------------------------------------------------------------------
# Compare report
# --------------------------------------------------------------------------------------------------
def _run(name: str, U: int, acc: float, seed: int) -> RunSummary:
    rng = np.random.default_rng(seed)
    return RunSummary(
        name=name, meta={"checkpoint": f"/runs/{name}/last.ckpt", "model": "resnet18", "U": U},
        accuracy={"argmax": acc, "sample": acc - 0.01} if U > 1 else {"dense": acc},
        sparsity={"layer4": 1 / U, "fc": 1.0},
        label_quality={"final-layer top-1 label acc": acc - 0.1, "planted recovery": 0.5 + seed / 10},
        layer_stats={"layer4": {"mean score": 0.7 + seed / 100, "distinct labels": 30 + seed, "units": 64}},
        stability={"layer4": [(1, 0.4), (2, 0.8)]} if U > 1 else None,
        completeness={"layer4": _curves()},
        active_counts=rng.integers(10, 20, 40) * U,
    )


def test_compare_report_one_column_per_run(tmp_path):
    runs = [_run("lwta-U4", 4, 0.9, 1), _run("dense", 1, 0.93, 2), _run("lwta <U2>", 2, 0.91, 3)]
    path = compare_report(tmp_path, runs, title="three & more")
    raw = path.read_text(encoding="utf-8")
    assert "lwta <U2>" not in raw and "lwta &lt;U2&gt;" in raw
    doc = _parse(path)
    (metrics,) = _table(doc, "metrics")
    head = metrics["rows"][0]
    assert [c[2] for c in head] == ["metric"] + [r.name for r in runs]  # three runs: no difference column
    assert [c[2] for c in head if "run" in c[1].get("class", "")] == [r.name for r in runs]
    values = {}
    for row in metrics["rows"][1:]:
        if len(row) == 1:  # group header spanning all columns
            assert row[0][1]["colspan"] == str(1 + len(runs))
            continue
        assert len(row) == 1 + len(runs)
        values[row[0][2]] = [c[2] for c in row[1:]]
    # aligned accuracy: the dense run's one function fills every mode's row (it is the same in each mode)
    assert values["argmax"] == ["0.9", "0.93", "0.91"] and "dense" not in values
    assert values["as evaluated (LWTA: mc · dense: its one function)"] == ["–", "0.93", "–"]  # no mc measured
    assert values["layer4"] == [fmt_num(0.25), "1", "0.5"]
    assert values["layer4 · distinct labels"] == ["31", "32", "33"]
    assert values["planted recovery"] == [fmt_num(0.6), fmt_num(0.7), fmt_num(0.8)]
    (meta,) = _table(doc, "runs")
    assert [c[2] for c in meta["rows"][0][1:]] == [r.name for r in runs]
    written = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert written == sorted(["accuracy.png", "sparsity.png", "label_quality.png", "mean_score.png",
                              "stability.png", "completeness.png", "active_counts.png"])
    assert len(DATA_URI.findall(raw)) == len(written)


def test_compare_two_runs_shows_difference_and_rejects_bad_input(tmp_path):
    a, b = _run("sparse", 4, 0.9, 1), _run("dense", 1, 0.93, 2)
    for run in (a, b):  # no histories or curves: those plots must be left out (and the test stays fast)
        run.stability = run.completeness = run.active_counts = None
        run.label_quality, run.layer_stats = {}, {}
    doc = _parse(compare_report(tmp_path, [a, b]))
    (metrics,) = _table(doc, "metrics")
    assert [c[2] for c in metrics["rows"][0]] == ["metric", "sparse", "dense", "dense − sparse"]
    row = next(r for r in metrics["rows"] if r[0][2] == "layer4")
    assert row[3][2] == "+" + fmt_num(1.0 - 0.25)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["accuracy.png", "sparsity.png"]
    with pytest.raises(UserError):
        compare_report(tmp_path / "x", [])
    with pytest.raises(UserError):
        compare_report(tmp_path / "x", [a, a])


def test_bar_compare_of_many_groups_is_horizontal_and_keeps_the_values():
    """Many groups (every layer of a network) are drawn as rows, so the labels stay readable."""
    values = {"sparse": {f"layer{i}": 0.5 for i in range(12)}, "dense": {f"layer{i}": i / 20 for i in range(12)}}
    fig = plots.bar_compare(values, "Measured active fraction", "fraction")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"layer{i}" for i in range(12)]
    widths = sorted(round(p.get_width(), 6) for p in ax.patches)
    assert widths == sorted([0.5] * 12 + [round(i / 20, 6) for i in range(12)])
    plots._close(fig)


def test_unit_distributions_one_panel_per_metric_and_box_per_run_and_layer():
    """Each (run, layer) box is drawn from that run's per-unit values: its mean marker sits at their mean; a
    metric no run has gets no panel; a run without a layer leaves a gap."""
    rng = np.random.default_rng(0)
    values = {"lwta": {"l3": {"f1": rng.uniform(0, 1, 40), "concepts": rng.integers(0, 5, 40)},
                       "l4": {"f1": rng.uniform(0, 1, 30)}},
              "dense": {"l4": {"f1": rng.uniform(0, 1, 20)}}}
    fig = plots.unit_distributions(values, {"f1": "f1 (held-out)", "auprc": "auprc", "concepts": "concepts"})
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["f1 (held-out)", "concepts"]
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["l3", "l4"]
    means = sorted(float(line.get_ydata()[0]) for line in axes[0].lines if line.get_marker() == "o")
    expected = [np.mean(values["lwta"]["l3"]["f1"]), np.mean(values["lwta"]["l4"]["f1"]),
                np.mean(values["dense"]["l4"]["f1"])]
    np.testing.assert_allclose(means, sorted(expected))
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["lwta", "dense"]
    plots._close(fig)


def test_dissection_report_shows_the_heldout_assessment(tmp_path):
    """The held-out section: a row per (layer, method) with its means, the sanity table with each metric's
    verdict, held-out columns in the units table, and a per-unit distribution plot."""
    from lwtakit.evaluation.sanity import SanityRow
    from lwtakit.report import HeldOut

    rows = [r for r in _rows("layer4", 6) if r["method"] == "invert"]
    for r in rows:
        r.update(heldout_f1=0.1 * r["unit"], heldout_auprc=0.5, heldout_correlation=0.2, heldout_p=1e-4,
                 concepts=r["unit"] % 3)
    heldout = HeldOut(split="250 / 250 images", means={("layer4", "invert"): {
        "heldout_f1": 0.25, "heldout_auprc": 0.5, "heldout_correlation": 0.2, "heldout_significant": 1.0,
        "concepts": 1.0}}, sanity=[SanityRow("f1", 0.97, 0.95, True), SanityRow("recall", 0.98, 0.0, False)])
    path, _, _ = _dissection(tmp_path, rows=rows, layers=[LayerInfo("layer4", 6)], completeness=None, drift=None,
                             heldout=heldout)
    doc = _parse(path)
    tables = {tuple(c[2] for c in t["rows"][0]): t["rows"][1:] for t in doc.tables if t["rows"]}
    means = tables[("layer", "method", "f1", "auprc", "correlation", "share of units with a significant label",
                    "concepts per unit")]
    assert [[c[2] for c in r] for r in means] == [["layer4", "invert", "0.25", "0.5", "0.2", "1", "1"]]
    sanity = tables[("metric", "drops, missing labels", "drops, extra labels", "verdict")]
    assert [[c[2] for c in r] for r in sanity] == [["f1", "97%", "95%", "passes"],
                                                   ["recall", "98%", "0%", "fails"]]
    (units,) = _table(doc, "units")
    header = [c[2] for c in units["rows"][0]]
    assert header[-3:] == ["F1invert, held-out", "corrinvert, held-out", "conceptsinvert, held-out"]
    assert [[c[2] for c in r][-3:] for r in units["rows"][1:3]] == [["0", "0.2", "0"], ["0.1", "0.2", "1"]]
    assert (tmp_path / "out" / "plots" / "heldout.png").stat().st_size > 1000


def test_ablation_axis_of_a_wide_layer_is_log2_with_k0_as_its_own_point():
    """k = 0 (nothing ablated) cannot sit on a log axis: it is drawn apart, at 0.5 with its own tick "0", not joined
    to the line; PCA and neurons differ in line style and marker so overlapping curves stay apart."""
    C = 256
    ks = [0, 13, 26, 64, 128, 192, C]
    pca, neurons = [0.9, 0.4, 0.3, 0.2, 0.1, 0.1, 0.1], [0.9, 0.88, 0.8, 0.6, 0.4, 0.2, 0.1]
    curve = {"k": list(range(1, C + 1)), "pca_variance": np.linspace(0.1, 1, C),
             "neuron_variance": np.linspace(0, 1, C), "k_ablation": ks, "pca_ablation_acc": pca,
             "neuron_ablation_acc": neurons}
    fig = plots.completeness_curves({"layer4": curve})
    ax = fig.axes[1]
    assert ax.get_xscale() == "log" and ax.get_xaxis().get_scale() == "log"
    lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    pca_line, neuron_line = lines["layer4 PCA"], lines["layer4 neurons"]
    assert list(pca_line.get_xdata()) == ks[1:] and list(pca_line.get_ydata()) == pca[1:]
    assert (pca_line.get_linestyle(), neuron_line.get_linestyle()) == ("-", "--")
    assert pca_line.get_marker() != neuron_line.get_marker()
    zeros = sorted(float(line.get_ydata()[0]) for line in ax.get_lines() if list(line.get_xdata()) == [0.5])
    assert zeros == [pca[0], neurons[0]]
    assert [t.get_text() for t in ax.get_xticklabels()][0] == "0"
    plots._close(fig)


def test_label_agreement_colours_a_layer_alike_in_every_run_and_styles_each_run():
    stab = {"lwta/l3": [(1, 0.2), (2, 0.5)], "lwta/fc": [(1, 0.4), (2, 0.9)],
            "dense/l3": [(1, 0.3), (2, 0.6)], "dense/fc": [(1, 0.1), (2, 0.7)]}
    fig = plots.label_agreement(stab, split_runs=True)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"l3 · lwta", "fc · lwta", "l3 · dense", "fc · dense"}
    assert lines["l3 · lwta"].get_color() == lines["l3 · dense"].get_color() != lines["fc · lwta"].get_color()
    style = {name: line.get_linestyle() for name, line in lines.items()}
    assert style["l3 · lwta"] == style["fc · lwta"] != style["l3 · dense"]
    assert "e − 1" in ax.get_xlabel()
    legend = ax.get_legend()
    assert legend.get_bbox_to_anchor().x0 >= ax.bbox.x1 - 1  # outside the axes, right of them
    plots._close(fig)


def test_compare_report_first_screen_answers_how_the_runs_differ(tmp_path):
    a, b = _run("lwta", 4, 0.975, 1), _run("dense", 1, 0.993, 2)
    a.accuracy["mc"] = 0.975
    for run in (a, b):
        run.stability = run.completeness = run.active_counts = None
    how = {"probe set": "val, 300 images", "LWTA mode of labels and sparsity": "mc: 4 passes", "seed": "0"}
    lines = ["U=4 vs dense, layer4 held-out correlation: -0.1 [-0.2, -0.05], p = 0.003; 5/5 seeds"]
    doc = _parse(compare_report(tmp_path, [a, b], how=how, seed_verdict=lines))
    (summary,) = _table(doc, "summary")
    assert [[c[2] for c in r] for r in summary["rows"][1:]] == [["lwta", "97.5%", "2.5%", fmt_num(0.625)],
                                                                 ["dense", "99.3%", "0.7%", "1"]]
    text = "".join(doc.text)
    # the seed-level verdict's lines open the page; no test over the units of one network is made or shown
    assert lines[0] in text and "Holm's correction" not in text
    assert not [t for t in doc.tables if "headlines" in t["attrs"].get("class", "")]
    # how the report was made
    kv = {r[0][2]: r[1][2] for t in _table(doc, "kv") for r in t["rows"] if len(r) == 2}
    assert kv["probe set"] == "val, 300 images" and kv["LWTA mode of labels and sparsity"] == "mc: 4 passes"
    # aligned accuracy rows, each with a filled difference; the dense value repeated in mode rows says why
    (metrics,) = _table(doc, "metrics")
    by_name = {r[0][2]: r for r in metrics["rows"][1:] if len(r) == 4}
    evaluated = by_name["as evaluated (LWTA: mc · dense: its one function)"]
    assert [c[2] for c in evaluated[1:]] == ["0.975", "0.993", "+" + fmt_num(0.993 - 0.975)]
    for mode, value in (("mc", 0.975), ("sample", 0.965), ("argmax", 0.975)):
        cells = by_name[mode]
        assert [c[2] for c in cells[1:]] == [fmt_num(value), "0.993", "+" + fmt_num(0.993 - value)]
        assert "one function" in cells[2][1]["title"]
    # every metric is explained: a hover text on its name, and a glossary entry with the same text
    for name, row in by_name.items():
        if name not in ("final-layer top-1 label acc", "planted recovery"):  # the fixture's own names
            assert row[0][1].get("title"), name
    assert "share p<0.001" not in text
    raw = (tmp_path / "report.html").read_text(encoding="utf-8")
    glossary = {html.unescape(name): html.unescape(title)
                for title, name in re.findall(r'<dt title="([^"]*)">([^<]*)</dt>', raw)}
    for name in ("as evaluated", "mc", "active fraction", "concepts found", "mean settle epoch", "concepts per unit"):
        assert glossary[name]
    assert by_name["layer4 · mean score"][0][1]["title"] == glossary["mean score"]
    # the accuracy chart plots the error rate, so 0.975 vs 0.993 is 2.5% vs 0.7%, not two full bars
    assert (tmp_path / "plots" / "accuracy.png").exists()
