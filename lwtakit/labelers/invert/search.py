"""INVERT's label search: beam search over concept formulas with parsimony (Bykov et al., NeurIPS 2023, Alg. 1).

Every unit gets the admissible formula of highest AUROC (:mod:`.ranks`) found by beam search up to length
``max_length``. Differences from the reference implementation:

* Beam-search candidates ``f AND c``, ``f AND NOT c``, ``f OR c``, ``f OR NOT c`` for all concepts ``c``
  are scored together from two matrix products (``(r * f) @ C`` and ``f @ C``), never materialising
  the candidate label matrix.
* Parsimony: a longer formula replaces a shorter one only when it earns its place (``min_gain`` AUC
  over its parent and over the best shorter label, and optionally a significant added term), so a unit
  that follows one concept keeps a one-concept label at ``max_length=3``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import UserError
from ...evaluation.ranks import auc_from, check_inputs, chunk_size, mwu_logp, one_sided_logp, rank_data
from ..configs import InvertConfig
from .formula import Formula

__all__ = ["InvertConfig", "label_units", "order_top"]


@dataclass(frozen=True)
class _Concepts:
    """The concept matrix of one :func:`label_units` call in the forms the search reads."""

    matrix: torch.Tensor  # float64 [N, K]
    mask: torch.Tensor  # bool [N, K]
    counts: torch.Tensor  # float64 [K] positives per concept
    names: list[str]

    @property
    def N(self) -> int:
        return self.matrix.shape[0]

    @property
    def K(self) -> int:
        return self.matrix.shape[1]

    def column(self, concept: int, negated: bool) -> torch.Tensor:
        return ~self.mask[:, concept] if negated else self.mask[:, concept]

    def atom_name(self, j: int) -> str:
        """Name of atom ``j`` of the ``2K`` atoms: concepts ``0..K-1``, then their negations."""
        return self.names[j % self.K] if j < self.K else "NOT " + self.names[j % self.K]


@dataclass(frozen=True)
class _Unit:
    """One unit: activations ``x [N]``, their float64 ``ranks [N]`` and the concepts' rank sums ``rC [K]``
    (``ranks @ C``, computed for a chunk of units in one matmul)."""

    x: torch.Tensor
    ranks: torch.Tensor
    rC: torch.Tensor

    @property
    def r_total(self) -> torch.Tensor:
        return self.ranks.sum()


@dataclass
class _Node:
    formula: Formula
    labels: torch.Tensor  # bool [N]
    auc: float


def _term_logp(x: torch.Tensor, with_term: torch.Tensor, without_term: torch.Tensor) -> float:
    """log p that a term is supported by the unit: the images whose label the term flips must behave
    like their new label (one-sided Mann-Whitney).

    Images the term makes positive (``with & ~without``) must activate more than the images negative in
    both; images it makes negative (``without & ~with``) must activate less than the images positive in
    both. Both tests must pass when both kinds of flips occur (the larger p counts); a term that flips
    nothing gets p = 1.
    """
    gained, lost = with_term & ~without_term, without_term & ~with_term
    logps = []
    if bool(gained.any()):
        logps.append(one_sided_logp(x, gained, ~with_term & ~without_term))
    if bool(lost.any()):
        logps.append(one_sided_logp(x, with_term & without_term, lost))
    if not logps:
        return 0.0
    return float("nan") if any(math.isnan(v) for v in logps) else max(logps)


def _drop_term(formula: Formula, i: int) -> Formula:
    """``formula`` without its atom ``i`` (the operator joining it goes too)."""
    atoms, ops = formula.atoms(), formula.ops()
    if i == 0:
        atoms, ops = atoms[1:], ops[1:]
    else:
        atoms, ops = atoms[:i] + atoms[i + 1:], ops[:i - 1] + ops[i:]
    out = Formula.atom(atoms[0][0], atoms[0][1], formula.names)
    for (concept, neg), op in zip(atoms[1:], ops, strict=True):
        out = out.extend(op, concept, neg)
    return out


def _every_term_earns(x, node: _Node, concepts: torch.Tensor, log_alpha: float) -> bool:
    """Drop-one check: without any one of its terms the formula must label the unit significantly worse."""
    for i in range(node.formula.length):
        without = _drop_term(node.formula, i).evaluate(concepts)
        if not _term_logp(x, node.labels, without) <= log_alpha:
            return False
    return True


def _extension_logp(x: torch.Tensor, F: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """log p ``[B, 4, K]`` of the term test (:func:`_term_logp`) for the extensions ``f AND c``,
    ``f AND NOT c``, ``f OR c``, ``f OR NOT c`` of formulas ``F`` (bool ``[B, N]``) by every concept,
    vectorised: AND splits the positives of ``f`` (ranks within ``f``), OR its negatives (ranks within
    ``~f``). Ranks within a side come from one sort with the other side's values set to +inf (they
    rank last and do not change the ranks before them); one matmul scores all concepts."""
    sides = torch.cat([F, ~F], 0)                                   # [2B, N]
    X = torch.where(sides.t(), x.unsqueeze(1), torch.full_like(x, math.inf).unsqueeze(1))  # [N, 2B]
    ranks, tie = rank_data(X)
    n_side = sides.sum(1).to(torch.float64)                          # [2B]
    n_out = x.numel() - n_side
    tie = tie - (n_out**3 - n_out)                                   # drop the +inf tie group
    ranks = torch.where(sides.t(), ranks, torch.zeros_like(ranks))
    Cf = C.to(torch.float64)
    R = ranks.t() @ Cf                                               # [2B, K]
    n_c = sides.to(torch.float64) @ Cf                               # [2B, K]
    R_not = ranks.sum(0, keepdim=True).t() - R
    ns = n_side.unsqueeze(1)
    U = torch.stack([R - n_c * (n_c + 1) / 2, R_not - (ns - n_c) * (ns - n_c + 1) / 2], 1)  # [2B, 2, K]
    n_pos = torch.stack([n_c, ns - n_c], 1)
    logp = mwu_logp(U, n_pos, ns.unsqueeze(1) - n_pos, tie, "greater")
    logp = torch.where(ns.unsqueeze(1) >= 2, logp, torch.full_like(logp, float("nan")))
    B = F.shape[0]
    return torch.cat([logp[:B], logp[B:]], 1)                        # [B, 4, K]: AND c, AND NOT c, OR ...


def _atom_scores(unit: _Unit, concepts: _Concepts, config: InvertConfig):
    """AUC ``[2K]`` of the atoms (concepts, then their negations) and whether each is admissible."""
    N = concepts.N
    R1 = torch.cat([unit.rC, unit.r_total - unit.rC])
    n1 = torch.cat([concepts.counts, N - concepts.counts])
    return auc_from(R1, n1, N), config.admissible(n1, N)


def _first_beam(auc1, ok1, concepts: _Concepts, beam: int) -> tuple[list[_Node], list[_Node]]:
    """Length 1: the ``beam`` best atoms (the beam) and the admissible ones among the atoms examined
    (label candidates, best first). The beam may hold formulas outside the fraction bounds (their
    extensions may fall inside, e.g. "(a OR b) AND c"); only admissible ones become labels."""
    K = concepts.K
    current: list[_Node] = []
    found: list[_Node] = []
    for j in torch.argsort(torch.nan_to_num(auc1, nan=-1.0), descending=True, stable=True).tolist():
        if math.isnan(float(auc1[j])) or (len(current) >= beam and found):
            break
        concept, neg = j % K, j >= K
        node = _Node(Formula.atom(concept, neg, concepts.names), concepts.column(concept, neg), float(auc1[j]))
        if len(current) < beam:
            current.append(node)
        if bool(ok1[j]):
            found.append(node)
    return current, found


def _extension_auc(unit: _Unit, current: list[_Node], concepts: _Concepts):
    """AUC and positive counts ``[B, 4, K]`` of ``f AND c``, ``f AND NOT c``, ``f OR c``, ``f OR NOT c`` for
    every beam formula ``f`` and concept ``c``, from the two products ``(r * f) @ C`` and ``f @ C``."""
    C, counts, N, rC = concepts.matrix, concepts.counts, concepts.N, unit.rC
    r_total = unit.r_total
    F = torch.stack([node.labels for node in current]).to(torch.float64)  # [B, N]
    rF = (F * unit.ranks) @ C            # [B, K] rank sums of "f AND c"
    nF = F @ C                           # [B, K] counts of "f AND c"
    rf = (F * unit.ranks).sum(1, keepdim=True)
    nf = F.sum(1, keepdim=True)
    R = torch.stack([rF, rf - rF, rf + rC - rF, r_total - rC + rF], dim=1)   # [B, 4, K]
    n = torch.stack([nF, nf - nF, nf + counts - nF, N - counts + nF], dim=1)
    return auc_from(R, n, N), n


def _extension_ok(unit: _Unit, current: list[_Node], auc, n, concepts: _Concepts, config: InvertConfig,
                  log_alpha: float | None):
    """Which extensions may enter the beam ``[B, 4, K]``: new concept, neither empty nor everything, and the
    parsimony tests; with the Bonferroni-corrected level of this step's term test (None without it)."""
    K = concepts.K
    # on the device of the scores: a search on CUDA would otherwise mix devices here
    parent_auc = torch.tensor([node.auc for node in current], dtype=torch.float64, device=auc.device).view(-1, 1, 1)
    used = torch.zeros(len(current), 1, K, dtype=torch.bool, device=auc.device)
    for b, node in enumerate(current):
        for concept, _ in node.formula.atoms():
            used[b, 0, concept] = True
    ok = (n > 0) & (n < concepts.N) & ~used
    if config.min_gain > 0:  # parsimony: the added term must earn min_gain over its parent
        ok &= auc >= parent_auc + config.min_gain
    step_log_alpha = None
    if log_alpha is not None:  # ... and be significant, Bonferroni over the extensions examined
        step_log_alpha = log_alpha - math.log(ok.numel())
        term = _extension_logp(unit.x, torch.stack([node.labels for node in current]), concepts.matrix)
        ok &= term <= step_log_alpha
    return ok, step_log_alpha


