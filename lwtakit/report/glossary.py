"""What every metric of the comparison report means: the glossary section and the hover text of each metric."""

from __future__ import annotations

import re

from lwtakit.evaluation.verdict import VERDICT_METRICS
from lwtakit.labels import HELDOUT_SIGNIFICANT, INTERPRETABLE_IOU, SIGNIFICANT_P

# NetDissect's per-layer count, as compare names it (lwtakit.compare.add_interpretable_units)
INTERPRETABLE_UNITS = f"IoU > {INTERPRETABLE_IOU:g} units"
INTERPRETABLE_SHARE = f"IoU > {INTERPRETABLE_IOU:g} share"
INTERPRETABLE_CONCEPTS = f"IoU > {INTERPRETABLE_IOU:g} concepts"

EVALUATED = "as evaluated"

# name -> (group shown in the glossary, explanation); the names are the metrics as the report's tables show them
GLOSSARY: dict[str, tuple[str, str]] = {
    EVALUATED: ("accuracy", "Top-1 test accuracy of the function each run is evaluated as: an LWTA run's mc "
                "(the mean of its stochastic passes), a dense run's one deterministic function. The row to read "
                "first."),
    "mc": ("accuracy", "LWTA: class probabilities averaged over several seeded stochastic passes (Monte-Carlo). "
           "A dense run has one function, the same in every mode: its value is repeated (greyed)."),
    "sample": ("accuracy", "LWTA: one seeded stochastic pass, winners sampled as in training."),
    "argmax": ("accuracy", "LWTA: every block's most likely winner, deterministic; a different function from mc, "
               "its accuracy can lag."),
    "error rate": ("accuracy", "1 − accuracy, the plotted quantity: differences near 100% accuracy stay visible "
                   "on an axis that starts at 0."),
    "active fraction": ("sparsity", "Measured share of a layer's outputs that are active over the probe images: "
                        "LWTA winners (non-zero outputs), ReLU / GELU outputs > 0. About 1/U for LWTA with U "
                        "competitors; what the data make it for a dense layer."),
    "final-layer label top1": ("labels", "Share of the classifier's output units whose INVERT label is their own "
                               "class name (CLIP-Dissect's final-layer check, Oikarinen & Weng 2023)."),
    "final-layer label top5": ("labels", "Share of output units whose class name is among the unit's 5 best "
                               "labels."),
    "concepts found": ("labels", "Planted-concept coverage (synthetic data only): share of the planted concepts "
                       "(of one group, e.g. shape or colour, or of all) that label at least one unit with "
                       "AUC ≥ 0.9, among the labelled layers only: by default the last stage, where colour, "
                       "pattern or position may have no unit; compare --layers labels earlier stages too."),
    "mean AUC": ("labels", "Mean INVERT score over every labelled unit: the AUC with which the unit's activation "
                 "separates images with and without its label's concept (0.5 = chance), in-sample."),
    "units": ("labels", "Units labelled in the layer."),
    "mean score": ("labels", "Mean INVERT AUC of the layer's labels, in-sample (chosen and scored on the same "
                   "images; the interpretability table has the held-out values)."),
    "distinct labels": ("labels", "Different labels among the layer's units: few = many units share a concept."),
    INTERPRETABLE_UNITS: ("labels", "NetDissect's headline figure (Bau et al. 2017): units whose IoU label "
                          f"(Network-Dissection IoU against the probe's per-pixel concept masks) has IoU > "
                          f"{INTERPRETABLE_IOU:g}, the 'interpretable units'. Probe sets with masks only (synthetic)."),
    INTERPRETABLE_SHARE: ("labels", f"The interpretable units (IoU > {INTERPRETABLE_IOU:g}) as a share of the "
                          "layer's units."),
    INTERPRETABLE_CONCEPTS: ("labels", f"Distinct concepts the interpretable units (IoU > {INTERPRETABLE_IOU:g}) "
                             "detect: how many concepts the layer covers, the figure NetDissect compares networks "
                             "by."),
    "stable fraction": ("training", "Mean over units of the share of training-time dissections after which the "
                        "unit's label no longer changes: 1 = settled from the first dissection."),
    "mean settle epoch": ("training", "Mean over units of the epoch from which the unit's label never changes "
                          "again in the training-time dissections: lower = labels settle earlier."),
    "f1": ("interpretability", "Held-out F1 of a unit's label: the unit binarised at its top 5% of images "
           "against the images that have the label's concept. Capped by the concept's frequency f: a perfect "
           "unit scores at most 0.1 / (0.05 + f)."),
    "auprc": ("interpretability", "Held-out average precision of the label's concept indicator as a score for "
              "the unit's top 5% of images (NeuronEval's AUPRC; the activation as a score for the concept is "
              "inverse AUPRC). Capped by the concept's frequency like F1."),
    "correlation": ("interpretability", "Held-out correlation of the unit's activation with its label's concept "
                    "indicator: also how well the label predicts the activation."),
    VERDICT_METRICS[HELDOUT_SIGNIFICANT]: ("interpretability", "Share of units whose label has held-out "
                                           f"p < {SIGNIFICANT_P:g} (INVERT's Mann-Whitney test on the images it was "
                                           "not chosen on)."),
    "concepts per unit": ("interpretability", "Concepts a unit detects significantly on the held-out images "
                          "(Benjamini-Hochberg, q = 0.05): fewer is more focused (less polysemantic). Grows "
                          "with less noise (more passes, more images) and counts concepts that merely overlap "
                          "the unit's concept."),
    "median": ("interpretability", "A metric followed by 'median': the median over units instead of the mean."),
}


