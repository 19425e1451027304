"""The label table: one typed row per (layer, unit, method).

Every labeler returns :class:`LabelRow` objects (or rows of its own subclass, e.g. INVERT's row with its formula:
:attr:`lwtakit.labelers.base.Labeler.row_class`); :func:`lwtakit.dissect.dissect` collects them in a
:class:`LabelTable`, and every consumer (CSV files, the training callback and its W&B table, the reports,
``compare``) reads the table through the summaries written once here: per-layer quality
(:meth:`LabelTable.summaries`), the best units of a layer (:meth:`LabelTable.best_units`) and the labels of one
method (:meth:`LabelTable.labels`).

On disk a table is a CSV with the columns its rows' types declare (:attr:`LabelRow.columns`; a subclass inserts
its own among them), those that any row uses, in that order, followed by the method-specific extras (``iou``,
``threshold``, ``caption``, ...) in order of appearance; ``top5`` is ``|``-joined. :meth:`LabelRow.from_record`
reads a row back as the type its method's labeler declares (an INVERT formula becomes an object again).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

COLUMNS = ("layer", "unit", "method", "mode", "label", "score", "firing_rate", "p_value", "top5")  # every row's
SIGNIFICANT_P = 1e-3  # "significant label" in summaries and reports
# The held-out assessment's values in a row's extra (lwtakit.evaluation.assess): heldout_<metric>, heldout_p (the
# label's held-out p-value), concepts; heldout_significant is derived (value()).
HELDOUT_PREFIX = "heldout_"
HELDOUT_P = HELDOUT_PREFIX + "p"
HELDOUT_SIGNIFICANT = HELDOUT_PREFIX + "significant"
HELDOUT_KEYS = ("concepts",)  # besides heldout_<metric>
# The IoU of a row's label with its unit's thresholded maps (the IoU labeler's extra): the rows of a (layer,
# method) that carry it get NetDissect's interpretable units in their summary.
IOU = "iou"
# Network Dissection (Bau et al., CVPR 2017, sec. 3.1): a unit whose best concept has IoU > 0.04 is a detector of
# it, an "interpretable unit"; NetDissect (and DISCOVER after it) compare layers and networks by how many units
# pass and how many distinct concepts they cover.
INTERPRETABLE_IOU = 0.04
# Rows of principal directions (Dey et al. 2020) live in pseudo-layers "<layer>#pca+" (the projection on a direction)
# and "<layer>#pca-" (the projection negated), one row per direction and method at each pole.
PCA_SUFFIX = "#pca"
POLES = {"+": 1.0, "-": -1.0}


def pca_pole(name: str) -> tuple[str, float] | None:
    """``(layer, sign)`` of a direction pseudo-layer ``<layer>#pca+`` / ``<layer>#pca-``; None for other names."""
    base, sep, pole = name.rpartition(PCA_SUFFIX)
    return (base, POLES[pole]) if sep and base and pole in POLES else None


def optional_float(value) -> float | None:
    """A finite float, or None for a missing / NaN / empty value."""
    if value is None or value == "":
        return None
    value = float(value)
    return None if math.isnan(value) else value


@dataclass
class LabelRow:
    """One unit's (or PCA direction's) label by one method: what every labeler gives.

    ``score`` is the method's own score (INVERT: AUC; CLIP-Dissect: the similarity function; IoU: IoU);
    ``p_value`` the label's significance where the method tests one (INVERT: Mann-Whitney); ``top5`` holds the
    best five candidate labels, best first; ``extra`` the method-specific values (``iou``, ``threshold``,
    ``caption``, ``count``) and the held-out assessment's. A labeler with typed values of its own subclasses this
    (INVERT's row, with its formula) and names it as its :attr:`~lwtakit.labelers.base.Labeler.row_class`.
    """

    layer: str
    unit: int
    method: str
    label: str = ""
    score: float | None = None
    firing_rate: float | None = None
    p_value: float | None = None
    top5: tuple[str, ...] | None = None
    mode: str | None = None  # the LWTA mode the network was dissected in (mc, sample, argmax); None: no LWTA
    extra: dict[str, Any] = field(default_factory=dict)

    # The CSV columns of this row type, in order (a subclass inserts its own), and its optional numbers: written
    # when set, in this order.
    columns: ClassVar[tuple[str, ...]] = COLUMNS
    numbers: ClassVar[tuple[str, ...]] = ("p_value",)

    @property
    def concept(self) -> str | None:
        """The first concept of the label (here the label itself), or None."""
        return self.label or None

    def concept_formula(self) -> Any:
        """The label as a formula over the probe's concepts (with ``names`` and ``evaluate(concept_labels)``) when
        its labeler built one (INVERT); None: the label is its text."""
        return None

    def record(self) -> dict[str, Any]:
        """Plain values for CSV files and W&B tables: only the fields this row's method sets."""
        out: dict[str, Any] = {"layer": self.layer, "unit": self.unit, "method": self.method, "label": self.label,
                               "score": self.score, "firing_rate": self.firing_rate}
        if self.mode is not None:
            out["mode"] = self.mode
        out.update({key: getattr(self, key) for key in self.numbers if getattr(self, key) is not None})
        if self.top5:
            out["top5"] = "|".join(self.top5)
        out.update(self.extra)
        return out

    @classmethod
    def own_fields(cls, values: Mapping[str, Any], concept_names: Sequence[str] | None = None) -> dict[str, Any]:
        """The typed values of a subclass's own fields from a CSV record or a labeling function's plain row."""
        return {}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, concept_names: Sequence[str] | None = None) -> LabelRow:
        """A row from a CSV record (strings) or a :meth:`record` dict, of the type its method's labeler declares
        (:func:`lwtakit.labelers.base.row_class`) when called on :class:`LabelRow`. Columns outside the type's go
        to ``extra`` (the history's ``epoch`` and ``step`` included; empty cells dropped, values kept as read);
        ``concept_names`` fix the concept indices of a formula read back."""
        if cls is LabelRow:
            from lwtakit.labelers.base import row_class  # the registry: which labeler wrote rows of this method

            own = row_class(str(record["method"]))
            if own is not LabelRow:
                return own.from_record(record, concept_names=concept_names)
        known = set(cls.columns)
        top5 = record.get("top5")
        if isinstance(top5, str):
            top5 = tuple(t for t in top5.split("|") if t)
        label = "" if record.get("label") is None else str(record["label"])
        return cls(layer=str(record["layer"]), unit=int(record["unit"]), method=str(record["method"]), label=label,
                   score=optional_float(record.get("score")), firing_rate=optional_float(record.get("firing_rate")),
                   p_value=optional_float(record.get("p_value")), top5=None if top5 is None else tuple(top5),
                   mode=record.get("mode") or None, **cls.own_fields(record, concept_names),
                   extra={k: v for k, v in record.items() if k not in known and v not in (None, "")})