def _next_beam(flat, adm, current: list[_Node], concepts: _Concepts, beam: int) -> tuple[list[_Node], list[_Node]]:
    """The next beam and the admissible label candidates (best first) from the extensions' scores ``flat``
    (``-1`` where not allowed), skipping formulas whose labels an earlier one already has."""
    K = concepts.K
    nxt: list[_Node] = []
    found: list[_Node] = []
    seen: set[bytes] = set()
    for j in torch.argsort(flat, descending=True).tolist():
        if flat[j] < 0 or (len(nxt) >= beam and found):
            break
        b, rest = divmod(j, 4 * K)
        kind, concept = divmod(rest, K)
        op, neg = ("AND" if kind < 2 else "OR"), kind in (1, 3)
        parent = current[b]
        col = concepts.column(concept, neg)
        lab = parent.labels & col if op == "AND" else parent.labels | col
        key = np.packbits(lab.cpu().numpy()).tobytes()
        if key in seen:  # "a AND b" is reached from both a and b
            continue
        seen.add(key)
        node = _Node(parent.formula.extend(op, concept, neg), lab, float(flat[j]))
        if len(nxt) < beam:
            nxt.append(node)
        if bool(adm[j]):
            found.append(node)
    return nxt, found


def _choose(shortest: _Node, longer: list[list[tuple[_Node, float | None]]], x, concepts: _Concepts,
            min_gain: float) -> _Node:
    """Parsimony: a longer label replaces the chosen one only if it gains ``min_gain`` AUC and (with a term
    test level) each of its terms passes the drop-one test. ``longer[i]``: candidates of length ``i + 2``,
    best first, with their step's level."""
    chosen = shortest
    for candidates in longer:
        for cand, level in candidates:
            if cand.auc < chosen.auc + min_gain:
                break  # sorted by AUC: no later candidate gains enough
            if level is None or _every_term_earns(x, cand, concepts.mask, level):
                chosen = cand
                break
    return chosen


