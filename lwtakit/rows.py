"""Rows of an array appended batch by batch, kept in memory or spilled to disk: the storage of a recording.

A recording keeps ``[N, C]`` float32 per layer and kind (spatial mean, spatial max, firing fraction); over 50,000
images of ResNet-50's five recorded layers that is N x 4,840 x 4 bytes x 3 = 2.9 GB. Above a host budget the rows
go to an anonymous temporary file instead (already unlinked: nothing is left behind, even after a crash) that is
memory-mapped when recording ends, so readers see an ordinary CPU tensor whose pages the OS reads in and drops as
needed.
"""

from __future__ import annotations

import mmap
import tempfile

import numpy as np
import torch


class Rows:
    """Rows appended with :meth:`append` (tensors of the same trailing shape and dtype), returned whole by
    :meth:`finish`: in memory, or memory-mapped from a temporary file once :meth:`spill` was called. With the number
    of rows known (``capacity``) they are copied into one tensor allocated at the first append, so the rows never
    exist twice (pieces and their concatenation)."""

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self.pieces: list[torch.Tensor] = []  # capacity known: one preallocated tensor
        self.file = None
        self.count = 0
        self.tail: tuple[int, ...] | None = None
        self.dtype: torch.dtype | None = None

    @property
    def spilled(self) -> bool:
        return self.file is not None

    @property
    def nbytes(self) -> int:
        """Bytes of the rows appended so far."""
        if self.tail is None:
            return 0
        return self.count * int(np.prod(self.tail, dtype=np.int64)) * self.dtype.itemsize

    def append(self, rows: torch.Tensor) -> None:
        rows = rows.detach().cpu().contiguous()
        if self.tail is None:
            self.tail, self.dtype = tuple(rows.shape[1:]), rows.dtype
        start, self.count = self.count, self.count + rows.shape[0]
        if self.capacity is not None and self.count > self.capacity:
            raise ValueError(f"{self.count} rows appended to a store of {self.capacity}")
        if self.file is not None:
            self.file.write(rows.numpy().tobytes())
        elif self.capacity is not None:
            with torch.inference_mode(False):  # an ordinary tensor, though recorded under inference_mode
                if not self.pieces:
                    self.pieces.append(torch.empty((self.capacity, *self.tail), dtype=self.dtype))
                self.pieces[0][start:self.count] = rows
        else:
            self.pieces.append(rows)

    def spill(self, directory: str | None = None) -> None:
        """From now on keep the rows in an unlinked temporary file in ``directory`` (None: the system's)."""
        if self.file is not None:
            return
        self.file = tempfile.TemporaryFile(dir=directory)
        if self.capacity is not None and self.pieces:
            self.pieces = [self.pieces[0][:self.count]]
        for piece in self.pieces:
            self.file.write(piece.numpy().tobytes())
        self.pieces.clear()

    def finish(self) -> torch.Tensor:
        """All rows as one ``[N, ...]`` CPU tensor (memory-mapped when spilled)."""
        if self.tail is None:
            raise ValueError("no rows were appended")
        if self.count == 0:
            return torch.empty((0, *self.tail), dtype=self.dtype)
        if self.file is None:
            if len(self.pieces) > 1 or self.pieces[0].is_inference():
                # one ordinary tensor from now on: the pieces are freed, not kept beside their copy
                self.pieces = [torch.cat(self.pieces)]
            return self.pieces[0][:self.count]
        self.file.flush()
        buffer = mmap.mmap(self.file.fileno(), 0)  # the mapping keeps the file's pages after it is closed
        self.file.close()
        array = np.frombuffer(buffer, dtype=torch.empty((), dtype=self.dtype).numpy().dtype)
        return torch.from_numpy(array).view(self.count, *self.tail)
