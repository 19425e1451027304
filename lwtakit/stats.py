"""Streaming, mergeable per-unit statistics of activations.

A :class:`UnitStats` consumes batches of reduced activations ``[B, C]`` and keeps, per unit, the count,
mean and sum of squared deviations (for the variance), the number of positive activations (firing rate)
and the top-k activations with their image indices. Two states computed on disjoint parts of a probe
set merge exactly into the state of the whole (Chan, Golub & LeVeque 1979, "Updating formulae and a
pairwise algorithm for computing sample variances", eq. 2.1:
``M2 = M2_a + M2_b + delta^2 * n_a n_b / n``), so chunked, multi-worker and multi-rank passes give the
same result as one pass. Framework-free (torch only); :meth:`UnitStats.sync` merges across
``torch.distributed`` ranks when a process group is initialised.
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import UserError


class UnitStats:
    """Mean, variance, firing rate (fraction of activations > 0) and top-k images per unit.

    ``update(acts [B, C], indices [B])`` adds a batch, ``merge(other)`` adds another state,
    ``compute()`` returns a dict without changing the state. Sums are kept in float64.
    """

    def __init__(self, num_units: int, topk: int = 16):
        if num_units < 1 or topk < 0:
            raise UserError(f"UnitStats needs num_units >= 1 and topk >= 0, got {num_units}, {topk}")
        self.num_units = int(num_units)
        self.topk = int(topk)
        self.reset()

    def reset(self) -> None:
        C = self.num_units
        self.count = 0
        self.mean = torch.zeros(C, dtype=torch.float64)
        self.m2 = torch.zeros(C, dtype=torch.float64)
        self.positive = torch.zeros(C, dtype=torch.float64)
        self.top_values = torch.empty(C, 0, dtype=torch.float32)
        self.top_indices = torch.empty(C, 0, dtype=torch.int64)

    # ----------------------------------------------------------------------------------------------
    def update(self, acts: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        """Add a batch ``acts [B, C]`` whose rows are probe images ``indices [B]`` (default: running)."""
        acts = torch.as_tensor(acts).detach()
        if acts.dim() != 2 or acts.shape[1] != self.num_units:
            raise UserError(f"UnitStats.update expects [B, {self.num_units}] activations, got {tuple(acts.shape)}")
        B = acts.shape[0]
        if B == 0:
            return
        if indices is None:
            indices = torch.arange(self.count, self.count + B)
        indices = torch.as_tensor(indices, dtype=torch.int64).reshape(-1).cpu()
        if indices.numel() != B:
            raise UserError(f"UnitStats.update: {indices.numel()} indices for {B} rows")
        x = acts.to(device="cpu", dtype=torch.float64)
        batch_mean = x.mean(0)
        batch_m2 = ((x - batch_mean) ** 2).sum(0)
        top_v, top_i = self._batch_topk(acts.to("cpu", torch.float32), indices)
        self._combine(B, batch_mean, batch_m2, (x > 0).sum(0).to(torch.float64), top_v, top_i)

    def _batch_topk(self, acts: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = min(self.topk, acts.shape[0])
        v, pos = torch.topk(acts.t(), k, dim=1)
        return v, indices[pos]

    def _combine(self, n_b: int, mean_b, m2_b, pos_b, top_v_b, top_i_b) -> None:
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self.mean
        # Chan et al. (1979) eq. 2.1: pairwise combination of mean and M2.
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (n_a * n_b / n)
        self.positive = self.positive + pos_b
        self.count = n
        values = torch.cat([self.top_values, top_v_b], dim=1)
        idx = torch.cat([self.top_indices, top_i_b], dim=1)
        # Sort by (value desc, index asc) so that ties resolve the same way in any merge order.
        order = torch.argsort(idx, dim=1, stable=True)
        values, idx = values.gather(1, order), idx.gather(1, order)
        order = torch.argsort(values, dim=1, descending=True, stable=True)[:, : self.topk]
        self.top_values, self.top_indices = values.gather(1, order), idx.gather(1, order)

    def merge(self, other: UnitStats) -> UnitStats:
        """Add the state of ``other`` (disjoint images) to this one, in place; returns self."""
        if other.num_units != self.num_units:
            raise UserError(f"cannot merge UnitStats of {other.num_units} units into {self.num_units}")
        if other.count:
            self._combine(other.count, other.mean, other.m2, other.positive, other.top_values,
                          other.top_indices)
        return self

    def compute(self) -> dict[str, torch.Tensor]:
        """Per-unit ``mean, var`` (unbiased), ``std``, ``firing_rate`` (fraction of images with
        activation > 0), ``top_values, top_indices`` ([C, k], largest first) and ``count``."""
        n = self.count
        var = self.m2 / (n - 1) if n > 1 else torch.full_like(self.m2, float("nan"))
        return {
            "count": torch.tensor(n),
            "mean": self.mean.clone(),
            "var": var,
            "std": var.sqrt(),
            "firing_rate": self.positive / max(n, 1),
            "top_values": self.top_values.clone(),
            "top_indices": self.top_indices.clone(),
        }

    # ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "num_units": self.num_units, "topk": self.topk, "count": self.count,
            "mean": self.mean.clone(), "m2": self.m2.clone(), "positive": self.positive.clone(),
            "top_values": self.top_values.clone(), "top_indices": self.top_indices.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["num_units"]) != self.num_units:
            raise UserError(f"UnitStats state has {state['num_units']} units, this one {self.num_units}")
        self.topk = int(state["topk"])
        self.count = int(state["count"])
        for key in ("mean", "m2", "positive", "top_values", "top_indices"):
            setattr(self, key, torch.as_tensor(state[key]).clone().cpu())

    def sync(self, process_group=None) -> UnitStats:
        """Merge the states of all ``torch.distributed`` ranks (all_gather) so that every rank holds the
        statistics of the whole probe set; merged in rank order, so all ranks agree. No-op when
        distributed is not initialised."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        world = dist.get_world_size(process_group)
        states: list[Any] = [None] * world
        dist.all_gather_object(states, self.state_dict(), group=process_group)
        merged = UnitStats(self.num_units, self.topk)
        for state in states:
            part = UnitStats(self.num_units, self.topk)
            part.load_state_dict(state)
            merged.merge(part)
        self.load_state_dict(merged.state_dict())
        return self

    def __repr__(self) -> str:
        return f"UnitStats(num_units={self.num_units}, topk={self.topk}, count={self.count})"