def _search_unit(unit: _Unit, concepts: _Concepts, config: InvertConfig) -> tuple[_Node | None, list[str]]:
    """Beam search for one unit: its chosen label (None when no atom is admissible) and its top five atoms."""
    log_alpha = math.log(config.term_alpha) if config.term_alpha else None
    auc1, ok1 = _atom_scores(unit, concepts, config)
    current, shortest = _first_beam(auc1, ok1, concepts, config.beam)
    if not shortest:
        return None, []
    longer: list[list[tuple[_Node, float | None]]] = []
    for _length in range(2, config.max_length + 1):
        auc, n = _extension_auc(unit, current, concepts)
        ok, step_log_alpha = _extension_ok(unit, current, auc, n, concepts, config, log_alpha)
        flat = torch.where(ok, auc, torch.full_like(auc, -1.0)).flatten()
        nxt, found = _next_beam(flat, config.admissible(n, concepts.N).flatten(), current, concepts, config.beam)
        longer.append([(node, step_log_alpha) for node in found])
        if not nxt:
            break
        current = nxt
    chosen = _choose(shortest[0], longer, unit.x, concepts, config.min_gain)
    top = [concepts.atom_name(j)
           for j in order_top(torch.where(ok1, auc1, torch.full_like(auc1, float("nan"))), 5)]
    return chosen, top


