"""Coarse-to-fine prediction of a few structures (``--structures`` with a model that carries a
low-resolution configuration beside its full-resolution one).

The low-resolution networks segment the whole scan (at 3 mm, a fraction of the work); the
full-resolution networks then run only on the box around the structures asked for, plus
``CASCADE_MARGIN_MM``, and every voxel outside it is background: nnU-Net's 3d_lowres ->
3d_cascade_fullres idea, as TotalSegmentator's ``--roi_subset`` crops with its fast model. This
module holds the geometry; ``medseg.infer.predictor.predict_scan`` runs the passes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from medseg.volume import Volume

CASCADE_MARGIN_MM = 30.0
"""Margin around the structures the low-resolution pass found: covers its coarser boundaries
(a 3 mm voxel or two) and gives the full-resolution windows context beyond the structure."""

Box = list[tuple[int, int]]


def structures_box(labels: Volume, values: Sequence[int], *, margin_mm: float) -> Box | None:
    """The voxel box (``(start, stop)`` per axis) of ``labels`` holding every voxel of
    ``values``, grown by ``margin_mm`` on each side within the scan; None when none is there."""
    present = np.isin(labels.array, list(values))
    if not present.any():
        return None
    box = []
    for axis, (size, spacing) in enumerate(zip(labels.shape[:3], labels.spacing_mm, strict=True)):
        found = np.flatnonzero(present.any(axis=tuple(a for a in range(3) if a != axis)))
        margin = math.ceil(margin_mm / spacing)
        box.append((max(0, int(found[0]) - margin), min(size, int(found[-1]) + 1 + margin)))
    return box


def paste(part: Volume, scan: Volume, box: Box) -> Volume:
    """The label map ``part`` (predicted on ``scan.crop(box)``) on the whole scan's grid,
    background outside the box; ``part``'s metadata."""
    labels = np.zeros(scan.shape[:3], dtype=part.array.dtype)
    labels[tuple(slice(start, stop) for start, stop in box)] = part.array
    return Volume(labels, scan.affine_ras.copy(), dict(part.metadata))


def box_fraction(box: Box, shape: Sequence[int]) -> float:
    """Share of the scan's voxels inside ``box``."""
    return float(np.prod([stop - start for start, stop in box]) / np.prod(shape[:3]))