class Moments:
    """Streaming mean and covariance of ``C``-dimensional rows (e.g. a conv layer's channel vector at every image
    x position), in float64: ``update(rows [M, C])`` adds rows, ``merge(other)`` another state, both by Chan,
    Golub & LeVeque's pairwise formula in its matrix form, ``M2 = M2_a + M2_b + delta delta^T n_a n_b / n``
    (``M2`` = sum of outer products of the centred rows), so any split into batches gives the same state.
    Memory is ``C x C``, whatever the number of rows."""

    def __init__(self, num_units: int):
        if num_units < 1:
            raise UserError(f"Moments needs num_units >= 1, got {num_units}")
        self.num_units = int(num_units)
        self.count = 0
        self.mean = torch.zeros(num_units, dtype=torch.float64)
        self.m2 = torch.zeros(num_units, num_units, dtype=torch.float64)

    @classmethod
    def of(cls, rows: torch.Tensor) -> Moments:
        """The moments of ``rows [M, C]`` in one update."""
        rows = torch.as_tensor(rows)
        if rows.dim() != 2:
            raise UserError(f"Moments.of expects rows [M, C], got shape {tuple(rows.shape)}")
        moments = cls(rows.shape[1])
        moments.update(rows)
        return moments

    def update(self, rows: torch.Tensor) -> None:
        """Add ``rows [M, C]`` (any device; reduced on it in float64 where it has float64, else on the CPU)."""
        rows = torch.as_tensor(rows).detach()
        if rows.dim() != 2 or rows.shape[1] != self.num_units:
            raise UserError(f"Moments.update expects [M, {self.num_units}] rows, got {tuple(rows.shape)}")
        if rows.shape[0] == 0:
            return
        x = rows.cpu().double() if rows.device.type == "mps" else rows.double()  # MPS has no float64
        mean = x.mean(0)
        centred = x - mean
        self._combine(x.shape[0], mean.cpu(), (centred.t() @ centred).cpu())

    def _combine(self, n_b: int, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        n_a, n = self.count, self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + torch.outer(delta, delta) * (n_a * n_b / n)
        self.count = n

    def merge(self, other: Moments) -> Moments:
        """Add the state of ``other`` (disjoint rows) to this one, in place; returns self."""
        if other.num_units != self.num_units:
            raise UserError(f"cannot merge Moments of {other.num_units} units into {self.num_units}")
        if other.count:
            self._combine(other.count, other.mean, other.m2)
        return self

    def covariance(self) -> torch.Tensor:
        """The unbiased sample covariance ``M2 / (n - 1)`` ``[C, C]`` float64."""
        if self.count < 2:
            raise UserError(f"a covariance needs at least 2 rows, got {self.count}")
        return self.m2 / (self.count - 1)

    def __repr__(self) -> str:
        return f"Moments(num_units={self.num_units}, count={self.count})"
