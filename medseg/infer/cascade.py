"""Coarse-to-fine prediction of a few structures (``--structures`` with a model that carries a
low-resolution configuration beside its full-resolution one).

The low-resolution networks segment the whole scan (at 3 mm, a fraction of the work); where
they put the structures asked for is read on their own grid (no class goes back onto the
scan's grid for it), and that box, carried onto the scan's voxels and grown by
``CASCADE_MARGIN_MM``, is where the full-resolution networks run; every voxel outside it is
background: nnU-Net's 3d_lowres -> 3d_cascade_fullres idea, as TotalSegmentator's
``--roi_subset`` crops with its fast model. This module holds the geometry;
``medseg.infer.predictor.predict_scan`` runs the passes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Sequence

import numpy as np

from medseg.infer.confidence import argmax_and_max
from medseg.preprocess.case import ClassMaps
from medseg.regions import SIGMOID_THRESHOLD
from medseg.volume import Volume

CASCADE_MARGIN_MM = 30.0
"""Margin around the structures the low-resolution pass found: covers its coarser boundaries
(a 3 mm voxel or two) and gives the full-resolution windows context beyond the structure."""

Box = list[tuple[int, int]]


def where_structures_win(
    maps: ClassMaps, values: Collection[int], *, regions_class_order: Sequence[int] | None = None
) -> np.ndarray:
    """Voxels of the maps' grid labelled one of ``values``: where such a class is the argmax of
    the class probabilities (the first class wins a tie, as ``np.argmax``), or, with
    ``regions_class_order`` (region probabilities), where such a region is above the sigmoid
    threshold. Reads one map at a time."""
    if regions_class_order is not None:
        present = np.zeros(maps[0].shape, bool)
        for index, value in enumerate(regions_class_order):
            if value in values:
                present |= maps[index] > SIGMOID_THRESHOLD
        return present
    winner, _ = argmax_and_max(maps)
    return np.isin(winner, list(values))


def tight_box(present: np.ndarray) -> Box | None:
    """The smallest voxel box (``(start, stop)`` per axis) holding every true voxel of the
    3D mask ``present``; None when it has none."""
    if not present.any():
        return None
    box = []
    for axis in range(3):
        found = np.flatnonzero(present.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append((int(found[0]), int(found[-1]) + 1))
    return box


def box_onto_grid(box: Box, affine: np.ndarray, target: Volume) -> Box:
    """The box of ``target``'s voxels that overlaps ``box`` of a grid with voxel-to-scanner
    ``affine`` (the same space, any spacing and axis order), within ``target``."""
    edges = [(start - 0.5, stop - 0.5) for start, stop in box]
    corners = np.array([[*corner, 1.0] for corner in itertools.product(*edges)]).T
    voxels = (np.linalg.inv(target.affine_ras) @ affine @ corners)[:3]
    onto = []
    for axis, size in enumerate(target.shape[:3]):
        low, high = voxels[axis].min(), voxels[axis].max()
        # the voxels whose extent [i - 0.5, i + 0.5] meets [low, high] beyond its border
        onto.append((max(0, math.floor(low + 0.5)), min(size, math.ceil(high - 0.5) + 1)))
    return onto


def grown_box(box: Box, scan: Volume, *, margin_mm: float) -> Box:
    """``box`` of ``scan``'s voxels grown by ``margin_mm`` on each side, within the scan."""
    grown = []
    for (start, stop), size, spacing in zip(box, scan.shape[:3], scan.spacing_mm, strict=True):
        margin = math.ceil(margin_mm / spacing)
        grown.append((max(0, start - margin), min(size, stop + margin)))
    return grown


def structures_box(labels: Volume, values: Sequence[int], *, margin_mm: float) -> Box | None:
    """The voxel box of ``labels`` holding every voxel of ``values``, grown by ``margin_mm`` on
    each side within the scan; None when none is there."""
    box = tight_box(np.isin(labels.array, list(values)))
    return None if box is None else grown_box(box, labels, margin_mm=margin_mm)


def paste(part: Volume, scan: Volume, box: Box) -> Volume:
    """The label map ``part`` (predicted on ``scan.crop(box)``) on the whole scan's grid,
    background outside the box; ``part``'s metadata."""
    labels = np.zeros(scan.shape[:3], dtype=part.array.dtype)
    labels[tuple(slice(start, stop) for start, stop in box)] = part.array
    return Volume(labels, scan.affine_ras.copy(), dict(part.metadata))


def box_fraction(box: Box, shape: Sequence[int]) -> float:
    """Share of the scan's voxels inside ``box``."""
    return float(np.prod([stop - start for start, stop in box]) / np.prod(shape[:3]))
