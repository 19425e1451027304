"""Ranks, AUROC and Mann-Whitney U tests of every unit for every concept, vectorised: the rank statistics that
INVERT labels with and the held-out assessment and NeuronEval's metrics score with.

Bykov et al., "Labeling Neural Representations with Inverse Recognition", NeurIPS 2023, score a unit for a
concept by the AUROC of its activation as a classifier of the concept (sec. 3, eq. 2). Here the AUROC of *all
units x all concepts* comes from rank sums (Mann & Whitney 1947; Hanley & McNeil 1982, eq. 2):
``AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` where ``R_pos`` is the sum of the (tie-averaged)
ranks of the positives. Ranks are computed once per unit, then ``R = ranks^T @ labels`` is one matmul. Ties
count one half, exactly as the trapezoidal ROC area of ``torchmetrics`` BinaryAUROC. Significance is the
asymptotic Mann-Whitney U test, in log space.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import special

from ..errors import UserError

__all__ = ["auc_from", "auc_matrix", "check_inputs", "chunk_size", "mann_whitney_pvalues", "mwu_logp", "one_sided_logp",
           "rank_data"]


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


def check_inputs(acts, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """``acts [N, C]`` finite and ``labels [N, K]`` boolean (a 1-D label vector becomes one column), or UserError."""
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


def chunk_size(N: int, C: int, budget: int = 1 << 25) -> int:
    """Units per chunk so that a chunk's ranks ``[N, chunk]`` hold about ``budget`` values."""
    return max(1, min(C, budget // max(N, 1)))


def _u_statistic(acts, labels, chunk: int | None):
    """U of the positives, n_pos, n_neg and tie terms, chunked over units."""
    N, C = acts.shape
    L = labels.to(torch.float64)
    n_pos = L.sum(0)
    n_neg = N - n_pos
    chunk = chunk or chunk_size(N, C)
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
    acts, labels = check_inputs(acts, labels)
    U, n_pos, n_neg, _ = _u_statistic(acts, labels, chunk)
    denom = n_pos * n_neg
    return torch.where(denom > 0, U / denom.clamp_min(1), torch.full_like(U, float("nan")))


def mwu_logp(U, n_pos, n_neg, tie_term, alternative: str) -> torch.Tensor:
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
    acts, labels = check_inputs(acts, labels)
    U, n_pos, n_neg, ties = _u_statistic(acts, labels, chunk)
    logp = mwu_logp(U, n_pos, n_neg, ties, alternative)
    return logp if log else logp.exp()


def auc_from(R, n, N):
    """AUROC from the rank sum ``R`` of ``n`` positives among ``N`` (Hanley & McNeil 1982, eq. 2); NaN where
    there is no positive or no negative."""
    denom = n * (N - n)
    return torch.where(denom > 0, (R - n * (n + 1) / 2) / denom.clamp_min(1), torch.full_like(R, float("nan")))


def one_sided_logp(x: torch.Tensor, high: torch.Tensor, low: torch.Tensor) -> float:
    """log p of the one-sided Mann-Whitney test that ``x[high]`` exceeds ``x[low]`` (NaN if one is empty)."""
    if int(high.sum()) == 0 or int(low.sum()) == 0:
        return float("nan")
    sel = high | low
    U, n_pos, n_neg, ties = _u_statistic(x[sel].unsqueeze(1), high[sel].unsqueeze(1), None)
    return float(mwu_logp(U, n_pos, n_neg, ties, "greater")[0, 0])
