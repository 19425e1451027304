"""What a dissection report shows of one layer: per method its rows and summary, per unit its labels, and the
cards of its best units' top-activating images. Summaries are the label table's
(:meth:`lwtakit.labels.LabelTable.summaries`), never recomputed here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lwtakit import plots
from lwtakit.labels import LabelRow, LabelTable, LayerSummary, pca_pole
from lwtakit.report.formatting import as_float
from lwtakit.report.images import data_uri, image_grid, png_width

from .inputs import LayerInfo

Row = Mapping[str, Any]
Labelled = tuple[Row, LabelRow]  # a row as the page prints it (its record) and as the table reads it

# per-unit held-out columns of the units table, and the header they get
UNIT_HELDOUT = {"heldout_f1": "F1", "heldout_correlation": "corr", "concepts": "concepts"}


@dataclass
class MethodView:
    """One labelling method's rows in one layer."""

    name: str
    rows: list[Row]  # every row, in order: the overview counts these
    by_unit: dict[tuple, Row]  # unit key -> its (last) row: the layer section shows these
    show_auc: bool  # an AUC column, when some AUC differs from the score
    show_p: bool  # a p-value column, when some row has one
    heldout: list[tuple[str, str]]  # (key, header) of the held-out columns some row has
    overview: LayerSummary  # the table's summary of ``rows`` (NetDissect's interpretable units among it)
    summary: LayerSummary  # the table's summary of ``by_unit``


@dataclass
class UnitView:
    unit: Any  # as shown: an int, or the unit's name when it is not one
    sort: float | None
    firing: float  # NaN where the layer has no rate for this unit
    labels: list[tuple[MethodView, Row | None]]  # per method, None where it did not label this unit
    has_card: bool


@dataclass
class Card:
    unit: Any
    k: int  # number of images
    width: int  # card width in pixels: its image row, at least room for the labels
    uri: str
    firing: float | None
    labels: list[tuple[MethodView, Row]]


@dataclass
class LayerView:
    name: str
    anchor: str
    info: LayerInfo | None
    firing: np.ndarray | None
    methods: list[MethodView]
    units: list[UnitView]
    cards: list[Card]
    pole: str  # "+" / "-" for a "<layer>#pca+" / "<layer>#pca-" pseudo-layer (principal directions), else ""
    dead: int | None = None  # units that never fire
    median_firing: float | None = None
    note: str = ""  # a pole of directions: what directions are, and the labels they find that no unit gets

    @property
    def is_pca(self) -> bool:
        return bool(self.pole)

    @property
    def unit_word(self) -> str:
        return "component" if self.is_pca else "unit"


def unit_key(u: Any) -> tuple[int, Any]:
    """How units sort: numerically, names (e.g. attention heads) after them."""
    try:
        return (0, int(u))
    except (TypeError, ValueError):
        return (1, str(u))


def _summary(labelled: Sequence[Labelled], layer: str, method: str) -> LayerSummary:
    return LabelTable(row for _, row in labelled).summaries()[(layer, method)]


def _methods(layer: str, labelled: Sequence[Labelled]) -> list[MethodView]:
    grouped: dict[str, list[Labelled]] = {}
    for pair in labelled:
        grouped.setdefault(pair[1].method, []).append(pair)
    out = []
    for name, pairs in grouped.items():
        by_unit = {unit_key(r.get("unit")): (r, row) for r, row in pairs}
        shown = [r for r, _ in by_unit.values()]
        out.append(MethodView(
            name, [r for r, _ in pairs], {k: r for k, (r, _) in by_unit.items()},
            show_auc=any(as_float(r.get("auc")) is not None and as_float(r.get("auc")) != as_float(r.get("score"))
                         for r in shown),
            show_p=any(as_float(r.get("p_value")) is not None for r in shown),
            heldout=[(k, h) for k, h in UNIT_HELDOUT.items() if any(as_float(r.get(k)) is not None for r in shown)],
            overview=_summary(pairs, layer, name), summary=_summary(list(by_unit.values()), layer, name)))
    return out


def _cards(top: Mapping[Any, Any], methods: Sequence[MethodView], firing: np.ndarray | None) -> list[Card]:
    cards = []
    for u, imgs in top.items():
        labels = [(m, r) for m in methods if (r := m.by_unit.get(unit_key(u))) is not None]
        k = int(np.shape(plots._to_numpy(imgs))[0]) if np.ndim(plots._to_numpy(imgs)) else 0
        rate = None
        if firing is not None and isinstance(u, (int, np.integer)) and 0 <= u < firing.size:
            rate = float(firing[u])
        png = image_grid(imgs)
        # Card as wide as its image row (at least room for the labels), so images keep their size.
        cards.append(Card(u, k, max(300, png_width(png)) + 22, data_uri(png), rate, labels))
    return cards


def layer_view(name: str, info: LayerInfo | None, labelled: Sequence[Labelled], anchor: str) -> LayerView:
    """Everything the overview row and the section of one layer show."""
    methods = _methods(name, labelled)
    linear = info is not None and not info.activation  # every output non-zero: no firing to show
    firing = None if linear or info is None or info.firing is None else np.asarray(
        plots._to_numpy(info.firing)).ravel()
    top = {} if info is None else {unit_key(u)[1]: v for u, v in (info.top_images or {}).items()}
    keys = {k for m in methods for k in m.by_unit} | {unit_key(u) for u in top}
    if not keys and firing is not None:
        keys = {(0, i) for i in range(firing.size)}
    units = []
    for is_name, u in sorted(keys):
        numeric = is_name == 0
        rate = float(firing[u]) if firing is not None and numeric and 0 <= u < firing.size else float("nan")
        units.append(UnitView(u, float(u) if numeric else None, rate,
                              [(m, m.by_unit.get((is_name, u))) for m in methods], u in top))
    pole = pca_pole(name)
    layer = LayerView(name, anchor, info, firing, methods, units, _cards(top, methods, firing),
                      "" if pole is None else name[-1])
    if firing is not None:
        layer.dead = int((firing <= 0).sum())
        if firing.size:
            layer.median_firing = float(np.median(firing))
    return layer
