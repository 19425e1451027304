"""Concept hierarchies: class labels expanded into the labels of their ancestors, as INVERT labels ImageNet.

INVERT (Bykov et al. 2023, Sec. 4) explains units with the ImageNet classes and their WordNet hypernyms: an image
is positive for ``dog`` when its class descends from ``dog``. Here the hierarchy is a user's file (no WordNet
ships), a parent map ``child -> parents`` read by :func:`read_hierarchy`:

- CSV (any other suffix): one row per child, ``child,parent[,parent...]``; blank lines and ``#`` comments are
  skipped; a child may have several rows;
- JSON (``.json``): an object ``{"child": ["parent", ...]}`` (or a single parent as a string).

Children are class (or concept) names of the probe set or parents named elsewhere in the file; parents of
parents chain (``beagle -> dog -> canine``). Names match ignoring case, ``_`` and repeated spaces.
:meth:`Hierarchy.bind` turns the map into a membership matrix ``[K, K + A]`` over the probe's K names and the A
ancestors above them, and :func:`expand` gives every image the labels of its classes and all their ancestors.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lwtakit.errors import UserError


def _key(name: str) -> str:
    return " ".join(str(name).replace("_", " ").lower().split())


@dataclass(frozen=True)
class Hierarchy:
    """A parent map read from ``source``: ``parents[child] = (parent, ...)`` by normalised name, ``spelling`` the
    file's spelling of each name (``_`` as a space) and ``where[child]`` the place of its first row, for errors."""

    source: str
    parents: dict[str, tuple[str, ...]]
    spelling: dict[str, str]
    where: dict[str, str]

    def ancestors(self, name: str) -> list[str]:
        """Every ancestor of ``name`` (normalised), nearest first, each once; a cycle is a :class:`UserError`."""
        out: dict[str, None] = {}

        def visit(node: str, path: tuple[str, ...]) -> None:
            for parent in self.parents.get(node, ()):
                if parent in path:
                    cycle = " -> ".join(self.spelling[n] for n in (*path[path.index(parent):], parent))
                    raise UserError(f"hierarchy {self.source} has a cycle: {cycle}; a concept cannot be its own "
                                    "ancestor")
                out.setdefault(parent)
                visit(parent, (*path, parent))

        visit(name, (name,))
        return list(out)

    def bind(self, names: list[str]) -> tuple[list[str], np.ndarray]:
        """``(names + ancestors, membership)``: the probe's K ``names`` followed by the A ancestors above them (in
        the order the file first names them) and ``membership`` bool ``[K, K + A]``, row i the concepts of name
        i (itself and every ancestor; an ancestor that is itself one of ``names`` is that name's column)."""
        index = {_key(n): i for i, n in enumerate(names)}
        parents = {p for ps in self.parents.values() for p in ps}
        unknown = [c for c in self.parents if c not in index and c not in parents]
        if unknown:
            shown = ", ".join(f"'{self.spelling[c]}' ({self.where[c]})" for c in unknown[:3])
            raise UserError(f"hierarchy {self.source}: {len(unknown)} children are neither concepts of the probe set "
                            f"nor parents in the file: {shown}; the probe's concepts are e.g. "
                            f"{', '.join(names[:5])}")
        ancestors = [self.ancestors(_key(n)) for n in names]
        order = {name: i for i, name in enumerate(self.spelling)}  # first mention in the file
        new = sorted({a for anc in ancestors for a in anc if a not in index}, key=order.__getitem__)
        if not new and not any(ancestors):
            raise UserError(f"hierarchy {self.source} names none of the probe set's concepts (e.g. "
                            f"{', '.join(names[:5])}); check the spelling of its children")
        column = {**index, **{a: len(names) + j for j, a in enumerate(new)}}
        membership = np.zeros((len(names), len(names) + len(new)), dtype=bool)
        for i, anc in enumerate(ancestors):
            membership[i, [i, *(column[a] for a in anc)]] = True
        return list(names) + [self.spelling[a] for a in new], membership


def expand(labels: np.ndarray, membership: np.ndarray) -> np.ndarray:
    """Labels ``[N, K]`` -> ``[N, K + A]``: an image has a concept when one of its labels carries it."""
    return (np.asarray(labels, dtype=np.int64) @ membership.astype(np.int64)) > 0


def read_hierarchy(path: str | os.PathLike) -> Hierarchy:
    """The parent map in ``path`` (CSV ``child,parent,...`` rows or a JSON object; see the module docstring);
    a bad row is a :class:`UserError` naming the file and line (or JSON key)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"hierarchy file {path} does not exist; give a CSV (child,parent,...) or JSON parent map")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read hierarchy file {path} as UTF-8 text ({exc})") from None
    rows = _json_rows(path, text) if path.suffix.lower() == ".json" else _csv_rows(path, text)
    parents: dict[str, dict[str, None]] = {}
    spelling: dict[str, str] = {}
    where: dict[str, str] = {}
    for place, child, row_parents in rows:
        for name in (child, *row_parents):
            spelling.setdefault(_key(name), " ".join(name.replace("_", " ").split()))
        where.setdefault(_key(child), place)
        parents.setdefault(_key(child), {}).update(dict.fromkeys(_key(p) for p in row_parents))
    if not parents:
        raise UserError(f"hierarchy file {path} has no rows; write child,parent[,parent...] per line")
    return Hierarchy(str(path), {c: tuple(p) for c, p in parents.items()}, spelling, where)


def _csv_rows(path: Path, text: str) -> list[tuple[str, str, list[str]]]:
    rows = []
    for n, fields in enumerate(csv.reader(text.splitlines()), 1):
        fields = [f.strip() for f in fields]
        if not any(fields) or fields[0].startswith("#"):
            continue
        if len(fields) < 2 or not all(fields):
            raise UserError(f"hierarchy {path} line {n}: expected child,parent[,parent...] with no empty field, "
                            f"got {','.join(fields)[:60]!r}")
        rows.append((f"line {n}", fields[0], fields[1:]))
    return rows


def _json_rows(path: Path, text: str) -> list[tuple[str, str, list[str]]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"hierarchy {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise UserError(f"hierarchy {path} must hold a JSON object {{\"child\": [\"parent\", ...]}}")
    rows = []
    for child, value in data.items():
        parents = [value] if isinstance(value, str) else value
        if not child.strip() or not isinstance(parents, list) or not parents \
                or not all(isinstance(p, str) and p.strip() for p in parents):
            raise UserError(f"hierarchy {path} key {child!r}: the value must be a parent name or a non-empty list "
                            "of parent names")
        rows.append((f"key {child!r}", child.strip(), [p.strip() for p in parents]))
    return rows
