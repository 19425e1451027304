"""Evaluation of neuron labels against known answers.

* Final-layer accuracy (CLIP-Dissect, Oikarinen & Weng ICLR 2023, sec. 4.2): unit ``i`` of a classifier's
  output layer should be labelled with ``class_names[i]``; top-1 counts the best label, top-5 whether the
  class is among the five best candidates.
* Planted-concept recovery: on a dataset with planted concepts (ConceptShapes), the fraction of units
  whose label (for a formula: its first term) is the concept they were built or known to detect.
* Similarity to the class name in a text-embedding space (CLIP-Dissect's "CLIP cos" metric): mean cosine
  similarity between the embeddings of each unit's label and of its class name.

Names are compared after normalisation (case, surrounding space, ``_`` vs space).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence

import torch

from ..errors import UserError
from ..labels import LabelRow


def normalise(name) -> str:
    """Lower case, ``_``/``-`` as spaces, single spaces, stripped."""
    return " ".join(re.sub(r"[_\-]", " ", str(name)).lower().split())


def final_layer_accuracy(rows: Sequence[LabelRow] | None, class_names: Sequence[str], *,
                         scores=None, concept_names: Sequence[str] | None = None, k: int = 5) -> dict:
    """Top-1 / top-k label accuracy of a classifier's output units (unit i <-> ``class_names[i]``).

    Either ``rows`` (:class:`~lwtakit.labels.LabelRow`, one per unit; top-k uses the rows' ``top5`` when every
    row has them, else NaN), or ``scores [C, M]`` with ``concept_names`` (M), ranking the concepts per unit.
    Returns ``{"top1", "top5", "n"}`` (``top5`` is top-``k``).
    """
    classes = [normalise(c) for c in class_names]
    if scores is not None:
        if concept_names is None:
            raise UserError("final_layer_accuracy with a score matrix needs concept_names")
        s = torch.as_tensor(scores, dtype=torch.float64)
        if s.dim() != 2 or s.shape[1] != len(concept_names):
            raise UserError(f"scores must be [units, {len(concept_names)} concepts], got {tuple(s.shape)}")
        if s.shape[0] > len(classes):
            raise UserError(f"{s.shape[0]} units but only {len(classes)} class names")
        names = [normalise(c) for c in concept_names]
        top = torch.topk(torch.nan_to_num(s, nan=-math.inf), min(k, s.shape[1]), dim=1).indices
        hits1 = [names[int(top[u, 0])] == classes[u] for u in range(s.shape[0])]
        hitsk = [classes[u] in {names[int(j)] for j in top[u]} for u in range(s.shape[0])]
        n = s.shape[0]
        return {"top1": sum(hits1) / n, "top5": sum(hitsk) / n, "n": n}
    if not rows:
        raise UserError("final_layer_accuracy needs label rows or a score matrix")
    hits1, hitsk = [], []
    have_top = all(r.top5 is not None for r in rows)
    for r in rows:
        u = int(r.unit)
        if not 0 <= u < len(classes):
            raise UserError(f"unit {u} has no class name ({len(classes)} classes); label the classifier layer")
        hits1.append(bool(r.label) and normalise(r.label) == classes[u])
        if have_top:
            hitsk.append(classes[u] in {normalise(x) for x in r.top5[:k]})
    n = len(rows)
    return {"top1": sum(hits1) / n, "top5": sum(hitsk) / n if have_top else float("nan"), "n": n}


def planted_recovery(rows: Sequence[LabelRow], truth: Mapping[int, str]) -> float:
    """Fraction of the units in ``truth`` (unit -> planted concept) whose label, or the first term of
    their formula, is that concept. A unit without a row, or with a negated first term, counts as a miss."""
    if not truth:
        raise UserError("planted_recovery needs at least one unit with a known concept")
    by_unit = {int(r.unit): r for r in rows}
    hits = 0
    for unit, concept in truth.items():
        row = by_unit.get(int(unit))
        if row is None:
            continue
        hits += row.concept is not None and normalise(row.concept) == normalise(concept)
    return hits / len(truth)


def label_similarity(label_embeddings, class_embeddings) -> torch.Tensor:
    """Cosine similarity ``[C]`` between row i of the label embeddings and row i of the class-name
    embeddings (e.g. CLIP text embeddings); its mean is CLIP-Dissect's "CLIP cos" score."""
    a = torch.as_tensor(label_embeddings, dtype=torch.float64)
    b = torch.as_tensor(class_embeddings, dtype=torch.float64)
    if a.shape != b.shape or a.dim() != 2:
        raise UserError(f"label and class embeddings must both be [C, D], got {tuple(a.shape)}, {tuple(b.shape)}")
    return torch.nn.functional.cosine_similarity(a, b, dim=1)


def class_name_similarity(rows: Sequence[LabelRow], class_names: Sequence[str],
                          embed: Callable[[list[str]], torch.Tensor]) -> float:
    """Mean cosine similarity, in the text space of ``embed`` (list of strings -> [n, D]), between each
    unit's label and its class name (units of a classifier layer)."""
    labels = [r.label for r in rows]
    classes = [class_names[r.unit] for r in rows]
    return float(label_similarity(embed(labels), embed(classes)).mean())


def concept_coverage(rows: Sequence[LabelRow], concept_groups: Mapping[str, Sequence[str]],
                     min_score: float = 0.9) -> dict[str, float]:
    """Planted-concept recovery of a trained network: per concept group of the synthetic data (shape,
    colour, ...), the fraction of its concepts that are the label (first formula term) of at least one
    unit with ``score >= min_score`` (AUC for INVERT). Returns ``{"<group> concepts found": fraction}``
    and ``"concepts found"`` over all groups."""
    found = {normalise(r.concept or "") for r in rows if r.score is not None and r.score >= min_score}
    out, hits, total = {}, 0, 0
    for group, names in concept_groups.items():
        got = sum(normalise(n) in found for n in names)
        out[f"{group} concepts found"] = got / len(names) if names else float("nan")
        hits, total = hits + got, total + len(names)
    out["concepts found"] = hits / total if total else float("nan")
    return out
