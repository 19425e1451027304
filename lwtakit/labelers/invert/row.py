"""INVERT's label row: the generic :class:`~lwtakit.labels.LabelRow` with the label's AUC, its formula and the
formula's length (the number of concepts in it); ``score`` is the AUC too, so every consumer that reads scores
reads INVERT's without knowing it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from lwtakit.labels import COLUMNS, LabelRow, optional_float

from .formula import Formula


@dataclass
class InvertRow(LabelRow):
    """One unit's INVERT label: ``auc`` (Bykov et al. 2023, eq. 2), ``length`` (0 for a unit without an admissible
    concept) and ``formula``, the label as a :class:`Formula` (None for a unit without a label)."""

    auc: float | None = None
    length: int | None = None
    formula: Formula | None = None

    # auc after firing_rate and length after p_value: the columns labels.csv has always had
    columns: ClassVar[tuple[str, ...]] = (*COLUMNS[:COLUMNS.index("p_value")], "auc", "p_value", "length", "top5")
    numbers: ClassVar[tuple[str, ...]] = ("auc", "p_value", "length")

    @property
    def concept(self) -> str | None:
        """The formula's first concept (``NOT x`` stays negated), or None."""
        if self.formula is None:
            return self.label or None
        concept, negated = self.formula.atoms()[0]
        return ("NOT " if negated else "") + self.formula.names[concept]

    def concept_formula(self) -> Formula | None:
        return self.formula

    @classmethod
    def own_fields(cls, values: Mapping[str, Any], concept_names: Sequence[str] | None = None) -> dict[str, Any]:
        """``auc``, ``length`` and ``formula`` from :func:`~lwtakit.labelers.invert.label_units`' plain row (which
        holds the :class:`Formula`) or a CSV record (whose label is parsed back into one)."""
        length = values.get("length")
        length = None if length in (None, "") else int(length)
        formula, label = values.get("formula"), values.get("label")
        if formula is None and length and label:
            formula = Formula.parse(str(label), concept_names)
        return {"auc": optional_float(values.get("auc")), "length": length, "formula": formula}
