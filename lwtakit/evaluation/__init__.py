"""Evaluation of neuron labels.

* :mod:`.truth`: labels against known answers (final-layer accuracy, planted-concept recovery, similarity to
  the class name, concept coverage).
* :mod:`.metrics`: NeuronEval's metric family (Oikarinen, Yan & Weng, ICML 2025) scoring how well a binary
  concept vector explains a unit's activations.
* :mod:`.sanity`: NeuronEval's missing-labels and extra-labels tests of those metrics on the user's data.
* :mod:`.split`, :mod:`.heldout`, :mod:`.assess` (settings in :mod:`.options`): labels chosen on one part of the
  probe set and assessed on the other; polysemanticity and simulation per unit.
* :mod:`.verdict`: bootstrap intervals over units, two-run tests and plain sentences for ``compare``.
* :mod:`.unit_scores` and :mod:`.seeds`: the per-unit table of arms of seeded runs (``unit_scores.csv``) and
  the seed-level verdict on it (``analyze.py verdict``): the seed, not the unit, is the unit of analysis.
* :mod:`.reliability`: split-half reliability of mc-averaged activations, passes for a target reliability and the
  attenuation correction; :mod:`.polysemanticity`: concepts per unit by stepwise regression;
  :mod:`.unit_metrics`: the per-unit verdict metrics (frequency-matched F1 / kappa, ...) and their names.

The names of :mod:`.truth` are re-exported here (``lwtakit.evaluation`` was one module before), loaded on first
use so that the torch-free :mod:`.options` can be imported by the config schema without torch.
"""

__all__ = ["class_name_similarity", "concept_coverage", "final_layer_accuracy", "label_similarity",
           "normalise", "planted_recovery"]


def __getattr__(name: str):
    if name in __all__:
        from . import truth

        return getattr(truth, name)
    raise AttributeError(f"module 'lwtakit.evaluation' has no attribute {name!r}")