def _unlabelled(unit: int) -> dict:
    """Row of a unit whose concepts are all inadmissible."""
    return {"unit": unit, "label": None, "score": float("nan"), "auc": float("nan"),
            "p_value": float("nan"), "length": 0, "formula": None, "top5": []}


def _label_atoms(ids, RC, ties, concepts: _Concepts, config: InvertConfig) -> list[dict]:
    """Length-1 labels of a chunk of units, vectorised: the same choice as :func:`_search_unit` with
    ``max_length=1`` (the admissible concept or negation of highest AUC), its p-value (``config.alternative``)
    and top five."""
    N = concepts.N
    R1 = torch.cat([RC, N * (N + 1) / 2 - RC], dim=1)  # [chunk, 2K]; rank sum of NOT c = total - that of c
    n1 = torch.cat([concepts.counts, N - concepts.counts]).expand_as(R1)
    auc1 = auc_from(R1, n1, N)
    admissible = config.admissible(n1, N) & ~auc1.isnan()
    masked = torch.where(admissible, auc1, torch.full_like(auc1, -1.0))
    order = torch.argsort(masked, dim=1, descending=True, stable=True)[:, :5]
    best = order[:, :1]
    n_pos = n1.gather(1, best)
    logp = mwu_logp(R1.gather(1, best) - n_pos * (n_pos + 1) / 2, n_pos, N - n_pos, ties, config.alternative)
    rows = []
    for j, unit in enumerate(ids):
        b = int(best[j, 0])
        if not bool(admissible[j, b]):
            rows.append(_unlabelled(unit))
            continue
        formula = Formula.atom(b % concepts.K, b >= concepts.K, concepts.names)
        auc = float(auc1[j, b])
        top = [concepts.atom_name(i) for i in order[j].tolist() if admissible[j, i]]
        rows.append({"unit": unit, "label": str(formula), "score": auc, "auc": auc, "p_value": float(logp[j, 0].exp()),
                     "length": 1, "formula": formula, "top5": top})
    return rows


def _searched_row(unit: int, node: _Node | None, top: list[str], ranks, ties, alternative: str) -> dict:
    """Row of a unit labelled by the beam search, with the Mann-Whitney p-value of its label under
    ``alternative`` (``ranks [N]`` the unit's ranks, ``ties [1]`` its tie term)."""
    if node is None:
        return _unlabelled(unit)
    N = ranks.shape[0]
    lab = node.labels.to(torch.float64)
    n_pos = lab.sum()
    U = ranks @ lab - n_pos * (n_pos + 1) / 2
    logp = mwu_logp(U.view(1, 1), n_pos, N - n_pos, ties, alternative)
    return {"unit": unit, "label": str(node.formula), "score": node.auc, "auc": node.auc,
            "p_value": float(logp.exp()), "length": node.formula.length, "formula": node.formula, "top5": top}


