"""The label table: one typed row per (layer, unit, method), formulas kept as objects.

Every labeler returns :class:`LabelRow` objects; :func:`lwtakit.dissect.dissect` collects them in a
:class:`LabelTable`, and every consumer (CSV files, the training callback and its W&B table, the reports,
``compare``) reads the table through the summaries written once here: per-layer quality
(:meth:`LabelTable.summaries`), the best units of a layer (:meth:`LabelTable.best_units`) and the labels of one
method (:meth:`LabelTable.labels`).

On disk a table is a CSV with the columns of :data:`COLUMNS` that any row uses, in that order, followed by the
method-specific extras (``iou``, ``threshold``, ``caption``, ...) in order of appearance; ``top5`` is
``|``-joined and an INVERT formula is its printed form, read back into a :class:`Formula` by
:meth:`LabelRow.from_record`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COLUMNS = ("layer", "unit", "method", "mode", "label", "score", "firing_rate", "auc", "p_value", "length", "top5")
SIGNIFICANT_P = 1e-3  # "significant label" in summaries and reports
HELDOUT_KEYS = ("concepts",)  # besides heldout_<metric> and heldout_p (lwtakit.evaluation.assess)
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
    """One unit's (or PCA direction's) label by one method.

    ``score`` is the method's own score (INVERT: AUC; CLIP-Dissect: the similarity function; IoU: IoU);
    ``auc`` / ``p_value`` / ``length`` / ``formula`` come from INVERT; ``top5`` holds the best five candidate
    labels, best first; ``extra`` the method-specific values (``iou``, ``threshold``, ``caption``, ``count``).
    """

    layer: str
    unit: int
    method: str
    label: str = ""
    score: float | None = None
    firing_rate: float | None = None
    auc: float | None = None
    p_value: float | None = None
    length: int | None = None
    top5: tuple[str, ...] | None = None
    formula: Any = None  # lwtakit.labelers.invert.Formula
    mode: str | None = None  # the LWTA mode the network was dissected in (mc, sample, argmax); None: no LWTA
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def concept(self) -> str | None:
        """The first concept of the label (the first term of a formula; ``NOT x`` stays negated), or None."""
        if self.formula is not None:
            concept, negated = self.formula.atoms()[0]
            return ("NOT " if negated else "") + self.formula.names[concept]
        return self.label or None

    def record(self) -> dict[str, Any]:
        """Plain values for CSV files and W&B tables: only the fields this row's method sets."""
        out: dict[str, Any] = {"layer": self.layer, "unit": self.unit, "method": self.method, "label": self.label,
                               "score": self.score, "firing_rate": self.firing_rate}
        if self.mode is not None:
            out["mode"] = self.mode
        out.update({key: getattr(self, key) for key in ("auc", "p_value", "length") if getattr(self, key) is not None})
        if self.top5:
            out["top5"] = "|".join(self.top5)
        out.update(self.extra)
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, concept_names: Sequence[str] | None = None) -> LabelRow:
        """A row from a CSV record (strings) or a :meth:`record` dict; a multi-term INVERT label becomes a
        :class:`~lwtakit.labelers.invert.Formula` again. Columns outside the row's fields go to ``extra``
        (the history's ``epoch`` and ``step`` included; empty cells dropped, values kept as read)."""
        known = set(COLUMNS)
        length = record.get("length")
        length = None if length in (None, "") else int(length)
        top5 = record.get("top5")
        if isinstance(top5, str):
            top5 = tuple(t for t in top5.split("|") if t)
        label = "" if record.get("label") is None else str(record["label"])
        formula = None
        if length and label:
            from lwtakit.labelers.invert import Formula

            formula = Formula.parse(label, concept_names)
        return cls(layer=str(record["layer"]), unit=int(record["unit"]), method=str(record["method"]), label=label,
                   score=optional_float(record.get("score")), firing_rate=optional_float(record.get("firing_rate")),
                   auc=optional_float(record.get("auc")), p_value=optional_float(record.get("p_value")), length=length,
                   top5=None if top5 is None else tuple(top5), formula=formula, mode=record.get("mode") or None,
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
        IoU labels, NetDissect's interpretable units (:func:`interpretable_units`)."""
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
                interpretable=interpretable_units([(r.label, value(r, "iou")) for r in rows])
                if method == "iou" else None)
        return out

    # --- files -------------------------------------------------------------------------------------
    def records(self, **fixed: Any) -> list[dict[str, Any]]:
        """:meth:`LabelRow.record` of every row, with ``fixed`` columns (e.g. ``epoch``, ``step``) first."""
        return [{**fixed, **r.record()} for r in self.rows]

    def columns(self, leading: Sequence[str] = ()) -> list[str]:
        """``leading`` columns, then those of :data:`COLUMNS` that a row uses, then the extras."""
        used = {k for r in self.rows for k in r.record()}
        extras = dict.fromkeys(k for r in self.rows for k in r.extra if k not in COLUMNS)
        return [*leading, *(c for c in COLUMNS if c in used), *(k for k in extras if k not in leading)]

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
    if key == "heldout_significant":
        if "concepts" not in row.extra:  # lwtakit.evaluation.assess writes it for every row it assesses
            return None
        return float(optional_float(row.extra.get("heldout_p")) is not None
                     and optional_float(row.extra["heldout_p"]) < SIGNIFICANT_P)
    return optional_float(getattr(row, key) if key in COLUMNS else row.extra.get(key))


def _heldout_means(rows: list[LabelRow]) -> dict[str, float]:
    keys = dict.fromkeys(k for r in rows for k in r.extra
                         if k in HELDOUT_KEYS or (k.startswith("heldout_") and k != "heldout_p"))
    if keys:
        keys["heldout_significant"] = None
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
