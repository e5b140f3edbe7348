"""The mean class probabilities of a model's members on the network's grid, added slab by slab
along one axis and read back one class at a time.

Small sums stay in memory; above ``in_memory_limit`` bytes they go to an unnamed temporary
file (gone with the process, even when it is killed) through plain reads and writes, not a
memory map, so the file's pages are the kernel's cache, not the process's memory. Either way
the file holds the classes one after the other, each with the slab axis first, so adding a slab
and reading a class are one contiguous transfer per class: a prediction's memory then grows
with neither the number of classes nor the length of the scan.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import torch

IN_MEMORY_LIMIT_BYTES = 512 * 2**20
"""Sums up to this size (float32, all classes) stay in memory."""


class ClassProbabilities:
    """Sums of probabilities ``(K, *grid)`` over the members added so far; indexing gives one
    class's mean ``(*grid)`` float32.

    Args:
        num_classes: K.
        grid: the network grid's spatial shape.
        axis: the spatial axis slabs are added along.
        in_memory_limit: bytes of sums (float32) kept in memory, more go to a temporary file
            (default :data:`IN_MEMORY_LIMIT_BYTES`).
        folder: where that file goes (default: the system's temporary folder).
    """

    def __init__(
        self,
        num_classes: int,
        grid: Sequence[int],
        *,
        axis: int,
        in_memory_limit: int | None = None,
        folder: Path | None = None,
    ) -> None:
        self.shape = (num_classes, *(int(n) for n in grid))
        self.axis = axis
        self.members = 0
        self._layout = (int(grid[axis]), *(int(n) for i, n in enumerate(grid) if i != axis))
        self._slice_values = math.prod(self._layout[1:])
        self._class_values = math.prod(self._layout)
        self._array: np.ndarray | None = None
        self._file = None
        limit = IN_MEMORY_LIMIT_BYTES if in_memory_limit is None else in_memory_limit
        if 4 * num_classes * self._class_values <= limit:
            self._array = np.zeros((num_classes, *self._layout), np.float32)
        else:
            # closed by close(): the file lives as long as the store
            self._file = tempfile.TemporaryFile(dir=folder, prefix="medseg-probabilities-")  # noqa: SIM115

    @property
    def in_memory(self) -> bool:
        """Whether the sums are held in memory (else in a temporary file)."""
        return self._array is not None

    def add(self, start: int, slab: torch.Tensor | np.ndarray) -> None:
        """Add a member's probabilities ``(K, ...)`` of the slices ``start`` to ``start + n``
        along ``axis`` (the other axes whole)."""
        values = slab.detach().cpu().numpy() if isinstance(slab, torch.Tensor) else slab
        values = np.moveaxis(np.asarray(values, np.float32), self.axis + 1, 1)
        count = values.shape[1]
        if self._array is not None:
            self._array[:, start : start + count] += values
            return
        for index, part in enumerate(values):
            offset = 4 * (index * self._class_values + start * self._slice_values)
            if self.members:  # add to what the members before wrote
                part = part + self._read(offset, part.shape)
            self._write(offset, np.ascontiguousarray(part))

    def end_member(self) -> None:
        """Count one more member (after all its slabs were added)."""
        self.members += 1

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> np.ndarray:
        """Class ``index``'s mean probability over the members, ``(*grid)`` float32."""
        if not 0 <= index < self.shape[0]:
            raise IndexError(f"class {index} of {self.shape[0]}")
        if self._array is not None:
            values = self._array[index].copy()
        else:
            values = self._read(4 * index * self._class_values, self._layout)
        values /= max(self.members, 1)
        return np.moveaxis(values, 0, self.axis)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[index] for index in range(self.shape[0]))

    def tensor(self) -> torch.Tensor:
        """Every class's mean ``(K, *grid)`` float32 at once (memory for all of them)."""
        return torch.from_numpy(np.stack(list(self)))

    def close(self) -> None:
        """Free the sums (and the temporary file)."""
        self._array = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ClassProbabilities:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _read(self, offset: int, shape: Sequence[int]) -> np.ndarray:
        assert self._file is not None
        values = np.zeros(shape, np.float32)  # unwritten parts of the file read as zeros
        view = values.data.cast("B")
        done = 0
        while done < len(view):
            got = os.preadv(self._file.fileno(), [view[done:]], offset + done)
            if got == 0:
                break
            done += got
        return values

    def _write(self, offset: int, values: np.ndarray) -> None:
        assert self._file is not None
        view = values.data.cast("B")
        done = 0
        while done < len(view):
            done += os.pwrite(self._file.fileno(), view[done:], offset + done)
