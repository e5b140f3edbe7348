"""``<case>.probabilities.npz`` written one class map at a time.

The file is what ``np.savez_compressed(path, probabilities=..., affine_ras=...)`` writes: a
float16 ``(K, X, Y, Z)`` array on the scan's closest-RAS grid and its 4x4 affine, read back
with ``np.load(path)["probabilities"]``. The class maps are streamed into the compressed zip
member as they are restored, so the ``K`` maps of a full-size CT (118 x 512 x 512 x 400 is
24 GB in float16) are never in memory together; the file appears under its name only once
every class is written (temp file + rename).

Example:
    >>> with ProbabilityWriter(path, classes=3, shape=(64, 64, 40), affine_ras=affine) as out:
    ...     for channel in channels:
    ...         out.append(channel)
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import numpy as np

from medseg.io.atomic import atomic_path

DTYPE = np.dtype("<f2")
PROBABILITIES_SUFFIX = ".probabilities.npz"


class ProbabilityWriter:
    """Context manager that writes ``classes`` maps of ``shape`` into ``path``, in order.

    Raises (on ``append``):
        ValueError: a map of another shape, or more maps than ``classes``.
    Raises (on leaving without an error):
        ValueError: fewer maps than ``classes`` were appended (nothing is written).
    """

    def __init__(
        self, path: Path, *, classes: int, shape: Sequence[int], affine_ras: np.ndarray
    ) -> None:
        self.path = Path(path)
        self.classes = int(classes)
        self.shape = tuple(int(size) for size in shape)
        self.affine_ras = np.asarray(affine_ras, dtype=np.float64)
        self.written = 0
        self._stack = contextlib.ExitStack()
        self._archive: zipfile.ZipFile | None = None
        self._member: IO[bytes] | None = None

    def __enter__(self) -> ProbabilityWriter:
        with contextlib.ExitStack() as stack:
            temporary = stack.enter_context(atomic_path(self.path))
            self._archive = stack.enter_context(
                zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED)
            )
            self._member = stack.enter_context(
                self._archive.open("probabilities.npy", "w", force_zip64=True)
            )
            header = {"descr": DTYPE.str, "fortran_order": False,
                      "shape": (self.classes, *self.shape)}  # fmt: skip
            np.lib.format.write_array_header_1_0(self._member, header)
            self._stack = stack.pop_all()
        return self

    def append(self, channel: np.ndarray) -> None:
        """Write the next class map (converted to float16)."""
        if self._member is None:
            raise ValueError(f"{self.path.name}: append inside the writer's with block")
        if tuple(channel.shape) != self.shape:
            raise ValueError(
                f"{self.path.name}: class map of shape {tuple(channel.shape)}, expected "
                f"{self.shape}"
            )
        if self.written == self.classes:
            raise ValueError(f"{self.path.name}: more than {self.classes} class maps")
        data = np.ascontiguousarray(channel, dtype=DTYPE)
        self._member.write(data.data.cast("B"))  # the bytes, without a copy
        self.written += 1

    def __exit__(
        self,
        error_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        incomplete = None
        if error is None and self.written != self.classes:
            incomplete = ValueError(
                f"{self.path.name}: {self.written} of {self.classes} class maps were written"
            )
        if error is None and incomplete is None:
            assert self._member is not None and self._archive is not None
            self._member.close()  # one member is written at a time
            with self._archive.open("affine_ras.npy", "w") as member:
                np.lib.format.write_array(member, self.affine_ras)
        failure = error or incomplete
        # closes the archive, then renames the temporary file onto the target, or on a
        # failure removes it
        self._stack.__exit__(type(failure) if failure else None, failure, traceback)
        if incomplete is not None:
            raise incomplete
