"""Organ volumes and intensity statistics per structure, in TotalSegmentator's statistics format.

One ``bincount`` pass gives every structure's voxel count (and, with the scan, its intensity
sum). Volumes come from the voxel count times the voxel volume of the affine
(``|det(A[:3, :3])|`` mm^3), so anisotropic and oblique grids are measured correctly. The
record per structure has TotalSegmentator's fields, ``volume`` (mm^3) and ``intensity`` (mean
scan value inside the structure, 0 for an absent structure), plus ``volume_ml`` and ``voxels``,
so either tool's output can be read by the other's consumers. ``intensity_spread`` adds the
spread of the scan's values inside each structure (HU for CT): ``intensity_std``,
``intensity_median``, ``intensity_p5`` and ``intensity_p95`` (null for an absent structure),
read inside each structure's bounding box (``scipy.ndimage.find_objects``, one pass), so many
small structures cost little more than one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medseg.errors import GeometryMismatchError
from medseg.volume import Volume


def structure_statistics(
    labels: Volume, *, label_names: Mapping[int, str], image: Volume | None = None
) -> dict[str, dict[str, float]]:
    """Volume (mm^3 and mL), voxel count and mean intensity of every named structure > 0 (of
    channel 0 for a multi-channel image ``(X, Y, Z, C)``).

    Raises:
        GeometryMismatchError: ``image`` is not on the label map's grid.
    """
    array = np.asarray(labels.array)
    if array.size and array.min() < 0:
        raise GeometryMismatchError("label map holds negative values")
    size = max(int(array.max(initial=0)), *label_names) + 1
    if image is not None and not image.same_grid(labels):
        raise GeometryMismatchError("the scan and the label map are on different grids")
    first_channel = None
    if image is not None:
        first_channel = image.array if image.array.ndim == 3 else image.array[..., 0]
    counts = np.zeros(size, np.int64)
    sums = np.zeros(size)
    for part in _slabs(array.shape):
        values = array[part].astype(np.int64).ravel()
        counts += np.bincount(values, minlength=size)
        if first_channel is not None:
            weights = np.asarray(first_channel[part], np.float64).ravel()
            sums += np.bincount(values, weights=weights, minlength=size)
    voxel_mm3 = labels.voxel_volume_ml * 1000.0
    statistics = {}
    for value, name in sorted(label_names.items()):
        if value == 0:
            continue
        count = int(counts[value])
        mean = float(sums[value] / count) if first_channel is not None and count else 0.0
        statistics[name] = {
            "volume": round(count * voxel_mm3, 4),
            "volume_ml": round(count * voxel_mm3 / 1000.0, 6),
            "voxels": count,
            "intensity": round(mean, 5),
        }
    return statistics


SLAB_VOXELS = 2**22
"""Voxels counted at a time: 64-bit copies of a slab, not of a 100 M-voxel scan (1.7 GB)."""


def _slabs(shape: tuple[int, ...]) -> Iterator[slice]:
    """Slices of the first axis covering at most about :data:`SLAB_VOXELS` voxels each."""
    rows = max(1, SLAB_VOXELS // max(1, int(np.prod(shape[1:3]))))
    for start in range(0, shape[0], rows):
        yield slice(start, start + rows)


SPREAD = ("intensity_std", "intensity_median", "intensity_p5", "intensity_p95")
"""The intensity fields besides the mean, per structure (with the scan)."""


@dataclass(frozen=True)
class StructureRegion:
    """A structure cut out of a scan inside its bounding box."""

    box: tuple[slice, ...]  # of the label map
    mask: np.ndarray  # boolean, the box's shape
    intensities: np.ndarray  # float64, the scan's channel 0 inside the structure


def structure_regions(
    labels: Volume, image: Volume, *, label_names: Mapping[int, str]
) -> Iterator[tuple[str, StructureRegion | None]]:
    """Every named structure > 0 in label order with its region (None when absent); one
    ``find_objects`` pass, so the cost follows the structures' sizes, not their number.

    Raises:
        GeometryMismatchError: ``image`` is not on the label map's grid.
    """
    if not image.same_grid(labels):
        raise GeometryMismatchError("the scan and the label map are on different grids")
    values = np.asarray(labels.array)
    channel = np.asarray(image.array if image.array.ndim == 3 else image.array[..., 0])
    # any integer type as it is (a 32-bit copy of a 100 M-voxel uint8 label map is 400 MB)
    boxes = ndimage.find_objects(values if values.dtype.kind in "iu" else values.astype(np.int32))
    for value, name in sorted(label_names.items()):
        if value == 0:
            continue
        box = boxes[value - 1] if value <= len(boxes) else None
        if box is None:
            yield name, None
            continue
        mask = values[box] == value
        yield name, StructureRegion(box, mask, np.asarray(channel[box][mask], np.float64))


def intensity_spread(
    labels: Volume, image: Volume, *, label_names: Mapping[int, str]
) -> dict[str, dict[str, float | None]]:
    """Standard deviation, median and 5th/95th percentiles (linear) of the scan's channel 0
    inside every named structure > 0 (fields :data:`SPREAD`, None for an absent structure),
    each read inside the structure's bounding box.

    Raises:
        GeometryMismatchError: ``image`` is not on the label map's grid.
    """
    spreads: dict[str, dict[str, float | None]] = {}
    for name, region in structure_regions(labels, image, label_names=label_names):
        if region is None:
            spreads[name] = dict.fromkeys(SPREAD, None)
            continue
        inside = region.intensities
        p5, median, p95 = np.percentile(inside, [5, 50, 95])
        spreads[name] = {
            "intensity_std": round(float(inside.std()), 5),
            "intensity_median": round(float(median), 5),
            "intensity_p5": round(float(p5), 5),
            "intensity_p95": round(float(p95), 5),
        }
    return spreads
