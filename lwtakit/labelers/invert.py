"""INVERT: label units by the AUC of their activations for (compositional) binary concepts.

Bykov et al., "Labeling Neural Representations with Inverse Recognition", NeurIPS 2023. A unit's score
for a concept is the AUROC of the unit's activation as a classifier of the concept (sec. 3, eq. 2),
compositional labels are formulas of concepts and their negations joined by AND / OR found by beam
search up to length L with a bound on the concept's positive fraction, and the significance of a label is
a Mann-Whitney U test.

Differences from the reference implementation (which loops over concepts with torchmetrics):

* :func:`auc_matrix` computes the AUROC of *all units x all concepts* at once from rank sums
  (Mann & Whitney 1947; Hanley & McNeil 1982, eq. 2):
  ``AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` where ``R_pos`` is the sum of the (tie-averaged)
  ranks of the positives. Ranks are computed once per unit, then ``R = ranks^T @ labels`` is one matmul.
  Ties count one half, exactly as the trapezoidal ROC area of ``torchmetrics`` BinaryAUROC.
* Beam-search candidates ``f AND c``, ``f AND NOT c``, ``f OR c``, ``f OR NOT c`` for all concepts ``c``
  are scored together from two matrix products (``(r * f) @ C`` and ``f @ C``), never materialising
  the candidate label matrix.
* Parsimony: a longer formula replaces a shorter one only when it earns its place (``min_gain`` AUC
  over its parent and over the best shorter label, and optionally a significant added term), so a unit
  that follows one concept keeps a one-concept label at ``max_length=3``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import special

from ..errors import UserError

__all__ = ["Formula", "auc_matrix", "rank_data", "mann_whitney_pvalues", "label_units", "formula_auc"]


# --------------------------------------------------------------------------------------------------
# Ranks, AUC, Mann-Whitney U
# --------------------------------------------------------------------------------------------------
def _as_tensor(x, dtype=None) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    return t.to(dtype) if dtype is not None else t


def rank_data(acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average ranks (1-based, ties get the mean of their ranks) of every column of ``acts [N, C]``.

    Returns ``(ranks [N, C] float64, tie_term [C] float64)`` with ``tie_term = sum_groups (t^3 - t)``
    over groups of ``t`` tied values (used by the Mann-Whitney variance). Same ranks as
    ``scipy.stats.rankdata(method="average", axis=0)``.
    """
    x = acts.to(torch.float64)
    N = x.shape[0]
    values, order = torch.sort(x, dim=0, stable=True)
    pos = torch.arange(N, device=x.device, dtype=torch.int64).unsqueeze(1).expand_as(values)
    new_group = torch.ones_like(values, dtype=torch.bool)
    new_group[1:] = values[1:] != values[:-1]
    last_of_group = torch.ones_like(values, dtype=torch.bool)
    last_of_group[:-1] = new_group[1:]
    # Start of each position's tie group: running max of group starts; end: reversed running min.
    start = torch.where(new_group, pos, torch.zeros_like(pos)).cummax(dim=0).values
    end = torch.where(last_of_group, pos, torch.full_like(pos, N)).flip(0).cummin(dim=0).values.flip(0)
    sorted_ranks = (start + end).to(torch.float64) / 2 + 1
    ranks = torch.empty_like(sorted_ranks).scatter_(0, order, sorted_ranks)
    t = (end - start + 1).to(torch.float64)
    tie_term = (t * t - 1).sum(0)  # sum over positions of (t^2 - 1) == sum over groups of (t^3 - t)
    return ranks, tie_term


def _check_inputs(acts, labels) -> tuple[torch.Tensor, torch.Tensor]:
    acts = _as_tensor(acts)
    labels = _as_tensor(labels)
    if acts.dim() != 2:
        raise UserError(f"activations must be [N, C], got shape {tuple(acts.shape)}")
    if labels.dim() == 1:
        labels = labels.unsqueeze(1)
    if labels.dim() != 2 or labels.shape[0] != acts.shape[0]:
        raise UserError(f"concept labels must be [N, K] with N = {acts.shape[0]} rows, got {tuple(labels.shape)}")
    if labels.dtype != torch.bool:
        if not torch.all((labels == 0) | (labels == 1)):
            raise UserError("concept labels must be boolean (0/1)")
        labels = labels.bool()
    if not torch.isfinite(acts).all():
        raise UserError("activations contain NaN or inf")
    return acts, labels.to(acts.device)