@dataclass(frozen=True)
class Interpretable:
    """NetDissect's headline numbers of one layer (Bau et al. 2017, Fig. 4): the ``units`` whose IoU label has IoU
    above :data:`INTERPRETABLE_IOU`, their ``share`` of the layer's labelled units and the distinct ``concepts``
    they detect."""

    units: int
    share: float
    concepts: int

    def __str__(self) -> str:
        return f"{self.units} ({100 * self.share:.0f}%) · {self.concepts} concepts"


def interpretable_units(labelled: Sequence[tuple[str, float | None]]) -> Interpretable:
    """:class:`Interpretable` of one layer from its IoU labels, one ``(label, iou)`` pair per unit (``iou`` None
    for a unit without one)."""
    detected = [label for label, iou in labelled if iou is not None and iou > INTERPRETABLE_IOU]
    share = len(detected) / len(labelled) if labelled else float("nan")
    return Interpretable(units=len(detected), share=share, concepts=len(set(detected)))


@dataclass
class LayerSummary:
    """Label quality of one (layer, method): what the reports, the callback's logs and ``compare`` show."""

    units: int
    mean_score: float
    median_score: float
    distinct_labels: int
    significant: float | None  # share of units with a label of p < SIGNIFICANT_P (methods with p-values), else None
    # held-out assessment (lwtakit.evaluation.assess): mean of each heldout_<metric> and concepts over
    # the units that have it, and heldout_significant, the share of units whose label has held-out p < SIGNIFICANT_P
    heldout: dict[str, float] = field(default_factory=dict)
    # NetDissect's interpretable units (IoU > INTERPRETABLE_IOU) and the concepts they cover; method iou only
    interpretable: Interpretable | None = None


