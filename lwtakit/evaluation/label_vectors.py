"""Concept vectors of label strings: what the metrics score a unit's label against.

A label read back from a labels.csv is a concept name, ``NOT <concept name>`` or an INVERT formula of them
(``(a OR b) AND NOT c``); its vector over the probe images is the formula evaluated on the concept-label matrix
(:meth:`lwtakit.labelers.invert.Formula.parse`, the inverse of how INVERT prints it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import UserError
from ..labelers.invert import Formula

__all__ = ["label_vectors"]


def _formula(label: str, names: Sequence[str]) -> Formula:
    text = label.strip()
    try:
        return Formula.parse(text, names)
    except UserError:
        raise UserError(f"label {label!r} is not a known concept: a label must be a name of the concept names file, "
                        "NOT followed by one, or an INVERT formula of them") from None


def label_vectors(labels: Sequence[str], concepts: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """Bool ``[N, U]``: column ``i`` is label ``labels[i]`` evaluated on the concept labels ``[N, K]`` (``names``:
    the K concept names; the first of equal names wins)."""
    names = [str(n).strip() for n in names]
    concepts = torch.as_tensor(concepts).bool()
    columns = [_formula(str(label), names).evaluate(concepts) for label in labels]
    return torch.stack(columns, 1) if columns else torch.zeros(concepts.shape[0], 0, dtype=torch.bool)