def _chunk_size(N: int, C: int, budget: int = 1 << 25) -> int:
    return max(1, min(C, budget // max(N, 1)))


def _u_statistic(acts, labels, chunk: int | None):
    """U of the positives, n_pos, n_neg and tie terms, chunked over units."""
    N, C = acts.shape
    L = labels.to(torch.float64)
    n_pos = L.sum(0)
    n_neg = N - n_pos
    chunk = chunk or _chunk_size(N, C)
    U = torch.empty(C, L.shape[1], dtype=torch.float64, device=acts.device)
    ties = torch.empty(C, dtype=torch.float64, device=acts.device)
    for lo in range(0, C, chunk):
        ranks, tie = rank_data(acts[:, lo:lo + chunk])
        U[lo:lo + chunk] = ranks.t() @ L - n_pos * (n_pos + 1) / 2
        ties[lo:lo + chunk] = tie
    return U, n_pos, n_neg, ties


def auc_matrix(acts, labels, chunk: int | None = None) -> torch.Tensor:
    """AUROC of every unit for every concept: ``[C, K]`` float64.

    ``acts [N, C]`` (any real values), ``labels [N, K]`` boolean. Computed as the Mann-Whitney U of the
    positives divided by ``n_pos * n_neg`` (ties count 1/2), identical to
    ``torchmetrics.classification.BinaryAUROC`` per (unit, concept). Concepts with no positive or no
    negative image get NaN. ``chunk`` units are ranked at a time (default: ~2^25 ranks in memory).
    """
    acts, labels = _check_inputs(acts, labels)
    U, n_pos, n_neg, _ = _u_statistic(acts, labels, chunk)
    denom = n_pos * n_neg
    return torch.where(denom > 0, U / denom.clamp_min(1), torch.full_like(U, float("nan")))


def _mwu_logp(U, n_pos, n_neg, tie_term, alternative: str) -> torch.Tensor:
    """log p of the asymptotic Mann-Whitney test (normal approximation, tie + continuity corrections),
    the same statistic as ``scipy.stats.mannwhitneyu(method="asymptotic", use_continuity=True)``."""
    n = n_pos + n_neg
    mu = n_pos * n_neg / 2
    tie = tie_term.reshape(-1, *([1] * (U.dim() - 1))) if torch.is_tensor(tie_term) else tie_term
    var = n_pos * n_neg / 12 * ((n + 1) - tie / (n * (n - 1)))
    sd = var.clamp_min(0).sqrt()
    if alternative == "greater":
        stat = U
    elif alternative == "less":
        stat = n_pos * n_neg - U
    elif alternative == "two-sided":
        stat = torch.maximum(U, n_pos * n_neg - U)
    else:
        raise UserError(f"alternative must be greater, less or two-sided, got {alternative!r}")
    z = (stat - mu - 0.5) / sd
    logp = torch.from_numpy(special.log_ndtr(-z.cpu().numpy())).to(U.device)
    if alternative == "two-sided":
        logp = (logp + math.log(2)).clamp_max(0.0)
    bad = (n_pos == 0) | (n_neg == 0) | ~(sd > 0)
    return torch.where(bad, torch.full_like(logp, float("nan")), logp)


def mann_whitney_pvalues(acts, labels, alternative: str = "greater", log: bool = False,
                         chunk: int | None = None) -> torch.Tensor:
    """Mann-Whitney U test p-values of every unit for every concept, ``[C, K]`` float64.

    The default ``alternative="greater"`` is the one-sided test that the unit's activations are larger on
    the concept's positives than on its negatives (INVERT's question: does the unit *detect* the
    concept?). Normal approximation with tie and continuity corrections (Mann & Whitney 1947; same as
    ``scipy.stats.mannwhitneyu(x_pos, x_neg, alternative=..., method="asymptotic")``), computed in log
    space (``scipy.special.log_ndtr``) so that tiny p-values do not underflow: pass ``log=True`` to get
    natural-log p-values. NaN where a concept has no positives or no negatives or a unit is constant.
    """
    acts, labels = _check_inputs(acts, labels)
    U, n_pos, n_neg, ties = _u_statistic(acts, labels, chunk)
    logp = _mwu_logp(U, n_pos, n_neg, ties, alternative)
    return logp if log else logp.exp()


# --------------------------------------------------------------------------------------------------
# Formulas
# --------------------------------------------------------------------------------------------------
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


def formula_auc(acts, formula_labels) -> torch.Tensor:
    """AUC ``[C, F]`` of units for a batch of formula label vectors ``[N, F]`` (one matmul)."""
    return auc_matrix(acts, formula_labels)


# --------------------------------------------------------------------------------------------------
# Beam search with parsimony
# --------------------------------------------------------------------------------------------------
@dataclass
class _Node:
    formula: Formula
    labels: torch.Tensor  # bool [N]
    auc: float


def _auc_from(R, n, N):
    denom = n * (N - n)
    return torch.where(denom > 0, (R - n * (n + 1) / 2) / denom.clamp_min(1), torch.full_like(R, float("nan")))


def _one_sided_logp(x: torch.Tensor, high: torch.Tensor, low: torch.Tensor) -> float:
    """log p of the one-sided Mann-Whitney test that ``x[high]`` exceeds ``x[low]`` (NaN if one is empty)."""
    if int(high.sum()) == 0 or int(low.sum()) == 0:
        return float("nan")
    sel = high | low
    U, n_pos, n_neg, ties = _u_statistic(x[sel].unsqueeze(1), high[sel].unsqueeze(1), None)
    return float(_mwu_logp(U, n_pos, n_neg, ties, "greater")[0, 0])


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
        logps.append(_one_sided_logp(x, gained, ~with_term & ~without_term))
    if bool(lost.any()):
        logps.append(_one_sided_logp(x, with_term & without_term, lost))
    if not logps:
        return 0.0
    return float("nan") if any(math.isnan(v) for v in logps) else max(logps)


def _drop_term(formula: Formula, i: int) -> Formula:
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
    logp = _mwu_logp(U, n_pos, ns.unsqueeze(1) - n_pos, tie, "greater")
    logp = torch.where(ns.unsqueeze(1) >= 2, logp, torch.full_like(logp, float("nan")))
    B = F.shape[0]
    return torch.cat([logp[:B], logp[B:]], 1)                        # [B, 4, K]: AND c, AND NOT c, OR ...


def _search_unit(x, ranks, rC, C, Cb, counts, N, names, max_length, beam, min_fraction, max_fraction,
                 min_gain, term_alpha):
    """Beam search for one unit: ``x [N]`` activations, ``ranks [N]`` their float64 ranks, ``rC [K]`` rank
    sums of the concepts (``ranks @ C``, computed for a chunk of units in one matmul), ``C [N, K]``
    float64 / ``Cb`` bool concept matrix, ``counts [K]`` positives per concept."""
    K = C.shape[1]
    lo_count, hi_count = min_fraction * N, max_fraction * N
    r_total = ranks.sum()
    log_alpha = math.log(term_alpha) if term_alpha else None

    def admissible(n):
        return (n >= max(lo_count, 1)) & (n <= min(hi_count, N - 1))

    # Length 1: concepts and their negations. The beam may hold formulas outside the fraction bounds
    # (their extensions may fall inside, e.g. "(a OR b) AND c"); only admissible ones become labels.
    R1 = torch.cat([rC, r_total - rC])
    n1 = torch.cat([counts, N - counts])
    auc1 = _auc_from(R1, n1, N)
    ok1 = admissible(n1)
    labels_by_length: dict[int, list[_Node]] = {1: []}
    current: list[_Node] = []
    for j in torch.argsort(torch.nan_to_num(auc1, nan=-1.0), descending=True, stable=True).tolist():
        if math.isnan(float(auc1[j])) or (len(current) >= beam and labels_by_length[1]):
            break
        concept, neg = j % K, j >= K
        node = _Node(Formula.atom(concept, neg, names), ~Cb[:, concept] if neg else Cb[:, concept],
                     float(auc1[j]))
        if len(current) < beam:
            current.append(node)
        if bool(ok1[j]):
            labels_by_length[1].append(node)
    if not labels_by_length[1]:
        return None, []

    for length in range(2, max_length + 1):
        F = torch.stack([node.labels for node in current]).to(torch.float64)  # [B, N]
        rF = (F * ranks) @ C                 # [B, K] rank sums of "f AND c"
        nF = F @ C                           # [B, K] counts of "f AND c"
        rf = (F * ranks).sum(1, keepdim=True)
        nf = F.sum(1, keepdim=True)
        # Rank sums and counts of f AND c, f AND NOT c, f OR c, f OR NOT c from the two products above.
        R = torch.stack([rF, rf - rF, rf + rC - rF, r_total - rC + rF], dim=1)   # [B, 4, K]
        n = torch.stack([nF, nf - nF, nf + counts - nF, N - counts + nF], dim=1)
        auc = _auc_from(R, n, N)
        parent_auc = torch.tensor([node.auc for node in current], dtype=torch.float64).view(-1, 1, 1)
        used = torch.zeros(len(current), 1, K, dtype=torch.bool)
        for b, node in enumerate(current):
            for concept, _ in node.formula.atoms():
                used[b, 0, concept] = True
        ok = (n > 0) & (n < N) & ~used
        if min_gain > 0:  # parsimony: the added term must earn min_gain over its parent
            ok &= auc >= parent_auc + min_gain
        if log_alpha is not None:  # ... and be significant, Bonferroni over the extensions examined
            step_log_alpha = log_alpha - math.log(ok.numel())
            term = _extension_logp(x, torch.stack([node.labels for node in current]), C)  # [B, 4, K]
            ok &= term <= step_log_alpha
        flat = torch.where(ok, auc, torch.full_like(auc, -1.0)).flatten()
        adm = admissible(n).flatten()
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
            col = ~Cb[:, concept] if neg else Cb[:, concept]
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
        labels_by_length[length] = [(node, step_log_alpha if log_alpha is not None else None)
                                    for node in found]
        if not nxt:
            break
        current = nxt

    # Parsimony: a longer label replaces the chosen one only if it gains min_gain AUC and (with
    # term_alpha) each of its terms passes the drop-one test.
    chosen = labels_by_length[1][0]
    for length in sorted(labels_by_length)[1:]:
        for cand, level in labels_by_length[length]:
            if cand.auc < chosen.auc + min_gain:
                break  # sorted by AUC: no later candidate gains enough
            if level is None or _every_term_earns(x, cand, Cb, level):
                chosen = cand
                break
    top = [names[j % K] if j < K else "NOT " + names[j % K]
           for j in order_top(torch.where(ok1, auc1, torch.full_like(auc1, float("nan"))), 5)]
    return chosen, top


def _label_atoms(ids, RC, ties, counts, N, names, min_fraction, max_fraction) -> list[dict]:
    """Length-1 labels of a chunk of units, vectorised: the same choice as :func:`_search_unit` with
    ``max_length=1`` (the admissible concept or negation of highest AUC), its p-value and top five."""
    K = len(names)
    R1 = torch.cat([RC, N * (N + 1) / 2 - RC], dim=1)  # [chunk, 2K]; rank sum of NOT c = total - that of c
    n1 = torch.cat([counts, N - counts]).expand_as(R1)
    auc1 = _auc_from(R1, n1, N)
    admissible = (n1 >= max(min_fraction * N, 1)) & (n1 <= min(max_fraction * N, N - 1)) & ~auc1.isnan()
    masked = torch.where(admissible, auc1, torch.full_like(auc1, -1.0))
    order = torch.argsort(masked, dim=1, descending=True, stable=True)[:, :5]
    best = order[:, :1]
    n_pos = n1.gather(1, best)
    logp = _mwu_logp(R1.gather(1, best) - n_pos * (n_pos + 1) / 2, n_pos, N - n_pos, ties, "greater")
    rows = []
    for j, unit in enumerate(ids):
        b = int(best[j, 0])
        if not bool(admissible[j, b]):
            rows.append({"unit": unit, "label": None, "score": float("nan"), "auc": float("nan"),
                         "p_value": float("nan"), "length": 0, "formula": None, "top5": []})
            continue
        formula = Formula.atom(b % K, b >= K, names)
        auc = float(auc1[j, b])
        top = [(names[i % K] if i < K else "NOT " + names[i % K]) for i in order[j].tolist() if admissible[j, i]]
        rows.append({"unit": unit, "label": str(formula), "score": auc, "auc": auc, "p_value": float(logp[j, 0].exp()),
                     "length": 1, "formula": formula, "top5": top})
    return rows


def order_top(auc1: torch.Tensor, k: int) -> list[int]:
    order = torch.argsort(torch.nan_to_num(auc1, nan=-1.0), descending=True, stable=True)
    return [j for j in order[:k].tolist() if not math.isnan(float(auc1[j]))]


def label_units(acts, concept_labels, concept_names: Sequence[str], max_length: int = 1, beam: int = 5,
                min_fraction: float = 0.0, max_fraction: float = 0.5, min_gain: float = 0.01,
                term_alpha: float | None = 0.01, units: Sequence[int] | None = None,
                progress: bool | None = None) -> list[dict]:
    """Label every unit with its best concept formula by AUC (INVERT, Bykov et al. 2023, Alg. 1).

    ``acts [N, C]``, ``concept_labels`` bool ``[N, K]``, ``concept_names`` K names. Atoms are concepts and
    their negations; a formula is admissible when its positive fraction lies in
    ``[min_fraction, max_fraction]`` (reference defaults 0 and 0.5). Beam search keeps ``beam`` formulas
    per length up to ``max_length``.

    Parsimony (beyond the reference), two knobs:

    * ``min_gain``: an extension ``f op c`` enters the beam only if its AUC exceeds its parent's by
      ``min_gain``, and a longer label replaces the chosen shorter one only if it gains ``min_gain`` more.
    * ``term_alpha`` (default 0.01; None switches it off): the added term must be significant (one-sided
      Mann-Whitney, see :func:`_term_logp`: the images it flips behave like their new label) at a
      family-wise level ``term_alpha`` per beam step (Bonferroni over the ``B x 4K`` extensions examined),
      and a longer label is accepted only if *each* of its terms passes that test against the formula
      without it (drop-one). This stops small-sample AUC noise (rare concepts ANDed together, one of many
      concepts splitting the positives by chance) from beating a one-concept label.

    ``min_gain=0, term_alpha=None`` recover the reference behaviour (the highest AUC wins).

    Rows: ``unit, label, score (= auc), auc, p_value`` (one-sided Mann-Whitney, positives greater, of the
    final label), ``length, formula`` (:class:`Formula`) and ``top5`` (best five atoms). Units whose
    concepts are all inadmissible get ``label=None`` and NaN scores.
    """
    acts, labels = _check_inputs(acts, concept_labels)
    N, n_units = acts.shape
    K = labels.shape[1]
    names = [str(s) for s in concept_names]
    if len(names) != K:
        raise UserError(f"{len(names)} concept names for {K} concept columns")
    if max_length < 1 or beam < 1:
        raise UserError(f"max_length and beam must be >= 1, got {max_length}, {beam}")
    if not 0 <= min_fraction <= max_fraction <= 1:
        raise UserError(f"need 0 <= min_fraction <= max_fraction <= 1, got {min_fraction}, {max_fraction}")
    if min_gain < 0:
        raise UserError(f"min_gain must be >= 0, got {min_gain}")
    unit_ids = list(range(n_units)) if units is None else [int(u) for u in units]
    C = labels.to(torch.float64)
    counts = C.sum(0)
    if progress is None:
        progress = max_length > 1 and len(unit_ids) > 64
    from tqdm.auto import tqdm

    rows = []
    chunk = _chunk_size(N, len(unit_ids))
    bar = tqdm(total=len(unit_ids), desc="INVERT", disable=not progress, leave=False)
    for lo in range(0, len(unit_ids), chunk):
        ids = unit_ids[lo:lo + chunk]
        X = acts[:, ids].to(torch.float64)
        ranks, ties = rank_data(X)
        RC = ranks.t() @ C  # [chunk, K]: length-1 rank sums of all units in one matmul
        if max_length == 1:  # no search: the best admissible atom of every unit of the chunk at once
            rows += _label_atoms(ids, RC, ties, counts, N, names, min_fraction, max_fraction)
            bar.update(len(ids))
            continue
        for j, unit in enumerate(ids):
            node, top = _search_unit(X[:, j], ranks[:, j], RC[j], C, labels, counts, N, names, max_length, beam,
                                     min_fraction, max_fraction, min_gain, term_alpha)
            if node is None:
                rows.append({"unit": unit, "label": None, "score": float("nan"), "auc": float("nan"),
                             "p_value": float("nan"), "length": 0, "formula": None, "top5": []})
                bar.update(1)
                continue
            lab = node.labels.to(torch.float64)
            n_pos = lab.sum()
            U = ranks[:, j] @ lab - n_pos * (n_pos + 1) / 2
            logp = _mwu_logp(U.view(1, 1), n_pos, N - n_pos, ties[j:j + 1], "greater")
            rows.append({"unit": unit, "label": str(node.formula), "score": node.auc, "auc": node.auc,
                         "p_value": float(logp.exp()), "length": node.formula.length,
                         "formula": node.formula, "top5": top})
            bar.update(1)
    bar.close()
    return rows
