"""A probe set sharded over processes, and the collective that puts the shards back together on rank 0.

A probe set of N images is cut into the batches one process would use (batch b holds images ``[b*B, (b+1)*B)``);
process ``r`` of ``W`` records batches ``r, r+W, r+2W, ...`` (:meth:`Shard.batches`). Stochastic passes are seeded
per batch (:func:`batch_seed`), so a batch's draws do not depend on which process records it; gathering the batches
back in their order gives rank 0 exactly what one process records, and rank 0 alone labels and writes.

The processes are Lightning's: the Trainer's strategy during training, Lightning Fabric for ``analyze.py dissect
--devices N``. Both leave an initialised ``torch.distributed`` default process group, which :class:`Collective`
uses (gloo on the CPU, NCCL on GPUs). Gathers go to rank 0 only, in chunks of a bounded size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

CHUNK_BYTES = 64 * 2**20  # the most one rank sends in one gather


def batch_seed(seed: int, batch: int) -> int:
    """The seed of batch ``batch``'s stochastic passes: a hash of ``(seed, batch)`` (numpy's SeedSequence), so
    neighbouring batches or seeds get unrelated streams."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(batch)]).generate_state(1)[0])


@dataclass(frozen=True)
class Shard:
    """Process ``rank`` of ``world``: which of a probe set's batches it records."""

    rank: int = 0
    world: int = 1

    def batches(self, n_batches: int) -> range:
        """The global indices of this process's batches."""
        return range(self.rank, n_batches, self.world)


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each batch of ``n`` images cut into batches of ``batch_size``."""
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


class Collective:
    """Rank 0 gathers from every rank over ``torch.distributed``'s default process group."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        import torch.distributed as dist

        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        # gloo moves CPU tensors; NCCL only device tensors
        self.device = torch.device(device) if dist.get_backend() == "nccl" else torch.device("cpu")

    @classmethod
    def current(cls, device: torch.device | str = "cpu") -> Collective | None:
        """The collective of the running process group; None in a single process."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return None
        return cls(device)

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.world)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def gather_object(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` (small, picklable) on rank 0, in rank order; None elsewhere."""
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world if self.is_root else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        import torch.distributed as dist

        box = [obj if self.is_root else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def agree(self, tensor: torch.Tensor | None) -> tuple[tuple[int, ...], torch.dtype] | None:
        """The trailing shape and dtype of the ranks' ``tensor`` (None where a rank has none), on every rank; None
        when no rank has one."""
        metas = self.gather_object(None if tensor is None else (tuple(tensor.shape[1:]), tensor.dtype))
        return self.broadcast_object(None if metas is None else next((m for m in metas if m), None))

    def gather(self, tensor: torch.Tensor | None) -> list[torch.Tensor] | None:
        """Every rank's ``tensor`` (same trailing shape and dtype; any number of rows; None: no rows) on rank 0's CPU,
        in rank order; None elsewhere, and on rank 0 too when no rank has one. Rows are padded to the longest rank's
        and sent in chunks of at most :data:`CHUNK_BYTES`."""
        import torch.distributed as dist

        mine = None if tensor is None else (int(tensor.shape[0]), tuple(tensor.shape[1:]), tensor.dtype)
        metas = self.gather_object(mine)
        known = [m for m in metas or () if m is not None]
        # every rank learns the longest row count and the rows' shape and dtype (None: no rank has a tensor)
        agreed = self.broadcast_object((max(m[0] for m in known), *known[0][1:]) if known else None)
        if agreed is None:
            return None
        longest, tail, dtype = agreed
        rows = [0 if m is None else m[0] for m in metas] if metas is not None else None
        tensor = torch.empty((0, *tail), dtype=dtype) if tensor is None else tensor
        # from the agreed shape, not this rank's rows: every rank must make the same number of gathers
        step = max(1, CHUNK_BYTES // max(1, int(np.prod(tail, dtype=np.int64)) * dtype.itemsize))
        pieces: list[list[torch.Tensor]] = [[] for _ in range(self.world)]
        for start in range(0, max(longest, 1), step):
            stop = min(start + step, longest)
            chunk = torch.zeros((stop - start, *tail), dtype=dtype, device=self.device)
            sent = tensor[start:stop]
            chunk[: sent.shape[0]] = sent.to(self.device)
            out = [torch.empty_like(chunk) for _ in range(self.world)] if self.is_root else None
            dist.gather(chunk, out, dst=0)
            if self.is_root:
                for r, part in enumerate(out):
                    pieces[r].append(part.cpu())
        if not self.is_root:
            return None
        return [torch.cat(p)[: rows[r]] if p else tensor[:0].cpu() for r, p in enumerate(pieces)]


def gather_in_order(collective: Collective, mine: torch.Tensor | None, bounds: list[tuple[int, int]],
                    append: Callable[[torch.Tensor], None] | None) -> None:
    """Rank 0 passes every rank's rows of its batches to ``append``, in the probe set's batch order.

    ``mine``: this rank's rows, its batches (:meth:`Shard.batches` of ``bounds``) one after the other (None: it has
    none, or no such rows). A round gathers local batches ``j0..j1`` of every rank, i.e. global batches
    ``j * world + rank``, at most :data:`CHUNK_BYTES` a rank, so rank 0 never holds more than a round beyond what it
    keeps. ``append`` is None on the other ranks.
    """
    meta = collective.agree(mine)
    if meta is None:  # no rank has such rows (e.g. the spatial maxes of a linear layer)
        return
    mine = torch.empty((0, *meta[0]), dtype=meta[1]) if mine is None else mine
    world, rank, n_batches = collective.world, collective.rank, len(bounds)
    size = [stop - start for start, stop in bounds]
    rounds = -(-n_batches // world)
    row_bytes = max(1, int(np.prod(meta[0], dtype=np.int64)) * mine.element_size())
    step = max(1, CHUNK_BYTES // (max(size, default=1) * row_bytes))
    offset = 0
    for j0 in range(0, rounds, step):
        j1 = min(j0 + step, rounds)
        count = sum(size[j * world + rank] for j in range(j0, j1) if j * world + rank < n_batches)
        parts = collective.gather(mine[offset:offset + count])
        offset += count
        if parts is None:
            continue
        cursor = [0] * world
        for j in range(j0, j1):
            for r in range(world):
                b = j * world + r
                if b < n_batches:
                    append(parts[r][cursor[r]:cursor[r] + size[b]])
                    cursor[r] += size[b]
