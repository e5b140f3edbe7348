"""Surface metrics per structure: HD95, normalized surface Dice and average surface distance.

The definitions are MONAI's (``compute_hausdorff_distance(percentile=95)``,
``compute_surface_dice`` and ``compute_average_surface_distance(symmetric=True)``, Euclidean,
without sub-voxel areas), so the values are equal to MONAI's for the same masks and spacing:

* The surface of a structure is the set of its voxels with at least one face neighbour outside
  it (mask XOR its binary erosion by the cross-shaped structuring element); the outside of the
  image counts as outside the structure, so a structure touching the image border has a surface
  there.
* A surface distance is the Euclidean distance in millimetres (voxel offsets times the spacing)
  from a surface voxel of one side to the nearest surface voxel of the other side, rounded to
  float32 as MONAI stores it.
* HD95 is the larger of the two directed 95th percentiles; a percentile is torch.quantile's
  linear interpolation in float32 between the sorted distances at rank ``0.95 * (n - 1)``.
* NSD is the fraction of the surface voxels of both sides whose distance to the other surface
  is at most ``tolerance_mm`` (compared in float32).
* ASSD is the mean of the distances of both directions pooled together.

Speed: each structure is measured inside the bounding box of prediction and reference, padded
by one voxel, so the cost per structure follows its size, not the image size; the bounding
boxes of all labels come from one ``find_objects`` pass per label map.

Empty structures, following ``medseg.metrics``: absent from both prediction and reference, all
three values are NaN (undefined, left out of means); absent from one side only, HD95 and ASSD
are ``inf`` and NSD is 0 (the worst values). MONAI agrees except for HD95 in that case, which it
reports as NaN (torch.quantile of infinite distances), indistinguishable from "both absent".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medseg.errors import GeometryMismatchError

HD_PERCENTILE = 95.0

_BoundingBox = tuple[slice, ...]


@dataclass(frozen=True)
class SurfaceMetrics:
    """Surface agreement of one structure between a prediction and its reference.

    Attributes:
        hd95: symmetric 95th-percentile Hausdorff distance, mm.
        nsd: normalized surface Dice at the tolerance, in [0, 1].
        assd: average symmetric surface distance, mm.
    """

    hd95: float
    nsd: float
    assd: float


_UNDEFINED = SurfaceMetrics(hd95=math.nan, nsd=math.nan, assd=math.nan)
_ONE_SIDE_MISSING = SurfaceMetrics(hd95=math.inf, nsd=0.0, assd=math.inf)


def surface_metrics(
    prediction: np.ndarray,
    reference: np.ndarray,
    *,
    spacing_mm: Sequence[float],
    labels: Sequence[int],
    tolerance_mm: float = 1.0,
) -> dict[int, SurfaceMetrics]:
    """HD95, NSD and ASSD of every structure in ``labels`` between two label maps.

    Args:
        prediction: integer label map, 2D or 3D.
        reference: integer label map on the same grid.
        spacing_mm: voxel size along each axis in mm, e.g. ``Volume.spacing_mm``.
        labels: label values of the structures to measure.
        tolerance_mm: largest surface distance counted as agreement by NSD.

    Returns:
        One ``SurfaceMetrics`` per label. Absent from both maps: all NaN; absent from one map
        only: HD95 and ASSD ``inf``, NSD 0.

    Raises:
        GeometryMismatchError: the two maps have different shapes.
        ValueError: the spacing does not give one positive finite size per axis, or the
            tolerance is negative or not finite.

    Example:
        >>> volume = read_nifti("case_001_seg.nii.gz")
        >>> per_structure = surface_metrics(
        ...     predicted.array, volume.array, spacing_mm=volume.spacing_mm, labels=[1, 2, 3]
        ... )
        >>> per_structure[1].hd95
    """
    prediction = np.asarray(prediction)
    reference = np.asarray(reference)
    if prediction.shape != reference.shape:
        raise GeometryMismatchError(
            f"prediction has shape {prediction.shape}, reference {reference.shape}"
        )
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if spacing.shape != (prediction.ndim,) or not np.all(np.isfinite(spacing) & (spacing > 0)):
        raise ValueError(
            f"spacing_mm must hold {prediction.ndim} positive finite sizes (one per axis of "
            f"shape {prediction.shape}), got {list(spacing_mm)}"
        )
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"tolerance_mm must be finite and >= 0, got {tolerance_mm}")

    labels = [int(label) for label in labels]
    prediction_boxes = _bounding_boxes(prediction, labels)
    reference_boxes = _bounding_boxes(reference, labels)
    tolerance = np.float32(tolerance_mm)
    results: dict[int, SurfaceMetrics] = {}
    for label in labels:
        in_prediction, in_reference = prediction_boxes[label], reference_boxes[label]
        if in_prediction is None and in_reference is None:
            results[label] = _UNDEFINED
        elif in_prediction is None or in_reference is None:
            results[label] = _ONE_SIDE_MISSING
        else:
            box = _padded_union(in_prediction, in_reference, prediction.shape)
            results[label] = _structure_metrics(
                prediction[box] == label, reference[box] == label, spacing, tolerance
            )
    return results


def _bounding_boxes(label_map: np.ndarray, labels: list[int]) -> dict[int, _BoundingBox | None]:
    """Bounding box of each label's voxels (None when absent), one pass for positive labels."""
    positive = [label for label in labels if label > 0]
    found: list[_BoundingBox | None] = []
    if positive and np.issubdtype(label_map.dtype, np.integer):
        found = ndimage.find_objects(label_map, max_label=max(positive))
    boxes: dict[int, _BoundingBox | None] = {}
    for label in labels:
        if 0 < label <= len(found):
            boxes[label] = found[label - 1]
        else:  # background, negative or non-integer maps: one full scan for this label
            boxes[label] = _bounding_box(label_map == label)
    return boxes


