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
by one voxel, so the cost per structure follows its size, not the image size; structures are
measured on as many threads as there are cores (numpy releases the GIL in their work); the bounding
boxes of all labels come from one ``find_objects`` pass per label map. Nearest-surface distances
are found by visiting the voxel offsets around each surface voxel in order of length until one
lands on the other surface, which is exact and, because surfaces mostly lie within a voxel or
two of each other, costs a few lookups per surface voxel. The rare voxels with no surface within
``_SEARCH_RADIUS_VOXELS`` fall back to an exact k-d tree over the other surface. (A distance
transform of the box gives the same values but costs O(box volume) per structure: about 8 times
slower overall on the 120-structure map of ``bench/metrics.py``.)

Empty structures, following ``medseg.evaluate.metrics``: absent from both prediction and
reference, all three values are NaN (undefined, left out of means); absent from one side only,
HD95 and ASSD are ``inf`` and NSD is 0 (the worst values). MONAI agrees except for HD95 in that
case, which it reports as NaN (torch.quantile of infinite distances), indistinguishable from
"both absent".
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import KDTree

from medseg.errors import GeometryMismatchError, MetricOptionError

HD_PERCENTILE = 95.0
# The offset search covers distances up to this many times the largest voxel size, with at
# most _MAX_SEARCH_REACH voxels per axis and _MAX_SEARCH_OFFSETS offsets (less when the spacing
# is very anisotropic); farther nearest-surface distances come from the k-d tree.
_SEARCH_RADIUS_VOXELS = 2.0
_MAX_SEARCH_REACH = 8
_MAX_SEARCH_OFFSETS = 700

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
        MetricOptionError: the spacing does not give one positive finite size per axis, or the
            tolerance is negative or not finite.

    Example:
        >>> reference = read_volume("case_001_seg.nrrd")
        >>> predicted = read_volume("case_001_pred.nii.gz")
        >>> per_structure = surface_metrics(
        ...     predicted.array, reference.array, spacing_mm=reference.spacing_mm, labels=[1, 2]
        ... )
        >>> per_structure[1].hd95  # mm
    """
    prediction = np.asarray(prediction)
    reference = np.asarray(reference)
    if prediction.shape != reference.shape:
        raise GeometryMismatchError(
            f"prediction has shape {prediction.shape}, reference {reference.shape}"
        )
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if spacing.shape != (prediction.ndim,) or not np.all(np.isfinite(spacing) & (spacing > 0)):
        raise MetricOptionError(
            f"spacing_mm must hold {prediction.ndim} positive finite sizes (one per axis of "
            f"shape {prediction.shape}), got {list(spacing_mm)}"
        )
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise MetricOptionError(f"tolerance_mm must be finite and >= 0, got {tolerance_mm}")

    labels = [int(label) for label in labels]
    prediction_boxes = _bounding_boxes(prediction, labels)
    reference_boxes = _bounding_boxes(reference, labels)
    tolerance = np.float32(tolerance_mm)
    neighbourhood = _Neighbourhood.around(spacing)
    results: dict[int, SurfaceMetrics] = {}
    present: list[tuple[int, _BoundingBox]] = []
    for label in labels:
        in_prediction, in_reference = prediction_boxes[label], reference_boxes[label]
        if in_prediction is None and in_reference is None:
            results[label] = _UNDEFINED
        elif in_prediction is None or in_reference is None:
            results[label] = _ONE_SIDE_MISSING
        else:
            present.append((label, _padded_union(in_prediction, in_reference, prediction.shape)))

    def measure(job: tuple[int, _BoundingBox]) -> SurfaceMetrics:
        label, box = job
        return _structure_metrics(
            prediction[box] == label, reference[box] == label, neighbourhood, tolerance
        )

    # numpy releases the GIL in the work of a structure, so threads share it over the cores
    workers = min(len(present), os.cpu_count() or 1)
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            measured = list(pool.map(measure, present))
    else:
        measured = [measure(job) for job in present]
    results.update({label: value for (label, _), value in zip(present, measured, strict=True)})
    return {label: results[label] for label in labels}


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
    prediction: np.ndarray,
    reference: np.ndarray,
    neighbourhood: _Neighbourhood,
    tolerance: np.float32,
) -> SurfaceMetrics:
    """Metrics of one structure present on both sides, from its masks cropped to its box."""
    prediction_surface = _surface(prediction)
    reference_surface = _surface(reference)
    to_reference = _distances_to(reference_surface, prediction_surface, neighbourhood)
    to_prediction = _distances_to(prediction_surface, reference_surface, neighbourhood)
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


@dataclass(frozen=True)
class _Neighbourhood:
    """Voxel offsets of every length up to a radius, sorted by length in mm.

    Attributes:
        spacing: voxel size per axis, mm.
        offsets: (n, ndim) integer offsets, shortest first; the first is the zero offset.
        lengths_mm: length of each offset, computed like a distance transform does
            (``sqrt(sum((offset * spacing) ** 2))`` in float64).
        reach: largest ``|offset|`` per axis.
    """

    spacing: np.ndarray
    offsets: np.ndarray
    lengths_mm: np.ndarray
    reach: np.ndarray

    @classmethod
    def around(cls, spacing: np.ndarray) -> _Neighbourhood:
        """All offsets up to some length (at most the search radius) for this spacing."""
        radius = _SEARCH_RADIUS_VOXELS * float(spacing.max())
        reach = np.minimum(np.floor(radius / spacing), _MAX_SEARCH_REACH).astype(np.int64)
        axes = np.meshgrid(*(np.arange(-k, k + 1) for k in reach), indexing="ij")
        offsets = np.stack([axis.ravel() for axis in axes], axis=1)
        scaled = offsets * spacing
        lengths = np.sqrt(np.add.reduce(scaled * scaled, axis=1))
        # An offset outside the box is at least one step beyond the reach on some axis, so the
        # box holds every offset shorter than that (all of them up to the radius, unless the
        # reach was capped) but only some longer ones: keep the complete part.
        shortest_outside = float(((reach + 1) * spacing).min())
        within = (lengths <= radius) & (lengths < shortest_outside)
        offsets, lengths = offsets[within], lengths[within]
        order = np.argsort(lengths, kind="stable")
        offsets, lengths = offsets[order], lengths[order]
        count = lengths.size
        if count > _MAX_SEARCH_OFFSETS:
            # Cut before a whole group of equal lengths, so the kept offsets are exactly those
            # up to some length: a point with no hit has no surface voxel that close.
            count = int(np.searchsorted(lengths, lengths[_MAX_SEARCH_OFFSETS], side="left"))
        offsets, lengths = offsets[:count], lengths[:count]
        reach = np.abs(offsets).max(axis=0)
        return cls(spacing=spacing, offsets=offsets, lengths_mm=lengths, reach=reach)


def _distances_to(
    surface: np.ndarray, points: np.ndarray, neighbourhood: _Neighbourhood
) -> np.ndarray:
    """Distance in mm from every True voxel of ``points`` to the nearest voxel of ``surface``.

    Working in the cropped box cannot change a value: every voxel of ``surface`` lies inside
    the box (it holds both whole structures), and the Euclidean distance between two voxels is
    a straight line that does not depend on what lies between them, so the nearest surface
    voxel of every point is found among the same candidates as on the full image.

    Offsets are tried shortest first, all points at once; a point's distance is the length of
    the first offset that lands on ``surface``, which is the shortest such offset. Points with
    no surface voxel within the neighbourhood get theirs from a k-d tree of the surface
    voxels' positions in mm (MONAI's own method), also exact.
    """
    reach = neighbourhood.reach
    # Zero padding by the reach keeps every probe inside the array; it holds no surface voxel.
    padded = np.pad(surface, [(int(k), int(k)) for k in reach])
    flat = padded.ravel()
    strides = np.array(padded.strides, dtype=np.int64) // padded.itemsize
    coordinates = _coordinates(points)
    probes = (coordinates + reach) @ strides
    unresolved = np.arange(len(coordinates))
    distances = np.empty(len(coordinates), dtype=np.float64)
    for step, length in zip(neighbourhood.offsets @ strides, neighbourhood.lengths_mm, strict=True):
        found = flat[probes + step]
        if found.any():
            distances[unresolved[found]] = length
            missing = ~found
            unresolved, probes = unresolved[missing], probes[missing]
            if unresolved.size == 0:
                break
    if unresolved.size:
        spacing = neighbourhood.spacing
        tree = KDTree(_coordinates(surface) * spacing)
        distances[unresolved] = tree.query(coordinates[unresolved] * spacing)[0]
    return distances.astype(np.float32)


def _coordinates(mask: np.ndarray) -> np.ndarray:
    """(n, ndim) indices of the True voxels, like ``np.argwhere`` but several times faster."""
    return np.stack(np.unravel_index(np.flatnonzero(mask), mask.shape), axis=1)


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
