"""The INVERT labeler (registered as ``invert``): :func:`lwtakit.labelers.invert.label_units` on each target."""

from __future__ import annotations

from lwtakit.labelers.base import (
    CONCEPT_LABELS,
    ConceptArrays,
    Context,
    Labeler,
    Target,
    register_labeler,
    rows_from_dicts,
)
from lwtakit.labelers.configs import InvertConfig
from lwtakit.labels import LabelRow

from .row import InvertRow
from .search import label_units


@register_labeler
class InvertLabeler(Labeler):
    """INVERT: each unit's best concept formula by AUC, with its Mann-Whitney p-value."""

    name = "invert"
    title = "INVERT"
    config_class = InvertConfig
    needs = frozenset({CONCEPT_LABELS})
    row_class = InvertRow
    array_methods = ("invert",)
    array_columns = ("unit", "label", "score", "auc", "p_value", "length")

    def label(self, target: Target, ctx: Context) -> list[LabelRow]:
        dicts = label_units(target.acts, ctx.concepts.labels, ctx.concepts.names, self.config)
        return rows_from_dicts(dicts, target, self.name, self.row_class)

    def report_meta(self) -> dict[str, str]:
        """Parsimony on or off and the p-value's alternative, so a reader can tell this search from the
        reference's (Bykov et al. 2023)."""
        return {"INVERT": self.config.describe()}

    def label_arrays(self, acts, arrays: ConceptArrays) -> list[dict]:
        """``analyze.py label --method invert``: the units of ``acts`` (float64, the same labels on any CPU) against
        the binary concept labels."""
        import numpy as np
        import torch

        return label_units(torch.from_numpy(np.asarray(acts, dtype=np.float64)), torch.from_numpy(arrays.labels),
                           arrays.names, self.config)