class LabelTable:
    """The rows of one dissection (or of a label history), in the order the labelers produced them."""

    def __init__(self, rows: Iterable[LabelRow] = ()) -> None:
        self.rows: list[LabelRow] = list(rows)

    def __iter__(self) -> Iterator[LabelRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __add__(self, other: LabelTable) -> LabelTable:
        return LabelTable(self.rows + other.rows)

    @property
    def layers(self) -> list[str]:
        return list(dict.fromkeys(r.layer for r in self.rows))

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(r.method for r in self.rows))

    def select(self, layer: str | None = None, method: str | None = None) -> LabelTable:
        return LabelTable(r for r in self.rows if (layer is None or r.layer == layer)
                          and (method is None or r.method == method))

    def values(self, layer: str, method: str, key: str) -> list[float]:
        """One value per unit of (layer, method): a row field (``score``, ``p_value``), an extra (``heldout_f1``,
        ``concepts``) or ``heldout_significant`` (:func:`value`); units without it are left out."""
        out = [value(r, key) for r in self.rows if r.layer == layer and r.method == method]
        return [v for v in out if v is not None]

    def labels(self, method: str | None = None) -> dict[tuple[str, int], str]:
        """``{(layer, unit): label}`` of one method's rows."""
        return {(r.layer, r.unit): r.label for r in self.rows if method is None or r.method == method}

    def best_units(self, layer: str, n: int | None = None) -> list[tuple[int, LabelRow]]:
        """The layer's distinct units by their best score over methods, best first: ``[(unit, row)]`` with the
        row that gave the unit its place; ``n=None`` for all."""
        ranked = sorted((r for r in self.rows if r.layer == layer and r.score is not None), key=lambda r: -r.score)
        best: dict[int, LabelRow] = {}
        for r in ranked:
            best.setdefault(r.unit, r)
            if n and len(best) == n:
                break
        return list(best.items())

    def summaries(self) -> dict[tuple[str, str], LayerSummary]:
        """Per (layer, method): units, mean and median score (over units with a score), distinct labels, the
        share of units whose label has p < :data:`SIGNIFICANT_P` (None for methods without p-values) and, for
        rows that carry an IoU (:data:`IOU`), NetDissect's interpretable units (:func:`interpretable_units`)."""
        groups: dict[tuple[str, str], list[LabelRow]] = {}
        for r in self.rows:
            groups.setdefault((r.layer, r.method), []).append(r)
        out = {}
        for (layer, method), rows in groups.items():
            scores = sorted(r.score for r in rows if r.score is not None)
            has_p = any(r.p_value is not None for r in rows)
            out[(layer, method)] = LayerSummary(
                units=len(rows),
                mean_score=sum(scores) / len(scores) if scores else float("nan"),
                median_score=_median(scores),
                distinct_labels=len({r.label for r in rows}),
                # a unit without a label (no p-value) is not significant
                significant=sum(r.p_value is not None and r.p_value < SIGNIFICANT_P for r in rows) / len(rows)
                if has_p else None,
                heldout=_heldout_means(rows),
                interpretable=interpretable_units([(r.label, value(r, IOU)) for r in rows])
                if any(IOU in r.extra for r in rows) else None)
        return out

    # --- files -------------------------------------------------------------------------------------
    def records(self, **fixed: Any) -> list[dict[str, Any]]:
        """:meth:`LabelRow.record` of every row, with ``fixed`` columns (e.g. ``epoch``, ``step``) first."""
        return [{**fixed, **r.record()} for r in self.rows]

    def columns(self, leading: Sequence[str] = ()) -> list[str]:
        """``leading`` columns, then those of the rows' types (:func:`column_order`) that a row uses, then the
        extras."""
        used = {k for r in self.rows for k in r.record()}
        order = column_order(dict.fromkeys(type(r) for r in self.rows))
        extras = dict.fromkeys(k for r in self.rows for k in r.extra if k not in order)
        return [*leading, *(c for c in order if c in used), *(k for k in extras if k not in leading)]

    def write_csv(self, path: str | Path) -> Path:
        from lwtakit.io import write_csv

        return write_csv(path, self.records(), self.columns())

    @classmethod
    def read_csv(cls, path: str | Path, concept_names: Sequence[str] | None = None) -> LabelTable:
        from lwtakit.io import read_csv

        return cls(LabelRow.from_record(r, concept_names=concept_names) for r in read_csv(path))


def value(row: LabelRow, key: str) -> float | None:
    """A row's number under ``key`` (a field or an extra; None when missing or NaN). ``heldout_significant`` is
    derived: 1 when the label's held-out p < :data:`SIGNIFICANT_P`, 0 for any other assessed row (a label that
    is not a probe concept has no held-out p and is not significant), None when the row was not assessed."""
    if key == HELDOUT_SIGNIFICANT:
        if "concepts" not in row.extra:  # lwtakit.evaluation.assess writes it for every row it assesses
            return None
        p = optional_float(row.extra.get(HELDOUT_P))
        return float(p is not None and p < SIGNIFICANT_P)
    return optional_float(getattr(row, key) if key in row.columns else row.extra.get(key))


def column_order(row_types: Iterable[type[LabelRow]]) -> list[str]:
    """The columns of a table whose rows are of ``row_types``: each type's :attr:`LabelRow.columns` merged in, a
    column new to the order going right after the column before it in its type (INVERT's ``auc`` after
    ``firing_rate``)."""
    order: list[str] = []
    for row_type in row_types:
        for i, name in enumerate(row_type.columns):
            if name not in order:
                order.insert(order.index(row_type.columns[i - 1]) + 1 if i else 0, name)
    return order


def _heldout_means(rows: list[LabelRow]) -> dict[str, float]:
    keys = dict.fromkeys(k for r in rows for k in r.extra
                         if k in HELDOUT_KEYS or (k.startswith(HELDOUT_PREFIX) and k != HELDOUT_P))
    if keys:
        keys[HELDOUT_SIGNIFICANT] = None
    out = {}
    for key in keys:
        values = [v for v in (value(r, key) for r in rows) if v is not None]
        out[key] = sum(values) / len(values) if values else float("nan")
    return out


def _median(sorted_values: list[float]) -> float:
    n = len(sorted_values)
    if not n:
        return float("nan")
    mid = n // 2
    return sorted_values[mid] if n % 2 else (sorted_values[mid - 1] + sorted_values[mid]) / 2
