"""Label drift over training: how a unit's label changes between dissections.

Input is the long-format label history (rows with ``epoch, step, layer, unit, method, label``), as written
to ``labels.csv`` by the dissection callback. A dissection is identified by its ``(epoch, step)``: two
dissections in the same epoch (e.g. a mid-epoch checkpoint and the epoch's end) stay two points. Rows
without a ``step`` (older histories) count as one dissection per epoch. All functions are pure.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Mapping


def read_history(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a run's ``labels.csv``, checked before any work uses them (:func:`lwtakit.io.read_table`)."""
    from lwtakit.io import read_table

    return read_table(path, "label history", required=("epoch", "layer", "unit", "method", "label"),
                      integers=("epoch", "unit"), optional_integers=("step",))


def dissection_key(row: Mapping) -> tuple[int, int]:
    """The ``(epoch, step)`` that identifies the dissection a history row belongs to."""
    step = row.get("step")
    return int(row["epoch"]), (-1 if step is None or step == "" else int(step))


def label_sequences(rows: Iterable[Mapping], method: str) -> dict[tuple[str, int], list[tuple[tuple[int, int], str]]]:
    """Per ``(layer, unit)``: its ``((epoch, step), label)`` pairs in training order, for one method."""
    seqs: dict[tuple[str, int], dict[tuple[int, int], str]] = defaultdict(dict)
    for r in rows:
        if r["method"] == method:
            seqs[(r["layer"], int(r["unit"]))][dissection_key(r)] = r["label"]
    return {key: sorted(by_key.items()) for key, by_key in seqs.items()}


def agreement(rows: Iterable[Mapping], method: str) -> dict[str, list[tuple[int, float]]]:
    """Per layer, for each dissection after the first (in ``(epoch, step)`` order): ``(epoch, fraction of
    units whose label equals the previous dissection's)``. ``1 - agreement`` is the share of units whose
    label changed. Two dissections in one epoch give two points with the same epoch."""
    per_layer: dict[str, dict[tuple[int, int], list[bool]]] = defaultdict(lambda: defaultdict(list))
    for (layer, _), seq in label_sequences(rows, method).items():
        for (_, before), (key, after) in zip(seq, seq[1:], strict=False):
            per_layer[layer][key].append(before == after)
    return {layer: [(key[0], sum(v) / len(v)) for key, v in sorted(by_key.items())]
            for layer, by_key in per_layer.items()}


def _settle_index(seq: list[tuple[tuple[int, int], str]]) -> int:
    """Index of the first dissection of the final run of equal labels."""
    i = len(seq) - 1
    while i > 0 and seq[i - 1][1] == seq[-1][1]:
        i -= 1
    return i


def settle_epochs(rows: Iterable[Mapping], method: str) -> dict[tuple[str, int], int]:
    """Per unit: the epoch of the dissection from which its label no longer changed."""
    return {key: seq[_settle_index(seq)][0][0] for key, seq in label_sequences(rows, method).items()}


def stability(rows: Iterable[Mapping], method: str) -> dict[str, dict[str, float]]:
    """Per layer: ``stable_fraction`` (mean over units of the fraction of dissections after which the unit's
    label no longer changes), ``mean_settle_epoch`` and ``dissections`` (the most any unit of the layer had)."""
    acc: dict[str, list[tuple[float, int, int]]] = defaultdict(list)
    for key, seq in label_sequences(rows, method).items():
        i = _settle_index(seq)
        acc[key[0]].append(((len(seq) - i) / len(seq), seq[i][0][0], len(seq)))
    return {layer: {"stable_fraction": sum(s for s, _, _ in v) / len(v),
                    "mean_settle_epoch": sum(e for _, e, _ in v) / len(v),
                    "dissections": max(n for _, _, n in v)} for layer, v in acc.items()}
