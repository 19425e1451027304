"""NeuronEval's metrics: how well a binary concept vector explains a unit's activations.

Oikarinen, Yan & Weng, "Evaluating Neuron Explanations: A Unified Framework with Sanity Checks", ICML 2025
(NeuronEval). Every metric compares a unit's activation vector ``a`` (``N`` probe images) with a binary
concept vector ``c`` (the concept, or a formula of concepts, present on each image). Notation used below:

* ``A = 1[a >= t]``: the unit binarised at its top-``alpha`` fraction. ``t`` is the ``k``-th largest activation
  with ``k = ceil(alpha * N)`` (computed in floating point, as NeuronEval does), and *every* image tied with
  it is active, so a unit may have more than ``k`` active images; a constant unit is active everywhere. This
  rule is deterministic (no random tie-breaking) and is NeuronEval's own (``_binarize_act``).
* ``n_A = sum A``, ``n_c = sum c``, ``tp = sum A c``, ``tn = N - n_A - n_c + tp``.

=====================  ==========================================================================
``recall``             ``tp / n_A``: share of the unit's active images that show the concept
``precision``          ``tp / max(n_c, 1)``: share of the concept's images on which the unit is active
``f1``                 ``2 tp / (n_A + n_c)``
``iou``                ``tp / (n_A + n_c - tp)``
``accuracy``           ``(tp + tn) / N``
``balanced_accuracy``  ``(tp / max(n_A, 1) + tn / max(N - n_A, 1)) / 2`` (the unit's classes weighted equally)
``auc``                AUROC of ``c`` as a score for the label ``A`` (the concept ranks the binarised unit)
``auprc``              average precision of ``c`` as a score for the label ``A``
``inverse_auc``        AUROC of ``a`` as a score for the label ``c`` (= INVERT's AUC, Bykov et al. 2023)
``inverse_auprc``      average precision of ``a`` as a score for the label ``c``
``correlation``        Pearson correlation of ``a`` and ``c``
``spearman``           Pearson correlation of the tie-averaged ranks of ``a`` and of ``c``
``cosine``             ``a . c / (max(|a|, 1e-9) max(|c|, 1e-9))``
``mad``                mean activation difference ``mean(a | c = 1) - mean(a | c = 0)`` (raw activations,
                       no normalisation, as NeuronEval; an empty side counts as mean 0)
``wpmi``               ``mean_{A = 1} log max(c, 1e-8) - lambda log max(mean c, 1e-8)``, ``lambda = 1``
=====================  ==========================================================================

Recall and precision are named as in NeuronEval: the explanation "recalls" the unit's top images, and is
"precise" when the unit fires on the concept's images (the reverse of reading the unit as a classifier).

Where this module differs from NeuronEval's code (Trustworthy-ML-Lab/Neuron_Eval, ``metrics.py``):

* Ties are exact. NeuronEval ranks with random noise (``auc``, ``inverse_auc``, ``spearman``); here ties get
  their average rank, so AUROC counts a tie one half (Mann & Whitney 1947), which is NeuronEval's expectation
  over its noise (AUROC is linear in the pairwise comparisons). For ``spearman`` it is not: Pearson's r of
  randomly broken ranks is not NeuronEval's r of the average ranks: broken ranks are a permutation of
  ``1..N`` with a larger spread than tie-averaged ones and the same expected covariance with ``c``, so the
  tie-averaged r is larger in magnitude than the expected noisy one, by ``sd(1..N) / sd(averaged ranks)``,
  which matters where many images tie (the zeros of a sparse unit). Average precision with tied scores is
  sklearn's ``average_precision_score`` (one precision-recall point per distinct score:
  ``AP = sum_t (R_t - R_{t-1}) P_t``).
* ``correlation`` and ``spearman`` are Pearson's r. NeuronEval divides a sum of products of unit-variance
  (``torch.std``, ``N - 1``) vectors by ``N``, i.e. reports ``r (N - 1) / N``; a constant vector scores 0 in
  both.
* Degenerate cases are finite: AUROC is 0 when ``c`` is all 0 or all 1 (NeuronEval's rank formula gives the
  same), average precision is 0 when there is no positive, and ``wpmi`` floors ``mean c`` at ``1e-8`` (NeuronEval
  returns +inf for a concept with no image).
* The concept vectors are binary (bool or 0/1); NeuronEval also accepts concept probabilities.

Every metric is computed for all units x concepts at once (``score``; a ``[C, K]`` float64 tensor), chunked
so that memory stays near ``_BUDGET`` float64 values whatever C and K, or for one concept per unit
(``score_pairs``, ``score_columns``; ``O(N x pairs)``), from the same kernel: a kernel sees the unit side and
the concept side of a batch and combines them with ``batch.inner`` (a matrix product, or column-wise dot
products for pairs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from ..errors import UserError
from .options import DEFAULT_ALPHA
from .ranks import rank_data

__all__ = ["DEFAULT_ALPHA", "METRICS", "Metric", "WPMI_LAMBDA", "check_alpha", "get_metric", "parse_metrics",
           "score", "score_columns", "score_pairs"]


WPMI_LAMBDA = 1.0
"""Weight of the concept prior in ``wpmi`` (NeuronEval's default ``lam``)."""

_BUDGET = 1 << 24  # float64 values per working array (128 MiB)
_LOG_FLOOR = math.log(1e-8)


# ------------------------------------------------------------------------------------------- batches
class _Units:
    """Per-unit quantities of activation columns ``[N, c]``, each computed once when a kernel asks."""

    def __init__(self, acts: torch.Tensor, alpha: float):
        self.x = acts.to(torch.float64)
        self.alpha = alpha

    @cached_property
    def active(self) -> torch.Tensor:
        """``A``: 1 where the activation is >= the k-th largest, ``k = ceil(alpha N)`` (NeuronEval's rule); a
        tensor ``alpha`` gives every column its own ``k`` (e.g. matched to its label's frequency)."""
        N = self.x.shape[0]
        if isinstance(self.alpha, torch.Tensor):
            k = torch.ceil(self.alpha.to(self.x) * N).clamp(1, N).long()
            cutoff = torch.sort(self.x, dim=0, descending=True).values.gather(0, (k - 1).unsqueeze(0))[0]
        else:
            k = min(max(math.ceil(self.alpha * N), 1), N)
            cutoff = torch.topk(self.x, k, dim=0).values[-1]
        return (self.x >= cutoff).to(torch.float64)

    @cached_property
    def n_active(self) -> torch.Tensor:
        return self.active.sum(0)

    @cached_property
    def ranks(self) -> torch.Tensor:
        return rank_data(self.x)[0]

    @cached_property
    def sorted_desc(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(order, group_end)``: images by decreasing activation, and for every sorted position the last
        position of its tie group (the point where a precision-recall curve over distinct scores is read)."""
        values, order = torch.sort(self.x, dim=0, descending=True, stable=True)
        N = values.shape[0]
        pos = torch.arange(N, device=values.device).unsqueeze(1).expand_as(values)
        last = torch.ones_like(values, dtype=torch.bool)
        last[:-1] = values[1:] != values[:-1]
        end = torch.where(last, pos, torch.full_like(pos, N)).flip(0).cummin(dim=0).values.flip(0)
        return order, end


class _Concepts:
    """Per-concept quantities of binary concept columns ``[N, k]`` (float64 0/1)."""

    def __init__(self, concepts: torch.Tensor):
        self.x = concepts.to(torch.float64)

    @cached_property
    def n_pos(self) -> torch.Tensor:
        return self.x.sum(0)


def _centred_unit(x: torch.Tensor) -> torch.Tensor:
    """Columns centred and scaled to unit length (so that dot products are Pearson's r); constant -> 0."""
    d = x - x.mean(0, keepdim=True)
    # constant by comparison, not by the norm: rounding in the mean leaves a tiny non-zero residue
    varies = x.amax(0, keepdim=True) > x.amin(0, keepdim=True)
    return torch.where(varies, d / d.norm(dim=0, keepdim=True).clamp_min(1e-300), torch.zeros_like(d))


def _unit_length(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=0, keepdim=True).clamp_min(1e-9)


@dataclass
class _Batch:
    """A block of units and a block of concepts. ``paired=False``: units ``[N, c]`` x concepts ``[N, k]``, all
    combinations, results ``[c, k]``. ``paired=True``: units ``[N, P]`` and concepts ``[N, R, P]``, unit ``p``
    with each of its ``R`` concept columns ``[:, r, p]``, results ``[R, P]``."""

    units: _Units
    concepts: _Concepts
    paired: bool

    @property
    def N(self) -> int:
        return self.units.x.shape[0]

    def inner(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``sum_n x[n, i] y[n, j]``: all pairs (matrix product), or ``sum_n x[n, p] y[n, r, p]``."""
        return (x.unsqueeze(1) * y).sum(0) if self.paired else x.t() @ y

    def u(self, v: torch.Tensor) -> torch.Tensor:
        """A per-unit vector shaped to broadcast against ``inner``'s result."""
        return v if self.paired else v.unsqueeze(1)

    def k(self, v: torch.Tensor) -> torch.Tensor:
        """A per-concept vector shaped to broadcast against ``inner``'s result."""
        return v if self.paired else v.unsqueeze(0)

    @cached_property
    def tp(self) -> torch.Tensor:
        return self.inner(self.units.active, self.concepts.x)

    @cached_property
    def n_active(self) -> torch.Tensor:
        return self.u(self.units.n_active)

    @cached_property
    def n_pos(self) -> torch.Tensor:
        return self.k(self.concepts.n_pos)

    @cached_property
    def tn(self) -> torch.Tensor:
        return self.N - self.n_active - self.n_pos + self.tp


# ------------------------------------------------------------------------------------------- kernels
def _recall(b: _Batch) -> torch.Tensor:
    """``tp / n_A`` (``n_A >= 1`` by construction)."""
    return b.tp / b.n_active


def _precision(b: _Batch) -> torch.Tensor:
    """``tp / max(n_c, 1)``."""
    return b.tp / b.n_pos.clamp_min(1)


def _f1(b: _Batch) -> torch.Tensor:
    """``2 tp / (2 tp + fp + fn) = 2 tp / (n_A + n_c)``."""
    return 2 * b.tp / (b.n_active + b.n_pos)


def _iou(b: _Batch) -> torch.Tensor:
    """``tp / (n_A + n_c - tp)`` (NetDissect's IoU over images)."""
    return b.tp / (b.n_active + b.n_pos - b.tp)


def _accuracy(b: _Batch) -> torch.Tensor:
    """``(tp + tn) / N``."""
    return (b.tp + b.tn) / b.N


def _balanced_accuracy(b: _Batch) -> torch.Tensor:
    """``(tp / max(n_A, 1) + tn / max(N - n_A, 1)) / 2``."""
    return (b.tp / b.n_active.clamp_min(1) + b.tn / (b.N - b.n_active).clamp_min(1)) / 2


def _auc(b: _Batch) -> torch.Tensor:
    """AUROC of the score ``c`` for the label ``A``: over (active, inactive) image pairs, 1 when the active
    image has the concept and the inactive one not, 1/2 when ``c`` ties:
    ``(tp tn + (tp (n_c - tp) + (n_A - tp) tn) / 2) / max(n_A (N - n_A), 1)``."""
    ties = b.tp * (b.n_pos - b.tp) + (b.n_active - b.tp) * b.tn
    return (b.tp * b.tn + ties / 2) / (b.n_active * (b.N - b.n_active)).clamp_min(1)


def _auprc(b: _Batch) -> torch.Tensor:
    """Average precision of the score ``c`` for the label ``A``. ``c`` has two levels, so the curve has two
    points: ``(R, P) = (tp / n_A, tp / n_c)`` at ``c = 1`` and ``(1, n_A / N)`` at ``c = 0``;
    ``AP = (tp / n_A) (tp / max(n_c, 1)) + (1 - tp / n_A) n_A / N``."""
    r = b.tp / b.n_active
    return r * b.tp / b.n_pos.clamp_min(1) + (1 - r) * b.n_active / b.N


def _inverse_auc(b: _Batch) -> torch.Tensor:
    """AUROC of the score ``a`` for the label ``c`` from the rank sum of the positives (tie-averaged ranks,
    Mann-Whitney): ``(R_pos - n_c (n_c + 1) / 2) / (n_c (N - n_c))``, 0 when ``n_c`` is 0 or N. Equal to
    :func:`lwtakit.evaluation.ranks.auc_matrix` wherever that is defined."""
    rank_sum = b.inner(b.units.ranks, b.concepts.x)
    denom = b.n_pos * (b.N - b.n_pos)
    u = rank_sum - b.n_pos * (b.n_pos + 1) / 2
    return torch.where(denom > 0, u / denom.clamp_min(1), torch.zeros_like(u))


def _inverse_auprc(b: _Batch) -> torch.Tensor:
    """Average precision of the score ``a`` for the label ``c``, one curve point per distinct activation
    (sklearn's ``average_precision_score``): ``AP = (1 / n_c) sum_{i: c_i = 1} tp(a_i) / n(a_i)`` with
    ``tp(s)``, ``n(s)`` the positives and images with activation >= s; 0 when ``n_c = 0``."""
    order, end = b.units.sorted_desc
    if b.paired:  # [N, R, P]: each unit's concept columns in the unit's order
        c = torch.gather(b.concepts.x, 0, order.unsqueeze(1).expand_as(b.concepts.x))
        end = end.unsqueeze(1)
    else:  # [N, units, concepts]
        c = b.concepts.x[order]
        end = end.unsqueeze(-1)
    tp = c.cumsum(0)
    tp_at_tie_end = tp.gather(0, end.expand_as(tp))
    return (c * tp_at_tie_end / (end + 1)).sum(0) / tp[-1].clamp_min(1)


def _pearson(b: _Batch, unit_values: torch.Tensor) -> torch.Tensor:
    return b.inner(_centred_unit(unit_values), _centred_unit(b.concepts.x))


def _correlation(b: _Batch) -> torch.Tensor:
    """Pearson's ``r = sum (a - mean a)(c - mean c) / (|a - mean a| |c - mean c|)``; 0 if either is constant."""
    return _pearson(b, b.units.x)


def _spearman(b: _Batch) -> torch.Tensor:
    """Pearson's r of the tie-averaged ranks. A binary ``c``'s ranks are an increasing affine map of ``c``, so
    this is r of (ranks of ``a``, ``c``)."""
    return _pearson(b, b.units.ranks)


def _cosine(b: _Batch) -> torch.Tensor:
    """``a . c / (max(|a|, 1e-9) max(|c|, 1e-9))``."""
    return b.inner(_unit_length(b.units.x), _unit_length(b.concepts.x))


def _mad(b: _Batch) -> torch.Tensor:
    """``sum(a c) / max(n_c, 1) - sum(a (1 - c)) / max(N - n_c, 1)``."""
    on = b.inner(b.units.x, b.concepts.x)
    off = b.u(b.units.x.sum(0)) - on
    return on / b.n_pos.clamp_min(1) - off / (b.N - b.n_pos).clamp_min(1)


def _wpmi(b: _Batch) -> torch.Tensor:
    """``(1 / n_A) sum_{A = 1} log max(c, 1e-8) - lambda log max(n_c / N, 1e-8)``; for a binary ``c`` the first
    term is ``(1 - tp / n_A) log 1e-8``."""
    log_c = torch.where(b.concepts.x > 0, torch.zeros_like(b.concepts.x), torch.full_like(b.concepts.x, _LOG_FLOOR))
    log_likelihood = b.inner(b.units.active, log_c) / b.n_active
    return log_likelihood - WPMI_LAMBDA * torch.log((b.n_pos / b.N).clamp_min(1e-8))


# ------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Metric:
    """One NeuronEval metric. Calling it gives the ``[C, K]`` score matrix (:func:`score`).

    ``bounds``: the metric's range, which the sanity tests divide score changes by (NeuronEval's
    normalisation); ``None`` where the range is unbounded (``mad``, ``wpmi``) and the observed range is used.
    ``sorts``: the kernel holds ``N x units x concepts`` values (chunked smaller).
    """

    name: str
    kernel: Callable[[_Batch], torch.Tensor]
    bounds: tuple[float, float] | None
    uses_alpha: bool
    sorts: bool = False

    def __call__(self, acts, concepts, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
        return score(self.name, acts, concepts, alpha=alpha)

    @property
    def formula(self) -> str:
        return " ".join((self.kernel.__doc__ or "").split())


_UNIT = (0.0, 1.0)
_SIGNED = (-1.0, 1.0)
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("recall", _recall, _UNIT, True),
    Metric("precision", _precision, _UNIT, True),
    Metric("f1", _f1, _UNIT, True),
    Metric("iou", _iou, _UNIT, True),
    Metric("accuracy", _accuracy, _UNIT, True),
    Metric("balanced_accuracy", _balanced_accuracy, _UNIT, True),
    Metric("auc", _auc, _UNIT, True),
    Metric("auprc", _auprc, _UNIT, True),
    Metric("inverse_auc", _inverse_auc, _UNIT, False),
    Metric("inverse_auprc", _inverse_auprc, _UNIT, False, sorts=True),
    Metric("correlation", _correlation, _SIGNED, False),
    Metric("spearman", _spearman, _SIGNED, False),
    Metric("cosine", _cosine, _SIGNED, False),
    Metric("mad", _mad, None, False),
    Metric("wpmi", _wpmi, None, True),
)}


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise UserError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
    return METRICS[name]


def parse_metrics(text: str | None) -> list[str]:
    """``"f1,iou"`` -> ``["f1", "iou"]`` (checked); ``None`` or ``"all"`` -> every metric."""
    if text is None or text.strip() == "all":
        return list(METRICS)
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise UserError(f"no metric named in {text!r}; known metrics: {', '.join(METRICS)}")
    for name in names:
        get_metric(name)
    return list(dict.fromkeys(names))


def check_alpha(alpha):
    """``alpha`` as a float, or a float64 tensor of per-unit alphas (:func:`score_columns`), each in (0, 1)."""
    if isinstance(alpha, torch.Tensor):
        if alpha.dim() != 1 or not bool(((alpha > 0) & (alpha < 1)).all()):
            raise UserError(f"per-unit alphas must be a 1-d tensor of values in (0, 1), got {alpha}")
        return alpha.to(torch.float64)
    if not 0 < alpha < 1:
        raise UserError(f"alpha must be in (0, 1), got {alpha}")
    return float(alpha)


# ------------------------------------------------------------------------------------------- scoring
def _tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def _acts(x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 2:
        raise UserError(f"activations must be [N, C], got shape {tuple(x.shape)}")
    if x.is_complex():
        raise UserError(f"activations must be real numbers, got {x.dtype}")
    x = x.to(torch.float64)
    if not torch.isfinite(x).all():
        raise UserError("activations contain NaN or inf")
    return x


def _binary(c: torch.Tensor, n: int) -> torch.Tensor:
    if c.dim() == 1:
        c = c.unsqueeze(1)
    if c.dim() not in (2, 3) or c.shape[0] != n:
        raise UserError(f"concept vectors must be [N, K] with N = {n} rows, got {tuple(c.shape)}")
    if c.dtype != torch.bool and not torch.all((c == 0) | (c == 1)):
        raise UserError("concept vectors must be boolean (0/1)")
    return c.to(torch.float64)


def _chunks(metric: Metric, N: int) -> int:
    """Columns per working block: a block of ``N x cols`` values (``N x units x concepts`` when sorting)."""
    budget = _BUDGET // 4 if metric.sorts else _BUDGET
    return max(1, budget // max(N, 1))


def score(name: str, acts, concepts, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """Score matrix ``[C, K]`` (float64) of metric ``name`` for activations ``[N, C]`` and binary concept
    vectors ``[N, K]``: entry ``(i, j)`` compares unit ``i`` with concept ``j``. ``alpha`` is the top fraction
    a unit is binarised at (see the module docstring for every definition)."""
    metric = get_metric(name)
    if isinstance(check_alpha(alpha), torch.Tensor):
        raise UserError("score() binarises every unit at one alpha; per-unit alphas go to score_columns")
    a = _acts(_tensor(acts))
    c = _binary(_tensor(concepts).to(a.device), a.shape[0])
    N, C = a.shape
    K = c.shape[1]
    out = torch.empty(C, K, dtype=torch.float64, device=a.device)
    step = _chunks(metric, N)
    k_step = min(K, step) if K else 1
    u_step = max(1, step // k_step) if metric.sorts else step
    for u0 in range(0, C, u_step):
        units = _Units(a[:, u0:u0 + u_step], alpha)
        for k0 in range(0, K, k_step):
            batch = _Batch(units, _Concepts(c[:, k0:k0 + k_step]), paired=False)
            out[u0:u0 + u_step, k0:k0 + k_step] = metric.kernel(batch)
    return out


def score_columns(name: str, acts, concepts, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """Scores of unit column ``p`` of ``acts [N, P]`` for concept column ``p`` of ``concepts [N, P]`` (result
    ``[P]``), or for each of its ``R`` columns ``concepts[:, r, p]`` of ``concepts [N, R, P]`` (result ``[R, P]``:
    e.g. R perturbations of each unit's concept, the unit's ranks and threshold computed once). ``O(N x R x P)``,
    chunked over units. ``alpha``: one for all units, or a ``[P]`` tensor, unit ``p`` binarised at ``alpha[p]``."""
    metric = get_metric(name)
    alpha = check_alpha(alpha)
    a_all, c_all = _tensor(acts), _tensor(concepts)
    if isinstance(alpha, torch.Tensor) and alpha.shape[0] != a_all.shape[-1]:
        raise UserError(f"{alpha.shape[0]} per-unit alphas for {a_all.shape[-1]} unit columns")
    repeated = c_all.dim() == 3
    if a_all.dim() != 2 or c_all.dim() not in (2, 3) or c_all.shape[0] != a_all.shape[0] \
            or c_all.shape[-1] != a_all.shape[1]:
        raise UserError(f"concept columns must be [N, P] or [N, R, P] beside activations [N, P], got "
                        f"{tuple(c_all.shape)} and {tuple(a_all.shape)}")
    if not repeated:
        c_all = c_all.unsqueeze(1)
    N, R, P = c_all.shape
    out = torch.empty(R, P, dtype=torch.float64, device=a_all.device)
    step = max(1, _chunks(metric, N) // R)
    for p0 in range(0, P, step):
        a = _acts(a_all[:, p0:p0 + step])
        c = _binary(c_all[:, :, p0:p0 + step].to(a.device), N)
        a_p = alpha[p0:p0 + step].to(a.device) if isinstance(alpha, torch.Tensor) else alpha
        out[:, p0:p0 + step] = metric.kernel(_Batch(_Units(a, a_p), _Concepts(c), paired=True))
    return out if repeated else out[0]


def score_pairs(name: str, acts, concepts, unit_ids: Sequence[int], concept_ids: Sequence[int],
                alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """Scores ``[P]`` (float64) of unit ``unit_ids[p]`` for concept ``concept_ids[p]`` only: what a label table
    needs (each unit's chosen label). ``O(N x P)``; only the named columns of ``acts [N, C]`` and
    ``concepts [N, K]`` are read, a chunk at a time. Same values as the matching entries of :func:`score`.
    ``alpha``: one, or a ``[P]`` tensor (pair ``p`` binarised at ``alpha[p]``)."""
    metric = get_metric(name)
    alpha = check_alpha(alpha)
    a_all, c_all = _tensor(acts), _tensor(concepts)
    if a_all.dim() != 2 or c_all.dim() != 2:
        raise UserError(f"activations and concepts must be 2-d, got {tuple(a_all.shape)} and {tuple(c_all.shape)}")
    uid = torch.as_tensor(np.asarray(unit_ids, dtype=np.int64)).reshape(-1)
    cid = torch.as_tensor(np.asarray(concept_ids, dtype=np.int64)).reshape(-1)
    if uid.shape != cid.shape:
        raise UserError(f"{len(uid)} unit ids but {len(cid)} concept ids; give one concept per unit")
    if isinstance(alpha, torch.Tensor) and alpha.shape[0] != len(uid):
        raise UserError(f"{alpha.shape[0]} per-pair alphas for {len(uid)} pairs")
    for ids, size, what in ((uid, a_all.shape[1], "unit"), (cid, c_all.shape[1], "concept")):
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= size):
            raise UserError(f"{what} ids must lie in [0, {size}), got {int(ids.min())}..{int(ids.max())}")
    out = torch.empty(len(uid), dtype=torch.float64, device=a_all.device)
    step = _chunks(metric, a_all.shape[0])
    for p0 in range(0, len(uid), step):
        u, k = uid[p0:p0 + step], cid[p0:p0 + step]
        a_p = alpha[p0:p0 + step] if isinstance(alpha, torch.Tensor) else alpha
        out[p0:p0 + step] = score_columns(name, a_all[:, u.to(a_all.device)], c_all[:, k.to(c_all.device)], a_p)
    return out