def explain(name: str, group: str | None = None) -> str:
    """The hover text of a metric as a table shows it: ``"layer4 · mean score"``, ``"shape concepts found"``,
    ``"f1 median"`` or, in the sparsity group, a layer name (its active fraction)."""
    if group == "sparsity":
        return GLOSSARY["active fraction"][1]
    base = EVALUATED if name.startswith(EVALUATED) else name.split(" · ")[-1]
    base = re.sub(r"^.* concepts found$", "concepts found", base)
    median = base.endswith(" median") and base != "median"
    base = base.removesuffix(" median")
    text = GLOSSARY.get(base, ("", ""))[1]
    return f"{text} (Median over units.)" if text and median else text


# What the dissection report's Evaluation block shows (lwtakit.analysis.label_evaluation), each row named
# "<measure> (<method>)"; a planted-concept row may start with a group ("size concepts found").
EVALUATION_GLOSSARY: dict[str, str] = {
    "final-layer label top1": "Share of the classifier's output units whose label is their own class name "
                              "(CLIP-Dissect's final-layer check, Oikarinen & Weng 2023, sec. 4.2).",
    "final-layer label top5": "Share of the classifier's output units whose class name is among the unit's 5 best "
                              "labels.",
    "final-layer label CLIP cos": "Mean cosine similarity, in CLIP's text space, of each output unit's label and "
                                  "its class name (CLIP-Dissect's soft final-layer check): 1 = the same text.",
    "concepts found": "Planted-concept coverage (synthetic probe only): share of the concepts planted in the probe "
                      "images (of the group named first, e.g. size or shape, or of all) that label at least one unit "
                      "with AUC ≥ 0.9, among the dissected layers only (--layers adds earlier ones): 0.5 = half of "
                      "them were found.",
}


def evaluation_key(name: str) -> str:
    """The glossary entry of an Evaluation row: "size concepts found (invert)" -> "concepts found"."""
    base = re.sub(r" \([^()]*\)$", "", name)
    return re.sub(r"^.* concepts found$", "concepts found", base)


def explain_evaluation(name: str) -> str:
    """The hover text of a row of the dissection report's Evaluation block ("" for a row it does not know)."""
    return EVALUATION_GLOSSARY.get(evaluation_key(name), "")


def evaluation_glossary(names) -> list[tuple[str, str]]:
    """The glossary entries of the Evaluation rows ``names``, each once, in the order the rows come."""
    keys = dict.fromkeys(evaluation_key(n) for n in names)
    return [(k, EVALUATION_GLOSSARY[k]) for k in keys if k in EVALUATION_GLOSSARY]
