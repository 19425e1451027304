"""INVERT's compositional labels: left-deep formulas of concepts and their negations joined by AND / OR.

Bykov et al., "Labeling Neural Representations with Inverse Recognition", NeurIPS 2023, sec. 3: a label is a
formula over binary concepts, grown one atom at a time by beam search. :class:`Formula` is that formula: it
evaluates on a concept matrix, prints readably and parses back from its printed form (:meth:`Formula.parse`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...errors import UserError

__all__ = ["Formula"]

# Operators as ``str(Formula)`` prints them: one space on each side.
_OPERATOR = re.compile(r" (AND|OR) ")


@dataclass(frozen=True)
class Formula:
    """A concept formula: an atom (``concept``, ``negated``) or ``left <op> atom`` with op AND / OR.

    Beam search builds left-deep formulas, one atom at a time. ``str()`` prints readably with
    parentheses only where the operator changes: ``red AND NOT circle``, ``(red OR blue) AND striped``.
    """

    op: str | None = None  # None for an atom, else "AND" / "OR"
    left: Formula | None = None
    concept: int = -1
    negated: bool = False
    names: tuple[str, ...] = ()

    @classmethod
    def atom(cls, concept: int, negated: bool, names: Sequence[str]) -> Formula:
        return cls(None, None, int(concept), bool(negated), tuple(names))

    def extend(self, op: str, concept: int, negated: bool) -> Formula:
        return Formula(op, self, int(concept), bool(negated), self.names)

    @classmethod
    def parse(cls, text: str, names: Sequence[str] | None = None) -> Formula:
        """The formula whose ``str()`` is ``text``: the exact inverse of printing.

        ``text`` is a left-deep formula as :meth:`__str__` writes it: atoms ``name`` or ``NOT name`` joined by
        `` AND `` / `` OR `` (one space each side), the left part in parentheses wherever the operator changes,
        e.g. ``(red OR NOT blue) AND striped``. Concept names may contain spaces, underscores and parentheses,
        but not the words AND / OR as whole tokens nor start with ``NOT ``. ``names`` fixes the concept
        indices (and :attr:`names`) as in the :class:`Formula` that was printed; without it the names are
        taken in order of appearance. Raises :class:`UserError` for text that printing cannot produce
        (e.g. ``a AND (b OR c)``) or, with ``names``, a concept not among them.
        """
        pieces = _OPERATOR.split(text)
        words, ops = pieces[0::2], pieces[1::2]
        atoms = [_parse_atom(text, word, _parentheses(ops, j)) for j, word in enumerate(words)]
        if names is None:
            names = list(dict.fromkeys(name for name, _ in atoms))
        index: dict[str, int] = {}
        for i, name in enumerate(names):
            index.setdefault(name, i)
        missing = [name for name, _ in atoms if name not in index]
        if missing:
            raise UserError(f"formula {text!r} names unknown concepts {missing}")
        (first, negated), rest = atoms[0], atoms[1:]
        formula = cls.atom(index[first], negated, names)
        for op, (name, neg) in zip(ops, rest, strict=True):
            formula = formula.extend(op, index[name], neg)
        if str(formula) != text:
            raise UserError(f"{text!r} is not a left-deep formula as printed by INVERT (it reads back as "
                            f"{str(formula)!r})")
        return formula

    @property
    def length(self) -> int:
        return 1 if self.op is None else self.left.length + 1

    def ops(self) -> list[str]:
        """Operators joining atom ``i + 1`` to the formula of atoms ``0..i``."""
        return [] if self.op is None else self.left.ops() + [self.op]

    def atoms(self) -> list[tuple[int, bool]]:
        """``[(concept, negated), ...]`` in order of appearance."""
        return [(self.concept, self.negated)] if self.op is None else \
            self.left.atoms() + [(self.concept, self.negated)]

    @property
    def first_concept(self) -> str:
        concept, _ = self.atoms()[0]
        return self.names[concept]

    def _atom_str(self) -> str:
        return ("NOT " if self.negated else "") + self.names[self.concept]

    def __str__(self) -> str:
        if self.op is None:
            return self._atom_str()
        left = str(self.left)
        if self.left.op is not None and self.left.op != self.op:
            left = f"({left})"
        return f"{left} {self.op} {self._atom_str()}"

    def evaluate(self, labels: torch.Tensor) -> torch.Tensor:
        """Boolean ``[N]`` vector of the formula on concept labels ``[N, K]``."""
        col = labels[:, self.concept].bool()
        if self.negated:
            col = ~col
        if self.op is None:
            return col
        left = self.left.evaluate(labels)
        return left & col if self.op == "AND" else left | col


def _parentheses(ops: Sequence[str], j: int) -> tuple[int, int]:
    """How many ``(`` open before and ``)`` close after atom ``j`` in the printed left-deep formula.

    The formula of atoms ``0..i-1`` is parenthesised when it has an operator that differs from the one
    joining atom ``i`` (``ops[i - 1]``): that adds one ``(`` in front of atom 0 and one ``)`` after atom
    ``i - 1``.
    """
    changes = [i for i in range(2, len(ops) + 1) if ops[i - 2] != ops[i - 1]]
    return (len(changes) if j == 0 else 0), int(j + 1 in changes)


def _parse_atom(text: str, word: str, parentheses: tuple[int, int]) -> tuple[str, bool]:
    """``(name, negated)`` of one printed atom with its surrounding parentheses."""
    opens, closes = parentheses
    if not (word.startswith("(" * opens) and word.endswith(")" * closes)):
        raise UserError(f"{text!r} is not a left-deep formula as printed by INVERT: parentheses around {word!r}")
    word = word[opens:len(word) - closes]
    negated = word.startswith("NOT ")
    name = word[4:] if negated else word
    if not name:
        raise UserError(f"formula {text!r} has an empty concept name")
    return name, negated
