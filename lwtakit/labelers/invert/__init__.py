"""INVERT: label units by the AUC of their activations for (compositional) binary concepts.

Bykov et al., "Labeling Neural Representations with Inverse Recognition", NeurIPS 2023. A unit's score
for a concept is the AUROC of the unit's activation as a classifier of the concept (sec. 3, eq. 2),
compositional labels are formulas of concepts and their negations joined by AND / OR found by beam
search up to length L with a bound on the concept's positive fraction, and the significance of a label is
a Mann-Whitney U test.

* :mod:`lwtakit.evaluation.ranks` (shared with the held-out assessment): ranks, the AUROC of all units x all
  concepts from rank sums, Mann-Whitney p-values;
* :mod:`.formula`: :class:`Formula`, printing and parsing labels; :mod:`.row`: :class:`InvertRow`, its label row;
* :mod:`.search`: :func:`label_units`, the beam search with parsimony, set by one :class:`InvertConfig`
  (:mod:`lwtakit.labelers.configs`);
* :mod:`.labeler`: :class:`InvertLabeler`, registered as ``invert`` for :func:`lwtakit.dissect.dissect`.
"""

from ..configs import InvertConfig
from .formula import Formula
from .labeler import InvertLabeler
from .row import InvertRow
from .search import _extension_logp, label_units, order_top

__all__ = ["Formula", "InvertConfig", "InvertLabeler", "InvertRow", "label_units", "order_top", "_extension_logp"]
