"""Label drift over training: how a unit's label changes between dissections.

Input is the long-format label history (rows with ``epoch, layer, unit, method, label``), as written to
``labels.csv`` by the dissection callback. All functions are pure.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping


def label_sequences(rows: Iterable[Mapping], method: str) -> dict[tuple[str, int], list[tuple[int, str]]]:
    """Per ``(layer, unit)``: its ``(epoch, label)`` pairs in epoch order, for one method."""
    seqs: dict[tuple[str, int], dict[int, str]] = defaultdict(dict)
    for r in rows:
        if r["method"] == method:
            seqs[(r["layer"], int(r["unit"]))][int(r["epoch"])] = r["label"]
    return {key: sorted(by_epoch.items()) for key, by_epoch in seqs.items()}


def agreement(rows: Iterable[Mapping], method: str) -> dict[str, list[tuple[int, float]]]:
    """Per layer, for each dissection after the first: ``(epoch, fraction of units whose label equals the
    previous dissection's)``. ``1 - agreement`` is the share of units whose label changed."""
    per_layer: dict[str, dict[int, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for (layer, _), seq in label_sequences(rows, method).items():
        for (_, before), (epoch, after) in zip(seq, seq[1:], strict=False):
            per_layer[layer][epoch].append(before == after)
    return {layer: [(e, sum(v) / len(v)) for e, v in sorted(by_epoch.items())]
            for layer, by_epoch in per_layer.items()}


def settle_epochs(rows: Iterable[Mapping], method: str) -> dict[tuple[str, int], int]:
    """Per unit: the epoch of the dissection from which its label no longer changed."""
    out = {}
    for key, seq in label_sequences(rows, method).items():
        settle = seq[-1][0]
        for (epoch, label) in reversed(seq[:-1]):
            if label != seq[-1][1]:
                break
            settle = epoch
        out[key] = settle
    return out


def stability(rows: Iterable[Mapping], method: str) -> dict[str, dict[str, float]]:
    """Per layer: ``stable_fraction`` (mean over units of the fraction of dissections after which the unit's
    label no longer changes) and ``mean_settle_epoch``."""
    rows = list(rows)
    seqs = label_sequences(rows, method)
    settle = settle_epochs(rows, method)
    acc: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for key, seq in seqs.items():
        epochs = [e for e, _ in seq]
        stable = sum(e >= settle[key] for e in epochs) / len(epochs)
        acc[key[0]].append((stable, settle[key]))
    return {layer: {"stable_fraction": sum(s for s, _ in v) / len(v),
                    "mean_settle_epoch": sum(e for _, e in v) / len(v)} for layer, v in acc.items()}
