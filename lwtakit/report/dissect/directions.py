"""The text above a pole of principal directions (Dey et al. 2020) in a dissection report: what directions are,
and the credible labels they find that no unit of the layer gets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lwtakit.labels import INTERPRETABLE_IOU, IOU, SIGNIFICANT_P
from lwtakit.report.formatting import as_float

Row = Mapping[str, Any]


def credible(row: Row) -> bool:
    """A label worth reporting as found: p < SIGNIFICANT_P where the row has a p-value (INVERT), an IoU above
    NetDissect's detector threshold where it has an IoU; rows of other methods as they are."""
    p, iou = as_float(row.get("p_value")), as_float(row.get(IOU))
    return (p is None or p < SIGNIFICANT_P) and (iou is None or iou > INTERPRETABLE_IOU)


def only_directions(rows: Sequence[Row], unit_rows: Sequence[Row]) -> list[tuple[str, list[str]]]:
    """Per method, the credible labels (:func:`credible`) of these direction rows that no unit of the layer has as
    a credible label from the same method: what directions find and single units miss (Dey et al. 2020)."""
    unit_labels: dict[str, set[str]] = {}
    for r in unit_rows:
        if credible(r):
            unit_labels.setdefault(str(r.get("method", "")), set()).add(str(r.get("label", "")))
    found: dict[str, set[str]] = {}
    for r in rows:
        method, label = str(r.get("method", "")), str(r.get("label", ""))
        if label and credible(r) and label not in unit_labels.get(method, set()):
            found.setdefault(method, set()).add(label)
    return [(method, sorted(labels)) for method, labels in found.items()]


def directions_note(base: str, pole: str, rows: Sequence[Row], unit_rows: Sequence[Row]) -> str:
    """The text above a pole of principal directions: what they are, and :func:`only_directions`."""
    side = "the projection" if pole == "+" else "the projection negated"
    found = "; ".join(f"{method}: {', '.join(labels)}" for method, labels in only_directions(rows, unit_rows))
    found = (f"Labels these directions find that no unit of {base} gets from the same method (INVERT: p < "
             f"{SIGNIFICANT_P:g}; IoU > {INTERPRETABLE_IOU:g}): {found}." if found else
             "Every credible label here is also some unit's label.")
    return (f"Principal directions of {base} (Dey et al. 2020): the eigenvectors of the covariance of its output "
            "vectors over the probe images (a conv layer's channel vector at every spatial position), by decreasing "
            "variance. Each direction has two "
            f"poles, labelled separately: this section is the {pole} pole, whose images score highest on {side}. "
            f"A direction mixes units, so it can detect what no single unit does. {found}")
