"""Evaluation of neuron labels.

* :mod:`.truth`: labels against known answers (final-layer accuracy, planted-concept recovery, similarity to
  the class name, concept coverage).
* :mod:`.metrics`: NeuronEval's metric family (Oikarinen, Yan & Weng, ICML 2025) scoring how well a binary
  concept vector explains a unit's activations.
* :mod:`.sanity`: NeuronEval's missing-labels and extra-labels tests of those metrics on the user's data.

The names of :mod:`.truth` are re-exported here (``lwtakit.evaluation`` was one module before).
"""

from .truth import (
    class_name_similarity,
    concept_coverage,
    final_layer_accuracy,
    label_similarity,
    normalise,
    planted_recovery,
)

__all__ = ["class_name_similarity", "concept_coverage", "final_layer_accuracy", "label_similarity",
           "normalise", "planted_recovery"]
