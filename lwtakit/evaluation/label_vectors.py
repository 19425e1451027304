"""Concept vectors of label strings: what the metrics score a unit's label against.

A label read back from a labels.csv is a concept name or ``NOT <concept name>``; its vector over the probe
images is that concept's column of the concept-label matrix (negated), evaluated through INVERT's
:class:`~lwtakit.labelers.invert.Formula`. Longer formulas (``a AND b``, ``(a OR b) AND NOT c``) need a formula
parser and are refused with a message saying so.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import UserError
from ..labelers.invert import Formula

__all__ = ["label_vectors"]


def _atom(label: str, index: dict[str, int], names: Sequence[str]) -> Formula:
    text = label.strip()
    if text in index:
        return Formula.atom(index[text], False, names)
    if text.startswith("NOT ") and text[4:].strip() in index:
        return Formula.atom(index[text[4:].strip()], True, names)
    raise UserError(f"label {label!r} is not a known concept: a label must be a name of the concept names file or "
                    "NOT followed by one (formulas of several concepts are not supported here)")


def label_vectors(labels: Sequence[str], concepts: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """Bool ``[N, U]``: column ``i`` is label ``labels[i]`` evaluated on the concept labels ``[N, K]`` (``names``:
    the K concept names; the first of equal names wins)."""
    names = [str(n) for n in names]
    index: dict[str, int] = {}
    for i, n in enumerate(names):
        index.setdefault(n.strip(), i)
    concepts = torch.as_tensor(concepts).bool()
    columns = [_atom(str(label), index, names).evaluate(concepts) for label in labels]
    return torch.stack(columns, 1) if columns else torch.zeros(concepts.shape[0], 0, dtype=torch.bool)