def _bounding_box(mask: np.ndarray) -> _BoundingBox | None:
    """Smallest box holding every True voxel of ``mask``; None for an empty mask."""
    box = []
    for axis in range(mask.ndim):
        other_axes = tuple(a for a in range(mask.ndim) if a != axis)
        occupied = np.flatnonzero(mask.any(axis=other_axes))
        if occupied.size == 0:
            return None
        box.append(slice(int(occupied[0]), int(occupied[-1]) + 1))
    return tuple(box)


def _padded_union(
    first: _BoundingBox, second: _BoundingBox, shape: tuple[int, ...]
) -> _BoundingBox:
    """Box holding both boxes plus one voxel on every side, clipped to the image."""
    return tuple(
        slice(max(min(a.start, b.start) - 1, 0), min(max(a.stop, b.stop) + 1, size))
        for a, b, size in zip(first, second, shape, strict=True)
    )


def _structure_metrics(
    prediction: np.ndarray, reference: np.ndarray, spacing: np.ndarray, tolerance: np.float32
) -> SurfaceMetrics:
    """Metrics of one structure present on both sides, from its masks cropped to its box."""
    prediction_surface = _surface(prediction)
    reference_surface = _surface(reference)
    to_reference = _distances_to(reference_surface, prediction_surface, spacing)
    to_prediction = _distances_to(prediction_surface, reference_surface, spacing)
    hd95 = max(
        _percentile_as_torch(to_reference, HD_PERCENTILE),
        _percentile_as_torch(to_prediction, HD_PERCENTILE),
    )
    within = np.count_nonzero(to_reference <= tolerance) + np.count_nonzero(
        to_prediction <= tolerance
    )
    count = to_reference.size + to_prediction.size
    total = to_reference.sum(dtype=np.float64) + to_prediction.sum(dtype=np.float64)
    return SurfaceMetrics(hd95=hd95, nsd=within / count, assd=float(total / count))


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it or outside the array."""
    interior = mask.copy()
    for axis in range(mask.ndim):
        interior[_along(axis, 1, None)] &= mask[_along(axis, None, -1)]
        interior[_along(axis, None, -1)] &= mask[_along(axis, 1, None)]
        # Beyond the array is outside: either the image border (MONAI pads with background)
        # or the one-voxel padding of the box, which holds no voxel of the structure.
        interior[_along(axis, 0, 1)] = False
        interior[_along(axis, -1, None)] = False
    return mask & ~interior


def _along(axis: int, start: int | None, stop: int | None) -> tuple[slice, ...]:
    """Index selecting ``start:stop`` along ``axis`` and everything along earlier axes."""
    return (slice(None),) * axis + (slice(start, stop),)


def _distances_to(surface: np.ndarray, at: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance in mm from every True voxel of ``at`` to the nearest voxel of ``surface``.

    The distance transform runs on the cropped box only. That cannot change a value: every
    voxel of ``surface`` lies inside the box (the box holds both whole structures), and the
    Euclidean distance between two voxels is a straight line that does not depend on what
    lies between them, so the nearest surface voxel of every voxel of ``at`` is found among
    the same candidates as on the full image.
    """
    field = ndimage.distance_transform_edt(~surface, sampling=spacing)
    return field[at].astype(np.float32)


def _percentile_as_torch(values: np.ndarray, percentile: float) -> float:
    """``torch.quantile(values, percentile / 100)`` on float32 values, in O(n).

    Linear interpolation between the order statistics around rank ``q * (n - 1)``, with the
    rank and the weight rounded to float32 like torch does; the interpolation is evaluated in
    float64 and rounded once to float32, which reproduces torch's fused multiply-add.
    """
    quantile = np.float32(percentile / 100)
    rank = quantile * np.float32(values.size - 1)
    below = int(rank)
    above = min(below + 1, values.size - 1) if rank > below else below
    ordered = np.partition(values, (below, above))
    low, high = np.float64(ordered[below]), np.float64(ordered[above])
    weight = np.float32(rank - np.float32(below))
    difference = np.float64(np.float32(high - low))
    if weight < 0.5:
        result = low + np.float64(weight) * difference
    else:
        result = high - difference * np.float64(np.float32(1) - weight)
    return float(np.float32(result))
