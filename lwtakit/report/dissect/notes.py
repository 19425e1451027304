"""The sentences a dissection report prints above its tables, with the thresholds they name filled in from
where those are defined."""

from __future__ import annotations

from lwtakit.labels import SIGNIFICANT_P

HELDOUT_NOTE = (f"Means over the labelled units; a significant label has held-out p < {SIGNIFICANT_P:g}; concepts "
                "per unit counts the concepts a unit detects significantly on the held-out images "
                "(Benjamini-Hochberg): fewer is more focused.")
WEAK_P_NOTE = (f"† marks a label whose p-value is above {SIGNIFICANT_P:g}, the threshold a label must pass to count "
               "as significant in this report: with hundreds of units and concepts tested, such a label can be "
               "chance; read it as a hint, not a finding.")
SANITY_NOTE = ("NeuronEval's sanity tests (Oikarinen et al. 2025) on the held-out images with each unit's INVERT "
               "label: the share of units whose score drops, after one perturbation per unit (NeuronEval's "
               "protocol), when half of the label's positive images are removed (missing labels) and when random "
               "positives double them (extra labels). A metric passes at 90% or "
               "more on both; only a passing metric can show that a unit answers to one concept and not more.")