def order_top(auc1: torch.Tensor, k: int) -> list[int]:
    """Indices of the ``k`` highest AUCs, best first (stable on ties), NaN excluded."""
    order = torch.argsort(torch.nan_to_num(auc1, nan=-1.0), descending=True, stable=True)
    return [j for j in order[:k].tolist() if not math.isnan(float(auc1[j]))]


def label_units(acts, concept_labels, concept_names: Sequence[str], config: InvertConfig | None = None, *,
                units: Sequence[int] | None = None, progress: bool | None = None, **overrides) -> list[dict]:
    """Label every unit with its best concept formula by AUC (INVERT, Bykov et al. 2023, Alg. 1).

    ``acts [N, C]``, ``concept_labels`` bool ``[N, K]``, ``concept_names`` K names. ``config`` (an
    :class:`InvertConfig`, default ``InvertConfig()``) with any of its fields overridden by keyword
    (``label_units(acts, C, names, max_length=3)``). Atoms are concepts and their negations; a formula is
    admissible when its positive fraction lies in ``[min_fraction, max_fraction]`` (reference defaults 0 and
    0.5). Beam search keeps ``beam`` formulas per length up to ``max_length``.

    Parsimony (beyond the reference), two knobs:

    * ``min_gain``: an extension ``f op c`` enters the beam only if its AUC exceeds its parent's by
      ``min_gain``, and a longer label replaces the chosen shorter one only if it gains ``min_gain`` more.
    * ``term_alpha`` (default 0.01; None switches it off): the added term must be significant (one-sided
      Mann-Whitney, see :func:`_term_logp`: the images it flips behave like their new label) at a
      family-wise level ``term_alpha`` per beam step (Bonferroni over the ``B x 4K`` extensions examined),
      and a longer label is accepted only if *each* of its terms passes that test against the formula
      without it (drop-one). This stops small-sample AUC noise (rare concepts ANDed together, one of many
      concepts splitting the positives by chance) from beating a one-concept label.

    ``min_gain=0, term_alpha=None`` (:meth:`InvertConfig.without_parsimony`) is the reference: the best AUC wins.

    Rows: ``unit, label, score (= auc), auc, p_value`` (Mann-Whitney test of the final label: one-sided,
    positives greater, by default; ``alternative="two-sided"`` gives the reference implementation's p, twice
    the one-sided one when AUC > 0.5, capped at 1), ``length, formula`` (:class:`Formula`) and ``top5`` (best
    five atoms). Units whose concepts are all inadmissible get ``label=None`` and NaN scores.
    """
    acts, labels = check_inputs(acts, concept_labels)
    N, n_units = acts.shape
    K = labels.shape[1]
    names = [str(s) for s in concept_names]
    if len(names) != K:
        raise UserError(f"{len(names)} concept names for {K} concept columns")
    config = dataclasses.replace(config or InvertConfig(), **overrides)
    unit_ids = list(range(n_units)) if units is None else [int(u) for u in units]
    C = labels.to(torch.float64)
    concepts = _Concepts(C, labels, C.sum(0), names)
    if progress is None:
        progress = config.max_length > 1 and len(unit_ids) > 64
    from tqdm.auto import tqdm

    rows = []
    chunk = chunk_size(N, len(unit_ids))
    bar = tqdm(total=len(unit_ids), desc="INVERT", disable=not progress, leave=False)
    for lo in range(0, len(unit_ids), chunk):
        ids = unit_ids[lo:lo + chunk]
        X = acts[:, ids].to(torch.float64)
        ranks, ties = rank_data(X)
        RC = ranks.t() @ C  # [chunk, K]: length-1 rank sums of all units in one matmul
        if config.max_length == 1:  # no search: the best admissible atom of every unit of the chunk at once
            rows += _label_atoms(ids, RC, ties, concepts, config)
            bar.update(len(ids))
            continue
        for j, unit in enumerate(ids):
            node, top = _search_unit(_Unit(X[:, j], ranks[:, j], RC[j]), concepts, config)
            rows.append(_searched_row(unit, node, top, ranks[:, j], ties[j:j + 1], config.alternative))
            bar.update(1)
    bar.close()
    return rows
